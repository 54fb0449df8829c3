"""Where the model lives during a run. On the compute device for the whole run when it fits there
(with room for the run's working set), so nothing is moved block by block; otherwise on the host,
with blocks streamed to the device: `compress` onloads one block or group at a time
(calibrate.onloaded), evaluation goes through accelerate's offload hooks. `--offload` forces
either way. On the CPU everything is already where it computes."""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import PreTrainedModel


# candidates a criterion scores together when blocks are streamed (BlockStack.outputs_without):
# each block is onloaded once per 8 candidates, for 8 candidates' hidden states in host memory
STREAMED_CANDIDATES = 8


def resolve_device(device: str) -> torch.device:
    """`auto`: the GPU when there is one, else the CPU; anything else as torch names it."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def native_bf16(device: torch.device) -> bool:
    """Whether `device` multiplies bf16 matrices natively (faster than fp32): a CUDA GPU from
    Ampere on, or a CPU with AVX512-BF16 or AMX; elsewhere bf16 is emulated, slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device)[0] >= 8
    cpuinfo = Path("/proc/cpuinfo")
    if device.type != "cpu" or not cpuinfo.exists():
        return False
    flags = cpuinfo.read_text()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def context_length(model: PreTrainedModel) -> int:
    """The longest window the model takes (a multimodal model's: its language model's)."""
    config = model.config.get_text_config()
    return next((getattr(config, key) for key in ("max_position_embeddings", "n_positions", "n_ctx")
                 if getattr(config, key, None)), 2048)


def model_bytes(model: PreTrainedModel) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def free_memory(device: torch.device) -> int | None:
    """Free memory of a GPU in bytes (None for the CPU: the host is where everything lives anyway)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return None


def stays_on_device(weights: int, working: int, free: int | None, offload: str) -> bool:
    """Whether the model moves to the compute device for the whole run: never with `always`,
    always with `never` (a model that does not fit then fails as the device says), and with
    `auto` when its weights and the run's working set fit in 90% of the device's free memory."""
    if offload == "always":
        return False
    if offload == "never" or free is None:
        return True
    return weights + working <= 0.9 * free


def place(model: PreTrainedModel, device: torch.device, offload: str = "auto", working: int = 0,
          limit: int | None = None) -> bool:
    """Move `model` to `device` when it stays there (see `stays_on_device`); returns whether it did.
    A model left on the host is streamed to the device by the caller. `limit` caps the device's
    free memory (`--device-memory`: a run planned for a smaller card behaves as on that card)."""
    free = free_memory(device)
    if free is not None and limit:
        free = min(free, limit)
    resident = stays_on_device(model_bytes(model), working, free, offload)
    if resident:
        model.to(device)
    return resident


def execution_device(model: PreTrainedModel) -> torch.device:
    """Where inputs go: the offload hooks' execution device, else where the weights are."""
    for module in model.modules():
        device = getattr(getattr(module, "_hf_hook", None), "execution_device", None)
        if device is not None:
            return torch.device(device)
    return next(model.parameters()).device


def place_for_inference(model: PreTrainedModel, device: torch.device, offload: str = "auto") -> None:
    """Evaluation on the compute device: the whole model when it fits, else accelerate's hooks,
    which move each module's weights to the device for its forward and back."""
    if not place(model, device, offload, working=model_bytes(model) // 10):
        from accelerate import cpu_offload

        cpu_offload(model, execution_device=device)

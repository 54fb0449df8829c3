"""How a GGUF's changed tensors are rounded: by llama.cpp's own quantisers, one tensor at a time,
weighted by how much each input column matters, and each tensor's type chosen to fit a byte budget.

A tuned block's weights lie off the grid they were dequantised from; rounding them again by plain
round-to-nearest undoes much of the tune (SmolLM2 at Q4_1: +38% perplexity against the same weights
at F16). Two things from llama.cpp's own toolbox bring it back:
- an importance vector per matrix, the mean square of each input column's activation on the
  calibration windows (what llama.cpp's imatrix tool computes), given to `ggml_quantize_chunk`,
  which then chooses each block's scale to minimise the error where the inputs are large;
- the bytes the removed blocks freed, spent on more precise types for the tensors whose weighted
  error falls most per byte (`fit_types`), so that the file stays no larger than the input."""
from __future__ import annotations

import ctypes
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

# the types a changed matrix may be raised to, and the unquantised ones written without llama.cpp
LADDER = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K", "Q8_0")
SAMPLED_ROWS = 256  # a tensor's error per type is measured on this many of its rows, spread evenly
IMPORTANCE_WINDOWS = 32  # calibration windows the importance is measured on


@lru_cache(maxsize=1)
def _ggml():
    """llama.cpp's ggml library, as llama-cpp-python ships it."""
    import llama_cpp

    library = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))
    library.ggml_quantize_chunk.restype = ctypes.c_size_t
    library.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                            ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    library.ggml_row_size.restype = ctypes.c_size_t
    library.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
    library.ggml_quantize_init.argtypes = [ctypes.c_int]
    return library


def fits(kind, columns: int) -> bool:
    """Whether a row of `columns` values splits into whole blocks of `kind` (K-quants: 256)."""
    import gguf

    return columns % gguf.GGML_QUANT_SIZES[kind][0] == 0


def quantise(data: np.ndarray, kind, importance: np.ndarray | None = None) -> np.ndarray:
    """`data` (rows x columns, fp32, GGUF layout) at GGML type `kind`, as the bytes of each row;
    F32 and F16 as plain arrays. `importance` (one weight per column) steers llama.cpp's choice of
    each block's scale; without it llama.cpp rounds as its quantize tool does without an imatrix."""
    import gguf

    data = np.ascontiguousarray(data, dtype=np.float32)
    if kind == gguf.GGMLQuantizationType.F32:
        return data
    if kind == gguf.GGMLQuantizationType.F16:
        return data.astype(np.float16)
    ggml, (rows, columns) = _ggml(), data.shape
    ggml.ggml_quantize_init(int(kind))
    out = np.empty((rows, ggml.ggml_row_size(int(kind), columns)), np.uint8)
    weights = None if importance is None else np.ascontiguousarray(importance, dtype=np.float32)
    written = ggml.ggml_quantize_chunk(int(kind), data.ctypes.data, out.ctypes.data, 0, rows, columns,
                                       None if weights is None else weights.ctypes.data)
    if written != out.nbytes:
        raise RuntimeError(f"ggml wrote {written} bytes of {kind.name} where {out.nbytes} were expected")
    return out


def weighted_error(data: np.ndarray, kind, importance: np.ndarray | None = None) -> float:
    """Sum over the weights of importance x (weight - its rounding at `kind`)^2."""
    import gguf

    back = gguf.dequantize(quantise(data, kind, importance), kind).reshape(data.shape)
    squared = (back.astype(np.float64) - data) ** 2
    return float((squared * (1.0 if importance is None else importance)).sum())


@dataclass
class Choice:
    """A tensor at one type: its bytes in the file and its weighted rounding error."""

    kind: object  # gguf.GGMLQuantizationType
    bytes: int
    error: float


def options(data: np.ndarray, start, importance: np.ndarray | None) -> list[Choice]:
    """The types a changed matrix may take, `start` (its type in the input) first, then each type of
    the ladder that is larger and more exact, by size; errors measured on a sample of rows and
    scaled to the whole tensor."""
    import gguf

    rows, columns = data.shape
    sample = data[np.linspace(0, rows - 1, min(rows, SAMPLED_ROWS)).astype(np.int64)]
    scale = rows / sample.shape[0]

    def choice(kind) -> Choice:
        return Choice(kind, rows * _row_bytes(kind, columns), scale * weighted_error(sample, kind, importance))

    first = choice(start)
    if start in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
        return [first]
    larger = [choice(kind) for kind in (gguf.GGMLQuantizationType[name] for name in LADDER)
              if kind != start and fits(kind, columns) and rows * _row_bytes(kind, columns) > first.bytes]
    return [first, *sorted((c for c in larger if c.error < first.error), key=lambda c: c.bytes)]


def _row_bytes(kind, columns: int) -> int:
    import gguf

    if kind in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
        return columns * (4 if kind == gguf.GGMLQuantizationType.F32 else 2)
    return _ggml().ggml_row_size(int(kind), columns)


def fit_types(choices: dict[str, list[Choice]], budget: int) -> dict[str, Choice]:
    """Each tensor's type: its first choice, raised step by step where the weighted error falls most
    per extra byte, while the extra bytes stay within `budget`."""
    chosen = {name: found[0] for name, found in choices.items()}
    while True:
        best, best_gain = None, 0.0
        for name, found in choices.items():
            now = chosen[name]
            for candidate in found:
                extra = candidate.bytes - now.bytes
                if 0 < extra <= budget and candidate.error < now.error:
                    gain = (now.error - candidate.error) / extra
                    if gain > best_gain:
                        best, best_gain = (name, candidate), gain
        if best is None:
            return chosen
        name, candidate = best
        budget -= candidate.bytes - chosen[name].bytes
        chosen[name] = candidate


@torch.no_grad()
def activation_importance(model, blocks: list, windows: torch.Tensor, batch_size: int,
                          device: torch.device) -> dict[str, np.ndarray]:
    """Each linear layer's mean squared input per column over `windows` (its HF weight's name ->
    vector): llama.cpp's imatrix, from one pass of the compressed model over its calibration
    windows, a block at a time on `device`."""
    from ..calibrate import StopForward, computing_on, forward_until_stopped

    inside = {id(m) for block in blocks for m in block.modules()}
    linears = {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and id(m) in inside}
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def hook_for(name: str):
        def hook(module, args) -> None:
            x = args[0].detach().float().reshape(-1, args[0].shape[-1])
            sums[name] = sums.get(name, 0) + (x * x).sum(0).cpu()
            counts[name] = counts.get(name, 0) + x.shape[0]
        return hook

    def stop(module, args, output) -> None:  # nothing after the last block is needed (a 262k head is not cheap)
        raise StopForward

    handles = [m.register_forward_pre_hook(hook_for(name)) for name, m in linears.items()]
    handles.append(blocks[-1].register_forward_hook(stop))
    try:
        with computing_on(model, blocks, device):
            forward_until_stopped(model, windows, batch_size, device)
    finally:
        for handle in handles:
            handle.remove()
    return {f"{name}.weight": (sums[name] / counts[name]).double().numpy() for name in sums}


def reweighted(written: dict[str, tuple], tensors: dict[str, np.ndarray],
               weights: dict[str, np.ndarray]) -> dict[str, tuple]:
    """llama.cpp's (bytes, type) of `written`, those of the `tensors` that have importance `weights`
    rounded again at the same type with them (llama.cpp's rules chose the types, not the rounding)."""
    return {name: rounded(tensors[name], kind, weights[name]) if name in weights else (data, kind)
            for name, (data, kind) in written.items()}


def rounded(data: np.ndarray, kind, importance: np.ndarray | None) -> tuple[np.ndarray, int]:
    """(bytes, GGML type) of a tensor at `kind`: vectors (norms) at F16 or else F32."""
    import gguf

    kind = gguf.GGMLQuantizationType(kind)
    if data.ndim == 1 and kind != gguf.GGMLQuantizationType.F16:
        kind = gguf.GGMLQuantizationType.F32
    rows = quantise(data.reshape(-1, data.shape[-1]), kind, importance)
    return rows.reshape(*data.shape[:-1], -1), kind


ALIGNMENT = 32  # GGUF's default: each tensor's data starts on a multiple


def fitted(changed: dict[str, np.ndarray], weights: dict[str, np.ndarray], inputs: dict,
            reader) -> dict[str, tuple[np.ndarray, int]]:
    """(bytes, GGML type) of the changed tensors (`inputs`: the input's tensor under each output
    name) in a file no larger than the input (`reader`): each matrix at its input type or raised (`fit_types`) with the bytes
    the removed tensors freed; vectors at their input type."""
    import gguf

    def aligned(size: int) -> int:
        return -(-size // ALIGNMENT) * ALIGNMENT

    data_bytes = sum(aligned(t.data.nbytes) for t in reader.tensors)
    kept_bytes = sum(aligned(t.data.nbytes) for t in inputs.values())
    # the output's keys and tensor list are the input's, shorter, plus at most one key (1 KiB)
    budget = data_bytes - kept_bytes - ALIGNMENT * len(changed) - 1024
    matrices = {name: options(data.reshape(-1, data.shape[-1]), gguf.GGMLQuantizationType(inputs[name].tensor_type),
                              weights.get(name))
                for name, data in changed.items() if data.ndim > 1}
    chosen = fit_types(matrices, max(0, budget))
    written = {name: rounded(data, inputs[name].tensor_type, None) for name, data in changed.items() if data.ndim == 1}
    written.update({name: rounded(changed[name], choice.kind, weights.get(name)) for name, choice in chosen.items()})
    return written

"""The supported families, and the lookup from a loaded model to its adapter."""
from __future__ import annotations

from transformers import PreTrainedModel

from ..errors import FuseGPTError
from .adapter import DecoderAdapter

LLAMA_ROLES = {
    "q": "self_attn.q_proj",
    "k": "self_attn.k_proj",
    "v": "self_attn.v_proj",
    "o": "self_attn.o_proj",
    "gate": "mlp.gate_proj",
    "up": "mlp.up_proj",
    "down": "mlp.down_proj",
}

ADAPTERS: list[DecoderAdapter] = [
    DecoderAdapter(family="Llama", model_types=("llama",), blocks_path="model.layers", roles=LLAMA_ROLES),
]


def supported_families() -> str:
    return ", ".join(a.family for a in ADAPTERS)


def adapter_for(model: PreTrainedModel) -> DecoderAdapter:
    model_type = getattr(model.config, "model_type", None)
    for adapter in ADAPTERS:
        if model_type in adapter.model_types:
            return adapter
    raise FuseGPTError(
        f"unsupported architecture '{model_type}' ({type(model).__name__}); supported families: {supported_families()}"
    )

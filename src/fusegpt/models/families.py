"""The supported families: one adapter each, from the transformers 5 module trees.

Fused projections (Phi-3's qkv_proj and gate_up_proj, GPT-2's c_attn, GPT-NeoX's
query_key_value) are one role each: a removed block's fused matrix is injected whole into the
neighbour's fused matrix, so q, k and v never have to be split out of it."""
from __future__ import annotations

from dataclasses import dataclass

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
PHI3_ROLES = {"qkv": "self_attn.qkv_proj", "o": "self_attn.o_proj", "gate_up": "mlp.gate_up_proj",
              "down": "mlp.down_proj"}
GPT2_ROLES = {"qkv": "attn.c_attn", "o": "attn.c_proj", "up": "mlp.c_fc", "down": "mlp.c_proj"}
OPT_ROLES = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.out_proj",
             "up": "fc1", "down": "fc2"}
NEOX_ROLES = {"qkv": "attention.query_key_value", "o": "attention.dense", "up": "mlp.dense_h_to_4h",
              "down": "mlp.dense_4h_to_h"}

ADAPTERS: list[DecoderAdapter] = [
    DecoderAdapter("Llama", ("llama",), base="model", layers="layers", roles=LLAMA_ROLES),
    DecoderAdapter("Mistral", ("mistral",), base="model", layers="layers", roles=LLAMA_ROLES),
    # layer_types holds each block's sliding/full attention; max_window_layers only derives it
    DecoderAdapter("Qwen2", ("qwen2",), base="model", layers="layers", roles=LLAMA_ROLES,
                   threshold_keys=("max_window_layers",)),
    DecoderAdapter("Qwen3", ("qwen3",), base="model", layers="layers", roles=LLAMA_ROLES,
                   threshold_keys=("max_window_layers",)),
    DecoderAdapter("Gemma 2", ("gemma2",), base="model", layers="layers", roles=LLAMA_ROLES, residual_down=False),
    DecoderAdapter("Gemma 3 (text)", ("gemma3_text",), base="model", layers="layers", roles=LLAMA_ROLES,
                   residual_down=False),
    DecoderAdapter("Phi-3", ("phi3",), base="model", layers="layers", roles=PHI3_ROLES),
    DecoderAdapter("GPT-2", ("gpt2",), base="transformer", layers="h", roles=GPT2_ROLES, depth_key="n_layer",
                   index_dependent_flags=("scale_attn_by_inverse_layer_idx",), final_layers=("ln_f",)),
    DecoderAdapter("OPT", ("opt",), base="model", layers="decoder.layers", roles=OPT_ROLES,
                   final_layers=("decoder.final_layer_norm", "decoder.project_out")),
    DecoderAdapter("GPT-NeoX", ("gpt_neox",), base="gpt_neox", layers="layers", roles=NEOX_ROLES,
                   final_layers=("final_layer_norm",)),
]


@dataclass(frozen=True)
class LanguageTower:
    """A multimodal model whose language model is one of the families above: only its blocks are
    fused; the vision tower and the projector are never touched."""

    family: str
    model_types: tuple[str, ...]
    language_model: str  # the language model (a family's `base`) inside the loaded model


LANGUAGE_TOWERS: list[LanguageTower] = [
    LanguageTower("LLaVA", ("llava",), language_model="model.language_model"),
]

# Mixture-of-experts configs carry one of these; see docs/ARCHITECTURES.md for why they are refused
MOE_KEYS = ("num_experts_per_tok", "num_local_experts", "num_experts")

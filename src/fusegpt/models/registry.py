"""The lookup from a loaded model to its adapter, and the one-line refusals."""
from __future__ import annotations

from dataclasses import replace

from transformers import PreTrainedModel

from ..errors import FuseGPTError
from .adapter import DecoderAdapter
from .families import ADAPTERS, LANGUAGE_TOWERS, MOE_KEYS


def supported_families() -> str:
    towers = ", ".join(t.family for t in LANGUAGE_TOWERS)
    return f"{', '.join(a.family for a in ADAPTERS)}; {towers} over any of these"


def _family(model_type: str | None) -> DecoderAdapter | None:
    return next((a for a in ADAPTERS if model_type in a.model_types), None)


def adapter_for(model: PreTrainedModel) -> DecoderAdapter:
    """The adapter of the model's family, or a one-line FuseGPTError naming the supported ones."""
    config, text = model.config, model.config.get_text_config()
    model_type, name = config.model_type, f"'{config.model_type}' ({type(model).__name__})"
    if any(getattr(text, key, None) for key in MOE_KEYS):
        raise FuseGPTError(f"mixture-of-experts model {name} is not supported yet: experts are not aligned "
                           f"across blocks; supported families: {supported_families()}")
    tower = next((t for t in LANGUAGE_TOWERS if model_type in t.model_types), None)
    adapter = _family(text.model_type if tower else model_type)
    if adapter is None:
        inner = f" with language model '{text.model_type}'" if tower else ""
        raise FuseGPTError(f"unsupported architecture {name}{inner}; supported families: {supported_families()}")
    if tower:
        adapter = replace(adapter, family=f"{tower.family} ({adapter.family})", model_types=tower.model_types,
                          base=tower.language_model)
    for flag in adapter.index_dependent_flags:
        if getattr(text, flag, False):
            raise FuseGPTError(f"{adapter.family} with {flag}=True is not supported: its blocks depend on their "
                               "index, which changes when blocks are removed")
    return adapter

"""Architecture adapters: the only code that knows where a family keeps its blocks."""
from .adapter import DecoderAdapter
from .families import ADAPTERS, LANGUAGE_TOWERS
from .registry import adapter_for, supported_families

__all__ = ["ADAPTERS", "LANGUAGE_TOWERS", "DecoderAdapter", "adapter_for", "supported_families"]

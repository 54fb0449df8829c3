"""Architecture adapters: the only code that knows where a family keeps its blocks."""
from .adapter import DecoderAdapter
from .registry import ADAPTERS, adapter_for, supported_families

__all__ = ["ADAPTERS", "DecoderAdapter", "adapter_for", "supported_families"]

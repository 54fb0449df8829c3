"""Calibration and evaluation data: protocol texts, calibration windows, perplexity token streams."""
from .._lazy import lazy_exports

_EXPORTS = {"protocol_text": ".sources", "calibration_windows": ".windows", "perplexity_ids": ".windows"}
__getattr__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)

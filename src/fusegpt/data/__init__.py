"""Calibration and evaluation data: protocol texts, calibration windows, perplexity token streams."""

from fusegpt.data.sources import protocol_text
from fusegpt.data.windows import calibration_windows, perplexity_ids

__all__ = ["calibration_windows", "perplexity_ids", "protocol_text"]

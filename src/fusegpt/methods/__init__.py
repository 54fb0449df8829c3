"""Compression methods as selection x repair: a criterion says which block goes next
(`selection.py`), a repair says what removing it means (`repair.py`). `--method` names are
shortcuts for the combinations that papers use."""
from __future__ import annotations

from .repair import REPAIRS, Repair
from .selection import SELECTIONS, Scores, Selection
from .step import StepContext, StepOutcome

__all__ = ["REPAIRS", "SELECTIONS", "Repair", "Scores", "Selection", "StepContext", "StepOutcome"]

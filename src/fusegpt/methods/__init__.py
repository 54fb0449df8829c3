"""The code of the compression methods, each a selection criterion x a repair: a criterion says
which block goes next (`selection.py`), a repair what removing it means (`repair.py`, `fuse.py`,
`lora.py`, `linear.py`). catalog.py registers each under its name and says what it needs; `--method`
names are shortcuts for the combinations that papers use."""
from __future__ import annotations

from .selection import Scores
from .step import StepContext, StepOutcome

__all__ = ["Scores", "StepContext", "StepOutcome"]

"""What a method gets to work with and what it reports back for one removal."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..calibrate import BlockStack
from ..config import CompressConfig
from ..models import DecoderAdapter


@dataclass
class StepContext:
    stack: BlockStack
    adapter: DecoderAdapter
    config: CompressConfig
    step: int
    progress: bool = True


@dataclass
class StepOutcome:
    group: list[int] = field(default_factory=list)  # original indices of the blocks that absorbed it
    losses: list[float] = field(default_factory=list)  # tuning loss per epoch
    seconds: dict[str, float] = field(default_factory=dict)

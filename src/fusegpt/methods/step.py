"""What a method gets to work with and what it reports back for one removal."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel

from ..calibrate import BlockStack
from ..config import CompressConfig
from ..models import DecoderAdapter


@dataclass(frozen=True)
class StepContext:
    model: PreTrainedModel  # for its final norm and LM head only: blocks are reached through `stack`
    stack: BlockStack
    adapter: DecoderAdapter
    config: CompressConfig
    input_ids: torch.Tensor  # the calibration windows, whose next tokens are the labels of a loss
    to_remove: int  # K, the blocks this run removes
    step: int = 0
    progress: bool = True
    candidates: list[int] | None = None  # current indices an iterative criterion scores this step (None: all)
    prior: dict[int, float] | None = None  # each block's latest score (original index): the order candidates run in
    to_beat: float = math.inf  # the lowest score found this step so far: a candidate that cannot get below it stops early


@dataclass
class StepOutcome:
    group: list[int] = field(default_factory=list)  # original indices of the blocks that absorbed or healed it
    losses: list[float] = field(default_factory=list)  # tuning loss per epoch
    step_losses: list[float] = field(default_factory=list)  # and per optimiser step
    trial: list[dict] = field(default_factory=list)  # each pair of rates tried: its held-out losses (tuning/trial.py)
    trial_block_passes: int = 0  # what the pairs not chosen spent
    seconds: dict[str, float] = field(default_factory=dict)
    optimizer_steps: int = 0
    block_passes: int = 0  # tuning compute: forward + backward of one block on one window
    passes_by_rank: list[int] | None = None  # each rank's share of them (torch.distributed)

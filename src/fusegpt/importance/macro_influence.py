"""Macro Influence: how much the network's final representation changes without a block.

    MI(i) = 1 - mean over windows and tokens of cos(H(full, X), H(full without B_i, X))

The input to block i comes from the cache, so only blocks after i are re-run (candidates.py)."""
from __future__ import annotations

import math

from ..calibrate import BlockStack
from .candidates import Measure, score_each
from .similarity import cosine_distance_sum


def macro_influence(stack: BlockStack, samples: int, candidates: list[int] | None = None,
                    progress: bool = False, prior: dict[int, float] | None = None, to_beat: float = math.inf) -> dict[int, float]:
    """MI of each candidate (current index; default every block) by original index, on the first
    `samples` calibration windows."""
    reference = stack.final[:samples]
    measure = Measure(lambda final, windows: cosine_distance_sum(reference[windows], final), reference.shape[1])
    return score_each(stack, measure, candidates, samples, "macro influence", progress, prior, to_beat)

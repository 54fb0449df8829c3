"""Macro Influence: how much the network's final representation changes without a block.

    MI(i) = 1 - mean over windows and tokens of cos(H(full, X), H(full without B_i, X))

The input to block i comes from the cache, so only blocks after i are re-run."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..calibrate import BlockStack
from .candidates import score_each


def mean_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over windows and tokens of the cosine similarity over the hidden dimension."""
    return F.cosine_similarity(a.float(), b.float(), dim=-1).mean().item()


def macro_influence(stack: BlockStack, samples: int, candidates: list[int] | None = None,
                    progress: bool = False) -> dict[int, float]:
    """MI of each candidate (current index; default every block) by original index, on the first
    `samples` calibration windows."""
    reference = stack.final[:samples]

    def score(i: int) -> float:
        return 1.0 - mean_cosine(reference, stack.run(i + 1, len(stack), stack.boundaries[i][:samples]))

    return score_each(stack, score, candidates, "macro influence", progress)

"""ShortGPT's Block Influence: how much a block changes its own input.

    BI(i) = 1 - mean over windows and tokens of cos(input of B_i, output of B_i)

Local, unlike Macro Influence: both sides are cached boundaries, so no block is run."""
from __future__ import annotations

from ..calibrate import BlockStack
from .similarity import mean_cosine


def block_influence(stack: BlockStack, samples: int) -> list[float]:
    """BI of every current block, on the first `samples` calibration windows."""
    return [1.0 - mean_cosine(stack.boundaries[i][:samples], stack.boundaries[i + 1][:samples])
            for i in range(len(stack))]

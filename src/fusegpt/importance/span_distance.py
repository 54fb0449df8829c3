"""The span criterion of ReplaceMe (arXiv 2505.02819) and of Gromov et al. (arXiv 2403.17887):
how far apart the hidden states entering a span of K consecutive blocks and those leaving it are.

    D(i) = 1 - mean over windows and tokens of cos(input of B_i, output of B_{i+K-1})

Both sides are cached boundaries, so no block is run."""
from __future__ import annotations

from ..calibrate import BlockStack
from .similarity import mean_cosine


def span_distance(stack: BlockStack, span: int, samples: int) -> dict[int, float]:
    """D of every span of `span` current blocks, keyed by the original index of its first block,
    on the first `samples` calibration windows."""
    return {stack.origin[i]: 1.0 - mean_cosine(stack.boundaries[i][:samples], stack.boundaries[i + span][:samples])
            for i in range(len(stack) - span + 1)}

"""The "Reassessing Layer Pruning" baseline: drop the K blocks just before the final one, which
is kept. The score is only the block's original position."""
from __future__ import annotations

from .base import Method, Scores
from .remove import remove_block
from .step import StepContext


def positions(ctx: StepContext) -> list[float]:
    return [float(i) for i in ctx.stack.origin]


def first_of_the_tail(ctx: StepContext, scores: Scores) -> int:
    """The first block still to drop of the original L-K-1 .. L-2: the blocks are dropped in
    their original order, so it is always followed by the rest of the tail and the final block."""
    return len(ctx.stack) - 1 - (ctx.to_remove - ctx.step)


LAST = Method("position", positions, remove_block, choose=first_of_the_tail, one_shot=True)

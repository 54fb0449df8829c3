"""Plain removal: delete the lowest-MI block, no fusion, no tuning. The reference for every
quality claim."""
from __future__ import annotations

import time

from .base import Method, macro_influence_scores
from .step import StepContext, StepOutcome


def remove_block(ctx: StepContext, index: int) -> StepOutcome:
    started = time.perf_counter()
    ctx.stack.delete(index)
    ctx.stack.refresh(index)
    return StepOutcome(seconds={"refresh": time.perf_counter() - started})


REMOVE = Method("macro_influence", macro_influence_scores, remove_block)

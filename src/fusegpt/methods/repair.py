"""The plainest repair: removing the chosen block means deleting it. Every repair's remove function
(catalog.REPAIRS) removes the block at a current index and leaves the cached boundaries up to date;
a repair that heals does so once, after the last removal."""
from __future__ import annotations

import time

from .step import StepContext, StepOutcome


def delete_block(ctx: StepContext, index: int) -> StepOutcome:
    """Plain removal: no fusion, no tuning. The reference for every quality claim."""
    started = time.perf_counter()
    ctx.stack.delete(index)
    ctx.stack.refresh(index)
    return StepOutcome(seconds={"refresh": time.perf_counter() - started})

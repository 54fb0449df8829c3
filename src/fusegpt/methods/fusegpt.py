"""FuseGPT: inject the removed block into its group of neighbours, then tune the group to
reproduce what it computed before the removal."""
from __future__ import annotations

import time

from ..fusion import group_window, inject, trainable_parameters
from ..tuning import tune_group
from .step import StepContext, StepOutcome


def fuse_block(ctx: StepContext, index: int) -> StepOutcome:
    stack, fusion = ctx.stack, ctx.config.fusion
    start, end = group_window(index, len(stack), fusion.group_size)
    teacher = stack.boundaries[end]  # the un-pruned group's output, already cached
    group = [stack.origin[j] for j in range(start, end) if j != index]
    removed = stack.delete(index)
    neighbours = stack.blocks[start:end - 1]

    started = time.perf_counter()
    inject(ctx.adapter, removed, neighbours, fusion)
    coefficients, others = trainable_parameters(ctx.adapter, neighbours, fusion.train_norms)
    losses = tune_group(stack, start, end - 1, teacher, coefficients, others, ctx.config.tune,
                        seed=ctx.config.seed + ctx.step, progress=ctx.progress)
    tuned = time.perf_counter()
    stack.refresh(start)
    return StepOutcome(group=group, losses=losses,
                       seconds={"tune": tuned - started, "refresh": time.perf_counter() - tuned})

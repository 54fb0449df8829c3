"""Repairs: what removing the chosen block means. Each removes the block at a current index and
leaves the cached boundaries up to date; a repair that heals does so once, after the last removal."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from .fuse import fuse_block
from .linear import replace_with_linear_map
from .lora import heal_fused, heal_with_lora
from .step import StepContext, StepOutcome


def delete_block(ctx: StepContext, index: int) -> StepOutcome:
    """Plain removal: no fusion, no tuning. The reference for every quality claim."""
    started = time.perf_counter()
    ctx.stack.delete(index)
    ctx.stack.refresh(index)
    return StepOutcome(seconds={"refresh": time.perf_counter() - started})


@dataclass(frozen=True)
class Repair:
    remove: Callable[[StepContext, int], StepOutcome]  # removes the block at a current index
    # tunes the pruned model after the last removal (None from it: nothing to do with these settings)
    heal: Callable[[StepContext], StepOutcome | None] | None = None


REPAIRS: dict[str, Repair] = {
    "none": Repair(delete_block),
    "fuse": Repair(fuse_block, heal=heal_fused),  # FuseGPT: inject into the neighbours, tune the group
    "lora": Repair(delete_block, heal=heal_with_lora),  # LoRA on every kept block against the dense output
    "linear": Repair(replace_with_linear_map),  # ReplaceMe: a least-squares map folded into the block before
}

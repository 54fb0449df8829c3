"""LoRA healing, the paper's fair baseline (MI removal + LoRA, SLEB + LoRA): fusion has to beat
plain healing of the pruned model with the same data, loss and optimiser, and at least its compute.

After the K blocks are removed, every role linear of every kept block gets a LoRA
pair (rank `lora_rank`, or `rank` when LoRA is off for fusion), and all kept blocks together
learn to map the embeddings onto the dense model's final hidden states. FuseGPT tunes `epochs`
epochs over the same windows at each of its K steps, so K x `epochs` epochs here is the same
number of optimiser steps. LoRA and norms learn at `lr`, the rate LoRA has inside a fusion step
(at the coefficients' higher rate LoRA diverges: docs/BENCHMARKS.md). All kept blocks are on the compute device together while
they heal, unlike a fusion step, which onloads one group."""
from __future__ import annotations

import time
from dataclasses import replace

from ..fusion import FusedLinear
from ..tuning import tune_group
from .step import StepContext, StepOutcome


def heal_with_lora(ctx: StepContext) -> StepOutcome:
    stack, adapter, config = ctx.stack, ctx.adapter, ctx.config
    started = time.perf_counter()
    lora, norms = [], []
    for block in stack.blocks:
        for role, linear in adapter.linears(block).items():
            healed = FusedLinear(linear, lora_rank=config.fusion.lora_rank or config.fusion.rank)
            adapter.replace_linear(block, role, healed)
            lora += healed.lora_parameters()
        if config.fusion.train_norms:
            norms += adapter.norm_parameters(block)
    tune = replace(config.tune, epochs=ctx.to_remove * config.tune.epochs, coef_lr=config.tune.lr)
    tuned = tune_group(stack, 0, len(stack), ctx.teacher, lora + norms, [], tune, seed=config.seed,
                       progress=ctx.progress)
    return StepOutcome(group=list(stack.origin), losses=tuned.losses, optimizer_steps=tuned.optimizer_steps,
                       block_passes=tuned.block_passes,
                       seconds={"tune": time.perf_counter() - started})

"""Global healing against the dense model (its next-token predictions by default, or its final
hidden states: `TuneConfig.distill`): LoRA healing, the paper's fair
baseline (MI removal + LoRA, SLEB + LoRA), which fusion has to beat with the same data, loss and
optimiser and no more compute; and FuseGPT's optional final global tune of its fused blocks.

After the K blocks are removed, every role linear of every kept block gets a LoRA
pair (rank `lora_rank`, or `rank` when LoRA is off for fusion), and all kept blocks together
learn to map the embeddings onto what the dense model computes from them. The budget is compute:
fusegpt tunes its G neighbours for `epochs` at each of its K steps (then `global_epochs` over every
kept block); LoRA gets the fewest epochs over the L - K kept blocks whose block passes reach as
many, on the same windows (`TuneConfig.lora_epochs`). LoRA and norms learn at `lr`, the rate LoRA
has inside a fusion step (at the coefficients' higher rate LoRA diverges: docs/BENCHMARKS.md). All
kept blocks are on the compute device together while they heal, unlike a fusion step, which
onloads one group."""
from __future__ import annotations

import time
from dataclasses import replace

from ..calibrate import onloaded
from ..fusion import FusedLinear
from ..predictions import dense_targets
from ..tuning import trial_then_tune, tune_group
from ..tuning.losses import LogitDistillation
from .step import StepContext, StepOutcome


def heal_globally(ctx: StepContext, epochs: int, trial: bool = False) -> StepOutcome:
    """All kept blocks together learn to map the embeddings onto the dense model's predictions (or
    final hidden states) for `epochs` epochs: fused layers train their coefficients (at `global_coef_lr`) and
    LoRA; every other role linear gets a LoRA pair; LoRA and norms learn at `lr`. Coefficients
    that a local tune has already fitted overfit at a high rate (78.07 against 61.21 PPL on SmolLM2
    with 3 local epochs); coefficients that start here at zero need it (docs/BENCHMARKS.md)."""
    stack, adapter, config = ctx.stack, ctx.adapter, ctx.config
    started = time.perf_counter()
    coefficients, others = [], []
    for block in stack.blocks:
        for role, linear in adapter.linears(block).items():
            if not isinstance(linear, FusedLinear):
                linear = FusedLinear(linear, lora_rank=config.fusion.lora_rank or config.fusion.rank)
                adapter.replace_linear(block, role, linear)
            coefficients += linear.coefficient_parameters()
            others += linear.lora_parameters()
        if config.fusion.train_norms:
            others += adapter.norm_parameters(block)
    tune = replace(config.tune, epochs=epochs, coef_lr=config.tune.coefficient_rate)
    head = adapter.head(ctx.model)
    objective = LogitDistillation(head, compute=config.tune.compute) if config.tune.distill == "logits" else None
    with onloaded([head] if objective else [], stack.device):
        teacher = stack.dense_final
        if objective and config.tune.distill_top_k:  # the dense predictions once, in place of its hidden states
            teacher = dense_targets(head, teacher, config.tune.distill_top_k, config.tune.distill_stride, stack.device,
                                    objective.max_elements * 2)
            stack.dense_final = None
        tried, spent = [], 0
        if trial and tune.trial_runs() > 1:  # the rates chosen on held-out windows (tuning/trial.py)
            tuned, tried, spent = trial_then_tune(stack, stack.embeddings, teacher, coefficients, others, tune,
                                                  config.seed, ctx.progress, objective)
        else:
            tuned = tune_group(stack, 0, len(stack), stack.embeddings, teacher, coefficients, others, tune,
                               seed=config.seed, progress=ctx.progress, objective=objective)
    return StepOutcome(group=list(stack.origin), losses=tuned.losses, step_losses=tuned.step_losses,
                       optimizer_steps=tuned.optimizer_steps, block_passes=tuned.block_passes,
                       passes_by_rank=tuned.passes_by_rank, seconds={"tune": time.perf_counter() - started},
                       trial=tried, trial_block_passes=spent)


def heal_with_lora(ctx: StepContext) -> StepOutcome:
    """The LoRA baseline, with at least fusegpt's block passes unless `heal_epochs` says otherwise."""
    depth = len(ctx.stack) + ctx.to_remove
    epochs = ctx.config.tune.lora_epochs(depth, ctx.to_remove, ctx.config.fusion.group_size,
                                         ctx.stack.embeddings.shape[0])
    return heal_globally(ctx, epochs)


def heal_fused(ctx: StepContext) -> StepOutcome | None:
    """FuseGPT's optional final global tune (`global_epochs`), after the last fusion."""
    tune = ctx.config.tune
    return heal_globally(ctx, tune.global_epochs, trial=True) if tune.global_epochs else None

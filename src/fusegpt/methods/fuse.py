"""FuseGPT's repair: inject the removed block into its group of neighbours, then tune the group
to reproduce what it computed before the removal.

With fusion-aware choice (`fuse_eval_candidates` k > 0, the authors' --fuse-eval) the block is
the one of the k lowest-scored blocks whose trial fusion keeps the model's final hidden states
closest to the current ones."""
from __future__ import annotations

import copy
import time
from dataclasses import replace

import torch

from ..runtime import distributed
from ..calibrate import BlockStack
from ..fusion import group_window, inject, trainable_parameters
from ..importance import mean_cosine
from ..tuning import TuneResult, tune_group
from .linear import fold_seam_map
from .selection import Scores, scored
from .step import StepContext, StepOutcome


def _fuse(ctx: StepContext, stack: BlockStack, index: int, epochs: int) -> tuple[int, list[int], TuneResult]:
    """Delete block `index` of `stack`, inject it into its neighbours and tune them for `epochs`.
    Returns the group's first index, the neighbours' original indices and the tuning result;
    cached boundaries from the group on are stale."""
    fusion = ctx.config.fusion
    start, end = group_window(index, len(stack), fusion.group_size)
    group = [stack.origin[j] for j in range(start, end) if j != index]
    # no local tuning (a global tune may train the coefficients later): no group input, no teacher
    tuning = epochs > 0
    inputs = stack.inputs(start) if tuning else None
    # the teacher: the un-pruned group's output (taken before the seam map changes the group), or
    # the dense model's at the same place: what the first block after the group received in the
    # dense model (the final output at the end), computed after the map to hold fewer buffers
    teacher = stack.run(start, end, inputs) if tuning and ctx.config.tune.teacher == "group" else None
    # the block before is in the group (its input is unchanged); a family whose MLP output is
    # normalised before the residual cannot take the map and fuses without it (docs/ARCHITECTURES.md)
    if ctx.config.fusion.seam_map and start < index and ctx.adapter.residual_down:
        before = stack.run(start, index - 1, inputs) if tuning else stack.inputs(index - 1)
        fold_seam_map(replace(ctx, stack=stack), index, before)
    if tuning and teacher is None:
        teacher = stack.dense_inputs(stack.origin[end] if end < len(stack) else len(stack.dense_kwargs))
    removed = stack.delete(index)
    neighbours = stack.blocks[start:end - 1]
    inject(ctx.adapter, removed, neighbours, fusion)
    if not tuning:
        return start, group, TuneResult(losses=[], optimizer_steps=0, passes_by_rank=[0] * distributed.world_size())
    coefficients, others = trainable_parameters(ctx.adapter, neighbours, fusion.train_norms)
    tuned = tune_group(stack, start, end - 1, inputs, teacher, coefficients, others,
                       replace(ctx.config.tune, epochs=epochs), seed=ctx.config.seed + ctx.step, progress=ctx.progress)
    return start, group, tuned


def fuse_block(ctx: StepContext, index: int) -> StepOutcome:
    started = time.perf_counter()
    start, group, tuned = _fuse(ctx, ctx.stack, index, ctx.config.tune.epochs)
    refreshed = time.perf_counter()
    ctx.stack.refresh(start)
    return StepOutcome(group=group, losses=tuned.losses, optimizer_steps=tuned.optimizer_steps,
                       block_passes=tuned.block_passes, passes_by_rank=tuned.passes_by_rank,
                       seconds={"tune": refreshed - started, "refresh": time.perf_counter() - refreshed})


def _trial_stack(stack: BlockStack, start: int, end: int) -> BlockStack:
    """A stack that shares the cached boundaries and every block but start..end-1, which are deep
    copies: fusing into it leaves the model (and the dense view of it) as it was."""
    trial = copy.copy(stack)
    trial.blocks = [copy.deepcopy(b) if start <= i < end else b for i, b in enumerate(stack.blocks)]
    trial.origin, trial.block_kwargs = list(stack.origin), list(stack.block_kwargs)
    trial.boundaries = list(stack.boundaries)
    return trial


def trial_distance(ctx: StepContext, index: int) -> float:
    """1 - mean cosine between the current final hidden states and those after fusing block
    `index` with a `fuse_eval_epochs` tune, on the scoring windows. The trial runs on copies of
    the group and under a forked RNG, so the real fusion afterwards draws the same initialisations
    as it would without trials."""
    trial = _trial_stack(ctx.stack, *group_window(index, len(ctx.stack), ctx.config.fusion.group_size))
    with torch.random.fork_rng(devices=[]):  # initialisations are drawn on the CPU
        start, _, _ = _fuse(ctx, trial, index, ctx.config.fuse_eval_epochs)
    samples = ctx.config.mi_samples
    final = trial.run(start, len(trial), trial.boundaries[start][:samples])
    return 1.0 - mean_cosine(ctx.stack.final[:samples], final)


def fusion_aware(ctx: StepContext, scores: Scores) -> int:
    """The best trial fusion among the `fuse_eval_candidates` lowest-scored blocks."""
    candidates = sorted(scored(ctx, scores), key=lambda i: scores[ctx.stack.origin[i]])
    return min(candidates[:ctx.config.fuse_eval_candidates], key=lambda i: trial_distance(ctx, i))

"""Selection criteria: which block goes next. Each scoring function scores the current blocks
(lower = removed sooner) and a choosing function picks one; catalog.CRITERIA names which go
together and whether a criterion scores the dense model once and keeps its scores."""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Callable

from ..importance import block_influence, calibration_nll, macro_influence, output_divergence, span_distance
from .step import StepContext

Scores = dict[int, float]  # original index -> score


def lowest(ctx: StepContext, scores: Scores) -> int:
    """The current block with the lowest score (the earliest one on a tie) among those scored."""
    return min(scored(ctx, scores), key=lambda i: scores[ctx.stack.origin[i]])


def scored(ctx: StepContext, scores: Scores) -> list[int]:
    """The current indices of the blocks that have a score this step."""
    return [i for i, o in enumerate(ctx.stack.origin) if o in scores]


def first_of_the_tail(ctx: StepContext, scores: Scores) -> int:
    """The first block still to drop of the original L-K-1 .. L-2: the blocks are dropped in
    their original order, so it is always followed by the rest of the tail and the final block."""
    return len(ctx.stack) - 1 - (ctx.to_remove - ctx.step)


def first_of_the_span(ctx: StepContext, scores: Scores) -> int:
    """The first remaining block of the K-block span that starts at the lowest-scored block: the
    span is removed front to back, each step taking the block that has moved into its place."""
    begin = min(scores, key=scores.get)
    return next(i for i, o in enumerate(ctx.stack.origin) if begin <= o < begin + ctx.to_remove)


def next_given(ctx: StepContext, scores: Scores) -> int:
    """The current index of the step's block in the user's list (`--blocks`)."""
    return ctx.stack.origin.index(ctx.config.blocks[ctx.step])


def by_macro_influence(ctx: StepContext) -> Scores:
    """FuseGPT: the block without which the final hidden states change least (iterative)."""
    return macro_influence(ctx.stack, ctx.config.mi_samples, ctx.candidates, ctx.progress, ctx.prior, ctx.to_beat)


def by_block_influence(ctx: StepContext) -> list[float]:
    """ShortGPT: the block that changes its own input least, scored once."""
    return block_influence(ctx.stack, ctx.config.mi_samples)


def by_calibration_nll(ctx: StepContext) -> Scores:
    """SLEB: the block without which the calibration loss is lowest (iterative)."""
    return calibration_nll(ctx.stack, ctx.adapter.head(ctx.model), ctx.input_ids, ctx.config.mi_samples,
                           ctx.candidates, ctx.progress, ctx.prior, ctx.to_beat)


def by_output_divergence(ctx: StepContext) -> Scores:
    """SLEB's criterion against the dense model's predictions instead of the text's next tokens (iterative)."""
    return output_divergence(ctx.stack, ctx.adapter.head(ctx.model), ctx.config.mi_samples, ctx.config.kl_top_k,
                             ctx.config.kl_stride, ctx.candidates, ctx.progress, ctx.prior, ctx.to_beat)


def by_position(ctx: StepContext) -> list[float]:
    """"Reassessing Layer Pruning": the blocks just before the final one."""
    return [float(i) for i in ctx.stack.origin]


def by_span_distance(ctx: StepContext) -> Scores:
    """ReplaceMe / "Unreasonable Ineffectiveness of the Deeper Layers": the contiguous span of K
    blocks whose input and output are most alike (cosine), scored once; a score per span start."""
    return span_distance(ctx.stack, ctx.to_remove, ctx.config.mi_samples)


def unscored(ctx: StepContext) -> list[float]:
    """The user's blocks (`--blocks`), in the user's order: to compare repairs on the same blocks."""
    return [0.0] * len(ctx.stack)


def score_step(ctx: StepContext, score: Callable[[StepContext], list[float] | Scores], latest: Scores, chunk: int,
               limit: int = 0) -> Scores:
    """This step's scores. With `chunk` 0 (or a block never scored), every block's. Otherwise lazily:
    the blocks in the order of their latest scores, `chunk` at a time, until the best fresh score is
    no higher than any unscored block's latest one. Removing blocks moves the output further from the
    dense model's, so scores grow from step to step, and a block whose old score already exceeds a
    fresh one cannot be the lowest; exact as long as that holds. With `limit`, only the `limit`
    blocks that were closest to their steps' best are candidates (`BlockStack.score_margins`): a
    heuristic, since an old score says little of a block's rank once others' scores have grown, and
    a block stopped early kept only a bound just above its step's best (bench/criterion.py)."""
    stack = ctx.stack

    def scored_for(candidates: list[int] | None, to_beat: float = math.inf) -> Scores:
        computed = score(replace(ctx, candidates=candidates, prior=latest or None, to_beat=to_beat))
        return computed if isinstance(computed, dict) else dict(zip(stack.origin, computed))

    def rank(i: int) -> float:
        return stack.score_margins.get(stack.origin[i], latest[stack.origin[i]]) if limit else latest[stack.origin[i]]

    if not chunk or any(o not in latest for o in stack.origin):
        fresh = scored_for(None)
    else:
        order = sorted(range(len(stack)), key=rank)[:limit or None]
        fresh = {}
        for start in range(0, len(order), chunk):
            fresh.update(scored_for(sorted(order[start:start + chunk]), min(fresh.values(), default=math.inf)))
            rest = order[start + chunk:]
            if not rest or min(fresh.values()) <= min(latest[stack.origin[i]] for i in rest):
                break
    best = min(fresh.values())
    stack.score_margins.update({o: stack.score_estimates.get(o, score) - best for o, score in fresh.items()})
    return fresh

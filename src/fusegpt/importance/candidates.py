"""Scoring a set of candidate blocks, the loop the iterative criteria share.

A criterion is a mean over the positions of the scoring windows of something never negative
(1 - cosine, a KL, a negative log-likelihood) of the final hidden states without the candidate. So
a candidate whose sum over the windows run so far, divided by all the positions, already exceeds the
lowest full score cannot be chosen: its run stops there, and its score is that lower bound (still a
valid bound for lazy rescoring, since scores only grow from step to step). A criterion may also
give a cheap lower bound of its sum (the KL's, from k of the vocabulary's logits): the candidate's
windows are then all run and bounded first, and the costly exact values computed only while the
bounds leave it a chance. Candidates run in the order of how far they were behind the best of the
step they were last scored in, or of Block Influence (free from the cached boundaries) before any,
so the likely winners come first. Exact: the same block is chosen as with every run completed."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from tqdm.auto import tqdm

from ..calibrate import BlockStack
from ..runtime.distributed import gather, share
from .block_influence import block_influence

CHUNKS = 8  # a candidate's scoring windows are run in up to this many parts, each a chance to stop


@dataclass
class Measure:
    """A criterion as a sum over positions: `total(final, windows)` of the final hidden states of
    the windows `windows` (a slice of the scoring windows), `positions` in each window."""

    total: Callable[[torch.Tensor, slice], float]
    positions: int
    # a cheap lower bound of `total` on the same arguments, or None
    bound: Callable[[torch.Tensor, slice], float] | None = None


def _score(stack: BlockStack, i: int, measure: Measure, samples: int, best: float) -> tuple[float, bool, float]:
    """Candidate i's mean of `measure`, or (with `stack.prune_candidates`) a lower bound of it once
    that exceeds `best`; True when it is such a bound; and an estimate of the mean to rank it by
    (the bound's sum over the windows it covers)."""
    count = measure.positions * samples
    size = max(1, -(-samples // CHUNKS))
    parts = [slice(start, min(start + size, samples)) for start in range(0, samples, size)]
    known, pending = 0.0, []  # exact sums, plus the bounds of the `pending` parts (no exact sum yet)

    def ruled_out(exact: bool) -> bool:
        return stack.prune_candidates and not exact and known / count > best

    for n, windows in enumerate(parts, 1):
        final = stack.run(i + 1, len(stack), stack.boundaries[i][windows])
        if measure.bound is None:
            known += measure.total(final, windows)
        else:
            pending.append((windows, final, measure.bound(final, windows)))
            known += pending[-1][2]
        if ruled_out(n == len(parts) and not pending):
            return known / count, True, known / (measure.positions * windows.stop)
    for n, (windows, final, lower) in enumerate(pending, 1):  # the bounds left it a chance
        known += measure.total(final, windows) - lower
        if ruled_out(n == len(pending)):
            return known / count, True, known / count
    return known / count, False, known / count


def score_each(stack: BlockStack, measure: Measure, candidates: list[int] | None, samples: int, desc: str,
               progress: bool, prior: dict[int, float] | None = None, to_beat: float = math.inf) -> dict[int, float]:
    """{original index: mean of `measure` without the candidate, on the first `samples` windows} of
    every candidate (current index; None: every current block), or a lower bound above the lowest
    score (or `to_beat`, the lowest found this step before this call) for a candidate that cannot be
    chosen (its index goes into `stack.score_bounds`). A streamed model runs its candidates together
    instead (BlockStack.outputs_without), to the end. Under torchrun each rank scores its share and
    every rank gets all the scores."""
    candidates = list(range(len(stack))) if candidates is None else list(candidates)
    if prior is None or any(stack.origin[i] not in prior for i in candidates):
        prior = dict(zip(stack.origin, block_influence(stack, samples)))
    # the likely winners first: by their margins behind their steps' best (a candidate stopped early
    # has an estimate, not only its bound), or by the prior before any
    mine = sorted(share(candidates), key=lambda i: stack.score_margins.get(stack.origin[i], prior[stack.origin[i]]))
    count = measure.positions * samples
    scores: dict[int, float] = {}
    estimates: dict[int, float] = {}
    bounds: list[int] = []
    with tqdm(total=len(mine), desc=desc, unit="block", leave=False, disable=not progress) as bar:
        if stack.candidate_group > 1:
            for i, final in stack.outputs_without(mine, samples):
                scores[stack.origin[i]] = estimates[stack.origin[i]] = measure.total(final, slice(0, samples)) / count
                bar.update()
        else:
            best = to_beat
            for i in mine:
                score, bounded, estimates[stack.origin[i]] = _score(stack, i, measure, samples, best)
                scores[stack.origin[i]] = score
                if bounded:
                    bounds.append(stack.origin[i])
                best = min(best, score)
                bar.update()
    # every rank gets every score, bound and estimate (so all rank the next step's candidates alike)
    everything = gather({o: (scores[o], estimates[o], o in bounds) for o in scores})
    stack.score_estimates.update({o: estimate for o, (_, estimate, _) in everything.items()})
    stack.score_bounds.update(o for o, (_, _, bounded) in everything.items() if bounded)
    return {o: score for o, (score, _, _) in everything.items()}

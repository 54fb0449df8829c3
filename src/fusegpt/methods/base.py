"""A compression method: a criterion that scores the current blocks, a rule that chooses one and
what removing it means. Methods hold no state: the pipeline keeps the stack, the scores and the
report, and calls these in the paper's order."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..importance import macro_influence
from .step import StepContext, StepOutcome

Scores = dict[int, float]  # original index -> score


def lowest(ctx: StepContext, scores: Scores) -> int:
    """The current block with the lowest score (the earliest one on a tie)."""
    return min(range(len(ctx.stack)), key=lambda i: scores[ctx.stack.origin[i]])


def macro_influence_scores(ctx: StepContext) -> list[float]:
    return macro_influence(ctx.stack, ctx.config.mi_samples, ctx.progress)


@dataclass(frozen=True)
class Method:
    criterion: str  # what the scores measure, as the report names it
    score: Callable[[StepContext], list[float]]  # one score per current block
    remove: Callable[[StepContext, int], StepOutcome]  # removes the block at a current index
    choose: Callable[[StepContext, Scores], int] = lowest  # current index of the block to remove
    one_shot: bool = False  # score the dense model once and keep those scores for every step
    heal: Callable[[StepContext], StepOutcome] | None = None  # tunes the pruned model after the last removal

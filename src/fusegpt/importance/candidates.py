"""Scoring a set of candidate blocks, the loop the iterative criteria share."""
from __future__ import annotations

from typing import Callable

from ..calibrate import BlockStack
from ..distributed import map_shared


def score_each(stack: BlockStack, score: Callable[[int], float], candidates: list[int] | None, desc: str,
               progress: bool) -> dict[int, float]:
    """{original index: score(current index)} of every candidate (None: every current block); under
    torchrun each rank scores its share and every rank gets all the scores."""
    candidates = list(range(len(stack))) if candidates is None else list(candidates)
    scores = map_shared(lambda j: score(candidates[j]), len(candidates), desc, progress)
    return {stack.origin[i]: s for i, s in zip(candidates, scores)}

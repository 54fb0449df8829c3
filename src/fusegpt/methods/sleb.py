"""SLEB: remove, one at a time, the block without which the calibration loss is lowest, rescoring
the pruned model at every step."""
from __future__ import annotations

from ..importance import calibration_nll
from .base import Method
from .remove import remove_block
from .step import StepContext


def calibration_nll_scores(ctx: StepContext) -> list[float]:
    return calibration_nll(ctx.stack, ctx.adapter.head(ctx.model), ctx.input_ids, ctx.config.mi_samples,
                           ctx.progress)


SLEB = Method("calibration_nll", calibration_nll_scores, remove_block)

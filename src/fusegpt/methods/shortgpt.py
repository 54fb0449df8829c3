"""ShortGPT: remove the K blocks of lowest Block Influence (1 - cos of a block's own input and
output), scored once on the dense model."""
from __future__ import annotations

from ..importance import block_influence
from .base import Method
from .remove import remove_block
from .step import StepContext


def block_influence_scores(ctx: StepContext) -> list[float]:
    return block_influence(ctx.stack, ctx.config.mi_samples)


SHORTGPT = Method("block_influence", block_influence_scores, remove_block, one_shot=True)

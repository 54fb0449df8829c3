"""Inject a removed block into its neighbours, and fold fused layers back into plain ones."""
from __future__ import annotations

import torch.nn as nn

from ..config import FusionConfig
from ..models import DecoderAdapter
from .layer import FusedLinear, InjectedWeight, linear_weights


def inject(adapter: DecoderAdapter, removed: nn.Module, neighbours: list[nn.Module], config: FusionConfig) -> None:
    """Give every role linear of every neighbour a zero-initialised coefficient on the removed
    block's same-role weight; the neighbourhood still computes exactly the block-removed function."""
    donors = {role: InjectedWeight(*linear_weights(linear)) for role, linear in adapter.linears(removed).items()}
    for block in neighbours:
        for role, linear in adapter.linears(block).items():
            if not isinstance(linear, FusedLinear):
                linear = FusedLinear(linear, config.coefficient, config.rank, config.lora_rank)
                adapter.replace_linear(block, role, linear)
            linear.inject(donors[role], normalized=config.normalize_donors)


def merge_block(adapter: DecoderAdapter, block: nn.Module) -> None:
    """Replace each fused linear of the block with the plain linear it computes."""
    for role, linear in adapter.linears(block).items():
        if isinstance(linear, FusedLinear):
            adapter.replace_linear(block, role, linear.merge())


def trainable_parameters(adapter: DecoderAdapter, blocks: list[nn.Module],
                         train_norms: bool) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(coefficients, other trainables: LoRA and norms) of the fused blocks."""
    coefficients, others = [], []
    for block in blocks:
        for linear in adapter.linears(block).values():
            if isinstance(linear, FusedLinear):
                coefficients += linear.coefficient_parameters()
                others += linear.lora_parameters()
        if train_norms:
            others += adapter.norm_parameters(block)
    return coefficients, others

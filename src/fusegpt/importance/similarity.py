"""Cosine similarity of hidden states, the measure of Macro Influence, Block Influence and spans."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def mean_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over windows and tokens of the cosine similarity over the hidden dimension."""
    return F.cosine_similarity(a.float(), b.float(), dim=-1).mean().item()


def cosine_distance_sum(a: torch.Tensor, b: torch.Tensor) -> float:
    """Sum over windows and tokens of 1 - cosine similarity over the hidden dimension."""
    return (1.0 - F.cosine_similarity(a.float(), b.float(), dim=-1)).sum().item()

"""Learnable coefficient matrices C that scale an injected weight element-wise (C ⊙ W_k).

Every form starts at zero, so a freshly injected block contributes nothing and the fused
model starts exactly as the block-removed model."""
from __future__ import annotations

import math

import torch
import torch.nn as nn


class LowRankCoefficient(nn.Module):
    """C = P Q with P (out x r) zero-initialised and Q (r x in) Kaiming-uniform, as in the paper."""

    def __init__(self, out_features: int, in_features: int, rank: int):
        super().__init__()
        rank = min(rank, out_features, in_features)
        self.P = nn.Parameter(torch.zeros(out_features, rank))
        self.Q = nn.Parameter(torch.empty(rank, in_features))
        nn.init.kaiming_uniform_(self.Q, a=math.sqrt(5))

    def forward(self) -> torch.Tensor:
        return self.P @ self.Q

    @torch.no_grad()
    def restart(self) -> None:
        """Back to contributing nothing, as when injected."""
        self.P.zero_()


class VectorCoefficient(nn.Module):
    """One coefficient per output row, broadcast along the input dimension."""

    def __init__(self, out_features: int, in_features: int, rank: int = 0):
        super().__init__()
        self.c = nn.Parameter(torch.zeros(out_features, 1))

    def forward(self) -> torch.Tensor:
        return self.c

    @torch.no_grad()
    def restart(self) -> None:
        self.c.zero_()


class FullCoefficient(nn.Module):
    """One coefficient per weight element."""

    def __init__(self, out_features: int, in_features: int, rank: int = 0):
        super().__init__()
        self.C = nn.Parameter(torch.zeros(out_features, in_features))

    def forward(self) -> torch.Tensor:
        return self.C

    @torch.no_grad()
    def restart(self) -> None:
        self.C.zero_()


COEFFICIENTS: dict[str, type[nn.Module]] = {
    "lowrank": LowRankCoefficient,
    "vector": VectorCoefficient,
    "full": FullCoefficient,
}

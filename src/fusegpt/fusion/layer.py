"""A linear layer that has absorbed the same-role weights of removed blocks.

    W_eff = W + B A + sum_k C_k ⊙ W_k        b_eff = b + sum_k c_k ⊙ b_k

W and every W_k are frozen; C_k (see coefficients.py), the bias coefficients c_k and the LoRA
pair (B zero-initialised) are trained. The base may be an nn.Linear or a transposed-weight
Conv1D; the math always runs in (out, in) orientation, and `merge()` folds everything
back into a plain layer of the base's own type, so the saved state dict fits the architecture."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers.pytorch_utils import Conv1D

from .coefficients import COEFFICIENTS


def linear_weights(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight in (out, in) orientation, bias) of an nn.Linear, a Conv1D or a FusedLinear (whose
    merged weight is what a removed block that had itself absorbed others contributes)."""
    if isinstance(layer, FusedLinear):
        with torch.no_grad():
            return layer.effective_weight().detach(), layer.effective_bias()
    weight, bias = layer.weight.detach(), None if layer.bias is None else layer.bias.detach()
    return (weight.T if isinstance(layer, Conv1D) else weight), bias


@torch.no_grad()
def set_linear_weights(layer: nn.Linear | Conv1D, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    """Write a weight in (out, in) orientation (and a bias) into an nn.Linear or a Conv1D."""
    layer.weight.copy_(weight.T if isinstance(layer, Conv1D) else weight)
    if bias is not None:
        layer.bias.copy_(bias)


class FusedLinear(nn.Module):
    def __init__(self, base: nn.Linear | Conv1D, coefficient: str = "lowrank", rank: int = 128, lora_rank: int = 0):
        super().__init__()
        weight, bias = linear_weights(base)
        self.out_features, self.in_features = weight.shape
        self.transposed = isinstance(base, Conv1D)
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.coefficient, self.rank = coefficient, rank
        self.injected_weights: list[torch.Tensor] = []
        self.injected_biases: list[torch.Tensor | None] = []
        self.coefficients = nn.ModuleList()
        self.bias_coefficients = nn.ParameterList()
        self.lora_A = self.lora_B = None
        if lora_rank > 0:
            r = min(lora_rank, self.out_features, self.in_features)
            self.lora_A = nn.Parameter(torch.empty(r, self.in_features, dtype=torch.float32))
            self.lora_B = nn.Parameter(torch.zeros(self.out_features, r, dtype=torch.float32))
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
            self.lora_A.requires_grad_(False), self.lora_B.requires_grad_(False)

    def inject(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        """Absorb a removed block's same-role weight (and bias) through new zero coefficients."""
        if weight.shape != self.weight.shape:
            raise ValueError(f"injected weight {tuple(weight.shape)} does not match {tuple(self.weight.shape)}")
        self.injected_weights.append(weight.detach().to(self.weight.device))
        coefficient = COEFFICIENTS[self.coefficient](self.out_features, self.in_features, self.rank)
        self.coefficients.append(coefficient.requires_grad_(False).to(self.weight.device))
        has_bias = self.bias is not None and bias is not None
        self.injected_biases.append(bias.detach().to(self.weight.device) if has_bias else None)
        self.bias_coefficients.append(nn.Parameter(torch.zeros(self.out_features, device=self.weight.device),
                                                   requires_grad=False))

    def _apply(self, fn, recurse=True):
        """Keep the frozen injected tensors (plain attributes, shared between neighbours) on the
        same device as the layer when it is onloaded or offloaded."""
        super()._apply(fn, recurse)
        self.injected_weights = [fn(w) for w in self.injected_weights]
        self.injected_biases = [None if b is None else fn(b) for b in self.injected_biases]
        return self

    def effective_weight(self) -> torch.Tensor:
        weight = self.weight.float()
        if self.lora_B is not None:
            weight = weight + self.lora_B @ self.lora_A
        for coefficient, injected in zip(self.coefficients, self.injected_weights):
            weight = weight + coefficient() * injected.float()
        return weight.to(self.weight.dtype)

    def effective_bias(self) -> torch.Tensor | None:
        if self.bias is None:
            return None
        bias = self.bias.float()
        for c, injected in zip(self.bias_coefficients, self.injected_biases):
            if injected is not None:
                bias = bias + c * injected.float()
        return bias.to(self.bias.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.effective_weight(), self.effective_bias())

    def coefficient_parameters(self) -> list[nn.Parameter]:
        """Coefficients of the injected weights, and of the injected biases that exist."""
        biases = [c for c, b in zip(self.bias_coefficients, self.injected_biases) if b is not None]
        return [*self.coefficients.parameters(), *biases]

    def lora_parameters(self) -> list[nn.Parameter]:
        return [] if self.lora_A is None else [self.lora_A, self.lora_B]

    @torch.no_grad()
    def merge(self) -> nn.Linear | Conv1D:
        """The plain layer, of the base's type, that this fused layer computes."""
        weight = self.effective_weight()
        with torch.device(self.weight.device):
            if self.transposed:
                layer, weight = Conv1D(self.out_features, self.in_features), weight.T
            else:
                layer = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        layer.to(self.weight.dtype)
        layer.weight.copy_(weight)
        if self.bias is not None:
            layer.bias.copy_(self.effective_bias())
        return layer

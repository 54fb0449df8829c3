"""A linear layer that has absorbed the same-role weights of removed blocks.

    W_eff = W + F + B A + sum_k s_k C_k ⊙ W_k        b_eff = b + f + sum_k s_k c_k ⊙ b_k

W and every W_k are frozen; C_k (see coefficients.py), the bias coefficients c_k and the LoRA
pair (B zero-initialised) are trained; s_k is 1, or |W| / |W_k| with normalised donors. F and f, zero unless a seam map was fitted
(methods/linear.py), are frozen: a map T makes the layer compute T^T W_eff, written as
F = T^T W_eff - W with the trained parts restarted at zero, so that what is tuned afterwards
adds to the mapped layer rather than passing through the map. The base W is never written to,
so `base_only` can show the layer as it was before any of this: the dense model, for a teacher.
The base may be an nn.Linear or a transposed-weight Conv1D; the math always runs in (out, in)
orientation, and `merge()` folds everything back into a plain layer of the base's own type, so
the saved state dict fits the architecture."""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator

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
            bias = layer.effective_bias()
            return layer.effective_weight().to(layer.weight.dtype), None if bias is None else bias.to(layer.bias.dtype)
    weight, bias = layer.weight.detach(), None if layer.bias is None else layer.bias.detach()
    return (weight.T if isinstance(layer, Conv1D) else weight), bias


class InjectedWeight(nn.Module):
    """A removed block's same-role weight (out, in) and bias, frozen and held once: every neighbour
    that absorbs it holds this same module, so moving the neighbours to a device or dtype moves
    one copy (the second neighbour finds it already there)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        self.register_buffer("weight", weight.detach(), persistent=False)
        self.register_buffer("bias", None if bias is None else bias.detach(), persistent=False)


class FusedLinear(nn.Module):
    def __init__(self, base: nn.Linear | Conv1D, coefficient: str = "lowrank", rank: int = 128, lora_rank: int = 0):
        super().__init__()
        weight, bias = linear_weights(base)
        self.out_features, self.in_features = weight.shape
        self.transposed = isinstance(base, Conv1D)
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.coefficient, self.rank = coefficient, rank
        self.injected = nn.ModuleList()  # InjectedWeight modules, shared with the other neighbours
        self.donor_scales: list[float] = []  # each donor's factor in this layer (1 unless normalised)
        self.coefficients = nn.ModuleList()
        self.bias_coefficients = nn.ParameterList()
        self.register_buffer("mapped", None, persistent=False)  # F, (out, in); see the module docstring
        self.register_buffer("mapped_bias", None, persistent=False)  # f
        self.base_only = False
        self.lora_A = self.lora_B = None
        if lora_rank > 0:
            r = min(lora_rank, self.out_features, self.in_features)
            self.lora_A = nn.Parameter(torch.empty(r, self.in_features, dtype=torch.float32))
            self.lora_B = nn.Parameter(torch.zeros(self.out_features, r, dtype=torch.float32))
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
            self.lora_A.requires_grad_(False), self.lora_B.requires_grad_(False)

    def inject(self, weight: torch.Tensor | InjectedWeight, bias: torch.Tensor | None = None,
               normalized: bool = False) -> None:
        """Absorb a removed block's same-role weight (and bias) through new zero coefficients; an
        InjectedWeight is held as it is, shared with whoever else holds it. `normalized` scales
        the donor to this layer's own norm (|W| / |W_k|, Frobenius): the coefficients then learn
        at the same pace whatever the donor's scale, which a norm after the layer leaves free
        (a post-sublayer norm makes a block compute the same with its projection times any factor)."""
        donor = weight if isinstance(weight, InjectedWeight) else InjectedWeight(weight, bias)
        if donor.weight.shape != self.weight.shape:
            raise ValueError(f"injected weight {tuple(donor.weight.shape)} does not match {tuple(self.weight.shape)}")
        scale = (self.weight.float().norm() / donor.weight.float().norm().clamp_min(1e-12)).item() if normalized else 1.0
        self.donor_scales.append(scale)
        self.injected.append(donor.to(self.weight.device))
        coefficient = COEFFICIENTS[self.coefficient](self.out_features, self.in_features, self.rank)
        self.coefficients.append(coefficient.requires_grad_(False).to(self.weight.device))
        self.bias_coefficients.append(nn.Parameter(torch.zeros(self.out_features, device=self.weight.device),
                                                   requires_grad=False))

    @torch.no_grad()
    def apply_map(self, transform: torch.Tensor) -> None:
        """From now on compute what this layer computes now, times `transform` (out, out) on the
        output; the trained parts restart at zero on top of it."""
        transform = transform.to(self.weight.device, torch.float64)
        weight = transform.T @ self.effective_weight().double() - self.weight.double()
        self.mapped = weight.to(self.weight.dtype)
        if self.bias is not None:
            self.mapped_bias = (transform.T @ self.effective_bias().double() - self.bias.double()).to(self.bias.dtype)
        for coefficient in self.coefficients:
            coefficient.restart()
        for c in self.bias_coefficients:
            c.zero_()
        if self.lora_B is not None:
            self.lora_B.zero_()

    def effective_weight(self) -> torch.Tensor:
        """The weight this layer computes with, in float32 (autograd flows to the trained parts)."""
        weight = self.weight.float() if self.mapped is None else self.weight.float() + self.mapped.float()
        if self.lora_B is not None:
            weight = weight + self.lora_B @ self.lora_A
        for coefficient, donor, scale in zip(self.coefficients, self.injected, self.donor_scales):
            # fp32 x the donor's own dtype: autograd keeps the donor as it is (bf16 in a bf16
            # run), not an fp32 copy of it, for the coefficient's gradient
            weight = weight + (coefficient() * scale if scale != 1.0 else coefficient()) * donor.weight
        return weight

    def effective_bias(self) -> torch.Tensor | None:
        if self.bias is None:
            return None
        bias = self.bias.float() if self.mapped_bias is None else self.bias.float() + self.mapped_bias.float()
        for c, donor, scale in zip(self.bias_coefficients, self.injected, self.donor_scales):
            if donor.bias is not None:
                bias = bias + c * scale * donor.bias.float()
        return bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.base_only:
            return F.linear(x, self.weight, self.bias)
        bias = self.effective_bias()
        return F.linear(x, self.effective_weight().to(x.dtype), None if bias is None else bias.to(x.dtype))

    def coefficient_parameters(self) -> list[nn.Parameter]:
        """Coefficients of the injected weights, and of the injected biases that exist."""
        biases = [c for c, donor in zip(self.bias_coefficients, self.injected)
                  if self.bias is not None and donor.bias is not None]
        return [*self.coefficients.parameters(), *biases]

    def lora_parameters(self) -> list[nn.Parameter]:
        return [] if self.lora_A is None else [self.lora_A, self.lora_B]

    @torch.no_grad()
    def merge(self) -> nn.Linear | Conv1D:
        """The plain layer, of the base's type, that this fused layer computes."""
        weight = self.effective_weight().to(self.weight.dtype)
        with torch.device(self.weight.device):
            if self.transposed:
                layer, weight = Conv1D(self.out_features, self.in_features), weight.T
            else:
                layer = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        layer.to(self.weight.dtype)
        layer.weight.copy_(weight)
        if self.bias is not None:
            layer.bias.copy_(self.effective_bias().to(self.bias.dtype))
        return layer


@contextmanager
def base_only(modules: list[nn.Module]) -> Iterator[None]:
    """Every fused layer inside `modules` computes with its base weight alone for the duration:
    the blocks as they were before fusion, LoRA and seam maps (norms are the caller's concern)."""
    fused = [m for module in modules for m in module.modules() if isinstance(m, FusedLinear)]
    for layer in fused:
        layer.base_only = True
    try:
        yield
    finally:
        for layer in fused:
            layer.base_only = False

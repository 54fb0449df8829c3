"""Distances between the fused group's output (student) and the original group's (teacher).

Inputs are hidden states of shape (batch, tokens, hidden)."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _kl(student: torch.Tensor, teacher: torch.Tensor, dim: int) -> torch.Tensor:
    """KL(teacher || student) of softmax distributions along `dim`, summed along it and averaged
    over every other position."""
    log_p = F.log_softmax(teacher.float(), dim=dim)
    log_q = F.log_softmax(student.float(), dim=dim)
    return (log_p.exp() * (log_p - log_q)).sum(dim).mean()


def kl_batch(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """The authors' loss: softmax across the windows of the batch, per token and channel."""
    return _kl(student, teacher, dim=0)


def kl_hidden(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Softmax across the last dimension of each token: its hidden units, or the vocabulary on logits."""
    return _kl(student, teacher, dim=-1)


def mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(student.float(), teacher.float())


def relative_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of |s - t|^2 / |t|^2. Real LLMs carry massive activations (the first token
    reaches norms ~100x the others' in a few channels): a plain MSE then tunes almost only that
    token, while this weighs every token's relative error alike."""
    s, t = student.float(), teacher.float()
    return ((s - t).pow(2).sum(-1) / t.pow(2).sum(-1).clamp_min(1e-12)).mean()


def cosine(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """1 - mean cosine similarity per token: the quantity Macro Influence measures."""
    return 1.0 - F.cosine_similarity(student.float(), teacher.float(), dim=-1).mean()


LOSSES: dict[str, Loss] = {"kl_batch": kl_batch, "kl_hidden": kl_hidden, "mse": mse, "relative_mse": relative_mse,
                           "cosine": cosine}
# losses that compare windows with each other and are exactly zero on a batch of one
BATCH_LOSSES = ("kl_batch",)

"""Distances between the fused group's output (student) and the original group's (teacher).

Inputs are hidden states of shape (batch, tokens, hidden). `LogitDistillation` compares them
through the model's own head instead: the next-token distributions they predict."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
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


class LogitDistillation:
    """KL(teacher's next-token distribution || student's), mean over tokens, where both are the
    model's own head (final norm, LM head, soft-cap) applied to final hidden states.

    The vocabulary-wide tensors exist for a chunk of positions at a time, and only while that chunk
    is computed, so a 256k-vocabulary model needs ~`max_elements` floats per tensor whatever the
    batch. The head is frozen: what flows back is the gradient on the student's hidden states, which
    each chunk computes at once beside its loss (the head's forward for teacher and student and one
    backward, instead of recomputing both forwards in the backward pass)."""

    def __init__(self, head: nn.Module, max_elements: int = 2**25):
        self.head, self.max_elements = head, max_elements

    def _chunk(self, student: torch.Tensor, teacher: torch.Tensor, grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        with torch.no_grad():
            log_p = F.log_softmax(self.head(teacher).float(), dim=-1)
        with torch.enable_grad():
            student = student.detach().requires_grad_(grad)
            log_q = F.log_softmax(self.head(student).float(), dim=-1)
            loss = (log_p.exp() * (log_p - log_q)).sum()
            return loss.detach(), (torch.autograd.grad(loss, student)[0] if grad else None)

    def __call__(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return _ChunkedKL.apply(student, teacher, self)


class _ChunkedKL(torch.autograd.Function):
    """The mean KL over positions, with the gradient on the student's hidden states computed in
    the forward pass, chunk by chunk, and only scaled in the backward pass."""

    @staticmethod
    def forward(ctx, student: torch.Tensor, teacher: torch.Tensor, loss: LogitDistillation) -> torch.Tensor:
        s, t = student.flatten(0, -2), teacher.flatten(0, -2)
        chunk = max(1, loss.max_elements // loss.head.lm_head.weight.shape[0])
        grad = ctx.needs_input_grad[0]
        total, grads = torch.zeros((), device=s.device), []
        for i in range(0, s.shape[0], chunk):
            value, part = loss._chunk(s[i:i + chunk], t[i:i + chunk], grad)
            total = total + value
            grads.append(part)
        if grad:
            ctx.save_for_backward(torch.cat(grads).view_as(student) / s.shape[0])
        return total / s.shape[0]

    @staticmethod
    def backward(ctx, upstream: torch.Tensor):
        (grad,) = ctx.saved_tensors
        return grad * upstream.to(grad.dtype), None, None


LOSSES: dict[str, Loss] = {"kl_batch": kl_batch, "kl_hidden": kl_hidden, "mse": mse, "relative_mse": relative_mse,
                           "cosine": cosine}
# losses that compare windows with each other and are exactly zero on a batch of one
BATCH_LOSSES = ("kl_batch",)

"""Distances between the fused group's output (student) and the original group's (teacher).

Inputs are hidden states of shape (batch, tokens, hidden). `LogitDistillation` compares them
through the model's own head instead: the next-token distributions they predict."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

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
    is computed: each chunk is checkpointed (its logits, teacher's included, are recomputed in
    backward rather than kept), so a 256k-vocabulary model needs ~`max_elements` floats per tensor
    whatever the batch. The head is frozen; gradients reach the student's hidden states."""

    def __init__(self, head: nn.Module, max_elements: int = 2**25):
        self.head, self.max_elements = head, max_elements

    def _chunk(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            log_p = F.log_softmax(self.head(teacher).float(), dim=-1)
        log_q = F.log_softmax(self.head(student).float(), dim=-1)
        return (log_p.exp() * (log_p - log_q)).sum()

    def __call__(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        s, t = student.flatten(0, -2), teacher.flatten(0, -2)
        vocab = self.head.lm_head.weight.shape[0]
        chunk = max(1, self.max_elements // vocab)
        total = torch.zeros((), device=s.device)
        for i in range(0, s.shape[0], chunk):
            part = (s[i:i + chunk], t[i:i + chunk])
            total = total + (checkpoint(self._chunk, *part, use_reentrant=False) if torch.is_grad_enabled()
                             else self._chunk(*part))
        return total / s.shape[0]


LOSSES: dict[str, Loss] = {"kl_batch": kl_batch, "kl_hidden": kl_hidden, "mse": mse, "relative_mse": relative_mse,
                           "cosine": cosine}
# losses that compare windows with each other and are exactly zero on a batch of one
BATCH_LOSSES = ("kl_batch",)

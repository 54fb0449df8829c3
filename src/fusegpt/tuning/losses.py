"""Distances between the fused group's output (student) and the original group's (teacher).

Inputs are hidden states of shape (batch, tokens, hidden). `LogitDistillation` compares them
through the model's own head instead: the next-token distributions they predict."""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from ..models.adapter import OutputHead

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
    model's own head (final norm, LM head, soft-cap: an `OutputHead`) applied to final hidden states.

    The vocabulary-wide tensors exist for a chunk of ~`max_elements` logits at a time, in two
    buffers (three with a soft-cap) that every chunk and step reuses in place: a 256k-vocabulary
    model needs no more whatever the batch, and no step pays for fresh pages (on a CPU, allocating
    the tensors anew cost as much as the head's matrix products). The head is frozen: what flows
    back is the gradient on the student's hidden states, which each chunk computes at once beside
    its loss (softmax(student) - softmax(teacher) on the logits, through the head's weight and its
    final layers)."""

    def __init__(self, head: OutputHead, max_elements: int = 2**25):
        self.head, self.max_elements = head, max_elements
        self._buffers: list[torch.Tensor] = []

    def rows_per_chunk(self) -> int:
        return max(1, self.max_elements // self.head.lm_head.weight.shape[0])

    def _scratch(self, rows: int, like: torch.Tensor) -> list[torch.Tensor]:
        """(rows, vocabulary) fp32 views of the reused buffers on `like`'s device."""
        if not self._buffers or self._buffers[0].device != like.device or len(self._buffers[0]) < rows:
            size = (rows, self.head.lm_head.weight.shape[0])
            self._buffers = [torch.empty(size, device=like.device) for _ in range(3 if self.head.softcap else 2)]
        return [b[:rows] for b in self._buffers]

    def _logits(self, features: torch.Tensor, out: torch.Tensor, capped: torch.Tensor | None) -> torch.Tensor:
        """The head's logits of `features` (rows, hidden), written into `out`; with a soft-cap,
        `out` keeps tanh(logits / cap) (its derivative's ingredient) and `capped` the capped logits."""
        weight, bias = self.head.lm_head.weight, self.head.lm_head.bias
        if weight.dtype == out.dtype:
            torch.mm(features, weight.t(), out=out) if bias is None else torch.addmm(bias, features, weight.t(), out=out)
        else:
            out.copy_(F.linear(features, weight, bias))
        if capped is None:
            return out
        out.div_(self.head.softcap).tanh_()
        return torch.mul(out, self.head.softcap, out=capped)

    def _chunk(self, student: torch.Tensor, teacher: torch.Tensor, grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The chunk's summed KL, and its gradient on the student's hidden states (when `grad`)."""
        p, logits, *capped = self._scratch(student.shape[0], student)
        capped = capped[0] if capped else None
        with torch.no_grad():  # the teacher: p = softmax(t), and <p, t - max t> - log z_t = sum p log p
            t = self._logits(self.head.features(teacher), logits, capped)
            t.sub_(t.amax(-1, keepdim=True))
            torch.exp(t, out=p)
            z = p.sum(-1, keepdim=True)
            p.div_(z)
            loss = _row_dot(p, t) - z.log().squeeze(-1)
        with torch.enable_grad():
            student = student.detach().requires_grad_(grad)
            features = self.head.features(student)
        with torch.no_grad():  # the student: KL = sum p log p - <p, s - max s> + log z_s
            s = self._logits(features.detach(), logits, capped)
            s.sub_(s.amax(-1, keepdim=True))
            loss -= _row_dot(p, s)
            q = s.exp_()
            z = q.sum(-1, keepdim=True)
            loss += z.log().squeeze(-1)
            if not grad:
                return loss.sum(), None
            gradient = q.div_(z).sub_(p)  # d KL / d logits = q - p
            if capped is not None:  # through cap * tanh(x / cap): times 1 - tanh^2
                gradient.mul_(logits.square_().neg_().add_(1))
            weight = self.head.lm_head.weight
            upstream = torch.mm(gradient.to(weight.dtype), weight)
        return loss.sum(), torch.autograd.grad(features, student, upstream.to(features.dtype))[0]

    def __call__(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return _ChunkedKL.apply(student, teacher, self)


def _row_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Each row's dot product, without a (rows, vocabulary) product in between."""
    return (a.unsqueeze(1) @ b.unsqueeze(-1)).view(-1)


class _ChunkedKL(torch.autograd.Function):
    """The mean KL over positions, with the gradient on the student's hidden states computed in
    the forward pass, chunk by chunk, and only scaled in the backward pass."""

    @staticmethod
    def forward(ctx, student: torch.Tensor, teacher: torch.Tensor, loss: LogitDistillation) -> torch.Tensor:
        s, t = student.flatten(0, -2), teacher.flatten(0, -2)
        chunk = loss.rows_per_chunk()
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

"""Distances between the fused group's output (student) and the original group's (teacher).

Inputs are hidden states of shape (batch, tokens, hidden). `LogitDistillation` compares them
through the model's own head instead: the next-token distributions they predict."""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F

from ..predictions import DenseTargets

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
    """KL(teacher's next-token distribution || student's), mean over tokens, where the student's is
    the model's own head (final norm, LM head, soft-cap: an `OutputHead`) applied to its final hidden
    states, and the teacher's either the same head applied to the dense model's (`teacher` a tensor of
    hidden states: the whole vocabulary) or the dense model's k most likely tokens and the rest's mass,
    computed once (`teacher` a `DenseTargets`: the (k + 1)-bin KL, and no teacher logits per step).

    The vocabulary-wide tensors exist for a chunk of ~`max_elements` logits at a time, in two
    buffers (three with a soft-cap) that every chunk and step reuses in place: a 256k-vocabulary
    model needs no more whatever the batch, and no step pays for fresh pages (on a CPU, allocating
    the tensors anew cost as much as the head's matrix products). The head is frozen: what flows
    back is the gradient on the student's hidden states, which each chunk computes at once beside
    its loss (softmax(student) - softmax(teacher) on the logits, through the head's weight and its
    final layers)."""

    def __init__(self, head: OutputHead, max_elements: int = 2**25, compute: str = "float32"):
        self.head, self.max_elements = head, max_elements
        self._buffers: list[torch.Tensor] = []
        # compute "bfloat16": the head's two products (logits, and the gradient through the weight)
        # run in bf16 on a copy of the frozen weight made once per device, each into one reused bf16
        # buffer; the softmax, the KL and the gradient on the logits stay in fp32
        self.low = torch.bfloat16 if compute == "bfloat16" else None
        self._low_weight: tuple[tuple, torch.Tensor] | None = None
        self._low_buffer = torch.empty(0)

    def rows_per_chunk(self, buffers: int = 2) -> int:
        """Positions per chunk: `max_elements` logits in each of two buffers, as many in all when fewer
        are needed (the top-k teacher's one: larger chunks run the head's products faster)."""
        return max(1, 2 * self.max_elements // (buffers * self.head.lm_head.weight.shape[0]))

    def _scratch(self, rows: int, like: torch.Tensor, count: int) -> list[torch.Tensor]:
        """`count` (one more with a soft-cap) (rows, vocabulary) fp32 views of the reused buffers on
        `like`'s device."""
        count += bool(self.head.softcap)
        if len(self._buffers) < count or self._buffers[0].device != like.device or len(self._buffers[0]) < rows:
            size = (max(rows, len(self._buffers[0]) if self._buffers else 0), self.head.lm_head.weight.shape[0])
            self._buffers = [torch.empty(size, device=like.device) for _ in range(count)]
        return [b[:rows] for b in self._buffers[:count]]

    def _weight(self) -> torch.Tensor:
        """The head's weight in `low`, copied when the weight is new or has moved."""
        weight = self.head.lm_head.weight
        key = (weight.data_ptr(), weight.device, tuple(weight.shape))
        if self._low_weight is None or self._low_weight[0] != key:
            self._low_weight = (key, weight.detach().to(self.low))
        return self._low_weight[1]

    def _low_scratch(self, like: torch.Tensor) -> torch.Tensor:
        """A (rows, vocabulary) view of the reused bf16 buffer, shaped like `like`."""
        if self._low_buffer.device != like.device or self._low_buffer.shape[0] < like.shape[0] \
                or self._low_buffer.shape[1:] != like.shape[1:]:
            self._low_buffer = torch.empty(like.shape, dtype=self.low, device=like.device)
        return self._low_buffer[:like.shape[0]]

    def _logits(self, features: torch.Tensor, out: torch.Tensor, capped: torch.Tensor | None) -> torch.Tensor:
        """The head's logits of `features` (rows, hidden), written into `out`; with a soft-cap,
        `out` keeps tanh(logits / cap) (its derivative's ingredient) and `capped` the capped logits."""
        weight, bias = self.head.lm_head.weight, self.head.lm_head.bias
        if self.low is not None:
            out.copy_(torch.mm(features.to(self.low), self._weight().t(), out=self._low_scratch(out)))
            if bias is not None:
                out.add_(bias)
        elif weight.dtype == out.dtype:
            torch.mm(features, weight.t(), out=out) if bias is None else torch.addmm(bias, features, weight.t(), out=out)
        else:
            out.copy_(F.linear(features, weight, bias))
        if capped is None:
            return out
        out.div_(self.head.softcap).tanh_()
        return torch.mul(out, self.head.softcap, out=capped)

    def _chunk(self, student: torch.Tensor, teacher: torch.Tensor, grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The chunk's summed KL, and its gradient on the student's hidden states (when `grad`)."""
        p, logits, *capped = self._scratch(student.shape[0], student, 2)
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
        return loss.sum(), self._backward(features, student, gradient, logits if capped is not None else None)

    def _backward(self, features: torch.Tensor, student: torch.Tensor, gradient: torch.Tensor,
                  tanh: torch.Tensor | None) -> torch.Tensor:
        """The gradient on the student's hidden states of `gradient` on its logits (through the
        soft-cap, whose tanh(x / cap) `tanh` holds, the head's weight and its final layers)."""
        with torch.no_grad():
            if tanh is not None:  # through cap * tanh(x / cap): times 1 - tanh^2
                gradient.mul_(tanh.square_().neg_().add_(1))
            if self.low is not None:
                upstream = torch.mm(self._low_scratch(gradient).copy_(gradient), self._weight())
            else:
                weight = self.head.lm_head.weight
                upstream = torch.mm(gradient.to(weight.dtype), weight)
        return torch.autograd.grad(features, student, upstream.to(features.dtype))[0]

    def _top_chunk(self, student: torch.Tensor, ids: torch.Tensor, log_p: torch.Tensor, log_rest: torch.Tensor,
                   grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`_chunk` against the dense model's top-k tokens (ids, log_p) and the rest's mass: the
        (k + 1)-bin KL, whose gradient on the logits is q - p inside the top k and q (1 - p_rest /
        q_rest) outside it (the rest's mass spread as the student spreads it)."""
        logits, *capped = self._scratch(student.shape[0], student, 1)
        capped = capped[0] if capped else None
        with torch.enable_grad():
            student = student.detach().requires_grad_(grad)
            features = self.head.features(student)
        with torch.no_grad():
            s = self._logits(features.detach(), logits, capped)
            e = s.sub_(s.amax(-1, keepdim=True)).exp_()  # the student's probabilities times z
            top = e.gather(-1, ids)
            rest = e.scatter_(-1, ids, 0.0).sum(-1)  # summed apart from the top: no cancellation
            z = top.sum(-1) + rest
            q_rest = (rest / z).clamp_min(1e-6)  # floored as the dense side's rest is
            p = log_p.exp()
            log_q_top = top.clamp_min(1e-30).log() - z.log().unsqueeze(-1)
            loss = (p * (log_p - log_q_top)).sum(-1) + log_rest.exp() * (log_rest - q_rest.log())
            if not grad:
                return loss.sum(), None
            gradient = e.mul_(((1 - log_rest.exp() / q_rest) / z).unsqueeze(-1))
            gradient.scatter_(-1, ids, top / z.unsqueeze(-1) - p)
        return loss.sum(), self._backward(features, student, gradient, logits if capped is not None else None)

    def __call__(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        if isinstance(teacher, DenseTargets) and len(teacher.positions) != student.shape[-2]:
            student = student[..., teacher.positions.to(student.device), :]  # the positions the targets keep
        return _ChunkedKL.apply(student, teacher, self)


def _row_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Each row's dot product, without a (rows, vocabulary) product in between."""
    return (a.unsqueeze(1) @ b.unsqueeze(-1)).view(-1)


class _ChunkedKL(torch.autograd.Function):
    """The mean KL over positions, with the gradient on the student's hidden states computed in
    the forward pass, chunk by chunk, and only scaled in the backward pass."""

    @staticmethod
    def forward(ctx, student: torch.Tensor, teacher, loss: LogitDistillation) -> torch.Tensor:
        s = student.flatten(0, -2)
        if isinstance(teacher, DenseTargets):
            if teacher.shape != student.shape[:-1]:
                raise ValueError(f"targets for {tuple(teacher.shape)} positions, student {tuple(student.shape[:-1])}")
            ids, log_p = teacher.ids.flatten(0, -2), teacher.log_p.flatten(0, -2)
            rest = teacher.log_rest.flatten()

            def chunk_of(rows, grad):
                return loss._top_chunk(s[rows], ids[rows].long(), log_p[rows], rest[rows], grad)
            chunk = loss.rows_per_chunk(buffers=1)
        else:
            t = teacher.flatten(0, -2)

            def chunk_of(rows, grad):
                return loss._chunk(s[rows], t[rows], grad)
            chunk = loss.rows_per_chunk()
        grad = ctx.needs_input_grad[0]
        total, grads = torch.zeros((), device=s.device), []
        for i in range(0, s.shape[0], chunk):
            value, part = chunk_of(slice(i, i + chunk), grad)
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

"""The dense model's next-token predictions, kept small: at each position its k most likely tokens
and the mass of all the others. The kl criterion scores candidates against them
(importance/output_divergence.py) and the logit tune distils them (tuning/losses.py): computed once
from the dense model's final hidden states, they replace those hidden states and the teacher's half
of the head's work in every step. The KL between these (k + 1)-bin distributions is a lower bound of
the full KL, equal to it once k reaches the vocabulary less one."""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn as nn

MAX_ELEMENTS = 2**24  # logits held at once: 64 MiB in fp32, whatever the vocabulary


@dataclass
class DenseTargets:
    """The dense model's predictions at the given positions of every window."""

    positions: torch.Tensor  # (P,) token positions kept in each window
    ids: torch.Tensor  # (M, P, k) the k most likely tokens (int32)
    log_p: torch.Tensor  # (M, P, k) their log-probabilities
    log_rest: torch.Tensor  # (M, P) log of the probability of every other token

    def __getitem__(self, windows) -> DenseTargets:
        """The targets of some windows (an index or a slice over M)."""
        return replace(self, ids=self.ids[windows], log_p=self.log_p[windows], log_rest=self.log_rest[windows])

    def to(self, device: torch.device) -> DenseTargets:
        return replace(self, ids=self.ids.to(device), log_p=self.log_p.to(device), log_rest=self.log_rest.to(device))

    @property
    def shape(self) -> torch.Size:
        """(windows, positions): what a tensor of targets for these windows would be shaped like."""
        return self.log_rest.shape


def chunks(positions: int, head: nn.Module, max_elements: int):
    """Slices of `positions` small enough that their logits hold at most `max_elements` floats."""
    size = max(1, max_elements // head.lm_head.weight.shape[0])
    for start in range(0, positions, size):
        yield slice(start, start + size)


def log_rest(log_top: torch.Tensor) -> torch.Tensor:
    """log(1 - sum of the top probabilities), floored at log(1e-6): fp32 sums of nearly all the
    mass round to 1, and a rest of zero on one side would make the KL infinite."""
    return torch.log1p(-log_top.exp().sum(-1).clamp(max=1 - 1e-6))


@torch.no_grad()
def dense_targets(head: nn.Module, dense: torch.Tensor, top_k: int, stride: int, device: torch.device,
                  max_elements: int = MAX_ELEMENTS) -> DenseTargets:
    """The dense predictions at every `stride`-th position of `dense` (M x T x H final hidden states)."""
    positions = torch.arange(stride - 1, dense.shape[1], stride)
    vocabulary = head.lm_head.weight.shape[0]
    k = min(top_k or vocabulary, vocabulary)
    # filled in place (no second copy while concatenating); ids as int32, half of int64's bytes
    ids = torch.empty(dense.shape[0], len(positions), k, dtype=torch.int32)
    log_p = torch.empty(dense.shape[0], len(positions), k)
    for w, window in enumerate(dense):
        hidden = window[positions].to(device)
        for part in chunks(len(hidden), head, max_elements):
            logits = head(hidden[part]).float()
            top = logits.topk(k, dim=-1)
            most = logits.amax(-1, keepdim=True)  # the log-normaliser in place: no second vocabulary-wide tensor
            log_z = most + logits.sub_(most).exp_().sum(-1, keepdim=True).log()
            ids[w, part], log_p[w, part] = top.indices.cpu(), (top.values - log_z).cpu()
    return DenseTargets(positions, ids, log_p, log_rest(log_p))

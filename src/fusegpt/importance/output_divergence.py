"""Output divergence: how far the next-token predictions move from the dense model's without a block.

    KL(i) = mean over windows and tokens of KL(p_dense || p_without B_i)

SLEB's criterion with the dense model's whole distribution as the target instead of the one
next token of the text: on the few windows that scoring reads, one sampled token per position is
a noisy label (on the 12-block pydoc model of docs/BENCHMARKS.md, SLEB's third pick changed
with the calibration seed; this one's did not), and the dense distribution is what a repair that
distils from the dense model undoes. The input to block i comes from the cache, so only blocks
after i, the final norm and the LM head are run."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..calibrate import BlockStack, onloaded
from ..distributed import map_shared


@torch.no_grad()
def _mean_kl(head: nn.Module, hidden: torch.Tensor, dense: torch.Tensor, device: torch.device) -> float:
    """Mean over windows and tokens of KL(softmax(head(dense)) || softmax(head(hidden))), a window at
    a time (three vocabulary-wide tensors of a whole batch would not fit beside a large model)."""
    total = 0.0
    for h, d in zip(hidden, dense):
        log_q = F.log_softmax(head(h[None].to(device)).float(), dim=-1)
        log_p = F.log_softmax(head(d[None].to(device)).float(), dim=-1)
        total += F.kl_div(log_q, log_p, log_target=True, reduction="sum").item()
    return total / (hidden.shape[0] * hidden.shape[1])


def output_divergence(stack: BlockStack, head: nn.Module, samples: int, progress: bool = False) -> list[float]:
    """KL from the dense model's predictions without each current block, on the first `samples`
    calibration windows (under torchrun, each rank scores its share of the blocks)."""
    dense = stack.dense_scoring_final[:samples]

    def score(i: int) -> float:
        return _mean_kl(head, stack.run(i + 1, len(stack), stack.boundaries[i][:samples]), dense, stack.device)

    with onloaded([head], stack.device):
        return map_shared(score, len(stack), "output divergence", progress)

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

from ..calibrate import BlockStack, onloaded
from ..distributed import map_shared
from ..tuning.losses import kl_hidden


@torch.no_grad()
def _mean_kl(head: nn.Module, hidden: torch.Tensor, dense: torch.Tensor, device: torch.device) -> float:
    """Mean over windows and tokens of KL(softmax(head(dense)) || softmax(head(hidden))), a window at
    a time: vocabulary-wide tensors of a whole batch would not fit beside a large model. The dense
    logits are recomputed for every candidate rather than kept: on the scoring windows of a 7B model
    with a 32k vocabulary they would take 32 x 2048 x 32,000 floats (8 GiB)."""
    total = sum(kl_hidden(head(h[None].to(device)), head(d[None].to(device))).item() for h, d in zip(hidden, dense))
    return total / hidden.shape[0]


def output_divergence(stack: BlockStack, head: nn.Module, samples: int, progress: bool = False) -> list[float]:
    """KL from the dense model's predictions without each current block, on the first `samples`
    calibration windows (under torchrun, each rank scores its share of the blocks)."""
    dense = stack.dense_scoring_final[:samples]

    def score(i: int) -> float:
        return _mean_kl(head, stack.run(i + 1, len(stack), stack.boundaries[i][:samples]), dense, stack.device)

    with onloaded([head], stack.device):
        return map_shared(score, len(stack), "output divergence", progress)

"""SLEB's criterion: the calibration loss of the model without a block.

    NLL(i) = mean next-token negative log-likelihood of the calibration windows, model without B_i

The input to block i comes from the cache, so only blocks after i, the final norm and the LM
head are run."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..calibrate import BlockStack, onloaded
from .candidates import Measure, score_each


@torch.no_grad()
def _next_token_nll(head: nn.Module, hidden: torch.Tensor, input_ids: torch.Tensor, stack: BlockStack) -> float:
    """Summed NLL of every predicted token, from the last block's output, batch by batch (the
    logits of all windows at once would not fit beside a large vocabulary)."""
    total = 0.0
    for h, ids in zip(stack.batches(hidden), stack.batches(input_ids)):
        logits = head(h.to(stack.device))[:, :-1].float()
        total += F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten().to(stack.device), reduction="sum").item()
    return total


def calibration_nll(stack: BlockStack, head: nn.Module, input_ids: torch.Tensor, samples: int,
                    candidates: list[int] | None = None, progress: bool = False,
                    prior: dict[int, float] | None = None, to_beat: float = math.inf) -> dict[int, float]:
    """NLL without each candidate (current index; default every block) by original index, on the
    first `samples` calibration windows. `head` maps the last block's output to logits
    (DecoderAdapter.head)."""
    ids = input_ids[:samples]
    measure = Measure(lambda final, windows: _next_token_nll(head, final, ids[windows], stack), ids.shape[1] - 1)
    with onloaded([head], stack.device):
        return score_each(stack, measure, candidates, samples, "calibration nll", progress, prior, to_beat)

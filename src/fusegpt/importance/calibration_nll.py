"""SLEB's criterion: the calibration loss of the model without a block.

    NLL(i) = mean next-token negative log-likelihood of the calibration windows, model without B_i

The input to block i comes from the cache, so only blocks after i, the final norm and the LM
head are run. On a large vocabulary the head is most of a candidate's cost, so a candidate's loss
is first bounded from below with the logits of a few tokens per position (`nll_bound`); the whole
vocabulary's logits are computed only while those bounds leave it a chance (candidates.py). The
bound only skips work: the scores of the candidates that can still win, and so the choice, are
the exact loss's."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..calibrate import BlockStack, onloaded
from ..predictions import MAX_ELEMENTS, dense_targets
from .candidates import Measure, score_each
from .output_divergence import BOUND_FRACTION

LIKELY_TOKENS = 64  # the dense model's likeliest tokens per position whose logits bound a candidate's loss


@torch.no_grad()
def next_token_nll(head: nn.Module, hidden: torch.Tensor, input_ids: torch.Tensor, stack: BlockStack) -> float:
    """Summed NLL of every predicted token, from the last block's output, batch by batch (the
    logits of all windows at once would not fit beside a large vocabulary)."""
    total = 0.0
    for h, ids in zip(stack.batches(hidden), stack.batches(input_ids)):
        logits = head(h.to(stack.device))[:, :-1].float()
        total += F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten().to(stack.device), reduction="sum").item()
    return total


@torch.no_grad()
def nll_bound(head: nn.Module, hidden: torch.Tensor, input_ids: torch.Tensor, likely: torch.Tensor,
              device: torch.device, max_elements: int = MAX_ELEMENTS) -> float:
    """A lower bound of `next_token_nll` from each position's logits of its next token and of the
    tokens in `likely` (M x T x k ids) only: the log-normaliser over part of the vocabulary is
    below the whole's, and equal to it where that part holds all the mass."""
    features = head.features(hidden[:, :-1].to(device)).flatten(0, 1)
    following = input_ids[:, 1:].flatten().to(device)
    others = likely[:, :-1].flatten(0, 1).to(device).long()
    size = max(1, max_elements // ((others.shape[-1] + 1) * features.shape[-1]))
    total = 0.0
    for start in range(0, len(features), size):
        part = slice(start, start + size)
        tokens = torch.cat([following[part, None], others[part]], dim=-1)
        logits = head.token_logits(features[part], tokens).float()
        logits[:, 1:].masked_fill_(others[part] == following[part, None], -math.inf)  # no token counted twice
        total += (logits.logsumexp(-1) - logits[:, 0]).sum().item()
    return total * (1 - 1e-5)  # below the exact sum despite rounding, where the bound is tight


def calibration_nll(stack: BlockStack, head: nn.Module, input_ids: torch.Tensor, samples: int,
                    candidates: list[int] | None = None, progress: bool = False,
                    prior: dict[int, float] | None = None, to_beat: float = math.inf) -> dict[int, float]:
    """NLL without each candidate (current index; default every block) by original index, on the
    first `samples` calibration windows. `head` maps the last block's output to logits
    (DecoderAdapter.head)."""
    ids = input_ids[:samples]
    with onloaded([head], stack.device):
        head = head.for_autocast(stack.device)  # scoring in bf16: the head cast once, not per call
        bound = None
        if LIKELY_TOKENS * BOUND_FRACTION <= head.lm_head.weight.shape[0]:
            likely = dense_targets(head, stack.dense_scoring_final[:samples], LIKELY_TOKENS, 1, stack.device).ids
            bound = lambda final, windows: nll_bound(head, final, ids[windows], likely[windows], stack.device)  # noqa: E731
        measure = Measure(lambda final, windows: next_token_nll(head, final, ids[windows], stack), ids.shape[1] - 1,
                          bound)
        return score_each(stack, measure, candidates, samples, "calibration nll", progress, prior, to_beat)

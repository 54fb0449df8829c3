"""Output divergence: how far the next-token predictions move from the dense model's without a block.

    KL(i) = mean over scored positions of KL(p_dense || p_without B_i)

SLEB's criterion with the dense model's whole distribution as the target instead of the one
next token of the text: on the few windows that scoring reads, one sampled token per position is
a noisy label (on the 12-block pydoc model of docs/BENCHMARKS.md, SLEB's third pick changed
with the calibration seed; this one's did not), and the dense distribution is what a repair that
distils from the dense model undoes. The input to block i comes from the cache, so only blocks
after i, the final norm and the LM head are run.

Kept cheap on large vocabularies (262k or 128k tokens in current families), where the LM head,
not the blocks, is most of a candidate's cost:
- the dense side is computed once per step, and kept small: each scored position's `top_k` most
  likely tokens and the mass of all the others (the KL between these (k + 1)-bin distributions
  is a lower bound of the full KL, equal to it once k reaches the vocabulary less one);
- only every `stride`-th position is scored (the blocks still run on every position: attention
  needs them); by default only where the head outweighs the blocks (`automatic_stride`);
- a candidate's KL is first bounded from below with the student's logits of each position's k
  dense tokens only (`divergence_bound`), and the whole vocabulary's logits are computed only while
  those bounds leave the candidate a chance (candidates.py): most candidates never run the full head;
- logits exist for a chunk of positions at a time (`max_elements` floats), so memory does not grow
  with the vocabulary beyond the head's own weights."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..calibrate import BlockStack, onloaded
from ..predictions import MAX_ELEMENTS, DenseTargets, chunks, dense_targets, log_rest
from .candidates import Measure, score_each

BOUND_FRACTION = 16  # bound a candidate's KL from k logits first only when k <= vocabulary / this


@torch.no_grad()
def divergence_from(head: nn.Module, hidden: torch.Tensor, targets: DenseTargets, device: torch.device,
                    windows: slice = slice(None), max_elements: int = MAX_ELEMENTS) -> float:
    """Sum over the scored positions of KL(dense || head(hidden)) between the (k + 1)-bin
    distributions; `hidden` holds the final hidden states of the scoring windows `windows`."""
    total = 0.0
    for window, ids, log_p, rest_log in zip(hidden, targets.ids[windows], targets.log_p[windows],
                                            targets.log_rest[windows]):
        scored = window[targets.positions].to(device)
        for part in chunks(len(scored), head, max_elements):
            logits = head(scored[part]).float()
            p_ids, p_log, p_rest = ids[part].to(device).long(), log_p[part].to(device), rest_log[part].to(device)
            top = logits.gather(-1, p_ids)
            most = logits.amax(-1, keepdim=True)  # log-normaliser in place: no second vocabulary-wide tensor
            q_log = top - (most + logits.sub_(most).exp_().sum(-1, keepdim=True).log())
            kl_top = (p_log.exp() * (p_log - q_log)).sum(-1)
            rest = p_rest.exp() * (p_rest - log_rest(q_log))
            total += (kl_top + rest).sum().item()
    return total


@torch.no_grad()
def divergence_bound(head: nn.Module, hidden: torch.Tensor, targets: DenseTargets, device: torch.device,
                     windows: slice = slice(None), max_elements: int = MAX_ELEMENTS) -> float:
    """A lower bound of `divergence_from` from the student's logits of each position's k dense
    top tokens only (k dot products instead of the vocabulary's). Whatever the other logits, a
    position's (k + 1)-bin KL is smallest when the student gives those k tokens the dense model's
    mass P over them, where it is P x KL(dense top-k / P || softmax of the k logits)."""
    size = max(1, max_elements // (targets.ids.shape[-1] * head.lm_head.weight.shape[1]))
    total = 0.0
    for window, ids, log_p in zip(hidden, targets.ids[windows], targets.log_p[windows]):
        scored = window[targets.positions].to(device)
        for start in range(0, scored.shape[0], size):
            part = slice(start, start + size)
            p_ids, p_log = ids[part].to(device).long(), log_p[part].to(device)
            logits = head.token_logits(head.features(scored[part]), p_ids)
            conditional = p_log - p_log.logsumexp(-1, keepdim=True)
            total += (p_log.exp() * (conditional - F.log_softmax(logits.float(), -1))).sum().item()
    return total * (1 - 1e-5)  # below the exact sum despite rounding, where the bound is tight


def automatic_stride(stack: BlockStack, head: nn.Module) -> int:
    """Every how many positions to score so that the LM head costs a candidate about as much as the
    blocks it runs (half the stack on average): 1 unless the head outweighs them, as a large
    vocabulary on a small model does (a 262k x 640 head against 18 blocks of 5.6M: every 3rd)."""
    head_cost = head.lm_head.weight.numel()
    block_cost = sum(p.numel() for p in stack.blocks[0].parameters()) * max(1, len(stack) // 2)
    return max(1, round(head_cost / block_cost))


def output_divergence(stack: BlockStack, head: nn.Module, samples: int, top_k: int, stride: int,
                      candidates: list[int] | None = None, progress: bool = False,
                      prior: dict[int, float] | None = None, to_beat: float = math.inf) -> dict[int, float]:
    """KL from the dense model's predictions without each candidate (current index; default every
    block) by original index, on the first `samples` calibration windows (stride 0: automatic)."""
    stride = stride or automatic_stride(stack, head)
    with onloaded([head], stack.device):
        head = head.for_autocast(stack.device)  # scoring in bf16: the head cast once, not per call
        targets = dense_targets(head, stack.dense_scoring_final[:samples], top_k, stride, stack.device)
        # the bound gathers k rows of the head per position: worth it only when k is a small part of
        # the vocabulary (with the whole vocabulary it cost pydoc's exact criterion 15x its time)
        cheap = targets.ids.shape[-1] * BOUND_FRACTION <= head.lm_head.weight.shape[0]
        measure = Measure(lambda final, windows: divergence_from(head, final, targets, stack.device, windows),
                          len(targets.positions),
                          bound=(lambda final, windows: divergence_bound(head, final, targets, stack.device, windows))
                          if cheap else None)
        return score_each(stack, measure, candidates, samples, "output divergence", progress, prior, to_beat)

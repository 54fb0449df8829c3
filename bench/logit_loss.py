"""The logit-distillation loss's cost: its gradient computed beside the loss, chunk by chunk
in reused buffers (tuning/losses.py: the head's forward for teacher and student and one backward),
against the same KL through autograd, recomputed in the backward pass (torch's checkpointing of
each chunk: both forwards twice, every tensor allocated anew).
A head of SmolLM2's shape (576 -> 49,152, with its norm) on a batch of 8 x 256 positions, the two
ways in turn, 3 rounds; prints seconds per forward + backward and their ratio.

    python bench/logit_loss.py [VOCAB]      # default 49152"""
from __future__ import annotations

import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from fusegpt.models.adapter import OutputHead
from fusegpt.tuning.losses import LogitDistillation

HIDDEN, BATCH, TOKENS, ROUNDS = 576, 8, 256, 3


def head_of(vocab: int) -> OutputHead:
    return OutputHead([nn.RMSNorm(HIDDEN)], nn.Linear(HIDDEN, vocab, bias=False), None).requires_grad_(False)


def recomputed(head: nn.Module, max_elements: int = 2**25):
    """The KL with each chunk checkpointed: its logits recomputed in backward."""
    def chunk(student, teacher):
        with torch.no_grad():
            log_p = F.log_softmax(head(teacher).float(), -1)
        log_q = F.log_softmax(head(student).float(), -1)
        return (log_p.exp() * (log_p - log_q)).sum()

    def loss(student, teacher):
        s, t = student.flatten(0, -2), teacher.flatten(0, -2)
        size = max(1, max_elements // head.lm_head.weight.shape[0])
        return sum(checkpoint(chunk, s[i:i + size], t[i:i + size], use_reentrant=False)
                   for i in range(0, s.shape[0], size)) / s.shape[0]
    return loss


def main() -> None:
    vocab = int(sys.argv[1]) if len(sys.argv) > 1 else 49152
    torch.manual_seed(0)
    head = head_of(vocab)
    teacher = torch.randn(BATCH, TOKENS, HIDDEN)
    ways = {"recomputed in backward": recomputed(head), "gradient beside the loss": LogitDistillation(head)}
    seconds = {name: [] for name in ways}
    for _ in range(ROUNDS):
        for name, loss in ways.items():
            student = (teacher + 0.1 * torch.randn_like(teacher)).requires_grad_()
            started = time.perf_counter()
            loss(student, teacher).backward()
            seconds[name].append(time.perf_counter() - started)
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    for name, value in medians.items():
        print(f"{name}: {value:.2f} s per forward + backward (vocabulary {vocab:,}, {torch.get_num_threads()} threads)")
    print(f"ratio: {medians['recomputed in backward'] / medians['gradient beside the loss']:.2f}x")


if __name__ == "__main__":
    main()

"""Group-level fine-tuning: the fused group learns to reproduce the original group's output."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from ..calibrate import BlockStack, onloaded
from ..config import TuneConfig
from .losses import LOSSES


def tune_group(stack: BlockStack, start: int, end: int, teacher: torch.Tensor,
               coefficients: list[nn.Parameter], others: list[nn.Parameter], config: TuneConfig,
               seed: int, progress: bool = True) -> list[float]:
    """Train the trainables so blocks start..end-1 of the stack map the cached input of `start`
    onto `teacher`. The model is frozen; the trainables get gradients only while this runs.
    Returns the mean loss of each epoch."""
    blocks = stack.blocks[start:end]
    inputs = stack.boundaries[start]
    loss_fn = LOSSES[config.loss]
    groups = [{"params": coefficients, "lr": config.coef_lr}]
    if others and config.lr > 0:
        groups.append({"params": others, "lr": config.lr})
    trainables = [p for g in groups for p in g["params"]]
    for p in trainables:
        p.requires_grad_(True)

    optimizer = torch.optim.Adam(groups, betas=config.betas)
    steps_per_epoch = math.ceil(inputs.shape[0] / config.batch_size)
    total = max(1, config.epochs * steps_per_epoch)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
    order = torch.Generator().manual_seed(seed)
    history: list[float] = []
    try:
        with onloaded(blocks, stack.device), torch.enable_grad():
            for _ in tqdm(range(config.epochs), desc="tune", unit="epoch", leave=False, disable=not progress):
                permutation = torch.randperm(inputs.shape[0], generator=order)
                epoch_loss = 0.0
                for chunk in permutation.split(config.batch_size):
                    x = inputs[chunk].to(stack.device)
                    for index in range(start, end):
                        x = stack.forward_block(index, x)
                    loss = loss_fn(x, teacher[chunk].to(stack.device))
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    schedule.step()
                    epoch_loss += loss.item() * len(chunk)
                history.append(epoch_loss / inputs.shape[0])
    finally:
        for p in trainables:
            p.requires_grad_(False)
    return history

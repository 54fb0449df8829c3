"""Group-level fine-tuning: a run of blocks learns to reproduce a teacher's output."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from ..calibrate import BlockStack, onloaded
from .. import distributed
from ..config import TuneConfig
from .losses import BATCH_LOSSES, LOSSES


@dataclass
class TuneResult:
    losses: list[float]  # mean loss of each epoch
    optimizer_steps: int  # counted, so that methods can be compared at equal tuning budgets
    block_passes: int = 0  # forward + backward of one block on one window: the compute spent
    passes_by_rank: list[int] | None = None  # each rank's share of them (torch.distributed)


def window_batches(order: torch.Tensor, batch_size: int, no_single: bool) -> list[torch.Tensor]:
    """`order` in batches of `batch_size`; with `no_single`, a last batch of one window joins the
    one before it (a loss across the batch is exactly zero on one window: a step on it is wasted)."""
    chunks = list(order.split(batch_size))
    if no_single and len(chunks) > 1 and len(chunks[-1]) == 1:
        chunks[-2:] = [torch.cat(chunks[-2:])]
    return chunks


def tune_group(stack: BlockStack, start: int, end: int, inputs: torch.Tensor, teacher: torch.Tensor,
               primary: list[nn.Parameter], secondary: list[nn.Parameter], config: TuneConfig,
               seed: int, progress: bool = True) -> TuneResult:
    """Train the trainables so blocks start..end-1 of the stack map `inputs` (what enters block
    `start`, on every window) onto `teacher`. `primary` (fusion coefficients) learn at `coef_lr`, `secondary` (LoRA and
    norms beside them) at `lr`. The model is frozen; the trainables get gradients only while this
    runs.

    The loss is divided by its value on the first batch: Adam is blind to a loss's scale except
    through its eps, so without this a loss averaged over many tokens and channels (a 7B model's
    2048 x 4096) or over small hidden states would stall where a small model's does not.

    A trainable held in bf16 (the norms of a bf16 model) is stepped on an fp32 master copy and
    rounded back after each step: an update below bf16's resolution (1e-3 on a weight of 1 is
    a quarter of it) would otherwise be lost every step."""
    blocks = stack.blocks[start:end]
    loss_fn = LOSSES[config.loss]
    groups = [{"params": primary, "lr": config.coef_lr}]
    if secondary and config.lr > 0:
        groups.append({"params": secondary, "lr": config.lr})
    trainables = [p for g in groups for p in g["params"]]
    for p in trainables:
        p.requires_grad_(True)
    masters = {p: p.detach().float() for p in trainables if p.dtype != torch.float32}
    for group in groups:
        group["params"] = [masters.get(p, p) for p in group["params"]]

    optimizer = torch.optim.Adam(groups, betas=config.betas)
    no_single = config.loss in BATCH_LOSSES
    steps_per_epoch = len(window_batches(torch.arange(inputs.shape[0]), config.batch_size, no_single))
    total = max(1, config.epochs * steps_per_epoch)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
    order = torch.Generator().manual_seed(seed)
    ranks = distributed.world_size()  # a loss across the batch cannot be split: compress refuses it
    result = TuneResult(losses=[], optimizer_steps=0, passes_by_rank=[0] * ranks)
    reference = None
    try:
        with onloaded(blocks, stack.device), torch.enable_grad():
            for _ in tqdm(range(config.epochs), desc="tune", unit="epoch", leave=False, disable=not progress):
                permutation = torch.randperm(inputs.shape[0], generator=order)
                epoch_loss = 0.0
                for chunk in window_batches(permutation, config.batch_size, no_single):
                    # this rank's share of the batch; its mean loss weighted by its share, so that
                    # the losses and gradients summed over ranks are the whole batch's
                    mine = chunk[distributed.rank()::ranks]
                    optimizer.zero_grad(set_to_none=True)
                    loss = torch.zeros((), device=stack.device)
                    if len(mine):
                        x = inputs[mine].to(stack.device)
                        for index in range(start, end):
                            x = stack.forward_block(index, x)
                        loss = loss_fn(x, teacher[mine].to(stack.device)) * (len(mine) / len(chunk))
                    value = loss.detach().float().reshape(1)
                    distributed.sum_across([value])
                    if reference is None:
                        reference = value.item() if value.item() > 0 else 1.0
                    if len(mine):
                        (loss / reference).backward()
                    if ranks > 1:
                        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in trainables]
                        distributed.sum_across(grads)
                        for p, g in zip(trainables, grads):
                            p.grad = g
                    for p, master in masters.items():
                        master.grad = None if p.grad is None else p.grad.float()
                    optimizer.step()
                    with torch.no_grad():
                        for p, master in masters.items():
                            p.copy_(master)
                    schedule.step()
                    result.optimizer_steps += 1
                    result.block_passes += len(chunk) * (end - start)
                    for r in range(ranks):
                        result.passes_by_rank[r] += len(chunk[r::ranks]) * (end - start)
                    epoch_loss += value.item() * len(chunk)
                result.losses.append(epoch_loss / inputs.shape[0])
    finally:
        for p in trainables:
            p.requires_grad_(False)
    return result

"""Group-level fine-tuning: a run of blocks learns to reproduce a teacher's output."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint
from tqdm.auto import tqdm

from ..calibrate import BlockStack, onloaded
from ..runtime import distributed
from ..config import TuneConfig
from .losses import BATCH_LOSSES, LOSSES, Loss


@dataclass
class TuneResult:
    losses: list[float]  # mean loss of each epoch
    optimizer_steps: int  # counted, so that methods can be compared at equal tuning budgets
    block_passes: int = 0  # forward + backward of one block on one window: the compute spent
    passes_by_rank: list[int] | None = None  # each rank's share of them (torch.distributed)
    step_losses: list[float] = field(default_factory=list)  # each optimiser step's loss (the curve the bar shows)


def window_batches(order: torch.Tensor, batch_size: int, no_single: bool) -> list[torch.Tensor]:
    """`order` in batches of `batch_size` (none when it is empty); with `no_single`, a last batch of
    one window joins the one before it (a loss across the batch is exactly zero on one window: a
    step on it is wasted)."""
    chunks = list(order.split(batch_size)) if len(order) else []
    if no_single and len(chunks) > 1 and len(chunks[-1]) == 1:
        chunks[-2:] = [torch.cat(chunks[-2:])]
    return chunks


def optimizer_steps(windows: int, config: TuneConfig) -> int:
    """The steps of a pass over `windows` windows (`window_batches`)."""
    return len(window_batches(torch.arange(windows), config.batch_size, config.loss in BATCH_LOSSES))


def learning_rate_factor(step: int, total: int, warmup: float) -> float:
    """The rate of optimiser step `step` (0-based) of `total`, relative to the peak: a linear ramp
    over the first `warmup` share of the steps (ending at the peak), then a cosine from the peak to 0."""
    ramp = math.ceil(warmup * total)
    if step < ramp:
        return (step + 1) / ramp
    return 0.5 * (1 + math.cos(math.pi * (step - ramp) / max(1, total - ramp)))


def _gradient_to_master(master: torch.Tensor, p: nn.Parameter) -> None:
    """Add p's new gradient to its host master's, and free it on the device."""
    gradient = p.grad.float().to(master.device)
    master.grad = gradient if master.grad is None else master.grad + gradient
    p.grad = None


class _Forward:
    """Blocks start..end-1 on a batch's windows and the loss against the teacher, in micro-batches
    of `micro` windows whose gradients accumulate (each weighted by its share of the batch, so the
    sum is the batch's gradient; None: the whole batch at once), each block optionally under activation checkpointing (only the
    hidden states between blocks are kept for backward; a block's inside is recomputed there). With
    `compute` bfloat16 the blocks' products run in it (autocast; weights, trainables and the loss
    stay in their own dtype)."""

    def __init__(self, stack: BlockStack, start: int, end: int, inputs: torch.Tensor, teacher: torch.Tensor,
                 loss_fn: Loss, micro: int | None, checkpointed: bool, compute: str = "float32"):
        self.stack, self.start, self.end, self.inputs, self.teacher = stack, start, end, inputs, teacher
        self.loss_fn, self.micro, self.checkpointed = loss_fn, micro, checkpointed
        self.autocast = compute == "bfloat16"

    def _block(self, index: int, x: torch.Tensor) -> torch.Tensor:
        if self.checkpointed and torch.is_grad_enabled():
            return checkpoint(self.stack.forward_block, index, x, use_reentrant=False)
        return self.stack.forward_block(index, x)

    def loss(self, windows: torch.Tensor, batch: int, divisor: float | None = None) -> torch.Tensor:
        """The loss of `windows` weighted by their share of a batch of `batch` windows (detached);
        with `divisor`, each micro-batch's loss over it is backpropagated as it is computed."""
        device = self.stack.device
        total = torch.zeros((), device=device)
        for part in windows.split(self.micro or max(1, len(windows))):
            x = self.inputs[part].to(device)
            with torch.autocast(device.type, torch.bfloat16, enabled=self.autocast):
                for index in range(self.start, self.end):
                    x = self._block(index, x)
            loss = self.loss_fn(x.to(self.inputs.dtype), self.teacher[part].to(device)) * (len(part) / batch)
            if divisor is not None:
                (loss / divisor).backward()
            total = total + loss.detach().float()
        return total


def tune_group(stack: BlockStack, start: int, end: int, inputs: torch.Tensor, teacher: torch.Tensor,
               primary: list[nn.Parameter], secondary: list[nn.Parameter], config: TuneConfig,
               seed: int, progress: bool = True, objective: Loss | None = None) -> TuneResult:
    """Train the trainables so blocks start..end-1 of the stack map `inputs` (what enters block
    `start`, on every window) onto `teacher`. `primary` (fusion coefficients) learn at `coef_lr`, `secondary` (LoRA and
    norms beside them) at `lr`. The model is frozen; the trainables get gradients only while this
    runs. `objective` replaces `config.loss` (the global tune's distillation through the head). The rates
    warm up linearly over the first `warmup` share of the steps, then decay on a cosine to zero.

    The loss is divided by its value on the first batch: Adam is blind to a loss's scale except
    through its eps, so without this a loss averaged over many tokens and channels (a 7B model's
    2048 x 4096) or over small hidden states would stall where a small model's does not.

    A trainable held in bf16 (the norms of a bf16 model) is stepped on an fp32 master copy and
    rounded back after each step: an update below bf16's resolution (1e-3 on a weight of 1 is
    a quarter of it) would otherwise be lost every step. With `optimizer_on_host`, every trainable
    has its master copy, gradient and Adam's moments in host memory (each gradient goes there as
    backward produces it, updated values come back after the step): the device holds only the
    trainables themselves."""
    with GroupTune(stack, start, end, inputs, teacher, primary, secondary, config, seed, progress, objective) as tune:
        tune.epochs(config.epochs)
    return tune.result


class GroupTune:
    """One tune (`tune_group`), run an epoch at a time on chosen windows, so that a caller can try
    settings on some windows, judge them on others (`loss_on`), and keep the best run going
    (`snapshot`, `restore`). `total_steps` is the length of the rate schedule (default: `epochs` of
    every window)."""

    def __init__(self, stack: BlockStack, start: int, end: int, inputs: torch.Tensor, teacher,
                 primary: list[nn.Parameter], secondary: list[nn.Parameter], config: TuneConfig,
                 seed: int, progress: bool = True, objective: Loss | None = None, total_steps: int | None = None,
                 desc: str = "tune"):
        self.stack, self.start, self.end, self.inputs, self.config = stack, start, end, inputs, config
        groups = [{"params": primary, "lr": config.coef_lr, "weight_decay": config.coef_decay}]
        if secondary and config.lr > 0:
            groups.append({"params": secondary, "lr": config.lr, "weight_decay": 0.0})
        self.trainables = [p for g in groups for p in g["params"]]
        self.on_host = bool(config.optimizer_on_host)
        self.masters = {p: p.detach().to("cpu" if self.on_host else p.device, torch.float32, copy=True) for p in self.trainables
                        if self.on_host or p.dtype != torch.float32}
        for group in groups:
            group["params"] = [self.masters.get(p, p) for p in group["params"]]
        self.optimizer = torch.optim.Adam(groups, betas=config.betas, decoupled_weight_decay=True)
        self.no_single = config.loss in BATCH_LOSSES
        self.total = total = max(1, total_steps or config.epochs * optimizer_steps(inputs.shape[0], config))
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer,
                                                          lambda s: learning_rate_factor(s, total, config.warmup))
        self.order = torch.Generator().manual_seed(seed)
        self.ranks = distributed.world_size()  # a loss across the batch cannot be split: compress refuses it
        self.result = TuneResult(losses=[], optimizer_steps=0, passes_by_rank=[0] * self.ranks)
        self.run = _Forward(stack, start, end, inputs, teacher, objective or LOSSES[config.loss], config.micro_batch,
                            config.checkpoint_activations, config.compute)
        self.reference = None
        self._epoch_loss, self._epoch_seen = 0.0, 0  # the current epoch's so far (`train_on`)
        self.progress, self.desc = progress, desc
        self.hooks, self.bar, self._onloaded = [], None, None

    def __enter__(self) -> GroupTune:
        """The blocks on the device and the trainables trainable, until the context ends; a tune
        may be entered again to go on (the optimizer and the schedule keep their state)."""
        self._onloaded = onloaded(self.stack.blocks[self.start:self.end], self.stack.device)
        self._onloaded.__enter__()
        self._move_optimizer(self.stack.device)
        for p in self.trainables:
            p.requires_grad_(True)
        # on the host, each gradient leaves the device as soon as backward has it (summed over micro-batches there)
        self.hooks = [p.register_post_accumulate_grad_hook(partial(_gradient_to_master, self.masters[p]))
                      for p in self.trainables] if self.on_host else []
        # a step at a time, with its rate, the time left and the epoch's running loss (relative to the first batch's)
        self.bar = tqdm(total=self.total, initial=self.result.optimizer_steps, desc=self.desc, unit="step",
                        leave=False, disable=not self.progress)
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()
        for hook in self.hooks:
            hook.remove()
        for p in self.trainables:
            p.requires_grad_(False)
        self._onloaded.__exit__(*exc)

    def park(self) -> None:
        """Adam's moments and the fp32 masters to the host until the tune is entered again, and the
        gradients freed (every step sets its own), so that a trial's waiting run holds no device
        memory and 12 bytes a trainable on the host (with `snapshot`)."""
        for q in {*self.trainables, *self.stepped}:
            q.grad = None
        self._move_optimizer(torch.device("cpu"))

    def _move_optimizer(self, device: torch.device) -> None:
        if self.on_host:
            return  # they live there already
        for master in self.masters.values():
            master.data = master.data.to(device)
        for state in self.optimizer.state.values():
            for key, value in state.items():
                if torch.is_tensor(value) and key != "step":
                    state[key] = value.to(device)

    @property
    def stepped(self) -> list[torch.Tensor]:
        """What the optimizer steps: each trainable's fp32 master where it has one, else itself."""
        return [self.masters.get(p, p) for p in self.trainables]

    def snapshot(self) -> list[torch.Tensor | None]:
        """The values of the trainables this tune holds no master of, on the host (a master keeps its own)."""
        return [None if p in self.masters else p.detach().to("cpu", copy=True) for p in self.trainables]

    @torch.no_grad()
    def restore(self, values: list[torch.Tensor | None]) -> None:
        """Set the trainables to where this tune left them (`snapshot`'s values, else their masters'),
        whatever another tune of the same parameters did since."""
        for p, value in zip(self.trainables, values):
            p.copy_(self.masters[p] if value is None else value)


    @torch.no_grad()
    def loss_on(self, windows: torch.Tensor) -> float:
        """The mean loss of `windows` (indices of `inputs`), untrained on, summed over the ranks' shares."""
        value = self.run.loss(windows[distributed.rank()::self.ranks], len(windows)).reshape(1)
        distributed.sum_across([value])
        return value.item()

    def epochs(self, count: int, windows: torch.Tensor | None = None) -> None:
        """`count` epochs over `windows` (indices of `inputs`; default: all), in a seeded order."""
        windows = torch.arange(self.inputs.shape[0]) if windows is None else windows
        for _ in range(count):
            self.train_on(windows[torch.randperm(len(windows), generator=self.order)])
            self.end_epoch()

    def end_epoch(self) -> None:
        """Close the epoch that `train_on` has been adding to: its mean loss joins `result.losses`."""
        self.result.losses.append(self._epoch_loss / max(1, self._epoch_seen))
        self._epoch_loss, self._epoch_seen = 0.0, 0

    def train_on(self, order: torch.Tensor) -> None:
        """Optimiser steps over `order` (indices of `inputs`), a batch at a time, as part of the current epoch."""
        masters, result, ranks, run = self.masters, self.result, self.ranks, self.run
        number = len(result.losses) + 1
        with torch.enable_grad():
            for chunk in window_batches(order, self.config.batch_size, self.no_single):
                # this rank's share of the batch; its mean loss weighted by its share, so that
                # the losses and gradients summed over ranks are the whole batch's
                mine = chunk[distributed.rank()::ranks]
                if self.reference is None:  # the first batch's loss, before any step
                    with torch.no_grad():
                        first = run.loss(mine, len(chunk)).reshape(1)
                    distributed.sum_across([first])
                    self.reference = first.item() if first.item() > 0 else 1.0
                self.optimizer.zero_grad(set_to_none=True)
                for p in masters:  # the optimizer holds their masters: their own gradients are reset here
                    p.grad = None
                value = run.loss(mine, len(chunk), divisor=self.reference).reshape(1)
                distributed.sum_across([value])
                stepped = [masters[p] if self.on_host else p for p in self.trainables]  # where the gradients are
                if ranks > 1:
                    grads = [q.grad if q.grad is not None else torch.zeros_like(q) for q in stepped]
                    distributed.sum_across(grads)
                    for q, g in zip(stepped, grads):
                        q.grad = g
                if not self.on_host:
                    for p, master in masters.items():
                        master.grad = None if p.grad is None else p.grad.float()
                self.optimizer.step()
                with torch.no_grad():
                    for p, master in masters.items():
                        p.copy_(master)
                self.schedule.step()
                result.optimizer_steps += 1
                result.block_passes += len(chunk) * (self.end - self.start)
                for r in range(ranks):
                    result.passes_by_rank[r] += len(chunk[r::ranks]) * (self.end - self.start)
                self._epoch_loss, self._epoch_seen = self._epoch_loss + value.item() * len(chunk), self._epoch_seen + len(chunk)
                result.step_losses.append(value.item())
                self.bar.set_postfix_str(f"epoch {number}/{self.config.epochs}, loss {self._epoch_loss / self._epoch_seen:.4f}",
                                         refresh=False)
                self.bar.update()

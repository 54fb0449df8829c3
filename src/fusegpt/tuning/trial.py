"""The global tune's trial: its learning rates chosen on the run's own held-out calibration windows.

Whether recycled weights help depends on the model, and so does the rate LoRA and the norms
stand: of our two real models, one gained from the coefficients, the other wanted them at zero and
LoRA at half the rate (its loss rose in the first steps at 1e-3; docs/BENCHMARKS.md). Each pair of
a coefficient rate and a LoRA/norm rate starts from the same weights and trains on the first share
of the first epoch's windows; the held-out windows keep the better half, which trains on the next
share, and so on until one pair is left (successive halving, Jamieson & Talwalkar 2016). It goes
on where it stands, so what the trial trained it keeps: only the dropped pairs' steps are spent. A
round whose share the training windows no longer cover trains nothing and judges again."""
from __future__ import annotations

import math
from dataclasses import replace

import torch
import torch.nn as nn

from ..calibrate import BlockStack
from ..config import TuneConfig, held_out_windows
from .losses import Loss
from .trainer import GroupTune, TuneResult, optimizer_steps


def describe(pair: tuple[float, float]) -> str:
    return f"coefficients {pair[0]:g}, LoRA {pair[1]:g}"


def trial_then_tune(stack: BlockStack, inputs: torch.Tensor, teacher, primary: list[nn.Parameter],
                    secondary: list[nn.Parameter], config: TuneConfig, seed: int, progress: bool = True,
                    objective: Loss | None = None) -> tuple[TuneResult, list[dict], int]:
    """`tune_group` of the whole stack (`primary`: the coefficients; `secondary`: LoRA and norms),
    its rates chosen by a trial of `config.trial_settings()`. Returns the chosen run's result, each
    pair's held-out losses after each round it ran (and whether it was chosen), and the block passes
    of the pairs dropped."""
    n = inputs.shape[0]
    held = held_out_windows(n)
    first_epoch = torch.randperm(n - held, generator=torch.Generator().manual_seed(seed))
    held_out = torch.arange(n - held, n)
    sizes = config.trial_parts(n)
    parts = list(first_epoch[:sum(sizes)].split(sizes))
    rest = torch.cat([first_epoch[sum(sizes):], held_out])  # the chosen run's first epoch goes on over these

    total = (sum(optimizer_steps(len(p), config) for p in parts) + optimizer_steps(len(rest), config)
             + (config.epochs - 1) * optimizer_steps(n, config))
    start = [p.detach().to("cpu", copy=True) for p in [*primary, *secondary]]
    runs: dict[tuple[float, float], tuple[GroupTune, list]] = {}
    losses: dict[tuple[float, float], list[float]] = {pair: [] for pair in config.trial_settings()}
    standing, spent = list(losses), 0
    for part in parts:
        keep, kept = math.ceil(len(standing) / 2), []
        for pair in standing:
            if pair in runs:
                tune, values = runs[pair]
                tune.restore(values)
            else:
                with torch.no_grad():
                    for p, value in zip([*primary, *secondary], start):
                        p.copy_(value)
                tune = GroupTune(stack, 0, len(stack), inputs, teacher, primary, secondary,
                                 replace(config, coef_lr=pair[0], lr=pair[1]), seed, progress, objective, total,
                                 desc=f"tune (trial: {describe(pair)})")
            with tune:
                tune.train_on(part)
                losses[pair].append(tune.loss_on(held_out))
                runs[pair] = (tune, tune.snapshot())
            tune.park()
            # the best `keep` so far stay (on a tie, the first listed); the others are freed at once,
            # so that at most `keep` runs wait on the host
            kept = sorted([*kept, pair], key=lambda q: losses[q][-1])
            for dropped in kept[keep:]:
                spent += runs.pop(dropped)[0].result.block_passes
            kept = kept[:keep]
        standing = kept
    chosen = standing[0]
    tune, values = runs[chosen]
    tune.restore(values)
    tune.desc = f"tune ({describe(chosen)})"
    with tune:
        tune.train_on(rest)
        tune.end_epoch()
        tune.epochs(config.epochs - 1)
    record = [{"global_coef_lr": c, "lr": lr, "held_out": losses[(c, lr)], "chosen": (c, lr) == chosen}
              for c, lr in losses]
    return tune.result, record, spent

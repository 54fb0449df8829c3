"""The run's record: what was removed, why, where it went, how tuning went and how long it took."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ..files import write_atomic


@dataclass
class StepRecord:
    step: int
    removed: int  # index of the removed block in the original model
    criterion: str  # what `scores` measure: macro_influence, block_influence, calibration_nll, position
    scores: dict[int, float]  # original index -> score of every block scored for this step
    group: list[int]  # original indices of the neighbours that absorbed it (empty without fusion)
    losses: list[float]  # tuning loss per epoch
    seconds: dict[str, float]
    optimizer_steps: int = 0
    block_passes: int = 0  # tuning compute: forward + backward of one block on one window
    score_passes: int = 0  # choosing compute: forward passes of one block on one window while scoring
    # blocks whose score is a lower bound: stopped once it could not be the lowest (--full-scores: none)
    bounds: list[int] = field(default_factory=list)

    @classmethod
    def from_json(cls, saved: dict) -> StepRecord:
        """A step as a report or checkpoint saved it (JSON's string keys back to block indices)."""
        known = {f.name for f in fields(cls)}
        scores = {int(k): v for k, v in saved["scores"].items()}
        return cls(**{k: v for k, v in saved.items() if k in known} | {"scores": scores})


@dataclass
class HealRecord:
    """Tuning of the whole pruned model after the last removal (methods that heal instead of fusing)."""

    blocks: list[int]  # original indices of the tuned blocks
    losses: list[float]  # tuning loss per epoch
    optimizer_steps: int
    seconds: dict[str, float]
    block_passes: int = 0
    step_losses: list[float] = field(default_factory=list)  # each optimiser step's loss
    trial: list[dict] = field(default_factory=list)  # each pair of rates tried: held-out losses, chosen (tuning/trial.py)
    trial_block_passes: int = 0  # block passes of the pairs not chosen (beside `block_passes`)


@dataclass
class Report:
    model: str
    config: dict
    original_depth: int
    seqlen: int
    method: str = ""  # what ran, by name (the method whose recipe it was, else "selection + repair")
    steps: list[StepRecord] = field(default_factory=list)
    heal: HealRecord | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    perplexity: dict[str, float] = field(default_factory=dict)
    perplexity_windows: int | None = None  # None: every protocol window
    zero_shot: dict[str, dict] = field(default_factory=dict)  # task -> scores (evaluation/zeroshot.py), and "mean"
    source: dict = field(default_factory=dict)  # how the input was stored (HF folder / Hub id, or GGUF and its type)
    gguf: dict = field(default_factory=dict)  # the GGUF written beside the model: file, type, bytes, tensor types
    world_size: int = 1  # processes that shared the work (torchrun)
    started_from: str = ""  # a repaired shallower model this run went on from (a curve's warm start)
    shares: dict[str, list[int]] = field(default_factory=dict)  # each rank's part of the work, by kind

    @property
    def removed(self) -> list[int]:
        return [s.removed for s in self.steps]

    @property
    def kept(self) -> list[int]:
        gone = set(self.removed)
        return [i for i in range(self.original_depth) if i not in gone]

    @property
    def optimizer_steps(self) -> int:
        """All tuning steps of the run: the budget at which methods are compared."""
        return sum(s.optimizer_steps for s in self.steps) + (self.heal.optimizer_steps if self.heal else 0)

    @property
    def block_passes(self) -> int:
        """All tuning compute of the run, in block forward + backward passes over one window."""
        return sum(s.block_passes for s in self.steps) + (self.heal.block_passes if self.heal else 0)

    @property
    def tune_seconds(self) -> float:
        """Wall time of that tuning (fusion steps with their seam maps, healing): the check that
        equal block passes cost the methods about equal time. Scoring and refreshes are left out."""
        return sum(s.seconds.get("tune", 0.0) for s in self.steps) + (self.heal.seconds["tune"] if self.heal else 0.0)

    @property
    def stage_seconds(self) -> dict[str, float]:
        """Where the time went, by stage of the loop, in its order: calibrate, score, tune (fusion
        steps and the final tune), fit (linear maps), refresh (recomputed hidden states), merge,
        then save, gguf and evaluate when `compress` recorded them; stages that did not run are left out."""
        stages = {"calibrate": self.seconds.get("calibrate", 0.0)}
        for step in self.steps:
            for stage, seconds in step.seconds.items():
                stages[stage] = stages.get(stage, 0.0) + seconds
        if self.heal:
            stages["tune"] = stages.get("tune", 0.0) + self.heal.seconds.get("tune", 0.0)
        order = ("calibrate", "score", "tune", "fit", "refresh", "merge", "save", "gguf", "evaluate")
        stages.update({k: self.seconds[k] for k in ("merge", "save", "gguf", "evaluate") if k in self.seconds})
        return {k: stages[k] for k in order if k in stages}

    def to_dict(self) -> dict:
        return {**asdict(self), "removed": self.removed, "kept": self.kept, "optimizer_steps": self.optimizer_steps,
                "block_passes": self.block_passes, "tune_seconds": self.tune_seconds,
                "stage_seconds": self.stage_seconds}

    def write(self, path: str | Path) -> None:
        """Written beside and renamed into place, so a reader never sees half a report."""
        write_atomic(path, json.dumps(self.to_dict(), indent=2) + "\n")

    def summary(self) -> str:
        criterion = self.steps[0].criterion if self.steps else "score"  # one method, one criterion
        lines = [f"{self.model}: {self.original_depth} -> {len(self.kept)} blocks "
                 f"({self.method or self.config['method']}, seqlen {self.seqlen}, {self.seconds.get('total', 0):.0f} s)",
                 f"{'step':>4}  {'removed':>7}  {criterion:>15}  {'loss first -> last':>22}  group"]
        if self.started_from:
            lines.insert(1, f"went on from {self.started_from} (its steps below; its tuning not counted here)")
        for s in self.steps:
            group = ",".join(map(str, s.group)) or "-"
            score = s.scores.get(s.removed, float("nan"))  # a span criterion scores span starts only
            lines.append(f"{s.step:>4}  {s.removed:>7}  {score:>15.5g}  {_losses(s.losses):>22}  {group}")
        if self.heal:
            lines.append(f"healed {len(self.heal.blocks)} blocks: loss {_losses(self.heal.losses)}")
        if self.heal and self.heal.trial:
            lines.append("trial of the global tune's rates (held-out loss after each round): " + "; ".join(
                f"coefficients {t['global_coef_lr']:g}, LoRA {t['lr']:g}: " + ", ".join(f"{v:.4f}" for v in t["held_out"])
                + (" (chosen)" if t["chosen"] else "") for t in self.heal.trial)
                + f"; {self.heal.trial_block_passes} block passes on the others")
        lines.append(f"kept blocks: {self.kept}; optimiser steps: {self.optimizer_steps}; "
                     f"tuning block passes: {self.block_passes} ({self.tune_seconds:.0f} s); "
                     f"choosing: {sum(s.score_passes for s in self.steps)} forward block passes")
        lines.append("time: " + ", ".join(f"{stage} {seconds:.0f} s" for stage, seconds in self.stage_seconds.items())
                     + f" (compress {self.seconds.get('total', 0):.0f} s)")
        if self.gguf:
            types = ", ".join(f"{count} {kind}" for kind, count in sorted(self.gguf.get("tensor_types", {}).items()))
            lines.append(f"GGUF: {self.gguf['file']} ({self.gguf['file_type']}, {self.gguf['bytes'] / 2**20:.1f} MiB; "
                         f"{self.gguf['copied']} tensors copied as they were, {self.gguf['quantised']} written anew, "
                         f"{self.gguf.get('weighted', 0)} rounded by their inputs' importance; "
                         f"types {self.gguf.get('rounding') or 'as asked'}: {types})")
        lines += [f"perplexity {name}: {value:.3f}" for name, value in self.perplexity.items()]
        lines += [f"zero-shot {task}: {scores['value']:.4f}" + (f" ({scores['metric']})" if "metric" in scores else "")
                  for task, scores in self.zero_shot.items()]
        return "\n".join(lines)


def _losses(losses: list[float]) -> str:
    return f"{losses[0]:.4g} -> {losses[-1]:.4g}" if losses else "-"

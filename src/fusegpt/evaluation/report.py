"""The run's record: what was removed, why, where it went, how tuning went and how long it took."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class StepRecord:
    step: int
    removed: int  # index of the removed block in the original model
    macro_influence: dict[int, float]  # original index -> MI of every block present at this step
    group: list[int]  # original indices of the neighbours that absorbed it (empty for `remove`)
    losses: list[float]  # tuning loss per epoch
    seconds: dict[str, float]


@dataclass
class Report:
    model: str
    config: dict
    original_depth: int
    seqlen: int
    steps: list[StepRecord] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    perplexity: dict[str, float] = field(default_factory=dict)

    @property
    def removed(self) -> list[int]:
        return [s.removed for s in self.steps]

    @property
    def kept(self) -> list[int]:
        gone = set(self.removed)
        return [i for i in range(self.original_depth) if i not in gone]

    def to_dict(self) -> dict:
        return {**asdict(self), "removed": self.removed, "kept": self.kept}

    def write(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    def summary(self) -> str:
        lines = [f"{self.model}: {self.original_depth} -> {len(self.kept)} blocks "
                 f"({self.config['method']}, seqlen {self.seqlen}, {self.seconds.get('total', 0):.0f} s)",
                 f"{'step':>4}  {'removed':>7}  {'MI':>9}  {'loss first -> last':>22}  group"]
        for s in self.steps:
            loss = f"{s.losses[0]:.4g} -> {s.losses[-1]:.4g}" if s.losses else "-"
            group = ",".join(map(str, s.group)) or "-"
            lines.append(f"{s.step:>4}  {s.removed:>7}  {s.macro_influence[s.removed]:>9.5f}  {loss:>22}  {group}")
        lines.append(f"kept blocks: {self.kept}")
        lines += [f"perplexity {name}: {value:.3f}" for name, value in self.perplexity.items()]
        return "\n".join(lines)

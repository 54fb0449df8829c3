"""Crash-safe progress of one `compress` run: after every removal step, the blocks as they are
(fused layers with their coefficients), which original blocks they are, the scores, the report so
far and the RNG state, written atomically. A run resumed from it ends exactly where an
uninterrupted run would: the cached hidden states are recomputed from the dense model."""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import torch

from ..calibrate import BlockStack
from ..errors import FuseGPTError
from ..files import write_atomic
from ..evaluation.report import Report, StepRecord
from ..paths import STATE


def _first_difference(saved: dict, current: dict, prefix: str = "") -> str | None:
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found = _first_difference(a, b, f"{prefix}{key}.")
            if found:
                return found
        elif json.dumps(a, default=str) != json.dumps(b, default=str):
            return f"{prefix}{key} was {a!r}, now {b!r}"
    return None


class Checkpoint:
    def __init__(self, folder: str | Path, config: dict, model_name: str):
        self.folder = Path(folder)
        self.identity = {"model": model_name, "config": config}

    @property
    def path(self) -> Path:
        return self.folder / STATE

    def exists(self) -> bool:
        return self.path.is_file()

    def save(self, stack: BlockStack, report: Report, scores: dict[int, float]) -> None:
        """The state after the last finished step; the previous state stays valid until this one
        is complete (written beside it, then renamed over it)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        state = {"identity": self.identity, "blocks": stack.blocks, "origin": stack.origin, "scores": scores,
                 "margins": stack.score_margins, "steps": [asdict(s) for s in report.steps], "rng": torch.get_rng_state()}
        write_atomic(self.path, lambda path: torch.save(state, path))

    def restore(self, stack: BlockStack, report: Report) -> dict[int, float]:
        """Put the saved blocks into `stack` (built on the dense model), recompute its boundaries and
        the report's steps; returns the saved scores. Refuses a checkpoint of another run."""
        try:
            state = torch.load(self.path, weights_only=False)
        except Exception as error:  # a damaged or foreign file: say where it is and what to do
            raise FuseGPTError(f"the checkpoint {self.path} cannot be read ({type(error).__name__}); delete "
                               f"{self.folder} to start over") from error
        changed = _first_difference(state["identity"], json.loads(json.dumps(self.identity, default=str)))
        if changed:
            raise FuseGPTError(f"--resume: the checkpoint in {self.folder} is of another run ({changed}); rerun with "
                               f"the same model and arguments, or delete {self.folder} to start over")
        stack.install(state["blocks"], state["origin"])
        stack.score_margins = state.get("margins", {})
        report.steps = [StepRecord.from_json(s) for s in state["steps"]]
        torch.set_rng_state(state["rng"])
        return {int(k): v for k, v in state["scores"].items()}

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

"""Every method at every sparsity on the same calibration data and the same evaluation: the
table and plots a paper shows. Each finished cell is saved on its own, so a rerun after a crash
only computes what is missing."""
from __future__ import annotations

import csv
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

from ..config import CompressConfig

DENSE = "dense"


@dataclass
class Cell:
    method: str
    sparsity: float  # 0 for the dense model
    removed: list[int] = field(default_factory=list)
    ppl: dict[str, float] = field(default_factory=dict)
    zero_shot: dict[str, dict] = field(default_factory=dict)
    seconds: float = 0.0  # compression wall time
    scores: dict[str, float] = field(default_factory=dict)  # first step's block scores (dense model)
    criterion: str = ""


def _fingerprint(config: CompressConfig, ppl: list[str], tasks: list[str], limit: int | None) -> str:
    """Cells are reused only if everything that shaped them is the same."""
    settings = {**config.to_dict(), "method": None, "sparsity": None, "num_remove": None,
                "ppl": ppl, "tasks": tasks, "limit": limit}
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _write_atomic(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)


def run_cell(model_name: str, method: str, sparsity: float, config: CompressConfig, ppl: list[str],
             tasks: list[str], limit: int | None, tasks_dir: str | None, progress: bool) -> Cell:
    """Load a fresh copy of the model, compress it (unless dense) and evaluate it."""
    from .. import compress, evaluate_perplexity, load_model
    from ..pipeline import context_length
    from .zeroshot import evaluate_zero_shot

    model, tokenizer = load_model(model_name, config.dtype)
    cell = Cell(method=method, sparsity=sparsity)
    seqlen = min(config.seqlen, context_length(model))
    if method != DENSE:
        started = time.perf_counter()
        result = compress(model, tokenizer, replace(config, method=method, sparsity=sparsity, num_remove=None),
                          progress=progress, model_name=model_name)
        cell.seconds = time.perf_counter() - started
        cell.removed = result.report.removed
        first = result.report.steps[0]
        cell.criterion, cell.scores = first.criterion, {str(k): v for k, v in first.scores.items()}
    if ppl:
        cell.ppl = evaluate_perplexity(model, tokenizer, ppl, seqlen, config.data_dir, progress=progress)
    if tasks:
        cell.zero_shot = evaluate_zero_shot(model, tokenizer, tasks, limit=limit, data_dir=tasks_dir,
                                            progress=progress)
    return cell


def compare(model_name: str, methods: list[str], sparsities: list[float], config: CompressConfig, out: str | Path,
            ppl: list[str] = (), tasks: list[str] = (), limit: int | None = None, tasks_dir: str | None = None,
            progress: bool = True, run: Callable[..., Cell] = run_cell) -> list[Cell]:
    """Fill the method x sparsity grid (dense once), reusing cells saved by an earlier run with
    the same settings; then write comparison.{md,csv,json} and the plots."""
    out = Path(out)
    cells_dir = out / "cells"
    cells_dir.mkdir(parents=True, exist_ok=True)
    fingerprint = _fingerprint(config, list(ppl), list(tasks), limit)
    grid = [(m, 0.0) for m in methods if m == DENSE] + [(m, s) for m in methods if m != DENSE for s in sparsities]
    cells = []
    for method, sparsity in grid:
        path = cells_dir / f"{method}@{sparsity:g}.json"
        saved = json.loads(path.read_text()) if path.exists() else None
        if saved and saved.get("fingerprint") == fingerprint:
            cells.append(Cell(**saved["cell"]))
            continue
        cell = run(model_name, method, sparsity, config, list(ppl), list(tasks), limit, tasks_dir, progress)
        _write_atomic(path, json.dumps({"fingerprint": fingerprint, "cell": asdict(cell)}, indent=2) + "\n")
        cells.append(cell)
    write_outputs(cells, out, model_name)
    return cells


def _columns(cells: list[Cell]) -> tuple[list[str], list[str]]:
    ppl = list(dict.fromkeys(k for c in cells for k in c.ppl))
    tasks = list(dict.fromkeys(k for c in cells for k in c.zero_shot if k != "mean"))
    return ppl, tasks


def _rows(cells: list[Cell]) -> tuple[list[str], list[list[str]]]:
    ppl, tasks = _columns(cells)
    header = ["method", "sparsity", "removed blocks", *[f"PPL {Path(p).name}" for p in ppl],
              *[f"{t} ({cells[0].zero_shot.get(t, {}).get('metric', '')})" for t in tasks],
              *(["zero-shot mean"] if tasks else []), "wall s"]
    rows = []
    for c in cells:
        zero = [c.zero_shot.get(t, {}).get("value") for t in tasks]
        rows.append([c.method, f"{c.sparsity:g}", " ".join(map(str, c.removed)) or "-",
                     *[f"{c.ppl[p]:.3f}" if p in c.ppl else "-" for p in ppl],
                     *[f"{v:.4f}" if v is not None else "-" for v in zero],
                     *([f"{c.zero_shot['mean']['value']:.4f}" if "mean" in c.zero_shot else "-"] if tasks else []),
                     f"{c.seconds:.0f}"])
    return header, rows


def write_outputs(cells: list[Cell], out: Path, model_name: str) -> None:
    header, rows = _rows(cells)
    table = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    table += ["| " + " | ".join(r) + " |" for r in rows]
    _write_atomic(out / "comparison.md", f"# {model_name}\n\n" + "\n".join(table) + "\n")
    with open(out / "comparison.csv.partial", "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    os.replace(out / "comparison.csv.partial", out / "comparison.csv")
    _write_atomic(out / "comparison.json",
                  json.dumps({"model": model_name, "cells": [asdict(c) for c in cells]}, indent=2) + "\n")
    plot(cells, out)


def plot(cells: list[Cell], out: Path) -> None:
    """ppl_vs_sparsity.png (one panel per PPL source) and block_scores.png (the dense model's
    Macro Influence per block, from the first scoring step of a method that uses it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sources, _ = _columns(cells)
    if sources:
        fig, axes = plt.subplots(1, len(sources), figsize=(5 * len(sources), 4), squeeze=False)
        dense = next((c for c in cells if c.method == DENSE), None)
        for ax, source in zip(axes[0], sources):
            for method in dict.fromkeys(c.method for c in cells if c.method != DENSE):
                points = sorted((c.sparsity, c.ppl[source]) for c in cells if c.method == method and source in c.ppl)
                ax.plot(*zip(*points), marker="o", label=method)
            if dense and source in dense.ppl:
                ax.axhline(dense.ppl[source], linestyle="--", color="grey", label=DENSE)
            ax.set(xlabel="sparsity (fraction of blocks removed)", ylabel="perplexity", yscale="log",
                   title=Path(source).name)
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "ppl_vs_sparsity.png", dpi=120)
        plt.close(fig)
    scored = next((c for c in cells if c.criterion == "macro_influence" and c.scores), None)
    if scored:
        blocks = sorted(scored.scores, key=int)
        fig, ax = plt.subplots(figsize=(max(5, len(blocks) * 0.5), 3.5))
        ax.bar([int(b) for b in blocks], [scored.scores[b] for b in blocks])
        ax.set(xlabel="block", ylabel="Macro Influence", title="dense model: Macro Influence per block")
        fig.tight_layout()
        fig.savefig(out / "block_scores.png", dpi=120)
        plt.close(fig)

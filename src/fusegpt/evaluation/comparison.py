"""The comparison's cells and what is written from them: the table (Markdown, CSV, JSON) and the
plots a paper shows. `fusegpt.compare` fills the cells."""
from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..files import write_atomic

DENSE = "dense"


@dataclass
class Cell:
    method: str
    sparsity: float  # 0 for the dense model
    removed: list[int] = field(default_factory=list)
    ppl: dict[str, float] = field(default_factory=dict)
    ppl_windows: int | None = None  # None: every protocol window
    zero_shot: dict[str, dict] = field(default_factory=dict)
    seconds: float = 0.0  # compression wall time
    peak_rss_gib: float = 0.0  # peak resident memory while compressing (loading included)
    block_passes: int = 0  # tuning compute: forward + backward of one block on one window
    tune_seconds: float | None = None  # wall time of that tuning (None: a cell saved before it was recorded)
    parameters: int = 0  # of the output model
    speed: dict[str, float] = field(default_factory=dict)  # output model's, and the dense model's in the same run
    scores: dict[str, float] = field(default_factory=dict)  # first step's block scores (dense model)
    bounds: list[int] = field(default_factory=list)  # those of them that are lower bounds (stopped early)
    criterion: str = ""


def _columns(cells: list[Cell]) -> tuple[list[str], list[str]]:
    ppl = list(dict.fromkeys(k for c in cells for k in c.ppl))
    tasks = list(dict.fromkeys(k for c in cells for k in c.zero_shot if k != "mean"))
    return ppl, tasks


def _score(entry: dict | None) -> str:
    """An accuracy with its standard error, e.g. 0.6420 ± 0.0214."""
    if not entry:
        return "-"
    stderr = entry.get("stderr")
    return f"{entry['value']:.4f}" + (f" ± {stderr:.4f}" if stderr is not None else "")


def _rows(cells: list[Cell]) -> tuple[list[str], list[list[str]]]:
    ppl, tasks = _columns(cells)
    speed = any(c.speed for c in cells)
    header = ["method", "sparsity", "removed blocks", *[f"PPL {Path(p).name}" for p in ppl],
              *[f"{t} ({cells[0].zero_shot.get(t, {}).get('metric', '')})" for t in tasks],
              *(["zero-shot mean"] if tasks else []), "wall s", "peak RSS GiB", "tuning block passes", "tuning s",
              "params M", *(["prefill speedup", "decode speedup"] if speed else [])]
    rows = []
    for c in cells:
        rows.append([c.method, f"{c.sparsity:g}", " ".join(map(str, c.removed)) or "-",
                     *[f"{c.ppl[p]:.3f}" if p in c.ppl else "-" for p in ppl],
                     *[_score(c.zero_shot.get(t)) for t in tasks],
                     *([_score(c.zero_shot.get("mean"))] if tasks else []),
                     f"{c.seconds:.0f}", f"{c.peak_rss_gib:.2f}", str(c.block_passes),
                     "-" if c.tune_seconds is None else f"{c.tune_seconds:.0f}", f"{c.parameters / 1e6:.1f}",
                     *([_speedup(c, "prefill"), _speedup(c, "decode")] if speed else [])])
    return header, rows


def _speedup(cell: Cell, phase: str) -> str:
    """Tokens/s of the output model over the dense model's, both measured in the cell's own run."""
    own, dense = cell.speed.get(f"{phase}_tokens_per_s"), cell.speed.get(f"dense_{phase}_tokens_per_s")
    return f"{own / dense:.2f}x" if own and dense else "-"


def write_outputs(cells: list[Cell], out: Path, model_name: str) -> None:
    header, rows = _rows(cells)
    table = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    table += ["| " + " | ".join(r) + " |" for r in rows]
    write_atomic(out / "comparison.md", f"# {model_name}\n\n" + "\n".join(table) + "\n")
    def write_csv(path: Path) -> None:
        with open(path, "w", newline="") as f:
            csv.writer(f).writerows([header, *rows])

    write_atomic(out / "comparison.csv", write_csv)
    write_atomic(out / "comparison.json",
                  json.dumps({"model": model_name, "cells": [asdict(c) for c in cells]}, indent=2) + "\n")
    plot(cells, out)


def plot(cells: list[Cell], out: Path) -> None:
    """ppl_vs_sparsity.png (one panel per PPL source), methods.png (at each sparsity, every
    method's perplexities and mean zero-shot accuracy with its standard error) and
    block_scores.png (the dense model's Macro Influence per block, from the first scoring step of
    a method that uses it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _plot_methods(cells, out, plt)
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
        exact = [int(b) for b in blocks if int(b) not in scored.bounds]
        ax.bar(exact, [scored.scores[str(b)] for b in exact])
        if scored.bounds:  # stopped once they could not be chosen: at least this high
            ax.bar(scored.bounds, [scored.scores[str(b)] for b in scored.bounds], fill=False, hatch="//",
                   label="at least this (stopped early; --full-scores for all)")
            ax.legend(fontsize=8)
        ax.set(xlabel="block", ylabel="Macro Influence", title="dense model: Macro Influence per block")
        fig.tight_layout()
        fig.savefig(out / "block_scores.png", dpi=120)
        plt.close(fig)


def _plot_methods(cells: list[Cell], out: Path, plt) -> None:
    """One row per sparsity: a bar per method for each PPL source (log scale, dense as a line),
    and the mean zero-shot accuracy with its standard error."""
    sources, tasks = _columns(cells)
    panels = len(sources) + bool(tasks)
    sparsities = sorted({c.sparsity for c in cells if c.method != DENSE})
    if not panels or not sparsities:
        return
    dense = next((c for c in cells if c.method == DENSE), None)
    fig, axes = plt.subplots(len(sparsities), panels, figsize=(4.5 * panels, 3.8 * len(sparsities)), squeeze=False)
    for row, sparsity in zip(axes, sparsities):
        chosen = [c for c in cells if c.sparsity == sparsity and c.method != DENSE]
        names = [c.method for c in chosen]
        for ax, source in zip(row, sources):
            ax.bar(names, [c.ppl.get(source, float("nan")) for c in chosen], color="tab:blue")
            if dense and source in dense.ppl:
                ax.axhline(dense.ppl[source], linestyle="--", color="grey", label=f"dense {dense.ppl[source]:.1f}")
                ax.legend(fontsize=8)
            ax.set(yscale="log", ylabel="perplexity", title=f"{Path(source).name}, sparsity {sparsity:g}")
            ax.tick_params(axis="x", rotation=60, labelsize=8)
        if tasks:
            ax = row[-1]
            means = [c.zero_shot.get("mean", {}) for c in chosen]
            ax.bar(names, [m.get("value", float("nan")) for m in means],
                   yerr=[m.get("stderr") or 0 for m in means], color="tab:green", capsize=3)
            if dense and "mean" in dense.zero_shot:
                ax.axhline(dense.zero_shot["mean"]["value"], linestyle="--", color="grey",
                           label=f"dense {dense.zero_shot['mean']['value']:.3f}")
                ax.legend(fontsize=8)
            ax.set(ylabel="mean accuracy", title=f"zero-shot mean ({', '.join(tasks)})")
            ax.tick_params(axis="x", rotation=60, labelsize=8)
    fig.tight_layout()
    fig.savefig(out / "methods.png", dpi=110)
    plt.close(fig)

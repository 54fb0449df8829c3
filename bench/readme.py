"""Rewrites README.md's marked tables from the cells bench scripts wrote, so that every number in
them has a result file behind it: the repairs' perplexities (`<!-- results -->`) and the GGUF
files in llama.cpp (`<!-- gguf -->`, bench/gguf_size.py).

    python bench/readme.py            # rewrite the tables between their markers
    python bench/readme.py --check    # exit 1 if the README's tables differ from the results

A row names its result file; a cell that has not run yet is left out."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from common import RESULTS

README = Path(__file__).resolve().parents[1] / "README.md"
# (model, what the row is, result file under bench/results); each model's rows share its blocks and passes
ROWS = [
    ("SmolLM2-135M, 8 of 30 blocks", "fusion (the default without its trial)", "headline-smollm2/default-margins.json"),
    ("SmolLM2-135M, 8 of 30 blocks", "fusion after the 2026-12-05 default's trial of coefficient rates (chose 3e-3), "
     "top-1024 teacher", "recycling-smollm2/fuse-trial-top1024.json"),
    ("SmolLM2-135M, 8 of 30 blocks", "the default: its trial of rate pairs chose coefficients 3e-3, LoRA 5e-4",
     "recycling-smollm2/fuse-halving-top1024.json"),
    ("SmolLM2-135M, 8 of 30 blocks", "LoRA healing at its best dev rate", "headline-smollm2/lora.json"),
    ("SmolLM2-135M, 8 of 30 blocks", "LoRA healing, top-1024 teacher", "recycling-smollm2/lora-top1024.json"),
    ("SmolLM2-135M, 8 of 30 blocks", "LoRA healing, top-1024 teacher, lr 2e-3 (its best dev rate with logits)",
     "recycling-smollm2/lora-top1024-lr2e-3.json"),
    ("Gemma 3 270M, 4 of 18 blocks", "fusion, top-64 teacher", "recycling-gemma3/fuse-top64.json"),
    ("Gemma 3 270M, 4 of 18 blocks", "fusion, whole vocabulary", "recycling-gemma3/fuse-full.json"),
    ("Gemma 3 270M, 4 of 18 blocks", "fusion, top-1024 teacher", "recycling-gemma3/fuse-top1024.json"),
    ("Gemma 3 270M, 4 of 18 blocks", "fusion, top-1024 teacher, seed 1", "recycling-gemma3/fuse-top1024-seed1.json"),
    ("Gemma 3 270M, 4 of 18 blocks", "after the 2026-12-05 default's trial of coefficient rates (chose 0: LoRA "
     "healing), top-1024 teacher", "recycling-gemma3/fuse-trial-top1024.json"),
    ("Gemma 3 270M, 4 of 18 blocks", "the default: its trial of rate pairs chose coefficients 0 (LoRA healing), LoRA 5e-4",
     "recycling-gemma3/fuse-halving-top1024.json"),
    ("Gemma 3 270M, 4 of 18 blocks", "LoRA healing, top-64 teacher", "recycling-gemma3/lora-top64.json"),
    ("Gemma 3 270M, 4 of 18 blocks", "LoRA healing, top-1024 teacher", "recycling-gemma3/lora-top1024.json"),
    ("Gemma 3 270M, 4 of 18 blocks", "**LoRA healing, top-1024 teacher, lr 5e-4 (its best dev rate with logits)**",
     "recycling-gemma3/lora-top1024-lr5e-4.json"),
]


def _ppl(values: dict[str, float]) -> str:
    return " / ".join(f"{v:.2f}" for v in values.values())


def table() -> str:
    # no time column: these cells ran on different code and load (docs/BENCHMARKS.md has the timings)
    lines = ["| model | repair of the same blocks (block passes equal, the trial's aside) | test PPL WikiText-2 / C4 | "
             "dev PPL | result |", "| --- | --- | --- | --- | --- |"]
    for model, what, relative in ROWS:
        path = RESULTS / relative
        if not path.is_file():
            continue
        cell = json.loads(path.read_text())
        lines.append(f"| {model} | {what} | {_ppl(cell['test'])} | {_ppl(cell['dev'])} | `bench/results/{relative}` |")
    return "\n".join(lines)


# (model, bench/gguf_size.py's result file); the files shown, with the names the README gives them
GGUF_MODELS = [("SmolLM2-135M, 8 of 30 blocks", "gguf-size-smollm2.json"),
               ("Gemma 3 270M, 4 of 18 blocks", "gguf-size-gemma3.json")]
GGUF_FILES = {"dense input": "the dense input", "compressed F16": "F16", "compressed Q8_0": "Q8_0",
              "compressed input-type": "the input's type, plain rounding (the default until 2026-12-06)",
              "compressed fit+importance": "**the default**: no larger than the input, rounded by importance"}


def gguf_table() -> str:
    lines = ["| model | GGUF file | MiB | test PPL in llama.cpp (vs the compressed F16) | prefill / decode tok/s | result |",
             "| --- | --- | --- | --- | --- | --- |"]
    for model, relative in GGUF_MODELS:
        path = RESULTS / relative
        if not path.is_file():
            continue
        result = json.loads(path.read_text())
        files, speeds = result["files"], result.get("tokens_per_s", {})
        base = files["compressed F16"]["test"]
        for name, shown in GGUF_FILES.items():
            cell, timed = files[name], speeds.get(name)
            change = "" if name == "dense input" else f" ({100 * (cell['test'] / base - 1):+.1f}%)"
            speed = f"{timed['prefill']:.0f} / {timed['decode']:.0f}" if timed else "-"
            lines.append(f"| {model} | {shown} | {cell['bytes'] / 2**20:.1f} | {cell['test']:.2f}{change} | {speed} | "
                         f"`bench/results/{relative}` |")
    return "\n".join(lines)


# (model, repair, bench/recycling.py's cell of seed 0 by suite; seeds 1, 2 add -seed1, -seed2): the
# default's trial against LoRA healing of the same blocks, each seed's windows, order and start
SEEDED = [("SmolLM2-135M, 8 of 30 blocks", "recycling-smollm2"), ("Gemma 3 270M, 4 of 18 blocks", "recycling-gemma3")]
REPAIRS = {"the default (its trial of rate pairs)": {"recycling-smollm2": "fuse-halving-top1024",
                                                     "recycling-gemma3": "fuse-halving-top1024"},
           "the 2026-12-05 default (its trial of coefficient rates)": {"recycling-smollm2": "fuse-trial-top1024",
                                                                     "recycling-gemma3": "fuse-trial-top1024"},
           "LoRA healing at lr 1e-3": {"recycling-smollm2": "lora-top1024", "recycling-gemma3": "lora-top1024"},
           "LoRA healing at its best dev rate (SmolLM2 2e-3, Gemma 3 5e-4)": {
               "recycling-smollm2": "lora-top1024-lr2e-3", "recycling-gemma3": "lora-top1024-lr5e-4"}}


def _mean(cells: list[dict], split: str) -> str:
    names = list(cells[0][split])
    return " / ".join(f"{sum(c[split][n] for c in cells) / len(cells):.2f}" for n in names)


def _zero_shot(cells: dict[int, dict]) -> str:
    """The mean zero-shot accuracy over the seeds whose cell has it (their number in parentheses)."""
    scored = {seed: c["zero_shot"]["mean"]["value"] for seed, c in cells.items() if c.get("zero_shot")}
    if not scored:
        return "-"
    seeds = "seed" if len(scored) == 1 else "seeds"
    return f"{100 * sum(scored.values()) / len(scored):.2f} ({seeds} {', '.join(map(str, scored))})"


def seeds_table() -> str:
    lines = ["| model | repair | seeds | mean test PPL WikiText-2 / C4 | mean zero-shot accuracy, % | mean dev PPL | "
             "each seed's dev PPL |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for model, suite in SEEDED:
        for what, cells_by_suite in REPAIRS.items():
            cell = cells_by_suite[suite]
            found = {seed: RESULTS / suite / f"{cell}{f'-seed{seed}' if seed else ''}.json" for seed in (0, 1, 2)}
            cells = {seed: json.loads(path.read_text()) for seed, path in found.items() if path.is_file()}
            if not cells:
                continue
            each = "; ".join(f"{seed}: {_ppl(c['dev'])}" for seed, c in cells.items())
            lines.append(f"| {model} | {what} | {', '.join(map(str, cells))} | {_mean(list(cells.values()), 'test')} | "
                         f"{_zero_shot(cells)} | {_mean(list(cells.values()), 'dev')} | {each} |")
    return "\n".join(lines)


TABLES = {"results": table, "seeds": seeds_table, "gguf": gguf_table}


def main() -> None:
    text = README.read_text()
    updated = text
    for marker, generate in TABLES.items():
        begin, end = f"<!-- {marker} -->", f"<!-- /{marker} -->"
        start, stop = updated.index(begin) + len(begin), updated.index(end)
        updated = updated[:start] + "\n" + generate() + "\n" + updated[stop:]
    if sys.argv[1:] == ["--check"]:
        sys.exit(0 if updated == text else "README.md's tables differ from bench/results: run bench/readme.py")
    README.write_text(updated)


if __name__ == "__main__":
    main()

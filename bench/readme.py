"""Rewrites README.md's marked results table from the cells bench scripts wrote, so that every
number in it has a result file behind it.

    python bench/readme.py            # rewrite the table between <!-- results --> and <!-- /results -->
    python bench/readme.py --check    # exit 1 if the README's table differs from the results

A row names its result file; a cell that has not run yet is left out."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from common import RESULTS

README = Path(__file__).resolve().parents[1] / "README.md"
BEGIN, END = "<!-- results -->", "<!-- /results -->"
# (model, what the row is, result file under bench/results); each model's rows share its blocks and passes
ROWS = [
    ("SmolLM2-135M, 8 of 30 blocks", "fusion (the default without its trial)", "headline-smollm2/default-margins.json"),
    ("SmolLM2-135M, 8 of 30 blocks", "fusion after the default's trial (chose 3e-3), top-1024 teacher",
     "recycling-smollm2/fuse-trial-top1024.json"),
    ("SmolLM2-135M, 8 of 30 blocks", "LoRA healing at its best dev rate", "headline-smollm2/lora.json"),
    ("SmolLM2-135M, 8 of 30 blocks", "LoRA healing, top-1024 teacher", "recycling-smollm2/lora-top1024.json"),
    ("Gemma 3 270M, 4 of 18 blocks", "fusion, top-64 teacher", "recycling-gemma3/fuse-top64.json"),
    ("Gemma 3 270M, 4 of 18 blocks", "fusion, top-1024 teacher", "recycling-gemma3/fuse-top1024.json"),
    ("Gemma 3 270M, 4 of 18 blocks", "after the default's trial (chose 0: LoRA healing), top-1024 teacher",
     "recycling-gemma3/fuse-trial-top1024.json"),
    ("Gemma 3 270M, 4 of 18 blocks", "LoRA healing, top-64 teacher", "recycling-gemma3/lora-top64.json"),
    ("Gemma 3 270M, 4 of 18 blocks", "LoRA healing, top-1024 teacher", "recycling-gemma3/lora-top1024.json"),
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


def main() -> None:
    text = README.read_text()
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    updated = text[:start] + "\n" + table() + "\n" + text[end:]
    if sys.argv[1:] == ["--check"]:
        sys.exit(0 if updated == text else "README.md's results table differs from bench/results: run bench/readme.py")
    README.write_text(updated)


if __name__ == "__main__":
    main()

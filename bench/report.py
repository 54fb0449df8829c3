"""Regenerate the tables of docs/BENCHMARKS.md from the cached results, between markers:

    <!-- generated: frontier pydoc -->  ...  <!-- end -->

    python bench/report.py          # rewrites docs/BENCHMARKS.md in place (the prose is left alone)

Kinds: `frontier MODEL` (bench/frontier.py --summary), `robust MODEL` (bench/robust.py --table),
`criterion` (bench/criterion.py table), `headline` (bench/headline.py's cells)."""
from __future__ import annotations

import json
import re
import sys

import criterion
import frontier
from common import RESULTS, ROOT

DOC = ROOT / "docs" / "BENCHMARKS.md"
# a marker, then anything up to the first end marker (never past another block's start)
BLOCK = re.compile(r"(<!-- generated: (?P<kind>[^>]*?) -->\n)(?:(?!<!-- generated).)*?(\n?<!-- end -->)", re.S)


def headline() -> str:
    rows = ["| model | cell | removed | wall s | calibrate / score / tune / refresh s | choosing block passes | peak RSS GiB "
            "| dev PPL | test PPL | zero-shot |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    paths = [(model, path) for model in ("smollm2", "gemma3") for path in sorted((RESULTS / f"headline-{model}").glob("*.json"))]
    for model, path in paths:
        c = json.loads(path.read_text())
        stages = c["stage_seconds"]
        rows.append(f"| {model} | {c['name']} | {' '.join(map(str, c['removed']))} | {c['wall_seconds']:.0f} | "
                    + " / ".join(f"{stages.get(k, 0):.0f}" for k in ("calibrate", "score", "tune", "refresh"))
                    + f" | {c['score_passes']:,} | {c['peak_rss_gib']:.2f} | "
                    + " / ".join(f"{v:.2f}" for v in c["dev"].values()) + " | "
                    + " / ".join(f"{v:.2f}" for v in c["test"].values()) + f" | {frontier.zero_shot(c)} |")
    return "\n".join(rows)


def generate(kind: str) -> str:
    name, *args = kind.split()
    if name == "frontier":
        return frontier.summary(*args).rstrip()
    if name == "robust":
        return frontier.table(args[0], folder=f"robust-{args[0]}")
    if name == "criterion":
        return criterion.table()
    if name == "headline":
        return headline()
    raise SystemExit(f"unknown generated block {kind!r}")


def main() -> None:
    text = DOC.read_text()
    DOC.write_text(BLOCK.sub(lambda m: m.group(1) + generate(m.group("kind")) + "\n<!-- end -->", text))
    print(f"{len(BLOCK.findall(text))} tables regenerated in {DOC}")


if __name__ == "__main__":
    sys.exit(main())

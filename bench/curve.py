"""One run, every depth, against separate runs (issue 32): the curve of 4 depths (`--num-remove
K1,K2,K3,K4`, the order chosen once) and the 4 runs of their own (`--num-remove K`), each
depth's perplexity on dev and test beside its separate run's, and the wall time and block passes
of the curve against the sum of the separate runs'. Today's default recipe is pinned; run it alone
(its times are the comparison).

    python bench/curve.py smollm2        # results in bench/results/curve-smollm2/
    python bench/curve.py gemma3
    python bench/curve.py smollm2 --table"""
from __future__ import annotations

import json
import sys
import time

from common import OUTPUTS, RESULTS, flags_of, fusegpt, pinned, protocol, require_assets, run_cell

DEPTHS = {"smollm2": (4, 6, 8, 10), "gemma3": (2, 3, 4, 5)}
# the default of 2026-12-06 spelled out (the trial of rate 0 and the top-1024 teacher included)
DEFAULT = pinned(normalize_donors=None, distill="logits", distill_top_k="1024", rescore_limit="8", trial_rates="0")


def _curve(model: str) -> dict:
    """The curve's cell: its wall time, each depth's removed blocks and block passes, and each
    depth's dev and test perplexity (`fusegpt eval` of each depth's folder)."""
    result = RESULTS / f"curve-{model}" / "curve.json"
    if result.exists():
        return json.loads(result.read_text())
    proto, out = protocol(model), OUTPUTS / f"curve-{model}" / "curve"
    started = time.perf_counter()
    fusegpt(["compress", str(proto.model), "--out", str(out), "--overwrite", *proto.calib, *flags_of(DEFAULT),
             "--num-remove", ",".join(map(str, DEPTHS[model])), "--quiet"])
    cell = {"seconds": round(time.perf_counter() - started, 1), "depths": {}}
    for k in DEPTHS[model]:
        folder = out / f"remove-{k}"
        report = json.loads((folder / "fusegpt_report.json").read_text())
        evaluation = folder / "evaluation.json"
        fusegpt(["eval", str(folder), "--ppl", ",".join(proto.dev + proto.test), *proto.ppl, "--json",
                 str(evaluation), "--quiet"])
        scores = json.loads(evaluation.read_text())["ppl"]
        cell["depths"][str(k)] = {"removed": [s["removed"] for s in report["steps"]],
                                  "block_passes": report.get("block_passes"),
                                  "dev": [scores[s] for s in proto.dev], "test": [scores[s] for s in proto.test]}
    result.parent.mkdir(parents=True, exist_ok=True)
    result.write_text(json.dumps(cell, indent=2) + "\n")
    return cell


def table(model: str) -> str:
    curve = json.loads((RESULTS / f"curve-{model}" / "curve.json").read_text())
    rows = ["| blocks removed | curve: removed | separate: removed | dev PPL curve / separate | "
            "test PPL curve / separate |", "| --- | --- | --- | --- | --- |"]
    separate_seconds = 0.0
    for k in DEPTHS[model]:
        alone = json.loads((RESULTS / f"curve-{model}" / f"separate-{k}.json").read_text())
        separate_seconds += alone["compress_seconds"]
        mine = curve["depths"][str(k)]
        rows.append(f"| {k} | {' '.join(map(str, mine['removed']))} | {' '.join(map(str, alone['removed']))} | "
                    + " / ".join(f"{a:.2f}" for a in mine["dev"]) + " vs "
                    + " / ".join(f"{v:.2f}" for v in alone["dev"].values()) + " | "
                    + " / ".join(f"{a:.2f}" for a in mine["test"]) + " vs "
                    + " / ".join(f"{v:.2f}" for v in alone["test"].values()) + " |")
    rows.append(f"\ncurve {curve['seconds']:.0f} s against {separate_seconds:.0f} s for the separate runs "
                f"({curve['seconds'] / separate_seconds:.2f}x; compress time, evaluation apart)")
    return "\n".join(rows)


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in DEPTHS:
        sys.exit(__doc__)
    model = sys.argv[1]
    if sys.argv[2:] == ["--table"]:
        print(table(model))
        return
    require_assets()
    _curve(model)
    for k in DEPTHS[model]:
        run_cell(f"curve-{model}", f"separate-{k}", model, {**DEFAULT, "--num-remove": str(k)})
    print(table(model))


if __name__ == "__main__":
    main()

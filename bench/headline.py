"""The headline cells timed alone: the default and the best-tuned baseline (LoRA healing at its best
dev rate, on the default's blocks) on SmolLM2 at 0.25, each compression run with nothing else on
the machine (other benchmarks paused with SIGSTOP, resumed after), then evaluated on dev and test.

    python bench/headline.py [NAMES]      # default: default,lora; results in bench/results/headline-smollm2/

Each result has the wall time, the stage breakdown of the report (calibrate, score, tune, refresh,
merge, save), the forward block passes of choosing, peak RSS, the processes paused and the 1-minute
load average at the end (about 2.0: the run had the 2 cores to itself)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from common import OUTPUTS, RESULTS, alone, flags_of, pinned, protocol, require_assets

SUITE = "headline-smollm2"
BLOCKS = "14,17,13,26,16,18,15,12"  # the default's choice on this protocol (frontier-smollm2/s25-default)
CELLS = {"default": pinned(sparsity="0.25", normalize_donors=None, distill="logits"),
         # the same, timed again once the logit loss computed its gradient beside it (bench/logit_loss.py)
         "default-retimed": pinned(sparsity="0.25", normalize_donors=None, distill="logits"),
         # the same again once the logit loss reused its buffers in place (bench/logit_loss.py) and
         # choosing bounded each candidate's KL from k logits before computing it (2026-12-04, late)
         "default-inplace": pinned(sparsity="0.25", normalize_donors=None, distill="logits"),
         # choosing rescoring at most 8 blocks a step after the first (--rescore-limit 8): other blocks
         "default-limit8": pinned(sparsity="0.25", normalize_donors=None, distill="logits", rescore_limit="8"),
         # the default once candidates stopped early ranked by their estimates instead of their bounds
         "default-ranked": pinned(sparsity="0.25", normalize_donors=None, distill="logits"),
         # the limit of 8 ranking blocks by their margins behind their steps' best (2026-12-05; the default since)
         "default-margins": pinned(sparsity="0.25", normalize_donors=None, distill="logits", rescore_limit="8"),
         # the default of 2026-12-06: the top-1024 teacher and the coefficients' rate chosen by a trial
         "default-trial": pinned(sparsity="0.25", normalize_donors=None, distill="logits", rescore_limit="8",
                                 distill_top_k="1024", trial_rates="0,3e-3"),
         # LoRA healing at its best dev rate, with the default's target (the dense model's logits)
         "lora": pinned(method="kl-lora", blocks=BLOCKS, lr="1e-3", distill="logits"),
         # the earlier defaults and their baseline: the dense model's final hidden states as the target
         # (until late 2026-12-04), donors at their own scale too (until early 2026-12-04)
         "default-hidden": pinned(sparsity="0.25", normalize_donors=None),
         "default-raw": pinned(sparsity="0.25"),
         "lora-hidden": pinned(method="kl-lora", blocks=BLOCKS, lr="1e-3")}


def timed(name: str) -> dict:
    result = RESULTS / SUITE / f"{name}.json"
    if result.exists():
        return json.loads(result.read_text())
    proto = protocol("smollm2")
    out = OUTPUTS / SUITE / name
    with alone() as paused:
        started = time.perf_counter()
        run = subprocess.run(["/usr/bin/time", "-f", "MAXRSS %M", sys.executable, "-m", "fusegpt", "compress",
                              str(proto.model), "--out", str(out), "--overwrite", *proto.calib,
                              *flags_of(CELLS[name]), "--no-gguf", "--quiet"], capture_output=True, text=True)
        wall = time.perf_counter() - started
        load_after = os.getloadavg()[0]
    if run.returncode:
        sys.exit(run.stderr)
    report = json.loads((out / "fusegpt_report.json").read_text())
    rss = next(int(line.split()[1]) for line in run.stderr.splitlines() if line.startswith("MAXRSS"))
    evaluation = out / "evaluation.json"
    subprocess.run([sys.executable, "-m", "fusegpt", "eval", str(out), "--ppl", ",".join(proto.dev + proto.test),
                    *proto.ppl, "--json", str(evaluation), "--quiet"], check=True)
    scores = json.loads(evaluation.read_text())["ppl"]
    cell = {"name": name, "settings": CELLS[name], "removed": report["removed"], "wall_seconds": round(wall, 1),
            "stage_seconds": {k: round(v, 1) for k, v in report["stage_seconds"].items()},
            "score_passes": sum(s.get("score_passes", 0) for s in report["steps"]),
            "block_passes": report["block_passes"], "peak_rss_gib": round(rss / 2**20, 2),
            "load_after": round(load_after, 2), "paused": paused,
            "dev": {os.path.basename(s): scores[s] for s in proto.dev},
            "test": {os.path.basename(s): scores[s] for s in proto.test}}
    result.parent.mkdir(parents=True, exist_ok=True)
    result.write_text(json.dumps(cell, indent=2) + "\n")
    return cell


def main() -> None:
    require_assets()
    for name in (sys.argv[1] if len(sys.argv) > 1 else "default,lora").split(","):
        if name not in CELLS:
            sys.exit(f"unknown cell {name!r}; one of {', '.join(CELLS)}")
        cell = timed(name)
        print(json.dumps(cell, indent=2), flush=True)


if __name__ == "__main__":
    main()

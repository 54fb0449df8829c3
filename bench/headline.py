"""The headline cells timed alone: the default, choosing included, and the best-tuned baseline (LoRA
healing at its best dev rate, on the default's blocks) on SmolLM2 at 0.25 and Gemma 3 (4 of 18
blocks), each compression run with nothing else on the machine (other benchmarks paused with
SIGSTOP, resumed after), then evaluated on dev and test.

    python bench/headline.py smollm2 default-halving-bf16   # results in bench/results/headline-<model>/
    python bench/headline.py gemma3                         # every cell of a model, in order

Each result has the wall time, the stage breakdown of the report (calibrate, score, tune, refresh,
merge, save), the forward block passes of choosing, peak RSS, the processes paused and the 1-minute
load average at the end (about 2.0: the run had the 2 cores to itself)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from common import OUTPUTS, RESULTS, alone, cells_asked, flags_of, pinned, protocol

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
# the default of 2026-12-07: a trial of coefficient rates {0, 3e-3} x LoRA/norm rates {1e-3, 5e-4}
# by successive halving; `-bf16`: the tune's block and head products in bfloat16 (`--tune-dtype`)
HALVING = dict(normalize_donors=None, distill="logits", rescore_limit="8", distill_top_k="1024",
               trial_rates="0,3e-3", trial_lrs="5e-4", trial_share="0.25")
SIZE = {"smollm2": dict(sparsity="0.25"), "gemma3": dict(num_remove="4")}  # Gemma 3: issue 29's held-out run
CELLS = {"smollm2": CELLS, "gemma3": {}}
for model, size in SIZE.items():
    CELLS[model]["default-halving"] = pinned(**size, **HALVING)
    CELLS[model]["default-halving-bf16"] = pinned(**size, **HALVING, tune_dtype="bfloat16")
    # choosing on 32 scoring windows instead of the protocol's 8 (Gemma 3's first step is a near tie)
    CELLS[model]["default-halving-bf16-mi32"] = {**CELLS[model]["default-halving-bf16"], "--mi-samples": "32"}
    # the candidate criterion: the calibration loss (SLEB's), the same repair (bench/recycling.py choose-nll-bf16)
    CELLS[model]["nll-halving-bf16"] = {**CELLS[model]["default-halving-bf16"], "--method": "sleb-fuse"}
    # choosing's products in bfloat16 too (`--score-dtype`), and the cell without it timed again beside
    # it, the same session's machine (2026-12-08)
    CELLS[model]["default-halving-bf16-score"] = {**CELLS[model]["default-halving-bf16"], "--score-dtype": "bfloat16"}
    CELLS[model]["default-halving-bf16-retimed"] = CELLS[model]["default-halving-bf16"]
    # the same as -score once the head was cast to bf16 once per scoring call (autocast cast its frozen
    # weight at every call: on Gemma 3's 262k vocabulary -score's choosing was slower than fp32's)
    CELLS[model]["default-halving-bf16-score-head"] = CELLS[model]["default-halving-bf16-score"]
    # the pair again, one after the other (SmolLM2's tune took 329-398 s in three runs of the same code)
    CELLS[model]["default-halving-bf16-score-head2"] = CELLS[model]["default-halving-bf16-score"]
    CELLS[model]["default-halving-bf16-retimed2"] = CELLS[model]["default-halving-bf16"]


def timed(model: str, name: str) -> dict:
    suite = f"headline-{model}"
    result = RESULTS / suite / f"{name}.json"
    if result.exists():
        return json.loads(result.read_text())
    proto = protocol(model)
    out = OUTPUTS / suite / name
    with alone() as paused:
        started = time.perf_counter()
        run = subprocess.run(["/usr/bin/time", "-f", "MAXRSS %M", sys.executable, "-m", "fusegpt", "compress",
                              str(proto.model), "--out", str(out), "--overwrite", *proto.calib,
                              *flags_of(CELLS[model][name]), "--no-gguf", "--quiet"], capture_output=True, text=True)
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
    cell = {"name": name, "settings": CELLS[model][name], "removed": report["removed"], "wall_seconds": round(wall, 1),
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
    asked = cells_asked(__doc__, CELLS, lambda model: CELLS[model], lambda model: "\n".join(CELLS[model]))
    if asked is None:
        return
    model, names = asked
    for name in names:
        print(json.dumps(timed(model, name), indent=2), flush=True)


if __name__ == "__main__":
    main()

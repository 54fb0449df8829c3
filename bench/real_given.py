"""A repair on fixed blocks of SmolLM2-135M-Instruct, under bench/real.py's protocol: separates
the selection from the repair. `compare` lets every method choose its own blocks; here the
blocks are given (`--blocks`), the model is compressed with the variant's flags, then evaluated
(perplexity on WikiText-2 test and C4, zero-shot on 500 items of four tasks).

    python bench/real_given.py NAME BLOCKS [compress flags...]
    python bench/real_given.py sleb-blocks-fuse 17,13,14,15,16,18,12,26 --repair fuse --epochs 0 --global-epochs 4 \
        --global-coef-lr 3e-3 --no-seam-map

The compressed model goes to bench/out/real-given/NAME (not kept in git); the evaluation and the
compress report to bench/results/real-given/NAME.json. A variant with its results is skipped.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time

from real import CALIBRATION, MODEL, PPL, ROOT, TASKS


def main() -> None:
    if not MODEL.exists():
        sys.exit(f"needs ../shared/assets beside the repository ({MODEL} not found)")
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    name, blocks, flags = sys.argv[1], sys.argv[2], sys.argv[3:]
    result = ROOT / "bench" / "results" / "real-given" / f"{name}.json"
    if result.exists():
        print(result.read_text())
        return
    out = ROOT / "bench" / "out" / "real-given" / name
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "fusegpt", "compress", str(MODEL), "--out", str(out), "--overwrite",
                    "--blocks", blocks, *CALIBRATION, *flags, "--quiet"], check=True)
    seconds = time.perf_counter() - started
    evaluation = out / "evaluation.json"
    subprocess.run([sys.executable, "-m", "fusegpt", "eval", str(out), *PPL, "--seqlen", "512", *TASKS,
                    "--json", str(evaluation), "--quiet"], check=True)
    report = json.loads((out / "fusegpt_report.json").read_text())
    result.parent.mkdir(parents=True, exist_ok=True)
    result.write_text(json.dumps({"name": name, "blocks": blocks, "flags": flags, "compress_seconds": seconds,
                                  "block_passes": report.get("block_passes"), "config": report["config"],
                                  "evaluation": json.loads(evaluation.read_text())}, indent=2) + "\n")
    print(result.read_text())


if __name__ == "__main__":
    main()

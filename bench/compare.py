"""Every method at sparsity 0.25 and 0.5 on the small real models in ../shared, with `fusegpt
compare` and the default recipe (no tuning flags: what `fusegpt compress` does by default).

    python bench/compare.py            # both models
    python bench/compare.py pydoc      # one

pydoc-llama-12L: PPL on text/pydoc/eval.txt. stories260K: PPL on WikiText-2 test and zero-shot
on the first 200 items of piqa, arc_easy and hellaswag. The LoRA baselines get at least
fusegpt's tuning compute (docs/BENCHMARKS.md). Results (and the cells a rerun reuses) go to
bench/results/compare-<model>/; SmolLM2 is bench/real.py."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT.parent / "shared" / "assets"
METHODS = "dense,remove,shortgpt,sleb,last,replaceme,remove-linear,fusegpt,remove-lora,sleb-lora,sleb-fuse,kl-lora,kl-fuse"
TUNING = ["--seqlen", "256"]
RUNS = {
    "pydoc": ["models/pydoc-llama-12L", "--calib", "text/pydoc/calib.txt", "--ppl", "text/pydoc/eval.txt",
              "--nsamples", "128"],
    "stories": ["models/stories260K", "--calib", "text/wikitext-2-raw/wiki.valid.raw",
                "--ppl", "text/wikitext-2-raw/wiki.test.raw", "--nsamples", "32", "--group-size", "3",
                "--rank", "16", "--lora-rank", "16", "--tasks", "piqa,arc_easy,hellaswag", "--limit", "200",
                "--tasks-dir", "tasks"],
}
ASSET_FLAGS = {"--calib", "--ppl", "--tasks-dir"}


def main() -> None:
    if not ASSETS.exists():
        sys.exit(f"needs ../shared/assets beside the repository ({ASSETS} not found)")
    for name in sys.argv[1:] or list(RUNS):
        model, *flags = RUNS[name]
        flags = [str(ASSETS / v) if i and flags[i - 1] in ASSET_FLAGS else v for i, v in enumerate(flags)]
        out = ROOT / "bench" / "results" / f"compare-{name}"
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "fusegpt", "compare", str(ASSETS / model), "--out", str(out),
                        "--methods", METHODS, "--sparsity", "0.25,0.5", *flags, *TUNING, "--quiet"], check=True)
        print(f"{name}: {time.perf_counter() - started:.0f} s wall", flush=True)


if __name__ == "__main__":
    main()

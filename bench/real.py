"""The headline benchmark: every method on SmolLM2-135M-Instruct (a real 30-block LLM, from its
4-bit GGUF) at sparsity 0.25 (8 of 30 blocks), with `fusegpt compare`.

Calibration: 128 windows x 256 tokens of WikiText-2 valid (`wiki.valid.raw`), 8 scoring windows
(32 windows until 2026-11-23: too little text, every tuned repair fitted its corpus).
Perplexity: the first 64 protocol windows of 512 tokens of WikiText-2 test and of the C4 file.
Zero-shot: the first 500 items of piqa, arc_easy, hellaswag and winogrande (lm-eval, local files),
with standard errors. Each cell also records compress wall time, peak RSS, tuning block passes,
parameters and prefill/decode speed against the dense model's in the same run.

Cells are cached in bench/results/real-smollm2/cells/, so an interrupted run resumes:

    nohup python bench/real.py > bench/results/real-smollm2.log 2>&1 &
    python bench/real.py dense,remove          # some methods only
    python bench/real.py fusegpt,sleb-lora e0g4 --epochs 0 --global-epochs 4   # a variant: its own cells

A variant (a name, then the flags that make it) is cached in bench/results/real-smollm2/variants/NAME/.
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT.parent / "shared" / "assets"
MODEL = ASSETS / "models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"
METHODS = "dense,kl-fuse,sleb-fuse,fusegpt,kl-lora,sleb-lora,remove-lora,replaceme,remove,sleb,shortgpt,last"  # the default first
TEXT = ASSETS / "text"
# the protocol, in parts that bench/real_given.py shares
CALIBRATION = ["--calib", str(TEXT / "wikitext-2-raw/wiki.valid.raw"), "--nsamples", "128", "--seqlen", "256",
               "--mi-samples", "8"]
PPL = ["--ppl", f"{TEXT / 'wikitext-2-raw/wiki.test.raw'},{TEXT / 'c4/c4_validation_2k.parquet'}",
       "--ppl-windows", "64"]
TASKS = ["--tasks", "piqa,arc_easy,hellaswag,winogrande", "--limit", "500", "--tasks-dir", str(ASSETS / "tasks")]
FLAGS = ["--sparsity", "0.25", *CALIBRATION, *PPL, "--ppl-seqlen", "512", *TASKS, "--quiet"]
OUT = ROOT / "bench" / "results" / "real-smollm2"


def main() -> None:
    if not MODEL.exists():
        sys.exit(f"needs ../shared/assets beside the repository ({MODEL} not found)")
    methods = sys.argv[1] if len(sys.argv) > 1 else METHODS
    out = OUT / "variants" / sys.argv[2] if len(sys.argv) > 2 else OUT
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "fusegpt", "compare", str(MODEL), "--out", str(out), "--methods", methods,
                    *FLAGS, *sys.argv[3:]], check=True)
    print(f"{time.perf_counter() - started:.0f} s wall", flush=True)


if __name__ == "__main__":
    main()

"""The headline: every method on SmolLM2-135M-Instruct (a real 30-block LLM, from its 4-bit GGUF)
at sparsity 0.25 (8 of 30 blocks), with `fusegpt compare`, under bench/common.py's protocol:
calibration 128 x 256 tokens of WikiText-2 valid's first ~75% (8 scoring windows), perplexity on
the first 64 windows of 512 tokens of the dev texts (the rest of WikiText-2 valid, C4 documents
1,000-1,999) and of the test texts (WikiText-2 test, the start of the C4 file), zero-shot on the
first 500 items of piqa, arc_easy, hellaswag and winogrande. Every tuned method at the pinned
recipe (common.RECIPE, the default's settings); the LoRA baselines get the fewest epochs whose
block passes reach the fusing methods'. Each cell also records compress wall time, peak RSS and
prefill/decode speed against the dense model in the same run.

Cells are cached in bench/results/real-smollm2-v2/cells/, so an interrupted run resumes:

    nohup python bench/real.py > bench/results/logs/real.log 2>&1 &
    python bench/real.py dense,mi          # some methods only
"""
from __future__ import annotations

import subprocess
import sys
import time

from common import MODELS, RECIPE, RESULTS, compare_flags, require_assets

METHODS = "dense,kl-fuse,kl-lora,sleb-fuse,fusegpt,sleb-lora,mi-lora,replaceme,mi,sleb,shortgpt,last"  # the default first


def main() -> None:
    require_assets()
    methods = sys.argv[1] if len(sys.argv) > 1 else METHODS
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "fusegpt", "compare", str(MODELS["smollm2"]),
                    "--out", str(RESULTS / "real-smollm2-v2"), "--methods", methods, "--sparsity", "0.25",
                    *compare_flags("smollm2", RECIPE), "--quiet"], check=True)
    print(f"{time.perf_counter() - started:.0f} s wall", flush=True)


if __name__ == "__main__":
    main()

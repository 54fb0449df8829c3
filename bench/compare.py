"""Every method at sparsity 0.25 and 0.5 on the small real models in ../shared, with `fusegpt
compare` under bench/common.py's protocols (calibration on the first part of the calibration
text, perplexity on its held-out rest (dev) and on the test text) and the pinned recipe
(common.RECIPE, the default's settings).

    python bench/compare.py            # both models
    python bench/compare.py pydoc      # one

pydoc-llama-12L: test PPL on text/pydoc/eval.txt. stories260K (group size 3, ranks 16): test PPL
on WikiText-2 test and zero-shot on the first 200 items of piqa, arc_easy and hellaswag. The LoRA
baselines get at least the fusing methods' tuning compute. Cells are cached in
bench/results/compare-<model>-v2/; SmolLM2 is bench/real.py."""
from __future__ import annotations

import subprocess
import sys
import time

from common import MODELS, RECIPE, RESULTS, compare_flags, pinned, require_assets

METHODS = "dense,mi,shortgpt,sleb,last,replaceme,mi-linear,fusegpt,mi-lora,sleb-lora,sleb-fuse,kl-lora,kl-fuse"
SETTINGS = {"pydoc": RECIPE, "stories": pinned(group_size="3", rank="16", lora_rank="16")}


def main() -> None:
    require_assets()
    for name in sys.argv[1:] or list(SETTINGS):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "fusegpt", "compare", str(MODELS[name]),
                        "--out", str(RESULTS / f"compare-{name}-v2"), "--methods", METHODS, "--sparsity", "0.25,0.5",
                        *compare_flags(name, SETTINGS[name], zero_shot=name == "stories"), "--quiet"], check=True)
        print(f"{name}: {time.perf_counter() - started:.0f} s wall", flush=True)


if __name__ == "__main__":
    main()

"""What one tuning block pass costs, fusion against LoRA: the global tune of a fused model (every
kept block's coefficients, LoRA and norms) against LoRA healing of the same blocks removed, timed
in turn in one process so that both see the same machine load.

The same blocks are removed both ways (`--blocks`, no scoring), with one epoch of each tune on
the same calibration windows; the fused run injects each block first (not timed: only the tune
is). Prints the median seconds per block pass of each and their ratio.

    python bench/tune_cost.py                 # pydoc-llama-12L, 6 of 12 blocks (sparsity 0.5)
    python bench/tune_cost.py smollm2         # SmolLM2-135M, 8 of 30 blocks
"""
from __future__ import annotations

import copy
import statistics
import sys
from dataclasses import replace
from pathlib import Path

from fusegpt import compress, load_model, preset

ASSETS = Path(__file__).resolve().parents[2] / "shared" / "assets"
MODELS = {  # name: (model, calibration text, blocks removed: global-only fusegpt's on pydoc at 0.5, MI's on SmolLM2)
    "pydoc": ("models/pydoc-llama-12L", "text/pydoc/calib.txt", [6, 8, 3, 9, 4, 1]),
    "smollm2": ("models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf",
                "text/wikitext-2-raw/wiki.valid.raw", [17, 14, 13, 12, 16, 26, 18, 7]),
}
ROUNDS, WINDOWS, SEQLEN = 3, 32, 256


def seconds_per_pass(model, tokenizer, config) -> float:
    report = compress(copy.deepcopy(model), tokenizer, config, progress=False).report
    return report.heal.seconds["tune"] / report.heal.block_passes


def main() -> None:
    name = sys.argv[1] if len(sys.argv) > 1 else "pydoc"
    path, calib, blocks = MODELS[name]
    if not (ASSETS / path).exists():
        sys.exit(f"needs ../shared/assets beside the repository ({ASSETS / path} not found)")
    model, tokenizer = load_model(str(ASSETS / path))
    fused = preset(blocks=blocks, sparsity=None, calib=str(ASSETS / calib), nsamples=WINDOWS, seqlen=SEQLEN)
    fused.tune = replace(fused.tune, epochs=0, global_epochs=1)
    lora = replace(fused, repair="lora", tune=replace(fused.tune, heal_epochs=1))
    timings = {"fusion": [], "lora": []}
    for _ in range(ROUNDS):
        timings["fusion"].append(seconds_per_pass(model, tokenizer, fused))
        timings["lora"].append(seconds_per_pass(model, tokenizer, lora))
    fusion, healing = (statistics.median(timings[k]) for k in ("fusion", "lora"))
    print(f"{name}: {len(blocks)} blocks removed, {WINDOWS} windows x {SEQLEN} tokens, medians of {ROUNDS} rounds")
    print(f"  fusion's global tune {fusion * 1e3:.1f} ms per block pass, LoRA healing {healing * 1e3:.1f} ms: "
          f"{fusion / healing:.2f}x")


if __name__ == "__main__":
    main()

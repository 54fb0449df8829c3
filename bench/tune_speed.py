"""Where the logit tune's time goes (issue 29, item 4): one epoch of the default's global tune on
the default's blocks, with the whole vocabulary recomputed every step or the dense top-k computed
once, the blocks' products in float32 or bfloat16, and the logit loss on every position or every
2nd (`--distill-stride 2`), timed in turn in one process (so that every variant sees the same
machine), medians of 2 rounds (or `--rounds N`). Run it alone: it is a timing.

    python bench/tune_speed.py gemma3      # writes bench/results/tune-speed-gemma3.json
    python bench/tune_speed.py gemma3 --rounds 1
    python bench/tune_speed.py smollm2"""
from __future__ import annotations

import copy
import json
import statistics
import sys
import time
from dataclasses import replace

from common import MODELS, RESULTS, gemma3_path, require_assets, splits
from recycling import BLOCKS

WINDOWS, SEQLEN = 32, 256
# name: (--distill-top-k, --tune-dtype, --distill-stride)
VARIANTS = {"full-fp32": (0, "float32", 1), "top1024-fp32": (1024, "float32", 1),
            "top1024-stride2-fp32": (1024, "float32", 2), "top1024-bf16": (1024, "bfloat16", 1)}


def main() -> None:
    args = sys.argv[1:]
    if len(args) not in (1, 3) or args[0] not in BLOCKS or args[1:] not in ([], ["--rounds", *args[2:]]) \
            or not (len(args) == 1 or args[2].isdigit() and int(args[2]) > 0):
        sys.exit(__doc__)
    name, rounds = args[0], int(args[2]) if len(args) == 3 else 2
    require_assets()
    import torch

    from fusegpt import compress, load_model, preset

    model, tokenizer = load_model(str(gemma3_path() if name == "gemma3" else MODELS[name]))
    base = preset(blocks=[int(b) for b in BLOCKS[name].split(",")], sparsity=None, calib=str(splits()["wiki-calib"]),
                  nsamples=WINDOWS, seqlen=SEQLEN, mi_samples=8, seed=0)
    # the default of 2026-12-06 spelled out (a default that changes later does not move these cells)
    base.fusion = replace(base.fusion, group_size=7, coefficient="lowrank", rank=128, lora_rank=128,
                          train_norms=True, seam_map=False, normalize_donors=True)
    base.tune = replace(base.tune, loss="relative_mse", epochs=0, batch_size=8, coef_lr=1e-2, lr=1e-3,
                        global_epochs=1, global_coef_lr=3e-3, coef_decay=0.0, trial_rates=(), trial_lrs=(), distill="logits",
                        warmup=0.0)
    cells: dict[str, dict] = {v: {"tune_seconds": [], "block_passes": None, "loss": None} for v in VARIANTS}
    for _ in range(rounds):
        for variant, (top_k, dtype, stride) in VARIANTS.items():
            config = replace(base, tune=replace(base.tune, distill_top_k=top_k, compute=dtype, distill_stride=stride))
            started = time.perf_counter()
            report = compress(copy.deepcopy(model), tokenizer, config, progress=False).report
            cell = cells[variant]
            cell["tune_seconds"].append(round(report.heal.seconds["tune"], 2))
            cell["total_seconds"] = round(time.perf_counter() - started, 1)
            cell["block_passes"], cell["loss"] = report.heal.block_passes, report.heal.losses[-1]
    reference = statistics.median(cells["full-fp32"]["tune_seconds"])
    for variant, cell in cells.items():
        cell["median"] = statistics.median(cell["tune_seconds"])
        cell["ratio"] = round(cell["median"] / reference, 3)
        print(f"{name} {variant}: tune {cell['median']:.1f} s for {cell['block_passes']} block passes "
              f"({cell['ratio']:.2f}x full-fp32), last epoch's loss {cell['loss']:.4f}", flush=True)
    out = {"model": name, "blocks": BLOCKS[name], "windows": WINDOWS, "seqlen": SEQLEN, "rounds": rounds,
           "threads": torch.get_num_threads(), "variants": cells}
    (RESULTS / f"tune-speed-{name}.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()

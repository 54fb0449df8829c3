"""Why fusion lost on a real LLM, and what fixes it: repairs and fusion settings compared on the
same 8 blocks of SmolLM2-135M-Instruct (30 blocks; sparsity 0.25), in-domain (WikiText-2, where
calibration comes from) and off-domain (C4).

The blocks are the ones `remove` (iterative lowest Macro Influence) picks; every variant then
removes exactly those (`--blocks`), so only the repair differs. Calibration: 32 x 256 tokens of
wiki.valid.raw; PPL on the first 32 windows of 512 tokens of wiki.test.raw and of the C4 file.
Each variant is cached in bench/results/ablate_real/, so a rerun only computes what is missing.

    python bench/ablate_real.py                      # every variant
    python bench/ablate_real.py linear,fuse_rmse     # some
    python bench/ablate_real.py --table              # the Markdown table of what is cached
"""
from __future__ import annotations

import copy
import json
import resource
import sys
import time
from pathlib import Path

from fusegpt import CompressConfig, FusionConfig, TuneConfig, compress, load_model
from fusegpt.data import perplexity_ids
from fusegpt.evaluation import perplexity

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT.parent / "shared" / "assets"
MODEL = ASSETS / "models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"
OUT = ROOT / "bench" / "results" / "ablate_real"
K, EPOCHS, PPL_WINDOWS, SEQLEN = 8, 3, 32, 512
# every fusion setting that a variant does not name is fixed here, not taken from the (changing) defaults
OLD = {"loss": "mse", "coef_lr": 1e-2, "lr": 1e-3, "teacher": "group", "global_epochs": 0}  # the README recipe of the previous release
RMSE = {**OLD, "loss": "relative_mse"}
DENSE = {**RMSE, "teacher": "dense"}
PLAIN, SEAM = {"seam_map": False}, {"seam_map": True}

# name: (method, tune overrides, fusion overrides)
VARIANTS: dict[str, tuple[str, dict, dict]] = {
    "remove": ("remove", {}, {}),
    "linear": ("remove", {}, {}),  # repair "linear" on the given blocks (ReplaceMe's map)
    "replaceme": ("replaceme", {}, {}),  # its own span selection + linear map
    "fuse_mse": ("fusegpt", OLD, PLAIN),
    "fuse_rmse": ("fusegpt", RMSE, PLAIN),
    "fuse_rmse_dense": ("fusegpt", DENSE, PLAIN),  # the default recipe without the seam map
    "fuse_rmse_coef_only": ("fusegpt", RMSE, {**PLAIN, "lora_rank": 0, "train_norms": False}),
    "fuse_rmse_seam": ("fusegpt", RMSE, SEAM),
    "fuse_rmse_seam_dense": ("fusegpt", DENSE, SEAM),
    "fuse_mse_seam": ("fusegpt", OLD, SEAM),
    "fuse_rmse_seam_dense_global": ("fusegpt", {**DENSE, "global_epochs": 3}, SEAM),
    # LoRA over every kept block, with the fewest epochs whose block passes reach fusion's (8 here)
    "lora": ("remove-lora", RMSE, {}),
    "lora_24ep": ("remove-lora", {**RMSE, "heal_epochs": 24}, {}),  # the previous release's budget: 3x fusion's
    "lora_global": ("remove-lora", {**RMSE, "global_epochs": 3}, {}),  # the budget of the global row (11 epochs)
    # the same compute spread over 3x more calibration text: 96 windows, 1 epoch (fusion) / 3 (LoRA)
    "fuse_96x1": ("fusegpt", {**DENSE, "epochs": 1}, SEAM),
    "fuse_96x1_noseam": ("fusegpt", {**DENSE, "epochs": 1}, PLAIN),
    "lora_96": ("remove-lora", {**RMSE, "epochs": 1}, {}),  # epochs: the fusion budget LoRA matches
    # + one epoch of tuning every kept block end to end (the dense model's final hidden states)
    "fuse_96x1_global": ("fusegpt", {**DENSE, "epochs": 1, "global_epochs": 1}, SEAM),
    "lora_96_global": ("remove-lora", {**RMSE, "epochs": 1, "global_epochs": 1}, {}),  # that budget: 4 epochs
    # SLEB's blocks (calibration NLL) instead of Macro Influence's, removed or fused
    "sleb": ("sleb", {}, {}),
    "fuse_sleb": ("fusegpt", {**DENSE, "epochs": 1}, SEAM),  # at 96 x 1
}
# variants that remove another variant's blocks than remove's (None: they select their own)
BLOCKS_OF: dict[str, str | None] = {"remove": None, "replaceme": None, "sleb": None, "fuse_sleb": "sleb"}
# calibration settings that differ from the ablation's 32 windows of 256 tokens
CALIBRATION: dict[str, dict] = {name: {"nsamples": 96} for name in
                                ("fuse_96x1", "fuse_96x1_noseam", "lora_96", "fuse_96x1_global", "lora_96_global", "fuse_sleb")}


def table() -> str:
    """The cached variants as the Markdown table docs/BENCHMARKS.md quotes."""
    rows = ["| variant | method | settings | PPL WikiText-2 | PPL C4 | wall s | tuning block passes |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for name in ["dense", *VARIANTS]:
        path = OUT / f"{name}.json"
        if not path.exists() or "c4" not in json.loads(path.read_text()):
            continue
        row = json.loads(path.read_text())
        method, tune, fusion = VARIANTS.get(name, ("-", {}, {}))
        settings = ", ".join(f"{k}={v}" for k, v in {**tune, **fusion}.items()) or "-"
        rows.append(f"| {name} | {method}{' (repair linear)' if name == 'linear' else ''} | {settings} | "
                    f"{row['ppl']:.2f} | {row['c4']:.2f} | {row.get('seconds', '-')} | {row.get('block_passes', '-')} |")
    return "\n".join(rows)


def main() -> None:
    if sys.argv[1:] == ["--table"]:
        print(table())
        return
    if not MODEL.exists():
        sys.exit(f"needs ../shared/assets beside the repository ({MODEL} not found)")
    names = sys.argv[1].split(",") if len(sys.argv) > 1 else list(VARIANTS)
    OUT.mkdir(parents=True, exist_ok=True)
    model, tokenizer = load_model(str(MODEL))
    ids = perplexity_ids(tokenizer, str(ASSETS / "text/wikitext-2-raw/wiki.test.raw"), SEQLEN)
    c4_ids = perplexity_ids(tokenizer, str(ASSETS / "text/c4/c4_validation_2k.parquet"), SEQLEN)
    base = dict(calib=str(ASSETS / "text/wikitext-2-raw/wiki.valid.raw"), nsamples=32, seqlen=256, mi_samples=8)
    for name in ["dense", "remove", *[n for n in names if n not in ("dense", "remove")]]:
        path = OUT / f"{name}.json"
        if path.exists() and "c4" in json.loads(path.read_text()):  # rows from before C4 are recomputed
            print(path.read_text().strip(), flush=True)
            continue
        row: dict = {"variant": name}
        started = time.perf_counter()
        if name == "dense":
            pruned = model
        else:
            method, tune, fusion = VARIANTS[name]
            source = BLOCKS_OF.get(name, "remove")
            blocks = source and json.loads((OUT / f"{source}.json").read_text())["removed"]
            config = CompressConfig(method=method, sparsity=None, num_remove=None if blocks else K, blocks=blocks,
                                    repair="linear" if name == "linear" else None, **{**base, **CALIBRATION.get(name, {})},
                                    fusion=FusionConfig(**fusion), tune=TuneConfig(**{"epochs": EPOCHS, **tune}))
            result = compress(copy.deepcopy(model), tokenizer, config, progress=False)
            pruned = result.model
            row.update(removed=result.report.removed, seconds=round(time.perf_counter() - started, 1),
                       block_passes=result.report.block_passes,
                       losses=[s.losses for s in result.report.steps] + ([result.report.heal.losses]
                                                                          if result.report.heal else []))
        row["ppl"] = perplexity(pruned, ids, SEQLEN, progress=False, windows=PPL_WINDOWS)
        row["c4"] = perplexity(pruned, c4_ids, SEQLEN, progress=False, windows=PPL_WINDOWS)
        row["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
        path.write_text(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()

"""Which loss, coefficient form and learning rates make one fusion step work best.

One FuseGPT step on pydoc-llama-12L (the lowest-MI block, 6) with a small budget: 64 windows
of 256 tokens, 4 epochs; PPL on the first 160 windows of pydoc/eval.txt. Cheap enough (~30 s a
variant on 2 cores) to compare many settings; bench/quality.py then checks the winner end to end.

    python bench/ablate_step.py                 # every variant
    python bench/ablate_step.py mse,mse_c1e-2   # some
"""
from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path

from fusegpt import CompressConfig, FusionConfig, TuneConfig, compress, load_model
from fusegpt.data import perplexity_ids
from fusegpt.evaluation import perplexity

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT.parent / "shared" / "assets"
PAPER = {"coef_lr": 1e-3, "lr": 9.65e-6}
OURS = {"coef_lr": 1e-2, "lr": 1e-3}

# name: (tune overrides, fusion overrides)
VARIANTS: dict[str, tuple[dict, dict]] = {
    "remove": ({}, {}),
    **{f"{loss}_paper_lr": ({"loss": loss, **PAPER}, {}) for loss in ("kl_batch", "kl_hidden", "mse", "cosine")},
    **{f"{loss}_c1e-2": ({"loss": loss, **OURS}, {}) for loss in ("kl_batch", "kl_hidden", "mse", "cosine")},
    "mse_full_paper_lr": ({"loss": "mse", **PAPER}, {"coefficient": "full"}),
    "mse_vector_paper_lr": ({"loss": "mse", **PAPER}, {"coefficient": "vector"}),
    "mse_full_c1e-2": ({"loss": "mse", **OURS}, {"coefficient": "full"}),
    "mse_vector_c1e-2": ({"loss": "mse", **OURS}, {"coefficient": "vector"}),
    "mse_coef3e-3_paper_lora": ({"loss": "mse", "coef_lr": 3e-3, "lr": 9.65e-6}, {}),
    "mse_coef1e-2_paper_lora": ({"loss": "mse", "coef_lr": 1e-2, "lr": 9.65e-6}, {}),
    "mse_coef3e-2_paper_lora": ({"loss": "mse", "coef_lr": 3e-2, "lr": 9.65e-6}, {}),
    "mse_coef1e-1_paper_lora": ({"loss": "mse", "coef_lr": 1e-1, "lr": 9.65e-6}, {}),
    "mse_c1e-2_lora1e-2": ({"loss": "mse", "coef_lr": 1e-2, "lr": 1e-2}, {}),
    "mse_c1e-2_no_lora_no_norms": ({"loss": "mse", **OURS}, {"lora_rank": 0, "train_norms": False}),
}


def main() -> None:
    if not ASSETS.exists():
        sys.exit(f"needs ../shared/assets beside the repository ({ASSETS} not found)")
    names = sys.argv[1].split(",") if len(sys.argv) > 1 else list(VARIANTS)
    model, tokenizer = load_model(str(ASSETS / "models/pydoc-llama-12L"))
    ids = perplexity_ids(tokenizer, str(ASSETS / "text/pydoc/eval.txt"), 256)[: 160 * 256]
    rows = [{"variant": "dense", "ppl": perplexity(model, ids, 256, progress=False)}]
    print(f"dense ppl {rows[0]['ppl']:.3f}", flush=True)
    for name in names:
        tune, fusion = VARIANTS[name]
        config = CompressConfig(method="remove" if name == "remove" else "fusegpt", num_remove=1, sparsity=None,
                                calib=str(ASSETS / "text/pydoc/calib.txt"), nsamples=64, seqlen=256,
                                fusion=FusionConfig(**fusion), tune=TuneConfig(epochs=4, **tune))
        started = time.perf_counter()
        result = compress(copy.deepcopy(model), tokenizer, config, progress=False)
        row = {"variant": name, "ppl": perplexity(result.model, ids, 256, progress=False),
               "seconds": time.perf_counter() - started, "losses": result.report.steps[0].losses}
        rows.append(row)
        print(f"{name:28s} ppl {row['ppl']:.3f}  loss {[round(l, 4) for l in row['losses']]}", flush=True)
    out = ROOT / "bench" / "results" / "ablate_step.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()

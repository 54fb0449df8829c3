"""Fusion variants against LoRA healing at the budget each variant sets, on pydoc-llama-12L: the
same protocol as bench/compare.py (128 x 256 calibration tokens of pydoc/calib.txt, PPL on all of
pydoc/eval.txt), `fusegpt compare` with fusegpt, remove-lora and sleb-lora and the variant's flags,
so that the LoRA baselines get the fewest epochs whose block passes reach that variant's fusegpt.

    python bench/ablate_pydoc.py e0g8-coef1e-2 0.5          # one variant at one sparsity
    python bench/ablate_pydoc.py e1g1,e1g1-seed1 0.25,0.5
    python bench/ablate_pydoc.py e0g4-coef1e-3 0.25 sleb-fuse   # other methods than the three
    python bench/ablate_pydoc.py --table           # the Markdown table of what is cached

Cells are cached in bench/results/ablate-pydoc/<variant>/ (a rerun computes only what is missing)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "ablate-pydoc"
METHODS = "fusegpt,remove-lora,sleb-lora"
ASSETS = ROOT.parent / "shared" / "assets"
PROTOCOL = ["--calib", str(ASSETS / "text/pydoc/calib.txt"), "--ppl", str(ASSETS / "text/pydoc/eval.txt"),
            "--nsamples", "128", "--seqlen", "256"]
# the previous default recipe: 1 epoch of local tuning per removal, 1 global epoch with the
# coefficients at LoRA's rate (1e-3)
PREVIOUS = ["--epochs", "1", "--global-epochs", "1", "--global-coef-lr", "1e-3"]


def _global(epochs: int, coef_lr: str) -> list[str]:
    """No local tuning: inject + seam map at each removal, then `epochs` global epochs."""
    return ["--epochs", "0", "--global-epochs", str(epochs), "--global-coef-lr", coef_lr]


VARIANTS: dict[str, list[str]] = {
    "e1g1": PREVIOUS,
    "e1g1-seed1": [*PREVIOUS, "--seed", "1"],  # the noise of one comparison
    "e1g2": ["--epochs", "1", "--global-epochs", "2", "--global-coef-lr", "1e-3"],
    "e0g4-coef1e-3": _global(4, "1e-3"),
    "e0g8-coef1e-3": _global(8, "1e-3"),
    "e0g4-coef3e-3": _global(4, "3e-3"),
    "e0g4-coef1e-2": _global(4, "1e-2"),  # the best on pydoc; not on SmolLM2 (docs/BENCHMARKS.md)
    "e0g4-coef1e-2-seed1": [*_global(4, "1e-2"), "--seed", "1"],
    "e0g4-coef3e-2": _global(4, "3e-2"),
    "e0g8-coef1e-2": _global(8, "1e-2"),
    # no seam map: with zero coefficients the fused model at selection time is the plain removed
    # one, so the criterion picks what it picks for removal (sleb-fuse: SLEB's own blocks)
    "e0g4-coef3e-3-noseam": [*_global(4, "3e-3"), "--no-seam-map"],
    "e0g4-coef3e-3-noseam-seed1": [*_global(4, "3e-3"), "--no-seam-map", "--seed", "1"],
    # the default recipe (no flags) on other calibration samples: how often seed 0's pick recurs
    **{f"default-seed{seed}": ["--seed", str(seed)] for seed in (2, 3, 4)},
}


def table() -> str:
    """PPL and tuning block passes of every cached cell, a variant per row."""
    methods, sparsities = (*METHODS.split(","), "sleb-fuse", "kl-lora", "kl-fuse"), ("0.25", "0.5")
    rows = ["| variant | flags | " + " | ".join(f"{m} {s}" for s in sparsities for m in methods) + " |",
            "| --- | --- |" + " --- |" * (len(methods) * len(sparsities))]
    for name, flags in VARIANTS.items():
        cells = []
        for sparsity in sparsities:
            for method in methods:
                path = OUT / name / "cells" / f"{method}@{sparsity}.json"
                cell = json.loads(path.read_text())["cell"] if path.exists() else None
                cells.append(f"{next(iter(cell['ppl'].values())):.2f} ({cell['block_passes']:,})" if cell else "-")
        if any(c != "-" for c in cells):
            rows.append(f"| {name} | `{' '.join(flags)}` | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main() -> None:
    if sys.argv[1:] == ["--table"]:
        print(table())
        return
    if not ASSETS.exists():
        sys.exit(f"needs ../shared/assets beside the repository ({ASSETS} not found)")
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    for name in sys.argv[1].split(","):
        if name not in VARIANTS:
            sys.exit(f"unknown variant {name!r}; one of {', '.join(VARIANTS)}")
        out = OUT / name
        methods = sys.argv[3] if len(sys.argv) > 3 else METHODS
        subprocess.run([sys.executable, "-m", "fusegpt", "compare", str(ASSETS / "models/pydoc-llama-12L"),
                        "--out", str(out), "--methods", methods, "--sparsity", sys.argv[2],
                        *PROTOCOL, *VARIANTS[name], "--quiet"], check=True)


if __name__ == "__main__":
    main()

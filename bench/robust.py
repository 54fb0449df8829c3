"""Where fusion could lose to LoRA healing: the conditions of the held-out model on which it did
(a contiguous removed span, 64 calibration windows, 8 scoring windows), reproduced on the models
we have, fusion against LoRA on the same blocks at equal block passes, on dev.

    python bench/robust.py pydoc                 # every variant of a model
    python bench/robust.py pydoc span4-fuse,span4-lora
    python bench/robust.py pydoc --table

Cells are cached in bench/results/robust-<model>/ (bench/common.py)."""
from __future__ import annotations

import sys

from common import pinned, require_assets, run_cell
from frontier import table

SMALL = ["--nsamples", "64", "--mi-samples", "8"]  # the held-out run's calibration
# a contiguous span, removed from its last block down as the held-out model's criterion did
SPANS = {"pydoc": "8,7,6,5", "smollm2": "16,15,14,13"}
SPREAD = {"pydoc": "6,8,3,7", "smollm2": "17,14,13,15"}  # the default's first four picks


def variants(model: str) -> dict[str, tuple[dict, list[str]]]:
    cells = {}
    for name, blocks in (("span4", SPANS[model]), ("spread4", SPREAD[model])):
        cells[f"{name}-fuse"] = (pinned(blocks=blocks), SMALL)
        cells[f"{name}-lora"] = (pinned(method="kl-lora", blocks=blocks), SMALL)
        cells[f"{name}-lora-lr3e-3"] = (pinned(method="kl-lora", blocks=blocks, lr="3e-3"), SMALL)
        cells[f"{name}-lora-lr1e-2"] = (pinned(method="kl-lora", blocks=blocks, lr="1e-2"), SMALL)
        # fusion with its coefficients at LoRA's rate; with its own LoRA at the rate that helps LoRA
        cells[f"{name}-fuse-c1e-3"] = (pinned(blocks=blocks, global_coef_lr="1e-3"), SMALL)
        cells[f"{name}-fuse-lr3e-3"] = (pinned(blocks=blocks, lr="3e-3"), SMALL)
        cells[f"{name}-fuse-c1e-2-lr3e-3"] = (pinned(blocks=blocks, global_coef_lr="1e-2", lr="3e-3"), SMALL)
    return cells


def main() -> None:
    args = sys.argv[1:]
    if not args or args[0] not in SPANS:
        sys.exit(__doc__)
    model = args[0]
    if args[1:] == ["--table"]:
        print(table(model, folder=f"robust-{model}"))
        return
    require_assets()
    cells = variants(model)
    for name in args[1].split(",") if len(args) > 1 else cells:
        if name not in cells:
            sys.exit(f"unknown variant {name!r}; one of {', '.join(cells)}")
        settings, extra = cells[name]
        cell = run_cell(f"robust-{model}", name, model, settings, extra)
        if cell is not None:  # else another runner computes it
            print(f"{name}: dev {cell['dev']} test {cell['test']}", flush=True)


if __name__ == "__main__":
    main()

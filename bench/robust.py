"""Where fusion could lose to LoRA healing: the conditions of the held-out model on which it did
(a contiguous removed span, 64 calibration windows, 8 scoring windows), reproduced on the models
we have, fusion against LoRA on the same blocks at equal block passes, on dev.

`rescaled-*`: the same model with every removed block's weights rescaled in pairs that leave what
it computes unchanged (q x 4 with k / 4, v x 4 with o / 4, up x 4 with down / 4): the scale of a
projection is free wherever a norm or a linear partner follows it (Gemma 3 normalises q, k and
every sublayer's output, so its blocks' scales differ freely). LoRA never sees the removed blocks;
raw fusion injects them at their scale; normalised donors (`--normalize-donors`) do not see it.

    python bench/robust.py pydoc                 # every variant of a model
    python bench/robust.py pydoc span4-fuse,span4-lora
    python bench/robust.py pydoc --table

Cells are cached in bench/results/robust-<model>/ (bench/common.py)."""
from __future__ import annotations

from pathlib import Path

from common import OUTPUTS, cells_asked, pinned, protocol, run_cell
from frontier import table

SMALL = ["--nsamples", "64", "--mi-samples", "8"]  # the held-out run's calibration
# a contiguous span, removed from its last block down as the held-out model's criterion did
SPANS = {"pydoc": "8,7,6,5", "smollm2": "16,15,14,13"}
SPREAD = {"pydoc": "6,8,3,7", "smollm2": "17,14,13,15"}  # the default's first four picks
DEFAULT_BLOCKS = {"pydoc": "6,8,3", "smollm2": "14,17,13,26,16,18,15,12"}  # the default's at 0.25 (frontier)
PAIRS = (("q", "k"), ("v", "o"), ("up", "down"))  # a Llama block's linear pairs: output of one, input of the other
FACTOR = 4.0


def rescaled(model: str) -> Path:
    """A copy of the model whose default-removed blocks have every pair in PAIRS scaled by FACTOR and
    1 / FACTOR (written once under bench/out/models/)."""
    out = OUTPUTS / "models" / f"{model}-rescaled"
    if (out / "config.json").exists():
        return out
    import torch

    from fusegpt.io import load_model
    from fusegpt.models import adapter_for

    weights, tokenizer = load_model(str(protocol(model).model))
    adapter = adapter_for(weights)
    blocks = adapter.blocks(weights)
    with torch.no_grad():
        for index in map(int, DEFAULT_BLOCKS[model].split(",")):
            linears = adapter.linears(blocks[index])
            for first, second in PAIRS:
                linears[first].weight.mul_(FACTOR)
                linears[second].weight.div_(FACTOR)
    weights.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


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
    # the default's blocks and calibration (the frontier's protocol), on the rescaled copy
    blocks = DEFAULT_BLOCKS[model]
    cells["rescaled-fuse"] = (pinned(blocks=blocks), [])
    cells["rescaled-fuse-norm"] = (pinned(blocks=blocks, normalize_donors=None), [])
    return cells


def main() -> None:
    asked = cells_asked(__doc__, SPANS, variants, lambda model: table(model, folder=f"robust-{model}"))
    if asked is None:
        return
    model, names = asked
    cells = variants(model)
    for name in names:
        settings, extra = cells[name]
        weights = rescaled(model) if name.startswith("rescaled") else None
        cell = run_cell(f"robust-{model}", name, model, settings, extra, weights=weights)
        if cell is not None:  # else another runner computes it
            print(f"{name}: dev {cell['dev']} test {cell['test']}", flush=True)


if __name__ == "__main__":
    main()

"""Recycling against healing on two real families (SmolLM2, Gemma 3): what the default's tune
costs and whether it ever loses to LoRA healing of the same blocks, cell by cell on dev (test
beside it, never used to choose).

    python bench/recycling.py gemma3                 # every cell of a model, in order
    python bench/recycling.py gemma3 fuse-top64,lora-top64
    python bench/recycling.py gemma3 --table

Each cell tunes the default's own blocks (`BLOCKS`, from its run on the same protocol) with the
pinned recipe of today's default (`DEFAULT`) and the variant's changes: `top64`, the dense model's
64 most likely tokens and the rest's mass computed once as the teacher (`--distill-top-k 64`),
against `full`, the whole vocabulary recomputed every step (`top256`, `top1024`: more tokens);
`trial`, the coefficient rate chosen by a trial of 0 (LoRA healing) and the default's 3e-3 on
held-out calibration windows (`--trial-rates`); `halving`, a trial of those rates x LoRA's 1e-3
and 5e-4 that halves the pairs after each quarter of the first epoch (`--trial-lrs`,
`--trial-share`); `bf16`, the blocks' and the LM head's products in
bfloat16 (the cached `bf16-blocks`: the blocks' alone, by the code before the head's); `stride2`,
the logit loss on every 2nd position (`--distill-stride 2`); `lr5e-4`, `lr2e-3`: the rate of LoRA
and norms (the default's 1e-3) searched on dev with the default's logit target, for both repairs;
`fuse-top1024-lr5e-4`: fusion at coefficients 3e-3 without the trial, LoRA and norms at 5e-4 (what the trial drops
on Gemma 3 after its first rounds, run to the end);
`choose-mi-bf16`, `choose-nll-bf16`, `choose-kl-bf16`: the default choosing its own blocks by a
criterion (Macro Influence, the calibration loss, KL), its tune in bf16, and at seeds 1-4
(`-seed1` .. `-seed4`; KL at seed 0 is headline-<model>/default-halving-bf16, timed alone);
`halving-bf16`: today's default on the given blocks, and its structure re-decided: `-local`
(1 epoch of each removal's group on hidden states, then 2 global epochs in place of 4), `-local-mse`
(the same by plain mse in place of relative_mse), `-g3`, `-g11` (donors for 3 or 11 neighbours, not 7);
`seed1`, `seed2`: other seeds (their calibration windows, their order, the start). Cells are cached in
bench/results/recycling-<model>/ (bench/common.py)."""
from __future__ import annotations

from common import cells_asked, pinned, run_cell
from frontier import table

# the default's blocks on each protocol, in its order (SmolLM2: headline-smollm2/default-margins;
# Gemma 3: the held-out run of issue 29, 4 of 18 blocks)
# pydoc (the third check): the kl criterion's choice at 0.25 at each of seeds 0-4 (bench/criterion.py choices)
BLOCKS = {"smollm2": "14,17,13,26,15,16,18,12", "gemma3": "9,8,7,6", "pydoc": "6,8,3"}
# the default of 2026-12-05 on given blocks: donors normalised, logits distilled, rescoring limited
DEFAULT = dict(normalize_donors=None, distill="logits", rescore_limit="8")


def variants(model: str) -> dict[str, dict]:
    blocks = BLOCKS[model]
    fuse, lora = pinned(blocks=blocks, **DEFAULT), pinned(method="kl-lora", blocks=blocks, **DEFAULT)
    cells = {"fuse-top64": {**fuse, "--distill-top-k": "64"}, "fuse-full": {**fuse, "--distill-top-k": "0"},
             "lora-top64": {**lora, "--distill-top-k": "64"}, "lora-full": {**lora, "--distill-top-k": "0"},
             "fuse-top256": {**fuse, "--distill-top-k": "256"}, "fuse-top1024": {**fuse, "--distill-top-k": "1024"},
             "lora-top1024": {**lora, "--distill-top-k": "1024"},
             "fuse-trial-top1024": {**fuse, "--distill-top-k": "1024", "--trial-rates": "0,3e-3"},
             "fuse-top1024-bf16": {**fuse, "--distill-top-k": "1024", "--tune-dtype": "bfloat16"}}
    # the default of 2026-12-07: a trial of coefficient rates {3e-3, 0} x LoRA/norm rates {1e-3, 5e-4},
    # successive halving over quarters of the first epoch (tuning/trial.py)
    cells["fuse-halving-top1024"] = {**cells["fuse-trial-top1024"], "--trial-lrs": "5e-4", "--trial-share": "0.25"}
    # the criterion re-decided on dev: the default (bf16 tune) choosing its own blocks by Macro Influence
    # (`fusegpt`) or the calibration loss (`sleb-fuse`); by KL it is headline-<model>/default-halving-bf16
    size = {"smollm2": {"--sparsity": "0.25"}, "gemma3": {"--num-remove": "4"}, "pydoc": {"--sparsity": "0.25"}}[model]
    chosen = {k: v for k, v in cells["fuse-halving-top1024"].items() if k != "--blocks"}
    for criterion, method in (("mi", "fusegpt"), ("nll", "sleb-fuse"), ("kl", "kl-fuse")):
        cells[f"choose-{criterion}-bf16"] = {**chosen, **size, "--method": method, "--tune-dtype": "bfloat16"}
    for criterion in ("nll", "kl"):  # whether a criterion's gain holds at other calibration windows
        for seed in (1, 2, 3, 4):
            cells[f"choose-{criterion}-bf16-seed{seed}"] = {**cells[f"choose-{criterion}-bf16"], "--seed": str(seed)}
    # the loss on every 2nd position only (the head's products halved), after the default's trial
    cells["fuse-trial-top1024-stride2"] = {**cells["fuse-trial-top1024"], "--distill-stride": "2"}
    for lr in ("5e-4", "2e-3"):  # LoRA's rate searched with the logit target, and fusion's LoRA and norms at it
        cells[f"lora-top1024-lr{lr}"] = {**cells["lora-top1024"], "--lr": lr}
        cells[f"fuse-trial-top1024-lr{lr}"] = {**cells["fuse-trial-top1024"], "--lr": lr}
        cells[f"fuse-top1024-lr{lr}"] = {**cells["fuse-top1024"], "--lr": lr}  # coefficients at 3e-3, no trial
    # the seed's spread, against which a gap is judged; the default and each model's best-tuned LoRA
    best_lora = {"smollm2": "lora-top1024-lr2e-3", "gemma3": "lora-top1024-lr5e-4", "pydoc": "lora-top1024"}[model]
    for name in ("lora-top1024", "fuse-trial-top1024", "fuse-top1024", "fuse-halving-top1024", best_lora):
        for seed in (1, 2):
            cells[f"{name}-seed{seed}"] = {**cells[name], "--seed": str(seed)}
    # the structure re-decided on dev (issue 29, item 3): today's default on the same blocks (`halving-bf16`)
    # against a local tune of each removal's group on hidden states before a shorter global tune (equal
    # block passes on Gemma 3), by relative_mse or plain mse, and against fewer or more donors per removal
    # (SmolLM2's reference is headline-smollm2/default-halving-bf16: the same settings, the same blocks chosen)
    base = cells["halving-bf16"] = {**cells["fuse-halving-top1024"], "--tune-dtype": "bfloat16"}
    cells["halving-bf16-local"] = {**base, "--epochs": "1", "--global-epochs": "2"}
    cells["halving-bf16-local-mse"] = {**cells["halving-bf16-local"], "--loss": "mse"}
    for group in ("3", "11"):
        cells[f"halving-bf16-g{group}"] = {**base, "--group-size": group}
    if model == "smollm2":  # fuse-full is headline-smollm2/default-margins (the same settings, its own choice)
        del cells["fuse-full"]
    return cells


def main() -> None:
    asked = cells_asked(__doc__, BLOCKS, variants, lambda model: table(model, folder=f"recycling-{model}"))
    if asked is None:
        return
    model, names = asked
    cells = variants(model)
    for name in names:
        cell = run_cell(f"recycling-{model}", name, model, cells[name])
        if cell is not None:  # else another runner computes it
            print(f"{name}: dev {cell['dev']} test {cell['test']} stages {cell['stages']}", flush=True)


if __name__ == "__main__":
    main()

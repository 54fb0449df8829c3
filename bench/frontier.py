"""Fusion against LoRA healing on the same blocks: equal tuning effort (one learning-rate grid for
both, chosen on dev), quality against compute (1x, 2x, 4x, 8x the default's tuning block passes),
and what pushes the frontier down. bench/common.py has the protocols (dev/test splits) and the
pinned recipe; every cell is cached in bench/results/frontier-<model>/, so a grid resumes.

    python bench/frontier.py pydoc                      # every cell of the plan, in order
    python bench/frontier.py smollm2 s25-default,s25-lora-lr3e-3
    python bench/frontier.py pydoc --table              # what is cached, dev and test
    python bench/frontier.py pydoc --summary            # the grids, the best settings and their frontier (docs)
    python bench/frontier.py --plot                     # docs/frontier.png from the cached cells
    python bench/frontier.py smollm2 --zero-shot s25-lora-lr1e-3   # zero-shot of a cached cell's model

Cell names: s<sparsity>-default (the default recipe, choosing its own blocks), then on those
blocks: s..-lora-lr<X> (LoRA healing at lr X), s..-fuse-c<X>-lr<Y> (fusion, coefficients at X in
the global tune, LoRA and norms at Y), a suffix -x<N> for N times the default's passes (more global
epochs; LoRA's budget follows), and the variants of `push` on each repair's best setting."""
from __future__ import annotations

import json
import sys

from common import (RESULTS, ROOT, add_zero_shot, cached, pinned, require_assets, run_cell, splits, suite_name,
                    switched)

SPARSITIES = {"pydoc": ("0.25", "0.5"), "smollm2": ("0.25",)}
# LoRA's and fusion's lr. On SmolLM2 (an hour a cell here) without 1e-2, at which both diverge on pydoc
LRS = {"pydoc": ("1e-3", "3e-3", "5e-3", "1e-2"), "smollm2": ("5e-4", "1e-3", "3e-3")}
FUSE_GRID = {"pydoc": [(c, lr) for c in ("1e-3", "3e-3", "1e-2", "3e-2") for lr in ("1e-3", "3e-3")]
             + [("1e-3", "5e-3"), ("3e-3", "5e-3")],  # at 1e-2 fusion's LoRA diverges as LoRA does
             # (3e-3, 1e-3) is the default's own recipe: its cell is s25-default (on pydoc both are run, a check
             # that given blocks reproduce the default's model)
             "smollm2": [("3e-3", "3e-3"), ("1e-2", "3e-3"), ("1e-3", "3e-3"), ("1e-2", "1e-3"), ("3e-3", "5e-4")]}
# other ways of recycling the removed weights, at LoRA's best rate: the seam map (ReplaceMe's
# least-squares start), and one coefficient per output row instead of a rank-128 matrix
# and the donors scaled to each receiving layer's norm (the coefficients then move every layer at the
# same relative pace, whatever scale a norm after the layer leaves free), at the default's rates and LoRA's
NORMALIZED = {"--normalize-donors": None}
RECYCLE = {"pydoc": {"seam": {"--global-coef-lr": "3e-3", "--lr": "3e-3", "--seam-map": None},
                     "vector": {"--global-coef-lr": "1e-2", "--lr": "3e-3", "--coef": "vector"},
                     "norm": NORMALIZED, "norm-lr3e-3": {**NORMALIZED, "--lr": "3e-3"},
                     "norm-c1e-2": {**NORMALIZED, "--global-coef-lr": "1e-2"}},
           # normalised donors on SmolLM2: bench/robust.py's rescaled-fuse-norm (the same model by invariance)
           "smollm2": {}}
BUDGETS = {"pydoc": (2, 4, 8), "smollm2": (2, 4)}  # SmolLM2 at 8x: 6 hours a cell here
# where a model's frontier ran instead (SmolLM2's: a minute a cell on an H200, an hour here): its
# cells come first wherever a cell is looked up, so one machine's cells are compared with each other
GRID_ELSEWHERE = {"smollm2": ("frontier-smollm2-cuda",)}
SEEDS = {"pydoc": (), "smollm2": (1, 2)}
DEFAULT_EPOCHS = 4  # the default's global epochs: budget 1x


def push(model: str) -> list[tuple[str, dict, list[str]]]:
    """What might push the frontier down at the same block passes: (suffix, changed settings, extra flags).
    logits: distil the dense next-token distributions instead of the final hidden states; warm: 10%
    warm-up before the cosine; n256e2: twice the windows for half the epochs; mix (SmolLM2): half
    the calibration windows from C4 (documents kept out of dev and test)."""
    variants = [("logits", {"--distill": "logits"}, []), ("n256e2", {"--global-epochs": "2"}, ["--nsamples", "256"]),
                ("warm", {"--warmup": "0.1"}, [])]
    if model == "smollm2":  # first: C4 is where SmolLM2 lags most
        data = splits()
        variants.insert(0, ("mix", {}, ["--calib", f"{data['wiki-calib']},{data['c4-calib']}"]))
    return variants


def tag(sparsity: str) -> str:
    return "s" + sparsity.split(".")[1].ljust(2, "0")


def suite(model: str) -> str:
    return suite_name(f"frontier-{model}")


def _given(model: str, sparsity: str) -> str | None:
    """The default's blocks at this sparsity, in its order (from its cached cell)."""
    cell = cached(suite(model), f"{tag(sparsity)}-default")
    return ",".join(map(str, cell["removed"])) if cell else None


def _cell(model: str, name: str) -> dict | None:
    """A cell from the suite where the model's frontier ran elsewhere, else from this one."""
    for folder in dict.fromkeys([*GRID_ELSEWHERE.get(model, ()), suite(model)]):
        cell = cached(folder, name)
        if cell is not None:
            return cell
    return None


def best(model: str, sparsity: str, repair: str) -> dict | None:
    """The lowest mean dev perplexity (the geometric mean over the dev sources) among the 1x cells of a repair."""
    cells = [c for c in (_cell(model, n) for n in grid_names(model, sparsity)[repair]) if c is not None]
    return min(cells, key=lambda c: _mean(c["dev"]), default=None)


def grid_names(model: str, sparsity: str) -> dict[str, list[str]]:
    """The 1x learning-rate grid's cell names, by repair."""
    s = tag(sparsity)
    return {"lora": [f"{s}-lora-lr{lr}" for lr in LRS[model]],
            "fuse": [f"{s}-default", *(f"{s}-fuse-c{coef}-lr{lr}" for coef, lr in FUSE_GRID[model]),
                     *(f"{s}-fuse-{name}" for name in RECYCLE[model])]}


def _mean(ppl: dict[str, float]) -> float:
    values = list(ppl.values())
    product = 1.0
    for v in values:
        product *= v
    return product ** (1 / len(values))


def _cells(model: str, folder: str | None = None) -> list[dict]:
    path = RESULTS / (folder or suite(model))
    return [json.loads(p.read_text()) for p in sorted(path.glob("*.json"))] if path.exists() else []


def plan(model: str) -> dict[str, tuple[dict, list[str], bool]]:
    """Every cell that can be named now, in the order they should run: name -> (pinned settings,
    extra flags, zero-shot). The defaults first (they give the blocks), then the learning-rate
    grids on those blocks; once a repair's grid is complete, its best dev setting gets the `push`
    variants, the larger budgets and the other seeds (on SmolLM2 the seeds before the rest)."""
    zero_shot = model == "smollm2"
    defaults, grids, budgets, later, seeds = {}, {}, {}, {}, {}
    for sparsity in SPARSITIES[model]:
        s = tag(sparsity)
        defaults[f"{s}-default"] = (pinned(sparsity=sparsity), [], zero_shot)
        blocks = _given(model, sparsity)
        if blocks is None:
            continue
        grid = {f"{s}-lora-lr{lr}": (pinned(method="kl-lora", blocks=blocks, lr=lr), [], False) for lr in LRS[model]}
        for coef, lr in FUSE_GRID[model]:
            grid[f"{s}-fuse-c{coef}-lr{lr}"] = (pinned(blocks=blocks, global_coef_lr=coef, lr=lr), [], False)
        for name, change in RECYCLE[model].items():
            grid[f"{s}-fuse-{name}"] = (switched(pinned(blocks=blocks), change), [], False)
        grids.update({name: cell for name, cell in grid.items() if _cell(model, name) is None})
        for repair, names in grid_names(model, sparsity).items():
            if any(_cell(model, n) is None for n in names):
                continue  # the best setting is known once the whole grid is
            chosen = best(model, sparsity, repair)
            base = switched(pinned(), dict(chosen["settings"]))  # what a cell cached before a pin was added ran
            base.pop("--sparsity", None)  # on the default's blocks, without choosing them again
            base["--blocks"] = blocks
            if chosen["name"] in grid:  # the chosen setting on this machine too (the grid may have run elsewhere)
                budgets[chosen["name"]] = (grid[chosen["name"]][0], [], zero_shot)
            for suffix, change, extra in push(model):
                later[f"{chosen['name']}-{suffix}"] = ({**base, **change}, extra, False)
            # perplexity only beyond 1x and the seeds: zero-shot takes 40 minutes a SmolLM2 cell here
            for factor in BUDGETS[model]:
                budgets[f"{chosen['name']}-x{factor}"] = ({**base, "--global-epochs": str(DEFAULT_EPOCHS * factor)}, [],
                                                        False)
            # other seeds (calibration windows, initialisation, order) of each repair's best setting:
            # fusion chooses its blocks again (the criterion sees other windows), LoRA heals those
            for seed in SEEDS[model]:
                if repair == "fuse":
                    chosen_seed = {**{k: v for k, v in base.items() if k != "--blocks"}, "--sparsity": sparsity}
                    seeds[f"{s}-fuse-best-seed{seed}"] = ({**chosen_seed, "--seed": str(seed)}, [], zero_shot)
                else:
                    fused = cached(suite(model), f"{s}-fuse-best-seed{seed}")
                    if fused is not None:
                        seeds[f"{s}-lora-best-seed{seed}"] = (
                            {**base, "--blocks": ",".join(map(str, fused["removed"])), "--seed": str(seed)}, [],
                            zero_shot)
    # the frontier first (the question users ask first); on SmolLM2 2x, the seeds (the spread that
    # every comparison there needs), what might push fusion down to the targets (a C4 mix, logits), then the rest
    budgets = dict(sorted(budgets.items(), key=lambda item: _factor(item[0])))  # every 2x before any 4x
    if model != "smollm2":
        return {**defaults, **grids, **budgets, **seeds, **later}
    first = {k: v for k, v in budgets.items() if _factor(k) <= 2}
    fusion_push = {k: v for k, v in later.items() if "-lora-" not in k}
    return {**defaults, **grids, **first, **seeds, **dict(list(fusion_push.items())[:2]), **budgets, **fusion_push,
            **later}


def _factor(name: str) -> int:
    """The budget of a cell, in multiples of the default's tuning passes."""
    return int(name.rsplit("-x", 1)[1]) if "-x" in name else 1


def table(model: str, folder: str | None = None) -> str:
    rows = ["| cell | removed | passes | dev PPL | test PPL | zero-shot | compress s (tune) |", "|---|---|---|---|---|---|---|"]
    for c in _cells(model, folder):
        mean = zero_shot(c)
        rows.append(f"| {c['name']} | {' '.join(map(str, c['removed']))} | {c['block_passes']:,} | "
                    + " / ".join(f"{v:.3f}" for v in c["dev"].values()) + " | "
                    + " / ".join(f"{v:.3f}" for v in c["test"].values())
                    + f" | {mean} | {c['compress_seconds']:.0f} ({c['stages'].get('heal', 0):.0f}) |")
    return "\n".join(rows)


def zero_shot(cell: dict) -> str:
    z = cell.get("zero_shot")
    return f"{z['mean']['value']:.4f} ± {z['mean']['stderr']:.3f}" if z else "-"


def _ppl(ppl: dict[str, float]) -> str:
    return " / ".join(f"{v:.2f}" for v in ppl.values())


def curve(model: str, sparsity: str, repair: str) -> list[dict]:
    """The cells of one repair at its best 1x dev setting (this suite's run of it), then at each larger budget."""
    chosen = best(model, sparsity, repair)
    if chosen is None:
        return []
    cells = [_cell(model, chosen["name"]), *(_cell(model, f"{chosen['name']}-x{f}") for f in BUDGETS[model])]
    return [c for c in cells if c is not None]


def summary(model: str) -> str:
    """For the docs: each repair's learning-rate grid at 1x on dev (the best marked), then the
    frontier of each repair's best setting (test, zero-shot where measured), then the seeds."""
    out = []
    for sparsity in SPARSITIES[model]:
        out.append(f"**{model}, sparsity {sparsity}: 1x grid** (dev PPL; test PPL beside it, never used to choose)\n")
        out.append("| repair | setting | dev PPL | test PPL | machine |\n| --- | --- | --- | --- | --- |")
        for repair, names in grid_names(model, sparsity).items():
            chosen = best(model, sparsity, repair)
            for name in names:
                c = _cell(model, name)
                if c is None:
                    continue
                mark = "**" if chosen and c["name"] == chosen["name"] else ""
                out.append(f"| {repair} | {mark}{_setting(c)}{mark} | {_ppl(c['dev'])} | {_ppl(c['test'])} | "
                           f"{c.get('device', 'cpu')} |")
        out.append(f"\n**{model}, sparsity {sparsity}: quality against tuning compute** (each repair at its best dev "
                   "setting; test PPL)\n")
        out.append("| repair | budget | block passes | test PPL | zero-shot | compress s (tuning s) |\n"
                   "| --- | --- | --- | --- | --- | --- |")
        for repair in ("fuse", "lora"):
            for c in curve(model, sparsity, repair):
                budget = f"{_factor(c['name'])}x"
                out.append(f"| {'fusion' if repair == 'fuse' else 'LoRA'} ({_setting(c)}) | {budget} | "
                           f"{c['block_passes']:,} | {_ppl(c['test'])} | {zero_shot(c)} | "
                           f"{c['compress_seconds']:.0f} ({c['stages'].get('heal', 0):.0f}) |")
        out += _seeds(model, sparsity) + _pushed(model, sparsity) + [""]
    return "\n".join(out)


def _spread(values: list[float], digits: int = 2) -> str:
    mean = sum(values) / len(values)
    deviation = (sum((v - mean) ** 2 for v in values) / max(1, len(values) - 1)) ** 0.5
    return f"{mean:.{digits}f} ± {deviation:.{digits}f}" if len(values) > 1 else f"{mean:.{digits}f}"


def _seeds(model: str, sparsity: str) -> list[str]:
    """Each repair's best setting over its seeds (seed 0: the grid's cell): test PPL mean ± sample deviation."""
    rows = []
    for repair in ("fuse", "lora"):
        chosen = best(model, sparsity, repair)
        if chosen is None or not SEEDS[model]:
            continue
        cells = [chosen, *(c for c in (_cell(model, f"{tag(sparsity)}-{repair}-best-seed{seed}") for seed in SEEDS[model])
                          if c is not None)]
        if len(cells) < 2:
            continue
        sources = list(chosen["test"])
        zero = [c["zero_shot"]["mean"]["value"] for c in cells if c.get("zero_shot")]
        rows.append(f"| {'fusion' if repair == 'fuse' else 'LoRA'} ({_setting(chosen, short=True)}) | {len(cells)} | "
                    + " | ".join(_spread([c["test"][s] for c in cells]) for s in sources)
                    + f" | {_spread(zero, 4) + f' ({len(zero)} seeds)' if zero else '-'} |")
    if not rows:
        return []
    return [f"\n**{model}, sparsity {sparsity}: seeds at 1x** (seeds 0, {', '.join(map(str, SEEDS[model]))}: "
            "calibration windows, initialisation and order; fusion chooses its blocks again with each seed, LoRA heals "
            "fusion's blocks of the same seed; test PPL mean ± sample deviation)\n",
            "| repair | seeds | " + " | ".join(f"test {s}" for s in sources) + " | zero-shot |",
            "| --- | --- | " + " | ".join("---" for _ in sources) + " | --- |", *rows]


def _pushed(model: str, sparsity: str) -> list[str]:
    """The `push` variants of each repair's best setting at 1x, on dev beside the setting itself."""
    rows = []
    for repair in ("fuse", "lora"):
        chosen = best(model, sparsity, repair)
        if chosen is None:
            continue
        for suffix, change, extra in [("", {}, []), *push(model)]:
            c = _cell(model, f"{chosen['name']}-{suffix}" if suffix else chosen["name"])
            if c is not None:
                rows.append(f"| {'fusion' if repair == 'fuse' else 'LoRA'} ({_setting(chosen, short=True)}) | "
                            f"{suffix or 'as chosen'} | {_ppl(c['dev'])} | {_ppl(c['test'])} |")
    if len(rows) <= 2:
        return []
    return [f"\n**{model}, sparsity {sparsity}: what else at 1x** (each repair's best setting; logits: distil the "
            "dense next-token distributions; warm: 10% warm-up; n256e2: twice the windows, half the epochs; mix: half "
            "the calibration from C4; chosen on dev)\n",
            "| repair | variant | dev PPL | test PPL |", "| --- | --- | --- | --- |", *rows]


def _setting(cell: dict, short: bool = False) -> str:
    """The rates (and any recycling variant) a cell ran with; `short`: without naming the default."""
    settings = cell["settings"]
    if settings["--method"].endswith("lora"):
        return f"lr {settings['--lr']}"
    if cell["name"].endswith("-default") and not short:
        return f"the default (coef {settings['--global-coef-lr']}, lr {settings['--lr']}, its own blocks)"
    extra = [name for flag, name in (("--normalize-donors", "normalised"), ("--seam-map", "seam map"))
             if flag in settings] + ([f"coef {settings['--coef']}"] if settings.get("--coef", "lowrank") != "lowrank" else [])
    return ", ".join([f"coef {settings['--global-coef-lr']}", f"lr {settings['--lr']}", *extra])


def plot(path) -> str:
    """Test perplexity against tuning block passes, fusion and LoRA, a panel per model x sparsity x
    test source."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(m, sp, i) for m in SPARSITIES for sp in SPARSITIES[m] for i in range(2 if m == "smollm2" else 1)]
    figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6))
    for ax, (model, sparsity, source) in zip(axes, panels):
        for repair, style in (("fuse", "o-"), ("lora", "s--")):
            cells = curve(model, sparsity, repair)
            if not cells:
                continue
            name = list(cells[0]["test"])[source]
            label = f"{'fusion' if repair == 'fuse' else 'LoRA'} ({_setting(cells[0], short=True)})"
            line, = ax.plot([c["block_passes"] for c in cells], [c["test"][name] for c in cells], style, label=label)
            logits = _cell(model, f"{cells[0]['name']}-logits")  # the same setting distilling logits, at 1x
            if logits is not None:
                ax.plot([logits["block_passes"]], [logits["test"][name]], "*", color=line.get_color(), markersize=11,
                        label=f"{label.split(' (')[0]}, logits distilled")
            ax.set_title(f"{model} {sparsity}: {name}", fontsize=9)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("tuning block passes")
        ax.set_ylabel("test perplexity")
        ax.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return str(path)


def main() -> None:
    args = sys.argv[1:]
    if args == ["--plot"]:
        print(plot(ROOT / "docs" / "frontier.png"))
        return
    if not args or args[0] not in SPARSITIES:
        sys.exit(__doc__)
    model = args[0]
    if args[1:] == ["--table"]:
        print(table(model))
        return
    if args[1:] == ["--summary"]:
        print(summary(model))
        return
    if len(args) == 3 and args[1] == "--zero-shot":
        cell = add_zero_shot(suite(model), args[2], model)
        print(f"{args[2]}: zero-shot {cell['zero_shot']}")
        return
    require_assets()
    wanted = args[1].split(",") if len(args) > 1 else None
    while True:  # the plan grows as cells finish (the default's blocks, then the best learning rates)
        cells = plan(model)
        todo = [n for n in (wanted or cells) if cached(suite(model), n) is None]
        runnable = [n for n in todo if n in cells]
        if not runnable:
            if todo:
                sys.exit(f"cannot name {', '.join(todo)} (unknown, or the cells it builds on are missing)")
            break
        for name in runnable:  # the first that no other runner is computing
            settings, extra, zero_shot = cells[name]
            cell = run_cell(suite(model), name, model, settings, extra, zero_shot)
            if cell is not None:
                print(f"{name}: dev {cell['dev']} test {cell['test']} ({cell['compress_seconds']:.0f} s)", flush=True)
                break
        else:
            break  # every cell that can be named now is being computed elsewhere


if __name__ == "__main__":
    main()

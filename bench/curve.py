"""One run, every depth, against separate runs (issue 32): the curve of 4 depths (`--num-remove
K1,K2,K3,K4`, the order chosen once), each depth repaired from the dense model (`dense`) or going
on from the depth before for 1 or 2 global epochs (`warm1`, `warm2`: `--warm-epochs`), against the
4 runs of their own (`--num-remove K`): each depth's perplexity on dev and test beside its separate
run's, and the compress time and block passes of the curve against the sum of the separate runs'.
The default recipe is pinned (`DEFAULTS`); run it alone (its times are the comparison).

    python bench/curve.py smollm2                # every variant; results in bench/results/curve-smollm2/
    python bench/curve.py pydoc dense,warm1      # some variants (the separate runs always)
    python bench/curve.py gemma3 --table
    python bench/curve.py gemma3 --plot        # docs/curve-gemma3.png: test PPL by depth, LoRA beside

Beside each depth, LoRA healing of that separate run's blocks at the model's best dev rate with
the same target and passes (`lora-K`), the baseline of the README's picture."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from common import OUTPUTS, RESULTS, ROOT, cached, cells_asked, flags_of, fusegpt, pinned, protocol, run_cell

DEPTHS = {"smollm2": (4, 6, 8, 10), "gemma3": (2, 3, 4, 5), "pydoc": (2, 3, 4, 5)}
# the default spelled out: pydoc's cells ran that of 2026-12-06 (the trial of rate 0, the top-1024
# teacher); the real models' that of 2026-12-07 (the trial of rate pairs, the tune's products in bf16)
EARLIER_DEFAULT = pinned(normalize_donors=None, distill="logits", distill_top_k="1024", rescore_limit="8",
                         trial_rates="0")
DEFAULTS = {"pydoc": EARLIER_DEFAULT,
            **dict.fromkeys(("smollm2", "gemma3"), {**EARLIER_DEFAULT, "--trial-rates": "0,3e-3", "--trial-lrs": "5e-4",
                                                     "--trial-share": "0.25", "--tune-dtype": "bfloat16"})}
# LoRA's best rate on dev with the logit target (bench/recycling.py's cells; pydoc: its frontier's)
LORA_LR = {"pydoc": "3e-3", "smollm2": "2e-3", "gemma3": "5e-4"}
VARIANTS = {"dense": {"--warm-epochs": "0"}, "warm1": {"--warm-epochs": "1"}, "warm2": {"--warm-epochs": "2"}}
# curve-warm1-retrial.json, curve-warm2-retrial.json: the same variants at commit 5ecc64a, when each
# warm depth ran the coefficients' trial again (since then it goes on at the first depth's choice)
EARLIER = ("warm1-retrial", "warm2-retrial")


def _curve(model: str, variant: str) -> dict:
    """The curve's cell: its compress time (choosing the order included), each depth's removed
    blocks, block passes and time, and each depth's dev and test perplexity (`fusegpt eval`)."""
    result = RESULTS / f"curve-{model}" / f"curve-{variant}.json"
    if result.exists():
        return json.loads(result.read_text())
    proto, out = protocol(model), OUTPUTS / f"curve-{model}" / f"curve-{variant}"
    started = time.perf_counter()
    fusegpt(["compress", str(proto.model), "--out", str(out), "--overwrite", *proto.calib,
             *flags_of({**DEFAULTS[model], **VARIANTS[variant]}), "--num-remove", ",".join(map(str, DEPTHS[model])),
             "--no-speed", "--quiet"])  # the same work as the separate runs: no tokens/s timing
    cell = {"seconds": round(time.perf_counter() - started, 1), "speed_timed": False,
            "choose_seconds": round(json.loads((out / "order.json").read_text())["seconds"], 1), "depths": {}}
    for k in DEPTHS[model]:
        folder = out / f"remove-{k}"
        report = json.loads((folder / "fusegpt_report.json").read_text())
        evaluation = folder / "evaluation.json"
        fusegpt(["eval", str(folder), "--ppl", ",".join(proto.dev + proto.test), *proto.ppl, "--json",
                 str(evaluation), "--quiet"])
        scores = json.loads(evaluation.read_text())["ppl"]
        cell["depths"][str(k)] = {"removed": [s["removed"] for s in report["steps"]],
                                  "block_passes": report.get("block_passes"), "seconds": report["seconds"]["total"],
                                  "dev": [scores[s] for s in proto.dev], "test": [scores[s] for s in proto.test]}
    result.parent.mkdir(parents=True, exist_ok=True)
    result.write_text(json.dumps(cell, indent=2) + "\n")
    return cell


def _lora(model: str, k: int) -> dict | None:
    """LoRA healing of the separate run's blocks at depth k: the default's target, teacher and dtype,
    no trial, LoRA and norms at the model's best rate."""
    blocks = ",".join(map(str, cached(f"curve-{model}", f"separate-{k}")["removed"]))
    settings = {**DEFAULTS[model], "--method": "kl-lora", "--blocks": blocks, "--lr": LORA_LR[model],
                "--trial-rates": "", "--trial-lrs": "", "--trial-share": "1"}
    return run_cell(f"curve-{model}", f"lora-{k}", model, settings)


def plot(model: str) -> str:
    """docs/curve-<model>.png: test perplexity against blocks removed, a panel per test source: the
    separate runs, each cached curve, and LoRA healing of the separate runs' blocks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder, depths = RESULTS / f"curve-{model}", DEPTHS[model]
    lines = {"fusegpt, a run per depth": [cached(f"curve-{model}", f"separate-{k}") for k in depths],
             f"LoRA healing of its blocks (lr {LORA_LR[model]})": [cached(f"curve-{model}", f"lora-{k}") for k in depths]}
    for variant in VARIANTS:
        path = folder / f"curve-{variant}.json"
        if path.exists():
            curve = json.loads(path.read_text())["depths"]
            lines[f"fusegpt, one run ({variant})"] = [{"test": dict(zip(protocol_names(model), curve[str(k)]["test"]))}
                                                      if str(k) in curve else None for k in depths]
    sources = protocol_names(model)
    figure, axes = plt.subplots(1, len(sources), figsize=(4.6 * len(sources), 3.6), squeeze=False)
    for ax, source in zip(axes[0], sources):
        for (label, cells), style in zip(lines.items(), ("o-", "s--", "^:", "v:", "d:")):
            points = [(k, c["test"][source]) for k, c in zip(depths, cells) if c]
            if points:
                ax.plot(*zip(*points), style, label=label)
        ax.set_title(f"{model}: {source}", fontsize=9)
        ax.set_xlabel("blocks removed")
        ax.set_ylabel("test perplexity")
        ax.set_xticks(depths)
        ax.legend(fontsize=7)
    figure.tight_layout()
    path = ROOT / "docs" / f"curve-{model}.png"
    figure.savefig(path, dpi=110)
    return str(path)


def protocol_names(model: str) -> list[str]:
    """The test sources' file names, as a separate run's cell keys them."""
    return [Path(source).name for source in protocol(model).test]


def _gap(mine: list[float], alone: dict) -> str:
    return " / ".join(f"{a:.2f} ({100 * (a / b - 1):+.1f}%)" for a, b in zip(mine, alone.values()))


def table(model: str) -> str:
    folder = RESULTS / f"curve-{model}"
    alone = {k: json.loads((folder / f"separate-{k}.json").read_text()) for k in DEPTHS[model]
             if (folder / f"separate-{k}.json").exists()}
    rows = ["| curve | blocks removed | removed | dev PPL (vs separate) | test PPL (vs separate) | block passes |",
            "| --- | --- | --- | --- | --- | --- |"]
    for k, cell in alone.items():
        rows.append(f"| separate | {k} | {' '.join(map(str, cell['removed']))} | "
                    + " / ".join(f"{v:.2f}" for v in cell["dev"].values()) + " | "
                    + " / ".join(f"{v:.2f}" for v in cell["test"].values()) + f" | {cell['block_passes']:,} |")
    separate = sum(cell["compress_seconds"] for cell in alone.values())
    separate_work = sum(cell["stages"]["total"] for cell in alone.values())
    totals = []
    for variant in [*VARIANTS, *EARLIER]:
        path = folder / f"curve-{variant}.json"
        if not path.exists():
            continue
        curve = json.loads(path.read_text())
        for k, mine in curve["depths"].items():
            if int(k) in alone:
                rows.append(f"| {variant} | {k} | {' '.join(map(str, mine['removed']))} | "
                            f"{_gap(mine['dev'], alone[int(k)]['dev'])} | {_gap(mine['test'], alone[int(k)]['test'])} | "
                            f"{mine['block_passes']:,} |")
        passes = sum(d["block_passes"] for d in curve["depths"].values())
        work = curve["choose_seconds"] + sum(d["seconds"] for d in curve["depths"].values())
        timed = " with each depth's tokens/s timed" if curve.get("speed_timed", True) else ""
        totals.append(f"{variant}: {curve['seconds']:.0f} s{timed} ({curve['seconds'] / separate:.2f}x the separate runs' "
                      f"{separate:.0f} s; choosing {curve['choose_seconds']:.0f} s), {passes:,} tuning block passes "
                      f"({passes / sum(c['block_passes'] for c in alone.values()):.2f}x); by the reports' totals "
                      f"(calibration to merge: no loading, saving, GGUF or speed measurement) {work:.0f} s against {separate_work:.0f} s "
                      f"({work / separate_work:.2f}x)")
    return "\n".join(rows + [""] + totals)


def main() -> None:
    if sys.argv[2:] == ["--plot"] and sys.argv[1] in DEPTHS:
        print(plot(sys.argv[1]))
        return
    asked = cells_asked(__doc__, DEPTHS, lambda model: VARIANTS, table)
    if asked is None:
        return
    model, variants = asked
    for k in DEPTHS[model]:
        run_cell(f"curve-{model}", f"separate-{k}", model, {**DEFAULTS[model], "--num-remove": str(k)})
    for variant in variants:
        _curve(model, variant)
    for k in DEPTHS[model]:
        _lora(model, k)
    print(table(model))


if __name__ == "__main__":
    main()

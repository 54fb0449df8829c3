"""Quality and wall time of dense / remove / fusegpt variants on the real models in ../shared.

    python bench/quality.py pydoc --variants remove,fusegpt:mse:lowrank --epochs 10
    python bench/quality.py stories --variants all

Each variant runs `fusegpt compress` in a fresh process (so its wall time is what a user sees)
and evaluates PPL on the held-out text. Results accumulate in bench/results/<model>.json and
the markdown table is printed; docs/BENCHMARKS.md quotes these tables."""
from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT.parent / "shared" / "assets"
RESULTS = ROOT / "bench" / "results"

MODELS = {
    # name: (model folder, calibration text, PPL text, blocks to remove, nsamples, extra compress flags)
    "pydoc": ("models/pydoc-llama-12L", "text/pydoc/calib.txt", "text/pydoc/eval.txt", 3, 128, []),
    "stories": ("models/stories260K", "text/wikitext-2-raw/wiki.valid.raw", "text/wikitext-2-raw/wiki.test.raw", 2,
                32, ["--group-size", "3", "--rank", "16", "--lora-rank", "16"]),
}
LOSSES = ["kl_batch", "kl_hidden", "mse", "cosine"]
FORMS = ["lowrank", "vector", "full"]


def fusegpt(*args: str) -> float:
    """Run the CLI in a fresh process; return its wall time."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "fusegpt", *args, "--quiet"], check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def drop_blocks(model_dir: str, blocks: list[int], out: str) -> None:
    from fusegpt import load_model
    from fusegpt.models import adapter_for

    model, tokenizer = load_model(model_dir)
    adapter = adapter_for(model)
    kept = [i for i in range(len(adapter.blocks(model))) if i not in blocks]
    adapter.set_blocks(model, [adapter.blocks(model)[i] for i in kept], kept)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def evaluate(model_dir: str, ppl_text: Path, seqlen: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        fusegpt("eval", model_dir, "--ppl", str(ppl_text), "--seqlen", str(seqlen), "--json", f"{tmp}/ppl.json")
        return json.loads(Path(f"{tmp}/ppl.json").read_text())["ppl"][str(ppl_text)]


def run_variant(name: str, variant: str, epochs: int, seqlen: int, coef_lr: float, lr: float) -> dict:
    folder, calib, ppl_text, remove, nsamples, extra = MODELS[name]
    model, ppl_text = str(ASSETS / folder), ASSETS / ppl_text
    if variant == "dense":
        return {"variant": variant, "ppl": evaluate(model, ppl_text, seqlen), "seconds": 0.0}
    if variant.startswith("drop:"):  # these original blocks removed, nothing else: the like-for-like reference
        blocks = sorted(int(b) for b in variant[5:].split("+"))
        with tempfile.TemporaryDirectory() as tmp:
            drop_blocks(model, blocks, f"{tmp}/out")
            return {"variant": variant, "ppl": evaluate(f"{tmp}/out", ppl_text, seqlen), "seconds": 0.0,
                    "removed": blocks}
    method, loss, form = (variant.split(":") + ["mse", "lowrank"])[:3]
    with tempfile.TemporaryDirectory() as tmp:
        out = f"{tmp}/out"
        flags = ["--method", method, "--num-remove", str(remove), "--calib", str(ASSETS / calib),
                 "--nsamples", str(nsamples), "--seqlen", str(seqlen), "--epochs", str(epochs),
                 "--loss", loss, "--coef", form, "--coef-lr", str(coef_lr), "--lr", str(lr), *extra]
        seconds = fusegpt("compress", model, "--out", out, *flags)
        report = json.loads(Path(out, "fusegpt_report.json").read_text())
        return {"variant": variant, "ppl": evaluate(out, ppl_text, seqlen), "seconds": seconds,
                "removed": report["removed"], "epochs": epochs if method == "fusegpt" else 0,
                **({"coef_lr": coef_lr, "lr": lr} if method == "fusegpt" else {}),
                "command": "fusegpt compress " + " ".join([folder, "--out", "OUT", *flags])}


def _excess(ppl: float, dense: float | None, reference: float | None) -> str:
    return "-" if dense is None or reference is None else f"{(ppl - dense) / (reference - dense):.3f}"


def table(rows: list[dict]) -> str:
    """Excess kept = (PPL - dense) / (PPL of `remove` - dense), and against dropping the same blocks."""
    dense = next((r["ppl"] for r in rows if r["variant"] == "dense"), None)
    removed = next((r["ppl"] for r in rows if r["variant"] == "remove"), None)
    dropped = {tuple(r["removed"]): r["ppl"] for r in rows if r["variant"].startswith("drop:")}
    lines = ["| variant | epochs | coef lr / lr | removed blocks | PPL | excess kept vs remove | vs same blocks dropped | wall s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        same = dropped.get(tuple(sorted(r.get("removed", []))))
        excess = [_excess(r["ppl"], dense, reference) if r["variant"] != "dense" else "-" for reference in (removed, same)]
        lrs = f"{r['coef_lr']:g} / {r['lr']:g}" if r.get("epochs") else "-"
        lines.append(f"| {r['variant']} | {r.get('epochs', '-')} | {lrs} | {r.get('removed', '-')} | {r['ppl']:.3f} | "
                     f"{excess[0]} | {excess[1]} | {r['seconds']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", choices=MODELS)
    parser.add_argument("--variants", default="dense,remove,fusegpt:mse:lowrank",
                        help="comma list of dense, remove, drop:I+J (exactly these blocks, no tuning), "
                             "fusegpt:LOSS:FORM, or 'all' (every loss x form)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--coef-lr", type=float, default=1e-2)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()
    if not ASSETS.exists():
        sys.exit(f"needs ../shared/assets beside the repository ({ASSETS} not found)")
    variants = args.variants.split(",")
    if variants == ["all"]:
        variants = ["dense", "remove"] + [f"fusegpt:{l}:{f}" for l, f in itertools.product(LOSSES, FORMS)]
    RESULTS.mkdir(parents=True, exist_ok=True)
    store = RESULTS / f"{args.model}.json"
    def key(row: dict) -> tuple:
        return row["variant"], row.get("epochs", 0), row.get("coef_lr"), row.get("lr")

    rows = {key(r): r for r in (json.loads(store.read_text()) if store.exists() else [])}
    for variant in variants:
        row = run_variant(args.model, variant, args.epochs, args.seqlen, args.coef_lr, args.lr)
        rows[key(row)] = row
        store.write_text(json.dumps(list(rows.values()), indent=2) + "\n")
        print(f"{variant}: ppl {row['ppl']:.3f} in {row['seconds']:.0f} s", flush=True)
    print(table(list(rows.values())))


if __name__ == "__main__":
    main()

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


def evaluate(model_dir: str, ppl_text: Path, seqlen: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        fusegpt("eval", model_dir, "--ppl", str(ppl_text), "--seqlen", str(seqlen), "--json", f"{tmp}/ppl.json")
        return json.loads(Path(f"{tmp}/ppl.json").read_text())["ppl"][str(ppl_text)]


def run_variant(name: str, variant: str, epochs: int, seqlen: int) -> dict:
    folder, calib, ppl_text, remove, nsamples, extra = MODELS[name]
    model, ppl_text = str(ASSETS / folder), ASSETS / ppl_text
    if variant == "dense":
        return {"variant": variant, "ppl": evaluate(model, ppl_text, seqlen), "seconds": 0.0}
    method, loss, form = (variant.split(":") + ["mse", "lowrank"])[:3]
    with tempfile.TemporaryDirectory() as tmp:
        out = f"{tmp}/out"
        flags = ["--method", method, "--num-remove", str(remove), "--calib", str(ASSETS / calib),
                 "--nsamples", str(nsamples), "--seqlen", str(seqlen), "--epochs", str(epochs),
                 "--loss", loss, "--coef", form, *extra]
        seconds = fusegpt("compress", model, "--out", out, *flags)
        report = json.loads(Path(out, "fusegpt_report.json").read_text())
        return {"variant": variant, "ppl": evaluate(out, ppl_text, seqlen), "seconds": seconds,
                "removed": report["removed"], "epochs": epochs if method == "fusegpt" else 0,
                "command": "fusegpt compress " + " ".join([folder, "--out", "OUT", *flags])}


def table(rows: list[dict]) -> str:
    dense = next((r["ppl"] for r in rows if r["variant"] == "dense"), None)
    removed = next((r["ppl"] for r in rows if r["variant"] == "remove"), None)
    lines = ["| variant | epochs | removed blocks | PPL | excess kept | wall s |", "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        excess = ("-" if dense is None or removed is None or r["variant"] == "dense"
                  else f"{(r['ppl'] - dense) / (removed - dense):.3f}")
        lines.append(f"| {r['variant']} | {r.get('epochs', '-')} | {r.get('removed', '-')} | {r['ppl']:.3f} | "
                     f"{excess} | {r['seconds']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", choices=MODELS)
    parser.add_argument("--variants", default="dense,remove,fusegpt:mse:lowrank",
                        help="comma list of dense, remove, fusegpt:LOSS:FORM, or 'all' (every loss x form)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seqlen", type=int, default=256)
    args = parser.parse_args()
    if not ASSETS.exists():
        sys.exit(f"needs ../shared/assets beside the repository ({ASSETS} not found)")
    variants = args.variants.split(",")
    if variants == ["all"]:
        variants = ["dense", "remove"] + [f"fusegpt:{l}:{f}" for l, f in itertools.product(LOSSES, FORMS)]
    RESULTS.mkdir(parents=True, exist_ok=True)
    store = RESULTS / f"{args.model}.json"
    rows = {(r["variant"], r.get("epochs", 0)): r for r in (json.loads(store.read_text()) if store.exists() else [])}
    for variant in variants:
        row = run_variant(args.model, variant, args.epochs, args.seqlen)
        rows[(row["variant"], row.get("epochs", 0))] = row
        store.write_text(json.dumps(list(rows.values()), indent=2) + "\n")
        print(f"{variant}: ppl {row['ppl']:.3f} in {row['seconds']:.0f} s", flush=True)
    print(table(list(rows.values())))


if __name__ == "__main__":
    main()

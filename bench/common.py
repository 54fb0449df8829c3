"""What every benchmark shares: the assets, the dev/test splits, each model's protocol, the pinned
recipe, and running one cached cell (compress with pinned flags, then evaluate on dev and test).

Choices are made on **dev** and reported on **test**, and no text is in two roles:

- SmolLM2 calibrates on the first ~75% of WikiText-2 valid (cut at an article), and its dev text is
  the rest of that file and C4 documents 1,000-1,999 of the C4 file; its test text is WikiText-2
  test and the start of the C4 file (the first 64 windows of 512 tokens reach about document 80).
- pydoc calibrates on the first ~80% of `calib.txt` (cut at a document) and its dev text is the
  rest; its test text is `eval.txt`.

The split files are derived from ../shared/assets into bench/out/data/ (not kept in git) the first
time they are needed. Every cell pins every setting (`RECIPE` plus the variant's flags), so a cell
gives the same number after a default changes; a finished cell is cached in
bench/results/<suite>/<name>.json and a rerun skips it. Several runners can share a suite: a cell
being computed is locked (`<name>.lock`, its process id), and the others skip it.

On another machine (a GPU host, bench/gpu.py): `FUSEGPT_ASSETS` points at a folder laid out like
../shared/assets, `BENCH_MODEL_<NAME>` replaces one model's path, `BENCH_DEVICE` (e.g. cuda) tags
the suites (`frontier-smollm2-cuda`: cells of different hardware never mix), `BENCH_ZERO_SHOT=0`
skips zero-shot (lm-eval absent), and `BENCH_IN_PROCESS=1` runs fusegpt in this process (no
interpreter start per step: the fixed cost that dominates a small model on a GPU)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ASSETS = Path(os.environ.get("FUSEGPT_ASSETS", ROOT.parent / "shared" / "assets"))
TEXT, TASKS_DIR = ASSETS / "text", ASSETS / "tasks"
DATA = ROOT / "bench" / "out" / "data"  # derived split files
RESULTS, OUTPUTS = ROOT / "bench" / "results", ROOT / "bench" / "out"
MODELS = {
    "smollm2": ASSETS / "models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf",
    "pydoc": ASSETS / "models/pydoc-llama-12L",
    "stories": ASSETS / "models/stories260K",
}
MODELS = {name: Path(os.environ.get(f"BENCH_MODEL_{name.upper()}", path)) for name, path in MODELS.items()}


def gemma3_path() -> Path:
    """Gemma 3 270M's GGUF ($BENCH_MODEL_GEMMA3, else fetched by ../shared's script into its cache)."""
    if os.environ.get("BENCH_MODEL_GEMMA3"):
        return Path(os.environ["BENCH_MODEL_GEMMA3"])
    script = ASSETS / "fetch" / "gemma3-270m.sh"
    if not script.exists():
        sys.exit(f"needs {script} to fetch Gemma 3 270M (../shared/assets beside the repository)")
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"could not fetch Gemma 3 270M: {done.stderr.strip()}")
    return Path(done.stdout.strip().splitlines()[-1])
DEVICE = os.environ.get("BENCH_DEVICE")  # None: this machine's CPU, as every committed cell
ZERO_SHOT = os.environ.get("BENCH_ZERO_SHOT", "1") != "0"


def suite_name(name: str) -> str:
    """A suite's folder under bench/results, tagged with the device when it is not the CPU."""
    return f"{name}-{DEVICE}" if DEVICE else name

# the recipe every cell starts from, every setting spelled out: a cell states what it ran, whatever
# the defaults. It is the default of 2026-12-02; the default of 2026-12-04 also normalises donors
# and distils logits (`pinned(normalize_donors=None, distill="logits")`), chosen on the cells that
# compare them; the default of 2026-12-06 distils the dense top 1024 (`distill_top_k="1024"`).
RECIPE: dict[str, str | None] = {
    "--method": "kl-fuse", "--epochs": "0", "--global-epochs": "4", "--global-coef-lr": "3e-3",
    "--coef-lr": "1e-2", "--lr": "1e-3", "--loss": "relative_mse", "--teacher": "dense", "--batch-size": "8",
    "--group-size": "7", "--coef": "lowrank", "--rank": "128", "--lora-rank": "128", "--no-seam-map": None,
    "--no-normalize-donors": None, "--fuse-eval": "0", "--seed": "0", "--dtype": "float32",
    "--distill": "hidden", "--distill-top-k": "0", "--distill-stride": "1", "--warmup": "0", "--rescore-limit": "0",
    "--trial-rates": "", "--trial-lrs": "", "--trial-share": "1", "--tune-dtype": "float32", "--score-dtype": "float32",
}
SWITCHES = ("seam_map", "normalize_donors")  # on/off flag pairs: --x and --no-x


def require_assets() -> None:
    if not ASSETS.exists():
        sys.exit(f"needs ../shared/assets beside the repository ({ASSETS} not found)")


def cells_asked(doc: str, models, names, table) -> tuple[str, list[str]] | None:
    """A cell script's command line, `MODEL [NAME,NAME,...]` or `MODEL --table`: the model and the
    names asked for (default: all of `names(model)`, in order), each checked; None once `table(model)`
    is printed. Exits with `doc` without a known model, and when the assets are missing."""
    args = sys.argv[1:]
    if not args or args[0] not in models:
        sys.exit(doc)
    model = args[0]
    if args[1:] == ["--table"]:
        print(table(model))
        return None
    require_assets()
    known = list(names(model))
    asked = args[1].split(",") if len(args) > 1 else known
    for name in asked:
        if name not in known:
            sys.exit(f"unknown variant {name!r}; one of {', '.join(known)}")
    return model, asked


def _cut(lines: list[str], fraction: float, starts_document) -> int:
    """The index of the document start nearest `fraction` of the text's characters."""
    total, seen, best = sum(map(len, lines)), 0, None
    for i, line in enumerate(lines):
        if starts_document(lines, i) and (best is None or abs(seen - fraction * total) < abs(best[1] - fraction * total)):
            best = (i, seen)
        seen += len(line)
    return best[0]


def _wiki_article(lines: list[str], i: int) -> bool:
    line = lines[i]
    return line.startswith(" = ") and not line.startswith(" = = ")


def _rst_document(lines: list[str], i: int) -> bool:
    """An overlined title: a line of = or *, a title, the same line again."""
    line = lines[i].rstrip("\n")
    return (len(line) >= 3 and set(line) in ({"="}, {"*"}) and i + 2 < len(lines)
            and lines[i + 2].rstrip("\n") == line and (i == 0 or not lines[i - 1].strip()))


def _split(source: Path, first: Path, rest: Path, fraction: float, starts_document) -> None:
    with open(source, encoding="utf-8", newline="") as f:
        lines = f.readlines()
    cut = _cut(lines, fraction, starts_document)
    first.write_text("".join(lines[:cut]), encoding="utf-8", newline="")
    rest.write_text("".join(lines[cut:]), encoding="utf-8", newline="")


def splits() -> dict[str, Path]:
    """The derived calibration and dev files (written once, deterministically)."""
    files = {"wiki-calib": DATA / "wiki.valid.calib.raw", "wiki-dev": DATA / "wiki.valid.dev.raw",
             "pydoc-calib": DATA / "pydoc.calib.train.txt", "pydoc-dev": DATA / "pydoc.calib.dev.txt",
             "c4-dev": DATA / "c4.dev.parquet", "c4-calib": DATA / "c4.calib.parquet"}
    if all(p.exists() for p in files.values()):
        return files
    require_assets()
    DATA.mkdir(parents=True, exist_ok=True)
    _split(TEXT / "wikitext-2-raw/wiki.valid.raw", files["wiki-calib"], files["wiki-dev"], 0.75, _wiki_article)
    _split(TEXT / "pydoc/calib.txt", files["pydoc-calib"], files["pydoc-dev"], 0.8, _rst_document)
    import pyarrow.parquet as pq

    c4 = pq.read_table(TEXT / "c4/c4_validation_2k.parquet", columns=["text"])
    pq.write_table(c4.slice(1000, 1000), files["c4-dev"])  # far from the test windows at the file's start
    pq.write_table(c4.slice(300, 700), files["c4-calib"])  # for calibration mixes: neither dev nor test
    return files


@dataclass
class Protocol:
    """How one model is calibrated and evaluated."""

    model: Path
    calib: list[str]  # compress flags
    dev: list[str]  # perplexity sources
    test: list[str]
    ppl: list[str]  # eval flags (windows, seqlen)
    tasks: list[str] = field(default_factory=list)  # eval flags for zero-shot (test only)


def protocol(name: str) -> Protocol:
    data = splits()
    if name == "smollm2":
        return Protocol(MODELS["smollm2"],
                        ["--calib", str(data["wiki-calib"]), "--nsamples", "128", "--seqlen", "256", "--mi-samples", "8"],
                        dev=[str(data["wiki-dev"]), str(data["c4-dev"])],
                        test=[str(TEXT / "wikitext-2-raw/wiki.test.raw"), str(TEXT / "c4/c4_validation_2k.parquet")],
                        ppl=["--ppl-windows", "64", "--seqlen", "512"],
                        tasks=["--tasks", "piqa,arc_easy,hellaswag,winogrande", "--limit", "500",
                               "--tasks-dir", str(TASKS_DIR)])
    if name == "gemma3":  # the held-out run's protocol (64 calibration windows), SmolLM2's dev and test text
        return Protocol(gemma3_path(),
                        ["--calib", str(data["wiki-calib"]), "--nsamples", "64", "--seqlen", "256", "--mi-samples", "8"],
                        dev=[str(data["wiki-dev"]), str(data["c4-dev"])],
                        test=[str(TEXT / "wikitext-2-raw/wiki.test.raw"), str(TEXT / "c4/c4_validation_2k.parquet")],
                        ppl=["--ppl-windows", "32", "--seqlen", "512"],
                        tasks=["--tasks", "piqa,arc_easy,hellaswag,winogrande", "--limit", "500",
                               "--tasks-dir", str(TASKS_DIR)])
    if name == "pydoc":
        return Protocol(MODELS["pydoc"],
                        ["--calib", str(data["pydoc-calib"]), "--nsamples", "128", "--seqlen", "256", "--mi-samples", "32"],
                        dev=[str(data["pydoc-dev"])], test=[str(TEXT / "pydoc/eval.txt")], ppl=["--seqlen", "256"])
    if name == "stories":
        return Protocol(MODELS["stories"],
                        ["--calib", str(data["wiki-calib"]), "--nsamples", "32", "--seqlen", "256", "--mi-samples", "32"],
                        dev=[str(data["wiki-dev"])], test=[str(TEXT / "wikitext-2-raw/wiki.test.raw")],
                        ppl=["--seqlen", "256"],
                        tasks=["--tasks", "piqa,arc_easy,hellaswag", "--limit", "200", "--tasks-dir", str(TASKS_DIR)])
    raise SystemExit(f"unknown protocol {name!r}; one of smollm2, gemma3, pydoc, stories")


def compare_flags(name: str, settings: dict[str, str | None], zero_shot: bool = True) -> list[str]:
    """`fusegpt compare` flags for a protocol: its calibration, dev and test perplexity (the grid's
    table shows both), zero-shot on test, and the pinned settings without --method (the grid's)."""
    proto = protocol(name)
    ppl = proto.ppl
    ppl_flags = ["--ppl", ",".join(proto.dev + proto.test)]
    if "--ppl-windows" in ppl:
        ppl_flags += ["--ppl-windows", ppl[ppl.index("--ppl-windows") + 1]]
    ppl_flags += ["--ppl-seqlen", ppl[ppl.index("--seqlen") + 1]]
    pinned_flags = flags_of({k: v for k, v in settings.items() if k != "--method"})
    return [*proto.calib, *ppl_flags, *(proto.tasks if zero_shot else []), *pinned_flags]


def flags_of(settings: dict[str, str | None]) -> list[str]:
    return [item for flag, value in settings.items() for item in ((flag,) if value is None else (flag, value))]


def pinned(**overrides: str | None) -> dict[str, str | None]:
    """RECIPE with overrides, by flag name without dashes (`global_epochs="8"`); a switch given as
    None turns it on (`seam_map=None`: --seam-map in place of --no-seam-map)."""
    return switched(dict(RECIPE), {"--" + name.replace("_", "-"): value for name, value in overrides.items()})


def switched(settings: dict[str, str | None], change: dict[str, str | None]) -> dict[str, str | None]:
    """`settings` with `change` applied, a switch's --x replacing its --no-x."""
    settings = {k: v for k, v in settings.items() if k.removeprefix("--no-") not in
                {c.removeprefix("--") for c in change if c.removeprefix("--").replace("-", "_") in SWITCHES}}
    return {**settings, **change}


def _stage_seconds(report: dict) -> dict[str, float]:
    """Seconds by stage, summed over steps: calibrate, score, tune, refresh, heal, total."""
    stages = {"calibrate": report["seconds"].get("calibrate", 0.0)}
    for step in report["steps"]:
        for stage, seconds in step["seconds"].items():
            stages[stage] = stages.get(stage, 0.0) + seconds
    if report.get("heal"):
        stages["heal"] = sum(report["heal"]["seconds"].values())
    stages["total"] = report["seconds"].get("total", 0.0)
    return {k: round(v, 1) for k, v in stages.items()}


@contextmanager
def alone():
    """The other benchmarks of this machine paused (SIGSTOP) for a timing, resumed after; yields
    how many were paused."""
    ours = {os.getpid(), os.getppid()}
    found = subprocess.run(["pgrep", "-f", "fusegpt|frontier.py|robust.py|criterion.py|memory.py|real.py"],
                           capture_output=True, text=True).stdout.split()
    paused = [int(p) for p in found if int(p) not in ours]
    for pid in paused:
        os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(2)
        yield len(paused)
    finally:
        for pid in paused:
            os.kill(pid, signal.SIGCONT)


def fusegpt(args: list[str]) -> None:
    """Run the fusegpt CLI (in a fresh interpreter, or in this one with BENCH_IN_PROCESS=1); a failure raises."""
    if os.environ.get("BENCH_IN_PROCESS") == "1":
        from fusegpt.cli import main

        if main(args) != 0:
            raise RuntimeError(f"fusegpt {' '.join(args[:2])} failed")
        return
    subprocess.run([sys.executable, "-m", "fusegpt", *args], check=True)


def _locked(lock: Path) -> bool:
    """Whether another live process computes this cell (a lock left by a dead one is taken over)."""
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        try:
            os.kill(int(lock.read_text() or 0), 0)
            return True
        except (ProcessLookupError, ValueError):
            lock.write_text(str(os.getpid()))
            return False
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    return False


def run_cell(suite: str, name: str, model: str, settings: dict[str, str | None], extra: list[str] = (),
             zero_shot: bool = False, weights: Path | None = None) -> dict | None:
    """Compress `model` (a protocol name; `weights`: another copy of it) with `settings` and `extra`
    flags, evaluate dev and test perplexity (and zero-shot on test), cache the result; a cached
    cell is returned as it is, and None when another process is computing it."""
    result = RESULTS / suite / f"{name}.json"
    if result.exists():
        return json.loads(result.read_text())
    result.parent.mkdir(parents=True, exist_ok=True)
    lock = result.with_suffix(".lock")
    if _locked(lock):
        return None
    try:
        return _compute_cell(result, suite, name, model, settings, extra, zero_shot and ZERO_SHOT, weights)
    finally:
        lock.unlink(missing_ok=True)


def _compute_cell(result: Path, suite: str, name: str, model: str, settings: dict[str, str | None],
                  extra: list[str], zero_shot: bool, weights: Path | None) -> dict:
    proto = protocol(model)
    out = OUTPUTS / suite / name
    flags = [*proto.calib, *flags_of(settings), *extra]
    resume = ["--resume"] if (out.parent / f".{out.name}.checkpoint").exists() else []  # an interrupted cell
    device = ["--device", DEVICE] if DEVICE else []
    started = time.perf_counter()
    compressed = out.parent / f"{out.name}.flags.json"  # the flags its saved output was compressed with
    if out.exists() and compressed.exists() and json.loads(compressed.read_text()) == flags and not resume:
        # compressed by an earlier runner whose evaluation was lost (killed): evaluated now
        compress_seconds = json.loads((out / "fusegpt_report.json").read_text())["seconds"]["total"]
    else:
        fusegpt(["compress", str(weights or proto.model), "--out", str(out), "--overwrite", *flags, *device, *resume,
                 "--quiet"])
        compress_seconds = time.perf_counter() - started
        compressed.write_text(json.dumps(flags) + "\n")
    evaluation = out / "evaluation.json"
    evaluated = time.perf_counter()
    fusegpt(["eval", str(out), "--ppl", ",".join(proto.dev + proto.test), *proto.ppl, *device,
             *(proto.tasks if zero_shot else []), "--json", str(evaluation), "--quiet"])
    scores = json.loads(evaluation.read_text())
    report = json.loads((out / "fusegpt_report.json").read_text())
    cell = {"name": name, "model": model, "settings": settings, "flags": flags, "threads": os.environ.get("OMP_NUM_THREADS"),
            "device": DEVICE or "cpu",
            "removed": [s["removed"] for s in report["steps"]], "block_passes": report.get("block_passes"),
            "compress_seconds": round(compress_seconds, 1), "eval_seconds": round(time.perf_counter() - evaluated, 1),
            "stages": _stage_seconds(report),
            "dev": {Path(s).name: scores["ppl"][s] for s in proto.dev},
            "test": {Path(s).name: scores["ppl"][s] for s in proto.test},
            "zero_shot": scores.get("zero_shot"), "heal_losses": (report.get("heal") or {}).get("losses"),
            "trial": (report.get("heal") or {}).get("trial") or None}
    result.write_text(json.dumps(cell, indent=2) + "\n")
    return cell


def add_zero_shot(suite: str, name: str, model: str) -> dict:
    """Zero-shot on test of a cached cell whose model is still in bench/out (a cell run without it)."""
    result = RESULTS / suite / f"{name}.json"
    cell = json.loads(result.read_text())
    if cell.get("zero_shot"):
        return cell
    out = OUTPUTS / suite / name
    evaluation = out / "evaluation-zero-shot.json"
    device = ["--device", DEVICE] if DEVICE else []
    started = time.perf_counter()
    fusegpt(["eval", str(out), *protocol(model).tasks, *device, "--json", str(evaluation), "--quiet"])
    cell["zero_shot"] = json.loads(evaluation.read_text())["zero_shot"]
    cell["zero_shot_seconds"] = round(time.perf_counter() - started, 1)
    result.write_text(json.dumps(cell, indent=2) + "\n")
    return cell


def cached(suite: str, name: str) -> dict | None:
    path = RESULTS / suite / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None

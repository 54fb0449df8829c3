"""One run, every depth (`fusegpt compress MODEL --out DIR --num-remove 2,4,6`): the order in which
blocks go is one sequence, so it is chosen once, to the deepest depth, and each depth's repair then
tunes its own prefix of that order (`--selection given`, no scoring), from the dense model or, with
`--warm-epochs N`, from the previous depth's repaired model for N global epochs. Each depth
is a complete output of its own, DIR/remove-K/ (HF model, GGUF where a single run writes one,
report), and DIR/curve.{json,csv,md,png} sets them side by side with the dense model as the first
row: removed blocks, parameters, file sizes, perplexity on `--ppl`, transformers' tokens/s.

Everything is written in a hidden folder beside DIR (`.DIR.curve`) and renamed into place at the
end, so that DIR only ever holds a finished curve; an interrupted curve keeps its finished depths
there and `--resume` goes on from them (and from the interrupted depth's own checkpoint). A GGUF
input is dequantised once and kept there while the curve runs. A criterion whose choice depends
on how many blocks go (`span`, `last`) chooses at each depth."""
from __future__ import annotations

import csv
import json
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from .errors import FuseGPTError
from .files import write_atomic
from .workflow import Job

ORDER, DENSE, DEQUANTISED = "order.json", "dense.json", ".dequantised"


def amounts(text: str | None, kind: type, flag: str) -> list[dict]:
    """The sizes a --sparsity or --num-remove value names (one, or several comma-separated), as
    config overrides; refused in one line when they are not numbers."""
    if text is None:
        return []
    try:
        values = [kind(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        example = "2,4,6" if kind is int else "0.1,0.2,0.3"
        raise FuseGPTError(f"{flag} takes a number or comma-separated numbers (e.g. {example}), got '{text}'") from None
    if not values:
        raise FuseGPTError(f"{flag} is empty; give a number or comma-separated numbers")
    key = "num_remove" if kind is int else "sparsity"
    return [{"sparsity": None, "num_remove": None, key: v} for v in values]


@dataclass
class Depth:
    """One row of the curve."""

    removed: int  # blocks removed (0: the dense model)
    blocks: list[int] = field(default_factory=list)  # which (original indices), in the order they went
    parameters: int = 0
    model_bytes: int = 0  # the safetensors files (the dense row: the input's files)
    gguf_bytes: int | None = None
    ppl: dict[str, float] = field(default_factory=dict)
    zero_shot: dict[str, dict] = field(default_factory=dict)  # with --tasks: task -> scores, and "mean"
    speed: dict[str, float] = field(default_factory=dict)  # transformers' prefill/decode tokens/s, and the dense's
    gguf_speed: dict[str, float] = field(default_factory=dict)  # llama.cpp's, of the GGUF (and of a dense GGUF)
    gguf: str = ""  # the GGUF file, when one was written
    folder: str = ""  # under DIR (the dense row: the input)
    block_passes: int = 0  # the depth's own tuning (a warm start's: beyond the previous depth's)
    seconds: float = 0.0  # its compress time


def _depth_of(model: str) -> int:
    from .io import load_config

    return load_config(model).get_text_config().num_hidden_layers


def counts(model: str, config, sizes: list[dict]) -> list[int]:
    """The blocks each size removes, deduplicated and ascending (each checked against the depth)."""
    depth = _depth_of(model)
    return sorted({replace(config, **size).blocks_to_remove(depth) for size in sizes})


def check_curve(config, sizes: list[dict]) -> None:
    """Refuse, in one line, what only a curve can do asked of a single run."""
    if config.warm_epochs and len(sizes) < 2:
        raise FuseGPTError("--warm-epochs goes on from one depth of a curve to the next; give several depths "
                           "(--num-remove 2,4,6) or drop --warm-epochs")


def depth_config(config, ks: list[int], i: int, order: list[int] | None, rates: dict | None = None):
    """The run of the i-th depth: the prefix of `order` (None: a per-depth criterion chooses its
    own); when it goes on from the depth before, `warm_epochs` global epochs at the coefficients'
    `rates` that the first depth's trial chose (no trial again)."""
    amount = dict(blocks=order[:ks[i]], selection="given") if order is not None else dict(num_remove=ks[i])
    config = replace(config, **{"sparsity": None, "num_remove": None, **amount})
    if warm(config, i, order):
        config = replace(config, tune=replace(config.tune, global_epochs=config.warm_epochs, trial_rates=(), trial_lrs=(),
                                              **(rates or {})))
    return config


def _chosen_rates(folder: Path) -> dict | None:
    """The global tune's rates a depth's trial chose (None: it ran none)."""
    from .io import REPORT_NAME

    trial = (json.loads((folder / REPORT_NAME).read_text()).get("heal") or {}).get("trial") or []
    return next(({"global_coef_lr": t["global_coef_lr"], "lr": t["lr"]} for t in trial if t["chosen"]), None)


def warm(config, i: int, order: list[int] | None) -> bool:
    """Whether the i-th depth goes on from the one before (a shared order, and --warm-epochs)."""
    return bool(i and order is not None and config.warm_epochs)


def plan_curve(model: str, config, sizes: list[dict]) -> tuple[list, str]:
    """`--dry-run`: (the plans, their rendering). One size: its run's plan. A curve: choosing to the
    deepest depth (the method's steps), then each depth's repair of given blocks, and the totals."""
    from . import catalog
    from .runtime.plan import GIB, plan

    if len(sizes) == 1:
        planned = plan(model, replace(config, **sizes[0]))
        return [planned], planned.render()
    ks = counts(model, config, sizes)
    shared = not catalog.CRITERIA[config.recipe[0]].per_depth
    order = list(range(ks[-1])) if shared else None  # which blocks go does not change the plan
    plans = [plan(model, replace(config, sparsity=None, num_remove=ks[-1]))] if shared else []
    plans += [plan(model, depth_config(config, ks, i, order)) for i in range(len(ks))]
    if shared:  # the choosing run stops before its tune
        plans[0].tuning_passes = 0
    total = (f"curve of {len(ks)} depths ({', '.join(map(str, ks))} blocks removed): "
             f"{sum(p.tuning_passes for p in plans):,} tuning block passes, "
             f"~{sum(p.forward_passes for p in plans):,} forward-only block passes, "
             f"peak host memory ~{max(p.peak_host for p in plans) / GIB:.1f} GiB"
             + (" (the order of removal chosen once, by the first plan's steps)" if shared else ""))
    return plans, "\n".join([*(p.render() for p in plans), total])


def _staging(out: Path, resume: bool) -> Path:
    staging = out.with_name(f".{out.name}.curve")
    if staging.exists() and not resume:
        raise FuseGPTError(f"found an interrupted curve in {staging}; pass --resume to continue it, or delete that "
                           "folder to start over")
    if resume and not staging.exists():
        raise FuseGPTError(f"--resume: no interrupted curve in {staging}; run without --resume")
    staging.mkdir(parents=True, exist_ok=True)
    return staging


def _order(job: Job, deepest: int, staging: Path) -> list[int] | None:
    """The order of removal to the deepest depth, chosen once by the method's own steps (without its
    tune after the last removal) and kept in the staging folder; None for a per-depth criterion."""
    from . import catalog
    from .runtime.checkpoint import Checkpoint
    from .workflow import load_and_compress

    if catalog.CRITERIA[job.config.recipe[0]].per_depth:
        return None
    saved = staging / ORDER
    if saved.exists():
        return json.loads(saved.read_text())["order"]
    config = replace(job.config, num_remove=deepest, sparsity=None)
    checkpoint = Checkpoint(staging / ".choose.checkpoint", config.to_dict(), job.model)
    result, _ = load_and_compress(job.model, config, job.progress, checkpoint, heal=False,
                                  keep_dequantised=job.keep_dequantised)
    first = result.report.steps[0]  # the dense model's scores, for compare's plots
    write_atomic(saved, json.dumps({"order": result.report.removed, "method": config.label,
                                    "seconds": result.report.seconds["total"], "criterion": first.criterion,
                                    "scores": {str(k): v for k, v in first.scores.items()},
                                    "bounds": list(first.bounds)}) + "\n")
    checkpoint.remove()
    return result.report.removed


def _dense_row(job: Job, staging: Path) -> Depth:
    """The dense model's row (its perplexity on `ppl` when asked), kept in the staging folder."""
    saved = staging / DENSE
    if saved.exists():
        return Depth(**json.loads(saved.read_text()))
    from .evaluation.cost import parameter_count
    from .evaluation.measure import measure
    from .io import load_model
    from .paths import gguf_file
    from .runtime.placement import place_for_inference, resolve_device

    model, tokenizer = load_model(job.model, job.config.dtype, job.keep_dequantised)
    source = gguf_file(job.model)
    row = Depth(removed=0, parameters=parameter_count(model), folder=str(source or job.model))
    if source is not None:
        row.gguf_bytes, row.gguf = source.stat().st_size, str(source)
    elif Path(job.model).expanduser().is_dir():
        row.model_bytes = sum(f.stat().st_size for f in Path(job.model).expanduser().glob("*.safetensors"))
    if job.ppl or job.tasks:
        place_for_inference(model, resolve_device(job.config.device), job.config.offload)
        measured = measure(model, tokenizer, job.ppl, job.tasks, job.ppl_seqlen or job.config.seqlen,
                           job.config.data_dir, job.ppl_windows, job.limit, job.tasks_dir, progress=job.progress)
        row.ppl, row.zero_shot = measured.ppl, measured.zero_shot
    write_atomic(saved, json.dumps(asdict(row)) + "\n")
    return row


def _depth_row(folder: Path, k: int) -> Depth:
    from .io import REPORT_NAME

    report = json.loads((folder / REPORT_NAME).read_text())
    gguf = report.get("gguf") or {}
    return Depth(removed=k, blocks=[s["removed"] for s in report["steps"]],
                 model_bytes=sum(f.stat().st_size for f in folder.glob("*.safetensors")),
                 gguf_bytes=gguf.get("bytes"), ppl=report.get("perplexity", {}), zero_shot=report.get("zero_shot", {}),
                 folder=folder.name,
                 gguf=Path(gguf["file"]).name if gguf.get("file") else "", block_passes=report.get("block_passes", 0),
                 seconds=report.get("seconds", {}).get("total", 0.0))


def _measure_speed(job: Job, rows: list[Depth], staging: Path, speed: bool = True) -> None:
    """Parameters and (unless `speed` is False) transformers' tokens/s of every depth, each timed in
    turn with the dense model; llama.cpp's of each GGUF likewise (with the dense GGUF input's, when
    there is one)."""
    import importlib.util

    import torch

    from .evaluation.cost import parameter_count, speed_beside
    from .io import load_model
    from .runtime.placement import place_for_inference, resolve_device

    device = resolve_device(job.config.device)
    dense, _ = load_model(job.model, job.config.dtype, job.keep_dequantised)
    place_for_inference(dense, device, job.config.offload)
    prompt = torch.randint(0, dense.config.get_text_config().vocab_size, (128,),
                           generator=torch.Generator().manual_seed(0)).tolist()  # for llama.cpp
    for row in rows[1:]:
        model, _ = load_model(str(staging / row.folder), job.config.dtype)
        place_for_inference(model, device, job.config.offload)
        row.parameters = parameter_count(model)
        row.speed = speed_beside(model, dense) if speed else {}
        del model
        if speed and row.gguf and importlib.util.find_spec("llama_cpp") is not None:
            from .evaluation.llamacpp import llama_speed

            files = {"output": staging / row.folder / row.gguf, **({"dense": Path(rows[0].gguf)} if rows[0].gguf else {})}
            measured = llama_speed(files, prompt)
            row.gguf_speed = {**measured["output"], **{f"dense_{k}": v for k, v in measured.get("dense", {}).items()}}


def run_curve(job: Job, sizes: list[dict], speed: bool = True) -> list[Depth]:
    """Compress `job.model` at every size of `sizes` (config overrides: `amounts`), sharing the
    choice of blocks; returns the curve's rows, the dense model first (`speed` False: untimed)."""
    from .paths import STATE, check_output, checkpoint_folder
    from .workflow import check_gguf_request, run

    out = check_output(job.out, job.overwrite, protect=job.model)
    check_gguf_request(job)
    ks = counts(job.model, job.config, sizes)
    staging = _staging(out, job.resume)
    job = replace(job, keep_dequantised=staging / DEQUANTISED)  # a GGUF input is dequantised once, not per depth
    try:
        order = _order(job, ks[-1], staging)
        rows = [_dense_row(job, staging)]
        for i, k in enumerate(ks):
            folder = staging / f"remove-{k}"
            if not folder.exists():
                before = staging / f"remove-{ks[i - 1]}" if warm(job.config, i, order) else None
                rates = _chosen_rates(staging / f"remove-{ks[0]}") if before else None  # the first depth's trial
                config = depth_config(job.config, ks, i, order, rates)
                run(replace(job, config=config, out=folder, overwrite=False, start_from=before,
                            resume=(checkpoint_folder(folder) / STATE).exists()))
            rows.append(_depth_row(folder, k))
    except KeyboardInterrupt:
        raise KeyboardInterrupt(f"interrupted; the curve's finished work is kept in {staging}: rerun the same "
                                "command with --resume to continue") from None
    _measure_speed(job, rows, staging, speed)
    shutil.rmtree(staging / DEQUANTISED, ignore_errors=True)  # a copy of the input, not part of the curve
    write_curve(rows, staging, job.model)
    previous = out.with_name(f".{out.name}.previous")
    if out.exists():  # --overwrite: the old result is moved aside, and goes once the new one is in place
        out.rename(previous)
    staging.rename(out)
    shutil.rmtree(previous, ignore_errors=True)
    return rows


def compress_curve(model: str, config, removed: list[int], out: str | Path, speed: bool = True,
                   **options) -> list[Depth]:
    """The curve from Python: `removed`, the numbers of blocks (e.g. [2, 4, 6]); `speed` False skips
    timing tokens/s; `options`, those of `workflow.Job` (ppl, gguf, resume, ...). Returns the rows,
    the dense model first."""
    sizes = [{"sparsity": None, "num_remove": k} for k in removed]
    check_curve(config, sizes)
    return run_curve(Job(str(model), config, out, **options), sizes, speed)


COLUMNS = ("removed", "blocks", "parameters", "model MiB", "GGUF MiB", "tuning block passes")
SPEEDS = {"prefill tok/s": ("speed", "prefill_tokens_per_s"), "decode tok/s": ("speed", "decode_tokens_per_s"),
          "llama.cpp prefill tok/s": ("gguf_speed", "prefill"), "llama.cpp decode tok/s": ("gguf_speed", "decode")}


def _rate(speed: dict[str, float], key: str) -> str:
    """A rate and its ratio to the dense model's, measured beside it."""
    if key not in speed:
        return "-"
    dense = speed.get(f"dense_{key}")
    return f"{speed[key]:.1f}" + (f" ({speed[key] / dense:.2f}x)" if dense else "")


def _cells(row: Depth, sources: list[str], tasks: list[str]) -> list[str]:
    return [str(row.removed), " ".join(map(str, row.blocks)) or "-", f"{row.parameters:,}",
            f"{row.model_bytes / 2**20:.1f}" if row.model_bytes else "-",
            f"{row.gguf_bytes / 2**20:.1f}" if row.gguf_bytes else "-", f"{row.block_passes:,}" if row.removed else "-",
            *(f"{row.ppl[s]:.3f}" if s in row.ppl else "-" for s in sources),
            *(f"{row.zero_shot[t]['value']:.4f}" if t in row.zero_shot else "-" for t in tasks),
            *(_rate(getattr(row, kind), key) for kind, key in SPEEDS.values())]


def write_curve(rows: list[Depth], folder: Path, model: str) -> None:
    """curve.json (every row), curve.csv and curve.md (one line per depth) and curve.png (perplexity
    against blocks removed, one panel per source)."""
    sources = list(dict.fromkeys(s for row in rows for s in row.ppl))
    tasks = list(dict.fromkeys(t for row in rows for t in row.zero_shot))  # each task's score, then their mean
    header = [*COLUMNS, *(f"PPL {Path(s).name}" for s in sources), *(f"zero-shot {t}" for t in tasks),
              *(f"{name} (vs dense)" for name in SPEEDS)]
    table = [header, *(_cells(row, sources, tasks) for row in rows)]
    write_atomic(folder / "curve.json", json.dumps({"model": model, "rows": [asdict(r) for r in rows]}, indent=2) + "\n")

    def write_csv(path: Path) -> None:
        with open(path, "w", newline="") as f:
            csv.writer(f).writerows(table)

    write_atomic(folder / "curve.csv", write_csv)
    lines = ["| " + " | ".join(r) + " |" for r in table]
    write_atomic(folder / "curve.md", f"# {model}\n\n" + "\n".join([lines[0], "|" + " --- |" * len(header), *lines[1:]])
                 + "\n")
    _plot(rows, sources, folder)


def _plot(rows: list[Depth], sources: list[str], folder: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, max(1, len(sources)), figsize=(5 * max(1, len(sources)), 4), squeeze=False)
    for ax, source in zip(axes[0], sources or [None]):
        if source is None:  # no perplexity asked for: the parameters
            ax.plot([r.removed for r in rows], [r.parameters / 1e6 for r in rows], marker="o")
            ax.set_ylabel("parameters (M)")
        else:
            measured = [r for r in rows if source in r.ppl]
            ax.plot([r.removed for r in measured], [r.ppl[source] for r in measured], marker="o")
            ax.set_ylabel(f"perplexity, {Path(source).name}")
        ax.set_xlabel("blocks removed")
        ax.grid(alpha=0.3)
    fig.tight_layout()

    def save(path: Path) -> None:
        fig.savefig(path, format="png", dpi=120)

    write_atomic(folder / "curve.png", save)
    plt.close(fig)

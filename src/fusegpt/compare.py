"""Every method at every sparsity on the same calibration data and the same evaluation. Each
finished cell is saved on its own with a fingerprint of the settings that shaped it, so a rerun
after a crash (or with another fusion recipe) only computes what is missing or changed. With
`curve`, each method runs once for all the sparsities (`fusegpt.curve`: its order of removal
chosen once, to the deepest), so that methods' curves are drawn on one plot at one run's cost each."""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable

from . import catalog
from .config import RECIPES, CompressConfig
from .evaluation.comparison import DENSE, Cell, write_outputs
from .files import write_atomic
from .options import unchanged_since

SPEED_PROTOCOL = "interleaved with a dense copy, medians of 5 rounds"  # cells timed otherwise are redone
FUSION_ONLY_TUNE = ("global_coef_lr", "trial_rates", "trial_lrs", "trial_share")  # shapes fusing repairs only
# how a tune holds its memory, never what it computes (results equal up to rounding)
MEMORY_TUNE = ("micro_batch", "checkpoint_activations", "optimizer_on_host")
NEUTRAL_SCORING = ("kl_top_k", "kl_stride", "rescore", "rescore_limit")  # 0: what ran before each existed


def fingerprint(config: CompressConfig, method: str, ppl: list[str], tasks: list[str], limit: int | None,
                ppl_windows: int | None, ppl_seqlen: int | None = None, curve: list[float] | None = None) -> str:
    """A hash of what shaped the cell: the evaluation always; calibration and scoring for every
    compressed model; fusion and tuning settings only for the repairs that use them. Where the
    work runs (device, offloading, the hidden-state cache) changes no result and is left out; so is
    an option added later at the value runs had before it (its declared `earlier`), so that adding
    one does not invalidate every cached cell."""
    settings = config.to_dict()
    selection, repair = (None, None) if method == DENSE else replace(config, method=method).recipe
    for path in unchanged_since(config):
        section, _, name = path.rpartition(".")
        (settings[section] if section else settings).pop(name)
    for name in (*MEMORY_TUNE, *(FUSION_ONLY_TUNE if repair != "fuse" else ())):
        settings["tune"].pop(name, None)
    shaping = set(catalog.CRITERIA[selection].settings) if selection else set()
    for name in NEUTRAL_SCORING:  # added after cells were cached: only the criteria they shape see them
        if name not in shaping or (name in ("rescore", "rescore_limit") and not getattr(config, name)) \
                or (name == "rescore_limit" and not config.rescore):  # every block every step: no limit
            settings.pop(name)
    settings = {**settings, "method": None, "sparsity": None, "num_remove": None, "device": None, "device_memory_gib": None,
                "hidden_cache": None, "offload": None, "full_scores": None, "ppl": ppl, "tasks": tasks,
                "limit": limit, "ppl_windows": ppl_windows, "ppl_seqlen": ppl_seqlen, "speed": SPEED_PROTOCOL}
    if method == DENSE:
        settings = {k: settings[k] for k in ("dtype", "data_dir", "ppl", "tasks", "limit", "ppl_windows", "ppl_seqlen",
                                             "speed")}
        settings["ppl_seqlen"] = ppl_seqlen or config.seqlen
    elif not catalog.REPAIRS[repair].tunes:
        settings.update(fusion=None, tune=None, fuse_eval_candidates=None, fuse_eval_epochs=None)
    if curve is not None and method != DENSE:  # a depth of a curve: a warm start hangs on the depths before
        settings["curve"] = sorted(curve)
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_cell(model_name: str | Path, method: str, sparsity: float, config: CompressConfig, ppl: list[str],
             tasks: list[str], limit: int | None, tasks_dir: str | None, progress: bool,
             ppl_windows: int | None = None, speed: bool = True, ppl_seqlen: int | None = None) -> Cell:
    """Load a fresh copy of the model, compress it (unless dense), measure it and evaluate it.
    Inference speed is measured on the dense model and on the output in the same run."""
    from . import load_model
    from .evaluation.cost import PeakRSS, parameter_count, speed_beside
    from .evaluation.measure import measure
    from .runtime.placement import place_for_inference, resolve_device
    from .workflow import load_and_compress

    started, model_name = time.perf_counter(), str(model_name)
    device = resolve_device(config.device)
    with PeakRSS() as memory:
        cell = Cell(method=method, sparsity=sparsity, ppl_windows=ppl_windows)
        if method == DENSE:
            model, tokenizer = load_model(model_name, config.dtype)
        else:
            result, tokenizer = load_and_compress(
                model_name, replace(config, method=method, sparsity=sparsity, num_remove=None), progress)
            model, report = result.model, result.report
            cell.removed, cell.block_passes, cell.tune_seconds = report.removed, report.block_passes, report.tune_seconds
            first = report.steps[0]
            cell.criterion, cell.scores = first.criterion, {str(k): v for k, v in first.scores.items()}
            cell.bounds = list(first.bounds)
    cell.seconds, cell.peak_rss_gib = (time.perf_counter() - started) * (method != DENSE), round(memory.gib, 3)
    place_for_inference(model, device, config.offload)
    cell.parameters = parameter_count(model)
    if speed:  # against a fresh dense copy, timed in turn with the output in the same run
        dense = None if method == DENSE else load_model(model_name, config.dtype)[0]
        if dense is not None:
            place_for_inference(dense, device, config.offload)
        cell.speed = speed_beside(model, dense)
        del dense
    measured = measure(model, tokenizer, ppl, tasks, ppl_seqlen or config.seqlen, config.data_dir, ppl_windows,
                       limit, tasks_dir, progress=progress)
    cell.ppl, cell.zero_shot = measured.ppl, measured.zero_shot
    return cell


def curve_cells(model_name: str, method: str, sparsities: list[float], config: CompressConfig, folder: Path,
                ppl: list[str], tasks: list[str], limit: int | None, tasks_dir: str | None, progress: bool,
                ppl_windows: int | None = None, speed: bool = True, ppl_seqlen: int | None = None) -> list[Cell]:
    """One curve of `method` through every sparsity, as cells (in the order of `sparsities`); its
    outputs stay in `folder` and an interrupted one resumes. A cell's time and tuning are its
    depth's own; the choosing they share is in `folder`/order.json; its memory, the curve's peak."""
    from .curve import ORDER, counts, run_curve
    from .evaluation.cost import PeakRSS
    from .io import REPORT_NAME
    from .workflow import Job

    config = replace(config, method=method)
    sizes = [{"sparsity": s, "num_remove": None} for s in sparsities]
    job = Job(model_name, config, folder, overwrite=True, resume=folder.with_name(f".{folder.name}.curve").exists(),
              ppl=ppl, ppl_windows=ppl_windows, ppl_seqlen=ppl_seqlen, tasks=tasks, limit=limit, tasks_dir=tasks_dir,
              gguf=False, progress=progress)
    with PeakRSS() as memory:
        rows = {row.removed: row for row in run_curve(job, sizes, speed=speed)}
    order = json.loads((folder / ORDER).read_text()) if (folder / ORDER).exists() else {}
    cells = []
    for size in sizes:
        row = rows[counts(model_name, config, [size])[0]]
        report = json.loads((folder / row.folder / REPORT_NAME).read_text())
        cells.append(Cell(method=method, sparsity=size["sparsity"], removed=row.blocks, ppl=row.ppl,
                          ppl_windows=ppl_windows, zero_shot=row.zero_shot, seconds=row.seconds,
                          peak_rss_gib=round(memory.gib, 3), block_passes=row.block_passes,
                          tune_seconds=report.get("tune_seconds"), parameters=row.parameters, speed=row.speed,
                          scores=order.get("scores", {}), bounds=order.get("bounds", []),
                          criterion=order.get("criterion", "")))
    return cells


def compare(model_name: str | Path, methods: list[str], sparsities: list[float], config: CompressConfig, out: str | Path,
            ppl: list[str] = (), tasks: list[str] = (), limit: int | None = None, tasks_dir: str | None = None,
            progress: bool = True, run: Callable[..., Cell] = run_cell, ppl_windows: int | None = None,
            speed: bool = True, ppl_seqlen: int | None = None, curve: bool = False,
            run_curve: Callable[..., list[Cell]] = curve_cells) -> list[Cell]:
    """Fill the method x sparsity grid (dense once), reusing cells saved by an earlier run with
    the same settings; then write comparison.{md,csv,json} and the plots. `curve`: each method's
    sparsities come from one run of it (`curve_cells`; its outputs under `out`/curves/), rerun
    whole when any of its cells is missing."""
    from .errors import FuseGPTError

    unknown = [m for m in methods if m != DENSE and m not in RECIPES and m not in catalog.ALIASES]
    if unknown:
        raise FuseGPTError(f"unknown method(s) {', '.join(unknown)}; choose from {DENSE}, {', '.join(RECIPES)}")
    if config.blocks or config.selection == "given":
        raise FuseGPTError("compare chooses blocks by each method's criterion; --blocks and --selection given "
                           "are for compress")
    if config.warm_epochs and not curve:
        raise FuseGPTError("--warm-epochs goes on from one depth of a curve to the next; add --curve or drop "
                           "--warm-epochs")
    out, model_name = Path(out), str(model_name)
    cells_dir = out / "cells"
    cells_dir.mkdir(parents=True, exist_ok=True)
    grid = [(m, 0.0) for m in methods if m == DENSE] + [(m, s) for m in methods if m != DENSE for s in sparsities]
    cells = []
    shared = dict(ppl_windows=ppl_windows, speed=speed, ppl_seqlen=ppl_seqlen)

    def key(method: str) -> str:
        return fingerprint(config, method, list(ppl), list(tasks), limit, ppl_windows, ppl_seqlen,
                           list(sparsities) if curve else None)

    def save(cell: Cell) -> Cell:
        path = cells_dir / f"{cell.method}@{cell.sparsity:g}.json"
        write_atomic(path, json.dumps({"fingerprint": key(cell.method), "cell": asdict(cell)}, indent=2) + "\n")
        return cell

    for method, sparsity in grid:
        path = cells_dir / f"{method}@{sparsity:g}.json"
        saved = json.loads(path.read_text()) if path.exists() else None
        if saved and saved.get("fingerprint") == key(method):
            cells.append(Cell(**saved["cell"]))
        elif curve and method != DENSE:  # the method's every sparsity at once; the others are then cached
            fresh = [save(c) for c in run_curve(model_name, method, list(sparsities), config, out / "curves" / method,
                                                list(ppl), list(tasks), limit, tasks_dir, progress, **shared)]
            cells.append(next(c for c in fresh if c.sparsity == sparsity))
        else:
            cells.append(save(run(model_name, method, sparsity, config, list(ppl), list(tasks), limit, tasks_dir,
                                  progress, **shared)))
    write_outputs(cells, out, model_name)
    return cells

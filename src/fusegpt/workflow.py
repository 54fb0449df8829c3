"""One compression job end to end, as `fusegpt compress` runs it: check the output, load, compress
(checkpointed after every step), save the HF model atomically, write its GGUF, evaluate; and the
evaluation of a saved model (`fusegpt eval`). The CLI parses arguments into these calls;
`compare` runs the same load-and-compress part for each cell."""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .config import CompressConfig
from .errors import FuseGPTError, first_line


@dataclass
class Job:
    model: str  # a HF folder, a .gguf file (or a folder holding one), or a Hub id
    config: CompressConfig
    out: str | Path
    overwrite: bool = False
    resume: bool = False
    keep_checkpoints: bool = False
    ppl: list[str] = field(default_factory=list)  # perplexity sources evaluated after saving
    ppl_windows: int | None = None
    ppl_seqlen: int | None = None
    tasks: list[str] = field(default_factory=list)  # zero-shot tasks evaluated after saving
    limit: int | None = None  # each task's first N items
    tasks_dir: str | None = None
    # GGUF out: None writes it for a GGUF input only; True asks for it, False never; its type
    # (None: the input's) and llama.cpp's quantiser for quantised types
    gguf: bool | None = None
    gguf_type: str | None = None
    progress: bool = True
    start_from: str | Path | None = None  # a shallower model this tool repaired from `model`, to go on from
    keep_dequantised: Path | None = None  # a GGUF input's dequantised copy is kept here for the next load (curves)

    @property
    def asks_gguf(self) -> bool:
        """Whether a GGUF was asked for, by `gguf` or by naming its type."""
        return bool(self.gguf) or (self.gguf is None and self.gguf_type is not None)


def checked_output(job: Job) -> tuple[Path, Path]:
    """The output folder and checkpoint folder, refused at once when they cannot be used as asked."""
    from .paths import STATE, check_output, checkpoint_folder

    out = check_output(job.out, job.overwrite, protect=job.model)
    folder = checkpoint_folder(out)
    if (folder / STATE).exists() and not job.resume:
        raise FuseGPTError(f"found the checkpoint of an interrupted run in {folder}; pass --resume to continue it, "
                           "or delete that folder to start over")
    if job.resume and not (folder / STATE).exists():
        raise FuseGPTError(f"--resume: no checkpoint in {folder}; run without --resume")
    check_gguf_request(job)
    return out, folder


def check_gguf_request(job: Job) -> None:
    """The GGUF asked for can be written, as far as the config tells: a HF model's family is one the
    writer knows, and the type is one llama.cpp has."""
    from .export.gguf_out import check_gguf_type
    from .paths import gguf_file

    if job.asks_gguf and gguf_file(job.model) is None:  # a HF model's family must be one the GGUF writer knows
        from transformers import AutoConfig

        from .export.gguf_hf import architecture

        try:
            config = AutoConfig.from_pretrained(job.model)
        except (OSError, ValueError):
            config = None  # not a loadable model: loading it says so, in its own words
        if config is not None:
            architecture(config)
    check_gguf_type(job.gguf_type)


def load_and_compress(model_name: str, config: CompressConfig, progress: bool = True, checkpoint=None,
                      check=None, heal: bool = True, start_from: str | Path | None = None,
                      keep_dequantised: Path | None = None):
    """(compress result, tokenizer) of a freshly loaded model, its source recorded in the report;
    `check(model, tokenizer)` runs between loading and compressing (what must hold before the work);
    `start_from`: a model this tool saved, repaired from the same one, to go on from;
    `keep_dequantised`: as `io.load_model`'s."""
    from .io import load_model, model_source
    from .pipeline import compress

    source = model_source(model_name)
    model, tokenizer = load_model(model_name, config.dtype, keep_dequantised)
    if check is not None:
        check(model, tokenizer)
    start = warm_start(start_from, config.dtype) if start_from is not None else None
    result = compress(model, tokenizer, config, progress=progress, model_name=model_name, checkpoint=checkpoint,
                      heal=heal, start=start)
    result.report.source = source
    return result, tokenizer


def warm_start(folder: str | Path, dtype: str):
    """The blocks of a model this tool saved and the steps that made it, to go on from (`pipeline.Start`)."""
    from .evaluation.report import StepRecord
    from .io import REPORT_NAME, load_model
    from .models import adapter_for
    from .pipeline import Start

    saved = json.loads((Path(folder) / REPORT_NAME).read_text())
    steps = [StepRecord.from_json(s) for s in saved["steps"]]
    removed = {s.removed for s in steps}
    model, _ = load_model(str(folder), dtype)
    return Start(list(adapter_for(model).blocks(model)), [i for i in range(saved["original_depth"]) if i not in removed],
                 steps)


def gguf_probe(job: Job):
    """The check run on the loaded model before any work when the job writes a GGUF: its writer
    probed (`gguf_out.probe_gguf`, `gguf_hf.probe_gguf_from_hf`), so that a GGUF that cannot be
    written stops the run in seconds. A default GGUF without llama.cpp's quantiser is dropped with a
    warning, now. Returns (the check, or None when no GGUF is written; whether one still is)."""
    from .paths import gguf_file

    source = gguf_file(job.model)
    if job.gguf is False or (source is None and not job.asks_gguf):
        return None, lambda: False
    wanted = [True]

    def check(model, tokenizer) -> None:
        from .export.gguf_hf import probe_gguf_from_hf
        from .export.gguf_out import MissingQuantiser, probe_gguf

        try:
            if source is not None:
                probe_gguf(model, source, job.gguf_type)
            else:
                folder = Path(job.model).expanduser()
                probe_gguf_from_hf(model, tokenizer, job.gguf_type, folder if folder.is_dir() else None)
        except MissingQuantiser as missing:
            if job.asks_gguf:  # asked for: an error; by default, the HF model alone and a warning
                raise
            print(f"fusegpt: warning: no GGUF will be written: {missing}", file=sys.stderr)
            wanted[0] = False

    return check, lambda: wanted[0]


def gguf_importance(result, job: Job) -> dict | None:
    """The compressed model's activation importance on its calibration windows, which GGUF out
    weighs the rounding of its changed tensors by (`gguf_rounding`)."""
    from .export.gguf_hf import DEFAULT_TYPE
    from .export.gguf_out import UNQUANTISED
    from .export.gguf_rounding import IMPORTANCE_WINDOWS, activation_importance
    from .models import adapter_for
    from .paths import gguf_file
    from .runtime.placement import resolve_device

    written_type = job.gguf_type or ("" if gguf_file(job.model) else DEFAULT_TYPE)  # "": the GGUF input's types
    if result.windows is None or written_type.upper() in UNQUANTISED:  # nothing is rounded
        return None
    return activation_importance(result.model, list(adapter_for(result.model).blocks(result.model)),
                                 result.windows[:IMPORTANCE_WINDOWS], job.config.tune.batch_size,
                                 resolve_device(job.config.device))


def run(job: Job):
    """Compress, save, write GGUF, evaluate; returns the compress result (rank 0's under torchrun,
    None on the other ranks). Every failure after saving keeps the saved model and says so."""
    from .runtime import distributed
    from .runtime.checkpoint import Checkpoint
    from .io import REPORT_NAME, save_compressed
    from .paths import gguf_file

    out, folder = checked_output(job)
    model_path = Path(job.model).expanduser()
    checkpoint = Checkpoint(folder, job.config.to_dict(), str(model_path.resolve()) if model_path.exists() else job.model)
    check, writes_gguf = gguf_probe(job)
    try:
        result, tokenizer = load_and_compress(job.model, job.config, job.progress, checkpoint, check,
                                              start_from=job.start_from, keep_dequantised=job.keep_dequantised)
    except KeyboardInterrupt:
        if checkpoint.exists():
            raise KeyboardInterrupt(f"interrupted; every finished step is kept in {folder}: rerun the same command "
                                    "with --resume to continue") from None
        raise
    if not distributed.is_main():  # under torchrun, rank 0 writes and evaluates; the others are done
        return None
    report = result.report
    if job.start_from is not None:  # relative to the output: a curve's folders move together
        report.started_from = os.path.relpath(Path(job.start_from).resolve(), out.resolve())
    saving = time.perf_counter()
    try:
        save_compressed(result.model, tokenizer, report, out, job.overwrite)  # before any evaluation
    except FuseGPTError as error:
        raise FuseGPTError(f"{error}; every step is kept in {folder}: rerun with --resume to save without "
                           "recomputing") from error
    report.seconds["save"] = time.perf_counter() - saving
    if not job.keep_checkpoints:
        checkpoint.remove()
    source = gguf_file(job.model)
    try:
        if writes_gguf():
            from dataclasses import asdict

            from .export.gguf_hf import write_gguf_from_hf
            from .export.gguf_out import write_gguf

            writing = time.perf_counter()
            try:
                importance = gguf_importance(result, job)
                if source is not None:  # the input's own file, its blocks cut and renumbered
                    export = write_gguf(result.model, report.kept, source, out / source.name, job.gguf_type,
                                        job.progress, importance)
                else:  # a HF model's settings and tokenizer under GGUF's keys
                    export = write_gguf_from_hf(result.model, tokenizer, out / f"{Path(job.model).name}.gguf",
                                                job.gguf_type, model_path if model_path.is_dir() else None,
                                                importance)
            except FuseGPTError:
                raise
            except Exception as error:  # what the probe did not foresee: the HF model stays, the way out is named
                raise FuseGPTError(f"GGUF out failed ({type(error).__name__}: {first_line(error)}); pass --no-gguf, "
                                   "or another --gguf-type") from error
            report.gguf = asdict(export)
            report.seconds["gguf"] = time.perf_counter() - writing
        if job.ppl or job.tasks:
            from .evaluation.measure import measure
            from .runtime.placement import place_for_inference, resolve_device

            evaluating = time.perf_counter()
            place_for_inference(result.model, resolve_device(job.config.device), job.config.offload)
            measured = measure(result.model, tokenizer, job.ppl, job.tasks, job.ppl_seqlen or report.seqlen,
                               job.config.data_dir, job.ppl_windows, job.limit, job.tasks_dir, progress=job.progress)
            report.perplexity, report.zero_shot = measured.ppl, measured.zero_shot
            report.perplexity_windows = job.ppl_windows if job.ppl else None
            report.seconds["evaluate"] = time.perf_counter() - evaluating
    except FuseGPTError as error:
        raise FuseGPTError(f"{error} (the compressed model is saved in {out})") from error
    finally:
        report.write(out / REPORT_NAME)
    return result


def evaluate(model_name: str, ppl: list[str], tasks: list[str], seqlen: int, dtype: str = "float32",
             device: str = "auto", offload: str = "auto", ppl_windows: int | None = None, limit: int | None = None,
             data_dir: str | None = None, tasks_dir: str | None = None, batch_size: int = 8,
             progress: bool = True) -> dict:
    """Perplexity on `ppl` and zero-shot accuracy on `tasks` of a saved model, as `fusegpt eval` reports them."""
    from .evaluation.measure import measure
    from .io import load_model
    from .runtime.placement import place_for_inference, resolve_device

    model, tokenizer = load_model(model_name, dtype)
    place_for_inference(model, resolve_device(device), offload)
    measured = measure(model, tokenizer, ppl, tasks, seqlen, data_dir, ppl_windows, limit, tasks_dir, batch_size,
                       progress)
    results: dict = {"model": model_name, "seqlen": measured.seqlen}
    if ppl:
        results["ppl"] = measured.ppl
        results["ppl_windows"] = ppl_windows  # None: every protocol window
    if tasks:
        results["zero_shot"] = measured.zero_shot
    return results

"""Loading models, and writing results so that an output folder is either complete or absent."""
from __future__ import annotations

import errno
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from transformers import (AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, AutoTokenizer,
                          PretrainedConfig, PreTrainedModel)
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING
from transformers.utils import logging as hf_logging

from .config import TORCH_DTYPES
from .errors import FuseGPTError
from .evaluation import Report

REPORT_NAME = "fusegpt_report.json"


@contextmanager
def _hf_quiet():
    """transformers' own loading/writing bars and warnings would drown our one-line messages."""
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or os.sep in name.strip("/").replace("/", "", 1) or Path(name).exists()


def _auto_class(config: PretrainedConfig) -> type:
    """A causal LM's auto class, or the image-text one for a multimodal model (LLaVA) that has no
    causal-LM class: its vision tower must load with it, so that image inputs still run."""
    if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING and type(config) in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING:
        return AutoModelForImageTextToText
    return AutoModelForCausalLM


def load_model(name: str, dtype: str = "float32") -> tuple[PreTrainedModel, object]:
    """A causal LM (or image-text model) and its tokenizer from a local folder or a Hub id, on the
    CPU, frozen."""
    path = Path(name).expanduser()
    if _looks_like_path(name):
        if not path.is_dir():
            raise FuseGPTError(f"model folder '{name}' not found; pass a HuggingFace model folder or a Hub id")
        if not (path / "config.json").is_file():
            raise FuseGPTError(f"'{name}' has no config.json: not a HuggingFace model folder")
        name = str(path)
    try:
        with _hf_quiet():
            config = AutoConfig.from_pretrained(name)
            model = _auto_class(config).from_pretrained(name, config=config, dtype=TORCH_DTYPES[dtype])
            tokenizer = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError, KeyError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise FuseGPTError(f"could not load model '{name}': {first_line}") from error
    return model.eval().requires_grad_(False), tokenizer


def check_output(out: str | Path, overwrite: bool = False, protect: str | Path | None = None) -> Path:
    """Fail before any work if `out` cannot receive a result: it must be absent or an empty
    folder (any folder with `overwrite`, but never `protect`, the input model), in a folder we
    can write to."""
    out = Path(out).expanduser().resolve()
    if protect is not None and Path(protect).expanduser().exists() and out == Path(protect).expanduser().resolve():
        raise FuseGPTError(f"--out '{out}' is the input model folder; the input is never modified, choose another")
    if out.exists() and not out.is_dir():
        raise FuseGPTError(f"output '{out}' exists and is a file; choose a folder for --out")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FuseGPTError(f"output '{out}' already exists and is not empty; choose a new --out or pass --overwrite")
    # missing parent folders are created when the result is saved, so check the nearest existing one
    ancestor = next(p for p in [out.parent, *out.parent.parents] if p.exists())
    if not ancestor.is_dir():
        raise FuseGPTError(f"cannot write '{out}': '{ancestor}' is a file, not a folder; choose another --out")
    try:
        tempfile.TemporaryDirectory(dir=ancestor, prefix=f".{out.name}.").cleanup()
    except OSError as error:
        raise FuseGPTError(f"cannot write to '{ancestor}' ({error.strerror}); choose a writable --out") from error
    return out


def save_compressed(model: PreTrainedModel, tokenizer, report: Report, out: str | Path,
                    overwrite: bool = False) -> Path:
    """Write model (safetensors), tokenizer and report to a hidden sibling folder, then rename it
    into place: a crash, Ctrl-C or full disk leaves no half-written `out` (and, with
    `overwrite`, the previous result intact until the new one is complete)."""
    out = check_output(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
    previous = staging.with_name(staging.name + "-previous")
    try:
        with _hf_quiet():
            model.save_pretrained(staging)
            if tokenizer is not None:
                tokenizer.save_pretrained(staging)
        report.write(staging / REPORT_NAME)
        if out.exists():
            os.replace(out, previous)
        os.replace(staging, out)
    except OSError as error:
        reason = "disk full" if error.errno == errno.ENOSPC else (error.strerror or str(error))
        raise FuseGPTError(f"could not write '{out}': {reason}; free space or choose another --out") from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(previous, ignore_errors=True)
    return out

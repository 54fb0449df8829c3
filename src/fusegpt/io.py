"""Loading models, and writing results so that an output folder is either complete or absent."""
from __future__ import annotations

import errno
import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Iterator
from unittest.mock import patch

from safetensors import SafetensorError
from tqdm.auto import tqdm
from transformers import (AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, AutoTokenizer,
                          PretrainedConfig, PreTrainedModel)
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING
from transformers.utils import logging as hf_logging

from .config import torch_dtype
from .errors import FuseGPTError, first_line
from .evaluation.report import Report
from .paths import check_output, gguf_file, looks_like_path

REPORT_NAME = "fusegpt_report.json"


@contextmanager
def _hf_quiet():
    """transformers' own loading/writing bars and warnings would drown our one-line messages."""
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:  # the GGUF dequantisation bar is a plain tqdm that transformers' switch does not reach
        with patch("transformers.modeling_gguf_pytorch_utils.tqdm", partial(tqdm, disable=True)):
            yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def model_class(config: PretrainedConfig) -> type:
    """A causal LM's auto class, or the image-text one for a multimodal model (LLaVA) that has no
    causal-LM class: its vision tower must load with it, so that image inputs still run."""
    if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING and type(config) in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING:
        return AutoModelForImageTextToText
    return AutoModelForCausalLM


def gguf_metadata(file: Path) -> dict:
    """What the report records of a GGUF input: its architecture and quantisation type, read with
    the `gguf` package (which also rejects a truncated or foreign file before transformers sees it)."""
    import gguf

    try:
        reader = gguf.GGUFReader(file)
        fields = {key: reader.fields[key] for key in ("general.architecture", "general.file_type")
                  if key in reader.fields}
    except Exception as error:  # any parse failure (bad magic, truncated tensor data) means "not usable"
        raise FuseGPTError(f"'{file}' is not a readable GGUF file ({first_line(error)}); pass a complete .gguf "
                           "model") from error
    values = {key: field.parts[field.data[0]] for key, field in fields.items()}
    architecture = bytes(values["general.architecture"]).decode() if "general.architecture" in values else "unknown"
    file_type = values.get("general.file_type")
    try:
        quantization = gguf.LlamaFileType(int(file_type[0])).name.removeprefix("MOSTLY_") if file_type is not None \
            else "unknown"
    except ValueError:
        quantization = f"file type {int(file_type[0])}"
    return {"format": "gguf", "file": str(file), "architecture": architecture, "quantization": quantization}


def model_source(name: str) -> dict:
    """How the input model was stored, for the report: a HuggingFace folder or Hub id, or a GGUF file."""
    file = gguf_file(name)
    return gguf_metadata(file) if file else {"format": "huggingface", "name": name}


def _located(name: str) -> tuple[str, dict]:
    """(what transformers loads, its options) for a folder, a GGUF file or folder, or a Hub id;
    a missing or foreign local path is refused in one line."""
    name = str(name)
    path = Path(name).expanduser()
    file = gguf_file(name)
    if file is not None:
        gguf_metadata(file)  # a one-line refusal of a damaged file before transformers parses it
        return str(file.parent), {"gguf_file": file.name}
    if looks_like_path(name):
        if not path.is_dir():
            raise FuseGPTError(f"model folder '{name}' not found; pass a HuggingFace model folder, a .gguf file "
                               "or a Hub id")
        if not (path / "config.json").is_file():
            raise FuseGPTError(f"'{name}' has no config.json and no .gguf file: not a model folder")
        return str(path), {}
    return name, {}


@contextmanager
def _loading(name: str, options: dict) -> Iterator[None]:
    """transformers quiet, and its load errors as one line naming the model."""
    try:
        with _hf_quiet():
            yield
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as error:
        where = f"{name}/{options['gguf_file']}" if options else name
        raise FuseGPTError(f"could not load model '{where}': {first_line(error)}") from error


def load_config(name: str) -> PretrainedConfig:
    """A model's config alone (for a plan: no weight is read)."""
    name, options = _located(name)
    with _loading(name, options):
        return AutoConfig.from_pretrained(name, **options)


def load_model(name: str | Path, dtype: str = "float32",
               keep_dequantised: Path | None = None) -> tuple[PreTrainedModel, object]:
    """A causal LM (or image-text model) and its tokenizer from a local folder, a GGUF file
    (dequantised to `dtype` by transformers' own GGUF support) or a Hub id, on the CPU, frozen.
    `keep_dequantised`: a folder where a GGUF's dequantised model is saved on its first load and
    read back on the next ones (a curve loads its input once per depth: dequantising Gemma 3 270M
    takes about a minute on 2 cores, reading it back a few seconds)."""
    file = gguf_file(str(name))
    kept = Path(keep_dequantised) / f"{file.stem}-{dtype}" if file is not None and keep_dequantised else None
    if kept is not None and kept.is_dir():
        model, tokenizer = load_model(kept, dtype)
        model.config.name_or_path = str(file)
        return model, tokenizer
    name, options = _located(name)
    with _loading(name, options):
        config = AutoConfig.from_pretrained(name, **options)
        model = model_class(config).from_pretrained(name, config=config, dtype=torch_dtype(dtype), **options)
        tokenizer = AutoTokenizer.from_pretrained(name, **options)
    if options:  # dequantised: the weights are plain tensors now, and the model and its config must say so
        model.hf_quantizer = None
        for config in {id(c): c for c in (model.config, model.config.get_text_config())}.values():
            if hasattr(config, "quantization_config"):
                del config.quantization_config
        model.config.name_or_path = str(file)
    if kept is not None:
        _save_whole(model, tokenizer, kept)
    return model.eval().requires_grad_(False), tokenizer


@contextmanager
def _staging(folder: Path) -> Iterator[Path]:
    """A hidden folder beside `folder` to write into, then rename into place: `folder` is never half
    written. Whatever is left of it (not renamed: an error, Ctrl-C) is removed on the way out."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.partial-"))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _write_pretrained(model: PreTrainedModel, tokenizer, folder: Path) -> None:
    with _hf_quiet():
        model.save_pretrained(folder)
        if tokenizer is not None:
            tokenizer.save_pretrained(folder)


def _save_whole(model: PreTrainedModel, tokenizer, folder: Path) -> None:
    """`model` and `tokenizer` in `folder`, never half there. A copy to save time only: when it
    cannot be written (disk full), a warning, and the next load dequantises again."""
    try:
        with _staging(folder) as staging:
            _write_pretrained(model, tokenizer, staging)
            os.replace(staging, folder)
    except OSError as error:
        print(f"fusegpt: warning: could not keep the dequantised model in {folder} ({error.strerror or error}); "
              "each later load dequantises the GGUF again", file=sys.stderr)


def save_compressed(model: PreTrainedModel, tokenizer, report: Report, out: str | Path,
                    overwrite: bool = False) -> Path:
    """Write model (safetensors), tokenizer and report to a hidden sibling folder, then rename it
    into place: a crash, Ctrl-C or full disk leaves no half-written `out` (and, with
    `overwrite`, the previous result intact until the new one is complete)."""
    out = check_output(out, overwrite)
    previous, moved_aside = None, False
    try:
        with _staging(out) as staging:
            previous = staging.with_name(staging.name + "-previous")
            _write_pretrained(model, tokenizer, staging)
            report.write(staging / REPORT_NAME)
            if out.exists():
                os.replace(out, previous)
                moved_aside = True
            os.replace(staging, out)
            moved_aside = False  # the new result is in place: the old one may go
    except OSError as error:
        reason = "disk full" if error.errno == errno.ENOSPC else (error.strerror or str(error))
        kept = " (the previous result is untouched)" if overwrite and (moved_aside or out.exists()) else ""
        raise FuseGPTError(f"could not write '{out}': {reason}{kept}; free space or choose another --out") from error
    finally:
        if moved_aside:  # the new result could not be put in place: put the old one back
            os.replace(previous, out)
        if previous is not None:
            shutil.rmtree(previous, ignore_errors=True)
    return out

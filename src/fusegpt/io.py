"""Loading models, and writing results so that an output folder is either complete or absent."""
from __future__ import annotations

import errno
import os
from functools import partial
from unittest.mock import patch
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from tqdm.auto import tqdm
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
    try:  # the GGUF dequantisation bar is a plain tqdm that transformers' switch does not reach
        with patch("transformers.modeling_gguf_pytorch_utils.tqdm", partial(tqdm, disable=True)):
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


def gguf_file(name: str) -> Path | None:
    """The GGUF file that a MODEL argument names: a `.gguf` file, or the only one in a folder that has
    no config.json (a HuggingFace folder with a config is loaded as such)."""
    path = Path(name).expanduser()
    if path.suffix.lower() == ".gguf" and not path.is_dir():
        if not path.is_file():
            raise FuseGPTError(f"GGUF file '{name}' not found; pass an existing .gguf file or model folder")
        return path
    if path.is_dir() and not (path / "config.json").is_file():
        found = sorted(path.glob("*.gguf"))
        if len(found) > 1:
            raise FuseGPTError(f"'{name}' holds {len(found)} .gguf files; pass the one to use as MODEL")
        return found[0] if found else None
    return None


def gguf_metadata(file: Path) -> dict:
    """What the report records of a GGUF input: its architecture and quantisation type, read with
    the `gguf` package (which also rejects a truncated or foreign file before transformers sees it)."""
    import gguf

    try:
        reader = gguf.GGUFReader(file)
        fields = {key: reader.fields[key] for key in ("general.architecture", "general.file_type")
                  if key in reader.fields}
    except Exception as error:  # any parse failure (bad magic, truncated tensor data) means "not usable"
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise FuseGPTError(f"'{file}' is not a readable GGUF file ({reason}); pass a complete .gguf model") from error
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


def load_model(name: str, dtype: str = "float32") -> tuple[PreTrainedModel, object]:
    """A causal LM (or image-text model) and its tokenizer from a local folder, a GGUF file
    (dequantised to `dtype` by transformers' own GGUF support) or a Hub id, on the CPU, frozen."""
    path = Path(name).expanduser()
    file = gguf_file(name)
    if file is not None:
        gguf_metadata(file)  # a one-line refusal of a damaged file before transformers parses it
        name, options = str(file.parent), {"gguf_file": file.name}
    elif _looks_like_path(name):
        if not path.is_dir():
            raise FuseGPTError(f"model folder '{name}' not found; pass a HuggingFace model folder, a .gguf file "
                               "or a Hub id")
        if not (path / "config.json").is_file():
            raise FuseGPTError(f"'{name}' has no config.json and no .gguf file: not a model folder")
        name, options = str(path), {}
    else:
        options = {}
    try:
        with _hf_quiet():
            config = AutoConfig.from_pretrained(name, **options)
            model = _auto_class(config).from_pretrained(name, config=config, dtype=TORCH_DTYPES[dtype], **options)
            tokenizer = AutoTokenizer.from_pretrained(name, **options)
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        where = f"{name}/{options['gguf_file']}" if options else name
        raise FuseGPTError(f"could not load model '{where}': {first_line}") from error
    if options:  # dequantised: the weights are plain tensors now, and the model and its config must say so
        model.hf_quantizer = None
        for config in {id(c): c for c in (model.config, model.config.get_text_config())}.values():
            if hasattr(config, "quantization_config"):
                del config.quantization_config
        model.config.name_or_path = str(file)
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

"""What a MODEL or --out argument names, checked without loading anything heavy: a bad path is
refused at once, before torch and transformers are imported."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import FuseGPTError


def looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or os.sep in name.strip("/").replace("/", "", 1) or Path(name).exists()


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


STATE = "state.pt"  # a checkpoint folder's file


def checkpoint_folder(out: str | Path) -> Path:
    """Beside the output, hidden, and never renamed into it: `--out` only ever holds a result."""
    out = Path(out).expanduser().resolve()
    return out.with_name(f".{out.name}.checkpoint")

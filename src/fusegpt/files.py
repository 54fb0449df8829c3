"""Writing a file so that a reader never sees half of it: beside it first, then renamed over it."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable


def write_atomic(path: str | Path, content: str | Callable[[Path], None]) -> None:
    """Write `content` (text, or a function that writes the file it is given) to `path` atomically;
    nothing is left behind if writing fails."""
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    try:
        if callable(content):
            content(partial)
        else:
            partial.write_text(content)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)

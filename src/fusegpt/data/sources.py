"""Text sources -> the exact protocol text the paper's loaders build (rows joined per corpus)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from fusegpt.errors import FuseGPTError

NAMED = ("wikitext2", "ptb", "c4")
SPLITS = ("train", "validation", "test")
C4_VALIDATION_DOCS = 1100  # "c4-new": first 1100 validation documents
_JOINERS = {"wikitext2": "\n\n", "ptb": " ", "c4": " "}
_C4_SHARDS = {
    "train": "en/c4-train.00000-of-01024.json.gz",
    "validation": "en/c4-validation.00000-of-00008.json.gz",
}


def named_corpus(source: str) -> str | None:
    """The corpus name if `source` means a named corpus; an existing file always wins over a name."""
    if source in NAMED and not Path(source).is_file():
        return source
    return None


def check_source(source: str, flag: str) -> None:
    """Refuse, before any work, a source that is neither a named corpus nor a readable file."""
    path = Path(source).expanduser()
    if named_corpus(source):
        return
    if not path.is_file():
        raise FuseGPTError(f"{flag} source '{source}' is neither a file nor one of {', '.join(NAMED)}; "
                           f"pass an existing text file or a corpus name to {flag}")
    if path.stat().st_size == 0:
        raise FuseGPTError(f"{flag} file '{source}' is empty; pass a file with text in it")


def protocol_text(source: str, split: str, data_dir: str | None = None) -> str:
    """Build the text a model is calibrated or evaluated on; `split` is ignored for files."""
    path = Path(source).expanduser()
    if path.is_file():
        return _file_text(path)
    if source not in NAMED:
        raise FuseGPTError(
            f"calibration/eval source '{source}' is neither a file nor one of {', '.join(NAMED)}; "
            "pass an existing text file or a corpus name"
        )
    if split not in SPLITS:
        raise FuseGPTError(f"unknown split '{split}'; use one of {', '.join(SPLITS)}")
    if source == "c4" and split == "test":
        raise FuseGPTError("c4 has no test split; use the validation split")
    rows = _named_rows(source, split, data_dir)
    if source == "c4" and split == "validation":
        rows = rows[:C4_VALIDATION_DOCS]
    return _JOINERS[source].join(rows)


def _file_text(path: Path) -> str:
    """Read a user file; the extension says how rows are rebuilt and joined."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".raw":
            text = "\n\n".join(_raw_rows(path))
        elif suffix == ".jsonl":
            text = "\n\n".join(_jsonl_rows(path))
        elif suffix == ".parquet":
            text = " ".join(_parquet_rows(path))
        else:
            text = path.read_bytes().decode("utf-8")  # verbatim: no newline translation
    except UnicodeDecodeError as exc:
        raise FuseGPTError(
            f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}); convert it to UTF-8"
        ) from exc
    if not text.strip():
        raise FuseGPTError(f"{path} contains no text; pass a non-empty file")
    return text


def _raw_rows(path: Path) -> list[str]:
    """Rows exactly as HF `wikitext-2-raw-v1` builds them: non-blank lines keep their newline, blank ones become ""."""
    with open(path, encoding="utf-8") as f:
        return [line if line.strip() else "" for line in f]


def _ptb_rows(path: Path) -> list[str]:
    """Rows as HF `ptb_text_only` builds them: every line, stripped."""
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f]


def read_jsonl(path: Path) -> list[dict]:
    """The JSON objects of a JSONL file (blank lines skipped); a bad line is a one-line error."""
    records = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise FuseGPTError(f"{path}: line {lineno} is not valid JSON ({exc.msg}); fix or remove that line") from exc
    return records


def _jsonl_rows(path: Path) -> list[str]:
    rows = []
    for lineno, record in enumerate(read_jsonl(path), 1):
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise FuseGPTError(f"{path}: record {lineno} has no string 'text' field; every line needs {{\"text\": ...}}")
        rows.append(record["text"])
    return rows


def _parquet_rows(path: Path) -> list[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
        if "text" not in schema.names:
            raise FuseGPTError(
                f"{path} has no 'text' column (columns: {', '.join(schema.names)}); add one or pass another file"
            )
        column = pq.read_table(path, columns=["text"]).column("text")
    except (pa.ArrowException, OSError) as exc:
        raise FuseGPTError(
            f"{path} is not a readable parquet file ({type(exc).__name__}); pass a valid parquet file"
        ) from exc
    return [row for row in column.to_pylist() if row is not None]


DATA_ENV = "FUSEGPT_DATA"


def data_folder(data_dir: str | None, part: str) -> Path | None:
    """`part` ("text" or "tasks") of the one data folder (--data-dir, else $FUSEGPT_DATA) laid out
    as docs/DATA.md describes; a folder laid out like `part` itself is taken as it is."""
    root = data_dir or os.environ.get(DATA_ENV)
    if not root:
        return None
    root = Path(root).expanduser()
    return root / part if (root / part).is_dir() else root


def _named_rows(name: str, split: str, data_dir: str | None) -> list[str]:
    """Rows of a named corpus: from the local data folder if present, else from the Hub."""
    root = data_folder(data_dir, "text")
    if root:
        found, looked = _local_files(name, split, root)
        if found:
            read = {"wikitext2": _raw_rows, "ptb": _ptb_rows, "c4": _parquet_rows}[name]
            return [row for path in found for row in read(path)]
        where = f"looked in {looked}"
    else:
        where = f"no --data-dir or {DATA_ENV} given"
    try:
        return _hub_rows(name, split)
    except Exception as exc:  # any Hub failure (no network, `datasets` missing) means "not available"
        raise FuseGPTError(
            f"{name} ({split} split) not found: {where} and the Hub is unreachable ({type(exc).__name__}); "
            "pass a file, or --data-dir DIR with text/wikitext-2-raw/, text/ptb/, text/c4/ (docs/DATA.md)"
        ) from exc


def _local_files(name: str, split: str, root: Path) -> tuple[list[Path], str]:
    """Files for `name`/`split` under the shared assets layout, and a description of where we looked."""
    tag = "valid" if split == "validation" else split
    if name == "wikitext2":
        path = root / "wikitext-2-raw" / f"wiki.{tag}.raw"
        return ([path] if path.is_file() else []), str(path)
    if name == "ptb":
        path = root / "ptb" / f"ptb.{tag}.txt"
        return ([path] if path.is_file() else []), str(path)
    patterns = [f"c4/*{split}*.parquet", f"c4_{split}*.parquet"]
    found = sorted({p for pattern in patterns for p in root.glob(pattern) if p.is_file()})
    return found, " and ".join(str(root / pattern) for pattern in patterns)


def _hub_rows(name: str, split: str) -> list[str]:
    """Rows from the HF Hub, as the authors' loaders fetch them."""
    from datasets import load_dataset

    if name == "wikitext2":
        return list(load_dataset("wikitext", "wikitext-2-raw-v1", split=split)["text"])
    if name == "ptb":
        return list(load_dataset("ptb_text_only", "penn_treebank", split=split)["sentence"])
    dataset = load_dataset("allenai/c4", data_files={split: _C4_SHARDS[split]}, split=split)
    return list(dataset["text"])


def check_inputs(calib: str | None, ppl: list[str], tasks: list[str], limit: int | None,
                 ppl_windows: int | None) -> None:
    """Every text a run will read exists and every count is positive, in one line each, before any
    weight is loaded (`calib`: the calibration source, None when the run has none)."""
    from ..config import TASKS
    from .generated import is_self
    from .windows import calibration_sources

    if calib and not is_self(calib):
        for source in calibration_sources(calib):
            check_source(source, "--calib")
    for source in ppl:
        check_source(source, "--ppl")
    unknown = [task for task in tasks if task not in TASKS]
    if unknown:
        raise FuseGPTError(f"unknown zero-shot task(s) {', '.join(unknown)}; choose --tasks from {', '.join(TASKS)}")
    if limit is not None and limit < 1:
        raise FuseGPTError(f"--limit must be a positive number of items, not {limit}")
    if ppl_windows is not None and ppl_windows < 1:
        raise FuseGPTError(f"--ppl-windows must be a positive number of windows, got {ppl_windows}")

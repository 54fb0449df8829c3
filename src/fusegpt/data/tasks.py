"""Zero-shot task data from a local folder (the tasks/ of docs/DATA.md).

Each loader returns the documents in the schema of the task's Hub dataset (the one lm-eval's task
definition reads), so that lm-eval's own prompt templates and metrics apply unchanged whether the
data came from the Hub or from these files.
"""

from __future__ import annotations

import bz2
import os
from collections.abc import Callable
from pathlib import Path

from fusegpt.data.sources import data_folder, read_jsonl
from fusegpt.errors import FuseGPTError

ENV = "FUSEGPT_TASKS"  # kept as an alias of $FUSEGPT_DATA's tasks/
_LETTERS = "ABCDEFGHIJ"


def tasks_root(data_dir: str | None, tasks_dir: str | None = None) -> Path | None:
    """The local task folder: --tasks-dir (an alias), else the data folder's tasks/ (--data-dir,
    $FUSEGPT_DATA), else $FUSEGPT_TASKS, else none (Hub only)."""
    if tasks_dir:
        return Path(tasks_dir).expanduser()
    root = data_folder(data_dir, "tasks")
    if root is None and os.environ.get(ENV):
        root = Path(os.environ[ENV]).expanduser()
    return root


def local_docs(task: str, root: Path) -> list[dict] | None:
    """The task's documents from the first of its known files under `root`, or None if none is there."""
    for relative, convert in _FILES[task]:
        path = root / relative
        if path.is_file():
            records = _records(path)
            if not records:
                raise FuseGPTError(f"{path} has no items; fix or replace the file")
            docs = []
            for number, record in enumerate(records, 1):
                try:
                    docs.append(convert(record))
                except KeyError as exc:
                    raise FuseGPTError(f"{path}: item {number} has no field {exc}; each item needs the fields of "
                                       "docs/DATA.md") from exc
                except (IndexError, TypeError, ValueError) as exc:
                    raise FuseGPTError(f"{path}: item {number} is not in the task's format "
                                       f"({type(exc).__name__}: {exc}); see docs/DATA.md") from exc
            return docs
    return None


def local_paths(task: str, root: Path) -> list[Path]:
    """Where `local_docs` looks for `task`, in order (for error messages)."""
    return [root / relative for relative, _ in _FILES[task]]


def _records(path: Path) -> list[dict]:
    if path.name.endswith(".txt.bz2"):
        return _hellaswag_records(path)
    return read_jsonl(path)


def _hellaswag_records(path: Path) -> list[dict]:
    """Six lines per item: context, gold index, four endings."""
    with bz2.open(path, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) % 6:
        raise FuseGPTError(f"{path} has {len(lines)} lines, not a multiple of 6; fix or replace the file")
    return [{"context": lines[i], "gold": lines[i + 1], "endings": lines[i + 2:i + 6]}
            for i in range(0, len(lines), 6)]


def _choices(texts: list[str]) -> dict:
    return {"text": list(texts), "label": list(_LETTERS[:len(texts)])}


def _piqa(r: dict) -> dict:
    return {"goal": r["goal"], "sol1": r["sol1"], "sol2": r["sol2"], "label": r["label"]}


def _piqa_icl(r: dict) -> dict:
    """llm-foundry's query is "Question: {goal}\\n"; its solutions are stripped (the original's
    trailing spaces are lost, so piqa/validation.jsonl is preferred)."""
    goal = r["query"].removeprefix("Question: ").removesuffix("\n")
    return {"goal": goal, "sol1": r["choices"][0], "sol2": r["choices"][1], "label": r["gold"]}


def _arc(r: dict) -> dict:
    """lm-eval prompts "Question: {question}\\nAnswer:"; llm-foundry's query is "Question: {question}"."""
    return {"question": r["query"].removeprefix("Question: "), "choices": _choices(r["choices"]),
            "answerKey": _LETTERS[r["gold"]]}


def _openbookqa(r: dict) -> dict:
    """llm-foundry's query is the bare question stem, which is lm-eval's whole prompt."""
    return {"question_stem": r["query"], "choices": _choices(r["choices"]), "answerKey": _LETTERS[r["gold"]]}


def _boolq(r: dict) -> dict:
    """llm-foundry's query is "Passage: {passage}\\nQuestion: {question}?"; lm-eval adds the "?"
    itself and has no "Passage: " label."""
    passage, _, question = r["query"].rpartition("\nQuestion: ")
    return {"passage": passage.removeprefix("Passage: "), "question": question.removesuffix("?"),
            "label": r["gold"]}


def _winogrande(r: dict) -> dict:
    """Rebuild the "_" sentence: the two context options share everything before the option
    (cut at a word boundary), the blank is followed by the continuation."""
    first, second = r["context_options"]
    prefix = os.path.commonprefix([first, second])
    prefix = prefix[:prefix.rfind(" ") + 1]
    return {"sentence": f"{prefix}_ {r['continuation']}", "option1": first[len(prefix):],
            "option2": second[len(prefix):], "answer": str(r["gold"] + 1)}


def _lambada(r: dict) -> dict:
    """lm-eval splits the text at its last space: context, then " " + last word."""
    return {"text": f"{r['context']} {r['continuation']}"}


def _hellaswag(r: dict) -> dict:
    """The file's context is lm-eval's query except that the second half is not capitalised
    (which cannot be undone here); lm-eval's own preprocessing reassembles it unchanged."""
    activity, _, ctx = r["context"].partition(": ")
    return {"activity_label": activity, "ctx_a": ctx, "ctx_b": "", "endings": r["endings"], "label": r["gold"]}


_FILES: dict[str, list[tuple[str, Callable[[dict], dict]]]] = {
    "piqa": [("piqa/validation.jsonl", _piqa), ("icl/commonsense_reasoning/piqa.jsonl", _piqa_icl)],
    "hellaswag": [("hellaswag/hellaswag_val_full.txt.bz2", _hellaswag)],
    "winogrande": [("icl/language_understanding/winogrande.jsonl", _winogrande)],
    "arc_easy": [("icl/world_knowledge/arc_easy.jsonl", _arc)],
    "arc_challenge": [("icl/world_knowledge/arc_challenge.jsonl", _arc)],
    "boolq": [("icl/reading_comprehension/boolq.jsonl", _boolq)],
    "openbookqa": [("icl/commonsense_reasoning/openbook_qa.jsonl", _openbookqa)],
    "lambada": [("icl/language_understanding/lambada_openai.jsonl", _lambada)],
}

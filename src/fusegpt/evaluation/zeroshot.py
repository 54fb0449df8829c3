"""Zero-shot accuracy through lm-evaluation-harness, on the in-memory model.

lm-eval's own task definitions (prompts, choices, metrics) do the scoring; fusegpt supplies the
model (`InMemoryLM`, so a compressed model is scored without being saved) and, when a local task
folder is given, the documents (`fusegpt.data.tasks`) in place of the Hub download.
"""
from __future__ import annotations

import logging
import math
from contextlib import contextmanager
from functools import cache, partial
from pathlib import Path
from unittest.mock import patch

import lm_eval.api.task
import torch
import torch.nn.functional as F
from datasets import Dataset, DatasetDict
from datasets.utils import logging as ds_logging
from lm_eval.api.model import TemplateLM
from lm_eval.evaluator import evaluate
from lm_eval.tasks import TaskManager
from lm_eval.tasks._yaml_loader import load_yaml
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from ..data.tasks import local_docs, local_paths, tasks_root
from ..config import TASKS
from ..errors import FuseGPTError
from ..runtime.placement import context_length, execution_device

# The metric each task is customarily reported with (lm-eval numbers as in the FuseGPT and SLEB papers).
METRIC = {"piqa": "acc", "hellaswag": "acc_norm", "winogrande": "acc", "arc_easy": "acc", "arc_challenge": "acc_norm",
          "boolq": "acc", "openbookqa": "acc_norm", "lambada": "acc"}
_LM_EVAL_NAME = {"lambada": "lambada_openai"}
_REPORTED = {"acc": "acc", "acc_norm": "acc_norm", "perplexity": "ppl"}


class InMemoryLM(TemplateLM):
    """lm-eval's model interface over a loaded HF causal LM. Tokenisation and the
    context/continuation split are lm-eval's (`TemplateLM`), as for its own `hf` model."""

    def __init__(self, model: PreTrainedModel, tokenizer, batch_size: int = 8, progress: bool = True):
        super().__init__()
        self.model, self.tokenizer, self.batch_size, self.progress = model, tokenizer, batch_size, progress
        self.max_length = context_length(model)

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        """What an empty context is replaced by: BOS, else EOS (as lm-eval's `hf` model)."""
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.eot_token_id

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        """The tokenizer's own default for special tokens unless told (lm-eval's `hf` default)."""
        special = {} if add_special_tokens is None else {"add_special_tokens": add_special_tokens}
        return self.tokenizer.encode(string, **special)

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """lm-eval's tokenisation without its bar: the scoring bar below is the one that tracks time."""
        return super().loglikelihood(requests, disable_tqdm=True)

    @torch.no_grad()
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """(sum of log p(continuation | context), whether the continuation is the greedy one) per
        request; longest first so that a batch wastes little padding, left-truncated to the context
        window as lm-eval does. The LM head runs only from the batch's first continuation token on
        (`logits_to_keep`): with a 262k vocabulary it is most of a token's cost, and the context's
        logits are never read."""
        device = execution_device(self.model)
        order = sorted(range(len(requests)), key=lambda i: -len(requests[i][1]) - len(requests[i][2]))
        results: list[tuple[float, bool]] = [(0.0, False)] * len(requests)
        batches = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        for batch in tqdm(batches, desc="zero-shot", unit="batch", leave=False, disable=not self.progress):
            rows = [(requests[i][1] + requests[i][2])[-(self.max_length + 1):][:-1] for i in batch]
            width = max(map(len, rows))
            ids = torch.tensor([row + [0] * (width - len(row)) for row in rows], device=device)
            # a continuation longer than the context window is scored on its last tokens that fit
            targets = [requests[i][2][-len(row):] for i, row in zip(batch, rows)]
            first = min(len(row) - len(target) for row, target in zip(rows, targets))
            # right padding: no effect on real positions; logits of positions first.. only
            logits = self.model(input_ids=ids, use_cache=False, logits_to_keep=width - first).logits
            for i, row, target, row_logits in zip(batch, rows, targets, logits):
                target = torch.tensor(target, device=device)
                logprobs = F.log_softmax(row_logits[len(row) - len(target) - first:len(row) - first].float(), dim=-1)
                results[i] = (logprobs.gather(1, target[:, None]).sum().item(),
                              bool((logprobs.argmax(-1) == target).all()))
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError("fusegpt's zero-shot model scores continuations only; use `fusegpt eval` perplexity")

    def generate_until(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError("fusegpt's zero-shot model scores continuations only; no generative tasks")


@cache
def _task_manager() -> TaskManager:
    """lm-eval's index of its task definitions (indexing takes seconds: build it once)."""
    return TaskManager()


def _local_task(name: str, docs: list[dict]):
    """lm-eval's definition of `name`, evaluated on `docs` instead of its Hub split."""
    manager = _task_manager()
    config = load_yaml(manager.task_index[name].yaml_path)
    key = "test_split" if config.get("test_split") else "validation_split"
    split = config[key]
    config.update(training_split=None, validation_split=None, test_split=None, fewshot_split=None)
    config[key] = split
    config["custom_dataset"] = lambda **_: DatasetDict({split: Dataset.from_list(docs)})
    return manager.load([config])["tasks"][name]


def _hub_task(name: str):
    """lm-eval's definition of `name` with its data from the Hub."""
    return _task_manager().load([name])["tasks"][name]


def _build_task(task: str, root: Path | None, limit: int | None):
    """The task on local files when `root` has them (only the first `limit` documents: lm-eval
    would take those), else on the Hub; a one-line error when neither."""
    name = _LM_EVAL_NAME.get(task, task)
    if root is not None:
        docs = local_docs(task, root)
        if docs is not None:
            return _local_task(name, docs[:limit])
        where = "looked for " + " and ".join(map(str, local_paths(task, root)))
    else:
        where = "no --data-dir or $FUSEGPT_DATA given"
    try:
        return _hub_task(name)
    except Exception as exc:  # any Hub failure (no network, dataset moved) means "not available"
        raise FuseGPTError(
            f"zero-shot task {task}: {where} and loading it from the Hub failed ({type(exc).__name__}); "
            "pass --data-dir DIR whose tasks/ folder holds the task files (docs/DATA.md)"
        ) from exc


@contextmanager
def _quiet():
    """lm-eval's and datasets' logging and bars would drown our progress bar and one-line messages
    (lm-eval 0.4.13 builds each task's prompts under a bar that cannot be turned off otherwise)."""
    logger, bars = logging.getLogger("lm_eval"), ds_logging.is_progress_bar_enabled()
    level = logger.level
    logger.setLevel(logging.ERROR)
    ds_logging.disable_progress_bar()
    try:
        with patch.object(lm_eval.api.task, "tqdm", partial(tqdm, disable=True)):
            yield
    finally:
        logger.setLevel(level)
        if bars:
            ds_logging.enable_progress_bar()


def evaluate_zero_shot(model: PreTrainedModel, tokenizer, tasks: list[str], limit: int | None = None,
                       data_dir: str | None = None, batch_size: int = 8,
                       progress: bool = True, tasks_dir: str | None = None) -> dict[str, dict[str, float]]:
    """Zero-shot scores per task ({metric: value, "metric": its customary metric, "value": that
    metric's value}) and "mean" ({"value": mean of the values}); `limit` keeps each task's first items."""
    unknown = [task for task in tasks if task not in TASKS]
    if unknown or not tasks:
        what = f"unknown zero-shot task(s) {', '.join(unknown)}" if unknown else "no zero-shot task given"
        raise FuseGPTError(f"{what}; choose from {', '.join(TASKS)}")
    if limit is not None and limit < 1:
        raise FuseGPTError(f"--limit must be a positive number of items, not {limit}")
    model.eval()
    root = tasks_root(data_dir, tasks_dir)
    with _quiet():
        built = {task: _build_task(task, root, limit) for task in dict.fromkeys(tasks)}
        results = evaluate(InMemoryLM(model, tokenizer, batch_size, progress),
                           {"tasks": {task.task_name: task for task in built.values()}, "groups": {},
                            "group_map": {}},
                           limit=limit, bootstrap_iters=0, log_samples=False)["results"]
    scores: dict[str, dict] = {}
    for task, lm_task in built.items():
        metrics = {key.split(",")[0]: value for key, value in results[lm_task.task_name].items()}  # "acc,none"
        scores[task] = {_REPORTED[name]: float(value) for name, value in metrics.items() if name in _REPORTED}
        items = len(lm_task.eval_docs) if limit is None else min(limit, len(lm_task.eval_docs))
        value = scores[task][METRIC[task]]
        scores[task].update(metric=METRIC[task], value=value, items=items, stderr=accuracy_stderr(value, items))
    values = [scores[task]["value"] for task in built]
    # the tasks are independent samples: the mean's error is the root of the summed variances over n^2
    scores["mean"] = {"value": sum(values) / len(values),
                      "stderr": math.sqrt(sum(scores[task]["stderr"] ** 2 for task in built)) / len(built)}
    return scores


def accuracy_stderr(accuracy: float, items: int) -> float:
    """Standard error of an accuracy over `items` items, lm-eval's (sample standard deviation / sqrt(n))."""
    return math.sqrt(accuracy * (1 - accuracy) / (items - 1)) if items > 1 else float("nan")

"""A GGUF as llama.cpp runs it (through llama-cpp-python): perplexity from its logits and prefill /
decode tokens/s, several files timed in turn so that a load on the machine slows them alike."""
from __future__ import annotations

import math
import statistics
import time
from pathlib import Path

import numpy as np


def llama(path: Path, context: int, threads: int | None = None):
    """llama.cpp on `path`, without its extra CPU buffer types: with them, some builds put quantised
    weights in AMX buffers and crash in the AMX matmul (llama.cpp issue 20824)."""
    import llama_cpp
    import llama_cpp.llama as api

    defaults = api.llama_cpp.llama_model_default_params
    if not getattr(defaults, "without_extra_buffers", False):
        def without_extra_buffers():
            params = defaults()
            params.use_extra_bufts = False
            return params

        without_extra_buffers.without_extra_buffers = True
        api.llama_cpp.llama_model_default_params = without_extra_buffers
    return llama_cpp.Llama(model_path=str(path), n_ctx=context, n_batch=context, logits_all=True, n_threads=threads,
                           n_threads_batch=threads, verbose=False)


def llama_perplexity(path: Path, windows: np.ndarray, threads: int | None = None) -> float:
    """exp(mean NLL) of every predicted token of `windows` (token ids, one row a window)."""
    llm, total, count = llama(path, windows.shape[1], threads), 0.0, 0
    try:
        for window in windows:
            llm.reset()
            llm.eval(window.tolist())
            logits = np.array(llm.scores[: len(window) - 1], dtype=np.float64)
            logits -= logits.max(-1, keepdims=True)
            log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
            total -= log_probs[np.arange(len(window) - 1), window[1:]].sum()
            count += len(window) - 1
    finally:
        llm.close()
    return math.exp(total / count)


def llama_speed(paths: dict[str, Path], prompt: list[int], decode: int = 64, rounds: int = 5,
                threads: int | None = None) -> dict[str, dict[str, float]]:
    """Prefill (the whole prompt) and greedy decode (one token at a time after it) tokens/s of each
    file, medians of `rounds` rounds, the files taking turns within each round."""
    models = {name: llama(path, len(prompt) + decode, threads) for name, path in paths.items()}
    times: dict[str, dict[str, list[float]]] = {n: {"prefill": [], "decode": []} for n in models}
    try:
        for _ in range(rounds):
            for name, llm in models.items():
                llm.reset()
                started = time.perf_counter()
                llm.eval(prompt)
                times[name]["prefill"].append(len(prompt) / (time.perf_counter() - started))
                token = int(np.argmax(llm.scores[len(prompt) - 1]))
                started = time.perf_counter()
                for _ in range(decode):
                    llm.eval([token])
                    token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
                times[name]["decode"].append(decode / (time.perf_counter() - started))
    finally:
        for llm in models.values():
            llm.close()
    return {n: {k: round(statistics.median(v), 1) for k, v in t.items()} for n, t in times.items()}

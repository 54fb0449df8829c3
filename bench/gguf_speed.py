"""The compressed SmolLM2 in llama.cpp: its GGUF (at the input's Q4_1, at Q4_K_M, Q5_K_M, Q8_0 and F16) written from a
compressed cell's output, then perplexity with llama.cpp's logits (our windowing: the first 16
windows of 512 tokens of WikiText-2 test) beside transformers' perplexity of the HF output on the
same windows, and prefill / decode tokens/s of the dense and the compressed GGUF, measured in turn
in the same process with the same thread count (medians of 5 rounds).

    python bench/gguf_speed.py [CELL]     # default: frontier-smollm2/s25-default
                                          # results: bench/results/gguf-<cell>.json

Needs llama-cpp-python (in the test extra)."""
from __future__ import annotations

import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from common import MODELS, OUTPUTS, RESULTS, TEXT, require_assets

WINDOWS, SEQLEN, DECODE, ROUNDS = 16, 512, 64, 5
THREADS = 2


def _ids() -> np.ndarray:
    from fusegpt import load_model
    from fusegpt.data import perplexity_ids

    _, tokenizer = load_model(str(MODELS["smollm2"]))
    ids = perplexity_ids(tokenizer, str(TEXT / "wikitext-2-raw/wiki.test.raw"), SEQLEN)
    return ids[: WINDOWS * SEQLEN].view(WINDOWS, SEQLEN).numpy()


def _llama(path: Path):
    """llama.cpp on `path`, without its extra CPU buffer types: with them, this machine's build puts
    quantised weights in AMX buffers and crashes in its AMX matmul (llama.cpp issue 20824), the
    dense input as much as ours; both files are measured the same way."""
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
    return llama_cpp.Llama(model_path=str(path), n_ctx=SEQLEN + DECODE, n_batch=SEQLEN, logits_all=True,
                           n_threads=THREADS,
                           n_threads_batch=THREADS, verbose=False)


def llama_perplexity(path: Path, windows: np.ndarray) -> float:
    llm, total, count = _llama(path), 0.0, 0
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


def speed(paths: dict[str, Path], prompt: list[int]) -> dict[str, dict[str, float]]:
    """Prefill (the whole prompt) and decode (one token at a time after it) tokens/s, medians of
    ROUNDS rounds, the models taking turns within each round."""
    models = {name: _llama(path) for name, path in paths.items()}
    times: dict[str, dict[str, list[float]]] = {n: {"prefill": [], "decode": []} for n in models}
    try:
        for _ in range(ROUNDS):
            for name, llm in models.items():
                llm.reset()
                started = time.perf_counter()
                llm.eval(prompt)
                times[name]["prefill"].append(len(prompt) / (time.perf_counter() - started))
                token = int(np.argmax(llm.scores[len(prompt) - 1]))
                started = time.perf_counter()
                for _ in range(DECODE):
                    llm.eval([token])
                    token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
                times[name]["decode"].append(DECODE / (time.perf_counter() - started))
    finally:
        for llm in models.values():
            llm.close()
    return {n: {k: round(statistics.median(v), 1) for k, v in t.items()} for n, t in times.items()}


def main() -> None:
    require_assets()
    import torch

    from fusegpt import load_model
    from fusegpt.evaluation.ppl import perplexity
    from fusegpt.export.gguf_out import write_gguf

    cell = sys.argv[1] if len(sys.argv) > 1 else "frontier-smollm2/s25-default"
    folder = OUTPUTS / cell
    report = json.loads((folder / "fusegpt_report.json").read_text())
    source = MODELS["smollm2"]
    model, tokenizer = load_model(str(folder))
    files = {kind: OUTPUTS / "gguf" / cell / f"smollm2-compressed.{kind}.gguf"
             for kind in ("Q4_1", "Q8_0", "F16", "Q5_K_M", "Q4_K_M")}  # K-quants last: llama.cpp may fall back
    for kind, path in files.items():
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            exported = write_gguf(model, report["kept"], source, path, None if kind == "Q4_1" else kind)
            print(kind, exported, flush=True)
    out = RESULTS / f"gguf-{cell.replace('/', '-')}.json"
    result = json.loads(out.read_text()) if out.exists() else {}  # what an interrupted run measured
    result.update({"cell": cell, "kept": report["kept"], "windows": WINDOWS, "seqlen": SEQLEN, "threads": THREADS,
                   "bytes": {"dense Q4_1": source.stat().st_size,
                             **{f"compressed {k}": p.stat().st_size for k, p in files.items()}}})
    windows = _ids()
    if "ppl_transformers" not in result:
        with torch.no_grad():
            dense_model, _ = load_model(str(source))
            result["ppl_transformers"] = {
                "dense": perplexity(dense_model, torch.from_numpy(windows).reshape(-1), SEQLEN, progress=False),
                "compressed": perplexity(model, torch.from_numpy(windows).reshape(-1), SEQLEN, progress=False)}
        out.write_text(json.dumps(result, indent=2) + "\n")
    measured = result.setdefault("ppl_llama_cpp", {})
    for name, path in {"dense Q4_1": source, **{f"compressed {k}": p for k, p in files.items()}}.items():
        if name not in measured:
            measured[name] = llama_perplexity(path, windows)
            out.write_text(json.dumps(result, indent=2) + "\n")
    result["tokens_per_s"] = speed({"dense Q4_1": source, "compressed Q4_1": files["Q4_1"]}, windows[0].tolist())
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

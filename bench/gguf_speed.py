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
import sys
from pathlib import Path

import numpy as np

from common import MODELS, OUTPUTS, RESULTS, TEXT, require_assets

from fusegpt.evaluation import llamacpp

WINDOWS, SEQLEN, DECODE, ROUNDS = 16, 512, 64, 5
THREADS = 2


def _ids() -> np.ndarray:
    from fusegpt import load_model
    from fusegpt.data import perplexity_ids

    _, tokenizer = load_model(str(MODELS["smollm2"]))
    ids = perplexity_ids(tokenizer, str(TEXT / "wikitext-2-raw/wiki.test.raw"), SEQLEN)
    return ids[: WINDOWS * SEQLEN].view(WINDOWS, SEQLEN).numpy()


def llama_perplexity(path: Path, windows: np.ndarray) -> float:
    return llamacpp.llama_perplexity(path, windows, THREADS)


def speed(paths: dict[str, Path], prompt: list[int]) -> dict[str, dict[str, float]]:
    """Prefill and decode tokens/s, medians of ROUNDS rounds, the models taking turns within each round."""
    return llamacpp.llama_speed(paths, prompt, DECODE, ROUNDS, THREADS)


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

"""Peak host memory of `compress` against depth and calibration windows, on random Llama-shaped
models (hidden 512, FFN 1376, 256-token windows: one window's hidden states, T x H x 4 bytes, is
512 KiB), with the hidden states cached on the scoring windows only (the default) and on every
window (`--hidden-cache all`, the caching of the previous releases).

Each cell runs in a fresh process: memory beyond the model = the process's peak RSS during
`compress` minus its RSS once the model is built. The default recipe (fusegpt, dense teacher,
seam map) removes the middle block (given, so that no scoring time is spent) with one tuning
epoch. Results are cached in
bench/results/memory.json; `--table` prints the Markdown table.

    python bench/memory.py            # every cell (about 10 minutes here)
    python bench/memory.py --table
    python bench/memory.py --tune     # the global tune: depth, batch, micro-batch, checkpointing
    python bench/memory.py --tune --table
"""
from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT.parent / "shared" / "assets"
OUT = ROOT / "bench" / "results" / "memory.json"
HIDDEN, FFN, SEQLEN = 512, 1376, 256
WINDOW_MIB = SEQLEN * HIDDEN * 4 / 2**20
CELLS = [(12, 64), (24, 64), (48, 64), (12, 128), (12, 256)]  # (depth, calibration windows)
# the global tune (every kept block at once, 16 windows, one epoch): (depth, batch, micro-batch, checkpointing)
TUNE_CELLS = [(6, 4, 0, False), (6, 4, 0, True), (12, 4, 0, False), (12, 4, 0, True), (12, 8, 0, False),
              (12, 8, 0, True), (12, 8, 1, True), (24, 4, 0, False), (24, 4, 0, True)]


def _model(depth: int, vocab: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=FFN,
                                        num_hidden_layers=depth, num_attention_heads=8, num_key_value_heads=8,
                                        max_position_embeddings=SEQLEN)).eval()


def _tune_config(depth: int, batch: int, micro: int, checkpointed: bool):
    """One removal (injected, untuned) and one global epoch over the kept blocks."""
    from fusegpt import CompressConfig, FusionConfig, TuneConfig

    return CompressConfig(calib=str(ASSETS / "text/wikitext-2-raw/wiki.valid.raw"), nsamples=16, seqlen=SEQLEN,
                          mi_samples=8, blocks=[depth // 2], sparsity=None, device="cpu",
                          fusion=FusionConfig(rank=32, lora_rank=32),
                          tune=TuneConfig(epochs=0, global_epochs=1, batch_size=batch, micro_batch=micro or None,
                                          checkpoint_activations=checkpointed, optimizer_on_host=False,
                                          distill="hidden"))  # what bench/results/memory_tune.json measured


def _config(depth: int, nsamples: int, cache: str):
    from fusegpt import CompressConfig, FusionConfig, TuneConfig

    return CompressConfig(calib=str(ASSETS / "text/wikitext-2-raw/wiki.valid.raw"), nsamples=nsamples,
                          seqlen=SEQLEN, mi_samples=8, blocks=[depth // 2], sparsity=None, hidden_cache=cache,
                          device="cpu", fusion=FusionConfig(rank=32, lora_rank=32), tune=TuneConfig(epochs=1, global_epochs=0))


def estimate_mib(depth: int, nsamples: int, cache: str, config=None) -> float:
    """`--dry-run`'s peak estimate for the cell (the model built on the meta device)."""
    import torch

    from fusegpt.runtime.plan import plan, shape_of

    with torch.device("meta"):
        model = _model(depth, 512)
    return plan("bench", config or _config(depth, nsamples, cache), shape_of(model)).peak_host / 2**20


def cell(depth: int, nsamples: int, cache: str, config=None) -> dict:
    """One compress in this process; memory in MiB."""
    import torch
    from transformers import AutoTokenizer

    from fusegpt import compress
    from fusegpt.evaluation.cost import current_rss

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(ASSETS / "models/stories260K")
    model = _model(depth, len(tokenizer))
    weights = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    baseline = current_rss() / 2**20
    compress(model, tokenizer, config or _config(depth, nsamples, cache), progress=False)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    return {"depth": depth, "nsamples": nsamples, "cache": cache, "weights_mib": round(weights, 1),
            "baseline_mib": round(baseline, 1), "peak_mib": round(peak, 1), "beyond_mib": round(peak - baseline, 1)}


def table(rows: list[dict]) -> str:
    """Memory beyond the model per cell, both caches side by side, with the window size to compare slopes."""
    found = {(r["depth"], r["nsamples"], r["cache"]): r for r in rows}
    lines = [f"One window's hidden states: {WINDOW_MIB:.3f} MiB (T={SEQLEN}, H={HIDDEN}, fp32).", "",
             "| depth | windows N | model MiB | beyond the model MiB, scoring cache (default) | peak MiB | "
             "`--dry-run` estimate MiB | beyond the model MiB, all cached (`--hidden-cache all`) | peak MiB |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for depth, n in CELLS:
        scoring, every = found.get((depth, n, "scoring")), found.get((depth, n, "all"))
        if scoring and every:
            lines.append(f"| {depth} | {n} | {scoring['weights_mib']} | {scoring['beyond_mib']} | {scoring['peak_mib']} | "
                         f"{estimate_mib(depth, n, 'scoring'):.0f} | {every['beyond_mib']} | {every['peak_mib']} |")
    return "\n".join(lines)


def tune_cell(depth: int, batch: int, micro: int, checkpointed: bool) -> dict:
    row = cell(depth, 16, "scoring", _tune_config(depth, batch, micro, checkpointed))
    return {**row, "batch": batch, "micro": micro, "checkpointed": checkpointed,
            "estimate_mib": round(estimate_mib(depth, 16, "scoring", _tune_config(depth, batch, micro, checkpointed)))}


def tune_table(rows: list[dict]) -> str:
    lines = ["| depth | batch | micro-batch | checkpointing | beyond the model MiB | peak MiB | `--dry-run` estimate MiB |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['depth']} | {r['batch']} | {r['micro'] or 'batch'} | {'yes' if r['checkpointed'] else 'no'} | "
                     f"{r['beyond_mib']} | {r['peak_mib']} | {r['estimate_mib']} |")
    return "\n".join(lines)


def tune_main() -> None:
    path = OUT.with_name("memory_tune.json")
    rows = json.loads(path.read_text()) if path.exists() else []
    if sys.argv[2:] == ["--table"]:
        print(tune_table(rows))
        return
    done = {(r["depth"], r["batch"], r["micro"], r["checkpointed"]) for r in rows}
    for key in TUNE_CELLS:
        if key in done:
            continue
        out = subprocess.run([sys.executable, __file__, "--tune-cell", *map(str, key)], check=True,
                             capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
        path.write_text(json.dumps(rows, indent=1) + "\n")
    print(tune_table(rows))


def main() -> None:
    if sys.argv[1:2] == ["--cell"]:
        print(json.dumps(cell(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])))
        return
    if sys.argv[1:2] == ["--tune-cell"]:
        depth, batch, micro, checkpointed = sys.argv[2:6]
        print(json.dumps(tune_cell(int(depth), int(batch), int(micro), checkpointed == "True")))
        return
    if sys.argv[1:2] == ["--tune"]:
        tune_main()
        return
    rows = json.loads(OUT.read_text()) if OUT.exists() else []
    if sys.argv[1:] == ["--table"]:
        print(table(rows))
        return
    if not (ASSETS / "models/stories260K").exists():
        sys.exit(f"needs ../shared/assets beside the repository ({ASSETS} not found)")
    done = {(r["depth"], r["nsamples"], r["cache"]) for r in rows}
    for depth, n in CELLS:
        for cache in ("scoring", "all"):
            if (depth, n, cache) in done:
                continue
            out = subprocess.run([sys.executable, __file__, "--cell", str(depth), str(n), cache], check=True,
                                 capture_output=True, text=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
            OUT.write_text(json.dumps(rows, indent=1) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()

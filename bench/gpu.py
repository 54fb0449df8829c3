"""Checks that need a GPU (docs/SCALE.md says what ran where):

    python bench/gpu.py scale [--device-memory 24] [--nsamples 16] [--global-epochs 1]
        the default recipe on a LLaMA-2-7B-shaped model (random bf16 weights, 32 blocks, hidden
        4096, FFN 11008, vocabulary 32,000), windows of 2048 tokens, 8 blocks removed, planned for a
        card of `--device-memory` GiB: the plan's device and host estimates against the measured
        peaks (torch's allocator; the process's RSS), the tune's automatic choices and the seconds of
        every stage -> bench/results/gpu-scale.json (a key per setting)
    python bench/gpu.py convert MODEL.gguf DIR
        the dequantised copy of a GGUF as a HuggingFace folder (the same fp32 weights, loaded in
        a second instead of dequantised again by every cell)

The SmolLM2 frontier runs on a GPU through bench/frontier.py with `BENCH_DEVICE=cuda` (its cells go
to their own suite, bench/results/frontier-smollm2-cuda/; bench/common.py)."""
from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import sys
import time

from common import ASSETS, RESULTS, TEXT

LLAMA_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5)


def random_llama(shape: dict, dtype):
    """A Llama of `shape` with N(0, 0.02) weights and unit norms, built without HF's slow initialiser."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**shape)
    with torch.device("meta"):
        model = LlamaForCausalLM(config).to(dtype)
    model.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.fill_(1.0)
            else:
                p.copy_(torch.randn(p.shape, generator=generator, dtype=torch.float32).mul_(0.02).to(dtype))
        model.model.rotary_emb = type(model.model.rotary_emb)(config=config)  # its buffers were left empty
    return model.eval().requires_grad_(False)


def scale(args) -> dict:
    import torch
    from transformers import AutoTokenizer

    from fusegpt import CompressConfig, TuneConfig, compress
    from fusegpt.runtime.plan import plan, shape_of

    shape = {**LLAMA_7B, **(json.loads(args.shape) if args.shape else {})}
    built = time.perf_counter()
    model = random_llama(shape, torch.bfloat16)
    build_seconds = time.perf_counter() - built
    tokenizer = AutoTokenizer.from_pretrained(ASSETS / "models/pydoc-llama-12L")  # any ids below 32,000
    config = CompressConfig(calib=str(TEXT / "wikitext-2-raw/wiki.valid.raw"), nsamples=args.nsamples,
                            seqlen=args.seqlen, mi_samples=args.mi_samples, num_remove=args.remove, sparsity=None,
                            dtype="bfloat16", device=args.device, device_memory_gib=args.device_memory,
                            tune=TuneConfig(global_epochs=args.global_epochs))
    planned = plan("llama-2-7b-shaped", config, shape_of(model))
    print(planned.render(), flush=True)
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()

    def stopped(signum, frame):  # a run stopped at its time limit still says how far it got, and its peaks
        gib = 2**30
        print(json.dumps({"stopped_after_seconds": round(time.perf_counter() - started, 1),
                          "peak_allocated_gib": round(torch.cuda.max_memory_allocated() / gib, 2) if cuda else None,
                          "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}),
              flush=True)
        os._exit(124)

    signal.signal(signal.SIGTERM, stopped)
    result = compress(model, tokenizer, config, progress=True, model_name="llama-2-7b-shaped")
    seconds = time.perf_counter() - started
    report = result.report
    stages = {"calibrate": report.seconds.get("calibrate", 0.0), "merge": report.seconds.get("merge", 0.0)}
    for step in report.steps:
        for stage, value in step.seconds.items():
            stages[stage] = stages.get(stage, 0.0) + value
    if report.heal:
        stages["global tune"] = sum(report.heal.seconds.values())
    gib = 2**30
    return {
        "shape": shape, "dtype": "bfloat16", "gpu": torch.cuda.get_device_name() if cuda else None, "torch": torch.__version__,
        "settings": {"nsamples": args.nsamples, "seqlen": args.seqlen, "mi_samples": args.mi_samples,
                     "remove": args.remove, "global_epochs": args.global_epochs,
                     "device_memory_gib": args.device_memory},
        "plan_device_gib": {k: round(v / gib, 2) for k, v in planned.device.items()},
        "plan_device_total_gib": round(sum(planned.device.values()) / gib, 2),
        "plan_host_gib": round(planned.peak_host / gib, 2),
        "tuning": None if planned.tuning is None else {"micro_batch": planned.tuning.micro_batch,
                                                       "checkpointed": planned.tuning.checkpointed,
                                                       "optimizer_on_host": planned.tuning.optimizer_on_host},
        "peak_allocated_gib": round(torch.cuda.max_memory_allocated() / gib, 2) if cuda else None,
        "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / gib, 2) if cuda else None,
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "removed": [s.removed for s in report.steps], "block_passes": report.block_passes,
        "build_seconds": round(build_seconds, 1), "compress_seconds": round(seconds, 1),
        "stage_seconds": {k: round(v, 1) for k, v in stages.items()},
        "heal_losses": report.heal.losses if report.heal else None,
    }


def convert(gguf: str, out: str) -> None:
    from fusegpt.io import load_model

    model, tokenizer = load_model(gguf)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("scale")
    p.add_argument("--device", default="cuda")
    p.add_argument("--device-memory", type=float, default=24.0, help="GiB of the card to plan for (0: this GPU's)")
    p.add_argument("--nsamples", type=int, default=16)
    p.add_argument("--seqlen", type=int, default=2048)
    p.add_argument("--mi-samples", type=int, default=4)
    p.add_argument("--remove", type=int, default=8)
    p.add_argument("--global-epochs", type=int, default=1)
    p.add_argument("--shape", help="JSON overrides of the LLaMA-2-7B shape (a small one to try the script)")
    p.add_argument("--key", help="the result's key in bench/results/gpu-scale.json")
    p = sub.add_parser("convert")
    p.add_argument("gguf")
    p.add_argument("out")
    args = parser.parse_args()
    if args.command == "convert":
        convert(args.gguf, args.out)
        return
    args.device_memory = args.device_memory or None
    measured = scale(args)
    print(json.dumps(measured, indent=2), flush=True)
    result = RESULTS / "gpu-scale.json"
    results = json.loads(result.read_text()) if result.exists() else {}
    key = args.key or f"7b bf16 plan{args.device_memory or 'free'} n{args.nsamples}"
    results[key] = measured
    result.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    sys.exit(main())

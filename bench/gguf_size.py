"""The file users run: a compressed model's GGUF at the input's size, against its own F16, in
llama.cpp (issue 30). Each way of rounding the tuned tensors is written from a compressed cell's
HF output and the GGUF input it came from, then measured by llama.cpp's own logits: perplexity on
the first 16 windows of 512 tokens of the dev text (WikiText-2 valid's held-out part; choosing) and
of WikiText-2 test (reporting), and, with --speed, prefill (512 tokens) / decode (64) tokens/s of
the dense input, F16, Q8_0, the input's type and the default, in turn in each of 5 rounds, medians
(bench/gguf_speed.py; 2 threads; the other benchmarks paused meanwhile).

    python bench/gguf_size.py smollm2 [--speed]      # cell recycling-smollm2/fuse-top1024
    python bench/gguf_size.py gemma3 [--speed]       # cell recycling-gemma3/lora-top1024
    python bench/gguf_size.py MODEL --table

Ways of rounding (each pins its `write_gguf` arguments):
- `F16`, `Q8_0`: every tensor at that type (llama.cpp's rules);
- `input-type`: the input's file type by llama.cpp's rules, plain rounding (the default until 2026-12-06);
- `input-type+importance`: the same types, each changed matrix rounded with the importance of its
  input columns (mean squared activation on 32 of the cell's calibration windows);
- `fit`: no larger than the input: the changed matrices raised from their input types where the
  rounding error falls most per byte freed by the removed blocks, plain rounding;
- `fit+importance`: the same, weighted by the importance (today's default).
Results (cached per variant): bench/results/gguf-size-<model>.json."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from common import MODELS, OUTPUTS, RESULTS, TEXT, alone, gemma3_path, require_assets, splits
from gguf_speed import llama_perplexity, speed

CELLS = {"smollm2": "recycling-smollm2/fuse-top1024", "gemma3": "recycling-gemma3/lora-top1024"}
INPUT_TYPE = {"smollm2": "Q4_1", "gemma3": "Q4_K_M"}
WINDOWS, SEQLEN = 16, 512
VARIANTS = ("F16", "Q8_0", "input-type", "input-type+importance", "fit", "fit+importance")


def _windows(tokenizer, text: Path):
    from fusegpt.data import perplexity_ids

    return perplexity_ids(tokenizer, str(text), SEQLEN)[: WINDOWS * SEQLEN].view(WINDOWS, SEQLEN).numpy()


def _importance(model, tokenizer, report: dict) -> dict:
    import torch

    from fusegpt.data import calibration_windows
    from fusegpt.export.gguf_rounding import IMPORTANCE_WINDOWS, activation_importance
    from fusegpt.models import adapter_for

    config = report["config"]
    windows = calibration_windows(tokenizer, config["calib"], config["nsamples"], report["seqlen"], config["seed"])
    return activation_importance(model, list(adapter_for(model).blocks(model)), windows[:IMPORTANCE_WINDOWS],
                                 8, torch.device("cpu"))


def write(variant: str, model, report: dict, source: Path, path: Path, importance: dict, input_type: str):
    from fusegpt.export.gguf_out import write_gguf

    gguf_type = {"F16": "F16", "Q8_0": "Q8_0", "input-type": input_type, "input-type+importance": input_type}.get(variant)
    return write_gguf(model, report["kept"], source, path, gguf_type,
                      importance=importance if variant.endswith("+importance") else None)


def table(result: dict) -> str:
    rows = ["| file | MiB | PPL dev, llama.cpp | PPL test, llama.cpp | prefill tok/s | decode tok/s |",
            "| --- | --- | --- | --- | --- | --- |"]
    base, speeds = result["files"].get("compressed F16", {}), result.get("tokens_per_s", {})
    for name, cell in result["files"].items():
        def shown(split: str) -> str:
            value = cell.get(split)
            if value is None:
                return "-"
            if name.startswith("compressed") and base.get(split):
                return f"{value:.3f} ({100 * (value / base[split] - 1):+.1f}%)"
            return f"{value:.3f}"
        timed = speeds.get(name, {})
        rows.append(f"| {name} | {cell['bytes'] / 2**20:.1f} | {shown('dev')} | {shown('test')} | "
                    f"{timed.get('prefill', '-')} | {timed.get('decode', '-')} |")
    return "\n".join(rows)


def main() -> None:
    args = sys.argv[1:]
    if not args or args[0] not in CELLS:
        sys.exit(__doc__)
    model_name = args[0]
    out = RESULTS / f"gguf-size-{model_name}.json"
    result = json.loads(out.read_text()) if out.exists() else {"cell": CELLS[model_name], "files": {}}
    if "--table" in args:
        print(table(result))
        return
    require_assets()
    from fusegpt import load_model

    folder = OUTPUTS / CELLS[model_name]
    report = json.loads((folder / "fusegpt_report.json").read_text())
    source = gemma3_path() if model_name == "gemma3" else MODELS["smollm2"]
    model, tokenizer = load_model(str(folder))
    texts = {"dev": splits()["wiki-dev"], "test": TEXT / "wikitext-2-raw/wiki.test.raw"}
    windows = {split: _windows(tokenizer, text) for split, text in texts.items()}
    result.update(kept=report["kept"], windows=WINDOWS, seqlen=SEQLEN)
    importance = None
    paths = {"dense input": source}
    for variant in VARIANTS:
        path = OUTPUTS / "gguf-size" / model_name / f"{variant}.gguf"
        paths[f"compressed {variant}"] = path
        if not path.exists():
            if importance is None and variant.endswith("+importance"):
                importance = _importance(model, tokenizer, report)
            path.parent.mkdir(parents=True, exist_ok=True)
            exported = write(variant, model, report, source, path, importance, INPUT_TYPE[model_name])
            print(variant, exported.tensor_types, flush=True)
    for name, path in paths.items():
        cell = result["files"].setdefault(name, {})
        cell["bytes"] = path.stat().st_size
        for split, ids in windows.items():
            if split not in cell:
                cell[split] = llama_perplexity(path, ids)
                out.write_text(json.dumps(result, indent=2) + "\n")
                print(name, split, cell[split], flush=True)
    if "--speed" in args:  # the files of the table, in turn within each round
        timed = ("dense input", "compressed F16", "compressed Q8_0", "compressed input-type", "compressed fit+importance")
        with alone():  # the other benchmarks paused
            result["tokens_per_s"] = speed({name: paths[name] for name in timed}, windows["test"][0].tolist())
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))


if __name__ == "__main__":
    main()

"""Issue #7's acceptance check on the real 4-bit asset: `fusegpt eval` perplexity on the first 64
windows of 512 tokens of WikiText-2 test against a direct transformers computation.

    python bench/gguf_check.py     # ~5 minutes on 2 cores; prints both and their relative difference
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ASSETS = Path(__file__).resolve().parents[1].parent / "shared" / "assets"
GGUF = ASSETS / "models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"
TEXT = ASSETS / "text/wikitext-2-raw/wiki.test.raw"
WINDOWS, SEQLEN = 64, 512


def main() -> None:
    if not GGUF.exists():
        sys.exit(f"needs ../shared/assets beside the repository ({GGUF} not found)")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "eval.json"
        subprocess.run([sys.executable, "-m", "fusegpt", "eval", str(GGUF), "--ppl", str(TEXT), "--seqlen", str(SEQLEN),
                        "--ppl-windows", str(WINDOWS), "--json", str(out), "--quiet"], check=True)
        ours = json.loads(out.read_text())["ppl"][str(TEXT)]
    tokenizer = AutoTokenizer.from_pretrained(GGUF.parent, gguf_file=GGUF.name)
    model = AutoModelForCausalLM.from_pretrained(GGUF.parent, gguf_file=GGUF.name, dtype=torch.float32).eval()
    rows = [line if line.strip() else "" for line in TEXT.read_text(encoding="utf-8").splitlines(keepends=True)]
    ids = tokenizer("\n\n".join(rows), return_tensors="pt").input_ids[0][: WINDOWS * SEQLEN].view(WINDOWS, SEQLEN)
    total = 0.0
    with torch.no_grad():
        for batch in ids.split(8):
            total += model(input_ids=batch, labels=batch).loss.item() * batch[:, 1:].numel()
    direct = math.exp(total / ids[:, 1:].numel())
    print(f"fusegpt eval {ours:.4f}  direct transformers {direct:.4f}  relative difference {abs(ours - direct) / direct:.1e}")


if __name__ == "__main__":
    main()

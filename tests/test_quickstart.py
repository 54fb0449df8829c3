"""The README: its first command runs on a machine without ../shared (a copy of the repository with
nothing beside it runs scripts/quickstart.py, the model from the package registry, self-calibration,
to its end, and writes a shallower model that plain transformers loads), and its results table is
what the result files say."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def readme_first_command() -> str:
    """The job half of the README's first command (the other half is scripts/setup.sh)."""
    block = re.search(r"```bash\n(bash scripts/setup\.sh && .*?)\n```", (ROOT / "README.md").read_text()).group(1)
    return block.split("&&", 1)[1].strip()


@pytest.mark.slow
def test_the_readmes_first_command_runs_in_a_copy_without_shared(tmp_path):
    command = readme_first_command()
    assert command == ".venv/bin/python scripts/quickstart.py"
    copy = tmp_path / "alone" / "fusegpt"  # no ../shared beside it
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns(".venv", ".git", "runs", "bench"), symlinks=True)
    (copy / ".venv").symlink_to(ROOT / ".venv")
    assert not (copy.parent / "shared").exists()
    done = subprocess.run(command.split(), cwd=copy, capture_output=True, text=True,
                          env={**os.environ, "TQDM_DISABLE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    out = copy / "runs" / "quickstart"
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 24  # 20% of 30 blocks
    report = json.loads((out / "fusegpt_report.json").read_text())
    losses = report["heal"]["losses"]
    assert losses[-1] < losses[0]
    ggufs = list(out.glob("*.gguf"))
    # no larger than the input: the 6 removed blocks' bytes (~14% of it) spent on more exact types for
    # the tuned tensors (at the input's Q4_1 it would be ~0.86 of its size, at F16 2.5x)
    assert len(ggufs) == 1 and 0.97 < ggufs[0].stat().st_size / 98_362_432 <= 1
    said = re.findall(r"\(['\"]The capital of France is['\"]\): (.+)", done.stdout)
    assert len(said) == 2 and "Paris" in said[0]  # the dense model's answer, then the compressed one's
    print(done.stdout[-2000:], file=sys.stderr)


def test_the_readmes_results_table_is_what_the_result_files_say():
    """Every number of README.md's results table comes from bench/results through bench/readme.py."""
    done = subprocess.run([sys.executable, "bench/readme.py", "--check"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    table = (ROOT / "README.md").read_text().split("<!-- results -->")[1].split("<!-- /results -->")[0]
    assert table.count("`bench/results/") >= 3

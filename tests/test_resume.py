"""Runs that survive crashes: a killed `compress` resumes from its last finished step and ends
with exactly the weights of an uninterrupted run; Ctrl-C keeps the checkpoint and writes no output."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fusegpt.cli import main
from fusegpt.paths import STATE, checkpoint_folder
from test_cli import _compress, _one_line_error

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _args(model_dir, out, text_file) -> list[str]:
    # a rescoring limit that binds (2 of the 3 blocks left after the first step): what it ranks by
    # must survive the crash too
    return _compress(model_dir, out, text_file, "--num-remove", "3", "--rescore", "1", "--rescore-limit", "2",
                     "--epochs", "40")


def _start(argv: list[str]) -> subprocess.Popen:
    """A compress run that takes Ctrl-C as a terminal would give it: a job started in the
    background (`bash .ci/run &`, nohup) inherits SIGINT ignored, and Python keeps it so."""
    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.Popen([sys.executable, "-m", "fusegpt", *argv], env=env, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _running_after_first_step(model_dir, out: Path, text_file) -> subprocess.Popen:
    """A compress run to `out` that has checkpointed its first step and is still running. On a
    loaded machine a run can end before the test gets to stop it; then it is run again."""
    state = checkpoint_folder(out) / STATE
    for _ in range(3):
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(checkpoint_folder(out), ignore_errors=True)
        process = _start(_args(model_dir, out, text_file))
        deadline = time.monotonic() + 120
        while not state.exists() and process.poll() is None:
            assert time.monotonic() < deadline, "no checkpoint after 120 s"
            time.sleep(0.01)
        if process.poll() is None:
            return process
        _, err = process.communicate()
        assert process.returncode == 0, err
    pytest.fail("three runs ended before they could be stopped")


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_same_weights(tmp_path, model_dir, text_file, capsys):
    reference = tmp_path / "reference"
    assert main(_args(model_dir, reference, text_file)) == 0
    assert not checkpoint_folder(reference).exists()  # a finished run leaves none behind

    out = tmp_path / "out"
    process = _running_after_first_step(model_dir, out, text_file)
    process.kill()
    assert process.wait() == -signal.SIGKILL
    assert not out.exists() and checkpoint_folder(out).exists()
    # every block's margin behind its step's best is kept (the step's winner: 0), for the limit to rank by
    margins = torch.load(checkpoint_folder(out) / STATE, weights_only=False)["margins"]
    assert sorted(margins) == [0, 1, 2, 3] and 0.0 in margins.values()

    assert main(_args(model_dir, out, text_file)) == 2  # without --resume: refused, the checkpoint kept
    assert "pass --resume" in _one_line_error(capsys)
    assert main([*_args(model_dir, out, text_file)[:-2], "--epochs", "39", "--resume"]) == 2  # another run
    assert "tune.epochs was 40, now 39" in _one_line_error(capsys)

    assert main([*_args(model_dir, out, text_file), "--resume"]) == 0
    resumed, expected = load_file(out / "model.safetensors"), load_file(reference / "model.safetensors")
    assert resumed.keys() == expected.keys()
    assert all((resumed[k] == expected[k]).all() for k in expected)
    steps = json.loads((out / "fusegpt_report.json").read_text())["steps"]
    assert [s["removed"] for s in steps] == json.loads((reference / "fusegpt_report.json").read_text())["removed"]
    assert not checkpoint_folder(out).exists()


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_keeps_the_checkpoint_and_writes_no_output(tmp_path, model_dir, text_file, stop):
    out = tmp_path / "out"
    process = _running_after_first_step(model_dir, out, text_file)
    process.send_signal(stop)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "--resume" in lines[0] and str(checkpoint_folder(out)) in lines[0]
    assert not out.exists() and (checkpoint_folder(out) / STATE).exists()
    process = _start(_args(model_dir, out, text_file))
    process.communicate(timeout=120)
    assert process.returncode == 2  # a rerun without --resume does not destroy the kept work

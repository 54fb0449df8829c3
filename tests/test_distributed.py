"""`torchrun --nproc-per-node 2` on the CPU (gloo): the same blocks and, for a loss that is a
mean over windows, the same merged weights as one process; one output, written by rank 0."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file


def _args(model_dir, text_file, out):
    return ["compress", str(model_dir), "--out", str(out), "--calib", str(text_file), "--nsamples", "8", "--seqlen",
            "32", "--mi-samples", "4", "--num-remove", "2", "--group-size", "3", "--rank", "4", "--lora-rank", "2",
            "--epochs", "2", "--global-epochs", "1", "--batch-size", "4", "--loss", "mse", "--quiet", "--device", "cpu",
            "--tune-dtype", "float32"]  # equal across ranks up to fp32's rounding (bf16 rounds each rank's half)


@pytest.mark.slow
def test_two_ranks_remove_the_same_blocks_and_merge_the_same_weights(tmp_path, model_dir, text_file):
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun is not installed beside this Python")
    single = subprocess.run([sys.executable, "-m", "fusegpt", *_args(model_dir, text_file, tmp_path / "one")],
                            capture_output=True, text=True)
    assert single.returncode == 0, single.stderr
    double = subprocess.run([str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "fusegpt",  # a free port
                             *_args(model_dir, text_file, tmp_path / "two")], capture_output=True, text=True)
    assert double.returncode == 0, double.stderr
    one = json.loads((tmp_path / "one" / "fusegpt_report.json").read_text())
    two = json.loads((tmp_path / "two" / "fusegpt_report.json").read_text())
    assert one["world_size"] == 1 and two["world_size"] == 2
    assert [s["removed"] for s in two["steps"]] == [s["removed"] for s in one["steps"]]
    # 4 blocks scored at step 0 and 3 at step 1: ranks take 2 + 2 and 2 + 1; each rank runs half
    # of every batch of 4 windows, in the local steps and in the final global epoch
    assert two["shares"]["scored blocks"] == [4, 3]
    passes = two["shares"]["tuning block passes"]
    assert one["heal"] is not None and one["block_passes"] > sum(s["block_passes"] for s in one["steps"])
    assert passes[0] == passes[1] and sum(passes) == one["block_passes"]
    a, b = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert (a[name] - b[name]).abs().max() < 1e-5, name
    losses = [[loss for s in report["steps"] + [report["heal"]] for loss in s["losses"]] for report in (one, two)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)


def test_eval_and_compare_refuse_to_run_as_many_ranks(tmp_path, model_dir, text_file, monkeypatch, capsys):
    from fusegpt.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["eval", str(model_dir), "--ppl", str(text_file)]) == 2
    assert "runs in one process" in capsys.readouterr().err
    assert main(["compare", str(model_dir), "--out", str(tmp_path / "cmp"), "--methods", "dense"]) == 2
    assert not (tmp_path / "cmp").exists()

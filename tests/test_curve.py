"""One run, every depth: the order of removal chosen once and shared by every depth, each depth a
complete output that plain transformers loads, a curve whose numbers are the per-depth reports',
and an interrupted curve that resumes from its finished depths."""
from __future__ import annotations

import csv
import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from conftest import asset, tiny_llama
from fusegpt.cli import main
from test_cli import _compress, _one_line_error

FLAGS = ["--method", "kl-fuse", "--epochs", "0", "--global-epochs", "1", "--trial-rates", "", "--trial-lrs", "", "--no-gguf"]


@pytest.fixture
def six_blocks(tmp_path, tokenizer):
    path = tmp_path / "tiny6"
    tiny_llama(depth=6).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _report(folder) -> dict:
    return json.loads((folder / "fusegpt_report.json").read_text())


def test_a_curve_shares_one_order_and_each_depth_is_a_plain_model_its_curve_quotes(tmp_path, six_blocks, text_file,
                                                                                    capsys):
    out = tmp_path / "curve"
    assert main(_compress(six_blocks, out, text_file, "--num-remove", "1,3,2", "--ppl", str(text_file), *FLAGS)) == 0
    assert "| removed |" in capsys.readouterr().out  # the curve's table
    order = _report(out / "remove-3")["steps"]
    order = [step["removed"] for step in order]
    for k in (1, 2, 3):  # each depth removed the first k of the deepest one's order, and reloads as it is
        assert [s["removed"] for s in _report(out / f"remove-{k}")["steps"]] == order[:k]
        model = AutoModelForCausalLM.from_pretrained(out / f"remove-{k}")
        assert model.config.num_hidden_layers == 6 - k
    alone = tmp_path / "alone"  # a separate run of the deepest depth removes the same blocks
    assert main(_compress(six_blocks, alone, text_file, "--num-remove", "3", *FLAGS)) == 0
    assert [s["removed"] for s in _report(alone)["steps"]] == order
    rows = json.loads((out / "curve.json").read_text())["rows"]
    assert [r["removed"] for r in rows] == [0, 1, 2, 3] and rows[0]["ppl"][str(text_file)] > 1
    for row in rows[1:]:
        assert row["blocks"] == order[:row["removed"]]
        assert row["ppl"] == _report(out / row["folder"])["perplexity"]
        assert row["parameters"] < rows[0]["parameters"] and row["speed"]["decode_tokens_per_s"] > 0
    assert [r["parameters"] for r in rows] == sorted((r["parameters"] for r in rows), reverse=True)
    with open(out / "curve.csv") as f:
        table = list(csv.reader(f))
    column = table[0].index(f"PPL {text_file.name}")
    assert [float(line[column]) for line in table[1:]] == pytest.approx([r["ppl"][str(text_file)] for r in rows],
                                                                        abs=1e-3)
    assert (out / "curve.png").stat().st_size > 1000 and (out / "curve.md").exists()
    assert not (tmp_path / ".curve.curve").exists()  # the staging folder became the output


def test_an_interrupted_curve_keeps_its_finished_depths_and_resumes(tmp_path, six_blocks, text_file, capsys,
                                                                    monkeypatch):
    from fusegpt import workflow

    out = tmp_path / "curve"
    args = _compress(six_blocks, out, text_file, "--num-remove", "1,2", *FLAGS)
    real_run, calls = workflow.run, []

    def killed_at_the_second_depth(job):
        calls.append(job.out.name)
        if job.out.name == "remove-2":
            raise KeyboardInterrupt
        return real_run(job)

    monkeypatch.setattr(workflow, "run", killed_at_the_second_depth)
    assert main(args) == 130
    assert "rerun the same command with --resume" in capsys.readouterr().err
    staging = tmp_path / ".curve.curve"
    assert (staging / "remove-1").is_dir() and not out.exists()
    finished = (staging / "remove-1" / "model.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    assert main(args) == 2  # without --resume: refused, naming the way on
    assert "pass --resume" in _one_line_error(capsys)
    monkeypatch.setattr(workflow, "run", real_run)
    assert main(args + ["--resume"]) == 0
    assert (out / "remove-1" / "model.safetensors").stat().st_mtime_ns == finished  # not computed again
    assert [r["removed"] for r in json.loads((out / "curve.json").read_text())["rows"]] == [0, 1, 2]
    capsys.readouterr()
    assert main(args) == 2 and "--overwrite" in _one_line_error(capsys)  # a finished curve is not replaced
    (out / "marker").write_text("old")
    assert main(args + ["--overwrite"]) == 0  # replaced once the new curve is complete, nothing left aside
    assert not (out / "marker").exists() and (out / "curve.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".curve")) == []


def test_a_curve_refuses_a_size_list_that_is_not_numbers(tmp_path, six_blocks, text_file, capsys):
    assert main(_compress(six_blocks, tmp_path / "o", text_file, "--num-remove", "2,x")) == 2
    assert "--num-remove takes a number or comma-separated numbers" in _one_line_error(capsys)
    assert main(_compress(six_blocks, tmp_path / "o", text_file, "--sparsity", "0.2,1.5")) == 2
    assert "--sparsity must be in (0, 1)" in _one_line_error(capsys)
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_a_curve_on_pydoc_removes_what_separate_runs_remove(tmp_path):
    """pydoc-llama-12L, 2, 3 and 4 blocks: each depth's blocks are those of a run of its own."""
    model = asset("models/pydoc-llama-12L")
    calib = asset("text/pydoc/calib.txt")
    flags = ["--calib", str(calib), "--nsamples", "8", "--seqlen", "64", "--mi-samples", "4", "--global-epochs", "1",
             "--no-gguf", "--quiet"]
    assert main(["compress", str(model), "--out", str(tmp_path / "curve"), "--num-remove", "2,3,4", *flags]) == 0
    for k in (2, 3, 4):
        assert main(["compress", str(model), "--out", str(tmp_path / f"alone-{k}"), "--num-remove", str(k), *flags]) == 0
        assert [s["removed"] for s in _report(tmp_path / "curve" / f"remove-{k}")["steps"]] == \
            [s["removed"] for s in _report(tmp_path / f"alone-{k}")["steps"]]


def test_a_curve_of_a_gguf_writes_each_depths_gguf_and_times_it_in_llama_cpp(tmp_path, text_file):
    """From a GGUF input every depth gets its GGUF beside its HF model, and llama.cpp's tokens/s of
    each, measured in turn with the dense input's."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (it is in the test extra)")
    from gguf_writer import write_tiny_gguf

    source = write_tiny_gguf(tmp_path / "tiny.gguf", quantize_ffn=False)
    out = tmp_path / "curve"
    flags = [f for f in FLAGS if f != "--no-gguf"]
    assert main(_compress(source, out, text_file, "--num-remove", "1,2", *flags)) == 0
    rows = json.loads((out / "curve.json").read_text())["rows"]
    assert rows[0]["gguf"] == str(source) and rows[0]["gguf_bytes"] == source.stat().st_size
    for row in rows[1:]:
        assert (out / row["folder"] / row["gguf"]).stat().st_size == row["gguf_bytes"] < rows[0]["gguf_bytes"]
        assert row["gguf_speed"]["decode"] > 0 and row["gguf_speed"]["dense_decode"] > 0
    # the input was dequantised once for every depth: the deepest is a run of its own, weight for weight
    assert not any(p.name == ".dequantised" for p in out.rglob("*"))
    alone = tmp_path / "alone"
    assert main(_compress(source, alone, text_file, "--num-remove", "2", *flags)) == 0
    mine, theirs = load_file(out / "remove-2" / "model.safetensors"), load_file(alone / "model.safetensors")
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)


def test_llama_cpp_perplexity_is_transformers_perplexity_of_an_f32_gguf(tmp_path):
    """The same windows through llama.cpp's logits and through transformers' (F32 weights): the
    same perplexity up to float arithmetic."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (it is in the test extra)")
    import numpy as np
    import torch

    from fusegpt import load_model
    from fusegpt.evaluation.llamacpp import llama_perplexity
    from fusegpt.evaluation.ppl import perplexity
    from gguf_writer import write_tiny_gguf

    source = write_tiny_gguf(tmp_path / "tiny.gguf", quantize_ffn=False)
    model, _ = load_model(str(source))
    windows = np.random.default_rng(0).integers(0, model.config.vocab_size - 1, (3, 24))
    expected = perplexity(model, torch.from_numpy(windows).reshape(-1), 24, progress=False)
    assert llama_perplexity(source, windows) == pytest.approx(expected, rel=1e-4)


def test_the_python_api_draws_the_same_curve(tmp_path, six_blocks, text_file):
    import fusegpt

    rows = fusegpt.compress_curve(six_blocks, fusegpt_config(text_file), [2, 1], tmp_path / "api", progress=False,
                                  speed=False)
    assert [r.removed for r in rows] == [0, 1, 2] and rows[2].blocks[:1] == rows[1].blocks
    assert rows[2].parameters < rows[1].parameters and rows[1].speed == rows[2].speed == {}  # not timed
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "api" / "remove-2").config.num_hidden_layers == 4


def test_a_curves_dry_run_plans_choosing_once_and_each_depths_repair(six_blocks, text_file, capsys):
    """The plan of a curve: the deepest depth's choosing (no tune), then each depth's repair of given
    blocks (no scoring): tuning passes are the sum of the depths' own, scoring is counted once."""
    from dataclasses import replace

    from fusegpt.curve import amounts, plan_curve
    from fusegpt.runtime.plan import plan

    assert main(_compress(six_blocks, "unused", text_file, "--num-remove", "1,2", "--dry-run", *FLAGS)) == 0
    assert "curve of 2 depths (1, 2 blocks removed)" in capsys.readouterr().out
    config = fusegpt_config(text_file)
    plans, _ = plan_curve(str(six_blocks), config, amounts("1,2", int, "--num-remove"))
    given = [plan(str(six_blocks), replace(config, num_remove=None, sparsity=None, blocks=list(range(k)),
                                           selection="given")) for k in (1, 2)]
    assert [p.tuning_passes for p in plans] == [0, *(p.tuning_passes for p in given)] and given[0].tuning_passes > 0
    assert plans[0].forward_passes > given[1].forward_passes  # scoring is the choosing plan's
    assert plans[0].remove == 2


def fusegpt_config(text_file):
    from fusegpt import CompressConfig, FusionConfig, TuneConfig

    return CompressConfig(calib=str(text_file), nsamples=4, seqlen=32, mi_samples=2, sparsity=None,
                          fusion=FusionConfig(group_size=2, rank=4, lora_rank=0),
                          tune=TuneConfig(epochs=0, global_epochs=1, batch_size=2, trial_rates=(), trial_lrs=()))


def test_a_warm_start_goes_on_from_a_shallower_model_with_the_dense_model_as_teacher(tmp_path, six_blocks, text_file):
    """Going on from a repaired model of depth 5 (block 2 removed, tuned) with nothing more to remove:
    without a tune the result computes what that model computes; with one, its first step's loss
    (one batch of all 4 windows, before any update) is the mean KL from the dense model's
    predictions to that model's, computed here with plain transformers on the same windows."""
    import torch
    import torch.nn.functional as F
    from dataclasses import replace

    from fusegpt import load_model, save_compressed
    from fusegpt.pipeline import compress
    from fusegpt.workflow import warm_start

    config = replace(fusegpt_config(text_file), blocks=[2], selection="given")
    dense, tokenizer = load_model(str(six_blocks))
    first = compress(dense, tokenizer, config, progress=False)
    save_compressed(first.model, tokenizer, first.report, tmp_path / "remove-1")
    shallow, _ = load_model(str(tmp_path / "remove-1"))
    runs = {}
    for epochs in (0, 1):
        # float32 products: the first loss is checked against fp32 arithmetic below
        again = replace(config, tune=replace(config.tune, global_epochs=epochs, batch_size=4, compute="float32"))
        dense, tokenizer = load_model(str(six_blocks))
        runs[epochs] = compress(dense, tokenizer, again, progress=False,
                                start=warm_start(tmp_path / "remove-1", "float32"))
    windows = runs[1].windows
    dense, _ = load_model(str(six_blocks))
    with torch.no_grad():
        assert torch.allclose(runs[0].model(windows).logits, shallow(windows).logits, atol=1e-5)
        p = F.log_softmax(dense(windows).logits, -1)
        q = F.log_softmax(shallow(windows).logits, -1)
        kl = (p.exp() * (p - q)).sum(-1).mean().item()
    assert runs[1].report.heal.step_losses[0] == pytest.approx(kl, rel=1e-4) and kl > 1e-4
    assert runs[1].report.removed == [2] and runs[1].report.heal.block_passes == 4 * 5  # 4 windows x 5 blocks


def test_a_warm_curve_tunes_each_later_depth_from_the_one_before(tmp_path, six_blocks, text_file, capsys):
    """--warm-epochs 1 with 2 global epochs and the trial of coefficient rate 0: depth 1 is repaired
    from the dense model (the chosen pair's two epochs on 4 windows, 5 blocks: 40 block passes),
    depth 2 goes on from depth 1 at the rates depth 1 chose, without a trial (1 epoch x 4 x 4 = 16),
    removing the same blocks in the same order; a single run refuses --warm-epochs."""
    flags = [*[f if f != "1" else "2" for f in FLAGS], "--trial-rates", "0"]  # --global-epochs 2
    out = tmp_path / "warm"
    assert main(_compress(six_blocks, out, text_file, "--num-remove", "1,2", "--warm-epochs", "1", *flags)) == 0
    one, two = _report(out / "remove-1"), _report(out / "remove-2")
    assert (one["block_passes"], two["block_passes"]) == (40, 16)
    chosen = next(t for t in one["heal"]["trial"] if t["chosen"])
    assert len(one["heal"]["trial"]) == 2 and two["heal"]["trial"] == []
    assert {k: two["config"]["tune"][k] for k in ("global_coef_lr", "lr")} == {"global_coef_lr": chosen["global_coef_lr"],
                                                                           "lr": chosen["lr"]}
    assert two["config"]["tune"]["trial_rates"] == two["config"]["tune"]["trial_lrs"] == []
    assert one["started_from"] == "" and two["started_from"].endswith("remove-1")
    assert two["steps"][0] == one["steps"][0] and len(two["steps"]) == 2
    rows = json.loads((out / "curve.json").read_text())["rows"]
    assert [r["block_passes"] for r in rows[1:]] == [40, 16]
    assert AutoModelForCausalLM.from_pretrained(out / "remove-2").config.num_hidden_layers == 4
    capsys.readouterr()
    assert main(_compress(six_blocks, tmp_path / "single", text_file, "--num-remove", "2", "--warm-epochs", "1")) == 2
    assert "--warm-epochs goes on from one depth of a curve to the next" in _one_line_error(capsys)


def test_a_curve_with_tasks_scores_every_depth_zero_shot_as_eval_does(tmp_path, six_blocks, text_file):
    """--tasks in a curve: each depth's zero-shot scores in its report and the curve's row, the same
    as `fusegpt eval` of its saved folder gives; the dense row scored too."""
    root = asset("tasks").parent
    out, tasks = tmp_path / "curve", ["--tasks", "piqa", "--limit", "4", "--tasks-dir", str(root / "tasks")]
    assert main(_compress(six_blocks, out, text_file, "--num-remove", "1,2", *tasks, *FLAGS)) == 0
    rows = json.loads((out / "curve.json").read_text())["rows"]
    assert all(row["zero_shot"]["piqa"]["items"] == 4 for row in rows)
    target = tmp_path / "eval.json"
    assert main(["eval", str(out / "remove-2"), *tasks, "--json", str(target), "--quiet"]) == 0
    assert rows[2]["zero_shot"]["piqa"]["value"] == json.loads(target.read_text())["zero_shot"]["piqa"]["value"]
    assert rows[2]["zero_shot"] == _report(out / "remove-2")["zero_shot"]
    with open(out / "curve.csv") as f:
        header = next(csv.reader(f))
    assert "zero-shot piqa" in header and "zero-shot mean" in header

"""The command line: results on disk, and every bad input gives one line, exit 2, nothing written."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from fusegpt.cli import main


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _compress(model_dir, out, text_file, *extra) -> list[str]:
    return ["compress", str(model_dir), "--out", str(out), "--calib", str(text_file), "--nsamples", "4",
            "--seqlen", "32", "--mi-samples", "2", "--epochs", "1", "--batch-size", "2", "--rank", "4",
            "--lora-rank", "0", "--group-size", "2", "--quiet", *extra]


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fusegpt: error: "), err
    return err[0]


def test_compress_writes_a_model_and_leaves_the_input_alone(tmp_path, model_dir, text_file, capsys):
    before = _digest(model_dir)
    out = tmp_path / "out"
    assert main(_compress(model_dir, out, text_file, "--num-remove", "1", "--ppl", str(text_file))) == 0
    assert _digest(model_dir) == before
    assert {"config.json", "model.safetensors", "tokenizer.json", "fusegpt_report.json"} <= {p.name for p in out.iterdir()}
    report = json.loads((out / "fusegpt_report.json").read_text())
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 3
    assert report["config"]["tune"]["epochs"] == 1 and len(report["steps"]) == 1
    assert report["perplexity"][str(text_file)] > 1
    assert "4 -> 3 blocks" in capsys.readouterr().out
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # no staging left behind


def test_eval_prints_and_writes_json(tmp_path, model_dir, text_file, capsys):
    from fusegpt import evaluate_perplexity, load_model

    target = tmp_path / "ppl.json"
    assert main(["eval", str(model_dir), "--ppl", str(text_file), "--seqlen", "32", "--json", str(target),
                 "--quiet"]) == 0
    saved = json.loads(target.read_text())
    model, tokenizer = load_model(str(model_dir))
    expected = evaluate_perplexity(model, tokenizer, [str(text_file)], 32, progress=False)[str(text_file)]
    assert saved == {"model": str(model_dir), "seqlen": 32, "ppl": {str(text_file): pytest.approx(expected)},
                     "ppl_windows": None}
    assert f"{expected:.3f}" in capsys.readouterr().out
    # the first 3 windows only, recorded as such
    assert main(["eval", str(model_dir), "--ppl", str(text_file), "--seqlen", "32", "--ppl-windows", "3",
                 "--json", str(target), "--quiet"]) == 0
    from fusegpt.data import perplexity_ids
    from fusegpt.evaluation import perplexity
    ids = perplexity_ids(tokenizer, str(text_file), 32)
    assert json.loads(target.read_text())["ppl"][str(text_file)] == pytest.approx(
        perplexity(model, ids[: 3 * 32], 32, progress=False))
    assert json.loads(target.read_text())["ppl_windows"] == 3


@pytest.mark.parametrize("extra, message", [
    (["--sparsity", "1.5"], "--sparsity must be in (0, 1)"),
    (["--sparsity", "0"], "--sparsity must be in (0, 1)"),
    (["--num-remove", "4"], "cannot remove 4 of 4 blocks"),
    (["--loss", "kl_batch", "--batch-size", "1"], "needs --batch-size of at least 2"),
    (["--nsamples", "0"], "--nsamples must be at least 1"),
    (["--coef-lr", "0"], "--coef-lr must be positive"),
])
def test_bad_settings_fail_before_writing(tmp_path, model_dir, text_file, capsys, extra, message):
    out = tmp_path / "out"
    assert main(_compress(model_dir, out, text_file, *extra)) == 2
    assert message in _one_line_error(capsys)
    assert not out.exists()


def test_missing_model_and_missing_calibration(tmp_path, model_dir, text_file, capsys):
    assert main(_compress(tmp_path / "nope", tmp_path / "out", text_file)) == 2
    assert "model folder" in _one_line_error(capsys) and not (tmp_path / "out").exists()
    assert main(_compress(model_dir, tmp_path / "out", tmp_path / "missing.txt")) == 2
    assert "neither a file nor" in _one_line_error(capsys) and not (tmp_path / "out").exists()
    short = tmp_path / "short.txt"
    short.write_text("too short")
    assert main(_compress(model_dir, tmp_path / "out", short)) == 2
    assert "fewer than one window" in _one_line_error(capsys) and not (tmp_path / "out").exists()


def test_missing_parent_folders_are_created_only_on_success(tmp_path, model_dir, text_file, capsys):
    assert main(_compress(tmp_path / "missing-model", tmp_path / "runs" / "a" / "out", text_file)) == 2
    assert not (tmp_path / "runs").exists()  # a failed run writes nothing, not even the parents
    assert main(_compress(model_dir, tmp_path / "runs" / "a" / "out", text_file, "--num-remove", "1")) == 0
    assert (tmp_path / "runs" / "a" / "out" / "model.safetensors").exists()


def test_existing_output_is_refused_unless_overwrite(tmp_path, model_dir, text_file, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(_compress(model_dir, out, text_file, "--num-remove", "1")) == 2
    assert "not empty" in _one_line_error(capsys)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert main(_compress(model_dir, out, text_file, "--num-remove", "1", "--overwrite")) == 0
    assert (out / "model.safetensors").exists() and not (out / "keep.txt").exists()


def test_output_that_cannot_be_written(tmp_path, model_dir, text_file, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(_compress(model_dir, blocker / "out", text_file)) == 2
    assert "is a file, not a folder" in _one_line_error(capsys)
    assert main(_compress(model_dir, model_dir, text_file, "--overwrite")) == 2
    assert "input model folder" in _one_line_error(capsys)
    if Path("/proc/self").is_dir():  # a read-only file system (even root cannot write there)
        assert main(_compress(model_dir, "/proc/fusegpt-out", text_file)) == 2
        assert "cannot write to '/proc'" in _one_line_error(capsys)


def test_unsupported_architecture(tmp_path, text_file, tokenizer, capsys):
    from transformers import BertConfig, BertForMaskedLM

    path = tmp_path / "bert"
    BertForMaskedLM(BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=32)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    capsys.readouterr()
    assert main(_compress(path, tmp_path / "out", text_file)) == 2
    assert "unsupported architecture 'bert'" in _one_line_error(capsys)


def test_help_documents_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["compress", "--help"])
    text = capsys.readouterr().out
    for option in ["--sparsity", "--group-size", "--rank", "--coef", "--loss", "--coef-lr", "--mi-samples", "--dtype"]:
        assert option in text
    assert "default: 0.25" in text and "default: 7" in text


def test_preset_paper_is_the_authors_settings_and_flags_override_it(tmp_path, model_dir, text_file):
    args = ["compress", str(model_dir), "--calib", str(text_file), "--num-remove", "1", "--quiet",
            "--nsamples", "4", "--seqlen", "32", "--mi-samples", "2", "--group-size", "2", "--rank", "4",
            "--lora-rank", "2", "--batch-size", "2"]
    assert main([*args, "--out", str(tmp_path / "paper"), "--preset", "paper", "--epochs", "1"]) == 0
    paper = json.loads((tmp_path / "paper" / "fusegpt_report.json").read_text())
    tune = paper["config"]["tune"]
    assert paper["config"]["method"] == "fusegpt" and paper["steps"][0]["criterion"] == "macro_influence"
    memory = {k: tune.pop(k) for k in ("micro_batch", "checkpoint_activations", "optimizer_on_host")}
    assert tune == {"loss": "kl_batch", "epochs": 1, "batch_size": 2, "coef_lr": 1e-3, "lr": 9.65e-6,
                    "betas": [0.9, 0.95], "teacher": "group", "global_epochs": 0, "global_coef_lr": None,
                    "coef_decay": 0.0, "distill": "hidden", "distill_top_k": 0, "distill_stride": 1,
                    "trial_rates": [], "trial_lrs": [], "trial_share": 0.25, "compute": "float32", "warmup": 0.0,
                    "heal_epochs": None}
    # how the tune held memory, as the plan chose it for this small run on the CPU: the plain way
    assert memory == {"micro_batch": None, "checkpoint_activations": False, "optimizer_on_host": False}
    assert main([*args, "--out", str(tmp_path / "ours"), "--epochs", "1"]) == 0
    ours = json.loads((tmp_path / "ours" / "fusegpt_report.json").read_text())
    from fusegpt import TuneConfig
    assert ours["config"]["method"] == "kl-fuse" and ours["steps"][0]["criterion"] == "output_divergence"
    tune = ours["config"]["tune"]
    assert tune["loss"] == TuneConfig().loss and tune["coef_lr"] == TuneConfig().coef_lr
    # --method overrides the preset's, as every other flag does
    assert main([*args, "--out", str(tmp_path / "mi"), "--preset", "paper", "--method", "remove"]) == 0
    assert json.loads((tmp_path / "mi" / "fusegpt_report.json").read_text())["config"]["method"] == "remove"


def test_help_and_argument_errors_do_not_import_the_heavy_libraries():
    """--help and a bad argument answer at once: torch, transformers, lm-eval and matplotlib load
    only when a run needs them."""
    import subprocess
    import sys

    probe = ("import sys\nfrom fusegpt.cli import main\n"
             "for argv in (['--help'], ['compress', '--help'], ['compress', 'm', '--out', 'o', '--sparsity', '2']):\n"
             "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
             "heavy = [m for m in ('torch', 'transformers', 'lm_eval', 'matplotlib') if m in sys.modules]\n"
             "print('heavy:', heavy)\n")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert "heavy: []" in result.stdout


def test_a_missing_evaluation_source_is_refused_before_any_work(tmp_path, model_dir, text_file, capsys,
                                                               monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr("fusegpt.io.load_model", never)
    out = tmp_path / "out"
    assert main(_compress(model_dir, out, text_file, "--ppl", str(tmp_path / "nonexistent.txt"))) == 2
    assert "--ppl source" in _one_line_error(capsys) and not out.exists()
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert main(_compress(model_dir, out, empty)) == 2
    line = _one_line_error(capsys)
    assert "--calib file" in line and "is empty" in line


def test_one_data_folder_serves_text_and_tasks(tmp_path, model_dir, capsys):
    """--data-dir laid out like ../shared/assets finds wikitext2 under text/ and piqa under tasks/."""
    from conftest import asset

    root = asset("tasks").parent
    target = tmp_path / "eval.json"
    assert main(["eval", str(model_dir), "--ppl", "wikitext2", "--seqlen", "32", "--ppl-windows", "2",
                 "--tasks", "piqa", "--limit", "4", "--data-dir", str(root), "--json", str(target), "--quiet"]) == 0
    saved = json.loads(target.read_text())
    assert saved["ppl"]["wikitext2"] > 1 and saved["zero_shot"]["piqa"]["items"] == 4
    capsys.readouterr()
    assert main(["eval", str(model_dir), "--tasks", "piqa", "--limit", "4", "--data-dir", str(tmp_path),
                 "--quiet"]) == 2
    assert "docs/DATA.md" in _one_line_error(capsys)


def test_a_full_disk_and_a_failed_final_rename_keep_the_previous_result(tmp_path, model_dir, text_file, capsys,
                                                                        monkeypatch):
    import errno
    import os

    from transformers import PreTrainedModel

    out = tmp_path / "out"
    assert main(_compress(model_dir, out, text_file, "--num-remove", "1")) == 0
    before = _digest(out)

    def full_disk(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patched:
        patched.setattr(PreTrainedModel, "save_pretrained", full_disk)
        assert main(_compress(model_dir, out, text_file, "--num-remove", "2", "--overwrite")) == 2
    line = _one_line_error(capsys)
    assert "disk full" in line and "rerun with --resume" in line and _digest(out) == before

    real_replace = os.replace

    def failing_final_rename(src, dst):
        """The new result cannot be put in place after the old one was moved aside."""
        if Path(dst) == out.resolve() and ".partial-" in Path(src).name and not Path(src).name.endswith("-previous"):
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real_replace(src, dst)

    with monkeypatch.context() as patched:
        patched.setattr(os, "replace", failing_final_rename)
        assert main(_compress(model_dir, out, text_file, "--num-remove", "2", "--overwrite", "--resume")) == 2
    assert "previous result is untouched" in _one_line_error(capsys)
    assert _digest(out) == before
    # no staging left behind; the checkpoint stays for the --resume the message asks for
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.")] == [".out.checkpoint"]


def test_an_internal_error_exits_1_in_one_line_and_debug_shows_it(tmp_path, model_dir, text_file, capsys,
                                                                 monkeypatch):
    import fusegpt.pipeline

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(fusegpt.pipeline, "compress", broken)
    out = tmp_path / "out"
    assert main(_compress(model_dir, out, text_file, "--num-remove", "1")) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "internal error: ZeroDivisionError: a bug" in err[0] and not out.exists()
    with pytest.raises(ZeroDivisionError):
        main(_compress(model_dir, out, text_file, "--num-remove", "1", "--debug"))


@pytest.mark.parametrize("damaged", ["model.safetensors", "tokenizer.json", "config.json"])
def test_a_truncated_weights_tokenizer_or_config_file_gets_one_line(tmp_path, model_dir, text_file, capsys, damaged):
    target = model_dir / damaged
    target.write_bytes(target.read_bytes()[:40 if damaged.endswith(".json") else 1000])
    before = _digest(model_dir)
    out = tmp_path / "out"
    assert main(_compress(model_dir, out, text_file, "--num-remove", "1")) == 2
    assert "could not load model" in _one_line_error(capsys) and not out.exists()
    assert _digest(model_dir) == before


def test_a_failed_evaluation_keeps_the_saved_model_and_says_where(tmp_path, model_dir, text_file, capsys):
    short = tmp_path / "short.txt"
    short.write_text("too short for one window")
    out = tmp_path / "out"
    assert main(_compress(model_dir, out, text_file, "--num-remove", "1", "--ppl", str(short))) == 2
    line = _one_line_error(capsys)
    assert "fewer than one window" in line and f"the compressed model is saved in {out}" in line
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 3

"""`compare`: the method x sparsity grid, its files, and reuse of finished cells after a crash."""
from __future__ import annotations

import csv
import json

import pytest

from fusegpt import CompressConfig, FusionConfig, TuneConfig
from fusegpt.compare import compare, run_cell


def _config(text_file) -> CompressConfig:
    return CompressConfig(calib=str(text_file), nsamples=4, seqlen=32, mi_samples=2,
                          fusion=FusionConfig(group_size=2, rank=4, lora_rank=0),
                          tune=TuneConfig(epochs=1, global_epochs=1, batch_size=2, loss="mse"))


def test_grid_files_and_resume(tmp_path, model_dir, text_file):
    out = tmp_path / "cmp"
    calls = []

    def counting(*args, **kwargs):
        calls.append(args[1:3])
        return run_cell(*args, **kwargs)

    cells = compare(model_dir, ["dense", "remove", "fusegpt"], [0.25, 0.5], _config(text_file), out,
                    ppl=[str(text_file)], progress=False, run=counting, speed=False)
    assert calls == [("dense", 0.0), ("remove", 0.25), ("remove", 0.5), ("fusegpt", 0.25), ("fusegpt", 0.5)]
    by_cell = {(c.method, c.sparsity): c for c in cells}
    assert len(by_cell[("remove", 0.25)].removed) == 1 and len(by_cell[("fusegpt", 0.5)].removed) == 2
    dense_ppl = by_cell[("dense", 0.0)].ppl[str(text_file)]
    assert all(c.ppl[str(text_file)] > 0 for c in cells) and dense_ppl > 1

    rows = list(csv.reader(open(out / "comparison.csv")))
    assert rows[0][:3] == ["method", "sparsity", "removed blocks"] and len(rows) == 6
    assert float(rows[1][3]) == pytest.approx(dense_ppl, abs=1e-3)
    saved = json.loads((out / "comparison.json").read_text())
    assert [c["method"] for c in saved["cells"]] == ["dense", "remove", "remove", "fusegpt", "fusegpt"]
    assert "| remove | 0.5 |" in (out / "comparison.md").read_text()
    assert all((out / name).stat().st_size > 0 for name in ("ppl_vs_sparsity.png", "block_scores.png", "methods.png"))

    # a rerun (after a crash, say) computes nothing that is already there...
    (out / "cells" / "fusegpt@0.5.json").unlink()
    calls.clear()
    again = compare(model_dir, ["dense", "remove", "fusegpt"], [0.25, 0.5], _config(text_file), out,
                    ppl=[str(text_file)], progress=False, run=counting, speed=False)
    assert calls == [("fusegpt", 0.5)]
    assert [c.ppl for c in again[:4]] == [c.ppl for c in cells[:4]]
    # ...unless settings that shaped a cell changed: tuning shapes fusegpt's cells only
    calls.clear()
    changed = _config(text_file)
    changed.tune.epochs = 2
    compare(model_dir, ["dense", "remove", "fusegpt"], [0.25], changed, out, ppl=[str(text_file)], progress=False,
            run=counting, speed=False)
    assert calls == [("fusegpt", 0.25)]
    calls.clear()
    compare(model_dir, ["dense", "remove"], [0.25], changed, out, ppl=[str(text_file)], progress=False,
            run=counting, ppl_windows=3, speed=False)
    assert calls == [("dense", 0.0), ("remove", 0.25)]


def test_compare_command(tmp_path, model_dir, text_file, capsys):
    from fusegpt.cli import main

    out = tmp_path / "cmp"
    args = ["compare", str(model_dir), "--out", str(out), "--methods", "dense,last,shortgpt", "--sparsity", "0.25,0.5",
            "--ppl", str(text_file), "--calib", str(text_file), "--nsamples", "4", "--seqlen", "32",
            "--mi-samples", "2", "--quiet"]
    assert main(args) == 0
    saved = json.loads((out / "comparison.json").read_text())
    removed = {(c["method"], c["sparsity"]): c["removed"] for c in saved["cells"]}
    assert removed[("last", 0.25)] == [2] and removed[("last", 0.5)] == [1, 2]
    assert "| shortgpt | 0.5 |" in capsys.readouterr().out
    assert main(args[:6] + ["--methods", "dense,bogus"] + args[8:]) == 2
    assert "unknown method(s) bogus" in capsys.readouterr().err
    assert main(args[:8] + ["--sparsity", "0.25,1.5"] + args[10:]) == 2
    assert "--sparsity must be in (0, 1)" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "given"), "--selection", "given", "--blocks", "1"]) == 2
    assert "are for compress" in capsys.readouterr().err and not (tmp_path / "given").exists()
    assert main([*args, "--out", str(tmp_path / "warm"), "--warm-epochs", "1"]) == 2
    assert "add --curve" in capsys.readouterr().err and not (tmp_path / "warm").exists()


def test_a_cell_reports_cost_size_and_speed(model_dir, text_file):
    from fusegpt import load_model

    cell = run_cell(model_dir, "fusegpt", 0.5, _config(text_file), [], [], None, None, False)
    dense, _ = load_model(model_dir)
    per_block = sum(p.numel() for p in dense.model.layers[0].parameters())
    assert cell.parameters == sum(p.numel() for p in dense.parameters()) - 2 * per_block
    # 2 steps x 1 epoch x 4 windows x G = 2 neighbours, then 1 global epoch x 4 windows x 2 kept blocks
    assert cell.block_passes == 2 * 1 * 4 * 2 + 1 * 4 * 2
    assert cell.peak_rss_gib > 0.1 and 0 < cell.tune_seconds < cell.seconds
    assert set(cell.speed) == {"prefill_tokens_per_s", "decode_tokens_per_s", "dense_prefill_tokens_per_s",
                               "dense_decode_tokens_per_s"}
    assert all(v > 0 for v in cell.speed.values())


def test_an_option_added_later_leaves_cached_cells_valid_at_its_earlier_value():
    """A cell's fingerprint leaves out an option at the value it declares runs had before it
    (`earlier`), and sees it at any other; the paper's preset (no lazy rescoring) has one too."""
    from dataclasses import replace

    from fusegpt.compare import fingerprint
    from fusegpt.presets import preset
    from fusegpt.options import unchanged_since

    config = CompressConfig()
    before = replace(config, tune=replace(config.tune, warmup=0.0, distill="hidden"))
    assert {"tune.warmup", "tune.distill"} <= set(unchanged_since(before))
    assert "tune.warmup" not in unchanged_since(replace(config, tune=replace(config.tune, warmup=0.1)))

    def key(c: CompressConfig, method: str = "kl-fuse") -> str:
        return fingerprint(c, method, ["wikitext2"], [], None, 4)

    warmed = replace(before, tune=replace(before.tune, warmup=0.1))
    assert key(warmed) != key(before) and key(warmed, "mi") == key(before, "mi")  # no tune, no difference
    paper = preset("paper")
    assert paper.rescore == 0 and key(paper, "fusegpt") != key(replace(paper, rescore=4), "fusegpt")


def test_compared_curves_run_each_method_once_and_quote_its_depths(tmp_path, model_dir, text_file):
    """`curve`: a method's sparsities come from one curve run (its order chosen once, to the deepest),
    its cells are that curve's rows, and a rerun computes nothing; a warm start needs it."""
    from dataclasses import replace

    from fusegpt.compare import curve_cells
    from fusegpt.errors import FuseGPTError

    out, calls = tmp_path / "cmp", []

    def counting(*args, **kwargs):
        calls.append((args[1], tuple(args[2])))
        return curve_cells(*args, **kwargs)

    config = _config(text_file)
    config.tune.trial_rates = config.tune.trial_lrs = ()
    cells = compare(model_dir, ["dense", "kl-fuse"], [0.5, 0.25], config, out, ppl=[str(text_file)], progress=False,
                    speed=False, curve=True, run_curve=counting)
    assert calls == [("kl-fuse", (0.5, 0.25))]
    by_cell = {(c.method, c.sparsity): c for c in cells}
    shallow, deep = by_cell[("kl-fuse", 0.25)], by_cell[("kl-fuse", 0.5)]
    assert len(deep.removed) == 2 and shallow.removed == deep.removed[:1]
    rows = {r["removed"]: r for r in json.loads((out / "curves" / "kl-fuse" / "curve.json").read_text())["rows"]}
    for cell in (shallow, deep):
        row = rows[len(cell.removed)]
        assert cell.ppl == row["ppl"] and cell.block_passes == row["block_passes"] > 0
        assert cell.parameters == row["parameters"] and cell.criterion == "output_divergence"
        assert set(cell.scores) == {"0", "1", "2", "3"}
    assert deep.parameters < shallow.parameters < by_cell[("dense", 0.0)].parameters
    assert (out / "ppl_vs_sparsity.png").stat().st_size > 0

    calls.clear()
    again = compare(model_dir, ["dense", "kl-fuse"], [0.5, 0.25], config, out, ppl=[str(text_file)], progress=False,
                    speed=False, curve=True, run_curve=counting)
    assert calls == [] and [c.ppl for c in again] == [c.ppl for c in cells]
    with pytest.raises(FuseGPTError, match="add --curve"):
        compare(model_dir, ["kl-fuse"], [0.25], replace(config, warm_epochs=1), tmp_path / "warm", progress=False)

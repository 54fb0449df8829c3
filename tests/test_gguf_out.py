"""GGUF out: a compressed GGUF input comes back as a GGUF file with the kept blocks renumbered, its
metadata cut to them, untouched tensors byte for byte, and (with llama.cpp installed) the same
logits in llama.cpp as the HF output in transformers."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fusegpt import load_model
from fusegpt.cli import main
from fusegpt.export.gguf_out import write_gguf
from gguf_writer import DEPTH, PER_BLOCK_KEY, fused_away, write_tiny_gguf
from test_cli import _compress, _one_line_error

gguf = pytest.importorskip("gguf")
IDS = [261, 72, 101, 108, 108, 111, 32, 116, 104, 101, 32, 99, 97, 116]  # BOS then "Hello the cat" as bytes


@pytest.fixture(scope="module")
def compressed(tmp_path_factory):
    """The tiny Q8_0 GGUF with blocks 4 and 1 removed: fused into their neighbours, then a global tune."""
    folder = tmp_path_factory.mktemp("gguf-out")
    source = write_tiny_gguf(folder / "tiny.Q8_0.gguf")
    return source, fused_away(source, [4, 1]), folder


def _tensors(path) -> dict:
    return {t.name: t for t in gguf.GGUFReader(path).tensors}


def test_the_gguf_keeps_the_metadata_and_renumbers_the_kept_blocks(compressed):
    source, result, folder = compressed
    out = folder / "f32.gguf"
    exported = write_gguf(result.model, result.report.kept, source, out, "F32")
    reader, original = gguf.GGUFReader(out), gguf.GGUFReader(source)
    kept = result.report.kept
    assert kept == [0, 2, 3, 5]
    assert reader.fields["llama.block_count"].contents() == 4
    assert reader.fields[PER_BLOCK_KEY].contents() == [10, 12, 13, 15]  # block i's entry travels with it
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "llama.rope.freq_base", "llama.context_length"):
        assert reader.fields[key].contents() == original.fields[key].contents()
    names = _tensors(out)
    assert sorted({int(n.split(".")[1]) for n in names if n.startswith("blk.")}) == [0, 1, 2, 3]
    per_block = {n.split(".", 2)[2] for n in _tensors(source) if n.startswith("blk.0.")}
    assert all(f"blk.{i}.{rest}" in names for i in range(4) for rest in per_block)
    assert len(names) == len(_tensors(source)) - 2 * len(per_block)
    assert exported.file_type == "F32" and exported.bytes == out.stat().st_size


def test_untouched_tensors_are_copied_byte_for_byte_and_changed_ones_round_trip(compressed):
    """At the input's own type (Q8_0), the embeddings and the final norm (never tuned) are the input's
    bytes; at F32 every tensor, read back by transformers' loader, is the compressed model's."""
    source, result, folder = compressed
    exported = write_gguf(result.model, result.report.kept, source, folder / "same.gguf") \
        if _has_llama_cpp() else None
    original = _tensors(source)
    if exported is not None:
        out = _tensors(folder / "same.gguf")
        for name in ("token_embd.weight", "output_norm.weight"):
            assert out[name].tensor_type == original[name].tensor_type
            assert np.array_equal(np.asarray(out[name].data), np.asarray(original[name].data))
        assert exported.copied == 2 and exported.file_type == "Q8_0"
    write_gguf(result.model, result.report.kept, source, folder / "exact.gguf", "F32")
    reloaded, tokenizer = load_model(str(folder / "exact.gguf"))
    ids = torch.tensor([IDS])
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids).logits, result.model(input_ids=ids).logits)


def _has_llama_cpp() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.parametrize("kind,tolerance", [("F32", 1e-5), ("F16", 5e-3)])
def test_llama_cpp_computes_what_transformers_computes(compressed, kind, tolerance):
    """llama.cpp's logits of the GGUF out against transformers' of the compressed model: equal up to
    the arithmetic (F32) and to half precision's rounding of the weights (F16), relative to the
    largest logit."""
    if not _has_llama_cpp():
        pytest.skip("llama-cpp-python is not installed (it is in the test extra: pip install -e '.[test]')")
    import llama_cpp

    source, result, folder = compressed
    out = folder / f"{kind}.gguf"
    write_gguf(result.model, result.report.kept, source, out, kind)
    # the KV cache at the weights' precision (llama.cpp keeps it in F16 by default, which alone
    # moves the F32 logits by about 1e-4 of the largest)
    cache = llama_cpp.GGML_TYPE_F32 if kind == "F32" else llama_cpp.GGML_TYPE_F16
    llm = llama_cpp.Llama(model_path=str(out), logits_all=True, n_ctx=64, verbose=False, type_k=cache, type_v=cache)
    try:
        llm.eval(IDS)
        ours = np.array(llm.scores[:len(IDS)])
    finally:
        llm.close()
    with torch.no_grad():
        theirs = result.model(input_ids=torch.tensor([IDS])).logits[0].numpy()
    assert np.abs(ours - theirs).max() < tolerance * np.abs(theirs).max()


def test_the_cli_writes_the_gguf_beside_the_model_and_refuses_what_it_cannot_write(tmp_path, text_file, capsys,
                                                                                   monkeypatch):
    (tmp_path / "in").mkdir()
    source = write_tiny_gguf(tmp_path / "in" / "tiny.gguf")
    out = tmp_path / "out"
    assert main(_compress(source, out, text_file, "--num-remove", "1", "--gguf-type", "F16")) == 0
    report = json.loads((out / "fusegpt_report.json").read_text())
    assert report["gguf"]["file"] == str(out / "tiny.gguf") and report["gguf"]["file_type"] == "F16"
    assert gguf.GGUFReader(out / "tiny.gguf").fields["llama.block_count"].contents() == DEPTH - 1
    assert main(_compress(source, tmp_path / "none", text_file, "--num-remove", "1", "--no-gguf")) == 0
    assert not list((tmp_path / "none").glob("*.gguf"))
    capsys.readouterr()
    assert main(_compress(source, tmp_path / "bad", text_file, "--num-remove", "1", "--gguf-type", "Q9_9")) == 2
    assert "not a llama.cpp file type" in _one_line_error(capsys) and not (tmp_path / "bad").exists()
    # no quantiser: asked for, one line and exit 2 before any work; by default, a warning and the HF model
    monkeypatch.setitem(__import__("sys").modules, "llama_cpp", None)
    assert main(_compress(source, tmp_path / "q", text_file, "--num-remove", "1", "--gguf-type", "Q8_0")) == 2
    assert "llama-cpp-python" in _one_line_error(capsys) and not (tmp_path / "q").exists()
    assert main(_compress(source, tmp_path / "d", text_file, "--num-remove", "1")) == 0
    assert "no GGUF will be written" in capsys.readouterr().err and not list((tmp_path / "d").glob("*.gguf"))


def test_a_gguf_that_cannot_be_written_stops_the_run_before_calibration(tmp_path, text_file, capsys, monkeypatch):
    """A loader transform that is no permutation plus an offset (here: it squares the norms) is found by
    the probe on the loaded model, before the calibration windows are even read: one line, exit 2,
    nothing written. With --no-gguf the same run goes on (into the sentinel that stands for calibration)."""
    import fusegpt.export.gguf_out as gguf_out

    (tmp_path / "in").mkdir()
    source = write_tiny_gguf(tmp_path / "in" / "tiny.gguf")
    loader = gguf_out._from_gguf
    monkeypatch.setattr(gguf_out, "_from_gguf", lambda processor, weights, name: (
        loader(processor, weights, name) ** 2 if "norm" in name else loader(processor, weights, name)))

    def calibration(*args, **kwargs):
        raise RuntimeError("calibration reached")

    monkeypatch.setattr("fusegpt.pipeline.calibration_windows", calibration)
    out = tmp_path / "out"
    assert main(_compress(source, out, text_file, "--num-remove", "1")) == 2
    error = _one_line_error(capsys)
    assert "blk.0.attn_norm.weight" in error and "--no-gguf" in error and not out.exists()
    assert main(_compress(source, out, text_file, "--num-remove", "1", "--no-gguf")) == 1
    assert "calibration reached" in capsys.readouterr().err


def test_a_gguf_that_fails_at_the_end_keeps_the_hf_model_and_names_the_way_out(tmp_path, text_file, capsys,
                                                                              monkeypatch):
    (tmp_path / "in").mkdir()
    source = write_tiny_gguf(tmp_path / "in" / "tiny.gguf")

    def fails(*args, **kwargs):
        raise RuntimeError("unforeseen")

    monkeypatch.setattr("fusegpt.export.gguf_out.write_gguf", fails)
    out = tmp_path / "out"
    assert main(_compress(source, out, text_file, "--num-remove", "1")) == 2
    error = _one_line_error(capsys)
    assert "GGUF out failed (RuntimeError: unforeseen)" in error and "--no-gguf" in error and str(out) in error
    assert (out / "config.json").exists() and (out / "model.safetensors").exists()


@pytest.mark.slow
def test_a_real_gemma3_gguf_with_its_norms_tuned_comes_back_computing_what_transformers_computes(tmp_path):
    """Gemma 3 270M (norms up to 300, stored as 1 + w) with block 9 removed and every kept block's
    norms LoRA-healed: its F32 GGUF gives llama.cpp's logits within 2e-3 of the largest of
    transformers' on the saved HF model (measured 7e-4: Gemma's arithmetic, as in the synthetic test)."""
    from conftest import ASSETS, gemma3_gguf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    llama_cpp = pytest.importorskip("llama_cpp", reason="needs llama-cpp-python (the test extra)")
    source = gemma3_gguf()
    out = tmp_path / "out"
    assert main(["compress", str(source), "--out", str(out), "--selection", "given", "--blocks", "9", "--repair", "lora",
                 "--heal-epochs", "1", "--distill", "hidden", "--calib", str(ASSETS / "text/wikitext-2-raw/wiki.valid.raw"),
                 "--nsamples", "4", "--seqlen", "64", "--mi-samples", "2", "--gguf-type", "F32", "--quiet"]) == 0
    written = out / source.name
    assert gguf.GGUFReader(written).fields["gemma3.block_count"].contents() == 17
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = tokenizer("The capital of France is Paris. The quick brown fox jumps over the lazy dog, and then")["input_ids"]
    with torch.no_grad():
        theirs = AutoModelForCausalLM.from_pretrained(out).eval()(input_ids=torch.tensor([ids])).logits[0].numpy()
    llm = llama_cpp.Llama(model_path=str(written), logits_all=True, n_ctx=64, verbose=False,
                          type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)
    try:
        llm.eval(ids)
        ours = np.array(llm.scores[:len(ids)])
    finally:
        llm.close()
    assert np.abs(ours - theirs).max() < 2e-3 * np.abs(theirs).max()
    assert (ours.argmax(-1) == theirs.argmax(-1)).all()

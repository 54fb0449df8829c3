"""GGUF input: a file or a folder holding one loads through transformers (dequantised), compresses
into an ordinary safetensors model, and a damaged or foreign file gets one line and exit 2."""
from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import asset
from fusegpt import CompressConfig, FuseGPTError, FusionConfig, TuneConfig, compress, load_model, save_compressed
from fusegpt.cli import main
from fusegpt.io import model_source
from gguf_writer import write_tiny_gguf
from test_cli import _compress, _digest, _one_line_error

PROMPT = "the cat in the hat sat on the mat"


@pytest.fixture
def gguf_path(tmp_path):
    folder = tmp_path / "gguf-model"
    folder.mkdir()
    return write_tiny_gguf(folder / "tiny.Q8_0.gguf")


def _logits(model, tokenizer) -> torch.Tensor:
    with torch.no_grad():
        return model(**tokenizer(PROMPT, return_tensors="pt")).logits


def test_a_gguf_file_and_its_folder_load_the_same_model(gguf_path):
    model, tokenizer = load_model(str(gguf_path))
    again, _ = load_model(str(gguf_path.parent))
    assert model.config.num_hidden_layers == 6 and not hasattr(model.config, "quantization_config")
    assert torch.equal(_logits(model, tokenizer), _logits(again, tokenizer))
    assert model_source(str(gguf_path.parent)) == {"format": "gguf", "file": str(gguf_path), "architecture": "llama",
                                                   "quantization": "Q8_0"}


def test_a_kept_dequantised_gguf_reads_back_the_same_model_without_dequantising(tmp_path, gguf_path):
    """A curve loads its GGUF input once per depth: the second load reads the kept safetensors copy
    (dequantising again would fail here) and gives the same weights, tokens and logits."""
    from unittest.mock import patch

    kept = tmp_path / "kept"
    model, tokenizer = load_model(str(gguf_path), keep_dequantised=kept)
    with patch("transformers.modeling_gguf_pytorch_utils.load_gguf_checkpoint", side_effect=AssertionError("dequantised again")):
        again, tokenizer_again = load_model(str(gguf_path), keep_dequantised=kept)
    assert [p.name for p in kept.iterdir()] == ["tiny.Q8_0-float32"]
    assert again.config.name_or_path == str(gguf_path) and not hasattr(again.config, "quantization_config")
    assert tokenizer_again(PROMPT).input_ids == tokenizer(PROMPT).input_ids
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    assert torch.equal(_logits(model, tokenizer), _logits(again, tokenizer_again))


def test_a_dequantised_copy_that_cannot_be_written_costs_time_not_the_load(tmp_path, gguf_path, capsys):
    """Disk full while keeping the copy: the model still loads, one warning, no half-written copy."""
    import errno
    from unittest.mock import patch

    kept = tmp_path / "kept"
    with patch("transformers.PreTrainedModel.save_pretrained", side_effect=OSError(errno.ENOSPC, "No space left")):
        model, _ = load_model(str(gguf_path), keep_dequantised=kept)
    assert model.config.num_hidden_layers == 6 and list(kept.iterdir()) == []
    assert "could not keep the dequantised model" in capsys.readouterr().err


def test_a_compressed_gguf_is_a_plain_safetensors_model(tmp_path, gguf_path, text_file):
    model, tokenizer = load_model(str(gguf_path))
    config = CompressConfig(num_remove=2, sparsity=None, calib=str(text_file), nsamples=4, seqlen=32, mi_samples=2,
                            fusion=FusionConfig(group_size=2, rank=4, lora_rank=0), tune=TuneConfig(epochs=1,
                                                                                                    batch_size=2))
    result = compress(model, tokenizer, config, progress=False)
    out = save_compressed(result.model, tokenizer, result.report, tmp_path / "out")
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    reloaded, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert reloaded.config.num_hidden_layers == 4
    assert torch.allclose(_logits(reloaded.eval(), tokenizer), _logits(result.model, tokenizer), atol=1e-5)


def test_cli_records_the_gguf_input_in_the_report(tmp_path, gguf_path, text_file):
    before = _digest(gguf_path.parent)
    out = tmp_path / "out"
    assert main(_compress(gguf_path, out, text_file, "--num-remove", "1")) == 0
    assert json.loads((out / "fusegpt_report.json").read_text())["source"]["quantization"] == "Q8_0"
    assert _digest(gguf_path.parent) == before


@pytest.mark.parametrize("damage", ["truncated", "not_a_model", "two_files"])
def test_a_bad_gguf_gets_one_line_and_writes_nothing(tmp_path, gguf_path, text_file, capsys, damage):
    if damage == "truncated":
        data = gguf_path.read_bytes()
        gguf_path.write_bytes(data[: len(data) // 2])
        target, expected = gguf_path, "is not a readable GGUF file"
    elif damage == "not_a_model":
        gguf_path.write_text("this is a text file, not a model\n" * 20)
        target, expected = gguf_path, "is not a readable GGUF file"
    else:
        shutil.copy(gguf_path, gguf_path.with_name("other.gguf"))
        target, expected = gguf_path.parent, "holds 2 .gguf files"
    out = tmp_path / "out"
    assert main(_compress(target, out, text_file, "--num-remove", "1")) == 2
    assert expected in _one_line_error(capsys) and not out.exists()
    with pytest.raises(FuseGPTError, match=expected):
        load_model(str(target))


@pytest.mark.slow
def test_smollm2_gguf_perplexity_equals_transformers_on_the_same_windows(capsys, tmp_path):
    """The real 4-bit asset: `fusegpt eval --ppl-windows` against a direct computation."""
    gguf = asset("models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf")
    text = asset("text/wikitext-2-raw/wiki.test.raw")
    target = tmp_path / "ppl.json"
    assert main(["eval", str(gguf), "--ppl", str(text), "--seqlen", "64", "--ppl-windows", "3", "--json", str(target),
                 "--quiet"]) == 0
    saved = json.loads(target.read_text())
    assert saved["ppl_windows"] == 3

    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    rows = [line + "\n" if line.strip() else "" for line in text.read_text().split("\n")]
    ids = tokenizer("\n\n".join(rows[:-1] if rows[-1] == "" else rows), return_tensors="pt").input_ids[0]
    windows = ids[: 3 * 64].view(3, 64)
    with torch.no_grad():
        loss = model(input_ids=windows, labels=windows).loss.item()
    assert saved["ppl"][str(text)] == pytest.approx(math.exp(loss), rel=5e-3)


@pytest.mark.slow
def test_smollm2s_kept_dequantised_copy_is_the_same_model_and_tokenizer(tmp_path):
    """The real 4-bit asset, as a curve loads it for each depth: the kept copy tokenizes WikiText-2
    as the GGUF's own tokenizer does and holds the same weights."""
    gguf = asset("models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf")
    text = asset("text/wikitext-2-raw/wiki.test.raw").read_text()[:20000]
    model, tokenizer = load_model(str(gguf), keep_dequantised=tmp_path / "kept")
    again, tokenizer_again = load_model(str(gguf), keep_dequantised=tmp_path / "kept")
    assert tokenizer_again(text).input_ids == tokenizer(text).input_ids
    assert tokenizer_again.eos_token_id == tokenizer.eos_token_id and tokenizer_again.bos_token_id == tokenizer.bos_token_id
    mine, theirs = model.state_dict(), again.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)

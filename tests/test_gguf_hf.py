"""GGUF out for a HuggingFace model: settings and tokenizer under GGUF's keys, tensors under its
names and layout; llama.cpp (when installed) computes the logits transformers computes, and splits
text into the tokens transformers does."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import (AutoModelForCausalLM, Gemma3TextConfig, GPT2Config, LlamaConfig, MistralConfig,
                          Qwen2Config, Qwen3Config)

from fusegpt import load_model
from fusegpt.cli import main
from fusegpt.export.gguf_hf import _pre_tokenizer, write_gguf_from_hf
from gguf_writer import MERGES, write_tiny_gguf
from test_cli import _compress, _one_line_error

gguf = pytest.importorskip("gguf")
ASSETS = Path(__file__).resolve().parents[2] / "shared" / "assets" / "models"
TEXT = "Once upon a time, there was a little dog named Max. He played with his 3 friends!\n  def f(x): return x**2"


def _llama_cpp():
    try:
        import llama_cpp
    except ImportError:
        pytest.skip("llama-cpp-python is not installed (it is in the test extra: pip install -e '.[test]')")
    return llama_cpp


@pytest.fixture(scope="module")
def bpe_tokenizer(tmp_path_factory):
    """The tiny GGUF's byte-level BPE tokenizer, as transformers builds it."""
    _, tokenizer = load_model(str(write_tiny_gguf(tmp_path_factory.mktemp("tok") / "tiny.gguf")))
    return tokenizer


def _config(family: str, vocab: int):
    shape = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=128, bos_token_id=vocab - 1, eos_token_id=vocab - 1)
    return {"llama": lambda: LlamaConfig(**shape),
            "llama-tied": lambda: LlamaConfig(**shape, tie_word_embeddings=True),
            "llama3-rope": lambda: LlamaConfig(**{**shape, "max_position_embeddings": 64}, rope_scaling={
                "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16}),
            "mistral": lambda: MistralConfig(**shape, sliding_window=None),
            "qwen2": lambda: Qwen2Config(**shape),  # biases on q, k, v
            "qwen3": lambda: Qwen3Config(**shape, head_dim=32),  # q/k norms, a head wider than hidden/heads
            # sliding blocks with a window of 8 (inside the test's 41 tokens) in a pattern that is not
            # Gemma 3's every-sixth-global, as removing blocks leaves it; norms stored as 1 + w
            "gemma3": lambda: Gemma3TextConfig(**{**shape, "num_hidden_layers": 5}, head_dim=32,
                                               query_pre_attn_scalar=32, sliding_window=8,
                                               layer_types=["sliding_attention", "full_attention", "sliding_attention",
                                                            "sliding_attention", "full_attention"])}[family]()


def _model(family: str, vocab: int, norms: float = 0.1):
    """A tiny model of the family with norms moved by `norms` (a real Gemma 3's reach 300) and larger
    weights, so that a misplaced tensor shows."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(_config(family, vocab)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p).abs() * norms if norms > 1 else torch.randn_like(p) * norms)
            elif "embed" not in name:
                p.mul_(4.0)
    return model


def _llama_cpp_logits(path: Path, ids: list[int], f32_cache: bool = True) -> np.ndarray:
    llama_cpp = _llama_cpp()
    cache = llama_cpp.GGML_TYPE_F32 if f32_cache else llama_cpp.GGML_TYPE_F16
    llm = llama_cpp.Llama(model_path=str(path), logits_all=True, n_ctx=128, verbose=False, type_k=cache, type_v=cache)
    try:
        llm.eval(ids)
        return np.array(llm.scores[:len(ids)])
    finally:
        llm.close()


def _transformers_logits(path: Path, ids: list[int]) -> np.ndarray:
    """The logits of a GGUF file as transformers reads it."""
    model, _ = load_model(str(path))
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0].float().numpy()


def _relative_difference(ours: np.ndarray, model, ids: list[int]) -> float:
    with torch.no_grad():
        theirs = model(input_ids=torch.tensor([ids])).logits[0].float().numpy()
    return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


@pytest.mark.parametrize("family,tolerance", [("llama", 1e-5), ("llama-tied", 1e-5), ("llama3-rope", 1e-5),
                                              ("mistral", 1e-5), ("qwen2", 1e-5), ("qwen3", 1e-5), ("gemma3", 2e-3)])
def test_each_family_computes_in_llama_cpp_what_it_computes_in_transformers(tmp_path, bpe_tokenizer, family,
                                                                            tolerance):
    """At F32 the only differences are the arithmetic's: 1e-5 of the largest logit (measured 6-8e-7);
    Gemma 3's 5e-4 is as large at the first token, where the attention layout cannot matter (its
    GELU's arithmetic, we think; a wrong sliding pattern gives 0.5 and more)."""
    _llama_cpp()
    vocab = len(bpe_tokenizer)
    model = _model(family, vocab)
    out = tmp_path / f"{family}.gguf"
    exported = write_gguf_from_hf(model, bpe_tokenizer, out, "F32")
    assert exported.file_type == "F32" and exported.bytes == out.stat().st_size
    reader = gguf.GGUFReader(out)
    arch = reader.fields["general.architecture"].contents()
    assert arch == {"mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma3": "gemma3"}.get(family, "llama")
    assert reader.fields[f"{arch}.block_count"].contents() == model.config.num_hidden_layers
    assert ("output.weight" in {t.name for t in reader.tensors}) == (not model.config.tie_word_embeddings)
    ids = [vocab - 1, *range(5, 45)]  # past the llama3 rope's original context of 16
    assert _relative_difference(_llama_cpp_logits(out, ids), model, ids) < tolerance
    if family == "gemma3":
        assert reader.fields["gemma3.attention.sliding_window_pattern"].contents() == [True, False, True, True, False]


def test_the_tokenizer_keys_are_those_of_the_gguf_it_came_from(tmp_path, bpe_tokenizer):
    """The tiny GGUF's tokenizer, loaded by transformers, written back: the same tokens, types,
    merges and special ids as the file it came from."""
    source = gguf.GGUFReader(write_tiny_gguf(tmp_path / "tiny.gguf"))
    model = _model("llama", len(bpe_tokenizer))
    out = tmp_path / "round.gguf"
    write_gguf_from_hf(model, bpe_tokenizer, out, "F16")
    written = gguf.GGUFReader(out)
    for key in ("tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges",
                "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"):
        assert written.fields[key].contents() == source.fields[key].contents(), key
    assert written.fields["tokenizer.ggml.merges"].contents() == MERGES
    types = {t.name: t.tensor_type.name for t in written.tensors}
    assert types["blk.0.attn_q.weight"] == "F16" and types["blk.0.attn_norm.weight"] == "F32"  # norms stay F32


def test_the_pre_tokenizer_is_named_from_the_split_pattern(capsys):
    llama3 = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
                                               "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"}},
        {"type": "ByteLevel"}]}
    smollm = {"type": "Sequence", "pretokenizers": [{"type": "Digits"}, {"type": "ByteLevel"}]}
    assert _pre_tokenizer({"pre_tokenizer": llama3}) == "llama-bpe"
    assert _pre_tokenizer({"pre_tokenizer": smollm}) == "smollm"
    assert _pre_tokenizer({"pre_tokenizer": {"type": "ByteLevel"}}) == "gpt-2"
    assert capsys.readouterr().err == ""
    assert _pre_tokenizer({"pre_tokenizer": {"type": "Whitespace"}}) == "default"
    assert "no pre-tokenizer" in capsys.readouterr().err


@pytest.mark.parametrize("name,with_spm", [("stories260K", True), ("stories260K", False), ("pydoc-llama-12L", False)])
def test_real_models_tokenise_and_compute_in_llama_cpp_as_in_transformers(tmp_path, name, with_spm):
    """stories260K's BPE with byte fallback goes out as llama.cpp's `llama` tokenizer (from its
    tokenizer.model, or scored from its merges without one), pydoc's byte-level BPE as `gpt2`: each
    splits text into transformers' tokens, and the logits agree."""
    if not (ASSETS / name).is_dir():
        pytest.skip(f"{ASSETS / name} not found (the shared assets are not beside this checkout)")
    llama_cpp = _llama_cpp()
    model, tokenizer = load_model(str(ASSETS / name))
    out = tmp_path / f"{name}.gguf"
    write_gguf_from_hf(model, tokenizer, out, "F32", ASSETS / name if with_spm else None)
    ids = tokenizer(TEXT)["input_ids"]
    llm = llama_cpp.Llama(model_path=str(out), n_ctx=128, verbose=False, vocab_only=True)
    try:
        assert llm.tokenize(TEXT.encode(), add_bos=ids[0] == tokenizer.bos_token_id, special=False) == ids
    finally:
        llm.close()
    assert _relative_difference(_llama_cpp_logits(out, ids), model, ids) < 1e-5


def test_compress_of_a_hf_model_writes_its_gguf_and_refuses_a_family_it_cannot(tmp_path, bpe_tokenizer, text_file,
                                                                               capsys):
    folder = tmp_path / "tiny-llama"
    _model("llama", len(bpe_tokenizer)).save_pretrained(folder)
    bpe_tokenizer.save_pretrained(folder)
    out = tmp_path / "out"
    assert main(_compress(folder, out, text_file, "--num-remove", "1", "--gguf")) == 0
    report = json.loads((out / "fusegpt_report.json").read_text())
    assert report["gguf"]["file"] == str(out / "tiny-llama.gguf") and report["gguf"]["file_type"] == "F16"
    assert gguf.GGUFReader(out / "tiny-llama.gguf").fields["llama.block_count"].contents() == 2
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        pass
    else:  # the GGUF computes what the saved HF model computes (F16 weights and cache: 5e-3 of the largest)
        ids = [len(bpe_tokenizer) - 1, *range(5, 30)]
        saved = AutoModelForCausalLM.from_pretrained(out).eval()
        assert _relative_difference(_llama_cpp_logits(out / "tiny-llama.gguf", ids, f32_cache=False), saved, ids) < 5e-3
        # at a quantised type every kept linear (7 in each of 2 blocks) is rounded with its importance
        assert main(_compress(folder, tmp_path / "q4", text_file, "--num-remove", "1", "--gguf-type", "Q4_1")) == 0
        report = json.loads((tmp_path / "q4" / "fusegpt_report.json").read_text())["gguf"]
        assert report["file_type"] == "Q4_1" and report["weighted"] == 14
    gpt2 = tmp_path / "tiny-gpt2"
    AutoModelForCausalLM.from_config(GPT2Config(vocab_size=len(bpe_tokenizer), n_embd=32, n_layer=2, n_head=2,
                                                n_positions=64)).save_pretrained(gpt2)
    bpe_tokenizer.save_pretrained(gpt2)
    capsys.readouterr()
    assert main(_compress(gpt2, tmp_path / "refused", text_file, "--num-remove", "1", "--gguf")) == 2
    assert "gpt2 model is not supported" in _one_line_error(capsys) and not (tmp_path / "refused").exists()


def test_a_quantised_gguf_from_a_hf_model_rounds_its_linears_with_their_importance(tmp_path, bpe_tokenizer):
    """At Q4_1 llama.cpp's rules choose the types; each linear with an importance vector is then
    rounded again knowing it: a smaller error weighted by it than llama.cpp's own rounding, the
    types unchanged (qwen2: its q and k rows are permuted by the layout, the columns are not)."""
    _llama_cpp()
    model = _model("qwen2", len(bpe_tokenizer))
    rng = np.random.default_rng(0)
    importance = {name: rng.uniform(1, 100, p.shape[1]) for name, p in model.named_parameters()
                  if name.endswith("proj.weight")}
    plain, weighted = tmp_path / "plain.gguf", tmp_path / "weighted.gguf"
    assert write_gguf_from_hf(model, bpe_tokenizer, plain, "Q4_1").weighted == 0
    assert write_gguf_from_hf(model, bpe_tokenizer, weighted, "Q4_1", importance=importance).weighted == 7 * 3
    state = model.state_dict()

    def errors(path: Path) -> dict[str, tuple[object, float]]:
        result = {}
        for t in gguf.GGUFReader(path).tensors:
            _, layer, role, kind = (t.name.split(".") + ["", "", ""])[:4]
            hf = {"attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
                  "ffn_down": "mlp.down_proj", "attn_v": "self_attn.v_proj"}.get(role)
            if t.name.startswith("blk.") and hf and kind == "weight":  # the rows llama.cpp keeps in place
                name = f"model.layers.{layer}.{hf}.weight"
                values = gguf.dequantize(t.data, t.tensor_type).reshape(state[name].shape)
                result[name] = (t.tensor_type, float(((values - state[name].numpy()) ** 2 * importance[name]).sum()))
        return result

    before, after = errors(plain), errors(weighted)
    assert len(before) == 5 * 3 and {n: k for n, (k, _) in before.items()} == {n: k for n, (k, _) in after.items()}
    assert all(after[n][1] < before[n][1] for n in before if before[n][0] != gguf.GGMLQuantizationType.F32)
    assert sum(e for _, e in after.values()) < 0.9 * sum(e for _, e in before.values())


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_a_gguf_input_with_real_norm_magnitudes_comes_back_after_a_repair_that_tunes_them(tmp_path, bpe_tokenizer,
                                                                                      text_file, family):
    """Norms of a real model's size (here up to ~60), moved by a global tune: the GGUF written back
    computes in llama.cpp what the compressed model computes in transformers (5e-5 of the largest
    logit: the arithmetic of larger activations). Gemma 3 below; transformers' GGUF loader reads no
    Qwen3 whose head is wider than hidden / heads, which is the tiny Qwen3 here."""
    from fusegpt import CompressConfig, FusionConfig, TuneConfig, compress
    from fusegpt.export.gguf_out import write_gguf

    _llama_cpp()
    vocab = len(bpe_tokenizer)
    source = tmp_path / f"{family}.gguf"
    write_gguf_from_hf(_model(family, vocab, norms=20.0), bpe_tokenizer, source, "F32")
    loaded, tokenizer = load_model(str(source))
    result = compress(loaded, tokenizer, CompressConfig(
        blocks=[1], sparsity=None, calib=str(text_file), nsamples=8, seqlen=32, mi_samples=4,
        fusion=FusionConfig(group_size=2, rank=4, lora_rank=2), tune=TuneConfig(epochs=0, global_epochs=1, batch_size=4,
                                                                               lr=1e-1)), progress=False)
    norm = next(p for n, p in result.model.named_parameters() if n.endswith("input_layernorm.weight"))
    assert norm.abs().max() > 10  # real magnitudes, and moved by the tune (below)
    out = tmp_path / "out.gguf"
    write_gguf(result.model, result.report.kept, source, out, "F32")
    written = {t.name: t for t in gguf.GGUFReader(out).tensors}
    original = {t.name: t for t in gguf.GGUFReader(source).tensors}
    assert not np.array_equal(written["blk.0.attn_norm.weight"].data, original["blk.0.attn_norm.weight"].data)
    ids = [vocab - 1, *range(5, 45)]
    assert _relative_difference(_llama_cpp_logits(out, ids), result.model, ids) < 5e-5


def test_a_gemma3_gguf_input_keeps_its_kept_blocks_sliding_layout(tmp_path, bpe_tokenizer, monkeypatch):
    """A Gemma 3 GGUF without a per-block pattern key (llama.cpp then takes every sixth block as
    global): removing block 2 moves the global block from index 5 to 4, so GGUF out must write the
    kept blocks' layout explicitly, and llama.cpp then computes what transformers computes. With
    norms of a real Gemma 3's size (stored as 1 + w, whose fp32 rounding grows with w; the real
    model's reach 300) moved by the tune, transformers reads back from the GGUF the model it wrote
    (on 8 tokens, inside the window, where the layout it assumes cannot matter). llama.cpp's Gemma 3
    arithmetic parts from transformers' on random weights with large norms (1-20% of the largest logit
    on the GGUF written straight from the HF model); on the real model it agrees (the slow test in
    test_gguf_out.py)."""
    from fusegpt import CompressConfig, FusionConfig, TuneConfig, compress
    from fusegpt.export.gguf_out import write_gguf

    vocab = len(bpe_tokenizer)
    shape = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                 max_position_embeddings=128, bos_token_id=vocab - 1, eos_token_id=vocab - 1)
    # head_dim = query_pre_attn_scalar = 256 as in Gemma 3 (transformers' GGUF loader assumes 256)
    config = Gemma3TextConfig(**shape, num_hidden_layers=8, head_dim=256, query_pre_attn_scalar=256, sliding_window=8,
                              layer_types=["sliding_attention"] * 5 + ["full_attention"] + ["sliding_attention"] * 2)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    source = tmp_path / "gemma3.gguf"
    monkeypatch.setattr("gguf.GGUFWriter.add_sliding_window_pattern", lambda self, value: None)
    write_gguf_from_hf(model, bpe_tokenizer, source, "F32")
    monkeypatch.undo()
    assert "gemma3.attention.sliding_window_pattern" not in gguf.GGUFReader(source).fields
    text = tmp_path / "calib.txt"
    text.write_text("the cat in the hat sat on the mat and then the cat ran in " * 60)
    settings = CompressConfig(blocks=[2], sparsity=None, calib=str(text), nsamples=8, seqlen=32, mi_samples=4,
                              fusion=FusionConfig(group_size=2, rank=4, lora_rank=2),
                              tune=TuneConfig(epochs=0, global_epochs=1, batch_size=4))
    result = compress(*load_model(str(source)), settings, progress=False)
    out = tmp_path / "out.gguf"
    write_gguf(result.model, result.report.kept, source, out, "F32")
    pattern = gguf.GGUFReader(out).fields["gemma3.attention.sliding_window_pattern"].contents()
    assert pattern == [True, True, True, True, False, True, True]
    ids = [vocab - 1, *range(5, 45)]
    assert _relative_difference(_llama_cpp_logits(out, ids), result.model, ids) < 2e-3

    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(torch.randn_like(p).abs() * 20)
    write_gguf_from_hf(model, bpe_tokenizer, source, "F32")
    result = compress(*load_model(str(source)), replace(settings, blocks=[6], tune=replace(settings.tune, lr=1e-1)),
                      progress=False)
    norm = result.model.model.layers[0].input_layernorm.weight
    assert norm.abs().max() > 10
    write_gguf(result.model, result.report.kept, source, out, "F32")
    assert _relative_difference(_transformers_logits(out, ids), result.model, ids) < 1e-6

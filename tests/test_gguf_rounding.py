"""How GGUF out rounds what the compression changed: llama.cpp's quantisers tensor by tensor (the
same bytes as its reference without an importance vector), a smaller weighted error with one, types
raised within the bytes the removed blocks freed, and the importance measured where the linears
read their inputs."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from gguf_writer import fused_away, write_tiny_gguf

gguf = pytest.importorskip("gguf")
pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (it is in the test extra)")
from fusegpt.export.gguf_out import write_gguf  # noqa: E402
from fusegpt.export.gguf_rounding import Choice, activation_importance, fit_types, quantise, weighted_error  # noqa: E402

Q4_1, Q8_0 = gguf.GGMLQuantizationType.Q4_1, gguf.GGMLQuantizationType.Q8_0


def _matrix(rows: int = 64, columns: int = 576, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, columns)).astype(np.float32)


@pytest.mark.parametrize("kind", ["Q4_1", "Q5_1", "Q8_0"])
def test_without_importance_the_bytes_are_the_reference_quantisers(kind):
    """llama.cpp's chunk quantiser without an importance vector is its reference rounding (which
    gguf-py implements independently); a Q4_1 row of 576 is 18 blocks of 2 + 2 + 16 bytes."""
    data, kind = _matrix(), gguf.GGMLQuantizationType[kind]
    rows = quantise(data, kind)
    assert np.array_equal(rows, gguf.quants.quantize(data, kind))
    if kind == Q4_1:
        assert rows.shape == (64, 18 * 20)


def test_an_importance_vector_lowers_the_error_it_weighs():
    """Columns weighted 1 to 100: rounding that knows the weights makes a smaller weighted error at
    4 and 5 bits; at 8 bits (a scale per block, no choice) the bytes are the same."""
    data = _matrix()
    importance = np.random.default_rng(1).uniform(1, 100, data.shape[1])
    for name in ("Q4_1", "Q5_1"):
        kind = gguf.GGMLQuantizationType[name]
        plain = float((((gguf.dequantize(quantise(data, kind), kind).reshape(data.shape) - data) ** 2)
                       * importance).sum())
        assert weighted_error(data, kind, importance) < 0.9 * plain
    assert np.array_equal(quantise(data, Q8_0, importance), quantise(data, Q8_0))


def test_types_are_raised_where_the_error_falls_most_per_byte_within_the_budget():
    choices = {"a": [Choice(Q4_1, 100, 10.0), Choice(Q8_0, 170, 1.0)],  # 9 less error for 70 bytes
               "b": [Choice(Q4_1, 100, 4.0), Choice(Q8_0, 170, 0.5)]}  # 3.5 less for 70
    assert {n: c.kind for n, c in fit_types(choices, 69).items()} == {"a": Q4_1, "b": Q4_1}
    assert {n: c.kind for n, c in fit_types(choices, 139).items()} == {"a": Q8_0, "b": Q4_1}
    assert {n: c.kind for n, c in fit_types(choices, 140).items()} == {"a": Q8_0, "b": Q8_0}


@pytest.fixture(scope="module")
def compressed_q4_1(tmp_path_factory):
    """A tiny GGUF whose FFN matrices are Q4_1 (the rest F32), blocks 4 and 1 fused away and tuned."""
    folder = tmp_path_factory.mktemp("gguf-rounding")
    source = write_tiny_gguf(folder / "tiny.Q4_1.gguf", ffn_type="Q4_1")
    return source, fused_away(source, [4, 1]), folder


def test_the_importance_is_the_mean_square_of_what_each_linear_reads(compressed_q4_1):
    """Block 0's query reads block 0's normed input: its importance is that input's mean square per
    column over every token of the windows."""
    _, result, _ = compressed_q4_1
    model, windows = result.model, result.windows
    importance = activation_importance(model, list(model.model.layers), windows, 4, torch.device("cpu"))
    with torch.no_grad():
        entering = model(input_ids=windows, output_hidden_states=True).hidden_states[0]
        normed = model.model.layers[0].input_layernorm(entering).reshape(-1, entering.shape[-1])
    expected = (normed.double() ** 2).mean(0).numpy()
    assert np.allclose(importance["model.layers.0.self_attn.q_proj.weight"], expected, rtol=1e-5)
    assert len(importance) == 7 * len(model.model.layers)  # q, k, v, o, gate, up, down of every block


def test_by_default_the_file_is_no_larger_than_the_input_and_spends_the_freed_bytes(compressed_q4_1):
    """Two of six blocks removed free 32 KiB; raising the kept blocks' 12 Q4_1 matrices to Q8_0
    costs 10.5 KiB, so once a repair has moved them off their 4-bit grid (here by 10% noise) all are
    raised; the F32 ones stay F32; the file stays within the input's bytes, every matrix rounded with
    its importance, and llama.cpp computes what transformers does up to 8-bit rounding. Moved by
    little (this tiny tune), the 4-bit grid is the more exact and nothing is raised."""
    import copy

    import llama_cpp

    source, result, folder = compressed_q4_1
    kept = result.report.kept
    unmoved = write_gguf(result.model, kept, source, folder / "unmoved.gguf")
    assert unmoved.tensor_types == {"F32": 26, "Q4_1": 12}
    model = copy.deepcopy(result.model)
    with torch.no_grad():
        for block in model.model.layers:
            for linear in (block.mlp.gate_proj, block.mlp.up_proj, block.mlp.down_proj):
                linear.weight.mul_(1 + 0.1 * torch.randn(linear.weight.shape, generator=torch.Generator().manual_seed(0)))
    importance = activation_importance(model, list(model.model.layers), result.windows, 4, torch.device("cpu"))
    out = folder / "fit.gguf"
    exported = write_gguf(model, kept, source, out, importance=importance)
    assert exported.bytes <= source.stat().st_size
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(out).tensors}
    for i in range(len(kept)):
        assert {types[f"blk.{i}.ffn_{m}.weight"] for m in ("gate", "up", "down")} == {Q8_0}
        assert types[f"blk.{i}.attn_q.weight"] == gguf.GGMLQuantizationType.F32
    assert exported.weighted == 7 * len(kept)
    ids = [261, 72, 101, 108, 108, 111, 32, 116, 104, 101]
    llm = llama_cpp.Llama(model_path=str(out), logits_all=True, n_ctx=64, verbose=False)
    try:
        llm.eval(ids)
        ours = np.array(llm.scores[:len(ids)])
    finally:
        llm.close()
    with torch.no_grad():
        theirs = model(input_ids=torch.tensor([ids])).logits[0].numpy()
    assert np.abs(ours - theirs).max() < 2e-2 * np.abs(theirs).max()

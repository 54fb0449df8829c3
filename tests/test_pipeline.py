"""compress() end to end on tiny random Llamas: Macro Influence, fusion at init, save/reload."""
from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import tiny_llama
from fusegpt import CompressConfig, FusionConfig, TuneConfig, compress, save_compressed
from fusegpt.calibrate import BlockStack, capture_block_inputs
from fusegpt.fusion import inject
from fusegpt.importance import macro_influence
from fusegpt.models import adapter_for


def _config(text_file, **overrides) -> CompressConfig:
    fusion = FusionConfig(group_size=3, rank=4, lora_rank=2)
    tune = TuneConfig(epochs=2, batch_size=4, loss="mse", global_epochs=0)  # the local loop; global tune tested apart
    settings = dict(method="fusegpt", calib=str(text_file), nsamples=8, seqlen=32, mi_samples=4, num_remove=2,
                    sparsity=None, fusion=fusion, tune=tune)
    settings.update(overrides)
    return CompressConfig(**settings)


def _stack(model, tokenizer, text_file, nsamples=8) -> BlockStack:
    from fusegpt.data import calibration_windows

    ids = calibration_windows(tokenizer, str(text_file), nsamples, 32, seed=0)
    embeddings, kwargs = capture_block_inputs(model, adapter_for(model), ids, batch_size=4)
    return BlockStack(list(adapter_for(model).blocks(model)), kwargs, embeddings, torch.device("cpu"), 4)


def _make_identity(model, index: int) -> None:
    """Zero the block's residual branches: it then passes its input through unchanged."""
    block = model.model.layers[index]
    with torch.no_grad():
        block.self_attn.o_proj.weight.zero_()
        block.mlp.down_proj.weight.zero_()


def test_stack_boundaries_match_the_model(tokenizer, text_file):
    model = tiny_llama()
    stack = _stack(model, tokenizer, text_file)
    from fusegpt.data import calibration_windows

    ids = calibration_windows(tokenizer, str(text_file), 8, 32, seed=0)
    with torch.no_grad():
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states
    for i in range(len(stack)):  # HF's hidden_states[i] is the input of block i
        assert torch.allclose(stack.boundaries[i], hidden[i], atol=1e-5)


@pytest.mark.parametrize("group", [1, 3, 8])
def test_candidates_scored_together_give_the_outputs_of_each_run_alone(tokenizer, text_file, group):
    """outputs_without runs several candidates block by block (a streamed block is onloaded once
    per group): each output is exactly that of running the blocks after the candidate from its
    cached input, and the grouping changes no number."""
    stack = _stack(tiny_llama(depth=6), tokenizer, text_file)
    stack.candidate_group = group
    candidates = [5, 0, 3, 2]
    outputs = dict(stack.outputs_without(candidates, samples=4))
    assert sorted(outputs) == sorted(candidates)
    for i in candidates:
        assert torch.equal(outputs[i], stack.run(i + 1, len(stack), stack.boundaries[i][:4]))


def test_a_candidate_that_cannot_be_chosen_stops_early_with_a_lower_bound(tokenizer, text_file):
    """With pruning, the candidates run in the order of Block Influence; an identity block scores
    0 and runs first, so every other one stops after its first part of the windows: its score is
    then a lower bound, positive and below its full score, and the choice is the same."""
    model = tiny_llama(depth=6)
    _make_identity(model, 4)
    stack = _stack(model, tokenizer, text_file)
    exact = macro_influence(stack, samples=8)
    stack.prune_candidates = True
    pruned = macro_influence(stack, samples=8)
    assert abs(pruned[4]) < 1e-6 and min(pruned, key=pruned.get) == min(exact, key=exact.get) == 4
    assert all(0 < pruned[i] < exact[i] * (1 - 1e-3) for i in exact if i != 4)
    assert all(pruned[i] == pytest.approx(exact[i] / 8, rel=0.5) for i in exact if i != 4)  # one window of 8


def test_macro_influence_is_zero_for_an_identity_block_and_picks_it_first(tokenizer, text_file):
    model = tiny_llama()
    _make_identity(model, 3)
    scores = macro_influence(_stack(model, tokenizer, text_file), samples=4)
    assert abs(scores[3]) < 1e-6
    assert all(s > 1e-4 for i, s in scores.items() if i != 3)
    result = compress(model, tokenizer, _config(text_file, method="remove", num_remove=1), progress=False)
    assert result.report.removed == [3]


def test_macro_influence_matches_a_direct_computation(tokenizer, text_file):
    model = tiny_llama(depth=4)
    stack = _stack(model, tokenizer, text_file)
    scores = macro_influence(stack, samples=4)
    x = stack.boundaries[0][:4]
    full = stack.run(0, 4, x)
    for i in range(4):
        h = x
        for j in [j for j in range(4) if j != i]:
            h = stack.run(j, j + 1, h)
        cos = torch.nn.functional.cosine_similarity(full, h, dim=-1).mean().item()
        assert scores[i] == pytest.approx(1 - cos, abs=1e-6)


def test_fused_group_at_init_equals_the_block_removed_model(tokenizer, text_file):
    model = tiny_llama()
    stack = _stack(model, tokenizer, text_file)
    adapter = adapter_for(model)
    removed = stack.delete(2)
    stack.refresh(2)
    reference = stack.final.clone()
    inject(adapter, removed, stack.blocks[0:5], FusionConfig(rank=4, lora_rank=2))
    assert "Fused" in type(stack.blocks[0].self_attn.q_proj).__name__
    stack.refresh(0)
    assert torch.equal(stack.final, reference)


def test_fused_result_saves_reloads_and_generates(tmp_path, tokenizer, text_file):
    model = tiny_llama(tied=False)
    result = compress(model, tokenizer, _config(text_file), progress=False)
    report = result.report
    assert len(report.steps) == 2 and len(report.kept) == 4
    assert all(len(s.losses) == 2 for s in report.steps)
    assert result.model.config.num_hidden_layers == 4 and len(result.model.model.layers) == 4
    assert [b.self_attn.layer_idx for b in result.model.model.layers] == [0, 1, 2, 3]
    assert "Fused" not in str(result.model)

    out = save_compressed(result.model, tokenizer, report, tmp_path / "out")
    reloaded, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not any(info.values()), info
    assert reloaded.config.num_hidden_layers == 4
    ids = tokenizer("hello world, fused", return_tensors="pt").input_ids
    with torch.no_grad():
        assert (reloaded(ids).logits - result.model(ids).logits).abs().max() <= 1e-5
    cached = reloaded.generate(ids, max_new_tokens=8, do_sample=False, use_cache=True)
    uncached = reloaded.generate(ids, max_new_tokens=8, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached) and cached.shape[1] == ids.shape[1] + 8

    saved = json.loads((out / "fusegpt_report.json").read_text())
    assert saved["removed"] == report.removed and saved["config"]["method"] == "fusegpt"
    assert saved["steps"][0]["criterion"] == "macro_influence"
    assert set(map(int, saved["steps"][0]["scores"])) == set(range(6))
    assert len(saved["steps"][0]["group"]) == 3


def test_same_seed_same_result(tokenizer, text_file):
    states = []
    for seed in (0, 0, 1):
        result = compress(tiny_llama(), tokenizer, _config(text_file, seed=seed), progress=False)
        states.append(result.model.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert any(not torch.equal(states[0][k], states[2][k]) for k in states[0] if k in states[2])


def test_tuning_reduces_the_group_loss(tokenizer, text_file):
    config = _config(text_file, num_remove=1, tune=TuneConfig(epochs=6, batch_size=4, loss="mse", coef_lr=1e-2))
    losses = compress(tiny_llama(), tokenizer, config, progress=False).report.steps[0].losses
    assert losses[-1] < 0.9 * losses[0]


def test_bfloat16_compresses_and_saves_bfloat16(tmp_path, tokenizer, text_file):
    model = tiny_llama().to(torch.bfloat16)
    result = compress(model, tokenizer, _config(text_file, dtype="bfloat16"), progress=False)
    assert all(p.dtype == torch.bfloat16 for p in result.model.parameters())
    assert all(len(s.losses) == 2 and all(l == l for l in s.losses) for s in result.report.steps)  # no NaN
    out = save_compressed(result.model, tokenizer, result.report, tmp_path / "out")
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert reloaded.dtype == torch.bfloat16 and reloaded.config.num_hidden_layers == 4


@pytest.mark.parametrize("method", ["fusegpt", "remove-lora", "replaceme"])
def test_bounded_memory_changes_no_result(tokenizer, text_file, method):
    """Caching the hidden states on the scoring windows only (recomputing the rest from the
    embeddings, the dense ones through the dense view) gives the merged weights of a run that
    caches every block's hidden states on every window."""
    config = _config(text_file, method=method)
    config.tune.teacher, config.fusion.seam_map = "dense", True  # the paths that recompute the most
    weights = {}
    for cache in ("scoring", "all"):
        config.hidden_cache = cache
        model = compress(tiny_llama(depth=6), tokenizer, config, progress=False).model
        weights[cache] = model.state_dict()
    assert weights["scoring"].keys() == weights["all"].keys()
    for name, value in weights["all"].items():
        assert torch.allclose(weights["scoring"][name], value, atol=1e-6), name


def test_the_auto_dtypes_are_bfloat16_only_where_the_device_runs_it_natively(tokenizer, text_file, monkeypatch):
    """`--tune-dtype auto` and `--score-dtype auto` are decided before the run: bfloat16 where the
    device multiplies bf16 natively, float32 where bf16 would be emulated (slower); the report
    records the dtypes that ran, and the run is the one given them outright."""
    from dataclasses import replace

    config = _config(text_file, num_remove=1)
    config = replace(config, score_dtype="auto", tune=replace(config.tune, compute="auto"))
    runs = {}
    for native in (True, False):
        monkeypatch.setattr("fusegpt.pipeline.native_bf16", lambda device, native=native: native)
        runs[native] = compress(tiny_llama(), tokenizer, config, progress=False)
    given = compress(tiny_llama(), tokenizer, replace(config, score_dtype="bfloat16",
                                                      tune=replace(config.tune, compute="bfloat16")), progress=False)
    assert [runs[n].report.config["tune"]["compute"] for n in (True, False)] == ["bfloat16", "float32"]
    assert [runs[n].report.config["score_dtype"] for n in (True, False)] == ["bfloat16", "float32"]
    assert runs[True].report.steps[0].scores == given.report.steps[0].scores
    assert runs[True].report.steps[0].scores != runs[False].report.steps[0].scores
    native, emulated, given = (r.model.state_dict() for r in (runs[True], runs[False], given))
    assert all(torch.equal(native[k], given[k]) for k in native)
    assert any(not torch.equal(native[k], emulated[k]) for k in native)


def test_the_head_for_autocast_gives_autocasts_logits_from_a_weight_cast_once():
    """Scoring in bf16 reads the LM head through a copy of its weight in bf16, made once: the same
    logits (and the same logits of a few tokens) as autocast casting the fp32 weight at every call;
    outside autocast the head is itself."""
    model = tiny_llama()
    head, cpu = adapter_for(model).head(model), torch.device("cpu")
    hidden, tokens = torch.randn(6, model.config.hidden_size), torch.randint(0, model.config.vocab_size, (6, 3))
    assert head.for_autocast(cpu) is head
    with torch.autocast("cpu", torch.bfloat16):
        low = head.for_autocast(cpu)
        assert torch.equal(low(hidden), head(hidden))
        assert torch.equal(low.token_logits(low.features(hidden), tokens), head.token_logits(head.features(hidden), tokens))
    assert low.lm_head.weight.dtype == torch.bfloat16 and head.lm_head.weight.dtype == torch.float32

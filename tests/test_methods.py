"""The methods against known answers: an identity block goes first, `last` drops the right
blocks, SLEB's scores are the pruned model's calibration loss, remove-lora heals at fusegpt's
budget, and fusion-aware trials leave no trace."""
from __future__ import annotations

import copy
import json
import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, OPTConfig

from conftest import tiny_llama
from fusegpt import CompressConfig, FuseGPTError, compress, save_compressed
from fusegpt.calibrate import BlockStack, capture_block_inputs
from fusegpt.cli import main
from fusegpt.config import METHODS
from fusegpt.data import calibration_windows
from fusegpt.importance import block_influence, calibration_nll, macro_influence, output_divergence
from fusegpt.methods import StepContext
from fusegpt.methods.fuse import fusion_aware, trial_distance
from fusegpt.models import adapter_for
from test_architectures import CASES, TOKENS
from test_pipeline import _config, _make_identity, _stack

K, EPOCHS, NSAMPLES, BATCH = 2, 2, 8, 4  # as in test_pipeline._config


def _windows(tokenizer, text_file) -> torch.Tensor:
    """The calibration windows compress() draws with _config's settings."""
    return calibration_windows(tokenizer, str(text_file), NSAMPLES, 32, seed=0)


def _trained_with_identity(tokenizer, text_file, index: int):
    """A tiny Llama that has learned the calibration windows while block `index` stayed an exact
    identity. A random model's calibration loss can fall when a block is removed, so SLEB's
    known answer needs a model for which every real block matters."""
    model = tiny_llama()
    _make_identity(model, index)
    block = model.model.layers[index]
    held = {id(block.self_attn.o_proj.weight), id(block.mlp.down_proj.weight)}
    optimizer = torch.optim.Adam([p for p in model.parameters() if id(p) not in held], lr=3e-3)
    ids = _windows(tokenizer, text_file)
    for _ in range(60):
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.mark.parametrize(("method", "selection"), [("shortgpt", None), ("remove", None), ("sleb", None),
                                                   ("remove", "kl")])
def test_an_identity_block_is_removed_first(method, selection, tokenizer, text_file):
    model = _trained_with_identity(tokenizer, text_file, index=3)
    # scored in float32: the KL's exact zero below (in bf16 the candidates' rounding leaves ~1e-5)
    config = _config(text_file, method=method, selection=selection, num_remove=1, score_dtype="float32")
    report = compress(model, tokenizer, config, progress=False).report
    assert report.removed == [3]
    scores = report.steps[0].scores
    assert min(scores, key=scores.get) == 3
    if selection == "kl":  # without an identity the predictions are exactly the dense model's
        assert scores[3] == pytest.approx(0.0, abs=1e-6) and min(v for k, v in scores.items() if k != 3) > 1e-4


def test_shortgpt_scores_the_dense_model_once(tokenizer, text_file):
    model = tiny_llama()
    dense = dict(enumerate(block_influence(_stack(model, tokenizer, text_file), samples=4)))
    report = compress(model, tokenizer, _config(text_file, method="shortgpt", num_remove=3), progress=False).report
    assert all(step.criterion == "block_influence" and step.scores == pytest.approx(dense) for step in report.steps)
    assert report.removed == sorted(dense, key=dense.get)[:3]


def test_block_influence_compares_each_block_with_its_own_input(tokenizer, text_file):
    model = tiny_llama(depth=4)
    stack = _stack(model, tokenizer, text_file)
    for i, score in enumerate(block_influence(stack, samples=4)):
        x = stack.boundaries[i][:4]
        cos = F.cosine_similarity(x, stack.run(i, i + 1, x), dim=-1).mean().item()
        assert score == pytest.approx(1 - cos, abs=1e-6)


@pytest.mark.parametrize(("depth", "k", "removed"), [(6, 2, [3, 4]), (6, 3, [2, 3, 4]), (4, 1, [2])])
def test_last_drops_the_blocks_before_the_final_one(depth, k, removed, tokenizer, text_file):
    model = tiny_llama(depth=depth)
    blocks = list(model.model.layers)
    result = compress(model, tokenizer, _config(text_file, method="last", num_remove=k), progress=False)
    assert result.report.removed == removed
    assert list(result.model.model.layers) == [b for i, b in enumerate(blocks) if i not in removed]


def test_sleb_scores_are_the_calibration_loss_of_the_model_without_the_block(tokenizer, text_file):
    model = tiny_llama(depth=4)
    ids = _windows(tokenizer, text_file)[:4]
    scores = calibration_nll(_stack(model, tokenizer, text_file), adapter_for(model).head(model), ids, samples=4)
    for i in range(4):
        pruned = copy.deepcopy(model)
        del pruned.model.layers[i]
        with torch.no_grad():
            logits = pruned(input_ids=ids, use_cache=False).logits[:, :-1]
        expected = F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten()).item()
        assert scores[i] == pytest.approx(expected, rel=1e-5)


def test_the_nll_bound_from_a_few_logits_is_the_loss_over_those_tokens_and_below_the_loss():
    """Vocabulary 5, the head the identity (hidden states are logits): the bound normalises over
    the next token and the given likely tokens, each counted once."""
    from fusegpt.importance.calibration_nll import nll_bound
    from fusegpt.models.adapter import OutputHead

    identity = torch.nn.Linear(5, 5, bias=False)
    identity.weight.data = torch.eye(5)
    head, cpu = OutputHead([], identity, None), torch.device("cpu")
    logits = [2.0, 1.0, 0.0, 0.0, -1.0]
    hidden = torch.tensor([[logits, [0.0] * 5]])  # one window of two positions: one token predicted
    likely = torch.tensor([[[0, 1], [0, 1]]])

    def lse(values):
        return math.log(sum(math.exp(v) for v in values))

    for following, by_hand in ((1, lse([2.0, 1.0]) - 1.0), (3, lse([0.0, 2.0, 1.0]) - 0.0)):
        ids = torch.tensor([[4, following]])
        assert nll_bound(head, hidden, ids, likely, cpu) == pytest.approx(by_hand, rel=1e-4)
        assert nll_bound(head, hidden, ids, likely, cpu) < lse(logits) - logits[following]


def test_the_nll_bound_skips_work_but_not_the_choice(tokenizer, text_file, monkeypatch):
    """With the bound from 2 likely tokens, the lowest-loss block and its loss are the exact run's;
    every other score is at least that (the loss itself or a bound above the best)."""
    import importlib

    nll = importlib.import_module("fusegpt.importance.calibration_nll")
    model = tiny_llama(depth=4)
    ids, head = _windows(tokenizer, text_file)[:4], adapter_for(model).head(model)
    exact = calibration_nll(_stack(model, tokenizer, text_file), head, ids, samples=4)
    bounded: list[int] = []
    real = nll.nll_bound
    monkeypatch.setattr(nll, "nll_bound", lambda *a, **k: bounded.append(1) or real(*a, **k))
    monkeypatch.setattr(nll, "LIKELY_TOKENS", 2)
    stack = _stack(model, tokenizer, text_file)
    stack.prune_candidates = True
    scores = calibration_nll(stack, head, ids, samples=4)
    best = min(exact, key=exact.get)
    assert bounded and min(scores, key=scores.get) == best
    assert scores[best] == pytest.approx(exact[best], rel=1e-6)
    assert all(scores[i] <= exact[i] * (1 + 1e-5) and scores[i] >= exact[best] for i in range(4))


def test_output_divergence_is_the_kl_from_the_dense_predictions_without_the_block(tokenizer, text_file):
    model = tiny_llama(depth=4)
    ids = _windows(tokenizer, text_file)[:4]
    with torch.no_grad():
        dense = F.log_softmax(model(input_ids=ids, use_cache=False).logits, dim=-1)
    stack = _stack(model, tokenizer, text_file)
    stack.delete(0)  # later steps still measure against the dense model, not the current one
    stack.refresh(0)
    scores = output_divergence(stack, adapter_for(model).head(model), samples=4, top_k=0, stride=1)
    for i in range(3):
        pruned = copy.deepcopy(model)
        del pruned.model.layers[i + 1], pruned.model.layers[0]
        with torch.no_grad():
            log_q = F.log_softmax(pruned(input_ids=ids, use_cache=False).logits, dim=-1)
        expected = (dense.exp() * (dense - log_q)).sum(-1).mean().item()
        assert scores[i + 1] == pytest.approx(expected, rel=1e-5)


def _full_kl_per_position(model, ids, removed: list[int]) -> torch.Tensor:
    """KL(dense || model without `removed`) at every position of every window, by hand."""
    pruned = copy.deepcopy(model)
    for i in sorted(removed, reverse=True):
        del pruned.model.layers[i]
    with torch.no_grad():
        log_p = F.log_softmax(model(input_ids=ids, use_cache=False).logits, dim=-1)
        log_q = F.log_softmax(pruned(input_ids=ids, use_cache=False).logits, dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def test_a_top_k_dense_side_is_exact_with_one_token_left_and_a_lower_bound_with_fewer(tokenizer, text_file):
    """Coarsening both distributions to k tokens + the rest can only lower a KL (data processing);
    with k = V - 1 the rest is one token, so nothing is coarsened."""
    model = tiny_llama(depth=4)
    ids, head = _windows(tokenizer, text_file)[:4], adapter_for(model).head(model)
    stack = _stack(model, tokenizer, text_file)
    vocabulary = model.config.vocab_size
    exact = [_full_kl_per_position(model, ids, [i]).mean().item() for i in range(4)]
    one_left = output_divergence(stack, head, samples=4, top_k=vocabulary - 1, stride=1)
    assert [one_left[i] for i in range(4)] == pytest.approx(exact, rel=1e-4)
    # top-3's bins are a coarsening of top-20's (the dense side ranks both), which coarsen the full vocabulary
    coarse = output_divergence(stack, head, samples=4, top_k=3, stride=1)
    finer = output_divergence(stack, head, samples=4, top_k=20, stride=1)
    assert all(0 < coarse[i] <= finer[i] * (1 + 1e-5) and finer[i] <= exact[i] * (1 + 1e-5) for i in range(4))


def test_the_kl_is_bounded_from_k_logits_only_when_k_is_a_small_part_of_the_vocabulary(tokenizer, text_file,
                                                                                          monkeypatch):
    """The bound gathers k rows of the head for every position: with the whole vocabulary (or more
    than a 16th of it) that costs more than the head itself, so the exact KL runs without it."""
    import importlib

    divergence = importlib.import_module("fusegpt.importance.output_divergence")  # the module, not its function
    model = tiny_llama(depth=4)
    head, stack = adapter_for(model).head(model), _stack(model, tokenizer, text_file)
    stack.prune_candidates = True
    bounded: list[int] = []
    real = divergence.divergence_bound
    monkeypatch.setattr(divergence, "divergence_bound", lambda *a, **k: bounded.append(1) or real(*a, **k))
    small = model.config.vocab_size // divergence.BOUND_FRACTION
    for top_k, used in ((0, False), (small + 1, False), (small, True)):
        bounded.clear()
        output_divergence(stack, head, samples=4, top_k=top_k, stride=1)
        assert bool(bounded) == used, top_k


def test_a_strided_kl_scores_every_nth_position_in_chunks_of_any_size(tokenizer, text_file):
    from fusegpt.importance.output_divergence import divergence_from
    from fusegpt.predictions import dense_targets

    model = tiny_llama(depth=4)
    ids, head = _windows(tokenizer, text_file)[:4], adapter_for(model).head(model)
    stack = _stack(model, tokenizer, text_file)
    per_position = _full_kl_per_position(model, ids, [2])
    expected = per_position[:, 4::5].mean().item()  # positions 4, 9, ..., 29 of 32: every 5th
    hidden = stack.run(3, 4, stack.boundaries[2][:4])
    for max_elements in (1, 200, 10**6):  # a position per chunk, a few, all of them
        targets = dense_targets(head, stack.dense_scoring_final[:4], 0, 5, torch.device("cpu"), max_elements)
        assert targets.positions.tolist() == list(range(4, 32, 5))
        total = divergence_from(head, hidden, targets, torch.device("cpu"), max_elements=max_elements)
        assert total / (4 * len(targets.positions)) == pytest.approx(expected, rel=1e-4)


def test_the_kl_bound_from_k_logits_is_below_the_kl_and_equal_to_it_when_the_top_mass_agrees():
    """One position, vocabulary 4, the dense model's top 2 tokens: the bound is P x KL of the
    top-2 distributions renormalised, where P is the dense top-2 mass."""
    from fusegpt.importance.output_divergence import divergence_bound, divergence_from
    from fusegpt.predictions import dense_targets
    from fusegpt.models.adapter import OutputHead

    identity = torch.nn.Linear(4, 4, bias=False)
    identity.weight.data = torch.eye(4)
    head, cpu = OutputHead([], identity, None), torch.device("cpu")
    dense = torch.tensor([[[2.0, 1.0, 0.0, 0.0]]])  # its hidden states are its logits
    targets = dense_targets(head, dense, top_k=2, stride=1, device=cpu)
    p = torch.softmax(dense[0, 0], -1).tolist()
    # the top two swapped: the same top mass, so the rest bins agree and the bound is the KL itself
    swapped = torch.tensor([[[1.0, 2.0, 0.0, 0.0]]])
    q = torch.softmax(swapped[0, 0], -1).tolist()
    by_hand = p[0] * math.log(p[0] / q[0]) + p[1] * math.log(p[1] / q[1])
    assert divergence_from(head, swapped, targets, cpu) == pytest.approx(by_hand, rel=1e-5)
    assert divergence_bound(head, swapped, targets, cpu) == pytest.approx(by_hand, rel=1e-4)
    # more mass on the top two than the dense model gives them: the bound is below the KL
    peaked = torch.tensor([[[3.0, 0.0, -1.0, -1.0]]])
    top, mass = [math.exp(3.0), 1.0], p[0] + p[1]
    conditional = [v / sum(top) for v in top]
    bound = sum(p[v] * math.log(p[v] / mass / conditional[v]) for v in range(2))
    assert divergence_bound(head, peaked, targets, cpu) == pytest.approx(bound, rel=1e-4)
    assert 0 < divergence_bound(head, peaked, targets, cpu) < divergence_from(head, peaked, targets, cpu) * 0.9


def test_the_automatic_stride_scores_fewer_positions_only_when_the_head_outweighs_the_blocks():
    from fusegpt.importance.output_divergence import automatic_stride

    class Stack(list):
        blocks = property(lambda self: self)

    head = _Head(vocabulary=1000, hidden=8)
    # 18 blocks of 100 parameters: a candidate runs ~9 (900) against the head's 8,000: every 9th position
    assert automatic_stride(Stack(torch.nn.Linear(10, 10) for _ in range(18)), head) == round(8000 / 990)
    # blocks as large as the head: every position
    assert automatic_stride(Stack(torch.nn.Linear(80, 100, bias=False) for _ in range(4)), head) == 1


class _Head(torch.nn.Module):
    def __init__(self, vocabulary: int, hidden: int):
        super().__init__()
        self.lm_head = torch.nn.Linear(hidden, vocabulary, bias=False)


def test_lazy_rescoring_scores_in_chunks_until_no_old_score_can_beat_the_best(tokenizer, text_file):
    model = tiny_llama(depth=6)
    config = _config(text_file, method="kl-fuse", num_remove=3, rescore=2, kl_top_k=0)
    report = compress(model, tokenizer, config, progress=False).report
    exact = compress(tiny_llama(depth=6), tokenizer, replace(config, rescore=0), progress=False).report
    first, *later = report.steps
    assert len(first.scores) == 6
    latest, gone = dict(first.scores), {first.removed}
    for step in later:  # chunks of 2 blocks by their most recent score, until the next one's is above the best
        order = sorted((o for o in latest if o not in gone), key=latest.get)
        chunks = (len(step.scores) + 1) // 2
        assert sorted(step.scores) == sorted(order[:len(step.scores)]) and len(step.scores) in (2 * chunks, len(order))
        rest = order[len(step.scores):]
        assert not rest or min(step.scores.values()) <= latest[rest[0]]
        assert step.removed == min(step.scores, key=step.scores.get)
        latest.update(step.scores)
        gone.add(step.removed)
    assert report.removed == exact.removed  # scores grew from step to step here, as they do on real models
    assert report.shares["scored blocks"] == [sum(len(s.scores) for s in report.steps)]


HEADS = {name: (case.auto, case.config(False)) for name, case in CASES.items()}
HEADS["opt_projected_post_norm"] = (AutoModelForCausalLM, OPTConfig(  # a projection after the blocks, no final norm
    **TOKENS, hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4, word_embed_proj_dim=16,
    do_layer_norm_before=False, max_position_embeddings=128))


@pytest.mark.parametrize("family", list(HEADS))
def test_the_head_turns_the_last_block_output_into_the_model_logits(family, tokenizer, text_file):
    auto, config = HEADS[family]
    torch.manual_seed(0)
    model = auto.from_config(config).eval()
    adapter = adapter_for(model)
    ids = _windows(tokenizer, text_file)[:2]
    embeddings, kwargs = capture_block_inputs(model, adapter, ids, batch_size=2)
    stack = BlockStack(list(adapter.blocks(model)), kwargs, embeddings, torch.device("cpu"), batch_size=2)
    with torch.no_grad():
        assert torch.allclose(adapter.head(model)(stack.final), model(input_ids=ids, use_cache=False).logits,
                              atol=1e-5)


def test_remove_lora_heals_at_fusegpts_budget_and_saves_reloads(tmp_path, tokenizer, text_file):
    fused = compress(tiny_llama(), tokenizer, _config(text_file), progress=False).report
    plain = compress(tiny_llama(), tokenizer, _config(text_file, method="remove"), progress=False)
    result = compress(tiny_llama(), tokenizer, _config(text_file, method="remove-lora"), progress=False)
    report = result.report
    # fusegpt: K steps x EPOCHS x NSAMPLES windows x 3 neighbours = 96 passes; LoRA: the fewest
    # epochs over the 4 kept blocks that reach them, ceil(96 / (8 x 4)) = 3
    assert fused.block_passes == 96 and report.block_passes == 3 * NSAMPLES * 4
    assert report.removed == plain.report.removed
    assert report.heal.blocks == report.kept and len(report.heal.losses) == 3
    assert report.heal.losses[-1] < report.heal.losses[0]
    healed, removed = result.model.state_dict(), plain.model.state_dict()
    assert healed.keys() == removed.keys() and any(not torch.equal(healed[k], removed[k]) for k in healed)
    assert "Fused" not in str(result.model)

    out = save_compressed(result.model, tokenizer, report, tmp_path / "out")
    reloaded, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not any(info.values()), info
    ids = tokenizer("hello world, healed", return_tensors="pt").input_ids
    with torch.no_grad():
        assert (reloaded(ids).logits - result.model(ids).logits).abs().max() <= 1e-5
    saved = json.loads((out / "fusegpt_report.json").read_text())
    assert saved["optimizer_steps"] == report.optimizer_steps and saved["heal"]["blocks"] == report.kept


def test_fusion_aware_trials_leave_no_trace(tokenizer, text_file):
    model = tiny_llama()
    stack = _stack(model, tokenizer, text_file)
    config = _config(text_file, fuse_eval_candidates=3)
    ctx = StepContext(model, stack, adapter_for(model), config, _windows(tokenizer, text_file), to_remove=K,
                      progress=False)
    scores = macro_influence(stack, samples=4)
    state, boundaries, rng = copy.deepcopy(model.state_dict()), list(stack.boundaries), torch.get_rng_state()

    chosen = fusion_aware(ctx, scores)
    distances = {i: trial_distance(ctx, i) for i in sorted(scores, key=scores.get)[:3]}
    assert chosen == min(distances, key=distances.get)
    after = model.state_dict()
    assert after.keys() == state.keys() and all(torch.equal(v, state[k]) for k, v in after.items())
    assert all(a is b for a, b in zip(stack.boundaries, boundaries)) and len(stack) == 6
    assert torch.equal(torch.get_rng_state(), rng)


def test_fusion_aware_with_one_candidate_is_plain_fusegpt(tokenizer, text_file):
    plain = compress(tiny_llama(), tokenizer, _config(text_file), progress=False)
    single = compress(tiny_llama(), tokenizer, _config(text_file, fuse_eval_candidates=1), progress=False)
    assert single.report.removed == plain.report.removed
    expected = plain.model.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in single.model.state_dict().items())

    aware = compress(tiny_llama(), tokenizer, _config(text_file, fuse_eval_candidates=3), progress=False).report
    for step in aware.steps:
        assert step.removed in sorted(step.scores, key=step.scores.get)[:3]


def test_methods_are_validated_in_one_line():
    for method in METHODS:
        CompressConfig(method=method).validate()
    with pytest.raises(FuseGPTError, match="^--method must be one of fusegpt, mi, shortgpt, sleb, last, mi-lora, "
                                           "sleb-lora, replaceme, mi-linear, sleb-fuse, kl-lora, kl-fuse, got 'slab'$"):
        CompressConfig(method="slab").validate()
    with pytest.raises(FuseGPTError, match="^--fuse-eval trial-fuses candidates and needs a fusing method"):
        CompressConfig(method="sleb", fuse_eval_candidates=2).validate()


def test_cli_selects_a_method_and_fusion_aware_choice(tmp_path, tokenizer, text_file, capsys):
    model_dir = tmp_path / "tiny"
    tiny_llama(depth=4).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    common = ["--calib", str(text_file), "--nsamples", "4", "--seqlen", "32", "--mi-samples", "2", "--epochs", "1",
              "--batch-size", "2", "--rank", "4", "--lora-rank", "0", "--group-size", "2", "--num-remove", "1",
              "--quiet"]
    assert main(["compress", str(model_dir), "--out", str(tmp_path / "sleb"), "--method", "sleb", *common]) == 0
    assert json.loads((tmp_path / "sleb" / "fusegpt_report.json").read_text())["steps"][0]["criterion"] == \
        "calibration_nll"
    assert main(["compress", str(model_dir), "--out", str(tmp_path / "aware"), "--fuse-eval", "2",
                 "--fuse-eval-epochs", "1", *common]) == 0
    saved = json.loads((tmp_path / "aware" / "fusegpt_report.json").read_text())["config"]
    assert saved["fuse_eval_candidates"] == 2 and saved["fuse_eval_epochs"] == 1
    capsys.readouterr()
    assert main(["compress", str(model_dir), "--out", str(tmp_path / "bad"), "--method", "last", "--fuse-eval", "2",
                 *common]) == 2
    assert "needs a fusing method" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def _mlp_output(stack, index: int, adapter) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, m): block `index`'s output split into its residual stream and its MLP's output."""
    captured = []
    handle = adapter.linears(stack.blocks[index])["down"].register_forward_hook(lambda mod, a, out: captured.append(out))
    out = stack.run(index, index + 1, stack.boundaries[index])
    handle.remove()
    m = torch.cat(captured)
    return out - m, m


class _Planted(torch.nn.Module):
    """A block that passes on `outputs[w]` for calibration window w (found by its input)."""

    def __init__(self, inputs: torch.Tensor, outputs: torch.Tensor):
        super().__init__()
        self.inputs, self.outputs, self.anchor = inputs, outputs, torch.nn.Parameter(torch.zeros(()))

    def forward(self, x, **kwargs):
        window = torch.cdist(x.flatten(1), self.inputs.flatten(1)).argmin(dim=1)
        return self.outputs[window]


def test_linear_repair_recovers_a_span_that_is_exactly_linear(tokenizer, text_file):
    """When what the removed block passes on is y + m T* (an exactly linear function of the block
    before it), the least-squares map finds T* and the folded block reproduces it."""
    from fusegpt.methods.linear import replace_with_linear_map

    model = tiny_llama(depth=4)
    adapter = adapter_for(model)
    stack = _stack(model, tokenizer, text_file)
    y, m = _mlp_output(stack, 1, adapter)
    planted = torch.eye(32) + 0.3 * torch.randn(32, 32, generator=torch.Generator().manual_seed(0))
    target = y + m @ planted
    stack.blocks[2] = _Planted(y + m, target)  # block 2 (removed next) passes on y + m T*
    ctx = StepContext(model, stack, adapter, _config(text_file, method="replaceme"), None, to_remove=1)
    outcome = replace_with_linear_map(ctx, 2)
    assert outcome.group == [1] and stack.origin == [0, 1, 3]
    assert torch.allclose(stack.boundaries[2], target, atol=1e-4)  # block 1's new output


def test_replaceme_removes_the_most_similar_span_and_saves_a_plain_model(tmp_path, tokenizer, text_file):
    model = tiny_llama(depth=6)
    stack = _stack(tiny_llama(depth=6), tokenizer, text_file)
    distance = {i: 1 - F.cosine_similarity(stack.boundaries[i][:4], stack.boundaries[i + 2][:4], dim=-1).mean().item()
                for i in range(5)}
    best = min(distance, key=distance.get)
    result = compress(model, tokenizer, _config(text_file, method="replaceme"), progress=False)
    assert result.report.removed == [best, best + 1]
    assert result.report.steps[0].scores == pytest.approx(distance, abs=1e-6)
    assert result.report.block_passes == 0  # training-free
    out = save_compressed(result.model, tokenizer, result.report, tmp_path / "out")
    reloaded, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and reloaded.config.num_hidden_layers == 4


def test_selection_and_repair_compose(tokenizer, text_file):
    """sleb-lora removes SLEB's blocks and heals them; sleb-fuse fuses SLEB's first choice (later
    ones are scored on the fused model); --blocks fixes the blocks for any repair."""
    sleb = compress(tiny_llama(), tokenizer, _config(text_file, method="sleb"), progress=False).report
    healed = compress(tiny_llama(), tokenizer, _config(text_file, method="sleb-lora"), progress=False).report
    assert healed.removed == sleb.removed and healed.heal is not None and healed.heal.block_passes > 0
    assert healed.steps[0].criterion == "calibration_nll"
    fused = compress(tiny_llama(), tokenizer, _config(text_file, method="sleb-fuse"), progress=False).report
    assert fused.removed[0] == sleb.removed[0] and fused.steps[0].criterion == "calibration_nll"
    assert fused.steps[0].scores == sleb.steps[0].scores and all(s.group for s in fused.steps)
    given = compress(tiny_llama(), tokenizer, _config(text_file, blocks=[4, 1], num_remove=None), progress=False)
    assert given.report.removed == [4, 1] and given.report.steps[0].criterion == "given"
    with pytest.raises(FuseGPTError, match="--blocks must be distinct indices"):
        compress(tiny_llama(), tokenizer, _config(text_file, blocks=[1, 9], num_remove=None), progress=False)


def test_fused_and_healed_runs_count_their_compute(tokenizer, text_file):
    """Block passes: windows x blocks run forward and backward, per epoch and step."""
    fused = compress(tiny_llama(), tokenizer, _config(text_file), progress=False).report
    # 2 steps x 2 epochs x 8 windows x a window of G + 1 = 4 blocks less the removed one
    assert fused.block_passes == 2 * 2 * 8 * 3
    healed = compress(tiny_llama(), tokenizer, _config(text_file, method="remove-lora"), progress=False).report
    assert healed.block_passes == 3 * 8 * 4  # ceil(96 / (8 windows x 4 kept blocks)) epochs


def test_the_lora_budget_is_the_fewest_epochs_with_fusegpts_block_passes():
    """SmolLM2's setting at the defaults: 30 blocks, 8 removed, G = 7, 128 windows, no local
    tuning and 4 global epochs over the 22 kept blocks: 128 x 4 x 22 = 11,264 passes, which LoRA
    over the same 22 blocks matches in exactly 4 epochs. The previous default, 1 epoch per removal
    (7 neighbours each: 128 x 56 = 7,168) and 1 global epoch (2,816), spends 9,984, for which LoRA
    needs ceil(9,984 / (128 x 22)) = 4 epochs too. `heal_epochs` overrides."""
    from fusegpt.config import TuneConfig

    tune = TuneConfig()
    assert tune.fusion_block_passes(30, 8, 7, 128) == 11_264
    assert tune.lora_epochs(30, 8, 7, 128) == 4
    assert TuneConfig(epochs=1, global_epochs=1).fusion_block_passes(30, 8, 7, 128) == 9_984
    assert TuneConfig(epochs=1, global_epochs=1).lora_epochs(30, 8, 7, 128) == 4
    assert TuneConfig(epochs=10, global_epochs=0).lora_epochs(30, 8, 7, 32) == 26  # 17,920 / 704 = 25.5
    # near the end of a shallow model the window shrinks: depth 4, K = 3 -> 3, 2, 1 neighbours
    assert TuneConfig(epochs=1, global_epochs=2).fusion_block_passes(4, 3, 7, 1) == 6 + 2
    assert TuneConfig(epochs=10, heal_epochs=4).lora_epochs(30, 8, 7, 32) == 4


def test_fusion_from_the_seam_map_starts_where_the_linear_repair_ends(tokenizer, text_file):
    """With no tuning, fusegpt with the seam map is exactly the linear repair of the same blocks:
    the zero coefficients leave the map-compensated model as it was."""
    linear = compress(tiny_llama(), tokenizer, _config(text_file, blocks=[3, 2], num_remove=None, repair="linear"),
                      progress=False).model.state_dict()
    config = _config(text_file, blocks=[3, 2], num_remove=None)
    config.fusion.seam_map, config.tune.epochs, config.tune.global_epochs = True, 0, 0
    fused = compress(tiny_llama(), tokenizer, config, progress=False).model.state_dict()
    assert fused.keys() == linear.keys()
    assert all(torch.allclose(fused[k], linear[k], atol=1e-6) for k in linear)
    config.tune.epochs = 2  # and tuning moves on from there
    tuned = compress(tiny_llama(), tokenizer, config, progress=False).model.state_dict()
    assert not all(torch.allclose(tuned[k], linear[k], atol=1e-6) for k in linear)


def test_the_global_tune_moves_coefficients_at_their_own_rate(tokenizer, text_file):
    """With LoRA and norms at lr 0, a global tune after injection changes only what the
    coefficients add: nothing at global_coef_lr None (they learn at lr), the fused linears but no
    norm at global_coef_lr > 0."""
    config = _config(text_file, blocks=[3, 2], num_remove=None)
    config.fusion.seam_map, config.tune.epochs, config.tune.global_epochs, config.tune.lr = True, 0, 1, 0.0
    config.tune.global_coef_lr = None
    start = compress(tiny_llama(), tokenizer, replace(config, tune=replace(config.tune, global_epochs=0)),
                     progress=False).model.state_dict()
    still = compress(tiny_llama(), tokenizer, config, progress=False).model.state_dict()
    assert all(torch.equal(still[k], start[k]) for k in start)
    config.tune.global_coef_lr = 1e-2
    moved = compress(tiny_llama(), tokenizer, config, progress=False).model.state_dict()
    changed = {k for k in start if not torch.equal(moved[k], start[k])}
    assert changed and all(k.endswith("proj.weight") for k in changed)


def test_a_final_global_tune_trains_the_fusion_against_the_dense_output(tokenizer, text_file):
    """global_epochs adds one tune of every kept block (coefficients, LoRA, norms) towards the
    dense model's final hidden states, counted in the compute; the LoRA baseline gets as much more."""
    config = _config(text_file)
    config.tune.global_epochs, config.tune.trial_rates, config.tune.trial_lrs = 2, (), ()  # the trial's passes: test_tuning.py
    report = compress(tiny_llama(), tokenizer, config, progress=False).report
    assert report.heal is not None and report.heal.blocks == report.kept
    assert report.heal.block_passes == 2 * 8 * 4  # 2 epochs x 8 windows x 4 kept blocks
    assert report.block_passes == 2 * 2 * 8 * 3 + 2 * 8 * 4
    assert report.heal.losses[-1] < report.heal.losses[0]
    lora = compress(tiny_llama(), tokenizer, _config(text_file, method="remove-lora", tune=config.tune),
                    progress=False).report
    assert lora.block_passes == 5 * 8 * 4 == report.block_passes  # ceil(160 / 32) epochs


def test_the_dense_teacher_is_what_the_next_kept_block_received_in_the_dense_model(tokenizer, text_file,
                                                                                   monkeypatch):
    """A fused group learns what the first kept block after it received in the dense model (the
    final output at the end), even when a removed block sat between them. With every hidden state
    cached that is a cached dense boundary; recomputed through the dense view it is the same."""
    import fusegpt.methods.fuse as fuse

    targets, teachers = [], []
    real = fuse.tune_group

    def spy(stack, start, end, inputs, teacher, *args, **kwargs):
        if stack.dense is not None:
            targets.append(next(i for i, d in enumerate(stack.dense) if d is teacher))
        teachers.append(teacher.clone())
        return real(stack, start, end, inputs, teacher, *args, **kwargs)

    monkeypatch.setattr(fuse, "tune_group", spy)
    for cache in ("all", "scoring"):
        config = _config(text_file, blocks=[4, 1], num_remove=None, hidden_cache=cache)
        config.tune.teacher = "dense"
        compress(tiny_llama(), tokenizer, config, progress=False)
    # step 1: window [2, 6) ends at the model's end -> the dense final output (boundary 6);
    # step 2: window [0, 4) of originals 0 1 2 3, followed by original 5 (4 is gone) -> boundary 5
    assert targets == [6, 5]
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(teachers[:2], teachers[2:]))


def test_every_method_names_registered_code_that_exists():
    """The one registry (catalog.py) names the functions the pipeline runs: each resolves to a
    function under methods/, and every method shortcut is a registered criterion and repair."""
    from fusegpt import catalog

    for criterion in catalog.CRITERIA.values():
        assert callable(criterion.scorer) and callable(criterion.chooser)
    for repair in catalog.REPAIRS.values():
        assert callable(repair.remover) and (repair.heal is None or callable(repair.healer))
    assert [r.healer.__name__ for r in catalog.REPAIRS.values() if r.heal] == ["heal_fused", "heal_with_lora"]
    assert all(m.selection in catalog.CRITERIA and m.repair in catalog.REPAIRS for m in catalog.METHODS.values())
    assert set(catalog.ALIASES.values()) <= set(catalog.METHODS) and not set(catalog.ALIASES) & set(catalog.METHODS)
    assert set(METHODS) == set(catalog.METHODS)


def test_a_rescoring_limit_scores_only_the_best_few_by_their_margins(tokenizer, text_file):
    """--rescore-limit 3: after the first step, at most 3 blocks are scored, the 3 that were closest
    to the best of the step they were last scored in (every score in full here, so a block's
    margin is its score minus that step's lowest)."""
    config = _config(text_file, method="kl-fuse", num_remove=4, rescore=2, rescore_limit=3, kl_top_k=0,
                     full_scores=True)
    report = compress(tiny_llama(depth=8), tokenizer, config, progress=False).report
    unlimited = compress(tiny_llama(depth=8), tokenizer, replace(config, rescore_limit=0), progress=False).report
    assert max(len(step.scores) for step in unlimited.steps[1:]) == 4  # the lazy bound alone rescored 4 once
    first, *later = report.steps
    assert len(first.scores) == 8

    def margins(scores: dict[int, float]) -> dict[int, float]:
        return {block: score - min(scores.values()) for block, score in scores.items()}

    behind, gone = margins(first.scores), {first.removed}
    for step in later:
        order = sorted((o for o in behind if o not in gone), key=behind.get)
        assert len(step.scores) <= 3 and sorted(step.scores) == sorted(order[:len(step.scores)])
        assert step.removed == min(step.scores, key=step.scores.get)
        behind.update(margins(step.scores))
        gone.add(step.removed)
    assert any(len(step.scores) == 3 for step in later)  # the limit, not the lazy bound, stopped a step


def test_a_rescoring_limit_ranks_blocks_by_their_margins_behind_their_steps_best():
    """Block 3 was stopped early last step with a bound of 1.1 (just above that step's best) but an
    estimate 4.0 above the best; block 4 was last scored steps ago, at 0.9 then, 3.0 behind that
    step's best; blocks 1 and 2 were 1.0 and 2.0 behind. A limit of 2 rescores 1 and 2, and their
    margins become their distances from this step's best. With no limit the lazy order is by the
    latest scores (4, 3, 1, 2), and every block runs since none of the fresh scores beats an old one."""
    from fusegpt.methods.selection import score_step

    class Stack(list):  # what score_step reads of a BlockStack
        def __init__(self):
            super().__init__([None] * 4)
            self.origin, self.score_estimates = [1, 2, 3, 4], {}
            self.score_margins = {1: 1.0, 2: 2.0, 3: 4.0, 4: 3.0}

    latest = {1: 2.0, 2: 3.0, 3: 1.1, 4: 0.9}
    fresh = {1: 3.2, 2: 3.5, 3: 6.0, 4: 5.0}
    asked: list[list[int]] = []

    def score(ctx):
        asked.append([ctx.stack.origin[i] for i in ctx.candidates])
        return {ctx.stack.origin[i]: fresh[ctx.stack.origin[i]] for i in ctx.candidates}

    limited = StepContext(None, Stack(), None, None, None, to_remove=2, step=1)
    assert score_step(limited, score, latest, chunk=1, limit=2) == {1: 3.2, 2: 3.5}
    assert asked == [[1], [2]]  # 1 (3.2) did not beat 2's old 3.0, so 2 ran too; 3 and 4 are past the limit
    assert limited.stack.score_margins == pytest.approx({1: 0.0, 2: 0.3, 3: 4.0, 4: 3.0})
    asked.clear()
    unlimited = StepContext(None, Stack(), None, None, None, to_remove=2, step=1)
    assert score_step(unlimited, score, latest, chunk=1) == fresh
    assert asked == [[4], [3], [1], [2]]


def test_an_old_method_name_runs_the_same_method_and_the_label_says_what_ran(tokenizer, text_file):
    old = compress(tiny_llama(), tokenizer, _config(text_file, method="remove"), progress=False).report
    new = compress(tiny_llama(), tokenizer, _config(text_file, method="mi"), progress=False).report
    assert old.removed == new.removed and old.method == new.method == "mi"
    given = compress(tiny_llama(), tokenizer, _config(text_file, blocks=[1, 2], num_remove=None, repair="lora"),
                     progress=False).report
    assert given.method == "given + lora"


def test_scores_stopped_early_are_reported_as_bounds_and_full_scores_computes_them(tokenizer, text_file):
    """compress stops a candidate once its partial KL rules it out and lists it in the step's bounds;
    --full-scores runs every candidate to the end: the same blocks and, where both are exact, the
    same scores, and every bound below the full score."""
    config = _config(text_file, method="kl-fuse", num_remove=2, kl_top_k=0, rescore=0,
                     tune=replace(_config(text_file).tune, epochs=0, global_epochs=0))
    # block 2 scores 0 and runs first (its Block Influence is 0): every other candidate stops early
    pruned = compress(_identity_model(), tokenizer, config, progress=False).report
    full = compress(_identity_model(), tokenizer, replace(config, full_scores=True), progress=False).report
    assert pruned.removed == full.removed and pruned.removed[0] == 2
    first, complete = pruned.steps[0], full.steps[0]
    assert first.bounds and not complete.bounds and first.score_passes < complete.score_passes
    for block, score in first.scores.items():
        if block in first.bounds:
            assert 0 < score < complete.scores[block]
        else:
            assert score == pytest.approx(complete.scores[block], rel=1e-6)


def _identity_model():
    model = tiny_llama(depth=6)
    _make_identity(model, 2)
    return model

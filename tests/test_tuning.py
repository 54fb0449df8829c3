"""Tuning losses against hand computations."""
from __future__ import annotations

import math

import pytest
import torch

from fusegpt.tuning import LOSSES


def _kl_by_hand(student, teacher, dim):
    """KL(softmax(teacher) || softmax(student)) along `dim`, summed along it, averaged elsewhere."""
    s, t = student.movedim(dim, -1).reshape(-1, student.shape[dim]), teacher.movedim(dim, -1).reshape(-1, teacher.shape[dim])
    total = 0.0
    for srow, trow in zip(s.tolist(), t.tolist()):
        zs, zt = sum(math.exp(v) for v in srow), sum(math.exp(v) for v in trow)
        total += sum(math.exp(b) / zt * (b - math.log(zt) - a + math.log(zs)) for a, b in zip(srow, trow))
    return total / len(s)


@pytest.fixture
def pair():
    torch.manual_seed(0)
    return torch.randn(3, 4, 5), torch.randn(3, 4, 5)


def test_kl_batch_normalises_across_the_batch(pair):
    student, teacher = pair
    assert LOSSES["kl_batch"](student, teacher).item() == pytest.approx(_kl_by_hand(student, teacher, 0), rel=1e-5)
    # shifting every window's value at one position leaves the batch softmax unchanged
    assert LOSSES["kl_batch"](student + 3.0, teacher).item() == pytest.approx(LOSSES["kl_batch"](student, teacher).item(), rel=1e-5)


def test_kl_hidden_normalises_across_channels(pair):
    student, teacher = pair
    assert LOSSES["kl_hidden"](student, teacher).item() == pytest.approx(_kl_by_hand(student, teacher, -1), rel=1e-5)


def test_mse_and_cosine(pair):
    student, teacher = pair
    assert LOSSES["mse"](student, teacher).item() == pytest.approx(((student - teacher) ** 2).mean().item(), rel=1e-6)
    cos = [(a @ b / (a.norm() * b.norm())).item() for a, b in zip(student.reshape(-1, 5), teacher.reshape(-1, 5))]
    assert LOSSES["cosine"](student, teacher).item() == pytest.approx(1 - sum(cos) / len(cos), rel=1e-5)
    assert LOSSES["cosine"](2 * teacher, teacher).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("name", ["kl_batch", "kl_hidden", "mse", "cosine"])
def test_every_loss_is_zero_at_the_teacher(pair, name):
    assert LOSSES[name](pair[1], pair[1]).item() == pytest.approx(0.0, abs=1e-6)


class _Scale(torch.nn.Module):
    """A toy block, x -> x * w (w per channel), so a test can tile the hidden dimension."""

    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.w = torch.nn.Parameter(w.clone(), requires_grad=False)

    def forward(self, x, **kwargs):
        return x * self.w


def _tuned_weight(x: torch.Tensor, teacher: torch.Tensor, w: torch.Tensor, loss: str) -> torch.Tensor:
    from fusegpt.calibrate import BlockStack
    from fusegpt.config import TuneConfig
    from fusegpt.tuning import tune_group

    block = _Scale(w)
    stack = BlockStack([block], [{}], x, torch.device("cpu"), batch_size=2)
    tune_group(stack, 0, 1, x, teacher, [block.w], [], TuneConfig(loss=loss, epochs=2, batch_size=2, coef_lr=1e-2),
               seed=0, progress=False)
    return block.w.detach()


@pytest.mark.parametrize("name", ["kl_batch", "kl_hidden", "mse", "relative_mse", "cosine"])
def test_updates_do_not_depend_on_the_number_of_tokens_and_channels(name):
    """Tiling the windows' tokens 4x and channels 3x (the same data, a loss averaged over 12x
    more entries) gives the same coefficient updates."""
    torch.manual_seed(0)
    x, teacher, w = torch.randn(4, 5, 6), torch.randn(4, 5, 6), torch.rand(6) + 0.5
    small = _tuned_weight(x, teacher, w, name)
    big = _tuned_weight(x.repeat(1, 4, 3), teacher.repeat(1, 4, 3), w.repeat(3), name)
    assert not torch.allclose(small, w)  # it learned something
    assert torch.allclose(big, small.repeat(3), atol=1e-5)


@pytest.mark.parametrize("name", ["mse", "relative_mse", "cosine"])
def test_updates_do_not_depend_on_the_scale_of_the_hidden_states(name):
    """A loss 1e8 times smaller (hidden states 1e-4 times as large) does not stall Adam on its eps."""
    torch.manual_seed(0)
    x, teacher, w = torch.randn(4, 5, 6), torch.randn(4, 5, 6), torch.rand(6) + 0.5
    assert torch.allclose(_tuned_weight(1e-4 * x, 1e-4 * teacher, w, name), _tuned_weight(x, teacher, w, name),
                          atol=1e-5)


def test_coefficient_decay_shrinks_the_coefficients_by_the_rate_times_the_decay():
    """At the teacher the loss has no gradient, so Adam's update is zero and decay alone acts: one
    step (4 windows, a batch of 4) at rate 1e-2 with decay 5 multiplies the coefficient by
    1 - 1e-2 x 5; without decay it stays where it is."""
    from fusegpt.calibrate import BlockStack
    from fusegpt.config import TuneConfig
    from fusegpt.tuning import tune_group

    x, w = torch.randn(4, 5, 6, generator=torch.Generator().manual_seed(0)), torch.full((6,), 2.0)
    for decay, expected in ((0.0, 2.0), (5.0, 1.9)):
        block = _Scale(w.clone())
        stack = BlockStack([block], [{}], x, torch.device("cpu"), batch_size=4)
        tuned = tune_group(stack, 0, 1, x, x * w, [block.w], [],
                           TuneConfig(loss="mse", epochs=1, batch_size=4, coef_lr=1e-2, lr=1e-2, coef_decay=decay),
                           seed=0, progress=False)
        assert tuned.optimizer_steps == 1
        assert torch.allclose(block.w.detach(), torch.full((6,), expected))


def test_relative_mse_weighs_every_token_alike():
    """A token 100x larger than the others (an attention sink) counts as much as any other."""
    teacher = torch.ones(1, 3, 4)
    teacher[0, 0] *= 100.0
    student = teacher * 1.1  # 10% off everywhere
    assert LOSSES["relative_mse"](student, teacher).item() == pytest.approx(0.01, rel=1e-5)
    assert LOSSES["mse"](student, teacher).item() == pytest.approx((100 ** 2 + 2) / 3 * 0.01, rel=1e-5)


def test_a_batch_of_one_window_never_makes_its_own_step():
    from fusegpt.tuning.trainer import window_batches

    order = torch.arange(9)
    assert [len(b) for b in window_batches(order, 4, no_single=True)] == [4, 5]
    assert [len(b) for b in window_batches(order, 4, no_single=False)] == [4, 4, 1]
    assert [len(b) for b in window_batches(torch.arange(1), 4, no_single=True)] == [1]


def test_a_bf16_trainable_learns_updates_below_bf16_resolution():
    """A bf16 gain of 1 whose teacher wants 1.02: Adam's steps at lr 1e-3 are a quarter of bf16's
    spacing at 1 (2^-8), so stepped in bf16 the gain never moves; an fp32 master copy
    accumulates them and the bf16 weight follows."""
    from fusegpt.calibrate import BlockStack
    from fusegpt.config import TuneConfig
    from fusegpt.tuning import tune_group

    x = torch.randn(4, 3, 16, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    block = _Scale(torch.ones(16, dtype=torch.bfloat16))
    stack = BlockStack([block], [{}], x, torch.device("cpu"), batch_size=2)
    tune_group(stack, 0, 1, x, x.float() * 1.02, [block.w], [],
               TuneConfig(loss="mse", epochs=20, batch_size=2, coef_lr=1e-3), seed=0, progress=False)
    assert block.w.dtype == torch.bfloat16
    assert block.w.float().mean().item() > 1.0 + 2 * 2**-8  # moved at least two bf16 steps towards 1.02


def test_learning_rate_ramps_up_then_decays_on_a_cosine():
    from fusegpt.tuning.trainer import learning_rate_factor

    # 10 steps, warm-up over 20% of them: 1/2, 2/2, then cos from the peak over the other 8
    factors = [learning_rate_factor(s, 10, 0.2) for s in range(10)]
    assert factors[:2] == [0.5, 1.0]
    assert factors[2:] == pytest.approx([0.5 * (1 + math.cos(math.pi * k / 8)) for k in range(8)])
    # no warm-up: the plain cosine of every step
    assert [learning_rate_factor(s, 4, 0.0) for s in range(4)] == pytest.approx([1.0, 0.8535534, 0.5, 0.1464466])


def _head(norm: bool = False, bias: bool = False, softcap: float | None = None):
    """A frozen OutputHead over hidden size 6 and a vocabulary of 11."""
    from fusegpt.models.adapter import OutputHead

    final = [torch.nn.LayerNorm(6)] if norm else []
    if norm:
        torch.nn.init.normal_(final[0].weight, 1.0, 0.2)
    return OutputHead(final, torch.nn.Linear(6, 11, bias=bias), softcap).requires_grad_(False)


@pytest.mark.parametrize("max_elements", [11, 33, 10**6])  # a position per chunk, 3 per chunk, all at once
@pytest.mark.parametrize("head", [dict(), dict(norm=True, bias=True, softcap=2.0)], ids=["plain", "norm-bias-softcap"])
def test_logit_distillation_is_the_vocabulary_kl_whatever_the_chunking(max_elements, head):
    from fusegpt.tuning.losses import LogitDistillation

    torch.manual_seed(0)
    head = _head(**head)
    student, teacher = torch.randn(2, 5, 6, requires_grad=True), torch.randn(2, 5, 6)
    distill = LogitDistillation(head, max_elements=max_elements)
    loss = distill(student, teacher)
    expected = _kl_by_hand(head(student.detach()), head(teacher), -1)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    reference = student.detach().clone().requires_grad_(True)
    log_p, log_q = torch.log_softmax(head(teacher), -1), torch.log_softmax(head(reference), -1)
    (log_p.exp() * (log_p - log_q)).sum(-1).mean().backward()
    assert torch.allclose(student.grad, reference.grad, atol=1e-6)
    # the reused buffers: a second call, with fewer positions, gives its own KL
    assert distill(student[:1, :3], teacher[:1, :3]).item() == pytest.approx(
        _kl_by_hand(head(student[:1, :3].detach()), head(teacher[:1, :3]), -1), rel=1e-5)
    assert LogitDistillation(head)(teacher, teacher).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("max_elements", [11, 33, 10**6])
@pytest.mark.parametrize("head", [dict(), dict(norm=True, bias=True, softcap=2.0)], ids=["plain", "norm-bias-softcap"])
@pytest.mark.parametrize("k", [3, 10, 11])
def test_logit_distillation_against_the_dense_top_k_is_the_k_plus_one_bin_kl(max_elements, head, k):
    """Against the dense model's k most likely tokens and the rest's mass (computed once), the loss
    is the KL between the (k + 1)-bin distributions and its gradient that of plain autograd, for a
    small k, a k of the vocabulary less one (the full KL) and the whole vocabulary."""
    from fusegpt.predictions import dense_targets
    from fusegpt.tuning.losses import LogitDistillation

    torch.manual_seed(0)
    head = _head(**head)
    student, teacher = torch.randn(2, 5, 6, requires_grad=True), torch.randn(2, 5, 6)
    targets = dense_targets(head, teacher, top_k=k, stride=1, device=torch.device("cpu"))
    distill = LogitDistillation(head, max_elements=max_elements)
    loss = distill(student, targets)
    loss.backward()
    reference = student.detach().clone().requires_grad_(True)
    log_q = torch.log_softmax(head(reference), -1)
    log_q_top = log_q.gather(-1, targets.ids)
    log_q_rest = torch.log1p(-log_q_top.exp().sum(-1).clamp(max=1 - 1e-6))
    p, p_rest = targets.log_p.exp(), targets.log_rest.exp()
    expected = ((p * (targets.log_p - log_q_top)).sum(-1) + p_rest * (targets.log_rest - log_q_rest)).mean()
    expected.backward()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-6)
    assert torch.allclose(student.grad, reference.grad, atol=1e-6)
    if k >= 10:  # every token but at most one: the whole vocabulary's KL
        assert loss.item() == pytest.approx(LogitDistillation(head)(student.detach(), teacher).item(), rel=1e-4)


def test_a_strided_top_k_teacher_is_the_kl_on_its_positions_alone():
    """Targets at every 2nd position (1 and 3 of 5): the loss is the whole-vocabulary KL over those
    positions by hand, and no gradient reaches the positions in between."""
    from fusegpt.predictions import dense_targets
    from fusegpt.tuning.losses import LogitDistillation

    torch.manual_seed(0)
    head = _head(norm=True)
    student, teacher = torch.randn(2, 5, 6, requires_grad=True), torch.randn(2, 5, 6)
    targets = dense_targets(head, teacher, top_k=11, stride=2, device=torch.device("cpu"))
    loss = LogitDistillation(head)(student, targets)
    loss.backward()
    assert targets.positions.tolist() == [1, 3]
    assert loss.item() == pytest.approx(_kl_by_hand(head(student.detach()[:, 1::2]), head(teacher[:, 1::2]), -1),
                                        rel=1e-4)
    assert student.grad[:, 0::2].abs().max() == 0 and student.grad[:, 1::2].abs().min() > 0


@pytest.mark.parametrize("memory", [dict(checkpoint_activations=True), dict(micro_batch=1),
                                    dict(micro_batch=3, checkpoint_activations=True), dict(optimizer_on_host=True),
                                    dict(micro_batch=1, checkpoint_activations=True, optimizer_on_host=True)])
def test_checkpointed_and_micro_batched_global_tunes_equal_the_plain_one(tokenizer, text_file, memory):
    """Recomputing each block's activations in backward, and accumulating a batch's gradient over
    micro-batches (3 + 1 windows of a batch of 4), and stepping fp32 master copies held on the host,
    change the memory, not the weights."""
    from dataclasses import replace

    from conftest import tiny_llama
    from fusegpt import CompressConfig, FusionConfig, TuneConfig, compress

    config = CompressConfig(method="kl-fuse", calib=str(text_file), nsamples=8, seqlen=32, mi_samples=4, num_remove=2,
                            sparsity=None, fusion=FusionConfig(group_size=3, rank=4, lora_rank=2),
                            tune=TuneConfig(epochs=0, global_epochs=2, batch_size=4, checkpoint_activations=False,
                                            compute="float32"))  # fp32: equal up to fp32's rounding
    plain = compress(tiny_llama(), tokenizer, config, progress=False).model.state_dict()
    other = compress(tiny_llama(), tokenizer, replace(config, tune=replace(config.tune, **memory)),
                     progress=False).model.state_dict()
    start = tiny_llama().state_dict()
    moved = [k for k in plain if "layers" in k and k in start and plain[k].shape == start[k].shape
             and not torch.allclose(plain[k], start[k])]
    assert moved  # the tune changed the kept blocks
    assert plain.keys() == other.keys()
    assert all(torch.allclose(plain[k], other[k], atol=1e-5, rtol=0) for k in plain)


def test_the_tune_reports_progress_every_step_with_its_running_loss(tokenizer, text_file, monkeypatch):
    """The tune's bar moves once per optimiser step (4 a epoch here), each move showing the epoch and
    its running loss; the report keeps every step's loss, whose means per epoch are the epoch losses."""
    from conftest import tiny_llama
    from fusegpt import CompressConfig, FusionConfig, TuneConfig, compress
    from fusegpt.tuning import trainer

    moves = []

    class Recorded(trainer.tqdm):
        def update(self, n=1):
            super().update(n)
            if self.desc == "tune":
                moves.append((self.n, self.total, self.postfix))

    monkeypatch.setattr(trainer, "tqdm", Recorded)
    config = CompressConfig(method="kl-fuse", calib=str(text_file), nsamples=8, seqlen=32, mi_samples=4, num_remove=1,
                            sparsity=None, fusion=FusionConfig(group_size=2, rank=4, lora_rank=2),
                            tune=TuneConfig(epochs=0, global_epochs=2, batch_size=2, trial_rates=(), trial_lrs=()))
    report = compress(tiny_llama(depth=4), tokenizer, config, progress=True).report
    assert [(n, total) for n, total, _ in moves] == [(n, 8) for n in range(1, 9)]
    assert moves[0][2].startswith("epoch 1/2, loss ") and moves[5][2].startswith("epoch 2/2, loss ")
    steps = report.heal.step_losses
    assert len(steps) == report.heal.optimizer_steps == 8
    assert report.heal.losses == pytest.approx([sum(steps[:4]) / 4, sum(steps[4:]) / 4], rel=1e-6)
    assert float(moves[1][2].rsplit(" ", 1)[1]) == pytest.approx((steps[0] + steps[1]) / 2, abs=1e-4)


@pytest.mark.parametrize("winner", [(0.0, 5e-4), (1e-2, 1e-3)], ids=["healing-at-5e-4", "fusion-at-1e-3"])
def test_a_trial_halves_the_pairs_of_rates_on_held_out_windows_and_goes_on_with_the_last(tokenizer, text_file,
                                                                                        monkeypatch, winner):
    """Coefficient rates {1e-2, 0} x LoRA rates {1e-3, 5e-4}: 4 pairs, 2 rounds of a third of the 6
    training windows (2 windows, one step). Round 1: the held-out loss (rigged) keeps the best 2, the
    winner second; round 2 keeps the winner, which goes on over the first epoch's other 2 windows and
    the 2 held out, then a second epoch on all 8: 1 + 1 + 2 + 4 steps. The dropped pairs spent
    (3 + 1) steps of 2 windows through 3 kept blocks. At coefficient rate 0 they never leave zero."""
    from conftest import tiny_llama
    from fusegpt import CompressConfig, FusionConfig, TuneConfig, compress
    from fusegpt.fusion import FusedLinear
    from fusegpt.config import held_out_windows
    from fusegpt.tuning import trainer

    assert [held_out_windows(n) for n in (4, 8, 32, 64, 128, 1024)] == [1, 2, 2, 4, 8, 16]
    leader = (1e-2, 5e-4) if winner == (0.0, 5e-4) else (0.0, 1e-3)
    rigged = {1: {winner: 0.5, leader: 0.4}, 2: {winner: 0.3, leader: 0.6}}  # after round 1, 2: else 1.0
    monkeypatch.setattr(trainer.GroupTune, "loss_on", lambda self, windows: rigged[self.result.optimizer_steps].get(
        (self.config.coef_lr, self.config.lr), 1.0))
    coefficients = []
    monkeypatch.setattr(FusedLinear, "merge", lambda self, merge=FusedLinear.merge: (
        coefficients.extend(c.P.detach().clone() for c in self.coefficients), merge(self))[1])
    config = CompressConfig(method="kl-fuse", calib=str(text_file), nsamples=8, seqlen=32, mi_samples=4, num_remove=1,
                            sparsity=None, fusion=FusionConfig(group_size=2, rank=4, lora_rank=2),
                            tune=TuneConfig(epochs=0, global_epochs=2, batch_size=2, global_coef_lr=1e-2, lr=1e-3,
                                            trial_rates=(0.0,), trial_lrs=(5e-4,), trial_share=1 / 3))
    heal = compress(tiny_llama(depth=4), tokenizer, config, progress=False).report.heal
    tried = {(t["global_coef_lr"], t["lr"]): t for t in heal.trial}
    assert list(tried) == [(1e-2, 1e-3), (1e-2, 5e-4), (0.0, 1e-3), (0.0, 5e-4)]  # the configured pair first
    assert tried[winner]["held_out"] == [0.5, 0.3] and tried[leader]["held_out"] == [0.4, 0.6]
    assert all(t["held_out"] == [1.0] for pair, t in tried.items() if pair not in (winner, leader))
    assert [pair for pair, t in tried.items() if t["chosen"]] == [winner]
    assert heal.optimizer_steps == 1 + 1 + 2 + 4 and len(heal.losses) == 2
    assert heal.losses[0] == pytest.approx(sum(heal.step_losses[:4]) / 4, rel=1e-6)
    assert heal.trial_block_passes == (3 + 1) * 2 * 3
    assert config.tune.trial_block_passes(depth=4, remove=1, windows=8) == heal.trial_block_passes  # what --dry-run plans
    assert coefficients and all((p == 0).all() for p in coefficients) == (winner[0] == 0.0)


def test_a_trial_round_the_windows_no_longer_cover_trains_nothing_and_judges_again(tokenizer, text_file):
    """8 windows, batch 8: 6 to train, and the first round takes them all (a batch at least), so
    the second round has none. It takes no step (an empty batch would step on a loss of nothing):
    its survivors' held-out losses repeat the first round's, and the chosen pair goes on over the
    2 held-out windows, then an epoch of all 8: 1 + 1 + 1 steps."""
    from conftest import tiny_llama
    from fusegpt import CompressConfig, FusionConfig, TuneConfig, compress

    config = CompressConfig(method="kl-fuse", calib=str(text_file), nsamples=8, seqlen=32, mi_samples=4, num_remove=1,
                            sparsity=None, fusion=FusionConfig(group_size=2, rank=4, lora_rank=2),
                            tune=TuneConfig(epochs=0, global_epochs=2, batch_size=8))
    assert config.tune.trial_parts(8) == [6, 0]
    heal = compress(tiny_llama(depth=4), tokenizer, config, progress=False).report.heal
    survivors = [t["held_out"] for t in heal.trial if len(t["held_out"]) == 2]
    assert len(survivors) == 2 and all(first == second for first, second in survivors)
    assert heal.optimizer_steps == 3 and all(math.isfinite(v) for v in heal.step_losses)
    assert heal.trial_block_passes == 3 * 6 * 3  # 3 dropped pairs' one step of 6 windows, 3 kept blocks


def test_the_trials_rounds_take_whole_batches_and_cost_what_the_plan_says():
    """A round trains `trial_share` of the training windows in whole batches (at least one); the
    dropped pairs' passes are all but one of the pairs in each round. SmolLM2's 128 windows (8 held
    out, 120 trained; batch 8; a quarter: 24 windows): 4 pairs cost 3 x 24 + 1 x 24 windows, an
    epoch's worth of 96; two pairs (no LoRA rates) one round, 24."""
    from fusegpt import TuneConfig

    default = TuneConfig()
    assert default.trial_settings() == [(3e-3, 1e-3), (3e-3, 5e-4), (0.0, 1e-3), (0.0, 5e-4)]
    assert default.trial_parts(128) == [24, 24] and default.trial_block_passes(30, 8, 128) == 96 * 22
    assert TuneConfig(trial_lrs=()).trial_parts(128) == [24]
    assert TuneConfig(trial_lrs=()).trial_block_passes(30, 8, 128) == 24 * 22
    assert TuneConfig(trial_share=0.01).trial_parts(64) == [8, 8]  # at least a batch
    assert TuneConfig(trial_share=0.9, trial_lrs=(5e-4, 2e-3)).trial_parts(64) == [48, 12, 0]  # 54 of 60 is 6 batches
    assert TuneConfig(global_epochs=1).trial_runs() == 1  # one epoch: nothing to go on with


def test_a_bfloat16_tune_trains_fp32_weights_to_about_the_fp32_tunes_loss(tokenizer, text_file):
    """--tune-dtype bfloat16 runs the blocks' products under autocast: the model and its trainables
    stay float32, and each epoch's loss is within 2% of the float32 tune's."""
    from dataclasses import replace

    from conftest import tiny_llama
    from fusegpt import CompressConfig, FusionConfig, TuneConfig, compress

    config = CompressConfig(method="kl-fuse", calib=str(text_file), nsamples=8, seqlen=32, mi_samples=4, num_remove=1,
                            sparsity=None, fusion=FusionConfig(group_size=2, rank=4, lora_rank=2),
                            tune=TuneConfig(epochs=0, global_epochs=3, batch_size=4, trial_rates=(), trial_lrs=(),
                                            compute="float32"))
    plain = compress(tiny_llama(depth=4), tokenizer, config, progress=False)
    half = compress(tiny_llama(depth=4), tokenizer, replace(config, tune=replace(config.tune, compute="bfloat16")),
                    progress=False)
    assert all(p.dtype == torch.float32 for p in half.model.parameters())
    assert half.report.heal.losses[-1] < half.report.heal.losses[0]
    assert half.report.heal.losses == pytest.approx(plain.report.heal.losses, rel=0.02)
    assert half.report.heal.losses != plain.report.heal.losses  # the products did run in bfloat16


def test_a_coefficient_rate_of_zero_is_kept_not_replaced_by_the_lora_rate():
    """--global-coef-lr 0 keeps the coefficients at zero (LoRA healing, as the trial's rate 0 does);
    only None falls back to --lr."""
    from fusegpt import TuneConfig

    assert TuneConfig(global_coef_lr=0.0).coefficient_rate == 0.0
    assert TuneConfig(global_coef_lr=None, lr=2e-3).coefficient_rate == 2e-3
    assert TuneConfig(global_coef_lr=0.0, trial_rates=(0.0,), trial_lrs=()).trial_runs() == 1  # nothing to weigh


@pytest.mark.parametrize("top_k", [0, 4], ids=["whole-vocabulary", "top-4"])
def test_the_logit_loss_with_a_bf16_head_is_the_fp32_loss_to_bf16_precision(top_k):
    """`compute` bfloat16 runs the head's products on a bf16 copy of its weight: the loss and the
    gradient on the hidden states are the fp32 ones to bf16's ~3 digits, and a head given a new
    weight (moved to a device, reloaded) is copied again rather than served stale."""
    from fusegpt.predictions import dense_targets
    from fusegpt.tuning.losses import LogitDistillation

    torch.manual_seed(0)
    head = _head(norm=True, bias=True, softcap=2.0)
    student, teacher = torch.randn(2, 5, 6), torch.randn(2, 5, 6)
    if top_k:
        teacher = dense_targets(head, teacher, top_k=top_k, stride=1, device=torch.device("cpu"))

    def loss_and_grad(distill):
        x = student.clone().requires_grad_(True)
        loss = distill(x, teacher)
        loss.backward()
        return loss.item(), x.grad

    exact, exact_grad = loss_and_grad(LogitDistillation(head, max_elements=33))
    low = LogitDistillation(head, max_elements=33, compute="bfloat16")
    approx, approx_grad = loss_and_grad(low)
    assert approx == pytest.approx(exact, rel=2e-2) and approx != exact
    assert torch.nn.functional.cosine_similarity(approx_grad.flatten(), exact_grad.flatten(), dim=0) > 0.999
    head.lm_head.weight = torch.nn.Parameter(-head.lm_head.weight.detach(), requires_grad=False)  # a new weight
    assert loss_and_grad(low)[0] == pytest.approx(loss_and_grad(LogitDistillation(head))[0], rel=2e-2)

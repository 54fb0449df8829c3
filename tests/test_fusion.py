"""The fused linear layer and the group window."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from transformers.pytorch_utils import Conv1D

from fusegpt.fusion import FusedLinear, group_window
from fusegpt.fusion.layer import linear_weights


def _linear(out_features=12, in_features=10, bias=False, seed=0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(in_features, out_features, bias=bias)


@pytest.mark.parametrize("form", ["lowrank", "vector", "full"])
@pytest.mark.parametrize("bias", [False, True])
def test_fused_layer_starts_as_its_own_weight(form, bias):
    base = _linear(bias=bias)
    fused = FusedLinear(base, form, rank=4, lora_rank=3)
    fused.inject(_linear(bias=bias, seed=1).weight, _linear(bias=bias, seed=1).bias)
    fused.inject(_linear(bias=bias, seed=2).weight, _linear(bias=bias, seed=2).bias)
    x = torch.randn(5, 7, 10)
    assert torch.equal(fused(x), base(x))


@pytest.mark.parametrize("form", ["lowrank", "vector", "full"])
def test_weights_and_merge_follow_the_formula(form):
    base, donor = _linear(bias=True), _linear(bias=True, seed=1)
    fused = FusedLinear(base, form, rank=4, lora_rank=3)
    fused.inject(donor.weight, donor.bias)
    torch.manual_seed(3)
    with torch.no_grad():
        for p in [*fused.coefficient_parameters(), *fused.lora_parameters()]:
            p.copy_(torch.randn_like(p))
    coefficient = fused.coefficients[0]()
    expected_w = base.weight + fused.lora_B @ fused.lora_A + coefficient * donor.weight
    expected_b = base.bias + fused.bias_coefficients[0] * donor.bias
    assert torch.allclose(fused.effective_weight(), expected_w, atol=1e-6)
    assert torch.allclose(fused.effective_bias(), expected_b, atol=1e-6)
    x = torch.randn(4, 10)
    merged = fused.merge()
    assert type(merged) is nn.Linear
    assert torch.allclose(merged(x), fused(x), atol=1e-6)
    assert not torch.equal(fused(x), base(x))


@pytest.mark.parametrize("form", ["lowrank", "vector", "full"])
def test_a_seam_map_maps_what_the_layer_computed_and_later_training_adds_unmapped(form):
    """apply_map(T): the layer then computes its previous output times T, exactly; its trained
    parts restart at zero (so the next tune starts from the mapped layer), the base weight is
    untouched (base_only still shows the dense layer), and a second map composes onto the first."""
    base = _linear(bias=True)
    fused = FusedLinear(base, form, rank=4, lora_rank=3)
    fused.inject(_linear(bias=True, seed=1).weight, _linear(bias=True, seed=1).bias)
    with torch.no_grad():
        for p in fused.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # trained parts away from zero (the base too, for the test)
    x, first, second = torch.randn(5, 10), torch.randn(12, 12), torch.randn(12, 12)
    base_weight, before = fused.weight.clone(), fused(x).detach()
    fused.apply_map(first)
    assert torch.allclose(fused(x), before @ first, atol=1e-5)
    assert torch.equal(fused.weight, base_weight)
    assert all(torch.count_nonzero(p) == 0 for p in [fused.lora_B, *fused.bias_coefficients])
    assert torch.count_nonzero(fused.coefficients[0]()) == 0
    fused.base_only = True
    assert torch.allclose(fused(x), x @ base_weight.T + fused.bias)
    fused.base_only = False
    fused.apply_map(second)
    assert torch.allclose(fused(x), before @ first @ second, atol=1e-4)
    with torch.no_grad():
        fused.lora_B.add_(0.1)  # training after the map adds to the mapped layer, not through it
    lora = x @ (fused.lora_B @ fused.lora_A).T
    assert torch.allclose(fused(x), before @ first @ second + lora, atol=1e-4)
    assert torch.allclose(fused.merge()(x), fused(x), atol=1e-4)


def test_conv1d_fuses_in_linear_orientation_and_merges_back_to_a_conv1d():
    """GPT-2's Conv1D stores (in, out); fusion works in (out, in) and the merged layer has the
    base's type and layout, so a saved state dict fits the architecture."""
    torch.manual_seed(0)
    base, donor = Conv1D(12, 10), Conv1D(12, 10)  # nf = out, nx = in
    with torch.no_grad():
        base.bias.normal_(), donor.bias.normal_()
    fused = FusedLinear(base, "full", rank=4, lora_rank=3)
    assert (fused.out_features, fused.in_features) == (12, 10)
    fused.inject(*linear_weights(donor))
    x = torch.randn(4, 5, 10)
    assert torch.allclose(fused(x), base(x), atol=1e-6)
    with torch.no_grad():
        for p in [*fused.coefficient_parameters(), *fused.lora_parameters()]:
            p.copy_(torch.randn_like(p))
    expected = base.weight.T + fused.lora_B @ fused.lora_A + fused.coefficients[0]() * donor.weight.T
    assert torch.allclose(fused.effective_weight(), expected, atol=1e-6)
    merged = fused.merge()
    assert type(merged) is Conv1D and merged.weight.shape == (10, 12)
    assert torch.allclose(merged(x), fused(x), atol=1e-5)
    assert not torch.allclose(merged(x), base(x), atol=1e-3)


def test_low_rank_coefficient_has_rank_and_zero_p():
    fused = FusedLinear(_linear(), "lowrank", rank=4)
    fused.inject(_linear(seed=1).weight)
    c = fused.coefficients[0]
    assert c.P.shape == (12, 4) and c.Q.shape == (4, 10)
    assert torch.count_nonzero(c.P) == 0 and torch.count_nonzero(c.Q) > 0
    capped = FusedLinear(_linear(), "lowrank", rank=128)
    capped.inject(_linear(seed=1).weight)
    assert capped.coefficients[0].P.shape == (12, 10)


def test_frozen_weights_get_no_gradient():
    base, donor = _linear(), _linear(seed=1)
    fused = FusedLinear(base, "lowrank", rank=4, lora_rank=2)
    fused.inject(donor.weight)
    for p in fused.coefficient_parameters() + fused.lora_parameters():
        p.requires_grad_(True)
    fused(torch.randn(3, 10)).sum().backward()
    assert fused.weight.grad is None
    assert fused.coefficients[0].P.grad is not None and fused.lora_B.grad is not None


def test_injected_weight_shape_is_checked():
    fused = FusedLinear(_linear(), "vector")
    with pytest.raises(ValueError):
        fused.inject(torch.zeros(3, 3))


@pytest.mark.parametrize("removed, depth, group, expected", [
    (5, 12, 7, (1, 9)),    # the authors' placement: 4 before, 3 after
    (4, 12, 3, (2, 6)),    # G = 3: 2 before, 1 after
    (0, 12, 7, (0, 8)),    # first block: shifted inward
    (1, 12, 7, (0, 8)),
    (11, 12, 7, (4, 12)),  # last block: shifted inward
    (10, 12, 7, (4, 12)),
    (2, 5, 7, (0, 5)),     # model shallower than G + 1: the whole model
    (3, 5, 2, (1, 4)),     # G = 2: 2 before, none after
    (0, 2, 7, (0, 2)),
])
def test_group_window(removed, depth, group, expected):
    start, end = group_window(removed, depth, group)
    assert (start, end) == expected
    assert start <= removed < end and end - start == min(group + 1, depth)


def test_group_window_rejects_missing_block():
    with pytest.raises(ValueError):
        group_window(5, 5, 3)


def test_neighbours_hold_one_copy_of_an_injected_weight_wherever_they_move():
    """Moving each neighbour on its own (as onloading does) keeps one shared tensor, not a copy per
    neighbour."""
    from fusegpt.fusion.layer import InjectedWeight

    donor = InjectedWeight(_linear(seed=1).weight)
    neighbours = [FusedLinear(_linear(seed=s)) for s in (2, 3, 4)]
    for fused in neighbours:
        fused.inject(donor)
    for fused in neighbours:
        fused.to(torch.float64)
    tensors = {id(f.injected[0].weight) for f in neighbours}
    assert len(tensors) == 1 and neighbours[0].injected[0].weight.dtype == torch.float64
    assert "injected" not in "".join(neighbours[0].state_dict())  # never saved as weights of their own


def test_a_bf16_fused_layer_keeps_no_fp32_copy_of_a_weight_for_backward():
    """The coefficients are fp32; what autograd keeps of the (out, in) weights is bf16: the
    injected weight itself and the effective weight the matmul used, never an fp32 copy."""
    base, donor = torch.nn.Linear(48, 32, dtype=torch.bfloat16), torch.nn.Linear(48, 32, dtype=torch.bfloat16)
    layer = FusedLinear(base, "lowrank", rank=4, lora_rank=4)
    layer.inject(donor.weight, donor.bias)
    for p in layer.coefficient_parameters() + layer.lora_parameters():
        p.requires_grad_(True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        layer(torch.randn(2, 5, 48, dtype=torch.bfloat16)).float().sum().backward()
    full = [t for t in saved if t.numel() == 32 * 48]
    assert full and all(t.dtype == torch.bfloat16 for t in full)
    assert any(t.data_ptr() == donor.weight.data_ptr() for t in full)  # the donor itself, not a copy


def _gemma3_with_the_removed_block_scaled(factor: float):
    """A tiny Gemma 3, whose sublayer outputs are normalised before they join the residual: block
    2's output projections times `factor` leave what the model computes unchanged."""
    from test_architectures import CASES

    torch.manual_seed(0)
    model = CASES["gemma3"].auto.from_config(CASES["gemma3"].config(False)).eval()
    for module in model.modules():  # a random model's sublayer outputs are small: keep eps out of the way
        if hasattr(module, "eps"):
            module.eps = 1e-12
    with torch.no_grad():
        block = model.model.layers[2]
        block.self_attn.o_proj.weight.mul_(factor)
        block.mlp.down_proj.weight.mul_(factor)
    return model


@pytest.mark.parametrize("normalized", [True, False])
def test_normalised_donors_make_fusion_blind_to_a_scale_the_model_does_not_see(tokenizer, text_file, normalized):
    """Scaling a post-normalised projection by 100 changes no output, so it should change no repair:
    with donors normalised to the receiver's norm the fused neighbours end the same (1e-4); with
    the raw donors the coefficients see a 100x larger weight and end elsewhere."""
    from fusegpt import CompressConfig, FusionConfig, TuneConfig, compress

    ids = torch.randint(3, 90, (1, 16), generator=torch.Generator().manual_seed(1))
    plain, scaled = _gemma3_with_the_removed_block_scaled(1.0), _gemma3_with_the_removed_block_scaled(100.0)
    with torch.no_grad():
        assert torch.allclose(plain(input_ids=ids).logits, scaled(input_ids=ids).logits, atol=1e-4)
    config = CompressConfig(method="kl-fuse", blocks=[2], sparsity=None, calib=str(text_file), nsamples=8, seqlen=32,
                            mi_samples=4, fusion=FusionConfig(group_size=2, rank=4, lora_rank=0, train_norms=False,
                                                              normalize_donors=normalized),
                            # no trial (it may keep the coefficients at 0); fp32 products, for equality to 1e-4
                            tune=TuneConfig(epochs=0, global_epochs=2, batch_size=4, global_coef_lr=1e-2,
                                            trial_rates=(), trial_lrs=(), compute="float32"))
    first = compress(plain, tokenizer, config, progress=False).model.state_dict()
    second = compress(scaled, tokenizer, config, progress=False).model.state_dict()
    neighbours = [k for k in first if k.startswith(("model.layers.1.", "model.layers.2.")) and k.endswith("proj.weight")]
    same = all(torch.allclose(first[k], second[k], rtol=1e-4, atol=1e-6) for k in neighbours)
    assert same is normalized

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

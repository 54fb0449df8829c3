"""Where the model lives: on the compute device when it fits, streamed from the host otherwise."""
from __future__ import annotations

import torch

from conftest import tiny_llama
from fusegpt.evaluation.ppl import perplexity
from fusegpt.placement import execution_device, place_for_inference, stays_on_device

GIB = 2**30


def test_the_model_stays_on_the_device_only_when_it_fits_with_room_to_work():
    # 14 GiB of bf16 7B weights + 6 GiB of tuning on an 80 GiB GPU with 79 free: stays
    assert stays_on_device(14 * GIB, 6 * GIB, 79 * GIB, "auto")
    # 70B: 140 GiB never fits; streamed
    assert not stays_on_device(140 * GIB, 6 * GIB, 79 * GIB, "auto")
    # 90% of the free memory is the limit: 9 + 1 GiB of 11 GiB free fits, of 11 GiB less a byte... 10/0.9
    assert stays_on_device(9 * GIB, 1 * GIB, int(10 * GIB / 0.9) + 1, "auto")
    assert not stays_on_device(9 * GIB, 1 * GIB, int(10 * GIB / 0.9) - 2**20, "auto")
    assert not stays_on_device(1, 0, 79 * GIB, "always") and stays_on_device(140 * GIB, 0, 79 * GIB, "never")
    assert stays_on_device(140 * GIB, 0, None, "auto")  # the CPU: the host is where it computes


def test_streamed_evaluation_equals_the_resident_one():
    """With offloading, accelerate's hooks load each module's weights for its forward: the
    parameters are left on the meta device, inputs go to the execution device, numbers agree."""
    ids = torch.randint(3, 90, (1, 4 * 32), generator=torch.Generator().manual_seed(0))
    resident = perplexity(tiny_llama(), ids, 32, progress=False)
    model = tiny_llama()
    place_for_inference(model, torch.device("cpu"), "always")
    assert next(model.parameters()).device.type == "meta" and execution_device(model).type == "cpu"
    assert abs(perplexity(model, ids, 32, progress=False) / resident - 1) < 1e-6

"""Where the model lives: on the compute device when it fits, streamed from the host otherwise."""
from __future__ import annotations

import torch

from conftest import tiny_llama
from fusegpt.evaluation.ppl import perplexity
from fusegpt.runtime.placement import execution_device, place_for_inference, stays_on_device

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


def test_device_memory_caps_what_placement_may_use(monkeypatch):
    """`--device-memory 24` on a card with 140 GiB free places as a 24 GiB card would: a 7B model
    in bf16 with a 12 GiB working set streams instead of staying."""
    import fusegpt.runtime.placement as placement

    monkeypatch.setattr(placement, "free_memory", lambda device: 140 * GIB)
    monkeypatch.setattr(placement, "model_bytes", lambda model: 13 * GIB)
    moved = []
    model = type("Model", (), {"to": lambda self, device: moved.append(device)})()
    assert placement.place(model, torch.device("cuda"), "auto", working=12 * GIB)  # 25 of 126 GiB: stays
    assert not placement.place(model, torch.device("cuda"), "auto", working=12 * GIB, limit=24 * GIB)
    assert moved == [torch.device("cuda")]


def test_a_capture_pass_leaves_every_weight_where_it_was():
    """computing_on moves what lies outside the blocks to the compute device for the pass and each
    block for its own forward, then puts everything back and removes its hooks; the captured input
    of block 0 is the model's own."""
    from fusegpt.calibrate import capture_block_inputs
    from fusegpt.models import adapter_for

    model = tiny_llama()
    ids = torch.randint(3, 90, (4, 16), generator=torch.Generator().manual_seed(0))
    embeddings, kwargs = capture_block_inputs(model, adapter_for(model), ids, 2, torch.device("cpu"))
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    with torch.no_grad():  # (transformers hooks the blocks itself to return hidden states)
        expected = model(input_ids=ids, output_hidden_states=True).hidden_states[0]
    assert torch.equal(embeddings, expected) and len(kwargs) == len(model.model.layers)

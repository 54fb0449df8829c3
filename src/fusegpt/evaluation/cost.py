"""What a compression costs and what it buys: peak memory of the run, and the size and speed of the
model it produces."""
from __future__ import annotations

import resource
import statistics
import threading
import time
from pathlib import Path

import torch
from transformers import PreTrainedModel

from ..runtime.placement import execution_device

_PAGE = resource.getpagesize()


def current_rss() -> int:
    """Resident memory of this process in bytes (Linux /proc; elsewhere the lifetime peak)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * _PAGE
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakRSS:
    """Peak resident memory while the `with` body runs, sampled every `interval` seconds (the
    process-lifetime peak of getrusage cannot tell one run from the next in a long process)."""

    def __init__(self, interval: float = 0.05):
        self.interval, self.peak = interval, 0
        self._stop = threading.Event()

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, current_rss())

    def __enter__(self) -> "PeakRSS":
        self.peak = current_rss()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, current_rss())

    @property
    def gib(self) -> float:
        return self.peak / 2**30


def parameter_count(model: PreTrainedModel) -> int:
    """Distinct parameters (a tied embedding and LM head count once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


@torch.no_grad()
def inference_speed(models: dict[str, PreTrainedModel], prefill_tokens: int = 512, decode_tokens: int = 32,
                    rounds: int = 5, seed: int = 0) -> dict[str, dict[str, float]]:
    """Prefill tokens/s on one `prefill_tokens`-token input and greedy decode tokens/s at batch 1
    with the KV cache (a 16-token prompt, exactly `decode_tokens` new tokens), for each model.
    The models are timed in turn, round after round, and each reports its median: a load that
    comes and goes on the machine slows them alike, so their ratio holds."""
    inputs, times = {}, {name: {"prefill": [], "decode": []} for name in models}
    for name, model in models.items():
        model.eval()
        vocab = model.get_input_embeddings().num_embeddings
        device = execution_device(model)
        inputs[name] = torch.randint(0, vocab, (1, prefill_tokens), generator=torch.Generator().manual_seed(seed)).to(device)
        model(input_ids=inputs[name][:, :16], use_cache=False)  # warm-up
    for _ in range(rounds):
        for name, model in models.items():
            ids = inputs[name]
            times[name]["prefill"].append(_timed(lambda: model(input_ids=ids, use_cache=False), ids.device))
            generate = dict(max_new_tokens=decode_tokens, min_new_tokens=decode_tokens, do_sample=False,
                            use_cache=True, pad_token_id=0, attention_mask=torch.ones_like(ids[:, :16]))
            times[name]["decode"].append(_timed(lambda: model.generate(ids[:, :16], **generate), ids.device))
    return {name: {"prefill_tokens_per_s": prefill_tokens / statistics.median(t["prefill"]),
                   "decode_tokens_per_s": decode_tokens / statistics.median(t["decode"])}
            for name, t in times.items()}


def speed_beside(output: PreTrainedModel, dense: PreTrainedModel | None) -> dict[str, float]:
    """`output`'s tokens/s and, as dense_*, the dense model's timed in turn with it (None: `output`
    is the dense model, its own reference)."""
    measured = inference_speed({"output": output, **({"dense": dense} if dense is not None else {})})
    reference = measured.get("dense", measured["output"])
    return {**measured["output"], **{f"dense_{k}": v for k, v in reference.items()}}


def _timed(run, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started

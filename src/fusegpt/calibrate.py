"""Calibration state: the current blocks and the hidden states entering each of them.

Blocks are run one at a time over all calibration windows (onloaded to the compute device only
while they run), so a model larger than the device still compresses. Boundary `i` holds the
hidden states entering block `i`; the last boundary is the output of the last block (before the
final norm). After a change at block `i`, only boundaries after `i` are recomputed."""
from __future__ import annotations

import inspect
from contextlib import contextmanager
from typing import Any, Iterator

import torch
import torch.nn as nn
from transformers import PreTrainedModel

from .models import DecoderAdapter


class _Stop(Exception):
    pass


def _to(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (tuple, list)):
        return type(value)(_to(v, device) for v in value)
    return value


def block_output(out: Any) -> torch.Tensor:
    """Decoder blocks return a tensor or a tuple whose first item is the hidden states."""
    return out[0] if isinstance(out, tuple) else out


@contextmanager
def onloaded(modules: list[nn.Module], device: torch.device) -> Iterator[None]:
    """Move modules to the compute device for the duration, then back where they were."""
    homes = [next(m.parameters()).device for m in modules]
    for m in modules:
        m.to(device)
    try:
        yield
    finally:
        for m, home in zip(modules, homes):
            m.to(home)


def _keyword_call(module: nn.Module, args: tuple, kwargs: dict) -> dict[str, Any]:
    """A block call as {parameter name: value}, hidden states first: some models pass the mask and
    the cache by position, which would be lost if only the keywords were kept."""
    signature = inspect.signature(module.forward)
    bound = signature.bind(*args, **kwargs)
    call: dict[str, Any] = {}
    for name, value in bound.arguments.items():
        if signature.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
            call.update(value)
        else:
            call[name] = value
    return call


def capture_block_inputs(model: PreTrainedModel, adapter: DecoderAdapter, input_ids: torch.Tensor,
                         batch_size: int) -> tuple[torch.Tensor, list[dict]]:
    """Hidden states entering block 0 for every window, and the keyword arguments (rotary
    embeddings, masks, positions) the model passes to each block, captured from the model's own
    forward so that no family's embedding or masking logic is re-implemented here."""
    blocks = adapter.blocks(model)
    kwargs_per_block: list[dict] = [{} for _ in blocks]
    first_inputs: list[torch.Tensor] = []
    stop_at_first = [False]

    def hook_for(index: int):
        def hook(module, args, kwargs):
            call = _keyword_call(module, args, kwargs)
            hidden = call.pop(next(iter(call)))
            if stop_at_first[0]:  # the batched passes only collect block 0's input
                first_inputs.append(hidden.detach())
                raise _Stop
            call.pop("past_key_values", None), call.pop("past_key_value", None), call.pop("layer_past", None)
            call["use_cache"] = False
            kwargs_per_block[index] = call
        return hook

    handles = [b.register_forward_pre_hook(hook_for(i), with_kwargs=True) for i, b in enumerate(blocks)]
    try:
        with torch.no_grad():
            # one full pass on one window: every block's kwargs, with masks of batch size 1 that
            # broadcast over any batch (a mask captured from a batch would fit that batch only)
            model(input_ids=input_ids[:1], use_cache=False)
            stop_at_first[0] = True
            for start in range(0, input_ids.shape[0], batch_size):
                try:
                    model(input_ids=input_ids[start:start + batch_size], use_cache=False)
                except _Stop:
                    pass
    finally:
        for h in handles:
            h.remove()
    return torch.cat(first_inputs), kwargs_per_block


class BlockStack:
    """The model's current blocks, their call arguments and cached boundary hidden states."""

    def __init__(self, blocks: list[nn.Module], block_kwargs: list[dict], embeddings: torch.Tensor,
                 device: torch.device, batch_size: int):
        self.blocks = list(blocks)
        self.origin = list(range(len(blocks)))  # original index of each current block
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.block_kwargs = [_to(kw, self.device) for kw in block_kwargs]
        self.boundaries: list[torch.Tensor] = [embeddings] + [embeddings] * len(blocks)
        self.refresh(0)
        # the dense model's boundaries by original index (refresh replaces tensors, never edits them)
        self.dense: list[torch.Tensor] = list(self.boundaries)

    def __len__(self) -> int:
        return len(self.blocks)

    def batches(self, x: torch.Tensor) -> Iterator[torch.Tensor]:
        for start in range(0, x.shape[0], self.batch_size):
            yield x[start:start + self.batch_size]

    def forward_block(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """Block `index` on a batch already on the device (with gradients if enabled)."""
        return block_output(self.blocks[index](x, **self.block_kwargs[index]))

    @torch.no_grad()
    def run(self, start: int, end: int, x: torch.Tensor, keep: bool = False) -> torch.Tensor:
        """Blocks start..end-1 on all windows in x, block by block; with keep, store boundaries."""
        for index in range(start, end):
            with onloaded([self.blocks[index]], self.device):
                x = torch.cat([self.forward_block(index, b.to(self.device)).to(x.device) for b in self.batches(x)])
            if keep:
                self.boundaries[index + 1] = x
        return x

    def refresh(self, start: int) -> None:
        """Recompute every boundary after block `start` from the (unchanged) input of `start`."""
        self.run(start, len(self.blocks), self.boundaries[start], keep=True)

    def delete(self, index: int) -> nn.Module:
        """Drop block `index`; boundaries after it are stale until `refresh(index)`."""
        del self.origin[index], self.block_kwargs[index], self.boundaries[index + 1]
        return self.blocks.pop(index)

    @property
    def final(self) -> torch.Tensor:
        return self.boundaries[-1]

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
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from .models import DecoderAdapter


class StopForward(Exception):
    """Raised by a hook to end a model's forward once what it needed has been seen."""


def forward_until_stopped(model: nn.Module, input_ids: torch.Tensor, batch_size: int, device: torch.device) -> None:
    """The model's forward on `input_ids` a batch at a time, each ended by a hook's StopForward
    (or not): for what its hooks see."""
    for start in range(0, input_ids.shape[0], batch_size):
        try:
            model(input_ids=input_ids[start:start + batch_size].to(device), use_cache=False)
        except StopForward:
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


@contextmanager
def computing_on(model: PreTrainedModel, blocks: list[nn.Module], device: torch.device) -> Iterator[None]:
    """The whole model computes on `device` while its weights stay where they are: what lies
    outside the blocks (embeddings, rotary tables, final norm, head) moves there for the duration,
    and each block only for its own forward. A model left on the host by placement would otherwise
    run its first window through every block on the CPU (minutes for a 7B model)."""
    inside = {id(m) for block in blocks for m in block.modules()}
    outside = [m for m in model.modules() if id(m) not in inside]
    homes = {id(t): t.device for m in outside for t in [*m.parameters(recurse=False), *m.buffers(recurse=False)]}
    home = next(blocks[0].parameters()).device

    def onload(module, args) -> None:  # a hook's return value would replace the block's input or output
        module.to(device)

    def offload(module, args, output) -> None:
        module.to(home)

    handles = [h for block in blocks for h in (block.register_forward_pre_hook(onload),
                                                block.register_forward_hook(offload))]
    for m in outside:
        m._apply(lambda t: t.to(device), recurse=False)
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        for block in blocks:
            block.to(home)
        for m in outside:
            m._apply(lambda t: t.to(homes.get(id(t), t.device)), recurse=False)


def capture_block_inputs(model: PreTrainedModel, adapter: DecoderAdapter, input_ids: torch.Tensor,
                         batch_size: int, device: torch.device | None = None) -> tuple[torch.Tensor, list[dict]]:
    """Hidden states entering block 0 for every window (on the host), and the keyword arguments
    (rotary embeddings, masks, positions) the model passes to each block, captured from the model's
    own forward on `device` (default: where the model is) so that no family's embedding or masking
    logic is re-implemented here."""
    blocks = adapter.blocks(model)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    kwargs_per_block: list[dict] = [{} for _ in blocks]
    first_inputs: list[torch.Tensor] = []
    stop_at_first = [False]

    def hook_for(index: int):
        def hook(module, args, kwargs):
            call = _keyword_call(module, args, kwargs)
            hidden = call.pop(next(iter(call)))
            if stop_at_first[0]:  # the batched passes only collect block 0's input
                first_inputs.append(hidden.detach().cpu())
                raise StopForward
            call.pop("past_key_values", None), call.pop("past_key_value", None), call.pop("layer_past", None)
            call["use_cache"] = False
            kwargs_per_block[index] = call
        return hook

    # registered before computing_on's, so that a batched pass stops before block 0 moves
    handles = [b.register_forward_pre_hook(hook_for(i), with_kwargs=True) for i, b in enumerate(blocks)]
    try:
        with torch.no_grad(), computing_on(model, list(blocks), device):
            # one full pass on one window: every block's kwargs, with masks of batch size 1 that
            # broadcast over any batch (a mask captured from a batch would fit that batch only)
            model(input_ids=input_ids[:1].to(device), use_cache=False)
            stop_at_first[0] = True
            forward_until_stopped(model, input_ids, batch_size, device)
    finally:
        for h in handles:
            h.remove()
    return torch.cat(first_inputs), kwargs_per_block


class BlockStack:
    """The model's current blocks, their call arguments and the hidden states around them.

    Memory stays flat in depth x data: every boundary (the hidden states entering a block, and
    the last block's output) is cached only on the `cached` scoring windows, which is all that
    scoring reads. A group's input on all N windows is recomputed from the embeddings when a step
    needs it, and the dense model's hidden states by running the original blocks with every
    fusion switched off (`dense_view`); runs overwrite one buffer block by block. Peak: the
    model + 2-5 N T H (embeddings, a group's input and teacher, the dense output if healing needs
    it) + (L + 1) M T H. With `keep_all`, every boundary of the current and the dense model is kept
    on all N windows instead, 2 (L + 1) N T H, which saves that recomputation when memory allows;
    results are the same."""

    def __init__(self, blocks: list[nn.Module], block_kwargs: list[dict], embeddings: torch.Tensor,
                 device: torch.device, batch_size: int, cached: int | None = None, keep_all: bool = False,
                 norms: list[nn.Parameter] = (), keep_dense_blocks: bool = True, keep_dense_final: bool = True,
                 progress: bool = False):
        self.blocks = list(blocks)
        self.origin = list(range(len(blocks)))  # original index of each current block
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.block_kwargs = [_to(kw, self.device) for kw in block_kwargs]
        self.embeddings = embeddings
        self.keep_all = keep_all
        # candidates scored together (outputs_without): one unless blocks are streamed to the device;
        # and whether a candidate that can no longer be chosen stops early with a lower bound for a
        # score (importance/candidates.py; compress does, to choose; every score is exact without)
        self.candidate_group = 1
        self.prune_candidates = False
        self.score_bounds: set[int] = set()  # original indices whose latest score is such a lower bound
        self.score_estimates: dict[int, float] = {}  # each scored block's latest estimate of its mean
        # each scored block's estimate minus the best score of the step it was scored in: how far
        # behind it was, which stays comparable as scores grow (the order candidates run in)
        self.score_margins: dict[int, float] = {}
        self.forward_passes = 0  # block x window forward passes so far (what choosing costs, by step)
        self.cached = embeddings.shape[0] if keep_all or cached is None else min(cached, embeddings.shape[0])
        # the dense model: its blocks (removed ones too, when a dense teacher needs them), and the
        # norms' initial values, which tuning changes in place (fused layers keep their base)
        self.dense_blocks = list(self.blocks) if keep_dense_blocks else None
        self.dense_kwargs = list(self.block_kwargs)
        self.dense_norms = [(p, p.detach().clone()) for p in norms]
        self.boundaries: list[torch.Tensor] = [embeddings[:self.cached]] * (len(blocks) + 1)
        # one pass over all windows, caching the boundaries; its output is the healing teacher
        final = self._run(self.blocks, self.block_kwargs, embeddings, 0, desc="calibrate" if progress else None)
        self.dense_final = final if keep_dense_final else None
        self.dense_scoring_final = self.boundaries[-1]  # the dense output on the cached windows
        # the dense boundaries by original index (refresh replaces tensors, never edits them)
        self.dense: list[torch.Tensor] | None = list(self.boundaries) if keep_all else None

    def __len__(self) -> int:
        return len(self.blocks)

    def batches(self, x: torch.Tensor) -> Iterator[torch.Tensor]:
        for start in range(0, x.shape[0], self.batch_size):
            yield x[start:start + self.batch_size]

    def forward_block(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """Block `index` on a batch already on the device (with gradients if enabled)."""
        return block_output(self.blocks[index](x, **self.block_kwargs[index]))

    @torch.no_grad()
    def _run(self, blocks: list[nn.Module], kwargs: list[dict], x: torch.Tensor,
             keep_from: int | None = None, desc: str | None = None) -> torch.Tensor:
        """`blocks` on a copy of x, batch by batch in place: one buffer of x's size, whatever the
        depth (a progress bar over the blocks with a `desc`)."""
        x = x.clone()
        for offset, (block, kw) in enumerate(tqdm(list(zip(blocks, kwargs)), desc=desc, unit="block", leave=False,
                                                  disable=desc is None)):
            with onloaded([block], self.device):
                for start in range(0, x.shape[0], self.batch_size):
                    batch = x[start:start + self.batch_size]
                    batch.copy_(block_output(block(batch.to(self.device), **kw)))
            self.forward_passes += x.shape[0]
            if keep_from is not None:
                self.boundaries[keep_from + offset + 1] = x[:self.cached].clone()
        return x

    @torch.no_grad()
    def outputs_without(self, candidates: list[int], samples: int) -> Iterator[tuple[int, torch.Tensor]]:
        """(i, the final hidden states with block i skipped, on the first `samples` windows) for
        every candidate i (current index): each starts from block i's cached input and runs the
        blocks after it. A streamed model runs `candidate_group` candidates together, block by
        block, so that each block is onloaded once per group instead of once per candidate (the
        step's transfers grow with the depth, not its square); the numbers are the same."""
        group = max(1, self.candidate_group)
        for first in range(0, len(candidates), group):
            chosen = candidates[first:first + group]
            states = {i: self.boundaries[i][:samples].clone() for i in chosen}
            for j in range(min(chosen) + 1, len(self.blocks)):
                block, kw = self.blocks[j], self.block_kwargs[j]
                with onloaded([block], self.device):
                    for i in (i for i in chosen if i < j):
                        for batch in self.batches(states[i]):
                            batch.copy_(block_output(block(batch.to(self.device), **kw)))
                        self.forward_passes += samples
            yield from states.items()

    def run(self, start: int, end: int, x: torch.Tensor, keep: bool = False) -> torch.Tensor:
        """Blocks start..end-1 on all windows in x, block by block; with keep, cache the boundaries."""
        return self._run(self.blocks[start:end], self.block_kwargs[start:end], x, start if keep else None)

    def refresh(self, start: int) -> None:
        """Recompute every cached boundary after block `start` from the (unchanged) input of `start`."""
        self.run(start, len(self.blocks), self.boundaries[start], keep=True)

    def inputs(self, index: int) -> torch.Tensor:
        """The hidden states entering current block `index` (len(self): the output) on all windows."""
        if self.keep_all:
            return self.boundaries[index]
        return self.run(0, index, self.embeddings)

    def dense_inputs(self, original: int) -> torch.Tensor:
        """The dense model's hidden states entering original block `original` (the original depth:
        its output), on all windows."""
        if self.dense is not None:
            return self.dense[original]
        if original == len(self.dense_kwargs) and self.dense_final is not None:
            return self.dense_final
        if self.dense_blocks is None:
            raise RuntimeError("this stack keeps no dense blocks: build it with keep_dense_blocks=True")
        with self.dense_view():
            return self._run(self.dense_blocks[:original], self.dense_kwargs[:original], self.embeddings)

    @contextmanager
    def dense_view(self) -> Iterator[None]:
        """The original blocks compute as in the dense model: fused layers use their base weight
        alone and tuned norms their initial values, until the context ends."""
        from .fusion import base_only

        current = [p.data for p, _ in self.dense_norms]
        for p, initial in self.dense_norms:
            p.data = initial.to(p.device)
        try:
            with base_only(self.dense_blocks or []):
                yield
        finally:
            for (p, _), data in zip(self.dense_norms, current):
                p.data = data

    def install(self, blocks: list[nn.Module], origin: list[int]) -> None:
        """Go on from `blocks` (originally at `origin`) in place of the dense model's: a resumed run's
        saved state, or a warm start from a shallower repaired model; every boundary is recomputed."""
        self.blocks, self.origin = list(blocks), list(origin)
        self.block_kwargs = [self.dense_kwargs[o] for o in self.origin]
        del self.boundaries[len(self.blocks) + 1:]
        self.refresh(0)

    def release_boundaries(self) -> None:
        """Free the cached hidden states between blocks once nothing will read them (before a final
        tune, which runs from the embeddings): that tune's working set takes their place."""
        self.boundaries, self.dense = [], None

    def delete(self, index: int) -> nn.Module:
        """Drop block `index`; cached boundaries after it are stale until `refresh(index)`."""
        del self.origin[index], self.block_kwargs[index], self.boundaries[index + 1]
        return self.blocks.pop(index)

    @property
    def final(self) -> torch.Tensor:
        """The current output on the cached windows."""
        return self.boundaries[-1]

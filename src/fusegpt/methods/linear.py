"""ReplaceMe's repair (arXiv 2505.02819), training-free: the removed block is replaced by a linear
map T fitted by least squares on the calibration activations and folded into the block before it.

That block's output is y + m, its residual stream y plus its MLP's output m (the down projection's
output, added to the residual as is). T is chosen so that y + m T reproduces what the removed block
passed on, over every calibration token:

    T = argmin |m T - (target - y)|^2 = (m^T m + eps I)^-1 m^T (target - y)

and m T is the down projection with weight T^T W and bias T^T b: the down projection becomes a
fused layer that holds T^T W - W beside its untouched base (fusion/layer.py), folded in at merge,
so the saved model is a plain model of the same architecture. The first block has nothing before it and
is just deleted.

FuseGPT can start from this map too (`FusionConfig.seam_map`): the group then tunes from the
compensated model instead of the block-removed one."""
from __future__ import annotations

import time

import torch

from ..calibrate import onloaded
from ..errors import FuseGPTError
from ..fusion import FusedLinear
from .step import StepContext, StepOutcome

RIDGE = 1e-6  # relative to the mean eigenvalue of m^T m: keeps the solve stable when m is rank-deficient


@torch.no_grad()
def fit_linear_map(ctx: StepContext, previous: int, inputs: torch.Tensor) -> torch.Tensor:
    """T (hidden x hidden) such that block `previous` with its MLP output times T maps `inputs`
    onto what the block after it passes on, accumulated batch by batch in float64 (the target is
    computed batch by batch too: no buffer of all windows)."""
    stack = ctx.stack
    block, following = stack.blocks[previous], stack.blocks[previous + 1]
    down = ctx.adapter.linears(block)["down"]
    captured = []
    handle = down.register_forward_hook(lambda module, args, out: captured.append(out))
    gram = cross = None
    try:
        with onloaded([block, following], stack.device):
            for x in stack.batches(inputs):
                out = stack.forward_block(previous, x.to(stack.device))
                m = captured.pop().double().flatten(0, -2)
                target = stack.forward_block(previous + 1, out).double()
                residual = (target - out.double()).flatten(0, -2) + m  # target - y
                gram = m.T @ m if gram is None else gram + m.T @ m
                cross = m.T @ residual if cross is None else cross + m.T @ residual
    finally:
        handle.remove()
    ridge = RIDGE * gram.diagonal().mean().clamp_min(1e-12)
    return torch.linalg.solve(gram + ridge * torch.eye(len(gram), dtype=gram.dtype, device=gram.device), cross)


def fold_seam_map(ctx: StepContext, index: int, inputs: torch.Tensor) -> int | None:
    """Fit the map that lets block `index - 1` (whose input on every window is `inputs`) stand in
    for block `index` as well, and give it to its down projection (made a fused layer). Cached
    boundaries after `index - 1` are stale afterwards. Returns the original index of the block that
    took the map, or None for the first block, which has nothing before it."""
    if index == 0:
        return None
    if not ctx.adapter.residual_down:
        raise FuseGPTError(f"a linear seam map needs blocks whose MLP output joins the residual stream as is; "
                           f"{ctx.adapter.family} normalises it first: use another --repair")
    stack, previous = ctx.stack, index - 1
    block = stack.blocks[previous]
    transform = fit_linear_map(ctx, previous, inputs)
    down = ctx.adapter.linears(block)["down"]
    if not isinstance(down, FusedLinear):  # as fusion would wrap it, so a later injection finds it ready
        fusion = ctx.config.fusion
        down = FusedLinear(down, fusion.coefficient, fusion.rank, fusion.lora_rank)
        ctx.adapter.replace_linear(block, "down", down)
    down.apply_map(transform)
    return stack.origin[previous]


def replace_with_linear_map(ctx: StepContext, index: int) -> StepOutcome:
    started = time.perf_counter()
    receiver = fold_seam_map(ctx, index, ctx.stack.inputs(index - 1) if index else None)
    fitted = time.perf_counter()
    ctx.stack.delete(index)
    ctx.stack.refresh(max(index - 1, 0))
    return StepOutcome(group=[] if receiver is None else [receiver],
                       seconds={"fit": fitted - started, "refresh": time.perf_counter() - fitted})

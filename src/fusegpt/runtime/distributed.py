"""Many processes through torch.distributed, launched by `torchrun` (NCCL between GPUs, gloo on
the CPU). Every rank holds the model and the same calibration state; the work is split where it
is heavy and the results are exchanged with collectives:

- scoring: each rank scores every world_size-th candidate block; the scores are gathered;
- tuning: each rank runs its share of every batch's windows; the trainables' gradients (and the
  loss values) are summed, weighted by window counts, before every step, so that the step is the
  one a single process would take on the whole batch for any loss that is a mean over windows
  (mse, relative_mse, cosine, kl_hidden). kl_batch normalises across the windows of a batch, so
  with several ranks it is computed within each rank's share: it is refused there.
- rank 0 writes the output and the checkpoints, and evaluates; the others end with the compression."""
from __future__ import annotations

import os
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


def launched() -> bool:
    """Whether this process was started by torchrun (or another launcher) with several ranks."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: torch.device) -> None:
    """Join the process group torchrun describes, once: NCCL on GPUs, gloo on the CPU. Each rank
    computes on its own GPU (LOCAL_RANK)."""
    if launched() and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def share(items: list[T]) -> list[T]:
    """This rank's items: every world_size-th, starting at its rank."""
    return items[rank()::world_size()]


def gather(mine: dict[int, T]) -> dict[int, T]:
    """Every rank's {item: value} merged, on every rank."""
    if world_size() == 1:
        return dict(mine)
    gathered: list[dict[int, T]] = [{} for _ in range(world_size())]
    dist.all_gather_object(gathered, mine)
    return {i: v for part in gathered for i, v in part.items()}


def sum_across(values: list[torch.Tensor]) -> None:
    """Sum tensors over the ranks, in place (gradients: one flat all-reduce)."""
    if world_size() == 1 or not values:
        return
    flat = torch.cat([v.reshape(-1) for v in values])
    dist.all_reduce(flat)
    offset = 0
    for v in values:
        v.copy_(flat[offset:offset + v.numel()].view_as(v))
        offset += v.numel()

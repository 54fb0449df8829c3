"""The loop of the paper: calibrate, score, choose, group, fuse, tune, (repeat), merge. A method is
a selection criterion (score, choose) and a repair (fuse and tune, delete, fit a linear map, heal);
methods/ says what each means, this loop holds the state."""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, replace

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from .calibrate import BlockStack, capture_block_inputs, onloaded
from .runtime import distributed
from .runtime.checkpoint import Checkpoint
from . import catalog
from .config import CompressConfig, torch_dtype
from .data import calibration_windows
from .data.generated import generated_windows, is_self
from .evaluation import HealRecord, Report, StepRecord
from .fusion import merge_block
from .methods import StepContext
from .methods.selection import score_step
from .methods.fuse import fusion_aware
from .errors import FuseGPTError
from .models import adapter_for
from .tuning.losses import BATCH_LOSSES
from .runtime.placement import STREAMED_CANDIDATES, context_length, native_bf16, place, resolve_device
from .runtime.plan import plan, shape_of


@dataclass
class CompressResult:
    model: PreTrainedModel  # the same object that was passed in, now shallower
    report: Report
    windows: torch.Tensor | None = None  # the calibration windows (token ids): GGUF out weighs its rounding by them


@dataclass
class Start:
    """A repaired shallower model to go on from (a curve's warm start): its blocks, which original
    blocks they are, and the steps that removed the others. The dense model stays the teacher."""

    blocks: list[torch.nn.Module]
    origin: list[int]
    steps: list[StepRecord]


def with_tuning_memory(config: CompressConfig, planned) -> CompressConfig:
    """The config with the plan's choice of how the tune holds memory, where the user left it open."""
    chosen = planned.tuning
    if chosen is None:
        return config
    tune = config.tune
    return replace(config, tune=replace(
        tune, checkpoint_activations=chosen.checkpointed if tune.checkpoint_activations is None else tune.checkpoint_activations,
        micro_batch=tune.micro_batch or (chosen.micro_batch if chosen.micro_batch < tune.batch_size else None),
        optimizer_on_host=chosen.optimizer_on_host if tune.optimizer_on_host is None else tune.optimizer_on_host))


def _count_passes(report: Report, outcome) -> None:
    """Add a step's (or the heal's) tuning passes to each rank's share."""
    for r, passes in enumerate(outcome.passes_by_rank or []):
        report.shares["tuning block passes"][r] += passes


def compress(model: PreTrainedModel, tokenizer, config: CompressConfig | None = None,
             progress: bool = True, model_name: str | None = None,
             checkpoint: Checkpoint | None = None, heal: bool = True, start: Start | None = None) -> CompressResult:
    """Remove blocks from `model` (in place) by `config.method` and return it with its report.

    Only the blocks being scored or tuned are moved to the compute device. With a `checkpoint`,
    the state after every removal step is saved there, and a saved state is resumed from. Without
    `heal`, a repair's tune after the last removal is skipped (`curve`: the order of removal alone).
    From a `start`, the steps it has taken are not taken again."""
    config = config or CompressConfig()
    config.validate()
    device = resolve_device(config.device)
    native = "bfloat16" if native_bf16(device) else "float32"  # what "auto" runs: the report and a resume see it
    if config.tune.compute == "auto":
        config = replace(config, tune=replace(config.tune, compute=native))
    if config.score_dtype == "auto":
        config = replace(config, score_dtype=native)
    distributed.init(device)  # under torchrun: join the others (a no-op in a single process)
    ranks = distributed.world_size()
    progress = progress and distributed.is_main()
    if ranks > 1 and catalog.REPAIRS[config.recipe[1]].tunes and config.tune.loss in BATCH_LOSSES:
        raise FuseGPTError(f"--loss {config.tune.loss} compares the windows of a batch with "
                           "each other and cannot be split across ranks; use mse, relative_mse, cosine or kl_hidden "
                           "under torchrun")
    adapter = adapter_for(model)
    depth = len(adapter.blocks(model))
    to_remove = config.blocks_to_remove(depth)
    seqlen = min(config.seqlen, context_length(model))
    started = time.perf_counter()
    torch.manual_seed(config.seed)

    # calibrate: token windows -> hidden states entering every block
    if is_self(config.calib):
        windows = generated_windows(model, tokenizer, config.nsamples, seqlen, config.seed, progress)
    else:
        windows = calibration_windows(tokenizer, config.calib, config.nsamples, seqlen, config.seed, config.data_dir)
    model.eval().requires_grad_(False).to(torch_dtype(config.dtype))
    # the whole model on the compute device when it fits there with the tuning's working set;
    # else it stays on the host and blocks are onloaded as they run. Hidden states stay on the host.
    planned = plan(model_name or "", config, shape_of(model))
    config = with_tuning_memory(config, planned)
    resident = place(model, device, config.offload, working=sum(planned.device.values()),
                     limit=int(config.device_memory_gib * 2**30) if config.device_memory_gib else None)
    selection_name, repair_name = config.recipe
    needs = catalog.REPAIRS[repair_name]
    embeddings, block_kwargs = capture_block_inputs(model, adapter, windows, config.tune.batch_size, device)
    blocks = list(adapter.blocks(model))
    stack = BlockStack(blocks, block_kwargs, embeddings, device, config.tune.batch_size,
                       cached=config.mi_samples, keep_all=config.hidden_cache == "all",
                       norms=[p for b in blocks for p in adapter.norm_parameters(b)],
                       keep_dense_blocks=needs.dense_blocks(config), keep_dense_final=needs.final_tune(config),
                       progress=progress)
    stack.candidate_group = 1 if resident or device.type == "cpu" else STREAMED_CANDIDATES
    # a candidate that can no longer be chosen stops early, unless every score is wanted in full, or
    # fusion-aware choice ranks the runners-up too
    stack.prune_candidates = not (config.full_scores or config.fuse_eval_candidates)
    report = Report(model=model_name or getattr(model.config, "_name_or_path", ""), method=config.label,
                    config=config.to_dict(),
                    original_depth=depth, seqlen=seqlen, seconds={"calibrate": time.perf_counter() - started},
                    world_size=ranks, shares={"scored blocks": [0] * ranks, "tuning block passes": [0] * ranks})

    criterion, remove, heal = catalog.CRITERIA[selection_name], needs.remover, needs.healer if heal else None
    choose = fusion_aware if repair_name == "fuse" and config.fuse_eval_candidates else criterion.chooser
    ctx = StepContext(model, stack, adapter, config, windows, to_remove, progress=progress)
    latest: dict[int, float] = {}  # every block's most recent score (what rescoring ranks by)
    if checkpoint is not None and checkpoint.exists():
        latest = checkpoint.restore(stack, report)
    elif start is not None:  # its weights into the dense model's own blocks: their placement, no second copy
        blocks = adapter.blocks(model)
        if stack.dense_blocks is not None:  # a dense teacher inside the network keeps the dense weights
            stack.dense_blocks = [copy.deepcopy(b) for b in stack.dense_blocks]
        for block, o in zip(start.blocks, start.origin):
            blocks[o].load_state_dict(block.state_dict())
        stack.install([blocks[o] for o in start.origin], start.origin)
        report.steps = list(start.steps)
    scores = latest
    for step in tqdm(range(len(report.steps), to_remove), desc=config.label, unit="block", disable=not progress,
                     initial=len(report.steps), total=to_remove):
        # score (a one-shot criterion once, on the dense model; an iterative one every step, lazily
        # after the first when `rescore` is set), choose
        ctx = replace(ctx, step=step)
        scored, passes = time.perf_counter(), stack.forward_passes
        stack.score_bounds.clear()
        if step == 0 or not criterion.one_shot:
            with torch.autocast(device.type, torch.bfloat16, enabled=config.score_dtype == "bfloat16"):
                scores = score_step(ctx, criterion.scorer, latest, config.rescore if step else 0,
                                    config.rescore_limit if step else 0)
            latest = {**latest, **scores}
            if criterion.runs_blocks:  # the criteria that run blocks, split over the ranks
                for r in range(ranks):
                    report.shares["scored blocks"][r] += len(range(r, len(scores), ranks))
        chosen = choose(ctx, scores)
        removed, score_seconds, score_passes = stack.origin[chosen], time.perf_counter() - scored, \
            stack.forward_passes - passes
        # group, fuse, tune (or delete, or fit a map)
        outcome = remove(ctx, chosen)
        report.steps.append(StepRecord(step=step, removed=removed, criterion=criterion.reported, scores=scores,
                                       group=outcome.group, losses=outcome.losses,
                                       seconds={"score": score_seconds, **outcome.seconds},
                                       optimizer_steps=outcome.optimizer_steps, block_passes=outcome.block_passes,
                                       score_passes=score_passes, bounds=sorted(stack.score_bounds & scores.keys())))
        _count_passes(report, outcome)
        if checkpoint is not None and distributed.is_main():
            checkpoint.save(stack, report, latest)

    # heal: the repairs that tune the pruned model once, after the last removal, instead of fusing
    if heal:
        stack.release_boundaries()
    outcome = heal(ctx) if heal else None
    if outcome:
        _count_passes(report, outcome)
        report.heal = HealRecord(blocks=outcome.group, losses=outcome.losses, optimizer_steps=outcome.optimizer_steps,
                                 seconds=outcome.seconds, block_passes=outcome.block_passes,
                                 step_losses=outcome.step_losses, trial=outcome.trial,
                                 trial_block_passes=outcome.trial_block_passes)

    # merge: fold every fused linear back into a plain one; install the kept blocks
    merging = time.perf_counter()
    for block in tqdm(stack.blocks, desc="merge", unit="block", leave=False, disable=not progress):
        with onloaded([block], device):  # a streamed block folds on the GPU (a 7B's took a minute on the host)
            merge_block(adapter, block)
    adapter.set_blocks(model, stack.blocks, stack.origin)
    report.seconds["merge"] = time.perf_counter() - merging
    report.seconds["total"] = time.perf_counter() - started
    return CompressResult(model=model, report=report, windows=windows)

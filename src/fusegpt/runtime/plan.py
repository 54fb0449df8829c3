"""A run's plan before the run (`compress --dry-run`): how many blocks go, the peak memory it will
need and the block passes it will make, from the model's config alone (the parameter count comes
from the model built on the meta device: no weight is read or allocated).

Peak host memory, all in the run's dtype of b bytes, for L blocks, K removed, N calibration and M
scoring windows of T tokens, hidden size H, FFN size F, tuning batch B and G blocks tuned together
(P_block parameters each):

    runtime + weights
    + hidden states   (L + 1) M T H b + c N T H b      c: buffers a step holds (2-5, by repair)
                      [--hidden-cache all: (2 L + 5) N T H b]
    + tuning          G B T (7 H + 4 F) b + 8 G P_block 4   (activations autograd keeps for the
                      backward pass; the fused weights, built in fp32 at every forward, the copy
                      autograd keeps of each, their gradients and the host allocator's slack around
                      these short-lived matrices, measured; not growing with the blocks injected
                      into a layer)
                      [on a GPU, device memory: G B T (7 H + 4 F) b + G P_block b + 4 P_block 4,
                      the kept effective weights and one block's fp32 temporaries]

The activation constants were measured with autograd's saved-tensor hooks on fused Llama blocks
(attention is SDPA's, which keeps no T x T matrix); the runtime is what Python, torch and
transformers hold here before any model. `docs/BENCHMARKS.md` compares estimates with measured peaks."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from .. import catalog
from ..config import CompressConfig
from ..errors import FuseGPTError
from .placement import STREAMED_CANDIDATES

RUNTIME = int(0.45 * 2**30)  # Python, torch, transformers and a tokenizer, resident before any model
GIB = 2**30


def available_memory() -> int:
    """Memory this process can still take: MemAvailable of /proc/meminfo (elsewhere: unknown, 0)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@dataclass
class Shape:
    """What the plan needs of a model: depth, sizes and parameter counts."""
    depth: int
    hidden: int
    ffn: int
    parameters: int
    block_parameters: int  # one block's
    context: int  # the longest window it takes (calibration windows are capped at it)
    linears: tuple[tuple[int, int], ...] = ()  # (in, out) of each role linear of a block
    vocab: int = 0  # the LM head's rows


def model_shape(name: str) -> Shape:
    """The shape of a model from its config, with parameters counted on the meta device."""
    import torch

    from ..io import load_config, model_class

    config = load_config(name)
    with torch.device("meta"):
        return shape_of(model_class(config).from_config(config))


def shape_of(model) -> Shape:
    """The shape of a model built from its config (loaded or on the meta device)."""
    from ..fusion.layer import linear_weights
    from ..models import adapter_for
    from .placement import context_length

    adapter = adapter_for(model)
    blocks = adapter.blocks(model)
    text = model.config.get_text_config()
    hidden = getattr(text, "hidden_size", None) or getattr(text, "n_embd")
    ffn = getattr(text, "intermediate_size", None) or getattr(text, "ffn_dim", None) or 4 * hidden
    linears = tuple(tuple(linear_weights(layer)[0].shape[::-1]) for layer in adapter.linears(blocks[0]).values())
    return Shape(depth=len(blocks), hidden=hidden, ffn=ffn,
                 parameters=sum(p.numel() for p in model.parameters()),
                 block_parameters=sum(p.numel() for p in blocks[0].parameters()), context=context_length(model),
                 linears=linears, vocab=getattr(text, "vocab_size", 0) or 0)


@dataclass
class Plan:
    model: str
    shape: Shape
    config: CompressConfig
    remove: int
    host: dict[str, int] = field(default_factory=dict)  # bytes, by part
    device: dict[str, int] = field(default_factory=dict)  # bytes on a GPU, by part (empty on the CPU)
    tuning_passes: int = 0  # forward + backward of one block on one window
    forward_passes: int = 0  # forward only (scoring, refreshing, recomputing), block x window
    available: int = 0
    tuning: "TuningMemory | None" = None  # how the tune holds its working set

    @property
    def peak_host(self) -> int:
        return sum(self.host.values())

    def render(self) -> str:
        c, s = self.config, self.shape
        selection, repair = c.recipe
        lines = [f"plan for {self.model}: {c.method} ({selection} + {repair}), remove {self.remove} of {s.depth} blocks "
                 f"({s.parameters / 1e9:.2f}B parameters, {c.dtype})",
                 f"  calibration: {c.nsamples} x {min(c.seqlen, s.context)} tokens, {c.mi_samples} scoring windows, hidden cache "
                 f"{c.hidden_cache}",
                 f"  peak host memory ~{self.peak_host / GIB:.1f} GiB: "
                 + ", ".join(f"{k} {v / GIB:.1f}" for k, v in self.host.items())]
        if self.device:
            lines.append(f"  peak device memory ~{sum(self.device.values()) / GIB:.1f} GiB: "
                         + ", ".join(f"{k} {v / GIB:.1f}" for k, v in self.device.items()))
        if self.tuning:
            t = self.tuning
            lines.append(f"  tuning: micro-batches of {t.micro_batch} window(s), activations "
                         f"{'recomputed in backward' if t.checkpointed else 'kept'}, optimizer on the "
                         f"{'host' if t.optimizer_on_host else 'device' if self.device else 'host (CPU run)'}")
        lines.append(f"  compute: {self.tuning_passes:,} tuning block passes (forward + backward), "
                     f"~{self.forward_passes:,} forward-only block passes")
        if self.available:
            lines.append(f"  this machine has {self.available / GIB:.1f} GiB of memory available")
        return "\n".join(lines)

    def check(self) -> None:
        """Refuse, in one line, a run that cannot fit in the memory this machine has now, or on the
        GPU it plans for."""
        budget = device_memory(self.config) if self.device else None
        if budget and sum(self.device.values()) > budget:
            raise FuseGPTError(f"this run needs ~{sum(self.device.values()) / GIB:.1f} GiB of GPU memory even with "
                               f"checkpointed activations, micro-batches of 1 and the optimizer on the host, and "
                               f"{budget / GIB:.1f} GiB are available; try --offload always, a lower --rank or "
                               "--lora-rank, or a larger GPU")
        if self.available and self.peak_host > self.available:
            fixes = ["lower --nsamples, --seqlen or --mi-samples"]
            if self.config.hidden_cache == "all":
                fixes.append("--hidden-cache scoring")
            if self.config.dtype == "float32":
                fixes.append("--dtype bfloat16")
            if "tuning" in self.host:
                fixes.append("a GPU for the tuning")
            fixes.append("a machine with more memory")
            raise FuseGPTError(f"this run needs ~{self.peak_host / GIB:.1f} GiB of host memory and "
                               f"{self.available / GIB:.1f} GiB are available; try {', '.join(fixes)}")


# a chunk's vocabulary-wide fp32 tensors (tuning/losses.py): the teacher's probabilities and the logits,
# reused in place; a soft-cap's tanh, or a bf16 head's products before and after the float32 copy
LOGIT_TEMPORARIES = 4
GPU_TEMPORARIES = 4  # one block's fp32 effective weights and their gradients, in P_block x 4 bytes (estimated)
CPU_SLACK = 13  # the host's: the same temporaries and the allocator's slack around them, measured (bench/memory.py --tune)


@dataclass
class TuningMemory:
    """How a tune holds its working set, and what that takes where (bytes by part)."""

    checkpointed: bool  # each block's activations recomputed in backward
    micro_batch: int  # windows per forward/backward
    optimizer_on_host: bool  # Adam's moments and fp32 masters in host memory
    device: dict[str, int] = field(default_factory=dict)
    host: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.device.values()) + sum(self.host.values())


def device_memory(config: CompressConfig) -> int | None:
    """The device memory a GPU run may plan for: `device_memory_gib`, else the GPU's free memory
    (None: no GPU here and none given, so the plan is not bounded)."""
    if config.device_memory_gib:
        return int(config.device_memory_gib * GIB)
    from .placement import free_memory, resolve_device

    device = resolve_device(config.device)
    return free_memory(device) if device.type == "cuda" and _cuda_available() else None


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def trainable_count(shape: Shape, config: CompressConfig, tuned: int, injections: int) -> int:
    """Parameters a tune trains: LoRA on every role linear of the tuned blocks, the coefficients
    of every injection into them (one per removed block and neighbour), and the norms."""
    rank, lora = config.fusion.rank, config.fusion.lora_rank or config.fusion.rank
    form = config.fusion.coefficient
    per_lora = sum(min(lora, i, o) * (i + o) for i, o in shape.linears)
    per_injection = sum({"lowrank": min(rank, i, o) * (i + o), "vector": o, "full": i * o}[form] + o
                        for i, o in shape.linears)
    norms = shape.block_parameters - sum(i * o for i, o in shape.linears)
    return tuned * (per_lora + max(norms, 0)) + injections * per_injection


def tuning_memory(shape: Shape, config: CompressConfig, tuned: int, k: int, on_gpu: bool, checkpointed: bool,
                  micro: int, on_host: bool) -> TuningMemory:
    """The working set of tuning `tuned` blocks together (b bytes per model value):

        activations     tuned x m x T x (7 H + 4 F) b, or with checkpointing the hidden states
                        between blocks tuned x m x T x H b plus one block's m x T x (7 H + 4 F) b
        kept weights    the effective weights autograd keeps for backward: tuned (1 with
                        checkpointing) x P_block x b
        trainables      16 bytes per trained parameter (fp32 value, gradient, Adam's moments);
                        with the optimizer on the host, 4 on the device (the value) and 16 on the
                        host (master, gradient, moments)
        temporaries     one block's fp32 effective weights and gradients: 4 P_block x 4 on a GPU;
                        on the host, measured with the allocator's slack: 13 P_block x 4
        on a GPU also   the tuned blocks and the removed blocks injected into them, in b bytes
        trial           with R pairs of rates in the trial, 12 ceil(R / 2) bytes per trainable on the host
        logits          with --distill logits, the head (V x H b) and a chunk's vocabulary-wide fp32
                        tensors (4 x min(2^25, m x T x V) x 4 bytes: LogitDistillation's chunking)
    """
    b = 2 if config.dtype == "bfloat16" else 4
    t, h, f, p = min(config.seqlen, shape.context), shape.hidden, shape.ffn, shape.block_parameters
    injects = catalog.REPAIRS[config.recipe[1]].injects
    injections = (sum(min(config.fusion.group_size, shape.depth - step - 1) for step in range(k))
                  if injects and tuned > min(config.fusion.group_size, shape.depth - 1)
                  else min(tuned, config.fusion.group_size) if injects else 0)
    block_activations = micro * t * (7 * h + 4 * f) * b
    activations = (tuned * micro * t * h * b + block_activations) if checkpointed else tuned * block_activations
    kept = (1 if checkpointed else tuned) * p * b
    trained = trainable_count(shape, config, tuned, injections)
    memory = TuningMemory(checkpointed, micro, on_host)
    working = {"activations": activations, "kept weights": kept}
    if config.tune.distill == "logits":  # the head, and a chunk of at most 2^25 logits (a micro-batch's, if fewer)
        working["logits"] = shape.vocab * h * b + LOGIT_TEMPORARIES * min(2**25, micro * t * shape.vocab) * 4
    if on_gpu:
        memory.device.update(working)
        memory.device["trainables"] = trained * (4 if on_host else 16)
        memory.device["temporaries"] = GPU_TEMPORARIES * p * 4
        memory.device["blocks onloaded"] = tuned * p * b + (k * p * b if injects else 0)
        if on_host:
            memory.host["optimizer"] = trained * 16
    else:
        memory.host.update(working)
        memory.host["trainables"] = trained * 16
        memory.host["temporaries"] = CPU_SLACK * p * 4
    rates = config.tune.trial_runs()
    if tuned == shape.depth - k and rates > 1:
        # the trial's waiting runs, at most half of them (tuning/trial.py): each one's values or
        # master (4 bytes a trainable) and Adam's moments (8), parked on the host
        memory.host["trial"] = trained * 12 * math.ceil(rates / 2)
    return memory


def choose_tuning_memory(shape: Shape, config: CompressConfig, tuned: int, k: int, on_gpu: bool,
                         budget: int | None) -> TuningMemory:
    """The fastest way to hold the tune that fits `budget` (device memory on a GPU, the host's
    otherwise; None: unbounded): whole batches without checkpointing first, then checkpointing,
    then smaller micro-batches, then (on a GPU) the optimizer on the host. Settings the config
    fixes are kept; when nothing fits, the smallest."""
    tune = config.tune
    batch = min(tune.batch_size, config.nsamples)
    micros = [batch] + [m for m in (8, 4, 2, 1) if m < batch]
    options = [(c, m, o) for o in (False, True) if on_gpu or not o for c in (False, True) for m in micros
               if c or m == batch]
    options = [(c, m, o) for c, m, o in options
               if (tune.checkpoint_activations is None or c == tune.checkpoint_activations)
               and (tune.micro_batch is None or m == min(tune.micro_batch, batch))
               and (tune.optimizer_on_host is None or o == tune.optimizer_on_host)]
    if not options:  # the config fixes all three
        options = [(bool(tune.checkpoint_activations), min(tune.micro_batch or batch, batch), bool(tune.optimizer_on_host))]
    plans = [tuning_memory(shape, config, tuned, k, on_gpu, *option) for option in options]
    fitting = [m for m in plans if budget is None or (sum(m.device.values()) if on_gpu else m.total) <= budget]
    return fitting[0] if fitting else min(plans, key=lambda m: sum(m.device.values()) if on_gpu else m.total)


def streams(config: CompressConfig, shape: Shape, working: int) -> bool:
    """Whether the run leaves the model on the host and streams its blocks to a GPU (placement.py)."""
    from .placement import resolve_device, stays_on_device

    if resolve_device(config.device).type == "cpu":
        return False
    weights = shape.parameters * (2 if config.dtype == "bfloat16" else 4)
    return not stays_on_device(weights, working, device_memory(config), config.offload)


def plan(name: str, config: CompressConfig, shape: Shape | None = None) -> Plan:
    """The plan of `compress` for the model `name` with `config`, without loading its weights."""
    from .placement import resolve_device

    config.validate()
    shape = shape or model_shape(name)
    k = config.blocks_to_remove(shape.depth)
    selection, repair = config.recipe
    b = 2 if config.dtype == "bfloat16" else 4
    n, m, t, h = config.nsamples, min(config.mi_samples, config.nsamples), min(config.seqlen, shape.context), \
        shape.hidden
    window = t * h * b
    result = Plan(model=name, shape=shape, config=config, remove=k, available=available_memory())
    result.host["runtime"] = RUNTIME
    result.host["weights"] = shape.parameters * b
    if config.hidden_cache == "all":
        result.host["hidden states"] = (2 * shape.depth + 5) * n * window
    else:
        result.host["hidden states"] = (shape.depth + 1) * m * window + catalog.REPAIRS[config.recipe[1]].buffers(config) * n * window

    needs = catalog.REPAIRS[repair]
    final = needs.final_tune(config)  # a tune of every kept block after the last step
    tuned = shape.depth - k if final else min(config.fusion.group_size, shape.depth - 1) if needs.tunes else 0
    if tuned:
        on_gpu = resolve_device(config.device).type != "cpu"
        scoring_cache = 0 if config.hidden_cache == "all" else (shape.depth + 1) * m * window
        # the host holds all else beside the tune; a final tune runs after the scoring cache is freed
        beside = result.peak_host - (scoring_cache if final and config.tune.epochs == 0 else 0)
        # the dense top-k teacher of a final logit tune (int32 ids, fp32 log-probabilities, each
        # position's rest), built beside the dense output it replaces (predictions.dense_targets)
        top_k = final and config.tune.distill == "logits" and config.tune.distill_top_k
        positions = n * (t // config.tune.distill_stride)
        teacher = positions * (8 * min(config.tune.distill_top_k, shape.vocab) + 4) if top_k else 0
        beside += teacher
        # 90% of the device, as placement leaves for the allocator's fragmentation; the host's available rest
        gpu = device_memory(config) if on_gpu else None
        budget = (int(0.9 * gpu) if gpu else None) if on_gpu else (result.available - beside if result.available else None)
        memory = choose_tuning_memory(shape, config, tuned, k, on_gpu, budget)
        result.tuning = memory
        result.device.update(memory.device)
        host = sum(memory.host.values()) + teacher
        if final and config.tune.epochs == 0:  # what the tune adds to the peak of choosing
            host = max(0, host - scoring_cache)
        if host:
            result.host["tuning"] = host

    # a streamed model scores candidates in groups, holding each one's hidden states on the host
    if catalog.CRITERIA[selection].runs_blocks and streams(config, shape, sum(result.device.values())):
        result.host["candidate states"] = min(STREAMED_CANDIDATES, shape.depth) * m * window

    # compute: tuning passes (block x window, forward + backward), as the run counts them, and forward-only passes
    result.tuning_passes = needs.passes(config, shape.depth, k, n)
    forward = shape.depth * n  # the first pass
    limit = config.rescore_limit if config.rescore else 0
    for step in range(k):
        depth = shape.depth - step
        if catalog.CRITERIA[selection].runs_blocks:  # each candidate's input is cached; the blocks after it run
            scored = depth if step == 0 or not limit else min(limit, depth)  # at most the first ones: the longest
            forward += sum(depth - 1 - i for i in range(scored)) * m
        forward += depth * m  # refresh (at most)
        if config.hidden_cache != "all":  # a group's input (and dense teacher) from the embeddings, at most
            forward += needs.recomputes(config) * depth * n
    result.forward_passes = forward
    return result

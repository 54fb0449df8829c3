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

from dataclasses import dataclass, field
from pathlib import Path

from .config import BLOCK_RUNNING_SELECTIONS, CompressConfig
from .errors import FuseGPTError

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


def model_shape(name: str) -> Shape:
    """The shape of a model from its config, with parameters counted on the meta device."""
    import torch

    from .io import load_config, model_class

    config = load_config(name)
    with torch.device("meta"):
        return shape_of(model_class(config).from_config(config))


def shape_of(model) -> Shape:
    """The shape of a model built from its config (loaded or on the meta device)."""
    from .models import adapter_for
    from .pipeline import context_length

    blocks = adapter_for(model).blocks(model)
    text = model.config.get_text_config()
    hidden = getattr(text, "hidden_size", None) or getattr(text, "n_embd")
    ffn = getattr(text, "intermediate_size", None) or getattr(text, "ffn_dim", None) or 4 * hidden
    return Shape(depth=len(blocks), hidden=hidden, ffn=ffn,
                 parameters=sum(p.numel() for p in model.parameters()),
                 block_parameters=sum(p.numel() for p in blocks[0].parameters()), context=context_length(model))


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
        lines.append(f"  compute: {self.tuning_passes:,} tuning block passes (forward + backward), "
                     f"~{self.forward_passes:,} forward-only block passes")
        if self.available:
            lines.append(f"  this machine has {self.available / GIB:.1f} GiB of memory available")
        return "\n".join(lines)

    def check(self) -> None:
        """Refuse, in one line, a run that cannot fit in the memory this machine has now."""
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


def _buffers(config: CompressConfig) -> int:
    """N-window hidden-state buffers a step holds at its peak (calibrate.BlockStack): the
    embeddings and a run's buffer for every repair; a fused group's input and teacher (and the
    seam map's input beside a group teacher); the dense output when healing needs it."""
    repair = config.recipe[1]
    if repair == "fuse":
        if config.tune.epochs == 0:  # no local tuning: no group input or teacher
            return 2 + (config.tune.global_epochs > 0)
        group_teacher_and_map = config.tune.teacher == "group" and config.fusion.seam_map
        return 3 + group_teacher_and_map + (config.tune.global_epochs > 0)
    return 2


def plan(name: str, config: CompressConfig, shape: Shape | None = None) -> Plan:
    """The plan of `compress` for the model `name` with `config`, without loading its weights."""
    from .pipeline import resolve_device

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
        result.host["hidden states"] = (shape.depth + 1) * m * window + _buffers(config) * n * window

    tuned = {"fuse": min(config.fusion.group_size, shape.depth - 1), "lora": shape.depth - k}.get(repair, 0)
    if repair == "fuse" and config.tune.global_epochs:
        tuned = shape.depth - k
    if tuned:
        batch = min(config.tune.batch_size, n)
        activations = tuned * batch * t * (7 * h + 4 * shape.ffn) * b
        on_gpu = resolve_device(config.device).type != "cpu"
        weights = (tuned * shape.block_parameters * b + 4 * shape.block_parameters * 4 if on_gpu
                   else 8 * tuned * shape.block_parameters * 4)
        (result.device if on_gpu else result.host)["tuning"] = activations + weights
        if on_gpu:
            result.device["blocks onloaded"] = tuned * shape.block_parameters * b

    # compute: tuning passes (block x window, forward + backward), as the run counts them, and forward-only passes
    args = (shape.depth, k, config.fusion.group_size, n)
    if repair == "fuse":
        result.tuning_passes = config.tune.fusion_block_passes(*args)
    elif repair == "lora":
        result.tuning_passes = config.tune.lora_epochs(*args) * n * (shape.depth - k)
    forward = shape.depth * n  # the first pass
    for step in range(k):
        depth = shape.depth - step
        if selection in BLOCK_RUNNING_SELECTIONS:  # each candidate's input is cached; the blocks after it run
            forward += depth * (depth - 1) // 2 * m
        forward += depth * m  # refresh (at most)
        if repair in ("fuse", "linear") and config.hidden_cache != "all":
            # a group's input and its dense teacher, from the embeddings (at most); the map's input alone
            forward += (2 if repair == "fuse" and config.tune.epochs else 1) * depth * n
    result.forward_passes = forward
    return result

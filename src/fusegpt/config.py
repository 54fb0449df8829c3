"""Run settings as dataclasses. Defaults are the best recipe measured (docs/BENCHMARKS.md);
where we deviate, the field's comment says why."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Literal

from .catalog import ALIASES, CRITERIA, METHODS as _METHODS, REPAIRS as _REPAIRS, method as _method

Method = str  # a name of catalog.METHODS (or an earlier release's alias)
SelectionName = Literal["mi", "bi", "nll", "kl", "last", "span", "given"]
RepairName = Literal["none", "fuse", "lora", "linear"]
CoefficientForm = Literal["lowrank", "vector", "full"]
LossName = Literal["kl_batch", "kl_hidden", "mse", "relative_mse", "cosine"]
DType = Literal["float32", "bfloat16"]
HiddenCache = Literal["scoring", "all"]
Distill = Literal["hidden", "logits"]

# method shortcuts: (selection criterion, repair); catalog.py says what each means
RECIPES: dict[str, tuple[str, str]] = {name: (m.selection, m.repair) for name, m in _METHODS.items()}
METHODS: tuple[str, ...] = tuple(RECIPES)
SELECTION_NAMES: tuple[str, ...] = tuple(CRITERIA)
# the iterative criteria that run the blocks after every candidate (the costly ones, split over ranks)
BLOCK_RUNNING_SELECTIONS: tuple[str, ...] = tuple(n for n, c in CRITERIA.items() if c.runs_blocks)
REPAIR_NAMES: tuple[str, ...] = tuple(_REPAIRS)
COEFFICIENT_FORMS: tuple[str, ...] = ("lowrank", "vector", "full")
LOSSES: tuple[str, ...] = ("kl_batch", "kl_hidden", "mse", "relative_mse", "cosine")
TEACHERS: tuple[str, ...] = ("group", "dense")
DISTILLS: tuple[str, ...] = ("hidden", "logits")
DTYPES: tuple[str, ...] = ("float32", "bfloat16")
HIDDEN_CACHES: tuple[str, ...] = ("scoring", "all")
OFFLOADS: tuple[str, ...] = ("auto", "never", "always")
TASKS: tuple[str, ...] = ("piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "boolq", "openbookqa",
                          "lambada")  # zero-shot tasks, by lm-eval's name (lambada: lambada_openai)


def torch_dtype(name: str):
    """The torch dtype of a `--dtype` name (torch is imported only when a run needs it)."""
    import torch

    return getattr(torch, name)


@dataclass
class FusionConfig:
    """How a removed block's weights are injected into its neighbours."""

    group_size: int = 7  # neighbours G around the removed block (window of G + 1)
    coefficient: CoefficientForm = "lowrank"
    rank: int = 128  # rank of C = P Q (capped at min(out, in) of each layer)
    lora_rank: int = 128  # LoRA on each neighbour's own weight; 0 disables
    train_norms: bool = True  # neighbours' norm weights train at the low learning rate
    # before tuning, fold ReplaceMe's least-squares map for the removed block into the block before
    # it, so that tuning starts from the compensated model instead of the block-removed one. Off by
    # default: fitted on the calibration windows, it fits that corpus (C4 and zero-shot got worse on
    # SmolLM2) and it steers the selection criterion, which then scores a mapped model
    seam_map: bool = False  # paper: no such step
    # scale each injected weight to the receiving layer's norm, so that the coefficients move the
    # weights at the same pace whatever the removed block's scale: a scale that norms and linear
    # partners leave free (the rescaled and the original model fuse to the same weights), and on
    # dev as good or slightly better in every pair measured (docs/BENCHMARKS.md)
    normalize_donors: bool = True  # paper: no


@dataclass
class TuneConfig:
    """Tuning of the fused coefficients (and LoRA, norms): per group after each removal and/or
    of every kept block at the end."""

    loss: LossName = "relative_mse"  # paper: kl_batch (see docs/BENCHMARKS.md for why not)
    # epochs of tuning each fused group right after its removal. 0: each removal only injects the
    # block through zero coefficients, and the global tune below trains every coefficient at once;
    # at equal block passes this beat local tuning and LoRA healing (docs/BENCHMARKS.md)
    epochs: int = 0  # paper: 20
    batch_size: int = 8
    coef_lr: float = 1e-2  # of local tuning and --fuse-eval trials; paper: 1e-3
    lr: float = 1e-3  # LoRA and norms; paper: 9.65e-6
    betas: tuple[float, float] = (0.9, 0.95)
    # what a group learns to reproduce when it is tuned locally: "group", its own output before
    # this removal (the paper), or "dense", the dense model's hidden states at the group's end,
    # which also undoes the error that earlier removals left at its input
    teacher: Literal["group", "dense"] = "dense"  # paper: group
    # after the last removal, epochs of tuning every kept block's coefficients, LoRA and norms
    # together against the dense model's final hidden states: local tunes alone fit the
    # calibration corpus; this end-to-end tune is what carries to other text (0: the paper's)
    global_epochs: int = 4
    # learning rate of the fusion coefficients in that global tune (None: `lr`, like LoRA and
    # norms). Starting at zero they need more than LoRA's 1e-3 to use the recycled weights; 1e-2
    # fits the calibration corpus (SmolLM2's C4 and zero-shot got worse), 3e-2 diverges
    global_coef_lr: float | None = 3e-3
    # other coefficient rates that a trial weighs against `global_coef_lr` before that global tune:
    # each runs its first epoch from the same start, held-out calibration windows judge, the best goes
    # on (0: the coefficients stay at zero, which is LoRA healing); empty: no trial. With 0 it chose
    # 3e-3 on SmolLM2 and 0 on Gemma 3, the repair that was better on each one's dev text, for about
    # a quarter more tuning passes (docs/BENCHMARKS.md, "Recycling or healing")
    trial_rates: tuple[float, ...] = (0.0,)
    # what the global tune and LoRA healing match: the dense model's next-token distributions
    # through the model's own head (KL over the vocabulary, a chunk of positions at a time), or its
    # final hidden states (by `loss`). Logits won on SmolLM2's dev by 14% / 10% for fusion and LoRA
    # alike and lost 1-4% on pydoc's (docs/BENCHMARKS.md); they cost the head's passes each step
    distill: Distill = "logits"
    # with logits: the dense model's k most likely tokens and the rest's mass at every position,
    # computed once before the tune, are the teacher (the (k + 1)-bin KL; 0: the whole vocabulary,
    # its logits recomputed every step from the dense model's final hidden states)
    distill_top_k: int = 0
    # the dtype of the tunes' block products: "bfloat16" runs them under autocast (2x on a CPU with
    # AVX512-BF16 or AMX, and on GPUs), with weights, trainables, Adam and the loss in their own dtype
    compute: DType = "float32"
    warmup: float = 0.0  # share of a tune's optimiser steps over which the rates ramp up (then cosine decay)
    # memory of the tunes, without changing what they compute (up to float rounding): windows per
    # forward/backward pass, gradients accumulated over a batch (None: the whole batch), and
    # recomputing each block's activations in backward instead of keeping them. `compress` sets
    # both from the plan when the working set would not fit (None here: decide then)
    micro_batch: int | None = None
    checkpoint_activations: bool | None = None
    optimizer_on_host: bool | None = None  # Adam's state and fp32 masters in host memory (a GPU run's trainables)
    # epochs of LoRA healing (the lora repair); None: the fewest whose block passes reach those of
    # fusegpt with the same settings, the fair budget of the comparison (methods/lora.py)
    heal_epochs: int | None = None

    def fusion_block_passes(self, depth: int, remove: int, group_size: int, windows: int) -> int:
        """Block passes (forward + backward of one block on one window) of fusegpt's tuning: each
        removal tunes its min(G, depth - 1) neighbours for `epochs`, then `global_epochs` tune
        every kept block."""
        local = sum(min(group_size, depth - step - 1) for step in range(remove))
        return windows * (self.epochs * local + self.global_epochs * (depth - remove))

    def trial_runs(self) -> int:
        """How many coefficient rates the global tune's trial runs (1: no trial; methods/lora.py,
        `heal_fused`)."""
        if self.global_epochs < 2 or not self.trial_rates:
            return 1
        return len({*self.trial_rates, self.global_coef_lr or self.lr})

    def trial_block_passes(self, depth: int, remove: int, windows: int) -> int:
        """Block passes of the rates a trial does not keep: each runs the global tune's first epoch
        on the windows not held out."""
        return (self.trial_runs() - 1) * (windows - held_out_windows(windows)) * (depth - remove)

    def lora_epochs(self, depth: int, remove: int, group_size: int, windows: int) -> int:
        """`heal_epochs`, or the fewest LoRA epochs over the kept blocks with at least fusegpt's passes."""
        if self.heal_epochs is not None:
            return self.heal_epochs
        return math.ceil(self.fusion_block_passes(depth, remove, group_size, windows) / (windows * (depth - remove)))


def held_out_windows(windows: int) -> int:
    """The calibration windows a trial judges on: a sixteenth, at least 2 and at most 16, and never
    more than a quarter."""
    return max(1, min(windows // 4, max(2, min(16, windows // 16))))


@dataclass
class CompressConfig:
    """Everything `compress` needs besides the model and tokenizer."""

    # fusion on the blocks whose removal moves the predictions least from the dense model's (KL):
    # MI's cosine of final hidden states picked a block on SmolLM2 whose loss no repair recovered,
    # and SLEB's calibration loss, with one noisy label per token, changed its pick with the
    # calibration seed on pydoc (docs/BENCHMARKS.md); --preset paper: fusegpt (MI + fusion)
    method: Method = "kl-fuse"
    selection: SelectionName | None = None  # overrides the method's criterion
    blocks: list[int] | None = None  # original indices to remove, in order (selection "given"): compare repairs
    repair: RepairName | None = None  # overrides the method's repair
    sparsity: float | None = 0.25
    num_remove: int | None = None  # overrides sparsity when set
    calib: str = "wikitext2"
    nsamples: int = 128
    seqlen: int = 2048  # capped at the model's context
    mi_samples: int = 32  # calibration windows used to score blocks (MI, BI, NLL, KL, fusion trials)
    # the kl criterion's dense side: each scored position's top-k tokens and the rest's mass (0: the
    # whole vocabulary), and every kl_stride-th position scored (0: only where the LM head would cost
    # a candidate more than its blocks); both keep a large vocabulary cheap
    kl_top_k: int = 64
    kl_stride: int = 0
    # after the first step, an iterative criterion rescores lazily, `rescore` blocks at a time in
    # the order of their last scores, until no unscored block can beat the best (0: every block)
    rescore: int = 4
    # and rescores at most `rescore_limit` blocks a step (0: no limit), those that were closest to
    # the best of the step they were last scored in: a budget, no longer exact. At 8 it chose the
    # lazy default's blocks on pydoc (10 runs) and SmolLM2 in a third of the time (docs/BENCHMARKS.md)
    rescore_limit: int = 8
    # score every candidate to the end (every reported score exact, for plots of them) instead of
    # stopping one once its partial score rules it out: the same blocks either way, slower
    full_scores: bool = False
    # fusion-aware choice (fusing methods only; the authors' --fuse-eval): trial-fuse each of the k
    # lowest-scored blocks with a short tune and remove the one that keeps the output closest; 0 is off
    fuse_eval_candidates: int = 0
    fuse_eval_epochs: int = 1  # tuning epochs of each trial
    dtype: DType = "float32"
    device: str = "auto"
    device_memory_gib: float | None = None  # the GPU memory the run may use (None: its free memory)
    # which hidden states stay in host memory: "scoring", every block's on the mi_samples windows
    # only (the rest recomputed when a step needs them; memory flat in depth x data), or "all",
    # every block's on every window (no recomputation; O(depth x nsamples) memory). Same results.
    hidden_cache: HiddenCache = "scoring"
    # the model stays on the compute device for the whole run when it fits ("auto"), or streams
    # block by block from the host ("always"; "never" keeps it there regardless); placement.py
    offload: Literal["auto", "never", "always"] = "auto"
    seed: int = 0
    data_dir: str | None = None
    fusion: FusionConfig = field(default_factory=FusionConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)

    def blocks_to_remove(self, depth: int) -> int:
        """K = ceil(L * s) (25% of 32 = 8), or num_remove when given; validated against depth."""
        from .errors import FuseGPTError

        if self.blocks:
            if len(set(self.blocks)) != len(self.blocks) or not all(0 <= b < depth for b in self.blocks):
                raise FuseGPTError(f"--blocks must be distinct indices of the model's {depth} blocks, got {self.blocks}")
            k = len(self.blocks)
        elif self.num_remove is not None:
            k = self.num_remove
            if k < 1:
                raise FuseGPTError(f"--num-remove must be at least 1, got {k}")
        else:
            s = self.sparsity
            if s is None or not 0 < s < 1:
                raise FuseGPTError(f"--sparsity must be in (0, 1), got {s}; e.g. 0.25 removes a quarter of the blocks")
            k = math.ceil(round(depth * s, 9))
        if k >= depth:
            raise FuseGPTError(
                f"cannot remove {k} of {depth} blocks: at least one must remain; lower --sparsity or --num-remove"
            )
        return k

    @property
    def recipe(self) -> tuple[str, str]:
        """(selection, repair) of this run: the method's, with any override ("given" with `blocks`)."""
        chosen = _method(self.method)
        return self.selection or ("given" if self.blocks else chosen.selection), self.repair or chosen.repair

    @property
    def label(self) -> str:
        """What this run does, by name: the method whose recipe it is, else "selection + repair"."""
        recipe = self.recipe
        if recipe == RECIPES.get(ALIASES.get(self.method, self.method)):
            return ALIASES.get(self.method, self.method)
        return next((name for name, r in RECIPES.items() if r == recipe), " + ".join(recipe))

    def validate(self) -> None:
        """Reject settings that cannot run, before any work is done."""
        from .errors import FuseGPTError

        checks = [
            (self.method in METHODS or self.method in ALIASES,
             f"--method must be one of {', '.join(METHODS)}, got {self.method!r}"),
            (self.fusion.coefficient in COEFFICIENT_FORMS,
             f"--coef must be one of {', '.join(COEFFICIENT_FORMS)}, got {self.fusion.coefficient!r}"),
            (self.tune.loss in LOSSES, f"--loss must be one of {', '.join(LOSSES)}, got {self.tune.loss!r}"),
            (self.dtype in DTYPES, f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}"),
            (self.offload in OFFLOADS, f"--offload must be one of {', '.join(OFFLOADS)}, got {self.offload!r}"),
            (self.hidden_cache in HIDDEN_CACHES,
             f"--hidden-cache must be one of {', '.join(HIDDEN_CACHES)}, got {self.hidden_cache!r}"),
            (self.nsamples >= 1, f"--nsamples must be at least 1, got {self.nsamples}"),
            (self.mi_samples >= 1, f"--mi-samples must be at least 1, got {self.mi_samples}"),
            (self.device_memory_gib is None or self.device_memory_gib > 0,
             f"--device-memory must be a positive number of GiB, got {self.device_memory_gib}"),
            (self.kl_top_k >= 0, f"--kl-top-k must be 0 (the whole vocabulary) or more, got {self.kl_top_k}"),
            (self.kl_stride >= 0, f"--kl-stride must be 0 (automatic) or more, got {self.kl_stride}"),
            (self.rescore >= 0, f"--rescore must be 0 (every block) or more, got {self.rescore}"),
            (self.rescore_limit >= 0, f"--rescore-limit must be 0 (no limit) or more, got {self.rescore_limit}"),
            (self.fuse_eval_candidates >= 0, f"--fuse-eval must be 0 (off) or more, got {self.fuse_eval_candidates}"),
            (self.selection is None or self.selection in SELECTION_NAMES,
             f"--selection must be one of {', '.join(SELECTION_NAMES)}, got {self.selection!r}"),
            (self.repair is None or self.repair in REPAIR_NAMES,
             f"--repair must be one of {', '.join(REPAIR_NAMES)}, got {self.repair!r}"),
            (self.fuse_eval_candidates == 0 or self.method not in (*METHODS, *ALIASES) or self.recipe[1] == "fuse",
             f"--fuse-eval trial-fuses candidates and needs a fusing method (fusegpt, kl-fuse, sleb-fuse or "
             f"--repair fuse), got {self.method!r}"),
            (self.fuse_eval_epochs >= 1, f"--fuse-eval-epochs must be at least 1, got {self.fuse_eval_epochs}"),
            (self.seqlen >= 2, f"--seqlen must be at least 2, got {self.seqlen}"),
            (self.fusion.group_size >= 1, f"--group-size must be at least 1, got {self.fusion.group_size}"),
            (self.fusion.rank >= 1, f"--rank must be at least 1, got {self.fusion.rank}"),
            (self.fusion.lora_rank >= 0, f"--lora-rank must be 0 (off) or more, got {self.fusion.lora_rank}"),
            (self.tune.epochs >= 0, f"--epochs must be 0 or more, got {self.tune.epochs}"),
            (self.tune.global_epochs >= 0, f"--global-epochs must be 0 or more, got {self.tune.global_epochs}"),
            (self.tune.heal_epochs is None or self.tune.heal_epochs >= 1,
             f"--heal-epochs must be at least 1, got {self.tune.heal_epochs}"),
            (self.tune.batch_size >= 1, f"--batch-size must be at least 1, got {self.tune.batch_size}"),
            (self.tune.loss != "kl_batch" or self.tune.batch_size >= 2,
             "--loss kl_batch normalises over the batch and needs --batch-size of at least 2"),
            (self.tune.coef_lr > 0 and self.tune.lr >= 0, "--coef-lr must be positive and --lr non-negative"),
            (all(rate >= 0 for rate in self.tune.trial_rates),
             f"--trial-rates must be rates of 0 or more, got {self.tune.trial_rates}"),
            (self.tune.global_coef_lr is None or self.tune.global_coef_lr > 0,
             f"--global-coef-lr must be positive, got {self.tune.global_coef_lr}"),
            (self.tune.distill in DISTILLS,
             f"--distill must be one of {', '.join(DISTILLS)}, got {self.tune.distill!r}"),
            (self.tune.distill_top_k >= 0,
             f"--distill-top-k must be 0 (the whole vocabulary) or more, got {self.tune.distill_top_k}"),
            (self.tune.compute in DTYPES, f"--tune-dtype must be one of {', '.join(DTYPES)}, got {self.tune.compute!r}"),
            (0 <= self.tune.warmup < 1, f"--warmup is a share of the tuning steps in [0, 1), got {self.tune.warmup}"),
            (self.tune.micro_batch is None or self.tune.micro_batch >= 1,
             f"--micro-batch must be at least 1, got {self.tune.micro_batch}"),
            (self.tune.micro_batch is None or self.tune.micro_batch >= self.tune.batch_size
             or self.tune.loss not in ("kl_batch",),
             "--loss kl_batch compares the windows of a whole batch and cannot be split into --micro-batch"),
            (self.tune.teacher in TEACHERS, f"--teacher must be one of {', '.join(TEACHERS)}, got {self.tune.teacher!r}"),
            ((not self.blocks or self.selection in (None, "given")) and (self.selection != "given" or self.blocks),
             "--selection given needs --blocks, and --blocks works only with --selection given"),
        ]
        for ok, message in checks:
            if not ok:
                raise FuseGPTError(message)
        if self.num_remove is None and not self.blocks:
            self.blocks_to_remove(depth=10**9)  # range check of sparsity alone

    def to_dict(self) -> dict:
        return asdict(self)


# The authors' settings (the paper, arXiv 2411.14507, and their code's defaults), one flag away from our recipe.
PRESETS: dict[str, dict] = {
    "default": {},
    "paper": {"method": "fusegpt", "nsamples": 128, "seqlen": 2048, "mi_samples": 32, "rescore": 0,
              "fusion": {"group_size": 7, "coefficient": "lowrank", "rank": 128, "lora_rank": 128, "train_norms": True,
                         "seam_map": False, "normalize_donors": False},
              "tune": {"loss": "kl_batch", "epochs": 20, "batch_size": 8, "coef_lr": 1e-3, "lr": 9.65e-6,
                       "betas": (0.9, 0.95), "teacher": "group", "global_epochs": 0, "global_coef_lr": None,
                       "distill": "hidden", "distill_top_k": 0, "trial_rates": (), "compute": "float32", "warmup": 0.0, "heal_epochs": None, "micro_batch": None,
                       "checkpoint_activations": None, "optimizer_on_host": None}},
}


def preset(name: str = "default", **overrides) -> CompressConfig:
    """The named settings (`default`: the best recipe we measured; `paper`: the authors'), with
    top-level overrides."""
    from .errors import FuseGPTError

    if name not in PRESETS:
        raise FuseGPTError(f"--preset must be one of {', '.join(PRESETS)}, got {name!r}")
    settings = dict(PRESETS[name])
    fusion, tune = FusionConfig(**settings.pop("fusion", {})), TuneConfig(**settings.pop("tune", {}))
    return CompressConfig(**{**settings, "fusion": fusion, "tune": tune, **overrides})

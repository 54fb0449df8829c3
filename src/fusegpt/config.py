"""Run settings as dataclasses. Defaults are the best recipe measured (docs/BENCHMARKS.md);
where we deviate, the field's comment says why."""
from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, field
from typing import Literal

from .catalog import ALIASES, CRITERIA, METHODS as _METHODS, REPAIRS as _REPAIRS, method as _method
from .options import check_values, option

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


def block_indices(text: str) -> list[int]:
    """`--blocks 3,5,7`."""
    import argparse

    try:
        return [int(i) for i in text.split(",") if i.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated block indices, got '{text}'") from None


def rates(text: str) -> tuple[float, ...]:
    """`--trial-rates 0,1e-3` (empty: none)."""
    import argparse

    try:
        return tuple(float(r) for r in text.split(",") if r.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated learning rates, got '{text}'") from None


AT_LEAST_1 = (lambda v: v >= 1, "at least 1")
AT_LEAST_0 = (lambda v: v >= 0, "0 or more")


def torch_dtype(name: str):
    """The torch dtype of a `--dtype` name (torch is imported only when a run needs it)."""
    import torch

    return getattr(torch, name)


@dataclass
class FusionConfig:
    """How a removed block's weights are injected into its neighbours."""

    group_size: int = option(7, "neighbours G that absorb a removed block (a window of G + 1)", check=AT_LEAST_1)
    coefficient: CoefficientForm = option("lowrank", "coefficient form", flag="--coef", choices=COEFFICIENT_FORMS)
    rank: int = option(128, "rank of low-rank coefficients C = P Q (capped at each layer's size)", check=AT_LEAST_1)
    lora_rank: int = option(128, "LoRA rank on neighbours' own weights (0: off)", check=(lambda v: v >= 0, "0 (off) or more"))
    train_norms: bool = option(True, "neighbours' norm weights train at the low learning rate")
    # before tuning, fold ReplaceMe's least-squares map for the removed block into the block before
    # it, so that tuning starts from the compensated model instead of the block-removed one. Off by
    # default: fitted on the calibration windows, it fits that corpus (C4 and zero-shot got worse on
    # SmolLM2) and it steers the selection criterion, which then scores a mapped model
    seam_map: bool = option(False, "fusegpt: fold ReplaceMe's least-squares map for the removed block into the "
                                   "block before it, then tune (it fits the calibration corpus)")
    # scale each injected weight to the receiving layer's norm, so that the coefficients move the
    # weights at the same pace whatever the removed block's scale: a scale that norms and linear
    # partners leave free (the rescaled and the original model fuse to the same weights), and on
    # dev as good or slightly better in every pair measured (docs/BENCHMARKS.md)
    normalize_donors: bool = option(True, "fusion: scale each injected weight to the receiving layer's norm",
                                    earlier=False)


@dataclass
class TuneConfig:
    """Tuning of the fused coefficients (and LoRA, norms): per group after each removal and/or
    of every kept block at the end."""

    loss: LossName = option("relative_mse", "student/teacher distance on hidden states", choices=LOSSES)
    # epochs of tuning each fused group right after its removal. 0: each removal only injects the
    # block through zero coefficients, and the global tune below trains every coefficient at once;
    # at equal block passes this beat local tuning and LoRA healing (docs/BENCHMARKS.md)
    epochs: int = option(0, "tuning epochs per removed block", check=AT_LEAST_0)
    batch_size: int = option(8, "windows per tuning step", check=AT_LEAST_1)
    coef_lr: float = option(1e-2, "learning rate of the fusion coefficients (local tuning, --fuse-eval trials)",
                            check=(lambda v: v > 0, "positive"))
    lr: float = option(1e-3, "learning rate of LoRA and norm weights", check=AT_LEAST_0)
    betas: tuple[float, float] = (0.9, 0.95)
    # what a group learns to reproduce when it is tuned locally: "group", its own output before
    # this removal (the paper), or "dense", the dense model's hidden states at the group's end,
    # which also undoes the error that earlier removals left at its input
    teacher: Literal["group", "dense"] = option("dense", "what a fused group learns to reproduce: its own output "
                                                "before the removal (group) or the dense model's hidden states at "
                                                "its end (dense)", choices=TEACHERS)
    # after the last removal, epochs of tuning every kept block's coefficients, LoRA and norms
    # together against the dense model (its predictions, or its final hidden states: `distill`):
    # local tunes alone fit the calibration corpus; this end-to-end tune is what carries to other
    # text (0: the paper's)
    global_epochs: int = option(4, "fusegpt: epochs of a final tune of every kept block against the dense model "
                                   "(the LoRA baselines get as many more)", check=AT_LEAST_0)
    # learning rate of the fusion coefficients in that global tune (None: `lr`, like LoRA and
    # norms). Starting at zero they need more than LoRA's 1e-3 to use the recycled weights; 1e-2
    # fits the calibration corpus (SmolLM2's C4 and zero-shot got worse), 3e-2 diverges
    global_coef_lr: float | None = option(3e-3, "fusegpt: learning rate of the fusion coefficients in that "
                                          "global tune (None: --lr; 0: they stay at zero, which is LoRA healing)",
                                          parse=float, check=AT_LEAST_0, earlier=None)
    # decoupled weight decay of the fusion coefficients (AdamW's, per step: lr x decay x value):
    # it pulls the recycled weights back towards zero, where fusion is LoRA healing
    coef_decay: float = option(0.0, "fusion coefficients' decoupled weight decay in the tunes (0: none)",
                               check=AT_LEAST_0, earlier=0.0)
    # the global tune's trial: every pair of a coefficient rate (`global_coef_lr`, `trial_rates`; 0
    # keeps them at zero, which is LoRA healing) and a LoRA/norm rate (`lr`, `trial_lrs`) trains from
    # the same start on a `trial_share` of the first epoch, held-out calibration windows keep the
    # better half, and so on until one goes on (successive halving; tuning/trial.py). It chose 0 and
    # 5e-4 on Gemma 3 (its best LoRA), 3e-3 and 5e-4 on SmolLM2 (docs/BENCHMARKS.md, "A trial of rate pairs")
    trial_rates: tuple[float, ...] = option((0.0,), "fusegpt: other coefficient rates the trial weighs against "
                                            "--global-coef-lr (comma-separated; 0: LoRA healing)", parse=rates,
                                            check=(lambda v: all(r >= 0 for r in v), "rates of 0 or more"), earlier=())
    trial_lrs: tuple[float, ...] = option((5e-4,), "fusegpt: other LoRA and norm rates the trial weighs against --lr, "
                                          "each with every coefficient rate (comma-separated)", parse=rates,
                                          check=(lambda v: all(r > 0 for r in v), "positive rates"), earlier=())
    trial_share: float = option(0.25, "fusegpt: share of the first epoch's windows each round of the trial trains "
                                "before the held-out windows halve the settings", check=(lambda v: 0 < v <= 1, "in (0, 1]"),
                                earlier=1.0)
    # what the global tune and LoRA healing match: the dense model's next-token distributions
    # through the model's own head (KL over the vocabulary, a chunk of positions at a time), or its
    # final hidden states (by `loss`). Logits won on SmolLM2's dev by 14% / 10% for fusion and LoRA
    # alike and lost 1-4% on pydoc's (docs/BENCHMARKS.md); they cost the head's passes each step
    distill: Distill = option("logits", "what the global tune and LoRA healing match: the dense model's final "
                              "hidden states (by --loss) or its next-token distributions (KL over the vocabulary)",
                              choices=DISTILLS, earlier="hidden")
    # with logits: the dense model's k most likely tokens and the rest's mass at every position,
    # computed once before the tune, are the teacher (the (k + 1)-bin KL; 0: the whole vocabulary,
    # its logits recomputed every step from the dense model's final hidden states). 1024 was within
    # 1% of the whole vocabulary on both real models' dev and cut Gemma 3's tune by a quarter
    distill_top_k: int = option(1024, "with --distill logits: the dense model's k most likely tokens per position and "
                                "the rest's mass, computed once, are the target (0: the whole vocabulary, recomputed "
                                "every step)", check=(lambda v: v >= 0, "0 (the whole vocabulary) or more"),
                                earlier=0)
    # with that top-k teacher: the loss on every N-th position only (the blocks still run on all):
    # the head's products, which on a 262k vocabulary cost twice the blocks', shrink N-fold
    distill_stride: int = option(1, "with --distill-top-k: the logit loss on every N-th position only (the blocks "
                                    "still run on all of them)", metavar="N", check=AT_LEAST_1, earlier=1)
    # the dtype of the tunes' products: bfloat16 runs the blocks' under autocast and the logit loss's
    # head on a bf16 copy (weights, Adam, softmax and loss keep theirs); auto: bfloat16 where it runs
    # natively (GPUs from Ampere on, CPUs with AVX512-BF16 or AMX), the default: the tune ~0.6x on
    # both real models, their dev within 1% of float32 (docs/BENCHMARKS.md, "The default in bf16")
    compute: str = option("auto", "the dtype of the tunes' block and LM-head products: float32, bfloat16, or "
                          "auto (bfloat16 where the device runs it natively, else float32)", flag="--tune-dtype",
                          choices=("auto", *DTYPES), earlier="float32")
    warmup: float = option(0.0, "share of each tune's steps over which the learning rates ramp up linearly before "
                                "their cosine decay", check=(lambda v: 0 <= v < 1, "a share of the tuning steps in [0, 1)"),
                          earlier=0.0)
    # memory of the tunes, without changing what they compute (up to float rounding): windows per
    # forward/backward pass, gradients accumulated over a batch (None: the whole batch), and
    # recomputing each block's activations in backward instead of keeping them. `compress` sets
    # both from the plan when the working set would not fit (None here: decide then)
    micro_batch: int | None = option(None, "windows per forward/backward pass, gradients accumulated over each "
                                     "--batch-size batch (None: chosen from the memory the tune has)", parse=int,
                                     check=AT_LEAST_1)
    checkpoint_activations: bool | None = option(None, "recompute each block's activations in backward instead of "
                                                 "keeping them (None: when the tune would not fit otherwise)", parse=bool)
    optimizer_on_host: bool | None = option(None, "GPU runs: keep Adam's state and fp32 master copies in host memory "
                                            "(None: when the tune would not fit on the GPU otherwise)", parse=bool)
    # epochs of LoRA healing (the lora repair); None: the fewest whose block passes reach those of
    # fusegpt with the same settings, the fair budget of the comparison (methods/lora.py)
    heal_epochs: int | None = option(None, "the lora repair: LoRA epochs over every kept block (None: the fewest "
                                     "whose block passes reach fusegpt's with these settings)", parse=int,
                                     check=AT_LEAST_1)

    def fusion_block_passes(self, depth: int, remove: int, group_size: int, windows: int) -> int:
        """Block passes (forward + backward of one block on one window) of fusegpt's tuning: each
        removal tunes its min(G, depth - 1) neighbours for `epochs`, then `global_epochs` tune
        every kept block."""
        local = sum(min(group_size, depth - step - 1) for step in range(remove))
        return windows * (self.epochs * local + self.global_epochs * (depth - remove))

    def trial_settings(self) -> list[tuple[float, float]]:
        """The (coefficient rate, LoRA/norm rate) pairs the global tune's trial weighs, the configured
        pair first (one pair: no trial; methods/lora.py, `heal_fused`)."""
        pairs = [(self.coefficient_rate, self.lr)]
        if self.global_epochs >= 2:
            pairs += itertools.product((self.coefficient_rate, *self.trial_rates), (self.lr, *self.trial_lrs))
        return list(dict.fromkeys(pairs))

    def trial_runs(self) -> int:
        return len(self.trial_settings())

    @property
    def coefficient_rate(self) -> float:
        """The fusion coefficients' rate in the global tune."""
        return self.lr if self.global_coef_lr is None else self.global_coef_lr

    def trial_parts(self, windows: int) -> list[int]:
        """Windows each round of the trial trains, in whole batches: a round per halving of the settings."""
        train = windows - held_out_windows(windows)
        size = max(self.batch_size, int(self.trial_share * train) // self.batch_size * self.batch_size)
        rounds = math.ceil(math.log2(self.trial_runs()))
        return [max(0, min(size, train - i * size)) for i in range(rounds)]

    def trial_block_passes(self, depth: int, remove: int, windows: int) -> int:
        """Block passes of the settings a trial does not keep: each round, all but one of those still in."""
        runs, wasted = self.trial_runs(), 0
        for part in self.trial_parts(windows):
            wasted, runs = wasted + (runs - 1) * part, math.ceil(runs / 2)
        return wasted * (depth - remove)

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
    # calibration seed on pydoc and on Gemma 3, where it won one seed of three (docs/BENCHMARKS.md,
    # "The calibration loss over seeds"); --preset paper: fusegpt (MI + fusion)
    method: Method = option("kl-fuse", "a selection x repair shortcut: " + "; ".join(
        f"{m} = {s} + {r}" for m, (s, r) in RECIPES.items()) + " (earlier names: " + ", ".join(
        f"{a} = {n}" for a, n in ALIASES.items()) + ")", choices=(*METHODS, *ALIASES), metavar="METHOD",
        listed=METHODS)
    selection: SelectionName | None = option(None, "override the method's criterion: " + "; ".join(
        f"{n} ({c.help})" for n, c in CRITERIA.items()), choices=SELECTION_NAMES)
    # original indices to remove, in order (selection "given"): compare repairs on the same blocks
    blocks: list[int] | None = option(None, "remove exactly these original blocks, in this order (comma-separated; "
                                            "instead of --sparsity)", parse=block_indices)
    repair: RepairName | None = option(None, "override the method's repair: " + "; ".join(
        f"{n} ({r.help})" for n, r in _REPAIRS.items()), choices=REPAIR_NAMES)
    sparsity: float | None = 0.25  # the command line's --sparsity and --num-remove exclude each other (cli.py)
    num_remove: int | None = None  # overrides sparsity when set
    calib: str = option("wikitext2", "calibration text: wikitext2, c4, ptb or a .txt/.raw/.jsonl/.parquet file, a "
                                     "comma-separated mix of them (equal numbers of windows from each), or self: text "
                                     "the model samples itself (no corpus, no network)")
    nsamples: int = option(128, "calibration windows", check=AT_LEAST_1)
    seqlen: int = option(2048, "tokens per window (capped at the model's context)", check=(lambda v: v >= 2, "at least 2"))
    mi_samples: int = option(32, "windows used to score blocks (Macro Influence, Block Influence, calibration loss, "
                                 "KL)", check=AT_LEAST_1)
    # the kl criterion's dense side: each scored position's top-k tokens and the rest's mass (0: the
    # whole vocabulary), and every kl_stride-th position scored (0: only where the LM head would cost
    # a candidate more than its blocks); both keep a large vocabulary cheap
    kl_top_k: int = option(64, "kl criterion: the dense model's k most likely tokens per position, and the rest's "
                               "mass, are the target (0: the whole vocabulary)",
                           check=(lambda v: v >= 0, "0 (the whole vocabulary) or more"))
    kl_stride: int = option(0, "kl criterion: score every N-th position (the blocks still run on all; 0: every "
                               "position unless the LM head outweighs the blocks)",
                            check=(lambda v: v >= 0, "0 (automatic) or more"))
    # after the first step, an iterative criterion rescores lazily, `rescore` blocks at a time in
    # the order of their last scores, until no unscored block can beat the best (0: every block)
    rescore: int = option(4, "iterative criteria: after the first step, rescore N blocks at a time in the order of "
                             "their last scores, until no other can beat the best (0: every block every step)",
                          check=(lambda v: v >= 0, "0 (every block) or more"))
    # and rescores at most `rescore_limit` blocks a step (0: no limit), those that were closest to
    # the best of the step they were last scored in: a budget, no longer exact. At 8 it chose the
    # lazy default's blocks on pydoc (10 runs) and SmolLM2 in a third of the time (docs/BENCHMARKS.md)
    rescore_limit: int = option(8, "iterative criteria: rescore at most N blocks a step after the first, those "
                                   "closest to the best of the step they were last scored in (0: as many as "
                                   "--rescore needs)", check=(lambda v: v >= 0, "0 (no limit) or more"))
    # score every candidate to the end (every reported score exact, for plots of them) instead of
    # stopping one once its partial score rules it out: the same blocks either way, slower
    full_scores: bool = option(False, "iterative criteria: score every candidate to the end (every reported score "
                                      "exact) instead of stopping one once it cannot be chosen; the same blocks, slower")
    # auto as for the tune: both real models chose their float32 blocks, choosing ~0.75x ("Choosing in bf16")
    score_dtype: str = option("auto", "the dtype of choosing's block and LM-head products: float32, bfloat16, or "
                              "auto (bfloat16 where the device runs it natively, else float32)",
                              choices=("auto", *DTYPES), earlier="float32")
    # fusion-aware choice (fusing methods only; the authors' --fuse-eval): trial-fuse each of the k
    # lowest-scored blocks with a short tune and remove the one that keeps the output closest; 0 is off
    fuse_eval_candidates: int = option(0, "fusing methods: trial-fuse the K lowest-scored blocks and remove the "
                                          "one whose output stays closest (0: the lowest-scored block)",
                                       flag="--fuse-eval", metavar="K", check=(lambda v: v >= 0, "0 (off) or more"))
    fuse_eval_epochs: int = option(1, "tuning epochs of each --fuse-eval trial", metavar="E", check=AT_LEAST_1)
    dtype: DType = option("float32", "weights and compute dtype", choices=DTYPES)
    device: str = option("auto", "compute device: auto, cpu, cuda, cuda:1 ...")
    device_memory_gib: float | None = option(None, "GPU memory the run may use, in GiB (None: the GPU's free "
                                                   "memory): the model stays on the GPU only if it fits with the tune "
                                                   "in it; with --dry-run, plans for a GPU this machine does not have",
                                             flag="--device-memory", parse=float, metavar="GIB",
                                             check=(lambda v: v > 0, "a positive number of GiB"))
    # which hidden states stay in host memory: "scoring", every block's on the mi_samples windows
    # only (the rest recomputed when a step needs them; memory flat in depth x data), or "all",
    # every block's on every window (no recomputation; O(depth x nsamples) memory). Same results.
    hidden_cache: HiddenCache = option("scoring", "hidden states kept in memory: scoring (every block's on the "
                                       "--mi-samples windows; the rest recomputed, memory flat in depth x --nsamples) "
                                       "or all (every block's on every window: faster, depth x nsamples x seqlen x "
                                       "hidden floats); same results", choices=HIDDEN_CACHES)
    # the model stays on the compute device for the whole run when it fits ("auto"), or streams
    # block by block from the host ("always"; "never" keeps it there regardless); runtime/placement.py
    offload: Literal["auto", "never", "always"] = option(
        "auto", "auto: the model stays on the compute device for the whole run when it fits there, else it stays in "
                "host memory and blocks are streamed to the device as they run; always: stream; never: move it all "
                "to the device regardless", choices=OFFLOADS)
    seed: int = option(0, "seed for windows, initialisation and order")
    # a curve (--num-remove 2,4,6): each depth after the first either repaired from the dense model
    # (0) or from the previous depth's repaired model with N global epochs, the dense model the teacher
    warm_epochs: int = option(0, "a curve's depths after the first: 0 repairs each from the dense model; N >= 1 goes "
                                 "on from the previous depth's repaired model and tunes it N global epochs at the "
                                 "rates the first depth's trial chose (the dense model still the "
                                 "teacher)", metavar="N", check=AT_LEAST_0, earlier=0)
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

        message = check_values(self)
        if message:
            raise FuseGPTError(message)
        checks = [
            (self.fuse_eval_candidates == 0 or self.method not in (*METHODS, *ALIASES) or self.recipe[1] == "fuse",
             f"--fuse-eval trial-fuses candidates and needs a fusing method (fusegpt, kl-fuse, sleb-fuse or "
             f"--repair fuse), got {self.method!r}"),
            (self.tune.loss != "kl_batch" or self.tune.batch_size >= 2,
             "--loss kl_batch normalises over the batch and needs --batch-size of at least 2"),
            (self.tune.micro_batch is None or self.tune.micro_batch >= self.tune.batch_size
             or self.tune.loss not in ("kl_batch",),
             "--loss kl_batch compares the windows of a whole batch and cannot be split into --micro-batch"),
            ((not self.blocks or self.selection in (None, "given")) and (self.selection != "given" or self.blocks),
             "--selection given needs --blocks, and --blocks works only with --selection given"),
            (self.tune.distill_stride == 1 or (self.tune.distill == "logits" and self.tune.distill_top_k > 0),
             "--distill-stride keeps positions of the top-k teacher; it needs --distill logits and --distill-top-k "
             "above 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise FuseGPTError(message)
        if self.num_remove is None and not self.blocks:
            self.blocks_to_remove(depth=10**9)  # range check of sparsity alone

    def to_dict(self) -> dict:
        return asdict(self)

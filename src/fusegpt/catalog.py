"""Every selection criterion and repair, in one place: what each is and needs (the CLI's help, the
config's checks, the plan's memory and compute, the pipeline's buffers, `compare`'s cell
fingerprint) and the code that runs it, named here as "module:function" under `methods/` and
imported only when a run calls it, so that this registry loads without torch. Adding a criterion:
its scoring function in `methods/selection.py` (the measurement itself in `importance/`) and a
`Criterion` line here; a repair: its functions in `methods/` and a `Repair` line here."""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from .config import CompressConfig


def _code(path: str) -> Callable:
    """The function at `path` ("module:function" under fusegpt.methods), imported on first use."""
    module, name = path.split(":")
    return getattr(importlib.import_module(f".methods.{module}", __package__), name)


@dataclass(frozen=True)
class Criterion:
    help: str
    reported: str  # what the scores measure, as the report names it
    score: str  # "module:function" giving one score per current block (or per original index) of a step
    choose: str = "selection:lowest"  # "module:function" giving the current index of the block to remove
    one_shot: bool = False  # scored once on the dense model, those scores kept for every step
    runs_blocks: bool = False  # each candidate runs the blocks after it (the costly kind, split over ranks)
    settings: tuple[str, ...] = ()  # CompressConfig fields that shape its choice (a cell's fingerprint)
    # its choice depends on how many blocks go (a span of K, the K before the last): a curve of depths
    # cannot share one order of removal
    per_depth: bool = False

    @property
    def scorer(self) -> Callable:
        return _code(self.score)

    @property
    def chooser(self) -> Callable:
        return _code(self.choose)


ITERATIVE = ("mi_samples", "rescore", "rescore_limit")
CRITERIA: dict[str, Criterion] = {
    "mi": Criterion("Macro Influence: without which block the final hidden states change least (FuseGPT), "
                    "iterative", "macro_influence", "selection:by_macro_influence", runs_blocks=True,
                    settings=ITERATIVE),
    "bi": Criterion("Block Influence: which block changes its own input least (ShortGPT), once", "block_influence",
                    "selection:by_block_influence", one_shot=True, settings=("mi_samples",)),
    "nll": Criterion("the calibration loss without the block (SLEB), iterative", "calibration_nll",
                     "selection:by_calibration_nll", runs_blocks=True, settings=ITERATIVE),
    "kl": Criterion("the divergence of the next-token predictions from the dense model's without the block, "
                    "iterative", "output_divergence", "selection:by_output_divergence", runs_blocks=True,
                    settings=(*ITERATIVE, "kl_top_k", "kl_stride")),
    "last": Criterion("the blocks before the final one", "position", "selection:by_position",
                      "selection:first_of_the_tail", one_shot=True, per_depth=True),
    "span": Criterion("ReplaceMe's K-block span whose input and output are most alike, once", "span_distance",
                      "selection:by_span_distance", "selection:first_of_the_span", one_shot=True,
                      settings=("mi_samples",), per_depth=True),
    "given": Criterion("the blocks of --blocks, in that order", "given", "selection:unscored",
                       "selection:next_given", one_shot=True),
}


def _fusion_passes(config: CompressConfig, depth: int, remove: int, windows: int) -> int:
    return (config.tune.fusion_block_passes(depth, remove, config.fusion.group_size, windows)
            + config.tune.trial_block_passes(depth, remove, windows))


def _lora_passes(config: CompressConfig, depth: int, remove: int, windows: int) -> int:
    epochs = config.tune.lora_epochs(depth, remove, config.fusion.group_size, windows)
    return epochs * windows * (depth - remove)


@dataclass(frozen=True)
class Repair:
    help: str
    remove: str = "repair:delete_block"  # "module:function" that removes the block at a current index
    # "module:function" that tunes the pruned model once after the last removal (None from it:
    # nothing to do with these settings)
    heal: str | None = None
    tunes: bool = False  # fusion and tuning settings shape its result
    injects: bool = False  # removed blocks' weights live on in the kept ones (donors, coefficients)
    # it recomputes the hidden states before its group from the embeddings at each removal: forward
    # passes a step makes beside scoring (1 for the group's input, 2 with a locally tuned dense teacher)
    recomputes: Callable[[CompressConfig], int] = lambda config: 0
    # the N-window hidden-state buffers a step holds at its peak (calibrate.BlockStack)
    buffers: Callable[[CompressConfig], int] = lambda config: 2
    # a tune of every kept block after the last removal, against the dense model's output
    final_tune: Callable[[CompressConfig], bool] = lambda config: False
    # the dense model's blocks kept to recompute its hidden states inside the network (a dense teacher)
    dense_blocks: Callable[[CompressConfig], bool] = lambda config: False
    passes: Callable[[CompressConfig, int, int, int], int] = lambda config, depth, remove, windows: 0

    @property
    def remover(self) -> Callable:
        return _code(self.remove)

    @property
    def healer(self) -> Callable | None:
        return _code(self.heal) if self.heal else None


def _fusion_buffers(config: CompressConfig) -> int:
    """Embeddings and a run's buffer; a locally tuned group's input and teacher (and the seam map's
    input beside a group teacher); the dense output for a global tune."""
    if config.tune.epochs == 0:
        return 2 + (config.tune.global_epochs > 0)
    group_teacher_and_map = config.tune.teacher == "group" and config.fusion.seam_map
    return 3 + group_teacher_and_map + (config.tune.global_epochs > 0)


REPAIRS: dict[str, Repair] = {
    "none": Repair("delete the block"),
    "fuse": Repair("FuseGPT: inject the block into its neighbours through learnable coefficients, then tune",
                   "fuse:fuse_block", "lora:heal_fused", tunes=True, injects=True,
                   recomputes=lambda config: 2 if config.tune.epochs else 1, buffers=_fusion_buffers,
                   final_tune=lambda config: config.tune.global_epochs > 0,
                   dense_blocks=lambda config: config.tune.teacher == "dense", passes=_fusion_passes),
    "lora": Repair("LoRA-heal the kept blocks against the dense output at the fusing methods' budget",
                   heal="lora:heal_with_lora", tunes=True, buffers=lambda config: 3, final_tune=lambda config: True,
                   passes=_lora_passes),
    "linear": Repair("ReplaceMe's least-squares map folded into the block before", "linear:replace_with_linear_map",
                     recomputes=lambda config: 1),
}


@dataclass(frozen=True)
class Method:
    selection: str
    repair: str
    help: str


METHODS: dict[str, Method] = {
    "fusegpt": Method("mi", "fuse", "FuseGPT as published"),
    "mi": Method("mi", "none", "Macro Influence removal, no repair"),
    "shortgpt": Method("bi", "none", "ShortGPT (2403.03853)"),
    "sleb": Method("nll", "none", "SLEB (2402.09025)"),
    "last": Method("last", "none", "dropping the blocks before the final one (2411.15558, without its fine-tuning)"),
    "mi-lora": Method("mi", "lora", "the paper's Macro Influence + LoRA baseline"),
    "sleb-lora": Method("nll", "lora", "the paper's strongest baseline, SLEB + LoRA"),
    "replaceme": Method("span", "linear", "ReplaceMe (2505.02819), training-free"),
    "mi-linear": Method("mi", "linear", "ReplaceMe's map on Macro Influence's blocks"),
    "sleb-fuse": Method("nll", "fuse", "FuseGPT's repair on SLEB's blocks"),
    "kl-lora": Method("kl", "lora", "LoRA healing on the default's blocks"),
    "kl-fuse": Method("kl", "fuse", "the default: FuseGPT's repair on the blocks whose removal changes the "
                                    "predictions least"),
}
# names of earlier releases, kept for users' scripts: `remove` meant "chosen by Macro Influence"
ALIASES: dict[str, str] = {"remove": "mi", "remove-lora": "mi-lora", "remove-linear": "mi-linear"}


def method(name: str) -> Method:
    return METHODS[ALIASES.get(name, name)]

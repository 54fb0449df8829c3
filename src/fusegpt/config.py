"""Run settings as dataclasses. Defaults follow the paper and the authors' code (ALGORITHM.md);
where we deviate, the field's comment says why."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch

Method = Literal["fusegpt", "remove", "shortgpt", "sleb", "last", "remove-lora"]
CoefficientForm = Literal["lowrank", "vector", "full"]
LossName = Literal["kl_batch", "kl_hidden", "mse", "cosine"]
DType = Literal["float32", "bfloat16"]

METHODS: tuple[str, ...] = ("fusegpt", "remove", "shortgpt", "sleb", "last", "remove-lora")
COEFFICIENT_FORMS: tuple[str, ...] = ("lowrank", "vector", "full")
LOSSES: tuple[str, ...] = ("kl_batch", "kl_hidden", "mse", "cosine")
TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
DTYPES: tuple[str, ...] = tuple(TORCH_DTYPES)


@dataclass
class FusionConfig:
    """How a removed block's weights are injected into its neighbours."""

    group_size: int = 7  # neighbours G around the removed block (window of G + 1)
    coefficient: CoefficientForm = "lowrank"
    rank: int = 128  # rank of C = P Q (capped at min(out, in) of each layer)
    lora_rank: int = 128  # LoRA on each neighbour's own weight; 0 disables
    train_norms: bool = True  # neighbours' norm weights train at the low learning rate


@dataclass
class TuneConfig:
    """Group-level fine-tuning of the coefficients against the un-pruned group."""

    loss: LossName = "kl_batch"
    epochs: int = 20
    batch_size: int = 8
    coef_lr: float = 1e-3
    lr: float = 9.65e-6  # LoRA and norms
    betas: tuple[float, float] = (0.9, 0.95)


@dataclass
class CompressConfig:
    """Everything `compress` needs besides the model and tokenizer."""

    method: Method = "fusegpt"
    sparsity: float | None = 0.25
    num_remove: int | None = None  # overrides sparsity when set
    calib: str = "wikitext2"
    nsamples: int = 128
    seqlen: int = 2048  # capped at the model's context
    mi_samples: int = 32  # calibration windows used to score blocks (MI, BI, NLL, fusion trials)
    # fusion-aware choice (fusegpt only; the authors' --fuse-eval): trial-fuse each of the k
    # lowest-MI blocks with a short tune and remove the one that keeps the output closest; 0 is off
    fuse_eval_candidates: int = 0
    fuse_eval_epochs: int = 1  # tuning epochs of each trial
    dtype: DType = "float32"
    device: str = "auto"
    seed: int = 0
    data_dir: str | None = None
    fusion: FusionConfig = field(default_factory=FusionConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)

    def blocks_to_remove(self, depth: int) -> int:
        """K = ceil(L * s) (25% of 32 = 8), or num_remove when given; validated against depth."""
        from .errors import FuseGPTError

        if self.num_remove is not None:
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

    def validate(self) -> None:
        """Reject settings that cannot run, before any work is done."""
        from .errors import FuseGPTError

        checks = [
            (self.method in METHODS, f"--method must be one of {', '.join(METHODS)}, got {self.method!r}"),
            (self.fusion.coefficient in COEFFICIENT_FORMS,
             f"--coef must be one of {', '.join(COEFFICIENT_FORMS)}, got {self.fusion.coefficient!r}"),
            (self.tune.loss in LOSSES, f"--loss must be one of {', '.join(LOSSES)}, got {self.tune.loss!r}"),
            (self.dtype in DTYPES, f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}"),
            (self.nsamples >= 1, f"--nsamples must be at least 1, got {self.nsamples}"),
            (self.mi_samples >= 1, f"--mi-samples must be at least 1, got {self.mi_samples}"),
            (self.fuse_eval_candidates >= 0, f"--fuse-eval must be 0 (off) or more, got {self.fuse_eval_candidates}"),
            (self.fuse_eval_candidates == 0 or self.method == "fusegpt",
             f"--fuse-eval trial-fuses candidates and needs --method fusegpt, got {self.method!r}"),
            (self.fuse_eval_epochs >= 1, f"--fuse-eval-epochs must be at least 1, got {self.fuse_eval_epochs}"),
            (self.seqlen >= 2, f"--seqlen must be at least 2, got {self.seqlen}"),
            (self.fusion.group_size >= 1, f"--group-size must be at least 1, got {self.fusion.group_size}"),
            (self.fusion.rank >= 1, f"--rank must be at least 1, got {self.fusion.rank}"),
            (self.fusion.lora_rank >= 0, f"--lora-rank must be 0 (off) or more, got {self.fusion.lora_rank}"),
            (self.tune.epochs >= 0, f"--epochs must be 0 or more, got {self.tune.epochs}"),
            (self.tune.batch_size >= 1, f"--batch-size must be at least 1, got {self.tune.batch_size}"),
            (self.tune.loss != "kl_batch" or self.tune.batch_size >= 2,
             "--loss kl_batch normalises over the batch and needs --batch-size of at least 2"),
            (self.tune.coef_lr > 0 and self.tune.lr >= 0, "--coef-lr must be positive and --lr non-negative"),
        ]
        for ok, message in checks:
            if not ok:
                raise FuseGPTError(message)
        if self.num_remove is None:
            self.blocks_to_remove(depth=10**9)  # range check of sparsity alone

    def to_dict(self) -> dict:
        return asdict(self)

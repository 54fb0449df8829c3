"""Named settings: `default`, the best recipe we measured (the dataclasses' defaults), and `paper`,
the authors' settings one flag away."""
from __future__ import annotations

from .config import CompressConfig, FusionConfig, TuneConfig

# The authors' settings (the paper, arXiv 2411.14507, and their code's defaults), one flag away from our recipe.
PRESETS: dict[str, dict] = {
    "default": {},
    "paper": {"method": "fusegpt", "nsamples": 128, "seqlen": 2048, "mi_samples": 32, "rescore": 0,
              "score_dtype": "float32",
              "fusion": {"group_size": 7, "coefficient": "lowrank", "rank": 128, "lora_rank": 128, "train_norms": True,
                         "seam_map": False, "normalize_donors": False},
              "tune": {"loss": "kl_batch", "epochs": 20, "batch_size": 8, "coef_lr": 1e-3, "lr": 9.65e-6,
                       "betas": (0.9, 0.95), "teacher": "group", "global_epochs": 0, "global_coef_lr": None,
                       "coef_decay": 0.0, "distill": "hidden", "distill_top_k": 0, "distill_stride": 1,
                       "trial_rates": (), "trial_lrs": (), "compute": "float32", "warmup": 0.0, "heal_epochs": None,
                       "micro_batch": None, "checkpoint_activations": None, "optimizer_on_host": None}},
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

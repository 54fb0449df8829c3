"""Group-level fine-tuning: teacher/student loop and losses."""
from .losses import BATCH_LOSSES, LOSSES
from .trainer import TuneResult, tune_group
from .trial import trial_then_tune

__all__ = ["BATCH_LOSSES", "LOSSES", "TuneResult", "trial_then_tune", "tune_group"]

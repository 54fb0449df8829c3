"""Group-level fine-tuning: teacher/student loop and losses."""
from .losses import BATCH_LOSSES, LOSSES
from .trainer import TuneResult, tune_group

__all__ = ["BATCH_LOSSES", "LOSSES", "TuneResult", "tune_group"]

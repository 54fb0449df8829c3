"""Group-level fine-tuning: teacher/student loop and losses."""
from .losses import LOSSES
from .trainer import TuneResult, tune_group

__all__ = ["LOSSES", "TuneResult", "tune_group"]

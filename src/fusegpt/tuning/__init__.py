"""Group-level fine-tuning: teacher/student loop and losses."""
from .losses import LOSSES
from .trainer import tune_group

__all__ = ["LOSSES", "tune_group"]

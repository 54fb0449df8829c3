"""Group-level layer fusion: the fused linear layer, injection, merging and group windows."""
from .coefficients import COEFFICIENTS
from .inject import inject, merge_block, trainable_parameters
from .layer import FusedLinear
from .window import group_window

__all__ = ["COEFFICIENTS", "FusedLinear", "group_window", "inject", "merge_block", "trainable_parameters"]

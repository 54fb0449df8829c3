"""Group-level layer fusion: the fused linear layer, injection, merging and group windows."""
from .coefficients import COEFFICIENTS
from .inject import inject, merge_block, trainable_parameters
from .layer import FusedLinear, base_only, linear_weights
from .window import group_window

__all__ = ["COEFFICIENTS", "FusedLinear", "base_only", "group_window", "inject", "linear_weights", "merge_block",
           "trainable_parameters"]

"""Block importance criteria: the lower a block's score, the sooner it is removed."""
from .block_influence import block_influence
from .calibration_nll import calibration_nll
from .macro_influence import macro_influence
from .similarity import mean_cosine
from .output_divergence import output_divergence
from .span_distance import span_distance

__all__ = ["block_influence", "calibration_nll", "macro_influence", "mean_cosine", "output_divergence",
           "span_distance"]

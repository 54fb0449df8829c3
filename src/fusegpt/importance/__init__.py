"""Block importance criteria."""
from .macro_influence import macro_influence, mean_cosine

__all__ = ["macro_influence", "mean_cosine"]

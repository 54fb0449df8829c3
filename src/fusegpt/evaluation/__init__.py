"""Perplexity and the run report."""
from .perplexity import evaluate_perplexity, perplexity
from .report import Report, StepRecord

__all__ = ["Report", "StepRecord", "evaluate_perplexity", "perplexity"]

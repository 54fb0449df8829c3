"""Perplexity and the run report."""
from .perplexity import evaluate_perplexity, perplexity
from .report import HealRecord, Report, StepRecord

__all__ = ["HealRecord", "Report", "StepRecord", "evaluate_perplexity", "perplexity"]

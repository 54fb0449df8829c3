"""Perplexity, zero-shot accuracy, costs, the run report and the comparison table."""
from .._lazy import lazy_exports

_EXPORTS = {"evaluate_perplexity": ".ppl", "perplexity": ".ppl", "measure": ".measure", "HealRecord": ".report",
            "Report": ".report", "StepRecord": ".report"}
__getattr__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)

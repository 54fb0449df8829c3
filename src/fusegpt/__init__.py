"""fusegpt: make a HuggingFace causal LM shallower by fusing its least influential blocks into
their neighbours (FuseGPT, arXiv 2411.14507)."""
from ._lazy import lazy_exports

_EXPORTS = {"CompressConfig": ".config", "FusionConfig": ".config", "TuneConfig": ".config", "preset": ".presets",
            "FuseGPTError": ".errors", "Report": ".evaluation.report", "evaluate_perplexity": ".evaluation.ppl",
            "load_model": ".io", "save_compressed": ".io", "CompressResult": ".pipeline", "compress": ".pipeline",
            "compare": ".compare", "compress_curve": ".curve"}
__getattr__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"

"""fusegpt: make a HuggingFace causal LM shallower by fusing its least influential blocks into
their neighbours (FuseGPT, arXiv 2411.14507)."""
from .config import CompressConfig, FusionConfig, TuneConfig
from .errors import FuseGPTError
from .evaluation import Report, evaluate_perplexity
from .io import load_model, save_compressed
from .pipeline import CompressResult, compress

__all__ = ["CompressConfig", "CompressResult", "FuseGPTError", "FusionConfig", "Report", "TuneConfig",
           "compress", "evaluate_perplexity", "load_model", "save_compressed"]
__version__ = "0.1.0"

"""Compression methods, one small module each; `--method` picks one by name."""
from __future__ import annotations

from .base import Method
from .fusegpt import FUSEGPT
from .last import LAST
from .remove import REMOVE
from .remove_lora import REMOVE_LORA
from .shortgpt import SHORTGPT
from .sleb import SLEB
from .step import StepContext, StepOutcome

METHODS: dict[str, Method] = {"fusegpt": FUSEGPT, "remove": REMOVE, "shortgpt": SHORTGPT, "sleb": SLEB,
                              "last": LAST, "remove-lora": REMOVE_LORA}

__all__ = ["METHODS", "Method", "StepContext", "StepOutcome"]

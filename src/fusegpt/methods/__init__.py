"""Compression methods. Each removes one chosen block from the stack and returns what it did;
scoring and choosing happen in the pipeline, so methods differ only in what removal means."""
from __future__ import annotations

from typing import Callable

from .fusegpt import fuse_block
from .remove import remove_block
from .step import StepContext, StepOutcome

RemoveFn = Callable[[StepContext, int], StepOutcome]

METHODS: dict[str, RemoveFn] = {"fusegpt": fuse_block, "remove": remove_block}

__all__ = ["METHODS", "StepContext", "StepOutcome", "fuse_block", "remove_block"]

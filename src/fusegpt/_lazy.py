"""Package attributes that import their module on first use: `fusegpt --help` and argument
errors must answer without loading torch, transformers or lm-eval."""
from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_exports(package: str, exports: dict[str, str]) -> Callable[[str], Any]:
    """A module `__getattr__` serving `name` from `package + exports[name]` (a relative module)."""
    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(exports[name], package), name)
    return __getattr__

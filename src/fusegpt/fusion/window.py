"""The group of neighbours that absorbs a removed block."""
from __future__ import annotations


def group_window(removed: int, depth: int, group_size: int) -> tuple[int, int]:
    """Half-open window [start, end) of `group_size` neighbours plus the removed block, centred on
    it (the extra neighbour of an even G goes after it), shifted inward at either end of the
    network and clipped to the model's depth."""
    if not 0 <= removed < depth:
        raise ValueError(f"block {removed} is outside a model of depth {depth}")
    width = min(group_size + 1, depth)
    start = min(max(removed - group_size // 2, 0), depth - width)
    return start, start + width

"""The group of neighbours that absorbs a removed block."""
from __future__ import annotations


def group_window(removed: int, depth: int, group_size: int) -> tuple[int, int]:
    """Half-open window [start, end) of `group_size` neighbours plus the removed block: as in the
    authors' code, G // 2 + 1 neighbours before it and the rest after (4 and 3 at G = 7), shifted
    inward at either end of the network and clipped to the model's depth."""
    if not 0 <= removed < depth:
        raise ValueError(f"block {removed} is outside a model of depth {depth}")
    width = min(group_size + 1, depth)
    start = min(max(removed - (group_size // 2 + 1), 0), depth - width)
    return start, start + width

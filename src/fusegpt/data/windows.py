"""Tokenisation -> calibration windows and perplexity token streams."""

from __future__ import annotations

from pathlib import Path

import torch

from fusegpt.data.sources import named_corpus, protocol_text
from fusegpt.errors import FuseGPTError

PERPLEXITY_SPLITS = {"wikitext2": "test", "ptb": "test", "c4": "validation"}
C4_PERPLEXITY_WINDOWS = 256  # "c4-new" keeps the first 256 x seqlen tokens


def tokenize_text(tokenizer, text: str) -> torch.LongTensor:
    """Tokenise the whole text in one call, as the authors do; windows are cut afterwards,
    so the tokenizer's "longer than the specified maximum" warning does not apply and is silenced."""
    saved = getattr(tokenizer, "model_max_length", None)
    if saved is not None:
        tokenizer.model_max_length = int(1e30)
    try:
        ids = tokenizer(text, return_tensors="pt").input_ids[0]
    finally:
        if saved is not None:
            tokenizer.model_max_length = saved
    return ids.to(torch.long)


def calibration_sources(source: str) -> list[str]:
    """The sources of a `--calib` value: one file or corpus, or a comma-separated mix of them
    (an existing file whose name has a comma is one source)."""
    if Path(source).expanduser().is_file():
        return [source]
    return [s.strip() for s in source.split(",") if s.strip()]


def calibration_windows(
    tokenizer, source: str, nsamples: int, seqlen: int, seed: int, data_dir: str | None = None
) -> torch.LongTensor:
    """`nsamples` seeded random (possibly overlapping) windows of `seqlen` tokens from the train text.
    A mix of k sources takes nsamples / k windows from each (the first sources one more when it
    does not divide), interleaved, so that the first windows (which scoring reads) mix them too."""
    if nsamples < 1 or seqlen < 1:
        raise FuseGPTError(f"need nsamples >= 1 and seqlen >= 1, got {nsamples} and {seqlen}; pass positive values")
    sources = calibration_sources(source)
    generator = torch.Generator().manual_seed(seed)
    parts = []
    for k, name in enumerate(sources):
        ids = tokenize_text(tokenizer, protocol_text(name, "train", data_dir))
        if ids.numel() < seqlen + 1:
            raise FuseGPTError(
                f"calibration text '{name}' has {ids.numel()} tokens, fewer than one window of {seqlen}; "
                "use a longer text or a smaller --seqlen"
            )
        count = nsamples // len(sources) + (k < nsamples % len(sources))
        starts = torch.randint(0, ids.numel() - seqlen + 1, (count,), generator=generator)
        parts.append([ids[start : start + seqlen] for start in starts.tolist()])
    interleaved = [part[i] for i in range(max(map(len, parts))) for part in parts if i < len(part)]
    return torch.stack(interleaved)


def perplexity_ids(tokenizer, source: str, seqlen: int, data_dir: str | None = None) -> torch.LongTensor:
    """The evaluation token stream (test split; c4: validation, first 256 x seqlen tokens)."""
    if seqlen < 1:
        raise FuseGPTError(f"need seqlen >= 1, got {seqlen}; pass a positive --seqlen")
    name = named_corpus(source)
    ids = tokenize_text(tokenizer, protocol_text(source, PERPLEXITY_SPLITS.get(name, "test"), data_dir))
    if name == "c4":
        ids = ids[: C4_PERPLEXITY_WINDOWS * seqlen]
    if ids.numel() < seqlen:
        raise FuseGPTError(
            f"evaluation text '{source}' has {ids.numel()} tokens, fewer than one window of {seqlen}; "
            "use a longer text or a smaller --seqlen"
        )
    return ids

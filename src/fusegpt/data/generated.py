"""Calibration text the model writes itself (`--calib self`): no corpus and no network, so a run
works on any machine that has the model. The windows are samples of the dense model's own
distribution, which is what the default's tune reproduces."""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig

from fusegpt.errors import FuseGPTError

SELF = "self"
GENERATION_BATCH = 16  # sequences sampled at once; the KV cache grows with it


def is_self(source: str) -> bool:
    """Whether `source` asks for generated text (a file of that name is read as a file)."""
    return source == SELF and not Path(source).is_file()


def start_token(tokenizer) -> int:
    """The token a document starts with: BOS, else EOS (GPT-2 style tokenizers use one for both)."""
    for token in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if token is not None:
            return int(token)
    raise FuseGPTError("--calib self needs a tokenizer with a BOS or EOS token to start from; pass a text with --calib")


@torch.no_grad()
def generated_windows(model, tokenizer, nsamples: int, seqlen: int, seed: int, progress: bool = True) -> torch.LongTensor:
    """`nsamples` windows of `seqlen` tokens, each the start token and `seqlen - 1` tokens sampled
    from the model at temperature 1 (no top-k or top-p: the model's own distribution; an end of
    text is suppressed until the window is full). Seeded, and the global RNG is left as it was."""
    if nsamples < 1 or seqlen < 2:
        raise FuseGPTError(f"--calib self needs nsamples >= 1 and seqlen >= 2, got {nsamples} and {seqlen}")
    first = start_token(tokenizer)
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else first
    # a fresh config: a model's own may carry a repetition penalty, top-p or a shorter length
    sampling = GenerationConfig(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=seqlen - 1,
                                min_new_tokens=seqlen - 1, pad_token_id=pad, bos_token_id=first,
                                eos_token_id=tokenizer.eos_token_id)
    windows = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for start in tqdm(range(0, nsamples, GENERATION_BATCH), desc="calibration text (generated)", unit="batch",
                          disable=not progress):
            count = min(GENERATION_BATCH, nsamples - start)
            prompt = torch.full((count, 1), first, dtype=torch.long, device=device)
            out = model.generate(prompt, attention_mask=torch.ones_like(prompt), generation_config=sampling)
            windows.append(out[:, :seqlen].cpu())
    return torch.cat(windows)

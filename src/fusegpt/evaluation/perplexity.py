"""Perplexity by the paper's protocol: non-overlapping windows, mean token NLL, exp."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from ..data import perplexity_ids


@torch.no_grad()
def perplexity(model: PreTrainedModel, ids: torch.Tensor, seqlen: int, batch_size: int = 8,
               progress: bool = True, desc: str = "ppl") -> float:
    """exp(mean NLL of every predicted token) over the len(ids) // seqlen full windows."""
    windows = ids[: ids.numel() // seqlen * seqlen].view(-1, seqlen)
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for batch in tqdm(windows.split(batch_size), desc=desc, unit="batch", leave=False, disable=not progress):
        batch = batch.to(device)
        logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1),
                                 reduction="sum").item()
        count += batch[:, 1:].numel()
    return math.exp(total / count)


def evaluate_perplexity(model: PreTrainedModel, tokenizer, sources: list[str], seqlen: int,
                        data_dir: str | None = None, batch_size: int = 8, progress: bool = True) -> dict[str, float]:
    """Perplexity on each source (wikitext2, ptb, c4 or a file) at `seqlen` tokens."""
    model.eval()
    return {source: perplexity(model, perplexity_ids(tokenizer, source, seqlen, data_dir), seqlen, batch_size,
                               progress, desc=f"ppl {source}")
            for source in sources}

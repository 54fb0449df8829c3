"""Perplexity by the paper's protocol: non-overlapping windows, mean token NLL, exp."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from ..data import perplexity_ids
from ..errors import FuseGPTError
from ..runtime.placement import execution_device


# logits held at once (batch x seqlen x vocabulary): 8 windows of 512 through Gemma 3's 262k-token
# head would be 4.3 GB of fp32 logits (11 GB at the peak, measured); the batch shrinks to fit
LOGITS_BUDGET = 2**28


@torch.no_grad()
def perplexity(model: PreTrainedModel, ids: torch.Tensor, seqlen: int, batch_size: int = 8,
               progress: bool = True, desc: str = "ppl", windows: int | None = None) -> float:
    """exp(mean NLL of every predicted token) over the len(ids) // seqlen full windows, or the
    first `windows` of them; at most `batch_size` windows at once, fewer when their logits would
    exceed LOGITS_BUDGET values (the same result: the sum runs over tokens)."""
    count = ids.numel() // seqlen if windows is None else min(windows, ids.numel() // seqlen)
    windows = ids[: count * seqlen].view(-1, seqlen)
    vocabulary = model.get_input_embeddings().num_embeddings
    batch_size = max(1, min(batch_size, LOGITS_BUDGET // (seqlen * vocabulary)))
    device = execution_device(model)
    total, count = 0.0, 0
    for batch in tqdm(windows.split(batch_size), desc=desc, unit="batch", leave=False, disable=not progress):
        batch = batch.to(device)
        logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1),
                                 reduction="sum").item()
        count += batch[:, 1:].numel()
    return math.exp(total / count)


def evaluate_perplexity(model: PreTrainedModel, tokenizer, sources: list[str], seqlen: int,
                        data_dir: str | None = None, batch_size: int = 8, progress: bool = True,
                        windows: int | None = None) -> dict[str, float]:
    """Perplexity on each source (wikitext2, ptb, c4 or a file) at `seqlen` tokens, on every
    protocol window or the first `windows` (a model too slow for the whole protocol)."""
    if windows is not None and windows < 1:
        raise FuseGPTError(f"--ppl-windows must be a positive number of windows, got {windows}")
    model.eval()
    return {source: perplexity(model, perplexity_ids(tokenizer, source, seqlen, data_dir), seqlen, batch_size,
                               progress, desc=f"ppl {source}", windows=windows)
            for source in sources}

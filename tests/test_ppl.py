"""Perplexity against a hand computation, with no asset: a Llama whose blocks are identities (their
output projections are zero) predicts the next token from the current one alone, through the final
norm and the LM head, so the perplexity of any token stream is a bigram sum numpy can do."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import tiny_llama
from fusegpt.evaluation import perplexity


def _bigram_model():
    model = tiny_llama(depth=2, seed=3)
    with torch.no_grad():
        for block in model.model.layers:
            block.self_attn.o_proj.weight.zero_()  # attention adds nothing to the residual stream
            block.mlp.down_proj.weight.zero_()  # nor does the MLP
    return model


def _by_hand(model, ids: np.ndarray, seqlen: int, windows: int | None) -> float:
    embed = model.model.embed_tokens.weight.detach().double().numpy()
    gain = model.model.norm.weight.detach().double().numpy()
    eps = model.config.rms_norm_eps
    head = model.lm_head.weight.detach().double().numpy()
    count = len(ids) // seqlen if windows is None else windows
    nll, predicted = 0.0, 0
    for w in range(count):
        window = ids[w * seqlen:(w + 1) * seqlen]
        for current, following in zip(window[:-1], window[1:]):  # a window's first token has no context
            h = embed[current]
            logits = head @ (gain * h / math.sqrt((h * h).mean() + eps))
            nll -= logits[following] - math.log(np.exp(logits - logits.max()).sum()) - logits.max()
            predicted += 1
    return math.exp(nll / predicted)


@pytest.mark.parametrize("seqlen,windows", [(16, None), (10, 3)])
def test_perplexity_is_the_exp_of_the_mean_next_token_nll_over_non_overlapping_windows(seqlen, windows):
    model = _bigram_model().eval()
    ids = torch.randint(0, model.config.vocab_size, (70,), generator=torch.Generator().manual_seed(0))
    expected = _by_hand(model, ids.numpy(), seqlen, windows)
    assert perplexity(model, ids, seqlen, batch_size=2, progress=False, windows=windows) == pytest.approx(expected,
                                                                                                          rel=1e-5)


def test_a_large_vocabulary_shrinks_the_batch_not_the_result(monkeypatch):
    """With room for one window's logits at a time (Gemma 3's 262k head at 8 x 512 would hold 4.3 GB),
    the windows go one by one, each model call holding one window's logits, and the perplexity is
    the hand computation's all the same."""
    from fusegpt.evaluation import ppl

    model = _bigram_model().eval()
    ids = torch.randint(0, model.config.vocab_size, (70,), generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(ppl, "LOGITS_BUDGET", 16 * model.config.vocab_size)  # one window of 16
    seen = []
    model.register_forward_hook(lambda module, args, kwargs, output: seen.append(kwargs["input_ids"].shape[0]),
                                with_kwargs=True)
    assert perplexity(model, ids, 16, batch_size=8, progress=False) == pytest.approx(_by_hand(model, ids.numpy(), 16,
                                                                                            None), rel=1e-5)
    assert seen == [1, 1, 1, 1]

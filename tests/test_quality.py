"""Quality on real pretrained models: fusion must beat plain removal (stories260K), and the default's
cheap criterion must choose what the exact one does (pydoc-llama-12L)."""
from __future__ import annotations

import copy
from dataclasses import replace

import pytest

from conftest import asset
from fusegpt import CompressConfig, FusionConfig, TuneConfig, compress, load_model
from fusegpt.data import perplexity_ids
from fusegpt.evaluation import perplexity

pytestmark = pytest.mark.slow  # a real model compressed: the full run only


@pytest.fixture(scope="module")
def stories():
    model, tokenizer = load_model(str(asset("models/stories260K")))
    ids = perplexity_ids(tokenizer, str(asset("text/wikitext-2-raw/wiki.test.raw")), 256)[: 400 * 256]
    return model, tokenizer, ids


def _compress(stories, method: str, **tune) -> tuple[float, list[int]]:
    model, tokenizer, ids = stories
    config = CompressConfig(method=method, num_remove=2, sparsity=None,
                            calib=str(asset("text/wikitext-2-raw/wiki.valid.raw")), nsamples=32, seqlen=256,
                            fusion=FusionConfig(group_size=3, rank=16, lora_rank=16),
                            tune=TuneConfig(**{"loss": "mse", "epochs": 8, "coef_lr": 1e-2, "lr": 1e-3, **tune}))
    result = compress(copy.deepcopy(model), tokenizer, config, progress=False)
    return perplexity(result.model, ids, 256, progress=False), result.report.removed


def test_fused_beats_removed_on_stories260k(stories):
    model, _, ids = stories
    dense = perplexity(model, ids, 256, progress=False)
    removed, removed_blocks = _compress(stories, "remove")
    fused, fused_blocks = _compress(stories, "fusegpt")
    assert removed_blocks[0] == fused_blocks[0] == 4  # the last block has the lowest MI
    assert dense < removed and fused < removed
    # fusion repairs over 90% of the damage (distilling the dense logits on WikiText-2 takes this
    # TinyStories model below its own perplexity there: 105.3 against 121.5; hidden states, 129.4)
    assert fused - dense < 0.1 * (removed - dense)


def test_the_default_criterion_chooses_the_exact_kls_blocks_on_pydoc():
    """pydoc-llama-12L, 4 of 12 blocks by the KL to the dense model on 8 windows of 256 tokens: the
    default (top-64 dense side, bounded from k logits, lazy rescoring, at most 8 blocks a step, so
    the limit binds at 11, 10 and 9 candidates) chooses the blocks, in order, that the exact
    criterion does (the whole vocabulary at every position, every block every step)."""
    model, tokenizer = load_model(str(asset("models/pydoc-llama-12L")))
    config = CompressConfig(selection="kl", repair="none", num_remove=4, sparsity=None,
                            calib=str(asset("text/pydoc/calib.txt")), nsamples=8, seqlen=256, mi_samples=8)
    exact = compress(copy.deepcopy(model), tokenizer, replace(config, kl_top_k=0, kl_stride=1, rescore=0,
                                                              rescore_limit=0), progress=False).report
    cheap = compress(model, tokenizer, config, progress=False).report
    assert cheap.removed == exact.removed == [6, 8, 3, 7]
    assert [len(step.scores) for step in exact.steps] == [12, 11, 10, 9]
    assert max(len(step.scores) for step in cheap.steps[1:]) <= 8


def test_scoring_in_bfloat16_chooses_the_float32_blocks_on_pydoc():
    """pydoc-llama-12L, 4 of 12 blocks by the default KL criterion on 8 windows: with the
    candidates' products in bfloat16 (`--score-dtype`), the same blocks in the same order, and
    every first-step score within 1% of its float32 value (but not equal: bf16 did run)."""
    model, tokenizer = load_model(str(asset("models/pydoc-llama-12L")))
    config = CompressConfig(selection="kl", repair="none", num_remove=4, sparsity=None,
                            calib=str(asset("text/pydoc/calib.txt")), nsamples=8, seqlen=256, mi_samples=8,
                            full_scores=True, score_dtype="float32")
    full = compress(copy.deepcopy(model), tokenizer, config, progress=False).report
    low = compress(model, tokenizer, replace(config, score_dtype="bfloat16"), progress=False).report
    assert low.removed == full.removed == [6, 8, 3, 7]
    first, first_low = full.steps[0].scores, low.steps[0].scores
    assert first != first_low
    assert all(abs(first_low[b] / first[b] - 1) < 0.01 for b in first)

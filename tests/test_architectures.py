"""Every supported family end to end on a tiny random config: compress, save, reload with the
family's own auto class, same logits, cached generation, and a config that describes the kept
blocks. A new family is one adapter in fusegpt/models/families.py plus one line in CASES."""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch
from lm_eval.api.instance import Instance
from transformers import (AutoModelForCausalLM, AutoModelForImageTextToText, BertConfig, BertForMaskedLM,
                          CLIPVisionConfig, Gemma2Config, Gemma3TextConfig, GPT2Config, GPTNeoXConfig, LlamaConfig,
                          LlavaConfig, MistralConfig, MixtralConfig, OPTConfig, Phi3Config, PretrainedConfig,
                          Qwen2Config, Qwen2MoeConfig, Qwen3Config)

import fusegpt
from conftest import CHARS
from fusegpt import CompressConfig, FuseGPTError, FusionConfig, TuneConfig, compress, save_compressed
from fusegpt.calibrate import BlockStack, capture_block_inputs
from fusegpt.cli import main
from fusegpt.data import calibration_windows
from fusegpt.evaluation.zeroshot import InMemoryLM
from fusegpt.models import ADAPTERS, LANGUAGE_TOWERS, adapter_for

VOCAB = len(CHARS) + 3
DEPTH = 6
WINDOW = 8  # sliding window, shorter than the prompt so that sliding and full attention differ
PROMPT = "the fused model still reads text"
IMAGE_TOKEN = VOCAB  # LLaVA's placeholder, one past the char tokenizer's vocabulary
TOKENS = dict(vocab_size=VOCAB, bos_token_id=1, eos_token_id=2, pad_token_id=0)
ROTARY = dict(TOKENS, hidden_size=32, intermediate_size=64, num_hidden_layers=DEPTH, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=128)
IMAGE_ROTARY = dict(ROTARY, vocab_size=VOCAB + 1)
ALTERNATING = ["sliding_attention", "full_attention"] * (DEPTH // 2)


def _llava(text: PretrainedConfig, tied: bool) -> LlavaConfig:
    vision = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                              image_size=16, patch_size=8)
    return LlavaConfig(text_config=text, vision_config=vision, image_token_index=IMAGE_TOKEN,
                       tie_word_embeddings=tied)


@dataclass(frozen=True)
class Case:
    config: Callable[[bool], PretrainedConfig]  # tied head -> tiny config
    auto: type = AutoModelForCausalLM
    image_patches: int = 0  # image tokens per 16x16 image for multimodal families


CASES: dict[str, Case] = {
    "llama": Case(lambda tied: LlamaConfig(**ROTARY, tie_word_embeddings=tied, attention_bias=True, mlp_bias=True)),
    "mistral": Case(lambda tied: MistralConfig(**ROTARY, sliding_window=WINDOW, tie_word_embeddings=tied)),
    "qwen2": Case(lambda tied: Qwen2Config(**ROTARY, use_sliding_window=True, sliding_window=WINDOW,
                                           max_window_layers=3, tie_word_embeddings=tied)),
    "qwen3": Case(lambda tied: Qwen3Config(**ROTARY, head_dim=8, use_sliding_window=True, sliding_window=WINDOW,
                                           max_window_layers=3, tie_word_embeddings=tied)),
    "gemma2": Case(lambda tied: Gemma2Config(**ROTARY, head_dim=8, sliding_window=WINDOW, layer_types=ALTERNATING,
                                             query_pre_attn_scalar=8, final_logit_softcapping=5.0,
                                             attn_logit_softcapping=5.0, tie_word_embeddings=tied)),
    "gemma3": Case(lambda tied: Gemma3TextConfig(**ROTARY, head_dim=8, sliding_window=WINDOW,
                                                 layer_types=ALTERNATING, query_pre_attn_scalar=8,
                                                 final_logit_softcapping=5.0, tie_word_embeddings=tied)),
    "phi3": Case(lambda tied: Phi3Config(**ROTARY, tie_word_embeddings=tied)),
    "gpt2": Case(lambda tied: GPT2Config(**TOKENS, n_embd=32, n_layer=DEPTH, n_head=4, n_positions=128,
                                         tie_word_embeddings=tied)),
    "opt": Case(lambda tied: OPTConfig(**TOKENS, hidden_size=32, ffn_dim=64, num_hidden_layers=DEPTH,
                                       num_attention_heads=4, word_embed_proj_dim=32, max_position_embeddings=128,
                                       tie_word_embeddings=tied)),
    "gpt_neox": Case(lambda tied: GPTNeoXConfig(**TOKENS, hidden_size=32, intermediate_size=64,
                                                num_hidden_layers=DEPTH, num_attention_heads=4,
                                                max_position_embeddings=128, use_parallel_residual=True,
                                                tie_word_embeddings=tied)),
    "llava": Case(lambda tied: _llava(LlamaConfig(**IMAGE_ROTARY, tie_word_embeddings=tied), tied),
                  auto=AutoModelForImageTextToText, image_patches=4),
    "llava_qwen2": Case(lambda tied: _llava(Qwen2Config(**IMAGE_ROTARY, use_sliding_window=True, sliding_window=WINDOW,
                                                        max_window_layers=3, tie_word_embeddings=tied), tied),
                        auto=AutoModelForImageTextToText, image_patches=4),
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny matrices gain nothing from threads, and on a busy machine waiting for them costs ten
    times the work itself."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tiny(case: Case, tied: bool):
    torch.manual_seed(0)
    return case.auto.from_config(case.config(tied)).eval()


def _settings(text_file: Path) -> CompressConfig:
    return CompressConfig(calib=str(text_file), nsamples=4, seqlen=32, mi_samples=2, num_remove=2, sparsity=None,
                          fusion=FusionConfig(group_size=2, rank=4, lora_rank=2),
                          tune=TuneConfig(epochs=1, batch_size=2, loss="mse", coef_lr=1e-2))


def _check_config(before: dict, after: PretrainedConfig, kept: list[int], threshold_keys: tuple[str, ...]) -> None:
    """The depth and every per-block list describe the kept blocks, in order; "first N blocks"
    thresholds count the kept blocks that were below them."""
    assert after.num_hidden_layers == len(kept)
    per_block = {k: v for k, v in before.items() if isinstance(v, list) and len(v) == DEPTH}
    for key, value in per_block.items():
        assert list(getattr(after, key)) == [value[i] for i in kept], key
    for key in threshold_keys:
        assert getattr(after, key) == sum(i < before[key] for i in kept), key


@pytest.mark.parametrize("family", list(CASES))
def test_calibration_sees_what_the_model_computes(family, tokenizer, text_file):
    """The captured per-block arguments (rotary tables, sliding and full masks, positions, passed
    by name or by position) make each block compute on a batch exactly what the model computes."""
    model = _tiny(CASES[family], tied=False)
    adapter = adapter_for(model)
    ids = calibration_windows(tokenizer, str(text_file), nsamples=4, seqlen=32, seed=0)
    embeddings, kwargs = capture_block_inputs(model, adapter, ids, batch_size=2)
    stack = BlockStack(list(adapter.blocks(model)), kwargs, embeddings, torch.device("cpu"), batch_size=4)
    with torch.no_grad():
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states
    for i in range(DEPTH):  # HF's hidden_states[i] is the input of block i
        assert torch.allclose(stack.boundaries[i], hidden[i], atol=1e-5), i


@pytest.mark.parametrize("family", list(CASES))
def test_zero_shot_scores_continuations_as_the_full_logits_do(family, tokenizer):
    """Zero-shot scoring computes the head only from a batch's first continuation token on: each
    request's log-likelihood and greedy flag equal those of its own row's full logits, in batches of
    rows whose contexts and continuations differ in length (the first batch's head starts past
    position 0, the second's at it)."""
    model = _tiny(CASES[family], tied=False)
    requests = [Instance("loglikelihood", {}, args, 0) for args in
                [("the fused model", " still reads"), ("a", " b"), ("text of another length", " x"), ("q", " rs tu")]]
    scored = InMemoryLM(model, tokenizer, batch_size=2, progress=False).loglikelihood(requests)
    for request, (loglikelihood, greedy) in zip(requests, scored):
        context, continuation = request.args
        whole, target = tokenizer.encode(context + continuation), tokenizer.encode(continuation)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([whole[:-1]])).logits[0, -len(target):]
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        target = torch.tensor(target)
        assert loglikelihood == pytest.approx(logprobs.gather(1, target[:, None]).sum().item(), abs=1e-4)
        assert greedy == bool((logprobs.argmax(-1) == target).all())


@pytest.mark.slow
@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("family", list(CASES))
def test_family_compresses_reloads_and_generates(family, tied, tmp_path, tokenizer, text_file):
    case = CASES[family]
    model = _tiny(case, tied)
    before = model.config.get_text_config().to_dict()
    adapter = adapter_for(model)
    outside = {name: p.clone() for name, p in model.named_parameters()
               if not name.startswith(f"{adapter.blocks_path}.")}  # embeddings, head, final norm, vision tower

    result = compress(model, tokenizer, _settings(text_file), progress=False)
    kept = result.report.kept
    assert len(kept) == DEPTH - 2 and all(len(step.losses) == 1 for step in result.report.steps)
    assert "Fused" not in str(result.model)
    assert all(torch.equal(p, outside[name]) for name, p in result.model.named_parameters() if name in outside)

    out = save_compressed(result.model, tokenizer, result.report, tmp_path / "out")
    reloaded, info = case.auto.from_pretrained(out, output_loading_info=True)
    assert not any(info.values()), info
    assert len(adapter.blocks(reloaded)) == len(kept)
    _check_config(before, reloaded.config.get_text_config(), kept, adapter.threshold_keys)
    eval_text = tmp_path / "eval.txt"
    eval_text.write_text(f"{PROMPT} " * 8)
    assert main(["eval", str(out), "--ppl", str(eval_text), "--seqlen", "16", "--device", "cpu", "--quiet",
                 "--json", str(tmp_path / "ppl.json")]) == 0
    assert math.isfinite(json.loads((tmp_path / "ppl.json").read_text())["ppl"][str(eval_text)])

    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    assert ids.shape[1] > WINDOW
    with torch.no_grad():
        assert (reloaded(input_ids=ids).logits - result.model(input_ids=ids).logits).abs().max() <= 1e-5
    cached = reloaded.generate(ids, max_new_tokens=5, min_new_tokens=5, do_sample=False, use_cache=True)
    uncached = reloaded.generate(ids, max_new_tokens=5, min_new_tokens=5, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached) and cached.shape[1] == ids.shape[1] + 5

    if case.image_patches:  # image + text still run after reload: the vision tower was untouched
        torch.manual_seed(1)
        inputs = dict(input_ids=torch.cat([torch.full((1, case.image_patches), IMAGE_TOKEN), ids], dim=1),
                      pixel_values=torch.randn(1, 3, 16, 16))
        with torch.no_grad():
            assert (reloaded(**inputs).logits - result.model(**inputs).logits).abs().max() <= 1e-5
        # a generated image token would ask for a second image: the random model must not emit one
        greedy = dict(max_new_tokens=5, min_new_tokens=5, do_sample=False, suppress_tokens=[IMAGE_TOKEN])
        cached = reloaded.generate(**inputs, **greedy, use_cache=True)
        uncached = reloaded.generate(**inputs, **greedy, use_cache=False)
        assert torch.equal(cached, uncached)


def _one_line_error(model, tokenizer, text_file) -> str:
    with pytest.raises(FuseGPTError) as error:
        compress(model, tokenizer, _settings(text_file), progress=False)
    message = str(error.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("config", [
    MixtralConfig(**ROTARY, num_local_experts=4, num_experts_per_tok=2),
    Qwen2MoeConfig(**ROTARY, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
                   shared_expert_intermediate_size=16),
], ids=["mixtral", "qwen2_moe"])
def test_mixture_of_experts_is_refused(config, tokenizer, text_file):
    message = _one_line_error(AutoModelForCausalLM.from_config(config), tokenizer, text_file)
    assert f"mixture-of-experts model '{config.model_type}'" in message and "not supported yet" in message
    assert "supported families: Llama" in message


def test_unsupported_models_are_refused_with_the_supported_families(tokenizer, text_file):
    bert = BertForMaskedLM(BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                      intermediate_size=64))
    message = _one_line_error(bert, tokenizer, text_file)
    assert "unsupported architecture 'bert'" in message
    assert all(a.family in message for a in ADAPTERS + LANGUAGE_TOWERS)
    scaled = AutoModelForCausalLM.from_config(GPT2Config(**TOKENS, n_embd=32, n_layer=2, n_head=4,
                                                         scale_attn_by_inverse_layer_idx=True))
    assert "scale_attn_by_inverse_layer_idx=True is not supported" in _one_line_error(scaled, tokenizer, text_file)


def test_family_names_stay_in_the_adapters():
    """MI, fusion, tuning, the methods and the pipeline see blocks and roles only; no family is
    named there."""
    names = {t for a in ADAPTERS + LANGUAGE_TOWERS for t in (a.family, *a.model_types)}
    names |= {"mixtral", "pythia", "qwen", "gemma", "phi", "neox", "gpt-2", "gpt2"}
    pattern = re.compile("|".join(rf"(?<![a-z0-9]){re.escape(n.lower())}(?![a-z])" for n in names))
    package = Path(fusegpt.__file__).parent
    files = [*package.glob("importance/*.py"), *package.glob("fusion/*.py"), *package.glob("tuning/*.py"),
             *package.glob("methods/*.py"), package / "pipeline.py", package / "calibrate.py"]
    found = {f.name: pattern.findall(f.read_text().lower()) for f in files}
    assert not {name: hits for name, hits in found.items() if hits}

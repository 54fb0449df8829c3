"""A tiny Llama written as a GGUF file with the `gguf` package, for tests of GGUF input (no model
file need ship with the tests). The tokenizer inside is a byte-level BPE with a few merges."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf", reason="GGUF tests need the gguf package (a fusegpt dependency)")

HIDDEN, FFN, HEADS, KV_HEADS, DEPTH, CONTEXT = 32, 64, 4, 2, 6, 128
MERGES = ["Ġ t", "h e", "Ġt he", "i n", "a n"]
PER_BLOCK_KEY = "llama.fusegpt_test.per_block"  # block i's value is 10 + i


def _byte_tokens() -> list[str]:
    """GPT-2's printable stand-ins for the 256 bytes, in byte order."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    mapping, extra = {}, 0
    for b in range(256):
        if b in printable:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    return [mapping[b] for b in range(256)]


def write_tiny_gguf(path: Path, seed: int = 0, quantize_ffn: bool = True, ffn_type: str = "Q8_0") -> Path:
    """A 6-block Llama (hidden 32) as GGUF; its FFN weights at `ffn_type` when `quantize_ffn`, the rest F32."""
    rng = np.random.default_rng(seed)
    tokens = _byte_tokens() + ["".join(m.split()) for m in MERGES] + ["<|endoftext|>"]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(DEPTH)
    writer.add_context_length(CONTEXT)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType[f"MOSTLY_{ffn_type}"] if quantize_ffn else gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.NORMAL] * (len(tokens) - 1) + [gguf.TokenType.CONTROL])
    writer.add_token_merges(MERGES)
    writer.add_array(PER_BLOCK_KEY, [10 + i for i in range(DEPTH)])  # a per-block setting, as some families have
    writer.add_bos_token_id(len(tokens) - 1)
    writer.add_eos_token_id(len(tokens) - 1)

    def tensor(name: str, shape: tuple[int, ...], scale: float = 0.3, quantize: bool = False) -> None:
        data = (rng.standard_normal(shape) * scale).astype(np.float32)
        if quantize:
            kind = gguf.GGMLQuantizationType[ffn_type]
            writer.add_tensor(name, gguf.quants.quantize(data, kind), raw_dtype=kind)
        else:
            writer.add_tensor(name, data)

    head_dim = HIDDEN // HEADS
    tensor("token_embd.weight", (len(tokens), HIDDEN), 1.0)
    for i in range(DEPTH):
        tensor(f"blk.{i}.attn_norm.weight", (HIDDEN,), 0.1)
        tensor(f"blk.{i}.attn_q.weight", (HIDDEN, HIDDEN))
        tensor(f"blk.{i}.attn_k.weight", (KV_HEADS * head_dim, HIDDEN))
        tensor(f"blk.{i}.attn_v.weight", (KV_HEADS * head_dim, HIDDEN))
        tensor(f"blk.{i}.attn_output.weight", (HIDDEN, HIDDEN))
        tensor(f"blk.{i}.ffn_norm.weight", (HIDDEN,), 0.1)
        tensor(f"blk.{i}.ffn_gate.weight", (FFN, HIDDEN), quantize=quantize_ffn)
        tensor(f"blk.{i}.ffn_up.weight", (FFN, HIDDEN), quantize=quantize_ffn)
        tensor(f"blk.{i}.ffn_down.weight", (HIDDEN, FFN), quantize=quantize_ffn)
    tensor("output_norm.weight", (HIDDEN,), 0.1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def fused_away(source: Path, blocks: list[int]):
    """`compress` of the tiny GGUF at `source` with `blocks` fused into their neighbours, then one
    global epoch, calibrated on a repeated sentence beside it."""
    from fusegpt import CompressConfig, FusionConfig, TuneConfig, compress, load_model

    text = source.parent / "calib.txt"
    text.write_text("the cat in the hat sat on the mat and then the cat ran in " * 60)
    model, tokenizer = load_model(str(source))
    config = CompressConfig(blocks=blocks, sparsity=None, calib=str(text), nsamples=8, seqlen=32, mi_samples=4,
                            fusion=FusionConfig(group_size=2, rank=4, lora_rank=2),
                            tune=TuneConfig(epochs=0, global_epochs=1, batch_size=4))
    return compress(model, tokenizer, config, progress=False)

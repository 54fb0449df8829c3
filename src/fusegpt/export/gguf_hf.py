"""GGUF out for a HuggingFace model: its settings, tokenizer and tensors under GGUF's own keys and
names, so that a user who starts from a HF model can run the result in llama.cpp too.

Everything comes from the `gguf` package (the keys its writer knows, its tensor-name maps through
transformers' `get_gguf_hf_weights_map`, its vocabulary readers) and from transformers' GGUF loader,
whose per-family tensor layout `gguf_out._to_gguf` inverts. What is family-specific here is only
which llama.cpp architecture a HF model type is, and which pre-tokenizer its tokenizer uses."""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from ..errors import FuseGPTError
from .gguf_out import (UNQUANTISED, GGUFExport, _columns, _file_type, _processor, _quantise, _to_gguf,
                       unquantised, write_file)

# HF model type -> llama.cpp architecture (Mistral's dense models run as llama there)
ARCHITECTURES = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma3_text": "gemma3"}
DEFAULT_TYPE = "F16"  # what llama.cpp's own converter writes by default

# the pre-tokenizer llama.cpp must use, told by the split pattern of tokenizer.json (llama.cpp's
# converter tells it by hashing a test string's tokens; these are the regexes behind those names)
_LLAMA3 = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_QWEN2 = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
PRE_TOKENIZERS = {("Split:" + _LLAMA3, "ByteLevel"): "llama-bpe", ("Split:" + _QWEN2, "ByteLevel"): "qwen2",
                  ("Digits", "ByteLevel"): "smollm", ("ByteLevel",): "gpt-2"}


def architecture(config) -> str:
    """The llama.cpp architecture of a HF config, or a one-line refusal naming the ones supported."""
    model_type = config.get_text_config().model_type
    if model_type not in ARCHITECTURES:
        raise FuseGPTError(f"GGUF out from a HuggingFace {model_type} model is not supported (supported: "
                           f"{', '.join(sorted(ARCHITECTURES))}; GGUF inputs of any family are); pass --no-gguf")
    return ARCHITECTURES[model_type]


def _pre_tokenizer(tokenizer_json: dict) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenization ('default' when it is none we know)."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    key = tuple(f"Split:{s['pattern'].get('Regex', s['pattern'].get('String'))}" if s.get("type") == "Split"
                else s.get("type") for s in steps)
    name = PRE_TOKENIZERS.get(key)
    if name is None:
        print(f"fusegpt: warning: llama.cpp has no pre-tokenizer we can name for {key}; the GGUF uses its default, "
              "so its text may split into other tokens than transformers' (token ids are unaffected)", file=sys.stderr)
    return name or "default"


def _add_tokenizer(writer, folder: Path) -> None:
    """The tokenizer saved in `folder` as GGUF's tokenizer keys: byte-level BPE as llama.cpp's `gpt2`
    model, SentencePiece-style BPE (byte fallback) or a tokenizer.model as its `llama` model."""
    from gguf import TokenType
    from gguf.vocab import BpeVocab, LlamaHfVocab, SentencePieceVocab, SpecialVocab

    tokenizer_json = json.loads((folder / "tokenizer.json").read_text()) if (folder / "tokenizer.json").exists() else {}
    vocab = None
    for reader in (SentencePieceVocab, BpeVocab, LlamaHfVocab):  # as llama.cpp's converter prefers them
        try:
            vocab = reader(folder)
            break
        except (FileNotFoundError, TypeError):
            continue
    if vocab is None:
        kind = tokenizer_json.get("model", {}).get("type", "unknown")
        raise FuseGPTError(f"GGUF out cannot write this tokenizer (a {kind} model, neither byte-level BPE nor "
                           "SentencePiece); pass --no-gguf")
    tokens, scores, types = (list(column) for column in zip(*vocab.all_tokens()))
    if isinstance(vocab, LlamaHfVocab):  # llama.cpp merges by score: a merge's result scores minus its rank
        scores = _merge_scores(tokenizer_json, len(tokens))
    for added in tokenizer_json.get("added_tokens", []):  # inside the base vocabulary too, as llama.cpp marks them
        if added["id"] < len(types):
            types[added["id"]] = TokenType.CONTROL if added.get("special") else TokenType.USER_DEFINED
    writer.add_tokenizer_model(vocab.tokenizer_model)
    writer.add_token_list(tokens)
    if vocab.tokenizer_model == "gpt2":
        writer.add_tokenizer_pre(_pre_tokenizer(tokenizer_json))
    else:
        writer.add_token_scores(scores)
    writer.add_token_types([int(t) for t in types])
    SpecialVocab(folder, load_merges=vocab.tokenizer_model == "gpt2", n_vocab=len(tokens)).add_to_gguf(writer, quiet=True)


def _merge_scores(tokenizer_json: dict, size: int) -> list[float]:
    """Scores under which llama.cpp's SentencePiece-style merging (the highest-scoring pair first)
    applies a BPE tokenizer's merges in their order (the lowest rank first)."""
    model = tokenizer_json["model"]
    scores = [0.0] * size
    for rank, merge in enumerate(model.get("merges", [])):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        token = model["vocab"].get(left + right)
        if token is not None and token < size and scores[token] == 0.0:
            scores[token] = -float(rank + 1)
    return scores


def _rope_parameters(text, layer_type: str = "full_attention") -> dict:
    """Rope settings across transformers' spellings (rope_parameters in v5, per layer type where
    layers differ; rope_theta/rope_scaling before)."""
    params = dict(getattr(text, "rope_parameters", None) or {})
    if layer_type in params:
        params = dict(params[layer_type])
    if "rope_theta" not in params:
        params["rope_theta"] = getattr(text, "rope_theta", 10000.0)
    params.update(getattr(text, "rope_scaling", None) or {})
    params.setdefault("rope_type", params.get("type", "default"))
    return params


def _rope_factors(text) -> np.ndarray:
    """Llama 3's frequency scaling as llama.cpp takes it: one factor per rotary frequency (the
    default inverse frequencies over the scaled ones, both from transformers' own rope code)."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](text, "cpu")
    params = _rope_parameters(text)
    dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    base = 1.0 / (params["rope_theta"] ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    return (base / scaled.double().numpy()).astype(np.float32)


def _add_settings(writer, config, depth: int, name: str) -> dict[str, np.ndarray]:
    """The model's settings under the architecture's keys; returns any tensors they imply (rope factors)."""
    import gguf

    text = config.get_text_config()
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    writer.add_name(name)
    writer.add_context_length(text.max_position_embeddings)
    writer.add_embedding_length(text.hidden_size)
    writer.add_block_count(depth)
    writer.add_feed_forward_length(text.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(getattr(text, "num_key_value_heads", None) or heads)
    writer.add_layer_norm_rms_eps(text.rms_norm_eps)
    writer.add_vocab_size(text.vocab_size)
    writer.add_rope_dimension_count(head_dim)
    if head_dim != text.hidden_size // heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    rope = _rope_parameters(text)
    writer.add_rope_freq_base(float(rope["rope_theta"]))
    scalar = getattr(text, "query_pre_attn_scalar", None)  # llama.cpp scales Gemma's queries by head_dim (27B: H/heads)
    if scalar is not None and scalar not in (head_dim, text.hidden_size // heads):
        raise FuseGPTError(f"GGUF out: llama.cpp cannot scale queries by {scalar} (only by the head size); "
                           "pass --no-gguf")
    layer_types = getattr(text, "layer_types", None)
    if layer_types and "sliding_attention" in layer_types:  # which blocks slide: the kept blocks' own entries
        writer.add_sliding_window(text.sliding_window)
        writer.add_sliding_window_pattern([kind == "sliding_attention" for kind in layer_types])
        writer.add_rope_freq_base_swa(float(_rope_parameters(text, "sliding_attention")["rope_theta"]))
    if rope["rope_type"] == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    elif rope["rope_type"] == "llama3":
        return {"rope_freqs.weight": _rope_factors(text)}
    elif rope["rope_type"] != "default":
        raise FuseGPTError(f"GGUF out does not write {rope['rope_type']} rope scaling yet; pass --no-gguf")
    return {}


def _hf_tensors(model, arch: str):
    """(processor, [(GGUF name, elements, HF values in fp32)], GGUF name -> HF name) for every weight
    of `model` (a tied head is the embedding in llama.cpp too), the values a function called when wanted."""
    from transformers.modeling_gguf_pytorch_utils import get_gguf_hf_weights_map

    processor = _processor(arch, model.config.to_dict())
    names = get_gguf_hf_weights_map(model, processor, model_type=arch)  # GGUF name -> HF name
    state = model.state_dict()
    tied = model.config.get_text_config().tie_word_embeddings
    missing = sorted(set(state) - set(names.values()) - ({"lm_head.weight"} if tied else set()))
    if missing:
        raise FuseGPTError(f"GGUF out has no GGUF name for {', '.join(missing[:3])}; pass --no-gguf")
    written = {gguf_name + ("" if gguf_name.endswith((".weight", ".bias")) else ".weight"): hf_name
               for gguf_name, hf_name in names.items() if hf_name in state and not (tied and gguf_name == "output.weight")}
    return processor, [(name, state[hf].numel(), lambda hf=hf: state[hf].detach().float().cpu().numpy())
                       for name, hf in written.items()], written


def _metadata(model, tokenizer, name: str, source: Path | None) -> tuple[dict, dict[str, np.ndarray]]:
    """The GGUF keys of `model`'s settings and `tokenizer` (written to no file), and the tensors the
    settings imply (rope factors). A SentencePiece `tokenizer.model` in the `source` folder is used
    as llama.cpp's converter uses it (transformers saves only tokenizer.json)."""
    import gguf

    with tempfile.TemporaryDirectory(prefix="fusegpt-tokenizer-") as scratch:
        tokenizer.save_pretrained(scratch)
        if source is not None and (source / "tokenizer.model").is_file():
            shutil.copyfile(source / "tokenizer.model", Path(scratch) / "tokenizer.model")
        probe = gguf.GGUFWriter(None, architecture(model.config))
        implied = _add_settings(probe, model.config, model.config.get_text_config().num_hidden_layers, name)
        _add_tokenizer(probe, Path(scratch))
        return dict(probe.kv_data[0]), implied


def probe_gguf_from_hf(model, tokenizer, gguf_type: str | None = None, source: Path | None = None) -> int:
    """Stop in seconds, before any work, a run whose GGUF (from a HF model) could not be written at
    its end: the family, its settings and tokenizer under GGUF's keys, every kind of tensor a repair
    changes through the layout's inverse, and the quantiser for a quantised type. Returns the
    number of tensor kinds probed."""
    from .gguf_out import probe_layout, require_quantiser

    _metadata(model, tokenizer, "probe", source)
    processor, tensors, _ = _hf_tensors(model, architecture(model.config))
    probed = probe_layout(processor, tensors)
    require_quantiser(_file_type(gguf_type or DEFAULT_TYPE))
    return probed


def write_gguf_from_hf(model, tokenizer, out: Path, gguf_type: str | None = None, source: Path | None = None,
                       importance: dict[str, np.ndarray] | None = None) -> GGUFExport:
    """Write the HF `model` (and `tokenizer`) as a GGUF file `out` at `gguf_type` (default F16);
    atomically. `source`: the model's folder, for its SentencePiece `tokenizer.model`. At a quantised
    type llama.cpp's rules choose each tensor's type and `importance` (HF weight name -> mean squared
    input per column, `gguf_rounding.activation_importance`) weights the rounding of the linears."""
    import gguf

    from .gguf_rounding import reweighted

    arch = architecture(model.config)
    target_type = _file_type(gguf_type or DEFAULT_TYPE)
    fields, implied = _metadata(model, tokenizer, out.stem, source)  # checked before anything is written
    processor, named, hf_names = _hf_tensors(model, arch)
    tensors = {name: _to_gguf(processor, values(), name) for name, _, values in named}
    weights = {name: _columns(processor, importance[hf], tensors[name].shape, name)
               for name, hf in hf_names.items() if importance and hf in importance and tensors[name].ndim == 2}
    weights = {name: columns for name, columns in weights.items() if columns is not None}
    tensors.update(implied)

    def metadata(writer) -> None:
        for key, value in fields.items():
            if key != gguf.Keys.General.ARCHITECTURE:
                writer.add_key_value(key, value.value, value.type, sub_type=value.sub_type)

    name = target_type.name.removeprefix("MOSTLY_").removeprefix("ALL_")
    if name in UNQUANTISED:
        written = {k: unquantised(v, target_type) for k, v in tensors.items()}
    else:
        written = reweighted(_quantise(tensors, arch, metadata, lambda: iter(tensors.items()), target_type),
                             tensors, weights)
    export = GGUFExport(file=str(out), file_type=name, bytes=0, quantised=len(written),
                        weighted=len(weights.keys() & written.keys()),
                        rounding="unquantised" if name in UNQUANTISED else f"llama.cpp's {name} rules")
    write_file(out, arch, metadata, target_type, [(tensor, data, kind) for tensor, (data, kind) in written.items()],
               export)
    return export

"""GGUF out: the compressed model as a GGUF file that llama.cpp (and Ollama, LM Studio) runs.

For a GGUF input, the output is that file with the removed blocks gone: the same metadata (the
tokenizer, the chat template, every setting) with `block_count` and every per-block array cut to
the kept blocks; block tensors renumbered blk.0.. without gaps; every tensor the compression did
not change copied byte for byte in its original type; the changed ones (the tuned blocks' weights)
quantised by llama.cpp's own quantiser (`llama_model_quantize`, from the `llama-cpp-python`
package) to the input's file type, or to `gguf_type`.

The tensors are laid out as GGUF stores them, which is what transformers' GGUF loader undoes when
it reads one (a per-family permutation of the query and key rows, an offset on some norms):
`_to_gguf` inverts that loader's transform numerically, so no family's layout is written here."""
from __future__ import annotations

import os
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import FuseGPTError
from ..files import write_atomic

QUANTISER_HINT = ("install llama-cpp-python (pip install llama-cpp-python; it builds llama.cpp from source "
                  "with gcc and cmake), or pass --gguf-type F16 or F32")
UNQUANTISED = ("F32", "F16")  # written without llama.cpp


class MissingQuantiser(FuseGPTError):
    """llama-cpp-python is not installed and the GGUF needs quantised tensors."""


class GGUFLayoutError(FuseGPTError):
    """A tensor whose GGUF layout cannot be recovered from the loader's transform."""


@dataclass
class GGUFExport:
    """What was written, for the report."""

    file: str
    file_type: str  # e.g. Q4_1, F16
    bytes: int
    tensor_types: dict[str, int] = field(default_factory=dict)  # type -> number of tensors
    copied: int = 0  # tensors copied byte for byte from the input
    quantised: int = 0  # tensors written anew
    rounding: str = ""  # how the types of the tensors written anew were chosen
    weighted: int = 0  # tensors rounded with their activations' importance


def _file_type(name: str):
    import gguf

    key = name.upper()
    for prefix in ("MOSTLY_", "ALL_"):
        if hasattr(gguf.LlamaFileType, prefix + key):
            return getattr(gguf.LlamaFileType, prefix + key)
    choices = [t.name.removeprefix("MOSTLY_").removeprefix("ALL_") for t in gguf.LlamaFileType if t.name != "GUESSED"]
    raise FuseGPTError(f"--gguf-type {name} is not a llama.cpp file type; choose one of {', '.join(choices)}")


def check_gguf_type(name: str | None) -> None:
    """Refuse an unknown --gguf-type before any work."""
    if name is not None:
        _file_type(name)


def _processor(arch: str, config: dict):
    from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor

    return TENSOR_PROCESSORS.get(arch, TensorProcessor)(config=config)


def _from_gguf(processor, weights: np.ndarray, name: str) -> np.ndarray:
    return processor.process(weights=weights, name=name, tensor_key_mapping={}, parsed_parameters={}).weights


def _to_gguf(processor, hf: np.ndarray, name: str) -> np.ndarray:
    """The GGUF layout of an HF tensor: the inverse of the loader's transform, found by applying it
    to zeros (its offset) and to the element indices (its permutation). A transform that is not a
    permutation plus an offset is refused in one line (GGUFLayoutError)."""
    refusal = GGUFLayoutError(f"GGUF out: transformers' GGUF loader transforms {name} in a way we cannot invert "
                              "(not a permutation plus an offset); pass --no-gguf")
    offset = _from_gguf(processor, np.zeros(hf.shape, np.float64), name)
    order = _from_gguf(processor, np.arange(hf.size, dtype=np.float64).reshape(hf.shape), name) - offset
    indices = order.reshape(-1).astype(np.int64)
    if order.shape != hf.shape or not np.array_equal(np.sort(indices), np.arange(hf.size)):
        raise refusal
    out = np.empty(hf.size, np.float64)
    out[indices] = (hf.astype(np.float64) - offset).reshape(-1)
    result = out.reshape(hf.shape).astype(np.float32)
    # exact for a permutation; with an offset (Gemma's norms are stored as 1 + w) up to fp32's rounding
    # of w + offset and back, which grows with each value (a real Gemma 3's norms reach 300)
    back = _from_gguf(processor, result, name).astype(np.float64)
    if (np.abs(back - hf) > 2 * np.finfo(np.float32).eps * (np.abs(hf) + np.abs(offset))).any():
        raise refusal
    return result


def _kind(name: str) -> str:
    """A tensor's kind: its GGUF name without the block index (blk.3.attn_q.weight: attn_q.weight)."""
    return name.split(".", 2)[2] if name.startswith("blk.") else name


def _moved(values: np.ndarray, seed: int = 0) -> np.ndarray:
    """`values` moved as a repair moves them: each by a few percent of itself and of the tensor's spread."""
    rng = np.random.default_rng(seed)
    spread = float(values.std()) if values.size > 1 else 1.0
    return (values * (1 + 0.05 * rng.standard_normal(values.shape))
            + 0.05 * (spread or 1.0) * rng.standard_normal(values.shape)).astype(np.float32)


PROBED_OUTSIDE_BLOCKS = 2**20  # elements: the norms outside the blocks, not the embeddings or the head


def probe_layout(processor, tensors) -> int:
    """Each kind of tensor once (`tensors`: (GGUF name, elements, HF values) triples, the values a
    function called only when probed), moved as a repair moves it, through the inverse of the
    loader's layout and back: what `_to_gguf` will meet at the end, in seconds now. Outside the
    blocks only the small tensors (norms) are probed: no repair changes the embeddings or the head.
    Returns the number of kinds probed."""
    seen: set[str] = set()
    for name, elements, values in tensors:
        if _kind(name) in seen or (not name.startswith("blk.") and elements > PROBED_OUTSIDE_BLOCKS):
            continue
        seen.add(_kind(name))
        _to_gguf(processor, _moved(values()), name)
    return len(seen)


def require_quantiser(file_type) -> None:
    """Raise MissingQuantiser when `file_type` needs llama.cpp's quantiser and it is not installed."""
    if file_type.name.removeprefix("ALL_").removeprefix("MOSTLY_") in UNQUANTISED:
        return
    import importlib.util

    if importlib.util.find_spec("llama_cpp") is None:
        raise MissingQuantiser(f"GGUF out needs llama.cpp's quantiser for {file_type.name} tensors: {QUANTISER_HINT}")


def _input_type(reader):
    import gguf

    return gguf.LlamaFileType(int(reader.fields["general.file_type"].contents())) \
        if "general.file_type" in reader.fields else gguf.LlamaFileType.ALL_F32


def probe_gguf(model, source: Path, gguf_type: str | None = None) -> int:
    """Stop in seconds, before any work, a run whose GGUF (from the GGUF input `source`) could not be
    written at its end: every kind of tensor a repair changes goes through the layout's inverse, and
    the quantiser must be there for a quantised type. Returns the number of tensor kinds probed."""
    import gguf
    from transformers.modeling_gguf_pytorch_utils import get_gguf_hf_weights_map

    reader = gguf.GGUFReader(source)
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    processor = _processor(arch, model.config.to_dict())
    names = get_gguf_hf_weights_map(model, processor)
    state = model.state_dict()
    probed = probe_layout(processor, ((t.name, int(t.n_elements),
                                       lambda hf=names[t.name]: state[hf].detach().float().cpu().numpy())
                                      for t in reader.tensors if t.name in names))
    require_quantiser(_file_type(gguf_type) if gguf_type else _input_type(reader))
    return probed


def _copy_metadata(reader, writer, depth: int, kept: list[int]) -> None:
    """Every key of the input, with the depth and each per-block array cut to the kept blocks."""
    import gguf

    arch = writer.arch
    for item in reader.fields.values():
        if item.name.startswith("GGUF.") or item.name in (gguf.Keys.General.ARCHITECTURE, gguf.Keys.General.FILE_TYPE):
            continue  # the writer's own, and the output's type
        kind = item.types[0]
        value = item.contents()
        sub = item.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        if item.name == f"{arch}.block_count":
            value = len(kept)
        elif kind == gguf.GGUFValueType.ARRAY and item.name.startswith(f"{arch}.") and len(value) == depth:
            value = [value[i] for i in kept]
        writer.add_key_value(item.name, value, kind, sub_type=sub)


def _renamed(name: str, kept: list[int]) -> str | None:
    """blk.<o>.x -> blk.<new index>.x for a kept block (None for a removed one); others unchanged."""
    if not name.startswith("blk."):
        return name
    _, index, rest = name.split(".", 2)
    return f"blk.{kept.index(int(index))}.{rest}" if int(index) in kept else None


@contextmanager
def _quiet_c_output():
    """Send what C code writes to stdout and stderr to /dev/null for the duration."""
    sys.stdout.flush(), sys.stderr.flush()  # what Python buffered goes out first
    saved = [os.dup(1), os.dup(2)]
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1), os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved[0], 1), os.dup2(saved[1], 2)
        for fd in (*saved, null):
            os.close(fd)


def _quantise(tensors: dict[str, np.ndarray], arch: str, metadata, every_tensor, file_type) -> dict[str, tuple]:
    """llama.cpp's quantisation of `tensors` (GGUF names and layout, fp32): a model file with every
    tensor (`every_tensor()`: (name, fp32 data), the others dequantised) and the output's
    `metadata` goes through llama_model_quantize; its (bytes, type) of these come back."""
    require_quantiser(file_type)
    import gguf
    import llama_cpp

    with tempfile.TemporaryDirectory(prefix="fusegpt-gguf-") as scratch:
        source, target = Path(scratch) / "f32.gguf", Path(scratch) / "quantised.gguf"
        writer = gguf.GGUFWriter(str(source), arch)
        metadata(writer)
        writer.add_key_value(gguf.Keys.General.FILE_TYPE, int(gguf.LlamaFileType.ALL_F32), gguf.GGUFValueType.UINT32)
        for name, data in every_tensor():
            writer.add_tensor(name, tensors.get(name, data))
        writer.write_header_to_file(), writer.write_kv_data_to_file(), writer.write_tensors_to_file()
        writer.close()
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = int(file_type)
        params.nthread = os.cpu_count() or 1
        with _quiet_c_output():  # llama.cpp prints every tensor it quantises
            failed = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), params) != 0
        if failed:
            raise FuseGPTError(f"llama.cpp could not quantise the model to {file_type.name}; try another --gguf-type")
        quantised = gguf.GGUFReader(target)
        return {t.name: (np.array(t.data), t.tensor_type) for t in quantised.tensors if t.name in tensors}


def write_gguf(model, kept: list[int], source: Path, out: Path, gguf_type: str | None = None,
               progress: bool = False, importance: dict[str, np.ndarray] | None = None) -> GGUFExport:
    """Write the compressed `model` (its blocks the original ones at `kept`) as GGUF to `out`, from
    the GGUF file it was loaded from; atomically (written beside, then renamed).

    By default the file is no larger than the input: each changed matrix starts at its own type in
    the input and the bytes the removed blocks freed raise the types of those whose rounding error
    falls most (`gguf_rounding.fit_types`). With `gguf_type`, llama.cpp's rules for that file type
    choose every tensor's type. Either way `importance` (HF weight name -> mean squared input per
    column, `gguf_rounding.activation_importance`) weights the rounding of the changed tensors."""
    import gguf
    from tqdm.auto import tqdm

    from .gguf_rounding import fitted, reweighted

    reader = gguf.GGUFReader(source)
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    depth_field = reader.fields.get(f"{arch}.block_count")
    depth = depth_field.contents() if depth_field else len(kept)
    processor = _processor(arch, model.config.to_dict())
    from transformers.modeling_gguf_pytorch_utils import get_gguf_hf_weights_map

    names = get_gguf_hf_weights_map(model, processor)  # new GGUF name -> HF name
    state = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    target_type = _file_type(gguf_type) if gguf_type else _input_type(reader)

    changed: dict[str, np.ndarray] = {}  # new name -> fp32 in GGUF layout
    weights: dict[str, np.ndarray] = {}  # new name -> importance per GGUF column
    plan: list[tuple[str, object]] = []  # (new name, the input tensor)
    for tensor in tqdm(reader.tensors, desc="GGUF", unit="tensor", leave=False, disable=not progress):
        new = _renamed(tensor.name, kept)
        if new is None:
            continue
        plan.append((new, tensor))
        hf_name = names.get(new)
        if hf_name is None:  # a tensor transformers does not load (e.g. rope factors): kept as it is
            continue
        original = _from_gguf(processor, gguf.dequantize(tensor.data, tensor.tensor_type), tensor.name)
        current = state[hf_name].numpy()
        if gguf_type or not np.array_equal(original.astype(np.float32), current):
            changed[new] = _to_gguf(processor, current, new)
            if importance and hf_name in importance and current.ndim == 2:  # a linear layer's weight
                columns = _columns(processor, importance[hf_name], current.shape, new)
                if columns is not None:
                    weights[new] = columns

    pattern_key = f"{arch}.attention.sliding_window_pattern"
    layer_types = getattr(model.config.get_text_config(), "layer_types", None) or []

    def metadata(writer) -> None:
        _copy_metadata(reader, writer, depth, kept)
        if "sliding_attention" in layer_types and pattern_key not in reader.fields:
            # llama.cpp would take its built-in period (Gemma 3: every sixth block global), which
            # removing blocks breaks: the kept blocks' own layout, explicitly
            writer.add_key_value(pattern_key, [kind == "sliding_attention" for kind in layer_types],
                                 gguf.GGUFValueType.ARRAY, sub_type=gguf.GGUFValueType.BOOL)

    def all_tensors():
        for new, tensor in plan:
            yield new, changed.get(new, gguf.dequantize(tensor.data, tensor.tensor_type).astype(np.float32))

    if target_type.name.removeprefix("ALL_").removeprefix("MOSTLY_") in UNQUANTISED:
        written = {name: unquantised(data, target_type) for name, data in changed.items()}
    elif gguf_type:
        written = reweighted(_quantise(changed, arch, metadata, all_tensors, target_type) if changed else {},
                             changed, weights)
    else:  # no larger than the input
        require_quantiser(target_type)
        written = fitted(changed, weights, {new: tensor for new, tensor in plan}, reader)
    type_name = target_type.name.removeprefix("MOSTLY_").removeprefix("ALL_")
    export = GGUFExport(file=str(out), file_type=type_name, bytes=0, weighted=len(weights.keys() & written.keys()),
                        rounding=("unquantised" if type_name in UNQUANTISED else f"llama.cpp's {type_name} rules"
                                  if gguf_type else f"raised from the input's types within its {source.stat().st_size} bytes"))
    write_file(out, arch, metadata, target_type,
               [(new, *written.get(new, (np.array(tensor.data), tensor.tensor_type))) for new, tensor in plan], export)
    export.quantised = sum(new in written for new, _ in plan)
    export.copied = len(plan) - export.quantised
    return export


def _columns(processor, vector: np.ndarray, shape: tuple, name: str) -> np.ndarray | None:
    """A per-column vector of an HF matrix in the GGUF layout (the loader's transform permutes rows
    or columns); None where the transform mixes them."""
    moved = _to_gguf(processor, np.broadcast_to(vector.astype(np.float32), shape).copy(), name)
    return moved[0] if np.array_equal(moved, np.broadcast_to(moved[0], moved.shape)) else None


def unquantised(data: np.ndarray, file_type) -> tuple[np.ndarray, int]:
    """(data, GGML type) of a tensor in an F32 or F16 file: matrices at the file's type, vectors (norms) F32."""
    import gguf

    if file_type == gguf.LlamaFileType.MOSTLY_F16 and data.ndim > 1:
        return data.astype(np.float16), gguf.GGMLQuantizationType.F16
    return data.astype(np.float32), gguf.GGMLQuantizationType.F32


def write_file(out: Path, arch: str, metadata, file_type, tensors: list[tuple], export: GGUFExport) -> None:
    """Write a GGUF file atomically (beside, then renamed): `metadata(writer)`'s keys, the file type,
    and `tensors` as (name, data, GGML type); the types and the size go into `export`."""
    import gguf

    def write(path: Path) -> None:
        writer = gguf.GGUFWriter(str(path), arch)
        metadata(writer)
        writer.add_key_value(gguf.Keys.General.FILE_TYPE, int(file_type), gguf.GGUFValueType.UINT32)
        for name, data, kind in tensors:
            writer.add_tensor(name, data, raw_dtype=kind)  # a quantised tensor's shape comes from its byte rows
            type_name = gguf.GGMLQuantizationType(kind).name
            export.tensor_types[type_name] = export.tensor_types.get(type_name, 0) + 1
        writer.write_header_to_file(), writer.write_kv_data_to_file(), writer.write_tensors_to_file()
        writer.close()

    try:
        write_atomic(out, write)
    except OSError as error:
        raise FuseGPTError(f"could not write '{out}': {error.strerror or error}; free space or choose another --out") \
            from error
    export.bytes = out.stat().st_size

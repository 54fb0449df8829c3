"""Where a family keeps its blocks and which linear layers play which role.

Everything that depends on attribute names lives here; the pipeline, Macro Influence, fusion
and tuning only see a list of blocks, a role -> linear mapping and a way to set the depth."""
from __future__ import annotations

from dataclasses import dataclass
from functools import reduce

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import PretrainedConfig, PreTrainedModel


def get_submodule(root: nn.Module, path: str) -> nn.Module:
    return root.get_submodule(path)


def set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, module)


class OutputHead(nn.Module):
    """The model's own modules from the last block's output to the logits. It holds the model's
    modules themselves (not copies), so moving it to a device moves them."""

    def __init__(self, final_layers: list[nn.Module], lm_head: nn.Module, softcap: float | None):
        super().__init__()
        self.final_layers = nn.ModuleList(final_layers)
        self.lm_head = lm_head
        self.softcap = softcap

    def features(self, hidden: torch.Tensor) -> torch.Tensor:
        """What the LM head reads: the last block's output through the final layers (the norm)."""
        for layer in self.final_layers:
            hidden = layer(hidden)
        return hidden

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self._capped(self.lm_head(self.features(hidden)))

    def token_logits(self, features: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """The logits of some tokens only, `tokens` (N x j) at each of N positions of `features`
        (N x H, the output of `features`): j rows of the head each instead of the vocabulary's."""
        weight, bias = self.lm_head.weight, self.lm_head.bias
        logits = torch.bmm(weight[tokens], features.unsqueeze(-1)).squeeze(-1)
        return self._capped(logits if bias is None else logits + bias[tokens])

    def for_autocast(self, device: torch.device) -> OutputHead:
        """Under autocast on `device`: this head with its LM head's weight (and bias) copied to the
        autocast dtype once, since autocast casts a frozen weight again at every call (on a 262k
        vocabulary about as costly as the product); outside autocast, itself."""
        if not torch.is_autocast_enabled(device.type):
            return self
        dtype = torch.get_autocast_dtype(device.type)
        bias = self.lm_head.bias
        low = _LowLinear(self.lm_head.weight.detach().to(dtype), None if bias is None else bias.detach().to(dtype))
        return OutputHead(list(self.final_layers), low, self.softcap)

    def _capped(self, logits: torch.Tensor) -> torch.Tensor:
        if self.softcap:  # Gemma-style final logit soft-capping, as the causal LM's forward does it
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits


class _LowLinear(nn.Module):
    """A frozen linear layer on weights already in a low dtype (OutputHead.for_autocast)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.weight, self.bias = weight, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(self.weight.dtype), self.weight, self.bias)


@dataclass(frozen=True)
class DecoderAdapter:
    """A decoder family: where its blocks are, the linear roles inside a block and which config
    settings describe the depth. The settings live in the text config (`get_text_config()`), which
    is the model's own config for a causal LM and the language model's for a LLaVA."""

    family: str
    model_types: tuple[str, ...]
    base: str  # the decoder stack inside the loaded model ("model", "transformer", "model.language_model")
    layers: str  # the block list inside `base` ("layers", "h", "decoder.layers")
    roles: dict[str, str]  # role -> path inside a block, e.g. "q" -> "self_attn.q_proj"
    depth_key: str = "num_hidden_layers"
    per_layer_keys: tuple[str, ...] = ("layer_types",)  # config lists with one entry per block
    # "the first N blocks" settings (Qwen2's max_window_layers): N becomes the number of kept
    # blocks among the first N, so every kept block stays on its side of the threshold
    threshold_keys: tuple[str, ...] = ()
    # config flags under which a block computes something that depends on its index, which
    # changes when blocks before it are removed (GPT-2's scale_attn_by_inverse_layer_idx)
    index_dependent_flags: tuple[str, ...] = ()
    # the modules between the last block and the LM head, paths inside `base`, applied in order;
    # one that the config turned off (None, as OPT's projection) is skipped
    final_layers: tuple[str, ...] = ("norm",)
    # the "down" role's output joins the residual stream as is (a linear map on it can be folded
    # into its weights); False where a norm follows it (Gemma 2/3's post-feed-forward norm)
    residual_down: bool = True

    @property
    def blocks_path(self) -> str:
        return f"{self.base}.{self.layers}"

    def blocks(self, model: PreTrainedModel) -> nn.ModuleList:
        return get_submodule(model, self.blocks_path)

    def linears(self, block: nn.Module) -> dict[str, nn.Module]:
        """The block's linear layers by role (q, k, v, o, gate, up, down or their fused equivalents)."""
        return {role: get_submodule(block, path) for role, path in self.roles.items()}

    def replace_linear(self, block: nn.Module, role: str, module: nn.Module) -> None:
        set_submodule(block, self.roles[role], module)

    def head(self, model: PreTrainedModel) -> OutputHead:
        """Last block's output -> logits with the model's own final norm, LM head and the text
        config's `final_logit_softcapping`. Other logit post-processing (a family's logit scale)
        would have to be added here."""
        base = get_submodule(model, self.base)
        layers = [reduce(getattr, path.split("."), base) for path in self.final_layers]
        softcap = getattr(model.config.get_text_config(), "final_logit_softcapping", None)
        return OutputHead([layer for layer in layers if layer is not None], model.get_output_embeddings(), softcap)

    def norm_parameters(self, block: nn.Module) -> list[nn.Parameter]:
        """Parameters of the block that are not in a role linear: the norms (and norm-like gains)."""
        inside = {id(p) for path in self.roles.values() for p in get_submodule(block, path).parameters()}
        return [p for p in block.parameters() if id(p) not in inside]

    def set_blocks(self, model: PreTrainedModel, blocks: list[nn.Module], kept: list[int]) -> None:
        """Install `blocks` (originally at indices `kept`) as the model's blocks and make the config,
        every per-layer config setting and each attention's `layer_idx` agree with the new depth."""
        set_submodule(model, self.blocks_path, nn.ModuleList(blocks))
        for new_idx, block in enumerate(blocks):
            for module in block.modules():
                if hasattr(module, "layer_idx"):
                    module.layer_idx = new_idx
        self._shrink_config(model.config.get_text_config(), kept)

    def _shrink_config(self, config: PretrainedConfig, kept: list[int]) -> None:
        setattr(config, self.depth_key, len(kept))
        for key in self.per_layer_keys:
            value = getattr(config, key, None)
            if isinstance(value, (list, tuple)):
                setattr(config, key, type(value)(value[i] for i in kept))
        for key in self.threshold_keys:
            value = getattr(config, key, None)
            if isinstance(value, int):
                setattr(config, key, sum(i < value for i in kept))

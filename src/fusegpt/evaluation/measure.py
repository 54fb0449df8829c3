"""The one evaluation every command runs on a model in memory (`fusegpt compress --ppl`, `fusegpt
eval`, each `fusegpt compare` cell): perplexity by the protocol on each source at the model's
context, and zero-shot accuracy when tasks are given. The caller places the model first."""
from __future__ import annotations

from dataclasses import dataclass, field

from transformers import PreTrainedModel

from ..runtime.placement import context_length
from .ppl import evaluate_perplexity


@dataclass
class Measured:
    seqlen: int  # the perplexity windows' length: the one asked for, capped at the model's context
    ppl: dict[str, float] = field(default_factory=dict)  # source -> perplexity
    zero_shot: dict[str, dict[str, float]] = field(default_factory=dict)  # task -> scores (evaluation.zeroshot)


def measure(model: PreTrainedModel, tokenizer, ppl: list[str], tasks: list[str], seqlen: int,
            data_dir: str | None = None, ppl_windows: int | None = None, limit: int | None = None,
            tasks_dir: str | None = None, batch_size: int = 8, progress: bool = True) -> Measured:
    """Perplexity on `ppl` (every protocol window, or the first `ppl_windows`) and zero-shot scores on
    `tasks` (each task's first `limit` items); lm-eval is imported only when tasks are asked for."""
    measured = Measured(seqlen=min(seqlen, context_length(model)))
    if ppl:
        measured.ppl = evaluate_perplexity(model, tokenizer, ppl, measured.seqlen, data_dir, batch_size,
                                           progress=progress, windows=ppl_windows)
    if tasks:
        from .zeroshot import evaluate_zero_shot

        measured.zero_shot = evaluate_zero_shot(model, tokenizer, tasks, limit, data_dir, batch_size,
                                                progress=progress, tasks_dir=tasks_dir)
    return measured

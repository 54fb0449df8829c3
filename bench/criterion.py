"""What choosing costs, and whether the cheap kl criterion chooses what the exact one does.

    python bench/criterion.py timing        # one removal step of a Gemma-3-270M-shaped model (random
                                            # weights, 262,144-token vocabulary), 8 x 256 scoring tokens:
                                            # score seconds and peak RSS of the default criterion, and at
                                            # a 32,768-token vocabulary (memory beyond the head)
    python bench/criterion.py speed         # exact and default scoring on pydoc (seed 0), each timed alone
    python bench/criterion.py table         # the blocks and seconds of what is cached (docs/BENCHMARKS.md)
    python bench/criterion.py budget        # every block scored every step: where each step's winner stood
                                            # in the order of the previous step's scores
    python bench/criterion.py blocks [NAMES] # the blocks chosen by each variant (default: exact and the
                                            # default's): pydoc seeds 0-4 at 0.25 and 0.5, SmolLM2 at 0.25 and 0.5
    python bench/criterion.py choices [MODELS] # the blocks the kl and nll criteria choose with the
                                            # default's other settings at each seed: pydoc 0.25 (seeds
                                            # 0-4), SmolLM2 0.25 and Gemma 3 4 of 18 (seeds 1, 2)

"Exact" is --kl-top-k 0 --kl-stride 1 --rescore 0 (the whole vocabulary at every position, every
block every step); the cheap variants are in VARIANTS, CHEAP the default's. Selection only: --repair none, which removes
what kl-fuse removes (its injections start at zero coefficients and change nothing before the
global tune). Results in bench/results/criterion.json (cached per entry)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from common import MODELS, OUTPUTS, RESULTS, alone, protocol, require_assets

EXACT = ["--kl-top-k", "0", "--kl-stride", "1", "--rescore", "0"]
# the cheap variants measured, by name: top-k dense side, position stride (0: automatic), rescoring
VARIANTS = {
    "exact": EXACT,
    "top64": ["--kl-top-k", "64", "--kl-stride", "0", "--rescore", "0"],
    "top64-lazy4": ["--kl-top-k", "64", "--kl-stride", "0", "--rescore", "4", "--rescore-limit", "0"],  # measured before 2026-12-04
    # the same flags with the code of 2026-12-04: candidates in the order of their last scores (Block
    # Influence at first), each stopped once its partial sum rules it out (importance/candidates.py)
    "default": ["--kl-top-k", "64", "--kl-stride", "0", "--rescore", "4", "--rescore-limit", "0"],
    # the same flags with the code of late 2026-12-04: each candidate's KL first bounded from the k
    # dense top tokens' logits on every window, the vocabulary's head run only while the bounds
    # leave it a chance; the best score carried from one lazy chunk to the next; candidates stopped
    # early ranked by their estimates (not their bounds) for the next step's order
    "bounded": ["--kl-top-k", "64", "--kl-stride", "0", "--rescore", "4", "--rescore-limit", "0"],
    # the same, rescoring at most 8 blocks a step after the first: in the budget runs no step's winner
    # stood below 5th by the previous step's full scores, but the run ranks by bounds (not the default)
    "limit8": ["--kl-top-k", "64", "--kl-stride", "0", "--rescore", "4", "--rescore-limit", "8"],
    # the same flags, the limit taking the 8 blocks with the lowest estimates (a block stopped early:
    # its partial mean, not its bound); SmolLM2's third step missed the exact block (13), which stood
    # behind 20 blocks whose estimates were steps old, made when every score was lower
    "limit8-estimates": ["--kl-top-k", "64", "--kl-stride", "0", "--rescore", "4", "--rescore-limit", "8"],
    # the same flags, the limit taking the 8 blocks closest to the best of the step they were last
    # scored in (estimate minus that step's best: BlockStack.score_margins); candidates run in that order
    "limit8-margins": ["--kl-top-k", "64", "--kl-stride", "0", "--rescore", "4", "--rescore-limit", "8"],
    # the default's criterion, every block scored every step and run to the end (bench/criterion.py budget)
    "every": ["--kl-top-k", "64", "--kl-stride", "0", "--rescore", "0", "--full-scores"],
    # the criterion as it was before 2026-12-02: every candidate, the whole vocabulary, run to the end
    "exact-full": [*EXACT, "--full-scores"],
}
RUNS = [("pydoc", sparsity, seed) for sparsity in ("0.25", "0.5") for seed in range(5)] + \
    [("smollm2", sparsity, 0) for sparsity in ("0.25", "0.5")]
TOO_LONG = {("smollm2", "0.5", "exact")}  # the exact criterion there would take hours: not run
CHEAP = "limit8-margins"  # the default's settings and code
COLUMNS = ("exact", "bounded", CHEAP)  # the blocks table's: exact, exact lazily, the default
RESULT = RESULTS / "criterion.json"
SELECT = ["--selection", "kl", "--repair", "none", "--seed"]


def _load() -> dict:
    return json.loads(RESULT.read_text()) if RESULT.exists() else {}


def _record(key: str, value: dict) -> None:
    """Add one entry to the results file as it is now (other runs may have added theirs)."""
    results = _load()
    results[key] = value
    RESULT.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")


def _compress(model: str, out: Path, flags: list[str], scores: bool = False) -> dict:
    """Run compress under /usr/bin/time; its report's removed blocks and score seconds, and the peak
    RSS (and with `scores`, every step's scores)."""
    run = subprocess.run(["/usr/bin/time", "-f", "MAXRSS %M", sys.executable, "-m", "fusegpt", "compress", model,
                          "--out", str(out), "--overwrite", *flags, "--quiet"], capture_output=True, text=True)
    if run.returncode:
        sys.exit(run.stderr[-2000:])
    report = json.loads((out / "fusegpt_report.json").read_text())
    rss = next(int(line.split()[1]) for line in run.stderr.splitlines() if line.startswith("MAXRSS"))
    return {"removed": report["removed"], "score_seconds": round(sum(s["seconds"]["score"] for s in report["steps"]), 1),
            "scored_blocks": sum(len(s["scores"]) for s in report["steps"]),
            **({"scores": [s["scores"] for s in report["steps"]]} if scores else {}),
            "score_passes": sum(s.get("score_passes", 0) for s in report["steps"]), "peak_rss_gib": round(rss / 2**20, 2)}


def _gemma_shaped(vocabulary: int) -> Path:
    """A random model with Gemma-3-270M's shapes (and the pydoc tokenizer, whose ids fit any vocabulary)."""
    path = OUTPUTS / f"gemma3-270m-shape-v{vocabulary}"
    if (path / "config.json").exists():
        return path
    import torch
    from transformers import AutoTokenizer, Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    config = Gemma3TextConfig(vocab_size=vocabulary, hidden_size=640, intermediate_size=2048, num_hidden_layers=18,
                              num_attention_heads=4, num_key_value_heads=1, head_dim=256, sliding_window=512,
                              max_position_embeddings=32768, query_pre_attn_scalar=256)
    Gemma3ForCausalLM(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(MODELS["pydoc"]).save_pretrained(path)
    return path


def timing() -> None:
    results = _load()
    calib = protocol("smollm2").calib[:2]
    for vocabulary in (262144, 32768):
        model = _gemma_shaped(vocabulary)
        for name in (CHEAP,):  # the exact criterion holds a full distribution per position: not at 262k
            flags = VARIANTS[name]
            key = f"timing v{vocabulary} {name}"
            if key in results:
                continue
            with alone() as paused:  # a timing: the machine's other benchmarks wait
                entry = _compress(str(model), OUTPUTS / "criterion" / "timing",
                                  [*calib, "--nsamples", "8", "--mi-samples", "8", "--seqlen", "256",
                                   "--num-remove", "1", *SELECT, "0", *flags])
            _record(key, {**entry, "paused": paused})
            print(key, _load()[key], flush=True)


def blocks(names: list[str]) -> None:
    results = _load()
    for model, sparsity, seed in RUNS:
        proto = protocol(model)
        for name in names:
            flags = VARIANTS[name]
            key = f"blocks {model} {sparsity} seed{seed} {name}"
            if key in results or (model, sparsity, name) in TOO_LONG:
                continue
            _record(key, _compress(str(proto.model), OUTPUTS / "criterion" / "blocks",
                                   [*proto.calib, "--sparsity", sparsity, *SELECT, str(seed), *flags]))
            print(key, _load()[key], flush=True)


# seed 0 of the real models: their headline cells (headline-<model>/default-halving-bf16, nll-halving-bf16)
CHOICE_RUNS = {"pydoc": (["--sparsity", "0.25"], range(5)), "smollm2": (["--sparsity", "0.25"], (1, 2)),
               "gemma3": (["--num-remove", "4"], (1, 2))}


def choices(models: list[str]) -> None:
    """Whether a criterion's choice moves with the calibration seed (its windows): kl and nll,
    everything else the default's, selection only (--repair none)."""
    for model in models:
        proto = protocol(model)
        size, seeds = CHOICE_RUNS[model]
        for seed in seeds:
            for criterion in ("kl", "nll"):
                key = f"choice {model} {' '.join(size)} seed{seed} {criterion}"
                if key in _load():
                    continue
                _record(key, _compress(str(proto.model), OUTPUTS / "criterion" / "choices",
                                       [*proto.calib, *size, "--selection", criterion, "--repair", "none",
                                        "--seed", str(seed)]))
                print(key, _load()[key], flush=True)


def winner_ranks(scores: list[dict[str, float]]) -> list[int]:
    """Where each step's winner stood (1 = first) when every remaining block is ordered by its latest
    score, the previous step's: how many a rescoring of only the best few would have had to rescore
    to take the same block. `scores` are every block's full scores, step by step."""
    latest, ranks = dict(scores[0]), []
    for step in scores[1:]:
        order = sorted(step, key=lambda block: latest[block])
        ranks.append(order.index(min(step, key=step.get)) + 1)
        latest.update(step)
    return ranks


def limited_ranks(scores: list[dict[str, float]], limit: int, margins: bool) -> list[int]:
    """The same, replayed under a rescoring limit: each step only the `limit` blocks first by what
    is known of them are rescored (their full scores here), known by the score they last had, or
    (`margins`) by how far it was from the best of the step it was last scored in."""
    known = {block: (score, min(scores[0].values())) for block, score in scores[0].items()}
    ranks = []
    for step in scores[1:]:
        order = sorted(step, key=lambda block: known[block][0] - known[block][1] * margins)
        ranks.append(order.index(min(step, key=step.get)) + 1)
        rescored = order[:limit]
        best = min(step[block] for block in rescored)
        known.update({block: (step[block], best) for block in rescored})
    return ranks


def budget() -> None:
    """The default's criterion with every block scored every step (--rescore 0 --full-scores), on
    the blocks runs; prints each step's winner's rank by the previous step's scores, and under a
    limit of 8 by old scores and by margins."""
    for model, sparsity, seed in RUNS:
        proto = protocol(model)
        key = f"budget {model} {sparsity} seed{seed}"
        if key not in _load():
            _record(key, _compress(str(proto.model), OUTPUTS / "criterion" / "budget",
                                   [*proto.calib, "--sparsity", sparsity, *SELECT, str(seed), *VARIANTS["every"]],
                                   scores=True))
        entry = _load()[key]
        print(key, entry["removed"], "winner ranks", winner_ranks(entry["scores"]), "limit 8 by old scores",
              limited_ranks(entry["scores"], 8, False), "by margins", limited_ranks(entry["scores"], 8, True), flush=True)


def exact_passes(model: str, sparsity: str) -> int:
    """Forward block passes of exact scoring: every candidate of every step runs the blocks after it
    on the scoring windows, M x sum over the steps of L_t (L_t - 1) / 2."""
    proto = protocol(model)
    depth = {"pydoc": 12, "smollm2": 30}[model]
    samples = int(proto.calib[proto.calib.index("--mi-samples") + 1])
    remove = -(-int(round(depth * float(sparsity) * 1e6)) // 10**6)
    return samples * sum((depth - t) * (depth - t - 1) // 2 for t in range(remove))


def speed() -> None:
    """Exact and default scoring timed alone (the other benchmarks paused) on pydoc, seed 0."""
    proto = protocol("pydoc")
    for sparsity in ("0.25", "0.5"):
        for name in ("exact-full", "exact", CHEAP):
            key = f"speed pydoc {sparsity} seed0 {name}"
            if key in _load():
                continue
            with alone() as paused:
                entry = _compress(str(proto.model), OUTPUTS / "criterion" / "speed",
                                  [*proto.calib, "--sparsity", sparsity, *SELECT, "0", *VARIANTS[name]])
            _record(key, {**entry, "paused": paused})
            print(key, _load()[key], flush=True)


def table() -> str:
    """The blocks each of COLUMNS chose against the exact criterion's, with scoring seconds, forward
    block passes (exact: by formula) and peak RSS."""
    results = _load()
    rows = ["| model, sparsity, seed | " + " | ".join(f"{name}: removed | score s | block passes | peak RSS GiB"
                                                     for name in COLUMNS) + " |",
            "| --- |" + " --- | --- | --- | --- |" * len(COLUMNS)]
    runs = sorted({key.rsplit(" ", 1)[0] for key in results if key.startswith("blocks ")},
                  key=lambda run: ("smollm2" in run, run))
    for run in runs:
        exact = results.get(f"{run} exact")
        cells = []
        model, sparsity = run.split()[1:3]
        for name in COLUMNS:
            entry = results.get(f"{run} {name}")
            if entry is None:
                cells += ["-", "-", "-", "-"]
                continue
            same = "" if entry is exact or exact is None else \
                " (same)" if entry["removed"] == exact["removed"] else \
                " (same set)" if sorted(entry["removed"]) == sorted(exact["removed"]) else ""
            passes = exact_passes(model, sparsity) if entry is exact else entry.get("score_passes")
            cells += [" ".join(map(str, entry["removed"])) + same, f"{entry['score_seconds']:.0f}",
                      f"{passes:,}" if passes else "-",
                      "-" if entry["peak_rss_gib"] is None else f"{entry['peak_rss_gib']:.2f}"]
        rows.append(f"| {run.removeprefix('blocks ')} | " + " | ".join(cells) + " |")
    for sparsity in ("0.25", "0.5"):
        exact, cheap = (results.get(f"speed pydoc {sparsity} seed0 {n}") for n in ("exact-full", CHEAP))
        if exact and cheap:
            rows.append(f"\nAlone, pydoc {sparsity} seed 0: exact {exact['score_seconds']:.1f} s, {exact['score_passes']:,} "
                        f"block passes; default {cheap['score_seconds']:.1f} s, {cheap['score_passes']:,} block passes "
                        f"({exact['score_seconds'] / cheap['score_seconds']:.1f}x faster, the same blocks: "
                        f"{exact['removed'] == cheap['removed']})")
    choices = sorted({key.rsplit(" ", 1)[0] for key in results if key.startswith("choice ")})
    if choices:
        rows += ["", "| model, size, seed | kl: removed | nll: removed |", "| --- | --- | --- |"]
        rows += [f"| {run.removeprefix('choice ')} | "
                 + " | ".join(" ".join(map(str, results[f"{run} {c}"]["removed"])) if f"{run} {c}" in results else "-"
                              for c in ("kl", "nll")) + " |" for run in choices]
    for key in sorted(k for k in results if k.startswith("timing")):
        entry = results[key]
        rows.append(f"\n{key}: {entry['score_seconds']:.0f} s scoring, peak RSS {entry['peak_rss_gib']:.2f} GiB")
    return "\n".join(rows)


if __name__ == "__main__":
    if sys.argv[1:2] == ["table"]:
        print(table())
        sys.exit()
    require_assets()
    if sys.argv[1:2] == ["timing"]:
        timing()
    elif sys.argv[1:2] == ["speed"]:
        speed()
    elif sys.argv[1:2] == ["budget"]:
        budget()
    elif sys.argv[1:2] == ["choices"]:
        choices(sys.argv[2].split(",") if len(sys.argv) > 2 else list(CHOICE_RUNS))
    else:
        blocks(sys.argv[2].split(",") if len(sys.argv) > 2 else ["exact", CHEAP])

"""`fusegpt compress` and `fusegpt eval`: argument parsing over the Python API."""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

from .catalog import ALIASES, CRITERIA, REPAIRS
from .config import (COEFFICIENT_FORMS, DISTILLS, DTYPES, HIDDEN_CACHES, LOSSES, METHODS, OFFLOADS, PRESETS, RECIPES,
                     REPAIR_NAMES, SELECTION_NAMES, TASKS, TEACHERS, CompressConfig, preset)
from .errors import FuseGPTError, first_line

_DEFAULT = CompressConfig()


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", default=os.environ.get("FUSEGPT_DATA"),
                        help="one folder with text/ (wikitext-2-raw/, ptb/, c4/) for the "
                             "named corpora and tasks/ for zero-shot, used when the Hub is unreachable "
                             "(default: $FUSEGPT_DATA)")
    parser.add_argument("--dtype", choices=DTYPES, default=_DEFAULT.dtype, help="weights and compute dtype")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")


def _compress_parser(sub) -> None:
    p = sub.add_parser("compress", help="remove blocks from a model and save the shallower model",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("model", help="local HuggingFace model folder, .gguf file (or a folder holding one) or Hub id")
    p.add_argument("--out", required=True, help="output folder (must be new or empty)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists (only once the new result is complete)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from its last finished step (same model and arguments)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan (blocks, estimated peak host/device memory, block passes) from the config "
                        "alone, without loading weights; exit 2 if it cannot fit in the memory available")
    p.add_argument("--keep-checkpoints", action="store_true",
                   help="keep the per-step checkpoint (.OUT.checkpoint beside --out) after a finished run")
    amount = p.add_mutually_exclusive_group()
    amount.add_argument("--sparsity", type=float, default=_DEFAULT.sparsity,
                        help="fraction of blocks to remove; K = ceil(depth * S)")
    amount.add_argument("--num-remove", type=int, help="number of blocks to remove (instead of --sparsity)")
    p.add_argument("--gguf", action=argparse.BooleanOptionalAction, default=None,
                   help="also write the result as OUT/<input name>.gguf for llama.cpp (default: for a GGUF input; "
                        "from a HF model: Llama, Mistral, Qwen2, Qwen3 and Gemma 3)")
    p.add_argument("--gguf-type", help="the GGUF's type by llama.cpp's rules: F32, F16, Q8_0, Q4_K_M, ... (default: "
                                       "no larger than a GGUF input, its freed bytes spent on the changed tensors; F16 "
                                       "for a HF model; quantised types need llama-cpp-python)")
    p.add_argument("--ppl", default="", help="also evaluate the result on these comma-separated sources")
    p.add_argument("--ppl-windows", type=int, help="perplexity on the first N protocol windows (default: all)")
    p.add_argument("--ppl-seqlen", type=int, help="perplexity window length (default: --seqlen, the calibration one)")
    _add_method_options(p)


def _add_method_options(p: argparse.ArgumentParser) -> None:
    """Calibration, scoring, fusion and tuning settings, shared by `compress` and `compare`."""
    p.add_argument("--method", choices=(*METHODS, *ALIASES), metavar="METHOD",
                   help="a selection x repair shortcut: "
                        + "; ".join(f"{m} = {s} + {r}" for m, (s, r) in RECIPES.items())
                        + f" (earlier names: {', '.join(f'{a} = {n}' for a, n in ALIASES.items())}; "
                        + f"default: {preset().method}; --preset paper: {preset('paper').method})%(default).0s")
    p.add_argument("--selection", choices=SELECTION_NAMES,
                   help="override the method's criterion: " + "; ".join(f"{n} ({c.help})" for n, c in CRITERIA.items()))
    p.add_argument("--repair", choices=REPAIR_NAMES,
                   help="override the method's repair: " + "; ".join(f"{n} ({r.help})" for n, r in REPAIRS.items()))
    p.add_argument("--blocks", type=_indices, help="remove exactly these original blocks, in this order "
                                                   "(comma-separated; instead of --sparsity)")
    p.add_argument("--preset", choices=PRESETS, default="default",
                   help="settings to start from: default (our best measured recipe) or paper (the authors'); "
                        "the flags below override single settings")
    p.add_argument("--calib", default=_DEFAULT.calib, help="calibration text: wikitext2, c4, ptb or a .txt/.raw/.jsonl/.parquet file, a comma-separated "
                        "mix of them (equal numbers of windows from each), or self: text the model samples itself "
                        "(no corpus, no network)")
    _recipe(p, "--nsamples", "", "nsamples", int, "calibration windows")
    _recipe(p, "--seqlen", "", "seqlen", int, "tokens per window (capped at the model's context)")
    _recipe(p, "--mi-samples", "", "mi_samples", int,
            "windows used to score blocks (Macro Influence, Block Influence, calibration loss, KL)")
    _recipe(p, "--kl-top-k", "", "kl_top_k", int, "kl criterion: the dense model's k most likely tokens per "
            "position, and the rest's mass, are the target (0: the whole vocabulary)")
    _recipe(p, "--kl-stride", "", "kl_stride", int, "kl criterion: score every N-th position (the blocks still "
            "run on all; 0: every position unless the LM head outweighs the blocks)")
    _recipe(p, "--rescore", "", "rescore", int, "iterative criteria: after the first step, rescore N blocks at a "
            "time in the order of their last scores, until no other can beat the best (0: every block every step)")
    _recipe(p, "--rescore-limit", "", "rescore_limit", int, "iterative criteria: rescore at most N blocks a step "
            "after the first, those closest to the best of the step they were last scored in (0: as many as "
            "--rescore needs, exact)")
    p.add_argument("--full-scores", action="store_true", default=None,
                   help="iterative criteria: score every candidate to the end (every reported score exact) "
                        "instead of stopping one once it cannot be chosen; the same blocks, slower%(default).0s")
    p.add_argument("--fuse-eval", dest="fuse_eval_candidates", type=int, default=_DEFAULT.fuse_eval_candidates,
                   metavar="K", help="fusing methods: trial-fuse the K lowest-scored blocks and remove the one "
                                     "whose output stays closest (0: the lowest-scored block)")
    p.add_argument("--fuse-eval-epochs", type=int, default=_DEFAULT.fuse_eval_epochs, metavar="E",
                   help="tuning epochs of each --fuse-eval trial")
    _recipe(p, "--epochs", "tune", "epochs", int, "tuning epochs per removed block")
    _recipe(p, "--global-epochs", "tune", "global_epochs", int, "fusegpt: epochs of a final tune of every kept "
            "block against the dense model's output (the LoRA baselines get as many more)")
    _recipe(p, "--global-coef-lr", "tune", "global_coef_lr", float, "fusegpt: learning rate of the fusion "
            "coefficients in that global tune (None: --lr)")
    _recipe(p, "--trial-rates", "tune", "trial_rates", _rates, "fusegpt: other coefficient rates a one-epoch "
            "trial weighs against --global-coef-lr on held-out calibration windows before the global tune, the best "
            "going on (comma-separated; 0: LoRA healing; empty: no trial)")
    _recipe(p, "--distill", "tune", "distill", str, "what the global tune and LoRA healing match: the dense "
            "model's final hidden states (by --loss) or its next-token distributions (KL over the vocabulary)",
            choices=DISTILLS)
    _recipe(p, "--distill-top-k", "tune", "distill_top_k", int, "with --distill logits: the dense model's k most "
            "likely tokens per position and the rest's mass, computed once, are the target (0: the whole vocabulary, "
            "recomputed every step)")
    _recipe(p, "--tune-dtype", "tune", "compute", str, "the dtype of the tunes' block products (bfloat16: under "
            "autocast, weights and optimizer in their own dtype)", choices=DTYPES)
    _recipe(p, "--warmup", "tune", "warmup", float, "share of each tune's steps over which the learning rates "
            "ramp up linearly before their cosine decay")
    _recipe(p, "--heal-epochs", "tune", "heal_epochs", int, "remove-lora, sleb-lora: LoRA epochs over every kept "
            "block (None: the fewest whose block passes reach fusegpt's with these settings)")
    _recipe(p, "--batch-size", "tune", "batch_size", int, "windows per tuning step")
    _recipe(p, "--loss", "tune", "loss", str, "student/teacher distance", choices=LOSSES)
    _recipe(p, "--coef-lr", "tune", "coef_lr", float, "learning rate of the fusion coefficients")
    _recipe(p, "--lr", "tune", "lr", float, "learning rate of LoRA and norm weights")
    _recipe(p, "--teacher", "tune", "teacher", str, "what a fused group learns to reproduce: its own output "
            "before the removal (group) or the dense model's hidden states at its end (dense)", choices=TEACHERS)
    _recipe(p, "--group-size", "fusion", "group_size", int, "neighbours G that absorb a removed block")
    _recipe(p, "--coef", "fusion", "coefficient", str, "coefficient form", choices=COEFFICIENT_FORMS)
    _recipe(p, "--rank", "fusion", "rank", int, "rank of low-rank coefficients")
    _recipe(p, "--lora-rank", "fusion", "lora_rank", int, "LoRA rank on neighbours' own weights (0: off)")
    p.add_argument("--seam-map", dest="fusion.seam_map", action=argparse.BooleanOptionalAction, default=None,
                   help="fusegpt: fold ReplaceMe's least-squares map for the removed block into the block before it, "
                        "then tune (default: off; --preset paper: off; it fits the calibration corpus)%(default).0s")
    p.add_argument("--normalize-donors", dest="fusion.normalize_donors", action=argparse.BooleanOptionalAction,
                   default=None, help="fusion: scale each injected weight to the receiving layer's norm (default: on; "
                                      "--preset paper: off)%(default).0s")
    p.add_argument("--no-train-norms", dest="train_norms", action="store_false", default=None,
                   help="keep norm weights frozen%(default).0s")
    p.add_argument("--device", default=_DEFAULT.device, help="compute device: auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--device-memory", dest="device_memory_gib", type=float, metavar="GIB",
                   help="GPU memory the run may use, in GiB (default: the GPU's free memory): the model stays on the "
                        "GPU only if it fits with the tune in it; with --dry-run, plans for a GPU this machine does not have")
    _recipe(p, "--micro-batch", "tune", "micro_batch", int, "windows per forward/backward pass, gradients "
            "accumulated over each --batch-size batch (None: chosen from the memory the tune has)")
    p.add_argument("--checkpoint-activations", dest="tune.checkpoint_activations", action=argparse.BooleanOptionalAction,
                   default=None, help="recompute each block's activations in backward instead of keeping them "
                                      "(default: when the tune would not fit otherwise)")
    p.add_argument("--optimizer-on-host", dest="tune.optimizer_on_host", action=argparse.BooleanOptionalAction,
                   default=None, help="GPU runs: keep Adam's state and fp32 master copies in host memory "
                                      "(default: when the tune would not fit on the GPU otherwise)")
    _add_offload(p)
    p.add_argument("--hidden-cache", choices=HIDDEN_CACHES, default=_DEFAULT.hidden_cache,
                   help="hidden states kept in memory: scoring (every block's on the --mi-samples windows; the rest "
                        "recomputed, memory flat in depth x --nsamples) or all (every block's on every window: "
                        "faster, depth x nsamples x seqlen x hidden floats); same results")
    p.add_argument("--seed", type=int, default=_DEFAULT.seed, help="seed for windows, initialisation and order")
    _add_common(p)


def _add_offload(p: argparse.ArgumentParser) -> None:
    p.add_argument("--offload", choices=OFFLOADS, default=_DEFAULT.offload,
                   help="auto: the model stays on the compute device for the whole run when it fits there, else it "
                        "stays in host memory and blocks are streamed to the device as they run; always: stream; "
                        "never: move it all to the device regardless")


def _recipe(p: argparse.ArgumentParser, flag: str, section: str, name: str, kind: type, text: str, **extra) -> None:
    """A setting whose default comes from --preset: the help shows both presets' values."""
    values = [getattr(getattr(preset(n), section) if section else preset(n), name) for n in PRESETS]
    p.add_argument(flag, dest=f"{section}.{name}" if section else name, type=kind, default=None,
                   metavar=None if "choices" in extra else name.upper(),
                   help=f"{text} (default: {values[0]}; --preset paper: {values[1]})%(default).0s", **extra)


def _eval_parser(sub) -> None:
    p = sub.add_parser("eval", help="perplexity and zero-shot accuracy of a model",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("model", help="local HuggingFace model folder, .gguf file (or a folder holding one) or Hub id")
    p.add_argument("--ppl", default="", help="comma-separated sources: wikitext2, c4, ptb or text files")
    p.add_argument("--ppl-windows", type=int, help="perplexity on the first N protocol windows (default: all)")
    _add_task_options(p)
    p.add_argument("--seqlen", type=int, default=_DEFAULT.seqlen, help="window length (capped at the model's context)")
    p.add_argument("--batch-size", type=int, default=8, help="windows per forward pass")
    p.add_argument("--device", default=_DEFAULT.device, help="compute device")
    _add_offload(p)
    p.add_argument("--json", help="write the results to this JSON file")
    _add_common(p)


def _add_task_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tasks", default="", help=f"comma-separated zero-shot tasks: {', '.join(TASKS)}")
    p.add_argument("--limit", type=int, help="first N items of each task (default: all)")
    p.add_argument("--tasks-dir", help="a task folder (the tasks/ of docs/DATA.md), in place of "
                                       "--data-dir's tasks/ (an alias kept for older commands)")


def _compare_parser(sub) -> None:
    p = sub.add_parser("compare", help="every method at every sparsity: table, CSV, JSON and plots",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("model", help="local HuggingFace model folder, .gguf file (or a folder holding one) or Hub id")
    p.add_argument("--out", required=True, help="folder for comparison.{md,csv,json}, plots and finished cells "
                                                "(rerunning reuses the cells)")
    p.add_argument("--methods", default=",".join(("dense",) + METHODS), help="comma-separated methods, or dense")
    p.add_argument("--sparsity", default="0.125,0.25", help="comma-separated sparsities")
    p.add_argument("--ppl", default="wikitext2", help="comma-separated perplexity sources")
    p.add_argument("--ppl-windows", type=int, help="perplexity on the first N protocol windows (default: all)")
    p.add_argument("--ppl-seqlen", type=int, help="perplexity window length (default: --seqlen, the calibration one)")
    p.add_argument("--no-speed", action="store_true", help="skip the inference-speed measurement of each cell")
    _add_task_options(p)
    _add_method_options(p)


def _indices(text: str) -> list[int]:
    try:
        return [int(i) for i in text.split(",") if i.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated block indices, got '{text}'") from None


def _rates(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(r) for r in text.split(",") if r.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated learning rates, got '{text}'") from None


def _sources(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def _config(args, **amount) -> CompressConfig:
    """The preset's settings, with every flag the user gave in place of its value."""
    config = preset(args.preset, **amount, selection=args.selection, repair=args.repair, blocks=args.blocks,
                    calib=args.calib, fuse_eval_candidates=args.fuse_eval_candidates,
                    fuse_eval_epochs=args.fuse_eval_epochs, dtype=args.dtype, device=args.device, seed=args.seed,
                    device_memory_gib=args.device_memory_gib,
                    hidden_cache=args.hidden_cache, offload=args.offload,
                    data_dir=args.data_dir)
    given = {key: value for key, value in vars(args).items() if value is not None}
    for key in ("method", "nsamples", "seqlen", "mi_samples", "kl_top_k", "kl_stride", "rescore", "rescore_limit",
                "full_scores"):
        setattr(config, key, given.get(key, getattr(config, key)))
    for section in ("tune", "fusion"):
        for key, value in given.items():
            if key.startswith(f"{section}."):
                setattr(getattr(config, section), key.split(".", 1)[1], value)
    if args.train_norms is False:
        config.fusion.train_norms = False
    config.validate()
    return config


def _check_sources(args) -> None:
    """Every text the run will read exists, before any weight is loaded."""
    from .data.generated import is_self
    from .data.sources import check_source
    from .data.windows import calibration_sources

    if getattr(args, "calib", None) and not is_self(args.calib):
        for source in calibration_sources(args.calib):
            check_source(source, "--calib")
    for source in _sources(args.ppl):
        check_source(source, "--ppl")
    unknown = [task for task in _sources(getattr(args, "tasks", "")) if task not in TASKS]
    if unknown:
        raise FuseGPTError(f"unknown zero-shot task(s) {', '.join(unknown)}; choose --tasks from {', '.join(TASKS)}")
    if getattr(args, "limit", None) is not None and args.limit < 1:
        raise FuseGPTError(f"--limit must be a positive number of items, not {args.limit}")
    if getattr(args, "ppl_windows", None) is not None and args.ppl_windows < 1:
        raise FuseGPTError(f"--ppl-windows must be a positive number of windows, got {args.ppl_windows}")


def _run_compress(args) -> None:
    given = args.blocks is not None
    config = _config(args, sparsity=None if args.num_remove or given else args.sparsity,
                     num_remove=args.num_remove)
    _check_sources(args)
    if args.dry_run:
        from .plan import plan

        planned = plan(args.model, config)
        print(planned.render())
        planned.check()
        return
    from .workflow import Job, run

    result = run(Job(args.model, config, args.out, overwrite=args.overwrite, resume=args.resume,
                     keep_checkpoints=args.keep_checkpoints, ppl=_sources(args.ppl), ppl_windows=args.ppl_windows,
                     ppl_seqlen=args.ppl_seqlen, gguf=args.gguf, gguf_type=args.gguf_type, progress=not args.quiet))
    if result is not None:
        print(result.report.summary())
        print(f"saved to {Path(args.out).expanduser().resolve()}")


def _run_eval(args) -> None:
    from .workflow import evaluate

    if not args.ppl and not args.tasks:
        raise FuseGPTError("nothing to evaluate; pass --ppl SOURCES and/or --tasks TASKS")
    _check_sources(args)
    results = evaluate(args.model, _sources(args.ppl), _sources(args.tasks), seqlen=args.seqlen, dtype=args.dtype,
                       device=args.device, offload=args.offload, ppl_windows=args.ppl_windows, limit=args.limit,
                       data_dir=args.data_dir, tasks_dir=args.tasks_dir, batch_size=args.batch_size,
                       progress=not args.quiet)
    if "ppl" in results:
        print(_table(["source", f"perplexity (seqlen {results['seqlen']})"],
                     [[source, f"{value:.3f}"] for source, value in results["ppl"].items()]))
    if "zero_shot" in results:
        print(_table(["task", "metric", "value"],
                     [[task, scores.get("metric", "mean"), f"{scores['value']:.4f}"]
                      for task, scores in results["zero_shot"].items()]))
    if args.json:
        from .files import write_atomic

        write_atomic(args.json, json.dumps(results, indent=2) + "\n")


def _run_compare(args) -> None:
    from .compare import compare

    try:
        sparsities = [float(s) for s in _sources(args.sparsity)]
    except ValueError as error:
        raise FuseGPTError(f"--sparsity takes comma-separated numbers, got '{args.sparsity}'") from error
    methods = _sources(args.methods)
    unknown = [m for m in methods if m not in ("dense", *METHODS, *ALIASES)]
    if unknown:
        raise FuseGPTError(f"unknown method(s) {', '.join(unknown)}; choose from dense, {', '.join(METHODS)}")
    if args.blocks or args.selection == "given":
        raise FuseGPTError("compare chooses blocks by each method's criterion; --blocks and --selection given "
                           "are for compress")
    for sparsity in sparsities:
        _config(args, sparsity=sparsity)  # every cell's settings are valid before the first one runs
    _check_sources(args)
    cells = compare(args.model, methods, sparsities, _config(args, sparsity=sparsities[0]), args.out,
                    _sources(args.ppl), _sources(args.tasks), args.limit, args.tasks_dir, progress=not args.quiet,
                    ppl_windows=args.ppl_windows, speed=not args.no_speed, ppl_seqlen=args.ppl_seqlen)
    print((Path(args.out) / "comparison.md").read_text())
    print(f"{len(cells)} cells; written to {args.out}")


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(str(v).ljust(w) for v, w in zip(r, widths)) for r in [header, *rows])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fusegpt", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _compress_parser(sub)
    _eval_parser(sub)
    _compare_parser(sub)
    args = parser.parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _interrupt)  # a scheduler's stop ends like Ctrl-C
    try:
        if args.command != "compress" and _launched_as_ranks():
            raise FuseGPTError(f"`fusegpt {args.command}` runs in one process (under torchrun every rank would write "
                               "the same files); launch it without torchrun, or use torchrun for `compress` only")
        {"compress": _run_compress, "eval": _run_eval, "compare": _run_compare}[args.command](args)
    except FuseGPTError as error:
        if args.debug:
            raise
        print(f"fusegpt: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        print(f"fusegpt: {interrupt.args[0] if interrupt.args else 'interrupted; no output was written'}",
              file=sys.stderr)
        return 130
    except Exception as error:  # a bug of ours, not the user's input: say so in one line
        if args.debug:
            raise
        print(f"fusegpt: internal error: {type(error).__name__}: {first_line(error)} (rerun with --debug for the traceback, "
              "and please report it)", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


def _launched_as_ranks() -> bool:
    from .distributed import launched

    return launched()


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())

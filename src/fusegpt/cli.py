"""`fusegpt compress` and `fusegpt eval`: argument parsing over the Python API."""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

from .config import DTYPES, METHODS, OFFLOADS, TASKS, CompressConfig
from .presets import PRESETS, preset
from .errors import FuseGPTError, first_line
from .options import add_options, apply

_DEFAULT = CompressConfig()
MODEL_HELP = "local HuggingFace model folder, .gguf file (or a folder holding one) or Hub id"


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", default=os.environ.get("FUSEGPT_DATA"),
                        help="one folder with text/ (wikitext-2-raw/, ptb/, c4/) for the "
                             "named corpora and tasks/ for zero-shot, used when the Hub is unreachable "
                             "(default: $FUSEGPT_DATA)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")


def _compress_parser(sub) -> None:
    p = sub.add_parser("compress", help="remove blocks from a model and save the shallower model",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--out", required=True, help="output folder (must be new or empty)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out if it exists (only once the new result is complete)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from its last finished step (same model and arguments)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan (blocks, estimated peak host/device memory, block passes) from the config "
                        "alone, without loading weights; exit 2 if it cannot fit in the memory available")
    p.add_argument("--keep-checkpoints", action="store_true",
                   help="keep the per-step checkpoint (.OUT.checkpoint beside --out) after a finished run")
    amount = p.add_mutually_exclusive_group()
    amount.add_argument("--sparsity", default=str(_DEFAULT.sparsity), help="fraction of blocks to remove, K = "
                        "ceil(depth * S); several (0.1,0.2,0.3): one output per depth in OUT and their curve")
    amount.add_argument("--num-remove", help="number of blocks to remove (instead of --sparsity); several: 2,4,6")
    p.add_argument("--gguf", action=argparse.BooleanOptionalAction, default=None,
                   help="also write the result as OUT/<input name>.gguf for llama.cpp (default: for a GGUF input; "
                        "from a HF model: Llama, Mistral, Qwen2, Qwen3 and Gemma 3)")
    p.add_argument("--gguf-type", help="the GGUF's type by llama.cpp's rules: F32, F16, Q8_0, Q4_K_M, ... (default: "
                                       "no larger than a GGUF input, its freed bytes spent on the changed tensors; F16 "
                                       "for a HF model, whose GGUF naming a type asks for; quantised types need "
                                       "llama-cpp-python)")
    _add_evaluation_options(p, "", "also evaluate the result on these comma-separated sources")
    _add_method_options(p)


def _add_method_options(p: argparse.ArgumentParser) -> None:
    """Every setting of the config (options.py generates them from config.py's declarations), shared
    by `compress` and `compare`."""
    p.add_argument("--preset", choices=PRESETS, default="default",
                   help="settings to start from: default (our best measured recipe) or paper (the authors'); "
                        "the flags below override single settings")
    add_options(p, CompressConfig, {name: preset(name) for name in PRESETS})
    _add_common(p)


def _eval_parser(sub) -> None:
    p = sub.add_parser("eval", help="perplexity and zero-shot accuracy of a model",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--ppl", default="", help="comma-separated sources: wikitext2, c4, ptb or text files")
    p.add_argument("--ppl-windows", type=int, help="perplexity on the first N protocol windows (default: all)")
    _add_task_options(p)
    p.add_argument("--seqlen", type=int, default=_DEFAULT.seqlen, help="window length (capped at the model's context)")
    p.add_argument("--batch-size", type=int, default=8, help="windows per forward pass")
    p.add_argument("--device", default=_DEFAULT.device, help="compute device")
    p.add_argument("--offload", choices=OFFLOADS, default=_DEFAULT.offload, help="as compress's --offload")
    p.add_argument("--dtype", choices=DTYPES, default=_DEFAULT.dtype, help="weights and compute dtype")
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
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--out", required=True, help="folder for comparison.{md,csv,json}, plots and finished cells "
                                                "(rerunning reuses the cells)")
    p.add_argument("--methods", default=",".join(("dense",) + METHODS), help="comma-separated methods, or dense")
    p.add_argument("--sparsity", default="0.125,0.25", help="comma-separated sparsities")
    _add_evaluation_options(p, "wikitext2", "comma-separated perplexity sources")
    p.add_argument("--curve", action="store_true",
                   help="one run per method for all its sparsities: its order of removal chosen once, to the deepest "
                        "(as compress --num-remove 2,4,6 does; with --warm-epochs); its outputs kept in OUT/curves/")
    _add_method_options(p)


def _add_evaluation_options(p: argparse.ArgumentParser, ppl: str, ppl_help: str) -> None:
    p.add_argument("--ppl", default=ppl, help=ppl_help)
    p.add_argument("--ppl-windows", type=int, help="perplexity on the first N protocol windows (default: all)")
    p.add_argument("--ppl-seqlen", type=int, help="perplexity window length (default: --seqlen, the calibration one)")
    p.add_argument("--no-speed", action="store_true", help="skip timing tokens/s beside the dense model (compare's "
                                                          "cells, a curve's depths)")
    _add_task_options(p)


def _sources(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def _config(args, **amount) -> CompressConfig:
    """The preset's settings, with every flag the user gave in place of its value."""
    config = preset(args.preset, **amount, data_dir=args.data_dir)
    apply(config, args)
    config.validate()
    return config


def _check_sources(args, calib: str | None = None) -> None:
    """Every text the run will read (`calib`: the calibration's) exists, before any weight is loaded."""
    from .data.sources import check_inputs

    check_inputs(calib, _sources(args.ppl), _sources(getattr(args, "tasks", "")), getattr(args, "limit", None),
                 getattr(args, "ppl_windows", None))


def _run_compress(args) -> None:
    from .curve import amounts, check_curve, plan_curve, run_curve

    sizes = amounts(args.num_remove, int, "--num-remove") or amounts(args.sparsity, float, "--sparsity")
    config = _config(args, **({"sparsity": None, "num_remove": None} if args.blocks is not None else sizes[0]))
    _check_sources(args, config.calib)
    check_curve(config, sizes if args.blocks is None else [{}])
    if args.dry_run:  # each depth's plan, printed before any is refused
        plans, rendered = plan_curve(args.model, config, sizes if args.blocks is None else [{}])
        print(rendered)
        for planned in plans:
            planned.check()
        return
    from .workflow import Job, run

    job = Job(args.model, config, args.out, overwrite=args.overwrite, resume=args.resume,
              keep_checkpoints=args.keep_checkpoints, ppl=_sources(args.ppl), ppl_windows=args.ppl_windows,
              ppl_seqlen=args.ppl_seqlen, tasks=_sources(args.tasks), limit=args.limit, tasks_dir=args.tasks_dir,
              gguf=args.gguf, gguf_type=args.gguf_type, progress=not args.quiet)
    if len(sizes) > 1 and args.blocks is None:
        run_curve(job, sizes, speed=not args.no_speed)
        print((Path(args.out).expanduser().resolve() / "curve.md").read_text())
    elif (result := run(job)) is None:
        return  # under torchrun, a rank other than 0
    else:
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
    from .curve import amounts

    sparsities = [size["sparsity"] for size in amounts(args.sparsity, float, "--sparsity")]
    methods = _sources(args.methods)  # compare() refuses an unknown one, and given blocks, before any work
    for sparsity in sparsities:
        config = _config(args, sparsity=sparsity)  # every cell's settings are valid before the first one runs
    _check_sources(args, config.calib)
    cells = compare(args.model, methods, sparsities, _config(args, sparsity=sparsities[0]), args.out,
                    _sources(args.ppl), _sources(args.tasks), args.limit, args.tasks_dir, progress=not args.quiet,
                    ppl_windows=args.ppl_windows, speed=not args.no_speed, ppl_seqlen=args.ppl_seqlen,
                    curve=args.curve)
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
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)  # a scheduler's stop ends like Ctrl-C
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
    from .runtime.distributed import launched

    return launched()


if __name__ == "__main__":
    sys.exit(main())

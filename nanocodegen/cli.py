"""Command line: thin subcommands over the library.

    nanocodegen bench [--suite NAME] [--tasks FILE.jsonl] [--limit N] [--max-attempts N] ...
    nanocodegen train [--preset default|smoke|sketch] [--max-steps N] [--out DIR] ...
    nanocodegen demo
    nanocodegen export-hf DIR [--checkpoint PATH]
"""

from __future__ import annotations

import argparse
import os
import sys

from rich.console import Console

from nanocodegen.bench import DEFAULT_BATCH, DEFAULT_THREADS
from nanocodegen.config import MODEL_PRESETS, AgentConfig, ModelConfig, TrainConfig, add_dataclass_args, from_args


class CliError(Exception):
    """An error the user can fix; printed as one line, exit code 2."""


def _bench(args: argparse.Namespace) -> int:
    from nanocodegen.bench import collect_tasks, print_summary, run_bench

    if args.limit is not None and args.limit < 1:
        raise CliError("--limit must be at least 1")
    if args.max_attempts is not None and args.max_attempts < 1:
        raise CliError("--max-attempts must be at least 1")
    tasks = collect_tasks(args.suite, args.tasks, args.limit)
    console = Console(stderr=True)
    results = run_bench(tasks, from_args(AgentConfig, args), args.checkpoint, args.out, args.device, console,
                        batch=args.batch, threads=args.threads, compile=args.compile)
    print_summary(console, results)
    print(f"{results['config']['out']}/results.json")
    return 0


def _train(args: argparse.Namespace) -> int:
    from nanocodegen.train import command_line, model_config_for, train

    model_fields = ("d_model", "n_heads", "n_layers", "max_seq_len", "dropout")
    model_cfg = model_config_for(args.preset, **{k: getattr(args, k) for k in model_fields})
    train(model_cfg, from_args(TrainConfig, args), command=command_line())
    return 0


def _demo(args: argparse.Namespace) -> int:
    from nanocodegen.demo import main as demo_main

    demo_main(checkpoint=args.checkpoint)
    return 0


def _export_hf(args: argparse.Namespace) -> int:
    from nanocodegen.export_hf import export_checkpoint

    result = export_checkpoint(args.dir, args.checkpoint)
    if result.dropped:
        print(f"note: {', '.join(result.dropped)} (retry-step conditioning) has no GPT-2 counterpart and was left "
              "out; the export equals this model at retry step 0", file=sys.stderr)
    print(result.path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nanocodegen", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    bench = sub.add_parser("bench", help="run the agent benchmark and write results.json")
    bench.add_argument("--suite", action="append", metavar="NAME",
                       help="suite to run: seed, synthetic, synthetic-val, humaneval (repeatable; "
                            "default: seed and synthetic)")
    bench.add_argument("--tasks", metavar="FILE.jsonl", help="extra tasks, one JSON object per line "
                       '({"id", "prompt", "expected"})')
    bench.add_argument("--limit", type=int, metavar="N", help="at most N tasks per suite")
    bench.add_argument("--checkpoint", metavar="PATH", help="checkpoint folder (default: the shipped model)")
    bench.add_argument("--out", metavar="DIR", help="results folder (default: runs/bench-<timestamp>)")
    bench.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    bench.add_argument("--batch", type=int, default=DEFAULT_BATCH, metavar="N",
                       help=f"run N episodes at once, batching their decode steps (default: {DEFAULT_BATCH})")
    bench.add_argument("--threads", type=int, default=DEFAULT_THREADS, metavar="N",
                       help=f"torch intra-op threads for the model (default: {DEFAULT_THREADS})")
    bench.add_argument("--compile", action="store_true",
                       help="torch.compile the decode step (faster sequential decode after ~15 s of compiling)")
    add_dataclass_args(bench, AgentConfig)
    bench.set_defaults(func=_bench)

    train = sub.add_parser("train", help="train the model from scratch and write a checkpoint")
    train.add_argument("--preset", default="default", choices=tuple(MODEL_PRESETS), help="model size")
    for name in ("d_model", "n_heads", "n_layers", "max_seq_len"):
        train.add_argument("--" + name.replace("_", "-"), type=int, metavar="N",
                           help=f"override the preset's {name} (sketch: {getattr(ModelConfig, name)})")
    train.add_argument("--dropout", type=float, metavar="P", help="dropout probability")
    add_dataclass_args(train, TrainConfig)
    train.set_defaults(func=_train)

    demo = sub.add_parser("demo", help="the original sketch's demo, with the real pieces")
    demo.add_argument("--checkpoint", metavar="PATH", help="checkpoint folder (default: the shipped model)")
    demo.set_defaults(func=_demo)

    export = sub.add_parser("export-hf", help="write the model as a Hugging Face GPT-2 folder, with its tokenizer")
    export.add_argument("dir", metavar="DIR", help="folder to write (created if missing)")
    export.add_argument("--checkpoint", metavar="PATH", help="checkpoint folder (default: the shipped model)")
    export.set_defaults(func=_export_hf)
    return parser


def main(argv: list[str] | None = None) -> int:
    from nanocodegen.checkpoint import CheckpointError
    from nanocodegen.tasks import TaskFileError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (CliError, CheckpointError, TaskFileError, ValueError) as e:
        if os.environ.get("NANOCODEGEN_DEBUG"):
            raise
        print(f"nanocodegen {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"nanocodegen {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

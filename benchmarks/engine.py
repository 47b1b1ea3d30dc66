"""Our engine against Hugging Face transformers, on identical exported weights and the same prompts.

    python benchmarks/engine.py --json runs/engine.json          # default model, ~3 min on 2 cores
    python benchmarks/engine.py --json out.json --large          # also a ~85M-parameter model (bandwidth-bound)
    python benchmarks/engine.py --json out.json --compile        # also our decode under compile_decode
    python benchmarks/engine.py --json out.json --curve-only --batch-curve 1 1:compile 64:compile+bf16  # the curve

What it measures, each as the median over `--repeats` rounds that alternate ours and HF's:
  decode      tok/s at batch 1: greedy generation of N tokens after a task prompt, our `generate` vs
              HF `generate` with its KV cache; decode rate = (N - 1) / (t(N) - t(1)), so prefill and
              per-call set-up cancel. Wall-clock and process-CPU rates (the CPU rate is what a busy,
              shared machine distorts least). The two must produce the same tokens.
  prefill     tok/s for prompts of 64/128/256/512 tokens (lengths past the model's context are skipped).
  batched     decode tok/s with B prompts at once, ours vs HF.
  episodes    the agent loop on tasks it cannot solve (their expected value is changed, so every attempt
              fails with the verifier's real feedback and the context grows until it is full), by KV-cache
              mode: cumulative episode time after each attempt, and per-attempt generation latency against
              context length (drawn to OUT.png, the three modes on one chart).
  floor       the memory-bandwidth floor of batch-1 decode: bytes read per token (weights + the KV cache
              of the context) over the read bandwidth measured just before and after the decode rounds
              (a 512 MiB tensor summed; the copy rate is reported too). A model whose weights fit in the
              last-level cache is not bound by it.
  batch curve `nanocodegen bench --suite synthetic --batch N [--compile] [--precision bf16]` for each
              point of --batch-curve, median tasks/s over --curve-repeats alternating rounds, and its ratio
              to the first point (by default N = 1, the sequential agent loop); fp32 outputs must equal the
              sequential run's, bf16 ones are counted where they differ.
Prints a table and writes the JSON (top-level keys `ours_decode_tok_s`, `hf_decode_tok_s`, `ratio`).
Both engines run with the same torch thread count (--threads, default 1).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from nanocodegen.agent import Agent
from nanocodegen.checkpoint import checkpoint_sha256, default_checkpoint, load_checkpoint
from nanocodegen.config import AgentConfig
from nanocodegen.export_hf import export_model
from nanocodegen.generate import DECODE_CHUNK, compile_decode, generate
from nanocodegen.model import ModelConfig, NanoCodeGenAgent
from nanocodegen.plots import plot_modes
from nanocodegen.prompt import task_ids
from nanocodegen.provenance import provenance
from nanocodegen.tasks import load_suite
from nanocodegen.verifier import CodeVerifier

MODES = ("none", "attempt", "prefix")
LARGE = dict(d_model=768, n_heads=12, n_layers=12, max_seq_len=1024, retry_conditioning=False)


def load_hf(model: NanoCodeGenAgent, tok, folder: Path):
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    logging.set_verbosity_error()
    export_model(model, tok, folder)
    return AutoModelForCausalLM.from_pretrained(folder).eval()


def clocks() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def rate(count: float, long: tuple[float, float], short: tuple[float, float]) -> tuple[float, float]:
    """(wall, cpu) rates of `count` items timed as the difference of two runs."""
    return tuple(count / max(a - b, 1e-9) for a, b in zip(long, short, strict=True))


def timed(fn) -> tuple[float, float]:
    w, c = clocks()
    fn()
    w2, c2 = clocks()
    return w2 - w, c2 - c


def ours_generate(model, ids: torch.Tensor, n: int) -> torch.Tensor:
    return generate(model, ids, n, cache_mode="attempt").tokens


def hf_generate(hf, ids: torch.Tensor, n: int) -> torch.Tensor:
    with torch.inference_mode():
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=None,
                          do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[:, ids.size(1):]


def decode_rates(engines: dict, ids: torch.Tensor, n: int, repeats: int) -> dict:
    """Median (wall, cpu) decode tok/s per engine, rounds alternating between engines."""
    b = ids.size(0)
    rates: dict[str, list] = {name: [] for name in engines}
    for fn in engines.values():  # warm-up
        fn(ids, 4)
    for _ in range(repeats):
        for name, fn in engines.items():
            long = timed(lambda fn=fn: fn(ids, n))
            short = timed(lambda fn=fn: fn(ids, 1))
            rates[name].append(rate(b * (n - 1), long, short))
    return {name: {"wall_tok_s": statistics.median(r[0] for r in rs), "cpu_tok_s": statistics.median(r[1] for r in rs)}
            for name, rs in rates.items()}


def prefill_rates(model, hf, lengths, repeats: int) -> dict:
    out = {}
    for length in lengths:
        if length > model.max_seq_len:
            out[str(length)] = {"skipped": f"exceeds the model's max_seq_len ({model.max_seq_len})"}
            continue
        ids = torch.randint(5, model.vocab_size, (1, length), generator=torch.Generator().manual_seed(length))

        def ours(ids=ids):
            with torch.inference_mode():
                model.setup_kv_cache(1)
                model(ids, start_pos=0)

        def theirs(ids=ids):
            with torch.inference_mode():
                hf(ids, use_cache=True)

        ours(), theirs()
        times = {"ours": [], "hf": []}
        for _ in range(repeats):
            times["ours"].append(timed(ours))
            times["hf"].append(timed(theirs))
        out[str(length)] = {
            name: {"wall_tok_s": length / statistics.median(t[0] for t in ts),
                   "cpu_tok_s": length / statistics.median(t[1] for t in ts)}
            for name, ts in times.items()
        }
    return out


def memory_bandwidth(mib: int = 512, repeats: int = 5) -> dict:
    """Bytes/s of a large tensor's copy (read + write counted, as STREAM's copy) and of a read-only sum,
    on the thread count set. Decode streams weights it only reads, so the floor uses the read rate."""
    src = torch.ones(mib * 2**20 // 4)
    dst = torch.empty_like(src)
    dst.copy_(src), src.sum()
    copy = statistics.median(timed(lambda: dst.copy_(src))[0] for _ in range(repeats))
    read = statistics.median(timed(lambda: src.sum())[0] for _ in range(repeats))
    return {"copy_bytes_s": 2 * src.numel() * 4 / copy, "read_bytes_s": src.numel() * 4 / read, "mib": mib}


def decode_floor(model: NanoCodeGenAgent, context: int, bandwidth: float) -> dict:
    """Bytes one batch-1 decode token must read: every weight once (the tied embedding counts once, as
    the LM head; its lookup reads one row, as does the position table's, which is not counted), plus the
    keys and values of the whole context."""
    weight_bytes = sum(p.numel() * p.element_size() for name, p in model.named_parameters()
                       if name != "pos_embed.weight")
    cfg = model.config
    kv_bytes = 2 * cfg.n_layers * cfg.d_model * context * model.token_embed.weight.element_size()
    per_token = weight_bytes + kv_bytes
    return {"bytes_per_token": per_token, "weight_bytes": weight_bytes, "kv_bytes_at_context": kv_bytes,
            "context": context, "bandwidth_bytes_s": bandwidth, "floor_tok_s": bandwidth / per_token}


def episodes_by_mode(model, tok, budget: int, n_tasks: int, max_attempts: int) -> dict:
    """Unsolvable tasks through the agent in each cache mode; same greedy tokens, different costs."""
    tasks = [replace(t, expected="unreachable") for t in load_suite("synthetic")[:n_tasks]]
    results = {}
    with CodeVerifier() as verifier:
        for mode in MODES:
            agent = Agent(model, tok, verifier, AgentConfig(kv_cache=mode, max_attempts=max_attempts), budget)
            results[mode] = [agent.run(t) for t in tasks]
    summary = {}
    for mode, eps in results.items():
        cumulative = []  # median over tasks of the time to finish k attempts (generation + verification)
        for k in range(1, max_attempts + 1):
            done = [e for e in eps if len([a for a in e.attempts if a.new_tokens]) >= k]
            if len(done) < max(1, len(eps) // 2):
                break
            cumulative.append(statistics.median(
                sum(a.prefill_ms + a.decode_ms + a.verify_ms for a in e.attempts[:k]) for e in done))
        summary[mode] = {
            "cumulative_ms_by_attempt": cumulative,
            "episode_ms_median": statistics.median(e.wall_ms for e in eps),
            "prefill_tokens": sum(a.prefill_tokens for e in eps for a in e.attempts),
            "cached_tokens": sum(a.cached_tokens for e in eps for a in e.attempts),
            "generated_tokens": sum(a.new_tokens for e in eps for a in e.attempts),
        }
    same = len({tuple(tuple(a.code for a in e.attempts) for e in eps) for eps in results.values()}) == 1
    return {"modes": summary, "same_codes_in_every_mode": same,
            "episodes": {m: [e.__dict__ | {"attempts": [a.__dict__ for a in e.attempts]} for e in eps]
                         for m, eps in results.items()}}


def curve_point(spec: str, compile_all: bool) -> dict:
    """One point of the bench curve: 'N', 'N:compile', 'N:bf16' or 'N:compile+bf16'."""
    size, _, options = spec.partition(":")
    flags = {o for o in options.split("+") if o}
    if not size.isdigit() or int(size) < 1 or flags - {"compile", "bf16"}:
        raise SystemExit(f"--batch-curve: bad point {spec!r}; write N, N:compile, N:bf16 or N:compile+bf16")
    return {"batch": int(size), "compile": compile_all or "compile" in flags,
            "precision": "bf16" if "bf16" in flags else "fp32"}


def point_name(p: dict) -> str:
    options = [f for f, on in (("compile", p["compile"]), ("bf16", p["precision"] == "bf16")) if on]
    return " ".join([str(p["batch"]), *options])


def batch_curve(specs: list[str], suite: str, threads: int, console: Console, compile: bool = False,
                checkpoint: str | None = None, repeats: int = 3) -> dict:
    """tasks/s of the real benchmark (`run_bench`, a fresh model each run) at each point (batch size,
    compile, precision), as the median of `repeats` rounds that alternate the points, so that a shared
    machine's load falls on all of them alike; speedups are against the first point. Each point records
    whether it produced the first point's codes (greedy fp32 must; bf16 may differ where logits nearly tie,
    and the count of differing episodes says how often). Compiled points compile before their timed run."""
    from nanocodegen.bench import collect_tasks, run_bench

    tasks = collect_tasks([suite], None, None)
    points = [curve_point(spec, compile) for spec in specs]
    curve = {point_name(p): {**p, "runs": []} for p in points}
    reference = None
    quiet = Console(stderr=True, quiet=True)
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(repeats):
            for p in points:
                name = point_name(p)
                console.print(f"round {round_ + 1}/{repeats}: bench --batch {name} ({len(tasks)} tasks) ...")
                r = run_bench(tasks, AgentConfig(), checkpoint, out=f"{tmp}/{name}-{round_}", console=quiet,
                              batch=p["batch"], threads=threads, compile=p["compile"], precision=p["precision"])
                codes = [[a["code"] for a in e["attempts"]] for e in r["episodes"]]
                reference = reference if reference is not None else codes
                curve[name]["runs"].append({
                    "tasks_per_s": r["summary"]["tasks_per_s"], "wall_s": r["summary"]["wall_s"],
                    "solved": r["summary"]["solved"], "attempts": r["summary"]["attempts"],
                    "episodes_differing_from_first": sum(a != b for a, b in zip(codes, reference, strict=True)),
                    "batch_stats": r.get("batch_stats"), "compile_s": r.get("compile", {}).get("warm_up_s")})
    for point in curve.values():
        runs = point["runs"]
        point["tasks_per_s"] = statistics.median(run["tasks_per_s"] for run in runs)
        point["tasks_per_s_range"] = [min(run["tasks_per_s"] for run in runs), max(run["tasks_per_s"] for run in runs)]
        point["solved"] = runs[-1]["solved"]
        point["episodes_differing_from_first"] = max(run["episodes_differing_from_first"] for run in runs)
    base = curve[point_name(points[0])]["tasks_per_s"]
    for point in curve.values():
        point["speedup"] = point["tasks_per_s"] / base
    return {"suite": suite, "tasks": len(tasks), "repeats": repeats, "by_point": curve}


def bench_model(name: str, model, tok, args, console: Console, prompts: list[list[int]]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        hf = load_hf(model, tok, Path(tmp))
    n = args.new_tokens if name == "default" else args.large_new_tokens
    repeats = args.repeats if name == "default" else args.large_repeats
    ids = torch.tensor([prompts[0]])
    same = torch.equal(ours_generate(model, ids, n), hf_generate(hf, ids, n))
    engines = {"ours": lambda i, k: ours_generate(model, i, k), "hf": lambda i, k: hf_generate(hf, i, k)}
    if args.compile:
        compiled = NanoCodeGenAgent.from_config(model.config)
        compiled.load_state_dict(model.state_dict())
        t0 = time.perf_counter()
        compile_decode(compiled.eval(), args.chunk)
        same_compiled = torch.equal(ours_generate(compiled, ids, n), ours_generate(model, ids, n))
        compile_s = time.perf_counter() - t0  # the first call compiles (from inductor's disk cache if warm)
        engines["ours_compiled"] = lambda i, k: ours_generate(compiled, i, k)
    console.print(f"[{name}] decode at batch 1 ...")
    # Other jobs on a shared machine move the bandwidth left to us: measure it around the decode rounds.
    bandwidth = [memory_bandwidth()]
    decode = decode_rates(engines, ids, n, repeats)
    bandwidth.append(memory_bandwidth())
    console.print(f"[{name}] prefill ...")
    prefill = prefill_rates(model, hf, args.prefill_lengths, repeats)
    batched = {}
    if name == "default":
        for b in args.batch_sizes:
            console.print(f"[{name}] batched decode, B={b} ...")
            batch_ids = torch.randint(5, model.vocab_size, (b, 32), generator=torch.Generator().manual_seed(b))
            batched[str(b)] = decode_rates({k: engines[k] for k in ("ours", "hf")}, batch_ids, 64, args.repeats)
    out = {"params": model.num_params(), "config": model.config_dict(), "new_tokens": n,
           "same_greedy_tokens_as_hf": same, "decode_batch_1": decode, "prefill": prefill,
           "batched_decode": batched}
    if args.compile:
        out["compiled_same_tokens"] = same_compiled
        out["compile"] = {"chunk": args.chunk, "first_call_s": compile_s}
    read = statistics.mean(b["read_bytes_s"] for b in bandwidth)
    out["floor"] = decode_floor(model, len(prompts[0]) + n // 2, read) | {"bandwidth_around_decode": bandwidth}
    out["floor"]["ours_share_of_floor"] = decode["ours"]["wall_tok_s"] / out["floor"]["floor_tok_s"]
    out["floor"]["hf_share_of_floor"] = decode["hf"]["wall_tok_s"] / out["floor"]["floor_tok_s"]
    if "ours_compiled" in decode:
        compiled_rate = decode["ours_compiled"]["wall_tok_s"]
        out["floor"]["ours_compiled_share_of_floor"] = compiled_rate / out["floor"]["floor_tok_s"]
    return out


def print_tables(console: Console, results: dict) -> None:
    for name, r in results["models"].items():
        t = Table(title=f"{name} model ({r['params'] / 1e6:.2f}M params): tok/s, wall (cpu)")
        t.add_column("measure")
        engines = list(r["decode_batch_1"])
        for e in engines:
            t.add_column(e, justify="right")
        t.add_column("ours / hf", justify="right")
        fmt = lambda d: f"{d['wall_tok_s']:,.0f} ({d['cpu_tok_s']:,.0f})"
        ratio = lambda d: f"{d['ours']['wall_tok_s'] / d['hf']['wall_tok_s']:.2f}x"
        d = r["decode_batch_1"]
        t.add_row("decode, batch 1", *[fmt(d[e]) for e in engines], ratio(d))
        for length, p in r["prefill"].items():
            if "skipped" in p:
                t.add_row(f"prefill {length}", *["-" for _ in engines], p["skipped"])
            else:
                t.add_row(f"prefill {length}", fmt(p["ours"]), fmt(p["hf"]), *["" for _ in engines[2:]], ratio(p))
        for b, p in r["batched_decode"].items():
            t.add_row(f"decode, batch {b}", fmt(p["ours"]), fmt(p["hf"]), *["" for _ in engines[2:]], ratio(p))
        console.print(t)
        f = r["floor"]
        console.print(
            f"  floor: {f['bytes_per_token'] / 2**20:.2f} MiB read per token (weights {f['weight_bytes'] / 2**20:.2f} "
            f"MiB + KV at {f['context']} tokens) / {f['bandwidth_bytes_s'] / 2**30:.1f} GiB/s read = "
            f"{f['floor_tok_s']:,.0f} tok/s; ours reaches {f['ours_share_of_floor']:.0%} of it"
            + (f" ({f['ours_compiled_share_of_floor']:.0%} compiled)" if "ours_compiled_share_of_floor" in f else "")
            + f", hf {f['hf_share_of_floor']:.0%}; "
            f"same greedy tokens as HF: {r['same_greedy_tokens_as_hf']}"
        )
    e = results.get("episodes")
    if e:
        t = Table(title="agent episodes on unsolvable tasks: median ms to finish k attempts (gen + verify)")
        t.add_column("mode")
        longest = max(len(m["cumulative_ms_by_attempt"]) for m in e["modes"].values())
        for k in range(1, longest + 1):
            t.add_column(f"k={k}", justify="right")
        t.add_column("prefill / cached tokens", justify="right")
        for mode, m in e["modes"].items():
            cells = [f"{v:,.0f}" for v in m["cumulative_ms_by_attempt"]]
            t.add_row(mode, *cells, *["" for _ in range(longest - len(cells))],
                      f"{m['prefill_tokens']:,} / {m['cached_tokens']:,}")
        console.print(t)
        console.print(f"  same codes in every mode: {e['same_codes_in_every_mode']}")
    c = results.get("batch_curve")
    if c:
        t = Table(title=f"nanocodegen bench --suite {c['suite']} --batch N ({c['tasks']} tasks, median of "
                        f"{c['repeats']} alternating rounds)")
        first = next(iter(c["by_point"]))
        for col in ("--batch N [options]", "tasks/s", "(min-max)", f"x [{first}]", "solved", "episodes ≠ first"):
            t.add_column(col, justify="right")
        for name, p in c["by_point"].items():
            low, high = p["tasks_per_s_range"]
            t.add_row(name, f"{p['tasks_per_s']:.1f}", f"{low:.0f}-{high:.0f}", f"{p['speedup']:.2f}x",
                      str(p["solved"]), str(p["episodes_differing_from_first"]))
        console.print(t)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", required=True, metavar="OUT", help="results file (the chart goes to OUT.png)")
    parser.add_argument("--checkpoint", help="checkpoint folder (default: the shipped model)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads, both engines")
    parser.add_argument("--repeats", type=int, default=7, help="rounds per measurement (median reported)")
    parser.add_argument("--new-tokens", type=int, default=128, help="decode length, default model")
    parser.add_argument("--prefill-lengths", type=int, nargs="+", default=[64, 128, 256, 512])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--episode-tasks", type=int, default=5, help="unsolvable tasks per cache mode")
    parser.add_argument("--max-attempts", type=int, default=8)
    parser.add_argument("--large", action="store_true", help=f"also a random-weight model {LARGE}")
    parser.add_argument("--large-new-tokens", type=int, default=32)
    parser.add_argument("--large-repeats", type=int, default=3)
    parser.add_argument("--compile", action="store_true",
                        help="also our decode under compile_decode (torch.compile, greedy chunks)")
    parser.add_argument("--chunk", type=int, default=DECODE_CHUNK, help="greedy tokens per compiled call")
    parser.add_argument("--curve-compile", action="store_true", help="every point of the curve runs bench --compile")
    parser.add_argument("--batch-curve", nargs="*", default=["1", "4", "16", "64", "64:compile", "64:compile+bf16"],
                        metavar="N[:compile][+bf16]",
                        help="points of the bench curve: batch size, optionally compiled and/or bf16 (the first "
                             "is the baseline; none: skip)")
    parser.add_argument("--curve-repeats", type=int, default=3, help="alternating rounds of the curve (median)")
    parser.add_argument("--curve-suite", default="synthetic", help="suite the curve runs")
    parser.add_argument("--curve-only", action="store_true",
                        help="only the bench curve (no engine-vs-HF measurements, no episodes by mode)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    console = Console(stderr=True, width=130)
    ckpt = Path(args.checkpoint) if args.checkpoint else default_checkpoint()
    model, tok, ckpt_config = load_checkpoint(ckpt)
    load_before = os.getloadavg()
    bandwidth = memory_bandwidth()
    prompts = [task_ids(tok, t.prompt) for t in load_suite("synthetic")[:4]]
    results = {"provenance": {**provenance("cpu"), "checkpoint_sha256": checkpoint_sha256(ckpt)},
               "threads": args.threads, "repeats": args.repeats, "memory_bandwidth": bandwidth,
               "models": {}}
    if args.curve_only:
        results["batch_curve"] = batch_curve(args.batch_curve, args.curve_suite, args.threads, console,
                                             args.curve_compile, args.checkpoint, args.curve_repeats)
        results["load_average"] = {"before": load_before, "after": os.getloadavg()}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
        print_tables(console, results)
        console.print(f"load average before {load_before}, after {results['load_average']['after']}; wrote "
                      f"{args.json}")
        return
    results["models"]["default"] = bench_model("default", model, tok, args, console, prompts)
    if args.large:
        torch.manual_seed(0)
        large = NanoCodeGenAgent.from_config(ModelConfig(vocab_size=tok.vocab_size, **LARGE)).eval()
        results["models"]["large"] = bench_model("large", large, tok, args, console, prompts)
    console.print("agent episodes by cache mode ...")
    budget = ckpt_config.get("prompt", {}).get("feedback_budget", 32)
    episodes = episodes_by_mode(model, tok, budget, args.episode_tasks, args.max_attempts)
    chart = plot_modes({m: [e for e in eps] for m, eps in episodes.pop("episodes").items()},
                       Path(args.json).with_suffix(".png"),
                       title=f"agent episodes on {args.episode_tasks} unsolvable tasks, by KV-cache mode")
    results["episodes"] = episodes
    results["chart"] = str(chart)
    if args.batch_curve:
        results["batch_curve"] = batch_curve(args.batch_curve, args.curve_suite, args.threads, console,
                                             args.curve_compile, args.checkpoint, args.curve_repeats)
    results["load_average"] = {"before": load_before, "after": os.getloadavg()}
    d = results["models"]["default"]["decode_batch_1"]
    results["ours_decode_tok_s"] = d["ours"]["wall_tok_s"]
    results["hf_decode_tok_s"] = d["hf"]["wall_tok_s"]
    results["ratio"] = results["ours_decode_tok_s"] / results["hf_decode_tok_s"]
    results["ratio_cpu"] = d["ours"]["cpu_tok_s"] / d["hf"]["cpu_tok_s"]
    if "ours_compiled" in d:
        results["ours_compiled_decode_tok_s"] = d["ours_compiled"]["wall_tok_s"]
        results["ratio_compiled"] = d["ours_compiled"]["wall_tok_s"] / d["hf"]["wall_tok_s"]
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    print_tables(console, results)
    console.print(f"load average before {load_before}, after {results['load_average']['after']}; wrote {args.json}, "
                  f"{chart}")


if __name__ == "__main__":
    main()

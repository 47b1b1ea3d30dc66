"""Episode latency by where the episode runs: the main thread (as `bench` runs it), a worker thread (as the
LoadGen SUT runs it), and the main thread with one torch thread. Side by side, alternating, in one process.

    python benchmarks/episode_thread.py --tasks 30 --rounds 2

Prints each context's median and mean episode latency per round. On a busy 2-core machine the main thread
was ten times slower than a worker thread; this is the measurement behind that sentence in harness.py.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

import torch

from nanocodegen.agent import Agent
from nanocodegen.checkpoint import default_checkpoint, load_checkpoint
from nanocodegen.config import AgentConfig
from nanocodegen.tasks import load_suite
from nanocodegen.verifier import CodeVerifier


def episode_latencies_ms(agent: Agent, tasks) -> list[float]:
    out = []
    for task in tasks:
        t0 = time.perf_counter()
        agent.run(task)
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def in_worker_thread(agent: Agent, tasks) -> list[float]:
    result: list[float] = []
    worker = threading.Thread(target=lambda: result.extend(episode_latencies_ms(agent, tasks)))
    worker.start()
    worker.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=30, help="synthetic test tasks per measurement")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    model, tok, _ = load_checkpoint(default_checkpoint())
    tasks = load_suite("synthetic")[: args.tasks]
    threads = torch.get_num_threads()
    with open("/proc/loadavg") as f:
        print(f"torch threads {threads}; load average {f.read().split()[0]} at start")
    with CodeVerifier() as verifier:
        agent = Agent(model, tok, verifier, AgentConfig())
        episode_latencies_ms(agent, tasks[:5])  # warm up
        for r in range(1, args.rounds + 1):
            runs = {"main thread": episode_latencies_ms(agent, tasks), "worker thread": in_worker_thread(agent, tasks)}
            torch.set_num_threads(1)
            runs["main thread, 1 torch thread"] = episode_latencies_ms(agent, tasks)
            torch.set_num_threads(threads)
            for name, ms in runs.items():
                median, mean = statistics.median(ms), statistics.fmean(ms)
                print(f"round {r} {name:28s} median {median:7.1f} ms  mean {mean:7.1f} ms")


if __name__ == "__main__":
    main()

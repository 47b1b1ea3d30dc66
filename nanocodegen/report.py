"""Run folder -> plots (PNG) and one self-contained HTML report.

    nanocodegen report runs/bench-20250101-120000      # writes RUN/report.html and RUN/plots/*.png

Works for `bench` and `loadgen` run folders alike: it reads RUN/results.json and the per-attempt records
(results.json's episodes, or RUN/episodes.jsonl). The HTML embeds its PNGs as data URIs and has no
external CSS or JS, so it can be mailed or handed in as one file.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg  # headless: no display, no pyplot state
from matplotlib.figure import Figure

from nanocodegen.checkpoint import read_train_log
from nanocodegen.metrics import verdict
from nanocodegen.records import Outcome

REPORT_FILE, PLOTS_DIR = "report.html", "plots"
PHASES = ("prefill", "decode", "verify")
PHASE_COLORS = {"prefill": "#4C72B0", "decode": "#55A868", "verify": "#C44E52"}


class ReportError(ValueError):
    """A run folder cannot be reported on; the message says why and what to do."""


def load_run(run_dir: str | Path) -> tuple[dict, list[dict]]:
    """(results.json, episode records) of a bench or loadgen run folder."""
    run_dir = Path(run_dir)
    path = run_dir / "results.json"
    if not path.is_file():
        raise ReportError(f"{run_dir} has no results.json; pass the folder a `nanocodegen bench` or "
                          "`nanocodegen loadgen` run wrote (its --out)")
    try:
        results = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ReportError(f"{path} is not valid JSON ({e}); the run was cut off while writing it") from None
    episodes = results.get("episodes")
    if episodes is None:
        episodes_path = run_dir / results.get("episodes_file", "episodes.jsonl")
        lines = episodes_path.read_text().splitlines() if episodes_path.is_file() else []
        episodes = [json.loads(line) for line in lines if line.strip()]
    return results, episodes


def _attempts(episodes: list[dict]) -> list[dict]:
    return [a for e in episodes for a in e["attempts"] if a["outcome"] != Outcome.CONTEXT_OVERFLOW]


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buf)
    return buf.getvalue()


def _figure(title: str, xlabel: str, ylabel: str) -> tuple[Figure, object]:
    fig = Figure(figsize=(6.4, 3.8), dpi=100, layout="constrained")
    ax = fig.subplots()
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    return fig, ax


def plot_latency_vs_context(episodes: list[dict]) -> bytes:
    """Each attempt's latency (generate + verify) against its prompt length, coloured by attempt number."""
    fig, ax = _figure("Attempt latency vs context length", "context tokens (prompt fed to the model)",
                      "attempt latency (ms)")
    attempts = _attempts(episodes)
    for k in sorted({a["attempt"] for a in attempts}):
        xs = [a["context_tokens"] for a in attempts if a["attempt"] == k]
        ys = [a["prefill_ms"] + a["decode_ms"] + a["verify_ms"] for a in attempts if a["attempt"] == k]
        ax.scatter(xs, ys, s=12, alpha=0.6, label=f"attempt {k}")
    if attempts:
        ax.legend(fontsize=8)
    return _png(fig)


def plot_attempts_to_correct(episodes: list[dict], max_attempts: int) -> bytes:
    """How many attempts each task needed; unsolved tasks in their own bar."""
    fig, ax = _figure("Attempts to correct", "attempts", "tasks")
    labels = [str(k) for k in range(1, max_attempts + 1)] + ["unsolved"]
    counts = [sum(1 for e in episodes if e["attempts_to_correct"] == k) for k in range(1, max_attempts + 1)]
    counts.append(sum(1 for e in episodes if not e["solved"]))
    bars = ax.bar(labels, counts, color=["#55A868"] * max_attempts + ["#C44E52"])
    ax.bar_label(bars, fontsize=8)
    return _png(fig)


def plot_tokens_per_attempt(episodes: list[dict]) -> bytes:
    """Mean prompt and generated tokens by attempt number: the context grows with every retry."""
    fig, ax = _figure("Tokens per attempt", "attempt", "mean tokens")
    attempts = _attempts(episodes)
    ks = sorted({a["attempt"] for a in attempts})

    def mean(key: str, k: int) -> float:
        xs = [a[key] for a in attempts if a["attempt"] == k]
        return sum(xs) / len(xs)

    width = 0.38
    ax.bar([k - width / 2 for k in ks], [mean("context_tokens", k) for k in ks], width, label="prompt (context)")
    ax.bar([k + width / 2 for k in ks], [mean("new_tokens", k) for k in ks], width, label="generated")
    counts = {k: sum(1 for a in attempts if a["attempt"] == k) for k in ks}
    ax.set_xticks(ks, [f"{k}\n(n={counts[k]})" for k in ks])
    if ks:
        ax.legend(fontsize=8)
    return _png(fig)


def plot_time_split(summary: dict) -> bytes:
    """Share of model + verifier time in prefill, decode and verify (one stacked bar)."""
    fig = Figure(figsize=(6.4, 2.2), dpi=100, layout="constrained")
    ax = fig.subplots()
    ax.set_title("Where the time goes")
    time_ms = summary.get("time_ms", {})
    total = sum(time_ms.get(p, 0.0) for p in PHASES) or 1.0
    left = 0.0
    for phase in PHASES:
        share = time_ms.get(phase, 0.0) / total
        ax.barh([0], [share], left=left, color=PHASE_COLORS[phase], label=f"{phase} {share:.0%}")
        if share > 0.06:
            ax.text(left + share / 2, 0, f"{phase}\n{share:.0%}", ha="center", va="center", color="white", fontsize=9)
        left += share
    ax.set_xlim(0, 1)
    ax.set_yticks([])
    ax.set_xlabel(f"share of {total / 1e3:.1f} s in the model and the verifier")
    fig.legend(ncols=3, fontsize=8, loc="outside lower center", frameon=False)
    return _png(fig)


def plot_training_loss(log: list[dict]) -> bytes:
    """The checkpoint's training curve: per-step loss and periodic validation loss."""
    fig, ax = _figure("Training loss (the checkpoint's log)", "step", "cross-entropy (log scale)")
    steps = [r["step"] for r in log if "loss" in r]
    ax.plot(steps, [r["loss"] for r in log if "loss" in r], lw=0.6, alpha=0.5, label="train loss")
    window = max(1, len(steps) // 100)  # a running mean over ~1 % of the steps shows the trend
    losses = [r["loss"] for r in log if "loss" in r]
    smooth = [sum(losses[max(0, i - window + 1):i + 1]) / len(losses[max(0, i - window + 1):i + 1])
              for i in range(len(losses))]
    ax.plot(steps, smooth, lw=1.5, label=f"train loss, mean of {window} steps")
    val = [(r["step"], r["val_loss"]) for r in log if "val_loss" in r]
    if val:
        ax.plot(*zip(*val, strict=True), "o-", ms=4, label="validation loss")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    return _png(fig)


def make_plots(results: dict, episodes: list[dict]) -> dict[str, bytes]:
    """name -> PNG bytes. The training curve is included when the run's checkpoint folder has its log."""
    max_attempts = results.get("config", {}).get("max_attempts") or max(
        (len(e["attempts"]) for e in episodes), default=1)
    plots = {
        "latency_vs_context": plot_latency_vs_context(episodes),
        "attempts_to_correct": plot_attempts_to_correct(episodes, max_attempts),
        "tokens_per_attempt": plot_tokens_per_attempt(episodes),
        "time_split": plot_time_split(results.get("summary", {})),
    }
    checkpoint = results.get("config", {}).get("checkpoint")
    log = read_train_log(checkpoint) if checkpoint and Path(checkpoint).is_dir() else []
    if log:
        plots["training_loss"] = plot_training_loss(log)
    return plots


def _fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _table(rows: list[tuple[str, object]], header: tuple[str, ...] | None = None) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header) if header else ""
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table>{'<tr>' + head + '</tr>' if head else ''}{body}</table>"


CSS = """
body { font-family: system-ui, -apple-system, Segoe UI, Roboto, sans-serif; margin: 2em auto; max-width: 1100px;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h2 { font-size: 1.15em; margin-top: 1.6em;
     border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
.sub { color: #666; margin-top: 0; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.92em; }
td, th { border: 1px solid #ddd; padding: 0.25em 0.7em; text-align: left; }
th { background: #f4f4f4; } td:not(:first-child) { font-variant-numeric: tabular-nums; }
.grid { display: flex; flex-wrap: wrap; gap: 1.5em; align-items: flex-start; }
.plots figure { flex: 1 1 460px; max-width: 530px; }
.badge { display: inline-block; padding: 0.15em 0.6em; border-radius: 0.3em; color: white; font-weight: 600; }
.pass { background: #2e7d32; } .fail { background: #c62828; } .none { background: #757575; }
figure { margin: 0.5em 0; } img { max-width: 100%; border: 1px solid #eee; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 0.82em; }
"""


def _badge(text: str) -> str:
    kind = {"PASS": "pass", "VALID": "pass", "FAIL": "fail", "INVALID": "fail"}.get(text, "none")
    return f'<span class="badge {kind}">{html.escape(text)}</span>'


def render_html(results: dict, episodes: list[dict], plots: dict[str, bytes], loadgen_summary: str = "") -> str:
    """The whole report as one HTML string."""
    metrics, q, prov = results.get("metrics", {}), results.get("quality", {}), results.get("provenance", {})
    config = results.get("config", {})
    headline = metrics.get("headline", {})
    kind = f"loadgen {config.get('scenario')} {config.get('mode')}" if "loadgen" in results else "bench"
    parts = [
        f"<h1>nanocodegen {html.escape(kind)} — {html.escape(str(results.get('id', '')))}</h1>",
        f'<p class="sub">{html.escape(str(results.get("schema", "")))} · workload '
        f"{html.escape(str(results.get('workload', '')))} · status {html.escape(str(results.get('status', '')))}</p>",
        "<h2>Summary</h2>",
    ]
    rows = [
        ("quality", f"{q.get('metric')} = {_fmt(q.get('value'))} (target ≥ {q.get('target')}) "
                    f"on {q.get('tasks')} of {q.get('split_tasks')} tasks"),
        ("headline", f"{headline.get('name')} = {_fmt(headline.get('value'))} {headline.get('unit', '')}"),
    ]
    badges = f"Quality target: {_badge(verdict(q) if q.get('metric') else 'NOT EVALUATED')}"
    if "loadgen" in results and config.get("mode") == "performance":
        badges += f" &nbsp; LoadGen result: {_badge(str(metrics.get('result_validity')))}"
    parts.append(f"<p>{badges}</p>")
    identity = [(k, results.get(k)) for k in ("id", "workload", "profile", "status", "backend", "data_mode", "seed")]
    parts.append('<div class="grid">' + _table(rows + identity, ("field", "value")))
    shown = [(k, v) for k, v in metrics.items() if k != "headline" and not isinstance(v, dict | list)]
    parts.append(_table(shown, ("metric", "value")) + "</div>")
    by_suite = results.get("summary", {}).get("by_suite", {})
    if "accuracy" in results:
        by_suite = results["accuracy"].get("by_suite", by_suite)
    if by_suite:
        parts.append("<h2>By suite</h2>")
        parts.append(_table([(name, r["tasks"], r["solved"], r["solve_rate"], r["pass_at_1"],
                              r["mean_attempts_to_correct"]) for name, r in by_suite.items()],
                            ("suite", "tasks", "solved", "solve rate", "pass@1", "mean attempts to correct")))
    titles = {
        "latency_vs_context": "Per-attempt latency against context length",
        "attempts_to_correct": "Attempts-to-correct histogram",
        "tokens_per_attempt": "Tokens per attempt",
        "time_split": "Share of time in prefill / decode / verify",
        "training_loss": "Training loss curve",
    }
    parts.append('<h2>Plots</h2><div class="grid plots">')
    for name, png in plots.items():
        data = base64.b64encode(png).decode("ascii")
        parts.append(f'<figure><img alt="{html.escape(titles.get(name, name))}" src="data:image/png;base64,{data}">'
                     f"<figcaption>{html.escape(titles.get(name, name))}</figcaption></figure>")
    parts.append("</div>")
    if "training_loss" not in plots:
        parts.append(f"<p>No training curve: the checkpoint folder {html.escape(str(config.get('checkpoint')))} "
                     "has no train_log.jsonl here.</p>")
    if loadgen_summary:
        parts.append("<h2>LoadGen summary (mlperf_log_summary.txt)</h2><pre>" + html.escape(loadgen_summary)
                     + "</pre>")
    hardware = prov.get("hardware", {})
    parts.append("<h2>Provenance</h2>")
    parts.append(_table([
        ("package", f"{prov.get('package')} {prov.get('version')}"),
        ("git commit", f"{prov.get('git_commit')}" + (" (dirty tree)" if prov.get("git_dirty") else "")),
        ("checkpoint sha256", prov.get("checkpoint_sha256")),
        ("checkpoint", config.get("checkpoint")),
        ("python / torch", f"{prov.get('python')} / {prov.get('torch')}"),
        *[(name, version) for name, version in prov.get("libraries", {}).items()],
        ("device", prov.get("device")),
        ("cpu", f"{hardware.get('cpu')} ({hardware.get('cores')} cores)"),
        ("memory", f"{(hardware.get('memory_bytes') or 0) / 2**30:.1f} GiB"),
        ("gpu", hardware.get("gpu")),
        ("platform", hardware.get("platform")),
        ("episodes in this report", len(episodes)),
    ], ("what", "value")))
    parts.append("<h2>Settings</h2>" + _table(sorted((k, v) for k, v in config.items() if not isinstance(v, dict)),
                                             ("setting", "value")))
    title = f"nanocodegen {kind} {results.get('id', '')}"
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")


def write_report(run_dir: str | Path) -> Path:
    """Write RUN/plots/*.png and RUN/report.html; return the HTML's path."""
    run_dir = Path(run_dir)
    results, episodes = load_run(run_dir)
    plots = make_plots(results, episodes)
    (run_dir / PLOTS_DIR).mkdir(exist_ok=True)
    for name, png in plots.items():
        (run_dir / PLOTS_DIR / f"{name}.png").write_bytes(png)
    summary_log = run_dir / "mlperf_log_summary.txt"
    loadgen_summary = summary_log.read_text() if summary_log.is_file() else ""
    path = run_dir / REPORT_FILE
    path.write_text(render_html(results, episodes, plots, loadgen_summary))
    return path

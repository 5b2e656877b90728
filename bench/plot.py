#!/usr/bin/env python3
"""Plots of a bench/compare results directory: one PNG per workload with both
brokers on the same axes — throughput over time, average latency over time,
p95/p99 latency over time (send->ack, and end to end for e2e runs).

    python bench/plot.py bench/results/<date>-<host>     # (re)draws <dir>/plots/*.png

Reads results.json and the fjord-bench JSON of each run (its "timeline").
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402

COLORS = {"kafka": "#d62728", "fjord": "#1f77b4"}
TITLES = {"kafka": "Apache Kafka", "fjord": "Fjord"}
ORDER = ["kafka", "fjord"]


def interval_rates(timeline: list[dict], key: str, total: float | None) -> tuple[list[float], list[float]]:
    """Records per second per timeline interval for counter `key`.

    The timeline may carry per-interval counts or running totals; running
    totals are recognised as non-decreasing values ending at the run's total
    (while their sum is well above it) and are differenced."""
    pts = [(e.get("t"), e.get(key)) for e in timeline if e.get("t") is not None and e.get(key) is not None]
    if not pts:
        return [], []
    ts = [float(t) for t, _ in pts]
    vs = [float(v) for _, v in pts]
    cumulative = (
        len(vs) > 1
        and all(b >= a for a, b in zip(vs, vs[1:]))
        and total is not None
        and total > 0
        and abs(vs[-1] - total) <= 0.05 * total + 1
        and sum(vs) > 1.5 * total
    )
    if cumulative:
        vs = [vs[0]] + [b - a for a, b in zip(vs, vs[1:])]
    dts = [ts[0] if ts[0] > 0 else None] + [b - a for a, b in zip(ts, ts[1:])]
    step = sorted(d for d in dts if d and d > 0)
    default = step[len(step) // 2] if step else 1.0
    return ts, [v / (d if d and d > 0 else default) for v, d in zip(vs, dts)]


def series(timeline: list[dict], key: str) -> tuple[list[float], list[float]]:
    pts = [(e["t"], e[key]) for e in timeline if e.get("t") is not None and e.get(key) is not None]
    return [float(t) for t, _ in pts], [float(v) for _, v in pts]


def _latency_axis(ax) -> None:
    lines = [l for l in ax.get_lines() if len(l.get_ydata())]
    ys = [y for l in lines for y in l.get_ydata() if y and y > 0]
    if ys and max(ys) / max(min(ys), 1e-6) > 50:
        ax.set_yscale("log")
    ax.set_ylabel("ms")
    ax.grid(True, which="both", alpha=0.3)


def plot_workload(path: Path, title: str, runs: dict[str, dict], rate: float | None = None) -> bool:
    """runs: system key -> fjord-bench JSON. Returns False when no run has a timeline."""
    runs = {k: v for k, v in runs.items() if v and v.get("timeline")}
    if not runs:
        return False
    has_e2e = any(any(e.get("e2e_avg_ms") is not None for e in d["timeline"]) for d in runs.values())
    has_sa = any(any(e.get("send_ack_avg_ms") is not None for e in d["timeline"]) for d in runs.values())
    has_cpu = any((d.get("extra") or {}).get("broker_timeline") for d in runs.values())
    panels = (["throughput", "avg"] + (["sa_pct"] if has_sa else []) + (["e2e_pct"] if has_e2e else [])
              + (["cpu"] if has_cpu else []))
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 2.9 * len(panels)), sharex=True, squeeze=False)
    axes = [a[0] for a in axes]
    for key in ORDER:
        d = runs.get(key)
        if not d:
            continue
        tl, c, name = d["timeline"], COLORS[key], TITLES[key]
        for ax, panel in zip(axes, panels):
            if panel == "throughput":
                t, r = interval_rates(tl, "acked", d.get("acked"))
                ax.plot(t, r, color=c, label=f"{name} acknowledged")
                if d.get("workload") == "e2e":
                    t, r = interval_rates(tl, "consumed", d.get("consumed"))
                    ax.plot(t, r, color=c, linestyle="--", label=f"{name} consumed")
            elif panel == "avg":
                t, v = series(tl, "send_ack_avg_ms")
                if v:
                    ax.plot(t, v, color=c, label=f"{name} send→ack avg")
                t, v = series(tl, "e2e_avg_ms")
                if v:
                    ax.plot(t, v, color=c, linestyle="--", label=f"{name} end-to-end avg")
            elif panel == "sa_pct":
                for k, ls, lab in (("send_ack_p95_ms", "-", "p95"), ("send_ack_p99_ms", ":", "p99")):
                    t, v = series(tl, k)
                    if v:
                        ax.plot(t, v, color=c, linestyle=ls, label=f"{name} send→ack {lab}")
            elif panel == "cpu":
                bt = (d.get("extra") or {}).get("broker_timeline") or []
                t, v = series(bt, "cpu_seconds")
                if v:
                    ax.plot(t, v, color=c, label=f"{name} broker CPU")
            elif panel == "e2e_pct":
                for k, ls, lab in (("e2e_p95_ms", "-", "p95"), ("e2e_p99_ms", ":", "p99")):
                    t, v = series(tl, k)
                    if v:
                        ax.plot(t, v, color=c, linestyle=ls, label=f"{name} end-to-end {lab}")
    labels = {
        "throughput": "throughput over time (records/s)",
        "avg": "average latency over time",
        "sa_pct": "send→ack p95 / p99 over time",
        "e2e_pct": "end-to-end p95 / p99 over time",
        "cpu": "broker CPU over time (cores: CPU seconds per second)",
    }
    if rate:
        axes[0].axhline(rate, color="grey", linestyle=(0, (4, 4)), linewidth=1, label=f"target rate {rate:,.0f}/s")
    for ax, panel in zip(axes, panels):
        ax.set_title(labels[panel], fontsize=10, loc="left")
        if panel == "cpu":
            ax.set_ylabel("cores")
            ax.set_ylim(bottom=0)
            ax.grid(True, alpha=0.3)
        elif panel == "throughput":
            ax.set_ylabel("records/s")
            ax.set_ylim(bottom=0)
            ax.grid(True, alpha=0.3)
            ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
        else:
            _latency_axis(ax)
        if ax.get_lines():
            ax.legend(fontsize=8, loc="best")
    axes[-1].set_xlabel("seconds since the start of the run")
    fig.suptitle(textwrap.fill(title, 110), fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def load_repeats(out: Path, res: dict) -> dict[tuple[str, str], dict[str, list[dict]]]:
    """(config, workload id) -> system -> fjord-bench JSON of every repeat that wrote one."""
    grouped: dict[tuple[str, str], dict[str, list[dict]]] = {}
    for r in res.get("runs", []):
        f = out / r["file"]
        try:
            data = json.loads(f.read_text())
        except (OSError, ValueError):
            data = None
        runs = grouped.setdefault((r["config"], r["workload_id"]), {}).setdefault(r["system"], [])
        if data is not None:
            runs.append(data)
    return grouped


def p99_of(run: dict) -> float:
    v = ((run.get("latency_ms") or {}).get("send_ack") or {}).get("p99")
    return float("inf") if v is None else v


def representative(runs: list[dict]) -> dict | None:
    """The repeat whose send→ack p99 is the median (the lower middle one for
    an even count), so that every number shown comes from one real run."""
    if not runs:
        return None
    ranked = sorted(runs, key=p99_of)
    return ranked[(len(ranked) - 1) // 2]


def load_runs(out: Path, res: dict) -> dict[tuple[str, str], dict[str, dict]]:
    """(config, workload id) -> system -> fjord-bench JSON (the representative
    repeat; None when no repeat wrote one)."""
    return {key: {s: representative(runs) for s, runs in by_sys.items()}
            for key, by_sys in load_repeats(out, res).items()}


def plot_all(out: Path, res: dict | None = None) -> dict[tuple[str, str], str]:
    """Draws every workload that has a plot; returns (config, id) -> path relative to out."""
    res = res or json.loads((out / "results.json").read_text())
    titles = {(cfg, w["id"]): (w["title"], w.get("plot", True)) for cfg, ws in res["workloads"].items() for w in ws}
    made = {}
    for (cfg, wid), runs in load_runs(out, res).items():
        title, wanted = titles.get((cfg, wid), (wid, True))
        if not wanted:
            continue
        rel = f"plots/{cfg}-{wid}.png"
        rate = next((r.get("rate") for r in res["runs"] if r["config"] == cfg and r["workload_id"] == wid
                     and r.get("rate")), None)
        full_title = f"[{cfg}] {wid}: {title}" + (f" — {rate:,} records/s" if rate else "")
        if plot_workload(out / rel, full_title, runs, rate):
            made[(cfg, wid)] = rel
    return made


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} RESULTS_DIR")
    for (cfg, wid), rel in plot_all(Path(sys.argv[1])).items():
        print(rel)

#!/usr/bin/env python3
"""report.md for a bench/compare results directory.

    python bench/report.py bench/results/<date>-<host>    # (re)writes report.md and plots/

Reads results.json (written by compare.py) and the raw fjord-bench JSON of
each run; every number in the report comes from those files, so a report can
be regenerated (or the generator improved) without running anything again.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import plot  # noqa: E402

SYS = ["kafka", "fjord"]
TITLE = {"kafka": "Apache Kafka", "fjord": "Fjord"}


# ---- formatting


def num(v, digits=0):
    if v is None:
        return "–"
    if isinstance(v, (int, float)):
        return f"{v:,.{digits}f}"
    return str(v)


def ms(v):
    if v is None:
        return "–"
    return f"{v:.3f}" if v < 1 else f"{v:.2f}" if v < 100 else f"{v:,.0f}"


def mib(kib):
    return "–" if kib is None else f"{kib / 1024:,.1f}"


def ratio(k, f):
    if k is None or f is None or not isinstance(k, (int, float)) or not isinstance(f, (int, float)):
        return "–"
    if k == 0:
        return "–" if f == 0 else "∞"
    return f"{f / k:.2f}×"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return out + [""]


def get(d: dict | None, *path):
    for p in path:
        if not isinstance(d, dict):
            return None
        d = d.get(p)
    return d


# ---- sections


def workload_rows(k: dict | None, f: dict | None, rk: dict, rf: dict) -> list[list[str]]:
    rows = []

    def row(name, path, fmt, raw=None):
        kv = raw(k) if raw else get(k, *path)
        fv = raw(f) if raw else get(f, *path)
        rows.append([name, fmt(kv), fmt(fv), ratio(kv, fv)])

    row("throughput, records/s", ("throughput", "records_per_sec"), num)
    row("throughput, MiB/s (record values)", ("throughput", "mb_per_sec"), lambda v: num(v, 1))
    for p, lab in (("p50", "p50"), ("p95", "p95"), ("p99", "p99"), ("p999", "p99.9"), ("max", "max")):
        row(f"send→ack {lab}, ms", ("latency_ms", "send_ack", p), ms)
    if get(k, "latency_ms", "e2e") or get(f, "latency_ms", "e2e"):
        for p in ("p50", "p95", "p99"):
            row(f"end-to-end {p}, ms", ("latency_ms", "e2e", p), ms)
    row("records sent / acknowledged", None, lambda v: v,
        raw=lambda d: None if d is None else f"{num(d.get('sent'))} / {num(d.get('acked'))}")
    rows[-1][3] = "–"
    if (k and k.get("workload") == "e2e") or (f and f.get("workload") == "e2e"):
        row("records consumed", ("consumed",), num)
    row("errors", None, lambda v: v, raw=lambda d: None if d is None else errors_text(d.get("errors")))
    rows[-1][3] = "–"
    row("lost", ("lost",), num)
    rows[-1][3] = "–"
    row("duplicated", ("duplicated",), num)
    rows[-1][3] = "–"
    row("broker CPU, seconds", ("broker", "cpu_seconds"), lambda v: num(v, 2))
    row("broker CPU per million records, s", None, lambda v: num(v, 2), raw=cpu_per_million)
    row("broker peak RSS, MiB", ("broker", "peak_rss_kib"), mib)
    for rec, d, col in ((rk, k, 1), (rf, f, 2)):
        if d is None and rec:
            for r in rows:
                r[col] = "failed" if r is rows[0] else "–"
    return rows


def errors_text(e) -> str:
    if not e:
        return "0"
    if isinstance(e, dict):
        return ", ".join(f"{k}: {v}" for k, v in e.items()) or "0"
    return str(e)


def cpu_per_million(d):
    cpu, n = get(d, "broker", "cpu_seconds"), get(d, "acked")
    if cpu is None or not n:
        return None
    return cpu / n * 1e6


def perf_section(res: dict) -> list[str]:
    perf = {(p["system"], p["tool"], p.get("acks")): p for p in res.get("perf", [])}
    if not perf:
        return []
    n = next(iter(perf.values()))["records"]
    md = ["## Kafka's own perf tools", "",
          f"`org.apache.kafka.tools.ProducerPerformance`: {n:,} records × 100 B, `--throughput -1`, "
          "one topic of 1 partition per acks setting, producer defaults otherwise (configuration A). "
          f"`ConsumerPerformance` then reads the {n:,} records of the acks=all topic "
          "with a new consumer group.", ""]
    rows = []

    def row(name, key, tool, acks, fmt):
        kv = get(perf.get(("kafka", tool, acks)), key)
        fv = get(perf.get(("fjord", tool, acks)), key)
        rows.append([name, fmt(kv), fmt(fv), ratio(kv, fv)])

    for acks in ("1", "all"):
        t = "ProducerPerformance"
        row(f"producer acks={acks}: records/s", "records_per_sec", t, acks, num)
        row(f"producer acks={acks}: MiB/s", "mb_per_sec", t, acks, lambda v: num(v, 2))
        for key, lab in (("avg_ms", "avg"), ("p50_ms", "p50"), ("p95_ms", "p95"), ("p99_ms", "p99"),
                         ("p999_ms", "p99.9"), ("max_ms", "max")):
            row(f"producer acks={acks}: latency {lab}, ms", key, t, acks, ms)
        row(f"producer acks={acks}: broker CPU, s", "broker_cpu_seconds", t, acks, lambda v: num(v, 2))
    t = "ConsumerPerformance"
    row("consumer: records/s", "records_per_sec", t, None, num)
    row("consumer: MiB/s", "mb_per_sec", t, None, lambda v: num(v, 2))
    row("consumer: records consumed", "records_consumed", t, None, num)
    row("consumer: fetch records/s (excl. group join)", "fetch_records_per_sec", t, None, num)
    row("consumer: group join (rebalance), ms", "rebalance_ms", t, None, num)
    row("consumer: broker CPU, s", "broker_cpu_seconds", t, None, lambda v: num(v, 2))
    md += table(["metric", "Apache Kafka", "Fjord", "Fjord/Kafka"], rows)
    errs = [f"- {TITLE[p['system']]} {p['tool']}{' acks=' + p['acks'] if p.get('acks') else ''}: {p['error']}"
            for p in res["perf"] if p.get("error")]
    return md + (errs + [""] if errs else [])


def startup_section(res: dict) -> list[str]:
    st = res.get("startup", {})
    k, f = st.get("kafka"), st.get("fjord")
    n = len(get(k, "first_produce_all_sec") or get(f, "first_produce_all_sec") or [])
    settle = get(k, "idle_settle_sec") or get(f, "idle_settle_sec")
    md = ["## Start-up and idle memory (configuration A)", "",
          "Start to first produce: after a first start that creates and formats the data directory, "
          f"the broker is stopped and started again {n} time(s) on the same data directory; each time "
          "the port is polled every 5 ms and, once it accepts connections, a one-record `fjord produce` "
          "(Fjord's own Kafka client, acks=all, to a topic auto-created on first use) is retried "
          "until one is acknowledged; the time is measured from the broker process's start "
          "(kernel start time of the pid: the JVM for Kafka) to that acknowledgement. Median shown. "
          f"Idle RSS: VmRSS of the broker process after {settle} s idle following the last start.", ""]

    def allv(d):
        v = get(d, "first_produce_all_sec")
        return "–" if not v else ", ".join(f"{x:.2f}" for x in v)

    rows = [
        ["start to first produce, s (median)", num(get(k, "first_produce_sec"), 2),
         num(get(f, "first_produce_sec"), 2), ratio(get(k, "first_produce_sec"), get(f, "first_produce_sec"))],
        ["start to first produce, s (each)", allv(k), allv(f), "–"],
        ["idle RSS, MiB", mib(get(k, "idle_rss_kib")), mib(get(f, "idle_rss_kib")),
         ratio(get(k, "idle_rss_kib"), get(f, "idle_rss_kib"))],
        ["idle CPU, % of one core", num(get(k, "idle_cpu_percent"), 1), num(get(f, "idle_cpu_percent"), 1),
         ratio(get(k, "idle_cpu_percent"), get(f, "idle_cpu_percent"))],
        ["threads", num(get(k, "threads")), num(get(f, "threads")), ratio(get(k, "threads"), get(f, "threads"))],
    ]
    vk, vf = get(res, "systems", "kafka", "vmhwm_kib_A"), get(res, "systems", "fjord", "vmhwm_kib_A")
    rows.append(["peak RSS over the whole configuration-A lifetime (VmHWM), MiB", mib(vk), mib(vf), ratio(vk, vf)])
    return md + table(["metric", "Apache Kafka", "Fjord", "Fjord/Kafka"], rows)


def targets_section(res: dict, data: dict, repeats: dict) -> list[str]:
    rows = []

    def check(name, kv, fv, limit, higher_better, fmt):
        if kv is None or fv is None or not kv:
            rows.append([name, fmt(kv), fmt(fv), "–", "NOT MEASURED"])
            return
        r = fv / kv
        ok = r >= limit if higher_better else r <= limit
        rows.append([name, fmt(kv), fmt(fv), f"{r:.2f}×", "**MET**" if ok else "**MISSED**"])

    t = data.get(("A", "tput-100B-acks1-p1"), {})
    check("throughput ≥ 1.5× Kafka (100 B, acks=1, 1 partition, 1 producer), records/s",
          get(t.get("kafka"), "throughput", "records_per_sec"), get(t.get("fjord"), "throughput", "records_per_sec"),
          1.5, True, num)
    for cfg, ws in res["workloads"].items():
        for w in ws:
            if "target-latency" not in w.get("tags", []):
                continue
            d = data.get((cfg, w["id"]), {})
            rate = next((r.get("rate") for r in res["runs"] if r["config"] == cfg and r["workload_id"] == w["id"]
                         and r.get("rate")), None)
            reps = f", median of {w['repeats']} runs" if w.get("repeats", 1) > 1 else ""
            check(f"p99 send→ack ≤ 0.5× Kafka at the same fixed rate ({w['id']}, "
                  f"{num(rate)} records/s{reps}), ms",
                  get(d.get("kafka"), "latency_ms", "send_ack", "p99"),
                  get(d.get("fjord"), "latency_ms", "send_ack", "p99"), 0.5, False, ms)
    st = res.get("startup", {})
    check("idle RSS ≤ 0.1× Kafka, MiB", get(st, "kafka", "idle_rss_kib"), get(st, "fjord", "idle_rss_kib"),
          0.1, False, mib)

    def loaded(sysk):
        v = [get(d.get(sysk), "broker", "peak_rss_kib") for (cfg, _), d in data.items() if cfg == "A"]
        v = [x for x in v if x]
        return max(v) if v else None

    check("loaded RSS ≤ 0.1× Kafka (highest peak RSS of the configuration-A runs), MiB",
          loaded("kafka"), loaded("fjord"), 0.1, False, mib)
    check("start to first produce ≤ 0.1× Kafka, s", get(st, "kafka", "first_produce_sec"),
          get(st, "fjord", "first_produce_sec"), 0.1, False, lambda v: num(v, 2))
    # Zero lost and duplicated, over every run of both systems; a run that
    # was planned but produced no result leaves the check incomplete.
    cells, failed = {}, 0
    planned = [(cfg, w["id"]) for cfg, ws in res["workloads"].items() for w in ws]
    for s in SYS:
        lost = dup = 0
        for cfg, wid in planned:
            # Every repeat counts, not only the one shown.
            runs = repeats.get((cfg, wid), {}).get(s) or []
            if not runs:
                failed += 1
                continue
            lost += sum(x.get("lost") or 0 for x in runs)
            dup += sum(x.get("duplicated") or 0 for x in runs)
        for p in res.get("perf", []):
            if p["system"] == s and p["tool"] == "ConsumerPerformance" and p.get("records_consumed") is not None:
                lost += max(0, p["records"] - p["records_consumed"])
        cells[s] = (lost, dup)
    bad = any(l or d for l, d in cells.values())
    status = "**MISSED**" if bad else (f"**INCOMPLETE** ({failed} run(s) without results)" if failed else "**MET**")
    failed += sum(1 for p in res.get("perf", []) if p["tool"] == "ConsumerPerformance" and not p.get("ok"))
    rows.append(["zero lost and duplicated records, every run",
                 "lost {}, duplicated {}".format(*cells["kafka"]), "lost {}, duplicated {}".format(*cells["fjord"]),
                 "–", status])
    return (["## Targets", "",
             "Fjord's targets against Apache Kafka measured in this run (configuration A unless stated)."
             " Ratio = Fjord/Kafka.", ""]
            + table(["target", "Apache Kafka", "Fjord", "ratio", "result"], rows))


def write_report(out: Path) -> Path:
    out = Path(out)
    res = json.loads((out / "results.json").read_text())
    data = plot.load_runs(out, res)
    repeats = plot.load_repeats(out, res)
    try:
        plots = plot.plot_all(out, res)
    except Exception as e:  # noqa: BLE001 - the tables are worth having without plots
        plots = {}
        res.setdefault("failures", []).append(f"plots: {e!r}")
    m, v = res.get("machine", {}), res.get("versions", {})
    md = [f"# Fjord vs Apache Kafka — {res.get('started', '')[:10]}, {m.get('host', '?')}", ""]
    md += [f"Command: `{res.get('command')}`"
           + (" (quick mode: short runs, a smoke test — not for quoting)" if res.get("quick") else "")
           + f"; suite `{res.get('suite')}`; started {res.get('started')}, finished {res.get('finished', '–')}"
           f" ({num(res.get('elapsed_sec'))} s).", ""]
    fails = res.get("failures", [])
    md += [f"**{len(fails)} failure(s)** — see [Failures](#failures)." if fails else "All runs completed.", ""]
    md += targets_section(res, data, repeats)

    md += ["## Machine", ""]
    md += table(["", ""], [
        ["CPU", m.get("cpu_model", "?")],
        ["cores", f"{m.get('cores_usable')} usable ({m.get('cores_online')} online)"],
        ["memory", f"{m.get('memory_gib')} GiB"],
        ["disk (data directories)", f"{m.get('data_dir')} on {m.get('data_fs')}; {m.get('disk')}; size/avail {m.get('df')}"],
        ["kernel", m.get("kernel", "?")],
        ["date", m.get("date", "?")],
        ["load average at start / end", f"{m.get('loadavg_start')} / {m.get('loadavg_end', '–')}"],
    ])
    md += ["## Versions", ""]
    md += table(["", ""], [
        ["Fjord commit", v.get("fjord_commit")],
        ["Apache Kafka", v.get("kafka")],
        ["JDK", v.get("jdk")],
        ["Kafka heap (KAFKA_HEAP_OPTS)", v.get("kafka_heap_opts")],
        ["rustc", v.get("rustc")],
        ["fjord-bench", v.get("fjord_bench")],
    ])

    md += ["## Durability configurations", ""]
    for cfg, d in res.get("durability", {}).items():
        md += [f"- **{d['title']}** — Apache Kafka: {d['kafka_desc']}. Fjord: {d['fjord_desc']}."]
    md += ["", res.get("durability_common", ""), ""]
    chk = get(res, "config_check", "kafka_B")
    if chk:
        md += [f"Check: a topic created on Kafka under B reports `flush.messages` = `{chk}`.", ""]

    md += ["## Matrix", "",
           "Not the full cross product (it would not fit the time budget): each dimension (record size, acks, "
           "partitions, workload, compression) is varied against the 100 B / acks=1 / 1 partition baseline. "
           "Each fixed rate is 50% of Apache Kafka's maximum throughput measured earlier in this run "
           "(same configuration, same record size and acks); both brokers run at that same rate. "
           "Each run uses a new topic (created beforehand with its partition count) and starts after `sync`.", ""]
    md += [f"- {line}" for line in res.get("matrix", [])]
    md += [""]
    for key, r in res.get("rates", {}).items():
        md += [f"- rate for `{key}`-based runs: **{num(r['rate'])} records/s** "
               f"({int(r['fraction'] * 100)}% of {num(r['kafka_max_records_per_sec'])}; {r['source']})"]
    md += [""]

    md += startup_section(res)

    ratio_note = ("Fjord/Kafka above 1 is better for throughput; below 1 is better for latency, CPU and memory. "
                  "Broker CPU = user+system time of the broker process during the run; peak RSS as reported by "
                  "fjord-bench for the broker pid.")
    for cfg, ws in res.get("workloads", {}).items():
        title = res["durability"][cfg]["title"]
        md += [f"## Workloads, configuration {title}", "", ratio_note, ""]
        for w in ws:
            d = data.get((cfg, w["id"]), {})
            # The first repeat's bookkeeping (rate, errors) stands for the workload.
            recs = {}
            for r in res["runs"]:
                if r["config"] == cfg and r["workload_id"] == w["id"]:
                    recs.setdefault(r["system"], r)
            if not recs:
                continue
            md += [f"### [{cfg}] `{w['id']}` — {w['title']}", ""]
            rate = next((r.get("rate") for r in recs.values() if r.get("rate")), None)
            size = w["record_size"]
            size = f"{size // 1024} KiB" if size % 1024 == 0 else f"{size} B"
            params = (f"{size} records, acks={w['acks']}, {w['partitions']} partition(s), "
                      f"{w['producers']} producer(s)"
                      + (f", consumer group of {w['consumers']}" if w.get("consumers") else "")
                      + (f", fixed rate {num(rate)} records/s" if rate else ", as fast as possible")
                      + f", {w['duration_sec']:g} s measured after {w['warmup_sec']:g} s warm-up.")
            md += [params, ""]
            rows = workload_rows(d.get("kafka"), d.get("fjord"), recs.get("kafka"), recs.get("fjord"))
            reps = repeats.get((cfg, w["id"]), {})
            if w.get("repeats", 1) > 1:
                md += [f"Run {w['repeats']} times; the columns show the repeat with the median send→ack p99, "
                       "the last rows every repeat.", ""]
                for name, fn in (("send→ack p99 of each repeat, ms", lambda r: ms(plot.p99_of(r))),
                                 ("records/s of each repeat",
                                  lambda r: num(get(r, "throughput", "records_per_sec")))):
                    rows.append([name] + [", ".join(fn(r) for r in reps.get(sk, [])) or "–" for sk in SYS] + ["–"])
            md += table(["metric", "Apache Kafka", "Fjord", "Fjord/Kafka"], rows)
            for r in res["runs"]:
                if r["config"] == cfg and r["workload_id"] == w["id"] and r.get("error"):
                    rep = f" (repeat {r['repeat']})" if w.get("repeats", 1) > 1 else ""
                    md += [f"- {TITLE[r['system']]}{rep}: {r['error']}"]
            if (cfg, w["id"]) in plots:
                md += ["", f"![{cfg} {w['id']}]({plots[(cfg, w['id'])]})", ""]

    md += perf_section(res)

    md += ["## Failures", ""]
    md += [f"- {f}" for f in fails] if fails else ["None."]
    md += ["", "## Files", "",
           "- `results.json`: everything above, with the exact command of every run.",
           "- `runs/<system>-<config>-<workload>[-r<repeat>].json`: fjord-bench's raw output.",
           "- `logs/`: the harness log, each run's output, the Java tools' output, the tail of each broker's log.",
           "- `plots/`: one PNG per workload.", ""]
    path = out / "report.md"
    path.write_text("\n".join(md))
    return path


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} RESULTS_DIR")
    print(write_report(Path(sys.argv[1])))

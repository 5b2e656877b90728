#!/usr/bin/env python3
"""Three Fjord nodes next to three Apache Kafka brokers, with faults.

    bench/compare --cluster                  # the whole comparison (~20 min on 2 cores)
    bench/compare --cluster --quick          # short runs, a smoke test (~8 min)
    bench/compare --cluster --only kill-leader,isolate-leader
    bench/compare --cluster --soak-minutes N # random faults for N minutes per system

Each system runs alone (Kafka first, then Fjord; never both at once) on fresh
data: scripts/kafka-cluster (three combined KRaft nodes: one controller quorum
of three) and scripts/fjord-cluster (three `fjord serve` processes). Both with
replication factor 3 and min.insync.replicas=2; neither syncs to disk before
acknowledging (Kafka's defaults; Fjord's log.fsync=interval): an acknowledged
record is in the memory of a majority.

For each system:
1. steady state, acks=all: max throughput at 100 B and 1 KiB (one producer,
   one partition), then p99 at a fixed rate of 50% of Kafka's 100 B maximum;
2. each fault schedule (bench/fault, hitting whichever node leads the
   measured partition at that moment): an e2e run at TARGET_RPS for
   DURATION_SEC, an idempotent acks=all producer and a consumer group, with
   fjord-bench's history checker (--check-offsets): the final read-back after
   the faults healed counts lost, unseen, duplicated, inconsistent offsets,
   non-monotonic offsets and records taken back; every fault's unavailability
   is the time until a record sent after it was acknowledged (and consumed).

Writes DIR/results.json, DIR/report.md, DIR/plots/*.png and every run's JSON.
Exit status 0 when Fjord showed no anomaly of any kind, 1 otherwise, 2 when
setup failed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
BENCH_BIN = REPO / "target" / "release" / "fjord-bench"
FAULT = BENCH_DIR / "fault"
SYSTEMS = {
    "kafka": {"script": REPO / "scripts" / "kafka-cluster", "base": int(os.environ.get("BENCH_KAFKA_BASE", "17092"))},
    "fjord": {"script": REPO / "scripts" / "fjord-cluster", "base": int(os.environ.get("BENCH_FJORD_BASE", "17592"))},
}
TITLES = {"kafka": "Apache Kafka", "fjord": "Fjord"}
COLORS = {"kafka": "#d62728", "fjord": "#1f77b4"}
START_TIMEOUT_S = 300
RUN_SLACK_S = 300

# Named schedules: (name, description, [(at_sec, fault command)]).
# The fault starts at 10 s; faults last FAULT_S.
FAULT_S = 10
# Producing time of the rolling-restart schedule (at least).
ROLLING_RESTART_SEC = 90


def schedules(fault_s: int) -> list[tuple[str, str, list[tuple[float, str]]]]:
    return [
        ("kill-leader", f"kill -9 the leader at 10 s, restart it {fault_s} s later",
         [(10, f"kill-leader {fault_s}")]),
        ("kill-follower", f"kill -9 a follower at 10 s, restart it {fault_s} s later",
         [(10, f"kill-follower {fault_s}")]),
        ("pause-leader", f"SIGSTOP the leader at 10 s, SIGCONT {fault_s} s later",
         [(10, f"pause-leader {fault_s}")]),
        ("isolate-leader", f"cut the leader off from the other nodes at 10 s for {fault_s} s (iptables on loopback; clients still reach it)",
         [(10, f"isolate-leader {fault_s}")]),
        ("rolling-restart", f"SIGTERM, restart and wait for node 1, 2, 3 in turn from 10 s, 5 s apart (this run lasts {ROLLING_RESTART_SEC} s or more)",
         [(10, "rolling-restart 5")]),
        ("leader-and-follower", f"the seeds' shape: kill -9 the leader at 10 s and a follower at {10 + 2 * fault_s} s, each restarted {fault_s} s later",
         [(10, f"kill-leader {fault_s}"), (10 + 2 * fault_s, f"kill-follower {fault_s}")]),
    ]


class Log:
    def __init__(self, path: Path):
        self.f = path.open("a")

    def __call__(self, msg: str) -> None:
        line = f"[{datetime.datetime.now():%H:%M:%S}] {msg}"
        print(line, flush=True)
        self.f.write(line + "\n")
        self.f.flush()


def port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


class Cluster:
    def __init__(self, name: str, workdir: Path, log: Log):
        self.name = name
        self.script = SYSTEMS[name]["script"]
        self.base = SYSTEMS[name]["base"]
        self.dir = workdir / f"{name}-cluster"
        self.log = log

    @property
    def bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{self.base + i}" for i in range(3))

    @property
    def env_spec(self) -> str:
        return f"{self.script} {self.dir}"

    def ports(self) -> list[int]:
        return [self.base + off + i for off in (0, 100, 200) for i in range(3)]

    def start(self) -> float:
        busy = [p for p in self.ports() if not port_free(p)]
        if busy:
            raise RuntimeError(f"ports in use for {self.name}: {busy}")
        shutil.rmtree(self.dir, ignore_errors=True)
        t = time.monotonic()
        subprocess.run([str(self.script), "start", str(self.dir), str(self.base)], check=True, timeout=START_TIMEOUT_S)
        return time.monotonic() - t

    def pids(self) -> list[int]:
        out = []
        for i in (1, 2, 3):
            r = subprocess.run([str(self.script), "pid", str(self.dir), str(i)], capture_output=True, text=True)
            if r.stdout.strip().isdigit():
                out.append(int(r.stdout.strip()))
        return out

    def rss_kib(self) -> list[int]:
        out = []
        for pid in self.pids():
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        out.append(int(line.split()[1]))
            except OSError:
                pass
        return out

    def heal(self) -> None:
        env = dict(os.environ, BENCH_CLUSTER=self.env_spec, BENCH_BOOTSTRAP=self.bootstrap, BENCH_TOPIC="-")
        subprocess.run([str(FAULT), "heal"], env=env, timeout=60, check=False)

    def ensure_up(self) -> None:
        """Restarts any node a fault left down (bounded)."""
        for i in (1, 2, 3):
            r = subprocess.run([str(self.script), "pid", str(self.dir), str(i)], capture_output=True, text=True)
            pid = r.stdout.strip()
            if not pid.isdigit() or not Path(f"/proc/{pid}").exists():
                self.log(f"{self.name}: node {i} is down after the run; restarting it")
                subprocess.run([str(self.script), "start-node", str(self.dir), str(i)], timeout=START_TIMEOUT_S, check=False)

    def stop(self) -> None:
        self.heal()
        subprocess.run([str(self.script), "stop", str(self.dir)], timeout=300, check=False)
        for pid in self.pids():  # anything that did not stop
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def bench(cluster: Cluster, out: Path, args: list[str], log: Log, timeout: float, env: dict | None = None) -> dict | None:
    cmd = [str(BENCH_BIN), "run", "--bootstrap", cluster.bootstrap, "--label", cluster.name, "--out", str(out),
           "--no-progress", "--replication-factor", "3", "--topic-config", "min.insync.replicas=2"]
    cmd += [a for pid in cluster.pids() for a in ("--broker-pid", str(pid))]
    cmd += args
    return run_bench(cluster, cmd, out, log, timeout, env)


def run_bench(cluster: Cluster, cmd: list[str], out: Path, log: Log, timeout: float, env: dict | None = None) -> dict | None:
    log("  $ " + " ".join(cmd[1:]))
    full_env = dict(os.environ, BENCH_CLUSTER=cluster.env_spec, FJORD_BENCH_BIN=str(BENCH_BIN), **(env or {}))
    with (out.with_suffix(".log")).open("w") as f:
        try:
            r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=timeout, env=full_env)
        except subprocess.TimeoutExpired:
            log(f"  timed out after {timeout:.0f} s")
            return None
    text = out.with_suffix(".log").read_text(errors="replace")
    for line in text.splitlines():
        if line.startswith(("  ", "FAILED")) and not line.startswith("  $"):
            log("  " + line.strip())
    if not out.exists():
        log(f"  no report (exit {r.returncode})")
        return None
    d = json.loads(out.read_text())
    d["_exit"] = r.returncode
    return d


def steady(cluster: Cluster, outdir: Path, log: Log, quick: bool, rate: float | None) -> dict:
    dur = "8" if quick else "20"
    res = {}
    for size in (100, 1024):
        d = bench(cluster, outdir / f"{cluster.name}-max-{size}.json",
                  ["--workload", "throughput", "--duration-sec", dur, "--warmup-sec", "2", "--record-size", str(size),
                   "--acks", "all"], log, float(dur) + RUN_SLACK_S)
        res[f"max_{size}"] = d
    if rate:
        d = bench(cluster, outdir / f"{cluster.name}-rate.json",
                  ["--workload", "rate", "--rate", f"{rate:.0f}", "--duration-sec", dur, "--warmup-sec", "2",
                   "--acks", "all"], log, float(dur) + RUN_SLACK_S)
        res["rate"] = d
    return res


def fault_run(cluster: Cluster, outdir: Path, log: Log, name: str, steps: list[tuple[float, str]],
              rps: float, duration: float) -> dict | None:
    sched = outdir / f"{cluster.name}-{name}.schedule"
    sched.write_text("".join(f"{at} {FAULT} {cmd}\n" for at, cmd in steps))
    d = bench(cluster, outdir / f"{cluster.name}-{name}.json",
              ["--workload", "e2e", "--rate", f"{rps:.0f}", "--duration-sec", f"{duration:.0f}", "--acks", "all",
               "--producer-prop", "enable.idempotence=true", "--check-offsets", "--allow-loss",
               "--fault-schedule", str(sched), "--verify-timeout-sec", "180"],
              log, duration + RUN_SLACK_S)
    cluster.heal()
    cluster.ensure_up()
    return d


def soak(cluster: Cluster, outdir: Path, log: Log, minutes: float, rps: float, seed: int) -> dict | None:
    """`fjord-bench soak`: random faults for `minutes`, drawn from `seed`."""
    out = outdir / f"{cluster.name}-soak.json"
    cmd = [str(BENCH_BIN), "soak", "--bootstrap", cluster.bootstrap, "--cluster", cluster.env_spec,
           "--minutes", f"{minutes:g}", "--rate", f"{rps:.0f}", "--seed", str(seed), "--fault-script", str(FAULT),
           "--label", cluster.name, "--out", str(out)]
    d = run_bench(cluster, cmd, out, log, minutes * 60 + 2 * RUN_SLACK_S)
    cluster.heal()
    cluster.ensure_up()
    return d


# --- report -----------------------------------------------------------------

def get(d, *keys):
    for k in keys:
        if d is None:
            return None
        d = d.get(k) if isinstance(d, dict) else None
    return d


def fmt(v, digits=0, unit=""):
    if v is None:
        return "-"
    return f"{v:,.{digits}f}{unit}"


def ratio(f, k, digits=2):
    if f is None or k is None or k == 0:
        return "-"
    return f"{f / k:.{digits}f}×"


def fault_marks(d) -> list[dict]:
    return [m for m in (get(d, "extra", "fault_marks") or [])]


def unavailability(d) -> tuple[float | None, float | None]:
    """Worst first-ack and first-consumed delay over the run's faults."""
    marks = [m for m in fault_marks(d) if m.get("kind") == "fault"]
    acks = [m.get("first_ack_ms") for m in marks]
    cons = [m.get("first_consumed_ms") for m in marks]
    worst = lambda xs: None if not xs or any(x is None for x in xs) else max(xs)  # noqa: E731
    return worst(acks), worst(cons)


def plot(outdir: Path, name: str, runs: dict[str, dict]) -> str | None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(3, 1, figsize=(10, 9), sharex=True)
    for sysname, d in runs.items():
        if not d:
            continue
        tl = d.get("timeline") or []
        ts = [e["t"] + 0.5 for e in tl]
        c = COLORS[sysname]
        axes[0].plot(ts, [e.get("acked", 0) for e in tl], color=c, label=f"{TITLES[sysname]} acknowledged/s")
        axes[0].plot(ts, [e.get("consumed", 0) for e in tl], color=c, ls=":", label=f"{TITLES[sysname]} consumed/s")
        axes[1].plot(ts, [e.get("send_ack_avg_ms") for e in tl], color=c, label=f"{TITLES[sysname]} publish avg")
        axes[1].plot(ts, [e.get("e2e_avg_ms") for e in tl], color=c, ls=":", label=f"{TITLES[sysname]} end-to-end avg")
        axes[2].plot(ts, [e.get("send_ack_p95_ms") for e in tl], color=c, label=f"{TITLES[sysname]} publish p95")
        axes[2].plot(ts, [e.get("e2e_p95_ms") for e in tl], color=c, ls=":", label=f"{TITLES[sysname]} end-to-end p95")
        for m in fault_marks(d):
            for ax in axes:
                ax.axvline(m["t"], color=c, alpha=0.5, ls="--" if m.get("kind") == "fault" else "-.", lw=1)
    axes[0].set_ylabel("records/s")
    axes[1].set_ylabel("ms (log)")
    axes[2].set_ylabel("ms (log)")
    for ax in axes[1:]:
        ax.set_yscale("log")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper right")
    axes[2].set_xlabel("seconds (dashed: fault starts; dash-dot: fault ends; colour: system)")
    fig.suptitle(f"{name}: throughput, average and p95 latency over time")
    fig.tight_layout()
    (outdir / "plots").mkdir(exist_ok=True)
    path = outdir / "plots" / f"{name}.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return f"plots/{name}.png"


def write_report(outdir: Path, res: dict) -> Path:
    L = []
    L.append(f"# Fjord and Apache Kafka, three nodes each, with faults ({res['date']})\n")
    L.append(f"Machine: {res['machine']}. Commit {res['commit']}. Command: `{res['command']}`.\n")
    L.append("Both clusters: three nodes on loopback, replication factor 3, `min.insync.replicas=2`; "
             "Kafka: three combined KRaft nodes (one controller quorum of three), "
             f"heap {res['kafka_heap']} each; Fjord: three `fjord serve` nodes. Durability: neither syncs "
             "to disk before acknowledging (Kafka's defaults, flush on the OS's schedule; Fjord's "
             "`log.fsync=interval`, 1 s): an acknowledged record is in memory on a majority. "
             "Clients: librdkafka (fjord-bench), `acks=all`, idempotent producer in the fault runs. "
             f"Fault runs: {res['rps']:.0f} records/s of 100 B for {res['duration']:.0f} s with a consumer group, "
             "faults from bench/fault on whichever node leads the measured partition then (found from Metadata). "
             "Isolation: iptables rules on loopback (the victim's process in a cgroup of its own) dropping "
             "its node-to-node traffic; clients still reach it.\n")
    L.append("## Steady state (acks=all, RF 3, one producer, one partition)\n")
    L.append("| | Apache Kafka | Fjord | Fjord / Kafka |")
    L.append("|---|---:|---:|---:|")
    for size in (100, 1024):
        k = get(res, "kafka", "steady", f"max_{size}", "throughput", "records_per_sec")
        f = get(res, "fjord", "steady", f"max_{size}", "throughput", "records_per_sec")
        L.append(f"| max throughput, {size} B (records/s) | {fmt(k)} | {fmt(f)} | {ratio(f, k)} |")
    rate = res.get("fixed_rate")
    for q in ("p50", "p99", "p999"):
        k = get(res, "kafka", "steady", "rate", "latency_ms", "send_ack", q)
        f = get(res, "fjord", "steady", "rate", "latency_ms", "send_ack", q)
        L.append(f"| {q} send→ack at {fmt(rate)} records/s (50% of Kafka's max), ms | {fmt(k, 2)} | {fmt(f, 2)} | {ratio(f, k)} |")
    k = get(res, "kafka", "peak_rss_kib")
    f = get(res, "fjord", "peak_rss_kib")
    kk = max(k) / 1024 if k else None
    ff = max(f) / 1024 if f else None
    L.append(f"| peak RSS per node, MiB (largest of three, whole benchmark) | {fmt(kk, 1)} | {fmt(ff, 1)} | {ratio(ff, kk, 3)} |")
    ks = get(res, "kafka", "start_sec")
    fs = get(res, "fjord", "start_sec")
    L.append(f"| cluster start to every node listing all three, s | {fmt(ks, 1)} | {fmt(fs, 1)} | {ratio(fs, ks)} |")
    L.append("")
    L.append("## Faults\n")
    L.append("Unavailability: from the fault to the acknowledgement (and to the consumption) of the first "
             "record sent after it. Anomalies from the final read-back after the faults healed "
             "(lost / unseen / duplicated / inconsistent offsets / non-monotonic offsets / taken back); "
             "`redelivered` counts records the consumer group was given twice after a rebalance "
             "(at-least-once, not an anomaly).\n")
    L.append("| schedule | system | unavailable: first ack (ms) | first consumed (ms) | publish p50 / p99 / p99.9 (ms) | end-to-end p50 / p99 / p99.9 (ms) | errors | acked / sent | lost | unseen | dup | inconsistent | non-monotonic | taken back | redelivered |")
    L.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, desc, _ in res["schedules"]:
        for sysname in ("kafka", "fjord"):
            d = get(res, sysname, "faults", name)
            if d is None:
                L.append(f"| {name} | {TITLES[sysname]} | run failed | | | | | | | | | | | | |")
                continue
            marks = [m for m in fault_marks(d) if m.get("kind") == "fault"]
            fa = " / ".join(fmt(m.get("first_ack_ms")) for m in marks) or "-"
            fc = " / ".join(fmt(m.get("first_consumed_ms")) for m in marks) or "-"
            sa = get(d, "latency_ms", "send_ack") or {}
            e2 = get(d, "latency_ms", "e2e") or {}
            a = get(d, "extra", "anomalies") or {}
            errs = sum((d.get("errors") or {}).values())
            L.append(f"| {name} | {TITLES[sysname]} | {fa} | {fc} | {fmt(sa.get('p50'), 1)} / {fmt(sa.get('p99'), 0)} / {fmt(sa.get('p999'), 0)} "
                     f"| {fmt(e2.get('p50'), 1)} / {fmt(e2.get('p99'), 0)} / {fmt(e2.get('p999'), 0)} | {errs} | {d.get('acked')} / {d.get('sent')} "
                     f"| {a.get('lost', '-')} | {a.get('unseen', '-')} | {a.get('duplicated', '-')} | {a.get('inconsistent_offsets', '-')} "
                     f"| {a.get('nonmonotonic_offsets', '-')} | {a.get('taken_back', '-')} | {a.get('redelivered', '-')} |")
    L.append("")
    L.append("Several numbers in one cell are the schedule's faults in order (a rolling restart is three).\n")
    L.append("### Kill -9 of a leader: the target\n")
    k = unavailability(get(res, "kafka", "faults", "kill-leader"))[0]
    f = unavailability(get(res, "fjord", "faults", "kill-leader"))[0]
    L.append(f"Fjord {fmt(f)} ms, Kafka {fmt(k)} ms: {ratio(f, k)} (target ≤ 0.2× and under 1 s).\n")
    L.append("## Schedules and plots\n")
    for name, desc, _ in res["schedules"]:
        L.append(f"### {name}\n\n{desc}.\n")
        p = res.get("plots", {}).get(name)
        if p:
            L.append(f"![{name}]({p})\n")
        for sysname in ("kafka", "fjord"):
            d = get(res, sysname, "faults", name)
            for m in fault_marks(d):
                L.append(f"- {TITLES[sysname]} @{m['t']:.2f} s: {m.get('what')}"
                         + (f" — first ack after {fmt(m.get('first_ack_ms'))} ms, first consumed after {fmt(m.get('first_consumed_ms'))} ms"
                            if m.get("kind") == "fault" else ""))
        L.append("")
    path = outdir / "report.md"
    path.write_text("\n".join(L) + "\n")
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cluster", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--only", help="comma-separated schedules (default: all)")
    ap.add_argument("--systems", default="kafka,fjord")
    ap.add_argument("--no-steady", action="store_true", help="skip the steady-state runs")
    ap.add_argument("--soak-minutes", type=float, help="instead of the schedules: random faults for N minutes")
    ap.add_argument("--seed", type=int, default=int(time.time()))
    args = ap.parse_args()

    rps = float(os.environ.get("TARGET_RPS", "5000"))
    duration = float(os.environ.get("DURATION_SEC", "30" if args.quick else "45"))
    fault_s = 5 if args.quick else FAULT_S
    if args.quick:
        duration = min(duration, 30)
    day = datetime.date.today().isoformat()
    out = args.out
    if out is None:
        n = 1
        while (out := BENCH_DIR / "results" / f"{day}-vm-cluster{'' if n == 1 else '-' + str(n)}").exists():
            n += 1
    out.mkdir(parents=True, exist_ok=True)
    runs = out / "runs"
    runs.mkdir(exist_ok=True)
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"fjord-bench-cluster-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    log = Log(out / "bench.log")

    if os.geteuid() != 0:
        log("warning: not root: the isolate-leader schedule needs iptables and cgroups")
    if not args.no_build:
        log("building fjord and fjord-bench (release)")
        subprocess.run(["cargo", "build", "--release", "--bin", "fjord", "--bin", "fjord-bench"], cwd=REPO, check=True,
                       timeout=45 * 60)
    if shutil.which("iptables") is None:
        log("installing iptables (the isolate-leader schedule)")
        subprocess.run(["bash", "-c", "apt-get install -y iptables >/dev/null 2>&1 || "
                        "(apt-get update >/dev/null 2>&1 && apt-get install -y iptables >/dev/null 2>&1)"],
                       timeout=600, check=False)
    subprocess.run([str(REPO / "scripts" / "kafka-dist")], check=True, timeout=15 * 60, stdout=subprocess.DEVNULL)

    all_sched = schedules(fault_s)
    if args.only:
        wanted = set(args.only.split(","))
        all_sched = [s for s in all_sched if s[0] in wanted]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    res: dict = {
        "date": day, "commit": commit, "rps": rps, "duration": duration,
        "command": "bench/compare --cluster " + " ".join(sys.argv[2 if len(sys.argv) > 1 and sys.argv[1] == '--cluster' else 1:]),
        "machine": f"{os.cpu_count()} cores, {round(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30)} GiB",
        "kafka_heap": os.environ.get("KAFKA_HEAP_OPTS", "-Xmx512m -Xms512m"),
        "schedules": [(n, d, s) for n, d, s in all_sched],
    }
    if args.soak_minutes:
        res["schedules"] = [("soak", f"random faults for {args.soak_minutes:g} min (seed {args.seed})", [])]
    fixed_rate = None
    for sysname in args.systems.split(","):
        cluster = Cluster(sysname, work, log)
        log(f"== {TITLES[sysname]}: starting three nodes")
        try:
            res.setdefault(sysname, {})["start_sec"] = cluster.start()
        except Exception as e:  # noqa: BLE001
            log(f"could not start the {sysname} cluster: {e}")
            cluster.stop()
            return 2
        try:
            peak: list[int] = []
            if not args.no_steady and not args.soak_minutes:
                if fixed_rate is None and sysname == "kafka":
                    st = steady(cluster, runs, log, args.quick, None)
                    kmax = get(st, "max_100", "throughput", "records_per_sec")
                    fixed_rate = kmax * 0.5 if kmax else None
                    if fixed_rate:
                        st.update(steady_rate(cluster, runs, log, args.quick, fixed_rate))
                else:
                    st = steady(cluster, runs, log, args.quick, fixed_rate)
                res[sysname]["steady"] = st
                peak += cluster.rss_kib()
            res["fixed_rate"] = fixed_rate
            res[sysname]["faults"] = {}
            if args.soak_minutes:
                res[sysname]["faults"]["soak"] = soak(cluster, runs, log, args.soak_minutes, rps, args.seed)
            else:
                for name, desc, steps in all_sched:
                    log(f"== {TITLES[sysname]}: {name} ({desc})")
                    # The high-water marks of the nodes a fault run may replace.
                    peak += cluster.rss_kib()
                    # Three restarts, each waiting for its node (Kafka's take
                    # 15 s or more): the run lasts until the last is back.
                    run_for = max(duration, ROLLING_RESTART_SEC) if name == "rolling-restart" else duration
                    res[sysname]["faults"][name] = fault_run(cluster, runs, log, name, steps, rps, run_for)
            peak += cluster.rss_kib()
            # VmHWM of every node process the benchmark ran (a restarted
            # node is a new process with its own).
            res[sysname]["peak_rss_kib"] = peak or None
        finally:
            log(f"== {TITLES[sysname]}: stopping")
            cluster.stop()
    res["plots"] = {}
    for name, _, _ in res["schedules"]:
        p = plot(out, name, {s: get(res, s, "faults", name) for s in ("kafka", "fjord")})
        if p:
            res["plots"][name] = p
    (out / "results.json").write_text(json.dumps(res, indent=1, default=str) + "\n")
    report = write_report(out, res)
    log(f"report: {report}")
    bad = 0
    for name, d in (res.get("fjord", {}).get("faults") or {}).items():
        a = get(d, "extra", "anomalies")
        if d is None or a is None or sum(a.get(k, 0) for k in ("lost", "duplicated", "inconsistent_offsets", "nonmonotonic_offsets", "taken_back")) > 0:
            log(f"Fjord: anomalies or a failed run in {name}")
            bad += 1
    if bad:
        log(f"node logs kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if bad else 0


def steady_rate(cluster: Cluster, outdir: Path, log: Log, quick: bool, rate: float) -> dict:
    dur = "8" if quick else "20"
    d = bench(cluster, outdir / f"{cluster.name}-rate.json",
              ["--workload", "rate", "--rate", f"{rate:.0f}", "--duration-sec", dur, "--warmup-sec", "2", "--acks", "all"],
              log, float(dur) + RUN_SLACK_S)
    return {"rate": d}


if __name__ == "__main__":
    sys.exit(main())

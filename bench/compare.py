#!/usr/bin/env python3
"""The side-by-side benchmark: Apache Kafka, then Fjord, one after the other.

Run through `bench/compare` (which provides a venv with matplotlib). For each
broker and each durability configuration this starts the broker on a fresh
data directory, measures start-to-first-produce and idle memory, runs the
suite with `fjord-bench run ... --broker-pid PID`, runs Kafka's own
ProducerPerformance / ConsumerPerformance against it, and stops it. Then it
writes results.json (everything measured, with the exact commands) and hands
the directory to report.py, which writes report.md and the plots.

One decision shapes the order: the fixed-rate latency runs use 50% of
*Apache Kafka's* maximum throughput measured in this same run, so Kafka goes
first and both systems are measured at the same rate.

Every external step has a time limit; brokers we started are stopped on any
exit (normal, error, Ctrl-C, SIGTERM).
"""

from __future__ import annotations

import argparse
import atexit
import datetime as dt
import json
import os
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
CACHE = Path(os.environ.get("FJORD_CACHE", Path.home() / ".cache" / "fjord"))

# Loopback ports. Kafka also uses KAFKA_PORT + 1 for its controller listener.
# They sit below Linux's ephemeral range (32768-60999): polling a port in that
# range while nothing listens can connect a socket to itself (TCP simultaneous
# open), which then holds the port and makes the broker's bind fail.
KAFKA_PORT = int(os.environ.get("BENCH_KAFKA_PORT", "29092"))
FJORD_PORT = int(os.environ.get("BENCH_FJORD_PORT", "29192"))

# Time limits (seconds) for the steps that are not a timed workload.
BUILD_TIMEOUT_S = 45 * 60
KAFKA_DIST_TIMEOUT_S = 15 * 60
BROKER_START_TIMEOUT_S = 180
BROKER_STOP_TIMEOUT_S = 90
FIRST_PRODUCE_TIMEOUT_S = 120
PROBE_TIMEOUT_S = 5  # one produce attempt of the start-up probe
ADMIN_TIMEOUT_S = 60  # topic create / describe
SYNC_TIMEOUT_S = 120
# A workload's limit is its own length plus this: fjord-bench waits up to
# 60 s for a group assignment and 120 s to read the topic back.
RUN_SLACK_S = 240
JAVA_TOOL_TIMEOUT_S = 300

# Configuration A is what both brokers do out of the box; B acknowledges only
# what is on disk. Kafka's broker-level name for the topic config
# `flush.messages` is `log.flush.interval.messages` (a bare `flush.messages`
# line in server.properties is ignored as an unknown broker config).
DURABILITY = {
    "A": {
        "title": "A: flush on interval",
        "kafka_props": "",
        "kafka_desc": "Kafka defaults: acknowledged from the page cache; no explicit fsync "
        "(log.flush.interval.messages/ms unset), the OS writes back dirty pages; fsync at segment roll",
        "fjord_args": ["--fsync", "interval"],
        "fjord_desc": "Fjord default `--fsync interval`: acknowledged from the page cache; "
        "fsync every log.flush.interval.ms = 1000 ms",
    },
    "B": {
        "title": "B: sync before ack",
        "kafka_props": "log.flush.interval.messages=1",
        "kafka_desc": "`log.flush.interval.messages=1` (topic config flush.messages=1): "
        "fsync after every appended batch, before the acknowledgement",
        "fjord_args": ["--fsync", "always"],
        "fjord_desc": "`--fsync always`: fsync every append before acknowledging it",
    },
}
COMMON_DESC = (
    "Both: single node on 127.0.0.1, replication factor 1, min.insync.replicas=1 "
    "(so acks=all waits for the leader's own append, as acks=1 does, plus the durability rule above), "
    "group.initial.rebalance.delay.ms=0, fresh data directory on the same disk."
)

SYSTEMS = [
    {"key": "kafka", "title": "Apache Kafka"},
    {"key": "fjord", "title": "Fjord"},
]


# --------------------------------------------------------------------------
# The suite


@dataclass
class Workload:
    """One fjord-bench run, done identically against both brokers."""

    id: str
    workload: str  # throughput | rate | e2e
    title: str
    record_size: int
    acks: str
    partitions: int
    duration_sec: float
    warmup_sec: float = 0.0
    producers: int = 1
    consumers: int = 0  # > 0: e2e with a consumer group
    # Fixed-rate runs: either a literal rate or 50% of Kafka's result for the
    # throughput workload named here (same configuration).
    rate: int | None = None
    rate_from: str | None = None
    rate_fraction: float = 0.5
    plot: bool = True
    tags: list[str] = field(default_factory=list)
    # Fixed-rate latency is noisy on a shared machine: such runs are repeated
    # and the report shows the repeat with the median p99 (and every p99).
    repeats: int = 1
    # The producer's compression.type (fjord-bench --compression).
    compression: str = "none"


def compressed_suffix(compression: str) -> str:
    """", lz4-compressed" for a compressed workload, nothing otherwise."""
    return f", {compression}-compressed" if compression != "none" else ""


@dataclass
class Suite:
    name: str
    quick: bool
    workloads: dict[str, list[Workload]]  # durability config -> workloads
    perf_records: int
    startup_repeats: int
    idle_settle_sec: float

    def describe(self) -> list[str]:
        lines = []
        for cfg, ws in self.workloads.items():
            for w in ws:
                rate = ""
                if w.rate_from:
                    rate = f", rate {int(w.rate_fraction * 100)}% of Kafka's `{w.rate_from}`"
                elif w.rate:
                    rate = f", rate {w.rate} rec/s"
                cons = f", consumer group of {w.consumers}" if w.consumers else ""
                reps = f", {w.repeats} repeats" if w.repeats > 1 else ""
                comp = compressed_suffix(w.compression)
                lines.append(
                    f"{cfg} `{w.id}`: {w.workload}, {size_name(w.record_size)}, acks={w.acks}, "
                    f"{w.partitions} partition(s), {w.producers} producer(s){comp}{cons}{rate}, "
                    f"{w.duration_sec:g} s (+{w.warmup_sec:g} s warm-up){reps}"
                )
        return lines


def build_suite(name: str, quick: bool) -> Suite:
    """The matrix. Not the full cross product of sizes x acks x partitions x
    workloads (that would not fit in 15 minutes on 2 cores): every dimension is
    varied at least once against the baseline 100 B / acks=1 / 1 partition."""
    if name != "default":
        raise SystemExit(f"unknown suite {name!r} (known: default)")
    tput_s, warm_s = (2, 1) if quick else (12, 2)
    rate_s = 3 if quick else 10
    rate_repeats = 1 if quick else 3
    seed_rps = int(os.environ.get("TARGET_RPS", "5000"))
    seed_s = float(os.environ.get("DURATION_SEC", "4" if quick else "30"))

    def tput(id_, size, acks, parts, tags=(), compression="none"):
        return Workload(
            id=id_, workload="throughput", title=f"max throughput, {size_name(size)}, acks={acks}, "
            f"{parts} partition{'s' if parts > 1 else ''}{compressed_suffix(compression)}", record_size=size, acks=acks,
            partitions=parts, duration_sec=tput_s, warmup_sec=warm_s, tags=list(tags),
            compression=compression)

    a = [
        tput("tput-100B-acks1-p1", 100, "1", 1, tags=["target-throughput"]),
        tput("tput-100B-acksall-p1", 100, "all", 1),
        tput("tput-100B-acks1-p8", 100, "1", 8),
        tput("tput-1KiB-acks1-p1", 1024, "1", 1),
        # What the broker pays to decompress and validate every record (both do).
        tput("tput-1KiB-acks1-p1-lz4", 1024, "1", 1, compression="lz4"),
        tput("tput-1KiB-acksall-p8", 1024, "all", 8),
        Workload(id="rate-100B-acks1-p1", workload="rate",
                 title="fixed rate (50% of Kafka's max), 100 B, acks=1, 1 partition",
                 record_size=100, acks="1", partitions=1, duration_sec=rate_s, warmup_sec=1,
                 rate_from="tput-100B-acks1-p1", tags=["target-latency"], repeats=rate_repeats),
        Workload(id="rate-100B-acksall-p1", workload="rate",
                 title="fixed rate (50% of Kafka's max), 100 B, acks=all, 1 partition",
                 record_size=100, acks="all", partitions=1, duration_sec=rate_s, warmup_sec=1,
                 rate_from="tput-100B-acksall-p1", tags=["target-latency"], repeats=rate_repeats),
        Workload(id="e2e-100B-acksall-p8", workload="e2e",
                 title="end to end at a fixed rate (50% of Kafka's max acks=all), 100 B, acks=all, "
                 "8 partitions, group of 2 consumers",
                 record_size=100, acks="all", partitions=8, duration_sec=rate_s, warmup_sec=1,
                 consumers=2, rate_from="tput-100B-acksall-p1"),
        Workload(id="e2e-seed", workload="e2e",
                 title=f"end to end at TARGET_RPS={seed_rps} for DURATION_SEC={seed_s:g}, 100 B, "
                 "acks=all, 1 partition, group of 1 consumer",
                 record_size=100, acks="all", partitions=1, duration_sec=seed_s, warmup_sec=0,
                 consumers=1, rate=seed_rps),
    ]
    b = [
        tput("tput-100B-acksall-p1", 100, "all", 1),
        Workload(id="rate-100B-acksall-p1", workload="rate",
                 title="fixed rate (50% of Kafka's max under B), 100 B, acks=all, 1 partition",
                 record_size=100, acks="all", partitions=1, duration_sec=rate_s, warmup_sec=1,
                 rate_from="tput-100B-acksall-p1", repeats=rate_repeats),
    ]
    return Suite(
        name=name, quick=quick, workloads={"A": a, "B": b},
        perf_records=50_000 if quick else 1_000_000,
        startup_repeats=1 if quick else 3,
        idle_settle_sec=3 if quick else 5,
    )


def size_name(n: int) -> str:
    return f"{n // 1024} KiB" if n % 1024 == 0 else f"{n} B"


# --------------------------------------------------------------------------
# Small helpers


class Log:
    def __init__(self) -> None:
        self.file = None
        self.t0 = time.monotonic()

    def open(self, path: Path) -> None:
        self.file = open(path, "a", buffering=1)

    def __call__(self, msg: str) -> None:
        line = f"[{time.monotonic() - self.t0:7.1f}s] {msg}"
        print(line, flush=True)
        if self.file:
            self.file.write(line + "\n")


log = Log()


def run(cmd, timeout, check=True, env=None, cwd=None, capture=True, stdout=None):
    """subprocess.run with a time limit, logged; returns CompletedProcess."""
    log(f"$ {shlex.join(str(c) for c in cmd)}")
    kw = dict(timeout=timeout, env=env, cwd=cwd, text=True)
    if stdout is not None:
        kw.update(stdout=stdout, stderr=subprocess.STDOUT)
    elif capture:
        kw.update(capture_output=True)
    p = subprocess.run([str(c) for c in cmd], **kw)
    if check and p.returncode != 0:
        out = ((p.stdout or "") + (p.stderr or "")).strip()[-3000:] if capture and stdout is None else ""
        raise StepFailed(f"{Path(str(cmd[0])).name} exited {p.returncode}: {out}")
    return p


class StepFailed(Exception):
    pass


CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_start_boottime(pid: int) -> float:
    """Start of a process in seconds on CLOCK_BOOTTIME (from /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[19]) / CLK_TCK  # field 22 of stat; index 19 after "(comm)"


def proc_cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except OSError:
        return None


def proc_status_kib(pid: int, key: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:  # a zombie is not alive
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def sh_out(cmd: str) -> str:
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=20).stdout.strip()
    except Exception as e:  # noqa: BLE001 - machine info is best effort
        return f"(unavailable: {e})"


def tail_copy(src: Path, dst: Path, max_bytes: int = 1 << 20) -> None:
    try:
        with open(src, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            dst.write_bytes(f.read())
    except OSError:
        pass


# --------------------------------------------------------------------------
# Brokers


class Broker:
    """A broker we start and stop; `pid` is the process whose CPU and memory
    we measure (the JVM for Kafka, the fjord process for Fjord)."""

    key = ""
    title = ""

    def __init__(self, h: "Harness", cfg: str, workdir: Path, port: int) -> None:
        self.h, self.cfg, self.dir, self.port = h, cfg, workdir, port
        self.pid: int | None = None
        self.bootstrap = f"127.0.0.1:{port}"

    # start(): brings the broker up on a fresh dir, ready to serve.
    # launch(): starts the process on an existing (already formatted) dir, no wait.
    def start(self) -> None: ...
    def launch(self) -> int: ...
    def stop(self) -> None: ...

    def kill(self) -> None:
        """Last resort on exit: TERM, a short wait, KILL."""
        if not alive(self.pid):
            return
        try:
            os.kill(self.pid, signal.SIGTERM)
            for _ in range(100):
                if not alive(self.pid):
                    return
                time.sleep(0.2)
            os.kill(self.pid, signal.SIGKILL)
        except OSError:
            pass

    def _term_and_wait(self) -> None:
        if not alive(self.pid):
            return
        os.kill(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + BROKER_STOP_TIMEOUT_S
        while alive(self.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if alive(self.pid):
            log(f"{self.title} did not stop in {BROKER_STOP_TIMEOUT_S} s; SIGKILL")
            os.kill(self.pid, signal.SIGKILL)


class KafkaBroker(Broker):
    key, title = "kafka", "Apache Kafka"

    def __init__(self, h, cfg, workdir, port):
        super().__init__(h, cfg, workdir, port)
        self.cmdline: list[str] | None = None
        self.environ: dict[str, str] | None = None

    def env(self):
        env = dict(os.environ)
        env["KAFKA_EXTRA_PROPS"] = DURABILITY[self.cfg]["kafka_props"]
        return env

    def start(self) -> None:
        # scripts/kafka-server formats the directory, starts the JVM and
        # waits until it answers a metadata request.
        run([REPO / "scripts/kafka-server", "start", self.dir, self.port],
            timeout=BROKER_START_TIMEOUT_S, env=self.env())
        self.pid = int((self.dir / "kafka.pid").read_text())
        # Remember the exact command line so that the start-up measurement can
        # relaunch the same JVM without the script's readiness loop, which
        # starts a JVM every half second and would compete for the CPU.
        self.cmdline = Path(f"/proc/{self.pid}/cmdline").read_bytes().rstrip(b"\0").decode().split("\0")
        self.environ = {
            k.decode(): v.decode(errors="replace")
            for k, _, v in (kv.partition(b"=") for kv in Path(f"/proc/{self.pid}/environ").read_bytes().split(b"\0") if kv)
        }

    def launch(self) -> int:
        assert self.cmdline, "start() first"
        out = open(self.dir / "kafka.out", "ab")
        p = subprocess.Popen(self.cmdline, stdout=out, stderr=subprocess.STDOUT, env=self.environ,
                             stdin=subprocess.DEVNULL, start_new_session=True)
        self.pid = p.pid
        # Reap the JVM as soon as it exits: scripts/kafka-server stop waits
        # for the pid to disappear, and an unreaped zombie never does.
        threading.Thread(target=p.wait, daemon=True).start()
        (self.dir / "kafka.pid").write_text(f"{p.pid}\n")
        return p.pid

    def stop(self) -> None:
        run([REPO / "scripts/kafka-server", "stop", self.dir], timeout=BROKER_STOP_TIMEOUT_S, check=False)
        self._term_and_wait()  # in case the pid file was not ours any more

    def kill(self) -> None:
        super().kill()
        (self.dir / "kafka.pid").unlink(missing_ok=True)

    def log_file(self) -> Path:
        return self.dir / "kafka.out"


class FjordBroker(Broker):
    key, title = "fjord", "Fjord"

    def launch(self) -> int:
        args = [
            self.h.fjord_bin, "serve",
            "--listeners", f"PLAINTEXT://{self.bootstrap}",
            "--log-dirs", self.dir / "data",
            *DURABILITY[self.cfg]["fjord_args"],
            "--override", "group.initial.rebalance.delay.ms=0",
        ]
        self.cmdline = [str(a) for a in args]
        log(f"$ {shlex.join(self.cmdline)} &")
        out = open(self.dir / "fjord.log", "ab")
        # The broker reads every FJORD_* variable as a property
        # (FJORD_LOG_RETENTION_MS=...), so none of ours may reach it.
        env = {k: v for k, v in os.environ.items() if not k.startswith("FJORD_")}
        env.setdefault("RUST_LOG", "info")
        p = subprocess.Popen(self.cmdline, stdout=out, stderr=subprocess.STDOUT, env=env,
                             stdin=subprocess.DEVNULL, start_new_session=True)
        self.pid = p.pid
        self.proc = p
        return p.pid

    def start(self) -> None:
        # A fresh directory needs no formatting: the broker is ready when it
        # first acknowledges a produce.
        pid = self.launch()
        self.fresh_start_sec = self.h.first_produce(self, pid)

    def stop(self) -> None:
        self._term_and_wait()
        if getattr(self, "proc", None):
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass

    def log_file(self) -> Path:
        return self.dir / "fjord.log"


# --------------------------------------------------------------------------
# The harness


class Harness:
    def __init__(self, args) -> None:
        self.args = args
        self.suite = build_suite(args.suite, args.quick)
        stamp = dt.datetime.now().strftime("%Y-%m-%d")
        host = socket.gethostname().split(".")[0]
        if args.out:
            self.out = Path(args.out).resolve()
        else:
            base = BENCH_DIR / "results" / f"{stamp}-{host}{'-quick' if args.quick else ''}"
            self.out = base
            n = 2
            while self.out.exists():
                self.out = Path(f"{base}-{n}")
                n += 1
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "runs").mkdir(exist_ok=True)
        (self.out / "logs").mkdir(exist_ok=True)
        log.open(self.out / "logs" / "compare.log")
        self.data_root = Path(os.environ.get("BENCH_DATA_DIR", CACHE / "bench-data")).resolve()
        self.fjord_bin = REPO / "target/release/fjord"
        self.bench_bin = Path(os.environ.get("FJORD_BENCH_BIN", REPO / "target/release/fjord-bench"))
        self.kafka_lib: Path | None = None
        self.brokers: list[Broker] = []  # every broker object, for cleanup
        self.results: dict = {
            "schema": 1,
            "suite": args.suite,
            "quick": args.quick,
            "command": shlex.join(["bench/compare", *sys.argv[1:]]),
            "started": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "durability": {k: {kk: vv for kk, vv in v.items() if kk != "fjord_args"} for k, v in DURABILITY.items()},
            "durability_common": COMMON_DESC,
            "matrix": self.suite.describe(),
            "workloads": {cfg: [w.__dict__ for w in ws] for cfg, ws in self.suite.workloads.items()},
            "systems": {s["key"]: {"title": s["title"]} for s in SYSTEMS},
            "runs": [],
            "perf": [],
            "startup": {},
            "failures": [],
            "rates": {},
        }

    # ---- bookkeeping

    def fail(self, what: str, err: object) -> None:
        msg = f"{what}: {err}"
        log(f"FAILED {msg}")
        self.results["failures"].append(msg)

    def save(self) -> None:
        tmp = self.out / "results.json.tmp"
        tmp.write_text(json.dumps(self.results, indent=1, default=str))
        tmp.replace(self.out / "results.json")

    def cleanup(self) -> None:
        for b in self.brokers:
            if alive(b.pid):
                log(f"cleanup: stopping {b.title} (pid {b.pid})")
                b.kill()

    # ---- setup

    def setup(self) -> None:
        for port in (KAFKA_PORT, KAFKA_PORT + 1, FJORD_PORT):
            if not port_free(port):
                raise StepFailed(f"port {port} on 127.0.0.1 is in use (set BENCH_KAFKA_PORT / BENCH_FJORD_PORT)")
        if not self.args.no_build:
            run(["cargo", "build", "--release", "-p", "fjord", "-p", "fjord-bench"],
                timeout=BUILD_TIMEOUT_S, cwd=REPO, capture=False)
        for b in (self.fjord_bin, self.bench_bin):
            if not os.access(b, os.X_OK):
                raise StepFailed(f"{b} is missing (build it, or drop --no-build)")
        lib = run([REPO / "scripts/kafka-dist"], timeout=KAFKA_DIST_TIMEOUT_S).stdout.strip().splitlines()[-1]
        self.kafka_lib = Path(lib)
        self.kafka_dist = self.kafka_lib.parent
        self.data_root.mkdir(parents=True, exist_ok=True)
        self.results["machine"] = self.machine_info()
        self.results["versions"] = self.versions()
        self.save()

    def machine_info(self) -> dict:
        cpu = sh_out("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-").strip()
        mem_kib = proc_status_kib_meminfo("MemTotal")
        src = sh_out(f"findmnt -n -o SOURCE,FSTYPE -T {shlex.quote(str(self.data_root))}")
        dev = src.split()[0] if src else ""
        disk = self.disk_info(dev)
        return {
            "host": socket.gethostname(),
            "cpu_model": cpu,
            "cores_online": os.cpu_count(),
            "cores_usable": len(os.sched_getaffinity(0)),
            "memory_gib": round(mem_kib / 1048576, 1) if mem_kib else None,
            "data_dir": str(self.data_root),
            "data_fs": src,
            "disk": disk,
            "df": sh_out(f"df -h --output=size,avail {shlex.quote(str(self.data_root))} | tail -1"),
            "kernel": sh_out("uname -srm"),
            "date": sh_out("date -R"),
            "loadavg_start": loadavg(),
        }

    @staticmethod
    def disk_info(dev: str) -> str:
        """The whole disk under a partition (or the device itself): name, size,
        rotational or not, model."""
        parent = sh_out(f"lsblk -no PKNAME {shlex.quote(dev)} 2>/dev/null | head -1")
        target = f"/dev/{parent}" if parent and not parent.startswith("(") else dev
        pairs = dict(re.findall(r'(\w+)="([^"]*)"', sh_out(f"lsblk -dP -o NAME,SIZE,ROTA,MODEL,TRAN {shlex.quote(target)}")))
        if not pairs:
            return "?"
        kind = "rotational" if pairs.get("ROTA") == "1" else "non-rotational (SSD/NVMe)"
        return ", ".join(x for x in (pairs.get("NAME"), pairs.get("SIZE"), f"{kind} per the kernel",
                                     pairs.get("MODEL", "").strip() or "model not reported",
                                     pairs.get("TRAN")) if x)

    def versions(self) -> dict:
        commit = sh_out(f"git -C {shlex.quote(str(REPO))} rev-parse --short=12 HEAD")
        dirty = sh_out(f"git -C {shlex.quote(str(REPO))} status --porcelain --untracked-files=no")
        jars = sorted(self.kafka_lib.glob("kafka-clients-*.jar"))
        kver = jars[0].name[len("kafka-clients-"):-4] if jars else os.environ.get("KAFKA_VERSION", "?")
        java = subprocess.run(["java", "-version"], capture_output=True, text=True, timeout=30).stderr.strip().splitlines()
        return {
            "fjord_commit": commit + (" (with uncommitted changes)" if dirty else ""),
            "kafka": kver,
            "jdk": " / ".join(java[:2]),
            "rustc": sh_out("rustc --version"),
            "kafka_heap_opts": os.environ.get("KAFKA_HEAP_OPTS", "-Xmx1G -Xms1G (scripts/kafka-server default)"),
            "fjord_bench": sh_out(f"{shlex.quote(str(self.bench_bin))} --version 2>/dev/null") or "?",
        }

    # ---- start-up measurement

    def probe_once(self, bootstrap: str) -> bool:
        """One small produce (acks=all) through Fjord's own Kafka client, which
        works against both brokers; True when it was acknowledged."""
        cmd = [str(self.fjord_bin), "produce", "--bootstrap-server", bootstrap, "--topic", "startup-probe",
               "--message", "x", "--connect-timeout-ms", "1000", "--request-timeout-ms", "3000"]
        try:
            p = subprocess.run(cmd, capture_output=True, timeout=PROBE_TIMEOUT_S)
            return p.returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def first_produce(self, b: Broker, pid: int) -> float:
        """Seconds from the broker process's start (kernel start time of the
        pid) to the first acknowledged produce."""
        t_start = proc_start_boottime(pid)
        deadline = time.monotonic() + FIRST_PRODUCE_TIMEOUT_S
        attempts = 0
        while time.monotonic() < deadline:
            if not alive(pid):
                raise StepFailed(f"{b.title} exited during start-up (see {b.log_file()})")
            # Polling the port is nearly free; a produce attempt starts a
            # process, so it is only tried once the listener accepts.
            if port_free(b.port):
                time.sleep(0.005)
                continue
            attempts += 1
            if self.probe_once(b.bootstrap):
                secs = time.clock_gettime(time.CLOCK_BOOTTIME) - t_start
                log(f"{b.title}: first produce acknowledged {secs:.2f} s after process start ({attempts} attempts)")
                return secs
            time.sleep(0.02)
        raise StepFailed(f"{b.title}: no successful produce within {FIRST_PRODUCE_TIMEOUT_S} s")

    def measure_startup(self, b: Broker) -> dict:
        """After a first start (which formats the data directory): restart the
        broker `startup_repeats` times, timing start-to-first-produce; after the
        last one, wait for it to settle and read its idle memory."""
        times = []
        for i in range(self.suite.startup_repeats):
            b.stop()
            self.sync()
            pid = b.launch()
            log(f"{b.title}: relaunched as pid {pid} for start-up measurement {i + 1}/{self.suite.startup_repeats}")
            times.append(self.first_produce(b, pid))
        settle = self.suite.idle_settle_sec
        cpu0 = proc_cpu_seconds(b.pid)
        time.sleep(settle)
        cpu1 = proc_cpu_seconds(b.pid)
        rss = proc_status_kib(b.pid, "VmRSS")
        res = {
            "first_produce_sec": statistics.median(times),
            "first_produce_all_sec": times,
            "idle_rss_kib": rss,
            "idle_settle_sec": settle,
            "idle_cpu_percent": None if cpu0 is None or cpu1 is None else 100 * (cpu1 - cpu0) / settle,
            "threads": proc_status_kib(b.pid, "Threads"),
            "cmdline": b.cmdline,
        }
        log(f"{b.title}: start-to-first-produce median {res['first_produce_sec']:.2f} s, idle RSS {rss} KiB")
        return res

    # ---- runs

    def sync(self) -> None:
        """Write back dirty pages so one run does not pay for the last one's."""
        try:
            subprocess.run(["sync"], timeout=SYNC_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            log("sync did not finish in time")

    def create_topic(self, b: Broker, topic: str, partitions: int) -> None:
        run([self.fjord_bin, "topic", "create", topic, "--partitions", partitions,
             "--bootstrap-server", b.bootstrap, "--replication-factor", 1], timeout=ADMIN_TIMEOUT_S)

    def rate_for(self, cfg: str, w: Workload) -> int:
        if w.rate:
            return w.rate
        key = f"{cfg}/{w.rate_from}"
        if key in self.results["rates"]:
            return self.results["rates"][key]["rate"]
        base = None
        for r in self.results["runs"]:
            if r["system"] == "kafka" and r["config"] == cfg and r["workload_id"] == w.rate_from and r.get("ok"):
                base = r["summary"]["records_per_sec"]
        if base:
            rate = max(100, int(base * w.rate_fraction))
            self.results["rates"][key] = {"rate": rate, "kafka_max_records_per_sec": base,
                                          "fraction": w.rate_fraction, "source": "measured"}
        else:
            rate = 20_000
            self.results["rates"][key] = {"rate": rate, "kafka_max_records_per_sec": None,
                                          "fraction": w.rate_fraction,
                                          "source": "fallback: Kafka's throughput run did not succeed"}
            self.fail(f"rate for {cfg}/{w.id}", f"no Kafka result for {w.rate_from}; using {rate} rec/s")
        log(f"rate for {cfg} {w.rate_from}-based runs: {rate} rec/s")
        return rate

    def run_workload(self, b: Broker, cfg: str, w: Workload) -> None:
        for repeat in range(1, w.repeats + 1):
            self.run_workload_once(b, cfg, w, repeat)

    def run_workload_once(self, b: Broker, cfg: str, w: Workload, repeat: int) -> None:
        suffix = f"-r{repeat}" if w.repeats > 1 else ""
        name = f"{b.key}-{cfg}-{w.id}{suffix}"
        out = self.out / "runs" / f"{name}.json"
        topic = f"bench-{cfg}-{w.id}{suffix}".lower()
        rec = {"system": b.key, "config": cfg, "workload_id": w.id, "workload": w.workload,
               "title": w.title, "file": f"runs/{name}.json", "ok": False, "repeat": repeat}
        self.results["runs"].append(rec)
        try:
            if not alive(b.pid):
                raise StepFailed(f"{b.title} is not running")
            self.sync()
            self.create_topic(b, topic, w.partitions)
            cmd = [self.bench_bin, "run", "--bootstrap", b.bootstrap, "--workload", w.workload,
                   "--label", f"{b.title} [{cfg}] {w.id}", "--out", out, "--topic", topic,
                   "--partitions", w.partitions, "--record-size", w.record_size, "--acks", w.acks,
                   "--producers", w.producers, "--duration-sec", f"{w.duration_sec:g}",
                   "--warmup-sec", f"{w.warmup_sec:g}", "--broker-pid", b.pid, "--no-progress",
                   "--compression", w.compression]
            if w.workload in ("rate", "e2e"):
                rate = self.rate_for(cfg, w)
                rec["rate"] = rate
                cmd += ["--rate", rate]
            if w.consumers:
                cmd += ["--group", f"{topic}-{b.key}-group", "--consumers", w.consumers]
            rec["command"] = shlex.join(str(c) for c in cmd)
            # fjord-bench reads DURATION_SEC / TARGET_RPS as defaults; every
            # run here says what it wants on the command line instead.
            env = {k: v for k, v in os.environ.items() if k not in ("DURATION_SEC", "TARGET_RPS")}
            with open(self.out / "logs" / f"{name}.log", "w") as lf:
                p = run(cmd, timeout=w.duration_sec + w.warmup_sec + RUN_SLACK_S, check=False, stdout=lf, env=env)
            rec["exit_code"] = p.returncode
            if not out.exists():
                raise StepFailed(f"fjord-bench exited {p.returncode} and wrote no {out.name} "
                                 f"(see logs/{name}.log)")
            data = json.loads(out.read_text())
            rec["summary"] = summarize(data)
            s = rec["summary"]
            log(f"{b.title} [{cfg}] {w.id}{suffix}: {s['records_per_sec']:.0f} rec/s, "
                f"p99 send->ack {fmt_opt(s['send_ack_p99'])} ms, e2e p99 {fmt_opt(s['e2e_p99'])} ms, "
                f"errors {s['errors']}, lost {s['lost']}, dup {s['duplicated']}")
            # fjord-bench: 0 = checked, nothing lost or duplicated; 1 = records
            # lost or duplicated; 2 = the run itself failed.
            if s["lost"] or s["duplicated"] or p.returncode == 1:
                rec["ok"] = True  # the run happened; its numbers are reported
                self.fail(f"{b.title} [{cfg}] {w.id}", f"fjord-bench exited {p.returncode}: lost {s['lost']}, "
                          f"duplicated {s['duplicated']} (see logs/{name}.log)")
            elif p.returncode != 0:
                raise StepFailed(f"fjord-bench exited {p.returncode} (see logs/{name}.log)")
            else:
                rec["ok"] = True
            if get_path(data, "extra", "verification", "complete") is False:
                self.fail(f"{b.title} [{cfg}] {w.id}", "fjord-bench could not read every record back: "
                          "loss and duplicates are not fully checked")
        except (StepFailed, subprocess.TimeoutExpired, ValueError, OSError) as e:
            rec["error"] = str(e)
            self.fail(f"{b.title} [{cfg}] {w.id}", e)
        finally:
            self.save()

    # ---- Kafka's own perf tools

    def java_tool(self, cls: str, args: list, timeout: int, logname: str) -> str:
        cmd = ["java", f"-Dlog4j2.configurationFile={self.kafka_dist / 'log4j2.yaml'}", "-cp",
               f"{self.kafka_lib}/*", cls, *args]
        with open(self.out / "logs" / logname, "w") as lf:
            p = run(cmd, timeout=timeout, check=False, stdout=lf)
        text = (self.out / "logs" / logname).read_text()
        if p.returncode != 0:
            raise StepFailed(f"{cls.rsplit('.', 1)[1]} exited {p.returncode}: {text.strip()[-1500:]}")
        return text

    def run_perf_tools(self, b: Broker, cfg: str) -> None:
        n = self.suite.perf_records
        for acks in ("1", "all"):
            topic = f"perf-producer-acks{acks}"
            rec = {"system": b.key, "config": cfg, "tool": "ProducerPerformance", "acks": acks,
                   "records": n, "record_size": 100, "topic": topic, "ok": False}
            self.results["perf"].append(rec)
            try:
                self.sync()
                self.create_topic(b, topic, 1)
                cpu0 = proc_cpu_seconds(b.pid)
                args = ["--bootstrap-server", b.bootstrap, "--topic", topic, "--num-records", n,
                        "--record-size", 100, "--throughput", -1, "--command-property", f"acks={acks}"]
                rec["command"] = "kafka-producer-perf-test " + shlex.join(str(a) for a in args)
                text = self.java_tool("org.apache.kafka.tools.ProducerPerformance", args, JAVA_TOOL_TIMEOUT_S,
                                      f"{b.key}-{cfg}-producer-perf-acks{acks}.log")
                rec.update(parse_producer_perf(text))
                rec["broker_cpu_seconds"] = _delta(cpu0, proc_cpu_seconds(b.pid))
                rec["ok"] = rec.get("records_sent") == n
                if not rec["ok"]:
                    raise StepFailed(f"sent {rec.get('records_sent')} of {n} records")
                log(f"{b.title} ProducerPerformance acks={acks}: {rec['records_per_sec']:.0f} rec/s, "
                    f"p99 {rec['p99_ms']} ms")
            except (StepFailed, subprocess.TimeoutExpired, OSError) as e:
                rec["error"] = str(e)
                self.fail(f"{b.title} [{cfg}] ProducerPerformance acks={acks}", e)
            self.save()
        # Read back the acks=all topic: every record must arrive.
        topic = "perf-producer-acksall"
        rec = {"system": b.key, "config": cfg, "tool": "ConsumerPerformance", "records": n, "topic": topic,
               "ok": False}
        self.results["perf"].append(rec)
        try:
            self.sync()
            cpu0 = proc_cpu_seconds(b.pid)
            args = ["--bootstrap-server", b.bootstrap, "--topic", topic, "--num-records", n,
                    "--timeout", 30000, "--group", f"perf-consumer-{b.key}"]
            rec["command"] = "kafka-consumer-perf-test " + shlex.join(str(a) for a in args)
            text = self.java_tool("org.apache.kafka.tools.ConsumerPerformance", args, JAVA_TOOL_TIMEOUT_S,
                                  f"{b.key}-{cfg}-consumer-perf.log")
            rec.update(parse_consumer_perf(text))
            rec["broker_cpu_seconds"] = _delta(cpu0, proc_cpu_seconds(b.pid))
            got = rec.get("records_consumed")
            rec["ok"] = got == n
            if not rec["ok"]:
                raise StepFailed(f"consumed {got} of {n} records")
            log(f"{b.title} ConsumerPerformance: {rec['records_per_sec']:.0f} rec/s")
        except (StepFailed, subprocess.TimeoutExpired, OSError) as e:
            rec["error"] = str(e)
            self.fail(f"{b.title} [{cfg}] ConsumerPerformance", e)
        self.save()

    # ---- one broker, one configuration

    def run_system(self, system: dict, cfg: str) -> None:
        key = system["key"]
        workdir = self.data_root / f"{key}-{cfg}"
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir(parents=True)
        cls = KafkaBroker if key == "kafka" else FjordBroker
        b = cls(self, cfg, workdir, KAFKA_PORT if key == "kafka" else FJORD_PORT)
        self.brokers.append(b)
        log(f"=== {b.title}, configuration {DURABILITY[cfg]['title']} ===")
        try:
            self.sync()
            b.start()
            log(f"{b.title} up, pid {b.pid}")
            if cfg == "A":
                st = self.measure_startup(b)
                if getattr(b, "fresh_start_sec", None) is not None:
                    st["fresh_dir_first_produce_sec"] = b.fresh_start_sec
                self.results["startup"][key] = st
                self.save()
            if cfg == "B" and key == "kafka":
                self.results.setdefault("config_check", {})["kafka_B"] = self.kafka_flush_check(b)
            for w in self.suite.workloads[cfg]:
                self.run_workload(b, cfg, w)
            if cfg == "A":
                self.run_perf_tools(b, cfg)
            self.results["systems"][key][f"vmhwm_kib_{cfg}"] = proc_status_kib(b.pid, "VmHWM")
        except (StepFailed, subprocess.TimeoutExpired, OSError) as e:
            self.fail(f"{b.title} [{cfg}]", e)
        finally:
            log(f"stopping {b.title}")
            try:
                b.stop()
            except (StepFailed, subprocess.TimeoutExpired, OSError) as e:
                self.fail(f"stopping {b.title}", e)
                b.kill()
            tail_copy(b.log_file(), self.out / "logs" / f"{key}-{cfg}-broker.log")
            if not self.args.keep_data:
                shutil.rmtree(workdir, ignore_errors=True)
            self.save()

    def kafka_flush_check(self, b: Broker) -> str:
        """Show that configuration B's flush setting reached Kafka's topics."""
        topic = "config-check"
        try:
            self.create_topic(b, topic, 1)
            p = run([self.fjord_bin, "topic", "describe", topic, "--all-configs", "--bootstrap-server",
                     b.bootstrap], timeout=ADMIN_TIMEOUT_S, check=False)
            m = re.search(r"(?<![\w.])flush\.messages=([^,\s]+)", p.stdout)
            val = m.group(1) if m else "(not shown by fjord topic describe)"
            log(f"Kafka [B] topic config flush.messages = {val}")
            return val
        except (StepFailed, subprocess.TimeoutExpired) as e:
            return f"(check failed: {e})"

    def main(self) -> int:
        t0 = time.monotonic()
        try:
            self.setup()
        except (StepFailed, subprocess.TimeoutExpired, OSError) as e:
            self.fail("setup", e)
            self.save()
            return 2
        for system in SYSTEMS:
            for cfg in self.suite.workloads:
                self.run_system(system, cfg)
        self.results["finished"] = dt.datetime.now().astimezone().isoformat(timespec="seconds")
        self.results["elapsed_sec"] = round(time.monotonic() - t0, 1)
        self.results.setdefault("machine", {})["loadavg_end"] = loadavg()
        self.save()
        try:
            import report  # bench/report.py

            report.write_report(self.out)
            log(f"report: {self.out / 'report.md'}")
        except Exception as e:  # noqa: BLE001 - the raw results are still there
            self.fail("report", repr(e))
            self.save()
        lost = sum((r.get("summary") or {}).get("lost") or 0 for r in self.results["runs"])
        dup = sum((r.get("summary") or {}).get("duplicated") or 0 for r in self.results["runs"])
        log(f"done in {self.results['elapsed_sec']:.0f} s; {len(self.results['failures'])} failure(s), "
            f"lost {lost}, duplicated {dup}; results in {self.out}")
        return 1 if self.results["failures"] else 0


# --------------------------------------------------------------------------
# Parsing


def fmt_opt(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def get_path(d, *keys):
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def _delta(a, b):
    return None if a is None or b is None else round(b - a, 2)


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def proc_status_kib_meminfo(key: str) -> int | None:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return None


def summarize(d: dict) -> dict:
    """The numbers the report and the exit status need, from fjord-bench JSON."""
    lat = d.get("latency_ms") or {}
    sa = lat.get("send_ack") or {}
    e2e = lat.get("e2e") or {}
    tp = d.get("throughput") or {}
    br = d.get("broker") or {}
    errors = d.get("errors") or {}
    return {
        "records_per_sec": tp.get("records_per_sec") or 0.0,
        "mb_per_sec": tp.get("mb_per_sec"),
        "send_ack_p99": sa.get("p99"),
        "e2e_p99": e2e.get("p99"),
        "errors": sum(errors.values()) if isinstance(errors, dict) else errors,
        "lost": d.get("lost") or 0,
        "duplicated": d.get("duplicated") or 0,
        "broker_cpu_seconds": br.get("cpu_seconds"),
        "broker_peak_rss_kib": br.get("peak_rss_kib"),
    }


PP_RE = re.compile(
    r"(\d+) records sent, ([\d.]+) records/sec \(([\d.]+) MB/sec\), ([\d.]+) ms avg latency, "
    r"([\d.]+) ms max latency, (\d+) ms 50th, (\d+) ms 95th, (\d+) ms 99th, (\d+) ms 99\.9th")


def parse_producer_perf(text: str) -> dict:
    """The final summary line of ProducerPerformance."""
    m = None
    for m in PP_RE.finditer(text):
        pass
    if not m:
        raise StepFailed(f"no summary line in ProducerPerformance output: {text.strip()[-800:]}")
    g = m.groups()
    return {"records_sent": int(g[0]), "records_per_sec": float(g[1]), "mb_per_sec": float(g[2]),
            "avg_ms": float(g[3]), "max_ms": float(g[4]), "p50_ms": int(g[5]), "p95_ms": int(g[6]),
            "p99_ms": int(g[7]), "p999_ms": int(g[8])}


def parse_consumer_perf(text: str) -> dict:
    """ConsumerPerformance prints a CSV header (start.time, end.time,
    data.consumed.in.MB, MB.sec, data.consumed.in.nMsg, nMsg.sec,
    rebalance.time.ms, fetch.time.ms, fetch.MB.sec, fetch.nMsg.sec) and one
    line of values."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("start.time") and i + 1 < len(lines):
            names = [c.strip() for c in line.split(",")]
            vals = [c.strip() for c in lines[i + 1].split(",")]
            row = dict(zip(names, vals))
            try:
                return {
                    "mb_consumed": float(row["data.consumed.in.MB"]),
                    "mb_per_sec": float(row["MB.sec"]),
                    "records_consumed": int(row["data.consumed.in.nMsg"]),
                    "records_per_sec": float(row["nMsg.sec"]),
                    "rebalance_ms": int(row.get("rebalance.time.ms", 0)),
                    "fetch_ms": int(row.get("fetch.time.ms", 0)),
                    "fetch_records_per_sec": float(row.get("fetch.nMsg.sec", 0)),
                    "warning": next((l for l in lines if "WARNING" in l), None),
                }
            except (KeyError, ValueError) as e:
                raise StepFailed(f"cannot parse ConsumerPerformance output ({e}): {text.strip()[-800:]}")
    raise StepFailed(f"no result in ConsumerPerformance output: {text.strip()[-800:]}")


# --------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(prog="bench/compare", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short runs (~3-4 minutes): a smoke test of the whole path")
    ap.add_argument("--suite", default="default", help="workload matrix (default: default)")
    ap.add_argument("--out", help="results directory (default: bench/results/<date>-<host>[-quick])")
    ap.add_argument("--no-build", action="store_true", help="use the binaries already in target/release")
    ap.add_argument("--keep-data", action="store_true", help="keep the brokers' data directories")
    args = ap.parse_args()

    h = Harness(args)
    atexit.register(h.cleanup)

    def on_signal(signum, _frame):
        log(f"signal {signum}: stopping")
        h.cleanup()
        sys.exit(128 + signum)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    sys.path.insert(0, str(BENCH_DIR))
    return h.main()


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""CPU an idle Fjord cluster uses per node, holding many replicated partitions.

    bench/idle_cpu.py [--nodes 3] [--partitions 1000] [--replication-factor 3]
                      [--seconds 30] [--fjord target/release/fjord] [--out FILE.json]

Starts `fjord dev-cluster` on loopback (its own ports and a temporary data
folder), creates one topic with the partitions, waits until `fjord topic
describe` shows a leader for every partition, lets the cluster settle, then
reads each node's CPU time (utime + stime in /proc/PID/stat) at the start
and end of the window and prints the share of one core each node used.
Stops the cluster (Ctrl-C to dev-cluster, which SIGTERMs every node) at the
end, whatever happens. Every wait is bounded.
"""

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is the state (field 3); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--partitions", type=int, default=1000)
    ap.add_argument("--replication-factor", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--settle", type=float, default=10, help="idle seconds before measuring")
    ap.add_argument("--base-port", type=int, default=29192)
    ap.add_argument("--fjord", default="target/release/fjord")
    ap.add_argument("--out")
    args = ap.parse_args()

    data = tempfile.mkdtemp(prefix="fjord-idle-")
    cluster = subprocess.Popen(
        [args.fjord, "dev-cluster", "--nodes", str(args.nodes), "--base-port",
         str(args.base_port), "--dir", data],
        stdout=subprocess.PIPE, text=True)
    pids = {}
    bootstrap = None
    try:
        deadline = time.time() + 120
        while bootstrap is None:
            if time.time() > deadline:
                sys.exit("dev-cluster did not come up")
            line = cluster.stdout.readline()
            if not line:
                sys.exit(f"dev-cluster exited: {cluster.wait()}")
            m = re.match(r"node (\d+): pid (\d+)", line)
            if m:
                pids[int(m.group(1))] = int(m.group(2))
            m = re.match(r"cluster up: bootstrap.servers=(\S+)", line)
            if m:
                bootstrap = m.group(1)
        print(f"cluster up: {bootstrap}; pids {pids}", flush=True)
        created = time.time()
        subprocess.run(
            [args.fjord, "topic", "create", "idle", "--partitions", str(args.partitions),
             "--replication-factor", str(args.replication_factor),
             "--bootstrap-server", bootstrap],
            check=True, timeout=300)
        deadline = time.time() + 300
        while True:
            out = subprocess.run(
                [args.fjord, "topic", "describe", "idle", "--bootstrap-server", bootstrap],
                capture_output=True, text=True, timeout=60).stdout
            led = len(re.findall(r"leader\s*[:=]?\s*[1-9]", out, re.I))
            if led >= args.partitions:
                break
            if time.time() > deadline:
                sys.exit(f"only {led} of {args.partitions} partitions have a leader")
            time.sleep(1)
        print(f"{args.partitions} partitions led after {time.time() - created:.1f} s; "
              f"settling {args.settle:.0f} s", flush=True)
        time.sleep(args.settle)
        start = {n: cpu_seconds(p) for n, p in pids.items()}
        t0 = time.time()
        time.sleep(args.seconds)
        elapsed = time.time() - t0
        result = {
            "nodes": args.nodes,
            "partitions": args.partitions,
            "replication_factor": args.replication_factor,
            "seconds": round(elapsed, 1),
            "cpu_percent_of_one_core": {
                n: round(100 * (cpu_seconds(p) - start[n]) / elapsed, 2) for n, p in pids.items()
            },
            "rss_mib": {n: round(rss_mib(p), 1) for n, p in pids.items()},
        }
        print(json.dumps(result, indent=2))
        if args.out:
            with open(args.out, "w") as f:
                json.dump(result, f, indent=2)
    finally:
        cluster.send_signal(signal.SIGINT)
        try:
            cluster.wait(timeout=120)
        except subprocess.TimeoutExpired:
            for p in pids.values():
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            cluster.kill()
        subprocess.run(["rm", "-rf", data])


if __name__ == "__main__":
    main()

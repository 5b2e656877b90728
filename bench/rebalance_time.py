#!/usr/bin/env python3
"""How long a consumer group takes to rebalance when a fourth member joins.

    python bench/rebalance_time.py --bootstrap 127.0.0.1:9092 [--rounds 3]

Needs confluent-kafka (librdkafka); compat-tests/run installs it in
${FJORD_CACHE:-~/.cache/fjord}/compat-venv, so
`~/.cache/fjord/compat-venv/bin/python bench/rebalance_time.py ...` works
after a compat run. Works against any Kafka-protocol broker.

Each round: a new topic with 12 partitions and a producer writing to every
partition; three consumers (separate processes, librdkafka's default settings
apart from group.id and auto.offset.reset) join one group and each start
receiving records; then a fourth process subscribes. The time measured runs
from just before the fourth member's first poll (which sends its JoinGroup)
until every one of the four members has received its new assignment and a
record from it. With default settings most of it is the other members
noticing the rebalance on their next heartbeat (heartbeat.interval.ms = 3000).

Prints one line per round and the median, and writes JSON with --out.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import sys
import threading
import time
import uuid

PARTITIONS = 12
MEMBERS_BEFORE = 3
PRODUCE_INTERVAL_S = 0.002  # ~500 records/s spread over the partitions
ROUND_TIMEOUT_S = 120
SETTLE_TIMEOUT_S = 120


def member(index: int, bootstrap: str, topic: str, group: str, events, stop) -> None:
    """One group member: reports when it joins, gets partitions and receives records."""
    from confluent_kafka import Consumer

    state = {"generation_assigned_at": None, "reported_record": False}

    def on_assign(consumer, partitions):
        state["generation_assigned_at"] = time.time()
        state["reported_record"] = False
        events.put(("assigned", index, state["generation_assigned_at"], len(partitions)))

    def on_revoke(consumer, partitions):
        events.put(("revoked", index, time.time(), len(partitions)))

    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "auto.offset.reset": "latest",
    })
    events.put(("joining", index, time.time(), 0))
    consumer.subscribe([topic], on_assign=on_assign, on_revoke=on_revoke)
    try:
        while not stop.is_set():
            msg = consumer.poll(0.05)
            if msg is None or msg.error():
                continue
            if state["generation_assigned_at"] is not None and not state["reported_record"]:
                state["reported_record"] = True
                events.put(("record", index, time.time(), msg.partition()))
    finally:
        consumer.close()


def create_topic(bootstrap: str, topic: str) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)])
    for f in futures.values():
        f.result(timeout=60)


def produce_forever(bootstrap: str, topic: str, stop: threading.Event) -> None:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 1})
    i = 0
    while not stop.is_set():
        producer.produce(topic, value=b"x", partition=i % PARTITIONS)
        producer.poll(0)
        i += 1
        time.sleep(PRODUCE_INTERVAL_S)
    producer.flush(10)


def wait_until(events, predicate, timeout_s: float, log: list) -> None:
    deadline = time.time() + timeout_s
    while not predicate():
        remaining = deadline - time.time()
        if remaining <= 0:
            raise TimeoutError("timed out waiting for the group")
        try:
            log.append(events.get(timeout=min(remaining, 0.5)))
        except Exception:  # queue.Empty
            pass


def one_round(bootstrap: str) -> dict:
    run = uuid.uuid4().hex[:12]
    topic, group = f"rebalance-{run}", f"rebalance-{run}"
    create_topic(bootstrap, topic)
    ctx = mp.get_context("spawn")
    events = ctx.Queue()
    stop = ctx.Event()
    produce_stop = threading.Event()
    producer = threading.Thread(target=produce_forever, args=(bootstrap, topic, produce_stop), daemon=True)
    producer.start()
    procs = []
    log: list = []
    try:
        for i in range(MEMBERS_BEFORE):
            p = ctx.Process(target=member, args=(i, bootstrap, topic, group, events, stop))
            p.start()
            procs.append(p)

        def settled(members, since):
            assigned = {e[1]: e[2] for e in log if e[0] == "assigned" and e[2] >= since}
            fetching = {e[1] for e in log if e[0] == "record" and e[1] in assigned and e[2] >= assigned[e[1]]}
            return set(range(members)) <= fetching

        wait_until(events, lambda: settled(MEMBERS_BEFORE, 0), SETTLE_TIMEOUT_S, log)
        # The fourth member records its own start time just before subscribing.
        p = ctx.Process(target=member, args=(MEMBERS_BEFORE, bootstrap, topic, group, events, stop))
        p.start()
        procs.append(p)
        wait_until(events, lambda: any(e[0] == "joining" and e[1] == MEMBERS_BEFORE for e in log),
                   SETTLE_TIMEOUT_S, log)
        t0 = next(e[2] for e in log if e[0] == "joining" and e[1] == MEMBERS_BEFORE)
        wait_until(events, lambda: settled(MEMBERS_BEFORE + 1, t0), ROUND_TIMEOUT_S, log)
        per_member = {}
        for m in range(MEMBERS_BEFORE + 1):
            assigned = min(e[2] for e in log if e[0] == "assigned" and e[1] == m and e[2] >= t0)
            record = min(e[2] for e in log if e[0] == "record" and e[1] == m and e[2] >= assigned)
            per_member[m] = {"assigned_after_s": round(assigned - t0, 3), "fetching_after_s": round(record - t0, 3)}
        total = max(v["fetching_after_s"] for v in per_member.values())
        return {"topic": topic, "rebalance_s": total, "members": per_member}
    finally:
        stop.set()
        produce_stop.set()
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--label", default="")
    ap.add_argument("--out")
    args = ap.parse_args()
    import confluent_kafka

    rounds = []
    for r in range(args.rounds):
        res = one_round(args.bootstrap)
        rounds.append(res)
        members = ", ".join(f"m{m}: assigned {v['assigned_after_s']:.2f} s, fetching {v['fetching_after_s']:.2f} s"
                            for m, v in res["members"].items())
        print(f"round {r + 1}: {res['rebalance_s']:.2f} s  ({members})", flush=True)
    median = statistics.median(r["rebalance_s"] for r in rounds)
    print(f"{args.label or args.bootstrap}: 4th member join -> all 4 fetching, median {median:.2f} s "
          f"over {len(rounds)} rounds (librdkafka {confluent_kafka.libversion()[0]}, default settings)")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"bootstrap": args.bootstrap, "label": args.label, "median_s": median,
                       "librdkafka": confluent_kafka.libversion()[0], "rounds": rounds}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Drives confluent-kafka-python (librdkafka) against a Kafka-protocol broker
for compat-tests/run.

One subcommand per scenario step, so a failing run names the step that broke:

    confluent_compat.py create-topic --bootstrap B --topic T --partitions 3
    confluent_compat.py produce      --bootstrap B --topic T --input lines.txt [--idempotence]
    confluent_compat.py consume      --bootstrap B --topic T --out got.txt
    confluent_compat.py group-join   --bootstrap B --topic T --group G --count K --input more.txt --out a.txt --out-b b.txt
    confluent_compat.py group-consume --bootstrap B --topic T --group G --count K --out got.txt [--all]

Lines are "key:value". The producer keeps librdkafka's defaults except a
bounded delivery timeout; --idempotence turns on enable.idempotence. consume
uses assign() with OFFSET_BEGINNING (group.id is required by the client config
but no group is joined and nothing is committed) and reads up to the high
watermarks listed before it started, so duplicates stored in the log are read
back too. Checking exactly-once is the caller's job.

The group steps use partition.assignment.strategy=cooperative-sticky (KIP-429
incremental rebalancing) with manual commits (enable.auto.commit=false), a
short session timeout and heartbeat interval, and default settings otherwise:

- group-join: member A joins group G and consumes the K records already in the
  topic; once it is half-way, member B (same process, own client) joins, which
  is an incremental rebalance: A gives up some partitions (committing their
  offsets in its on_revoke callback) and B gets them, while A keeps the rest.
  When both hold a share of the partitions, --input is produced and the two
  members consume it, each its own partitions; both commit and close. Every
  record of A and B goes to --out and --out-b; B must have got some.
- group-consume: one member joins G, resumes from the committed offsets,
  writes exactly K records, commits exactly those, reads the commits back and
  leaves; with --all the committed offsets must equal the end offsets.
"""

import argparse
import os
import sys
import time

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic


def create_topic(args):
    admin = AdminClient({"bootstrap.servers": args.bootstrap, "client.id": "confluent-compat"})
    futures = admin.create_topics([NewTopic(args.topic, num_partitions=args.partitions, replication_factor=1)],
                                  operation_timeout=args.timeout, request_timeout=args.timeout)
    futures[args.topic].result(timeout=args.timeout)
    print(f"created topic {args.topic} with {args.partitions} partitions")


def produce(args):
    with open(args.input) as f:
        lines = f.read().splitlines()
    conf = {
        "bootstrap.servers": args.bootstrap,
        "client.id": "confluent-compat",
        "message.timeout.ms": args.timeout * 1000,
    }
    if args.idempotence:
        conf["enable.idempotence"] = True
    producer = Producer(conf)
    per_partition, errors = {}, []

    def on_delivery(err, msg):
        if err is not None:
            errors.append(err)
        else:
            per_partition[msg.partition()] = per_partition.get(msg.partition(), 0) + 1

    for line in lines:
        key, _, value = line.partition(":")
        while True:
            try:
                producer.produce(args.topic, key=key, value=value, on_delivery=on_delivery)
                break
            except BufferError:  # local queue full: serve delivery reports, then retry
                producer.poll(0.1)
        producer.poll(0)
    remaining = producer.flush(args.timeout)
    print(f"produced {sum(per_partition.values())} records (idempotence={args.idempotence}), "
          f"per partition {dict(sorted(per_partition.items()))}, failed {len(errors)}, undelivered {remaining}")
    if errors or remaining:
        sys.exit(f"{len(errors)} records failed ({errors[:3]}), {remaining} still queued")


def consume(args):
    consumer = Consumer({
        "bootstrap.servers": args.bootstrap,
        "client.id": "confluent-compat",
        "group.id": f"compat-unused-{args.topic}",  # required by the config; never joined
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "fetch.wait.max.ms": 500,
    })
    deadline = time.monotonic() + args.timeout
    try:
        md = consumer.list_topics(args.topic, timeout=args.timeout).topics[args.topic]
        if md.error is not None:
            raise KafkaException(md.error)
        partitions = sorted(md.partitions)
        ends = {p: consumer.get_watermark_offsets(TopicPartition(args.topic, p), timeout=args.timeout)[1]
                for p in partitions}
        print(f"end offsets {ends}")
        consumer.assign([TopicPartition(args.topic, p, OFFSET_BEGINNING) for p in partitions])
        nxt = {p: 0 for p in partitions}
        count = 0
        with open(args.out, "w") as out:
            while any(nxt[p] < ends[p] for p in partitions):
                if time.monotonic() > deadline:
                    sys.exit(f"timed out after {count} records, positions {nxt}")
                msg = consumer.poll(1.0)
                if msg is None:
                    continue
                if msg.error():
                    print(f"consumer error: {msg.error()}", file=sys.stderr)
                    if msg.error().fatal() or not msg.error().retriable():
                        sys.exit(f"consumer error: {msg.error()}")
                    continue
                out.write(f"{msg.key().decode()}:{msg.value().decode()}\n")
                count += 1
                nxt[msg.partition()] = max(nxt[msg.partition()], msg.offset() + 1)
        print(f"consumed {count} records, positions {nxt}")
    finally:
        consumer.close()


def group_conf(args, name):
    return {
        "bootstrap.servers": args.bootstrap,
        "client.id": f"confluent-compat-{name}",
        "group.id": args.group,
        "partition.assignment.strategy": "cooperative-sticky",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": 10000,
        "heartbeat.interval.ms": 1000,
        "fetch.wait.max.ms": 500,
        **({"debug": os.environ["COMPAT_RDKAFKA_DEBUG"]} if os.environ.get("COMPAT_RDKAFKA_DEBUG") else {}),
    }


class Member:
    """One group member: a Consumer, the records it wrote, its next offsets."""

    def __init__(self, args, name, out):
        self.name, self.args, self.out = name, args, out
        self.consumer = Consumer(group_conf(args, name))
        self.nxt = {}  # partition -> offset after the last record written
        self.count = 0
        self.assigned = set()
        self.events = []

    def subscribe(self):
        self.consumer.subscribe([self.args.topic], on_assign=self.on_assign, on_revoke=self.on_revoke,
                                on_lost=self.on_lost)

    def commit(self, partitions):
        offsets = [TopicPartition(self.args.topic, p, self.nxt[p]) for p in sorted(partitions) if p in self.nxt]
        if offsets:
            self.consumer.commit(offsets=offsets, asynchronous=False)
        return {tp.partition: tp.offset for tp in offsets}

    def on_assign(self, consumer, partitions):
        parts = sorted(tp.partition for tp in partitions)
        self.assigned |= set(parts)
        self.events.append(f"+{parts}")
        print(f"{self.name}: assigned {parts}, now {sorted(self.assigned)}", flush=True)

    def on_revoke(self, consumer, partitions):
        parts = sorted(tp.partition for tp in partitions)
        committed = self.commit(parts)  # hand over exactly what was written
        self.assigned -= set(parts)
        self.events.append(f"-{parts}")
        print(f"{self.name}: revoked {parts}, committed {committed}, now {sorted(self.assigned)}", flush=True)

    def on_lost(self, consumer, partitions):
        parts = sorted(tp.partition for tp in partitions)
        self.assigned -= set(parts)
        self.events.append(f"lost{parts}")
        print(f"{self.name}: LOST {parts}", flush=True)

    def poll(self, timeout, limit=500):
        """Serves callbacks and writes up to `limit` records; returns how many."""
        n = 0
        for msg in self.consumer.consume(num_messages=limit, timeout=timeout):
            if msg.error():
                print(f"{self.name}: consumer error: {msg.error()}", file=sys.stderr, flush=True)
                if msg.error().fatal() or not msg.error().retriable():
                    sys.exit(f"{self.name}: consumer error: {msg.error()}")
                continue
            self.out.write(f"{msg.key().decode()}:{msg.value().decode()}\n")
            self.count += 1
            n += 1
            self.nxt[msg.partition()] = msg.offset() + 1
        return n


def committed_offsets(consumer, topic, partitions, timeout):
    got = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=timeout)
    return {tp.partition: (tp.offset if tp.offset >= 0 else None) for tp in got}


def check_committed(member, partitions, want, all_=False):
    """Reads the group's commits back (OffsetFetch): they must be what `member` committed."""
    args, c = member.args, member.consumer
    got = committed_offsets(c, args.topic, partitions, args.timeout)
    print(f"{member.name}: committed offsets read back (OffsetFetch): {got}")
    for p, o in want.items():
        if got.get(p) != o:
            sys.exit(f"partition {p}: committed {o}, read back {got.get(p)}")
    if all_:
        ends = {p: c.get_watermark_offsets(TopicPartition(args.topic, p), timeout=args.timeout)[1] for p in partitions}
        print(f"end offsets {ends}")
        if got != ends:
            sys.exit(f"committed offsets {got} are not the end offsets {ends}")


def topic_partitions(consumer, args):
    md = consumer.list_topics(args.topic, timeout=args.timeout).topics[args.topic]
    if md.error is not None:
        raise KafkaException(md.error)
    return sorted(md.partitions)


def group_join(args):
    with open(args.input) as f:
        more = f.read().splitlines()
    deadline = time.monotonic() + args.timeout

    def wait(what, cond, members):
        while not cond():
            if time.monotonic() > deadline:
                sys.exit(f"timed out waiting for {what}: " + "; ".join(
                    f"{m.name} has {m.count} records, assignment {sorted(m.assigned)}, events {m.events}"
                    for m in members))
            for m in members:
                m.poll(0.02)

    with open(args.out, "w") as out_a, open(args.out_b, "w") as out_b:
        a, b = Member(args, "A", out_a), Member(args, "B", out_b)
        partitions = topic_partitions(a.consumer, args)
        try:
            a.subscribe()
            wait(f"A to consume {args.count // 2} of the {args.count} records", lambda: a.count >= args.count // 2, [a])
            print(f"A: {a.count} records consumed; B joins", flush=True)
            b.subscribe()
            wait("the incremental rebalance to give both members partitions",
                 lambda: a.assigned and b.assigned and a.assigned | b.assigned == set(partitions), [a, b])
            wait(f"A and B to have consumed all {args.count} records", lambda: a.count + b.count >= args.count, [a, b])
            b_before = b.count
            print(f"after the rebalance: A has {sorted(a.assigned)}, B has {sorted(b.assigned)}; "
                  f"consumed A={a.count} B={b.count}; producing {len(more)} more", flush=True)
            producer = Producer({"bootstrap.servers": args.bootstrap, "client.id": "confluent-compat",
                                 "message.timeout.ms": args.timeout * 1000})
            for line in more:
                key, _, value = line.partition(":")
                producer.produce(args.topic, key=key, value=value)
                producer.poll(0)
            if producer.flush(args.timeout):
                sys.exit("producer: records still queued after flush")
            total = args.count + len(more)
            wait(f"A and B to have consumed all {total} records", lambda: a.count + b.count >= total, [a, b])
            print(f"consumed A={a.count} B={b.count} (B after the produce: {b.count - b_before}); "
                  f"events A {a.events} B {b.events}", flush=True)
            if b.count - b_before == 0 or a.count == 0:
                sys.exit("the two members did not share the work")
            # Incremental (cooperative) rebalance: A only ever gave up part of its partitions.
            if any(e == f"-{partitions}" for e in a.events):
                sys.exit(f"A had all its partitions revoked (an eager rebalance): {a.events}")
            ca, cb = a.commit(a.assigned), b.commit(b.assigned)
            print(f"committed A {ca} B {cb}")
            check_committed(a, partitions, {**ca, **cb}, all_=True)
        finally:
            a.consumer.close()
            b.consumer.close()


def group_consume(args):
    deadline = time.monotonic() + args.timeout
    with open(args.out, "w") as out:
        m = Member(args, "C", out)
        try:
            partitions = topic_partitions(m.consumer, args)
            m.subscribe()
            while m.count < args.count:
                if time.monotonic() > deadline:
                    sys.exit(f"timed out after {m.count} of {args.count} records, assignment "
                             f"{sorted(m.assigned)}, consumed up to {m.nxt}")
                m.poll(0.5, limit=min(500, args.count - m.count))
            print(f"consumed {m.count} records as a member of {args.group}, assignment {sorted(m.assigned)}")
            committed = m.commit(m.assigned)
            print(f"committed {committed}")
            check_committed(m, partitions, committed, all_=args.all)
        finally:
            m.consumer.close()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("command", choices=["create-topic", "produce", "consume", "group-join", "group-consume"])
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--partitions", type=int, default=3)
    p.add_argument("--input")
    p.add_argument("--out")
    p.add_argument("--out-b", help="group-join: member B's records")
    p.add_argument("--group")
    p.add_argument("--count", type=int, help="group-*: records to consume (group-join: before --input)")
    p.add_argument("--all", action="store_true", help="group-consume: committed must equal end offsets")
    p.add_argument("--idempotence", action="store_true")
    p.add_argument("--timeout", type=int, default=60, help="seconds bounding the step")
    args = p.parse_args()
    {"create-topic": create_topic, "produce": produce, "consume": consume, "group-join": group_join,
     "group-consume": group_consume}[args.command](args)


if __name__ == "__main__":
    main()

"""Drives kafka-python against a Kafka-protocol broker for compat-tests/run.

One subcommand per scenario step, so a failing run names the step that broke:

    kafka_python_compat.py create-topic --bootstrap B --topic T --partitions 3
    kafka_python_compat.py produce      --bootstrap B --topic T --input lines.txt [--acks all|1] [--no-idempotence]
    kafka_python_compat.py consume      --bootstrap B --topic T --out got.txt
    kafka_python_compat.py group-consume --bootstrap B --topic T --group G --count K --out got.txt [--all]

Lines are "key:value". consume uses manual assignment with no group_id: it
seeks every partition to the beginning and reads up to the end offsets listed
before it started, so duplicates stored in the log are read back too.

group-consume joins consumer group G (subscribe, default assignors, manual
commit: enable_auto_commit=False), starts where the group's committed offsets
point (earliest when there are none), writes exactly K records, commits the
offsets of exactly those records (commit({tp: OffsetAndMetadata})), reads the
commits back (OffsetFetch) and closes, which leaves the group. With --all it
also checks that the committed offsets now equal the end offsets (the group has
consumed everything). Checking exactly-once is the caller's job (one checker
for every client).
"""

import argparse
import sys
import time

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.structs import OffsetAndMetadata


def create_topic(args):
    admin = KafkaAdminClient(bootstrap_servers=args.bootstrap, client_id="kafka-python-compat",
                             request_timeout_ms=args.timeout * 1000)
    try:
        admin.create_topics([NewTopic(args.topic, num_partitions=args.partitions, replication_factor=1)],
                            timeout_ms=args.timeout * 1000)
        print(f"created topic {args.topic} with {args.partitions} partitions")
    finally:
        admin.close()


def produce(args):
    with open(args.input) as f:
        lines = f.read().splitlines()
    producer = KafkaProducer(
        bootstrap_servers=args.bootstrap,
        client_id="kafka-python-compat",
        acks=-1 if args.acks == "all" else int(args.acks),
        enable_idempotence=not args.no_idempotence,
        max_block_ms=args.timeout * 1000,
        request_timeout_ms=30000,
    )
    try:
        futures = []
        for line in lines:
            key, _, value = line.partition(":")
            futures.append(producer.send(args.topic, key=key.encode(), value=value.encode()))
        producer.flush(timeout=args.timeout)
        per_partition, failed, first_error = {}, 0, None
        for fut in futures:
            try:
                md = fut.get(timeout=1)
                per_partition[md.partition] = per_partition.get(md.partition, 0) + 1
            except Exception as e:  # every failure counts; keep the first for the log
                failed += 1
                first_error = first_error or e
        print(f"produced {len(lines) - failed} records (acks={args.acks} "
              f"idempotent={not args.no_idempotence}), per partition {dict(sorted(per_partition.items()))}, "
              f"failed {failed}")
        if failed:
            sys.exit(f"{failed} records failed, first error: {first_error!r}")
    finally:
        producer.close(timeout=10)


def consume(args):
    consumer = KafkaConsumer(
        bootstrap_servers=args.bootstrap,
        client_id="kafka-python-compat",
        group_id=None,
        enable_auto_commit=False,
        request_timeout_ms=30000,
        fetch_max_wait_ms=500,
    )
    deadline = time.monotonic() + args.timeout
    try:
        partitions = None
        while not partitions:
            partitions = consumer.partitions_for_topic(args.topic)
            if not partitions:
                if time.monotonic() > deadline:
                    sys.exit(f"topic {args.topic} has no partitions in metadata")
                time.sleep(0.2)
        tps = [TopicPartition(args.topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        print(f"end offsets { {tp.partition: o for tp, o in ends.items()} }")
        count = 0
        with open(args.out, "w") as out:
            while any(consumer.position(tp) < ends[tp] for tp in tps):
                if time.monotonic() > deadline:
                    positions = {tp.partition: consumer.position(tp) for tp in tps}
                    sys.exit(f"timed out after {count} records, positions {positions}")
                for tp, records in consumer.poll(timeout_ms=1000).items():
                    for r in records:
                        out.write(f"{r.key.decode()}:{r.value.decode()}\n")
                        count += 1
        print(f"consumed {count} records, positions { {tp.partition: consumer.position(tp) for tp in tps} }")
    finally:
        consumer.close()


def group_consume(args):
    consumer = KafkaConsumer(
        args.topic,
        bootstrap_servers=args.bootstrap,
        client_id="kafka-python-compat",
        group_id=args.group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=10000,
        heartbeat_interval_ms=1000,
        request_timeout_ms=30000,
        fetch_max_wait_ms=500,
    )
    deadline = time.monotonic() + args.timeout
    try:
        nxt, count = {}, 0  # next offset to commit per partition (records written)
        with open(args.out, "w") as out:
            while count < args.count:
                if time.monotonic() > deadline:
                    sys.exit(f"timed out after {count} of {args.count} records, assignment "
                             f"{sorted(tp.partition for tp in consumer.assignment())}, consumed up to {nxt}")
                for tp, records in consumer.poll(timeout_ms=500).items():
                    for r in records:
                        if count == args.count:
                            break  # polled past K: left uncommitted, the next member reads it
                        out.write(f"{r.key.decode()}:{r.value.decode()}\n")
                        count += 1
                        nxt[tp] = r.offset + 1
        print(f"consumed {count} records as a member of {args.group}, assignment "
              f"{sorted(tp.partition for tp in consumer.assignment())}")
        offsets = {tp: OffsetAndMetadata(o, "", -1) for tp, o in nxt.items()}
        consumer.commit(offsets)
        print(f"committed { {tp.partition: o for tp, o in sorted(nxt.items())} }")
        tps = [TopicPartition(args.topic, p) for p in sorted(consumer.partitions_for_topic(args.topic))]
        committed = {tp.partition: consumer.committed(tp) for tp in tps}
        print(f"committed offsets read back (OffsetFetch): {committed}")
        for tp, o in nxt.items():
            if committed[tp.partition] != o:
                sys.exit(f"partition {tp.partition}: committed {o}, read back {committed[tp.partition]}")
        if args.all:
            ends = {tp.partition: o for tp, o in consumer.end_offsets(tps).items()}
            print(f"end offsets {ends}")
            if committed != ends:
                sys.exit(f"committed offsets {committed} are not the end offsets {ends}")
    finally:
        consumer.close(autocommit=False)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("command", choices=["create-topic", "produce", "consume", "group-consume"])
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--partitions", type=int, default=3)
    p.add_argument("--input")
    p.add_argument("--out")
    p.add_argument("--group")
    p.add_argument("--count", type=int, help="group-consume: records to consume and commit")
    p.add_argument("--all", action="store_true", help="group-consume: committed must equal end offsets")
    p.add_argument("--acks", default="all", choices=["all", "1"])
    p.add_argument("--no-idempotence", action="store_true")
    p.add_argument("--timeout", type=int, default=60, help="seconds bounding the step")
    args = p.parse_args()
    {"create-topic": create_topic, "produce": produce, "consume": consume,
     "group-consume": group_consume}[args.command](args)


if __name__ == "__main__":
    main()

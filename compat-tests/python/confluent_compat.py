"""Drives confluent-kafka-python (librdkafka) against a Kafka-protocol broker
for compat-tests/run.

One subcommand per scenario step, so a failing run names the step that broke:

    confluent_compat.py create-topic --bootstrap B --topic T --partitions 3
    confluent_compat.py produce      --bootstrap B --topic T --input lines.txt [--idempotence]
    confluent_compat.py consume      --bootstrap B --topic T --out got.txt

Lines are "key:value". The producer keeps librdkafka's defaults except a
bounded delivery timeout; --idempotence turns on enable.idempotence. consume
uses assign() with OFFSET_BEGINNING (group.id is required by the client config
but no group is joined and nothing is committed) and reads up to the high
watermarks listed before it started, so duplicates stored in the log are read
back too. Checking exactly-once is the caller's job.
"""

import argparse
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


def main():
    p = argparse.ArgumentParser()
    p.add_argument("command", choices=["create-topic", "produce", "consume"])
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--partitions", type=int, default=3)
    p.add_argument("--input")
    p.add_argument("--out")
    p.add_argument("--idempotence", action="store_true")
    p.add_argument("--timeout", type=int, default=60, help="seconds bounding the step")
    args = p.parse_args()
    {"create-topic": create_topic, "produce": produce, "consume": consume}[args.command](args)


if __name__ == "__main__":
    main()

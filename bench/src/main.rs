//! fjord-bench: the same workloads against any Kafka-protocol broker.
fn main() {}

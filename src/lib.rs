//! Fjord: a replicated log broker that speaks the Apache Kafka wire protocol.
//!
//! The layout follows the data path (see DESIGN.md): `network` reads frames,
//! `protocol` decodes them, `api` handles each request, `replica` owns the
//! partitions, `log` stores them, `cluster` keeps topic metadata and
//! `coordinator` hands out producer ids. `client` and `cli` are the Kafka
//! client behind the `fjord topic|produce|consume` commands.

pub mod api;
pub mod broker;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod config;
pub mod coordinator;
pub mod log;
pub mod network;
pub mod protocol;
pub mod raft;
pub mod replica;

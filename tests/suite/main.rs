//! The end-to-end suite, one binary: every test starts the real logbridge (or a cluster of them)
//! on ephemeral ports with a temporary index and talks to it with real clients. One binary links
//! the crate and its dependencies once; each file is one area of the contract.

mod common;

mod alerts;
mod bench_smoke;
mod cli;
mod cluster;
mod cluster_alerts;
mod cluster_copies;
mod cluster_erasure;
mod cluster_gaps;
mod cluster_lag;
mod cluster_limits;
mod cluster_partitions;
mod cluster_spread;
mod cluster_tail;
mod crash;
mod dedup;
mod erasure;
mod explorer;
mod explorer_alerts;
mod explorer_search;
mod export;
mod fair_shares;
mod fairness;
mod full_disk;
mod fuzz;
mod hostile;
mod keys_reload;
mod limits;
mod logs_api;
mod openapi;
mod operations;
mod otlp_grpc;
mod otlp_http;
mod retention;
mod search;
mod search_scoping;
mod snapshot;
mod stats;
mod storage_faults;
mod streams;
mod tail;
mod tls;
mod user_limits;

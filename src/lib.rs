//! logbridge: an OpenTelemetry-native collector and audit API for voice-agent activity logs.
//!
//! Data flows through the modules in this order:
//!
//! - [`otlp`]: receive OTLP/gRPC and OTLP/HTTP (protobuf, JSON, gzip) exports.
//! - [`mapping`]: turn each OTLP LogRecord into an [`mapping::ActivityLog`] (pure).
//! - [`ingest`]: the one export path: authorize, map, queue for the writer, answer; a client's
//!   retry within the dedup window is acknowledged and stored once.
//! - [`store`]: the embedded tantivy index: schema, the single writer, newest-first queries.
//! - [`api`]: `GET /logs`, the audit API scoped to the caller's user, with its statistics, tail,
//!   export, erasure and OpenAPI document, and health checks.
//! - [`explorer`]: the web page at `/` that reads the API.
//!
//! [`cluster`] runs the same path over NATS JetStream and etcd, across machines.
//!
//! Around them: [`auth`] (API keys and scopes), [`lifecycle`] (retention, per-user limits, watched
//! files, snapshots), [`config`] (the config file and overrides),
//! [`metrics`] (what `GET /metrics` serves), [`server`] (wiring, listeners with their timeouts
//! and limits, shutdown), [`faults`] (storage faults on command, for tests), [`emit`] and
//! [`workload`] (the worker simulator).

pub mod api;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod emit;
pub mod explorer;
pub mod faults;
pub mod ingest;
pub mod lifecycle;
pub mod mapping;
pub mod metrics;
pub mod otlp;
pub mod server;
pub mod store;
pub mod workload;

//! logbridge: an OpenTelemetry-native collector and audit API for voice-agent activity logs.
//!
//! Data flows through the modules in this order:
//!
//! - [`otlp`]: receive OTLP/gRPC and OTLP/HTTP (protobuf, JSON, gzip) exports.
//! - [`mapping`]: turn each OTLP LogRecord into an [`mapping::ActivityLog`] (pure).
//! - [`ingest`]: the one export path: authorize, map, hand the logs to a [`ingest::LogSink`] and
//!   answer; a client's retry within the dedup window is acknowledged and stored once. The single
//!   node's sink is the writer thread (write-ahead log, then the index).
//! - [`store`]: the embedded tantivy index: schema, the single writer, newest-first queries.
//! - [`search`]: `q`'s grammar, and the words and payload terms logs are indexed under (no I/O).
//! - [`api`]: `GET /logs`, the audit API scoped to the caller's user, with its statistics, tail,
//!   export, erasure and OpenAPI document, the user's alert rules (`/alerts`), and health checks.
//! - [`alerts`]: the rules evaluated over the index on an interval, their alerts delivered to
//!   Alertmanager and a signed webhook.
//! - [`explorer`]: the web page at `/` that reads the API.
//!
//! [`cluster`] provides the parts of the same path over NATS JetStream and etcd, across machines:
//! a sink that publishes to the stream, indexers that consume it, gateways that route reads.
//!
//! Around them: [`auth`] (API keys and scopes), [`durable`] (small files replaced whole),
//! [`lifecycle`] (retention, per-user limits, watched files, snapshots), [`metrics`] (what
//! `GET /metrics` serves), [`faults`] (storage faults on command, for tests), [`emit`] and
//! [`workload`] (the worker simulator).
//!
//! Dependencies point one way, from the wiring down to the data:
//!
//! ```text
//! server                     wiring of a single node and of a cluster node; listeners, TLS
//!   config                   the config file: composes each room's own settings
//!     cluster                stream sink, indexers, gateways (over the API's types)
//!       api   otlp           serve reads and alert rules; receive exports
//!         alerts             evaluate rules over the index, deliver their alerts
//!         ingest             the export path, the writer, the dedup window
//!           lifecycle        retention, limits, keys reload, snapshots
//!             store          the index
//!               search       q's grammar, and the words and payload terms logs are indexed under
//!                 mapping    OTLP to activity log
//! auth  metrics  faults  durable      below whoever uses them
//! ```

pub mod alerts;
pub mod api;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod durable;
pub mod emit;
pub mod explorer;
pub mod faults;
pub mod ingest;
pub mod lifecycle;
pub mod mapping;
pub mod metrics;
pub mod otlp;
pub mod search;
pub mod server;
pub mod store;
pub mod workload;

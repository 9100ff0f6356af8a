//! The LLM service's library: everything the `llm-api` and `llm-worker` binaries do lives here,
//! one module per concern. The binaries only parse configuration, build state and run.
//!
//! Read `docs/ARCHITECTURE.md` for the map and the invariants.

pub mod admin;
pub mod auth;
pub mod batches;
pub mod batching;
pub mod cache;
pub mod circuit;
pub mod config;
pub mod db;
pub mod error;
pub mod execution;
pub mod http;
pub mod hub;
pub mod kv;
pub mod metrics;
pub mod models;
pub mod notify;
pub mod openapi;
pub mod prompts;
pub mod providers;
pub mod queue;
pub mod ratelimit;
pub mod relay;
pub mod requests;
pub mod runtime;
pub mod telemetry;
pub mod usage;
pub mod validation;
pub mod worker;

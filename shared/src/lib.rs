//! The LLM service's domain and storage, shared by the `llm-api` and `llm-worker` crates:
//! configuration common to both, the database and its queue, requests from submit to final
//! state, the response cache, rate limits, per-user quotas, the stream relay, completion notices, usage,
//! batches, operators' tools, prompt templates and the model registry. Nothing here speaks
//! HTTP to clients or calls a provider.
//!
//! Read `docs/ARCHITECTURE.md` for the map and the invariants.

pub mod admin;
pub mod batches;
pub mod budget;
pub mod cache;
pub mod config;
pub mod db;
pub mod dead_letters;
pub mod endpoints;
pub mod error;
pub mod generation;
pub mod group_commit;
pub mod json_schema;
pub mod kv;
pub mod listener;
pub mod metrics;
pub mod models;
pub mod notices;
pub mod openai_batches;
pub mod openai_files;
pub mod prompts;
pub mod queue;
pub mod quota;
pub mod ratelimit;
pub mod registry_reloads;
pub mod requests;
pub mod stream_relay;
pub mod telemetry;
pub mod ttl_cache;
pub mod usage;

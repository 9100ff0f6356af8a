//! The api of the LLM service: HTTP routes, authentication, the one error shape, the OpenAPI
//! document and the OpenAI-compatible front door. It persists and enqueues requests, and reads
//! them back; it never calls a provider (this crate does not depend on the worker's).
//!
//! Read `docs/ARCHITECTURE.md` for the map and the invariants.

pub mod app;
pub mod auth;
pub mod config;
pub mod cors;
pub mod demo;
pub mod error;
pub mod http;
pub mod jwt;
pub mod metrics;
pub mod openapi;
pub mod runtime;
pub mod server;
pub mod state;
pub mod telemetry;

pub use app::App;

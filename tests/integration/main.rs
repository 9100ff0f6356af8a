//! Integration tests: the real router over HTTP and the real binaries as processes, against
//! real PostgreSQL and Redis. Each test has a database of its own, so they run in parallel.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod admin;
mod admission;
mod anthropic;
mod auth;
mod bad_input;
mod batches;
mod cache;
mod chaos;
mod endpoints;
mod fairness;
mod generate;
mod group_commit;
mod health;
mod hostile;
mod hub;
mod in_flight;
mod indexes;
mod layers;
mod metrics;
mod migrations;
mod models;
mod openai_compat;
mod openapi;
mod processes;
mod prompts;
mod providers;
mod queue;
mod ratelimits;
mod streaming;
mod tools;
mod trace_context;
mod usage;

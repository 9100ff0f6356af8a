//! The worker of the LLM service: runs queued generation jobs along their models' fallback
//! chains of providers (with retries, circuit breakers and response validation), records each
//! outcome, and delivers the outbox to the message hub.
//!
//! Read `docs/ARCHITECTURE.md` for the map and the invariants.

pub mod admission;
pub mod circuit;
pub mod config;
pub mod execution;
pub mod fetch_pause;
mod gen_ai;
pub mod job;
pub mod outbox;
mod persist;
pub mod process;
pub mod providers;
pub mod state;
pub mod validation;

pub use process::run;
pub use state::WorkerState;

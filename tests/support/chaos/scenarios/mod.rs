//! The scenarios, one a file: each starts its own database, processes and load, breaks one
//! thing, and returns the [`Tally`](super::Tally) of what became of the accepted requests.

mod api_kills;
mod postgres_restart;
mod provider_faults;
mod redis_restart;
mod worker_kills;

pub use api_kills::api_kills;
pub use postgres_restart::postgres_restart;
pub use provider_faults::provider_faults;
pub use redis_restart::redis_restart;
pub use worker_kills::worker_kills;

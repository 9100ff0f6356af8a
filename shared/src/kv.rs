//! Redis connections: lazy (a Redis that is down never stops a process from starting) and
//! quick to give up (a Redis that is down costs a request milliseconds, not seconds), because
//! nothing durable depends on Redis.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// A shared, reconnecting connection whose commands fail after `timeout`.
pub fn lazy_connection(
    client: redis::Client,
    timeout: Duration,
) -> Result<ConnectionManager, redis::RedisError> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(0)
        .set_max_delay(Duration::from_millis(500));
    ConnectionManager::new_lazy_with_config(client, config)
}

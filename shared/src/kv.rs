//! Redis connections: lazy (a Redis that is down never stops a process from starting) and
//! quick to give up (a Redis that is down costs a request milliseconds, not seconds), because
//! nothing durable depends on Redis.
//!
//! **Invariant:** once Redis answers again, the next command succeeds. A `ConnectionManager`
//! that tried to reconnect while Redis was down keeps that refused attempt and fails the first
//! command sent after Redis came back with it (only then does it connect anew): [`KvConnection`]
//! sends such a command once more. Only a refused connection is retried: the command never
//! reached Redis, so nothing (an `INCR`, a relayed token) can happen twice.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, Pipeline, RedisFuture, Value};

/// Deletes every key under `prefix` (a `REDIS_KEY_PREFIX`): the teardown of a namespace, as
/// the benchmark and the tests do with their own (tens of thousands of cache entries would
/// otherwise stay until their TTL). Stops at the first error.
pub async fn forget_namespace(client: &redis::Client, prefix: &str) -> redis::RedisResult<()> {
    let mut conn = client.get_multiplexed_async_connection().await?;
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await?;
        if !keys.is_empty() {
            let () = redis::cmd("UNLINK")
                .arg(&keys)
                .query_async(&mut conn)
                .await?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

/// A shared, reconnecting connection whose commands fail after `timeout`.
pub fn lazy_connection(
    client: redis::Client,
    timeout: Duration,
) -> Result<KvConnection, redis::RedisError> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(0)
        .set_max_delay(Duration::from_millis(500));
    ConnectionManager::new_lazy_with_config(client, config).map(KvConnection)
}

/// A [`ConnectionManager`] that sends a command a second time when the first try met a
/// refused (re)connection attempt; cheap to clone.
#[derive(Clone)]
pub struct KvConnection(ConnectionManager);

impl ConnectionLike for KvConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            match self.0.req_packed_command(cmd).await {
                Err(err) if err.is_connection_refusal() => self.0.req_packed_command(cmd).await,
                other => other,
            }
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            match self.0.req_packed_commands(pipeline, offset, count).await {
                Err(err) if err.is_connection_refusal() => {
                    self.0.req_packed_commands(pipeline, offset, count).await
                }
                other => other,
            }
        })
    }

    fn get_db(&self) -> i64 {
        self.0.get_db()
    }
}

//! The stream relay (Redis): how a request's tokens travel from the worker that generates them
//! to whichever api process holds the client.
//!
//! For each request: a counter (`…:seq`) numbers its events, a bounded list (`…:log`, with a
//! TTL) keeps them for late or returning subscribers, and a pub/sub channel carries them live.
//! One Lua script numbers, logs and publishes an event atomically, so the log order is the seq
//! order. Workers publish `token` and `restart` events; the api turns them into SSE, and adds
//! the `start` and terminal events itself from the request row (the source of truth).
//!
//! Each api process shares one pub/sub connection among all its streams ([`RelayListener`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use redis::AsyncCommands;
use redis::aio::PubSubSink;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use uuid::Uuid;

/// Events kept per request for replay.
const LOG_MAX_EVENTS: usize = 20_000;
/// Live events buffered per local subscriber before it must re-read the log. A broadcast
/// channel allocates all its slots at once: 128 of them cost ~9 KB of every open stream (1,000
/// streams: 62.6 MB of RSS, 54.0 with 32), and a follower that falls behind loses nothing, it
/// re-reads the log (`catch_up`).
const LOCAL_BUFFER: usize = 32;

const PUBLISH_SCRIPT: &str = r#"
local seq = redis.call('INCR', KEYS[2])
local msg = '{"seq":' .. seq .. ',' .. string.sub(ARGV[1], 2)
redis.call('RPUSH', KEYS[1], msg)
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[3]), -1)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
redis.call('PUBLISH', KEYS[3], msg)
return seq
"#;

/// One relayed event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RelayEvent {
    pub seq: u64,
    #[serde(flatten)]
    pub kind: RelayKind,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RelayKind {
    /// A piece of the output.
    Token { text: String },
    /// The output starts over (a retry or a fallback after some tokens were sent).
    Restart { reason: String },
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("the stream relay (Redis) is unavailable")]
    Unavailable,
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

/// Publishing and reading the relay's log; cheap to clone.
#[derive(Clone)]
pub struct StreamRelay {
    client: redis::Client,
    conn: crate::kv::KvConnection,
    prefix: String,
    log_ttl: Duration,
    script: Arc<redis::Script>,
}

impl std::fmt::Debug for StreamRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamRelay")
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl StreamRelay {
    /// Connects lazily: a Redis that is down does not stop the process from starting.
    pub fn new(
        client: redis::Client,
        prefix: &str,
        log_ttl: Duration,
    ) -> Result<Self, redis::RedisError> {
        let conn = crate::kv::lazy_connection(client.clone(), Duration::from_secs(2))?;
        let script = Arc::new(redis::Script::new(PUBLISH_SCRIPT));
        Ok(Self {
            client,
            conn,
            prefix: prefix.to_owned(),
            log_ttl,
            script,
        })
    }

    pub fn channel(&self, id: Uuid) -> String {
        format!("{}relay:{id}", self.prefix)
    }

    fn log_key(&self, id: Uuid) -> String {
        format!("{}relay:{id}:log", self.prefix)
    }

    fn seq_key(&self, id: Uuid) -> String {
        format!("{}relay:{id}:seq", self.prefix)
    }

    /// Numbers, logs and publishes one event; returns its seq.
    pub async fn publish(&self, id: Uuid, kind: &RelayKind) -> Result<u64, RelayError> {
        let body = serde_json::to_string(kind).map_err(|_| RelayError::Unavailable)?;
        let mut conn = self.conn.clone();
        let seq: u64 = self
            .script
            .key(self.log_key(id))
            .key(self.seq_key(id))
            .key(self.channel(id))
            .arg(body)
            .arg(u64::try_from(self.log_ttl.as_millis()).unwrap_or(u64::MAX))
            .arg(LOG_MAX_EVENTS)
            .invoke_async(&mut conn)
            .await?;
        Ok(seq)
    }

    /// The logged events of a request, in order.
    pub async fn log(&self, id: Uuid) -> Result<Vec<RelayEvent>, RelayError> {
        let mut conn = self.conn.clone();
        let raw: Vec<String> = conn.lrange(self.log_key(id), 0, -1).await?;
        Ok(raw
            .iter()
            .filter_map(|m| serde_json::from_str(m).ok())
            .collect())
    }

    /// Whether anything was published for the request (e.g. by a worker that then died).
    pub async fn has_events(&self, id: Uuid) -> Result<bool, RelayError> {
        let mut conn = self.conn.clone();
        let seq: Option<u64> = conn.get(self.seq_key(id)).await?;
        Ok(seq.unwrap_or(0) > 0)
    }
}

/// Local fan-out of the relay's pub/sub for one api process: one Redis connection, one
/// subscription per request that has at least one local listener.
#[derive(Clone)]
pub struct RelayListener {
    pub relay: StreamRelay,
    state: Arc<Mutex<ListenerState>>,
    /// Whether the pub/sub connection is up (subscribers wait briefly for it at start-up).
    connected: Arc<tokio::sync::watch::Sender<bool>>,
}

/// How long a subscriber waits for the pub/sub connection before answering "unavailable".
const CONNECT_WAIT: Duration = Duration::from_secs(1);

#[derive(Default)]
struct ListenerState {
    sink: Option<PubSubSink>,
    channels: HashMap<String, broadcast::Sender<RelayMessage>>,
}

/// What a local listener receives.
#[derive(Debug, Clone)]
pub enum RelayMessage {
    Event(RelayEvent),
    /// The pub/sub connection was lost and re-established: re-read the log.
    Resync,
}

/// A local listener of one request's relay channel; unsubscribes when the last one is dropped.
pub struct RelaySubscription {
    pub receiver: broadcast::Receiver<RelayMessage>,
    channel: String,
    hub: RelayListener,
}

impl Drop for RelaySubscription {
    fn drop(&mut self) {
        let sink = {
            let Ok(mut state) = self.hub.state.lock() else {
                return;
            };
            let last = state
                .channels
                .get(&self.channel)
                .is_some_and(|tx| tx.receiver_count() <= 1);
            if !last {
                return;
            }
            state.channels.remove(&self.channel);
            state.sink.clone()
        };
        if let (Some(mut sink), Ok(handle)) = (sink, tokio::runtime::Handle::try_current()) {
            let channel = std::mem::take(&mut self.channel);
            handle.spawn(async move {
                let _ = sink.unsubscribe(channel).await;
            });
        }
    }
}

impl RelayListener {
    pub fn new(relay: StreamRelay) -> Self {
        let (connected, _) = tokio::sync::watch::channel(false);
        Self {
            relay,
            state: Arc::new(Mutex::new(ListenerState::default())),
            connected: Arc::new(connected),
        }
    }

    /// Subscribes to a request's live events. Fails when Redis is unreachable.
    pub async fn subscribe(&self, id: Uuid) -> Result<RelaySubscription, RelayError> {
        let mut connected = self.connected.subscribe();
        let _ = tokio::time::timeout(CONNECT_WAIT, connected.wait_for(|up| *up)).await;
        let channel = self.relay.channel(id);
        let (receiver, new_channel, sink) = {
            let mut state = self.state.lock().map_err(|_| RelayError::Unavailable)?;
            let sink = state.sink.clone().ok_or(RelayError::Unavailable)?;
            let (receiver, new_channel) = match state.channels.get(&channel) {
                Some(tx) => (tx.subscribe(), false),
                None => {
                    let (tx, rx) = broadcast::channel(LOCAL_BUFFER);
                    state.channels.insert(channel.clone(), tx);
                    (rx, true)
                }
            };
            (receiver, new_channel, sink)
        };
        let subscription = RelaySubscription {
            receiver,
            channel: channel.clone(),
            hub: self.clone(),
        };
        if new_channel {
            let mut sink = sink;
            match tokio::time::timeout(Duration::from_secs(2), sink.subscribe(&channel)).await {
                Ok(Ok(())) => {}
                _ => return Err(RelayError::Unavailable),
            }
        }
        Ok(subscription)
    }

    /// Keeps the pub/sub connection up and fans messages out, until the process ends.
    pub async fn run(self) {
        loop {
            match self.relay.client.get_async_pubsub().await {
                Ok(pubsub) => {
                    let (mut sink, mut stream) = pubsub.split();
                    let channels: Vec<String> = self
                        .state
                        .lock()
                        .map(|s| s.channels.keys().cloned().collect())
                        .unwrap_or_default();
                    let resubscribed =
                        channels.is_empty() || sink.subscribe(&channels).await.is_ok();
                    if resubscribed {
                        if let Ok(mut state) = self.state.lock() {
                            state.sink = Some(sink);
                            for tx in state.channels.values() {
                                let _ = tx.send(RelayMessage::Resync);
                            }
                        }
                        self.connected.send_replace(true);
                        while let Some(msg) = stream.next().await {
                            let channel = msg.get_channel_name().to_owned();
                            let Ok(payload) = msg.get_payload::<String>() else {
                                continue;
                            };
                            let Ok(event) = serde_json::from_str::<RelayEvent>(&payload) else {
                                continue;
                            };
                            if let Ok(state) = self.state.lock()
                                && let Some(tx) = state.channels.get(&channel)
                            {
                                let _ = tx.send(RelayMessage::Event(event));
                            }
                        }
                    }
                    tracing::warn!("stream relay: pub/sub connection lost; reconnecting");
                }
                Err(err) => tracing::debug!(error = %err, "stream relay: cannot connect to Redis"),
            }
            if let Ok(mut state) = self.state.lock() {
                state.sink = None;
            }
            self.connected.send_replace(false);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

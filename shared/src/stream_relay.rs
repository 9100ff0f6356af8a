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

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use redis::AsyncCommands;
use redis::aio::PubSubSink;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use uuid::Uuid;

/// Events kept per request for replay.
const LOG_MAX_EVENTS: usize = 20_000;
/// Live events queued for one local listener before it must re-read the log instead (a
/// follower that falls behind loses nothing). The queue grows as events wait, never up front:
/// a `broadcast` channel of 32 slots per stream, allocated at once, held ~3 KB of each idle one.
const INBOX_MAX: usize = 1024;
/// Room a listener's queue keeps once it is empty again; a larger one is given back.
const INBOX_KEPT: usize = 16;

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
    /// A piece of a tool call: the first of call `index` carries its id and name, the next
    /// ones more of its arguments' text.
    ToolCall {
        index: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        #[serde(default)]
        arguments: String,
    },
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
        format!("{}{id}", self.channel_prefix())
    }

    /// What every request's channel name starts with (the request id follows).
    fn channel_prefix(&self) -> String {
        format!("{}relay:", self.prefix)
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

struct ListenerState {
    sink: Option<PubSubSink>,
    /// The local listeners of each subscribed request (usually one).
    channels: HashMap<Uuid, Vec<Arc<Inbox>>>,
    /// [`StreamRelay::channel_prefix`], to name a channel from its id and back.
    channel_prefix: String,
}

/// What a local listener receives.
#[derive(Debug, Clone)]
pub enum RelayMessage {
    Event(RelayEvent),
    /// Live events may have been missed (the pub/sub connection was lost and re-established,
    /// or the listener fell `INBOX_MAX` events behind): re-read the log.
    Resync,
}

/// One local listener's live events, in arrival order. Its queue holds memory only while
/// events wait in it: an open stream with nothing to send costs a few words here.
#[derive(Default)]
struct Inbox {
    queue: Mutex<Queue>,
    ready: Notify,
}

#[derive(Default)]
struct Queue {
    events: VecDeque<RelayEvent>,
    resync: bool,
}

impl Inbox {
    fn push(&self, event: RelayEvent) {
        if let Ok(mut queue) = self.queue.lock() {
            if queue.events.len() >= INBOX_MAX {
                queue.events = VecDeque::new();
                queue.resync = true;
            } else {
                queue.events.push_back(event);
            }
        }
        self.ready.notify_one();
    }

    fn resync(&self) {
        if let Ok(mut queue) = self.queue.lock() {
            queue.events = VecDeque::new();
            queue.resync = true;
        }
        self.ready.notify_one();
    }

    fn take(&self) -> Option<RelayMessage> {
        let mut queue = self.queue.lock().ok()?;
        if std::mem::take(&mut queue.resync) {
            return Some(RelayMessage::Resync);
        }
        let event = queue.events.pop_front()?;
        if queue.events.is_empty() && queue.events.capacity() > INBOX_KEPT {
            // The burst is over: its room goes back rather than staying for the stream's life.
            queue.events = VecDeque::new();
        }
        Some(RelayMessage::Event(event))
    }
}

/// A local listener of one request's relay channel; unsubscribes when the last one is dropped.
pub struct RelaySubscription {
    id: Uuid,
    inbox: Arc<Inbox>,
    state: Arc<Mutex<ListenerState>>,
}

impl RelaySubscription {
    /// The next live message. Cancel-safe: a message is taken only when this returns it.
    pub async fn recv(&self) -> RelayMessage {
        loop {
            if let Some(message) = self.inbox.take() {
                return message;
            }
            // `notify_one` keeps a permit when nobody waits: a push between `take` and here
            // is not missed.
            self.inbox.ready.notified().await;
        }
    }
}

impl Drop for RelaySubscription {
    fn drop(&mut self) {
        let (sink, channel) = {
            let Ok(mut state) = self.state.lock() else {
                return;
            };
            let Some(inboxes) = state.channels.get_mut(&self.id) else {
                return;
            };
            inboxes.retain(|inbox| !Arc::ptr_eq(inbox, &self.inbox));
            if !inboxes.is_empty() {
                return;
            }
            state.channels.remove(&self.id);
            let channel = format!("{}{}", state.channel_prefix, self.id);
            (state.sink.clone(), channel)
        };
        if let (Some(mut sink), Ok(handle)) = (sink, tokio::runtime::Handle::try_current()) {
            handle.spawn(async move {
                let _ = sink.unsubscribe(channel).await;
            });
        }
    }
}

impl RelayListener {
    pub fn new(relay: StreamRelay) -> Self {
        let (connected, _) = tokio::sync::watch::channel(false);
        let state = ListenerState {
            sink: None,
            channels: HashMap::new(),
            channel_prefix: relay.channel_prefix(),
        };
        Self {
            relay,
            state: Arc::new(Mutex::new(state)),
            connected: Arc::new(connected),
        }
    }

    /// Subscribes to a request's live events. Fails when Redis is unreachable.
    pub async fn subscribe(&self, id: Uuid) -> Result<RelaySubscription, RelayError> {
        let mut connected = self.connected.subscribe();
        let _ = tokio::time::timeout(CONNECT_WAIT, connected.wait_for(|up| *up)).await;
        let inbox = Arc::new(Inbox::default());
        let (new_channel, sink) = {
            let mut state = self.state.lock().map_err(|_| RelayError::Unavailable)?;
            let sink = state.sink.clone().ok_or(RelayError::Unavailable)?;
            let inboxes = state.channels.entry(id).or_default();
            inboxes.push(inbox.clone());
            (inboxes.len() == 1, sink)
        };
        let subscription = RelaySubscription {
            id,
            inbox,
            state: self.state.clone(),
        };
        if new_channel {
            let mut sink = sink;
            let channel = self.relay.channel(id);
            match tokio::time::timeout(Duration::from_secs(2), sink.subscribe(&channel)).await {
                Ok(Ok(())) => {}
                _ => return Err(RelayError::Unavailable),
            }
        }
        Ok(subscription)
    }

    /// Keeps the pub/sub connection up and fans messages out, until the process ends.
    pub async fn run(self) {
        let prefix = self.relay.channel_prefix();
        loop {
            match self.relay.client.get_async_pubsub().await {
                Ok(pubsub) => {
                    let (mut sink, mut stream) = pubsub.split();
                    let channels: Vec<String> = self
                        .state
                        .lock()
                        .map(|s| {
                            s.channels
                                .keys()
                                .map(|id| self.relay.channel(*id))
                                .collect()
                        })
                        .unwrap_or_default();
                    let resubscribed =
                        channels.is_empty() || sink.subscribe(&channels).await.is_ok();
                    if resubscribed {
                        if let Ok(mut state) = self.state.lock() {
                            state.sink = Some(sink);
                            for inbox in state.channels.values().flatten() {
                                inbox.resync();
                            }
                        }
                        self.connected.send_replace(true);
                        while let Some(msg) = stream.next().await {
                            let Some(id) = msg
                                .get_channel_name()
                                .strip_prefix(prefix.as_str())
                                .and_then(|id| id.parse::<Uuid>().ok())
                            else {
                                continue;
                            };
                            let Ok(payload) = msg.get_payload::<String>() else {
                                continue;
                            };
                            let Ok(event) = serde_json::from_str::<RelayEvent>(&payload) else {
                                continue;
                            };
                            if let Ok(state) = self.state.lock()
                                && let Some(inboxes) = state.channels.get(&id)
                            {
                                for inbox in inboxes {
                                    inbox.push(event.clone());
                                }
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

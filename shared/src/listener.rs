//! One `LISTEN` connection per process, for every channel the process follows: completion
//! notices ([`crate::notices`]), registry reloads ([`crate::registry_reloads`]) and, in a
//! worker, new jobs ([`crate::queue::Wakeups`]).
//!
//! PostgreSQL 15 signals every backend that listens in the database on each `NOTIFY`, whatever
//! its channel, and each signalled backend wakes up to read the notification queue: a
//! connection per channel made every submit and every completion wake five backends for one api
//! and one worker, and more with every process added. One connection per process wakes one
//! backend per process.
//!
//! The listener reconnects on its own (a second after a loss). Each handler hears
//! [`Heard::Listening`] whenever the connection listens again, the first time included: what
//! was announced meanwhile was missed, and each follower catches up its own way.

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;

/// What a channel's handler hears.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Heard {
    /// A notification on the channel, with its payload.
    Notice(String),
    /// The connection listens (again): notifications sent since the last one heard may be lost.
    Listening,
}

type Handler = Box<dyn Fn(&Heard) + Send + Sync>;

/// The channels a process follows and their handlers; [`Listener::run`] listens.
#[derive(Default)]
pub struct Listener {
    handlers: Vec<(&'static str, Handler)>,
}

impl Listener {
    /// Adds `handler` for `channel`. Handlers run on the listener's task, one notification at
    /// a time: they must not block (hand slow work to a task of their own).
    pub fn on(
        mut self,
        channel: &'static str,
        handler: impl Fn(&Heard) + Send + Sync + 'static,
    ) -> Self {
        self.handlers.push((channel, Box::new(handler)));
        self
    }

    /// Listens on every channel with one connection until the process ends, reconnecting a
    /// second after each loss.
    pub async fn run(self, pool: PgPool) {
        let mut channels: Vec<&str> = self.handlers.iter().map(|(channel, _)| *channel).collect();
        channels.sort_unstable();
        channels.dedup();
        loop {
            if let Err(err) = self.listen_once(&pool, &channels).await {
                tracing::warn!(error = %err, "the LISTEN connection was lost; listening again");
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// One connection's worth of [`Listener::run`]: returns when the connection is lost.
    async fn listen_once(&self, pool: &PgPool, channels: &[&str]) -> Result<(), sqlx::Error> {
        let mut listener = PgListener::connect_with(pool).await?;
        listener.listen_all(channels.iter().copied()).await?;
        self.tell_all(&Heard::Listening);
        // `try_recv`, not `recv`: `recv` reconnects by itself and drops what came meanwhile
        // without a word; here a lost connection is seen, and every handler told.
        while let Some(notification) = listener.try_recv().await? {
            let heard = Heard::Notice(notification.payload().to_owned());
            for (channel, handler) in &self.handlers {
                if *channel == notification.channel() {
                    handler(&heard);
                }
            }
        }
        Ok(())
    }

    fn tell_all(&self, heard: &Heard) {
        for (_, handler) in &self.handlers {
            handler(heard);
        }
    }
}

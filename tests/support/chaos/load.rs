//! The load a scenario puts on the service: an HTTP client of one user ([`ChaosClient`]),
//! submitters that send bodies from many tasks until a count, a time or a flag ([`submit_load`],
//! [`Until`]) or at a fixed rate ([`paced_load`]: the load scenarios' own, bounded whatever
//! the service does), and the record of every answer they got ([`Load`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use llm_api::jwt::JwtKeys;
use secrecy::SecretString;
use serde_json::Value;
use tokio::time::Instant;
use uuid::Uuid;

use crate::TEST_SECRET;
use crate::sse::SseReader;

/// One submit's answer.
#[derive(Debug, Clone, Copy)]
enum Answer {
    Accepted(Uuid),
    Status(u16),
    /// No HTTP answer at all (connection refused or reset: the api is down).
    Unreachable,
}

/// An HTTP client of the service, as one user.
#[derive(Clone)]
pub struct ChaosClient {
    http: reqwest::Client,
    pub base: String,
    token: String,
}

impl ChaosClient {
    pub fn new(base: &str) -> Self {
        let token = JwtKeys::new(&SecretString::from(TEST_SECRET))
            .issue(Uuid::now_v7(), 7200, None)
            .unwrap();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        Self {
            http,
            base: base.to_owned(),
            token,
        }
    }

    async fn submit(&self, body: &Value) -> Answer {
        let sent = self
            .http
            .post(format!("{}/api/v1/generate", self.base))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await;
        let Ok(response) = sent else {
            return Answer::Unreachable;
        };
        let status = response.status().as_u16();
        if status != 202 {
            return Answer::Status(status);
        }
        let id = response
            .json::<Value>()
            .await
            .ok()
            .and_then(|v| v["request_id"].as_str().and_then(|s| s.parse().ok()));
        // A 202 whose body did not arrive is still an acceptance we cannot name: count it as
        // unreachable rather than invent an id.
        id.map_or(Answer::Unreachable, Answer::Accepted)
    }

    /// `GET /health/ready`'s status, 0 when the api does not answer.
    pub async fn readiness(&self) -> u16 {
        self.http
            .get(format!("{}/health/ready", self.base))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .map_or(0, |r| r.status().as_u16())
    }

    /// Opens a stream (`POST /api/v1/generate/stream`).
    pub async fn open_stream(&self, body: &Value) -> SseReader {
        SseReader::open(
            self.http
                .post(format!("{}/api/v1/generate/stream", self.base))
                .timeout(Duration::from_secs(300))
                .bearer_auth(&self.token)
                .json(body),
        )
        .await
    }
}

/// When a load stops.
#[derive(Debug, Clone)]
pub enum Until {
    /// After this many submits in all.
    Sent(usize),
    /// At this time.
    Deadline(Instant),
    /// When the flag is set.
    Stopped(Arc<AtomicBool>),
}

/// Every answer of a load, with when its submit was sent and how long the answer took.
#[derive(Debug, Default)]
pub struct Load {
    answers: Vec<(Instant, Duration, Answer)>,
}

impl Load {
    pub fn accepted(&self) -> Vec<Uuid> {
        self.answers
            .iter()
            .filter_map(|(_, _, a)| match a {
                Answer::Accepted(id) => Some(*id),
                _ => None,
            })
            .collect()
    }

    /// Answers by status (`202`, `503`, …; `unreachable` for no answer) to the submits sent
    /// within `[from, to)`.
    pub(crate) fn statuses_between(&self, from: Instant, to: Instant) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for (at, _, answer) in &self.answers {
            if *at < from || *at >= to {
                continue;
            }
            let key = match answer {
                Answer::Accepted(_) => "202".to_owned(),
                Answer::Status(s) => s.to_string(),
                Answer::Unreachable => "unreachable".to_owned(),
            };
            *counts.entry(key).or_insert(0) += 1;
        }
        counts
    }

    /// The longest any submit sent within `[from, to)` waited for its answer.
    pub(crate) fn slowest_between(&self, from: Instant, to: Instant) -> Duration {
        self.answers
            .iter()
            .filter(|(at, _, _)| *at >= from && *at < to)
            .map(|(_, took, _)| *took)
            .max()
            .unwrap_or_default()
    }

    pub(crate) fn statuses(&self) -> BTreeMap<String, usize> {
        let far = Instant::now() + Duration::from_secs(86_400);
        self.statuses_between(Instant::now() - Duration::from_secs(86_400), far)
    }
}

/// Submits from `concurrency` clients until `until`; body `n` comes from `body(n)`.
pub async fn submit_load(
    client: &ChaosClient,
    concurrency: usize,
    until: Until,
    body: impl Fn(usize) -> Value + Send + Sync + 'static,
) -> Load {
    let next = Arc::new(AtomicUsize::new(0));
    let body = Arc::new(body);
    let tasks: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let (client, next, body) = (client.clone(), next.clone(), body.clone());
            let until = until.clone();
            tokio::spawn(async move {
                let mut answers = Vec::new();
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    let more = match &until {
                        Until::Sent(total) => n < *total,
                        Until::Deadline(at) => Instant::now() < *at,
                        Until::Stopped(flag) => !flag.load(Ordering::Relaxed),
                    };
                    if !more {
                        return answers;
                    }
                    let sent = Instant::now();
                    let answer = client.submit(&body(n)).await;
                    answers.push((sent, sent.elapsed(), answer));
                    if !matches!(answer, Answer::Accepted(_)) {
                        // The service is (partly) down: do not spin.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            })
        })
        .collect();
    let mut load = Load::default();
    for task in futures::future::join_all(tasks).await {
        load.answers.extend(task.unwrap());
    }
    load.answers.sort_by_key(|(at, _, _)| *at);
    load
}

pub(crate) fn unique_run() -> String {
    Uuid::now_v7().simple().to_string()
}

/// In the background: a load at a fixed rate, `per_sec` submits a second until `until`, each
/// submit on a task of its own (a slow answer never slows the rate down, and the load is what
/// the scenario says, whatever the service's speed); body `n` comes from `body(n)`.
pub(crate) fn paced_load(
    client: &ChaosClient,
    per_sec: u32,
    until: Until,
    body: impl Fn(usize) -> Value + Send + 'static,
) -> tokio::task::JoinHandle<Load> {
    let client = client.clone();
    tokio::spawn(async move {
        let gap = Duration::from_secs_f64(1.0 / f64::from(per_sec.max(1)));
        let start = Instant::now();
        let mut submits = Vec::new();
        for n in 0_u32.. {
            tokio::time::sleep_until(start + gap * n).await;
            let more = match &until {
                Until::Sent(total) => (n as usize) < *total,
                Until::Deadline(at) => Instant::now() < *at,
                Until::Stopped(flag) => !flag.load(Ordering::Relaxed),
            };
            if !more {
                break;
            }
            let (client, body) = (client.clone(), body(n as usize));
            submits.push(tokio::spawn(async move {
                let sent = Instant::now();
                let answer = client.submit(&body).await;
                (sent, sent.elapsed(), answer)
            }));
        }
        let mut load = Load::default();
        for submit in futures::future::join_all(submits).await {
            load.answers.push(submit.unwrap());
        }
        load.answers.sort_by_key(|(at, _, _)| *at);
        load
    })
}

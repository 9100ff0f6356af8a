//! Runs one claimed request along its model's fallback chain: for each model, up to
//! `attempts_per_model` provider calls with exponential backoff and jitter (`backon`),
//! honouring `Retry-After`; a wait longer than `reschedule_after_secs` hands the request back
//! to the queue instead of holding a worker slot. Every provider call is one row of the
//! attempt history. A model spread across endpoints takes them in turn, call by call
//! ([`ClientSet::routes`]); endpoints whose circuit is open are skipped. Every call first takes
//! its endpoint's shared budget (`admission`); without it the request waits in place briefly or
//! goes back to the queue until the budget frees, which costs it no attempt.
//!
//! What ends the request is the caller's to write (`worker`), in one statement with the
//! request row; failed calls are recorded here as they happen.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::Instrument;

use backon::{BackoffBuilder, ExponentialBuilder};
use sqlx::PgPool;

use crate::admission::{self, Admission, Admit, Class, Endpoint, Permit, Ticket};
use crate::circuit::CircuitBreakers;
use llm_shared::metrics::Metrics;
use uuid::Uuid;

use crate::providers::clients::{ClientSet, Route};
use crate::providers::{
    DeltaSink, GenerationInput, GenerationOutput, GenerationParams, MockBehaviour, MockProvider,
    Provider, ProviderError, collect_stream_into,
};
use crate::validation::validate_off_runtime;
use llm_shared::models::{Capability, LiveRegistry, ModelRegistry, ModelSpec};
use llm_shared::requests::{self, AttemptFailure, ClaimedRequest};
use llm_shared::stream_relay::{RelayKind, StreamRelay};

type Clients = Arc<ClientSet>;

/// The code of a request sent back to the queue to wait for its endpoint's budget.
pub const BUDGET_WAIT: &str = "budget_wait";

/// The clients of the registry, every endpoint's circuit tracked (exported from the start).
fn build_clients(
    registry: &ModelRegistry,
    mock: &MockProvider,
    circuits: &CircuitBreakers,
) -> Clients {
    let clients = ClientSet::new(registry, mock);
    for name in clients.names() {
        circuits.track(name);
    }
    Arc::new(clients)
}

/// How a run of a request ended.
#[derive(Debug)]
pub enum Outcome {
    Completed {
        output: GenerationOutput,
        provider: &'static str,
        /// The registry id of the model that answered (the requested one or a fallback).
        served_model: String,
        cost_usd: f64,
        attempt: i32,
        latency: Duration,
    },
    Failed {
        code: &'static str,
        message: String,
    },
    /// Hand the request back to the queue, to run again after `delay` from `fallback_index`.
    Reschedule {
        delay: Duration,
        fallback_index: i32,
        code: &'static str,
        message: String,
    },
}

/// Time bounds of a run's work.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Upper bound on any one provider call (`PROVIDER_TIMEOUT_SECS`).
    pub call: Duration,
    /// Upper bound on checking one answer against its JSON Schema (`VALIDATION_TIMEOUT_MS`).
    pub validation: Duration,
}

pub struct Executor {
    /// The registry in use; a reload is picked up by the next request.
    pub models: LiveRegistry,
    /// Where streamed requests' tokens go; `None` when streaming is not wired (tests, tools).
    pub relay: Option<StreamRelay>,
    mock: MockProvider,
    /// The provider clients of the registry they were built from.
    clients: Mutex<(Arc<ModelRegistry>, Clients)>,
    pub circuits: CircuitBreakers,
    /// Upper bound on any one provider call.
    call_timeout: Duration,
    /// Upper bound on one answer's validation.
    validation_timeout: Duration,
    /// Provider calls, retries and fallbacks are counted here.
    metrics: Arc<Metrics>,
    /// The endpoints' budgets shared with every other worker.
    admission: Admission,
}

impl Executor {
    pub fn new(
        models: LiveRegistry,
        mock: MockProvider,
        limits: Limits,
        relay: Option<StreamRelay>,
        metrics: Arc<Metrics>,
        admission: Admission,
    ) -> Self {
        let registry = models.current();
        let circuits = CircuitBreakers::new(registry.circuit);
        let clients = build_clients(&registry, &mock, &circuits);
        Self {
            circuits,
            models,
            relay,
            mock,
            clients: Mutex::new((registry, clients)),
            call_timeout: limits.call,
            validation_timeout: limits.validation,
            metrics,
            admission,
        }
    }

    /// The registry in use and its clients (rebuilt once after a reload).
    fn snapshot(&self) -> (Arc<ModelRegistry>, Clients) {
        let current = self.models.current();
        let Ok(mut cached) = self.clients.lock() else {
            let clients = build_clients(&current, &self.mock, &self.circuits);
            return (current, clients);
        };
        if !Arc::ptr_eq(&cached.0, &current) {
            *cached = (
                current.clone(),
                build_clients(&current, &self.mock, &self.circuits),
            );
        }
        (cached.0.clone(), cached.1.clone())
    }

    /// Time limits of a streamed call: for the first event, and between two events.
    fn stream_limits(&self, route: &Route<'_>) -> (Duration, Duration) {
        match route.settings {
            Some(upstream) => (upstream.timeouts.first_token(), upstream.timeouts.idle()),
            None => (self.call_timeout, self.call_timeout),
        }
    }

    fn timeout_for(&self, route: &Route<'_>) -> Duration {
        match route.settings {
            Some(upstream) => upstream.timeouts.request().min(self.call_timeout),
            None => self.call_timeout,
        }
    }

    pub async fn execute(
        &self,
        pool: &PgPool,
        claimed: &ClaimedRequest,
        worker: &str,
    ) -> Result<Outcome, sqlx::Error> {
        let (registry, clients) = self.snapshot();
        let chain = registry.chain(&claimed.model);
        if chain.is_empty() {
            // Stored before the registry changed, or by an api that serves mock models while
            // this worker does not: no later run would find the model either.
            return Ok(Outcome::Failed {
                code: "unknown_model",
                message: registry.not_found_reason(&claimed.model),
            });
        }
        let start = usize::try_from(claimed.fallback_index).unwrap_or(0);
        let mut walk = Walk {
            pool,
            claimed,
            worker,
            params: serde_json::from_value::<GenerationParams>(claimed.parameters.clone())
                .unwrap_or_default()
                .with_context(&claimed.context),
            mock: claimed
                .metadata
                .get("mock")
                .and_then(|m| serde_json::from_value(m.clone()).ok()),
            first_attempt: Some(claimed.first_attempt),
            notes: Vec::new(),
            reopen_in: None,
            called: false,
            relay: match (&self.relay, claimed.stream) {
                (Some(relay), true) => Some(RelaySink::start(relay, claimed.id).await),
                _ => None,
            },
            last_kind: None,
        };

        for (index, model) in chain.iter().enumerate().skip(start) {
            if let Some(reason) = registry.unavailable_reason(model) {
                walk.notes
                    .push(format!("{}: unavailable ({reason})", model.id));
                continue;
            }
            if !walk.params.tools().is_empty() && !model.supports(Capability::Tools) {
                // A fallback that cannot call tools would answer as if there were none.
                walk.notes.push(format!("{}: no tool calling", model.id));
                continue;
            }
            let last = index + 1 == chain.len();
            if let Some(outcome) = self
                .try_model(&mut walk, &registry, index, model, &clients, last)
                .await?
            {
                return Ok(outcome);
            }
        }

        if !walk.called
            && let Some(wait) = walk.reopen_in
        {
            return Ok(Outcome::Reschedule {
                delay: wait,
                fallback_index: claimed.fallback_index,
                code: "circuit_open",
                message: walk.notes.join("; "),
            });
        }
        Ok(exhausted(
            &claimed.model,
            &walk.notes,
            walk.last_kind,
            chain.len().saturating_sub(start),
        ))
    }

    /// Up to `attempts_per_model` calls of one model of the chain, with backoff between them.
    /// `Some` ends the request's run (completed, failed for good, or rescheduled); `None` moves
    /// on to the next model (every endpoint's circuit is open, or its errors fall back).
    async fn try_model(
        &self,
        walk: &mut Walk<'_>,
        registry: &ModelRegistry,
        index: usize,
        model: &ModelSpec,
        clients: &ClientSet,
        last: bool,
    ) -> Result<Option<Outcome>, sqlx::Error> {
        let policy = registry.retry;
        let (pool, claimed) = (walk.pool, walk.claimed);
        let mut delays = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(policy.base_delay_ms))
            .with_max_delay(Duration::from_millis(policy.max_delay_ms))
            .with_jitter()
            .without_max_times()
            .build();
        let tokens = llm_shared::requests::estimated_tokens(&claimed.prompt, &walk.params, model);
        for try_no in 1..=policy.attempts_per_model.max(1) {
            let routes = clients.routes(model);
            let mut soonest: Option<Duration> = None;
            let mut chosen = None;
            for route in &routes {
                match self.circuits.admit(route.endpoint) {
                    Ok(()) => {
                        chosen = Some(*route);
                        break;
                    }
                    Err(wait) => soonest = Some(soonest.map_or(wait, |w| w.min(wait))),
                }
            }
            let Some(route) = chosen else {
                let names: Vec<&str> = routes.iter().map(|r| r.endpoint).collect();
                walk.notes.push(match soonest {
                    Some(_) => {
                        format!("{}: skipped, circuit open ({})", model.id, names.join(", "))
                    }
                    None => format!("{}: no usable endpoint", model.id),
                });
                if let Some(wait) = soonest {
                    walk.reopen_in = Some(walk.reopen_in.map_or(wait, |w| w.min(wait)));
                }
                return Ok(None);
            };
            let client = route.client;
            let endpoint = admission::endpoint_of(&route);
            let class = match claimed.batch_id {
                Some(_) => Class::Batch,
                None => Class::Interactive,
            };
            let permit = match self.take_budget(&endpoint, tokens, class).await {
                Ok(permit) => permit,
                Err((delay, reason)) => {
                    // No call goes out: a half-open probe this was is not spent either.
                    self.circuits.settle(route.endpoint);
                    return Ok(Some(Outcome::Reschedule {
                        delay,
                        fallback_index: i32::try_from(index).unwrap_or(0),
                        code: BUDGET_WAIT,
                        message: format!(
                            "waiting for the budget of endpoint {} ({reason})",
                            endpoint.name
                        ),
                    }));
                }
            };
            walk.called = true;
            let attempt = match walk.first_attempt.take() {
                Some(a) => a,
                None => {
                    requests::start_attempt(pool, claimed.id, claimed.attempts, walk.worker).await?
                }
            };
            let input = GenerationInput {
                prompt: claimed.prompt.clone(),
                params: walk.params.clone(),
                upstream_model: model.upstream.clone(),
                attempt: u32::try_from(attempt).unwrap_or(u32::MAX),
                mock: walk.mock.clone(),
            };
            let (result, latency) = {
                let call = self.call(model, &route, &input, walk.relay.as_mut(), attempt);
                tokio::pin!(call);
                tokio::select! {
                    out = &mut call => out,
                    never = permit.keep_alive() => match never {},
                }
            };
            self.settle_budget(&endpoint, permit, &result).await;

            let err = match result {
                Ok(output) => {
                    self.circuits.record(route.endpoint, true);
                    return Ok(Some(Outcome::Completed {
                        cost_usd: model.cost_usd(output.prompt_tokens, output.completion_tokens),
                        output,
                        provider: client.name(),
                        served_model: model.id.clone(),
                        attempt,
                        latency,
                    }));
                }
                Err(err) => err,
            };
            self.record_failure(pool, claimed, attempt, model, &route, &err, latency)
                .await?;

            if !err.falls_back() {
                return Ok(Some(Outcome::Failed {
                    code: err.kind(),
                    message: err.to_string(),
                }));
            }
            if err.is_retryable() && try_no < policy.attempts_per_model {
                let delay = err
                    .retry_after()
                    .unwrap_or_else(|| delays.next().unwrap_or_default());
                self.metrics
                    .retries
                    .with_label_values(&[client.name(), model.id.as_str()])
                    .inc();
                if delay > policy.reschedule_after() {
                    return Ok(Some(Outcome::Reschedule {
                        delay,
                        fallback_index: i32::try_from(index).unwrap_or(0),
                        code: err.kind(),
                        message: err.to_string(),
                    }));
                }
                tokio::time::sleep(delay).await;
                continue;
            }
            walk.notes.push(format!("{}: {err}", model.id));
            walk.last_kind = Some(err.kind());
            if !last {
                self.metrics
                    .fallbacks
                    .with_label_values(&[model.id.as_str()])
                    .inc();
            }
            return Ok(None);
        }
        Ok(None)
    }

    /// Takes the endpoint's budget for one call, waiting in place for its turn in the
    /// endpoint's line; `Err`: the turn is too far back, the request goes back to the queue
    /// for that long (and why).
    async fn take_budget(
        &self,
        endpoint: &Endpoint,
        tokens: u32,
        class: Class,
    ) -> Result<Permit, (Duration, &'static str)> {
        let mut ticket = Ticket::new(class);
        loop {
            match self.admission.admit(endpoint, tokens, &mut ticket).await {
                Admit::Granted(permit) => return Ok(permit),
                Admit::Wait {
                    after,
                    in_line: true,
                    ..
                } => tokio::time::sleep(after).await,
                Admit::Wait { after, reason, .. } => return Err((after, reason)),
            }
        }
    }

    /// After a call: its slot freed and its tokens corrected; a 429 cuts the endpoint's limits
    /// for every worker.
    async fn settle_budget(
        &self,
        endpoint: &Endpoint,
        permit: Permit,
        result: &Result<GenerationOutput, ProviderError>,
    ) {
        let used = match result {
            Ok(output) => Some(
                output
                    .prompt_tokens
                    .saturating_add(output.completion_tokens),
            ),
            Err(err) => {
                if err.http_status() == Some(429) {
                    self.admission.throttled(endpoint, &permit).await;
                }
                None
            }
        };
        permit.release(used).await;
    }

    /// One provider call within its time limit, streamed through `relay` when the request is
    /// streamed and the model can, its answer validated; counted in the metrics.
    async fn call(
        &self,
        model: &ModelSpec,
        route: &Route<'_>,
        input: &GenerationInput,
        relay: Option<&mut RelaySink<'_>>,
        attempt: i32,
    ) -> (Result<GenerationOutput, ProviderError>, Duration) {
        let started = Instant::now();
        let client = route.client;
        let limit = self.timeout_for(route);
        let (first_token, idle) = self.stream_limits(route);
        let span = crate::gen_ai::call_span(client.name(), input);
        let call = async {
            match relay {
                Some(sink) if model.supports(Capability::Streaming) => {
                    sink.begin_attempt(format!("attempt {attempt} on {}", model.id));
                    let stream = client.stream(input).await?;
                    collect_stream_into(
                        stream,
                        sink,
                        &model.upstream,
                        &input.prompt,
                        first_token,
                        idle,
                    )
                    .await
                }
                _ => client.generate(input).await,
            }
        };
        let result = match tokio::time::timeout(limit, call.instrument(span.clone())).await {
            Ok(Ok(output)) => {
                validate_off_runtime(output, &input.params, self.validation_timeout).await
            }
            Ok(Err(err)) => Err(err),
            Err(_) => Err(ProviderError::Timeout(limit)),
        };
        crate::gen_ai::record_outcome(&span, &result);
        let latency = started.elapsed();
        let outcome = match &result {
            Ok(_) => "success",
            Err(err) => err.kind(),
        };
        self.metrics
            .provider_call(client.name(), &model.id, outcome, latency);
        (result, latency)
    }

    /// A failed call: its endpoint's circuit told (availability errors count against it; any
    /// other answer only ends a half-open probe), its attempt row closed, a warning logged.
    #[allow(clippy::too_many_arguments)]
    async fn record_failure(
        &self,
        pool: &PgPool,
        claimed: &ClaimedRequest,
        attempt: i32,
        model: &ModelSpec,
        route: &Route<'_>,
        err: &ProviderError,
        latency: Duration,
    ) -> Result<(), sqlx::Error> {
        let client = route.client;
        if matches!(
            err,
            ProviderError::Transient { .. }
                | ProviderError::Timeout(_)
                | ProviderError::Unavailable { .. }
        ) {
            self.circuits.record(route.endpoint, false);
        } else {
            self.circuits.settle(route.endpoint);
        }
        let message = err.to_string();
        let failure = AttemptFailure {
            kind: err.kind(),
            http_status: err.http_status(),
            message: &message,
            latency,
            provider: Some(client.name()),
            upstream_model: Some(&model.upstream),
        };
        requests::fail_attempt(pool, claimed.id, attempt, &failure).await?;
        tracing::warn!(request.id = %claimed.id, attempt, model = %model.id, endpoint = route.endpoint, error.kind = err.kind(), error = %err, "provider call failed");
        Ok(())
    }
}

/// Where a run's walk along the fallback chain stands: what every model's calls share, and
/// what the walk has learnt so far.
struct Walk<'a> {
    pool: &'a PgPool,
    claimed: &'a ClaimedRequest,
    worker: &'a str,
    params: GenerationParams,
    mock: Option<MockBehaviour>,
    /// The attempt row the claim opened, used by the run's first call.
    first_attempt: Option<i32>,
    /// Why each model gave no answer, for the final error.
    notes: Vec<String>,
    /// The soonest an open circuit that was skipped lets calls through again.
    reopen_in: Option<Duration>,
    /// Whether any provider was called.
    called: bool,
    relay: Option<RelaySink<'a>>,
    last_kind: Option<&'static str>,
}

/// How a request whose chain gave no answer fails: the one model's own error kind, or
/// `fallback_exhausted` after several, or `provider_unavailable` when nothing could be called.
fn exhausted(
    model: &str,
    notes: &[String],
    last_kind: Option<&'static str>,
    tried: usize,
) -> Outcome {
    let message = if notes.is_empty() {
        format!("model `{model}` has no usable provider")
    } else {
        format!(
            "every model of the fallback chain failed: {}",
            notes.join("; ")
        )
    };
    let code = match last_kind {
        Some(kind) if tried <= 1 => kind,
        _ if tried > 1 => "fallback_exhausted",
        _ => "provider_unavailable",
    };
    Outcome::Failed { code, message }
}

/// Relays a streamed request's tokens. Tokens of an earlier attempt (or an earlier run, by a
/// worker that died) are followed by a `restart` before the next attempt's first token, so the
/// tokens since the last restart are always the current attempt's output. Relay failures never
/// fail the generation: the api falls back to the stored result.
struct RelaySink<'a> {
    relay: &'a StreamRelay,
    id: Uuid,
    /// Tokens were relayed since the last restart.
    dirty: bool,
    restart_reason: Option<String>,
    broken: bool,
}

impl<'a> RelaySink<'a> {
    async fn start(relay: &'a StreamRelay, id: Uuid) -> Self {
        let (dirty, broken) = match relay.has_events(id).await {
            Ok(any) => (any, false),
            Err(err) => {
                tracing::warn!(request.id = %id, error = %err, "stream relay unavailable; tokens will not be relayed");
                (false, true)
            }
        };
        Self {
            relay,
            id,
            dirty,
            restart_reason: None,
            broken,
        }
    }

    fn begin_attempt(&mut self, reason: String) {
        self.restart_reason = Some(reason);
    }

    async fn publish(&mut self, kind: RelayKind) {
        if let Err(err) = self.relay.publish(self.id, &kind).await {
            tracing::warn!(request.id = %self.id, error = %err, "stream relay failed; tokens will not be relayed");
            self.broken = true;
        }
    }
}

impl RelaySink<'_> {
    /// Publishes a piece of the output, after the restart marker if an earlier attempt's
    /// pieces were relayed.
    async fn publish_piece(&mut self, kind: RelayKind) {
        if self.broken {
            return;
        }
        if let Some(reason) = self.restart_reason.take()
            && self.dirty
        {
            self.publish(RelayKind::Restart { reason }).await;
            self.dirty = false;
        }
        self.publish(kind).await;
        self.dirty = true;
    }
}

impl DeltaSink for RelaySink<'_> {
    async fn delta(&mut self, text: &str) {
        self.publish_piece(RelayKind::Token {
            text: text.to_owned(),
        })
        .await;
    }

    async fn tool_call(&mut self, delta: &llm_shared::generation::ToolCallDelta) {
        self.publish_piece(RelayKind::ToolCall {
            index: delta.index,
            id: delta.id.clone(),
            name: delta.name.clone(),
            arguments: delta.arguments.clone(),
        })
        .await;
    }
}

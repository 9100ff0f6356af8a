//! Per-endpoint circuit breakers (one set per worker process): after `failure_threshold`
//! consecutive provider-side failures an endpoint is skipped for `cooldown_secs`; then one call
//! is let through as a probe, and its outcome closes or re-opens the circuit. Circuits are
//! keyed by endpoint name (`mock` for the mock provider; a built-in endpoint is named after its
//! provider): one Azure region failing leaves the other's calls going.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

use llm_shared::metrics::Metrics;
use llm_shared::models::CircuitPolicy;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CircuitState {
    Closed,
    Open,
    HalfOpen,
}

#[derive(Debug, Default)]
struct Circuit {
    consecutive_failures: u32,
    open_until: Option<Instant>,
    probe_in_flight: bool,
}

#[derive(Debug)]
pub struct CircuitBreakers {
    policy: CircuitPolicy,
    circuits: Mutex<HashMap<String, Circuit>>,
}

impl CircuitBreakers {
    pub fn new(policy: CircuitPolicy) -> Self {
        Self {
            policy,
            circuits: Mutex::new(HashMap::new()),
        }
    }

    /// Gives the endpoint a (closed) circuit if it has none, so that its state is exported
    /// before its first call.
    pub fn track(&self, endpoint: impl AsRef<str>) {
        if let Ok(mut circuits) = self.circuits.lock() {
            circuit(&mut circuits, endpoint.as_ref());
        }
    }

    /// Whether a call to the endpoint may go ahead now; `Err` says when it may again.
    pub fn admit(&self, endpoint: impl AsRef<str>) -> Result<(), Duration> {
        let Ok(mut circuits) = self.circuits.lock() else {
            return Ok(());
        };
        let circuit = circuit(&mut circuits, endpoint.as_ref());
        match circuit.open_until {
            None => Ok(()),
            Some(until) => {
                let now = Instant::now();
                if now < until {
                    Err(until - now)
                } else if circuit.probe_in_flight {
                    Err(Duration::from_secs(1))
                } else {
                    circuit.probe_in_flight = true;
                    Ok(())
                }
            }
        }
    }

    pub fn record(&self, endpoint: impl AsRef<str>, success: bool) {
        let endpoint = endpoint.as_ref();
        let Ok(mut circuits) = self.circuits.lock() else {
            return;
        };
        let circuit = circuit(&mut circuits, endpoint);
        circuit.probe_in_flight = false;
        if success {
            *circuit = Circuit::default();
            return;
        }
        circuit.consecutive_failures += 1;
        let probe_failed = circuit.open_until.is_some();
        if probe_failed || circuit.consecutive_failures >= self.policy.failure_threshold.max(1) {
            if circuit.open_until.is_none() || probe_failed {
                tracing::warn!(
                    endpoint,
                    failures = circuit.consecutive_failures,
                    "circuit opened"
                );
            }
            circuit.open_until =
                Some(Instant::now() + Duration::from_secs(self.policy.cooldown_secs));
        }
    }

    /// An admitted call ended without a verdict on the provider's availability (an invalid
    /// answer, a refusal, a client error): if it was the half-open probe, the next call may
    /// probe. Without this the probe stayed "in flight" for good and the provider's circuit
    /// never closed again in this process.
    pub fn settle(&self, endpoint: impl AsRef<str>) {
        if let Ok(mut circuits) = self.circuits.lock()
            && let Some(circuit) = circuits.get_mut(endpoint.as_ref())
        {
            circuit.probe_in_flight = false;
        }
    }

    pub fn state(&self, endpoint: impl AsRef<str>) -> CircuitState {
        let Ok(circuits) = self.circuits.lock() else {
            return CircuitState::Closed;
        };
        match circuits.get(endpoint.as_ref()).and_then(|c| c.open_until) {
            None => CircuitState::Closed,
            Some(until) if Instant::now() < until => CircuitState::Open,
            Some(_) => CircuitState::HalfOpen,
        }
    }

    /// Copies every endpoint's state into `llm_circuit_state` (0 closed, 1 half-open, 2 open).
    /// The endpoints are the registry's (names from the file): the label stays bounded.
    pub fn export(&self, metrics: &Metrics) {
        let names: Vec<String> = match self.circuits.lock() {
            Ok(circuits) => circuits.keys().cloned().collect(),
            Err(_) => return,
        };
        for name in names {
            let value = match self.state(&name) {
                CircuitState::Closed => 0,
                CircuitState::HalfOpen => 1,
                CircuitState::Open => 2,
            };
            metrics.set_circuit(&name, value);
        }
    }
}

/// The endpoint's circuit, made closed on first use.
fn circuit<'a>(circuits: &'a mut HashMap<String, Circuit>, endpoint: &str) -> &'a mut Circuit {
    circuits.entry(endpoint.to_owned()).or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use llm_shared::models::ProviderKind;

    #[test]
    fn opens_after_the_threshold_and_probes_after_the_cooldown() {
        let breakers = CircuitBreakers::new(CircuitPolicy {
            failure_threshold: 2,
            cooldown_secs: 0,
        });
        let p = ProviderKind::OpenAi;
        assert!(breakers.admit(p).is_ok());
        breakers.record(p, false);
        assert_eq!(breakers.state(p), CircuitState::Closed);
        breakers.record(p, false);
        // cooldown 0: immediately half-open, one probe at a time
        assert_eq!(breakers.state(p), CircuitState::HalfOpen);
        assert!(breakers.admit(p).is_ok());
        assert!(breakers.admit(p).is_err());
        breakers.record(p, true);
        assert_eq!(breakers.state(p), CircuitState::Closed);
        assert!(breakers.admit(p).is_ok());

        let slow = CircuitBreakers::new(CircuitPolicy {
            failure_threshold: 1,
            cooldown_secs: 60,
        });
        slow.record(p, false);
        assert_eq!(slow.state(p), CircuitState::Open);
        assert!(slow.admit(p).unwrap_err() > Duration::from_secs(50));
        assert!(slow.admit(ProviderKind::Anthropic).is_ok());
    }

    #[test]
    fn a_probe_without_a_verdict_lets_the_next_call_probe() {
        let breakers = CircuitBreakers::new(CircuitPolicy {
            failure_threshold: 1,
            cooldown_secs: 0,
        });
        let p = ProviderKind::Mock;
        breakers.record(p, false);
        assert!(breakers.admit(p).is_ok(), "the probe");
        assert!(breakers.admit(p).is_err(), "one probe at a time");
        breakers.settle(p);
        assert!(breakers.admit(p).is_ok(), "the next probe");
        assert_eq!(breakers.state(p), CircuitState::HalfOpen);
    }
}

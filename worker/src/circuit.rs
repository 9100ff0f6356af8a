//! Per-provider circuit breakers (one set per worker process): after `failure_threshold`
//! consecutive provider-side failures a provider is skipped for `cooldown_secs`; then one call
//! is let through as a probe, and its outcome closes or re-opens the circuit.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

use llm_shared::metrics::Metrics;
use llm_shared::models::{CircuitPolicy, ProviderKind};

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
    circuits: Mutex<HashMap<ProviderKind, Circuit>>,
}

impl CircuitBreakers {
    pub fn new(policy: CircuitPolicy) -> Self {
        Self {
            policy,
            circuits: Mutex::new(HashMap::new()),
        }
    }

    /// Whether a call to the provider may go ahead now; `Err` says when it may again.
    pub fn admit(&self, provider: ProviderKind) -> Result<(), Duration> {
        let Ok(mut circuits) = self.circuits.lock() else {
            return Ok(());
        };
        let circuit = circuits.entry(provider).or_default();
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

    pub fn record(&self, provider: ProviderKind, success: bool) {
        let Ok(mut circuits) = self.circuits.lock() else {
            return;
        };
        let circuit = circuits.entry(provider).or_default();
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
                    provider = provider.as_str(),
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
    pub fn settle(&self, provider: ProviderKind) {
        if let Ok(mut circuits) = self.circuits.lock()
            && let Some(circuit) = circuits.get_mut(&provider)
        {
            circuit.probe_in_flight = false;
        }
    }

    pub fn state(&self, provider: ProviderKind) -> CircuitState {
        let Ok(circuits) = self.circuits.lock() else {
            return CircuitState::Closed;
        };
        match circuits.get(&provider).and_then(|c| c.open_until) {
            None => CircuitState::Closed,
            Some(until) if Instant::now() < until => CircuitState::Open,
            Some(_) => CircuitState::HalfOpen,
        }
    }

    /// Copies every provider's state into `llm_circuit_state` (0 closed, 1 half-open, 2 open).
    pub fn export(&self, metrics: &Metrics) {
        for kind in [
            ProviderKind::OpenAi,
            ProviderKind::Anthropic,
            ProviderKind::Ollama,
            ProviderKind::Mock,
        ] {
            let value = match self.state(kind) {
                CircuitState::Closed => 0,
                CircuitState::HalfOpen => 1,
                CircuitState::Open => 2,
            };
            metrics.set_circuit(kind, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

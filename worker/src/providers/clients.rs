//! The provider clients of one registry: one per endpoint (each with its own connection pool),
//! plus the mock, and where each model's next call goes.
//!
//! A model spread across several endpoints takes them in turn (round-robin per call, retries
//! included, counted per model in this process), skipping endpoints that are unavailable; the
//! caller skips those whose circuit is open by trying the next route.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{MockProvider, ProviderClient};
use llm_shared::models::{ModelRegistry, ModelSpec, ProviderKind, UpstreamSettings};

/// Where one call can go.
#[derive(Clone, Copy)]
pub struct Route<'a> {
    /// The endpoint's name (the mock's circuit is `mock`): its circuit and its budget key.
    pub endpoint: &'a str,
    pub client: &'a ProviderClient,
    /// The endpoint's settings (timeouts, limits); `None` for the mock.
    pub settings: Option<&'a UpstreamSettings>,
}

pub struct ClientSet {
    endpoints: HashMap<String, (ProviderClient, UpstreamSettings)>,
    mock: ProviderClient,
    /// Each spread model's next turn.
    turns: HashMap<String, AtomicUsize>,
}

impl ClientSet {
    pub fn new(registry: &ModelRegistry, mock: &MockProvider) -> Self {
        Self {
            endpoints: registry
                .endpoints()
                .iter()
                .map(|e| {
                    (
                        e.name.clone(),
                        (ProviderClient::for_endpoint(e), e.settings.clone()),
                    )
                })
                .collect(),
            mock: ProviderClient::Mock(mock.clone()),
            turns: registry
                .all()
                .iter()
                .filter(|m| m.endpoints.len() > 1)
                .map(|m| (m.id.clone(), AtomicUsize::new(0)))
                .collect(),
        }
    }

    /// Every endpoint name (and the mock's), for the circuits to export.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.endpoints
            .keys()
            .map(String::as_str)
            .chain([ProviderKind::Mock.as_str()])
    }

    /// The routes of the model's next call, in the order to try them: its usable endpoints,
    /// starting from its turn.
    pub fn routes<'a>(&'a self, model: &ModelSpec) -> Vec<Route<'a>> {
        if model.provider == ProviderKind::Mock {
            return vec![Route {
                endpoint: ProviderKind::Mock.as_str(),
                client: &self.mock,
                settings: None,
            }];
        }
        let usable: Vec<Route<'a>> = model
            .endpoints
            .iter()
            .filter_map(|name| {
                let (name, (client, settings)) = self.endpoints.get_key_value(name)?;
                settings.unavailable.is_none().then_some(Route {
                    endpoint: name.as_str(),
                    client,
                    settings: Some(settings),
                })
            })
            .collect();
        let start = match self.turns.get(&model.id) {
            Some(turn) if usable.len() > 1 => turn.fetch_add(1, Ordering::Relaxed) % usable.len(),
            _ => 0,
        };
        let mut routes = usable;
        routes.rotate_left(start);
        routes
    }
}

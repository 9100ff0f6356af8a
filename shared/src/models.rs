//! The model registry: which model ids exist, which provider serves each, and its limits.
//!
//! For now the registry holds the built-in `mock` models; the providers issue grows it into a
//! config file with real upstream models, prices and fallback chains.

use serde::Serialize;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ModelInfo {
    pub id: &'static str,
    pub provider: &'static str,
    pub upstream_model: &'static str,
    pub context_window: u32,
    pub max_output_tokens: u32,
}

const BUILTIN: &[ModelInfo] = &[
    ModelInfo {
        id: "mock",
        provider: "mock",
        upstream_model: "mock-1",
        context_window: 32_768,
        max_output_tokens: 4_096,
    },
    ModelInfo {
        id: "mock-large",
        provider: "mock",
        upstream_model: "mock-large-1",
        context_window: 200_000,
        max_output_tokens: 8_192,
    },
];

#[derive(Debug, Clone)]
pub struct ModelRegistry {
    models: Vec<ModelInfo>,
    default_model: String,
}

impl ModelRegistry {
    pub fn builtin(default_model: &str) -> Self {
        Self {
            models: BUILTIN.to_vec(),
            default_model: default_model.to_owned(),
        }
    }

    pub fn get(&self, id: &str) -> Option<&ModelInfo> {
        self.models.iter().find(|m| m.id == id)
    }

    pub fn default_model(&self) -> &str {
        &self.default_model
    }

    pub fn ids(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.models.iter().map(|m| m.id)
    }
}

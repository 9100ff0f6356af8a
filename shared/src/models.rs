//! The model registry: which model ids exist, which endpoint(s) serve each, its limits, prices,
//! capabilities and fallback chain, plus the retry and circuit-breaker policies.
//!
//! Read once at start from `config/models.toml` (embedded in the binaries; `MODELS_FILE`
//! points to another file). Endpoints (`endpoints`) hold the base URLs and name the variables
//! holding the keys: a model none of whose endpoints has its key or URL stays listed, as
//! unavailable with the reason, and is skipped in fallback chains.
//!
//! Mock models exist only with `MOCK_PROVIDER=true`: otherwise they are left out of the
//! registry as it loads (and out of every fallback chain), so that no listing shows them, no
//! request can name them, and the default model is never one of them. A deployment may run
//! without one: the mock answers anything for free and takes failure and latency controls.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::CommonConfig;
pub use crate::endpoints::{Endpoint, EndpointKind, ProviderKind, Timeouts, UpstreamSettings};
use crate::endpoints::{EndpointFile, ProvidersFile};

/// What a deployment with no runnable model is told (at start, and by a submit that names no
/// model).
pub const NO_MODEL_AVAILABLE: &str = "no model is available: set OPENAI_API_KEY, \
     ANTHROPIC_API_KEY or OLLAMA_URL (MOCK_PROVIDER=true runs the mock provider, for local use)";

/// The registry file the binaries carry with them.
const EMBEDDED: &str = include_str!("../../config/models.toml");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Capability {
    Streaming,
    Json,
    /// Tool (function) calling: the request's `tools` are passed to the model.
    Tools,
}

/// One model, as the registry file declares it: `provider` alone (the built-in endpoint of
/// that name, or the mock), or `endpoint` / `endpoints` naming where its calls go.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelFile {
    id: String,
    #[serde(default)]
    provider: Option<ProviderKind>,
    #[serde(default)]
    endpoint: Option<String>,
    #[serde(default)]
    endpoints: Option<Vec<String>>,
    upstream: String,
    context_window: u32,
    max_output_tokens: u32,
    input_price: f64,
    output_price: f64,
    #[serde(default)]
    capabilities: Vec<Capability>,
    #[serde(default)]
    fallback: Vec<String>,
}

/// One model of the registry.
#[derive(Debug, Clone, Serialize)]
pub struct ModelSpec {
    pub id: String,
    /// The wire format it is called in (of its endpoints), or `mock`.
    pub provider: ProviderKind,
    /// The endpoints its calls are spread across (round-robin, skipping unavailable ones and
    /// open circuits); empty for mock models.
    #[serde(skip)]
    pub endpoints: Vec<String>,
    /// The provider's own name for the model (Azure OpenAI: the deployment, unless the
    /// endpoint fixes one).
    pub upstream: String,
    pub context_window: u32,
    pub max_output_tokens: u32,
    /// USD per million input tokens.
    pub input_price: f64,
    /// USD per million output tokens.
    pub output_price: f64,
    #[serde(default)]
    pub capabilities: Vec<Capability>,
    /// LiveRegistry tried, in order, when this one keeps failing.
    #[serde(default)]
    pub fallback: Vec<String>,
    /// Other names a request may give this model by (the registry's `[aliases]`).
    pub aliases: Vec<String>,
}

impl ModelSpec {
    pub fn supports(&self, capability: Capability) -> bool {
        self.capabilities.contains(&capability)
    }

    /// Estimated cost in USD of a call with these token counts, at the registry's prices.
    pub fn cost_usd(&self, prompt_tokens: u32, completion_tokens: u32) -> f64 {
        (f64::from(prompt_tokens) * self.input_price
            + f64::from(completion_tokens) * self.output_price)
            / 1e6
    }
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    pub attempts_per_model: u32,
    pub base_delay_ms: u64,
    pub max_delay_ms: u64,
    pub reschedule_after_secs: u64,
}

impl RetryPolicy {
    pub fn reschedule_after(&self) -> Duration {
        Duration::from_secs(self.reschedule_after_secs)
    }
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitPolicy {
    pub failure_threshold: u32,
    pub cooldown_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryFile {
    retry: RetryPolicy,
    circuit: CircuitPolicy,
    #[serde(default)]
    providers: ProvidersFile,
    #[serde(default)]
    endpoints: BTreeMap<String, EndpointFile>,
    /// Other names of models: `"gpt-4" = "gpt-4o"`.
    #[serde(default)]
    aliases: BTreeMap<String, String>,
    models: Vec<ModelFile>,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot read the model registry {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the model registry {path} is invalid: {message}")]
    Invalid { path: String, message: String },
    #[error("DEFAULT_MODEL `{0}` is not in the model registry")]
    UnknownDefault(String),
    #[error(
        "DEFAULT_MODEL `{0}` is a mock model and MOCK_PROVIDER is off: name a real model, or set \
         MOCK_PROVIDER=true (local runs and tests only)"
    )]
    MockDefault(String),
}

#[derive(Debug, Clone)]
pub struct ModelRegistry {
    models: Vec<ModelSpec>,
    /// The mock models the file declares, left out because `MOCK_PROVIDER` is off.
    mocks_off: Vec<String>,
    default_model: String,
    endpoints: Vec<Endpoint>,
    pub retry: RetryPolicy,
    pub circuit: CircuitPolicy,
}

impl ModelRegistry {
    /// Loads the registry named by the configuration (or the embedded one) and resolves
    /// provider availability and the default model.
    pub fn load(config: &CommonConfig) -> Result<Self, RegistryError> {
        let (path, text) = match &config.models_file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| RegistryError::Read {
                    path: path.clone(),
                    source,
                })?;
                (path.clone(), text)
            }
            None => (
                "config/models.toml (embedded)".to_owned(),
                EMBEDDED.to_owned(),
            ),
        };
        let registry = Self::from_toml(&path, &text, config)?;
        if !registry.any_available() {
            // Started anyway: the api answers, lists the models with why each cannot run, and
            // refuses submits saying so (a restart with a key or URL set fixes it).
            tracing::warn!("{NO_MODEL_AVAILABLE}");
        }
        Ok(registry)
    }

    pub fn from_toml(path: &str, text: &str, config: &CommonConfig) -> Result<Self, RegistryError> {
        let invalid = |message: String| RegistryError::Invalid {
            path: path.to_owned(),
            message,
        };
        let file: RegistryFile = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        let endpoints =
            crate::endpoints::resolve(file.providers, file.endpoints, config).map_err(invalid)?;
        let models = file
            .models
            .into_iter()
            .map(|m| model_spec(m, &endpoints))
            .collect::<Result<Vec<_>, _>>()
            .map_err(invalid)?;
        let mut seen = HashSet::new();
        for model in &models {
            if !seen.insert(model.id.as_str()) {
                return Err(invalid(format!("model `{}` is declared twice", model.id)));
            }
            if model.id.len() > 50 {
                return Err(invalid(format!(
                    "model id `{}` is longer than 50 characters",
                    model.id
                )));
            }
        }
        for model in &models {
            if let Some(unknown) = model.fallback.iter().find(|f| !seen.contains(f.as_str())) {
                return Err(invalid(format!(
                    "model `{}` falls back to unknown model `{unknown}`",
                    model.id
                )));
            }
        }
        for (alias, target) in &file.aliases {
            if seen.contains(alias.as_str()) {
                return Err(invalid(format!(
                    "alias `{alias}` is also the id of a model"
                )));
            }
            if !seen.contains(target.as_str()) {
                return Err(invalid(format!(
                    "alias `{alias}` names unknown model `{target}`"
                )));
            }
            if alias.is_empty() || alias.len() > 50 {
                return Err(invalid(format!(
                    "alias `{alias}` must be 1 to 50 characters"
                )));
            }
        }
        let (mut models, mocks_off) = if config.mock_provider {
            (models, Vec::new())
        } else {
            without_mocks(models)
        };
        // An alias of a mock model left out goes with it.
        for (alias, target) in file.aliases {
            if let Some(model) = models.iter_mut().find(|m| m.id == target) {
                model.aliases.push(alias);
            }
        }
        let default_model = match &config.default_model {
            Some(name) if !name.is_empty() => {
                let id = resolve_alias(&models, name);
                if mocks_off.iter().any(|m| m == id) {
                    return Err(RegistryError::MockDefault(name.clone()));
                }
                if !models.iter().any(|m| m.id == id) {
                    return Err(RegistryError::UnknownDefault(name.clone()));
                }
                id.to_owned()
            }
            _ => pick_default(&models, &endpoints),
        };
        Ok(Self {
            models,
            mocks_off,
            default_model,
            endpoints,
            retry: file.retry,
            circuit: file.circuit,
        })
    }

    /// The model a request names: by its id, or by one of its aliases. Every name that
    /// comes in (a body's `model`, a template's default, `DEFAULT_MODEL`) goes through here,
    /// and what is stored is the model's id, so usage, cache and limits are per real model.
    pub fn get(&self, name: &str) -> Option<&ModelSpec> {
        self.models.iter().find(|m| m.id == name).or_else(|| {
            self.models
                .iter()
                .find(|m| m.aliases.iter().any(|a| a == name))
        })
    }

    pub fn all(&self) -> &[ModelSpec] {
        &self.models
    }

    pub fn default_model(&self) -> &str {
        &self.default_model
    }

    pub fn ids(&self) -> impl Iterator<Item = &str> + '_ {
        self.models.iter().map(|m| m.id.as_str())
    }

    /// True when some model of the registry can run (its provider is configured).
    pub fn any_available(&self) -> bool {
        self.models
            .iter()
            .any(|m| self.unavailable_reason(m).is_none())
    }

    /// Why `id` names no model of this registry (for a request stored before it changed).
    pub fn not_found_reason(&self, id: &str) -> String {
        if self.mocks_off.iter().any(|m| m == id) {
            format!("model `{id}` is a mock model and MOCK_PROVIDER is off")
        } else {
            format!("model `{id}` is not in the model registry")
        }
    }

    /// Why the model cannot be used now, if it cannot: none of its endpoints is usable (the
    /// reason of the first).
    pub fn unavailable_reason(&self, model: &ModelSpec) -> Option<&str> {
        unavailable(model, &self.endpoints)
    }

    /// Every endpoint of the registry, in file order (built-in sections first).
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// The endpoint of this name: its kind, settings and `limits` (the name is the budget key).
    pub fn endpoint(&self, name: &str) -> Option<&Endpoint> {
        self.endpoints.iter().find(|e| e.name == name)
    }

    /// The endpoints the model's calls are spread across, in its order.
    pub fn endpoints_of<'a>(&'a self, model: &'a ModelSpec) -> impl Iterator<Item = &'a Endpoint> {
        model
            .endpoints
            .iter()
            .filter_map(|name| self.endpoint(name))
    }

    /// The model followed by its fallbacks, without repeats, in order.
    pub fn chain(&self, id: &str) -> Vec<&ModelSpec> {
        let mut chain = Vec::new();
        let mut seen = HashSet::new();
        if let Some(first) = self.get(id) {
            seen.insert(first.id.as_str());
            chain.push(first);
            for next in &first.fallback {
                if let Some(model) = self.get(next)
                    && seen.insert(model.id.as_str())
                {
                    chain.push(model);
                }
            }
        }
        chain
    }
}

/// A model of the file with its endpoints checked and its provider resolved.
fn model_spec(file: ModelFile, endpoints: &[Endpoint]) -> Result<ModelSpec, String> {
    let id = &file.id;
    let names = match (file.endpoint, file.endpoints, file.provider) {
        (Some(_), Some(_), _) => {
            return Err(format!(
                "model `{id}` sets both `endpoint` and `endpoints`: name one or the other"
            ));
        }
        (Some(one), None, _) => vec![one],
        (None, Some(many), _) => many,
        (None, None, Some(ProviderKind::Mock)) => Vec::new(),
        (None, None, Some(kind)) => vec![kind.as_str().to_owned()],
        (None, None, None) => {
            return Err(format!(
                "model `{id}` names no `endpoint` (nor a `provider`)"
            ));
        }
    };
    if file.provider == Some(ProviderKind::Mock) && !names.is_empty() {
        return Err(format!("mock model `{id}` cannot name an endpoint"));
    }
    if file.provider != Some(ProviderKind::Mock) && names.is_empty() {
        return Err(format!("model `{id}` has an empty `endpoints` list"));
    }
    let mut provider = file.provider;
    for (i, name) in names.iter().enumerate() {
        if names[..i].contains(name) {
            return Err(format!("model `{id}` names endpoint `{name}` twice"));
        }
        let Some(endpoint) = endpoints.iter().find(|e| &e.name == name) else {
            return Err(format!("model `{id}` names unknown endpoint `{name}`"));
        };
        if endpoint.kind == EndpointKind::AzureOpenAi
            && endpoint.settings.deployment.is_none()
            && !crate::endpoints::valid_deployment(&file.upstream)
        {
            return Err(format!(
                "model `{id}`: its upstream `{}`, the deployment on azure-openai endpoint `{name}`, {}",
                file.upstream,
                crate::endpoints::DEPLOYMENT_RULE
            ));
        }
        let wire = endpoint.kind.provider();
        match provider {
            Some(p) if p != wire => {
                return Err(format!(
                    "model `{id}`: endpoint `{name}` speaks {}, not {}",
                    wire.as_str(),
                    p.as_str()
                ));
            }
            _ => provider = Some(wire),
        }
    }
    Ok(ModelSpec {
        provider: provider.unwrap_or(ProviderKind::Mock),
        endpoints: names,
        id: file.id,
        upstream: file.upstream,
        context_window: file.context_window,
        max_output_tokens: file.max_output_tokens,
        input_price: file.input_price,
        output_price: file.output_price,
        capabilities: file.capabilities,
        fallback: file.fallback,
        aliases: Vec::new(),
    })
}

/// The id of the model `name` is an alias of, or `name` itself.
fn resolve_alias<'a>(models: &'a [ModelSpec], name: &'a str) -> &'a str {
    models
        .iter()
        .find(|m| m.aliases.iter().any(|a| a == name))
        .map_or(name, |m| m.id.as_str())
}

/// Why none of the model's endpoints is usable (mock models always are).
fn unavailable<'a>(model: &ModelSpec, endpoints: &'a [Endpoint]) -> Option<&'a str> {
    let mut first = None;
    for name in &model.endpoints {
        match endpoints.iter().find(|e| &e.name == name) {
            Some(e) if e.available() => return None,
            Some(e) => first = first.or(e.settings.unavailable.as_deref()),
            None => first = first.or(Some("its endpoint is not in the registry")),
        }
    }
    first
}

/// The models without the mock ones (and without them in any fallback chain), and the ids of
/// those left out.
fn without_mocks(models: Vec<ModelSpec>) -> (Vec<ModelSpec>, Vec<String>) {
    let (mocks, mut real): (Vec<_>, Vec<_>) = models
        .into_iter()
        .partition(|m| m.provider == ProviderKind::Mock);
    let mocks: Vec<String> = mocks.into_iter().map(|m| m.id).collect();
    for model in &mut real {
        model.fallback.retain(|id| !mocks.contains(id));
    }
    (real, mocks)
}

/// Without `DEFAULT_MODEL`: the first model (in file order) of a configured real provider,
/// else the first mock model (present only with `MOCK_PROVIDER`), so a machine with no keys
/// runs on the mock provider; else the first model, unavailable, whose submits say why.
fn pick_default(models: &[ModelSpec], endpoints: &[Endpoint]) -> String {
    let usable =
        |m: &&ModelSpec| m.provider != ProviderKind::Mock && unavailable(m, endpoints).is_none();
    models
        .iter()
        .find(usable)
        .or_else(|| models.iter().find(|m| m.provider == ProviderKind::Mock))
        .or(models.first())
        .map(|m| m.id.clone())
        .unwrap_or_default()
}

/// The registry in use, replaceable while the process runs (an admin reload, or the
/// `model.updated` event, followed by every process: `registry_reloads`). Readers take a snapshot; a reload never blocks them for long.
#[derive(Debug, Clone)]
pub struct LiveRegistry {
    current: std::sync::Arc<std::sync::RwLock<std::sync::Arc<ModelRegistry>>>,
    config: CommonConfig,
}

impl LiveRegistry {
    pub fn new(registry: ModelRegistry, config: CommonConfig) -> Self {
        Self {
            current: std::sync::Arc::new(std::sync::RwLock::new(std::sync::Arc::new(registry))),
            config,
        }
    }

    /// The registry as it is now.
    pub fn current(&self) -> std::sync::Arc<ModelRegistry> {
        match self.current.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Reads the registry file again; on error the registry in use stays.
    pub fn reload(&self) -> Result<std::sync::Arc<ModelRegistry>, RegistryError> {
        let fresh = std::sync::Arc::new(ModelRegistry::load(&self.config)?);
        match self.current.write() {
            Ok(mut guard) => *guard = fresh.clone(),
            Err(poisoned) => *poisoned.into_inner() = fresh.clone(),
        }
        Ok(fresh)
    }
}

/// What a caller needs from a model (`POST /api/v1/models/select`).
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Requirements {
    /// Smallest context window acceptable, in tokens.
    #[serde(default)]
    pub min_context: Option<u32>,
    #[serde(default)]
    pub capabilities: Vec<Capability>,
    /// Highest acceptable price per million input / output tokens.
    #[serde(default)]
    pub max_input_price: Option<f64>,
    #[serde(default)]
    pub max_output_price: Option<f64>,
    /// Providers to favour, in order of preference.
    #[serde(default)]
    pub preferred_providers: Vec<ProviderKind>,
    /// Size of the prompt, in tokens (or give `prompt` and it is estimated).
    #[serde(default)]
    pub prompt_tokens: Option<u32>,
    #[serde(default)]
    pub prompt: Option<String>,
    /// Output expected, in tokens (for the cost estimate and the output limit).
    #[serde(default)]
    pub expected_output_tokens: Option<u32>,
}

/// A model that fits, with why it ranks where it does.
#[derive(Debug, Clone, Serialize)]
pub struct Candidate {
    pub model: String,
    pub provider: ProviderKind,
    pub estimated_cost_usd: f64,
    pub reason: String,
}

/// A model that does not fit, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Rejected {
    pub model: String,
    pub reason: String,
}

/// Ranks the models that meet the requirements: available ones only; preferred providers
/// first (in the given order), then the cheapest estimate for this prompt, then the lower
/// prices, then the larger context window. The mock provider only wins when no real model fits.
pub fn select(
    registry: &ModelRegistry,
    req: &Requirements,
) -> Result<Vec<Candidate>, Vec<Rejected>> {
    let prompt_tokens = req
        .prompt_tokens
        .or_else(|| {
            req.prompt
                .as_deref()
                .map(crate::generation::estimate_tokens)
        })
        .unwrap_or(0);
    let output = req.expected_output_tokens.unwrap_or(0);
    let mut fits = Vec::new();
    let mut rejected = Vec::new();
    for model in registry.all() {
        let reject = |reason: String| Rejected {
            model: model.id.clone(),
            reason,
        };
        if let Some(reason) = registry.unavailable_reason(model) {
            rejected.push(reject(format!("unavailable: {reason}")));
        } else if req
            .min_context
            .is_some_and(|min| model.context_window < min)
        {
            rejected.push(reject(format!(
                "context window {} is below {}",
                model.context_window,
                req.min_context.unwrap_or(0)
            )));
        } else if prompt_tokens.saturating_add(output) > model.context_window {
            rejected.push(reject(format!(
                "prompt and output ({} tokens) exceed the context window {}",
                prompt_tokens.saturating_add(output),
                model.context_window
            )));
        } else if output > model.max_output_tokens {
            rejected.push(reject(format!(
                "expected output {output} exceeds its limit {}",
                model.max_output_tokens
            )));
        } else if let Some(missing) = req.capabilities.iter().find(|c| !model.supports(**c)) {
            rejected.push(reject(
                format!("lacks the {missing:?} capability").to_lowercase(),
            ));
        } else if req
            .max_input_price
            .is_some_and(|max| model.input_price > max)
        {
            rejected.push(reject(format!(
                "input price {} is above {}",
                model.input_price,
                req.max_input_price.unwrap_or(0.0)
            )));
        } else if req
            .max_output_price
            .is_some_and(|max| model.output_price > max)
        {
            rejected.push(reject(format!(
                "output price {} is above {}",
                model.output_price,
                req.max_output_price.unwrap_or(0.0)
            )));
        } else {
            fits.push(model);
        }
    }
    if fits.is_empty() {
        return Err(rejected);
    }
    let preference = |m: &ModelSpec| {
        req.preferred_providers
            .iter()
            .position(|p| *p == m.provider)
            .unwrap_or(usize::MAX)
    };
    fits.sort_by(|a, b| {
        (a.provider == ProviderKind::Mock)
            .cmp(&(b.provider == ProviderKind::Mock))
            .then(preference(a).cmp(&preference(b)))
            .then(
                a.cost_usd(prompt_tokens, output)
                    .total_cmp(&b.cost_usd(prompt_tokens, output)),
            )
            .then((a.input_price + a.output_price).total_cmp(&(b.input_price + b.output_price)))
            .then(b.context_window.cmp(&a.context_window))
    });
    Ok(fits
        .into_iter()
        .map(|m| {
            let cost = m.cost_usd(prompt_tokens, output);
            let mut why = Vec::new();
            if preference(m) != usize::MAX {
                why.push(format!("preferred provider {}", m.provider.as_str()));
            }
            why.push(format!("estimated ${cost:.6} for this request"));
            why.push(format!("{} tokens of context", m.context_window));
            Candidate {
                model: m.id.clone(),
                provider: m.provider,
                estimated_cost_usd: cost,
                reason: why.join(", "),
            }
        })
        .collect())
}

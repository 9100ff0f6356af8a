//! Provider endpoints: the named places a model's calls go (`[endpoints.<name>]` in the
//! registry file), each with its wire format (`kind`), base URL, key, extra headers, timeouts
//! and limits. Any number of them: two OpenAI keys, an Azure OpenAI resource per region, a
//! vLLM box, OpenRouter, …
//!
//! Keys are never written in the file: an endpoint names the environment variable holding its
//! key (`api_key_env`), read when the registry loads. An endpoint whose key (or URL) is missing
//! is unavailable, with the reason, and so are the models that can reach nothing else.
//!
//! The legacy `[providers.openai|anthropic|ollama]` sections are still read: each declares the
//! endpoint of the same name on `OPENAI_API_KEY` / `ANTHROPIC_API_KEY` / `OLLAMA_URL`.

use std::collections::BTreeMap;
use std::time::Duration;

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use crate::budget::EndpointLimits;
use crate::config::{CommonConfig, present};

/// The wire format a model's calls speak (an Azure OpenAI or OpenAI-compatible endpoint
/// speaks `openai`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    #[serde(rename = "openai")]
    OpenAi,
    Anthropic,
    Ollama,
    Mock,
}

/// A provider's name, e.g. as the key of its built-in endpoint's circuit.
impl AsRef<str> for ProviderKind {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OpenAi => "openai",
            Self::Anthropic => "anthropic",
            Self::Ollama => "ollama",
            Self::Mock => "mock",
        }
    }
}

/// Longest endpoint name: names are metric label values and budget keys.
pub const MAX_ENDPOINT_NAME: usize = 50;

/// What an Azure OpenAI deployment name may be, said in load errors.
pub(crate) const DEPLOYMENT_RULE: &str =
    "is not a deployment name (1 to 64 letters, digits, `-`, `_` or `.`, not `.` or `..`)";

/// A deployment name goes into the URL's path: it must stay one segment of it.
pub(crate) fn valid_deployment(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// The wire format and authentication of an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub enum EndpointKind {
    /// OpenAI itself: `Authorization: Bearer <key>`, a key is required.
    #[serde(rename = "openai")]
    OpenAi,
    /// OpenAI's wire format on any base URL (vLLM, Groq, OpenRouter, …); the key is optional.
    #[serde(rename = "openai-compatible")]
    OpenAiCompatible,
    /// Azure OpenAI: `{base_url}/openai/deployments/{deployment}/chat/completions?api-version=…`
    /// with an `api-key` header.
    #[serde(rename = "azure-openai")]
    AzureOpenAi,
    #[serde(rename = "anthropic")]
    Anthropic,
    #[serde(rename = "ollama")]
    Ollama,
}

impl EndpointKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OpenAi => "openai",
            Self::OpenAiCompatible => "openai-compatible",
            Self::AzureOpenAi => "azure-openai",
            Self::Anthropic => "anthropic",
            Self::Ollama => "ollama",
        }
    }

    /// The provider whose wire format it speaks (what requests and health are recorded under).
    pub fn provider(self) -> ProviderKind {
        match self {
            Self::OpenAi | Self::OpenAiCompatible | Self::AzureOpenAi => ProviderKind::OpenAi,
            Self::Anthropic => ProviderKind::Anthropic,
            Self::Ollama => ProviderKind::Ollama,
        }
    }

    /// Kinds whose upstream refuses every call without a key.
    fn needs_key(self) -> bool {
        matches!(self, Self::OpenAi | Self::AzureOpenAi | Self::Anthropic)
    }
}

/// Timeouts of one upstream.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct Timeouts {
    #[serde(default = "default_connect_ms")]
    pub connect_timeout_ms: u64,
    #[serde(default = "default_request_secs")]
    pub request_timeout_secs: u64,
    #[serde(default = "default_first_token_secs")]
    pub first_token_timeout_secs: u64,
    #[serde(default = "default_idle_secs")]
    pub idle_timeout_secs: u64,
}

fn default_connect_ms() -> u64 {
    5000
}
fn default_request_secs() -> u64 {
    120
}
fn default_first_token_secs() -> u64 {
    30
}
fn default_idle_secs() -> u64 {
    30
}

impl Timeouts {
    pub fn connect(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
    pub fn request(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }
    pub fn first_token(&self) -> Duration {
        Duration::from_secs(self.first_token_timeout_secs)
    }
    pub fn idle(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }
}

/// `[providers.<name>]`: the legacy section of a built-in endpoint.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ProviderFile {
    #[serde(default)]
    base_url: Option<String>,
    #[serde(default)]
    version: Option<String>,
    #[serde(flatten)]
    timeouts: Timeouts,
    /// `[providers.<name>.limits]`: what the provider allows this service's key.
    #[serde(default)]
    limits: EndpointLimits,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProvidersFile {
    #[serde(default)]
    openai: Option<ProviderFile>,
    #[serde(default)]
    anthropic: Option<ProviderFile>,
    #[serde(default)]
    ollama: Option<ProviderFile>,
}

/// `[endpoints.<name>]`, as the registry file declares it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EndpointFile {
    kind: EndpointKind,
    #[serde(default)]
    base_url: Option<String>,
    /// A variable that, when set, replaces `base_url` (a proxy or a fake).
    #[serde(default)]
    base_url_env: Option<String>,
    /// The variable holding the key; unset (or empty) makes the endpoint unavailable.
    #[serde(default)]
    api_key_env: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    /// `anthropic-version` (anthropic).
    #[serde(default)]
    version: Option<String>,
    /// `api-version` query parameter (azure-openai, required).
    #[serde(default)]
    api_version: Option<String>,
    /// The deployment every call goes to (azure-openai); without it, the model's `upstream`.
    #[serde(default)]
    deployment: Option<String>,
    #[serde(default = "default_connect_ms")]
    connect_timeout_ms: u64,
    #[serde(default = "default_request_secs")]
    request_timeout_secs: u64,
    #[serde(default = "default_first_token_secs")]
    first_token_timeout_secs: u64,
    #[serde(default = "default_idle_secs")]
    idle_timeout_secs: u64,
    #[serde(default)]
    limits: EndpointLimits,
}

/// How to reach one endpoint, or why it cannot be reached.
#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    pub base_url: String,
    pub api_key: Option<SecretString>,
    /// `anthropic-version` header.
    pub version: Option<String>,
    /// Azure OpenAI's `api-version`.
    pub api_version: Option<String>,
    /// Azure OpenAI's deployment, when the endpoint fixes it.
    pub deployment: Option<String>,
    /// Extra headers sent with every call.
    pub headers: Vec<(String, String)>,
    pub timeouts: Timeouts,
    /// What the provider allows this endpoint's key, shared by every worker.
    pub limits: EndpointLimits,
    /// `None` when usable; otherwise why not.
    pub unavailable: Option<String>,
}

/// One named endpoint of the registry.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Its name in the registry: the circuit's metric label and the budget key.
    pub name: String,
    pub kind: EndpointKind,
    pub settings: UpstreamSettings,
}

impl Endpoint {
    pub fn available(&self) -> bool {
        self.settings.unavailable.is_none()
    }
}

/// The endpoints of a registry file: the legacy provider sections, then `[endpoints.*]`.
pub(crate) fn resolve(
    providers: ProvidersFile,
    endpoints: BTreeMap<String, EndpointFile>,
    config: &CommonConfig,
) -> Result<Vec<Endpoint>, String> {
    let mut declared: Vec<(String, EndpointFile)> = Vec::new();
    let legacy = [
        (
            "openai",
            EndpointKind::OpenAi,
            providers.openai,
            Some("OPENAI_API_KEY"),
            "OPENAI_BASE_URL",
        ),
        (
            "anthropic",
            EndpointKind::Anthropic,
            providers.anthropic,
            Some("ANTHROPIC_API_KEY"),
            "ANTHROPIC_BASE_URL",
        ),
        (
            "ollama",
            EndpointKind::Ollama,
            providers.ollama,
            None,
            "OLLAMA_URL",
        ),
    ];
    for (name, kind, section, key_env, url_env) in legacy {
        let Some(p) = section else { continue };
        declared.push((
            name.to_owned(),
            EndpointFile {
                kind,
                // Ollama's section never enabled it by itself: OLLAMA_URL does.
                base_url: if kind == EndpointKind::Ollama {
                    None
                } else {
                    p.base_url
                },
                base_url_env: Some(url_env.to_owned()),
                api_key_env: key_env.map(str::to_owned),
                headers: BTreeMap::new(),
                version: p.version,
                api_version: None,
                deployment: None,
                connect_timeout_ms: p.timeouts.connect_timeout_ms,
                request_timeout_secs: p.timeouts.request_timeout_secs,
                first_token_timeout_secs: p.timeouts.first_token_timeout_secs,
                idle_timeout_secs: p.timeouts.idle_timeout_secs,
                limits: p.limits,
            },
        ));
    }
    for (name, file) in endpoints {
        if declared.iter().any(|(n, _)| *n == name) {
            return Err(format!(
                "endpoint `{name}` is declared twice ([providers.{name}] and [endpoints.{name}])"
            ));
        }
        declared.push((name, file));
    }
    declared
        .into_iter()
        .map(|(name, file)| {
            check(&name, &file).map_err(|m| format!("endpoint `{name}`: {m}"))?;
            Ok(settle(name, file, config))
        })
        .collect()
}

/// What the file must get right about one endpoint.
fn check(name: &str, file: &EndpointFile) -> Result<(), String> {
    let name_ok = !name.is_empty()
        && name.len() <= MAX_ENDPOINT_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !name_ok {
        return Err(format!(
            "names are 1 to {MAX_ENDPOINT_NAME} letters, digits, `-`, `_` or `.`"
        ));
    }
    if name == ProviderKind::Mock.as_str() {
        return Err("`mock` is the mock provider's name".into());
    }
    let kind = file.kind;
    if kind.needs_key() && file.api_key_env.as_deref().is_none_or(str::is_empty) {
        return Err(format!(
            "a {} endpoint needs `api_key_env`, the variable holding its key",
            kind.as_str()
        ));
    }
    if file.base_url.as_deref().is_none_or(str::is_empty) && file.base_url_env.is_none() {
        return Err("`base_url` is missing".into());
    }
    if let Some(url) = &file.base_url
        && !url.is_empty()
        && !(url.starts_with("http://") || url.starts_with("https://"))
    {
        return Err(format!("base_url `{url}` is not an http(s) URL"));
    }
    match (kind, &file.api_version) {
        (EndpointKind::AzureOpenAi, None) => {
            return Err("an azure-openai endpoint needs `api_version`".into());
        }
        (EndpointKind::AzureOpenAi, Some(v)) if v.is_empty() => {
            return Err("`api_version` is empty".into());
        }
        (EndpointKind::AzureOpenAi, _) | (_, None) => {}
        (_, Some(_)) => return Err("`api_version` applies to azure-openai endpoints only".into()),
    }
    if file.deployment.is_some() && kind != EndpointKind::AzureOpenAi {
        return Err("`deployment` applies to azure-openai endpoints only".into());
    }
    if let Some(deployment) = &file.deployment
        && !valid_deployment(deployment)
    {
        return Err(format!("deployment `{deployment}` {DEPLOYMENT_RULE}"));
    }
    if file.version.is_some() && kind != EndpointKind::Anthropic {
        return Err("`version` applies to anthropic endpoints only".into());
    }
    for (header, value) in &file.headers {
        // RFC 9110 token characters; values without control characters.
        let name_ok = !header.is_empty()
            && header
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !name_ok {
            return Err(format!(
                "header name `{header}` is not a valid HTTP header name"
            ));
        }
        if value.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
            return Err(format!(
                "header `{header}` has a control character in its value"
            ));
        }
    }
    Ok(())
}

/// The endpoint with its key and URL read from the environment.
fn settle(name: String, file: EndpointFile, config: &CommonConfig) -> Endpoint {
    let base_override = file
        .base_url_env
        .as_deref()
        .and_then(|var| variable(var, config));
    let base_url = base_override
        .or(file.base_url.clone().filter(|u| !u.is_empty()))
        .unwrap_or_default();
    let api_key = file
        .api_key_env
        .as_deref()
        .and_then(|var| secret(var, config));
    let unavailable = match (&file.api_key_env, &api_key) {
        (Some(var), None) => Some(format!("{var} is not set")),
        _ if base_url.is_empty() => Some(format!(
            "{} is not set",
            file.base_url_env.as_deref().unwrap_or("base_url")
        )),
        _ => None,
    };
    Endpoint {
        name,
        kind: file.kind,
        settings: UpstreamSettings {
            base_url,
            api_key,
            version: file.version,
            api_version: file.api_version,
            deployment: file.deployment,
            headers: file.headers.into_iter().collect(),
            timeouts: Timeouts {
                connect_timeout_ms: file.connect_timeout_ms,
                request_timeout_secs: file.request_timeout_secs,
                first_token_timeout_secs: file.first_token_timeout_secs,
                idle_timeout_secs: file.idle_timeout_secs,
            },
            limits: file.limits,
            unavailable,
        },
    }
}

/// A variable's value: the ones the binaries already take as flags come from the parsed
/// configuration (so `--openai-base-url` works as well as the variable); others from the
/// environment. Empty counts as unset.
fn variable(var: &str, config: &CommonConfig) -> Option<String> {
    let known = match var {
        "OPENAI_BASE_URL" => Some(&config.openai_base_url),
        "ANTHROPIC_BASE_URL" => Some(&config.anthropic_base_url),
        "OLLAMA_URL" => Some(&config.ollama_url),
        _ => None,
    };
    match known {
        Some(value) => value.clone(),
        None => std::env::var(var).ok(),
    }
    .filter(|v| !v.is_empty())
}

fn secret(var: &str, config: &CommonConfig) -> Option<SecretString> {
    match var {
        "OPENAI_API_KEY" => present(&config.openai_api_key).cloned(),
        "ANTHROPIC_API_KEY" => present(&config.anthropic_api_key).cloned(),
        _ => std::env::var(var)
            .ok()
            .filter(|v| !v.is_empty())
            .map(SecretString::from),
    }
}

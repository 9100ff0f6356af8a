//! The body of `POST /api/v1/generate` ([`GenerateBody`]) and its checks: a body that passes
//! becomes a [`NewRequest`], ready to be stored.

use serde::Deserialize;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::cache::{self, CachePolicy, CacheScope};
use crate::error::DomainError;
use crate::generation::{
    GenerationParams, MAX_CONTEXT_BYTES, MAX_CONTEXT_DEPTH, MockBehaviour, ResponseFormat,
    ToolChoice, TurnRole, context_block, estimate_tokens, nesting_depth,
};
use crate::json_schema;
use crate::models::{Capability, ModelRegistry, ModelSpec, ProviderKind};
use crate::prompts::{OutputFormat, PromptLibrary, RenderError};

/// Longest prompt accepted, in characters.
pub const MAX_PROMPT_CHARS: usize = 100_000;
/// Output tokens a request without `max_tokens` is assumed to use, for rate limiting.
const DEFAULT_OUTPUT_ESTIMATE: u32 = 1024;
/// Most earlier turns a conversation may carry.
pub const MAX_HISTORY_TURNS: usize = 256;
/// Longest `Idempotency-Key` accepted.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;
/// Most tools a request may declare.
pub const MAX_TOOLS: usize = 128;
/// Longest tool call id (in a history's assistant or tool turn) accepted.
pub const MAX_TOOL_CALL_ID_LEN: usize = 256;

/// The body of `POST /api/v1/generate`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GenerateBody {
    /// The prompt; or give `template_id` and `params` to render one of `prompts/`.
    #[serde(default)]
    pub prompt: Option<String>,
    #[serde(default)]
    pub template_id: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub params: Option<Map<String, Value>>,
    #[serde(default)]
    pub model: Option<String>,
    /// A JSON object about the request (at most 16 KiB, 8 levels): every provider gets it as a
    /// `Context:` block at the end of the system prompt; templates read it as `context`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub context: Option<Value>,
    #[serde(default)]
    pub parameters: Option<GenerationParams>,
    #[serde(default)]
    pub metadata: Option<Value>,
    /// Controls of the mock provider (tests, benchmarks); refused for other models.
    #[serde(default)]
    pub mock: Option<MockBehaviour>,
    /// Response cache controls: `no_cache`, `no_store`, `ttl_secs`.
    #[serde(default)]
    pub cache: Option<CachePolicy>,
    /// The template the prompt was rendered from: set by [`GenerateBody::resolve_template`],
    /// never read from a client's JSON.
    #[serde(skip)]
    pub rendered: Option<RenderedFrom>,
}

/// Which template, in which version, a prompt was rendered from (stored in the metadata).
#[derive(Debug, Clone)]
pub struct RenderedFrom {
    pub template_id: String,
    pub version: Value,
}

/// Metadata keys the service writes itself (the template a prompt came from, the hub event a
/// request came from, the mock's controls): a client setting one is refused, so that no
/// stored request claims an origin or a behaviour it was not given.
pub const RESERVED_METADATA: [&str; 5] = [
    "template_id",
    "template_version",
    "event_id",
    "mock",
    "batch_custom_id",
];

impl GenerateBody {
    /// Renders the body's template, if it names one: the rendered text becomes the prompt, the
    /// template id and version go into the metadata, the template's default model applies when
    /// none is given (and it can run), and its JSON output turns on JSON validation.
    pub fn resolve_template(
        mut self,
        library: &PromptLibrary,
        models: &ModelRegistry,
    ) -> Result<Self, DomainError> {
        let Some(template_id) = self.template_id.take() else {
            if self.params.is_some() {
                return Err(DomainError::validation(
                    "params",
                    "params go with template_id",
                ));
            }
            return Ok(self);
        };
        if self.prompt.is_some() {
            return Err(DomainError::validation(
                "prompt",
                "give either prompt or template_id, not both",
            ));
        }
        let params = self.params.take().unwrap_or_default();
        let context = validate_context(self.context.take())?;
        let rendered = library
            .render(&template_id, &params, &context)
            .map_err(|e| match e {
                RenderError::UnknownTemplate(_) => {
                    DomainError::validation("template_id", e.to_string())
                }
                RenderError::Params(_) | RenderError::Render(_) => {
                    DomainError::validation("params", e.to_string())
                }
            })?;
        self.rendered = Some(RenderedFrom {
            template_id: rendered.template_id.clone(),
            version: Value::from(rendered.version),
        });
        if self.model.is_none()
            && let Some(default) = rendered.default_model.as_deref()
            && models
                .chain(default)
                .iter()
                .any(|m| models.unavailable_reason(m).is_none())
        {
            self.model = Some(default.to_owned());
        }
        if rendered.output == OutputFormat::Json {
            let params = self
                .parameters
                .get_or_insert_with(GenerationParams::default);
            if params.response_format.is_none() {
                params.response_format = Some(match rendered.output_schema {
                    Some(schema) => ResponseFormat::JsonSchema {
                        schema,
                        name: None,
                        strict: None,
                    },
                    None => ResponseFormat::JsonObject,
                });
            }
        }
        self.prompt = Some(rendered.prompt);
        self.context = Some(context);
        Ok(self)
    }
}

/// A validated request, ready to be stored.
#[derive(Debug, Clone)]
pub struct NewRequest {
    pub id: Uuid,
    pub user_id: Uuid,
    pub prompt: String,
    pub model: String,
    pub context: Value,
    pub parameters: Value,
    pub metadata: Value,
    pub idempotency_key: Option<String>,
    pub max_attempts: i32,
    /// Submitted on the streaming endpoint: the worker relays its tokens.
    pub stream: bool,
    /// `None` when the request neither reads nor writes the cache. Also what identical requests
    /// in flight are coalesced by, so both follow `CACHE_SCOPE`.
    pub cache_key: Option<String>,
    pub cache_policy: CachePolicy,
    /// Tokens the request may consume (prompt estimate + output limit), for rate limits.
    pub estimated_tokens: i32,
    /// Trace id of the api request that submitted it (W3C trace-context form, 32 hex digits):
    /// the worker's job span carries it too.
    pub trace_id: Option<String>,
    /// The W3C `traceparent` of the span that submitted it, when spans are exported: carried by
    /// its job (not stored with the row), so the worker's job span continues that trace.
    pub traceparent: Option<String>,
}

impl NewRequest {
    /// Checks a submitted body against the rules and the model registry; its cache key is
    /// shared as `cache_scope` says.
    pub fn validate(
        body: GenerateBody,
        user_id: Uuid,
        idempotency_key: Option<String>,
        models: &ModelRegistry,
        max_attempts: u32,
        cache_scope: CacheScope,
    ) -> Result<Self, DomainError> {
        if body.template_id.is_some() {
            return Err(DomainError::internal(std::io::Error::other(
                "template not rendered before validation",
            )));
        }
        let params = body.parameters.unwrap_or_default();
        let prompt = validate_prompt(body.prompt, params.ends_with_tool_result())?;
        let model = validate_model(body.model, models)?;
        validate_params(&params, model.max_output_tokens)?;
        validate_tools(&params, model)?;
        let history_chars = validate_history(&params)?;
        if prompt.chars().count() + history_chars > MAX_PROMPT_CHARS {
            return Err(DomainError::validation(
                "parameters.history",
                format!("prompt and history are longer than {MAX_PROMPT_CHARS} characters"),
            ));
        }
        validate_json_output(&params, model)?;
        let context = validate_context(body.context)?;
        let mut metadata = match object_or_empty(body.metadata, "metadata")? {
            Value::Object(map) => map,
            _ => Map::new(),
        };
        if let Some(key) = RESERVED_METADATA
            .iter()
            .find(|k| metadata.contains_key(**k))
        {
            return Err(DomainError::validation(
                "metadata",
                format!("metadata.{key} is set by the service, not by a client"),
            ));
        }
        if let Some(from) = body.rendered {
            metadata.insert("template_id".into(), Value::from(from.template_id));
            metadata.insert("template_version".into(), from.version);
        }
        if let Some(mock) = body.mock {
            if model.provider != ProviderKind::Mock {
                return Err(DomainError::validation(
                    "mock",
                    "`mock` controls apply only to mock models",
                ));
            }
            metadata.insert(
                "mock".into(),
                serde_json::to_value(mock).map_err(DomainError::internal)?,
            );
        }
        if let Some(key) = &idempotency_key
            && (key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_LEN)
        {
            return Err(DomainError::BadRequest(format!(
                "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} characters"
            )));
        }
        let cache_policy = body.cache.unwrap_or_default();
        if cache_policy
            .ttl_secs
            .is_some_and(|t| t == 0 || t > cache::MAX_TTL_SECS)
        {
            return Err(DomainError::validation(
                "cache.ttl_secs",
                format!("ttl_secs must be between 1 and {}", cache::MAX_TTL_SECS),
            ));
        }
        let estimated_tokens = estimated_tokens(&prompt, &params, model).saturating_add(
            context_block(&context)
                .as_deref()
                .map_or(0, estimate_tokens),
        );
        let parameters = serde_json::to_value(params).map_err(DomainError::internal)?;
        let cache_key = (!(cache_policy.no_cache && cache_policy.no_store)).then(|| {
            let content = cache::cache_key(
                &model.id,
                &prompt,
                &parameters,
                &context,
                metadata.get("mock"),
            );
            cache_scope.key_for(content, user_id)
        });
        Ok(Self {
            id: Uuid::now_v7(),
            user_id,
            prompt,
            model: model.id.clone(),
            context,
            parameters,
            metadata: Value::Object(metadata),
            idempotency_key,
            max_attempts: i32::try_from(max_attempts.max(1)).unwrap_or(i32::MAX),
            stream: false,
            cache_key,
            cache_policy,
            estimated_tokens: i32::try_from(estimated_tokens).unwrap_or(i32::MAX),
            trace_id: None,
            traceparent: None,
        })
    }
}

/// The prompt, if given, not blank and not too long. After a tool's result (`after_tool`) the
/// prompt may be left out: the model answers the result.
fn validate_prompt(prompt: Option<String>, after_tool: bool) -> Result<String, DomainError> {
    if after_tool && prompt.as_deref().is_none_or(|p| p.trim().is_empty()) {
        return Ok(String::new());
    }
    let Some(prompt) = prompt else {
        return Err(DomainError::validation(
            "prompt",
            "prompt is required (or template_id with params)",
        ));
    };
    if prompt.trim().is_empty() {
        return Err(DomainError::validation(
            "prompt",
            "prompt must not be empty",
        ));
    }
    if prompt.chars().count() > MAX_PROMPT_CHARS {
        return Err(DomainError::validation(
            "prompt",
            format!("prompt is longer than {MAX_PROMPT_CHARS} characters"),
        ));
    }
    Ok(prompt)
}

/// The model asked for (or the default), if it is known and it or a fallback can run.
fn validate_model(
    model_id: Option<String>,
    models: &ModelRegistry,
) -> Result<&ModelSpec, DomainError> {
    let model_id = match model_id {
        Some(id) => id,
        None if !models.any_available() => {
            return Err(DomainError::validation(
                "model",
                crate::models::NO_MODEL_AVAILABLE,
            ));
        }
        None => models.default_model().to_owned(),
    };
    let Some(model) = models.get(&model_id) else {
        let known: Vec<_> = models.ids().collect();
        return Err(DomainError::validation(
            "model",
            format!(
                "unknown model `{}`; known models: {}",
                truncate(&model_id, 60),
                known.join(", ")
            ),
        ));
    };
    if models
        .chain(&model.id)
        .iter()
        .all(|m| models.unavailable_reason(m).is_some())
    {
        let reason = models.unavailable_reason(model).unwrap_or("unavailable");
        return Err(DomainError::validation(
            "model",
            format!(
                "model `{}` is unavailable ({reason}) and so is every fallback",
                model.id
            ),
        ));
    }
    Ok(model)
}

/// JSON output: only with a model that supports it, and a schema, if given, that is one.
fn validate_json_output(params: &GenerationParams, model: &ModelSpec) -> Result<(), DomainError> {
    let Some(schema) = params.json_output() else {
        return Ok(());
    };
    if !model.supports(Capability::Json) {
        return Err(DomainError::validation(
            "parameters.response_format",
            format!("model `{}` does not support JSON output", model.id),
        ));
    }
    if let Some(ResponseFormat::JsonSchema {
        name: Some(name), ..
    }) = &params.response_format
        && !schema_name_is_valid(name)
    {
        return Err(DomainError::validation(
            "parameters.response_format.name",
            "a schema name is 1 to 64 letters, digits, `_` or `-`",
        ));
    }
    if let Some(schema) = schema {
        json_schema::check_schema(schema).map_err(|e| {
            DomainError::validation(
                "parameters.response_format.schema",
                format!("invalid JSON Schema: {e}"),
            )
        })?;
    }
    Ok(())
}

/// Tools: only for a model that can call them, at most [`MAX_TOOLS`], each with a valid unique
/// name and a JSON Schema the service can check; a `tool_choice` names one of them.
fn validate_tools(params: &GenerationParams, model: &ModelSpec) -> Result<(), DomainError> {
    let tools = params.tools();
    if !tools.is_empty() && !model.supports(Capability::Tools) {
        return Err(DomainError::validation(
            "parameters.tools",
            format!("model `{}` does not support tool calling", model.id),
        ));
    }
    if tools.len() > MAX_TOOLS {
        return Err(DomainError::validation(
            "parameters.tools",
            format!("tools takes at most {MAX_TOOLS} tools"),
        ));
    }
    for (i, tool) in tools.iter().enumerate() {
        if !schema_name_is_valid(&tool.name) {
            return Err(DomainError::validation(
                "parameters.tools",
                format!("tools[{i}].name: a tool name is 1 to 64 letters, digits, `_` or `-`"),
            ));
        }
        if tools[..i].iter().any(|t| t.name == tool.name) {
            return Err(DomainError::validation(
                "parameters.tools",
                format!("tools[{i}].name: `{}` is declared twice", tool.name),
            ));
        }
        if let Some(schema) = &tool.parameters {
            if !schema.is_object() {
                return Err(DomainError::validation(
                    "parameters.tools",
                    format!("tools[{i}].parameters must be a JSON Schema object"),
                ));
            }
            json_schema::check_schema(schema).map_err(|e| {
                DomainError::validation(
                    "parameters.tools",
                    format!("tools[{i}].parameters: invalid JSON Schema: {e}"),
                )
            })?;
        }
    }
    match &params.tool_choice {
        Some(ToolChoice::Tool { name }) if !tools.iter().any(|t| &t.name == name) => {
            Err(DomainError::validation(
                "parameters.tool_choice",
                format!(
                    "tool_choice names `{}`, which is not among the tools",
                    truncate(name, 64)
                ),
            ))
        }
        Some(ToolChoice::Required) if tools.is_empty() => Err(DomainError::validation(
            "parameters.tool_choice",
            "tool_choice `required` needs tools",
        )),
        _ => Ok(()),
    }
}

/// A schema name as OpenAI takes it: `^[a-zA-Z0-9_-]{1,64}$`.
fn schema_name_is_valid(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Tokens the request may consume, for rate limits at submit and the endpoint's budget before a
/// call: the prompt, system prompt and history as estimated, plus the output limit (or
/// [`DEFAULT_OUTPUT_ESTIMATE`]).
pub fn estimated_tokens(prompt: &str, params: &GenerationParams, model: &ModelSpec) -> u32 {
    estimate_tokens(prompt)
        .saturating_add(params.system.as_deref().map_or(0, estimate_tokens))
        .saturating_add(params.history.iter().flatten().fold(0, |n, t| {
            t.calls()
                .iter()
                .fold(n.saturating_add(estimate_tokens(&t.content)), |n, c| {
                    n.saturating_add(estimate_tokens(&c.arguments))
                })
        }))
        .saturating_add(tools_tokens(params))
        .saturating_add(
            params
                .max_tokens
                .unwrap_or(DEFAULT_OUTPUT_ESTIMATE.min(model.max_output_tokens)),
        )
}

/// The tools' declarations as the model reads them (names, descriptions, schemas).
fn tools_tokens(params: &GenerationParams) -> u32 {
    params.tools().iter().fold(0, |n, t| {
        n.saturating_add(estimate_tokens(&t.name))
            .saturating_add(t.description.as_deref().map_or(0, estimate_tokens))
            .saturating_add(
                t.parameters
                    .as_ref()
                    .map_or(0, |p| estimate_tokens(&p.to_string())),
            )
    })
}

fn validate_params(params: &GenerationParams, max_output: u32) -> Result<(), DomainError> {
    if let Some(n) = params.max_tokens
        && (n == 0 || n > max_output)
    {
        return Err(DomainError::validation(
            "parameters.max_tokens",
            format!("max_tokens must be between 1 and {max_output} for this model"),
        ));
    }
    if let Some(t) = params.temperature
        && !(0.0..=2.0).contains(&t)
    {
        return Err(DomainError::validation(
            "parameters.temperature",
            "temperature must be between 0 and 2",
        ));
    }
    if let Some(p) = params.top_p
        && (!(0.0..=1.0).contains(&p) || p == 0.0)
    {
        return Err(DomainError::validation(
            "parameters.top_p",
            "top_p must be in (0, 1]",
        ));
    }
    if let Some(stop) = &params.stop
        && (stop.len() > 4 || stop.iter().any(|s| s.is_empty() || s.len() > 64))
    {
        return Err(DomainError::validation(
            "parameters.stop",
            "stop takes at most 4 non-empty strings of up to 64 bytes",
        ));
    }
    Ok(())
}

/// Checks the earlier turns of a conversation; answers their length in characters.
fn validate_history(params: &GenerationParams) -> Result<usize, DomainError> {
    let Some(history) = &params.history else {
        return Ok(0);
    };
    if history.len() > MAX_HISTORY_TURNS {
        return Err(DomainError::validation(
            "parameters.history",
            format!("history takes at most {MAX_HISTORY_TURNS} turns"),
        ));
    }
    for (i, turn) in history.iter().enumerate() {
        let problem = match turn.role {
            TurnRole::User if turn.content.trim().is_empty() => {
                Some("a user turn must not be empty")
            }
            TurnRole::User | TurnRole::Tool if turn.tool_calls.is_some() => {
                Some("only an assistant turn carries tool_calls")
            }
            TurnRole::User | TurnRole::Assistant if turn.tool_call_id.is_some() => {
                Some("only a tool turn carries a tool_call_id")
            }
            TurnRole::Tool
                if turn
                    .tool_call_id
                    .as_deref()
                    .is_none_or(|id| id.is_empty() || id.len() > MAX_TOOL_CALL_ID_LEN) =>
            {
                Some("a tool turn needs the tool_call_id (1 to 256 bytes) it answers")
            }
            TurnRole::Assistant
                if turn.calls().iter().any(|c| {
                    c.id.is_empty()
                        || c.id.len() > MAX_TOOL_CALL_ID_LEN
                        || !schema_name_is_valid(&c.name)
                }) =>
            {
                Some("a tool call needs an id (1 to 256 bytes) and a valid tool name")
            }
            // A result answers a call the assistant made earlier in the conversation.
            TurnRole::Tool
                if !history[..i].iter().any(|t| {
                    t.calls()
                        .iter()
                        .any(|c| Some(c.id.as_str()) == turn.tool_call_id.as_deref())
                }) =>
            {
                Some("a tool turn answers no earlier assistant tool call (tool_call_id unknown)")
            }
            _ => None,
        };
        if let Some(problem) = problem {
            return Err(DomainError::validation(
                "parameters.history",
                format!("history[{i}]: {problem}"),
            ));
        }
    }
    Ok(history
        .iter()
        .map(|t| {
            t.content.chars().count()
                + t.calls()
                    .iter()
                    .map(|c| c.arguments.chars().count())
                    .sum::<usize>()
        })
        .sum())
}

/// The request's context: a JSON object (absent: empty) of at most [`MAX_CONTEXT_BYTES`] as
/// JSON and [`MAX_CONTEXT_DEPTH`] levels; the worker adds it to the system prompt.
pub fn validate_context(context: Option<Value>) -> Result<Value, DomainError> {
    let context = object_or_empty(context, "context")?;
    if nesting_depth(&context, MAX_CONTEXT_DEPTH) > MAX_CONTEXT_DEPTH {
        return Err(DomainError::validation(
            "context",
            format!("context nests deeper than {MAX_CONTEXT_DEPTH} levels"),
        ));
    }
    if context.to_string().len() > MAX_CONTEXT_BYTES {
        return Err(DomainError::validation(
            "context",
            format!("context is longer than {MAX_CONTEXT_BYTES} bytes as JSON"),
        ));
    }
    Ok(context)
}

fn object_or_empty(value: Option<Value>, field: &'static str) -> Result<Value, DomainError> {
    match value {
        None | Some(Value::Null) => Ok(Value::Object(Map::new())),
        Some(v @ Value::Object(_)) => Ok(v),
        Some(_) => Err(DomainError::validation(
            field,
            format!("{field} must be a JSON object"),
        )),
    }
}

fn truncate(s: &str, max: usize) -> &str {
    s.char_indices().nth(max).map_or(s, |(i, _)| &s[..i])
}

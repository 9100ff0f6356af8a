//! The span of one provider call, named and attributed by OpenTelemetry's GenAI semantic
//! conventions (`gen_ai.*`): what was asked of which model, what came back, what it cost in
//! tokens. Neither prompts nor answers are attributes.

use opentelemetry::{Array, StringValue, Value};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::providers::{GenerationInput, ProviderError};
use llm_shared::generation::GenerationOutput;

/// Counts are recorded as `i64`: the exporter sends unsigned integers as strings.
///
/// A `chat {model}` client span for a call to `provider` (the provider's kind: `openai`,
/// `anthropic`, `ollama`, `mock`).
pub fn call_span(provider: &'static str, input: &GenerationInput) -> tracing::Span {
    let span = tracing::info_span!(
        "provider call",
        otel.name = %format_args!("chat {}", input.upstream_model),
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        gen_ai.operation.name = "chat",
        gen_ai.system = provider,
        gen_ai.provider.name = provider,
        gen_ai.request.model = %input.upstream_model,
        gen_ai.request.max_tokens = tracing::field::Empty,
        gen_ai.request.temperature = tracing::field::Empty,
        gen_ai.request.top_p = tracing::field::Empty,
        gen_ai.response.model = tracing::field::Empty,
        gen_ai.usage.input_tokens = tracing::field::Empty,
        gen_ai.usage.output_tokens = tracing::field::Empty,
        error.type = tracing::field::Empty,
        attempt = i64::from(input.attempt),
    );
    let params = &input.params;
    if let Some(max_tokens) = params.max_tokens {
        span.record("gen_ai.request.max_tokens", i64::from(max_tokens));
    }
    if let Some(temperature) = params.temperature {
        span.record("gen_ai.request.temperature", f64::from(temperature));
    }
    if let Some(top_p) = params.top_p {
        span.record("gen_ai.request.top_p", f64::from(top_p));
    }
    span
}

/// Records a call's outcome on its span: the model that answered, the tokens, the finish
/// reason (an array, as the conventions have it), or the kind of error.
pub fn record_outcome(span: &tracing::Span, result: &Result<GenerationOutput, ProviderError>) {
    match result {
        Ok(output) => {
            span.record("gen_ai.response.model", output.upstream_model.as_str());
            span.record("gen_ai.usage.input_tokens", i64::from(output.prompt_tokens));
            span.record(
                "gen_ai.usage.output_tokens",
                i64::from(output.completion_tokens),
            );
            let reasons = Array::String(vec![StringValue::from(output.finish_reason.clone())]);
            span.set_attribute("gen_ai.response.finish_reasons", Value::Array(reasons));
        }
        Err(err) => {
            span.record("error.type", err.kind());
            span.record("otel.status_code", "ERROR");
        }
    }
}

//! Attacks on provider endpoints: an upstream echoing the key it was sent, listings that could
//! leak an endpoint's key or headers, and registry entries that would smuggle a header line or
//! walk a deployment name out of its URL path.

use std::time::Duration;

use llm_shared::models::ModelRegistry;
use llm_tests::fake_upstream::{FakeUpstream, azure};
use llm_tests::{app_with_worker, common_config, spawn_app_with_providers};
use serde_json::json;

use crate::endpoints::{model, registry_file};

const KEY: &str = "azure-secret-key-0123456789";

/// An Azure endpoint on `url` whose key is `OPENAI_API_KEY` (the test passes it as a flag, so
/// that the in-process api and worker read it), with a header carrying a tenant token.
fn azure_registry(url: &str) -> String {
    format!(
        r#"
[endpoints.azure-east]
kind = "azure-openai"
base_url = "{url}"
api_key_env = "OPENAI_API_KEY"
api_version = "2024-10-21"
headers = {{ "X-Tenant-Token" = "tenant-token-abcdef" }}
{}"#,
        model("gpt-4o", r#"endpoint = "azure-east""#, "gpt4o-prod")
    )
}

#[tokio::test]
async fn an_azure_key_echoed_in_an_upstream_error_never_reaches_the_stored_request() {
    let fake = FakeUpstream::start("").await;
    fake.always(azure::error(
        401,
        "401",
        &format!("Access denied: key {KEY} is not valid for this resource."),
    ));
    let flags = [
        "--models-file".to_owned(),
        registry_file(&azure_registry(&fake.base_url)),
        "--openai-api-key".to_owned(),
        KEY.to_owned(),
    ];
    let (app, _worker) = app_with_worker(&flags).await;
    let id = app
        .submit_ok(json!({"model": "gpt-4o", "prompt": "x"}))
        .await;
    let done = app.wait_final(id, Duration::from_secs(30)).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(fake.received().len(), 1, "the key was sent");
    let text = done.to_string();
    assert!(!text.contains(KEY), "{text}");
    assert!(text.contains("[redacted]"), "{text}");
}

#[tokio::test]
async fn no_model_listing_shows_an_endpoint_key_or_its_headers() {
    let flags = [
        "--models-file".to_owned(),
        registry_file(&azure_registry("https://east.openai.azure.com")),
        "--openai-api-key".to_owned(),
        KEY.to_owned(),
    ];
    let app = spawn_app_with_providers(&flags).await;
    for path in ["/api/v1/models", "/api/v1/models/gpt-4o", "/v1/models"] {
        let (status, body) = app.get_json(path).await;
        assert_eq!(status, 200, "{path}: {body}");
        let text = body.to_string();
        assert!(
            text.contains("azure-east"),
            "{path} names the endpoint: {text}"
        );
        for secret in [KEY, "tenant-token-abcdef", "X-Tenant-Token"] {
            assert!(!text.contains(secret), "{path} shows {secret}: {text}");
        }
    }
}

#[tokio::test]
async fn a_registry_smuggling_a_header_line_or_leaving_the_deployment_path_is_refused() {
    let load = |body: String| {
        ModelRegistry::from_toml("test.toml", &body, &common_config(&[]))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_else(|| panic!("loaded: {body}"))
    };
    let policies = "[retry]\nattempts_per_model = 1\nbase_delay_ms = 1\nmax_delay_ms = 1\nreschedule_after_secs = 1\n[circuit]\nfailure_threshold = 1\ncooldown_secs = 1\n";
    let endpoint = |extra: &str| {
        format!(
            "{policies}[endpoints.az]\nkind = \"azure-openai\"\nbase_url = \"https://x.openai.azure.com\"\napi_key_env = \"K\"\napi_version = \"2024-10-21\"\n{extra}\n"
        )
    };
    let smuggled = load(format!(
        "{}{}",
        endpoint("headers = { \"X-A\" = \"1\\r\\nX-Injected: yes\" }"),
        model("m", r#"endpoint = "az""#, "d")
    ));
    assert!(smuggled.contains("control character"), "{smuggled}");
    let bad_name = load(format!(
        "{}{}",
        endpoint("headers = { \"X-A: b\" = \"1\" }"),
        model("m", r#"endpoint = "az""#, "d")
    ));
    assert!(
        bad_name.contains("not a valid HTTP header name"),
        "{bad_name}"
    );
    for deployment in ["../../admin", "..", "a/b", "a?api-version=1", "a%2Fb"] {
        let via_model = load(format!(
            "{}{}",
            endpoint(""),
            model("m", r#"endpoint = "az""#, deployment)
        ));
        assert!(
            via_model.contains("is not a deployment name"),
            "{deployment}: {via_model}"
        );
        let via_endpoint = load(format!(
            "{}{}",
            endpoint(&format!("deployment = \"{deployment}\"")),
            model("m", r#"endpoint = "az""#, "d")
        ));
        assert!(
            via_endpoint.contains("is not a deployment name"),
            "{deployment}: {via_endpoint}"
        );
    }
}

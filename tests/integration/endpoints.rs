//! Named provider endpoints (`[endpoints.<name>]`): Azure OpenAI deployments, OpenAI-compatible
//! servers under their own base URL with extra headers, a second OpenAI key, a model spread
//! across endpoints, and endpoints whose key is missing. The real `llm-api` and `llm-worker`
//! run as processes, so that each reads its keys from its own environment.

use std::time::{Duration, Instant};

use llm_shared::models::ModelRegistry;
use llm_tests::fake_upstream::{FakeUpstream, Received, azure, openai};
use llm_tests::sse::{SseReader, output_of};
use llm_tests::{
    TestApp, common_config, spawn_api_process_with, spawn_app, spawn_app_with_providers,
    spawn_worker_process,
};
use serde_json::{Value, json};
use tokio::process::Child;
use uuid::Uuid;

/// Policies of the test registries: one call per model, so every call shows at the fakes.
const POLICIES: &str = r#"
[retry]
attempts_per_model = 1
base_delay_ms = 10
max_delay_ms = 50
reschedule_after_secs = 5

[circuit]
failure_threshold = 50
cooldown_secs = 1
"#;

/// A model of a test registry; `route` is its `endpoint = …` / `endpoints = […]` line.
pub(crate) fn model(id: &str, route: &str, upstream: &str) -> String {
    format!(
        r#"
[[models]]
id = "{id}"
{route}
upstream = "{upstream}"
context_window = 128000
max_output_tokens = 4096
input_price = 1.0
output_price = 2.0
capabilities = ["streaming", "json"]
"#
    )
}

/// Writes a registry (the policies, then `body`) to a file of its own; returns its path.
pub(crate) fn registry_file(body: &str) -> String {
    let path = std::env::temp_dir().join(format!("registry-{}.toml", Uuid::now_v7()));
    std::fs::write(&path, format!("{POLICIES}{body}")).unwrap();
    path.to_str().unwrap().to_owned()
}

/// An api and a worker process on a registry, with `env` (the endpoints' keys).
struct Service {
    app: TestApp,
    base: String,
    _api: Child,
    _worker: Child,
}

async fn serve(registry: &str, env: &[(&str, &str)]) -> Service {
    let app = spawn_app().await; // its database and signing key
    let path = registry_file(registry);
    let mut all = vec![("MODELS_FILE", path.as_str())];
    all.extend_from_slice(env);
    let (api, base) = spawn_api_process_with(&app.db, &all).await;
    let worker = spawn_worker_process(&app.db, &all);
    Service {
        app,
        base,
        _api: api,
        _worker: worker,
    }
}

impl Service {
    /// Submits a prompt to `model` and waits for its final state.
    async fn generate(&self, model: &str, prompt: &str) -> Value {
        let http = &self.app.http;
        let accepted: Value = http
            .post(format!("{}/api/v1/generate", self.base))
            .bearer_auth(self.app.token())
            .json(&json!({"model": model, "prompt": prompt, "cache": {"no_cache": true}}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let poll = format!(
            "{}{}?wait=10",
            self.base,
            accepted["poll_url"]
                .as_str()
                .unwrap_or_else(|| panic!("{accepted}"))
        );
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            let row: Value = http
                .get(&poll)
                .bearer_auth(self.app.token())
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if ["completed", "failed", "cancelled"].contains(&row["status"].as_str().unwrap_or(""))
            {
                return row;
            }
            assert!(Instant::now() < deadline, "not final in time: {row}");
        }
    }

    async fn models(&self) -> Value {
        self.app
            .http
            .get(format!("{}/api/v1/models", self.base))
            .bearer_auth(self.app.token())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

fn header<'a>(request: &'a Received, name: &str) -> Option<&'a str> {
    request.headers.get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test]
async fn an_azure_openai_endpoint_is_called_on_its_deployment_with_its_api_version_and_key() {
    let fake = FakeUpstream::start("").await;
    let resource = azure::Resource {
        deployment: "gpt4o-prod",
        api_version: "2024-10-21",
        key: "azure-key-0123456789",
    };
    fake.respond_with(move |request, _| {
        resource.refusal(request).unwrap_or_else(|| {
            if request.body["stream"] == true {
                azure::stream(&["Hail, ", "adventurer"], 9, 4)
            } else {
                azure::success("Hail, adventurer", 9, 4)
            }
        })
    });
    let registry = format!(
        r#"
[endpoints.azure-east]
kind = "azure-openai"
base_url = "{}"
api_key_env = "AZURE_EAST_KEY"
api_version = "2024-10-21"
{}"#,
        fake.base_url,
        model("gpt-4o-azure", r#"endpoint = "azure-east""#, "gpt4o-prod"),
    );
    let service = serve(&registry, &[("AZURE_EAST_KEY", "azure-key-0123456789")]).await;

    let done = service.generate("gpt-4o-azure", "Greet me").await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["result"], "Hail, adventurer", "{done}");
    let calls = fake.received();
    assert_eq!(
        calls.len(),
        1,
        "one call, accepted by the fake Azure: {calls:?}"
    );
    let call = &calls[0];
    assert!(
        call.body.get("model").is_none(),
        "the deployment names the model: {}",
        call.body
    );
    assert_eq!(header(call, "authorization"), None);

    // Streamed: Azure's first chunk carries no choice, only its prompt filter results.
    let mut sse = SseReader::open(
        service
            .app
            .http
            .post(format!("{}/api/v1/generate/stream", service.base))
            .bearer_auth(service.app.token())
            .json(&json!({"model": "gpt-4o-azure", "prompt": "Greet me, streamed"})),
    )
    .await;
    assert_eq!(sse.status, 200);
    let events = sse.until_terminal(Duration::from_secs(30)).await;
    assert_eq!(
        events.last().map(|e| e.event.as_str()),
        Some("done"),
        "{events:?}"
    );
    assert_eq!(output_of(&events), "Hail, adventurer");
    assert_eq!(fake.received().len(), 2);
}

#[tokio::test]
async fn an_openai_compatible_endpoint_is_called_under_its_base_url_with_its_headers_and_no_key() {
    let vllm = FakeUpstream::start("/v1").await;
    vllm.always(openai::success("A bard's tale", 5, 3));
    let registry = format!(
        r#"
[endpoints.vllm]
kind = "openai-compatible"
base_url = "{}"
headers = {{ "X-Tenant" = "dnd-creator", "HTTP-Referer" = "https://characters.example" }}
{}"#,
        vllm.base_url,
        model(
            "llama-vllm",
            r#"endpoint = "vllm""#,
            "meta-llama/Llama-3.1-8B-Instruct"
        ),
    );
    let service = serve(&registry, &[]).await;

    let done = service.generate("llama-vllm", "Tell a tale").await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["result"], "A bard's tale");
    let calls = vllm.received();
    assert_eq!(calls.len(), 1, "{calls:?}");
    let call = &calls[0];
    assert_eq!(call.path, "/v1/chat/completions");
    assert_eq!(call.body["model"], "meta-llama/Llama-3.1-8B-Instruct");
    assert_eq!(header(call, "x-tenant"), Some("dnd-creator"));
    assert_eq!(
        header(call, "http-referer"),
        Some("https://characters.example")
    );
    assert_eq!(
        header(call, "authorization"),
        None,
        "no key configured, none sent"
    );
}

#[tokio::test]
async fn a_model_spread_across_endpoints_calls_each_usable_one_in_turn() {
    let east = FakeUpstream::start("").await;
    let west = FakeUpstream::start("").await;
    east.always(azure::success("from the east", 5, 3));
    west.always(azure::success("from the west", 5, 3));
    let endpoint = |name: &str, url: &str, key_env: &str| {
        format!(
            r#"
[endpoints.{name}]
kind = "azure-openai"
base_url = "{url}"
api_key_env = "{key_env}"
api_version = "2024-10-21"
"#
        )
    };
    let registry = [
        endpoint("azure-east", &east.base_url, "AZURE_EAST_KEY"),
        endpoint("azure-west", &west.base_url, "AZURE_WEST_KEY"),
        // No key in the environment: never called, and the model stays available.
        endpoint("azure-north", "http://127.0.0.1:9", "AZURE_NORTH_KEY"),
        model(
            "gpt-4o",
            r#"endpoints = ["azure-east", "azure-north", "azure-west"]"#,
            "gpt-4o",
        ),
    ]
    .concat();
    let service = serve(
        &registry,
        &[
            ("AZURE_EAST_KEY", "east-key-0123456789"),
            ("AZURE_WEST_KEY", "west-key-0123456789"),
        ],
    )
    .await;

    let mut answers = Vec::new();
    for i in 0..4 {
        let done = service.generate("gpt-4o", &format!("Roll {i}")).await;
        assert_eq!(done["status"], "completed", "{done}");
        answers.push(done["result"].as_str().unwrap().to_owned());
    }
    let (e, w) = (east.received(), west.received());
    assert_eq!((e.len(), w.len()), (2, 2), "taken in turn: {answers:?}");
    assert!(
        e.iter()
            .all(|c| header(c, "api-key") == Some("east-key-0123456789"))
    );
    assert!(
        w.iter()
            .all(|c| header(c, "api-key") == Some("west-key-0123456789"))
    );
    let listed = service.models().await;
    let gpt = &listed["models"][0];
    assert_eq!(gpt["available"], true, "{gpt}");
    assert_eq!(gpt["endpoints"][1]["name"], "azure-north", "{gpt}");
    assert_eq!(gpt["endpoints"][1]["available"], false, "{gpt}");
}

#[tokio::test]
async fn a_second_openai_key_is_an_endpoint_of_its_own() {
    let main = FakeUpstream::start("/v1").await;
    let batch = FakeUpstream::start("/v1").await;
    main.always(openai::success("main", 5, 3));
    batch.always(openai::success("batch", 5, 3));
    let registry = format!(
        r#"
[endpoints.openai]
kind = "openai"
base_url = "https://api.openai.com/v1"
base_url_env = "OPENAI_BASE_URL"
api_key_env = "OPENAI_API_KEY"

[endpoints.openai-batch]
kind = "openai"
base_url = "{}"
api_key_env = "OPENAI_BATCH_KEY"
{}{}"#,
        batch.base_url,
        model("gpt-4o", r#"endpoint = "openai""#, "gpt-4o"),
        model("gpt-4o-batch", r#"endpoint = "openai-batch""#, "gpt-4o"),
    );
    let service = serve(
        &registry,
        &[
            ("OPENAI_API_KEY", "sk-main-0123456789"),
            ("OPENAI_BASE_URL", &main.base_url),
            ("OPENAI_BATCH_KEY", "sk-batch-0123456789"),
        ],
    )
    .await;

    assert_eq!(service.generate("gpt-4o", "a").await["result"], "main");
    assert_eq!(
        service.generate("gpt-4o-batch", "b").await["result"],
        "batch"
    );
    let (m, b) = (main.received(), batch.received());
    assert_eq!((m.len(), b.len()), (1, 1));
    assert_eq!(
        header(&m[0], "authorization"),
        Some("Bearer sk-main-0123456789")
    );
    assert_eq!(
        header(&b[0], "authorization"),
        Some("Bearer sk-batch-0123456789")
    );
}

#[tokio::test]
async fn an_endpoint_whose_key_variable_is_unset_is_listed_unavailable_with_the_reason() {
    let path = registry_file(&format!(
        r#"
[endpoints.groq]
kind = "openai-compatible"
base_url = "https://api.groq.com/openai/v1"
api_key_env = "LLM_TEST_NEVER_SET_GROQ_KEY"
{}{}"#,
        model("llama-groq", r#"endpoint = "groq""#, "llama-3.1-8b-instant"),
        model("mock", r#"provider = "mock""#, "mock-1"),
    ));
    let app = spawn_app_with_providers(&["--models-file".into(), path]).await;
    let (status, listed) = app.get_json("/api/v1/models").await;
    assert_eq!(status, 200);
    let groq = listed["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "llama-groq")
        .unwrap();
    assert_eq!(groq["available"], false, "{groq}");
    assert_eq!(
        groq["unavailable_reason"],
        "LLM_TEST_NEVER_SET_GROQ_KEY is not set"
    );
    assert_eq!(
        groq["endpoints"],
        json!([{"name": "groq", "kind": "openai-compatible", "available": false,
                "unavailable_reason": "LLM_TEST_NEVER_SET_GROQ_KEY is not set"}])
    );
    let (status, answer) = app
        .submit(json!({"model": "llama-groq", "prompt": "x"}))
        .await;
    assert_eq!(status, 422, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("LLM_TEST_NEVER_SET_GROQ_KEY is not set"),
        "{answer}"
    );
}

/// The registry with `body` after the policies, and a mock model.
fn load(body: &str) -> Result<ModelRegistry, llm_shared::models::RegistryError> {
    let mock = model("mock", r#"provider = "mock""#, "mock-1");
    ModelRegistry::from_toml(
        "test.toml",
        &format!("{POLICIES}{body}{mock}"),
        &common_config(&[]),
    )
}

/// The load error of a registry with `body`.
fn load_error(body: &str) -> String {
    load(body)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_else(|| panic!("loaded: {body}"))
}

#[tokio::test]
async fn a_registry_with_a_wrong_endpoint_is_refused_saying_what_is_wrong() {
    let azure = |extra: &str| {
        format!(
            "[endpoints.az]\nkind = \"azure-openai\"\nbase_url = \"https://x.openai.azure.com\"\napi_key_env = \"K\"\n{extra}\n"
        )
    };
    let cases = [
        (model("m", r#"endpoint = "nowhere""#, "u"), "unknown endpoint `nowhere`"),
        (
            "[endpoints.e]\nkind = \"bedrock\"\nbase_url = \"https://x\"\n".to_owned(),
            "unknown variant `bedrock`",
        ),
        (
            "[providers.openai]\nbase_url = \"https://a\"\nconnect_timeout_ms = 1\nrequest_timeout_secs = 1\nfirst_token_timeout_secs = 1\nidle_timeout_secs = 1\n[endpoints.openai]\nkind = \"openai\"\nbase_url = \"https://b\"\napi_key_env = \"K\"\n".to_owned(),
            "endpoint `openai` is declared twice",
        ),
        (
            "[endpoints.a]\nkind = \"ollama\"\nbase_url = \"http://a\"\n[endpoints.a]\nkind = \"ollama\"\nbase_url = \"http://b\"\n".to_owned(),
            "duplicate key",
        ),
        (azure(""), "an azure-openai endpoint needs `api_version`"),
        (
            "[endpoints.o]\nkind = \"openai\"\nbase_url = \"https://a\"\n".to_owned(),
            "needs `api_key_env`",
        ),
        (
            format!("{}{}", azure("api_version = \"2024-10-21\""), model("m", r#"endpoints = ["az", "az"]"#, "d")),
            "names endpoint `az` twice",
        ),
    ];
    for (body, expected) in cases {
        let error = load_error(&body);
        assert!(error.contains(expected), "{expected:?} not in {error:?}");
    }
    // The same registry without the mistake loads.
    let fixed = format!(
        "{}{}",
        azure("api_version = \"2024-10-21\""),
        model("m", r#"endpoints = ["az"]"#, "d")
    );
    let registry = load(&fixed).unwrap();
    assert_eq!(
        registry
            .endpoint("az")
            .unwrap()
            .settings
            .unavailable
            .as_deref(),
        Some("K is not set")
    );
}

//! The OpenAPI document against the router, and the offline docs page.
//!
//! axum cannot list its routes, so the router's paths are read from the source of the HTTP
//! layer (every `.route("...")` of `api/src/http/`), and each path's methods are found by
//! asking the live router: a method it routes answers anything but the 404 "no such route"
//! fallback or a 405. Both must equal the document's (method, path) pairs: a route added
//! without `#[utoipa::path]` (or documented but not routed) fails here.

use std::collections::BTreeSet;

use llm_tests::spawn_app;
use serde_json::Value;

const METHODS: [&str; 5] = ["GET", "POST", "PUT", "DELETE", "PATCH"];

/// Paths served by the docs themselves (Swagger UI and its document), not API operations.
const DOCS_ROUTES: [&str; 1] = ["/openapi.json"];

/// Every path given to `.route(` in the HTTP layer's source.
fn routed_paths() -> BTreeSet<String> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../api/src/http");
    let mut paths = BTreeSet::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("rs") {
            continue;
        }
        let source = std::fs::read_to_string(&path).unwrap();
        let mut rest = source.as_str();
        while let Some(at) = rest.find(".route(") {
            rest = &rest[at + ".route(".len()..];
            let literal = rest.trim_start();
            let Some(literal) = literal.strip_prefix('"') else {
                panic!("{}: a .route( whose path is not a literal", path.display());
            };
            let end = literal.find('"').unwrap();
            paths.insert(literal[..end].to_owned());
        }
    }
    paths
}

fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let mut ops = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            ops.insert((method.to_uppercase(), path.clone()));
        }
    }
    ops
}

/// A concrete URL path for a template: every `{param}` becomes a UUID.
fn concrete(template: &str) -> String {
    template
        .split('/')
        .map(|seg| {
            if seg.starts_with('{') {
                "0190c6a8-0000-7000-8000-000000000001"
            } else {
                seg
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[tokio::test]
async fn openapi_lists_every_route_of_the_router_and_nothing_else() {
    let app = spawn_app().await;
    let response = app.http.get(app.url("/openapi.json")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let doc: Value = response.json().await.unwrap();
    let ops = documented(&doc);
    assert!(ops.len() >= 28, "{ops:?}");

    let doc_paths: BTreeSet<String> = ops.iter().map(|(_, p)| p.clone()).collect();
    let mut router_paths = routed_paths();
    for docs_route in DOCS_ROUTES {
        router_paths.remove(docs_route);
    }
    assert_eq!(
        router_paths, doc_paths,
        "paths routed (left) and documented (right) differ: annotate the handler with \
         #[utoipa::path] and list it in shared::openapi::ApiDoc"
    );

    // The methods the live router answers on each path, without credentials (so nothing runs).
    let mut routed = BTreeSet::new();
    for path in &router_paths {
        for method in METHODS {
            let url = app.url(&concrete(path));
            let response = app
                .http
                .request(method.parse().unwrap(), &url)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            let fallback =
                status == 405 || (status == 404 && body["error"]["message"] == "no such route");
            assert_ne!(status, 500, "{method} {path}: {body}");
            if !fallback {
                routed.insert((method.to_owned(), path.clone()));
            }
        }
    }
    assert_eq!(
        routed, ops,
        "operations routed (left) and documented (right) differ"
    );
}

#[tokio::test]
async fn openapi_document_has_schemas_the_error_shape_and_the_bearer_scheme() {
    let app = spawn_app().await;
    let doc: Value = app
        .http
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let scheme = &doc["components"]["securitySchemes"]["bearer"];
    assert_eq!(scheme["type"], "http");
    assert_eq!(scheme["scheme"], "bearer");
    assert_eq!(scheme["bearerFormat"], "JWT");
    let error = &doc["components"]["schemas"]["ErrorBody"];
    assert_eq!(
        error["properties"]["error"]["$ref"],
        "#/components/schemas/ErrorDetail"
    );

    let submit = &doc["paths"]["/api/v1/generate"]["post"];
    assert_eq!(
        submit["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/GenerateBody"
    );
    assert_eq!(submit["security"][0]["bearer"], Value::Array(vec![]));
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let public = path.starts_with("/health") || path == "/metrics";
            assert_eq!(
                op.get("security").is_some(),
                !public,
                "{method} {path}: /api routes need the bearer scheme, public ones none"
            );
            if !public {
                // The compatible doors answer errors in their vendor's shape, the rest in ours.
                let shape = if path == "/v1/messages" {
                    "#/components/schemas/AnthropicErrorBody"
                } else if path.starts_with("/v1/") {
                    "#/components/schemas/OpenAiErrorBody"
                } else {
                    "#/components/schemas/ErrorBody"
                };
                let unauthorized = &op["responses"]["401"]["content"]["application/json"]["schema"];
                assert_eq!(
                    unauthorized["$ref"], shape,
                    "{method} {path}: errors in the route's one error shape"
                );
            }
        }
    }
    let chat = &doc["paths"]["/v1/chat/completions"]["post"];
    assert_eq!(
        chat["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/ChatCompletionRequest"
    );
    let chat_body = &doc["components"]["schemas"]["ChatCompletionRequest"]["properties"];
    for field in [
        "model",
        "messages",
        "max_tokens",
        "stream",
        "response_format",
    ] {
        assert!(
            chat_body.get(field).is_some(),
            "ChatCompletionRequest.{field}"
        );
    }
    assert!(
        chat_body.get("other").is_none(),
        "the catch-all is not a parameter"
    );
    let key = &doc["components"]["securitySchemes"]["api_key"];
    assert_eq!(key["type"], "apiKey");
    assert_eq!(key["in"], "header");
    assert_eq!(key["name"], "x-api-key");
    assert_eq!(
        doc["paths"]["/v1/messages"]["post"]["security"][1]["api_key"],
        Value::Array(vec![])
    );
    let messages = &doc["components"]["schemas"]["MessagesRequest"]["properties"];
    for field in ["model", "messages", "max_tokens", "system", "stream"] {
        assert!(messages.get(field).is_some(), "MessagesRequest.{field}");
    }
    assert!(
        messages.get("other").is_none(),
        "the catch-all is not a parameter"
    );
    let generate = &doc["components"]["schemas"]["GenerateBody"]["properties"];
    for field in ["prompt", "model", "parameters", "template_id", "cache"] {
        assert!(generate.get(field).is_some(), "GenerateBody.{field}");
    }
}

#[tokio::test]
async fn openapi_docs_page_is_served_from_the_binary_and_stays_on_this_server() {
    let app = spawn_app().await;
    let page = app.http.get(app.url("/docs/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("default-src 'self'"), "{csp}");
    assert!(csp.contains("connect-src 'self'"), "{csp}");
    let html = page.text().await.unwrap();
    assert!(html.contains("swagger-ui"), "{html}");
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "{html}"
    );
    for asset in [
        "swagger-ui.css",
        "swagger-ui-bundle.js",
        "swagger-ui-standalone-preset.js",
        "swagger-initializer.js",
    ] {
        let r = app
            .http
            .get(app.url(&format!("/docs/{asset}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{asset} is served by the binary");
        assert!(r.bytes().await.unwrap().len() > 100, "{asset}");
    }
    let init = app
        .http
        .get(app.url("/docs/swagger-initializer.js"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(init.contains("/openapi.json"), "{init}");
    assert!(
        init.contains("\"validatorUrl\": \"none\""),
        "no online validator: {init}"
    );
}

//! CORS: configured origins get the headers and preflights are answered; any other origin
//! gets none; no origin configured is no CORS at all; a wildcard does not start the api.

use std::time::Duration;

use llm_tests::{TestApp, binary, spawn_app, spawn_app_with_providers};
use reqwest::Method;
use reqwest::header::HeaderMap;

const ALLOWED: &str = "https://dnd.example";

async fn app_allowing_origins() -> TestApp {
    spawn_app_with_providers(&[
        "--cors-allowed-origins".into(),
        format!("{ALLOWED}, http://localhost:5173"),
    ])
    .await
}

async fn get_from(app: &TestApp, origin: &str) -> HeaderMap {
    let response = app
        .http
        .get(app.url("/api/v1/models"))
        .bearer_auth(app.token())
        .header("Origin", origin)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.headers().clone()
}

async fn preflight(app: &TestApp, path: &str, origin: &str, method: &str) -> (u16, HeaderMap) {
    let response = app
        .http
        .request(Method::OPTIONS, app.url(path))
        .header("Origin", origin)
        .header("Access-Control-Request-Method", method)
        .header(
            "Access-Control-Request-Headers",
            "authorization, content-type, last-event-id",
        )
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.headers().clone())
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .map_or("", |v| v.to_str().unwrap_or_default())
}

#[tokio::test]
async fn a_configured_origin_gets_the_cors_headers_and_another_origin_none() {
    let app = app_allowing_origins().await;
    let allowed = get_from(&app, ALLOWED).await;
    assert_eq!(header(&allowed, "access-control-allow-origin"), ALLOWED);
    let exposed = header(&allowed, "access-control-expose-headers").to_owned();
    for name in [
        "x-trace-id",
        "retry-after",
        "x-ratelimit-remaining-requests",
    ] {
        assert!(exposed.contains(name), "{name} exposed: {exposed}");
    }
    assert!(header(&allowed, "vary").contains("origin"), "{allowed:?}");
    assert!(
        allowed.get("access-control-allow-credentials").is_none(),
        "no cookies: the token is a bearer token"
    );
    let second = get_from(&app, "http://localhost:5173").await;
    assert_eq!(
        header(&second, "access-control-allow-origin"),
        "http://localhost:5173"
    );

    // Not listed, or listed only in part: no CORS header, so the browser hides the answer.
    for other in [
        "https://evil.example",
        "https://dnd.example.evil.example",
        "http://dnd.example",
        "null",
    ] {
        let headers = get_from(&app, other).await;
        assert!(
            headers.get("access-control-allow-origin").is_none(),
            "{other}: {headers:?}"
        );
    }
}

#[tokio::test]
async fn a_preflight_from_a_configured_origin_is_answered_for_the_api_routes() {
    let app = app_allowing_origins().await;
    for (path, method) in [
        ("/api/v1/generate", "POST"),
        (
            "/api/v1/generate/0190c6a8-0000-7000-8000-000000000001/stream",
            "GET",
        ),
        (
            "/api/v1/generate/0190c6a8-0000-7000-8000-000000000001",
            "DELETE",
        ),
        ("/v1/chat/completions", "POST"),
    ] {
        let (status, headers) = preflight(&app, path, ALLOWED, method).await;
        assert_eq!(status, 200, "{path}: {headers:?}");
        assert_eq!(header(&headers, "access-control-allow-origin"), ALLOWED);
        assert!(
            header(&headers, "access-control-allow-methods").contains(method),
            "{path}: {headers:?}"
        );
        let allowed = header(&headers, "access-control-allow-headers").to_owned();
        for name in ["authorization", "content-type", "last-event-id"] {
            assert!(allowed.contains(name), "{path}: {name} in {allowed}");
        }
        assert_eq!(header(&headers, "access-control-max-age"), "600");
        // A preflight is traced like any answer.
        assert_eq!(header(&headers, "x-trace-id").len(), 32);
    }
    // Another origin's preflight names no origin, so the browser sends nothing after it.
    let (_, refused) = preflight(&app, "/api/v1/generate", "https://evil.example", "POST").await;
    assert!(
        refused.get("access-control-allow-origin").is_none(),
        "{refused:?}"
    );
}

#[tokio::test]
async fn without_configured_origins_no_answer_carries_cors_headers() {
    let app = spawn_app().await;
    let headers = get_from(&app, ALLOWED).await;
    assert!(
        !headers
            .keys()
            .any(|name| name.as_str().starts_with("access-control-")),
        "{headers:?}"
    );
    let (status, headers) = preflight(&app, "/api/v1/generate", ALLOWED, "POST").await;
    assert_eq!(status, 405, "no route answers OPTIONS: {headers:?}");
    assert!(headers.get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn the_api_refuses_to_start_with_a_wildcard_or_malformed_origin() {
    let app = spawn_app().await; // only for its database
    for (origins, expected) in [
        ("*", "wildcard"),
        ("https://dnd.example,https://*.example", "wildcard"),
        ("https://dnd.example/", "is not an origin"),
    ] {
        let serve = tokio::process::Command::new(binary("llm-api"))
            .arg("serve")
            .env_clear()
            .env("DATABASE_URL", &app.db.url)
            .env("SECRET_KEY", llm_tests::TEST_SECRET)
            .env("API_LISTEN", "127.0.0.1:0")
            .env("PROMPTS_DIR", llm_tests::prompts_dir())
            .env("LOG_LEVEL", "error")
            .env("CORS_ALLOWED_ORIGINS", origins)
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(30), serve)
            .await
            .expect("the api started with CORS_ALLOWED_ORIGINS={origins}")
            .unwrap();
        assert!(!out.status.success(), "{origins}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("CORS_ALLOWED_ORIGINS"), "{stderr}");
        assert!(stderr.contains(expected), "{origins}: {stderr}");
    }
}

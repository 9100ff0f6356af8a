//! The OWASP API Top 10 items that apply to this service, tried as a tenant would: other
//! users' ids on every id-taking route (BOLA), admin routes with an ordinary token, mass
//! assignment of fields the service owns, oversize headers and keys, deep JSON, template ids
//! that walk out of the prompt library, and pages that ask for everything.

use llm_shared::admin::MAX_PAGE;
use llm_shared::batches::MAX_BATCH_ITEMS;
use llm_shared::requests::MAX_IDEMPOTENCY_KEY_LEN;
use llm_tests::spawn_app;
use serde_json::{Value, json};
use uuid::Uuid;

/// Asserts the one JSON error shape with `status` and `code`.
fn assert_error(status: u16, body: &Value, want_status: u16, want_code: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["error"]["code"], want_code, "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
}

#[tokio::test]
async fn every_route_taking_a_request_id_answers_another_user_as_if_it_did_not_exist() {
    use reqwest::Method;
    let app = spawn_app().await;
    // No worker runs: the request stays pending, so a cancel by the intruder would show.
    let id = app.submit_ok(json!({"prompt": "my secret plan"})).await;
    let intruder = app.token_for(Uuid::now_v7());
    let unknown = Uuid::now_v7();

    for (method, path) in [
        (Method::GET, "/api/v1/generate/{}"),
        (Method::GET, "/api/v1/generate/{}?wait=1"),
        (Method::GET, "/api/v1/generate/{}/stream"),
        (Method::DELETE, "/api/v1/generate/{}"),
    ] {
        let theirs = app
            .call(
                method.clone(),
                &path.replace("{}", &id.to_string()),
                &intruder,
                None,
            )
            .await;
        let nobodys = app
            .call(
                method.clone(),
                &path.replace("{}", &unknown.to_string()),
                &intruder,
                None,
            )
            .await;
        assert_error(theirs.0, &theirs.1, 404, "not_found");
        // The same answer as for an id nobody has: the route is no oracle of which ids exist.
        assert_eq!(
            theirs.1["error"]["message"]
                .as_str()
                .unwrap()
                .replace(&id.to_string(), ""),
            nobodys.1["error"]["message"]
                .as_str()
                .unwrap()
                .replace(&unknown.to_string(), ""),
            "{method} {path}"
        );
    }

    let (status, body) = app.poll(id, 0).await;
    assert_eq!(status, 200);
    assert_eq!(
        body["status"], "pending",
        "the intruder's DELETE cancelled it: {body}"
    );
    assert_eq!(body["prompt"], "my secret plan");
}

#[tokio::test]
async fn another_users_batch_is_not_found() {
    let app = spawn_app().await;
    let (status, batch) = app
        .post_json(
            "/api/v1/generate/batch",
            &json!({"items": [{"prompt": "a"}, {"prompt": "b"}]}),
        )
        .await;
    assert_eq!(status, 202, "{batch}");
    let batch_id = batch["batch_id"].as_str().unwrap();

    let intruder = app.token_for(Uuid::now_v7());
    let (status, body) = app
        .call(
            reqwest::Method::GET,
            &format!("/api/v1/generate/batch/{batch_id}"),
            &intruder,
            None,
        )
        .await;
    assert_error(status, &body, 404, "not_found");
    let (status, _) = app
        .get_json(&format!("/api/v1/generate/batch/{batch_id}"))
        .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn admin_routes_refuse_an_ordinary_token() {
    use reqwest::Method;
    let app = spawn_app().await;
    let victim = app.submit_ok(json!({"prompt": "x"})).await;
    let user = app.token_for(Uuid::now_v7());
    // The role is checked before the body is read: a malformed body still answers 403, so a
    // non-admin learns nothing of an admin route's input.
    let routes: [(Method, String, Option<Value>); 11] = [
        (
            Method::POST,
            "/api/v1/admin/requests/replay".into(),
            Some(json!({"nonsense": 1})),
        ),
        (Method::GET, "/api/v1/admin/outbox/dead".into(), None),
        (
            Method::POST,
            "/api/v1/admin/outbox/dead/replay".into(),
            Some(json!({"all": true})),
        ),
        (Method::GET, format!("/api/v1/usage/{}", app.user), None),
        (Method::GET, "/api/v1/admin/requests".into(), None),
        (
            Method::POST,
            format!("/api/v1/admin/requests/{victim}/replay"),
            None,
        ),
        (
            Method::POST,
            "/api/v1/admin/requests/replay".into(),
            Some(json!({"filter": {"user_id": app.user}})),
        ),
        (
            Method::POST,
            "/api/v1/admin/cache/invalidate".into(),
            Some(json!({"model": "mock"})),
        ),
        (
            Method::PUT,
            format!("/api/v1/admin/rate_limits/{}", Uuid::now_v7()),
            Some(json!({"requests_per_minute": 1_000_000, "tokens_per_minute": 1_000_000_000})),
        ),
        (Method::POST, "/api/v1/admin/models/reload".into(), None),
        (
            Method::POST,
            "/api/v1/events".into(),
            Some(
                json!({"id": Uuid::now_v7(), "type": "cache.invalidate", "data": {"model": "mock"}}),
            ),
        ),
    ];
    for (method, path, body) in routes {
        let (status, answer) = app.call(method.clone(), &path, &user, body).await;
        assert_error(status, &answer, 403, "forbidden");
    }
    assert_eq!(
        app.db
            .count("SELECT COUNT(*) FROM rate_limit_overrides")
            .await,
        0
    );
}

#[tokio::test]
async fn fields_the_service_owns_cannot_be_assigned_in_a_submit() {
    let app = spawn_app().await;
    let someone_else = Uuid::now_v7();
    for (field, value) in [
        ("user_id", json!(someone_else)),
        ("status", json!("completed")),
        ("result", json!("forged")),
        ("id", json!(Uuid::now_v7())),
        ("cost_usd", json!(0)),
        ("priority", json!("interactive")),
    ] {
        let mut body = json!({"prompt": "x"});
        body[field] = value;
        let (status, answer) = app.submit(body).await;
        assert_error(status, &answer, 422, "validation_failed");
        assert!(
            answer["error"]["message"].as_str().unwrap().contains(field),
            "{answer}"
        );
    }
    assert_eq!(
        app.db
            .count("SELECT COUNT(*) FROM generation_requests")
            .await,
        0
    );
}

#[tokio::test]
async fn an_idempotency_key_is_scoped_to_its_user() {
    let app = spawn_app().await;
    let submit = |token: String| {
        let app = &app;
        async move {
            let response = app
                .http
                .post(app.url("/api/v1/generate"))
                .bearer_auth(token)
                .header("idempotency-key", "order-42")
                .json(&json!({"prompt": "same body"}))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 202);
            response.json::<Value>().await.unwrap()["request_id"].clone()
        }
    };
    let mine = submit(app.token()).await;
    let theirs = submit(app.token_for(Uuid::now_v7())).await;
    assert_ne!(
        mine, theirs,
        "a key reused by another user returned my request"
    );
    assert_eq!(submit(app.token()).await, mine);
}

#[tokio::test]
async fn oversize_idempotency_keys_and_headers_get_a_4xx_and_the_api_keeps_serving() {
    let app = spawn_app().await;
    for len in [MAX_IDEMPOTENCY_KEY_LEN + 1, 8 * 1024] {
        let response = app
            .http
            .post(app.url("/api/v1/generate"))
            .bearer_auth(app.token())
            .header("idempotency-key", "k".repeat(len))
            .json(&json!({"prompt": "x"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "key of {len} bytes");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "bad_request", "{body}");
    }

    // Headers past the server's limit: refused by the HTTP layer (431) or the connection is
    // closed; never a 5xx, and the api keeps serving.
    let huge = "h".repeat(1024 * 1024);
    match app
        .http
        .get(app.url("/api/v1/models"))
        .bearer_auth(app.token())
        .header("x-padding", huge)
        .send()
        .await
    {
        Ok(response) => assert!(response.status().is_client_error(), "{}", response.status()),
        Err(error) => assert!(!error.is_timeout(), "{error}"),
    }
    let many = (0..200).fold(
        app.http
            .get(app.url("/api/v1/models"))
            .bearer_auth(app.token()),
        |request, i| request.header(format!("x-h{i}"), "v"),
    );
    match many.send().await {
        Ok(response) => assert!(response.status().is_client_error(), "{}", response.status()),
        Err(error) => assert!(!error.is_timeout(), "{error}"),
    }
    let (status, _) = app.get_json("/api/v1/models").await;
    assert_eq!(status, 200);
    assert_eq!(
        app.db
            .count("SELECT COUNT(*) FROM generation_requests")
            .await,
        0
    );
}

#[tokio::test]
async fn deeply_nested_json_is_a_clear_4xx() {
    let app = spawn_app().await;
    let depth = 20_000; // 40 KB: under the body limit, far past any sane nesting
    let nested = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    for body in [
        format!(r#"{{"prompt": "x", "metadata": {{"a": {nested}}}}}"#),
        format!(r#"{{"prompt": "x", "context": {nested}}}"#),
        nested.clone(),
    ] {
        let response = app
            .http
            .post(app.url("/api/v1/generate"))
            .bearer_auth(app.token())
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let answer: Value = response.json().await.unwrap();
        assert!(status == 400 || status == 422, "{status} {answer}");
        assert!(answer["error"]["code"].is_string(), "{answer}");
    }
    let response = app
        .http
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(app.token())
        .header("content-type", "application/json")
        .body(format!(
            r#"{{"model": "mock", "messages": [{{"role": "user", "content": "x"}}], "metadata": {nested}}}"#
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let answer: Value = response.json().await.unwrap();
    assert!(answer["error"]["message"].is_string(), "{answer}");
    assert_eq!(
        app.db
            .count("SELECT COUNT(*) FROM generation_requests")
            .await,
        0
    );
}

#[tokio::test]
async fn template_ids_cannot_reach_outside_the_prompt_library() {
    let app = spawn_app().await;
    for id in [
        "..%2F..%2FCargo.toml",
        "..%2F..%2F..%2Fetc%2Fpasswd",
        "%2Fetc%2Fpasswd",
        "character..backstory..%2E%2E",
    ] {
        let (status, body) = app.get_json(&format!("/api/v1/prompts/{id}")).await;
        assert!(status == 404 || status == 400, "{id}: {status} {body}");
        assert!(body["error"]["code"].is_string(), "{body}");
        assert!(!body.to_string().contains("[workspace]"), "{body}");
        assert!(!body.to_string().contains("root:"), "{body}");
    }
    for id in ["../../Cargo", "/etc/passwd", "../migrations/x"] {
        let (status, body) = app.submit(json!({"template_id": id, "params": {}})).await;
        assert!(status == 404 || status == 422, "{id}: {status} {body}");
        assert!(!body.to_string().contains("[workspace]"), "{body}");
    }
}

#[tokio::test]
async fn a_page_asking_for_everything_gets_at_most_one_page() {
    let app = spawn_app().await;
    let items: Vec<Value> = (0..MAX_PAGE + 5)
        .map(|i| json!({"prompt": format!("p{i}")}))
        .collect();
    let (status, body) = app
        .post_json("/api/v1/generate/batch", &json!({"items": items}))
        .await;
    assert_eq!(status, 202, "{body}");

    let admin = app.jwt.issue(Uuid::now_v7(), 600, Some("admin")).unwrap();
    for limit in ["1000000", "9223372036854775807"] {
        let (status, page) = app
            .call(
                reqwest::Method::GET,
                &format!("/api/v1/admin/requests?limit={limit}"),
                &admin,
                None,
            )
            .await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(
            page["requests"].as_array().unwrap().len(),
            MAX_PAGE as usize
        );
        assert!(page["next_cursor"].is_string(), "{page}");
    }
    for limit in ["-1", "99999999999999999999999", "ten"] {
        let (status, page) = app
            .call(
                reqwest::Method::GET,
                &format!("/api/v1/admin/requests?limit={limit}"),
                &admin,
                None,
            )
            .await;
        assert!(status == 200 || status == 400, "{limit}: {status} {page}");
        if status == 200 {
            assert!(page["requests"].as_array().unwrap().len() <= MAX_PAGE as usize);
        }
    }

    let too_many: Vec<Value> = (0..=MAX_BATCH_ITEMS)
        .map(|_| json!({"prompt": "x"}))
        .collect();
    let (status, answer) = app
        .post_json("/api/v1/generate/batch", &json!({"items": too_many}))
        .await;
    assert_error(status, &answer, 422, "validation_failed");
}

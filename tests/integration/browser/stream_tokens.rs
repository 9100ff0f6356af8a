//! Stream tokens: `POST …/stream-token` gives a request's owner a token that opens that one
//! stream from a URL, as a browser's `EventSource` needs, and nothing else; a bearer token is
//! not accepted in the URL; and the token never reaches the api's logs.

use std::time::Duration;

use llm_tests::sse::{SseReader, output_of};
use llm_tests::{TestApp, signal, spawn_api_process_logged, spawn_app, start_worker, test_jwt};
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use uuid::Uuid;

const LONG: Duration = Duration::from_secs(30);

async fn stream_token(app: &TestApp, id: Uuid, bearer: &str) -> (u16, Value) {
    app.call(
        reqwest::Method::POST,
        &format!("/api/v1/generate/{id}/stream-token"),
        bearer,
        None,
    )
    .await
}

/// `GET path` with no credentials but those in the URL.
async fn get_anonymous(app: &TestApp, path: &str) -> (u16, Value) {
    let response = app.http.get(app.url(path)).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_stream_token_opens_its_requests_stream_from_the_url_token_by_token() {
    let app = spawn_app().await;
    let worker = start_worker(&app.db, &[]);
    let id = app
        .submit_streamed(
            json!({"prompt": "A gnome's clockwork familiar", "parameters": {"max_tokens": 12},
               "mock": {"token_delay_ms": 20}}),
        )
        .await;
    let response = app
        .http
        .post(app.url(&format!("/api/v1/generate/{id}/stream-token")))
        .bearer_auth(app.token())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let grant: Value = response.json().await.unwrap();
    let token = grant["token"].as_str().unwrap();
    assert_eq!(
        grant["stream_url"],
        format!("/api/v1/generate/{id}/stream?access_token={token}")
    );
    let expires: chrono::DateTime<chrono::Utc> =
        grant["expires_at"].as_str().unwrap().parse().unwrap();
    let left = expires - chrono::Utc::now();
    assert!(
        left > chrono::TimeDelta::seconds(250) && left <= chrono::TimeDelta::seconds(300),
        "STREAM_TOKEN_TTL_SECS is 300 by default: {left}"
    );

    // No Authorization header: the URL's token is the credential.
    let mut stream =
        SseReader::open(app.http.get(app.url(grant["stream_url"].as_str().unwrap()))).await;
    assert_eq!(stream.status, 200);
    let messages = stream.until_terminal(LONG).await;
    assert_eq!(messages[0].event, "start");
    assert_eq!(messages.last().unwrap().event, "done", "{messages:?}");
    let tokens: Vec<u64> = messages
        .iter()
        .filter(|m| m.event == "token")
        .filter_map(|m| m.id)
        .collect();
    assert_eq!(tokens.len(), 12, "one event per token: {messages:?}");
    let (_, row) = app.poll(id, 0).await;
    assert_eq!(output_of(&messages), row["result"].as_str().unwrap());

    // A new EventSource resumes after an event id given in the URL (it sends no header).
    let after = tokens[5];
    let mut resumed = SseReader::open(app.http.get(app.url(&format!(
        "{}&last_event_id={after}",
        grant["stream_url"].as_str().unwrap()
    ))))
    .await;
    assert_eq!(resumed.status, 200);
    let rest = resumed.until_terminal(LONG).await;
    let rest_ids: Vec<u64> = rest
        .iter()
        .filter(|m| m.event == "token")
        .filter_map(|m| m.id)
        .collect();
    assert_eq!(rest_ids, tokens[6..], "{rest:?}");
    worker.stop().await;
}

#[tokio::test]
async fn a_stream_token_is_its_owners_for_one_request_and_no_bearer_token() {
    let app = spawn_app().await;
    let mine = app.submit_streamed(json!({"prompt": "Mine"})).await;
    let also_mine = app.submit_streamed(json!({"prompt": "Also mine"})).await;

    // Another user cannot get a token for my request: not found, as on every id route.
    let intruder = app.token_for(Uuid::now_v7());
    let (status, body) = stream_token(&app, mine, &intruder).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "not_found");
    let (status, _) = stream_token(&app, Uuid::now_v7(), &app.token()).await;
    assert_eq!(status, 404);
    let (status, _) = stream_token(&app, mine, "").await;
    assert_eq!(status, 401);

    let (status, grant) = stream_token(&app, mine, &app.token()).await;
    assert_eq!(status, 200);
    let token = grant["token"].as_str().unwrap().to_owned();

    // The token of one request opens no other, not even the same user's.
    let (status, body) = get_anonymous(
        &app,
        &format!("/api/v1/generate/{also_mine}/stream?access_token={token}"),
    )
    .await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(
        body["error"]["message"],
        "the stream token is for another request"
    );

    // It is no bearer token: not for submitting, reading, cancelling, or more tokens.
    for (method, path) in [
        (reqwest::Method::POST, "/api/v1/generate".to_owned()),
        (reqwest::Method::GET, format!("/api/v1/generate/{mine}")),
        (reqwest::Method::DELETE, format!("/api/v1/generate/{mine}")),
        (
            reqwest::Method::GET,
            format!("/api/v1/generate/{mine}/stream"),
        ),
        (
            reqwest::Method::POST,
            format!("/api/v1/generate/{mine}/stream-token"),
        ),
        (reqwest::Method::GET, "/api/v1/usage".to_owned()),
    ] {
        let (status, body) = app
            .call(method.clone(), &path, &token, Some(json!({"prompt": "x"})))
            .await;
        assert_eq!(status, 401, "{method} {path}: {body}");
    }
    let response = app
        .http
        .post(app.url("/v1/messages"))
        .header("x-api-key", &token)
        .header("anthropic-version", "2023-06-01")
        .json(&json!({"model": "mock", "max_tokens": 5,
                      "messages": [{"role": "user", "content": "x"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);

    // A bearer token is not accepted in the URL (it would last hours and open everything).
    let (status, body) = get_anonymous(
        &app,
        &format!(
            "/api/v1/generate/{mine}/stream?access_token={}",
            app.token()
        ),
    )
    .await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["message"], "the stream token is invalid");

    // Expired, forged, or signed with another key: refused.
    let (expired, _) = test_jwt().issue_stream(app.user, mine, -1).unwrap();
    let (status, body) = get_anonymous(
        &app,
        &format!("/api/v1/generate/{mine}/stream?access_token={expired}"),
    )
    .await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("expired"),
        "{body}"
    );
    let other_key = llm_api::jwt::JwtKeys::new(&secrecy::SecretString::from("o".repeat(40)));
    let (foreign, _) = other_key.issue_stream(app.user, mine, 60).unwrap();
    for bad in [foreign.as_str(), "not-a-token", "", &"a".repeat(6000)] {
        let (status, body) = get_anonymous(
            &app,
            &format!("/api/v1/generate/{mine}/stream?access_token={bad}"),
        )
        .await;
        assert!(
            status == 401 || status == 431 || status == 414,
            "{}…: {status} {body}",
            &bad[..bad.len().min(20)]
        );
    }

    // A token for a request whose owner is someone else (signed by the service for a user
    // who does not own it): the row is not found for that user.
    let (stolen, _) = test_jwt().issue_stream(Uuid::now_v7(), mine, 60).unwrap();
    let (status, _) = get_anonymous(
        &app,
        &format!("/api/v1/generate/{mine}/stream?access_token={stolen}"),
    )
    .await;
    assert_eq!(status, 404);

    // Unknown query parameters and a malformed resume point are refused.
    for query in [
        format!("token={token}"),
        format!("access_token={token}&last_event_id=-1"),
        format!("access_token={token}&last_event_id=99999999999999999999"),
    ] {
        let (status, body) =
            get_anonymous(&app, &format!("/api/v1/generate/{mine}/stream?{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
    }
    let (status, _) = get_anonymous(&app, &format!("/api/v1/generate/{mine}/stream")).await;
    assert_eq!(status, 401, "no credentials at all");
    let (status, _) = app
        .call(
            reqwest::Method::POST,
            "/api/v1/generate?stream=maybe",
            &app.token(),
            Some(json!({"prompt": "x"})),
        )
        .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn a_stream_token_in_the_url_never_reaches_the_logs() {
    let app = spawn_app().await; // its database; the api is a process of its own
    let (mut api, base) =
        spawn_api_process_logged(&app.db, &[("LOG_LEVEL", "debug"), ("LOG_FORMAT", "json")]).await;
    let http = reqwest::Client::new();
    let bearer = app.token();
    let accepted: Value = http
        .post(format!("{base}/api/v1/generate?stream=true"))
        .bearer_auth(&bearer)
        .json(&json!({"prompt": "A dwarf's oath"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = accepted["request_id"].as_str().unwrap();
    let grant: Value = http
        .post(format!("{base}/api/v1/generate/{id}/stream-token"))
        .bearer_auth(&bearer)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = grant["token"].as_str().unwrap().to_owned();
    // An accepted stream (no worker: it only starts), and a refused one.
    let mut stream =
        SseReader::open(http.get(format!("{base}{}", grant["stream_url"].as_str().unwrap()))).await;
    assert_eq!(stream.status, 200);
    assert_eq!(stream.next(LONG).await.unwrap().event, "start");
    drop(stream);
    let refused = http
        .get(format!(
            "{base}/api/v1/generate/{}/stream?access_token={token}",
            Uuid::now_v7()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);

    tokio::time::sleep(Duration::from_millis(300)).await;
    signal(&api, libc::SIGTERM);
    let mut stdout = api.stdout.take().unwrap();
    let mut logs = String::new();
    tokio::time::timeout(Duration::from_secs(20), stdout.read_to_string(&mut logs))
        .await
        .expect("the api stops")
        .unwrap();
    let _ = api.wait().await;
    assert!(
        logs.contains("/api/v1/generate/{request_id}/stream"),
        "the stream's requests are logged, by route template: {logs}"
    );
    let signature = token.rsplit('.').next().unwrap();
    assert!(!logs.contains(signature), "the stream token is logged");
    assert!(!logs.contains("access_token"), "a query string is logged");
    assert!(!logs.contains(&bearer), "the bearer token is logged");
}

//! WebSocket streaming: the SSE events as JSON messages, resumable after an event id, with a
//! bearer token or a stream token; a submit over the socket; and what a hostile client gets.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use llm_tests::sse::{SseMessage, SseReader, output_of};
use llm_tests::{TestApp, spawn_app, start_worker};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use uuid::Uuid;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const LONG: Duration = Duration::from_secs(30);

/// Connects to `path`, with `bearer` as Authorization when given; the refused upgrade's
/// status and body otherwise.
async fn connect(app: &TestApp, path: &str, bearer: Option<&str>) -> Result<Socket, (u16, Value)> {
    let mut request = format!("ws://{}{path}", app.addr)
        .into_client_request()
        .unwrap();
    if let Some(bearer) = bearer {
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {bearer}").parse().unwrap());
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((socket, _)) => Ok(socket),
        Err(WsError::Http(response)) => {
            let status = response.status().as_u16();
            let body = response
                .body()
                .as_deref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or(Value::Null);
            Err((status, body))
        }
        Err(err) => panic!("{path}: {err}"),
    }
}

/// The messages until the server closes, as SSE messages, and the close code.
async fn read_all(socket: &mut Socket) -> (Vec<SseMessage>, Vec<Value>, Option<CloseCode>) {
    let mut events = Vec::new();
    let mut others = Vec::new();
    loop {
        let next = tokio::time::timeout(LONG, socket.next())
            .await
            .expect("the server answers or closes");
        match next {
            Some(Ok(Message::Text(text))) => {
                let value: Value = serde_json::from_str(text.as_str()).unwrap();
                if let Some(event) = value["event"].as_str() {
                    events.push(SseMessage {
                        event: event.to_owned(),
                        id: value["id"].as_u64(),
                        data: value["data"].clone(),
                    });
                } else {
                    others.push(value);
                }
            }
            Some(Ok(Message::Close(frame))) => return (events, others, frame.map(|f| f.code)),
            Some(Ok(_)) => {}
            None | Some(Err(_)) => return (events, others, None),
        }
    }
}

#[tokio::test]
async fn a_websocket_carries_the_sse_events_and_resumes_after_an_event_id() {
    let app = spawn_app().await;
    let worker = start_worker(&app.db, &[]);
    let id = app
        .submit_streamed(
            json!({"prompt": "A paladin's oath", "parameters": {"max_tokens": 10},
               "mock": {"token_delay_ms": 20}}),
        )
        .await;
    let mut socket = connect(
        &app,
        &format!("/api/v1/generate/{id}/ws"),
        Some(&app.token()),
    )
    .await
    .unwrap();
    let (events, others, close) = read_all(&mut socket).await;
    assert!(others.is_empty(), "{others:?}");
    assert_eq!(
        close,
        Some(CloseCode::Normal),
        "closed after the terminal event"
    );
    assert_eq!(events.last().unwrap().event, "done", "{events:?}");

    // The same events as SSE sends for the same request.
    let mut sse = SseReader::open(
        app.http
            .get(app.url(&format!("/api/v1/generate/{id}/stream")))
            .bearer_auth(app.token()),
    )
    .await;
    let over_sse = sse.until_terminal(LONG).await;
    let shape = |m: &[SseMessage]| -> Vec<(String, Option<u64>, Value)> {
        m.iter()
            .map(|m| (m.event.clone(), m.id, m.data.clone()))
            .collect()
    };
    // `start` tells the status at the time (pending then, completed now); the rest is equal.
    assert_eq!(events[0].event, over_sse[0].event);
    assert_eq!(events[0].data["request_id"], over_sse[0].data["request_id"]);
    assert_eq!(shape(&events[1..]), shape(&over_sse[1..]));
    let (_, row) = app.poll(id, 0).await;
    assert_eq!(output_of(&events), row["result"].as_str().unwrap());

    // Resumed after an event id, with a stream token (as a browser's WebSocket would).
    let tokens: Vec<u64> = events
        .iter()
        .filter(|m| m.event == "token")
        .filter_map(|m| m.id)
        .collect();
    let (_, grant) = app
        .call(
            reqwest::Method::POST,
            &format!("/api/v1/generate/{id}/stream-token"),
            &app.token(),
            None,
        )
        .await;
    let token = grant["token"].as_str().unwrap();
    let mut resumed = connect(
        &app,
        &format!(
            "/api/v1/generate/{id}/ws?access_token={token}&last_event_id={}",
            tokens[3]
        ),
        None,
    )
    .await
    .unwrap();
    let (rest, _, _) = read_all(&mut resumed).await;
    let rest_ids: Vec<u64> = rest
        .iter()
        .filter(|m| m.event == "token")
        .filter_map(|m| m.id)
        .collect();
    assert_eq!(rest_ids, tokens[4..], "{rest:?}");
    worker.stop().await;
}

#[tokio::test]
async fn a_request_submitted_over_a_websocket_streams_its_tokens() {
    let app = spawn_app().await;
    let worker = start_worker(&app.db, &[]);
    // A browser: no Authorization on the upgrade, the token in the first message.
    let mut socket = connect(&app, "/api/v1/generate/ws", None).await.unwrap();
    let first = json!({
        "token": app.token(),
        "request": {"prompt": "An elven ranger's bow", "parameters": {"max_tokens": 8}},
    });
    socket
        .send(Message::Text(first.to_string().into()))
        .await
        .unwrap();
    let (events, others, close) = read_all(&mut socket).await;
    assert!(others.is_empty(), "{others:?}");
    assert_eq!(close, Some(CloseCode::Normal));
    assert_eq!(events[0].event, "start", "{events:?}");
    let id: Uuid = events[0].data["request_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        events.iter().filter(|m| m.event == "token").count(),
        8,
        "{events:?}"
    );
    assert_eq!(events.last().unwrap().event, "done");
    let (_, row) = app.poll(id, 0).await;
    assert_eq!(row["status"], "completed");
    assert_eq!(output_of(&events), row["result"].as_str().unwrap());

    // With Authorization on the upgrade, the first message needs no token.
    let mut socket = connect(&app, "/api/v1/generate/ws", Some(&app.token()))
        .await
        .unwrap();
    let first = json!({"request": {"prompt": "A second bow", "parameters": {"max_tokens": 3}}});
    socket
        .send(Message::Text(first.to_string().into()))
        .await
        .unwrap();
    let (events, _, _) = read_all(&mut socket).await;
    assert_eq!(events.last().unwrap().event, "done", "{events:?}");
    worker.stop().await;
}

/// Sends `first` on a new submit socket and returns the error body it answers, if any, and
/// the close code.
async fn refused_submit(app: &TestApp, first: Message) -> (Option<Value>, Option<CloseCode>) {
    let mut socket = connect(app, "/api/v1/generate/ws", None).await.unwrap();
    let _ = socket.send(first).await;
    let (events, others, close) = read_all(&mut socket).await;
    assert!(events.is_empty(), "nothing was submitted: {events:?}");
    (others.into_iter().next(), close)
}

#[tokio::test]
async fn websockets_refuse_strangers_bad_first_messages_and_oversize_ones() {
    let app = spawn_app().await;
    let id = app.submit_streamed(json!({"prompt": "Mine"})).await;
    let other = app.submit_streamed(json!({"prompt": "Also mine"})).await;

    // Another user's request is not found, before any upgrade.
    let intruder = app.token_for(Uuid::now_v7());
    let (status, body) = connect(&app, &format!("/api/v1/generate/{id}/ws"), Some(&intruder))
        .await
        .unwrap_err();
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "not_found");
    // A bearer token in the URL, another request's stream token, no credentials: 401.
    let (_, grant) = app
        .call(
            reqwest::Method::POST,
            &format!("/api/v1/generate/{other}/stream-token"),
            &app.token(),
            None,
        )
        .await;
    for query in [
        format!("?access_token={}", app.token()),
        format!("?access_token={}", grant["token"].as_str().unwrap()),
        String::new(),
    ] {
        let (status, body) = connect(&app, &format!("/api/v1/generate/{id}/ws{query}"), None)
            .await
            .unwrap_err();
        assert_eq!(status, 401, "{query}: {body}");
    }
    // A plain GET is no upgrade: a 400 in the one error shape.
    let (status, body) = app
        .call(
            reqwest::Method::GET,
            &format!("/api/v1/generate/{id}/ws"),
            &app.token(),
            None,
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "bad_request");

    // Submits: each refusal is the error body, then a policy close, and nothing is stored.
    let before = app
        .db
        .count("SELECT count(*) FROM generation_requests")
        .await;
    let stream_token = grant["token"].as_str().unwrap();
    for (first, code) in [
        (Message::Text("not json".into()), "bad_request"),
        (Message::Binary(vec![1, 2, 3].into()), "bad_request"),
        (
            Message::Text(json!({"request": {"prompt": "x"}}).to_string().into()),
            "unauthorized",
        ),
        (
            Message::Text(
                json!({"token": stream_token, "request": {"prompt": "x"}})
                    .to_string()
                    .into(),
            ),
            "unauthorized",
        ),
        (
            Message::Text(
                json!({"token": app.token(), "request": {"prompt": "a\u{0}b"}})
                    .to_string()
                    .into(),
            ),
            "bad_request",
        ),
        (
            Message::Text(
                json!({"token": app.token(), "request": {"prompt": "x", "model": "no-such-model"}})
                    .to_string()
                    .into(),
            ),
            "validation_failed",
        ),
        (
            Message::Text(
                json!({"token": app.token(), "request": {"prompt": "x"}, "admin": true})
                    .to_string()
                    .into(),
            ),
            "bad_request",
        ),
    ] {
        let (body, close) = refused_submit(&app, first).await;
        let body = body.expect("an error body");
        assert_eq!(body["error"]["code"], code, "{body}");
        assert_eq!(close, Some(CloseCode::Policy), "{body}");
    }
    // Larger than MAX_BODY_BYTES (64 KiB here): the socket ends, nothing is read whole.
    let huge = json!({"token": app.token(), "request": {"prompt": "x".repeat(200_000)}});
    let (_, close) = refused_submit(&app, Message::Text(huge.to_string().into())).await;
    assert_ne!(close, Some(CloseCode::Normal));
    assert_eq!(
        app.db
            .count("SELECT count(*) FROM generation_requests")
            .await,
        before,
        "nothing refused was stored"
    );

    // A socket that never says anything is closed after FIRST_MESSAGE_WAIT.
    let started = std::time::Instant::now();
    let mut silent = connect(&app, "/api/v1/generate/ws", None).await.unwrap();
    let (_, others, close) = read_all(&mut silent).await;
    assert_eq!(others[0]["error"]["code"], "bad_request", "{others:?}");
    assert_eq!(close, Some(CloseCode::Policy));
    assert!(started.elapsed() < Duration::from_secs(15));
}

#[tokio::test]
async fn a_websocket_holds_one_of_the_users_streams_until_it_closes() {
    let app = llm_tests::spawn_app_with_providers(&["--user-max-streams".into(), "1".into()]).await;
    // No worker: the request stays pending and its socket stays open.
    let id = app.submit_streamed(json!({"prompt": "Pending"})).await;
    let path = format!("/api/v1/generate/{id}/ws");
    let mut first = connect(&app, &path, Some(&app.token())).await.unwrap();
    let start = tokio::time::timeout(LONG, first.next()).await.unwrap();
    assert!(matches!(start, Some(Ok(Message::Text(_)))), "{start:?}");
    let (status, body) = connect(&app, &path, Some(&app.token())).await.unwrap_err();
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "too_many_streams");
    first.close(None).await.unwrap();
    drop(first);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match connect(&app, &path, Some(&app.token())).await {
            Ok(_) => break,
            Err((429, _)) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(refused) => panic!("the closed socket's place is free again: {refused:?}"),
        }
    }
}

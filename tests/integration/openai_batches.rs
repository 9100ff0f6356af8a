//! OpenAI's Batch API (`/v1/files`, `/v1/batches`) on the service's own batches: a JSONL file
//! uploaded, a batch made from it (each line one durable request at batch priority), its
//! status read from its requests, its output and error files in OpenAI's line format; bounds
//! on what a file may hold, and no user reaching another's files or batches.

use std::time::{Duration, Instant};

use llm_tests::{TestApp, spawn_api_process_with, spawn_app, start_worker};
use serde_json::{Value, json};
use uuid::Uuid;

const BOUNDARY: &str = "batchapiboundary7MA4YWxkTrZu0gW";

/// `POST /v1/files` as multipart, as the SDK sends it.
async fn upload(app: &TestApp, token: &str, purpose: &str, content: &[u8]) -> (u16, Value) {
    let mut body = Vec::new();
    body.extend_from_slice(
        format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\n{purpose}\r\n\
             --{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"lines.jsonl\"\r\n\
             Content-Type: application/jsonl\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(content);
    body.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    let response = app
        .http
        .post(app.url("/v1/files"))
        .bearer_auth(token)
        .header(
            "content-type",
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn line(custom_id: &str, body: Value) -> String {
    json!({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body})
        .to_string()
}

fn chat(content: &str) -> Value {
    json!({"model": "mock", "max_tokens": 8, "messages": [{"role": "user", "content": content}]})
}

async fn create(app: &TestApp, token: &str, file_id: &str) -> (u16, Value) {
    app.call(
        reqwest::Method::POST,
        "/v1/batches",
        token,
        Some(
            json!({"input_file_id": file_id, "endpoint": "/v1/chat/completions",
                    "completion_window": "24h", "metadata": {"campaign": "x"}}),
        ),
    )
    .await
}

async fn text(app: &TestApp, token: &str, path: &str) -> (u16, String) {
    let response = app
        .http
        .get(app.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

async fn until_final(app: &TestApp, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, batch) = app.get_json(&format!("/v1/batches/{id}")).await;
        assert_eq!(status, 200, "{batch}");
        if ["completed", "cancelled", "expired"].contains(&batch["status"].as_str().unwrap()) {
            return batch;
        }
        assert!(
            Instant::now() < deadline,
            "the batch never finished: {batch}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn jsonl(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test]
async fn a_batch_file_runs_as_durable_requests_and_its_output_and_error_files_follow_openais_format()
 {
    let app = spawn_app().await;
    let token = app.token();
    let mut lines: Vec<String> = (0..5)
        .map(|i| line(&format!("npc-{i}"), chat(&format!("name npc {i}"))))
        .collect();
    let mut failing = chat("this one fails");
    failing["mock"] = json!({"fail": "permanent"});
    lines.push(line("broken", failing));
    let content = lines.join("\n") + "\n";

    let (status, file) = upload(&app, &token, "batch", content.as_bytes()).await;
    assert_eq!(status, 200, "{file}");
    let file_id = file["id"].as_str().unwrap().to_owned();
    assert!(file_id.starts_with("file-"));
    assert_eq!(file["object"], "file");
    assert_eq!(file["purpose"], "batch");
    assert_eq!(file["bytes"], content.len());
    let (status, listed) = app.get_json("/v1/files").await;
    assert_eq!(status, 200);
    assert_eq!(listed["data"][0]["id"], file_id.as_str());
    let (status, stored) = text(&app, &token, &format!("/v1/files/{file_id}/content")).await;
    assert_eq!((status, stored.as_str()), (200, content.as_str()));

    let (status, batch) = create(&app, &token, &file_id).await;
    assert_eq!(status, 200, "{batch}");
    let id = batch["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("batch_"));
    assert_eq!(batch["object"], "batch");
    assert_eq!(batch["status"], "in_progress");
    assert_eq!(batch["input_file_id"], file_id.as_str());
    assert_eq!(
        batch["request_counts"],
        json!({"total": 6, "completed": 0, "failed": 0})
    );
    assert_eq!(batch["metadata"]["campaign"], "x");
    assert!(batch["output_file_id"].is_null());
    // Each line is a request of one of our batches, its job in the batch class.
    assert_eq!(
        app.db
            .count("SELECT COUNT(*) FROM generation_requests WHERE batch_id IS NOT NULL AND metadata ? 'batch_custom_id'")
            .await,
        6
    );
    assert_eq!(
        app.db
            .count("SELECT COUNT(*) FROM apalis.jobs WHERE priority = 0")
            .await,
        6
    );

    let _worker = start_worker(&app.db, &[]);
    let done = until_final(&app, &id).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(
        done["request_counts"],
        json!({"total": 6, "completed": 5, "failed": 1})
    );
    assert!(done["completed_at"].as_i64().is_some());

    let output_id = done["output_file_id"].as_str().unwrap();
    let (status, output) = text(&app, &token, &format!("/v1/files/{output_id}/content")).await;
    assert_eq!(status, 200);
    let output = jsonl(&output);
    let ids: Vec<&str> = output
        .iter()
        .map(|l| l["custom_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["npc-0", "npc-1", "npc-2", "npc-3", "npc-4"]);
    for l in &output {
        assert!(l["id"].as_str().unwrap().starts_with("batch_req_"));
        assert!(l["error"].is_null());
        assert_eq!(l["response"]["status_code"], 200);
        let body = &l["response"]["body"];
        assert_eq!(body["object"], "chat.completion");
        assert_eq!(body["id"], l["response"]["request_id"]);
        assert_eq!(body["choices"][0]["message"]["role"], "assistant");
        assert!(
            !body["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .is_empty()
        );
    }
    let (status, meta) = app.get_json(&format!("/v1/files/{output_id}")).await;
    assert_eq!(status, 200, "{meta}");
    assert_eq!(meta["purpose"], "batch_output");

    let error_id = done["error_file_id"].as_str().unwrap();
    let (status, errors) = text(&app, &token, &format!("/v1/files/{error_id}/content")).await;
    assert_eq!(status, 200);
    let errors = jsonl(&errors);
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0]["custom_id"], "broken");
    // The mock's permanent failure is a refusal of the request: OpenAI's 400, as the chat door answers it.
    assert_eq!(errors[0]["response"]["status_code"], 400);
    assert!(errors[0]["response"]["body"]["error"]["message"].is_string());
    let (status, meta) = app.get_json(&format!("/v1/files/{error_id}")).await;
    assert_eq!(
        (status, meta["bytes"].as_u64()),
        (
            200,
            Some(
                text(&app, &token, &format!("/v1/files/{error_id}/content"))
                    .await
                    .1
                    .len() as u64
            )
        )
    );

    let (status, list) = app.get_json("/v1/batches?limit=1").await;
    assert_eq!(status, 200);
    assert_eq!(list["data"][0]["id"], id.as_str());
    assert_eq!(list["has_more"], false);

    // A completed batch is not cancelled; the uploaded file can be deleted, the batch stays.
    let (status, _) = app
        .call(
            reqwest::Method::POST,
            &format!("/v1/batches/{id}/cancel"),
            &token,
            None,
        )
        .await;
    assert_eq!(status, 409);
    let (status, deleted) = app
        .call(
            reqwest::Method::DELETE,
            &format!("/v1/files/{file_id}"),
            &token,
            None,
        )
        .await;
    assert_eq!(
        (status, &deleted),
        (
            200,
            &json!({"id": file_id, "object": "file", "deleted": true})
        )
    );
    let (status, _) = app.get_json(&format!("/v1/files/{file_id}")).await;
    assert_eq!(status, 404);
    let (status, _) = app.get_json(&format!("/v1/batches/{id}")).await;
    assert_eq!(status, 200);
}

/// A batch id (`batch_<hex>`) as the UUID it names.
fn batch_uuid(id: &str) -> Uuid {
    Uuid::try_parse(id.strip_prefix("batch_").unwrap()).unwrap()
}

/// Moves the batches `ids` and their requests 25 hours into the past: their 24-hour windows
/// have ended.
async fn made_a_day_ago(pool: &sqlx::PgPool, ids: &[Uuid]) {
    sqlx::query(
        "WITH moved AS (
             UPDATE generation_batches
             SET created_at = created_at - INTERVAL '25 hours',
                 expires_at = expires_at - INTERVAL '25 hours'
             WHERE id = ANY($1) RETURNING id)
         UPDATE generation_requests SET created_at = created_at - INTERVAL '25 hours'
         WHERE batch_id IN (SELECT id FROM moved)",
    )
    .bind(ids)
    .execute(pool)
    .await
    .unwrap();
}

/// The lines of the batch's file named by `which` (`output_file_id`, `error_file_id`).
async fn file_lines(app: &TestApp, token: &str, batch: &Value, which: &str) -> Vec<Value> {
    let path = format!("/v1/files/{}/content", batch[which].as_str().unwrap());
    let (status, content) = text(app, token, &path).await;
    assert_eq!(status, 200, "{content}");
    jsonl(&content)
}

/// A batch's completion window ends (24 h after it was made; here moved into the past): the
/// requests it still has pending or running end cancelled, listed in its error file as OpenAI's
/// `batch_expired`, and the batch is `expired`; what finished in time stays in its output file.
/// A batch that finished within its window stays completed; an expired one cannot be cancelled.
#[tokio::test]
async fn a_batch_whose_window_ends_expires_its_unfinished_requests_and_keeps_what_finished() {
    let app = spawn_app().await;
    let token = app.token();
    let content: Vec<String> = (0..3)
        .map(|i| line(&format!("e{i}"), chat(&format!("expiring {i}"))))
        .collect();
    let (_, file) = upload(&app, &token, "batch", content.join("\n").as_bytes()).await;
    let (status, expiring) = create(&app, &token, file["id"].as_str().unwrap()).await;
    assert_eq!(status, 200, "{expiring}");
    assert_eq!(
        expiring["expires_at"].as_i64().unwrap() - expiring["created_at"].as_i64().unwrap(),
        24 * 3600
    );
    assert!(expiring["expired_at"].is_null());
    let expiring_id = expiring["id"].as_str().unwrap();
    let (_, file) = upload(
        &app,
        &token,
        "batch",
        line("t0", chat("in time")).as_bytes(),
    )
    .await;
    let (status, in_time) = create(&app, &token, file["id"].as_str().unwrap()).await;
    assert_eq!(status, 200, "{in_time}");
    let batches = [
        batch_uuid(expiring_id),
        batch_uuid(in_time["id"].as_str().unwrap()),
    ];
    // Two lines are held by a worker alive elsewhere (a lease an hour long): still running
    // when the window ends.
    sqlx::query(
        "UPDATE generation_requests
         SET status = 'running', attempts = 1, claimed_by = 'elsewhere',
             lease_expires_at = NOW() + INTERVAL '1 hour'
         WHERE batch_id = $1 AND batch_index > 0",
    )
    .bind(batches[0])
    .execute(&app.db.pool)
    .await
    .unwrap();

    // The rescuer, which expires batches, runs every lease.
    let _worker = start_worker(&app.db, &["--lease-secs", "3"]);
    let done = until_final(&app, in_time["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "completed", "{done}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while app
        .db
        .count(&format!(
            "SELECT COUNT(*) FROM generation_requests
             WHERE batch_id = '{}' AND status = 'completed'",
            batches[0]
        ))
        .await
        < 1
    {
        assert!(Instant::now() < deadline, "the free line never ran");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    made_a_day_ago(&app.db.pool, &batches).await;

    let expired = until_final(&app, expiring_id).await;
    assert_eq!(expired["status"], "expired", "{expired}");
    assert!(expired["expired_at"].as_i64().is_some(), "{expired}");
    assert!(expired["completed_at"].is_null() && expired["cancelled_at"].is_null());
    assert_eq!(
        expired["request_counts"],
        json!({"total": 3, "completed": 1, "failed": 2})
    );
    let output = file_lines(&app, &token, &expired, "output_file_id").await;
    assert_eq!(output.len(), 1);
    assert_eq!(
        (
            &output[0]["custom_id"],
            &output[0]["response"]["status_code"]
        ),
        (&json!("e0"), &json!(200))
    );
    let errors = file_lines(&app, &token, &expired, "error_file_id").await;
    let ids: Vec<&str> = errors
        .iter()
        .map(|l| l["custom_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["e1", "e2"]);
    assert!(
        errors
            .iter()
            .all(|l| l["response"].is_null() && l["error"]["code"] == "batch_expired"),
        "{errors:?}"
    );
    // The hub hears of each expired line's end once, and why.
    assert_eq!(
        app.db
            .count(&format!(
                "SELECT COUNT(DISTINCT e.request_id) FROM outbox_events e
                 JOIN generation_requests r ON r.id = e.request_id
                 WHERE e.type = 'generation.cancelled' AND r.batch_id = '{}'
                   AND e.payload->>'error_code' = 'batch_expired'",
                batches[0]
            ))
            .await,
        2
    );

    let (status, kept) = app
        .get_json(&format!("/v1/batches/{}", in_time["id"].as_str().unwrap()))
        .await;
    assert_eq!(status, 200);
    assert_eq!(kept["status"], "completed", "{kept}");
    assert!(kept["expired_at"].is_null());
    let (status, refused) = app
        .call(
            reqwest::Method::POST,
            &format!("/v1/batches/{expiring_id}/cancel"),
            &token,
            None,
        )
        .await;
    assert_eq!(status, 409, "{refused}");
    let (_, again) = app.get_json(&format!("/v1/batches/{expiring_id}")).await;
    assert_eq!(again["status"], "expired");
}

/// Many batches whose windows ended at once are expired a bounded number per statement, and
/// all of them in one pass of the rescuer, one stored without `expires_at` included.
#[tokio::test]
async fn batches_expiring_together_are_expired_in_bounded_statements_within_one_pass() {
    let app = spawn_app().await;
    let token = app.token();
    let count = llm_shared::openai_batches::EXPIRE_PER_STATEMENT + 2;
    for i in 0..count {
        let content = [
            line("a", chat(&format!("many {i} a"))),
            line("b", chat(&format!("many {i} b"))),
        ];
        let (_, file) = upload(&app, &token, "batch", content.join("\n").as_bytes()).await;
        let (status, batch) = create(&app, &token, file["id"].as_str().unwrap()).await;
        assert_eq!(status, 200, "{batch}");
    }
    // One is stored without its expiry, as an api that does not write it stores a batch: it
    // has the window it was made with.
    sqlx::raw_sql(
        "UPDATE generation_batches SET created_at = created_at - INTERVAL '25 hours',
                                       expires_at = expires_at - INTERVAL '25 hours';
         UPDATE generation_batches SET expires_at = NULL
         WHERE id = (SELECT id FROM generation_batches ORDER BY id LIMIT 1);
         UPDATE generation_requests SET created_at = created_at - INTERVAL '25 hours';",
    )
    .execute(&app.db.pool)
    .await
    .unwrap();
    let expired = llm_shared::openai_batches::expire_due(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(expired, count * 2);
    assert_eq!(
        app.db
            .count("SELECT COUNT(*) FROM generation_batches WHERE expired_at IS NOT NULL")
            .await,
        count
    );
    // Nothing is left to expire, and nothing is expired twice.
    assert_eq!(
        llm_shared::openai_batches::expire_due(&app.db.pool)
            .await
            .unwrap(),
        0
    );
}

#[tokio::test]
async fn a_cancelled_batch_runs_none_of_its_lines_and_lists_them_in_its_error_file() {
    let app = spawn_app().await;
    let token = app.token();
    let content: Vec<String> = (0..3)
        .map(|i| line(&format!("c{i}"), chat("wait")))
        .collect();
    let (_, file) = upload(&app, &token, "batch", content.join("\n").as_bytes()).await;
    let (status, batch) = create(&app, &token, file["id"].as_str().unwrap()).await;
    assert_eq!(status, 200, "{batch}");
    let id = batch["id"].as_str().unwrap();
    let cancel = format!("/v1/batches/{id}/cancel");
    let (status, first) = app.call(reqwest::Method::POST, &cancel, &token, None).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["status"], "cancelled");
    assert_eq!(
        first["request_counts"],
        json!({"total": 3, "completed": 0, "failed": 3})
    );
    // Cancelling again changes nothing.
    let (status, second) = app.call(reqwest::Method::POST, &cancel, &token, None).await;
    assert_eq!(status, 200);
    assert_eq!(second["cancelled_at"], first["cancelled_at"]);
    // The hub hears of each line's cancellation once.
    assert_eq!(
        app.db
            .count(
                "SELECT COUNT(DISTINCT request_id) FROM outbox_events
                 WHERE type = 'generation.cancelled' AND payload->>'error_code' = 'cancelled'"
            )
            .await,
        3
    );
    assert_eq!(app.db.count("SELECT COUNT(*) FROM outbox_events").await, 3);
    assert!(first["output_file_id"].is_null());
    let errors = file_lines(&app, &token, &first, "error_file_id").await;
    assert_eq!(errors.len(), 3);
    assert!(
        errors
            .iter()
            .all(|l| l["response"].is_null() && l["error"]["code"] == "batch_cancelled")
    );
    // No line ever runs.
    let _worker = start_worker(&app.db, &[]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        app.db
            .count("SELECT COUNT(*) FROM generation_requests WHERE status <> 'cancelled'")
            .await,
        0
    );
}

#[tokio::test]
async fn hostile_files_are_refused_naming_what_is_wrong_and_nothing_is_created() {
    let app = spawn_app().await;
    let token = app.token();
    // Another purpose, by name.
    let (status, body) = upload(&app, &token, "fine-tune", b"{}\n").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "purpose");
    // Larger than 8 MiB.
    let huge = vec![b' '; 8 * 1024 * 1024 + 1];
    let (status, body) = upload(&app, &token, "batch", &huge).await;
    assert_eq!(status, 413, "{body}");
    // A million tiny lines (3 MB): refused by their count before any is parsed.
    let (status, body) = upload(&app, &token, "batch", "{}\n".repeat(1_000_000).as_bytes()).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("1000 lines"),
        "{body}"
    );
    // A line nested too deep, a line that is not JSON, a line longer than a request body.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let (status, body) = upload(&app, &token, "batch", format!("{{}}\n{deep}\n").as_bytes()).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = upload(&app, &token, "batch", b"{}\n{}\nnot json\n").await;
    assert_eq!(status, 400);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("line 3"),
        "{body}"
    );
    let long = format!("{{\"a\": \"{}\"}}", "x".repeat(300 * 1024));
    let (status, _) = upload(&app, &token, "batch", long.as_bytes()).await;
    assert_eq!(status, 400);
    let (status, _) = upload(&app, &token, "batch", b"{\"a\": \"\\u0000\"}").await;
    assert_eq!(status, 400);
    assert_eq!(app.db.count("SELECT COUNT(*) FROM openai_files").await, 0);

    // Files whose lines a batch cannot run: each refused at creation, naming the lines.
    let mut tools = chat("t");
    tools["tools"] = json!([{"type": "function", "function": {"name": "f"}}]);
    tools["tool_choice"] = json!({"type": "function", "function": {"name": "g"}});
    let mut streamed = chat("s");
    streamed["stream"] = json!(true);
    let mut unknown_model = chat("m");
    unknown_model["model"] = json!("no-such-model");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec![line("a", chat("1")), line("a", chat("2"))], "line 2: custom_id `a` is also line 1's"),
        (vec![line("a", chat("1")), line("b", unknown_model)], "line 2: body: the model `no-such-model`"),
        (vec![line("a", tools)], "line 1: tool_choice names `g`"),
        (vec![line("a", streamed)], "line 1: body: stream"),
        (
            vec![json!({"custom_id": "a", "method": "POST", "url": "/v1/embeddings", "body": chat("x")}).to_string()],
            "line 1: url `/v1/embeddings`",
        ),
        (
            vec![json!({"custom_id": "a", "method": "GET", "url": "/v1/chat/completions", "body": chat("x")}).to_string()],
            "line 1: method must be POST",
        ),
    ];
    for (lines, expected) in cases {
        let (status, file) = upload(&app, &token, "batch", lines.join("\n").as_bytes()).await;
        assert_eq!(status, 200, "{file}");
        let (status, body) = create(&app, &token, file["id"].as_str().unwrap()).await;
        assert_eq!(status, 400, "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(expected), "{message} lacks {expected}");
    }
    // A batch for another endpoint or window, or with extra parameters.
    let (_, file) = upload(&app, &token, "batch", line("a", chat("1")).as_bytes()).await;
    let file_id = file["id"].as_str().unwrap();
    for (body, param) in [
        (
            json!({"input_file_id": file_id, "endpoint": "/v1/embeddings", "completion_window": "24h"}),
            "endpoint",
        ),
        (
            json!({"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "1h"}),
            "completion_window",
        ),
        (
            json!({"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h",
                "metadata": {"k": "x".repeat(513)}}),
            "metadata",
        ),
    ] {
        let (status, answer) = app
            .call(reqwest::Method::POST, "/v1/batches", &token, Some(body))
            .await;
        assert_eq!(
            (status, answer["error"]["param"].as_str()),
            (400, Some(param)),
            "{answer}"
        );
    }
    assert_eq!(
        app.db
            .count("SELECT COUNT(*) FROM generation_batches")
            .await,
        0
    );
    assert_eq!(
        app.db
            .count("SELECT COUNT(*) FROM generation_requests")
            .await,
        0
    );
}

#[tokio::test]
async fn another_users_files_and_batches_are_not_found_and_malformed_ids_neither() {
    let app = spawn_app().await;
    let (owner, intruder) = (app.token(), app.token_for(Uuid::now_v7()));
    let (_, file) = upload(&app, &owner, "batch", line("a", chat("1")).as_bytes()).await;
    let file_id = file["id"].as_str().unwrap().to_owned();
    let (status, batch) = create(&app, &owner, &file_id).await;
    assert_eq!(status, 200, "{batch}");
    let batch_id = batch["id"].as_str().unwrap().to_owned();
    let cancel = format!("/v1/batches/{batch_id}/cancel");
    // Its output and error files exist once cancelled; the intruder sees none of them.
    let (_, cancelled) = app.call(reqwest::Method::POST, &cancel, &owner, None).await;
    let error_file = cancelled["error_file_id"].as_str().unwrap().to_owned();

    use reqwest::Method;
    let probes = [
        (Method::GET, format!("/v1/files/{file_id}")),
        (Method::GET, format!("/v1/files/{file_id}/content")),
        (Method::DELETE, format!("/v1/files/{file_id}")),
        (Method::GET, format!("/v1/files/{error_file}")),
        (Method::GET, format!("/v1/files/{error_file}/content")),
        (Method::GET, format!("/v1/batches/{batch_id}")),
        (Method::POST, cancel.clone()),
    ];
    for (method, path) in &probes {
        let (status, body) = app.call(method.clone(), path, &intruder, None).await;
        assert_eq!(status, 404, "{method} {path}: {body}");
        assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
    }
    let (status, _) = create(&app, &intruder, &file_id).await;
    assert_eq!(status, 404);
    for (path, expected) in [("/v1/files", 0), ("/v1/batches", 0)] {
        let (status, list) = app.call(Method::GET, path, &intruder, None).await;
        assert_eq!(
            (status, list["data"].as_array().unwrap().len()),
            (200, expected)
        );
    }
    // Malformed ids are ids nobody has.
    for path in [
        "/v1/files/file-nothex",
        "/v1/files/../etc",
        &format!("/v1/files/file-{}-other", Uuid::now_v7().simple()),
        "/v1/batches/batch_123",
        &format!("/v1/batches/{}", Uuid::now_v7()),
    ] {
        let (status, _) = app.call(Method::GET, path, &owner, None).await;
        assert_eq!(status, 404, "{path}");
    }
    let (status, _) = app
        .call(Method::GET, "/v1/batches?limit=101", &owner, None)
        .await;
    assert_eq!(status, 400);
    // The owner still has everything.
    let (status, _) = app
        .call(Method::GET, &format!("/v1/files/{file_id}"), &owner, None)
        .await;
    assert_eq!(status, 200);
}

/// The official `openai` Python SDK, unchanged: `files.create(purpose="batch")`,
/// `batches.create`, `batches.retrieve` until completed, `files.content` of the output and
/// error files, `batches.cancel` (tests/python/openai_batch_check.py).
#[tokio::test]
async fn the_official_openai_python_sdk_runs_a_batch_unchanged() {
    let python = llm_tests::openai_sdk_python().await;
    let db = llm_tests::TestDb::new().await;
    let (_api, base) = spawn_api_process_with(&db, &[]).await;
    let _worker = start_worker(&db, &[]);
    let key = llm_api::jwt::JwtKeys::new(&secrecy::SecretString::from(llm_tests::TEST_SECRET))
        .issue(Uuid::now_v7(), 600, None)
        .unwrap();
    let run = |expired: Option<&str>| {
        let mut command = tokio::process::Command::new(&python);
        command
            .arg(llm_tests::repo_root().join("tests/python/openai_batch_check.py"))
            .env("OPENAI_BASE_URL", format!("{base}/v1"))
            .env("OPENAI_API_KEY", &key);
        if let Some(id) = expired {
            command.env("EXPIRED_BATCH", id);
        }
        async move {
            let output = command.output().await.unwrap();
            let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(
                output.status.success(),
                "SDK checks failed:\n{stdout}\n{stderr}"
            );
            stdout
        }
    };
    let stdout = run(None).await;
    // The last batch's window ends while its line runs: the SDK reads it expired.
    let expiring = stdout
        .lines()
        .find_map(|l| l.strip_prefix("expiring "))
        .expect("the script names the batch to expire")
        .to_owned();
    made_a_day_ago(&db.pool, &[batch_uuid(&expiring)]).await;
    assert_eq!(
        llm_shared::openai_batches::expire_due(&db.pool)
            .await
            .unwrap(),
        1
    );
    let expired = run(Some(&expiring)).await;
    for (check, out) in [
        ("upload", &stdout),
        ("create", &stdout),
        ("completed", &stdout),
        ("output", &stdout),
        ("errors", &stdout),
        ("list", &stdout),
        ("cancel", &stdout),
        ("not_found", &stdout),
        ("expires_at", &stdout),
        ("expired", &expired),
        ("expired_errors", &expired),
        ("expired_cancel", &expired),
    ] {
        assert!(
            out.lines().any(|l| l == format!("ok {check}")),
            "{check} missing:\n{out}"
        );
    }
}

//! A request's `context`: rendered as a block of the system prompt every provider is called
//! with, part of the cache key, bounded in size and depth.

use std::time::Duration;

use llm_tests::fake_upstream::{self, FakeUpstream};
use llm_tests::{TestApp, app_with_worker, spawn_app};
use serde_json::{Value, json};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(20);

async fn ask(app: &TestApp, body: Value) -> Value {
    let (status, accepted) = app.submit(body).await;
    assert!(status == 200 || status == 202, "{accepted}");
    let id: Uuid = accepted["request_id"].as_str().unwrap().parse().unwrap();
    app.wait_final(id, WAIT).await
}

#[tokio::test]
async fn the_context_reaches_every_provider_as_a_block_after_the_system_prompt() {
    let openai = FakeUpstream::start("/v1").await;
    openai.always(fake_upstream::openai::success("Vex the bard.", 30, 4));
    let anthropic = FakeUpstream::start("").await;
    anthropic.always(fake_upstream::anthropic::success("Vex the bard.", 30, 4));
    let mut flags = llm_tests::openai_flags(&openai);
    flags.extend(llm_tests::anthropic_flags(&anthropic));
    let (app, worker) = app_with_worker(&flags).await;
    let context = json!({"class": "bard", "party": {"level": 3, "size": 4}});
    let block = "Context:\n{\"class\":\"bard\",\"party\":{\"level\":3,\"size\":4}}";

    let done = ask(
        &app,
        json!({"prompt": "Name my character", "model": "gpt-4o", "context": context,
               "parameters": {"system": "Be brief."}}),
    )
    .await;
    assert_eq!(done["status"], "completed", "{done}");
    let sent = &openai.received()[0].body["messages"];
    assert_eq!(sent[0]["role"], "system");
    assert_eq!(sent[0]["content"], format!("Be brief.\n\n{block}"));
    assert_eq!(
        sent[1],
        json!({"role": "user", "content": "Name my character"})
    );
    // What the client sent is what is stored and shown: the block exists only on the wire.
    assert_eq!(done["context"], context);

    // Without a system prompt the block is the system prompt; Anthropic takes it apart.
    let done = ask(
        &app,
        json!({"prompt": "Name my character", "model": "claude-haiku", "context": context}),
    )
    .await;
    assert_eq!(done["status"], "completed", "{done}");
    let sent = &anthropic.received()[0].body;
    assert_eq!(sent["system"], block);
    assert_eq!(sent["messages"][0]["content"], "Name my character");

    // No context (or an empty one): the call is as it always was, with no block.
    ask(
        &app,
        json!({"prompt": "Plain", "model": "gpt-4o", "context": {}, "parameters": {"system": "S"}}),
    )
    .await;
    ask(&app, json!({"prompt": "Bare", "model": "gpt-4o"})).await;
    let received = openai.received();
    assert_eq!(received.len(), 3);
    assert_eq!(
        received[1].body["messages"][0],
        json!({"role": "system", "content": "S"})
    );
    assert_eq!(
        received[2].body["messages"],
        json!([{"role": "user", "content": "Bare"}])
    );
    worker.stop().await;
}

#[tokio::test]
async fn requests_differing_only_in_their_context_do_not_share_a_cache_entry() {
    let openai = FakeUpstream::start("/v1").await;
    openai.always(fake_upstream::openai::success("An answer.", 12, 4));
    let (app, worker) = app_with_worker(&llm_tests::openai_flags(&openai)).await;
    let asking =
        |context: Value| json!({"prompt": "Name a hero", "model": "gpt-4o", "context": context});

    let wizard = ask(&app, asking(json!({"class": "wizard"}))).await;
    assert_eq!(wizard["cached"], false, "{wizard}");
    let rogue = ask(&app, asking(json!({"class": "rogue"}))).await;
    assert_eq!(
        rogue["cached"], false,
        "another context is another question"
    );
    let none = ask(&app, asking(Value::Null)).await;
    assert_eq!(none["cached"], false);
    assert_eq!(openai.received().len(), 3);

    // The same context again, keys in another order: answered from the cache.
    let again = ask(&app, asking(json!({"class": "wizard"}))).await;
    assert_eq!(again["cached"], true, "{again}");
    let empty = ask(&app, asking(json!({}))).await;
    assert_eq!(empty["cached"], true, "an empty context is no context");
    assert_eq!(openai.received().len(), 3);

    // A request without a context keeps the key it had before contexts counted, so entries
    // cached then still answer it.
    let parameters = json!({});
    let old_key =
        llm_shared::cache::cache_key("gpt-4o", "Name a hero", &parameters, &json!({}), None);
    let key: String = sqlx::query_scalar("SELECT cache_key FROM generation_requests WHERE id = $1")
        .bind(Uuid::parse_str(none["id"].as_str().unwrap()).unwrap())
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert!(key.starts_with(&old_key), "{key} vs {old_key}");
    worker.stop().await;
}

#[tokio::test]
async fn a_huge_deep_or_malformed_context_is_refused_before_anything_is_stored() {
    let app = spawn_app().await;
    let mut nine_deep = json!("bottom");
    for _ in 0..9 {
        nine_deep = json!({ "d": nine_deep });
    }
    let huge = json!({"lore": "x".repeat(17 * 1024)});
    for (context, expected) in [
        (nine_deep.clone(), "deeper than 8"),
        (huge.clone(), "longer than 16384 bytes"),
        (json!(["a", "list"]), "must be a JSON object"),
        (json!("text"), "must be a JSON object"),
    ] {
        let (status, body) = app.submit(json!({"prompt": "x", "context": context})).await;
        assert_eq!(status, 422, "{body}");
        assert_eq!(body["error"]["field"], "context", "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains(expected),
            "{body}"
        );
    }
    // Eight levels are fine.
    let mut eight_deep = json!("bottom");
    for _ in 0..8 {
        eight_deep = json!({ "d": eight_deep });
    }
    app.submit_ok(json!({"prompt": "x", "context": eight_deep}))
        .await;

    // Nesting past what the JSON reader takes at all is a clear 4xx too, never a 500.
    let abyss = format!(
        "{{\"prompt\": \"x\", \"context\": {}1{}}}",
        "{\"d\":".repeat(300),
        "}".repeat(300)
    );
    let response = app
        .http
        .post(app.url("/api/v1/generate"))
        .bearer_auth(app.token())
        .header("content-type", "application/json")
        .body(abyss)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    assert!(matches!(status, 400 | 422), "{status} {body}");
    assert!(body["error"]["code"].is_string(), "{body}");

    // The same bounds hold for a batch's items and for a template's context.
    let (status, body) = app
        .post_json(
            "/api/v1/generate/batch",
            &json!({"items": [{"prompt": "x"}, {"prompt": "y", "context": nine_deep}]}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["items"][0]["index"], 1);
    let (status, body) = app
        .submit(json!({"template_id": "character.name_ideas", "params": {}, "context": huge}))
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["field"], "context", "{body}");
    assert_eq!(
        app.db
            .count("SELECT COUNT(*) FROM generation_requests")
            .await,
        1
    );
}

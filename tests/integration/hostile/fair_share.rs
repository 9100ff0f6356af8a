//! A user's fair-share weight as an admin sets it: only 1 to 100, refused in the one error
//! shape otherwise, and never by a user.

use llm_tests::spawn_app;
use serde_json::{Value, json};
use uuid::Uuid;

#[tokio::test]
async fn a_weight_outside_1_to_100_is_refused_and_only_admins_set_one() {
    let app = spawn_app().await;
    let target = Uuid::now_v7();
    let path = app.url(&format!("/api/v1/admin/rate_limits/{target}"));
    let admin = app.jwt.issue(Uuid::now_v7(), 600, Some("admin")).unwrap();
    for weight in [json!(0), json!(101), json!(4_294_967_295_u64)] {
        let response = app
            .http
            .put(&path)
            .bearer_auth(&admin)
            .json(&json!({"weight": weight}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 422, "{weight}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "validation_failed", "{body}");
        assert_eq!(body["error"]["field"], "weight", "{body}");
    }
    for weight in [json!(-1), json!(2.5), json!("2")] {
        let response = app
            .http
            .put(&path)
            .bearer_auth(&admin)
            .json(&json!({"weight": weight}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 422, "{weight}");
    }
    let response = app
        .http
        .put(&path)
        .bearer_auth(app.token())
        .json(&json!({"weight": 100}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 403);
    assert_eq!(
        app.db
            .count("SELECT COUNT(*) FROM rate_limit_overrides WHERE weight IS NOT NULL")
            .await,
        0
    );
}

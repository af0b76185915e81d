//! Operators: named API tokens, and the actions an operator takes on sagas.

use crate::harness::{OPS_TOKEN, TOKEN, spawn_app};

#[tokio::test]
async fn named_and_bare_tokens_are_accepted_and_anything_else_is_401() {
    let app = spawn_app().await;
    let url = format!("{}/v1/sagas", app.base);
    for token in [TOKEN, OPS_TOKEN] {
        let resp = app.http.get(&url).bearer_auth(token).send().await.unwrap();
        assert_eq!(resp.status(), 200, "token {token}");
    }
    // The name is not a token, nor is the `name:token` entry as configured.
    for token in [
        "ops",
        "token-1",
        &format!("ops:{OPS_TOKEN}"),
        "unknown-token-0123456789",
    ] {
        let resp = app.http.get(&url).bearer_auth(token).send().await.unwrap();
        assert_eq!(resp.status(), 401, "token {token}");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unauthorized", "{body}");
    }
    let resp = app.http.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 401, "no token");
}

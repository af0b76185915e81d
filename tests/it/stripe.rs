//! The Stripe client wrapper against the Stripe test double, over real HTTP on 127.0.0.1:0.
//! Every Stripe API call goes through `StripeClient` (async-stripe); assertions check the
//! double's effect counters, not just the responses.

use std::time::Duration;

use sagad::stripe::client::{
    AuthorizeRequest, ClientOptions, Error, PaymentIntentStatus, StripeClient,
};
use stripe_double::{AttemptOutcome, Fault, Operation, StripeDouble};
use tokio::net::TcpListener;

const KEY: &str = "sk_test_sagad_double";

async fn double() -> StripeDouble {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    StripeDouble::start(listener).await.unwrap()
}

fn client(double: &StripeDouble) -> StripeClient {
    StripeClient::new(KEY, Some(&double.base_url())).unwrap()
}

fn booking(payment_method: &str) -> AuthorizeRequest {
    AuthorizeRequest {
        amount: 12_500,
        currency: "usd".to_owned(),
        payment_method: payment_method.to_owned(),
        metadata: vec![
            ("saga_id".to_owned(), "saga-1".to_owned()),
            ("step".to_owned(), "authorize".to_owned()),
        ],
        description: Some("Booking 42".to_owned()),
    }
}

/// Authorizes a visa payment and returns its PaymentIntent id.
async fn authorized(client: &StripeClient, key: &str) -> String {
    let pi = client
        .authorize(&booking("pm_card_visa"), key)
        .await
        .unwrap();
    assert_eq!(pi.status, PaymentIntentStatus::RequiresCapture);
    pi.id
}

fn rejected_code(err: &Error) -> (u16, &str, Option<&str>) {
    match err {
        Error::Rejected {
            status, kind, code, ..
        } => (*status, kind.as_str(), code.as_deref()),
        other => panic!("expected Rejected, got {other:?}"),
    }
}

/// Calls one after another share a kept-alive connection (async-stripe's own client opens one per
/// call: a TCP and, against Stripe, a TLS handshake each time).
#[tokio::test]
async fn sequential_calls_reuse_one_connection() {
    let double = double().await;
    let client = client(&double);
    for i in 0..5 {
        let pi = authorized(&client, &format!("reuse-{i}")).await;
        client
            .capture(&pi, &format!("reuse-{i}-capture"))
            .await
            .unwrap();
        client.retrieve(&pi).await.unwrap();
    }
    assert_eq!(double.counters().effects.captures, 5);
    assert_eq!(double.connections_accepted(), 1, "15 calls");
}

#[tokio::test]
async fn authorize_visa_holds_the_funds() {
    let double = double().await;
    let client = client(&double);

    let pi = client
        .authorize(&booking("pm_card_visa"), "saga-1:authorize")
        .await
        .unwrap();

    assert!(pi.id.starts_with("pi_"), "{}", pi.id);
    assert_eq!(pi.status, PaymentIntentStatus::RequiresCapture);
    assert_eq!(
        (pi.amount, pi.amount_capturable, pi.amount_received),
        (12_500, 12_500, 0)
    );
    assert_eq!(pi.currency, "usd");
    assert!(
        pi.latest_charge
            .as_deref()
            .is_some_and(|c| c.starts_with("ch_"))
    );
    assert_eq!(
        pi.metadata.get("saga_id").map(String::as_str),
        Some("saga-1")
    );

    let records = double.payment_intents();
    assert_eq!(records.len(), 1);
    let record = &records[0];
    assert_eq!(record.id, pi.id);
    assert_eq!(record.status, "requires_capture");
    assert_eq!(record.capture_method, "manual");
    assert_eq!(record.payment_method_token.as_deref(), Some("pm_card_visa"));
    assert_eq!(
        record.metadata.get("step").map(String::as_str),
        Some("authorize")
    );
    assert_eq!(record.description.as_deref(), Some("Booking 42"));
    assert_eq!(record.effects.authorizations, 1);
    assert_eq!(record.effects.captures, 0);

    let requests = double.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].path, "/v1/payment_intents");
    assert_eq!(
        requests[0].idempotency_key.as_deref(),
        Some("saga-1:authorize")
    );
    assert_eq!(requests[0].status, 200);

    let fetched = client.retrieve(&pi.id).await.unwrap();
    assert_eq!(fetched, pi);
}

#[tokio::test]
async fn capture_then_refund_moves_money_once() {
    let double = double().await;
    let client = client(&double);
    let id = authorized(&client, "s:auth").await;

    let captured = client.capture(&id, "s:capture").await.unwrap();
    assert_eq!(captured.status, PaymentIntentStatus::Succeeded);
    assert_eq!(
        (captured.amount_capturable, captured.amount_received),
        (0, 12_500)
    );
    assert_eq!(double.counters().effects.captures, 1);

    let refund = client.refund(&id, "s:refund").await.unwrap();
    assert!(refund.id.starts_with("re_"));
    assert_eq!(refund.status, "succeeded");
    assert_eq!(refund.amount, 12_500);
    assert_eq!(refund.payment_intent.as_deref(), Some(id.as_str()));

    // A second full refund under a new key: Stripe says the charge is already refunded.
    let err = client.refund(&id, "s:refund-again").await.unwrap_err();
    assert_eq!(
        rejected_code(&err),
        (
            400,
            "invalid_request_error",
            Some("charge_already_refunded")
        )
    );
    assert!(!err.is_transient());

    let counters = double.counters();
    assert_eq!(counters.effects.captures, 1);
    assert_eq!(counters.effects.refunds, 1);
    assert_eq!(counters.effects.refunded_amount, 12_500);
    let record = double.payment_intent(&id).unwrap();
    assert_eq!(
        (record.status.as_str(), record.amount_refunded),
        ("succeeded", 12_500)
    );
}

#[tokio::test]
async fn partial_refunds_stop_at_the_captured_amount() {
    let double = double().await;
    let client = client(&double);
    let id = authorized(&client, "p:auth").await;
    client.capture(&id, "p:capture").await.unwrap();

    let first = client
        .refund_amount(&id, 2_500, "p:refund-1")
        .await
        .unwrap();
    assert_eq!(first.amount, 2_500);
    let err = client
        .refund_amount(&id, 20_000, "p:refund-2")
        .await
        .unwrap_err();
    assert_eq!(rejected_code(&err).2, Some("amount_too_large"));
    let rest = client.refund(&id, "p:refund-3").await.unwrap();
    assert_eq!(rest.amount, 10_000);

    let counters = double.counters();
    assert_eq!(
        (counters.effects.refunds, counters.effects.refunded_amount),
        (2, 12_500)
    );
}

#[tokio::test]
async fn refund_of_an_uncaptured_authorization_is_rejected() {
    let double = double().await;
    let client = client(&double);
    let id = authorized(&client, "u:auth").await;

    let err = client.refund(&id, "u:refund").await.unwrap_err();
    assert_eq!(
        rejected_code(&err).2,
        Some("payment_intent_unexpected_state")
    );
    assert_eq!(double.counters().effects.refunds, 0);
}

#[tokio::test]
async fn cancel_voids_the_authorization() {
    let double = double().await;
    let client = client(&double);
    let id = authorized(&client, "c:auth").await;

    let canceled = client.cancel(&id, "c:cancel").await.unwrap();
    assert_eq!(canceled.status, PaymentIntentStatus::Canceled);
    assert_eq!(canceled.amount_capturable, 0);

    let err = client.capture(&id, "c:capture").await.unwrap_err();
    assert_eq!(
        rejected_code(&err),
        (
            400,
            "invalid_request_error",
            Some("payment_intent_unexpected_state")
        )
    );
    let err = client.cancel(&id, "c:cancel-again").await.unwrap_err();
    assert_eq!(
        rejected_code(&err).2,
        Some("payment_intent_unexpected_state")
    );

    let counters = double.counters();
    assert_eq!(
        (counters.effects.cancels, counters.effects.captures),
        (1, 0)
    );
}

#[tokio::test]
async fn capture_from_the_wrong_state_is_rejected() {
    let double = double().await;
    let client = client(&double);
    let id = authorized(&client, "w:auth").await;
    client.capture(&id, "w:capture-1").await.unwrap();

    let err = client.capture(&id, "w:capture-2").await.unwrap_err();
    assert_eq!(
        rejected_code(&err),
        (
            400,
            "invalid_request_error",
            Some("payment_intent_unexpected_state")
        )
    );
    assert_eq!(err.code(), Some("payment_intent_unexpected_state"));
    assert_eq!(double.counters().effects.captures, 1);
    assert_eq!(double.payment_intent(&id).unwrap().effects.captures, 1);
}

#[tokio::test]
async fn declined_cards_are_card_declined_with_the_reason() {
    let double = double().await;
    let client = client(&double);

    let err = client
        .authorize(&booking("pm_card_chargeDeclined"), "d:1")
        .await
        .unwrap_err();
    let Error::CardDeclined {
        code,
        decline_code,
        payment_intent,
        ..
    } = &err
    else {
        panic!("expected CardDeclined, got {err:?}");
    };
    assert_eq!(code, "card_declined");
    assert_eq!(decline_code.as_deref(), Some("generic_decline"));
    assert!(!err.is_transient());
    let declined_id = payment_intent
        .clone()
        .expect("decline names its PaymentIntent");

    let err = client
        .authorize(&booking("pm_card_chargeDeclinedInsufficientFunds"), "d:2")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("card_declined"));
    assert_eq!(err.decline_code(), Some("insufficient_funds"));

    let record = double.payment_intent(&declined_id).unwrap();
    assert_eq!(record.status, "requires_payment_method");
    assert_eq!(record.amount_capturable, 0);
    let counters = double.counters();
    assert_eq!(counters.payment_intents_created, 2);
    assert_eq!(
        (counters.effects.declines, counters.effects.authorizations),
        (2, 0)
    );

    // The PaymentIntent a decline leaves behind can still be voided.
    let canceled = client.cancel(&declined_id, "d:cancel").await.unwrap();
    assert_eq!(canceled.status, PaymentIntentStatus::Canceled);

    // Replaying the decline with the same key returns the same decline, creates nothing.
    let again = client
        .authorize(&booking("pm_card_chargeDeclined"), "d:1")
        .await
        .unwrap_err();
    assert_eq!(again.code(), Some("card_declined"));
    assert_eq!(double.counters().payment_intents_created, 2);
}

#[tokio::test]
async fn authentication_required_waits_for_three_d_secure() {
    let double = double().await;
    let client = client(&double);

    let pi = client
        .authorize(&booking("pm_card_authenticationRequired"), "3ds:auth")
        .await
        .unwrap();
    assert_eq!(pi.status, PaymentIntentStatus::RequiresAction);
    assert_eq!(pi.amount_capturable, 0);
    let err = client
        .capture(&pi.id, "3ds:capture-early")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("payment_intent_unexpected_state"));

    double.authenticate(&pi.id).unwrap();
    let now = client.retrieve(&pi.id).await.unwrap();
    assert_eq!(now.status, PaymentIntentStatus::RequiresCapture);
    let captured = client.capture(&pi.id, "3ds:capture").await.unwrap();
    assert_eq!(captured.status, PaymentIntentStatus::Succeeded);

    // A failed challenge sends the PaymentIntent back to requires_payment_method.
    let other = client
        .authorize(&booking("pm_card_authenticationRequired"), "3ds:auth-2")
        .await
        .unwrap();
    double.fail_authentication(&other.id).unwrap();
    let failed = client.retrieve(&other.id).await.unwrap();
    assert_eq!(failed.status, PaymentIntentStatus::RequiresPaymentMethod);
    assert!(double.authenticate(&other.id).is_err());

    let counters = double.counters();
    assert_eq!(counters.effects.authentications_required, 2);
    assert_eq!(
        (counters.effects.authorizations, counters.effects.captures),
        (1, 1)
    );
}

#[tokio::test]
async fn expired_authorization_is_canceled_automatically() {
    let double = double().await;
    let client = client(&double);
    let id = authorized(&client, "e:auth").await;

    double.expire_authorization(&id).unwrap();
    let pi = client.retrieve(&id).await.unwrap();
    assert_eq!(pi.status, PaymentIntentStatus::Canceled);
    assert_eq!(pi.cancellation_reason.as_deref(), Some("automatic"));
    let err = client.capture(&id, "e:capture").await.unwrap_err();
    assert_eq!(err.code(), Some("payment_intent_unexpected_state"));
}

#[tokio::test]
async fn same_key_replays_and_different_params_are_refused() {
    let double = double().await;
    let client = client(&double);

    let first = client
        .authorize(&booking("pm_card_visa"), "idem-1")
        .await
        .unwrap();
    let second = client
        .authorize(&booking("pm_card_visa"), "idem-1")
        .await
        .unwrap();
    assert_eq!(first, second);
    assert_eq!(double.payment_intents().len(), 1);
    assert_eq!(double.counters().payment_intents_created, 1);
    let requests = double.requests();
    assert_eq!(
        requests.iter().map(|r| r.replayed).collect::<Vec<_>>(),
        vec![false, true]
    );

    let mut changed = booking("pm_card_visa");
    changed.amount = 99_900;
    let err = client.authorize(&changed, "idem-1").await.unwrap_err();
    assert_eq!(rejected_code(&err), (400, "idempotency_error", None));
    assert_eq!(double.counters().payment_intents_created, 1);

    // Replayed capture: one capture, same answer.
    let a = client.capture(&first.id, "idem-capture").await.unwrap();
    let b = client.capture(&first.id, "idem-capture").await.unwrap();
    assert_eq!(a, b);
    assert_eq!(double.counters().effects.captures, 1);
}

#[tokio::test]
async fn injected_server_error_is_transient_and_retry_creates_one_intent() {
    let double = double().await;
    let client = client(&double);
    double.inject(Fault::server_error(Operation::Create));

    let err = client
        .authorize(&booking("pm_card_visa"), "f:auth")
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert_eq!(double.counters().payment_intents_created, 0);

    let pi = client
        .authorize(&booking("pm_card_visa"), "f:auth")
        .await
        .unwrap();
    assert_eq!(pi.status, PaymentIntentStatus::RequiresCapture);
    assert_eq!(double.counters().payment_intents_created, 1);
    let statuses: Vec<(u16, bool)> = double
        .requests()
        .iter()
        .map(|r| (r.status, r.replayed))
        .collect();
    assert_eq!(statuses, vec![(500, false), (200, false)]);
}

#[tokio::test]
async fn lost_response_is_transient_and_retry_returns_the_same_effect() {
    let double = double().await;
    let client = client(&double);

    double.inject(Fault::lose_response(Operation::Create));
    let err = client
        .authorize(&booking("pm_card_visa"), "l:auth")
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    // The effect happened even though the client never saw it.
    let created = double.payment_intents();
    assert_eq!(created.len(), 1);

    let pi = client
        .authorize(&booking("pm_card_visa"), "l:auth")
        .await
        .unwrap();
    assert_eq!(pi.id, created[0].id);
    assert_eq!(double.counters().payment_intents_created, 1);

    double.inject(Fault::lose_response(Operation::Capture));
    let err = client.capture(&pi.id, "l:capture").await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert_eq!(double.counters().effects.captures, 1);
    let captured = client.capture(&pi.id, "l:capture").await.unwrap();
    assert_eq!(captured.status, PaymentIntentStatus::Succeeded);

    let counters = double.counters();
    assert_eq!(
        (counters.payment_intents_created, counters.effects.captures),
        (1, 1)
    );
    let faults: Vec<Option<String>> = double.requests().into_iter().map(|r| r.fault).collect();
    assert_eq!(
        faults
            .iter()
            .filter(|f| f.as_deref() == Some("lose_response"))
            .count(),
        2
    );
}

#[tokio::test]
async fn a_slow_stripe_times_out_as_transient() {
    let double = double().await;
    let slow_client = StripeClient::with_options(
        KEY,
        ClientOptions {
            api_base: Some(double.base_url()),
            timeout: Duration::from_millis(300),
        },
    )
    .unwrap();
    let id = authorized(&slow_client, "t:auth").await;

    double.inject(Fault::latency(Operation::Capture, Duration::from_secs(3)));
    let err = slow_client.capture(&id, "t:capture").await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    // The capture itself went through; the retry with the same key replays it.
    assert_eq!(double.counters().effects.captures, 1);
    let captured = slow_client.capture(&id, "t:capture").await.unwrap();
    assert_eq!(captured.status, PaymentIntentStatus::Succeeded);
    assert_eq!(double.counters().effects.captures, 1);
}

#[tokio::test]
async fn bad_key_unknown_ids_and_unknown_cards_are_rejected() {
    let double = double().await;
    let client = client(&double);

    let live = StripeClient::new("sk_live_nope", Some(&double.base_url())).unwrap();
    let err = live.retrieve("pi_x").await.unwrap_err();
    assert_eq!(rejected_code(&err).0, 401);

    let err = client.retrieve("pi_missing").await.unwrap_err();
    assert_eq!(
        rejected_code(&err),
        (404, "invalid_request_error", Some("resource_missing"))
    );

    let err = client
        .authorize(&booking("pm_card_nope"), "x:1")
        .await
        .unwrap_err();
    assert_eq!(
        rejected_code(&err),
        (400, "invalid_request_error", Some("resource_missing"))
    );
    assert_eq!(double.counters().payment_intents_created, 0);

    assert!(matches!(
        client.capture("pi_x", "").await,
        Err(Error::Config(_))
    ));
}

#[tokio::test]
async fn unreachable_stripe_is_transient() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let client = StripeClient::new(KEY, Some(&format!("http://{addr}"))).unwrap();
    let err = client.retrieve("pi_x").await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
}

#[tokio::test]
async fn control_routes_inject_faults_and_list_state_over_http() {
    let double = double().await;
    let client = client(&double);
    let http = reqwest::Client::new();
    let base = double.base_url();

    let pending: serde_json::Value = http
        .post(format!("{base}_double/faults"))
        .json(&serde_json::json!({"operation": "capture", "kind": "server_error", "times": 2}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(pending[0]["times"], 2);

    let id = authorized(&client, "h:auth").await;
    for _ in 0..2 {
        assert!(
            client
                .capture(&id, "h:capture")
                .await
                .unwrap_err()
                .is_transient()
        );
    }
    client.capture(&id, "h:capture").await.unwrap();

    let listed: serde_json::Value = http
        .get(format!("{base}_double/payment_intents"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed[0]["id"], id.as_str());
    assert_eq!(listed[0]["status"], "succeeded");
    assert_eq!(listed[0]["effects"]["captures"], 1);
    assert_eq!(listed[0]["metadata"]["saga_id"], "saga-1");

    let events: serde_json::Value = http
        .get(format!("{base}_double/events"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kinds: Vec<&str> = events["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["type"].as_str())
        .collect();
    assert_eq!(
        kinds,
        vec![
            "payment_intent.created",
            "payment_intent.amount_capturable_updated",
            "payment_intent.succeeded"
        ]
    );
}

/// The attempt log shows what a client tried, where the effect counters show only what happened:
/// a duplicate capture under a second key, refused by Stripe's state rules, moves no money but is
/// there, with its key, as are replays, injected failures and refusals of every effect.
#[tokio::test]
async fn attempts_record_every_capture_cancel_and_refund_with_its_key() {
    let double = double().await;
    let client = client(&double);
    let id = authorized(&client, "a:auth").await;
    let other = authorized(&client, "b:auth").await;

    double.inject(Fault::server_error(Operation::Capture));
    assert!(client.capture(&id, "a:capture").await.is_err());
    client.capture(&id, "a:capture").await.unwrap();
    client.capture(&id, "a:capture").await.unwrap();
    let second_key = client.capture(&id, "a:capture-again").await.unwrap_err();
    assert_eq!(
        rejected_code(&second_key),
        (
            400,
            "invalid_request_error",
            Some("payment_intent_unexpected_state")
        )
    );
    assert!(client.cancel(&id, "a:void").await.is_err());
    client.refund(&id, "a:refund").await.unwrap();
    let again = client.refund(&id, "a:refund-again").await.unwrap_err();
    assert_eq!(
        rejected_code(&again),
        (
            400,
            "invalid_request_error",
            Some("charge_already_refunded")
        )
    );
    client.cancel(&other, "b:void").await.unwrap();

    // One capture, one refund and one void happened ...
    let effects = double.counters().effects;
    assert_eq!(
        (effects.captures, effects.refunds, effects.cancels),
        (1, 1, 1)
    );
    // ... and every attempt is on record, refused or not, with its key (retrieves and creates are not attempts).
    let seen: Vec<(Operation, Option<String>, AttemptOutcome, u16)> = double
        .attempts_on(&id)
        .into_iter()
        .map(|a| (a.operation, a.idempotency_key, a.outcome, a.status))
        .collect();
    let key = |k: &str| Some(k.to_owned());
    assert_eq!(
        seen,
        vec![
            (
                Operation::Capture,
                key("a:capture"),
                AttemptOutcome::Failed,
                500
            ),
            (
                Operation::Capture,
                key("a:capture"),
                AttemptOutcome::Performed,
                200
            ),
            (
                Operation::Capture,
                key("a:capture"),
                AttemptOutcome::Replayed,
                200
            ),
            (
                Operation::Capture,
                key("a:capture-again"),
                AttemptOutcome::Refused,
                400
            ),
            (
                Operation::Cancel,
                key("a:void"),
                AttemptOutcome::Refused,
                400
            ),
            (
                Operation::Refund,
                key("a:refund"),
                AttemptOutcome::Performed,
                200
            ),
            (
                Operation::Refund,
                key("a:refund-again"),
                AttemptOutcome::Refused,
                400
            ),
        ]
    );
    let all = double.attempts();
    assert_eq!(all.len(), 8);
    assert_eq!(
        (
            all[7].payment_intent.as_str(),
            all[7].operation,
            all[7].outcome
        ),
        (other.as_str(), Operation::Cancel, AttemptOutcome::Performed)
    );

    // The same over HTTP, for one PaymentIntent or all of them.
    let http = reqwest::Client::new();
    let base = double.base_url();
    let listed: serde_json::Value = http
        .get(format!("{base}_double/attempts?payment_intent={id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let listed = listed["data"].as_array().unwrap();
    assert_eq!(listed.len(), 7);
    assert_eq!(listed[3]["operation"], "capture");
    assert_eq!(listed[3]["idempotency_key"], "a:capture-again");
    assert_eq!(listed[3]["outcome"], "refused");
    assert_eq!(listed[0]["outcome"], "failed");
    assert_eq!(listed[0]["fault"], "server_error");
    let everything: serde_json::Value = http
        .get(format!("{base}_double/attempts"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(everything["data"].as_array().unwrap().len(), 8);
    assert_eq!(everything["data"][7]["payment_intent"], other.as_str());
}

/// Requests name their PaymentIntent in the log: a refund by its `charge`, a declined create by
/// the PaymentIntent its card error carries, and an effect on an unknown PaymentIntent is an
/// attempt on that id.
#[tokio::test]
async fn the_request_log_names_the_payment_intent_of_each_request() {
    let double = double().await;
    let client = client(&double);
    let id = authorized(&client, "n:auth").await;
    client.capture(&id, "n:capture").await.unwrap();
    let declined = client
        .authorize(&booking("pm_card_chargeDeclined"), "n:declined")
        .await
        .unwrap_err();
    assert!(!declined.is_transient(), "{declined:?}");
    assert!(client.capture("pi_missing", "n:missing").await.is_err());

    let charge = double.payment_intent(&id).unwrap().latest_charge.unwrap();
    let http = reqwest::Client::new();
    let refunded = http
        .post(format!("{}v1/refunds", double.base_url()))
        .bearer_auth(KEY)
        .header("Idempotency-Key", "n:refund-by-charge")
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(format!("charge={charge}"))
        .send()
        .await
        .unwrap();
    assert_eq!(refunded.status(), 200);

    let named: Vec<(Option<Operation>, Option<String>)> = double
        .requests()
        .into_iter()
        .map(|r| (r.operation, r.payment_intent))
        .collect();
    let pis = double.payment_intents();
    assert_eq!(pis.len(), 2);
    let declined_pi = pis[1].id.clone();
    assert_eq!(
        named,
        vec![
            (Some(Operation::Create), Some(id.clone())),
            (Some(Operation::Capture), Some(id.clone())),
            (Some(Operation::Create), Some(declined_pi)),
            (Some(Operation::Capture), Some("pi_missing".to_owned())),
            (Some(Operation::Refund), Some(id.clone())),
        ]
    );
    let missing = double.attempts_on("pi_missing");
    assert_eq!(missing.len(), 1);
    assert_eq!(missing[0].outcome, AttemptOutcome::Refused);
    assert_eq!(missing[0].status, 404);
}

/// The wire protocol itself, for integrators not using async-stripe: bracket syntax,
/// byte-identical replays with `Idempotent-Replayed`, Stripe-shaped 401s.
#[tokio::test]
async fn raw_http_speaks_stripes_form_encoding_and_replays_bytes() {
    let double = double().await;
    let http = reqwest::Client::new();
    let url = format!("{}v1/payment_intents", double.base_url());
    let form = "amount=5000&currency=eur&capture_method=manual&confirm=true\
                &payment_method=pm_card_visa&allowed_payment_method_types[]=card\
                &metadata[saga_id]=raw-1&metadata[booking]=b-9";
    let send = || {
        http.post(&url)
            .bearer_auth(KEY)
            .header("Idempotency-Key", "raw-key")
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(form)
            .send()
    };

    let first = send().await.unwrap();
    assert_eq!(first.status(), 200);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first_body = first.bytes().await.unwrap();
    let second = send().await.unwrap();
    assert_eq!(second.status(), 200);
    assert_eq!(second.headers()["idempotent-replayed"], "true");
    assert_eq!(second.bytes().await.unwrap(), first_body);

    let pi: serde_json::Value = serde_json::from_slice(&first_body).unwrap();
    assert_eq!(pi["object"], "payment_intent");
    assert_eq!(pi["status"], "requires_capture");
    assert_eq!(pi["payment_method_types"], serde_json::json!(["card"]));
    assert_eq!(
        pi["metadata"],
        serde_json::json!({"saga_id": "raw-1", "booking": "b-9"})
    );
    assert_eq!(double.counters().payment_intents_created, 1);

    let unauthorized = http.post(&url).body(form).send().await.unwrap();
    assert_eq!(unauthorized.status(), 401);
    let body: serde_json::Value = unauthorized.json().await.unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert_eq!(double.counters().payment_intents_created, 1);
}

/// A retry that reuses an idempotency key sends Stripe the same bytes: async-stripe takes
/// metadata as a `HashMap`, whose order changes from one map to the next.
#[tokio::test]
async fn retries_under_one_idempotency_key_send_identical_bytes() {
    let double = double().await;
    let client = client(&double);
    let mut req = booking("pm_card_visa");
    req.metadata = (0..8)
        .map(|i| (format!("key_{i}"), format!("value {i}")))
        .collect();
    for _ in 0..3 {
        client.authorize(&req, "same-key-every-time").await.unwrap();
    }
    let bodies: Vec<String> = double
        .requests()
        .into_iter()
        .filter(|r| r.operation == Some(Operation::Create))
        .map(|r| r.body)
        .collect();
    assert_eq!(bodies.len(), 3);
    assert!(bodies[0].contains("metadata"), "{}", bodies[0]);
    assert!(
        bodies.iter().all(|b| *b == bodies[0]),
        "bodies differ: {bodies:#?}"
    );
}

/// `payment_method_types` is gone from the API version sagad pins (`2026-09-30.endive`);
/// `allowed_payment_method_types` excludes the other ways of choosing payment methods.
#[tokio::test]
async fn the_double_refuses_payment_method_types_as_stripe_does() {
    let double = double().await;
    let http = reqwest::Client::new();
    let post = |path: &str, form: String| {
        http.post(format!("{}v1/{path}", double.base_url()))
            .bearer_auth(KEY)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(form)
            .send()
    };
    let base = "amount=5000&currency=eur&capture_method=manual&payment_method=pm_card_visa";
    for (extra, code, param) in [
        (
            "&payment_method_types[]=card",
            "payment_method_types_no_longer_supported",
            "payment_method_types",
        ),
        (
            "&payment_method_types[]=card&allowed_payment_method_types[]=card",
            "payment_method_types_no_longer_supported",
            "payment_method_types",
        ),
        (
            "&allowed_payment_method_types[]=card&automatic_payment_methods[enabled]=true",
            "parameters_exclusive",
            "automatic_payment_methods",
        ),
        (
            "&allowed_payment_method_types[]=card&excluded_payment_method_types[]=ideal",
            "parameters_exclusive",
            "excluded_payment_method_types",
        ),
        (
            "&allowed_payment_method_types[]=card&payment_method_configuration=pmc_1",
            "parameters_exclusive",
            "payment_method_configuration",
        ),
    ] {
        let resp = post("payment_intents", format!("{base}{extra}"))
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{extra}");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], code, "{extra}: {body}");
        assert_eq!(body["error"]["param"], param, "{extra}: {body}");
    }
    assert_eq!(double.counters().payment_intents_created, 0);

    // Allowed types are filtered to what can be used (the double knows cards).
    let resp = post(
        "payment_intents",
        format!("{base}&allowed_payment_method_types[]=card&allowed_payment_method_types[]=ideal"),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    let pi: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(pi["payment_method_types"], serde_json::json!(["card"]));
    let id = pi["id"].as_str().unwrap();
    let resp = post(
        &format!("payment_intents/{id}/confirm"),
        "payment_method_types[]=card".to_owned(),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 400);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(
        body["error"]["code"],
        "payment_method_types_no_longer_supported"
    );
}

//! `/metrics`: a scrape runs no query (the database's gauges come from a maintenance round), it
//! can have an address of its own, and a token when one is configured.

use sagad::config::Role;
use sagad::maintenance::Service;
use serde_json::{Value, json};

use crate::harness::{
    AppOptions, TestApp, booking_definition, booking_input, spawn_app_with, test_settings,
};

const METRICS_TOKEN: &str = "metrics-token-0123456789";

/// The value of `sagad_sagas{saga="…",status="…"}` in a scrape, if it has the series.
fn sagas_gauge(scrape: &str, saga: &str, status: &str) -> Option<f64> {
    scrape
        .lines()
        .filter(|l| l.starts_with("sagad_sagas{"))
        .find(|l| {
            l.contains(&format!("saga=\"{saga}\"")) && l.contains(&format!("status=\"{status}\""))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn start(app: &TestApp, saga: &str, listing: &str) {
    let resp = app
        .post("/v1/sagas")
        .json(&json!({ "saga": saga, "input": booking_input(listing, "pm_card_visa") }))
        .send()
        .await
        .expect("start request");
    assert!(resp.status().is_success(), "start: {}", resp.status());
}

/// One maintenance round of the gauges service, as the maintenance loop runs it.
async fn gauges_round(app: &TestApp) {
    Service::Gauges
        .run_once(&app.pool, &test_settings().maintenance)
        .await
        .expect("gauges round");
}

#[tokio::test]
async fn a_scrape_shows_the_gauges_of_the_last_maintenance_round_and_queries_nothing() {
    // A saga name of this test's own: the recorder is shared by every test in this process.
    let saga = format!("gauges_{:08x}", rand::random::<u32>());
    let mut def = booking_definition();
    def.name = saga.clone();
    // API only: no maintenance loop runs here, so only this test's rounds set the gauges.
    let app = spawn_app_with(AppOptions {
        role: Role::Api,
        definitions: vec![def],
        ..Default::default()
    })
    .await;
    start(&app, &saga, "gauges-1").await;
    start(&app, &saga, "gauges-2").await;
    assert_eq!(
        sagas_gauge(&app.metrics().await, &saga, "running"),
        None,
        "no round has run: the scrape itself reads nothing from the database"
    );

    gauges_round(&app).await;
    let scrape = app.metrics().await;
    assert_eq!(sagas_gauge(&scrape, &saga, "running"), Some(2.0));
    assert_eq!(
        sagas_gauge(&scrape, &saga, "completed"),
        Some(0.0),
        "every status of the saga has a series"
    );

    start(&app, &saga, "gauges-3").await;
    assert_eq!(
        sagas_gauge(&app.metrics().await, &saga, "running"),
        Some(2.0),
        "until the next round, a scrape shows what the last one read"
    );
    gauges_round(&app).await;
    assert_eq!(
        sagas_gauge(&app.metrics().await, &saga, "running"),
        Some(3.0)
    );
}

#[tokio::test]
async fn metrics_can_have_an_address_of_their_own_off_the_api_port() {
    let app = spawn_app_with(AppOptions {
        metrics_listener: true,
        ..Default::default()
    })
    .await;
    let own = app.metrics_base.clone().expect("metrics address");
    let resp = app
        .http
        .get(format!("{own}/metrics"))
        .send()
        .await
        .expect("scrape");
    assert_eq!(resp.status(), 200);
    let body = resp.text().await.expect("metrics body");
    assert!(body.contains("sagad_db_pool_connections"), "{body}");

    let on_api = app.get("/metrics").send().await.expect("GET /metrics");
    assert_eq!(
        on_api.status(),
        404,
        "the API's port no longer serves metrics"
    );
    let body: Value = on_api.json().await.expect("JSON error body");
    assert_eq!(body["error"]["code"], "not_found");
    for path in ["/healthz", "/v1/sagas"] {
        let resp = app
            .http
            .get(format!("{own}{path}"))
            .bearer_auth(crate::harness::TOKEN)
            .send()
            .await
            .expect("GET");
        assert_eq!(
            resp.status(),
            404,
            "{path} is not served on the metrics address"
        );
    }
    assert_eq!(
        app.get("/healthz").send().await.expect("healthz").status(),
        200
    );
}

#[tokio::test]
async fn a_configured_metrics_token_is_required_wherever_metrics_are_served() {
    for own_address in [false, true] {
        let app = spawn_app_with(AppOptions {
            metrics_listener: own_address,
            metrics_token: Some(METRICS_TOKEN.into()),
            ..Default::default()
        })
        .await;
        let base = app.metrics_base.clone().unwrap_or_else(|| app.base.clone());
        let url = format!("{base}/metrics");
        let scrape = |token: Option<&str>| {
            let req = app.http.get(&url);
            match token {
                Some(t) => req.bearer_auth(t),
                None => req,
            }
        };
        for token in [
            None,
            Some(crate::harness::TOKEN),
            Some("metrics-token-wrong-12345"),
        ] {
            let resp = scrape(token).send().await.expect("scrape");
            assert_eq!(resp.status(), 401, "{token:?} (own address: {own_address})");
            let body: Value = resp.json().await.expect("JSON error body");
            assert_eq!(body["error"]["code"], "unauthorized", "{body}");
        }
        let resp = scrape(Some(METRICS_TOKEN)).send().await.expect("scrape");
        assert_eq!(resp.status(), 200, "own address: {own_address}");
        assert!(resp.text().await.expect("body").contains("sagad_"));
        // The token guards metrics only: health probes stay open.
        let health = app
            .http
            .get(format!("{}/healthz", app.base))
            .send()
            .await
            .expect("healthz");
        assert_eq!(health.status(), 200);
    }
}

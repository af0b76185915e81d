//! The `sagad` binary as an operator meets it: clear errors, definition checks, the health check.

use std::process::Command;

fn sagad() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sagad"))
}

#[test]
fn sagas_check_accepts_the_shipped_definitions_and_points_at_bad_lines() {
    let ok = sagad()
        .args([
            "sagas",
            "check",
            "--dir",
            concat!(env!("CARGO_MANIFEST_DIR"), "/sagas"),
        ])
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("ok  booking v2 (5 steps)"));

    let dir = std::env::temp_dir().join(format!("sagad-defs-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("bad.toml"),
        "name = \"bad\"\nversion = 1\n\n[[steps]]\nname = \"pay\"\naction = \"payment.authorise\"\ntimeout = \"soon\"\n",
    )
    .unwrap();
    let bad = sagad()
        .args(["sagas", "check", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(bad.status.code(), Some(1));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("bad.toml:6:10: unknown action `payment.authorise`"),
        "{err}"
    );
    assert!(err.contains("bad.toml:7:"), "the timeout's line too: {err}");
    assert!(err.contains("2 problem(s) found"), "{err}");
}

#[test]
fn serve_without_configuration_says_what_to_set() {
    let out = sagad()
        .arg("serve")
        .env_remove("SAGAD_API_TOKENS")
        .env_remove("STRIPE_SECRET_KEY")
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("SAGAD_API_TOKENS"), "{err}");
    assert!(err.contains("--dev"), "{err}");

    let out = sagad().args(["serve", "--lease", "soon"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a duration"));
}

#[tokio::test]
async fn the_stripe_double_runs_on_its_own_for_integrators() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_sagad"))
        .args(["stripe-double", "--listen", &format!("127.0.0.1:{port}")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}/");
    let stripe =
        sagad::stripe::client::StripeClient::new("sk_test_integrator", Some(&base)).unwrap();
    let request = sagad::stripe::client::AuthorizeRequest {
        amount: 1000,
        currency: "eur".into(),
        payment_method: "pm_card_visa".into(),
        metadata: vec![],
        description: None,
    };
    let mut pi = None;
    for _ in 0..100 {
        if let Ok(p) = stripe.authorize(&request, "integrator-1").await {
            pi = Some(p);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let pi = pi.expect("the double answers");
    assert_eq!(
        pi.status,
        sagad::stripe::client::PaymentIntentStatus::RequiresCapture
    );
    let state: serde_json::Value = reqwest::get(format!("{base}_double/payment_intents"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(state.as_array().map(Vec::len), Some(1), "{state}");
    child.kill().await.unwrap();
}

/// `sagad healthcheck` (the Docker HEALTHCHECK) against a ready server, a port where nothing
/// listens and a server that answers 503.
#[tokio::test]
async fn healthcheck_exits_0_when_ready_and_1_with_the_reason_otherwise() {
    let healthcheck = |args: &[&str], listen: &str| {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_sagad"))
            .arg("healthcheck")
            .args(args)
            .env("SAGAD_LISTEN", listen)
            .output()
    };

    let app = crate::harness::spawn_app().await;
    let listen = app.base.trim_start_matches("http://");
    let ready = healthcheck(&[], listen).await.unwrap();
    assert_eq!(
        ready.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ready.stderr)
    );
    assert!(String::from_utf8_lossy(&ready.stdout).starts_with("ready"));

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let nobody = format!("http://127.0.0.1:{port}");
    let down = healthcheck(&["--url", &nobody, "--timeout", "1s"], listen)
        .await
        .unwrap();
    assert_eq!(down.status.code(), Some(1));
    let err = String::from_utf8_lossy(&down.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with(&format!("not ready: cannot reach {nobody}/readyz")),
        "{err}"
    );

    let unready = sagad_test_support::Receiver::start().await;
    unready.answer(503);
    let base = unready.url.trim_end_matches("/hook");
    let refused = healthcheck(&["--url", base], listen).await.unwrap();
    assert_eq!(refused.status.code(), Some(1));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("answered 503"), "{err}");
    assert_eq!(unready.hits()[0].path, "/readyz");
    app.stop().await;
}

/// Runs `sagad` with `args` and `env`; returns (exit code, stdout, stderr).
async fn run_sagad(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_sagad"))
        .args(args)
        // Never the machine's own cluster: a command without DATABASE_URL here fails.
        .env_remove("DATABASE_URL")
        .env("SAGAD_DATA_DIR", "/nonexistent/sagad-cli-tests")
        .envs(env.iter().copied())
        .output()
        .await
        .expect("run sagad");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `sagad saga …` against a running sagad.
async fn saga_cli(app: &crate::harness::TestApp, args: &[&str]) -> (Option<i32>, String, String) {
    let mut all = vec!["saga"];
    all.extend_from_slice(args);
    run_sagad(
        &all,
        &[
            ("SAGAD_URL", app.base.as_str()),
            ("SAGAD_API_TOKEN", crate::harness::TOKEN),
        ],
    )
    .await
}

/// The saga id on the `saga      <id> (booking v1)` line of `saga start` / `saga show`.
fn shown_id(out: &str) -> uuid::Uuid {
    out.lines()
        .find_map(|l| l.strip_prefix("saga "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("no saga id in {out}"))
}

async fn saga_count(app: &crate::harness::TestApp) -> i64 {
    crate::harness::count(&app.pool, "SELECT count(*) FROM sagas").await
}

/// `sagad saga start | show | list | cancel` through the real binary: what an operator sees, the
/// exit codes, and the refusals of bad input, which leave nothing behind.
#[tokio::test]
async fn the_saga_cli_starts_shows_lists_and_cancels() {
    let app = crate::harness::spawn_app().await;
    let booking = [
        "start",
        "--listing",
        "cli-villa",
        "--guest",
        "guest-cli",
        "--check-in",
        "2027-09-01",
        "--check-out",
        "2027-09-04",
        "--amount",
        "45000",
        "--idempotency-key",
        "cli-booking-1",
        "--wait",
        "20s",
    ];
    let (code, out, err) = saga_cli(&app, &booking).await;
    assert_eq!(code, Some(0), "{err}");
    let id = shown_id(&out);
    assert!(out.contains("status    completed"), "{out}");
    assert!(
        out.contains("booking   cli-villa 2027-09-01..2027-09-04 45000"),
        "{out}"
    );
    // The same key again: the same saga, nothing new.
    let (code, out, err) = saga_cli(&app, &booking).await;
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(shown_id(&out), id);
    assert_eq!(saga_count(&app).await, 1);

    let (code, out, err) = saga_cli(&app, &["show", &id.to_string()]).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("status    completed"), "{out}");
    assert!(out.contains("forward      notify"), "{out}");
    let events = out.split_once("\nevents:\n").map(|(_, e)| e).unwrap_or("");
    assert!(
        events
            .lines()
            .next()
            .unwrap_or("")
            .contains("BookingRequested")
            && events
                .lines()
                .last()
                .unwrap_or("")
                .contains("SagaCompleted"),
        "{out}"
    );

    let (code, out, err) = saga_cli(&app, &["list", "--status", "completed"]).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(out.starts_with("ID "), "{out}");
    assert!(
        out.lines().any(|l| l.split_whitespace().take(3).eq([
            id.to_string().as_str(),
            "booking",
            "completed"
        ])),
        "{out}"
    );
    let (code, out, _) = saga_cli(&app, &["list", "--status", "running"]).await;
    assert_eq!(code, Some(0));
    assert_eq!(out.lines().count(), 1, "only the header: {out}");

    // The guest cancels: refunded, released, cancelled.
    let (code, out, err) = saga_cli(&app, &["cancel", &id.to_string()]).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains(&id.to_string()), "{out}");
    let v = app.wait_terminal(id).await;
    assert_eq!(v["status"], "compensated", "{v:#}");
    assert_eq!(app.payment_intents_of(id)[0].effects.refunds, 1);

    // Refusals: the API's message, exit status 1, nothing written.
    let refusals: [(&[&str], &str); 6] = [
        (&["show", "not-a-uuid"], "HTTP 400"),
        (&["show", &uuid::Uuid::nil().to_string()], "HTTP 404"),
        (&["cancel", &uuid::Uuid::nil().to_string()], "HTTP 404"),
        (&["list", "--status", "sideways"], "HTTP 400"),
        (&["list", "--saga", "no such saga!"], "HTTP 400"),
        (
            &[
                "start",
                "--listing",
                "cli-villa",
                "--guest",
                "guest-cli",
                "--check-in",
                "2027-09-04",
                "--check-out",
                "2027-09-01",
                "--amount",
                "45000",
            ],
            "HTTP 422",
        ),
    ];
    for (args, expected) in refusals {
        let (code, out, err) = saga_cli(&app, args).await;
        assert_eq!(code, Some(1), "{args:?}: {out}{err}");
        assert!(
            err.starts_with("error: ") && err.contains(expected),
            "{args:?}: {err}"
        );
        assert_eq!(err.lines().count(), 1, "{args:?}: one line: {err}");
        assert!(out.is_empty(), "{args:?}: {out}");
    }
    let (_, _, err) = saga_cli(&app, &["show", "not-a-uuid"]).await;
    assert!(err.contains("is not a saga id"), "{err}");
    assert_eq!(saga_count(&app).await, 1, "a refused start wrote nothing");

    // Usage errors are clap's: exit status 2, before any request.
    for args in [
        &["start", "--listing", "x"][..],
        &[
            "start",
            "--listing",
            "x",
            "--guest",
            "g",
            "--check-in",
            "2027-09-01",
            "--check-out",
            "2027-09-04",
            "--amount",
            "lots",
        ][..],
        &["frobnicate"][..],
    ] {
        let (code, _, err) = saga_cli(&app, args).await;
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(err.contains("error:"), "{err}");
    }

    // A wrong token and an unreachable server.
    let (code, _, err) = run_sagad(
        &["saga", "list"],
        &[
            ("SAGAD_URL", app.base.as_str()),
            ("SAGAD_API_TOKEN", "wrong-token-0123456789"),
        ],
    )
    .await;
    assert_eq!(code, Some(1));
    assert!(err.contains("HTTP 401"), "{err}");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let nobody = format!("http://127.0.0.1:{port}");
    let (code, _, err) = run_sagad(&["saga", "list", "--api-url", &nobody], &[]).await;
    assert_eq!(code, Some(1));
    assert!(
        err.contains(&format!("cannot reach sagad at {nobody}")),
        "{err}"
    );
    assert_eq!(saga_count(&app).await, 1);
}

/// `sagad migrate` on an empty database applies every migration in migrations/, a second run
/// changes nothing, and a database it cannot reach is a failing exit with the reason.
#[tokio::test]
async fn migrate_applies_every_migration_once_and_reports_an_unreachable_database() {
    let url = crate::harness::empty_database().await;
    let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "sql"))
        })
        .count() as i64;
    for run in 1..=2 {
        let (code, _, err) = run_sagad(&["migrate"], &[("DATABASE_URL", url.as_str())]).await;
        assert_eq!(code, Some(0), "run {run}: {err}");
        let pool = sagad::store::connect(&url, 2).await.unwrap();
        let (applied, versions): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE success), count(DISTINCT version) FROM _sqlx_migrations",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!((applied, versions), (files, files), "run {run}");
        let tables: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'
               AND tablename IN ('sagas', 'events', 'stripe_events', 'webhook_deliveries')",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(tables, 4);
        pool.close().await;
    }

    let mut missing = reqwest::Url::parse(&url).unwrap();
    missing.set_path("/no_such_database");
    let (code, _, err) = run_sagad(&["migrate"], &[("DATABASE_URL", missing.as_str())]).await;
    assert_eq!(code, Some(1), "{err}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains("no_such_database"), "{err}");
    assert!(
        !err.contains(missing.password().unwrap_or("\u{0}never")),
        "the password stays out of the message: {err}"
    );
}

/// `sagad stripe events list | show | reprocess` on the inbox, and their refusals.
#[tokio::test]
async fn the_stripe_events_cli_lists_shows_and_refuses_bad_input() {
    let app = crate::harness::spawn_app().await;
    // An event about a PaymentIntent sagad does not know: kept as unmatched.
    let body = serde_json::json!({
        "id": "evt_cli_unknown_pi", "object": "event", "type": "payment_intent.succeeded",
        "created": chrono::Utc::now().timestamp(), "livemode": false,
        "api_version": "2026-09-30.endive",
        "data": { "object": { "id": "pi_cli_nobody", "object": "payment_intent" } }
    })
    .to_string();
    assert_eq!(app.post_signed_stripe_event(&body).await.0, 200);
    crate::harness::eventually("the event to be settled as unmatched", || async {
        let status: Option<String> =
            sqlx::query_scalar("SELECT status FROM stripe_events WHERE id = 'evt_cli_unknown_pi'")
                .fetch_optional(&app.pool)
                .await
                .unwrap();
        (status.as_deref() == Some("unmatched")).then_some(())
    })
    .await;
    let db = [("DATABASE_URL", app.db_url.as_str())];
    let stripe = |args: &[&str]| {
        let mut all = vec!["stripe", "events"];
        all.extend_from_slice(args);
        all.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    let run = |args: Vec<String>| async move {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_sagad(&args, &db).await
    };

    let (code, out, err) = run(stripe(&["list", "--status", "unmatched"])).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("evt_cli_unknown_pi") && l.contains("unmatched")),
        "{out}"
    );
    let (code, out, err) = run(stripe(&["show", "evt_cli_unknown_pi"])).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("payment intent: pi_cli_nobody"), "{out}");
    assert!(out.contains("status:         unmatched"), "{out}");

    let (code, _, err) = run(stripe(&["list", "--status", "lost"])).await;
    assert_eq!(code, Some(1));
    assert!(
        err.contains("--status \"lost\" is not one of: pending, processing"),
        "{err}"
    );
    let (code, _, err) = run(stripe(&["show", "evt_nope"])).await;
    assert_eq!(code, Some(1));
    assert!(
        err.contains("no Stripe event evt_nope in the inbox"),
        "{err}"
    );
    let (code, _, err) = run(stripe(&["reprocess", "evt_nope"])).await;
    assert_eq!(code, Some(1));
    assert!(
        err.contains("no Stripe event evt_nope in the inbox"),
        "{err}"
    );
    let (code, out, err) = run(stripe(&["reprocess", "evt_cli_unknown_pi"])).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("evt_cli_unknown_pi queued for processing"),
        "{out}"
    );
}

/// `sagad serve --dev` runs the Stripe test double, which sends its webhooks to sagad under a
/// generated secret: a 3-D Secure payment completed at the double goes on in sagad.
#[tokio::test]
async fn serve_dev_receives_the_doubles_webhooks_so_3ds_completes() {
    let (_pool, db_url) = crate::harness::fresh_database().await;
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    };
    let (api, stripe) = (free(), free());
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_sagad"))
        .args(["serve", "--dev"])
        .env("DATABASE_URL", &db_url)
        .env("SAGAD_LISTEN", api.to_string())
        .env("SAGAD_DEV_STRIPE_LISTEN", stripe.to_string())
        .env("SAGAD_POLL_INTERVAL", "200ms")
        .env_remove("SAGAD_API_TOKENS")
        .env_remove("STRIPE_SECRET_KEY")
        .env_remove("STRIPE_WEBHOOK_SECRET")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    let base = format!("http://{api}");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while http
        .get(format!("{base}/readyz"))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .ok()
        != Some(200)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "sagad --dev did not become ready"
        );
        assert!(child.try_wait().unwrap().is_none(), "sagad --dev exited");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let saga: serde_json::Value = http
        .post(format!("{base}/v1/sagas"))
        .bearer_auth("dev-token")
        .json(&serde_json::json!({ "saga": "booking",
            "input": crate::harness::booking_input("dev-3ds-1", "pm_card_authenticationRequired") }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = saga["id"].as_str().expect("saga id").to_owned();
    let saga_status = || async {
        http.get(format!("{base}/v1/sagas/{id}"))
            .bearer_auth("dev-token")
            .send()
            .await
            .unwrap()
            .json::<serde_json::Value>()
            .await
            .unwrap()
    };
    let waiting = loop {
        let v = saga_status().await;
        if v["status"] == "waiting" {
            break v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the saga never waited for 3-D Secure: {v:#}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let pi = waiting["context"]["authorize_payment"]["payment_intent_id"]
        .as_str()
        .expect("the PaymentIntent")
        .to_owned();
    let resp = http
        .post(format!(
            "http://{stripe}/_double/payment_intents/{pi}/authenticate"
        ))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{:?}", resp.text().await);
    // Nothing but the double's webhook wakes the saga before its 10-minute deadline.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let v = saga_status().await;
        if v["status"] == "completed" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the webhook never woke the saga: {v:#}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let _ = child.kill().await;
}

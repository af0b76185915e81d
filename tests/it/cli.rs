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

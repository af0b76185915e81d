//! The `sagad` binary as an operator meets it: clear errors and definition checks.

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
    assert!(String::from_utf8_lossy(&ok.stdout).contains("ok  booking v1 (5 steps)"));

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

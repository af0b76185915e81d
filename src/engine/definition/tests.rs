use std::time::Duration;

use super::*;

const BOOKING: &str = include_str!("../../../sagas/booking.toml");

const CATALOG: ActionCatalog<'static> = ActionCatalog {
    actions: &[
        "inventory.hold",
        "payment.authorize",
        "payment.capture",
        "booking.confirm",
        "notification.send",
    ],
    compensations: &[
        "inventory.release",
        "payment.void",
        "payment.refund",
        "booking.cancel",
    ],
};

const MINIMAL: &str = r#"name = "trip"
version = 1

[[steps]]
name = "hold"
action = "inventory.hold"
compensation = "inventory.release"
"#;

/// Parses `source`, expecting failure, and returns `(line, column, message)` of each error.
fn errors(source: &str) -> Vec<(usize, usize, String)> {
    match parse(source, "t.toml", &CATALOG) {
        Ok(definition) => panic!("expected errors, parsed {definition:?}"),
        Err(errors) => errors
            .into_iter()
            .map(|e| (e.line, e.column, e.message))
            .collect(),
    }
}

/// Asserts exactly one error, on `line`, whose message contains `needle`.
#[track_caller]
fn assert_one_error(source: &str, line: usize, needle: &str) {
    let found = errors(source);
    assert_eq!(found.len(), 1, "{found:#?}");
    let (found_line, _, message) = &found[0];
    assert!(message.contains(needle), "{message:?} lacks {needle:?}");
    assert_eq!(*found_line, line, "{message}");
}

fn booking() -> SagaDefinition {
    match parse(BOOKING, "sagas/booking.toml", &CATALOG) {
        Ok(definition) => definition,
        Err(errors) => panic!(
            "{}",
            errors
                .iter()
                .map(|e| format!("{e:#}"))
                .collect::<Vec<_>>()
                .join("\n")
        ),
    }
}

#[test]
fn booking_definition_parses() {
    let booking = booking();
    assert_eq!(booking.name, "booking");
    assert_eq!(booking.version, 2);
    let names: Vec<_> = booking.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "hold_inventory",
            "authorize_payment",
            "capture_payment",
            "confirm_booking",
            "notify"
        ]
    );
    let authorize = booking.step(1).unwrap();
    assert_eq!(authorize.action, "payment.authorize");
    assert_eq!(authorize.compensation.as_deref(), Some("payment.void"));
    assert_eq!(authorize.timeout, Duration::from_secs(20));
    assert_eq!(authorize.params["action_deadline"], "10m");
    assert_eq!(booking.step(0).unwrap().params["hold_ttl"], "30m");
    let notify = booking.step(4).unwrap();
    assert_eq!(notify.compensation, None);
    assert_eq!(notify.on_failure, OnFailure::Compensate);
    assert_eq!(booking.irreversible_from(), None, "cancellable to the end");
    let hours = |h: u64| Some(Duration::from_secs(h * 3600));
    let give_up: Vec<_> = booking.steps.iter().map(|s| s.give_up_after).collect();
    assert_eq!(
        give_up,
        [
            None,
            Some(Duration::from_secs(30 * 60)),
            hours(120),
            None,
            hours(24)
        ],
        "local steps count attempts; remote ones ride out outages"
    );
    assert_eq!(booking.compensation_retry.max_attempts, 20);
    assert_eq!(
        booking.compensation_retry.max_delay,
        Duration::from_secs(300)
    );
    assert_eq!(booking.step_index("capture_payment"), Some(2));
    assert_eq!(booking.step_index("nope"), None);
    assert!(booking.step(5).is_none());
}

#[test]
fn defaults_fill_in_and_merge_field_by_field() {
    let source = r#"name = "trip"
version = 3

[defaults]
timeout = "7s"
retry = { max_attempts = 4, base_delay = "1s", max_delay = "10s", jitter = 0.1 }
give_up_after = "2h"

[[steps]]
name = "a"
action = "inventory.hold"

[[steps]]
name = "b"
action = "payment.authorize"
retry = { max_attempts = 9 }
on_failure = "stuck"
give_up_after = "45m"
"#;
    let saga = parse(source, "t.toml", &CATALOG).unwrap();
    let (a, b) = (&saga.steps[0], &saga.steps[1]);
    assert_eq!(a.give_up_after, Some(Duration::from_secs(2 * 3600)));
    assert_eq!(b.give_up_after, Some(Duration::from_secs(45 * 60)));
    let reloaded = SagaDefinition::from_json(saga.to_json()).unwrap();
    assert_eq!(reloaded, saga, "give_up_after survives the stored copy");
    assert_eq!(a.timeout, Duration::from_secs(7));
    assert_eq!(a.retry.max_attempts, 4);
    assert_eq!(a.on_failure, OnFailure::Compensate);
    assert_eq!(a.params, serde_json::json!({}));
    assert_eq!(
        b.retry,
        RetryPolicy {
            max_attempts: 9,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(10),
            jitter: 0.1
        }
    );
    assert_eq!(b.on_failure, OnFailure::Stuck);
    assert_eq!(saga.compensation_retry, RetryPolicy::DEFAULT_COMPENSATION);
}

#[test]
fn built_in_defaults_apply_without_a_defaults_table() {
    let saga = parse(MINIMAL, "t.toml", &CATALOG).unwrap();
    assert_eq!(saga.steps[0].timeout, DEFAULT_TIMEOUT);
    assert_eq!(saga.steps[0].retry, RetryPolicy::DEFAULT_ACTION);
    assert_eq!(saga.description, None);
}

#[test]
fn syntax_error_is_located() {
    let found = errors("name = \"trip\"\nversion = = 1\n");
    assert!(!found.is_empty());
    assert_eq!(found[0].0, 2, "{found:?}");
}

#[test]
fn missing_required_keys() {
    let found = errors("description = \"x\"\n");
    let messages: Vec<_> = found.iter().map(|(_, _, m)| m.as_str()).collect();
    assert_eq!(found.len(), 3, "{found:?}");
    assert!(messages[0].contains("missing required key `name`"));
    assert!(messages[1].contains("missing required key `version`"));
    assert!(messages[2].contains("missing required key `steps`"));
    assert!(
        found
            .iter()
            .all(|(line, column, _)| (*line, *column) == (1, 1))
    );
}

#[test]
fn step_missing_action_points_at_the_step() {
    let source = MINIMAL.replace("action = \"inventory.hold\"\n", "");
    assert_one_error(&source, 4, "step #1 is missing required key `action`");
}

#[test]
fn saga_name_must_be_an_identifier() {
    let source = MINIMAL.replace("name = \"trip\"", "name = \"Trip-2\"");
    assert_one_error(&source, 1, "saga name `Trip-2` is not valid");
    let found = errors(&source);
    assert_eq!(found[0].1, 8, "column points at the value");
}

#[test]
fn step_name_must_be_an_identifier() {
    let source = MINIMAL.replace("name = \"hold\"", "name = \"2hold\"");
    assert_one_error(&source, 5, "step name `2hold` is not valid");
}

#[test]
fn version_must_be_at_least_one() {
    assert_one_error(
        &MINIMAL.replace("version = 1", "version = 0"),
        2,
        "`version` must be between 1 and",
    );
    assert_one_error(
        &MINIMAL.replace("version = 1", "version = \"1\""),
        2,
        "`version` must be an integer, found string",
    );
}

#[test]
fn unknown_keys_are_rejected_where_they_are() {
    let source = MINIMAL.replace("version = 1", "version = 1\nowner = \"ops\"");
    assert_one_error(&source, 3, "unknown key `owner` in the saga definition");
    let found = errors(&source);
    assert_eq!(found[0].1, 1);

    let source = format!("{MINIMAL}timeuot = \"5s\"\n");
    assert_one_error(&source, 8, "unknown key `timeuot` in step #1");

    let source = format!("{MINIMAL}retry = {{ attempts = 3 }}\n");
    assert_one_error(&source, 8, "unknown key `attempts` in `retry`");

    let source = MINIMAL.replace("version = 1", "version = 1\n[defaults]\nretries = 3\n");
    assert_one_error(&source, 4, "unknown key `retries` in [defaults]");
}

#[test]
fn give_up_after_must_be_a_positive_duration() {
    let source = format!("{MINIMAL}give_up_after = \"0s\"\n");
    assert_one_error(&source, 8, "`give_up_after` must be longer than zero");
    let source = format!("{MINIMAL}give_up_after = \"soon\"\n");
    assert_one_error(&source, 8, "invalid `give_up_after`");
    let plain = parse(MINIMAL, "t.toml", &CATALOG).unwrap();
    assert_eq!(plain.steps[0].give_up_after, None, "no deadline unless set");
    assert!(
        !plain.to_json().to_string().contains("give_up_after"),
        "a definition without it is stored as before (same fingerprint)"
    );
}

#[test]
fn duplicate_step_names() {
    let source = format!("{MINIMAL}\n[[steps]]\nname = \"hold\"\naction = \"payment.authorize\"\n");
    assert_one_error(
        &source,
        10,
        "duplicate step name `hold` (first defined on line 5)",
    );
}

#[test]
fn unknown_action_lists_known_ones_and_suggests() {
    let source = MINIMAL.replace("inventory.hold", "inventory.hodl");
    assert_one_error(
        &source,
        6,
        "unknown action `inventory.hodl`; did you mean `inventory.hold`?",
    );
    let found = errors(&source);
    assert!(found[0].2.ends_with(
        "? Known actions: inventory.hold, payment.authorize, payment.capture, booking.confirm, notification.send"
    ));
    assert_eq!(found[0].1, 10);
}

#[test]
fn unknown_compensation() {
    let source = MINIMAL.replace("inventory.release", "inventory.free");
    assert_one_error(&source, 7, "unknown compensation `inventory.free`");
    assert!(
        errors(&source)[0]
            .2
            .contains("known compensations: inventory.release")
    );
}

#[test]
fn action_and_compensation_cannot_swap_roles() {
    let source = MINIMAL.replace("\"inventory.hold\"", "\"payment.void\"");
    assert_one_error(
        &source,
        6,
        "`payment.void` is a compensation, not an action",
    );
    let source = MINIMAL.replace("\"inventory.release\"", "\"payment.capture\"");
    assert_one_error(
        &source,
        7,
        "`payment.capture` is an action, not a compensation",
    );
}

#[test]
fn bad_durations() {
    for (value, needle) in [
        ("\"5 sec\"", "unknown unit"),
        ("\"5\"", "has no unit"),
        ("\"1.5s\"", "has a fraction"),
        ("5", "`timeout` must be a string, found integer"),
        ("\"0s\"", "`timeout` must be longer than zero"),
    ] {
        let source = format!("{MINIMAL}timeout = {value}\n");
        assert_one_error(&source, 8, needle);
    }
    let source = format!("{MINIMAL}retry = {{ base_delay = \"soon\" }}\n");
    assert_one_error(&source, 8, "invalid `base_delay`");
}

#[test]
fn retry_policy_bounds() {
    let cases = [
        ("max_attempts = 0", "`max_attempts` must be between 1"),
        ("max_attempts = -2", "`max_attempts` must be between 1"),
        ("jitter = 1.5", "`jitter` must be between 0 and 1"),
        ("jitter = -0.1", "`jitter` must be between 0 and 1"),
        ("jitter = \"low\"", "`jitter` must be a number"),
        (
            "base_delay = \"10s\", max_delay = \"1s\"",
            "base_delay (10s) must not exceed max_delay (1s)",
        ),
    ];
    for (fields, needle) in cases {
        let source = format!("{MINIMAL}retry = {{ {fields} }}\n");
        assert_one_error(&source, 8, needle);
    }
    // Whole-number jitter is fine.
    let source = format!("{MINIMAL}retry = {{ jitter = 1 }}\n");
    assert_eq!(
        parse(&source, "t.toml", &CATALOG).unwrap().steps[0]
            .retry
            .jitter,
        1.0
    );
}

#[test]
fn base_delay_checked_against_inherited_max_delay() {
    // The built-in max_delay for compensations is 5m.
    let source = MINIMAL.replace(
        "version = 1",
        "version = 1\n[defaults]\ncompensation_retry = { base_delay = \"10m\" }",
    );
    assert_one_error(
        &source,
        4,
        "`compensation_retry`: base_delay (10m) must not exceed max_delay (5m)",
    );
}

#[test]
fn unknown_on_failure() {
    let source = format!("{MINIMAL}on_failure = \"retry\"\n");
    assert_one_error(
        &source,
        8,
        "unknown on_failure `retry`; expected \"compensate\" or \"stuck\"",
    );
}

#[test]
fn at_least_one_step() {
    assert_one_error(
        "name = \"x\"\nversion = 1\nsteps = []\n",
        3,
        "at least one step",
    );
}

#[test]
fn params_must_be_a_table_of_json_values() {
    let source = format!("{MINIMAL}params = \"ttl=30m\"\n");
    assert_one_error(&source, 8, "`params` must be a table, found string");
    let source = format!("{MINIMAL}params = {{ ratio = nan }}\n");
    assert_one_error(&source, 8, "JSON has no inf or nan");
    let source = format!(
        "{MINIMAL}params = {{ n = 0x10, list = [1, \"a\"], when = 2024-01-02, nested = {{ on = true, f = 0.5 }} }}\n"
    );
    let saga = parse(&source, "t.toml", &CATALOG).unwrap();
    assert_eq!(
        saga.steps[0].params,
        serde_json::json!({"n": 16, "list": [1, "a"], "when": "2024-01-02", "nested": {"on": true, "f": 0.5}})
    );
}

#[test]
fn every_error_is_reported_in_source_order() {
    let source = r#"name = "Bad Name"
version = 0

[[steps]]
name = "a"
action = "nope"
timeout = "0s"
on_failure = "shrug"
retry = { jitter = 2.0 }

[[steps]]
name = "a"
action = "payment.void"
"#;
    let lines: Vec<_> = errors(source)
        .into_iter()
        .map(|(line, _, _)| line)
        .collect();
    assert_eq!(lines, [1, 2, 6, 7, 8, 9, 12, 13]);
}

#[test]
fn display_formats_like_rustc() {
    let source = MINIMAL.replace("inventory.hold", "payment.authorise");
    let errors = parse(&source, "sagas/trip.toml", &CATALOG).unwrap_err();
    let text = errors[0].to_string();
    assert!(
        text.starts_with("sagas/trip.toml:6:10: unknown action `payment.authorise`; did you mean `payment.authorize`?"),
        "{text}"
    );
    let snippet = format!("{:#}", errors[0]);
    assert!(
        snippet.ends_with("6 | action = \"payment.authorise\"\n  |          ^^^^^^^^^^^^^^^^^^^"),
        "{snippet}"
    );
}

#[test]
fn json_round_trip_is_lossless() {
    let booking = booking();
    let json = booking.to_json();
    assert_eq!(json["steps"][1]["timeout"], "20s");
    assert_eq!(json["steps"][0]["retry"]["base_delay"], "100ms");
    assert_eq!(json["compensation_retry"]["max_delay"], "5m");
    assert_eq!(json["steps"][4]["on_failure"], "compensate");
    let back = SagaDefinition::from_json(json.clone()).unwrap();
    assert_eq!(back, booking);
    // Through text too, as it goes through the database.
    let text = serde_json::to_string(&json).unwrap();
    let back = SagaDefinition::from_json(serde_json::from_str(&text).unwrap()).unwrap();
    assert_eq!(back, booking);
    assert!(SagaDefinition::from_json(serde_json::json!({"name": "x"})).is_err());
}

#[test]
fn fingerprint_is_stable_and_content_sensitive() {
    let booking = booking();
    let fingerprint = booking.fingerprint();
    assert_eq!(fingerprint.len(), 64);
    assert_eq!(fingerprint, booking.clone().fingerprint());
    let reloaded = SagaDefinition::from_json(booking.to_json()).unwrap();
    assert_eq!(reloaded.fingerprint(), fingerprint);
    // Comments and layout do not matter, content does.
    let reformatted = BOOKING
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    let same = parse(&reformatted, "x.toml", &CATALOG).unwrap();
    assert_eq!(same.fingerprint(), fingerprint);
    let mut changed = booking.clone();
    changed.steps[0].timeout = Duration::from_secs(6);
    assert_ne!(changed.fingerprint(), fingerprint);
    // Pinned: the canonical form must not drift between releases without anyone noticing.
    let minimal = parse(MINIMAL, "t.toml", &CATALOG).unwrap();
    assert_eq!(minimal.fingerprint(), PINNED_MINIMAL_FINGERPRINT);
}

const PINNED_MINIMAL_FINGERPRINT: &str =
    "4c6d28335c7e54e45f1fe8e48f5b18324e7da42697ebf59d715c02417e984dce";

mod load_dir {
    use super::*;

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("sagad-defs-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn loads_every_toml_file_sorted() {
        let dir = temp_dir("ok");
        std::fs::write(dir.join("b.toml"), BOOKING).unwrap();
        std::fs::write(dir.join("a.toml"), MINIMAL).unwrap();
        std::fs::write(dir.join("notes.md"), "not a definition").unwrap();
        let loaded = load_dir(&dir, &CATALOG).unwrap();
        let names: Vec<_> = loaded.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["trip", "booking"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn duplicate_name_and_version_across_files() {
        let dir = temp_dir("dup");
        std::fs::write(dir.join("a.toml"), MINIMAL).unwrap();
        std::fs::write(dir.join("b.toml"), format!("\n{MINIMAL}")).unwrap();
        std::fs::write(
            dir.join("c.toml"),
            MINIMAL.replace("version = 1", "version = 2"),
        )
        .unwrap();
        std::fs::write(dir.join("d.toml"), "name = ").unwrap();
        let errors = load_dir(&dir, &CATALOG).unwrap_err();
        assert_eq!(errors.len(), 2, "{errors:#?}");
        assert!(errors[0].file.ends_with("b.toml"));
        assert_eq!((errors[0].line, errors[0].column), (2, 8));
        assert!(
            errors[0]
                .message
                .contains("saga `trip` version 1 is already defined in")
        );
        assert!(errors[0].message.contains("a.toml"));
        assert!(errors[1].file.ends_with("d.toml"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_directory_is_an_error() {
        let errors = load_dir(std::path::Path::new("/nonexistent/sagas"), &CATALOG).unwrap_err();
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0]
                .to_string()
                .starts_with("/nonexistent/sagas: cannot read directory")
        );
    }
}

#[test]
fn a_change_is_past_undoing_from_its_first_step_that_parks() {
    let change = parse(
        include_str!("../../../sagas/booking_change.toml"),
        "booking_change.toml",
        &crate::engine::actions::catalog(),
    )
    .unwrap();
    let from = change.irreversible_from().unwrap();
    assert_eq!(change.steps[from].name, "refund_difference");
    assert_eq!(change.steps[from - 1].name, "swap_dates");
}

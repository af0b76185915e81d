//! Snapshot tests of the statements sagad assembles from parts: each shape's SQL text and its
//! number of parameters are checked in under `src/store/snapshots/`, so that any change to them
//! shows in review. `SAGAD_BLESS=1 cargo test --lib store::snapshots` rewrites the files from
//! the code.

use std::path::PathBuf;

use super::{bookings, events, inventory, sagas, webhooks};

/// The highest `$n` in `sql`.
fn max_placeholder(sql: &str) -> usize {
    let b = sql.as_bytes();
    let mut max = 0;
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' {
            let digits = b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
            if digits > 0 {
                let n: usize = sql[i + 1..i + 1 + digits].parse().unwrap_or(0);
                max = max.max(n);
            }
            i += 1 + digits;
        } else {
            i += 1;
        }
    }
    max
}

/// Compares `sql` (which takes `params` parameters) with the snapshot `name`, or rewrites the
/// snapshot with `SAGAD_BLESS=1`; returns the difference as a message.
fn check(name: &str, about: &str, sql: &str, params: usize) -> Result<(), String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("src/store/snapshots")
        .join(format!("{name}.sql"));
    let expected = format!("-- {about}\n-- parameters: {params}\n{sql}\n");
    if std::env::var_os("SAGAD_BLESS").is_some_and(|v| v == "1") {
        std::fs::write(&path, &expected).map_err(|e| format!("{}: {e}", path.display()))?;
        return Ok(());
    }
    let found = std::fs::read_to_string(&path).unwrap_or_default();
    if found == expected {
        return Ok(());
    }
    let line = found
        .lines()
        .zip(expected.lines())
        .position(|(a, b)| a != b)
        .unwrap_or_else(|| found.lines().count().min(expected.lines().count()));
    Err(format!(
        "{name}: the statement differs from {} from line {} on:\n  checked in: {:?}\n  generated:  {:?}\n\
         (review the change, then rewrite the snapshots with SAGAD_BLESS=1 cargo test --lib store::snapshots)",
        path.display(),
        line + 1,
        found.lines().nth(line).unwrap_or("<end of file>"),
        expected.lines().nth(line).unwrap_or("<end of file>"),
    ))
}

#[test]
fn statements_match_their_snapshots() {
    let cases: Vec<(&str, &str, String)> = vec![
        (
            "start_plain",
            "sagas::start: a new saga with its first event",
            sagas::start_sql(false),
        ),
        (
            "start_ahead",
            "sagas::start: a new saga, the hold it places and the steps it runs ahead",
            sagas::start_sql(true),
        ),
        (
            "record_plain",
            "sagas::record: step outcomes under a fence",
            sagas::record_sql(false),
        ),
        (
            "record_converting",
            "sagas::record: step outcomes under a fence, turning the hold into a booking",
            sagas::record_sql(true),
        ),
        (
            "events_append",
            "events::append: events and their webhook deliveries",
            events::append_sql(),
        ),
        (
            "webhooks_fan_out",
            "webhooks::fan_out: webhook deliveries of events appended before",
            webhooks::fan_out_sql(),
        ),
        (
            "bookings_apply",
            "bookings::apply: the projection update of a run of events",
            bookings::update_sql("$1", 2),
        ),
        (
            "inventory_hold",
            "inventory::hold: a hold",
            inventory::insert_hold_sql("$1", 2, ""),
        ),
        (
            "inventory_convert",
            "inventory::convert_to_booking: a hold turned into a booking",
            inventory::convert_to_booking_sql("$1", ""),
        ),
    ];
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|(name, about, sql)| check(name, about, sql, max_placeholder(sql)).err())
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

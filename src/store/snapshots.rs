//! Snapshot tests of the statements sagad assembles from parts: each shape's SQL text and its
//! number of parameters are checked in under `src/store/snapshots/`, so that any change to them
//! shows in review. `SAGAD_BLESS=1 cargo test --lib store::snapshots` rewrites the files from
//! the code.

use std::path::PathBuf;
use std::time::Duration;

use chrono::NaiveDate;
use serde_json::json;
use uuid::Uuid;

use super::inventory::{self, NewHold};
use super::stmt::Statement;
use super::{bookings, events, outbound, progress};
use crate::domain::SagaId;
use crate::engine::model::{Fence, SagaStatus, StepOutcome, StepPhase, StepStatus, Transition};
use crate::events::{Event, NewEvent};

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

/// A statement's text must use each of its parameters, and no other.
fn check_params(name: &str, stmt: &Statement) -> Result<(), String> {
    let (text, n) = (stmt.text(), stmt.params());
    if max_placeholder(text) != n {
        return Err(format!(
            "{name}: binds {n} parameters, its text refers to ${}",
            max_placeholder(text)
        ));
    }
    match (1..=n).find(|&i| !has_placeholder(text, i)) {
        Some(unused) => Err(format!("{name}: ${unused} is bound but not used")),
        None => Ok(()),
    }
}

/// Whether `$n` (not followed by another digit) occurs in `sql`.
fn has_placeholder(sql: &str, n: usize) -> bool {
    let p = format!("${n}");
    sql.match_indices(&p).any(|(i, _)| {
        !sql[i + p.len()..]
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit())
    })
}

fn booking_requested() -> NewEvent {
    NewEvent::from(Event::BookingRequested {
        listing_id: "villa-7".into(),
        guest_id: "guest-42".into(),
        check_in: NaiveDate::from_ymd_opt(2027, 6, 1).unwrap(),
        check_out: NaiveDate::from_ymd_opt(2027, 6, 4).unwrap(),
        amount: 45000,
        currency: "EUR".into(),
    })
}

fn step(index: i32, name: &str) -> StepOutcome {
    StepOutcome {
        index,
        phase: StepPhase::Forward,
        name: name.into(),
        status: StepStatus::Succeeded,
        attempts: 1,
        error: None,
    }
}

fn new_saga<'a>(
    input: &'a serde_json::Value,
    events: &'a [NewEvent],
    ahead: Option<progress::StartAhead<'a>>,
) -> progress::NewSaga<'a> {
    progress::NewSaga {
        id: SagaId::new(),
        saga_name: "booking",
        saga_version: 1,
        input,
        idempotency_key: Some("booking-1"),
        request_fingerprint: "f",
        leased_to: Some(("worker", Duration::from_secs(60))),
        events,
        ahead,
    }
}

/// Two outcomes of one shape with different values: going on under the lease without events,
/// and finishing with events, a failure and a step row.
fn record_statements(convert_hold: bool) -> [Statement; 2] {
    let fence = Fence {
        id: SagaId::new(),
        status: SagaStatus::Running,
        current_step: 2,
        attempt: 1,
        worker: "worker".into(),
    };
    let going_on = Transition {
        keep_lease: Some(Duration::from_secs(60)),
        lease_floor: Some(Duration::from_secs(32)),
        ..Transition::new(SagaStatus::Running, 3, 1, json!({}))
    };
    let events = [NewEvent::from(Event::SagaCompensated {
        reason: "card_declined".into(),
    })];
    let finished = Transition {
        failure_step: Some("authorize_payment".into()),
        failure_reason: Some("card_declined".into()),
        events: 1,
        ..Transition::new(SagaStatus::Compensated, 0, 0, json!({"a": 1}))
    };
    let steps = [step(2, "capture_payment")];
    let booking = bookings::Change::of(events.iter().map(|e| &e.event));
    let record = |transition, events, booking, steps| progress::Record {
        fence: &fence,
        transition,
        saga_name: "booking",
        events,
        booking,
        steps,
        convert_hold,
    };
    [
        progress::record_statement(&record(&going_on, &[], &bookings::Change::default(), &[])),
        progress::record_statement(&record(&finished, &events, &booking, &steps)),
    ]
}

/// Times only bound, never in the statements' text.
fn fixed_time() -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp(1_800_000_000, 0).expect("a valid time")
}

#[test]
fn statements_match_their_snapshots() {
    let input = json!({"listing_id": "villa-7"});
    let first = [booking_requested()];
    let with_held = [
        booking_requested(),
        NewEvent::from(Event::InventoryHeld {
            hold_id: Uuid::now_v7(),
            listing_id: "villa-7".into(),
            check_in: NaiveDate::from_ymd_opt(2027, 6, 1).unwrap(),
            check_out: NaiveDate::from_ymd_opt(2027, 6, 4).unwrap(),
            expires_at: fixed_time(),
        }),
    ];
    let saga_id = SagaId::new();
    let hold = NewHold::new(
        saga_id,
        "villa-7",
        (
            NaiveDate::from_ymd_opt(2027, 6, 1).unwrap(),
            NaiveDate::from_ymd_opt(2027, 6, 4).unwrap(),
        ),
        fixed_time(),
        Duration::from_secs(1800),
    );
    let context = json!({"hold_inventory": {}});
    let held_steps = [step(0, "hold_inventory")];
    let ahead = progress::StartAhead {
        hold: &hold,
        current_step: 1,
        context: &context,
        booking_status: "held",
        steps: &held_steps,
    };
    let plain = new_saga(&input, &first, None);
    let with_ahead = new_saga(&input, &with_held, Some(ahead));
    let batch = events::EventColumns::new(saga_id.0, &with_held);
    let change = bookings::Change::of(with_held.iter().map(|e| &e.event));
    let [record_plain, record_plain_finishing] = record_statements(false);
    let [record_converting, record_converting_finishing] = record_statements(true);
    let cases: Vec<(&str, &str, Statement)> = vec![
        (
            "start_plain",
            "progress::start: a new saga with its first event",
            progress::start_statement(&plain, &first[0].event, true),
        ),
        (
            "start_ahead",
            "progress::start: a new saga, the hold it places and the steps it runs ahead",
            progress::start_statement(&with_ahead, &with_held[0].event, false),
        ),
        (
            "record_plain",
            "progress::record: step outcomes under a fence",
            record_plain,
        ),
        (
            "record_plain",
            "progress::record: step outcomes under a fence",
            record_plain_finishing,
        ),
        (
            "record_converting",
            "progress::record: step outcomes under a fence, turning the hold into a booking",
            record_converting,
        ),
        (
            "record_converting",
            "progress::record: step outcomes under a fence, turning the hold into a booking",
            record_converting_finishing,
        ),
        (
            "events_append",
            "events::append: events and their webhook deliveries",
            events::append_statement("booking", saga_id.0, 3, &batch),
        ),
        (
            "webhooks_fan_out",
            "webhooks::fan_out: webhook deliveries of events appended before",
            outbound::fan_out_statement(&batch.ids, &["BookingConfirmed".to_owned()]),
        ),
        (
            "bookings_apply",
            "bookings::apply: the projection update of a run of events",
            bookings::apply_statement(saga_id, &change),
        ),
        (
            "inventory_hold",
            "inventory::hold: a hold",
            inventory::hold_statement(&hold),
        ),
        (
            "inventory_convert",
            "inventory::convert_to_booking: a hold turned into a booking",
            inventory::convert_to_booking_statement(saga_id),
        ),
    ];
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|(name, about, stmt)| {
            check_params(name, stmt)
                .and_then(|()| check(name, about, stmt.text(), stmt.params()))
                .err()
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

//! Point-in-time reads: `?as_of=<RFC 3339 timestamp | version>` on `GET /v1/sagas/{id}` and
//! `GET /v1/bookings/{id}`, answered by folding the aggregate's events up to then.
//!
//! A version `N` is the state right after the transaction that recorded event `N` (events recorded
//! together, by one step outcome, share their transaction: an `N` inside such a run folds the run
//! up to `N`); a timestamp is the state after every event recorded at or before it. A time before
//! the first event, or a version past the last one, is a 404 that says so.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use utoipa::{IntoParams, ToSchema};

use super::extract::storable_time;
use super::sagas::{Failure, WaitView, wait_reason};
use super::{ApiError, AppState};
use crate::domain::{CancellationPolicy, SagaId};
use crate::engine::history::{self, SagaAt, Tag};
use crate::engine::model::{SagaStatus, StepPhase};
use crate::events::Event;
use crate::store::bookings::{self, Booking};
use crate::store::events::EventRecord;
use crate::store::sagas::{self, SagaRow};

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AsOfParam {
    /// Read the state as of then, folded from the events: an RFC 3339 timestamp
    /// (`2026-12-03T10:15:00Z`; the state after every event recorded at or before it) or an event
    /// version (`4`; the state right after event 4). A time before the first event or a version
    /// past the last one is a 404.
    #[param(example = "2026-12-03T10:15:00Z")]
    pub as_of: Option<String>,
}

/// Where a point-in-time read stands.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AsOf {
    Version(i32),
    Time(DateTime<Utc>),
}

impl AsOf {
    /// Parses `as_of`: a positive integer is a version, anything else must be an RFC 3339
    /// timestamp with an offset.
    pub fn parse(raw: &str) -> Result<Self, ApiError> {
        let bad = |why: &str| {
            ApiError::BadRequest(format!(
                "as_of must be an event version (a positive integer) or an RFC 3339 timestamp \
                 such as 2026-12-03T10:15:00Z{why}, got {raw:?}"
            ))
        };
        if !raw.is_empty() && raw.bytes().all(|b| b.is_ascii_digit()) {
            return match raw.parse::<i32>() {
                Ok(v) if v >= 1 => Ok(AsOf::Version(v)),
                Ok(_) => Err(bad(" (versions count from 1)")),
                Err(_) => Err(bad(" (that version is too large)")),
            };
        }
        let t = DateTime::parse_from_rfc3339(raw)
            .map_err(|_| bad(""))?
            .with_timezone(&Utc);
        if !storable_time(&t) {
            return Err(bad(" (out of range)"));
        }
        Ok(AsOf::Time(t))
    }

    pub fn from_param(raw: Option<&str>) -> Result<Option<Self>, ApiError> {
        raw.map(Self::parse).transpose()
    }

    /// The events of `history` (one aggregate's, in version order) up to this point; what
    /// `aggregate` ("saga", "booking") was is named in the 404.
    pub fn cut(
        self,
        mut history: Vec<EventRecord>,
        aggregate: &str,
    ) -> Result<Vec<EventRecord>, ApiError> {
        let Some(first) = history.first() else {
            return Err(ApiError::NotFoundBecause(format!("{aggregate} not found")));
        };
        let keep = match self {
            AsOf::Version(v) => {
                let last = history.last().map_or(0, |e| e.version);
                if v > last {
                    return Err(ApiError::NotFoundBecause(format!(
                        "the {aggregate} has {last} events: as_of version {v} is past the last one"
                    )));
                }
                history.iter().take_while(|e| e.version <= v).count()
            }
            AsOf::Time(t) => {
                if t < first.recorded_at {
                    return Err(ApiError::NotFoundBecause(format!(
                        "the {aggregate} did not exist at {}: its first event was recorded at {}",
                        t.to_rfc3339(),
                        first.recorded_at.to_rfc3339()
                    )));
                }
                history.iter().take_while(|e| e.recorded_at <= t).count()
            }
        };
        history.truncate(keep);
        Ok(history)
    }
}

/// The last event a point-in-time read folded.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AsOfPoint {
    /// Its version.
    pub version: i32,
    pub recorded_at: DateTime<Utc>,
}

impl AsOfPoint {
    pub fn of(history: &[EventRecord]) -> Option<Self> {
        history.last().map(|e| Self {
            version: e.version,
            recorded_at: e.recorded_at,
        })
    }
}

/// A saga as its events left it at a point in time (`GET /v1/sagas/{id}?as_of=`). What changes
/// without an event (a claim counting an attempt, a pending cancellation, leases, schedules)
/// is not part of it.
#[derive(Debug, Serialize, ToSchema)]
pub struct SagaAsOf {
    pub id: SagaId,
    pub saga: String,
    /// The definition version the saga runs on.
    pub version: i32,
    /// The last event folded.
    pub as_of: AsOfPoint,
    pub status: SagaStatus,
    /// Step being run (`running`, `waiting`) or undone (`compensating`); null once finished.
    pub current_step: Option<String>,
    /// Attempts made of the current step.
    pub attempt: i32,
    pub failure: Option<Failure>,
    pub wait: Option<WaitView>,
    /// What each forward step's events recorded so far, by step name (their payloads' fields).
    pub outputs: serde_json::Value,
    /// The booking as its events left it then (null when the saga made none).
    pub booking: Option<Booking>,
}

/// The domain events of `history` with their tags (an event this build cannot read is left out).
fn decoded(history: &[EventRecord]) -> Vec<(Event, Tag, DateTime<Utc>)> {
    history
        .iter()
        .filter_map(|r| {
            Event::from_stored(&r.event_type, &r.payload)
                .ok()
                .map(|e| (e, Tag::of(&r.metadata), r.recorded_at))
        })
        .collect()
}

/// The booking row `history` (a saga's events up to a point) folds to, with the policy the saga
/// was started with (`live`: the booking's row now, which carries it).
pub fn booking_at(
    id: SagaId,
    history: &[EventRecord],
    policy: Option<CancellationPolicy>,
) -> Option<Booking> {
    let events = decoded(history);
    let mut row = bookings::replay(id, events.iter().map(|(e, _, at)| (e, *at)))?;
    row.cancellation_policy = policy;
    Some(row)
}

/// The saga's state after `history` (its events up to a point); `None` when its definition is
/// not loaded here or `history` is empty.
pub async fn saga_at(
    state: &AppState,
    conn: &mut PgConnection,
    row: &SagaRow,
    history: &[EventRecord],
) -> Result<Option<(SagaAt, Vec<String>)>, ApiError> {
    let Ok(def) = state.registry.get(&row.saga_name, row.saga_version).await else {
        return Ok(None);
    };
    // Which compensations ran: the step history keeps a row for each one that did, and a saga
    // compensating now is about to run its current step's.
    let mut ran: HashSet<usize> = sagas::steps(conn, row.id)
        .await?
        .iter()
        .filter(|s| s.phase == StepPhase::Compensation)
        .map(|s| s.step_index.max(0) as usize)
        .collect();
    if row.status == SagaStatus::Compensating {
        ran.insert(row.current_step.max(0) as usize);
    }
    let events = decoded(history);
    let at = history::fold(
        &def,
        &|i| ran.contains(&i),
        events.iter().map(|(e, t, _)| (e, t)),
    );
    let names = def.steps.iter().map(|s| s.name.clone()).collect();
    Ok(at.map(|a| (a, names)))
}

/// `GET /v1/sagas/{id}?as_of=`.
pub async fn saga_as_of(state: &AppState, id: SagaId, as_of: AsOf) -> Result<SagaAsOf, ApiError> {
    let mut conn = state.pool.acquire().await?;
    let row = sagas::get(&mut conn, id)
        .await?
        .ok_or(ApiError::NotFound("saga"))?;
    let history = crate::store::events::for_aggregate(&mut conn, id.0).await?;
    let history = as_of.cut(history, "saga")?;
    let (at, names) = saga_at(state, &mut conn, &row, &history)
        .await?
        .ok_or_else(|| {
            anyhow::anyhow!(
                "saga {id}: definition {} v{} is not loaded",
                row.saga_name,
                row.saga_version
            )
        })?;
    let policy = bookings::get(&mut conn, id)
        .await?
        .and_then(|b| b.cancellation_policy);
    let booking = booking_at(id, &history, policy);
    let point = AsOfPoint::of(&history).ok_or(ApiError::NotFound("saga"))?;
    Ok(SagaAsOf {
        id,
        saga: row.saga_name,
        version: row.saga_version,
        as_of: point,
        status: at.status,
        current_step: if at.status.is_terminal() {
            None
        } else {
            names.get(at.current_step).cloned()
        },
        attempt: at.attempt,
        failure: at.failure_reason.map(|reason| Failure {
            step: at.failure_step,
            reason,
        }),
        wait: (at.status == SagaStatus::Waiting).then(|| WaitView {
            reason: wait_reason(at.wait_key.as_deref()),
            key: at.wait_key,
            deadline: at.wait_deadline,
        }),
        outputs: serde_json::Value::Object(at.outputs),
        booking,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn as_of_is_a_version_or_a_timestamp() {
        assert_eq!(AsOf::parse("4").unwrap(), AsOf::Version(4));
        assert!(matches!(
            AsOf::parse("2026-12-03T10:15:00Z").unwrap(),
            AsOf::Time(_)
        ));
        assert!(matches!(
            AsOf::parse("2026-12-03T10:15:00.123456+02:00").unwrap(),
            AsOf::Time(_)
        ));
        for bad in [
            "",
            "0",
            "-1",
            "99999999999",
            "4.5",
            "v4",
            "2026-12-03",
            "2026-12-03T10:15:00",
            "yesterday",
            "10000-01-01T00:00:00Z",
        ] {
            let e = AsOf::parse(bad).unwrap_err();
            assert!(e.to_string().contains("as_of must be"), "{bad:?}: {e}");
        }
    }
}

//! A dependency's circuit breaker as a pure state machine: the row every process shares
//! (`dependency_breakers`), and what a batch of call results, a probe or its result does to it.
//! No I/O here; the store locks the row, applies one of these, and writes it back.

use std::time::Duration;

use chrono::{DateTime, Utc};
use utoipa::ToSchema;

use crate::events::Event;
use crate::text_enum::text_enum;

text_enum! {
    /// An outside dependency sagad's steps call, each with one breaker.
    #[derive(ToSchema)]
    pub enum Dependency {
        /// The Stripe API (authorize, capture, void, refund).
        Stripe = "stripe",
        /// The notification gateway (`SAGAD_NOTIFY_URL`).
        Notify = "notify",
    }
}

text_enum! {
    /// Where a breaker is (`dependency_breakers.state`).
    #[derive(ToSchema)]
    pub enum BreakerState {
        /// Calls go through; failures are counted.
        Closed = "closed",
        /// Calls are not made: sagas that need the dependency are paused.
        Open = "open",
        /// One probe call is in flight, over every process; its result closes or reopens.
        HalfOpen = "half_open",
    }
}

impl Dependency {
    /// The wait reason of a saga paused on this dependency (`sagas.wait_reason`).
    pub fn wait_reason(self) -> String {
        format!("dependency:{self}")
    }
}

impl BreakerState {
    /// The value of `sagad_dependency_state`: 0 closed, 1 half-open, 2 open.
    pub fn gauge(self) -> f64 {
        match self {
            BreakerState::Closed => 0.0,
            BreakerState::HalfOpen => 1.0,
            BreakerState::Open => 2.0,
        }
    }
}

/// When a breaker opens and how it probes.
#[derive(Clone, Debug, PartialEq)]
pub struct Thresholds {
    /// Length of the sliding window calls are counted over.
    pub window: Duration,
    /// Calls the window must hold before the failure ratio counts.
    pub min_calls: u32,
    /// Open at this share of failures (0–1) over at least `min_calls` calls.
    pub failure_ratio: f64,
    /// Or open after this many connection failures in a row.
    pub connection_failures: u32,
    /// Wait before the first probe after opening; doubles with each reopening…
    pub probe_after: Duration,
    /// … up to this.
    pub probe_max: Duration,
    /// How long a probe holds the half-open slot before another process may probe.
    pub probe_lease: Duration,
}

/// A breaker as stored.
#[derive(Clone, Debug, PartialEq, sqlx::FromRow)]
pub struct Breaker {
    pub dependency: Dependency,
    pub state: BreakerState,
    pub window_start: DateTime<Utc>,
    pub calls: i32,
    pub failures: i32,
    pub prev_calls: i32,
    pub prev_failures: i32,
    pub connection_failures: i32,
    pub opens: i32,
    pub opened_at: Option<DateTime<Utc>>,
    pub probe_at: Option<DateTime<Utc>>,
    pub probe_by: Option<String>,
    pub probe_until: Option<DateTime<Utc>>,
    pub changed_at: DateTime<Utc>,
}

/// Results of calls a process made while the breaker let them through, not yet counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub calls: u32,
    /// Retryable failures among them (5xx, 429, timeouts, connection errors).
    pub failures: u32,
    /// Connection failures after the last call of the batch that got an answer.
    pub connection_tail: u32,
    /// Some call of the batch got an answer (which ends a run of connection failures).
    pub answered: bool,
}

/// What a call came to, for its breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallResult {
    /// The dependency answered: success, or a business refusal (a decline, a 4xx).
    Answered,
    /// A retryable failure: 5xx, 429, a timeout (`connection: false`) or no connection at all.
    Failed { connection: bool },
}

impl Tally {
    pub fn add(&mut self, result: CallResult) {
        self.calls += 1;
        match result {
            CallResult::Answered => {
                self.answered = true;
                self.connection_tail = 0;
            }
            CallResult::Failed { connection } => {
                self.failures += 1;
                if connection {
                    self.connection_tail += 1;
                } else {
                    self.answered = true;
                    self.connection_tail = 0;
                }
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.calls == 0
    }
}

/// A change of state worth telling: metrics, operator events, waking paused sagas.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// Closed → open: the thresholds were crossed.
    Opened,
    /// Half-open → open: the probe failed.
    Reopened,
    /// Open → half-open: this process took the probe.
    ProbeTaken,
    /// Half-open → closed: the probe got an answer.
    Closed,
}

/// Which threshold opened a breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenCause {
    /// At least the failure ratio of at least `min_calls` calls over the window failed.
    FailureRate,
    /// `connection_failures` connection failures in a row.
    ConnectionFailures,
}

impl OpenCause {
    pub fn as_str(self) -> &'static str {
        match self {
            OpenCause::FailureRate => "failure_rate",
            OpenCause::ConnectionFailures => "connection_failures",
        }
    }
}

/// The actor of the operator events sagad records on its own (breaker transitions).
pub const SYSTEM_ACTOR: &str = "system";

impl Transition {
    pub fn as_str(self) -> &'static str {
        match self {
            Transition::Opened => "opened",
            Transition::Reopened => "reopened",
            Transition::ProbeTaken => "half_opened",
            Transition::Closed => "closed",
        }
    }
}

fn to_chrono(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

impl Breaker {
    /// A closed breaker with nothing counted.
    pub fn new(dependency: Dependency, now: DateTime<Utc>) -> Self {
        Self {
            dependency,
            state: BreakerState::Closed,
            window_start: now,
            calls: 0,
            failures: 0,
            prev_calls: 0,
            prev_failures: 0,
            connection_failures: 0,
            opens: 0,
            opened_at: None,
            probe_at: None,
            probe_by: None,
            probe_until: None,
            changed_at: now,
        }
    }

    /// Moves the window to `now`: the current bucket becomes the previous one once a window
    /// has passed, both empty out after two.
    fn slide(&mut self, now: DateTime<Utc>, window: Duration) {
        let w = to_chrono(window);
        if now < self.window_start + w {
            return;
        }
        if now < self.window_start + w + w {
            self.prev_calls = self.calls;
            self.prev_failures = self.failures;
            self.window_start += w;
        } else {
            self.prev_calls = 0;
            self.prev_failures = 0;
            self.window_start = now;
        }
        self.calls = 0;
        self.failures = 0;
    }

    /// Calls and failures over the last `window`: the current bucket, plus the previous one
    /// weighted by the share of it the window still covers.
    pub fn windowed(&self, now: DateTime<Utc>, window: Duration) -> (f64, f64) {
        let elapsed = (now - self.window_start).to_std().unwrap_or_default();
        let weight = 1.0 - (elapsed.as_secs_f64() / window.as_secs_f64().max(1e-9)).min(1.0);
        (
            f64::from(self.calls) + f64::from(self.prev_calls) * weight,
            f64::from(self.failures) + f64::from(self.prev_failures) * weight,
        )
    }

    fn open(&mut self, now: DateTime<Utc>, th: &Thresholds) {
        if self.state == BreakerState::Closed {
            // Kept through reopenings: when the outage, as the breaker saw it, began.
            self.opened_at = Some(now);
        }
        self.state = BreakerState::Open;
        self.opens = self.opens.saturating_add(1);
        let doublings = (self.opens - 1).clamp(0, 30) as u32;
        let delay = th
            .probe_after
            .checked_mul(1 << doublings)
            .unwrap_or(th.probe_max)
            .min(th.probe_max);
        self.probe_at = Some(now + to_chrono(delay));
        self.probe_by = None;
        self.probe_until = None;
        self.changed_at = now;
    }

    /// Counts a batch of results; opens a closed breaker whose thresholds they cross.
    pub fn count(
        &mut self,
        tally: Tally,
        now: DateTime<Utc>,
        th: &Thresholds,
    ) -> Option<Transition> {
        self.slide(now, th.window);
        let add = |a: i32, b: u32| a.saturating_add(i32::try_from(b).unwrap_or(i32::MAX));
        self.calls = add(self.calls, tally.calls);
        self.failures = add(self.failures, tally.failures).min(self.calls);
        self.connection_failures = if tally.answered {
            add(0, tally.connection_tail)
        } else {
            add(self.connection_failures, tally.connection_tail)
        };
        if self.state != BreakerState::Closed {
            return None;
        }
        self.crossed(now, th)?;
        self.open(now, th);
        Some(Transition::Opened)
    }

    /// Which threshold the counts over the window cross, if any (the failure share first).
    pub fn crossed(&self, now: DateTime<Utc>, th: &Thresholds) -> Option<OpenCause> {
        let (calls, failures) = self.windowed(now, th.window);
        if calls >= f64::from(th.min_calls)
            && failures >= th.failure_ratio * calls
            && failures > 0.0
        {
            return Some(OpenCause::FailureRate);
        }
        if self.connection_failures >= i32::try_from(th.connection_failures).unwrap_or(i32::MAX) {
            return Some(OpenCause::ConnectionFailures);
        }
        None
    }

    /// The operator event a transition of this breaker records (`before`: the breaker as it was;
    /// `self`: as the transition left it; `woken`: the paused sagas a closing woke), or `None`
    /// for one that records nothing (a probe taken: its result says how it went).
    pub fn operator_event(
        &self,
        before: &Breaker,
        transition: Transition,
        now: DateTime<Utc>,
        th: &Thresholds,
        woken: u64,
    ) -> Option<Event> {
        let dependency = self.dependency.as_str().to_owned();
        let actor = SYSTEM_ACTOR.to_owned();
        let probe_at = self.probe_at.unwrap_or(now);
        let wait = |at: DateTime<Utc>| (at - now).num_milliseconds().max(0) as f64 / 1000.0;
        match transition {
            Transition::Opened => {
                let (calls, failures) = self.windowed(now, th.window);
                let share = 100.0 * failures / calls.max(1.0);
                let (calls, failures) = (calls.round() as i64, failures.round() as i64);
                let cause = self.crossed(now, th).unwrap_or(OpenCause::FailureRate);
                let window = th.window.as_secs_f64();
                let why = match cause {
                    OpenCause::FailureRate => format!(
                        "{failures} of {calls} calls failed over the last {window} s ({share:.0} %; \
                         it opens at {:.0} % of at least {})",
                        100.0 * th.failure_ratio,
                        th.min_calls
                    ),
                    OpenCause::ConnectionFailures => format!(
                        "{} connection failures in a row (it opens at {})",
                        self.connection_failures, th.connection_failures
                    ),
                };
                Some(Event::DependencyCircuitOpened {
                    dependency,
                    actor,
                    cause: cause.as_str().to_owned(),
                    reason: format!("{why}; first probe in {} s", wait(probe_at)),
                    calls,
                    failures,
                    connection_failures: i64::from(self.connection_failures),
                    probe_at,
                })
            }
            Transition::Reopened => Some(Event::DependencyProbeFailed {
                dependency,
                actor,
                reason: format!(
                    "the probe failed (a retryable failure); next probe in {} s",
                    wait(probe_at)
                ),
                failed_probes: i64::from(self.opens - 1),
                probe_at,
            }),
            Transition::Closed => {
                let opened_at = before.opened_at.unwrap_or(before.changed_at);
                let failed_probes = i64::from((before.opens - 1).max(0));
                Some(Event::DependencyCircuitClosed {
                    dependency,
                    actor,
                    reason: format!(
                        "the probe got an answer after {} s open and {failed_probes} failed probe(s)",
                        (now - opened_at).num_seconds().max(0)
                    ),
                    opened_at,
                    failed_probes,
                    woken_sagas: i64::try_from(woken).unwrap_or(i64::MAX),
                })
            }
            Transition::ProbeTaken => None,
        }
    }

    /// Whether a probe may start now (open and its time has come, or a probe's slot ran out).
    pub fn probe_due(&self, now: DateTime<Utc>) -> bool {
        match self.state {
            BreakerState::Closed => false,
            BreakerState::Open => self.probe_at.is_some_and(|at| at <= now),
            BreakerState::HalfOpen => self.probe_until.is_some_and(|until| until <= now),
        }
    }

    /// `worker` takes the one probe, if it is due: then the breaker is half-open until the
    /// probe's result, or until its slot runs out.
    pub fn take_probe(
        &mut self,
        worker: &str,
        now: DateTime<Utc>,
        th: &Thresholds,
    ) -> Option<Transition> {
        if !self.probe_due(now) {
            return None;
        }
        self.state = BreakerState::HalfOpen;
        self.probe_by = Some(worker.to_owned());
        self.probe_until = Some(now + to_chrono(th.probe_lease));
        self.changed_at = now;
        Some(Transition::ProbeTaken)
    }

    /// The result of `worker`'s probe: an answer (even a refusal) closes the breaker, a retryable
    /// failure reopens it with a longer wait. A result from anyone but the prober is ignored.
    pub fn probe_result(
        &mut self,
        worker: &str,
        result: CallResult,
        now: DateTime<Utc>,
        th: &Thresholds,
    ) -> Option<Transition> {
        if self.state != BreakerState::HalfOpen || self.probe_by.as_deref() != Some(worker) {
            return None;
        }
        match result {
            CallResult::Answered => {
                let dependency = self.dependency;
                *self = Breaker::new(dependency, now);
                Some(Transition::Closed)
            }
            CallResult::Failed { .. } => {
                self.open(now, th);
                Some(Transition::Reopened)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> DateTime<Utc> {
        DateTime::<Utc>::UNIX_EPOCH + chrono::Duration::days(20_000)
    }

    fn secs(s: i64) -> chrono::Duration {
        chrono::Duration::seconds(s)
    }

    fn tally(results: &[CallResult]) -> Tally {
        let mut t = Tally::default();
        for r in results {
            t.add(*r);
        }
        t
    }

    const OK: CallResult = CallResult::Answered;
    const FAIL: CallResult = CallResult::Failed { connection: false };
    const DOWN: CallResult = CallResult::Failed { connection: true };

    #[test]
    fn opens_at_half_failures_over_twenty_calls_not_before() {
        let th = crate::config::Settings::dev().breakers;
        let mut b = Breaker::new(Dependency::Stripe, t0());
        // 19 calls, all failing (HTTP 500): too few calls to judge.
        assert_eq!(b.count(tally(&[FAIL; 19]), t0(), &th), None);
        assert_eq!(b.state, BreakerState::Closed);
        // The 20th: 100 % of 20.
        assert_eq!(b.count(tally(&[FAIL]), t0(), &th), Some(Transition::Opened));
        assert_eq!(b.state, BreakerState::Open);
        assert_eq!(b.probe_at, Some(t0() + secs(10)));

        let mut b = Breaker::new(Dependency::Stripe, t0());
        let mixed: Vec<_> = (0..40).map(|i| if i % 5 < 2 { FAIL } else { OK }).collect();
        assert_eq!(
            b.count(tally(&mixed), t0(), &th),
            None,
            "40 % failures stay closed"
        );
    }

    #[test]
    fn the_window_slides_old_failures_out() {
        let th = crate::config::Settings::dev().breakers;
        let mut b = Breaker::new(Dependency::Notify, t0());
        b.count(tally(&[FAIL; 15]), t0(), &th);
        // 45 s later the previous bucket (15 failures) counts half: 7.5 + 5 calls < 20.
        assert_eq!(b.count(tally(&[FAIL; 5]), t0() + secs(45), &th), None);
        let (calls, failures) = b.windowed(t0() + secs(45), th.window);
        assert!(
            (calls - 12.5).abs() < 1e-9 && (failures - 12.5).abs() < 1e-9,
            "{calls} {failures}"
        );
        // Two windows later nothing old is left.
        b.count(Tally::default(), t0() + secs(100), &th);
        assert_eq!(b.windowed(t0() + secs(100), th.window), (0.0, 0.0));
    }

    #[test]
    fn five_connection_failures_in_a_row_open_it_and_an_answer_resets_the_run() {
        let th = crate::config::Settings::dev().breakers;
        let mut b = Breaker::new(Dependency::Notify, t0());
        assert_eq!(b.count(tally(&[DOWN; 4]), t0(), &th), None);
        assert_eq!(
            b.count(tally(&[OK, DOWN, DOWN]), t0(), &th),
            None,
            "the run restarts"
        );
        assert_eq!(b.connection_failures, 2);
        assert_eq!(
            b.count(tally(&[DOWN, DOWN, DOWN]), t0(), &th),
            Some(Transition::Opened)
        );
    }

    #[test]
    fn business_refusals_never_open_it() {
        let th = crate::config::Settings::dev().breakers;
        let mut b = Breaker::new(Dependency::Stripe, t0());
        assert_eq!(b.count(tally(&[OK; 100]), t0(), &th), None);
        assert_eq!(b.failures, 0);
    }

    #[test]
    fn one_probe_at_a_time_after_its_delay_and_the_delay_backs_off_to_five_minutes() {
        let th = crate::config::Settings::dev().breakers;
        let mut b = Breaker::new(Dependency::Stripe, t0());
        b.count(tally(&[DOWN; 5]), t0(), &th);
        assert_eq!(
            b.take_probe("a", t0() + secs(9), &th),
            None,
            "not before 10 s"
        );
        assert_eq!(
            b.take_probe("a", t0() + secs(10), &th),
            Some(Transition::ProbeTaken)
        );
        assert_eq!(
            b.take_probe("b", t0() + secs(11), &th),
            None,
            "one probe in flight"
        );
        assert_eq!(
            b.probe_result("b", OK, t0() + secs(11), &th),
            None,
            "not b's probe"
        );
        // The probe fails: open again, 20 s this time, then 40, 80, 160, 300, 300.
        let mut now = t0() + secs(11);
        for wait in [20, 40, 80, 160, 300, 300] {
            assert_eq!(
                b.probe_result("a", FAIL, now, &th),
                Some(Transition::Reopened)
            );
            assert_eq!(b.probe_at, Some(now + secs(wait)));
            now += secs(wait);
            assert_eq!(b.take_probe("a", now, &th), Some(Transition::ProbeTaken));
        }
        // A probe whose process died: its slot runs out and another may probe.
        let lease = secs(th.probe_lease.as_secs() as i64);
        assert_eq!(
            b.take_probe("b", now + lease, &th),
            Some(Transition::ProbeTaken)
        );
        assert_eq!(
            b.probe_result("b", OK, now + lease, &th),
            Some(Transition::Closed)
        );
        assert_eq!(
            b,
            Breaker::new(Dependency::Stripe, now + lease),
            "closed and reset"
        );
    }

    #[test]
    fn a_refusal_during_the_probe_closes_it() {
        let th = crate::config::Settings::dev().breakers;
        let mut b = Breaker::new(Dependency::Stripe, t0());
        b.count(tally(&[FAIL; 20]), t0(), &th);
        b.take_probe("a", t0() + secs(10), &th);
        // A card decline is an answer: Stripe is up.
        assert_eq!(
            b.probe_result("a", OK, t0() + secs(10), &th),
            Some(Transition::Closed)
        );
        assert_eq!(b.state, BreakerState::Closed);
    }
    #[test]
    fn transitions_record_operator_events_that_say_why() {
        let th = crate::config::Settings::dev().breakers;
        let mut b = Breaker::new(Dependency::Stripe, t0());
        let mut before = b.clone();
        let t = b.count(tally(&[FAIL; 20]), t0(), &th).unwrap();
        let Some(Event::DependencyCircuitOpened {
            dependency,
            actor,
            cause,
            reason,
            calls,
            failures,
            connection_failures,
            probe_at,
        }) = b.operator_event(&before, t, t0(), &th, 0)
        else {
            panic!("no opened event")
        };
        assert_eq!(
            (dependency.as_str(), actor.as_str(), cause.as_str()),
            ("stripe", "system", "failure_rate")
        );
        assert_eq!(
            reason,
            "20 of 20 calls failed over the last 30 s (100 %; it opens at 50 % of at least 20); \
             first probe in 10 s"
        );
        assert_eq!((calls, failures, connection_failures), (20, 20, 0));
        assert_eq!(probe_at, t0() + secs(10));

        // The probe: taking it records nothing; failing it records the failed probe.
        before = b.clone();
        let t = b.take_probe("a", t0() + secs(10), &th).unwrap();
        assert_eq!(b.operator_event(&before, t, t0() + secs(10), &th, 0), None);
        before = b.clone();
        let t = b.probe_result("a", FAIL, t0() + secs(11), &th).unwrap();
        assert_eq!(
            b.operator_event(&before, t, t0() + secs(11), &th, 0),
            Some(Event::DependencyProbeFailed {
                dependency: "stripe".into(),
                actor: "system".into(),
                reason: "the probe failed (a retryable failure); next probe in 20 s".into(),
                failed_probes: 1,
                probe_at: t0() + secs(31),
            })
        );
        // Closed by the next probe's answer: open since the first opening, 45 s before.
        b.take_probe("a", t0() + secs(31), &th);
        before = b.clone();
        let t = b.probe_result("a", OK, t0() + secs(45), &th).unwrap();
        assert_eq!(
            b.operator_event(&before, t, t0() + secs(45), &th, 7),
            Some(Event::DependencyCircuitClosed {
                dependency: "stripe".into(),
                actor: "system".into(),
                reason: "the probe got an answer after 45 s open and 1 failed probe(s)".into(),
                opened_at: t0(),
                failed_probes: 1,
                woken_sagas: 7,
            })
        );
    }

    #[test]
    fn a_breaker_opened_by_connection_failures_says_so() {
        let th = crate::config::Settings::dev().breakers;
        let mut b = Breaker::new(Dependency::Notify, t0());
        let before = b.clone();
        let t = b.count(tally(&[DOWN; 5]), t0(), &th).unwrap();
        let Some(Event::DependencyCircuitOpened { cause, reason, .. }) =
            b.operator_event(&before, t, t0(), &th, 0)
        else {
            panic!("no opened event")
        };
        assert_eq!(cause, "connection_failures");
        assert_eq!(
            reason,
            "5 connection failures in a row (it opens at 5); first probe in 10 s"
        );
    }
}

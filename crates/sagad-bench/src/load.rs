//! The load driver: start booking sagas over HTTP (no `?wait`) and learn of their terminal state
//! from the `sagad_saga_done` NOTIFY, so the start RPC and the end-to-end time are measured apart.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{Value, json};
use sqlx::postgres::PgListener;
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use uuid::Uuid;

use sagad::store;

/// How long one saga may take before the bench counts it as an error.
const SAGA_TIMEOUT: Duration = Duration::from_secs(120);

/// One saga as the client saw it.
#[derive(Debug)]
pub struct Sample {
    pub id: Option<Uuid>,
    pub start_rpc: Option<Duration>,
    /// Start RPC sent → terminal NOTIFY received.
    pub end_to_end: Option<Duration>,
    pub error: Option<String>,
}

/// The sagad API as the booking platform calls it.
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
    auth: String,
}

impl Api {
    pub fn new(base: &str, token: &str) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(1024)
            .build()?;
        Ok(Self {
            http,
            base: base.to_owned(),
            auth: format!("Bearer {token}"),
        })
    }

    /// An authenticated `POST` of a JSON body; the answer's JSON body, or an error for a non-2xx.
    pub async fn post_json(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        answer(self.post(path).json(body), &format!("POST {path}")).await
    }

    /// sagad's `/metrics` (Prometheus text).
    pub async fn metrics(&self) -> anyhow::Result<String> {
        let resp = self
            .http
            .get(format!("{}/metrics", self.base))
            .send()
            .await?
            .error_for_status()?;
        Ok(resp.text().await?)
    }

    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.http
            .post(format!("{}{path}", self.base))
            .header("Authorization", &self.auth)
    }

    /// `POST /v1/sagas`; returns the new saga's id.
    pub(crate) async fn start(&self, body: &Value) -> anyhow::Result<Uuid> {
        let req = self
            .post("/v1/sagas")
            .header("Idempotency-Key", Uuid::new_v4().to_string())
            .json(body);
        let body = answer(req, "start RPC").await?;
        body["id"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .context("start RPC answered without an id")
    }
}

/// A distinct listing per saga, so the inventory exclusion constraint never serialises the run;
/// the stay half a year ahead (check-ins in the past are refused).
pub(crate) fn booking(run: &str, n: usize) -> Value {
    three_nights(
        &format!("{run}-listing-{n}"),
        &format!("{run}-guest-{n}"),
        0,
    )
}

/// One saga in this many asks for exactly the listing and nights of the saga before it.
pub(crate) const CONFLICT_EVERY: usize = 50;
/// Sagas sharing one listing in [`contended_booking`].
const SAGAS_PER_LISTING: usize = 4;

/// Listings shared by four sagas each on back-to-back stays (adjacent ranges: the exclusion
/// constraint lets all four be active at once), and every [`CONFLICT_EVERY`]th saga asking for
/// exactly the stay of the saga before it, which closed-loop clients start at about the same time,
/// often through different processes: one of the two must lose at its hold.
pub(crate) fn contended_booking(run: &str, n: usize) -> Value {
    let m = if n % CONFLICT_EVERY == CONFLICT_EVERY - 1 {
        n - 1
    } else {
        n
    };
    let slot = (m % SAGAS_PER_LISTING) as u64;
    three_nights(
        &format!("{run}-listing-{}", m / SAGAS_PER_LISTING),
        &format!("{run}-guest-{n}"),
        3 * slot,
    )
}

/// A three-night booking checking in `offset` days after the day half a year ahead.
fn three_nights(listing: &str, guest: &str, offset: u64) -> Value {
    let day = |n: u64| {
        (chrono::Utc::now().date_naive() + chrono::Days::new(180 + offset + n)).to_string()
    };
    json!({ "saga": "booking", "input": {
        "listing_id": listing, "guest_id": guest,
        "check_in": day(0), "check_out": day(3),
        "amount": 37_500, "currency": "eur", "payment_method": "pm_card_visa" }})
}

#[derive(Default)]
struct Pending {
    waiters: HashMap<Uuid, oneshot::Sender<Instant>>,
    /// Terminal before the start RPC's answer was read.
    early: HashMap<Uuid, Instant>,
}

/// Routes terminal-state notifications to the client waiting for that saga.
pub struct Completions {
    pending: Mutex<Pending>,
    task: tokio::task::JoinHandle<()>,
}

impl Completions {
    /// LISTENs on the bench database; the listener's connection closes when this is dropped.
    pub async fn listen(database_url: &str) -> anyhow::Result<Arc<Self>> {
        let mut listener = PgListener::connect(database_url).await?;
        listener.listen(store::DONE_CHANNEL).await?;
        let this = Arc::new_cyclic(|weak: &std::sync::Weak<Self>| {
            let weak = weak.clone();
            let task = tokio::spawn(async move {
                while let Ok(n) = listener.recv().await {
                    let at = Instant::now();
                    let (Some(this), Ok(id)) = (weak.upgrade(), n.payload().parse::<Uuid>()) else {
                        continue;
                    };
                    this.finished(id, at);
                }
            });
            Self {
                pending: Mutex::default(),
                task,
            }
        });
        Ok(this)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn finished(&self, id: Uuid, at: Instant) {
        let mut p = self.lock();
        match p.waiters.remove(&id) {
            Some(tx) => {
                let _ = tx.send(at);
            }
            None => {
                p.early.insert(id, at);
            }
        }
    }

    async fn wait(&self, id: Uuid) -> Option<Instant> {
        let rx = {
            let mut p = self.lock();
            if let Some(at) = p.early.remove(&id) {
                return Some(at);
            }
            let (tx, rx) = oneshot::channel();
            p.waiters.insert(id, tx);
            rx
        };
        tokio::time::timeout(SAGA_TIMEOUT, rx).await.ok()?.ok()
    }
}

impl Drop for Completions {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn one_saga(api: &Api, done: &Completions, body: Value) -> Sample {
    let sent = Instant::now();
    let id = match api.start(&body).await {
        Ok(id) => id,
        Err(e) => {
            return Sample {
                id: None,
                start_rpc: None,
                end_to_end: None,
                error: Some(format!("{e:#}")),
            };
        }
    };
    let start_rpc = sent.elapsed();
    let finished = done.wait(id).await;
    Sample {
        id: Some(id),
        start_rpc: Some(start_rpc),
        end_to_end: finished.map(|at| at.saturating_duration_since(sent)),
        error: finished
            .is_none()
            .then(|| format!("saga {id}: no terminal state within {SAGA_TIMEOUT:?}")),
    }
}

/// How much load one run offers.
#[derive(Debug, Clone, Copy)]
pub enum Budget {
    Sagas(usize),
    Time(Duration),
}

/// What a run measured.
pub struct RunResult {
    pub samples: Vec<Sample>,
    /// First start RPC sent → last terminal state seen.
    pub elapsed: Duration,
}

/// What saga `n` of run `run` asks for.
pub type Body = fn(&str, usize) -> Value;

/// `clients` concurrent clients, each starting one saga and waiting for its terminal state before
/// starting the next; client `i` sends its start requests to `apis[i % apis.len()]`, and saga `n`
/// is `body(run, n)`.
pub async fn closed_loop(
    apis: &[Api],
    done: &Arc<Completions>,
    run: &str,
    clients: usize,
    budget: Budget,
    body: Body,
) -> anyhow::Result<RunResult> {
    anyhow::ensure!(!apis.is_empty(), "a closed loop needs an API to call");
    let started = Instant::now();
    let tickets = Arc::new(AtomicUsize::new(0));
    let mut tasks = JoinSet::new();
    for client in 0..clients {
        let (api, done, tickets, run) = (
            apis[client % apis.len()].clone(),
            done.clone(),
            tickets.clone(),
            run.to_owned(),
        );
        tasks.spawn(async move {
            let mut samples = Vec::new();
            loop {
                let n = tickets.fetch_add(1, Ordering::Relaxed);
                let more = match budget {
                    Budget::Sagas(total) => n < total,
                    Budget::Time(d) => started.elapsed() < d,
                };
                if !more {
                    return samples;
                }
                samples.push(one_saga(&api, &done, body(&run, n)).await);
            }
        });
    }
    let mut samples = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        samples.extend(joined?);
    }
    Ok(RunResult {
        samples,
        elapsed: started.elapsed(),
    })
}

/// Starts sagas at `rate` per second whatever the completions do (no coordinated omission in the
/// start-RPC figures), each awaited in its own task.
pub async fn open_loop(
    api: &Api,
    done: &Arc<Completions>,
    run: &str,
    rate: f64,
    budget: Budget,
) -> anyhow::Result<RunResult> {
    let total = match budget {
        Budget::Sagas(n) => n,
        Budget::Time(d) => (d.as_secs_f64() * rate).ceil() as usize,
    };
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(0.001)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for n in 0..total {
        ticker.tick().await;
        let (api, done, body) = (api.clone(), done.clone(), booking(run, n));
        tasks.spawn(async move { one_saga(&api, &done, body).await });
    }
    let mut samples = Vec::with_capacity(total);
    while let Some(joined) = tasks.join_next().await {
        samples.push(joined?);
    }
    Ok(RunResult {
        samples,
        elapsed: started.elapsed(),
    })
}

/// The JSON answer of `req`, or an error naming `what` for a non-2xx.
async fn answer(req: reqwest::RequestBuilder, what: &str) -> anyhow::Result<Value> {
    let resp = req.send().await?;
    let status = resp.status();
    let body: Value = resp.json().await?;
    if !status.is_success() {
        anyhow::bail!("{what} answered {status}: {body}");
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stay(v: &Value) -> (String, String, String) {
        let i = &v["input"];
        (
            i["listing_id"].as_str().unwrap().to_owned(),
            i["check_in"].as_str().unwrap().to_owned(),
            i["check_out"].as_str().unwrap().to_owned(),
        )
    }

    #[test]
    fn contended_bookings_share_listings_back_to_back_and_conflict_one_in_fifty() {
        let stays: Vec<_> = (0..200).map(|n| stay(&contended_booking("r", n))).collect();
        // Four sagas per listing, each checking in the day the one before checks out.
        assert_eq!(stays[0].0, stays[3].0);
        assert_ne!(stays[3].0, stays[4].0);
        assert_eq!(stays[0].2, stays[1].1);
        // Saga 49 asks for exactly saga 48's listing and nights; 50 does not.
        assert_eq!(stays[49], stays[48]);
        assert_ne!(stays[50], stays[49]);
        let mut distinct = stays.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), 200 - 200 / CONFLICT_EVERY);
        // Every guest is different.
        let guest = |n| contended_booking("r", n)["input"]["guest_id"].clone();
        assert_ne!(guest(48), guest(49));
    }
}

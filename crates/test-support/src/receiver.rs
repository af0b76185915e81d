//! A capturing HTTP receiver on 127.0.0.1: whoever sagad POSTs to (an integrator's webhook
//! endpoint, the notification gateway). It records every request — when it arrived, its path,
//! headers and body, and the status it was answered with — and answers as told: a script of
//! replies first, then a standing answer; bodies containing a given text are always refused with a
//! given status.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// How long [`Reply::Hang`] keeps a request waiting.
const HANG: Duration = Duration::from_secs(30);
/// How long [`Receiver::wait_hits`] waits.
const WAIT: Duration = Duration::from_secs(10);

/// How the receiver answers one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// This status, no body.
    Status(u16),
    /// This status with `Retry-After: {seconds}`.
    RetryAfter(u16, u64),
    /// No answer for 30 s, then 200: a peer that hangs.
    Hang,
    /// This status with a body of `n` bytes.
    Big(u16, usize),
    /// This status with this body.
    Body(u16, String),
}

impl Reply {
    /// The status the request is (eventually) answered with.
    fn status(&self) -> u16 {
        match self {
            Reply::Status(c) | Reply::RetryAfter(c, _) | Reply::Big(c, _) | Reply::Body(c, _) => *c,
            Reply::Hang => 200,
        }
    }

    async fn into_response(self) -> Response {
        let code = |c: u16| StatusCode::from_u16(c).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        match self {
            Reply::Status(c) => code(c).into_response(),
            Reply::RetryAfter(c, secs) => {
                (code(c), [("retry-after", secs.to_string())]).into_response()
            }
            Reply::Hang => {
                tokio::time::sleep(HANG).await;
                StatusCode::OK.into_response()
            }
            Reply::Big(c, n) => (code(c), "x".repeat(n)).into_response(),
            Reply::Body(c, body) => (code(c), body).into_response(),
        }
    }
}

/// One request the receiver got.
#[derive(Clone, Debug)]
pub struct Hit {
    /// When it arrived.
    pub at: Instant,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The status it was answered with.
    pub status: u16,
}

impl Hit {
    /// The header's value as text (empty when missing or not text).
    pub fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    }

    /// The body as JSON; panics when it is not (for tests).
    pub fn json(&self) -> serde_json::Value {
        match serde_json::from_slice(&self.body) {
            Ok(v) => v,
            Err(e) => panic!(
                "the body of the request to {} is not JSON ({e}): {}",
                self.path,
                String::from_utf8_lossy(&self.body)
            ),
        }
    }

    /// Whether it was answered with a 2xx.
    pub fn accepted(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

struct Shared {
    hits: Mutex<Vec<Hit>>,
    script: Mutex<VecDeque<Reply>>,
    answer: Mutex<Reply>,
    refuse: Mutex<Option<(String, u16)>>,
    keep: AtomicBool,
    /// Requests received so far (kept or not).
    received: watch::Sender<usize>,
}

/// Locks a mutex; a panic while holding it leaves plain data behind, so keep serving it.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A receiver running on 127.0.0.1. Clones share it; it serves until the process ends.
#[derive(Clone)]
pub struct Receiver {
    /// Where to send requests: `http://127.0.0.1:PORT/hook` (any path is accepted).
    pub url: String,
    shared: Arc<Shared>,
}

impl Receiver {
    /// A receiver on a free port; panics if none can be bound (for tests).
    pub async fn start() -> Self {
        let listener = match TcpListener::bind("127.0.0.1:0").await {
            Ok(l) => l,
            Err(e) => panic!("cannot bind a receiver on 127.0.0.1: {e}"),
        };
        match Self::on(listener).await {
            Ok(r) => r,
            Err(e) => panic!("cannot start a receiver: {e}"),
        }
    }

    /// A receiver on `listener` (to come back on the port of one that was stopped, say).
    pub async fn on(listener: TcpListener) -> std::io::Result<Self> {
        let url = format!("http://{}/hook", listener.local_addr()?);
        let shared = Arc::new(Shared {
            hits: Mutex::default(),
            script: Mutex::default(),
            answer: Mutex::new(Reply::Status(200)),
            refuse: Mutex::default(),
            keep: AtomicBool::new(true),
            received: watch::Sender::new(0),
        });
        let app = axum::Router::new()
            .fallback(receive)
            .with_state(shared.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { url, shared })
    }

    /// The next requests get these replies, in order; then the standing answer again.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        lock(&self.shared.script).extend(replies);
    }

    /// The standing answer: `status` with no body (200 at start).
    pub fn answer(&self, status: u16) {
        self.answer_with(Reply::Status(status));
    }

    /// The standing answer.
    pub fn answer_with(&self, reply: Reply) {
        *lock(&self.shared.answer) = reply;
    }

    /// Requests whose body contains `text` always get `status`, whatever the script and the
    /// standing answer say (a notification to a guest who cannot be reached, say: a 4xx that
    /// retrying cannot change, where a 5xx is an outage to wait out).
    pub fn refuse_containing(&self, text: impl Into<String>, status: u16) {
        *lock(&self.shared.refuse) = Some((text.into(), status));
    }

    /// From now on, counts requests without keeping them (long benchmark runs).
    pub fn count_only(&self) {
        self.shared.keep.store(false, Ordering::SeqCst);
    }

    /// Every request kept so far, in arrival order.
    pub fn hits(&self) -> Vec<Hit> {
        lock(&self.shared.hits).clone()
    }

    /// The requests kept after the first `start`.
    pub fn hits_from(&self, start: usize) -> Vec<Hit> {
        lock(&self.shared.hits)
            .get(start..)
            .map(<[Hit]>::to_vec)
            .unwrap_or_default()
    }

    /// Requests received so far, kept or not.
    pub fn count(&self) -> usize {
        *self.shared.received.borrow()
    }

    /// The number of requests received, changing as they arrive.
    pub fn watch(&self) -> watch::Receiver<usize> {
        self.shared.received.subscribe()
    }

    /// Waits up to 10 s until `n` requests have come, then returns every request kept; panics
    /// when they do not come (for tests).
    pub async fn wait_hits(&self, n: usize) -> Vec<Hit> {
        let mut received = self.watch();
        let came = tokio::time::timeout(WAIT, received.wait_for(|c| *c >= n))
            .await
            .is_ok_and(|r| r.is_ok());
        if !came {
            panic!(
                "timed out waiting for {n} requests at {} ({} came)",
                self.url,
                self.count()
            );
        }
        self.hits()
    }
}

async fn receive(
    State(shared): State<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let at = Instant::now();
    let refused = lock(&shared.refuse)
        .as_ref()
        .filter(|(text, _)| String::from_utf8_lossy(&body).contains(text.as_str()))
        .map(|(_, status)| *status);
    let reply = if let Some(status) = refused {
        Reply::Status(status)
    } else {
        let scripted = lock(&shared.script).pop_front();
        scripted.unwrap_or_else(|| lock(&shared.answer).clone())
    };
    if shared.keep.load(Ordering::SeqCst) {
        lock(&shared.hits).push(Hit {
            at,
            path: uri.path().to_owned(),
            headers,
            body,
            status: reply.status(),
        });
    }
    shared.received.send_modify(|n| *n += 1);
    reply.into_response().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn records_requests_and_answers_the_script_then_the_standing_answer() {
        let rx = Receiver::start().await;
        rx.script([Reply::RetryAfter(429, 7), Reply::Big(500, 10)]);
        rx.refuse_containing("unreachable", 422);
        let http = reqwest::Client::new();
        let post = |body: &'static str| http.post(&rx.url).body(body).send();

        let first = post("{\"n\":1}").await.unwrap();
        assert_eq!(first.status(), 429);
        assert_eq!(first.headers()["retry-after"], "7");
        // A refusal does not use up the script.
        assert_eq!(post("guest unreachable").await.unwrap().status(), 422);
        let big = post("{}").await.unwrap();
        assert_eq!(big.status(), 500);
        assert_eq!(big.text().await.unwrap().len(), 10);
        assert_eq!(post("{}").await.unwrap().status(), 200);
        rx.answer(503);
        assert_eq!(post("{}").await.unwrap().status(), 503);

        let hits = rx.wait_hits(5).await;
        let statuses: Vec<u16> = hits.iter().map(|h| h.status).collect();
        assert_eq!(statuses, [429, 422, 500, 200, 503]);
        assert_eq!(hits[0].json()["n"], 1);
        assert_eq!(hits[0].path, "/hook");
        assert!(hits[3].accepted() && !hits[4].accepted());
        assert_eq!(rx.hits_from(3).len(), 2);
        assert_eq!(rx.hits_from(9).len(), 0);

        rx.count_only();
        assert_eq!(post("{}").await.unwrap().status(), 503);
        assert_eq!((rx.count(), rx.hits().len()), (6, 5));
    }
}

//! The forms API client and the form cache.
//!
//! [`Enricher::lookup`] answers "the form `id` as of an event that happened at `t`":
//! - from the cache if the cached answer was retrieved at or after `t` and is younger than the TTL;
//! - else by joining a request for `id` already in flight (coalesced), if its answer is fresh
//!   enough for `t`;
//! - else with a new request. Requests run in their own task, retry transient failures
//!   (5xx, 408, 429, timeouts, connection errors) for ever with backoff and jitter, and store
//!   their answer in the cache when done, whether or not anyone still waits for them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use connector_common::Secret;
use connector_common::retry::{ErrorClass, RetryPolicy, classify_http_status};
use connector_common::telemetry::Health;
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use metrics::{counter, histogram};
use serde_json::Value;
use tracing::{debug, warn};

use crate::config::EnrichConfig;

/// The API's answer for one form id.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// A valid form: its compact JSON text.
    Form(Arc<str>),
    /// 404.
    NotFound,
    /// Not a form (not JSON, no id, another id, a 4xx other than 404/408/429): the detail.
    Invalid(String),
}

/// An answer with when it was retrieved.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// What the API said.
    pub answer: Answer,
    /// `Date` header of the answer, else the local clock: microseconds since the epoch.
    pub retrieved_micros: i64,
    /// Local instant of the answer (for the TTL).
    pub at: Instant,
}

type SharedFetch = Shared<BoxFuture<'static, Arc<Fetched>>>;

enum Slot {
    Ready(Arc<Fetched>),
    Loading { id: u64, fut: SharedFetch },
}

/// The forms API client with its cache. Cheap to clone.
#[derive(Clone)]
pub struct Enricher {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Enricher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enricher")
            .field("base", &self.inner.base)
            .finish_non_exhaustive()
    }
}

struct Inner {
    client: reqwest::Client,
    base: String,
    token: Option<Secret>,
    timeout: Duration,
    retry: RetryPolicy,
    ttl: Duration,
    max_entries: usize,
    slots: Mutex<HashMap<String, Slot>>,
    next_id: AtomicU64,
    consecutive_failures: AtomicU64,
    health: Health,
}

impl Enricher {
    /// A client for `cfg` (pooled connections, rustls).
    pub fn new(cfg: &EnrichConfig, health: Health) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(cfg.concurrency.min(256))
            .connect_timeout(cfg.timeout)
            .tcp_nodelay(true)
            .build()?;
        let base = format!("{}/internal.forms/", cfg.uri.as_str().trim_end_matches('/'));
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                base,
                token: cfg.token.clone(),
                timeout: cfg.timeout,
                retry: cfg.retry.clone(),
                ttl: cfg.cache.ttl,
                max_entries: cfg.cache.max_entries,
                slots: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(0),
                consecutive_failures: AtomicU64::new(0),
                health,
            }),
        })
    }

    /// The form `id` as of an event that happened at `happened_micros`.
    pub async fn lookup(&self, id: &str, happened_micros: i64) -> Arc<Fetched> {
        let joined = {
            let mut slots = self.inner.slots.lock().expect("cache lock");
            match slots.get(id) {
                Some(Slot::Ready(f))
                    if f.retrieved_micros >= happened_micros && f.at.elapsed() < self.inner.ttl =>
                {
                    counter!("enrich_cache_lookups_total", "result" => "hit").increment(1);
                    return f.clone();
                }
                Some(Slot::Loading { fut, .. }) => {
                    counter!("enrich_cache_lookups_total", "result" => "coalesced").increment(1);
                    Some(fut.clone())
                }
                _ => {
                    counter!("enrich_cache_lookups_total", "result" => "miss").increment(1);
                    None
                }
            }
            .unwrap_or_else(|| self.start_fetch(&mut slots, id))
        };
        let fetched = joined.clone().await;
        if fetched.retrieved_micros >= happened_micros {
            return fetched;
        }
        // The request we joined was answered before this event happened (by the API's clock):
        // ask again, once, and take that answer whatever its time.
        let fut = {
            let mut slots = self.inner.slots.lock().expect("cache lock");
            match slots.get(id) {
                Some(Slot::Ready(f)) if f.retrieved_micros >= happened_micros => {
                    return f.clone();
                }
                Some(Slot::Loading { fut, .. }) if !fut.ptr_eq(&joined) => fut.clone(),
                _ => {
                    counter!("enrich_cache_lookups_total", "result" => "miss").increment(1);
                    self.start_fetch(&mut slots, id)
                }
            }
        };
        fut.await
    }

    fn start_fetch(&self, slots: &mut HashMap<String, Slot>, id: &str) -> SharedFetch {
        let slot_id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let inner = self.inner.clone();
        let owned = id.to_owned();
        let task = tokio::spawn(async move {
            let fetched = Arc::new(inner.fetch_with_retries(&owned).await);
            inner.store(&owned, slot_id, fetched.clone());
            fetched
        });
        let fut: SharedFetch = async move { task.await.expect("fetch task never panics") }
            .boxed()
            .shared();
        slots.insert(
            id.to_owned(),
            Slot::Loading {
                id: slot_id,
                fut: fut.clone(),
            },
        );
        fut
    }

    /// Number of cached (answered) forms.
    pub fn cached(&self) -> usize {
        let slots = self.inner.slots.lock().expect("cache lock");
        slots
            .values()
            .filter(|s| matches!(s, Slot::Ready(_)))
            .count()
    }
}

impl Inner {
    fn store(&self, id: &str, slot_id: u64, fetched: Arc<Fetched>) {
        let mut slots = self.slots.lock().expect("cache lock");
        if let Some(Slot::Loading { id: current, .. }) = slots.get(id)
            && *current != slot_id
        {
            return; // a newer request replaced ours
        }
        slots.insert(id.to_owned(), Slot::Ready(fetched));
        if slots.len() > self.max_entries {
            let ttl = self.ttl;
            slots.retain(|_, s| match s {
                Slot::Ready(f) => f.at.elapsed() < ttl,
                Slot::Loading { .. } => true,
            });
            let mut excess = slots.len().saturating_sub(self.max_entries * 9 / 10);
            if excess > 0 {
                slots.retain(|_, s| {
                    if excess > 0 && matches!(s, Slot::Ready(_)) {
                        excess -= 1;
                        false
                    } else {
                        true
                    }
                });
            }
        }
    }

    async fn fetch_with_retries(&self, id: &str) -> Fetched {
        let mut attempt: u32 = 0;
        loop {
            match self.fetch_once(id).await {
                Ok(f) => {
                    if self.consecutive_failures.swap(0, Ordering::Relaxed) > 0 {
                        self.health.set_problem(None);
                    }
                    return f;
                }
                Err(why) => {
                    let n = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
                    if n == 20 {
                        self.health
                            .set_problem(Some(format!("forms API failing: {why}")));
                    }
                    let wait = self.retry.backoff(attempt);
                    if attempt == 3 || (attempt > 3 && attempt.is_multiple_of(10)) {
                        warn!(form_id = %id, attempt, error = %why, wait_ms = wait.as_millis() as u64, "Forms API request failed; retrying.");
                    } else {
                        debug!(form_id = %id, attempt, error = %why, "Forms API request failed; retrying.");
                    }
                    counter!("forms_api_retries_total").increment(1);
                    tokio::time::sleep(wait).await;
                    attempt = attempt.saturating_add(1);
                }
            }
        }
    }

    /// One request: `Ok` for a definite answer, `Err` (transient, with why) to retry.
    async fn fetch_once(&self, id: &str) -> Result<Fetched, String> {
        let url = format!("{}{}", self.base, encode_path_segment(id));
        let mut req = self.client.get(&url).timeout(self.timeout);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t.expose());
        }
        let started = Instant::now();
        let result = async {
            let resp = req.send().await?;
            let status = resp.status().as_u16();
            let date = resp
                .headers()
                .get(reqwest::header::DATE)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_http_date);
            let body = resp.bytes().await?;
            Ok::<_, reqwest::Error>((status, date, body))
        }
        .await;
        histogram!("forms_api_request_duration_seconds").record(started.elapsed().as_secs_f64());
        let (status, date, body) = match result {
            Ok(x) => x,
            Err(e) => {
                let kind = if e.is_timeout() {
                    "timeout"
                } else if e.is_connect() {
                    "connect_error"
                } else {
                    "error"
                };
                counter!("forms_api_responses_total", "status" => kind).increment(1);
                return Err(format!("{kind}: {e}"));
            }
        };
        counter!("forms_api_responses_total", "status" => status.to_string()).increment(1);
        let retrieved_micros = date.unwrap_or_else(now_micros);
        let done = |answer| {
            Ok(Fetched {
                answer,
                retrieved_micros,
                at: Instant::now(),
            })
        };
        match (status, classify_http_status(status)) {
            (200..=299, _) => done(validate_form(id, &body)),
            (404, _) => done(Answer::NotFound),
            (_, Some(ErrorClass::Transient)) => Err(format!("HTTP {status}")),
            _ => done(Answer::Invalid(format!(
                "the forms API answered HTTP {status} for form `{id}`"
            ))),
        }
    }
}

/// Checks an answer body: a JSON form (form-model's rules) whose `id` is the requested one.
pub fn validate_form(id: &str, body: &[u8]) -> Answer {
    let value: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            return Answer::Invalid(format!(
                "the forms API answer for form `{id}` is not JSON: {e}"
            ));
        }
    };
    if let Err(e) = form_model::validate_api_form(&value) {
        return Answer::Invalid(format!("form `{id}`: {e}"));
    }
    match value.get("id").and_then(Value::as_str) {
        Some(got) if got == id => {}
        got => {
            return Answer::Invalid(format!(
                "asked for form `{id}`, the forms API answered form `{}`",
                got.unwrap_or("")
            ));
        }
    }
    Answer::Form(Arc::from(value.to_string()))
}

/// `Date` header (`Tue, 25 Nov 2026 18:32:04 GMT`) → microseconds since the epoch.
pub fn parse_http_date(s: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc2822(s)
        .ok()
        .map(|d| d.timestamp_micros())
}

fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// Percent-encodes everything but unreserved characters (form ids are opaque strings).
fn encode_path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_validated() {
        assert!(
            matches!(validate_form("a", b"nope"), Answer::Invalid(d) if d.contains("not JSON"))
        );
        assert!(
            matches!(validate_form("a", br#"{"title":"t"}"#), Answer::Invalid(d) if d.contains("id"))
        );
        assert!(
            matches!(validate_form("a", br#"{"id":"b","title":"t"}"#), Answer::Invalid(d) if d.contains("answered form `b`"))
        );
        assert_eq!(
            validate_form("a", br#"{ "id": "a", "title": "t" }"#),
            Answer::Form(Arc::from(r#"{"id":"a","title":"t"}"#))
        );
    }

    #[test]
    fn http_date() {
        assert_eq!(
            parse_http_date("Sun, 02 Oct 2022 13:00:16 GMT"),
            Some(1_664_715_616_000_000)
        );
        assert_eq!(parse_http_date("yesterday"), None);
        assert_eq!(encode_path_segment("ab/c d"), "ab%2Fc%20d");
    }
}

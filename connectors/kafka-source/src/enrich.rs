//! The forms API client and the form cache.
//!
//! [`Enricher::lookup`] answers "the form `id` as of an event that happened at `t`":
//! - from the cache if the cached answer was retrieved at or after `t` and is younger than the TTL;
//! - else by joining a request for `id` already in flight (coalesced), if its answer is fresh
//!   enough for `t`;
//! - else with a new request. Requests run in their own task, retry transient failures
//!   (5xx, 408, 429, timeouts, connection errors) for ever with backoff and jitter, and store
//!   their answer in the cache when done, whether or not anyone still waits for them.
//!
//! Answers that say the API is not serving us, rather than something about one form, are retried
//! the same way (so the source pauses, as in an outage), flag `/health` at once, and are never
//! cached: 401, 403 and 407 (credentials), 3xx (a moved API: `enrich.uri`), and a 2xx whose body
//! is not a form at all (not JSON, or not an object with an `id`: a proxy's error page).
//! A body longer than `enrich.max-answer-bytes` is abandoned at the cap (never held whole) and
//! answers [`Answer::TooLarge`].

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use connector_common::Secret;
use connector_common::retry::{ErrorClass, RetryPolicy, classify_http_status};
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use metrics::{Counter, Histogram, counter, histogram};
use reqwest::header::HeaderValue;
use serde_json::Value;
use tower::limit::ConcurrencyLimitLayer;
use tracing::{debug, warn};

use crate::config::EnrichConfig;
use crate::http1::{Body, Capped, Http1Pool, HttpError, MAX_CONNECTING, TooLarge};
use crate::problems::{Part, Problems};

/// The API's answer for one form id.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// A valid form: its compact JSON text (UTF-8; `Bytes` takes the minified buffer as is,
    /// where an `Arc<str>` would copy it once more).
    Form(Bytes),
    /// 404.
    NotFound,
    /// An invalid form (another id, a wrong-typed or missing attribute, a 4xx other than
    /// 401/403/404/407/408/429): the detail.
    Invalid(String),
    /// Longer than `enrich.max-answer-bytes`: the detail (the size seen and the cap).
    TooLarge(String),
}

/// An answer with when it was retrieved.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// What the API said.
    pub answer: Answer,
    /// `Date` header of the answer, else the local clock: microseconds since the epoch.
    pub retrieved_micros: i64,
    /// `retrieved_micros` as RFC 3339 UTC text (`retrieved_timestamp` of the enriched record).
    pub retrieved_text: Arc<str>,
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
        // `base` is redacted when built: no userinfo, no query.
        f.debug_struct("Enricher")
            .field("base", &self.inner.base)
            .field("max_answer_bytes", &self.inner.max_answer_bytes)
            .finish_non_exhaustive()
    }
}

/// What [`Enricher::lookup`] found.
#[derive(Debug)]
pub enum Lookup {
    /// A cached answer that may serve the event.
    Ready(Arc<Fetched>),
    /// A request in flight for it.
    Pending(Pending),
}

/// A request in flight for an event's form. It runs whether or not this is polled (on the
/// requests' runtime), and waking is only for whoever polls it: the loop polls only the oldest
/// event's, so answers for later events wake nobody.
pub struct Pending {
    enricher: Enricher,
    id: String,
    happened_micros: i64,
    joined: SharedFetch,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("id", &self.id)
            .field("happened_micros", &self.happened_micros)
            .finish_non_exhaustive()
    }
}

impl Pending {
    /// The answer for the event.
    pub async fn answer(self) -> Arc<Fetched> {
        let Pending {
            enricher,
            id,
            happened_micros,
            joined,
        } = self;
        let fetched = joined.clone().await;
        if fetched.retrieved_micros >= happened_micros {
            return fetched;
        }
        // The request we joined was answered before this event happened (by the API's clock):
        // ask again, once, and take that answer whatever its time.
        let fut = {
            let mut slots = enricher.inner.slots.lock().expect("cache lock");
            match slots.map.get(id.as_str()) {
                Some(Slot::Ready(f)) if f.retrieved_micros >= happened_micros => {
                    return f.clone();
                }
                Some(Slot::Loading { fut, .. }) if !fut.ptr_eq(&joined) => fut.clone(),
                _ => {
                    enricher.inner.misses.increment(1);
                    enricher.start_fetch(&mut slots, &id)
                }
            }
        };
        fut.await
    }
}

/// How requests are sent: our own HTTP/1.1 pool for `http://`, reqwest for `https://`.
enum Transport {
    Http1(Http1Pool),
    Reqwest {
        client: reqwest::Client,
        /// `base` parsed once (a request only sets the path: no URL parsing per request).
        base_url: reqwest::Url,
        token: Option<Secret>,
        /// Requests in flight (each holds a connection).
        slots: tokio::sync::Semaphore,
    },
}

struct Inner {
    transport: Transport,
    /// `{uri}/internal.forms/` without userinfo or query (for `Debug`).
    base: String,
    /// `enrich.max-answer-bytes`.
    max_answer_bytes: u64,
    /// Path of `{uri}/internal.forms/` (a request appends the encoded id).
    base_path: String,
    timeout: Duration,
    retry: RetryPolicy,
    ttl: Duration,
    max_entries: usize,
    max_bytes: usize,
    slots: Mutex<Cache>,
    /// The last `Date` header seen, with its time and text: answers within a second share it.
    last_date: Mutex<Option<(HeaderValue, i64, Arc<str>)>>,
    next_id: AtomicU64,
    /// Requests started and not yet answered (waiting for a connection, in flight, or waiting
    /// to retry).
    outstanding: AtomicUsize,
    consecutive_failures: AtomicU64,
    problems: Problems,
    hits: Counter,
    coalesced: Counter,
    misses: Counter,
    responses_200: Counter,
    request_duration: Histogram,
    /// Where requests run (their tasks, their connections, the answers' checks).
    requests: tokio::runtime::Handle,
}

impl Enricher {
    /// A client for `cfg`: pooled keep-alive connections, at most `enrich.connections` (one
    /// request each at a time), opened a few at a time; answers longer than `max_answer_bytes`
    /// are abandoned at that size. Requests, their connections and the checks of their answers
    /// run on `requests` (in `kafka-source`, a runtime on a thread of its own; it may be the
    /// caller's). Its problems (outage, refusals) go to `problems`.
    pub fn new(
        cfg: &EnrichConfig,
        max_answer_bytes: u64,
        problems: Problems,
        requests: tokio::runtime::Handle,
    ) -> anyhow::Result<Self> {
        let base = format!("{}/internal.forms/", cfg.uri.as_str().trim_end_matches('/'));
        let base_url =
            reqwest::Url::parse(&base).map_err(|e| anyhow::anyhow!("enrich.uri: {e}"))?;
        let transport = if base_url.scheme() == "http" {
            Transport::Http1(Http1Pool::new(
                &base_url,
                cfg.max_connections(),
                cfg.token.as_ref().map(Secret::expose),
            )?)
        } else {
            // Every request of a full window may hold a connection: keep them all idle between
            // windows (a smaller pool closes most after each burst and reopens them). New
            // connections are opened a few at a time (a window of misses at start would
            // overflow the server's accept queue and wait a SYN retransmission, 1 s).
            let client = reqwest::Client::builder()
                .http1_only()
                .pool_max_idle_per_host(cfg.max_connections())
                .connect_timeout(cfg.timeout)
                .connector_layer(ConcurrencyLimitLayer::new(MAX_CONNECTING))
                .tcp_nodelay(true)
                .build()?;
            Transport::Reqwest {
                client,
                base_url: base_url.clone(),
                token: cfg.token.clone(),
                slots: tokio::sync::Semaphore::new(cfg.max_connections()),
            }
        };
        Ok(Self {
            inner: Arc::new(Inner {
                transport,
                base_path: base_url.path().to_owned(),
                base: crate::redact::url(&base_url),
                max_answer_bytes,
                timeout: cfg.timeout,
                retry: cfg.retry.clone(),
                ttl: cfg.cache.ttl,
                max_entries: cfg.cache.max_entries,
                max_bytes: usize::try_from(cfg.cache.max_bytes.as_u64()).unwrap_or(usize::MAX),
                slots: Mutex::new(Cache::default()),
                last_date: Mutex::new(None),
                next_id: AtomicU64::new(0),
                outstanding: AtomicUsize::new(0),
                consecutive_failures: AtomicU64::new(0),
                problems,
                hits: counter!("enrich_cache_lookups_total", "result" => "hit"),
                coalesced: counter!("enrich_cache_lookups_total", "result" => "coalesced"),
                misses: counter!("enrich_cache_lookups_total", "result" => "miss"),
                responses_200: counter!("forms_api_responses_total", "status" => "200"),
                request_duration: histogram!("forms_api_request_duration_seconds"),
                requests,
            }),
        })
    }

    /// The form `id` as of an event that happened at `happened_micros`: the cached answer if
    /// it may serve it, else the request that will answer (joined if one is in flight, else
    /// started now, whether or not the caller polls it: see [`Pending`]).
    pub fn lookup(&self, id: &str, happened_micros: i64) -> Lookup {
        let mut slots = self.inner.slots.lock().expect("cache lock");
        let joined = match slots.map.get(id) {
            Some(Slot::Ready(f))
                if f.retrieved_micros >= happened_micros && f.at.elapsed() < self.inner.ttl =>
            {
                self.inner.hits.increment(1);
                return Lookup::Ready(f.clone());
            }
            Some(Slot::Loading { fut, .. }) => {
                self.inner.coalesced.increment(1);
                fut.clone()
            }
            _ => {
                self.inner.misses.increment(1);
                self.start_fetch(&mut slots, id)
            }
        };
        Lookup::Pending(Pending {
            enricher: self.clone(),
            id: id.to_owned(),
            happened_micros,
            joined,
        })
    }

    fn start_fetch(&self, slots: &mut Cache, id: &str) -> SharedFetch {
        let slot_id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let inner = self.inner.clone();
        let owned = id.to_owned();
        inner.outstanding.fetch_add(1, Ordering::Relaxed);
        let fetch = async move {
            let fetched = Arc::new(inner.fetch_with_retries(&owned).await);
            inner.store(&owned, slot_id, fetched.clone());
            inner.outstanding.fetch_sub(1, Ordering::Relaxed);
            fetched
        };
        let task = self.inner.requests.spawn(fetch);
        let fut: SharedFetch = async move { task.await.expect("fetch task never panics") }
            .boxed()
            .shared();
        slots.insert(
            id,
            Slot::Loading {
                id: slot_id,
                fut: fut.clone(),
            },
        );
        fut
    }

    /// Requests started and not yet answered (waiting for a connection, in flight, or waiting
    /// to retry).
    pub fn outstanding(&self) -> usize {
        self.inner.outstanding.load(Ordering::Relaxed)
    }

    /// Number of cached (answered) forms.
    pub fn cached(&self) -> usize {
        self.inner.slots.lock().expect("cache lock").ready
    }

    /// Estimated bytes of the cached forms (what `enrich.cache.max-bytes` bounds).
    pub fn cached_bytes(&self) -> usize {
        self.inner.slots.lock().expect("cache lock").bytes
    }
}

/// What a cached entry costs beyond its id and its answer's text (the map's slot, the
/// `Fetched`, its place in the answers' order, the allocations' headers): an estimate, for
/// `enrich.cache.max-bytes`.
pub const ENTRY_OVERHEAD: usize = 160;

/// The cache: forms by id, the answered ones in the order they were answered, and the count
/// and estimated bytes of the answered ones (kept as entries come and go, so the progress line
/// reads them without walking the map).
#[derive(Default)]
struct Cache {
    map: HashMap<Arc<str>, Slot>,
    /// Answers, oldest first. An item whose answer is no longer the map's (asked again since)
    /// is stale: skipped when it comes first, and all dropped once they outnumber the answers.
    order: VecDeque<(Arc<str>, Weak<Fetched>)>,
    bytes: usize,
    ready: usize,
}

/// Estimated bytes of a cached entry (requests in flight count nothing: they are bounded by
/// `enrich.concurrency`).
fn entry_bytes(id_len: usize, slot: &Slot) -> usize {
    match slot {
        Slot::Ready(f) => {
            ENTRY_OVERHEAD
                + id_len
                + match &f.answer {
                    Answer::Form(text) => text.len(),
                    Answer::NotFound => 0,
                    Answer::Invalid(detail) | Answer::TooLarge(detail) => detail.len(),
                }
        }
        Slot::Loading { .. } => 0,
    }
}

/// The map's answer for `id` if it is still `answer` (else `answer`'s order item is stale).
fn current<'m>(
    map: &'m HashMap<Arc<str>, Slot>,
    id: &str,
    answer: &Weak<Fetched>,
) -> Option<&'m Arc<Fetched>> {
    match map.get(id) {
        Some(Slot::Ready(f)) if std::ptr::eq(Arc::as_ptr(f), answer.as_ptr()) => Some(f),
        _ => None,
    }
}

impl Cache {
    fn insert(&mut self, id: &str, slot: Slot) {
        let key = match self.map.get_key_value(id) {
            Some((key, _)) => key.clone(),
            None => Arc::from(id),
        };
        self.bytes += entry_bytes(id.len(), &slot);
        if let Slot::Ready(f) = &slot {
            self.ready += 1;
            self.order.push_back((key.clone(), Arc::downgrade(f)));
        }
        if let Some(old) = self.map.insert(key, slot) {
            self.bytes -= entry_bytes(id.len(), &old);
            self.ready -= usize::from(matches!(old, Slot::Ready(_)));
        }
        if self.order.len() > 2 * self.ready + 1024 {
            let Cache { map, order, .. } = self;
            order.retain(|(id, answer)| current(map, id, answer).is_some());
        }
    }

    /// Drops answers, oldest first, while either bound is exceeded or the oldest has expired:
    /// a few steps per insert.
    fn evict(&mut self, max_entries: usize, max_bytes: usize, ttl: Duration) {
        let now = Instant::now();
        while let Some((id, answer)) = self.order.front() {
            let over = self.map.len() > max_entries || self.bytes > max_bytes;
            // A stale item is only popped.
            if let Some(f) = current(&self.map, id, answer) {
                if !over && now.saturating_duration_since(f.at) < ttl {
                    return;
                }
                let old = self.map.remove(&**id).expect("the current answer");
                self.bytes -= entry_bytes(id.len(), &old);
                self.ready -= 1;
            }
            self.order.pop_front();
        }
    }
}

impl Inner {
    fn store(&self, id: &str, slot_id: u64, fetched: Arc<Fetched>) {
        let mut slots = self.slots.lock().expect("cache lock");
        if let Some(Slot::Loading { id: current, .. }) = slots.map.get(id)
            && *current != slot_id
        {
            return; // a newer request replaced ours
        }
        slots.insert(id, Slot::Ready(fetched));
        slots.evict(self.max_entries, self.max_bytes, self.ttl);
    }

    async fn fetch_with_retries(&self, id: &str) -> Fetched {
        let mut attempt: u32 = 0;
        loop {
            match self.fetch_once(id).await {
                Ok(f) => {
                    if self.consecutive_failures.swap(0, Ordering::Relaxed) > 0 {
                        self.problems.set(Part::FormsApi, None);
                    }
                    return f;
                }
                Err(failure) => {
                    let n = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
                    let why = match &failure {
                        // Not a blip: flagged at once (and kept while it lasts).
                        Failure::Refused(why) => {
                            self.problems.set(
                                Part::FormsApi,
                                Some(format!("forms API: {why}; enrichment paused, retrying")),
                            );
                            why
                        }
                        Failure::Unavailable(why) => {
                            if n == 20 {
                                self.problems
                                    .set(Part::FormsApi, Some(format!("forms API failing: {why}")));
                            }
                            why
                        }
                    };
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

    /// When an answer was retrieved (its `Date` header, else the local clock), as microseconds
    /// and RFC 3339 text.
    fn retrieved(&self, date: Option<&HeaderValue>) -> (i64, Arc<str>) {
        if let Some(d) = date {
            if let Some((h, micros, text)) = &*self.last_date.lock().expect("date lock")
                && h == d
            {
                return (*micros, text.clone());
            }
            if let Some(micros) = d.to_str().ok().and_then(parse_http_date) {
                let text: Arc<str> = form_model::format_rfc3339_micros(micros).into();
                *self.last_date.lock().expect("date lock") =
                    Some((d.clone(), micros, text.clone()));
                return (micros, text);
            }
        }
        let micros = now_micros();
        (micros, form_model::format_rfc3339_micros(micros).into())
    }

    /// One request: `Ok` for a definite answer, `Err` (with why) to retry.
    async fn fetch_once(&self, id: &str) -> Result<Fetched, Failure> {
        if let Err(why) = check_form_id(id) {
            // Never sent (the source dead-letters these before asking).
            let (retrieved_micros, retrieved_text) = self.retrieved(None);
            return Ok(Fetched {
                answer: Answer::Invalid(why),
                retrieved_micros,
                retrieved_text,
                at: Instant::now(),
            });
        }
        let cap = self.max_answer_bytes;
        let mut path = String::with_capacity(self.base_path.len() + id.len() + 8);
        path.push_str(&self.base_path);
        encode_path_segment(id, &mut path);
        let started = Instant::now();
        let result = match &self.transport {
            Transport::Http1(pool) => pool.get(&path, self.timeout, cap).await,
            Transport::Reqwest {
                client,
                base_url,
                token,
                slots,
            } => {
                let _slot = slots
                    .acquire()
                    .await
                    .expect("the semaphore is never closed");
                fetch_reqwest(client, base_url, &path, token.as_ref(), self.timeout, cap).await
            }
        };
        self.request_duration
            .record(started.elapsed().as_secs_f64());
        let crate::http1::Answered {
            status,
            date,
            content_type,
            body,
        } = match result {
            Ok(x) => x,
            Err(e) => {
                counter!("forms_api_responses_total", "status" => e.kind()).increment(1);
                return Err(Failure::Unavailable(crate::redact::text(&e.to_string())));
            }
        };
        if status == 200 {
            self.responses_200.increment(1);
        } else {
            counter!("forms_api_responses_total", "status" => status.to_string()).increment(1);
        }
        let (retrieved_micros, retrieved_text) = self.retrieved(date.as_ref());
        let done = |answer| {
            Ok(Fetched {
                answer,
                retrieved_micros,
                retrieved_text,
                at: Instant::now(),
            })
        };
        let body = match body {
            Body::Whole(b) => b,
            Body::TooLarge(t) if (200..=299).contains(&status) => {
                counter!("forms_api_answers_too_large_total").increment(1);
                return done(Answer::TooLarge(too_large_detail(id, t, cap)));
            }
            // The status says it all; the body is not read.
            Body::TooLarge(_) => Bytes::new(),
        };
        match (status, classify_http_status(status)) {
            (200..=299, _) => match check_answer(id, &body) {
                Ok(answer) => done(answer),
                Err(why) => {
                    counter!("forms_api_answers_not_a_form_total").increment(1);
                    Err(Failure::Refused(format!(
                        "HTTP {status} with a body that is not a form ({}, {} bytes: {why})",
                        content_type
                            .as_ref()
                            .and_then(|v| v.to_str().ok())
                            .map_or_else(
                                || "no content-type".to_owned(),
                                |t| format!("content-type {t}")
                            ),
                        body.len()
                    )))
                }
            },
            (404, _) => done(Answer::NotFound),
            (401 | 403 | 407, _) => Err(Failure::Refused(format!(
                "HTTP {status}: the forms API refuses our credentials (check `enrich.token`)"
            ))),
            (300..=399, _) => Err(Failure::Refused(format!(
                "HTTP {status}: a redirect (check `enrich.uri`)"
            ))),
            (_, Some(ErrorClass::Transient)) => Err(Failure::Unavailable(format!("HTTP {status}"))),
            _ => done(Answer::Invalid(format!(
                "the forms API answered HTTP {status} for form `{id}`"
            ))),
        }
    }
}

/// Why a request is retried.
#[derive(Debug)]
enum Failure {
    /// The API is away or overloaded (5xx, 408, 429, timeouts, connection errors): flagged in
    /// `/health` once it lasts.
    Unavailable(String),
    /// The API answers, but not with forms (401, 403, 407, 3xx, a 2xx that is no form): flagged
    /// at once. The text names the status, never a secret.
    Refused(String),
}

/// The dead letter's detail for an answer over the cap.
fn too_large_detail(id: &str, t: TooLarge, cap: u64) -> String {
    match t.declared {
        Some(n) => format!(
            "the forms API answer for form `{id}` is {n} bytes (Content-Length), over `enrich.max-answer-bytes` ({cap} bytes): not read"
        ),
        None => format!(
            "the forms API answer for form `{id}` is over `enrich.max-answer-bytes` ({cap} bytes): abandoned after {} bytes",
            t.read
        ),
    }
}

/// Whether `id` can be requested as `{uri}/internal.forms/{id}`: every byte but the unreserved
/// ones is percent-encoded, so only the dot segments `.` and `..` would address another path
/// (clients and servers normalise them away: `/internal.forms/..` is `/`).
pub fn check_form_id(id: &str) -> Result<(), String> {
    match id {
        "." | ".." => Err(format!(
            "form_id `{id}` is a dot segment: `/internal.forms/{id}` would address another path, so it is never requested"
        )),
        _ => Ok(()),
    }
}

/// `GET path` with reqwest (`https://` APIs); a body over `max_body` bytes is abandoned there
/// (dropping the response closes its connection).
async fn fetch_reqwest(
    client: &reqwest::Client,
    base_url: &reqwest::Url,
    path: &str,
    token: Option<&Secret>,
    timeout: Duration,
    max_body: u64,
) -> Result<crate::http1::Answered, HttpError> {
    let mut url = base_url.clone();
    url.set_path(path);
    let mut req = client.get(url).timeout(timeout);
    if let Some(t) = token {
        req = req.bearer_auth(t.expose());
    }
    let result = async {
        let mut resp = req.send().await?;
        let status = resp.status().as_u16();
        let date = resp.headers().get(reqwest::header::DATE).cloned();
        let content_type = resp.headers().get(reqwest::header::CONTENT_TYPE).cloned();
        let answered = |body| crate::http1::Answered {
            status,
            date: date.clone(),
            content_type: content_type.clone(),
            body,
        };
        let mut capped = match Capped::new(max_body, resp.content_length()) {
            Ok(c) => c,
            Err(t) => return Ok(answered(Body::TooLarge(t))),
        };
        while let Some(chunk) = resp.chunk().await? {
            if let Err(t) = capped.push(chunk) {
                return Ok(answered(Body::TooLarge(t)));
            }
        }
        Ok::<_, reqwest::Error>(answered(Body::Whole(capped.finish())))
    }
    .await;
    result.map_err(|e| {
        if e.is_timeout() {
            HttpError::Timeout
        } else if e.is_connect() {
            HttpError::Connect(reqwest_error_text(e))
        } else {
            HttpError::Other(reqwest_error_text(e))
        }
    })
}

/// A reqwest error's text with its causes, without the URL (its userinfo or query could hold a
/// secret): what logs and `/health` may show.
fn reqwest_error_text(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    crate::redact::text(&text)
}

/// Checks a 2xx answer's body: a JSON form (form-model's rules) whose `id` is the requested
/// one ([`Answer::Form`], its text without insignificant whitespace), else an invalid form
/// ([`Answer::Invalid`]: a JSON object with an `id` that breaks a rule). `Err` (why) for a body
/// that is not a form at all: not JSON, or not an object with an `id` (an error page, a proxy's
/// answer): that says nothing about the form, so it is retried, not dead-lettered.
pub fn check_answer(id: &str, body: &[u8]) -> Result<Answer, String> {
    if let Some(text) = valid_form_fast(id, body) {
        return Ok(Answer::Form(text));
    }
    validate_form_slow(id, body)
}

/// The fast path of [`validate_form`]: one pass over the body that checks the JSON grammar
/// (RFC 8259) and what form-model's `validate_api_form` and [`validate_form`] require (an
/// object; `id` the requested one; `title` a string; `fields` absent, null, or an array of
/// objects with a non-empty string `id`), without copying; then the text without insignificant
/// whitespace (a plain copy of a body that has none). `Some(text)` only for an answer that is
/// certainly valid; `None` for anything else and for what it leaves to the full check (escapes
/// in the checked keys or in `id`, a duplicate checked attribute, `\u` surrogates, exponents
/// or very long numbers, deep nesting).
/// (serde_json skipping the unchecked attributes cost about as much again.)
fn valid_form_fast(id: &str, body: &[u8]) -> Option<Bytes> {
    let mut scan = Scan {
        inp: body,
        pos: 0,
        spaced: false,
    };
    scan.ws();
    scan.form(id.as_bytes())?;
    scan.ws();
    if scan.pos != body.len() {
        return None;
    }
    // Outside strings the grammar admits ASCII only: this checks the strings' UTF-8.
    std::str::from_utf8(body).ok()?;
    Some(if scan.spaced {
        Bytes::from(minify(body))
    } else {
        Bytes::copy_from_slice(body)
    })
}

/// `json` (valid) without its insignificant whitespace.
fn minify(json: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(json.len());
    let (mut in_string, mut escaped) = (false, false);
    for &b in json {
        if in_string {
            out.push(b);
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if !matches!(b, b' ' | b'\n' | b'\r' | b'\t') {
            out.push(b);
            in_string = b == b'"';
        }
    }
    out
}

/// Nesting the fast path follows (serde_json's own limit is 128).
const SCAN_MAX_DEPTH: usize = 100;

/// The reader of [`valid_form_fast`]: `inp` from `pos`; `spaced` once it skipped whitespace.
struct Scan<'a> {
    inp: &'a [u8],
    pos: usize,
    spaced: bool,
}

impl Scan<'_> {
    fn peek(&self) -> Option<u8> {
        self.inp.get(self.pos).copied()
    }

    fn ws(&mut self) {
        let start = self.pos;
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.peek() {
            self.pos += 1;
        }
        self.spaced |= self.pos != start;
    }

    fn byte(&mut self, b: u8) -> Option<()> {
        (self.peek()? == b).then(|| self.pos += 1)
    }

    fn literal(&mut self, lit: &[u8]) -> Option<()> {
        (self.inp.get(self.pos..self.pos + lit.len())? == lit).then(|| self.pos += lit.len())
    }

    /// A string: the range of its raw content and whether it has escapes.
    fn string(&mut self) -> Option<(usize, usize, bool)> {
        self.byte(b'"')?;
        let start = self.pos;
        let mut escaped = false;
        loop {
            self.pos = form_model::json_plain_end(self.inp, self.pos);
            match self.peek()? {
                b'"' => break,
                b'\\' => {
                    escaped = true;
                    match *self.inp.get(self.pos + 1)? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.pos += 2,
                        b'u' => {
                            let mut v: u32 = 0;
                            for &h in self.inp.get(self.pos + 2..self.pos + 6)? {
                                v = v * 16 + char::from(h).to_digit(16)?;
                            }
                            if (0xD800..=0xDFFF).contains(&v) {
                                return None;
                            }
                            self.pos += 6;
                        }
                        _ => return None,
                    }
                }
                0x00..=0x1F => return None,
                _ => self.pos += 1,
            }
        }
        let end = self.pos;
        self.byte(b'"')?;
        Some((start, end, escaped))
    }

    fn number(&mut self) -> Option<()> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek()? {
            b'0' => self.pos += 1,
            b'1'..=b'9' => {
                while let Some(b'0'..=b'9') = self.peek() {
                    self.pos += 1;
                }
            }
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            let digits = self.pos;
            while let Some(b'0'..=b'9') = self.peek() {
                self.pos += 1;
            }
            if self.pos == digits {
                return None;
            }
        }
        // An exponent or a very long number may be out of f64's range: serde_json decides.
        if matches!(self.peek(), Some(b'e' | b'E')) || self.pos - start > 100 {
            return None;
        }
        Some(())
    }

    fn value(&mut self, depth: usize) -> Option<()> {
        match self.peek()? {
            b'{' => self.object(depth + 1),
            b'[' => self.array(depth + 1),
            b'"' => self.string().map(|_| ()),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    /// After a member or an element: `,` (then more) or the closing `end`. `Some(true)` = more.
    fn next_or_end(&mut self, end: u8) -> Option<bool> {
        self.ws();
        match self.peek()? {
            b',' => {
                self.byte(b',')?;
                self.ws();
                Some(true)
            }
            b if b == end => {
                self.byte(end)?;
                Some(false)
            }
            _ => None,
        }
    }

    /// `"key"` `:`, returning the key's raw range and whether it has escapes.
    fn key(&mut self) -> Option<(usize, usize, bool)> {
        let k = self.string()?;
        self.ws();
        self.byte(b':')?;
        self.ws();
        Some(k)
    }

    fn object(&mut self, depth: usize) -> Option<()> {
        if depth > SCAN_MAX_DEPTH {
            return None;
        }
        self.byte(b'{')?;
        self.ws();
        if self.peek()? == b'}' {
            return self.byte(b'}');
        }
        loop {
            self.key()?;
            self.value(depth)?;
            if !self.next_or_end(b'}')? {
                return Some(());
            }
        }
    }

    fn array(&mut self, depth: usize) -> Option<()> {
        if depth > SCAN_MAX_DEPTH {
            return None;
        }
        self.byte(b'[')?;
        self.ws();
        if self.peek()? == b']' {
            return self.byte(b']');
        }
        loop {
            self.value(depth)?;
            if !self.next_or_end(b']')? {
                return Some(());
            }
        }
    }

    /// The top-level object: `id` = `id` (unescaped), `title` a string, `fields` checked.
    fn form(&mut self, id: &[u8]) -> Option<()> {
        self.byte(b'{')?;
        self.ws();
        let (mut seen_id, mut seen_title, mut seen_fields) = (false, false, false);
        loop {
            let (ks, ke, escaped) = self.key()?;
            if escaped {
                return None;
            }
            match &self.inp[ks..ke] {
                b"id" if !seen_id => {
                    seen_id = true;
                    if self.peek()? != b'"' {
                        return None;
                    }
                    let (s, e, escaped) = self.string()?;
                    if escaped || &self.inp[s..e] != id || s == e {
                        return None;
                    }
                }
                b"title" if !seen_title => {
                    seen_title = true;
                    if self.peek()? != b'"' {
                        return None;
                    }
                    self.string()?;
                }
                b"fields" if !seen_fields => {
                    seen_fields = true;
                    self.fields()?;
                }
                b"id" | b"title" | b"fields" => return None, // a duplicate
                _ => self.value(1)?,
            }
            if !self.next_or_end(b'}')? {
                break;
            }
        }
        (seen_id && seen_title).then_some(())
    }

    /// `null` or an array of fields.
    fn fields(&mut self) -> Option<()> {
        if self.peek()? == b'n' {
            return self.literal(b"null");
        }
        self.byte(b'[')?;
        self.ws();
        if self.peek()? == b']' {
            return self.byte(b']');
        }
        loop {
            self.field()?;
            if !self.next_or_end(b']')? {
                return Some(());
            }
        }
    }

    /// An object with a non-empty string `id` (top object 1, `fields` 2, this one 3).
    fn field(&mut self) -> Option<()> {
        self.byte(b'{')?;
        self.ws();
        let mut seen_id = false;
        loop {
            let (ks, ke, escaped) = self.key()?;
            if escaped {
                return None;
            }
            if &self.inp[ks..ke] == b"id" {
                if seen_id || self.peek()? != b'"' {
                    return None;
                }
                seen_id = true;
                let (s, e, _) = self.string()?;
                if s == e {
                    return None;
                }
            } else {
                self.value(3)?;
            }
            if !self.next_or_end(b'}')? {
                break;
            }
        }
        seen_id.then_some(())
    }
}

/// The full check, with form-model's messages.
fn validate_form_slow(id: &str, body: &[u8]) -> Result<Answer, String> {
    let value: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return Err(format!("not JSON: {e}")),
    };
    match &value {
        Value::Object(o) if o.contains_key("id") => {}
        Value::Object(_) => return Err("a JSON object without `id`".into()),
        other => return Err(format!("JSON {}, not an object", json_kind(other))),
    }
    if let Err(e) = form_model::validate_api_form(&value) {
        return Ok(Answer::Invalid(format!("form `{id}`: {e}")));
    }
    match value.get("id").and_then(Value::as_str) {
        Some(got) if got == id => {}
        got => {
            return Ok(Answer::Invalid(format!(
                "asked for form `{id}`, the forms API answered form `{}`",
                got.unwrap_or("")
            )));
        }
    }
    Ok(Answer::Form(Bytes::from(value.to_string())))
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
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

/// Appends `s` to `out`, percent-encoding everything but unreserved characters (form ids are
/// opaque strings).
fn encode_path_segment(s: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 15)] as char);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(text: &'static [u8], age: Duration) -> Slot {
        Slot::Ready(Arc::new(Fetched {
            answer: Answer::Form(Bytes::from_static(text)),
            retrieved_micros: 0,
            retrieved_text: Arc::from("1970-01-01T00:00:00Z"),
            at: Instant::now() - age,
        }))
    }

    fn loading(id: u64) -> Slot {
        let fut: SharedFetch = futures::future::pending().boxed().shared();
        Slot::Loading { id, fut }
    }

    const FORM: &[u8] = b"0123456789012345678901234567890123456789"; // 40 bytes
    const ENTRY: usize = ENTRY_OVERHEAD + 2 + 40; // ids "00".."99"

    #[test]
    fn cache_counts_the_bytes_of_answered_entries() {
        let mut c = Cache::default();
        c.insert("aa", loading(1));
        assert_eq!(
            (c.bytes, c.ready),
            (0, 0),
            "a request in flight counts nothing"
        );
        c.insert("aa", ready(FORM, Duration::ZERO));
        assert_eq!((c.bytes, c.ready), (ENTRY, 1));
        c.insert("aa", ready(b"{}", Duration::ZERO));
        assert_eq!(
            c.bytes,
            ENTRY_OVERHEAD + 2 + 2,
            "a replaced answer is subtracted"
        );
        assert_eq!(c.ready, 1);
        c.insert("aa", loading(2));
        assert_eq!((c.bytes, c.ready), (0, 0), "a refetch replaces the answer");
    }

    fn keys(c: &Cache) -> Vec<String> {
        let mut left: Vec<_> = c.map.keys().map(|k| k.to_string()).collect();
        left.sort();
        left
    }

    #[test]
    fn cache_evicts_the_oldest_answers_past_either_bound() {
        let ttl = Duration::from_secs(60);
        // By bytes: 100 entries, room for 50.
        let mut c = Cache::default();
        for i in 0..100 {
            c.insert(&format!("{i:02}"), ready(FORM, Duration::ZERO));
        }
        c.insert("in-flight", loading(7));
        assert_eq!(c.bytes, 100 * ENTRY);
        c.evict(1_000, 50 * ENTRY, ttl);
        assert_eq!((c.bytes, c.ready), (50 * ENTRY, 50));
        assert_eq!(c.map.len(), 50 + 1);
        assert!(matches!(c.map.get("in-flight"), Some(Slot::Loading { .. })));
        assert!(c.map.contains_key("50") && !c.map.contains_key("49"));
        let counted: usize = c.map.iter().map(|(id, s)| entry_bytes(id.len(), s)).sum();
        assert_eq!(counted, c.bytes);
        // Under both bounds: nothing happens.
        c.evict(1_000, 50 * ENTRY, ttl);
        assert_eq!(c.map.len(), 51);
        // By entries (the request in flight counts, and stays).
        c.evict(20, usize::MAX, ttl);
        assert_eq!(c.map.len(), 20);
        assert_eq!((c.bytes, c.ready), (19 * ENTRY, 19));
        assert_eq!(keys(&c)[0], "81");
    }

    #[test]
    fn cache_eviction_drops_expired_answers_even_under_the_bounds() {
        let ttl = Duration::from_secs(60);
        let mut c = Cache::default();
        for i in 0..10 {
            let age = if i < 5 { ttl * 2 } else { Duration::ZERO };
            c.insert(&format!("{i:02}"), ready(FORM, age));
        }
        c.evict(1_000, usize::MAX, ttl);
        assert_eq!(keys(&c), ["05", "06", "07", "08", "09"]);
        assert_eq!((c.bytes, c.ready), (5 * ENTRY, 5));
    }

    #[test]
    fn cache_answered_again_goes_by_its_new_answer_and_stale_order_is_dropped() {
        let ttl = Duration::from_secs(60);
        let mut c = Cache::default();
        for i in 0..4 {
            c.insert(&format!("{i:02}"), ready(FORM, Duration::ZERO));
        }
        // "00" asked again and answered: now the newest.
        c.insert("00", loading(9));
        c.insert("00", ready(FORM, Duration::ZERO));
        assert_eq!(
            c.order.len(),
            5,
            "the first answer of 00 is stale, not gone"
        );
        c.evict(3, usize::MAX, ttl);
        assert_eq!(keys(&c), ["00", "02", "03"]);
        // Many answers of the same form: the stale ones are dropped in bulk.
        for _ in 0..5_000 {
            c.insert("02", ready(FORM, Duration::ZERO));
        }
        assert_eq!(c.ready, 3);
        assert!(c.order.len() <= 2 * 3 + 1024 + 1, "{}", c.order.len());
        c.evict(1, usize::MAX, ttl);
        assert_eq!(keys(&c), ["02"]);
        assert_eq!((c.bytes, c.ready), (ENTRY, 1));
    }

    #[test]
    fn answers_are_validated() {
        let invalid = |body: &[u8], part: &str| match check_answer("a", body) {
            Ok(Answer::Invalid(d)) => assert!(d.contains(part), "{d}"),
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(body)),
        };
        invalid(br#"{"id":"b","title":"t"}"#, "answered form `b`");
        invalid(br#"{"id":"","title":"t"}"#, "non-empty");
        invalid(br#"{"id":5,"title":"t"}"#, "id");
        invalid(br#"{"id":"a","title":null}"#, "title");
        invalid(br#"{"id":"a"}"#, "title");
        invalid(
            br#"{"id":"a","title":"t","fields":[{"id":""}]}"#,
            "fields[0]",
        );
        invalid(br#"{"id":"a","title":"t","fields":{}}"#, "array");
        assert_eq!(
            check_answer("a", br#"{ "id": "a", "title": "t" }"#),
            Ok(Answer::Form(Bytes::from_static(
                br#"{"id":"a","title":"t"}"#
            )))
        );
        // Not a form at all: retried (the API is not serving forms), never dead-lettered.
        for (body, why) in [
            (&b"nope"[..], "not JSON"),
            (b"<html><body>502 Bad Gateway</body></html>", "not JSON"),
            (br#"{"id":"a","title":"t"} x"#, "not JSON"),
            (b"", "not JSON"),
            (b"[1, 2, 3]", "an array"),
            (br#""a""#, "a string"),
            (br#"{"error":"upstream timed out"}"#, "without `id`"),
            (br#"{"title":"t"}"#, "without `id`"),
        ] {
            match check_answer("a", body) {
                Err(d) => assert!(d.contains(why), "{d}"),
                other => panic!("{:?}: {other:?}", String::from_utf8_lossy(body)),
            }
        }
        // The fast path and the full check agree on valid answers.
        for body in [
            &br#"{"id":"a","title":"t \" \\ x","fields":[{"id":"f","properties":{"choices":[1, 2.5, true, null]}}],"x":{"y":[]}}"#[..],
            br#" { "id" : "a" , "title" : "\u00e9 t\ta" , "fields" : null } "#,
            "{\n  \"id\": \"a\",\n  \"title\": \"Žluťoučký kůň\"\n}\n".as_bytes(),
        ] {
            let fast = valid_form_fast("a", body).expect("valid");
            let slow: Value = serde_json::from_slice(&fast).expect("JSON");
            assert_eq!(slow, serde_json::from_slice::<Value>(body).unwrap());
            // Escapes are kept as the API wrote them; the rest is the same text.
            if !String::from_utf8_lossy(body).contains("\\u") {
                assert_eq!(Ok(Answer::Form(fast)), validate_form_slow("a", body));
            }
        }
    }

    #[test]
    fn fast_path_minifies_and_leaves_the_unsure_to_the_full_check() {
        let body = b" {\n \"id\" : \"a\", \"title\":\t\"x \\\" y\\\\\" , \"c\" : [ 1 , -2.5 , true , null , { } , \"\\u00e9\" ], \"fields\": [ {\"id\": \"f\", \"p\": {\"q\": [ ]}} ] }\r\n";
        assert_eq!(
            valid_form_fast("a", body).as_deref(),
            Some(&br#"{"id":"a","title":"x \" y\\","c":[1,-2.5,true,null,{},"\u00e9"],"fields":[{"id":"f","p":{"q":[]}}]}"#[..])
        );
        for (body, why) in [
            (&br#"{"id":"a","title":"t","n":1e3}"#[..], "exponent"),
            (br#"{"id":"a","title":"t","s":"\ud800"}"#, "surrogate"),
            (br#"{"\u0069d":"a","title":"t"}"#, "escaped key"),
            (br#"{"id":"\u0061","title":"t"}"#, "escaped id"),
            (br#"{"id":"a","id":"a","title":"t"}"#, "duplicate id"),
            (
                br#"{"id":"a","title":"t","fields":[{"id":"f","id":"g"}]}"#,
                "duplicate field id",
            ),
        ] {
            assert_eq!(valid_form_fast("a", body), None, "{why}");
            // …which the full check still takes or explains.
            let _ = check_answer("a", body);
        }
        assert!(matches!(
            check_answer("a", br#"{"id":"a","title":"t","n":1e3}"#),
            Ok(Answer::Form(_))
        ));
    }

    /// Whatever the fast path accepts, the full check accepts too, with the same JSON value and
    /// the same text as whitespace removal: random edits of valid answers.
    #[test]
    fn fast_path_never_accepts_what_the_full_check_refuses() {
        let seeds: [&[u8]; 3] = [
            r#"{"id":"a","title":"t \" x","fields":[{"id":"f","properties":{"choices":[1, 2.5, true, null, "é"]}}],"x":{"y":[]}}"#.as_bytes(),
            b" { \"id\" : \"a\" , \"title\" : \"\\u00e9 t\\ta\" , \"fields\" : null , \"n\" : -0.5 } ",
            br#"{"fields":[],"title":"","id":"a","deep":[[[{"k":[{}]}]]]}"#,
        ];
        let alphabet = b"{}[]\":,\\ \n0123456789-+.eEtrufalsnu\x01\xc3\xa9a";
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut rnd = |n: usize| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n as u64) as usize
        };
        let mut accepted = 0;
        for i in 0..30_000 {
            let mut body = seeds[i % seeds.len()].to_vec();
            for _ in 0..1 + rnd(3) {
                let at = rnd(body.len() + 1);
                let c = alphabet[rnd(alphabet.len())];
                match rnd(3) {
                    0 if at < body.len() => body[at] = c,
                    1 if at < body.len() => {
                        body.remove(at);
                    }
                    _ => body.insert(at, c),
                }
            }
            if let Some(fast) = valid_form_fast("a", &body) {
                accepted += 1;
                let value: Value =
                    serde_json::from_slice(&body).expect("fast path took invalid JSON");
                assert_eq!(serde_json::from_slice::<Value>(&fast).unwrap(), value);
                match validate_form_slow("a", &body) {
                    Ok(Answer::Form(slow)) => {
                        assert_eq!(serde_json::from_slice::<Value>(&slow).unwrap(), value)
                    }
                    other => panic!(
                        "{:?}: fast path took it, full check says {other:?}",
                        String::from_utf8_lossy(&body)
                    ),
                }
                // The text is the body without whitespace outside strings (`minify`, checked
                // on its own below): a spaced body is never taken as compact.
                assert_eq!(&fast[..], &minify(&body)[..]);
            }
        }
        assert!(
            accepted > 1_000,
            "only {accepted} edits kept the answer valid"
        );
    }

    #[test]
    fn minify_drops_whitespace_between_tokens_only() {
        for (json, compact) in [
            (&b" { \"a\" :\t[ 1 ,\r\n 2 ] } "[..], &br#"{"a":[1,2]}"#[..]),
            (br#"{"a b" : " x\ty "}"#, br#"{"a b":" x\ty "}"#),
            // An escaped quote does not end the string; an escaped backslash before the
            // closing quote does not escape it.
            (
                br#"[ "say \" hi " , "c:\\" , " " ]"#,
                br#"["say \" hi ","c:\\"," "]"#,
            ),
            ("{\"a\" : \"é ü\"}".as_bytes(), "{\"a\":\"é ü\"}".as_bytes()),
        ] {
            assert_eq!(
                String::from_utf8_lossy(&minify(json)),
                String::from_utf8_lossy(compact)
            );
        }
    }

    /// An HTTP/1.1 server on 127.0.0.1 answering every request with 200 and a body of
    /// `body_len` bytes, written 64 KiB at a time (with `Content-Length` if `declare`, else
    /// chunked), until the client goes away. Counts the body bytes it managed to write.
    async fn big_server(declare: bool, body_len: usize) -> (String, Arc<AtomicU64>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let written = Arc::new(AtomicU64::new(0));
        let counted = written.clone();
        tokio::spawn(async move {
            loop {
                let (mut sock, _) = listener.accept().await.unwrap();
                let written = counted.clone();
                tokio::spawn(async move {
                    let mut req = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => req.extend_from_slice(&buf[..n]),
                        }
                    }
                    let framing = if declare {
                        format!("content-length: {body_len}")
                    } else {
                        "transfer-encoding: chunked".to_owned()
                    };
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n{framing}\r\n\r\n"
                    );
                    if sock.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    let chunk = vec![b'x'; 64 * 1024];
                    let mut left = body_len;
                    while left > 0 {
                        let n = left.min(chunk.len());
                        let r = if declare {
                            sock.write_all(&chunk[..n]).await
                        } else {
                            let mut c = format!("{n:x}\r\n").into_bytes();
                            c.extend_from_slice(&chunk[..n]);
                            c.extend_from_slice(b"\r\n");
                            sock.write_all(&c).await
                        };
                        if r.is_err() {
                            return;
                        }
                        written.fetch_add(n as u64, Ordering::Relaxed);
                        left -= n;
                    }
                    if !declare {
                        let _ = sock.write_all(b"0\r\n\r\n").await;
                    }
                });
            }
        });
        (format!("http://127.0.0.1:{}", addr.port()), written)
    }

    /// Waits (5 s at most) until the server has stopped writing (the client dropped the
    /// connection), and returns what it wrote.
    async fn settled(written: &AtomicU64) -> u64 {
        let mut last = u64::MAX;
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = written.load(Ordering::Relaxed);
            if now == last {
                return now;
            }
            last = now;
        }
        panic!("the server kept writing: the connection was not dropped");
    }

    const CAP: u64 = 1_000_000;
    const HUGE: usize = 100_000_000;

    fn assert_abandoned(body: Body, declared: bool) {
        match body {
            Body::TooLarge(t) if declared => {
                assert_eq!(
                    t,
                    TooLarge {
                        declared: Some(HUGE as u64),
                        read: 0
                    }
                )
            }
            Body::TooLarge(t) => {
                assert_eq!(t.declared, None);
                assert!(
                    t.read > CAP && t.read <= CAP + 64 * 1024 + 16 * 1024,
                    "{t:?}"
                );
            }
            Body::Whole(b) => panic!("took a body of {} bytes", b.len()),
        }
    }

    /// Both transports read a body as a stream and drop it (and its connection) at the cap,
    /// whether or not its length was declared; a body under the cap is taken whole.
    #[tokio::test]
    async fn bodies_over_the_cap_are_abandoned_at_the_cap_on_both_transports() {
        for declare in [false, true] {
            let (base, written) = big_server(declare, HUGE).await;
            let url: url::Url = format!("{base}/internal.forms/").parse().unwrap();
            let pool = Http1Pool::new(&url, 4, None).unwrap();
            let a = pool
                .get("/internal.forms/x", Duration::from_secs(20), CAP)
                .await
                .unwrap();
            assert_eq!(a.status, 200);
            assert_abandoned(a.body, declare);
            let sent = settled(&written).await;
            assert!(
                sent < HUGE as u64 / 4,
                "http1 (declared {declare}): server wrote {sent}"
            );

            let (base, written) = big_server(declare, HUGE).await;
            let client = reqwest::Client::builder().build().unwrap();
            let url = reqwest::Url::parse(&format!("{base}/internal.forms/")).unwrap();
            let a = fetch_reqwest(
                &client,
                &url,
                "/internal.forms/x",
                None,
                Duration::from_secs(20),
                CAP,
            )
            .await
            .unwrap();
            assert_abandoned(a.body, declare);
            let sent = settled(&written).await;
            assert!(
                sent < HUGE as u64 / 4,
                "reqwest (declared {declare}): server wrote {sent}"
            );
        }
        // Under the cap: whole, on both.
        for declare in [false, true] {
            let (base, _) = big_server(declare, 200_000).await;
            let url: url::Url = format!("{base}/internal.forms/").parse().unwrap();
            let pool = Http1Pool::new(&url, 4, None).unwrap();
            let a = pool
                .get("/internal.forms/x", Duration::from_secs(20), CAP)
                .await
                .unwrap();
            assert!(matches!(a.body, Body::Whole(b) if b.len() == 200_000));
            let client = reqwest::Client::builder().build().unwrap();
            let url = reqwest::Url::parse(&format!("{base}/internal.forms/")).unwrap();
            let a = fetch_reqwest(
                &client,
                &url,
                "/internal.forms/x",
                None,
                Duration::from_secs(20),
                CAP,
            )
            .await
            .unwrap();
            assert!(matches!(a.body, Body::Whole(b) if b.len() == 200_000));
        }
    }

    #[test]
    fn dot_segments_are_refused_other_ids_are_encoded() {
        for id in [".", ".."] {
            let why = check_form_id(id).unwrap_err();
            assert!(why.contains("dot segment"), "{why}");
        }
        for id in ["...", "../x", "a?b=c", "%2e%2e", "é/ü", ".a", "a."] {
            assert_eq!(check_form_id(id), Ok(()), "{id}");
        }
        let mut s = String::from("/x/");
        encode_path_segment("../x", &mut s);
        assert_eq!(s, "/x/..%2Fx");
        let mut s = String::from("/x/");
        encode_path_segment("%2e%2e", &mut s);
        assert_eq!(s, "/x/%252e%252e");
    }

    fn enrich_config(uri: &str) -> EnrichConfig {
        serde_json::from_value(serde_json::json!({ "uri": uri })).unwrap()
    }

    #[tokio::test]
    async fn debug_shows_no_userinfo_or_query() {
        for uri in [
            "https://bob:s3cret@forms.example.com/api",
            "http://bob:s3cret@127.0.0.1:8000",
        ] {
            let e = Enricher::new(
                &enrich_config(uri),
                CAP,
                Problems::new(connector_common::telemetry::Health::default()),
                tokio::runtime::Handle::current(),
            )
            .unwrap();
            let d = format!("{e:?}");
            assert!(!d.contains("s3cret") && !d.contains("bob"), "{d}");
            assert!(d.contains("/internal.forms/"), "{d}");
        }
    }

    /// reqwest's error text names the URL, userinfo and query included: what we keep of it
    /// does not.
    #[tokio::test]
    async fn transport_errors_carry_no_userinfo_or_query() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        }; // closed again: connection refused
        let client = reqwest::Client::builder().build().unwrap();
        let url = reqwest::Url::parse(&format!(
            "http://bob:s3cret@127.0.0.1:{port}/internal.forms/"
        ))
        .unwrap();
        // Not a URL we send (config refuses a query), but if one had it…
        let mut with_query = url.clone();
        with_query.set_query(Some("token=t0k3n"));
        for (base, path) in [
            (&url, "/internal.forms/x"),
            (&with_query, "/internal.forms/x"),
        ] {
            let err = fetch_reqwest(&client, base, path, None, Duration::from_secs(5), CAP)
                .await
                .unwrap_err();
            let text = err.to_string();
            assert!(matches!(err, HttpError::Connect(_)), "{text}");
            for secret in ["s3cret", "bob", "t0k3n"] {
                assert!(!text.contains(secret), "{secret} in {text:?}");
            }
            assert!(text.contains("connect"), "{text}");
        }
    }

    #[test]
    fn http_date() {
        assert_eq!(
            parse_http_date("Sun, 02 Oct 2022 13:00:16 GMT"),
            Some(1_664_715_616_000_000)
        );
        assert_eq!(parse_http_date("yesterday"), None);
        let mut s = String::from("/x/");
        encode_path_segment("ab/c d\u{e9}", &mut s);
        assert_eq!(s, "/x/ab%2Fc%20d%C3%A9");
    }
}

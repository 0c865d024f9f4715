//! Runtime fault injection and request counters.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper::body::{Frame, SizeHint};
use serde::{Deserialize, Serialize};

/// What `PUT /faults` sets. Missing attributes take their default (no fault), so a PUT always
/// describes the whole fault state.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct Faults {
    /// Added to every answer of `/internal.forms/{id}`.
    pub(crate) latency_ms: u64,
    /// Share of requests answered 500.
    pub(crate) error_500_ratio: f64,
    /// Share of requests answered 429 (with `Retry-After: 1`).
    pub(crate) error_429_ratio: f64,
    /// Share of requests never answered (the client has to give up).
    pub(crate) hang_ratio: f64,
    /// Full outage.
    pub(crate) outage: Outage,
    /// What `/internal.forms/{id}` answers in place of every 200 (a form or a 404 alike).
    pub(crate) bad_answer: BadAnswer,
    /// Whether ids `sized-{N}` and `sized-chunked-{N}` are answered with a valid form of exactly
    /// `N` bytes (streamed, never held in memory), with a `Content-Length` or chunked.
    pub(crate) sized_forms: bool,
}

/// Answers that are not forms (the API refusing us, a proxy in the way).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum BadAnswer {
    /// Normal service.
    #[default]
    None,
    /// 401 with `WWW-Authenticate: Bearer` (an expired token).
    Unauthorized,
    /// 403 (a token without the right to read forms).
    Forbidden,
    /// 200 with an HTML error page (a proxy answering for the API).
    Html,
}

/// A full outage of the API port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Outage {
    /// Normal service.
    #[default]
    None,
    /// The API port stops listening and open connections are dropped (connection refused).
    Refuse,
    /// Every answer (including `/health`) is 503.
    Unavailable,
}

/// What to do with one request.
#[derive(Debug, PartialEq)]
pub(crate) enum Decision {
    Unavailable,
    Hang,
    Answer { delay: Duration, status: StatusCode },
}

impl Faults {
    pub(crate) fn validate(&self) -> Result<(), String> {
        for (name, v) in [
            ("error_500_ratio", self.error_500_ratio),
            ("error_429_ratio", self.error_429_ratio),
            ("hang_ratio", self.hang_ratio),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("`{name}` must be between 0.0 and 1.0, got {v}"));
            }
        }
        if self.error_500_ratio + self.error_429_ratio + self.hang_ratio > 1.0 + 1e-9 {
            return Err(
                "`error_500_ratio` + `error_429_ratio` + `hang_ratio` must not exceed 1.0".into(),
            );
        }
        Ok(())
    }

    /// Draws the fate of one request: one uniform number splits into hang / 500 / 429 / OK.
    pub(crate) fn decide(&self) -> Decision {
        if self.outage == Outage::Unavailable {
            return Decision::Unavailable;
        }
        let delay = Duration::from_millis(self.latency_ms);
        let any = self.hang_ratio + self.error_500_ratio + self.error_429_ratio;
        if any <= 0.0 {
            return Decision::Answer {
                delay,
                status: StatusCode::OK,
            };
        }
        let x: f64 = rand::random();
        if x < self.hang_ratio {
            Decision::Hang
        } else if x < self.hang_ratio + self.error_500_ratio {
            Decision::Answer {
                delay,
                status: StatusCode::INTERNAL_SERVER_ERROR,
            }
        } else if x < any {
            Decision::Answer {
                delay,
                status: StatusCode::TOO_MANY_REQUESTS,
            }
        } else {
            Decision::Answer {
                delay,
                status: StatusCode::OK,
            }
        }
    }
}

/// The HTML page of [`BadAnswer::Html`].
const HTML_PAGE: &str = "<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head>\n<body><h1>502 Bad Gateway</h1><p>The upstream server is not responding.</p></body></html>\n";

/// The answer `faults` put in place of a 200 for `id`, if any.
pub(crate) fn special_answer(faults: &Faults, id: &str) -> Option<Response> {
    let json_error = |status: StatusCode, message: &str| {
        let body = serde_json::json!({ "error": message }).to_string();
        (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
    };
    match faults.bad_answer {
        BadAnswer::None => {}
        BadAnswer::Unauthorized => {
            let mut r = json_error(StatusCode::UNAUTHORIZED, "invalid or expired token");
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer error=\"invalid_token\""),
            );
            return Some(r);
        }
        BadAnswer::Forbidden => {
            return Some(json_error(
                StatusCode::FORBIDDEN,
                "not allowed to read forms",
            ));
        }
        BadAnswer::Html => {
            return Some(
                (
                    StatusCode::OK,
                    [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
                    HTML_PAGE,
                )
                    .into_response(),
            );
        }
    }
    if faults.sized_forms {
        let (len, exact) = if let Some(n) = id.strip_prefix("sized-chunked-") {
            (n.parse().ok()?, false)
        } else {
            (id.strip_prefix("sized-")?.parse().ok()?, true)
        };
        return Some(
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                axum::body::Body::new(SizedForm::new(id, len, exact)),
            )
                .into_response(),
        );
    }
    None
}

/// Padding, served by reference.
static PAD: [u8; 64 * 1024] = [b'x'; 64 * 1024];

/// A valid form of `len` bytes (at least its head and tail): `{"id":…,"title":…,"padding":"xx…"}`,
/// produced 64 KiB at a time.
#[derive(Debug)]
struct SizedForm {
    head: Option<Bytes>,
    padding: u64,
    tail: Option<Bytes>,
    total: u64,
    exact: bool,
}

impl SizedForm {
    fn new(id: &str, len: u64, exact: bool) -> Self {
        let head = format!(
            "{{\"id\":{},\"title\":\"a form of {len} bytes\",\"padding\":\"",
            serde_json::Value::from(id)
        );
        let tail = "\"}";
        let padding = len.saturating_sub((head.len() + tail.len()) as u64);
        Self {
            total: head.len() as u64 + padding + tail.len() as u64,
            head: Some(Bytes::from(head)),
            padding,
            tail: Some(Bytes::from_static(tail.as_bytes())),
            exact,
        }
    }
}

impl hyper::body::Body for SizedForm {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let chunk = if let Some(h) = self.head.take() {
            h
        } else if self.padding > 0 {
            let n = self.padding.min(PAD.len() as u64) as usize;
            self.padding -= n as u64;
            Bytes::from_static(&PAD[..n])
        } else if let Some(t) = self.tail.take() {
            t
        } else {
            return Poll::Ready(None);
        };
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.head.is_none() && self.padding == 0 && self.tail.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        if self.exact {
            SizeHint::with_exact(self.total)
        } else {
            SizeHint::default()
        }
    }
}

/// Counters of `/internal.forms/{id}` requests, as `GET /stats` shows them.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    inner: Mutex<StatsSnapshot>,
}

#[derive(Debug, Default, Clone, Serialize)]
pub(crate) struct StatsSnapshot {
    requests_total: u64,
    by_id: HashMap<String, u64>,
    by_status: BTreeMap<String, u64>,
}

impl Stats {
    /// Counts a request for `id`; `status` is `None` for a request that will never be answered.
    pub(crate) fn record(&self, id: &str, status: Option<StatusCode>) {
        let mut s = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        s.requests_total += 1;
        match s.by_id.get_mut(id) {
            Some(n) => *n += 1,
            None => {
                s.by_id.insert(id.to_owned(), 1);
            }
        }
        let code;
        let key = match status {
            Some(st) => {
                code = st;
                code.as_str()
            }
            None => "hang",
        };
        match s.by_status.get_mut(key) {
            Some(n) => *n += 1,
            None => {
                s.by_status.insert(key.to_owned(), 1);
            }
        }
    }

    pub(crate) fn snapshot(&self) -> StatsSnapshot {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn clear(&self) {
        *self.inner.lock().unwrap_or_else(|e| e.into_inner()) = StatsSnapshot::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_partial_and_reject_unknown() {
        let f: Faults = serde_json::from_str(r#"{"error_500_ratio":1.0}"#).unwrap();
        assert_eq!(f.error_500_ratio, 1.0);
        assert_eq!(f.outage, Outage::None);
        let f: Faults = serde_json::from_str(r#"{"outage":"refuse"}"#).unwrap();
        assert_eq!(f.outage, Outage::Refuse);
        assert!(serde_json::from_str::<Faults>(r#"{"latency":1}"#).is_err());
        assert!(serde_json::from_str::<Faults>(r#"{"outage":"down"}"#).is_err());
        let f: Faults =
            serde_json::from_str(r#"{"bad_answer":"unauthorized","sized_forms":true}"#).unwrap();
        assert_eq!(f.bad_answer, BadAnswer::Unauthorized);
        assert!(f.sized_forms);
        for (text, want) in [
            ("none", BadAnswer::None),
            ("forbidden", BadAnswer::Forbidden),
            ("html", BadAnswer::Html),
        ] {
            let f: Faults = serde_json::from_str(&format!(r#"{{"bad_answer":"{text}"}}"#)).unwrap();
            assert_eq!(f.bad_answer, want);
        }
        assert!(serde_json::from_str::<Faults>(r#"{"bad_answer":"teapot"}"#).is_err());
    }

    async fn body_of(r: Response) -> (StatusCode, Option<String>, Option<u64>, Vec<u8>) {
        let status = r.status();
        let ct = r
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned());
        let body = r.into_body();
        let exact = axum::body::HttpBody::size_hint(&body).exact();
        let bytes = axum::body::to_bytes(body, usize::MAX)
            .await
            .unwrap()
            .to_vec();
        (status, ct, exact, bytes)
    }

    #[tokio::test]
    async fn bad_answers_and_sized_forms() {
        let none = Faults::default();
        assert!(special_answer(&none, "abcde").is_none());
        assert!(
            special_answer(&none, "sized-100").is_none(),
            "sized forms are off by default"
        );
        let f = |bad_answer| Faults {
            bad_answer,
            ..Faults::default()
        };
        let (st, _, _, _) =
            body_of(special_answer(&f(BadAnswer::Unauthorized), "a").unwrap()).await;
        assert_eq!(st, StatusCode::UNAUTHORIZED);
        let (st, _, _, _) = body_of(special_answer(&f(BadAnswer::Forbidden), "a").unwrap()).await;
        assert_eq!(st, StatusCode::FORBIDDEN);
        let (st, ct, _, body) = body_of(special_answer(&f(BadAnswer::Html), "a").unwrap()).await;
        assert_eq!(
            (st, ct.as_deref()),
            (StatusCode::OK, Some("text/html; charset=utf-8"))
        );
        assert!(serde_json::from_slice::<serde_json::Value>(&body).is_err());

        let sized = Faults {
            sized_forms: true,
            ..Faults::default()
        };
        for (id, len, exact) in [
            ("sized-1200000", 1_200_000u64, Some(1_200_000)),
            ("sized-chunked-300000", 300_000, None),
            ("sized-10", 0, Some(0)), // smaller than a form: as small as a form gets
        ] {
            let (st, _, hint, body) = body_of(special_answer(&sized, id).unwrap()).await;
            assert_eq!(st, StatusCode::OK);
            if len > 0 {
                assert_eq!(body.len() as u64, len, "{id}");
            }
            assert_eq!(hint, exact.map(|_| body.len() as u64), "{id}");
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["id"], id);
            assert!(v["title"].is_string());
        }
        assert!(special_answer(&sized, "sized-x").is_none());
        assert!(special_answer(&sized, "form-000001").is_none());
    }

    #[test]
    fn validate_ranges() {
        let f = Faults {
            error_500_ratio: 1.5,
            ..Faults::default()
        };
        assert!(f.validate().is_err());
        let f = Faults {
            error_500_ratio: 0.6,
            error_429_ratio: 0.6,
            ..Faults::default()
        };
        assert!(f.validate().is_err());
        assert!(Faults::default().validate().is_ok());
    }

    #[test]
    fn certain_faults_are_certain() {
        let ok = Faults::default();
        assert_eq!(
            ok.decide(),
            Decision::Answer {
                delay: Duration::ZERO,
                status: StatusCode::OK
            }
        );
        let e500 = Faults {
            error_500_ratio: 1.0,
            latency_ms: 5,
            ..Faults::default()
        };
        assert_eq!(
            e500.decide(),
            Decision::Answer {
                delay: Duration::from_millis(5),
                status: StatusCode::INTERNAL_SERVER_ERROR
            }
        );
        let hang = Faults {
            hang_ratio: 1.0,
            ..Faults::default()
        };
        assert_eq!(hang.decide(), Decision::Hang);
        let unavailable = Faults {
            outage: Outage::Unavailable,
            ..Faults::default()
        };
        assert_eq!(unavailable.decide(), Decision::Unavailable);
    }
}

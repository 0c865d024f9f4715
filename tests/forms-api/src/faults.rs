//! Runtime fault injection and request counters.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use axum::http::StatusCode;
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

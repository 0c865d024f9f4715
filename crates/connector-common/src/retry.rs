//! Retry policy (exponential backoff with jitter) and error classification.
//!
//! Classify every error once, where it comes out of a dependency: [`ErrorClass`] says whether
//! retrying can help. The policy then says how long to wait.

use std::time::Duration;

use rand::Rng;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use serde::Deserialize;

use crate::config::ConfigError;

/// Default first backoff: short enough that a single 500 costs little.
pub const DEFAULT_INITIAL_BACKOFF: Duration = Duration::from_millis(100);
/// Default cap: a down service is probed about every 5 s per waiting request.
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Default growth factor.
pub const DEFAULT_MULTIPLIER: f64 = 2.0;
/// Default jitter: each delay is reduced by up to 30 % at random.
pub const DEFAULT_JITTER: f64 = 0.3;

/// Exponential backoff with jitter: attempt `n` (0-based) waits
/// `min(initial * multiplier^n, max) * (1 - jitter * U[0,1))`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// Wait before the first retry.
    #[serde(with = "crate::duration")]
    pub initial_backoff: Duration,
    /// Longest wait between two attempts.
    #[serde(with = "crate::duration")]
    pub max_backoff: Duration,
    /// Growth factor per attempt (≥ 1).
    pub multiplier: f64,
    /// Random reduction of each wait, 0.0 (none) … 1.0 (full jitter).
    pub jitter: f64,
    /// Give up after this many attempts in total; absent = retry for ever.
    pub max_attempts: Option<u32>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            initial_backoff: DEFAULT_INITIAL_BACKOFF,
            max_backoff: DEFAULT_MAX_BACKOFF,
            multiplier: DEFAULT_MULTIPLIER,
            jitter: DEFAULT_JITTER,
            max_attempts: None,
        }
    }
}

impl RetryPolicy {
    /// Checks the values; `prefix` is this section's key path.
    pub fn validate(&self, prefix: &str) -> Result<(), ConfigError> {
        if self.multiplier.is_nan() || self.multiplier < 1.0 {
            return Err(ConfigError::invalid(
                format!("{prefix}.multiplier"),
                format!("must be at least 1.0 (got {})", self.multiplier),
            ));
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(ConfigError::invalid(
                format!("{prefix}.jitter"),
                format!("must be between 0.0 and 1.0 (got {})", self.jitter),
            ));
        }
        if self.initial_backoff.is_zero() || self.initial_backoff > self.max_backoff {
            return Err(ConfigError::invalid(
                format!("{prefix}.initial-backoff"),
                "must be greater than zero and at most `max-backoff`",
            ));
        }
        if self.max_attempts == Some(0) {
            return Err(ConfigError::invalid(
                format!("{prefix}.max-attempts"),
                "must be at least 1 (or absent: retry for ever)",
            ));
        }
        Ok(())
    }

    /// The wait after failed attempt `attempt` (0 = the first attempt failed).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let base =
            self.initial_backoff.as_secs_f64() * self.multiplier.powi(attempt.min(64) as i32);
        let capped = base.min(self.max_backoff.as_secs_f64());
        let factor = 1.0 - self.jitter * rand::rng().random::<f64>();
        Duration::from_secs_f64(capped * factor)
    }

    /// Whether attempt number `attempts` (1-based count of attempts made) may be followed by another.
    pub fn may_retry(&self, attempts: u32) -> bool {
        self.max_attempts.is_none_or(|max| attempts < max)
    }
}

/// Attempts a permanent error gets (whatever `max-attempts` says, if it says more): a few, in
/// case the error was a passing state of the other side (a bucket just created, a policy being
/// applied), then the caller gives up and reports it.
pub const PERMANENT_ATTEMPTS: u32 = 5;

/// An error that [`RetryPolicy::run`] can classify.
pub trait Classify {
    /// Whether retrying can help.
    fn class(&self) -> ErrorClass;
}

/// [`RetryPolicy::run`] gave up: the last error and how many attempts were made.
#[derive(Debug)]
pub struct GaveUp<E> {
    /// Attempts made, the last one included.
    pub attempts: u32,
    /// The last attempt's error.
    pub error: E,
}

impl RetryPolicy {
    /// Runs `op` until it succeeds or the policy gives up: [`ErrorClass::Transient`] errors are
    /// retried up to `max-attempts` attempts in all (absent: for ever, so an outage stalls the
    /// caller rather than failing it), [`ErrorClass::Permanent`] ones up to
    /// [`PERMANENT_ATTEMPTS`] (or `max-attempts` if lower), [`ErrorClass::Fatal`] ones not at all.
    /// Failures are counted (`component_errors_total{error_type=what}`) and logged: the first,
    /// then every power of two. `what` names the operation, `subject` its object (a key, an id).
    pub async fn run<T, E, F, Fut>(
        &self,
        what: &str,
        subject: &str,
        mut op: F,
    ) -> Result<T, GaveUp<E>>
    where
        E: Classify + std::fmt::Display,
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, E>>,
    {
        let mut attempts = 0u32;
        loop {
            attempts = attempts.saturating_add(1);
            let error = match op().await {
                Ok(v) => {
                    if attempts > 1 {
                        tracing::info!(what, subject, attempts, "Succeeded after retries.");
                    }
                    return Ok(v);
                }
                Err(e) => e,
            };
            let class = error.class();
            metrics::counter!("component_errors_total", "error_type" => what.to_owned(), "stage" => "sending")
                .increment(1);
            let give_up = match class {
                ErrorClass::Fatal => true,
                ErrorClass::Permanent => {
                    attempts >= PERMANENT_ATTEMPTS || !self.may_retry(attempts)
                }
                ErrorClass::Transient => !self.may_retry(attempts),
            };
            if give_up {
                tracing::error!(what, subject, attempts, ?class, %error, "Giving up.");
                return Err(GaveUp { attempts, error });
            }
            if attempts == 1 || attempts.is_power_of_two() {
                tracing::warn!(what, subject, attempts, ?class, %error, "Failed; retrying with backoff.");
            }
            tokio::time::sleep(self.backoff(attempts - 1)).await;
        }
    }
}

/// Who must act on an error, and whether retrying helps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The other side is (maybe) temporarily unavailable: retry with backoff.
    Transient,
    /// The request or data is wrong: retrying gives the same answer. Dead-letter or report.
    Permanent,
    /// This process cannot continue (fenced, misconfigured): exit and let it be restarted.
    Fatal,
}

/// Classifies an HTTP status: `None` for success (2xx/3xx); 408, 429 and 5xx are
/// [`ErrorClass::Transient`]; other 4xx are [`ErrorClass::Permanent`].
pub fn classify_http_status(status: u16) -> Option<ErrorClass> {
    match status {
        0..=399 => None,
        408 | 429 => Some(ErrorClass::Transient),
        500..=599 => Some(ErrorClass::Transient),
        _ => Some(ErrorClass::Permanent),
    }
}

/// Classifies a Kafka client error.
pub fn classify_kafka(err: &KafkaError) -> ErrorClass {
    if let KafkaError::Transaction(e) = err {
        if e.is_fatal() {
            return ErrorClass::Fatal;
        }
        if e.is_retriable() {
            return ErrorClass::Transient;
        }
        return ErrorClass::Permanent;
    }
    match err.rdkafka_error_code() {
        Some(code) => classify_kafka_code(code),
        None => ErrorClass::Permanent,
    }
}

/// Classifies a librdkafka error code.
pub fn classify_kafka_code(code: RDKafkaErrorCode) -> ErrorClass {
    use RDKafkaErrorCode as C;
    match code {
        C::Fatal
        | C::ProducerFenced
        | C::InvalidProducerEpoch
        | C::TopicAuthorizationFailed
        | C::GroupAuthorizationFailed
        | C::ClusterAuthorizationFailed
        | C::TransactionalIdAuthorizationFailed
        | C::SaslAuthenticationFailed
        | C::Authentication => ErrorClass::Fatal,
        C::BrokerTransportFailure
        | C::AllBrokersDown
        | C::MessageTimedOut
        | C::RequestTimedOut
        | C::OperationTimedOut
        | C::TimedOutQueue
        | C::QueueFull
        | C::NetworkException
        | C::LeaderNotAvailable
        | C::NotLeaderForPartition
        | C::NotEnoughReplicas
        | C::NotEnoughReplicasAfterAppend
        | C::CoordinatorLoadInProgress
        | C::CoordinatorNotAvailable
        | C::NotCoordinator
        | C::ConcurrentTransactions
        | C::Resolve
        | C::UnknownTopicOrPartition
        | C::KafkaStorageError
        | C::OutOfOrderSequenceNumber
        | C::RebalanceInProgress => ErrorClass::Transient,
        _ => ErrorClass::Permanent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let p = RetryPolicy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            multiplier: 2.0,
            jitter: 0.5,
            max_attempts: Some(3),
        };
        for _ in 0..100 {
            let d0 = p.backoff(0);
            assert!(d0 <= Duration::from_millis(100) && d0 >= Duration::from_millis(50));
            let d3 = p.backoff(3);
            assert!(d3 <= Duration::from_millis(800) && d3 >= Duration::from_millis(400));
            let d20 = p.backoff(20);
            assert!(d20 <= Duration::from_secs(1) && d20 >= Duration::from_millis(500));
        }
        assert!(p.may_retry(2));
        assert!(!p.may_retry(3));
        assert!(RetryPolicy::default().may_retry(1_000_000));
    }

    #[derive(Debug)]
    struct E(ErrorClass);
    impl std::fmt::Display for E {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{:?}", self.0)
        }
    }
    impl Classify for E {
        fn class(&self) -> ErrorClass {
            self.0
        }
    }

    fn quick(max_attempts: Option<u32>) -> RetryPolicy {
        RetryPolicy {
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(1),
            max_attempts,
            ..RetryPolicy::default()
        }
    }

    /// Runs an operation failing `fails` times with `class`, then succeeding; the attempts made.
    async fn attempts(p: &RetryPolicy, class: ErrorClass, fails: u32) -> Result<u32, u32> {
        let mut n = 0;
        p.run("test_op", "x", || {
            n += 1;
            let r = if n <= fails { Err(E(class)) } else { Ok(n) };
            async move { r }
        })
        .await
        .map_err(|g| g.attempts)
    }

    #[tokio::test]
    async fn run_retries_by_class_and_honours_max_attempts() {
        // Transient: for ever by default, bounded by max-attempts.
        assert_eq!(
            attempts(&quick(None), ErrorClass::Transient, 20).await,
            Ok(21)
        );
        assert_eq!(
            attempts(&quick(Some(3)), ErrorClass::Transient, 20).await,
            Err(3)
        );
        assert_eq!(
            attempts(&quick(Some(3)), ErrorClass::Transient, 2).await,
            Ok(3)
        );
        // Permanent: a few attempts whatever max-attempts says.
        assert_eq!(
            attempts(&quick(None), ErrorClass::Permanent, 20).await,
            Err(PERMANENT_ATTEMPTS)
        );
        assert_eq!(
            attempts(&quick(Some(2)), ErrorClass::Permanent, 20).await,
            Err(2)
        );
        assert_eq!(
            attempts(&quick(None), ErrorClass::Permanent, 1).await,
            Ok(2)
        );
        // Fatal: never retried.
        assert_eq!(attempts(&quick(None), ErrorClass::Fatal, 1).await, Err(1));
    }

    #[test]
    fn http_classes() {
        assert_eq!(classify_http_status(200), None);
        assert_eq!(classify_http_status(404), Some(ErrorClass::Permanent));
        assert_eq!(classify_http_status(408), Some(ErrorClass::Transient));
        assert_eq!(classify_http_status(429), Some(ErrorClass::Transient));
        assert_eq!(classify_http_status(503), Some(ErrorClass::Transient));
        assert_eq!(classify_http_status(400), Some(ErrorClass::Permanent));
    }
}

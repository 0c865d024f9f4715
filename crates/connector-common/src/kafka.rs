//! The `kafka:` section both connectors embed, and building an rdkafka `ClientConfig` from it.

use std::collections::BTreeMap;
use std::fmt;

use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use serde::Deserialize;

use crate::config::ConfigError;

/// Kafka connection and topic. TLS, SASL and any other librdkafka setting go in `properties`
/// (values may use `${{ secrets.NAME }}`), e.g. `security.protocol: SASL_SSL`,
/// `sasl.mechanism: SCRAM-SHA-512`, `sasl.username`, `sasl.password`, `ssl.ca.location`.
#[derive(Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma separated (`bootstrap.servers`).
    pub brokers: String,
    /// The Kafka topic: the one a source consumes, or the one a sink reads.
    pub topic: String,
    /// Consumer group id (`group.id`); defaults to `meta.name`.
    #[serde(default)]
    pub group: Option<String>,
    /// librdkafka properties passed through unchanged (to consumer and producer alike).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

/// Property keys whose values are never printed.
fn is_sensitive(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    ["password", "secret", "key", "token", "jaas", "oauthbearer"]
        .iter()
        .any(|w| k.contains(w))
}

impl fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let props: BTreeMap<&str, &str> = self
            .properties
            .iter()
            .map(|(k, v)| {
                let v = if is_sensitive(k) { "****" } else { v.as_str() };
                (k.as_str(), v)
            })
            .collect();
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("topic", &self.topic)
            .field("group", &self.group)
            .field("properties", &props)
            .finish()
    }
}

impl KafkaConfig {
    /// Checks values; `prefix` is this section's key (`kafka`).
    pub fn validate(&self, prefix: &str) -> Result<(), ConfigError> {
        if self.brokers.trim().is_empty() {
            return Err(ConfigError::invalid(
                format!("{prefix}.brokers"),
                "must list at least one broker, e.g. `127.0.0.1:9092`",
            ));
        }
        if self.topic.trim().is_empty() {
            return Err(ConfigError::invalid(
                format!("{prefix}.topic"),
                "must not be empty",
            ));
        }
        for reserved in ["bootstrap.servers", "group.id"] {
            if self.properties.contains_key(reserved) {
                return Err(ConfigError::invalid(
                    format!("{prefix}.properties.{reserved}"),
                    "is set from `brokers`/`group`; remove it from `properties`",
                ));
            }
        }
        Ok(())
    }

    /// The group id: `group`, else `default`.
    pub fn group_or<'a>(&'a self, default: &'a str) -> &'a str {
        self.group.as_deref().unwrap_or(default)
    }

    /// A client config with `bootstrap.servers` and every passthrough property set.
    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }
}

/// How long a consumer may take to leave its group at exit.
pub const CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Closes a Kafka consumer (drops `consumer`, which leaves the group) on a thread of its own,
/// waiting at most `timeout`; `false` if it did not finish in time (it goes on in the
/// background, and the process may exit: the broker expires the member after its session
/// timeout).
///
/// librdkafka's close can block for good when the group's assignment arrives while it closes:
/// rust-rdkafka serves that rebalance by calling `assign`, which waits on the closing group
/// forever (s3-sink hit it on a SIGTERM during the group join, in the kill -9 test).
pub fn close_consumer<C: Send + 'static>(consumer: C, timeout: std::time::Duration) -> bool {
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let closing = std::thread::Builder::new()
        .name("consumer-close".into())
        .spawn(move || {
            drop(consumer);
            let _ = done_tx.send(());
        });
    match closing {
        Ok(_) => done_rx.recv_timeout(timeout).is_ok(),
        // The closure, and the consumer with it, was dropped here: closed inline.
        Err(e) => {
            tracing::warn!(error = %e, "No thread to close the Kafka consumer on: closed inline.");
            true
        }
    }
}

/// What a consumer does with an error its `recv()`/`poll()` returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumerErrorAction {
    /// Not a failure: the end of a partition (only with `enable.partition.eof`).
    Ignore,
    /// librdkafka recovers by itself (a broker down or restarting, a transport failure, all
    /// brokers down, a leader change, a missing topic…): log it, count it, flag health while it
    /// lasts, and keep polling.
    Warn,
    /// The client instance is unusable (librdkafka raised a fatal error, e.g. a fenced
    /// `group.instance.id`): exit, and let the supervisor restart the process.
    Fatal,
}

/// Classifies an error returned by a consumer's `recv()`/`poll()`. rust-rdkafka 0.39 returns
/// three kinds there (`BaseConsumer::handle_error_event`, `BorrowedMessage::from_client`):
/// `PartitionEOF`, `MessageConsumption(code)` (librdkafka's error events: broker, transport,
/// topic errors, all retried inside librdkafka) and `MessageConsumptionFatal(code)` (the event
/// is fatal: `rd_kafka_event_error_is_fatal`). Only the fatal ones end the consumer; any other
/// kind of error (not returned by `recv`) is fatal only if librdkafka says so.
pub fn consumer_error_action(err: &KafkaError) -> ConsumerErrorAction {
    match err {
        KafkaError::PartitionEOF(_) => ConsumerErrorAction::Ignore,
        KafkaError::MessageConsumptionFatal(_) => ConsumerErrorAction::Fatal,
        KafkaError::Transaction(e) if e.is_fatal() => ConsumerErrorAction::Fatal,
        KafkaError::ClientCreation(_) | KafkaError::ClientConfig(..) | KafkaError::Canceled => {
            ConsumerErrorAction::Fatal
        }
        e if e.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal) => ConsumerErrorAction::Fatal,
        _ => ConsumerErrorAction::Warn,
    }
}

/// Whether `err` (a connector's run ending) is a fencing of this instance by the cluster
/// rather than by a live twin: a static member fenced by "its own" `group.instance.id` after a
/// group coordinator restarted or moved (the coordinator takes the rejoin of our own instance
/// for a newer one: apache/kafka#23542), or a transactional producer fenced after its
/// coordinator timed out its transaction while the broker was away. The clients are then
/// unusable, but a fresh consumer and producer (same ids) resume from the committed state,
/// exactly as a process restart would; a connector may do that in-process, a bounded number of
/// times ([`RestartBudget`]), instead of exiting.
pub fn is_fenced(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        let kafka = cause.downcast_ref::<KafkaError>().or_else(|| {
            cause
                .downcast_ref::<crate::eos::TxnError>()
                .map(|t| t.kafka())
        });
        kafka
            .and_then(KafkaError::rdkafka_error_code)
            .is_some_and(|c| {
                matches!(
                    c,
                    RDKafkaErrorCode::FencedInstanceId
                        | RDKafkaErrorCode::Fenced
                        | RDKafkaErrorCode::ProducerFenced
                        | RDKafkaErrorCode::InvalidProducerEpoch
                )
            })
    })
}

/// How many in-process restarts after [`is_fenced`] errors: at most `max` within `window`
/// (two live instances with one id would otherwise fence each other for ever).
#[derive(Debug)]
pub struct RestartBudget {
    max: usize,
    window: std::time::Duration,
    recent: std::collections::VecDeque<std::time::Instant>,
}

impl RestartBudget {
    /// At most `max` restarts within `window`.
    pub fn new(max: usize, window: std::time::Duration) -> Self {
        Self {
            max,
            window,
            recent: std::collections::VecDeque::new(),
        }
    }

    /// Takes one restart, if the budget has one left.
    pub fn take(&mut self) -> bool {
        let now = std::time::Instant::now();
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.window)
        {
            self.recent.pop_front();
        }
        if self.recent.len() >= self.max {
            return false;
        }
        self.recent.push_back(now);
        true
    }
}

/// The environment variable that counts [`reexec_after_fencing`]'s restarts of a process.
pub const REEXEC_ENV: &str = "FORM_ETL_FENCED_RESTARTS";

/// Restarts of one process by [`reexec_after_fencing`] at most (then it exits, and its
/// supervisor's restart begins the count again).
pub const MAX_REEXECS: u32 = 5;

/// After a run ended by [`is_fenced`]: starts this program again in this process (`exec`, same
/// pid, same arguments and environment), so that it gets new Kafka clients with the same ids and
/// resumes from the committed state, as a supervisor's restart would, without the process
/// exiting. Open files, sockets and locks are closed by the `exec` (Rust opens them
/// close-on-exec); what was in flight is dropped, exactly as after `kill -9`. Returns (the
/// caller then exits) once [`MAX_REEXECS`] restarts were made, or if `exec` fails.
pub fn reexec_after_fencing(err: &anyhow::Error) {
    use std::os::unix::process::CommandExt;
    let done: u32 = std::env::var(REEXEC_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if done >= MAX_REEXECS {
        tracing::error!(
            restarts = done,
            "Fenced by the cluster again: {MAX_REEXECS} restarts already (another live instance with this instance id?); exiting."
        );
        return;
    }
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            tracing::error!(error = %e, "Cannot find this program to start it again; exiting.");
            return;
        }
    };
    tracing::warn!(
        error = format!("{err:#}"),
        restart = done + 1,
        "Fenced by the cluster (its coordinator restarted or moved): starting again in this process with new Kafka clients; they resume from the committed state."
    );
    std::thread::sleep(std::time::Duration::from_secs(1));
    let e = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env(REEXEC_ENV, (done + 1).to_string())
        .exec();
    tracing::error!(error = %e, "Starting again failed; exiting.");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fenced_errors_are_told_apart_and_restarts_are_bounded() {
        let fenced = anyhow::Error::new(KafkaError::MessageConsumptionFatal(
            RDKafkaErrorCode::FencedInstanceId,
        ))
        .context("consuming");
        assert!(is_fenced(&fenced));
        let txn = anyhow::Error::new(crate::eos::TxnError::Fatal(KafkaError::Global(
            RDKafkaErrorCode::Fenced,
        )))
        .context("committing the transaction");
        assert!(is_fenced(&txn));
        let other = anyhow::Error::new(KafkaError::MessageConsumptionFatal(RDKafkaErrorCode::Fail));
        assert!(!is_fenced(&other));
        assert!(!is_fenced(&anyhow::anyhow!(
            "FencedInstanceId in words only"
        )));
        let mut b = RestartBudget::new(2, std::time::Duration::from_secs(60));
        assert!(b.take() && b.take() && !b.take());
    }

    #[test]
    fn consumer_errors_are_warnings_unless_fatal() {
        use ConsumerErrorAction::*;
        use KafkaError::{MessageConsumption, MessageConsumptionFatal, PartitionEOF};
        use RDKafkaErrorCode as C;
        let cases = [
            (PartitionEOF(2), Ignore),
            // What a broker restart produces (broker.c: transport failures, then all brokers
            // down), and what follows it while the cluster settles.
            (MessageConsumption(C::BrokerTransportFailure), Warn),
            (MessageConsumption(C::AllBrokersDown), Warn),
            (MessageConsumption(C::Resolve), Warn),
            (MessageConsumption(C::NetworkException), Warn),
            (MessageConsumption(C::NotLeaderForPartition), Warn),
            (MessageConsumption(C::LeaderNotAvailable), Warn),
            (MessageConsumption(C::CoordinatorNotAvailable), Warn),
            (MessageConsumption(C::NotCoordinator), Warn),
            (MessageConsumption(C::RequestTimedOut), Warn),
            (MessageConsumption(C::UnknownTopicOrPartition), Warn),
            (MessageConsumption(C::TopicAuthorizationFailed), Warn),
            (MessageConsumption(C::OffsetOutOfRange), Warn),
            (MessageConsumption(C::MessageTimedOut), Warn),
            (MessageConsumption(C::Fatal), Fatal),
            (MessageConsumptionFatal(C::FencedInstanceId), Fatal),
            (MessageConsumptionFatal(C::BrokerTransportFailure), Fatal),
            (MessageConsumptionFatal(C::Fail), Fatal),
            (KafkaError::ClientCreation("x".into()), Fatal),
            (KafkaError::Canceled, Fatal),
            (KafkaError::Global(C::AllBrokersDown), Warn),
            (KafkaError::Global(C::Fatal), Fatal),
            (KafkaError::NoMessageReceived, Warn),
        ];
        for (err, want) in cases {
            assert_eq!(consumer_error_action(&err), want, "{err:?}");
        }
    }

    #[test]
    fn debug_redacts_sensitive_properties() {
        let k: KafkaConfig = serde_yaml::from_str(
            "brokers: b:9092\ntopic: t\nproperties:\n  sasl.password: hunter2\n  security.protocol: SASL_SSL\n",
        )
        .unwrap();
        let d = format!("{k:?}");
        assert!(!d.contains("hunter2"), "{d}");
        assert!(d.contains("SASL_SSL"), "{d}");
        let c = k.client_config();
        assert_eq!(c.get("sasl.password"), Some("hunter2"));
        assert_eq!(c.get("bootstrap.servers"), Some("b:9092"));
    }
}

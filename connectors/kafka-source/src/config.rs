//! `config/form-events-source.yaml`: the kafka-source connector's configuration.

use std::time::Duration;

use connector_common::config::ApiVersion;
use connector_common::dlq::DlqConfig;
use connector_common::kafka::KafkaConfig;
use connector_common::retry::RetryPolicy;
use connector_common::telemetry::MetricsConfig;
use connector_common::{ByteSize, ConfigError, ConnectorConfig, MetaConfig, Secret};
use serde::Deserialize;
use url::Url;

/// Where `--config` points by default.
pub const DEFAULT_CONFIG_PATH: &str = "config/form-events-source.yaml";

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct SourceConfig {
    /// Always `0.2.0`.
    #[serde(rename = "apiVersion")]
    pub api_version: ApiVersion,
    /// Name, type (`kafka-source`), version, output topic (`form.enriched`), secrets, producer options.
    pub meta: MetaConfig,
    /// Input: brokers, topic (`form.events`), consumer group, librdkafka properties.
    pub kafka: KafkaConfig,
    /// Dead-letter topic.
    #[serde(default)]
    pub dlq: DlqConfig,
    /// `/metrics` + `/health` address and progress-line interval.
    pub metrics: MetricsConfig,
    /// The forms API.
    pub enrich: EnrichConfig,
    /// Transactions and flow control.
    #[serde(default)]
    pub source: SourceOptions,
}

/// The `enrich:` section.
#[derive(Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct EnrichConfig {
    /// Base URL; forms are read from `{uri}/internal.forms/{form_id}`.
    pub uri: Url,
    /// Bearer token (use `${{ secrets.NAME }}`); absent = no Authorization header.
    #[serde(default)]
    pub token: Option<Secret>,
    /// Timeout of one request, connect to last body byte.
    #[serde(default = "default_timeout", with = "connector_common::duration")]
    pub timeout: Duration,
    /// Events being enriched at once (ordered; the consumer pauses when this many are waiting).
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Requests in flight to the API, one per kept-alive HTTP/1.1 connection (at most
    /// `concurrency`; the other events of the window wait for a connection). A distant API needs
    /// more: requests/s ≈ connections / latency. Default 128.
    #[serde(default)]
    pub connections: Option<usize>,
    /// Retries of 5xx, 408, 429, timeouts and connection errors (for ever: an unreachable
    /// API pauses the source, it never dead-letters). `max-attempts` is not allowed here.
    #[serde(default)]
    pub retry: RetryPolicy,
    /// The form cache.
    #[serde(default)]
    pub cache: CacheConfig,
    /// Longest API answer taken, in bytes: a longer one is abandoned at this many bytes (its
    /// connection dropped, never held whole in memory) and its event dead-lettered
    /// (`answer_too_large`). Default: the producer's `message.max.bytes` (librdkafka's default
    /// 1,000,000, or what `kafka.properties` sets) less [`ENVELOPE_ROOM`], so that an answer
    /// taken also fits in the enriched record.
    #[serde(default, with = "connector_common::size::option")]
    pub max_answer_bytes: Option<ByteSize>,
}

/// Debug without the URL's userinfo and query (the token is a [`Secret`] already).
impl std::fmt::Debug for EnrichConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrichConfig")
            .field("uri", &crate::redact::url(&self.uri))
            .field("token", &self.token)
            .field("timeout", &self.timeout)
            .field("concurrency", &self.concurrency)
            .field("connections", &self.connections)
            .field("retry", &self.retry)
            .field("cache", &self.cache)
            .field("max_answer_bytes", &self.max_answer_bytes)
            .finish()
    }
}

/// librdkafka's default `message.max.bytes` (the producer refuses a larger record).
pub const DEFAULT_MESSAGE_MAX_BYTES: u64 = 1_000_000;

/// What an enriched record holds beyond the form's text, kept free under `message.max.bytes`
/// by the default `enrich.max-answer-bytes`: the envelope (`{"event":…,"form":…,
/// "retrieved_timestamp":"…","source":{"topic":…,"partition":…,"offset":…}}`, ~110 bytes plus
/// the topic name), the key (the form id), librdkafka's per-record framing (36 bytes), and the
/// event itself, which is usually a few hundred bytes: 16 KiB leaves room for events up to
/// ~16 KB. A record that still ends up too large (a bigger event) is dead-lettered as
/// `record_too_large`; nothing crashes.
pub const ENVELOPE_ROOM: u64 = 16 * 1024;

/// Default request timeout: the API answers in milliseconds; 5 s means it hangs.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default number of events in flight: enough to hide API latency at >10k events/s.
const DEFAULT_CONCURRENCY: usize = 1024;

/// Default requests in flight: the bench's forms API answers ~40k requests/s with 64 in flight;
/// 128 covers ~3 ms of latency at 40k/s. More is not free: on the cold-cache bench (2 cores
/// shared with the API and Kafka) 1,024 requests in flight cost 47-54 CPU s per 1M fetched
/// events against 35-44 with 128 (more live connections and tasks, more wake-ups per answer).
const DEFAULT_CONNECTIONS: usize = 128;

impl EnrichConfig {
    /// Requests (and connections) in flight: `connections`, else the default, at most `concurrency`.
    pub fn max_connections(&self) -> usize {
        self.connections
            .unwrap_or(DEFAULT_CONNECTIONS)
            .min(self.concurrency)
    }
}

fn default_timeout() -> Duration {
    DEFAULT_TIMEOUT
}
fn default_concurrency() -> usize {
    DEFAULT_CONCURRENCY
}

/// The `enrich.cache` section. A cached form serves an event only if it was retrieved at or
/// after the event's `event_happened_at` and is younger than `ttl`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Longest a retrieved form is reused.
    #[serde(with = "connector_common::duration")]
    pub ttl: Duration,
    /// Most forms kept.
    pub max_entries: usize,
    /// Most bytes of cached answers (their JSON text and ids, plus a per-entry overhead of
    /// [`crate::enrich::ENTRY_OVERHEAD`]): the bound that holds whatever the forms' size. At the
    /// default, 64 MiB, kafka-source's peak RSS stays under 256 MiB when every event is about
    /// a different form (`make bench`'s cold cache, ~1.4 KB forms).
    pub max_bytes: ByteSize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(300),
            max_entries: 100_000,
            max_bytes: ByteSize::mib(64),
        }
    }
}

/// The `source:` section: transactions and shutdown.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct SourceOptions {
    /// Commit the transaction once this many input records are in it…
    pub commit_max_records: usize,
    /// …or once the oldest has waited this long.
    #[serde(with = "connector_common::duration")]
    pub commit_interval: Duration,
    /// `transaction.timeout.ms`: the broker aborts a transaction of a dead instance after this.
    #[serde(with = "connector_common::duration")]
    pub transaction_timeout: Duration,
    /// On SIGINT/SIGTERM, wait at most this long for in-flight events before the final commit.
    #[serde(with = "connector_common::duration")]
    pub drain_timeout: Duration,
    /// Prefix of the transactional id, `{prefix}-{instance id}` (`--instance-id`, else
    /// `{hostname}-{n}`: stable across restarts, so a restart fences its dead predecessor and
    /// aborts its open transaction at once); default `meta.name`.
    pub transactional_id_prefix: Option<String>,
}

/// Default transaction size: a commit costs a few round trips plus the wait for the last
/// produced batches whatever its size, so it is amortised over many records (measured on the
/// local cluster: 5,000 records / 100 ms spent over half the time committing; 50,000 / 1 s a
/// few percent). A crash or a rebalance redoes at most this much.
const DEFAULT_COMMIT_MAX_RECORDS: usize = 50_000;
/// Default longest transaction: how late `read_committed` consumers see a record at worst.
const DEFAULT_COMMIT_INTERVAL: Duration = Duration::from_secs(1);

impl Default for SourceOptions {
    fn default() -> Self {
        Self {
            commit_max_records: DEFAULT_COMMIT_MAX_RECORDS,
            commit_interval: DEFAULT_COMMIT_INTERVAL,
            // librdkafka's default is 60 s; shorter lets a restart after kill -9 go on sooner.
            transaction_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(30),
            transactional_id_prefix: None,
        }
    }
}

impl ConnectorConfig for SourceConfig {
    const TYPE: &'static str = "kafka-source";

    fn meta(&self) -> &MetaConfig {
        &self.meta
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.kafka.validate("kafka")?;
        if let Some(s) = self.kafka.properties.get("partition.assignment.strategy")
            && s.contains("cooperative")
        {
            return Err(ConfigError::invalid(
                "kafka.properties.partition.assignment.strategy",
                "must be an eager strategy (`range`, `roundrobin`): on a rebalance the open transaction is aborted for every partition",
            ));
        }
        for k in ["enable.auto.commit", "transactional.id", "isolation.level"] {
            if self.kafka.properties.contains_key(k) {
                return Err(ConfigError::invalid(
                    format!("kafka.properties.{k}"),
                    "is set by the connector (transactions); remove it",
                ));
            }
        }
        self.enrich.retry.validate("enrich.retry")?;
        if self.enrich.retry.max_attempts.is_some() {
            return Err(ConfigError::invalid(
                "enrich.retry.max-attempts",
                "is not allowed: the source retries an unreachable API for ever (it pauses, never dead-letters)",
            ));
        }
        if !matches!(self.enrich.uri.scheme(), "http" | "https") {
            return Err(ConfigError::invalid(
                "enrich.uri",
                "must be an http:// or https:// URL",
            ));
        }
        if self.enrich.uri.query().is_some() || self.enrich.uri.fragment().is_some() {
            return Err(ConfigError::invalid(
                "enrich.uri",
                "must not have a query or a fragment (forms are read from `{uri}/internal.forms/{id}`; a token goes in `enrich.token`)",
            ));
        }
        if self
            .enrich
            .max_answer_bytes
            .is_some_and(|b| b.as_u64() == 0)
        {
            return Err(ConfigError::invalid(
                "enrich.max-answer-bytes",
                "must be greater than zero",
            ));
        }
        if let Some(v) = self.kafka.properties.get("message.max.bytes")
            && v.parse::<u64>().is_err()
        {
            return Err(ConfigError::invalid(
                "kafka.properties.message.max.bytes",
                "must be a number of bytes",
            ));
        }
        if self.enrich.concurrency == 0 {
            return Err(ConfigError::invalid(
                "enrich.concurrency",
                "must be greater than zero",
            ));
        }
        if self.enrich.connections == Some(0) {
            return Err(ConfigError::invalid(
                "enrich.connections",
                "must be greater than zero",
            ));
        }
        if self.enrich.timeout.is_zero() {
            return Err(ConfigError::invalid(
                "enrich.timeout",
                "must be greater than zero",
            ));
        }
        if self.enrich.cache.max_entries == 0 {
            return Err(ConfigError::invalid(
                "enrich.cache.max-entries",
                "must be greater than zero",
            ));
        }
        if self.enrich.cache.max_bytes.as_u64() == 0 {
            return Err(ConfigError::invalid(
                "enrich.cache.max-bytes",
                "must be greater than zero",
            ));
        }
        if self.source.commit_max_records == 0 {
            return Err(ConfigError::invalid(
                "source.commit-max-records",
                "must be greater than zero",
            ));
        }
        if self.source.transaction_timeout < Duration::from_secs(1) {
            return Err(ConfigError::invalid(
                "source.transaction-timeout",
                "must be at least 1s",
            ));
        }
        Ok(())
    }
}

impl SourceConfig {
    /// The output topic (`meta.topic`).
    pub fn output_topic(&self) -> &str {
        &self.meta.topic
    }

    /// The consumer group: `kafka.group`, else `meta.name`.
    pub fn group(&self) -> &str {
        self.kafka.group_or(&self.meta.name)
    }

    /// The producer's `message.max.bytes`: `kafka.properties`, else librdkafka's default.
    pub fn message_max_bytes(&self) -> u64 {
        self.kafka
            .properties
            .get("message.max.bytes")
            .and_then(|v| v.parse().ok())
            .unwrap_or(DEFAULT_MESSAGE_MAX_BYTES)
    }

    /// `enrich.max-answer-bytes`, else the producer's `message.max.bytes` less
    /// [`ENVELOPE_ROOM`] (at least 1 KiB).
    pub fn max_answer_bytes(&self) -> u64 {
        match self.enrich.max_answer_bytes {
            Some(b) => b.as_u64(),
            None => self
                .message_max_bytes()
                .saturating_sub(ENVELOPE_ROOM)
                .max(1024),
        }
    }

    /// A warning for a bearer token sent over plain `http://` (anyone on the path reads it).
    pub fn plain_http_token_warning(&self) -> Option<String> {
        (self.enrich.token.is_some() && self.enrich.uri.scheme() == "http").then(|| {
            format!(
                "`enrich.token` is sent over plain http:// to {}: anyone on the network path can read it; use https://",
                crate::redact::url(&self.enrich.uri)
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use connector_common::config::{config_files_of_type, dummy_secrets_for, load};

    use super::*;

    /// Every `kafka-source` file in `config/` parses and validates.
    #[test]
    fn every_config_file_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config");
        let files = config_files_of_type(&dir, "kafka-source").unwrap();
        assert!(!files.is_empty(), "no kafka-source config in {dir:?}");
        for f in files {
            let c: SourceConfig =
                load(&f, &dummy_secrets_for(&f)).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(c.kafka.topic, "form.events");
            assert_eq!(c.output_topic(), "form.enriched");
        }
    }

    fn shipped() -> SourceConfig {
        let f = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/form-events-source.yaml");
        load(&f, &dummy_secrets_for(&f)).unwrap()
    }

    /// A small config of our own (not the shipped file, which others edit), with `edit` applied.
    fn with(edit: impl Fn(String) -> String) -> SourceConfig {
        let base = "apiVersion: 0.2.0\nmeta:\n  version: 0.1.0\n  name: s\n  type: kafka-source\n  \
                    topic:\n    meta:\n      name: out\n  secrets:\n    - name: FORMS_API_TOKEN\nkafka:\n  brokers: b:9092\n  \
                    topic: in\n  properties:\n    auto.offset.reset: earliest\nmetrics:\n  \
                    address: 127.0.0.1:0\nenrich:\n  uri: http://127.0.0.1:8000\n  timeout: 5s\n";
        let secrets = connector_common::SecretStore::from_pairs([("FORMS_API_TOKEN", "tok-123")]);
        connector_common::config::load_str::<SourceConfig>(
            &edit(base.to_owned()),
            Path::new("x.yaml"),
            &secrets,
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn max_answer_bytes_follows_message_max_bytes() {
        let c = shipped();
        assert_eq!(c.message_max_bytes(), 1_000_000);
        assert_eq!(c.max_answer_bytes(), 1_000_000 - 16_384);
        assert_eq!(with(|y| y).max_answer_bytes(), 1_000_000 - 16_384);
        let c = with(|y| {
            y.replace(
                "    auto.offset.reset: earliest\n",
                "    auto.offset.reset: earliest\n    message.max.bytes: \"4000000\"\n",
            )
        });
        assert_eq!(c.max_answer_bytes(), 4_000_000 - 16_384);
        let c = with(|y| {
            y.replace(
                "  timeout: 5s\n",
                "  timeout: 5s\n  max-answer-bytes: 2MB\n",
            )
        });
        assert_eq!(c.max_answer_bytes(), 2_000_000);
    }

    #[test]
    fn debug_and_warnings_never_show_userinfo_or_token() {
        let c = with(|y| {
            y.replace(
                "  uri: http://127.0.0.1:8000\n",
                "  uri: http://user:pa55w0rd@127.0.0.1:8000\n  token: ${{ secrets.FORMS_API_TOKEN }}\n",
            )
        });
        assert_eq!(c.enrich.token.as_ref().map(|t| t.expose()), Some("tok-123"));
        let d = format!("{c:?}");
        assert!(!d.contains("pa55w0rd") && !d.contains("tok-123"), "{d}");
        assert!(!d.contains("user"), "{d}");
        assert!(d.contains("127.0.0.1:8000"), "{d}");
        let w = c
            .plain_http_token_warning()
            .expect("a token over http:// warns");
        assert!(w.contains("http://") && !w.contains("pa55w0rd"), "{w}");
        assert!(!w.contains("tok-123"), "{w}");
        // No token, or https: no warning.
        assert_eq!(with(|y| y).plain_http_token_warning(), None);
        let mut https = c.clone();
        https.enrich.uri = "https://forms.example.com".parse().unwrap();
        assert_eq!(https.plain_http_token_warning(), None);
    }

    #[test]
    fn golden_errors() {
        let base = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/form-events-source.yaml"),
        )
        .unwrap();
        let secrets = connector_common::SecretStore::from_pairs([]);
        let cases = [
            (
                "  concurrency: 1024\n",
                "  concurrency: 0\n",
                "x.yaml: `enrich.concurrency`: must be greater than zero",
            ),
            (
                "  timeout: 5s\n",
                "  timeout: 5s\n  retries: 3\n",
                "x.yaml: `enrich.retries`: unknown field `retries`, expected one of `uri`, `token`, `timeout`, `concurrency`, `connections`, `retry`, `cache`, `max-answer-bytes`",
            ),
            (
                "  uri: http://127.0.0.1:8000\n",
                "  uri: not a url\n",
                "x.yaml: `enrich.uri`: relative URL without a base: \"not a url\"",
            ),
            (
                "  uri: http://127.0.0.1:8000\n",
                "  uri: http://127.0.0.1:8000/?key=k\n",
                "x.yaml: `enrich.uri`: must not have a query or a fragment (forms are read from `{uri}/internal.forms/{id}`; a token goes in `enrich.token`)",
            ),
            (
                "  timeout: 5s\n",
                "  timeout: 5s\n  max-answer-bytes: 0\n",
                "x.yaml: `enrich.max-answer-bytes`: must be greater than zero",
            ),
        ];
        for (from, to, want) in cases {
            assert!(base.contains(from), "{from:?}");
            let text = base.replacen(from, to, 1);
            let err = connector_common::config::load_str::<SourceConfig>(
                &text,
                Path::new("x.yaml"),
                &secrets,
            )
            .unwrap_err()
            .to_string();
            assert_eq!(err, want);
        }
    }
}

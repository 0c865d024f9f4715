//! Loading a Fluvio connector YAML file into a connector's typed config.
//!
//! A connector declares its whole file as one struct:
//!
//! ```ignore
//! #[derive(Debug, serde::Deserialize)]
//! #[serde(rename_all = "kebab-case", deny_unknown_fields)]
//! struct MyConfig {
//!     #[serde(rename = "apiVersion")]
//!     api_version: ApiVersion,
//!     meta: MetaConfig,
//!     kafka: KafkaConfig,
//!     // … its own sections
//! }
//! impl ConnectorConfig for MyConfig { const TYPE: &'static str = "my-source"; … }
//! let cfg: MyConfig = config::load(path, &secrets)?;
//! ```
//!
//! Loading: read YAML → check `meta.topic`'s form against `apiVersion` → substitute
//! `${{ secrets.NAME }}` in every string value (the name must be in `meta.secrets`) → check
//! the placeholders elsewhere in the text (comments) → check every declared secret has a
//! value → deserialize with the failing key path recorded → check `meta.type` →
//! [`ConnectorConfig::validate`]. Every error after the substitution has the substituted
//! values replaced by `****` ([`Resolved::redact`]).
//!
//! # Fluvio's rules (fluvio-connector-package 0.18.1)
//!
//! The shipped files must also start a Fluvio connector, so the loader follows the rules of
//! Fluvio's own parser where they overlap (tests/fluvio_conformance.rs checks both against
//! Fluvio's test cases):
//!
//! - `apiVersion` `0.0.0` (Fluvio's name for unversioned files) and `0.1.0`: `meta.topic` is
//!   the topic's name; `0.2.0`: it is Fluvio's topic config, `{meta: {name: …}}` with optional
//!   `version`, `partition`, `retention`, `compression` and `deduplication` ([`TopicConfig`]).
//!   The other form is refused with Fluvio's message (`invalid type: string "form.enriched",
//!   expected struct TopicConfig`). From `config/mod.rs` (`ConnectorConfig`'s versions,
//!   `MetaConfigV1`/`MetaConfigV2`) and fluvio-controlplane-metadata's `topic/config.rs`.
//! - Secrets: Fluvio renders `${{ secrets.NAME }}` over the whole text, comments included,
//!   and reads every declared secret before rendering (`render/`, `secret.rs`). So a
//!   placeholder in a comment must name a declared secret that has a value, and so must every
//!   entry of `meta.secrets`. Unlike Fluvio, values are put into the parsed strings, not into
//!   the text: a secret holding `: `, `#` or a quote stays one string value here, where
//!   Fluvio's rendered YAML would change shape; and only `${{ secrets.NAME }}` is understood
//!   (no other template syntax).
//! - Stricter than Fluvio: `apiVersion` is required (Fluvio reads a missing one as `0.0.0`),
//!   and unknown keys are errors everywhere, `meta` included (Fluvio ignores unknown `meta`
//!   keys such as `create-topic`). Not supported: `meta.consumer.partition` and `.offset`
//!   (the connectors read the partitions their Kafka consumer group assigns them).

use std::collections::BTreeMap;
use std::fmt;
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde::de::{DeserializeOwned, MapAccess, Visitor};
use serde_yaml::Value;

use crate::secret::SecretStore;

/// A config error: always names the file and, when it is about one key, the key path.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Not YAML at all.
    #[error("{path}: not valid YAML: {source}")]
    Yaml {
        /// The file.
        path: PathBuf,
        /// The parser's error (has line and column).
        source: serde_yaml::Error,
    },
    /// A key has a wrong, missing or unknown value.
    #[error("{path}: `{key}`: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Dotted key path, e.g. `kafka.brokers`, `meta.secrets[0].name`.
        key: String,
        /// What is wrong and what is allowed.
        message: String,
    },
    /// `${{ secrets.NAME }}` used but `NAME` not listed in `meta.secrets`.
    #[error("{path}: `{key}`: secret `{name}` is not declared in `meta.secrets`")]
    UndeclaredSecret {
        /// The file.
        path: PathBuf,
        /// Where it is used.
        key: String,
        /// The secret's name.
        name: String,
    },
    /// A declared and used secret has no value.
    #[error(
        "{path}: `{key}`: secret `{name}` has no value: set the environment variable `{name}` or put `{name}=…` in the --secrets file"
    )]
    MissingSecret {
        /// The file.
        path: PathBuf,
        /// Where it is used.
        key: String,
        /// The secret's name.
        name: String,
    },
    /// A `${{ … }}` placeholder that is not `${{ secrets.NAME }}`.
    #[error("{path}: `{key}`: bad placeholder `{text}`: expected `${{{{ secrets.NAME }}}}`")]
    BadPlaceholder {
        /// The file.
        path: PathBuf,
        /// Where it is used.
        key: String,
        /// The placeholder text.
        text: String,
    },
    /// A placeholder outside the string values (in a comment, a key) that Fluvio, which
    /// renders the whole text, would refuse.
    #[error(
        "{path}: line {line}: {message} (Fluvio renders `${{{{ … }}}}` everywhere in the file, comments included)"
    )]
    Template {
        /// The file.
        path: PathBuf,
        /// 1-based line of the placeholder.
        line: usize,
        /// What is wrong.
        message: String,
    },
}

impl ConfigError {
    /// A validation error about `key` (for [`ConnectorConfig::validate`]); the path is filled
    /// in by [`load`].
    pub fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            path: PathBuf::new(),
            key: key.into(),
            message: message.into(),
        }
    }

    fn with_path(self, p: &Path) -> Self {
        match self {
            Self::Invalid { key, message, .. } => Self::Invalid {
                path: p.to_owned(),
                key,
                message,
            },
            other => other,
        }
    }
}

/// `apiVersion`: the versions of Fluvio's connector format (fluvio-connector-package 0.18.1,
/// `config/mod.rs`). They differ only in the form of `meta.topic`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum ApiVersion {
    /// `0.0.0`: Fluvio's name for files written before versions; read as `0.1.0`.
    #[serde(rename = "0.0.0")]
    V0_0_0,
    /// `0.1.0`: `meta.topic` is the topic's name.
    #[serde(rename = "0.1.0")]
    V0_1_0,
    /// `0.2.0` (the shipped files): `meta.topic` is a [`TopicConfig`], `{meta: {name: …}}`.
    #[serde(rename = "0.2.0")]
    V0_2_0,
}

impl ApiVersion {
    /// Whether `meta.topic` is a [`TopicConfig`] map (else the topic's name).
    pub fn topic_is_config(self) -> bool {
        self == Self::V0_2_0
    }
}

/// `meta.topic` in `apiVersion: 0.2.0`: Fluvio's topic config (fluvio-controlplane-metadata
/// 0.18.1, `topic/config.rs`, same keys and value syntax). Parsed and checked; the connectors
/// use only the name: they never create topics (the Kafka topics are made beforehand).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct TopicConfig {
    /// The topic config's own version (Fluvio's default `0.1.0`).
    #[serde(default = "default_topic_config_version")]
    pub version: String,
    /// `meta.name`: the topic's name.
    pub meta: TopicMeta,
    /// How the topic is partitioned (absent values: Fluvio's defaults, 1 partition, 1 replica).
    #[serde(default)]
    pub partition: TopicPartitionConfig,
    /// How long and how much the topic keeps.
    #[serde(default)]
    pub retention: TopicRetentionConfig,
    /// The topic's compression.
    #[serde(default)]
    pub compression: TopicCompressionConfig,
    /// Fluvio's deduplication of the topic's records.
    #[serde(default)]
    pub deduplication: Option<TopicDeduplication>,
}

fn default_topic_config_version() -> String {
    // fluvio-controlplane-metadata's DEFAULT_VERSION.
    "0.1.0".to_owned()
}

/// `meta.topic.meta`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct TopicMeta {
    /// The topic's name.
    pub name: String,
}

/// `meta.topic.partition`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct TopicPartitionConfig {
    /// Number of partitions.
    #[serde(default)]
    pub count: Option<u32>,
    /// Maximum size of a partition, e.g. `10GB`.
    #[serde(default, with = "crate::size::option")]
    pub max_size: Option<bytesize::ByteSize>,
    /// Replication factor.
    #[serde(default)]
    pub replication: Option<u32>,
    /// Ignore rack assignment when placing replicas.
    #[serde(default)]
    pub ignore_rack_assignment: Option<bool>,
    /// Partitions placed by hand (instead of `count` and `replication`).
    #[serde(default)]
    pub maps: Option<Vec<TopicPartitionMap>>,
}

/// One entry of `meta.topic.partition.maps`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicPartitionMap {
    /// Partition id.
    pub id: u32,
    /// SPU ids holding its replicas.
    pub replicas: Vec<i32>,
}

/// `meta.topic.retention`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct TopicRetentionConfig {
    /// How long records are kept, e.g. `7d`.
    #[serde(default, with = "crate::duration::option")]
    pub time: Option<Duration>,
    /// Segment size, e.g. `1GB`.
    #[serde(default, with = "crate::size::option")]
    pub segment_size: Option<bytesize::ByteSize>,
}

/// `meta.topic.compression`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct TopicCompressionConfig {
    /// `type`: the algorithm.
    #[serde(rename = "type", default)]
    pub kind: TopicCompression,
}

/// A topic's compression algorithm, spelt as Fluvio spells it (`Lz4`, not `lz4`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum TopicCompression {
    /// Uncompressed.
    None,
    /// gzip.
    Gzip,
    /// snappy.
    Snappy,
    /// lz4.
    Lz4,
    /// Whatever the producer sent (Fluvio's default).
    #[default]
    Any,
    /// zstd.
    Zstd,
}

/// `meta.topic.deduplication` (fluvio-controlplane-metadata's `topic/deduplication.rs`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct TopicDeduplication {
    /// How many records, and how old, the filter looks back at.
    pub bounds: TopicDeduplicationBounds,
    /// The filter.
    pub filter: TopicDeduplicationFilter,
}

/// `meta.topic.deduplication.bounds`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct TopicDeduplicationBounds {
    /// Records looked back at (not zero).
    pub count: NonZeroU64,
    /// Maximum age of those records, e.g. `1h`.
    #[serde(default, with = "crate::duration::option")]
    pub age: Option<Duration>,
}

/// `meta.topic.deduplication.filter`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct TopicDeduplicationFilter {
    /// The filter's SmartModule.
    pub transform: TopicDeduplicationTransform,
}

/// `meta.topic.deduplication.filter.transform`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct TopicDeduplicationTransform {
    /// The SmartModule, e.g. `fluvio/dedup-filter@0.1.0`.
    pub uses: String,
    /// Its parameters.
    #[serde(default)]
    pub with: BTreeMap<String, String>,
}

/// `meta.topic` in either form (the form is checked against `apiVersion` before).
enum TopicField {
    Name(String),
    Config(TopicConfig),
}

impl<'de> Deserialize<'de> for TopicField {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct TopicVisitor;
        impl<'de> Visitor<'de> for TopicVisitor {
            type Value = TopicField;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a topic name (apiVersion 0.1.0) or a topic config `{meta: {name: …}}` (apiVersion 0.2.0)",
                )
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<TopicField, E> {
                Ok(TopicField::Name(v.to_owned()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<TopicField, A::Error> {
                TopicConfig::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(TopicField::Config)
            }
        }
        d.deserialize_any(TopicVisitor)
    }
}

/// Fluvio's version check of `meta.topic` (its parser picks the meta type by `apiVersion`):
/// the message of deserializing the value as that version's type. `Ok` when the form fits or
/// there is nothing to check (no or unknown `apiVersion`, no `meta.topic`: the typed
/// deserialization reports those).
fn check_topic_form(doc: &Value) -> Result<(), String> {
    let Some(version) = doc
        .get("apiVersion")
        .and_then(|v| ApiVersion::deserialize(v.clone()).ok())
    else {
        return Ok(());
    };
    let Some(topic) = doc.get("meta").and_then(|m| m.get("topic")) else {
        return Ok(());
    };
    let result = if version.topic_is_config() {
        match topic {
            Value::Mapping(_) => Ok(()),
            other => TopicConfig::deserialize(other.clone()).map(drop),
        }
    } else {
        match topic {
            Value::String(_) => Ok(()),
            other => String::deserialize(other.clone()).map(drop),
        }
    };
    result.map_err(|e| e.to_string())
}

/// A secret's declaration in `meta.secrets`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct SecretDecl {
    /// Name: letters, digits and `_`, not starting with a digit (Fluvio's `SecretName`).
    pub name: SecretName,
}

/// A checked secret name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SecretName(String);

impl SecretName {
    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for SecretName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if is_secret_name(&s) {
            Ok(Self(s))
        } else {
            Err(serde::de::Error::custom(format!(
                "`{s}` is not a valid secret name: use letters, digits and `_`, not starting with a digit"
            )))
        }
    }
}

fn is_secret_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Producer options of `meta.producer` (applied to the connector's Kafka producer).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ProducerParameters {
    /// How long to wait to fill a batch (`linger.ms`), e.g. `10ms`.
    #[serde(default, with = "crate::duration::option")]
    pub linger: Option<Duration>,
    /// Maximum batch size (`batch.size`), e.g. `1MB` (also `batch_size`, as Fluvio reads it).
    #[serde(default, alias = "batch_size", with = "crate::size::option")]
    pub batch_size: Option<bytesize::ByteSize>,
    /// Compression codec.
    #[serde(default)]
    pub compression: Option<Compression>,
}

impl ProducerParameters {
    /// Sets the librdkafka properties these options stand for.
    pub fn apply(&self, cfg: &mut rdkafka::ClientConfig) {
        if let Some(l) = self.linger {
            cfg.set("linger.ms", l.as_millis().to_string());
        }
        if let Some(b) = self.batch_size {
            cfg.set("batch.size", b.as_u64().to_string());
        }
        if let Some(c) = self.compression {
            cfg.set("compression.type", c.as_str());
        }
    }
}

/// Producer compression codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Compression {
    /// No compression.
    None,
    /// gzip.
    Gzip,
    /// snappy.
    Snappy,
    /// lz4.
    Lz4,
    /// zstd.
    Zstd,
}

impl Compression {
    /// The librdkafka name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Gzip => "gzip",
            Self::Snappy => "snappy",
            Self::Lz4 => "lz4",
            Self::Zstd => "zstd",
        }
    }
}

/// Consumer options of `meta.consumer`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ConsumerParameters {
    /// Consumer id (in Kafka terms: the consumer group, if `kafka.group` is not set).
    #[serde(default)]
    pub id: Option<String>,
    /// Maximum bytes fetched per partition per request (`max.partition.fetch.bytes`); also
    /// `max_bytes`, as Fluvio reads it.
    #[serde(default, alias = "max_bytes", with = "crate::size::option")]
    pub max_bytes: Option<bytesize::ByteSize>,
}

/// The `meta:` section every connector file has.
#[derive(Debug, Clone, Deserialize)]
#[serde(from = "RawMeta")]
pub struct MetaConfig {
    /// Instance name; used as the DLQ `dlq.connector` header, log field and transactional id prefix.
    pub name: String,
    /// Connector type, e.g. `kafka-source`; must match the binary.
    pub connector_type: String,
    /// Connector version.
    pub version: String,
    /// The name of the connector's Fluvio topic: a source writes into it, a sink reads it.
    /// `meta.topic` in `apiVersion: 0.1.0`, `meta.topic.meta.name` in `0.2.0`.
    pub topic: String,
    /// The whole `meta.topic` of an `apiVersion: 0.2.0` file (`None` in `0.1.0`).
    pub topic_config: Option<TopicConfig>,
    /// Secrets the file may use as `${{ secrets.NAME }}`.
    pub secrets: Vec<SecretDecl>,
    /// Consumer options (sinks).
    pub consumer: Option<ConsumerParameters>,
    /// Producer options (sources).
    pub producer: Option<ProducerParameters>,
}

/// `meta:` as written (`meta.topic` in either form).
#[derive(Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawMeta {
    name: String,
    #[serde(rename = "type")]
    connector_type: String,
    version: String,
    topic: TopicField,
    #[serde(default)]
    secrets: Vec<SecretDecl>,
    #[serde(default)]
    consumer: Option<ConsumerParameters>,
    #[serde(default)]
    producer: Option<ProducerParameters>,
}

impl From<RawMeta> for MetaConfig {
    fn from(m: RawMeta) -> Self {
        let (topic, topic_config) = match m.topic {
            TopicField::Name(name) => (name, None),
            TopicField::Config(c) => (c.meta.name.clone(), Some(c)),
        };
        Self {
            name: m.name,
            connector_type: m.connector_type,
            version: m.version,
            topic,
            topic_config,
            secrets: m.secrets,
            consumer: m.consumer,
            producer: m.producer,
        }
    }
}

impl MetaConfig {
    /// Checks the meta values a connector always needs.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.name.trim().is_empty() {
            return Err(ConfigError::invalid("meta.name", "must not be empty"));
        }
        if self.topic.trim().is_empty() {
            let key = if self.topic_config.is_some() {
                "meta.topic.meta.name"
            } else {
                "meta.topic"
            };
            return Err(ConfigError::invalid(key, "must not be empty"));
        }
        Ok(())
    }
}

/// A connector's whole config file.
pub trait ConnectorConfig: DeserializeOwned {
    /// The `meta.type` this binary accepts, e.g. `kafka-source`.
    const TYPE: &'static str;

    /// The `meta:` section.
    fn meta(&self) -> &MetaConfig;

    /// Checks beyond types (ranges, cross-field rules). Use [`ConfigError::invalid`].
    fn validate(&self) -> Result<(), ConfigError> {
        Ok(())
    }
}

/// Reads, substitutes secrets, parses and validates a connector's config file.
pub fn load<C: ConnectorConfig>(path: &Path, secrets: &SecretStore) -> Result<C, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    load_str(&text, path, secrets)
}

/// [`load`] from text; `path` is only used in messages.
pub fn load_str<C: ConnectorConfig>(
    text: &str,
    path: &Path,
    secrets: &SecretStore,
) -> Result<C, ConfigError> {
    let resolved = resolve(text, path, secrets)?;
    let cfg: C = resolved.deserialize(path)?;
    let checked = if cfg.meta().connector_type != C::TYPE {
        Err(ConfigError::Invalid {
            path: path.to_owned(),
            key: "meta.type".into(),
            message: format!(
                "is `{}`, but this binary runs `{}`",
                cfg.meta().connector_type,
                C::TYPE
            ),
        })
    } else {
        cfg.meta()
            .validate()
            .and_then(|()| cfg.validate())
            .map_err(|e| e.with_path(path))
    };
    checked.map_err(|e| resolved.redact(e))?;
    Ok(cfg)
}

/// A file's YAML with its secrets substituted ([`resolve`]), and what was substituted where,
/// to keep the values out of error messages. `Debug` prints neither.
pub struct Resolved {
    /// The YAML value, secrets substituted.
    pub value: Value,
    /// `(key path, secret value)` of every substitution.
    substituted: Vec<(String, String)>,
}

impl fmt::Debug for Resolved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resolved")
            .field("substitutions", &self.substituted.len())
            .finish_non_exhaustive()
    }
}

impl Resolved {
    /// Deserializes the value ([`from_value`]), the error redacted.
    pub fn deserialize<T: DeserializeOwned>(&self, path: &Path) -> Result<T, ConfigError> {
        from_value(self.value.clone(), path).map_err(|e| self.redact(e))
    }

    /// `err` with every substituted secret value replaced by `****` in its message: as
    /// written, and as Rust's and JSON's escaping print it (serde quotes values with `{:?}`).
    /// When the error is about a key that holds a secret, a quoted part of the message
    /// (`"…"` or `` `…` ``) that is a piece of that secret is replaced too (some parsers echo
    /// only the part they could not read, e.g. a duration's unit).
    pub fn redact(&self, err: ConfigError) -> ConfigError {
        match err {
            ConfigError::Invalid { path, key, message } => {
                let message = self.redact_message(&key, &message);
                ConfigError::Invalid { path, key, message }
            }
            other => other,
        }
    }

    fn redact_message(&self, key: &str, message: &str) -> String {
        let mut forms: Vec<String> = Vec::new();
        for (_, v) in &self.substituted {
            if v.is_empty() {
                continue;
            }
            forms.push(v.clone());
            let debug = format!("{v:?}");
            forms.push(debug[1..debug.len() - 1].to_owned());
            if let Ok(json) = serde_json::to_string(v) {
                forms.push(json[1..json.len() - 1].to_owned());
            }
        }
        // Longest first: a secret that contains another is replaced whole.
        forms.sort_by_key(|f| std::cmp::Reverse(f.len()));
        forms.dedup();
        let mut out = message.to_owned();
        for f in &forms {
            if out.contains(f.as_str()) {
                out = out.replace(f.as_str(), "****");
            }
        }
        let related: Vec<&str> = self
            .substituted
            .iter()
            .filter(|(k, v)| !v.is_empty() && key_related(k, key))
            .map(|(_, v)| v.as_str())
            .collect();
        if related.is_empty() {
            out
        } else {
            redact_quoted_pieces(&out, &related)
        }
    }
}

/// Whether two key paths are the same or one is inside the other.
fn key_related(a: &str, b: &str) -> bool {
    let inside = |inner: &str, outer: &str| {
        inner
            .strip_prefix(outer)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
    };
    b == "(top level)" || inside(a, b) || inside(b, a)
}

/// Replaces each `"…"` or `` `…` `` part of `message` that is a piece of one of `secrets`.
fn redact_quoted_pieces(message: &str, secrets: &[&str]) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(open) = rest.find(['"', '`']) {
        let quote = &rest[open..open + 1];
        out.push_str(&rest[..=open]);
        let after = &rest[open + 1..];
        let Some(close) = after.find(quote) else {
            rest = after;
            continue;
        };
        let piece = &after[..close];
        if !piece.is_empty() && secrets.iter().any(|s| s.contains(piece)) {
            out.push_str("****");
        } else {
            out.push_str(piece);
        }
        out.push_str(quote);
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    out
}

/// Parses YAML text, checks it against Fluvio's rules and substitutes `${{ secrets.NAME }}`
/// (see the module docs for the order).
pub fn resolve(text: &str, path: &Path, secrets: &SecretStore) -> Result<Resolved, ConfigError> {
    let mut value: Value = serde_yaml::from_str(text).map_err(|source| ConfigError::Yaml {
        path: path.to_owned(),
        source,
    })?;
    check_topic_form(&value).map_err(|message| ConfigError::Invalid {
        path: path.to_owned(),
        key: "meta.topic".into(),
        message,
    })?;
    let declared: Vec<String> = value
        .get("meta")
        .and_then(|m| m.get("secrets"))
        .and_then(Value::as_sequence)
        .map(|seq| {
            seq.iter()
                .filter_map(|s| s.get("name").and_then(Value::as_str).map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let mut ctx = Subst {
        path,
        declared: &declared,
        secrets,
        substituted: Vec::new(),
    };
    ctx.walk(&mut value, &mut String::new())?;
    let substituted = ctx.substituted;
    check_text_placeholders(text, path, &declared, secrets)?;
    // Fluvio reads every declared secret before it renders, used or not.
    for (i, name) in declared.iter().enumerate() {
        if is_secret_name(name) && secrets.get(name).is_none() {
            return Err(ConfigError::MissingSecret {
                path: path.to_owned(),
                key: format!("meta.secrets[{i}].name"),
                name: name.clone(),
            });
        }
    }
    Ok(Resolved { value, substituted })
}

/// [`resolve`], the value only.
pub fn resolve_value(text: &str, path: &Path, secrets: &SecretStore) -> Result<Value, ConfigError> {
    resolve(text, path, secrets).map(|r| r.value)
}

/// Deserializes a resolved value, naming the failing key in the error. The message may hold
/// substituted secret values: [`Resolved::deserialize`] redacts them.
pub fn from_value<T: DeserializeOwned>(value: Value, path: &Path) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let key = e.path().to_string();
        let key = if key == "." {
            "(top level)".into()
        } else {
            key
        };
        ConfigError::Invalid {
            path: path.to_owned(),
            key,
            message: e.into_inner().to_string(),
        }
    })
}

/// What Fluvio's renderer would refuse anywhere in the text, comments included (the string
/// values were checked by [`Subst`], with their key paths, before): a `${{ … }}` that is not
/// `${{ secrets.NAME }}` of a declared secret with a value, or template syntax
/// (`${% … %}`, `${# … #}`) this loader does not implement.
fn check_text_placeholders(
    text: &str,
    path: &Path,
    declared: &[String],
    secrets: &SecretStore,
) -> Result<(), ConfigError> {
    let error = |at: usize, message: String| ConfigError::Template {
        path: path.to_owned(),
        line: text[..at].matches('\n').count() + 1,
        message,
    };
    let mut from = 0;
    while let Some(found) = text[from..].find("${") {
        let at = from + found;
        let open = &text[at..];
        from = at + 2;
        if open.starts_with("${%") || open.starts_with("${#") {
            return Err(error(
                at,
                format!(
                    "`{}`: template blocks and comments are not supported",
                    &open[..3]
                ),
            ));
        }
        if !open.starts_with("${{") {
            continue;
        }
        let Some(end) = open.find("}}") else {
            return Err(error(at, "`${{` without a closing `}}`".to_owned()));
        };
        let placeholder = &open[..end + 2];
        let Some(name) = open[3..end]
            .trim()
            .strip_prefix("secrets.")
            .map(str::trim)
            .filter(|n| is_secret_name(n))
        else {
            return Err(error(
                at,
                format!("bad placeholder `{placeholder}`: expected `${{{{ secrets.NAME }}}}`"),
            ));
        };
        if !declared.iter().any(|d| d == name) {
            return Err(error(
                at,
                format!("secret `{name}` is not declared in `meta.secrets`"),
            ));
        }
        if secrets.get(name).is_none() {
            return Err(error(
                at,
                format!(
                    "secret `{name}` has no value: set the environment variable `{name}` or put `{name}=…` in the --secrets file"
                ),
            ));
        }
        from = at + end + 2;
    }
    Ok(())
}

struct Subst<'a> {
    path: &'a Path,
    declared: &'a [String],
    secrets: &'a SecretStore,
    substituted: Vec<(String, String)>,
}

impl Subst<'_> {
    fn walk(&mut self, v: &mut Value, key: &mut String) -> Result<(), ConfigError> {
        match v {
            Value::String(s) if s.contains("${{") => {
                *s = self.substitute(s, key)?;
            }
            Value::Sequence(seq) => {
                for (i, item) in seq.iter_mut().enumerate() {
                    let len = key.len();
                    key.push_str(&format!("[{i}]"));
                    self.walk(item, key)?;
                    key.truncate(len);
                }
            }
            Value::Mapping(map) => {
                for (k, item) in map.iter_mut() {
                    let len = key.len();
                    if !key.is_empty() {
                        key.push('.');
                    }
                    match k {
                        Value::String(s) => key.push_str(s),
                        other => key.push_str(&format!("{other:?}")),
                    }
                    self.walk(item, key)?;
                    key.truncate(len);
                }
            }
            Value::Tagged(t) => self.walk(&mut t.value, key)?,
            _ => {}
        }
        Ok(())
    }

    fn substitute(&mut self, s: &str, key: &str) -> Result<String, ConfigError> {
        let mut out = String::with_capacity(s.len());
        let mut rest = s;
        while let Some(start) = rest.find("${{") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 3..];
            let end = after
                .find("}}")
                .ok_or_else(|| ConfigError::BadPlaceholder {
                    path: self.path.to_owned(),
                    key: key.to_owned(),
                    text: rest[start..].to_owned(),
                })?;
            let inner = after[..end].trim();
            let name = inner
                .strip_prefix("secrets.")
                .map(str::trim)
                .filter(|n| is_secret_name(n))
                .ok_or_else(|| ConfigError::BadPlaceholder {
                    path: self.path.to_owned(),
                    key: key.to_owned(),
                    text: rest[start..start + 3 + end + 2].to_owned(),
                })?;
            if !self.declared.iter().any(|d| d == name) {
                return Err(ConfigError::UndeclaredSecret {
                    path: self.path.to_owned(),
                    key: key.to_owned(),
                    name: name.to_owned(),
                });
            }
            let value = self
                .secrets
                .get(name)
                .ok_or_else(|| ConfigError::MissingSecret {
                    path: self.path.to_owned(),
                    key: key.to_owned(),
                    name: name.to_owned(),
                })?;
            out.push_str(value.expose());
            self.substituted
                .push((key.to_owned(), value.expose().to_owned()));
            rest = &after[end + 2..];
        }
        out.push_str(rest);
        Ok(out)
    }
}

/// The YAML files in `dir` whose `meta.type` is `connector_type` (for each connector's
/// "parse every file in `config/`" test).
pub fn config_files_of_type(dir: &Path, connector_type: &str) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let p = entry?.path();
        let is_yaml = matches!(
            p.extension().and_then(|e| e.to_str()),
            Some("yaml") | Some("yml")
        );
        if !is_yaml {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&p) else {
            continue;
        };
        let Ok(v) = serde_yaml::from_str::<Value>(&text) else {
            continue;
        };
        if v.get("meta")
            .and_then(|m| m.get("type"))
            .and_then(Value::as_str)
            == Some(connector_type)
        {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

/// A store that answers every secret declared in the file at `path` with `"test-secret"` (tests).
pub fn dummy_secrets_for(path: &Path) -> SecretStore {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let v: Value = serde_yaml::from_str(&text).unwrap_or(Value::Null);
    let names: Vec<String> = v
        .get("meta")
        .and_then(|m| m.get("secrets"))
        .and_then(Value::as_sequence)
        .map(|seq| {
            seq.iter()
                .filter_map(|s| s.get("name").and_then(Value::as_str).map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    SecretStore::from_pairs(names.iter().map(|n| (n.as_str(), "test-secret")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dlq::DlqConfig;
    use crate::kafka::KafkaConfig;
    use crate::retry::RetryPolicy;
    use crate::secret::Secret;
    use crate::telemetry::MetricsConfig;

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "kebab-case", deny_unknown_fields)]
    struct TestConfig {
        #[serde(rename = "apiVersion")]
        #[allow(dead_code)]
        api_version: ApiVersion,
        meta: MetaConfig,
        kafka: KafkaConfig,
        #[serde(default)]
        #[allow(dead_code)]
        dlq: Option<DlqConfig>,
        #[serde(default)]
        #[allow(dead_code)]
        metrics: Option<MetricsConfig>,
        http: TestHttp,
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "kebab-case", deny_unknown_fields)]
    struct TestHttp {
        token: Option<Secret>,
        #[serde(with = "crate::duration")]
        timeout: Duration,
        #[serde(with = "crate::size")]
        max_bytes: bytesize::ByteSize,
        #[serde(default)]
        retry: RetryPolicy,
        #[serde(default)]
        url: Option<url::Url>,
    }

    impl ConnectorConfig for TestConfig {
        const TYPE: &'static str = "test-source";
        fn meta(&self) -> &MetaConfig {
            &self.meta
        }
        fn validate(&self) -> Result<(), ConfigError> {
            self.http.retry.validate("http.retry")
        }
    }

    const GOOD: &str = r#"
apiVersion: 0.2.0
meta:
  name: t1
  type: test-source
  version: 0.1.0
  topic:
    meta:
      name: out
  secrets:
    - name: TOKEN
  producer:
    linger: 10ms
    compression: zstd
kafka:
  brokers: 127.0.0.1:9092
  topic: in
  group: g1
  properties:
    security.protocol: plaintext
http:
  token: "Bearer ${{ secrets.TOKEN }}"
  timeout: 1s 500ms
  max-bytes: 64MB
  retry:
    initial-backoff: 50ms
    max-backoff: 2s
"#;

    fn load_text(text: &str) -> Result<TestConfig, String> {
        let store = SecretStore::from_pairs([("TOKEN", "s3cr3t")]);
        load_str::<TestConfig>(text, Path::new("t.yaml"), &store).map_err(|e| e.to_string())
    }

    #[test]
    fn parses_good_file() {
        let c = load_text(GOOD).unwrap();
        assert_eq!(c.meta.name, "t1");
        assert_eq!(c.http.token.as_ref().unwrap().expose(), "Bearer s3cr3t");
        assert_eq!(c.http.timeout, Duration::from_millis(1500));
        assert_eq!(c.http.max_bytes.as_u64(), 64_000_000);
        assert_eq!(c.http.retry.initial_backoff, Duration::from_millis(50));
        assert_eq!(c.kafka.group.as_deref(), Some("g1"));
        assert_eq!(
            c.meta.producer.unwrap().linger,
            Some(Duration::from_millis(10))
        );
        assert!(!format!("{:?}", c.http).contains("s3cr3t"));
        assert!(c.http.url.is_none());
        let with_url = GOOD.replacen(
            "  max-bytes: 64MB\n",
            "  max-bytes: 64MB\n  url: http://127.0.0.1:8000/x\n",
            1,
        );
        let c = load_text(&with_url).unwrap();
        assert_eq!(
            c.http.url.as_ref().map(url::Url::as_str),
            Some("http://127.0.0.1:8000/x")
        );
    }

    /// Golden error messages: what a user sees for each kind of mistake.
    #[test]
    fn golden_errors() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "  brokers: 127.0.0.1:9092\n",
                "  brokers: 127.0.0.1:9092\n  brokerz: x\n",
                "t.yaml: `kafka.brokerz`: unknown field `brokerz`, expected one of `brokers`, `topic`, `group`, `properties`",
            ),
            (
                "  timeout: 1s 500ms\n",
                "  timeout: 10 parsecs\n",
                "t.yaml: `http.timeout`: `10 parsecs` is not a duration (unknown time unit \"parsecs\", supported units: ns, us/µs, ms, sec, min, hours, days, weeks, months, years (and few variations)); write e.g. `250ms`, `5s`, `1m 30s`",
            ),
            (
                "  max-bytes: 64MB\n",
                "  max-bytes: lots\n",
                "t.yaml: `http.max-bytes`: `lots` is not a size; write e.g. `64MB`, `512KiB`, `1000`",
            ),
            (
                "  topic: in\n",
                "",
                "t.yaml: `kafka`: missing field `topic`",
            ),
            (
                "apiVersion: 0.2.0\n",
                "apiVersion: 0.3.0\n",
                "t.yaml: `apiVersion`: unknown variant `0.3.0`, expected one of `0.0.0`, `0.1.0`, `0.2.0`",
            ),
            (
                "  type: test-source\n",
                "  type: s3-sink\n",
                "t.yaml: `meta.type`: is `s3-sink`, but this binary runs `test-source`",
            ),
            (
                "    - name: TOKEN\n",
                "    - name: OTHER\n",
                "t.yaml: `http.token`: secret `TOKEN` is not declared in `meta.secrets`",
            ),
            (
                "    - name: TOKEN\n",
                "    - name: TOKEN\n    - name: 1BAD\n",
                "t.yaml: `meta.secrets[1].name`: `1BAD` is not a valid secret name: use letters, digits and `_`, not starting with a digit",
            ),
            (
                "\"Bearer ${{ secrets.TOKEN }}\"",
                "\"Bearer ${{ env.TOKEN }}\"",
                "t.yaml: `http.token`: bad placeholder `${{ env.TOKEN }}`: expected `${{ secrets.NAME }}`",
            ),
            (
                "    max-backoff: 2s\n",
                "    max-backoff: 2s\n    multiplier: 0.5\n",
                "t.yaml: `http.retry.multiplier`: must be at least 1.0 (got 0.5)",
            ),
            (
                "    compression: zstd\n",
                "    compression: brotli\n",
                "t.yaml: `meta.producer.compression`: unknown variant `brotli`, expected one of `none`, `gzip`, `snappy`, `lz4`, `zstd`",
            ),
        ];
        for (from, to, want) in cases {
            assert!(GOOD.contains(from), "bad case {from:?}");
            let text = GOOD.replacen(from, to, 1);
            let got = load_text(&text).expect_err(want);
            assert_eq!(&got, want);
        }
    }

    /// `meta.topic`'s two forms and Fluvio's version check (tests/fluvio_conformance.rs runs
    /// Fluvio's own cases).
    #[test]
    fn topic_forms_follow_the_api_version() {
        let c = load_text(GOOD).unwrap();
        assert_eq!(c.meta.topic, "out");
        let tc = c.meta.topic_config.as_ref().unwrap();
        assert_eq!(tc.version, "0.1.0");
        assert_eq!(tc.partition, TopicPartitionConfig::default());
        assert_eq!(tc.compression.kind, TopicCompression::Any);

        let full = GOOD.replacen(
            "      name: out\n",
            "      name: out\n    partition:\n      count: 3\n      replication: 1\n      \
             max-size: 10GB\n    retention:\n      time: 7d\n      segment-size: 1GB\n",
            1,
        );
        let c = load_text(&full).unwrap();
        let tc = c.meta.topic_config.unwrap();
        assert_eq!(tc.partition.count, Some(3));
        assert_eq!(tc.partition.replication, Some(1));
        assert_eq!(tc.partition.max_size, Some(bytesize::ByteSize::gb(10)));
        assert_eq!(tc.retention.time, Some(Duration::from_secs(7 * 86_400)));
        assert_eq!(tc.retention.segment_size, Some(bytesize::ByteSize::gb(1)));

        let plain = GOOD.replacen(
            "  topic:\n    meta:\n      name: out\n",
            "  topic: out\n",
            1,
        );
        assert_eq!(
            load_text(&plain).unwrap_err(),
            "t.yaml: `meta.topic`: invalid type: string \"out\", expected struct TopicConfig"
        );
        let v1 = plain.replacen("apiVersion: 0.2.0", "apiVersion: 0.1.0", 1);
        let c = load_text(&v1).unwrap();
        assert_eq!(c.meta.topic, "out");
        assert!(c.meta.topic_config.is_none());
        let v1_map = GOOD.replacen("apiVersion: 0.2.0", "apiVersion: 0.1.0", 1);
        assert_eq!(
            load_text(&v1_map).unwrap_err(),
            "t.yaml: `meta.topic`: invalid type: map, expected a string"
        );
        for (from, to, want) in [
            (
                "      name: out\n",
                "      name: out\n    partition:\n      count: many\n",
                "t.yaml: `meta.topic.partition.count`: invalid type: string \"many\", expected u32",
            ),
            (
                "      name: out\n",
                "      name: out\n    partitions: 3\n",
                "t.yaml: `meta.topic.partitions`: unknown field `partitions`, expected one of `version`, `meta`, `partition`, `retention`, `compression`, `deduplication`",
            ),
            (
                "      name: out\n",
                "      name: \"\"\n",
                "t.yaml: `meta.topic.meta.name`: must not be empty",
            ),
            (
                "    meta:\n      name: out\n",
                "    partition: {count: 1}\n",
                "t.yaml: `meta.topic`: missing field `meta`",
            ),
        ] {
            assert!(GOOD.contains(from));
            assert_eq!(load_text(&GOOD.replacen(from, to, 1)).unwrap_err(), want);
        }
    }

    /// Fluvio renders `${{ … }}` in comments too, and reads every declared secret.
    #[test]
    fn placeholders_outside_values_and_unused_secrets() {
        let cases = [
            (
                "kafka:\n",
                "kafka:\n  # sasl.password: ${{ secrets.KAFKA_PASSWORD }}\n",
                "t.yaml: line 16: secret `KAFKA_PASSWORD` is not declared in `meta.secrets` (Fluvio renders `${{ … }}` everywhere in the file, comments included)",
            ),
            (
                "kafka:\n",
                "kafka:\n  # token: ${{ env.TOKEN }}\n",
                "t.yaml: line 16: bad placeholder `${{ env.TOKEN }}`: expected `${{ secrets.NAME }}` (Fluvio renders `${{ … }}` everywhere in the file, comments included)",
            ),
            (
                "kafka:\n",
                "kafka:\n  # ${% if x %}\n",
                "t.yaml: line 16: `${%`: template blocks and comments are not supported (Fluvio renders `${{ … }}` everywhere in the file, comments included)",
            ),
            (
                "    - name: TOKEN\n",
                "    - name: TOKEN\n    - name: UNUSED\n",
                "t.yaml: `meta.secrets[1].name`: secret `UNUSED` has no value: set the environment variable `UNUSED` or put `UNUSED=…` in the --secrets file",
            ),
        ];
        for (from, to, want) in cases {
            assert!(GOOD.contains(from), "{from:?}");
            let got = load_text(&GOOD.replacen(from, to, 1)).unwrap_err();
            assert_eq!(got, want);
        }
        // A declared secret with a value may appear in a comment (Fluvio renders it there).
        let ok = GOOD.replacen("kafka:\n", "kafka:\n  # was: ${{ secrets.TOKEN }}\n", 1);
        load_text(&ok).unwrap();
    }

    /// Golden: no config error echoes a substituted secret, whatever the field's parser
    /// prints (issue #15: secrets are substituted before deserialising).
    #[test]
    fn errors_never_echo_a_secret() {
        let store = SecretStore::from_pairs([
            ("TOKEN", "s3cr3t-\"quoted\"-é"),
            ("URL", "not a url but s3cr3t"),
            ("TIMEOUT", "10 hunter2"),
        ]);
        let base = GOOD.replacen(
            "    - name: TOKEN\n",
            "    - name: TOKEN\n    - name: URL\n    - name: TIMEOUT\n",
            1,
        );
        let cases = [
            (
                "  max-bytes: 64MB\n",
                "  max-bytes: 64MB\n  url: ${{ secrets.URL }}\n",
                "t.yaml: `http.url`: relative URL without a base: \"****\"",
            ),
            (
                "  timeout: 1s 500ms\n",
                "  timeout: ${{ secrets.TIMEOUT }}\n",
                "t.yaml: `http.timeout`: `****` is not a duration (unknown time unit \"****\", supported units: ns, us/µs, ms, sec, min, hours, days, weeks, months, years (and few variations)); write e.g. `250ms`, `5s`, `1m 30s`",
            ),
            (
                "    compression: zstd\n",
                "    compression: \"${{ secrets.TOKEN }}\"\n",
                "t.yaml: `meta.producer.compression`: unknown variant `****`, expected one of `none`, `gzip`, `snappy`, `lz4`, `zstd`",
            ),
            (
                "  max-bytes: 64MB\n",
                "  max-bytes: \"x${{ secrets.TOKEN }}\"\n",
                "t.yaml: `http.max-bytes`: `x****` is not a size; write e.g. `64MB`, `512KiB`, `1000`",
            ),
            (
                "    max-backoff: 2s\n",
                "    max-backoff: 2s\n    multiplier: ${{ secrets.TOKEN }}\n",
                "t.yaml: `http.retry.multiplier`: invalid type: string \"****\", expected f64",
            ),
            (
                "  type: test-source\n",
                "  type: \"${{ secrets.TOKEN }}\"\n",
                "t.yaml: `meta.type`: is `****`, but this binary runs `test-source`",
            ),
        ];
        for (from, to, want) in cases {
            assert!(base.contains(from), "{from:?}");
            let text = base.replacen(from, to, 1);
            let err = load_str::<TestConfig>(&text, Path::new("t.yaml"), &store).unwrap_err();
            assert_eq!(err.to_string(), want);
            let debug = format!("{err:?}");
            for secret in ["s3cr3t", "hunter2", "quoted"] {
                assert!(!debug.contains(secret), "{debug}");
            }
        }
        // Loaded: Debug prints no secret either (`Secret`, `KafkaConfig` properties).
        let text = base.replacen(
            "    security.protocol: plaintext\n",
            "    security.protocol: plaintext\n    sasl.password: ${{ secrets.URL }}\n    \
                 sasl.oauthbearer.config: \"principal=${{ secrets.TIMEOUT }}\"\n",
            1,
        );
        let c = load_str::<TestConfig>(&text, Path::new("t.yaml"), &store).unwrap();
        let debug = format!("{c:?}");
        for secret in ["s3cr3t", "hunter2"] {
            assert!(!debug.contains(secret), "{debug}");
        }
        let resolved = resolve(&text, Path::new("t.yaml"), &store).unwrap();
        assert!(!format!("{resolved:?}").contains("s3cr3t"));
    }

    #[test]
    fn missing_secret_is_named() {
        let store = SecretStore::from_pairs([]);
        let err = load_str::<TestConfig>(GOOD, Path::new("t.yaml"), &store)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "t.yaml: `http.token`: secret `TOKEN` has no value: set the environment variable `TOKEN` or put `TOKEN=…` in the --secrets file"
        );
    }

    /// Every connector file in `config/` whose `meta.type` we know: the shared sections parse.
    /// (Each connector's own test parses its whole file with its own struct.)
    #[test]
    fn every_config_file_shared_sections_parse() {
        #[derive(Debug, Deserialize)]
        struct Shared {
            #[serde(rename = "apiVersion")]
            #[allow(dead_code)]
            api_version: ApiVersion,
            meta: MetaConfig,
            kafka: Option<KafkaConfig>,
            dlq: Option<DlqConfig>,
            metrics: Option<MetricsConfig>,
        }
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config");
        let mut seen = 0;
        for ty in ["kafka-source", "s3-sink"] {
            for path in config_files_of_type(&dir, ty).unwrap() {
                let store = dummy_secrets_for(&path);
                let text = std::fs::read_to_string(&path).unwrap();
                let r = resolve(&text, &path, &store).unwrap_or_else(|e| panic!("{e}"));
                let s: Shared = r.deserialize(&path).unwrap_or_else(|e| panic!("{e}"));
                s.meta.validate().unwrap();
                assert_eq!(s.meta.connector_type, ty);
                if let Some(k) = &s.kafka {
                    k.validate("kafka").unwrap();
                }
                let _ = (&s.dlq, &s.metrics);
                seen += 1;
            }
        }
        eprintln!("parsed {seen} connector config files");
    }
}

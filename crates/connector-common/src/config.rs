//! Loading a Fluvio connector YAML file (`apiVersion: 0.2.0`) into a connector's typed config.
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
//! Loading: read YAML → substitute `${{ secrets.NAME }}` in every string (the name must be in
//! `meta.secrets`) → deserialize with the failing key path recorded → check `meta.type` →
//! [`ConnectorConfig::validate`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;
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

/// The only supported `apiVersion`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum ApiVersion {
    /// `0.2.0`, the Fluvio connector format this project uses.
    #[serde(rename = "0.2.0")]
    V0_2_0,
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
    /// Maximum batch size (`batch.size`), e.g. `1MB`.
    #[serde(default, with = "crate::size::option")]
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
    /// Maximum bytes fetched per partition per request (`max.partition.fetch.bytes`).
    #[serde(default, with = "crate::size::option")]
    pub max_bytes: Option<bytesize::ByteSize>,
}

/// The `meta:` section every connector file has.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct MetaConfig {
    /// Instance name; used as the DLQ `dlq.connector` header, log field and transactional id prefix.
    pub name: String,
    /// Connector type, e.g. `kafka-source`; must match the binary.
    #[serde(rename = "type")]
    pub connector_type: String,
    /// Connector version.
    pub version: String,
    /// The connector's Fluvio topic: a source writes into it, a sink reads it.
    pub topic: String,
    /// Secrets the file may use as `${{ secrets.NAME }}`.
    #[serde(default)]
    pub secrets: Vec<SecretDecl>,
    /// Consumer options (sinks).
    #[serde(default)]
    pub consumer: Option<ConsumerParameters>,
    /// Producer options (sources).
    #[serde(default)]
    pub producer: Option<ProducerParameters>,
}

impl MetaConfig {
    /// Checks the meta values a connector always needs.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.name.trim().is_empty() {
            return Err(ConfigError::invalid("meta.name", "must not be empty"));
        }
        if self.topic.trim().is_empty() {
            return Err(ConfigError::invalid("meta.topic", "must not be empty"));
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
    let value = resolve_value(text, path, secrets)?;
    let cfg: C = from_value(value, path)?;
    if cfg.meta().connector_type != C::TYPE {
        return Err(ConfigError::Invalid {
            path: path.to_owned(),
            key: "meta.type".into(),
            message: format!(
                "is `{}`, but this binary runs `{}`",
                cfg.meta().connector_type,
                C::TYPE
            ),
        });
    }
    cfg.meta().validate().map_err(|e| e.with_path(path))?;
    cfg.validate().map_err(|e| e.with_path(path))?;
    Ok(cfg)
}

/// Parses YAML text and substitutes `${{ secrets.NAME }}` (declared names only).
pub fn resolve_value(text: &str, path: &Path, secrets: &SecretStore) -> Result<Value, ConfigError> {
    let mut value: Value = serde_yaml::from_str(text).map_err(|source| ConfigError::Yaml {
        path: path.to_owned(),
        source,
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
    };
    ctx.walk(&mut value, &mut String::new())?;
    Ok(value)
}

/// Deserializes a resolved value, naming the failing key in the error.
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

struct Subst<'a> {
    path: &'a Path,
    declared: &'a [String],
    secrets: &'a SecretStore,
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

    fn substitute(&self, s: &str, key: &str) -> Result<String, ConfigError> {
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
  topic: out
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
                "t.yaml: `apiVersion`: unknown variant `0.3.0`, expected `0.2.0`",
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
                let v = resolve_value(&text, &path, &store).unwrap();
                let s: Shared = from_value(v, &path).unwrap_or_else(|e| panic!("{e}"));
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

//! Conformance with Fluvio's own connector-config parser (issue #18): fluvio-connector-package
//! 0.18.1 is not on crates.io, so [`fluvio`] below is a model of its rules, written from its
//! source (tag `v0.18.1` of infinyon/fluvio), and checked against the expectations Fluvio's own
//! tests state, on our files written after Fluvio's cases (`test-data/fluvio/`). Then:
//!
//! - every connector file under `config/` passes the model (parsed as Fluvio's
//!   `ConnectorConfig::from_file` does, and rendered then parsed as a Fluvio connector does at
//!   start), and our loader reads the same meta from it;
//! - a `0.2.0` file whose `meta.topic` is a plain string is refused by both with Fluvio's
//!   message;
//! - on each case, our loader ([`connector_common::config`]) agrees with Fluvio, or differs as
//!   stated here (the differences are listed in `config.rs`'s module docs).
//!
//! Rules taken, by file of `crates/fluvio-connector-package/` (unless named otherwise):
//! - `src/config/mod.rs`: `apiVersion` `0.0.0` (also when absent), `0.1.0`, `0.2.0`, any other
//!   refused; the version picks `MetaConfigV1` (`topic` a string) or `MetaConfigV2` (`topic` a
//!   `TopicConfig`); `name`, `type`, `topic`, `version` required, `producer`, `consumer`,
//!   `secrets` optional, unknown meta keys ignored; `ProducerParameters` (`linger` humantime,
//!   `compression` none/gzip/snappy/lz4/zstd, `batch-size` alias `batch_size`);
//!   `ConsumerParameters` (`partition` integer/list/`all`, `max-bytes` alias `max_bytes`, `id`,
//!   `offset`); `SecretName`'s three checks and messages; `transforms` entries are
//!   fluvio-smartengine's `TransformationStep`; a `0.0.0` file has no secrets.
//! - `src/config/bytesize_serde.rs` (+ the bytesize-serde crate): sizes, "parsable string".
//! - fluvio-controlplane-metadata `src/topic/config.rs`, `deduplication.rs`, `spec.rs`:
//!   `TopicConfig` (`version` default `0.1.0`, `meta.name`, `partition`, `retention`,
//!   `compression.type` spelt `Lz4`…, `deduplication`).
//! - fluvio-smartengine `src/transformation.rs`: `TransformationStep` (`uses`, `lookback`
//!   `{last, age}`, `with` values: a string as is, a map or list as its JSON text).
//! - `src/render/mod.rs`, `render/syntax.rs`, `render/context.rs`, `src/secret.rs`: the
//!   whole text is a template (`${{ … }}`, `${% … %}`, `${# … #}`), comments included,
//!   undefined values are errors (`Error: undefined value at line N:`…``); the context's
//!   `secrets` are read from the store for every declared secret before rendering
//!   (`value not found for secret name NAME`).
//! - fluvio-connector-derive `src/generator.rs`: a connector renders, then parses the
//!   rendered text.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use connector_common::SecretStore;
use connector_common::config::{self, ApiVersion, ConfigError, MetaConfig, TopicCompression};
use serde::Deserialize;

/// A model of fluvio-connector-package 0.18.1's parse and render (see the file docs).
mod fluvio {
    use std::collections::BTreeMap;
    use std::fmt;
    use std::time::Duration;

    use serde::Deserialize;
    use serde::de::{self, Deserializer, Unexpected, Visitor};
    use serde_yaml::Value;

    #[derive(Deserialize)]
    enum Version {
        #[serde(rename = "0.0.0")]
        V0,
        #[serde(rename = "0.1.0")]
        V1,
        #[serde(rename = "0.2.0")]
        V2,
    }

    /// `apiVersion` first, the rest kept as YAML (how Fluvio reads the version).
    #[derive(Deserialize)]
    struct Head {
        #[serde(rename = "apiVersion")]
        api_version: Option<Version>,
        #[serde(flatten)]
        rest: Value,
    }

    #[derive(Debug, Deserialize)]
    pub(crate) struct ConfigV1 {
        pub(crate) meta: MetaV1,
        #[serde(default)]
        pub(crate) transforms: Vec<Step>,
    }

    #[derive(Debug, Deserialize)]
    pub(crate) struct ConfigV2 {
        pub(crate) meta: MetaV2,
        #[serde(default)]
        pub(crate) transforms: Vec<Step>,
    }

    #[derive(Debug, Deserialize)]
    pub(crate) struct MetaV1 {
        pub(crate) name: String,
        #[serde(rename = "type")]
        pub(crate) type_: String,
        pub(crate) topic: String,
        pub(crate) version: String,
        #[serde(default)]
        pub(crate) producer: Option<Producer>,
        #[serde(default)]
        pub(crate) consumer: Option<Consumer>,
        #[serde(default)]
        pub(crate) secrets: Option<Vec<SecretConfig>>,
    }

    #[derive(Debug, Deserialize)]
    pub(crate) struct MetaV2 {
        pub(crate) name: String,
        #[serde(rename = "type")]
        pub(crate) type_: String,
        pub(crate) topic: TopicConfig,
        pub(crate) version: String,
        #[serde(default)]
        pub(crate) producer: Option<Producer>,
        #[serde(default)]
        pub(crate) consumer: Option<Consumer>,
        #[serde(default)]
        pub(crate) secrets: Option<Vec<SecretConfig>>,
    }

    #[derive(Debug, PartialEq, Deserialize)]
    pub(crate) struct Producer {
        #[serde(default, deserialize_with = "duration")]
        pub(crate) linger: Option<Duration>,
        #[serde(default)]
        pub(crate) compression: Option<Compression>,
        #[serde(
            rename = "batch-size",
            alias = "batch_size",
            default,
            deserialize_with = "size"
        )]
        pub(crate) batch_size: Option<u64>,
    }

    #[derive(Debug, PartialEq, Eq, Deserialize)]
    #[serde(rename_all = "lowercase")]
    pub(crate) enum Compression {
        None,
        Gzip,
        Snappy,
        Lz4,
        Zstd,
    }

    #[derive(Debug, PartialEq, Deserialize)]
    #[serde(rename_all = "kebab-case")]
    pub(crate) struct Consumer {
        #[serde(default)]
        pub(crate) partition: Partition,
        #[serde(alias = "max_bytes", default, deserialize_with = "size")]
        pub(crate) max_bytes: Option<u64>,
        #[serde(default)]
        pub(crate) id: Option<String>,
        #[serde(default)]
        pub(crate) offset: Option<ConsumerOffset>,
    }

    #[derive(Debug, Default, PartialEq, Eq)]
    pub(crate) enum Partition {
        #[default]
        All,
        One(u32),
        Many(Vec<u32>),
    }

    impl<'de> Deserialize<'de> for Partition {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Partition;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("integer, sequence of integers or `all` string")
                }
                fn visit_str<E: de::Error>(self, v: &str) -> Result<Partition, E> {
                    if v == "all" {
                        Ok(Partition::All)
                    } else {
                        Err(E::invalid_value(Unexpected::Str(v), &self))
                    }
                }
                fn visit_u64<E: de::Error>(self, v: u64) -> Result<Partition, E> {
                    u32::try_from(v).map(Partition::One).map_err(E::custom)
                }
                fn visit_seq<A: de::SeqAccess<'de>>(self, mut s: A) -> Result<Partition, A::Error> {
                    let mut all = Vec::new();
                    while let Some(p) = s.next_element()? {
                        all.push(p);
                    }
                    Ok(Partition::Many(all))
                }
            }
            d.deserialize_any(V)
        }
    }

    #[derive(Debug, PartialEq, Deserialize)]
    #[serde(rename_all = "kebab-case")]
    pub(crate) struct ConsumerOffset {
        #[serde(default)]
        pub(crate) start: Option<Value>,
        pub(crate) strategy: OffsetStrategy,
        #[serde(default)]
        pub(crate) flush_period: Option<Duration>,
    }

    #[derive(Debug, PartialEq, Eq, Deserialize)]
    #[serde(rename_all = "kebab-case")]
    pub(crate) enum OffsetStrategy {
        None,
        Manual,
        Auto,
    }

    #[derive(Debug, PartialEq, Eq, Deserialize)]
    pub(crate) struct SecretConfig {
        pub(crate) name: SecretName,
    }

    #[derive(Debug, PartialEq, Eq)]
    pub(crate) struct SecretName(pub(crate) String);

    impl<'de> Deserialize<'de> for SecretName {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let s = String::deserialize(d)?;
            let message = if s.is_empty() {
                Some("Secret name cannot be empty".to_owned())
            } else if !s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                Some(format!(
                    "Secret name `{s}` can only contain alphanumeric ASCII characters and underscores"
                ))
            } else if s.starts_with(|c: char| c.is_ascii_digit()) {
                Some(format!("Secret name `{s}` cannot start with a number"))
            } else {
                None
            };
            match message {
                Some(m) => Err(de::Error::custom(m)),
                None => Ok(Self(s)),
            }
        }
    }

    /// fluvio-controlplane-metadata's `TopicConfig` (the name matters: serde's message says
    /// `expected struct TopicConfig`).
    #[derive(Debug, PartialEq, Deserialize)]
    #[serde(rename_all = "kebab-case")]
    pub(crate) struct TopicConfig {
        #[serde(default = "topic_version")]
        pub(crate) version: String,
        pub(crate) meta: TopicMeta,
        #[serde(default = "default_partition")]
        pub(crate) partition: PartitionConfig,
        #[serde(default)]
        pub(crate) retention: RetentionConfig,
        #[serde(default)]
        pub(crate) compression: CompressionConfig,
        #[serde(default)]
        pub(crate) deduplication: Option<Deduplication>,
    }

    fn topic_version() -> String {
        "0.1.0".to_owned()
    }

    fn default_partition() -> PartitionConfig {
        PartitionConfig {
            count: Some(1),
            max_size: None,
            replication: Some(1),
            ignore_rack_assignment: Some(false),
            maps: None,
        }
    }

    #[derive(Debug, PartialEq, Eq, Deserialize)]
    pub(crate) struct TopicMeta {
        pub(crate) name: String,
    }

    #[derive(Debug, PartialEq, Deserialize)]
    #[serde(rename_all = "kebab-case")]
    pub(crate) struct PartitionConfig {
        #[serde(default)]
        pub(crate) count: Option<u32>,
        #[serde(default)]
        pub(crate) max_size: Option<bytesize::ByteSize>,
        #[serde(default)]
        pub(crate) replication: Option<u32>,
        #[serde(default)]
        pub(crate) ignore_rack_assignment: Option<bool>,
        #[serde(default)]
        pub(crate) maps: Option<Vec<Value>>,
    }

    #[derive(Debug, Default, PartialEq, Deserialize)]
    #[serde(rename_all = "kebab-case")]
    pub(crate) struct RetentionConfig {
        #[serde(default, deserialize_with = "duration")]
        pub(crate) time: Option<Duration>,
        #[serde(default)]
        pub(crate) segment_size: Option<bytesize::ByteSize>,
    }

    #[derive(Debug, Default, PartialEq, Deserialize)]
    pub(crate) struct CompressionConfig {
        #[serde(rename = "type", default)]
        pub(crate) type_: CompressionAlgorithm,
    }

    #[derive(Debug, Default, PartialEq, Eq, Deserialize)]
    pub(crate) enum CompressionAlgorithm {
        None,
        Gzip,
        Snappy,
        Lz4,
        #[default]
        Any,
        Zstd,
    }

    #[derive(Debug, PartialEq, Deserialize)]
    #[serde(rename_all = "kebab-case")]
    pub(crate) struct Deduplication {
        pub(crate) bounds: Bounds,
        pub(crate) filter: Filter,
    }

    #[derive(Debug, PartialEq, Deserialize)]
    #[serde(rename_all = "kebab-case")]
    pub(crate) struct Bounds {
        #[serde(deserialize_with = "non_zero")]
        pub(crate) count: u64,
        #[serde(default, deserialize_with = "duration")]
        pub(crate) age: Option<Duration>,
    }

    #[derive(Debug, PartialEq, Deserialize)]
    pub(crate) struct Filter {
        pub(crate) transform: DedupTransform,
    }

    #[derive(Debug, PartialEq, Deserialize)]
    pub(crate) struct DedupTransform {
        pub(crate) uses: String,
        #[serde(default)]
        pub(crate) with: BTreeMap<String, String>,
    }

    /// fluvio-smartengine's `TransformationStep`.
    #[derive(Debug, PartialEq, Deserialize)]
    pub(crate) struct Step {
        pub(crate) uses: String,
        #[serde(default)]
        pub(crate) lookback: Option<Lookback>,
        #[serde(default)]
        pub(crate) with: BTreeMap<String, JsonString>,
    }

    #[derive(Debug, PartialEq, Deserialize)]
    pub(crate) struct Lookback {
        #[serde(default)]
        pub(crate) last: u64,
        #[serde(default, deserialize_with = "duration")]
        pub(crate) age: Option<Duration>,
    }

    /// A `with:` value: a string as is, a map or a list as its JSON text (keys sorted: Fluvio's
    /// serde_json keeps maps sorted).
    #[derive(Debug, PartialEq, Eq)]
    pub(crate) struct JsonString(pub(crate) String);

    impl<'de> Deserialize<'de> for JsonString {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = JsonString;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("str, string, sequence or map")
                }
                fn visit_str<E: de::Error>(self, v: &str) -> Result<JsonString, E> {
                    Ok(JsonString(v.to_owned()))
                }
                fn visit_map<A: de::MapAccess<'de>>(self, m: A) -> Result<JsonString, A::Error> {
                    let v =
                        serde_json::Value::deserialize(de::value::MapAccessDeserializer::new(m))?;
                    Ok(JsonString(sorted(v).to_string()))
                }
                fn visit_seq<A: de::SeqAccess<'de>>(self, s: A) -> Result<JsonString, A::Error> {
                    let v =
                        serde_json::Value::deserialize(de::value::SeqAccessDeserializer::new(s))?;
                    Ok(JsonString(sorted(v).to_string()))
                }
            }
            d.deserialize_any(V)
        }
    }

    fn sorted(v: serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(m) => {
                let m: BTreeMap<String, serde_json::Value> =
                    m.into_iter().map(|(k, v)| (k, sorted(v))).collect();
                serde_json::Value::Object(m.into_iter().collect())
            }
            serde_json::Value::Array(a) => a.into_iter().map(sorted).collect(),
            other => other,
        }
    }

    /// humantime_serde's reading of an optional duration.
    fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s = Option::<String>::deserialize(d)?;
        s.map(|s| {
            humantime::parse_duration(&s)
                .map_err(|_| de::Error::invalid_value(Unexpected::Str(&s), &"a duration"))
        })
        .transpose()
    }

    /// bytesize_serde.rs's reading of an optional size (bytes).
    fn size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        match Option::<Value>::deserialize(d)? {
            None => Ok(None),
            Some(Value::Number(n)) => n
                .as_u64()
                .map(Some)
                .ok_or_else(|| de::Error::custom("expected parsable string")),
            Some(Value::String(s)) => s
                .parse::<bytesize::ByteSize>()
                .map(|b| Some(b.as_u64()))
                .map_err(|_| de::Error::invalid_value(Unexpected::Str(&s), &"parsable string")),
            Some(_) => Err(de::Error::custom("expected parsable string")),
        }
    }

    fn non_zero<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        match u64::deserialize(d)? {
            0 => Err(de::Error::custom("count must be non-zero")),
            n => Ok(n),
        }
    }

    /// A parsed file (`ConnectorConfig`).
    #[derive(Debug)]
    pub(crate) enum Parsed {
        V0(ConfigV1),
        V1(ConfigV1),
        V2(ConfigV2),
    }

    impl Parsed {
        pub(crate) fn api_version(&self) -> &'static str {
            match self {
                Self::V0(_) => "0.0.0",
                Self::V1(_) => "0.1.0",
                Self::V2(_) => "0.2.0",
            }
        }
        pub(crate) fn name(&self) -> &str {
            match self {
                Self::V0(c) | Self::V1(c) => &c.meta.name,
                Self::V2(c) => &c.meta.name,
            }
        }
        pub(crate) fn type_(&self) -> &str {
            match self {
                Self::V0(c) | Self::V1(c) => &c.meta.type_,
                Self::V2(c) => &c.meta.type_,
            }
        }
        pub(crate) fn version(&self) -> &str {
            match self {
                Self::V0(c) | Self::V1(c) => &c.meta.version,
                Self::V2(c) => &c.meta.version,
            }
        }
        pub(crate) fn topic(&self) -> &str {
            match self {
                Self::V0(c) | Self::V1(c) => &c.meta.topic,
                Self::V2(c) => &c.meta.topic.meta.name,
            }
        }
        pub(crate) fn topic_config(&self) -> Option<&TopicConfig> {
            match self {
                Self::V2(c) => Some(&c.meta.topic),
                _ => None,
            }
        }
        pub(crate) fn producer(&self) -> Option<&Producer> {
            match self {
                Self::V0(c) | Self::V1(c) => c.meta.producer.as_ref(),
                Self::V2(c) => c.meta.producer.as_ref(),
            }
        }
        pub(crate) fn consumer(&self) -> Option<&Consumer> {
            match self {
                Self::V0(c) | Self::V1(c) => c.meta.consumer.as_ref(),
                Self::V2(c) => c.meta.consumer.as_ref(),
            }
        }
        /// The declared secrets Fluvio reads (none for a `0.0.0` file).
        pub(crate) fn secret_names(&self) -> Vec<&str> {
            let list = match self {
                Self::V0(_) => None,
                Self::V1(c) => c.meta.secrets.as_ref(),
                Self::V2(c) => c.meta.secrets.as_ref(),
            };
            list.into_iter()
                .flatten()
                .map(|s| s.name.0.as_str())
                .collect()
        }
        pub(crate) fn transforms(&self) -> &[Step] {
            match self {
                Self::V0(c) | Self::V1(c) => &c.transforms,
                Self::V2(c) => &c.transforms,
            }
        }
    }

    /// `ConnectorConfig::config_from_str` / `from_file`: parse, no rendering.
    pub(crate) fn parse(text: &str) -> Result<Parsed, String> {
        let head: Head = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
        let rest = head.rest;
        match head.api_version.unwrap_or(Version::V0) {
            Version::V0 => ConfigV1::deserialize(rest).map(Parsed::V0),
            Version::V1 => ConfigV1::deserialize(rest).map(Parsed::V1),
            Version::V2 => ConfigV2::deserialize(rest).map(Parsed::V2),
        }
        .map_err(|e| e.to_string())
    }

    /// `render_config_str`: the context's secrets (every declared one read from `store`),
    /// then the whole text rendered as a template with strict undefined values.
    pub(crate) fn render(text: &str, store: &BTreeMap<&str, &str>) -> Result<String, String> {
        let parsed = parse(text)?;
        let mut secrets = BTreeMap::new();
        for name in parsed.secret_names() {
            let value = store
                .get(name)
                .ok_or_else(|| format!("value not found for secret name {name}"))?;
            secrets.insert(name.to_owned(), value.to_string());
        }
        let line_of = |at: usize| text[..at].matches('\n').count() + 1;
        let failure = |kind: &str, at: usize| {
            let line = line_of(at);
            let text_line = text.lines().nth(line - 1).unwrap_or("");
            format!("Error: {kind} at line {line}:`{text_line}`")
        };
        let mut out = String::with_capacity(text.len());
        let mut rest = 0;
        while let Some(found) = text[rest..].find("${") {
            let at = rest + found;
            out.push_str(&text[rest..at]);
            let open = &text[at..];
            let (close, kind) = if open.starts_with("${{") {
                ("}}", 'v')
            } else if open.starts_with("${#") {
                ("#}", 'c')
            } else if open.starts_with("${%") {
                return Err("model: template blocks are not modelled".to_owned());
            } else {
                out.push_str("${");
                rest = at + 2;
                continue;
            };
            let Some(end) = open[3..].find(close) else {
                return Err(failure("syntax error", text.len()));
            };
            let expr = open[3..3 + end].trim();
            if kind == 'v' {
                let value = expr
                    .strip_prefix("secrets.")
                    .and_then(|name| secrets.get(name.trim()));
                match value {
                    Some(v) => out.push_str(v),
                    None if expr
                        .chars()
                        .all(|c| c.is_alphanumeric() || "._".contains(c)) =>
                    {
                        return Err(failure("undefined value", at));
                    }
                    None => return Err("model: expression not modelled".to_owned()),
                }
            }
            rest = at + 3 + end + close.len();
        }
        out.push_str(&text[rest..]);
        Ok(out)
    }

    /// What a Fluvio connector does at start (fluvio-connector-derive): render, then parse.
    pub(crate) fn start(text: &str, store: &BTreeMap<&str, &str>) -> Result<Parsed, String> {
        let rendered = render(text, store)?;
        serde_yaml::from_str::<Value>(&rendered).map_err(|e| e.to_string())?;
        parse(&rendered)
    }
}

/// A connector file as our loader reads it, with any `meta.type` (the connectors' own structs
/// also check the type and their sections).
#[derive(Debug, Deserialize)]
struct Ours {
    #[serde(rename = "apiVersion")]
    api_version: ApiVersion,
    meta: MetaConfig,
    /// The runner's (crates/transforms) to read.
    #[serde(default)]
    #[allow(dead_code)]
    transforms: Option<serde_yaml::Value>,
    /// The connectors' own sections.
    #[serde(flatten)]
    #[allow(dead_code)]
    sections: BTreeMap<String, serde_yaml::Value>,
}

fn ours(path: &Path, text: &str, store: &SecretStore) -> Result<Ours, String> {
    let r = config::resolve(text, path, store).map_err(|e| e.to_string())?;
    let c: Ours = r.deserialize(path).map_err(|e| e.to_string())?;
    c.meta.validate().map_err(|e| match r.redact(e) {
        ConfigError::Invalid { key, message, .. } => {
            format!("{}: `{key}`: {message}", path.display())
        }
        other => other.to_string(),
    })?;
    Ok(c)
}

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("test-data/fluvio")
}

fn read(name: &str) -> (PathBuf, String) {
    let p = data_dir().join(name);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    (p, text)
}

/// Every declared secret of `text` (as our loader sees them) with a dummy value.
fn dummy_store(names: &[&str]) -> (BTreeMap<&'static str, &'static str>, SecretStore) {
    let leaked: Vec<&'static str> = names
        .iter()
        .map(|n| &*Box::leak(n.to_string().into_boxed_str()))
        .collect();
    let model = leaked.iter().map(|n| (*n, "test-secret")).collect();
    let store = SecretStore::from_pairs(leaked.iter().map(|n| (*n, "test-secret")));
    (model, store)
}

enum Expect {
    /// Accepted.
    Ok,
    /// Refused with exactly this message.
    Err(&'static str),
    /// Refused with a message starting so.
    ErrStarting(&'static str),
}

fn check(what: &str, got: Result<(), String>, want: &Expect) -> Option<String> {
    let bad = match (want, &got) {
        (Expect::Ok, Ok(())) => return None,
        (Expect::Err(w), Err(g)) if g == w => return None,
        (Expect::ErrStarting(w), Err(g)) if g.starts_with(w) => return None,
        (Expect::Ok, _) => "accepted".to_owned(),
        (Expect::Err(w), _) => format!("refused with {w:?}"),
        (Expect::ErrStarting(w), _) => format!("refused with a message starting {w:?}"),
    };
    Some(format!("{what}: expected {bad}, got {got:?}"))
}

/// `(file, the Fluvio test stating the expectation, Fluvio's result (parse only), ours)`.
/// Our messages start with the file path; `{}` below stands for it.
#[rustfmt::skip]
const CASES: &[(&str, &str, Expect, Expect)] = &[
    ("v1-full.yaml", "config/mod.rs full_yaml_test", Expect::Ok,
     Expect::Err("{}: `meta.consumer.partition`: unknown field `partition`, expected one of `id`, `max-bytes`, `max_bytes`")),
    ("v1-full-no-consumer.yaml", "(v1-full.yaml, our side)", Expect::Ok, Expect::Ok),
    ("v2-full-topic-config.yaml", "config/mod.rs deserialize_full_config_v2", Expect::Ok,
     Expect::Err("{}: `meta.consumer.partition`: unknown field `partition`, expected one of `id`, `max-bytes`, `max_bytes`")),
    ("v2-topic-name-only.yaml", "config/mod.rs deserialize_with_topic_config", Expect::Ok, Expect::Ok),
    ("v2-all-partitions.yaml", "config/mod.rs test_deser_partition_config", Expect::Ok,
     Expect::Err("{}: `meta.consumer.partition`: unknown field `partition`, expected one of `id`, `max-bytes`, `max_bytes`")),
    ("v2-many-partitions.yaml", "config/mod.rs test_deser_partition_config", Expect::Ok,
     Expect::Err("{}: `meta.consumer.partition`: unknown field `partition`, expected one of `id`, `max-bytes`, `max_bytes`")),
    ("v2-plain-string-topic.yaml", "issue #18, Fluvio's ConnectorConfig::from_file",
     Expect::Err("invalid type: string \"form.enriched\", expected struct TopicConfig"),
     Expect::Err("{}: `meta.topic`: invalid type: string \"form.enriched\", expected struct TopicConfig")),
    ("v1-topic-map.yaml", "config/mod.rs MetaConfigV1 (topic: String)",
     Expect::Err("invalid type: map, expected a string"),
     Expect::Err("{}: `meta.topic`: invalid type: map, expected a string")),
    ("v1-simple.yaml", "config/mod.rs simple_yaml_test", Expect::Ok,
     Expect::ErrStarting("{}: `meta.create_topic`: unknown field `create_topic`, expected one of")),
    ("v1-version-latest.yaml", "config/mod.rs deserialize_test", Expect::Ok, Expect::Ok),
    ("v0-no-api-version.yaml", "config/mod.rs deserialize_test_untagged", Expect::Ok,
     Expect::Err("{}: `(top level)`: missing field `apiVersion`")),
    ("v0-explicit.yaml", "config/mod.rs (Version::V0)", Expect::Ok, Expect::Ok),
    ("v1-integer-sizes.yaml", "config/mod.rs deserialize_with_integer_batch_size", Expect::Ok, Expect::Ok),
    ("error-missing-version.yaml", "config/mod.rs error_yaml_tests",
     Expect::Err("missing field `version`"),
     Expect::Err("{}: `meta`: missing field `version`")),
    ("error-secret-name-space.yaml", "config/mod.rs error_yaml_tests",
     Expect::Err("Secret name `api key` can only contain alphanumeric ASCII characters and underscores"),
     Expect::Err("{}: `meta.secrets[0].name`: `api key` is not a valid secret name: use letters, digits and `_`, not starting with a digit")),
    ("error-secret-name-digit.yaml", "config/mod.rs error_yaml_tests",
     Expect::Err("Secret name `2fa_token` cannot start with a number"),
     Expect::Err("{}: `meta.secrets[0].name`: `2fa_token` is not a valid secret name: use letters, digits and `_`, not starting with a digit")),
    ("error-secret-name-dash.yaml", "config/mod.rs test_parse_secret_name",
     Expect::Err("Secret name `api-key` can only contain alphanumeric ASCII characters and underscores"),
     Expect::Err("{}: `meta.secrets[0].name`: `api-key` is not a valid secret name: use letters, digits and `_`, not starting with a digit")),
    ("error-api-version.yaml", "config/mod.rs error_yaml_tests",
     Expect::Err("apiVersion: unknown variant `v2`, expected one of `0.0.0`, `0.1.0`, `0.2.0` at line 1 column 13"),
     Expect::Err("{}: `apiVersion`: unknown variant `v2`, expected one of `0.0.0`, `0.1.0`, `0.2.0`")),
    ("error-linger.yaml", "config/mod.rs error_yaml_tests",
     Expect::Err("invalid value: string \"5\", expected a duration"),
     Expect::ErrStarting("{}: `meta.producer.linger`: `5` is not a duration")),
    ("error-compression.yaml", "config/mod.rs error_yaml_tests",
     Expect::Err("unknown variant `brotli`, expected one of `none`, `gzip`, `snappy`, `lz4`, `zstd`"),
     Expect::Err("{}: `meta.producer.compression`: unknown variant `brotli`, expected one of `none`, `gzip`, `snappy`, `lz4`, `zstd`")),
    ("error-batch-size.yaml", "config/mod.rs error_yaml_tests",
     Expect::Err("invalid value: string \"2lots\", expected parsable string"),
     Expect::Err("{}: `meta.producer.batch-size`: `2lots` is not a size; write e.g. `64MB`, `512KiB`, `1000`")),
    ("transform-lookback.yaml", "config/mod.rs test_deserialize_transform", Expect::Ok,
     Expect::Err("{}: `(top level)`: missing field `apiVersion`")),
    ("transform-many.yaml", "config/mod.rs test_deserialize_transform_many", Expect::Ok,
     Expect::Err("{}: `(top level)`: missing field `apiVersion`")),
    ("transform-invalid-yaml.yaml", "config/mod.rs test_deserialize_transform_invalid",
     Expect::Err("mapping values are not allowed in this context at line 14 column 17"),
     Expect::Err("{}: not valid YAML: mapping values are not allowed in this context at line 14 column 17")),
    ("transform-on-error-emit.yaml", "(ours: README's form-flatten step)", Expect::Ok, Expect::Ok),
    ("render-secrets.yaml", "render/mod.rs test_resolve_config", Expect::Ok, Expect::Ok),
    ("render-undeclared-in-comment.yaml", "render/mod.rs test_undefined_context_variable", Expect::Ok, Expect::Ok),
    ("render-unclosed.yaml", "render/mod.rs test_invalid_syntax", Expect::Ok, Expect::Ok),
    ("render-declared-without-value.yaml", "secret.rs, render/context.rs", Expect::Ok, Expect::Ok),
];

/// Rendering (a Fluvio connector's start), `(file, secrets with a value, Fluvio, ours)`: our
/// loader's whole check, secrets included.
#[rustfmt::skip]
const RENDER_CASES: &[(&str, &[&str], Expect, Expect)] = &[
    ("render-secrets.yaml", &["api_key", "interval"], Expect::Ok, Expect::Ok),
    ("render-undeclared-in-comment.yaml", &[],
     Expect::Err("Error: undefined value at line 13:`  #   sasl.password: ${{ secrets.KAFKA_PASSWORD }}`"),
     Expect::Err("{}: line 13: secret `KAFKA_PASSWORD` is not declared in `meta.secrets` (Fluvio renders `${{ … }}` everywhere in the file, comments included)")),
    ("render-unclosed.yaml", &[],
     Expect::ErrStarting("Error: syntax error at line"),
     Expect::Err("{}: line 8: `${{` without a closing `}}` (Fluvio renders `${{ … }}` everywhere in the file, comments included)")),
    ("render-declared-without-value.yaml", &["api_key"],
     Expect::Err("value not found for secret name not_set"),
     Expect::Err("{}: `meta.secrets[1].name`: secret `not_set` has no value: set the environment variable `not_set` or put `not_set=…` in the --secrets file")),
    ("transform-on-error-emit.yaml", &[], Expect::Ok, Expect::Ok),
    ("v2-topic-name-only.yaml", &[], Expect::Ok, Expect::Ok),
];

fn with_path(e: &Expect, path: &Path) -> Expect {
    let leak = |s: &str| -> &'static str {
        Box::leak(
            s.replace("{}", &path.display().to_string())
                .into_boxed_str(),
        )
    };
    match e {
        Expect::Ok => Expect::Ok,
        Expect::Err(s) => Expect::Err(leak(s)),
        Expect::ErrStarting(s) => Expect::ErrStarting(leak(s)),
    }
}

#[test]
fn fluvio_cases_parse_as_fluvio_says_and_ours_agree_or_differ_as_stated() {
    let mut failures = Vec::new();
    let mut names: Vec<String> = std::fs::read_dir(data_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    names.sort();
    let listed: Vec<&str> = CASES.iter().map(|c| c.0).collect();
    for n in &names {
        assert!(
            listed.contains(&n.as_str()),
            "{n} has no expectation in CASES"
        );
    }
    for (file, source, fluvio_want, ours_want) in CASES {
        let (path, text) = read(file);
        let got = fluvio::parse(&text).map(drop);
        failures.extend(check(
            &format!("Fluvio on {file} ({source})"),
            got,
            fluvio_want,
        ));
        // Our loader reads every declared secret: give the parse cases all of theirs.
        let declared: Vec<String> = serde_yaml::from_str::<serde_yaml::Value>(&text)
            .ok()
            .and_then(|v| v.get("meta")?.get("secrets")?.as_sequence().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|s| s.get("name")?.as_str().map(str::to_owned))
            .collect();
        let (_, store) = dummy_store(&declared.iter().map(String::as_str).collect::<Vec<_>>());
        // The render cases' secrets are checked in `rendering_…`; here only the parse.
        let got = if file.starts_with("render-") {
            Ok(())
        } else {
            ours(&path, &text, &store).map(drop)
        };
        failures.extend(check(
            &format!("ours on {file}"),
            got,
            &with_path(ours_want, &path),
        ));
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn rendering_as_a_fluvio_connector_starts_and_ours_agree() {
    let mut failures = Vec::new();
    for (file, set, fluvio_want, ours_want) in RENDER_CASES {
        let (path, text) = read(file);
        let (model, store) = dummy_store(set);
        let got = fluvio::start(&text, &model).map(drop);
        failures.extend(check(&format!("Fluvio start on {file}"), got, fluvio_want));
        let got = ours(&path, &text, &store).map(drop);
        failures.extend(check(
            &format!("ours on {file}"),
            got,
            &with_path(ours_want, &path),
        ));
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));

    // The values are those of the store, with or without spaces in the placeholder.
    let (path, text) = read("render-secrets.yaml");
    let model: BTreeMap<&str, &str> = [("api_key", "my-key"), ("interval", "10s")].into();
    let rendered = fluvio::render(&text, &model).unwrap();
    let v: serde_yaml::Value = serde_yaml::from_str(&rendered).unwrap();
    assert_eq!(v["my_service"]["api_key"].as_str(), Some("my-key"));
    assert_eq!(v["my_service"]["interval"].as_str(), Some("10s"));
    let store = SecretStore::from_pairs(model.iter().map(|(k, v)| (*k, *v)));
    let r = config::resolve(&text, &path, &store).unwrap();
    assert_eq!(r.value["my_service"], v["my_service"]);
}

/// The values Fluvio's tests state for the accepted cases, and ours where we read them.
#[test]
fn accepted_cases_give_fluvios_values() {
    use fluvio::{Compression, CompressionAlgorithm, OffsetStrategy, Partition};

    let (_, text) = read("v1-full.yaml");
    let f = fluvio::parse(&text).unwrap();
    assert_eq!(f.api_version(), "0.1.0");
    assert_eq!(
        (f.name(), f.type_(), f.topic(), f.version()),
        ("orders-mqtt", "mqtt", "orders", "0.2.1")
    );
    assert!(f.topic_config().is_none());
    let p = f.producer().unwrap();
    assert_eq!(p.linger, Some(Duration::from_millis(2)));
    assert_eq!(p.compression, Some(Compression::Gzip));
    assert_eq!(p.batch_size, Some(10_000_000));
    let c = f.consumer().unwrap();
    assert_eq!(c.partition, Partition::One(3));
    assert_eq!(c.max_bytes, Some(2_000_000));
    assert_eq!(f.secret_names(), ["mqtt_password"]);
    let t = &f.transforms()[0];
    assert_eq!(t.uses, "infinyon/json-sql");
    assert_eq!(t.with["mapping"].0, r#"{"table":"orders"}"#);
    assert_eq!(t.with["param"].0, "some_value");
    // Ours, on the same meta without `consumer.partition`.
    let (path, text) = read("v1-full-no-consumer.yaml");
    let (_, store) = dummy_store(&["mqtt_password"]);
    let o = ours(&path, &text, &store).unwrap();
    assert_eq!(o.api_version, ApiVersion::V0_1_0);
    assert_eq!(
        (o.meta.name.as_str(), o.meta.topic.as_str()),
        ("orders-mqtt", "orders")
    );
    assert!(o.meta.topic_config.is_none());
    let op = o.meta.producer.as_ref().unwrap();
    assert_eq!(op.linger, Some(Duration::from_millis(2)));
    assert_eq!(op.batch_size.map(|b| b.as_u64()), Some(10_000_000));
    assert_eq!(
        o.meta
            .consumer
            .as_ref()
            .unwrap()
            .max_bytes
            .map(|b| b.as_u64()),
        Some(2_000_000)
    );

    let (path, text) = read("v2-full-topic-config.yaml");
    let f = fluvio::parse(&text).unwrap();
    assert_eq!(f.api_version(), "0.2.0");
    assert_eq!(f.topic(), "orders-topic");
    let tc = f.topic_config().unwrap();
    assert_eq!(tc.version, "0.1.1");
    assert_eq!(tc.partition.count, Some(6));
    assert_eq!(tc.partition.max_size, Some(bytesize::ByteSize::b(2000)));
    assert_eq!(tc.partition.replication, Some(3));
    assert_eq!(tc.partition.ignore_rack_assignment, Some(true));
    assert_eq!(tc.retention.time, Some(Duration::from_secs(180)));
    assert_eq!(tc.retention.segment_size, Some(bytesize::ByteSize::b(4000)));
    assert_eq!(tc.compression.type_, CompressionAlgorithm::Zstd);
    let d = tc.deduplication.as_ref().unwrap();
    assert_eq!(
        (d.bounds.count, d.bounds.age),
        (50, Some(Duration::from_secs(120)))
    );
    assert_eq!(
        d.filter.transform.uses,
        "infinyon/fluvio-smartmodule-filter-lookback@0.1.0"
    );
    let c = f.consumer().unwrap();
    assert_eq!(c.partition, Partition::One(2));
    assert_eq!(c.id.as_deref(), Some("orders_consumer"));
    let off = c.offset.as_ref().unwrap();
    assert_eq!(off.strategy, OffsetStrategy::Auto);
    assert_eq!(off.flush_period, Some(Duration::from_secs(30)));
    // Ours reads the same topic config once the unsupported `consumer` is taken out.
    let mut v: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    v["meta"].as_mapping_mut().unwrap().remove("consumer");
    let text = serde_yaml::to_string(&v).unwrap();
    let (_, store) = dummy_store(&["mqtt_password"]);
    let o = ours(&path, &text, &store).unwrap();
    assert_eq!(o.meta.topic, "orders-topic");
    let otc = o.meta.topic_config.as_ref().unwrap();
    assert_eq!(otc.version, "0.1.1");
    assert_eq!(otc.partition.count, Some(6));
    assert_eq!(otc.partition.max_size, Some(bytesize::ByteSize::b(2000)));
    assert_eq!(otc.partition.replication, Some(3));
    assert_eq!(otc.partition.ignore_rack_assignment, Some(true));
    assert_eq!(otc.retention.time, Some(Duration::from_secs(180)));
    assert_eq!(
        otc.retention.segment_size,
        Some(bytesize::ByteSize::b(4000))
    );
    assert_eq!(otc.compression.kind, TopicCompression::Zstd);
    let od = otc.deduplication.as_ref().unwrap();
    assert_eq!(
        (od.bounds.count.get(), od.bounds.age),
        (50, Some(Duration::from_secs(120)))
    );
    assert_eq!(od.filter.transform.uses, d.filter.transform.uses);

    let (path, text) = read("v2-topic-name-only.yaml");
    let f = fluvio::parse(&text).unwrap();
    assert_eq!(f.topic(), "orders-topic");
    let tc = f.topic_config().unwrap();
    assert_eq!(
        (tc.version.as_str(), tc.partition.count),
        ("0.1.0", Some(1))
    );
    assert_eq!(tc.compression.type_, CompressionAlgorithm::Any);
    let o = ours(&path, &text, &SecretStore::from_pairs([])).unwrap();
    assert_eq!(o.meta.topic, "orders-topic");
    assert_eq!(o.meta.topic_config.as_ref().unwrap().version, "0.1.0");

    for (file, want) in [
        ("v2-all-partitions.yaml", Partition::All),
        ("v2-many-partitions.yaml", Partition::Many(vec![2, 5])),
    ] {
        let f = fluvio::parse(&read(file).1).unwrap();
        assert_eq!(f.consumer().unwrap().partition, want, "{file}");
    }

    for file in [
        "v1-version-latest.yaml",
        "v0-no-api-version.yaml",
        "v0-explicit.yaml",
    ] {
        let f = fluvio::parse(&read(file).1).unwrap();
        assert_eq!(
            (f.name(), f.topic(), f.type_(), f.version()),
            ("orders-out", "orders", "kafka-sink", "latest"),
            "{file}"
        );
    }
    assert_eq!(
        fluvio::parse(&read("v0-no-api-version.yaml").1)
            .unwrap()
            .api_version(),
        "0.0.0"
    );
    let (path, text) = read("v0-explicit.yaml");
    let o = ours(&path, &text, &SecretStore::from_pairs([])).unwrap();
    assert_eq!(
        (
            o.api_version,
            o.meta.topic.as_str(),
            o.meta.version.as_str()
        ),
        (ApiVersion::V0_0_0, "orders", "latest")
    );

    let (path, text) = read("v1-integer-sizes.yaml");
    let f = fluvio::parse(&text).unwrap();
    assert_eq!(f.consumer().unwrap().max_bytes, Some(2400));
    assert_eq!(f.producer().unwrap().batch_size, Some(3200));
    let o = ours(&path, &text, &SecretStore::from_pairs([])).unwrap();
    assert_eq!(
        o.meta.consumer.unwrap().max_bytes.map(|b| b.as_u64()),
        Some(2400)
    );
    assert_eq!(
        o.meta.producer.unwrap().batch_size.map(|b| b.as_u64()),
        Some(3200)
    );

    let f = fluvio::parse(&read("transform-lookback.yaml").1).unwrap();
    let t = &f.transforms()[0];
    assert_eq!(t.uses, "infinyon/sql");
    let lb = t.lookback.as_ref().unwrap();
    assert_eq!((lb.last, lb.age), (20, Some(Duration::from_secs(7200))));
    assert_eq!(
        t.with["mapping"].0,
        r#"{"map-columns":{"order_id":{"json-key":"order.id","value":{"default":0,"required":true,"type":"int"}},"raw":{"json-key":"$","value":{"required":true,"type":"jsonb"}}},"table":"orders"}"#
    );
    let f = fluvio::parse(&read("transform-many.yaml").1).unwrap();
    let t = f.transforms();
    assert_eq!(
        t.iter().map(|s| s.uses.as_str()).collect::<Vec<_>>(),
        [
            "infinyon/json-sql",
            "infinyon/avro-sql",
            "infinyon/regex-filter"
        ]
    );
    assert_eq!(t[0].with["mapping"].0, r#"{"table":"orders"}"#);
    assert!(t[1].with.is_empty());
    assert_eq!(t[2].with["regex"].0, r"\d+");
    let f = fluvio::parse(&read("transform-on-error-emit.yaml").1).unwrap();
    assert_eq!(f.transforms()[0].uses, "form-flatten");
    assert_eq!(f.transforms()[0].with["on-error"].0, "emit");
}

/// Every connector file under `config/`: Fluvio parses it (`ConnectorConfig::from_file`) and
/// starts from it (render, then parse) with its declared secrets set, and reads the same meta
/// as our loader; with its `meta.topic` written as a plain string, both refuse it with
/// Fluvio's message.
#[test]
fn every_shipped_config_passes_fluvios_rules() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let shown = path.display().to_string();
        let parsed = fluvio::parse(&text).unwrap_or_else(|e| panic!("Fluvio on {shown}: {e}"));
        assert_eq!(parsed.api_version(), "0.2.0", "{shown}");
        let declared = parsed.secret_names();
        let (model, store) = dummy_store(&declared);
        let started =
            fluvio::start(&text, &model).unwrap_or_else(|e| panic!("Fluvio start on {shown}: {e}"));
        let o = ours(&path, &text, &store).unwrap_or_else(|e| panic!("ours on {shown}: {e}"));
        for f in [&parsed, &started] {
            assert_eq!(f.name(), o.meta.name, "{shown}");
            assert_eq!(f.type_(), o.meta.connector_type, "{shown}");
            assert_eq!(f.version(), o.meta.version, "{shown}");
            assert_eq!(f.topic(), o.meta.topic, "{shown}");
            assert_eq!(
                f.topic_config().map(|t| t.version.as_str()),
                o.meta.topic_config.as_ref().map(|t| t.version.as_str())
            );
        }
        let ours_declared: Vec<&str> = o.meta.secrets.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(ours_declared, declared, "{shown}");
        for step in started.transforms() {
            assert!(!step.uses.is_empty(), "{shown}");
        }
        // Fluvio's version check, on the same file with the 0.1.0 form of `meta.topic`.
        let mut v: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
        let name = o.meta.topic.clone();
        v["meta"]["topic"] = serde_yaml::Value::String(name.clone());
        let plain = serde_yaml::to_string(&v).unwrap();
        let want = format!("invalid type: string {name:?}, expected struct TopicConfig");
        assert_eq!(fluvio::parse(&plain).unwrap_err(), want, "{shown}");
        assert_eq!(
            ours(&path, &plain, &store).unwrap_err(),
            format!("{shown}: `meta.topic`: {want}")
        );
        seen += 1;
    }
    assert!(
        seen >= 2,
        "only {seen} connector files in {}",
        dir.display()
    );
}

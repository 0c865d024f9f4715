//! `config/form-s3-sink.yaml`: the sink's typed configuration.

use std::num::NonZeroU64;
use std::path::PathBuf;
use std::time::Duration;

use apache_avro::Codec;
use connector_common::config::{ApiVersion, ConfigError, ConnectorConfig, MetaConfig};
use connector_common::dlq::DlqConfig;
use connector_common::kafka::KafkaConfig;
use connector_common::retry::RetryPolicy;
use connector_common::telemetry::MetricsConfig;
use connector_common::{ByteSize, Secret};
use serde::Deserialize;

use crate::rolling::RollingPolicy;
use std::sync::Arc;

use crate::store::{FsStore, ObjectStore, S3Store};

/// Default config file of the binary.
pub(crate) const DEFAULT_CONFIG: &str = "config/form-s3-sink.yaml";

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub(crate) struct SinkConfig {
    #[serde(rename = "apiVersion")]
    #[allow(dead_code)]
    pub(crate) api_version: ApiVersion,
    pub(crate) meta: MetaConfig,
    /// Kafka: brokers, the topic to read (`form.enriched`), group, passthrough properties.
    pub(crate) kafka: KafkaConfig,
    /// Dead-letter topic.
    #[serde(default)]
    pub(crate) dlq: DlqConfig,
    /// `/metrics` and `/health` address, progress line interval.
    #[serde(default)]
    pub(crate) metrics: Option<MetricsConfig>,
    /// Offset commits.
    #[serde(default)]
    pub(crate) commit: CommitConfig,
    /// Output: S3 (or `file://`), file format and rolling.
    pub(crate) s3: S3Config,
    /// How the tables' schemas follow the data.
    #[serde(default)]
    pub(crate) schema: SchemaConfig,
    /// What is written: files (`type: files`, `format: avro | parquet`, the default Avro).
    #[serde(default)]
    pub(crate) output: OutputConfig,
    /// The SmartModule chain (`uses`: a name looked up as `<name>.wasm` in
    /// `$FORM_ETL_SMARTMODULE_DIR` then `target/wasm32-unknown-unknown/release/`, or a path
    /// ending in `.wasm`; `with`: init parameters), run in-process by form-transforms. The
    /// last step's output must be form-flatten's `{form, form_field}` JSON. The files are
    /// watched: a changed module is swapped in between batches.
    #[serde(default)]
    pub(crate) transforms: Vec<form_transforms::TransformStep>,
}

impl ConnectorConfig for SinkConfig {
    const TYPE: &'static str = "s3-sink";

    fn meta(&self) -> &MetaConfig {
        &self.meta
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.kafka.validate("kafka")?;
        self.s3.validate()?;
        self.schema.validate()?;
        if let OutputConfig::Iceberg(ic) = &self.output {
            if self.s3.is_local() {
                return Err(ConfigError::invalid(
                    "output",
                    "Iceberg tables need S3 (`s3.endpoint` is `file://`): use an S3 server",
                ));
            }
            if self.schema.on_type_conflict == ConflictPolicy::Widen {
                return Err(ConfigError::invalid(
                    "schema.on-type-conflict",
                    "`widen` turns a long column into a double, which Iceberg cannot do: use `rescue` or `dlq` with `output.type: iceberg`",
                ));
            }
            if ic.commit_interval.is_zero() {
                return Err(ConfigError::invalid(
                    "output.commit-interval",
                    "must be greater than zero",
                ));
            }
            if ic.namespace.is_empty() || ic.namespace.contains('.') {
                return Err(ConfigError::invalid(
                    "output.namespace",
                    "must be one level, without `.`",
                ));
            }
        }
        if self.transforms.is_empty() {
            return Err(ConfigError::invalid(
                "transforms",
                "must list at least one SmartModule, e.g. `- uses: form-flatten`",
            ));
        }
        if self.commit.interval.is_zero() {
            return Err(ConfigError::invalid(
                "commit.interval",
                "must be greater than zero",
            ));
        }
        Ok(())
    }
}

impl SinkConfig {
    pub(crate) fn group(&self) -> &str {
        self.kafka.group_or(&self.meta.name)
    }

    /// `commit.transactional-id`, else `{meta.name}-{group}-{instance id}`: stable per
    /// instance (a restart fences its dead predecessor and aborts its transaction at once),
    /// different between instances (two sinks from one config do not fence each other).
    pub(crate) fn transactional_id(&self, instance: &str) -> String {
        self.commit
            .transactional_id
            .clone()
            .unwrap_or_else(|| format!("{}-{}-{instance}", self.meta.name, self.group()))
    }

    /// `kafka.properties.group.instance.id`, else `{meta.name}-{instance id}`: static
    /// membership, so a restarted instance takes its partitions back without a rebalance.
    pub(crate) fn group_instance_id(&self, instance: &str) -> String {
        self.kafka
            .properties
            .get("group.instance.id")
            .cloned()
            .unwrap_or_else(|| format!("{}-{instance}", self.meta.name))
    }
}

/// The `output:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub(crate) enum OutputConfig {
    /// Files under `s3.prefix`, made visible and committed with the consumer group's offsets
    /// (`seal.rs`).
    Files {
        /// `avro` (object container files, `s3.codec`) or `parquet` (zstd, `s3.zstd-level`).
        #[serde(default)]
        format: FormatName,
    },
    /// Apache Iceberg tables (Parquet data files), committed with the source offsets in each
    /// snapshot (`lake.rs`, `iceberg_committer.rs`).
    Iceberg(Box<IcebergConfig>),
}

/// `output: {type: iceberg, …}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub(crate) struct IcebergConfig {
    /// The catalog (default: the SQL catalog on SQLite under `--state-dir`).
    #[serde(default)]
    pub(crate) catalog: CatalogConfig,
    /// The catalog's name (the SQL catalog's `catalog_name` column: pyiceberg's
    /// `SqlCatalog(name, …)` must use the same).
    #[serde(default = "default_catalog_name")]
    pub(crate) name: String,
    /// One-level namespace of the tables.
    #[serde(default = "default_namespace")]
    pub(crate) namespace: String,
    #[serde(default)]
    pub(crate) tables: IcebergTables,
    /// How often the open files close and commit (rows are visible about this long after
    /// they arrive).
    #[serde(
        default = "default_iceberg_commit_interval",
        with = "connector_common::duration"
    )]
    pub(crate) commit_interval: Duration,
    /// More catalog and storage properties, passed as they are (`s3.sse.type`,
    /// `header.X-Iceberg-Access-Delegation`, …).
    #[serde(default)]
    pub(crate) properties: std::collections::HashMap<String, String>,
}

fn default_catalog_name() -> String {
    "form_etl".to_owned()
}

fn default_namespace() -> String {
    "form_etl".to_owned()
}

fn default_iceberg_commit_interval() -> Duration {
    Duration::from_secs(10)
}

/// `output.tables`: the tables' names.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub(crate) struct IcebergTables {
    pub(crate) form: String,
    pub(crate) form_field: String,
}

impl Default for IcebergTables {
    fn default() -> Self {
        Self {
            form: form_model::FORM_TABLE.to_owned(),
            form_field: form_model::FORM_FIELD_TABLE.to_owned(),
        }
    }
}

/// `output.catalog`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub(crate) enum CatalogConfig {
    /// Apache Iceberg's JDBC catalog schema in a SQL database: SQLite here (`uri`, default
    /// `sqlite:{--state-dir}/iceberg-catalog.db?mode=rwc`); tables under `warehouse` (default
    /// `s3://{s3.bucket}/{s3.prefix}/iceberg`).
    Sql {
        #[serde(default)]
        uri: Option<String>,
        #[serde(default)]
        warehouse: Option<String>,
    },
    /// An Iceberg REST catalog (Polaris, Nessie, Lakekeeper, Glue's and S3 Tables' REST
    /// endpoints, Apache Iceberg's own server).
    Rest {
        uri: url::Url,
        /// Sent as `GET /v1/config?warehouse=…`.
        #[serde(default)]
        warehouse: Option<String>,
        /// A static bearer token.
        #[serde(default)]
        token: Option<Secret>,
        /// `client_id:client_secret` for the OAuth2 client-credentials flow.
        #[serde(default)]
        credential: Option<Secret>,
    },
    /// Accepted, not built in: use Glue's Iceberg REST endpoint with `type: rest`.
    Glue {},
    /// Accepted, not built in: use S3 Tables' Iceberg REST endpoint with `type: rest`.
    S3Tables {},
}

impl Default for CatalogConfig {
    fn default() -> Self {
        Self::Sql {
            uri: None,
            warehouse: None,
        }
    }
}

impl CatalogConfig {
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Self::Sql { .. } => "sql",
            Self::Rest { .. } => "rest",
            Self::Glue {} => "glue",
            Self::S3Tables {} => "s3-tables",
        }
    }
}

impl Default for OutputConfig {
    fn default() -> Self {
        Self::Files {
            format: FormatName::Avro,
        }
    }
}

/// A file format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum FormatName {
    #[default]
    Avro,
    Parquet,
}

impl SinkConfig {
    /// The files' format.
    pub(crate) fn file_format(&self) -> std::sync::Arc<dyn crate::format::FileFormat> {
        let format = match &self.output {
            OutputConfig::Files { format } => *format,
            OutputConfig::Iceberg(_) => FormatName::Parquet,
        };
        match format {
            FormatName::Avro => std::sync::Arc::new(crate::avro::AvroFormat {
                codec: self.s3.codec.codec(self.s3.zstd_level),
            }),
            FormatName::Parquet => std::sync::Arc::new(crate::parquet_file::ParquetFormat {
                zstd_level: i32::from(self.s3.zstd_level.0),
            }),
        }
    }
}

/// The `schema:` section: schema evolution (see `form_model::evolve` and docs/internals.md,
/// "Schema evolution"). `config/*.avsc` are the starting schemas (version 1); the versions are
/// kept beside the data, `{s3.prefix}/_schemas/{table}/v{N}.avsc`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub(crate) struct SchemaConfig {
    /// `evolve` (a new attribute adds a column) or `strict` (the starting schema only: a row
    /// that does not fit goes to the dead-letter queue).
    pub(crate) mode: SchemaMode,
    /// A value whose type conflicts with its column: `rescue` (the column null, the value in
    /// `_rescued_data`), `widen` (long → double, others rescued), `dlq`.
    pub(crate) on_type_conflict: ConflictPolicy,
    /// Columns per table at most; further attributes go to `_rescued_data`.
    pub(crate) max_columns: usize,
}

impl Default for SchemaConfig {
    fn default() -> Self {
        Self {
            mode: SchemaMode::Evolve,
            on_type_conflict: ConflictPolicy::Rescue,
            max_columns: form_model::evolve::DEFAULT_MAX_COLUMNS,
        }
    }
}

/// `schema.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum SchemaMode {
    Evolve,
    Strict,
}

/// `schema.on-type-conflict`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum ConflictPolicy {
    Rescue,
    Widen,
    Dlq,
}

impl SchemaConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let min = form_model::avro::Table::ALL
            .iter()
            .map(|t| t.columns().len())
            .max()
            .unwrap_or(0);
        if self.max_columns < min {
            return Err(ConfigError::invalid(
                "schema.max-columns",
                format!("must be at least {min} (the starting schemas' columns)"),
            ));
        }
        Ok(())
    }

    pub(crate) fn policy(&self) -> form_model::evolve::Policy {
        use form_model::evolve::{Mode, OnConflict, Policy};
        Policy {
            mode: match self.mode {
                SchemaMode::Evolve => Mode::Evolve,
                SchemaMode::Strict => Mode::Strict,
            },
            on_conflict: match self.on_type_conflict {
                ConflictPolicy::Rescue => OnConflict::Rescue,
                ConflictPolicy::Widen => OnConflict::Widen,
                ConflictPolicy::Dlq => OnConflict::Dlq,
            },
            max_columns: self.max_columns,
        }
    }
}

/// How offsets are committed (with the dead letters, in one Kafka transaction).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub(crate) struct CommitConfig {
    /// How often durable progress is committed.
    #[serde(with = "connector_common::duration")]
    pub(crate) interval: Duration,
    /// Kafka `transactional.id`; default `{meta.name}-{group}-{instance id}` (see
    /// `--instance-id`). Must differ per running instance (a second one with the same id fences
    /// the first).
    pub(crate) transactional_id: Option<String>,
    /// Timeout of each transaction step.
    #[serde(with = "connector_common::duration")]
    pub(crate) timeout: Duration,
    /// How long a drain (SIGTERM, `--max-records`) may take to upload and commit what is open;
    /// past it the sink exits without committing what is not durable (the next run replays it).
    #[serde(with = "connector_common::duration")]
    pub(crate) drain_timeout: Duration,
}

/// Durable progress is committed at most this often (Kafka Connect's S3 sink commits per file).
const DEFAULT_COMMIT_INTERVAL: Duration = Duration::from_millis(500);
/// A drain waits this long for its uploads and commits (Kubernetes' default grace period is
/// 30 s: the same, so a drain that cannot finish ends before the SIGKILL).
const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// librdkafka's `transaction.timeout.ms` default is 60 s; a step waits at most this long.
const DEFAULT_COMMIT_TIMEOUT: Duration = Duration::from_secs(30);

impl Default for CommitConfig {
    fn default() -> Self {
        Self {
            interval: DEFAULT_COMMIT_INTERVAL,
            transactional_id: None,
            timeout: DEFAULT_COMMIT_TIMEOUT,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
        }
    }
}

/// Avro block compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum CodecName {
    /// No compression (`none` too: a bare YAML `null` is not a string).
    #[serde(alias = "none")]
    Null,
    Deflate,
    Snappy,
    Zstd,
}

impl CodecName {
    /// The codec; `zstd_level` applies to `zstd` only.
    pub(crate) fn codec(self, zstd_level: ZstdLevel) -> Codec {
        match self {
            CodecName::Null => Codec::Null,
            CodecName::Deflate => Codec::Deflate(apache_avro::DeflateSettings::default()),
            CodecName::Snappy => Codec::Snappy,
            CodecName::Zstd => Codec::Zstandard(apache_avro::ZstandardSettings::new(zstd_level.0)),
        }
    }
}

/// A zstd compression level, 1 to 19.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ZstdLevel(pub(crate) u8);

/// Level 1, not zstd's own default of 3: on the bench's rows (`make bench`, 64 KiB blocks) its
/// files are ~1.3% larger and it takes ~40% less CPU (~3 against ~5 µs per record), which is a
/// tenth of the sink's CPU per record.
impl Default for ZstdLevel {
    fn default() -> Self {
        Self(1)
    }
}

impl<'de> Deserialize<'de> for ZstdLevel {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let level = u8::deserialize(d)?;
        if !(1..=19).contains(&level) {
            return Err(serde::de::Error::custom(format_args!(
                "zstd level {level} is out of range: 1 (fastest) to 19 (smallest)"
            )));
        }
        Ok(Self(level))
    }
}

/// The `s3:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub(crate) struct S3Config {
    /// `http(s)://…` of an S3-compatible server, or `file:///dir` to write files under `dir`
    /// (same layout, `dir/{bucket}/{prefix}/…`). Absent: AWS's own endpoint for `region`.
    #[serde(default)]
    pub(crate) endpoint: Option<url::Url>,
    /// Region (signing).
    #[serde(default = "default_region")]
    pub(crate) region: String,
    /// Bucket.
    pub(crate) bucket: String,
    /// Key prefix (no leading or trailing `/` needed).
    #[serde(default)]
    pub(crate) prefix: String,
    /// Path-style addressing (`endpoint/bucket/key`), needed by most local S3 servers.
    #[serde(default)]
    pub(crate) path_style: bool,
    /// Static credentials (usually `${{ secrets.… }}`); absent: the standard AWS chain
    /// (environment, profile, web identity, instance metadata).
    #[serde(default)]
    pub(crate) access_key_id: Option<Secret>,
    #[serde(default)]
    pub(crate) secret_access_key: Option<Secret>,
    #[serde(default)]
    pub(crate) session_token: Option<Secret>,
    /// Create the bucket at start if it is missing (local runs).
    #[serde(default)]
    pub(crate) create_bucket: bool,
    /// Avro codec: `null`, `deflate`, `snappy`, `zstd`.
    #[serde(default = "default_codec")]
    pub(crate) codec: CodecName,
    /// Level of the `zstd` codec, 1 (fastest, the default) to 19 (smallest).
    #[serde(default)]
    pub(crate) zstd_level: ZstdLevel,
    /// A file closes after this many rows.
    #[serde(default = "default_max_records")]
    pub(crate) max_records: NonZeroU64,
    /// A file closes once its encoded size reaches this.
    #[serde(default = "default_max_bytes")]
    pub(crate) max_bytes: ByteSize,
    /// A segment closes before a record whose Kafka timestamp is this much later than its
    /// first record's (record time, so a replay closes it at the same offset).
    #[serde(default = "default_max_age", with = "connector_common::duration")]
    pub(crate) max_age: Duration,
    /// A partition with open files and no new record for this long is flushed.
    #[serde(default = "default_idle_flush", with = "connector_common::duration")]
    pub(crate) idle_flush: Duration,
    /// Memory for open files and uploads in flight, all partitions together: a quarter (at
    /// least two parts, at most half) for uploads, the rest for open files. An open file holds
    /// up to two parts (its first part, held back for the header, and the part being filled),
    /// and each partition keeps a file per table (and event date) open, so files reach
    /// `max-bytes` while the open files of all assigned partitions fit, e.g. 3 partitions with
    /// the defaults; past that the largest partition is flushed early (smaller files, memory
    /// still bounded). Code, the SmartModule instances, the Kafka prefetch and the batches in
    /// the pipeline come on top: peak RSS 160–180 MiB with 128 MiB and 64 MiB files
    /// (`tests/integration/tests/sink_memory.rs`).
    #[serde(default = "default_memory_budget")]
    pub(crate) memory_budget: ByteSize,
    /// Multipart part size (S3 needs at least 5 MiB but for the last part).
    #[serde(default = "default_part_size")]
    pub(crate) part_size: ByteSize,
    /// Retries of failed S3 requests: transient errors (the server away, throttling,
    /// timeouts) are retried up to `max-attempts` attempts (absent, the default: for ever, so an
    /// outage stalls the sink), permanent ones (access denied, no such bucket) at most 5 times;
    /// then the sink stops with the error, without committing the range (the next run replays
    /// it).
    #[serde(default)]
    pub(crate) retry: RetryPolicy,
}

fn default_region() -> String {
    "us-east-1".into()
}
/// Measured (see README): zstd is as fast as snappy with apache-avro on our rows, and smaller.
fn default_codec() -> CodecName {
    CodecName::Zstd
}
fn default_max_records() -> NonZeroU64 {
    NonZeroU64::new(1_000_000).expect("non-zero")
}
/// 64 MiB files: large enough for analytics engines, small enough to stream in 8 parts.
fn default_max_bytes() -> ByteSize {
    ByteSize::mib(64)
}
fn default_max_age() -> Duration {
    Duration::from_secs(600)
}
fn default_idle_flush() -> Duration {
    Duration::from_secs(10)
}
fn default_memory_budget() -> ByteSize {
    ByteSize::mib(128)
}
/// 8 MiB: the AWS CLI's default multipart chunk size.
fn default_part_size() -> ByteSize {
    ByteSize::mib(8)
}

/// S3's minimum size of a multipart part (but the last).
const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;

impl S3Config {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.bucket.trim().is_empty() {
            return Err(ConfigError::invalid("s3.bucket", "must not be empty"));
        }
        if let Some(ep) = &self.endpoint
            && !matches!(ep.scheme(), "http" | "https" | "file")
        {
            return Err(ConfigError::invalid(
                "s3.endpoint",
                "must be an `http://`, `https://` or `file://` URL",
            ));
        }
        if self.access_key_id.is_some() != self.secret_access_key.is_some() {
            return Err(ConfigError::invalid(
                "s3.access-key-id",
                "`access-key-id` and `secret-access-key` go together (or leave both out for the AWS credential chain)",
            ));
        }
        if self.max_bytes.as_u64() == 0 {
            return Err(ConfigError::invalid(
                "s3.max-bytes",
                "must be greater than zero",
            ));
        }
        if self.max_age.is_zero() {
            return Err(ConfigError::invalid(
                "s3.max-age",
                "must be greater than zero",
            ));
        }
        if self.idle_flush.is_zero() {
            return Err(ConfigError::invalid(
                "s3.idle-flush",
                "must be greater than zero",
            ));
        }
        if self.part_size.as_u64() < MIN_PART_SIZE {
            return Err(ConfigError::invalid(
                "s3.part-size",
                "must be at least 5MiB (S3's minimum part size)",
            ));
        }
        if self.memory_budget.as_u64() < 4 * self.part_size.as_u64() {
            return Err(ConfigError::invalid(
                "s3.memory-budget",
                "must be at least 4 × `part-size`",
            ));
        }
        self.retry.validate("s3.retry")
    }

    pub(crate) fn rolling(&self) -> RollingPolicy {
        RollingPolicy {
            max_records: self.max_records.get(),
            max_bytes: self.max_bytes.as_u64(),
            max_age: self.max_age,
        }
    }

    /// Whether the output is a local directory (`file://`).
    pub(crate) fn is_local(&self) -> bool {
        self.endpoint
            .as_ref()
            .is_some_and(|ep| ep.scheme() == "file")
    }

    /// Where `s3://bucket/key` goes: `file://` or an S3 client.
    pub(crate) async fn store(&self) -> Arc<dyn ObjectStore> {
        if let Some(ep) = &self.endpoint
            && ep.scheme() == "file"
        {
            let dir = ep
                .to_file_path()
                .unwrap_or_else(|_| PathBuf::from(ep.path()));
            return Arc::new(FsStore::new(dir.join(&self.bucket)));
        }
        Arc::new(S3Store::new(self.s3_client().await, self.bucket.clone()))
    }

    /// An S3 client for the endpoint, region and credentials of this section.
    pub(crate) async fn s3_client(&self) -> aws_sdk_s3::Client {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(self.region.clone()));
        if let (Some(ak), Some(sk)) = (&self.access_key_id, &self.secret_access_key) {
            loader = loader.credentials_provider(aws_credential_types::Credentials::new(
                ak.expose(),
                sk.expose(),
                self.session_token.as_ref().map(|t| t.expose().to_owned()),
                None,
                "form-etl-config",
            ));
        }
        let sdk = loader.load().await;
        let timeouts = aws_config::timeout::TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(3))
            .operation_attempt_timeout(Duration::from_secs(60))
            .build();
        let mut b = aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(self.path_style)
            .timeout_config(timeouts);
        if let Some(ep) = &self.endpoint {
            b = b.endpoint_url(ep.as_str().trim_end_matches('/'));
        }
        aws_sdk_s3::Client::from_conf(b.build())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use connector_common::SecretStore;
    use connector_common::config::{config_files_of_type, dummy_secrets_for, load, load_str};
    use std::path::Path;

    fn config_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config")
    }

    #[test]
    fn every_sink_file_in_config_parses() {
        let files = config_files_of_type(&config_dir(), "s3-sink").unwrap();
        assert!(!files.is_empty(), "config/form-s3-sink.yaml is missing");
        for f in files {
            let c: SinkConfig = load(&f, &dummy_secrets_for(&f)).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(c.s3.codec, CodecName::Zstd);
            assert_eq!(c.s3.part_size.as_u64(), 8 * 1024 * 1024);
        }
    }

    const BASE: &str = "apiVersion: 0.2.0
meta: {name: s, type: s3-sink, version: 0.1.0, topic: {meta: {name: form.enriched}}}
kafka: {brokers: 127.0.0.1:9092, topic: form.enriched}
transforms: [{uses: form-flatten}]
s3:
  bucket: output
";

    fn err(extra: &str) -> String {
        load_str::<SinkConfig>(
            &format!("{BASE}{extra}"),
            Path::new("s.yaml"),
            &SecretStore::from_pairs([]),
        )
        .unwrap_err()
        .to_string()
    }

    #[test]
    fn golden_errors() {
        assert_eq!(
            err("  part-size: 1MiB\n"),
            "s.yaml: `s3.part-size`: must be at least 5MiB (S3's minimum part size)"
        );
        assert_eq!(
            err("  codec: lz4\n"),
            "s.yaml: `s3.codec`: unknown variant `lz4`, expected one of `none`, `null`, `deflate`, `snappy`, `zstd`"
        );
        assert_eq!(
            err("  max-bytes: 0B\n"),
            "s.yaml: `s3.max-bytes`: must be greater than zero"
        );
        assert_eq!(
            err("  max-records: 0\n"),
            "s.yaml: `s3.max-records`: invalid value: integer `0`, expected a nonzero u64"
        );
        assert_eq!(
            err("  buckett: x\n").split(", expected").next().unwrap(),
            "s.yaml: `s3.buckett`: unknown field `buckett`"
        );
        assert_eq!(
            err("  zstd-level: 22\n"),
            "s.yaml: `s3.zstd-level`: zstd level 22 is out of range: 1 (fastest) to 19 (smallest)"
        );
        assert_eq!(
            err("  endpoint: ftp://x\n"),
            "s.yaml: `s3.endpoint`: must be an `http://`, `https://` or `file://` URL"
        );
    }

    #[test]
    fn transforms_are_form_transforms_steps() {
        let text = BASE.replace(
            "transforms: [{uses: form-flatten}]",
            "transforms: [{uses: form-flatten}, {uses: ./x/my_module.wasm, with: {a: b, n: 3}}]",
        );
        let c = load_str::<SinkConfig>(&text, Path::new("s.yaml"), &SecretStore::from_pairs([]))
            .unwrap();
        assert_eq!(c.transforms.len(), 2);
        assert_eq!(
            c.transforms[0],
            form_transforms::TransformStep::new("form-flatten")
        );
        assert_eq!(c.transforms[1].uses, "./x/my_module.wasm");
        assert_eq!(c.transforms[1].with["n"], serde_json::json!(3));
        let empty = BASE.replace("transforms: [{uses: form-flatten}]", "transforms: []");
        let e = load_str::<SinkConfig>(&empty, Path::new("s.yaml"), &SecretStore::from_pairs([]))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "s.yaml: `transforms`: must list at least one SmartModule, e.g. `- uses: form-flatten`"
        );
    }

    #[test]
    fn output_and_schema_sections() {
        let parse = |extra: &str| {
            load_str::<SinkConfig>(
                &format!("{BASE}{extra}"),
                Path::new("s.yaml"),
                &SecretStore::from_pairs([]),
            )
        };
        let c = parse("output: {type: files, format: parquet}\nschema: {mode: strict, on-type-conflict: widen}\n").unwrap();
        assert_eq!(c.file_format().extension(), "parquet");
        assert_eq!(c.schema.mode, SchemaMode::Strict);
        assert_eq!(parse("").unwrap().file_format().extension(), "avro");
        let e = parse("output: {type: files, format: orc}\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown variant `orc`"), "{e}");
        let e = parse("schema: {max-columns: 3}\n").unwrap_err().to_string();
        assert!(
            e.starts_with("s.yaml: `schema.max-columns`: must be at least"),
            "{e}"
        );
    }

    #[test]
    fn iceberg_output_section() {
        let parse = |extra: &str| {
            load_str::<SinkConfig>(
                &format!("{BASE}{extra}"),
                Path::new("s.yaml"),
                &SecretStore::from_pairs([]),
            )
        };
        let c = parse("output: {type: iceberg}\n").unwrap();
        let OutputConfig::Iceberg(ic) = &c.output else {
            panic!("not iceberg: {:?}", c.output)
        };
        assert!(matches!(
            ic.catalog,
            CatalogConfig::Sql {
                uri: None,
                warehouse: None
            }
        ));
        assert_eq!(
            (ic.name.as_str(), ic.namespace.as_str()),
            ("form_etl", "form_etl")
        );
        assert_eq!(
            (ic.tables.form.as_str(), ic.tables.form_field.as_str()),
            ("form", "form_field")
        );
        assert_eq!(ic.commit_interval, Duration::from_secs(10));
        assert_eq!(c.file_format().extension(), "parquet");
        let c = parse(
            "output: {type: iceberg, namespace: lake, commit-interval: 2s, catalog: {type: rest, uri: 'http://127.0.0.1:8181', token: t0k}}\n",
        )
        .unwrap();
        let OutputConfig::Iceberg(ic) = &c.output else {
            panic!()
        };
        let CatalogConfig::Rest { uri, token, .. } = &ic.catalog else {
            panic!("{:?}", ic.catalog)
        };
        assert_eq!(uri.as_str(), "http://127.0.0.1:8181/");
        assert!(
            !format!("{:?}", ic.catalog).contains("t0k"),
            "the token is redacted"
        );
        assert_eq!(token.as_ref().unwrap().expose(), "t0k");
        assert_eq!(ic.catalog.kind(), "rest");
        // Accepted, refused when the sink starts (not built in).
        let c = parse("output: {type: iceberg, catalog: {type: glue}}\n").unwrap();
        let OutputConfig::Iceberg(ic) = &c.output else {
            panic!()
        };
        assert_eq!(ic.catalog.kind(), "glue");
        for (extra, want) in [
            (
                "output: {type: iceberg}\nschema: {on-type-conflict: widen}\n",
                "`schema.on-type-conflict`",
            ),
            (
                "output: {type: iceberg, namespace: a.b}\n",
                "`output.namespace`",
            ),
            (
                "output: {type: iceberg, commit-interval: 0s}\n",
                "`output.commit-interval`",
            ),
            (
                "output: {type: iceberg, catalog: {type: hive}}\n",
                "unknown variant `hive`",
            ),
        ] {
            let e = parse(extra).unwrap_err().to_string();
            assert!(e.contains(want), "{extra}: {e}");
        }
    }

    #[test]
    fn defaults() {
        let c = load_str::<SinkConfig>(BASE, Path::new("s.yaml"), &SecretStore::from_pairs([]))
            .unwrap();
        assert_eq!(c.s3.codec, CodecName::Zstd);
        assert_eq!(c.s3.zstd_level, ZstdLevel(1));
        assert_eq!(c.s3.max_bytes, ByteSize::mib(64));
        assert_eq!(c.transactional_id("h-0"), "s-s-h-0");
        assert_eq!(c.group_instance_id("h-0"), "s-h-0");
    }
}

//! Shared helpers for the integration tests of form-etl.
//!
//! Every integration test talks to the real local cluster (`make cluster-up`): Kafka, the S3
//! server and the forms API. Nothing here mocks them. The helpers give each test:
//!
//! - the cluster's addresses ([`kafka_bootstrap`], [`s3_endpoint`], [`forms_api`], [`forms_admin`],
//!   [`iceberg_rest`]),
//!   from the environment with the defaults of `docs/internals.md`;
//! - [`require_cluster!`]: skip (bare `cargo test`) or fail (`make test`, which sets
//!   `FORM_ETL_REQUIRE_CLUSTER=1`) when a service is unreachable;
//! - [`unique_name`] for topics, groups, buckets and prefixes, so tests never share state;
//! - Kafka: [`create_topic`], [`delete_topic`], [`produce`], [`produce_json`], [`consume_n`],
//!   [`consume_to_end`] (read_committed), [`Received`];
//! - S3: [`s3_client`], [`create_bucket`], [`list_keys`], [`get_object`], [`delete_bucket`];
//! - [`wait_until`] / [`wait_for`]: poll a condition with a deadline (never a fixed sleep);
//! - [`ChildProcess`]: run a binary from `target/release` (a connector, the forms API) with its
//!   output in a log file, stop it (SIGTERM) or kill it (SIGKILL);
//! - [`FormsApiServer`]: a private forms API on free ports, for tests that inject faults
//!   (the shared one on 8000/8001 is used by every test at once and must stay fault-free).
//!
//! Tests run on tokio: `#[tokio::test(flavor = "multi_thread", worker_threads = 2)]`.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow, bail};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

pub use aws_sdk_s3;
pub use rdkafka;

// ---------------------------------------------------------------------------------------------
// Addresses

/// Kafka bootstrap servers: `FORM_ETL_KAFKA`, default `127.0.0.1:9092`.
pub fn kafka_bootstrap() -> String {
    env_or("FORM_ETL_KAFKA", "127.0.0.1:9092")
}

/// S3 endpoint URL: `FORM_ETL_S3_ENDPOINT`, default `http://127.0.0.1:9000`.
pub fn s3_endpoint() -> String {
    env_or("FORM_ETL_S3_ENDPOINT", "http://127.0.0.1:9000")
}

/// Forms API base URL: `FORM_ETL_FORMS_API`, default `http://127.0.0.1:8000`.
pub fn forms_api() -> String {
    env_or("FORM_ETL_FORMS_API", "http://127.0.0.1:8000")
}

/// Forms API admin base URL: `FORM_ETL_FORMS_ADMIN`, default `http://127.0.0.1:8001`.
pub fn forms_admin() -> String {
    env_or("FORM_ETL_FORMS_ADMIN", "http://127.0.0.1:8001")
}

/// Iceberg REST catalog base URL: `FORM_ETL_ICEBERG_REST`, default `http://127.0.0.1:8181`.
pub fn iceberg_rest() -> String {
    env_or("FORM_ETL_ICEBERG_REST", "http://127.0.0.1:8181")
}

/// S3 access key of the local server.
pub const S3_ACCESS_KEY: &str = "admin";
/// S3 secret key of the local server.
pub const S3_SECRET_KEY: &str = "password";
/// S3 region (the local server accepts any; the SDK needs one).
pub const S3_REGION: &str = "us-east-1";
/// The bucket `make cluster-up` creates (tests should create their own with [`create_bucket`]).
pub const S3_BUCKET: &str = "output";

/// Topics `make cluster-up` creates.
pub const TOPIC_EVENTS: &str = "form.events";
/// See [`TOPIC_EVENTS`].
pub const TOPIC_ENRICHED: &str = "form.enriched";
/// See [`TOPIC_EVENTS`].
pub const TOPIC_DLQ: &str = "form.events.dlq";

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

/// The repository root (`/work/main` on the project machines).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the workspace root exists")
}

/// The in-repo seed fixture: `tests/fixtures/seed` (`form.events.kv`, `forms/`, `expected/`).
pub fn seed_fixture_dir() -> PathBuf {
    workspace_root().join("tests/fixtures/seed")
}

/// `target/release/NAME` (binaries are built with `--release`; `make test` builds them first).
pub fn release_bin(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    target.join("release").join(name)
}

/// The avro-tools jar (`FORM_ETL_AVRO_TOOLS_JAR`, default as `make deps` installs it), if present.
pub fn avro_tools_jar() -> Option<PathBuf> {
    let p = std::env::var_os("FORM_ETL_AVRO_TOOLS_JAR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".cache/avro/avro-tools-1.12.1.jar"));
    p.is_file().then_some(p)
}

/// The Python of the venv with fastavro (`FORM_ETL_PYTHON`, default `.cache/venv/bin/python`),
/// if present.
pub fn fastavro_python() -> Option<PathBuf> {
    let p = std::env::var_os("FORM_ETL_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".cache/venv/bin/python"));
    p.is_file().then_some(p)
}

// ---------------------------------------------------------------------------------------------
// Skipping when the cluster is not there

/// A service of the local cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// Kafka at [`kafka_bootstrap`].
    Kafka,
    /// The S3 server at [`s3_endpoint`].
    S3,
    /// The forms API at [`forms_api`] (and its admin port).
    FormsApi,
    /// The Iceberg REST catalog at [`iceberg_rest`].
    IcebergRest,
}

impl Service {
    /// Every service of the cluster.
    pub const ALL: &'static [Service] = &[
        Service::Kafka,
        Service::S3,
        Service::FormsApi,
        Service::IcebergRest,
    ];
}

/// Checks that each service answers: Kafka a metadata request, S3 any HTTP answer, the forms API
/// `GET /health` with 200, the Iceberg REST catalog `GET /v1/config` with 200. The error names the
/// service and its address.
pub async fn check_cluster(services: &[Service]) -> Result<(), String> {
    for s in services {
        match s {
            Service::Kafka => {
                let bootstrap = kafka_bootstrap();
                let b = bootstrap.clone();
                let r = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
                    let admin: AdminClient<DefaultClientContext> = base_config(&b).create()?;
                    admin.inner().fetch_metadata(None, Duration::from_secs(5))?;
                    Ok(())
                })
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string()));
                r.map_err(|e| format!("Kafka at {bootstrap} does not answer ({e})"))?;
            }
            Service::S3 => {
                let url = s3_endpoint();
                http_client()
                    .get(&url)
                    .timeout(Duration::from_secs(3))
                    .send()
                    .await
                    .map_err(|e| format!("the S3 server at {url} does not answer ({e})"))?;
            }
            Service::FormsApi => {
                let url = format!("{}/health", forms_api());
                let ok = http_client()
                    .get(&url)
                    .timeout(Duration::from_secs(3))
                    .send()
                    .await
                    .map(|r| r.status().is_success());
                if !matches!(ok, Ok(true)) {
                    return Err(format!("the forms API at {url} does not answer 200"));
                }
            }
            Service::IcebergRest => {
                let url = format!("{}/v1/config", iceberg_rest());
                let ok = http_client()
                    .get(&url)
                    .timeout(Duration::from_secs(3))
                    .send()
                    .await
                    .map(|r| r.status().is_success());
                if !matches!(ok, Ok(true)) {
                    return Err(format!(
                        "the Iceberg REST catalog at {url} does not answer 200"
                    ));
                }
            }
        }
    }
    Ok(())
}

/// True when `FORM_ETL_REQUIRE_CLUSTER` is set (to anything but `""`/`0`), as `make test` does.
pub fn cluster_required() -> bool {
    std::env::var("FORM_ETL_REQUIRE_CLUSTER").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Whether the test may go on: `true` when every service answers. When one does not, panics if
/// [`cluster_required`], else prints why the test is skipped and returns `false`.
/// Use it through [`require_cluster!`].
pub async fn require_cluster(services: &[Service]) -> bool {
    match check_cluster(services).await {
        Ok(()) => true,
        Err(reason) => {
            let test = std::thread::current().name().unwrap_or("?").to_owned();
            if cluster_required() {
                panic!(
                    "{reason}. FORM_ETL_REQUIRE_CLUSTER is set, so this is a failure: start the \
                     cluster with `make cluster-up` (see `make cluster-status`)."
                );
            }
            // Straight to stderr, not `eprintln!`: libtest would capture that and hide the skip.
            use std::io::Write as _;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED {test}: {reason}. Start the local cluster with `make cluster-up` \
                 (`make test` does it and fails instead of skipping)."
            );
            false
        }
    }
}

/// What a skipped test returns: `()` or `Ok(())`.
pub trait Skipped {
    /// The value a skipped test returns.
    fn skipped() -> Self;
}

impl Skipped for () {
    fn skipped() -> Self {}
}

impl<E> Skipped for Result<(), E> {
    fn skipped() -> Self {
        Ok(())
    }
}

/// Returns early from an async test (returning `()` or `Ok(())`) when the cluster is not
/// reachable and `FORM_ETL_REQUIRE_CLUSTER` is unset; panics when it is set.
///
/// ```ignore
/// #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
/// async fn my_test() -> anyhow::Result<()> {
///     form_etl_tests::require_cluster!();                    // every service
///     form_etl_tests::require_cluster!(&[Service::Kafka]);   // only Kafka
///     Ok(())
/// }
/// ```
#[macro_export]
macro_rules! require_cluster {
    () => {
        $crate::require_cluster!($crate::Service::ALL)
    };
    ($services:expr) => {
        if !$crate::require_cluster($services).await {
            return $crate::Skipped::skipped();
        }
    };
}

// ---------------------------------------------------------------------------------------------
// Names and waiting

static NAME_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A name no other test (and no other run) uses: `{prefix}-{base36 time}-{pid}-{counter}`,
/// lowercase letters, digits and `-` only, at most 63 characters, so it is valid as a topic,
/// a consumer group, an S3 bucket or a key prefix. Other characters of `prefix` become `-`.
pub fn unique_name(prefix: &str) -> String {
    let clean: String = prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as u64;
    let suffix = format!(
        "{}-{}-{}",
        base36(micros),
        base36(u64::from(std::process::id())),
        NAME_COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let keep = 63usize.saturating_sub(suffix.len() + 1);
    let head: String = clean.chars().take(keep).collect();
    let head = head.trim_matches('-');
    let head = if head.is_empty() { "t" } else { head };
    format!("{head}-{suffix}")
}

fn base36(mut n: u64) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).expect("ASCII")
}

/// Polls `check` until it returns `true`, at most for `timeout`; an error names `what`.
/// Polls every 20 ms at first, backing off to 250 ms.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_for(timeout, what, || {
        let fut = check();
        async move { fut.await.then_some(()) }
    })
    .await
}

/// Polls `check` until it returns `Some(value)`, at most for `timeout`, and returns the value.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(20);
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now()))).await;
        pause = (pause * 2).min(Duration::from_millis(250));
    }
}

// ---------------------------------------------------------------------------------------------
// Kafka

/// A client config with the bootstrap servers set (and nothing else).
pub fn base_config(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap);
    c
}

/// An admin client for [`kafka_bootstrap`].
pub fn admin_client() -> anyhow::Result<AdminClient<DefaultClientContext>> {
    base_config(&kafka_bootstrap())
        .create()
        .context("creating the Kafka admin client")
}

/// Creates `topic` (replication 1) and waits until the broker's metadata shows all its
/// partitions with a leader.
pub async fn create_topic(topic: &str, partitions: i32) -> anyhow::Result<()> {
    let admin = admin_client()?;
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &opts,
        )
        .await
        .with_context(|| format!("creating topic {topic}"))?;
    for r in results {
        r.map_err(|(t, code)| anyhow!("creating topic {t}: {code}"))?;
    }
    let topic_owned = topic.to_owned();
    wait_until(
        Duration::from_secs(15),
        &format!("topic {topic} with {partitions} partitions led"),
        || {
            let t = topic_owned.clone();
            async move { partition_count(&t).await.ok() == Some(partitions as usize) }
        },
    )
    .await
}

/// Number of partitions of `topic` that have a leader (error if the topic does not exist).
pub async fn partition_count(topic: &str) -> anyhow::Result<usize> {
    let bootstrap = kafka_bootstrap();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || -> anyhow::Result<usize> {
        let admin: AdminClient<DefaultClientContext> = base_config(&bootstrap).create()?;
        let md = admin
            .inner()
            .fetch_metadata(Some(&topic), Duration::from_secs(5))?;
        let t = md
            .topics()
            .first()
            .ok_or_else(|| anyhow!("no metadata for {topic}"))?;
        if let Some(e) = t.error() {
            bail!("topic {topic}: {e:?}");
        }
        Ok(t.partitions().iter().filter(|p| p.leader() >= 0).count())
    })
    .await?
}

/// Deletes `topic` (errors are returned; a test's cleanup may ignore them).
pub async fn delete_topic(topic: &str) -> anyhow::Result<()> {
    let admin = admin_client()?;
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for r in admin.delete_topics(&[topic], &opts).await? {
        r.map_err(|(t, code)| anyhow!("deleting topic {t}: {code}"))?;
    }
    Ok(())
}

/// A producer for [`kafka_bootstrap`]: idempotent, `acks=all`, small linger.
pub fn producer() -> anyhow::Result<FutureProducer> {
    base_config(&kafka_bootstrap())
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "30000")
        .create()
        .context("creating the Kafka producer")
}

/// Produces one record (`partition` `None`: the partitioner chooses from the key) and returns
/// its `(partition, offset)`. `headers` are UTF-8 name/value pairs.
pub async fn produce(
    producer: &FutureProducer,
    topic: &str,
    key: Option<&[u8]>,
    value: &[u8],
    partition: Option<i32>,
    headers: &[(&str, &str)],
) -> anyhow::Result<(i32, i64)> {
    let mut record = FutureRecord::<[u8], [u8]>::to(topic).payload(value);
    if let Some(k) = key {
        record = record.key(k);
    }
    if let Some(p) = partition {
        record = record.partition(p);
    }
    if !headers.is_empty() {
        let mut h = OwnedHeaders::new_with_capacity(headers.len());
        for (k, v) in headers {
            h = h.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            });
        }
        record = record.headers(h);
    }
    let delivery = producer
        .send(record, Duration::from_secs(30))
        .await
        .map_err(|(e, _)| anyhow!("producing to {topic}: {e}"))?;
    Ok((delivery.partition, delivery.offset))
}

/// Produces `(key, JSON value)` records to `topic`, all in flight at once, and returns their
/// `(partition, offset)` in input order. Records with the same key keep their order.
pub async fn produce_json(
    topic: &str,
    records: &[(String, serde_json::Value)],
) -> anyhow::Result<Vec<(i32, i64)>> {
    let p = producer()?;
    let payloads: Vec<Vec<u8>> = records
        .iter()
        .map(|(_, v)| serde_json::to_vec(v))
        .collect::<Result<_, _>>()?;
    let sends = records.iter().zip(&payloads).map(|((k, _), v)| {
        let p = &p;
        async move { produce(p, topic, Some(k.as_bytes()), v, None, &[]).await }
    });
    futures::future::try_join_all(sends).await
}

/// A consumed record, detached from the consumer.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    /// Topic it was read from.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Key bytes.
    pub key: Option<Vec<u8>>,
    /// Value bytes.
    pub value: Option<Vec<u8>>,
    /// Headers in order (name, value).
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl Received {
    /// The key as UTF-8 (lossy), `""` when absent.
    pub fn key_str(&self) -> String {
        String::from_utf8_lossy(self.key.as_deref().unwrap_or_default()).into_owned()
    }

    /// The value parsed as JSON.
    pub fn value_json(&self) -> anyhow::Result<serde_json::Value> {
        let v = self.value.as_deref().unwrap_or_default();
        serde_json::from_slice(v).with_context(|| {
            format!(
                "value at {}/{}/{} is not JSON: {}",
                self.topic,
                self.partition,
                self.offset,
                String::from_utf8_lossy(v)
            )
        })
    }

    /// The first header called `name`, as UTF-8 (lossy).
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.as_deref())
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    fn from_message<M: Message>(m: &M) -> Self {
        let headers = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                    .collect()
            })
            .unwrap_or_default();
        Self {
            topic: m.topic().to_owned(),
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            value: m.payload().map(<[u8]>::to_vec),
            headers,
        }
    }
}

/// A consumer in `group` (auto commit off, `auto.offset.reset=earliest`,
/// `isolation.level=read_committed`), not yet subscribed.
pub fn consumer(group: &str) -> anyhow::Result<StreamConsumer> {
    base_config(&kafka_bootstrap())
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set("session.timeout.ms", "10000")
        .create()
        .context("creating the Kafka consumer")
}

/// Receives from a subscribed/assigned `consumer` until `n` records arrived or `timeout`
/// passed, and returns what arrived (the caller asserts the exact count).
pub async fn receive_n(
    consumer: &StreamConsumer,
    n: usize,
    timeout: Duration,
) -> anyhow::Result<Vec<Received>> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Err(_) => break,
            Ok(Ok(m)) => out.push(Received::from_message(&m)),
            Ok(Err(e)) => bail!("consuming: {e}"),
        }
    }
    Ok(out)
}

/// Reads `topic` from the beginning, read_committed, in a fresh unique consumer group (nothing
/// committed), until `n` records arrived or `timeout` passed; returns what arrived.
pub async fn consume_n(topic: &str, n: usize, timeout: Duration) -> anyhow::Result<Vec<Received>> {
    let c = consumer(&unique_name("consume-n"))?;
    c.subscribe(&[topic])
        .with_context(|| format!("subscribing to {topic}"))?;
    receive_n(&c, n, timeout).await
}

/// Reads everything `topic` holds now, read_committed, from the beginning: assigns every
/// partition and reads until each one's position reaches the high watermark taken at the start
/// (control records of transactions count as read). Fails after `timeout` (e.g. a transaction
/// left open). Records are in partition order, then offset order.
pub async fn consume_to_end(topic: &str, timeout: Duration) -> anyhow::Result<Vec<Received>> {
    let n_partitions = partition_count(topic).await?;
    let c = consumer(&unique_name("consume-to-end"))?;
    let mut tpl = TopicPartitionList::new();
    let mut ends = Vec::with_capacity(n_partitions);
    for p in 0..n_partitions as i32 {
        let (_low, high) = c
            .fetch_watermarks(topic, p, Duration::from_secs(5))
            .with_context(|| format!("watermarks of {topic}/{p}"))?;
        ends.push(high);
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    c.assign(&tpl)?;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut out = Vec::new();
    loop {
        let position = c.position()?;
        let done = (0..n_partitions as i32).all(|p| {
            let end = ends[p as usize];
            end == 0
                || matches!(
                    position.find_partition(topic, p).map(|e| e.offset()),
                    Some(Offset::Offset(o)) if o >= end
                )
                || out
                    .iter()
                    .any(|r: &Received| r.partition == p && r.offset + 1 >= end)
        });
        if done {
            break;
        }
        match tokio::time::timeout(Duration::from_millis(200), c.recv()).await {
            Err(_) => {}
            Ok(Ok(m)) => out.push(Received::from_message(&m)),
            Ok(Err(e)) => bail!("consuming {topic}: {e}"),
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "reading {topic} to its end ({ends:?}) took more than {timeout:?}; read {} records",
                out.len()
            );
        }
    }
    out.sort_by_key(|r| (r.partition, r.offset));
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// S3

/// An aws-sdk-s3 client for the local server: [`s3_endpoint`], path-style, static credentials,
/// region us-east-1.
pub fn s3_client() -> aws_sdk_s3::Client {
    let creds =
        aws_credential_types::Credentials::new(S3_ACCESS_KEY, S3_SECRET_KEY, None, None, "static");
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .endpoint_url(s3_endpoint())
        .region(aws_sdk_s3::config::Region::new(S3_REGION))
        .credentials_provider(creds)
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

/// Creates `bucket` (fails if it exists).
pub async fn create_bucket(s3: &aws_sdk_s3::Client, bucket: &str) -> anyhow::Result<()> {
    s3.create_bucket()
        .bucket(bucket)
        .send()
        .await
        .with_context(|| format!("creating bucket {bucket}"))?;
    Ok(())
}

/// Every key under `prefix` in `bucket` with its size, sorted (ListObjectsV2, all pages).
pub async fn list_keys(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    prefix: &str,
) -> anyhow::Result<Vec<(String, i64)>> {
    let mut out = Vec::new();
    let mut pages = s3
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.with_context(|| format!("listing s3://{bucket}/{prefix}"))?;
        for o in page.contents() {
            out.push((
                o.key().unwrap_or_default().to_owned(),
                o.size().unwrap_or(0),
            ));
        }
    }
    out.sort();
    Ok(out)
}

/// The bytes of `s3://bucket/key`.
pub async fn get_object(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
) -> anyhow::Result<Vec<u8>> {
    let o = s3
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .with_context(|| format!("getting s3://{bucket}/{key}"))?;
    let body = o
        .body
        .collect()
        .await
        .with_context(|| format!("reading s3://{bucket}/{key}"))?;
    Ok(body.into_bytes().to_vec())
}

/// Deletes every object of `bucket`, then the bucket (test cleanup).
pub async fn delete_bucket(s3: &aws_sdk_s3::Client, bucket: &str) -> anyhow::Result<()> {
    for (key, _) in list_keys(s3, bucket, "").await? {
        s3.delete_object().bucket(bucket).key(&key).send().await?;
    }
    s3.delete_bucket()
        .bucket(bucket)
        .send()
        .await
        .with_context(|| format!("deleting bucket {bucket}"))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// HTTP and processes

/// A plain HTTP client (10 s timeout) for the forms API, metrics and health endpoints.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("building an HTTP client")
}

/// A free TCP port on 127.0.0.1 (bound then released: another process could take it in between,
/// which is unlikely enough for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding an ephemeral port")
}

/// A process started by a test, killed (SIGKILL) when dropped. Its stdout and stderr go to a log
/// file under `target/test-logs/`.
#[derive(Debug)]
pub struct ChildProcess {
    child: tokio::process::Child,
    name: String,
    log: PathBuf,
}

impl ChildProcess {
    /// Starts `target/release/{bin}` with `args` and extra environment `envs`.
    pub fn spawn_release(bin: &str, args: &[&str], envs: &[(&str, &str)]) -> anyhow::Result<Self> {
        let path = release_bin(bin);
        if !path.is_file() {
            bail!(
                "{} is missing: build it with `cargo build --release -p {bin}` (make test does)",
                path.display()
            );
        }
        Self::spawn(&path, args, envs)
    }

    /// Starts `program` with `args` and extra environment `envs`.
    pub fn spawn(program: &Path, args: &[&str], envs: &[(&str, &str)]) -> anyhow::Result<Self> {
        let name = program
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "process".into());
        let dir = workspace_root().join("target/test-logs");
        std::fs::create_dir_all(&dir)?;
        let log = dir.join(format!("{}.log", unique_name(&name)));
        let out = std::fs::File::create(&log)?;
        let err = out.try_clone()?;
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        Ok(Self { child, name, log })
    }

    /// The process id (`None` once it has been reaped).
    pub fn id(&self) -> Option<u32> {
        self.child.id()
    }

    /// Path of the log file holding its stdout and stderr.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last `lines` lines of its log (for failure messages).
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Sends SIGTERM (a clean stop: connectors drain and commit).
    pub fn terminate(&self) -> anyhow::Result<()> {
        let pid = self
            .id()
            .ok_or_else(|| anyhow!("{} already exited", self.name))?;
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()?;
        if !status.success() {
            bail!("kill -TERM {pid} failed");
        }
        Ok(())
    }

    /// Kills it with SIGKILL (a crash) and reaps it.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        self.child.kill().await.context("killing the process")
    }

    /// Waits at most `timeout` for it to exit and returns its exit status.
    pub async fn wait_exit(
        &mut self,
        timeout: Duration,
    ) -> anyhow::Result<std::process::ExitStatus> {
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(r) => Ok(r?),
            Err(_) => bail!(
                "{} did not exit within {timeout:?}; last log lines:\n{}",
                self.name,
                self.log_tail(20)
            ),
        }
    }

    /// `Some(status)` if it has exited, without waiting.
    pub fn try_exit(&mut self) -> anyhow::Result<Option<std::process::ExitStatus>> {
        Ok(self.child.try_wait()?)
    }
}

/// A private forms API server (the `forms-api` binary from `target/release`) on free ports,
/// killed when dropped. For tests that change faults: the shared one must stay fault-free.
#[derive(Debug)]
pub struct FormsApiServer {
    /// The running process.
    pub process: ChildProcess,
    /// Base URL of its API, e.g. `http://127.0.0.1:41234`.
    pub api: String,
    /// Base URL of its admin API.
    pub admin: String,
}

impl FormsApiServer {
    /// Starts `forms-api --forms-dir tests/fixtures/seed/forms --generate N --seed S` on free
    /// ports and waits (10 s at most) until `/health` answers.
    pub async fn start(generate: u64, seed: u64) -> anyhow::Result<Self> {
        let forms_dir = seed_fixture_dir().join("forms");
        let (port, admin_port) = (free_port(), free_port());
        let (p, ap, g, s) = (
            port.to_string(),
            admin_port.to_string(),
            generate.to_string(),
            seed.to_string(),
        );
        let dir = forms_dir.to_string_lossy().into_owned();
        let args = [
            "--port",
            &p,
            "--admin-port",
            &ap,
            "--forms-dir",
            &dir,
            "--generate",
            &g,
            "--seed",
            &s,
        ];
        let mut process = ChildProcess::spawn_release("forms-api", &args, &[("RUST_LOG", "warn")])?;
        let api = format!("http://127.0.0.1:{port}");
        let admin = format!("http://127.0.0.1:{admin_port}");
        let client = http_client();
        let health = format!("{api}/health");
        let ready = wait_until(Duration::from_secs(10), "private forms-api /health", || {
            let req = client.get(&health).timeout(Duration::from_secs(1)).send();
            async move { req.await.is_ok_and(|r| r.status().is_success()) }
        })
        .await;
        if let Err(e) = ready {
            let exited = process.try_exit()?;
            bail!(
                "{e} (exited: {exited:?}); log {}:\n{}",
                process.log_path().display(),
                process.log_tail(20)
            );
        }
        Ok(Self {
            process,
            api,
            admin,
        })
    }

    /// `PUT /faults` with `faults` (a JSON object as in docs/internals.md).
    pub async fn set_faults(&self, faults: serde_json::Value) -> anyhow::Result<()> {
        set_forms_faults(&self.admin, faults).await
    }

    /// `POST /reset`: no faults, counters cleared.
    pub async fn reset(&self) -> anyhow::Result<()> {
        reset_forms_api(&self.admin).await
    }
}

/// `PUT {admin}/faults` with `faults`; fails unless the server accepts them.
pub async fn set_forms_faults(admin: &str, faults: serde_json::Value) -> anyhow::Result<()> {
    let r = http_client()
        .put(format!("{admin}/faults"))
        .json(&faults)
        .send()
        .await?;
    if !r.status().is_success() {
        bail!(
            "PUT {admin}/faults {faults}: {} {}",
            r.status(),
            r.text().await?
        );
    }
    Ok(())
}

/// `POST {admin}/reset`.
pub async fn reset_forms_api(admin: &str) -> anyhow::Result<()> {
    let r = http_client().post(format!("{admin}/reset")).send().await?;
    if !r.status().is_success() {
        bail!("POST {admin}/reset: {}", r.status());
    }
    Ok(())
}

/// `GET {admin}/stats` as JSON.
pub async fn forms_api_stats(admin: &str) -> anyhow::Result<serde_json::Value> {
    Ok(http_client()
        .get(format!("{admin}/stats"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_are_valid_and_distinct() {
        let a = unique_name("My_Test.topic");
        let b = unique_name("My_Test.topic");
        assert_ne!(a, b);
        assert!(a.starts_with("my-test-topic-"), "{a}");
        let long = unique_name(&"x".repeat(200));
        assert!(long.len() <= 63, "{long}");
        for n in [&a, &long] {
            assert!(
                n.bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
            );
        }
    }

    #[tokio::test]
    async fn wait_until_times_out_and_succeeds() {
        let err = wait_until(Duration::from_millis(50), "never", || async { false }).await;
        assert!(err.unwrap_err().to_string().contains("never"));
        let mut n = 0;
        let v = wait_for(Duration::from_secs(5), "third call", || {
            n += 1;
            let n = n;
            async move { (n >= 3).then_some(n) }
        })
        .await
        .unwrap();
        assert_eq!(v, 3);
    }
}
pub mod iceberg_support;
pub mod private_cluster;
pub mod sink_support;
pub mod source_support;

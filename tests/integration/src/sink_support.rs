//! Helpers for the s3-sink integration tests (`tests/sink.rs`, `tests/e2e.rs`): topics, enriched
//! records, per-test configs, spawning the connector binaries, reading the Avro objects back.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

/// Repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repo root")
}

pub fn kafka_addr() -> String {
    std::env::var("FORM_ETL_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

pub fn s3_endpoint() -> String {
    std::env::var("FORM_ETL_S3_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:9000".into())
}

/// `true` if the cluster answers; otherwise panics under `FORM_ETL_REQUIRE_CLUSTER=1`, or
/// prints why the test is skipped.
pub fn cluster_available(test: &str) -> bool {
    let ok = [
        kafka_addr(),
        s3_endpoint().trim_start_matches("http://").to_owned(),
    ]
    .iter()
    .all(|a| {
        std::net::TcpStream::connect_timeout(&a.parse().expect("host:port"), Duration::from_secs(2))
            .is_ok()
    });
    if !ok {
        let msg =
            format!("{test}: the local cluster is not running (start it with `make cluster-up`)");
        if std::env::var("FORM_ETL_REQUIRE_CLUSTER").as_deref() == Ok("1") {
            panic!("{msg}");
        }
        eprintln!("SKIPPED {msg}");
    }
    ok
}

/// A name unique to this test run.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

/// Polls `f` until it returns `Some`, or fails after `deadline`.
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = f().await? {
            return Ok(v);
        }
        if Instant::now() > end {
            bail!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn create_topic(name: &str, partitions: i32) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", kafka_addr())
        .create()?;
    let res = admin
        .create_topics(
            &[NewTopic::new(name, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await?;
    for r in res {
        if let Err((t, e)) = r {
            bail!("creating topic {t}: {e}");
        }
    }
    Ok(())
}

pub fn producer() -> Result<FutureProducer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", kafka_addr())
        .set("linger.ms", "5")
        .set("enable.idempotence", "true")
        .create()?)
}

/// Produces `(partition, key, value)` records, in order, and waits for all.
pub async fn produce(topic: &str, records: &[(i32, String, Vec<u8>)]) -> Result<()> {
    let p = producer()?;
    let mut futs = Vec::new();
    for (part, k, v) in records {
        let rec = FutureRecord::to(topic)
            .partition(*part)
            .key(k.as_bytes())
            .payload(v.as_slice());
        futs.push(p.send_result(rec).map_err(|(e, _)| e)?);
        if futs.len() >= 5000 {
            for f in futs.drain(..) {
                f.await?.map_err(|(e, _)| e)?;
            }
        }
    }
    for f in futs {
        f.await?.map_err(|(e, _)| e)?;
    }
    p.flush(Duration::from_secs(30))?;
    Ok(())
}

/// End offsets of every partition of `topic`.
pub fn end_offsets(topic: &str, partitions: i32) -> Result<Vec<i64>> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka_addr())
        .create()?;
    (0..partitions)
        .map(|p| Ok(c.fetch_watermarks(topic, p, Duration::from_secs(10))?.1))
        .collect()
}

/// Committed offsets of `group` on `topic` (-1: none).
///
/// The group coordinator can take longer than one request timeout to answer on a loaded
/// 2-core machine, so a failed lookup is retried for up to a minute before it fails the test.
pub fn committed(group: &str, topic: &str, partitions: i32) -> Result<Vec<i64>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match committed_once(group, topic, partitions) {
            Err(e) if Instant::now() < deadline => {
                eprintln!("committed offsets of group {group} on {topic}: {e:#}; retrying");
            }
            other => return other,
        }
    }
}

/// One lookup of the committed offsets (`committed` retries it).
pub fn committed_once(group: &str, topic: &str, partitions: i32) -> Result<Vec<i64>> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka_addr())
        .set("group.id", group)
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let got = c.committed_offsets(tpl, Duration::from_secs(10))?;
    Ok((0..partitions)
        .map(|p| match got.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o,
            _ => -1,
        })
        .collect())
}

/// `(partition, key, value)` for `n` enriched records (`{tag}-{i:06}`, 1 to 9 fields, three
/// event days) over `partitions`; returns them and the field-row count.
pub fn enriched_records(
    n: usize,
    tag: &str,
    partitions: i32,
) -> (Vec<(i32, String, Vec<u8>)>, usize) {
    let mut out = Vec::with_capacity(n);
    let mut fields = 0;
    for i in 0..n {
        let id = format!("{tag}-{i:06}");
        let k = 1 + i % 9;
        fields += k;
        out.push((
            (i % partitions as usize) as i32,
            id.clone(),
            enriched(&id, k, 1 + (i % 3) as u32, i as i64),
        ));
    }
    (out, fields)
}

/// An enriched record for form `id` with `fields` fields, as kafka-source writes it.
pub fn enriched(id: &str, fields: usize, day: u32, source_offset: i64) -> Vec<u8> {
    let fields: Vec<serde_json::Value> = (0..fields)
        .map(|i| {
            serde_json::json!({
                "id": format!("{id}-q{i}"), "title": format!("Question {i}?"), "reference": format!("r{i}"),
                "type": "open_text",
                "validations": {"required": i % 2 == 0, "max_length": 100 + i},
                "attachment": {"type": "image", "href": "https://images.example/x"}
            })
        })
        .collect();
    serde_json::json!({
        "event": {"form_id": id, "form_title": "t", "event_happened_at": format!("2022-10-{day:02} 13:00:15"), "event_type": "created"},
        "form": {"id": id, "type": "quiz", "title": format!("Formulaire n°{id}"),
                 "settings": {"language": "fr", "progress_bar": "proportion", "show_time_to_complete": true,
                              "meta": {"allow_indexing": false}},
                 "fields": fields},
        "retrieved_timestamp": "2026-01-02T03:04:05.123456Z",
        "source": {"topic": "form.events", "partition": 0, "offset": source_offset}
    })
    .to_string()
    .into_bytes()
}

/// A per-test sink config. `extra_s3` lines are appended to the `s3:` section.
#[derive(Debug)]
pub struct SinkSetup {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub topic: String,
    pub group: String,
    pub dlq_topic: String,
    pub prefix: String,
    pub bucket: String,
    pub endpoint: String,
    pub metrics_port: u16,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl SinkSetup {
    pub fn new(
        name: &str,
        topic: &str,
        dlq_topic: &str,
        endpoint: &str,
        bucket: &str,
        extra_s3: &str,
    ) -> Result<Self> {
        let dir = root().join("target/it").join(unique(name));
        std::fs::create_dir_all(&dir)?;
        let group = unique(&format!("{name}-g"));
        let prefix = unique(name);
        let metrics_port = free_port();
        let text = format!(
            "apiVersion: 0.2.0
meta: {{name: {name}, type: s3-sink, version: 0.1.0, topic: {{meta: {{name: {topic}}}}}, secrets: [{{name: S3_ACCESS_KEY_ID}}, {{name: S3_SECRET_ACCESS_KEY}}]}}
kafka:
  brokers: {kafka}
  topic: {topic}
  group: {group}
  properties:
    group.instance.id: {group}-i
    session.timeout.ms: '10000'
dlq: {{topic: {dlq_topic}}}
metrics: {{address: '127.0.0.1:{metrics_port}', progress-interval: 2s}}
commit: {{interval: 200ms}}
transforms: [{{uses: form-flatten}}]
s3:
  endpoint: {endpoint}
  region: us-east-1
  bucket: {bucket}
  prefix: {prefix}
  path-style: true
  access-key-id: ${{{{ secrets.S3_ACCESS_KEY_ID }}}}
  secret-access-key: ${{{{ secrets.S3_SECRET_ACCESS_KEY }}}}
{extra_s3}",
            kafka = kafka_addr(),
        );
        let config = dir.join("sink.yaml");
        std::fs::write(&config, text)?;
        Ok(Self {
            dir,
            config,
            topic: topic.into(),
            group,
            dlq_topic: dlq_topic.into(),
            prefix,
            bucket: bucket.into(),
            endpoint: endpoint.into(),
            metrics_port,
        })
    }

    /// Starts `target/release/s3-sink` (log appended to `dir/sink.log`).
    pub fn spawn(&self, extra_args: &[&str]) -> Result<Child> {
        self.spawn_with_env(extra_args, &[])
    }

    /// [`SinkSetup::spawn`] with extra environment variables (e.g. `FORM_ETL_SMARTMODULE_DIR`).
    pub fn spawn_with_env(&self, extra_args: &[&str], env: &[(&str, &Path)]) -> Result<Child> {
        // `FORM_ETL_SINK_BIN` runs another build (e.g. an older commit's, to show that a
        // regression test fails without the fix).
        let bin = std::env::var_os("FORM_ETL_SINK_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| root().join("target/release/s3-sink"));
        anyhow::ensure!(
            bin.exists(),
            "{} is missing: run `cargo build --release -p s3-sink`",
            bin.display()
        );
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("sink.log"))?;
        Command::new(bin)
            .current_dir(root())
            .arg("--config")
            .arg(&self.config)
            .args(extra_args)
            .env("S3_ACCESS_KEY_ID", "admin")
            .env("S3_SECRET_ACCESS_KEY", "password")
            .env("RUST_LOG", "info,s3_sink=debug,rdkafka=warn")
            .envs(env.iter().map(|(k, v)| (*k, v.as_os_str())))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("spawning s3-sink")
    }

    /// A second instance of this sink: same group, topic and output, its own metrics port
    /// and `group.instance.id`, its config in `dir/{tag}/`.
    pub fn second(&self, tag: &str) -> Result<SinkSetup> {
        let dir = self.dir.join(tag);
        std::fs::create_dir_all(&dir)?;
        let config = dir.join("sink.yaml");
        let metrics_port = free_port();
        std::fs::write(
            &config,
            std::fs::read_to_string(&self.config)?
                .replace(
                    &format!("127.0.0.1:{}", self.metrics_port),
                    &format!("127.0.0.1:{metrics_port}"),
                )
                .replace(
                    &format!("group.instance.id: {}-i", self.group),
                    &format!("group.instance.id: {}-{tag}", self.group),
                ),
        )?;
        Ok(SinkSetup {
            dir,
            config,
            topic: self.topic.clone(),
            group: self.group.clone(),
            dlq_topic: self.dlq_topic.clone(),
            prefix: self.prefix.clone(),
            bucket: self.bucket.clone(),
            endpoint: self.endpoint.clone(),
            metrics_port,
        })
    }

    /// Appends `text` to the config (e.g. an `output:` section).
    pub fn append_config(&self, text: &str) -> Result<()> {
        let old = std::fs::read_to_string(&self.config)?;
        std::fs::write(&self.config, format!("{old}{text}"))?;
        Ok(())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("sink.log")).unwrap_or_default()
    }

    pub async fn s3(&self) -> aws_sdk_s3::Client {
        s3_client(&self.endpoint).await
    }

    /// The `/metrics` text, if the sink answers.
    pub async fn metrics(&self) -> Option<String> {
        let url = format!("http://127.0.0.1:{}/metrics", self.metrics_port);
        reqwest::get(url).await.ok()?.text().await.ok()
    }
}

pub async fn s3_client(endpoint: &str) -> aws_sdk_s3::Client {
    let creds = aws_credential_types::Credentials::new("admin", "password", None, None, "tests");
    let conf = aws_sdk_s3::config::Builder::new()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .force_path_style(true)
        .credentials_provider(creds)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

pub async fn ensure_bucket(s3: &aws_sdk_s3::Client, bucket: &str) -> Result<()> {
    if s3.head_bucket().bucket(bucket).send().await.is_err() {
        s3.create_bucket()
            .bucket(bucket)
            .send()
            .await
            .context("creating bucket")?;
    }
    Ok(())
}

/// Every key under `prefix`, sorted.
pub async fn list(s3: &aws_sdk_s3::Client, bucket: &str, prefix: &str) -> Result<Vec<String>> {
    Ok(list_sizes(s3, bucket, prefix)
        .await?
        .into_iter()
        .map(|(k, _)| k)
        .collect())
}

/// Waits until `setup.group` has committed every partition of `setup.topic` up to its end.
pub async fn wait_committed(setup: &SinkSetup, partitions: i32, deadline: Duration) -> Result<()> {
    let end = end_offsets(&setup.topic, partitions)?;
    wait_for("every offset to be committed", deadline, || {
        let (group, topic, end) = (setup.group.clone(), setup.topic.clone(), end.clone());
        async move {
            let c = committed(&group, &topic, partitions)?;
            Ok((c == end).then_some(()))
        }
    })
    .await
}

pub async fn get(s3: &aws_sdk_s3::Client, bucket: &str, key: &str) -> Result<Vec<u8>> {
    let out = s3
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .with_context(|| format!("GET {key}"))?;
    Ok(out.body.collect().await?.into_bytes().to_vec())
}

/// Downloads every data file under `prefix` into `dir` (same relative layout, see
/// [`list_sizes`]); returns the paths.
pub async fn download_all(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    prefix: &str,
    dir: &Path,
) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for key in list(s3, bucket, prefix).await? {
        let path = dir.join(&key);
        std::fs::create_dir_all(path.parent().unwrap())?;
        std::fs::write(&path, get(s3, bucket, &key).await?)?;
        out.push(path);
    }
    Ok(out)
}

/// Rows of Avro files read with fastavro (a reader that is not ours): one JSON object per row,
/// plus `__file` (path) and `__meta` (the file's `form_etl.*` metadata).
pub fn read_with_fastavro(files: &[PathBuf]) -> Result<Vec<serde_json::Value>> {
    let script = r#"
import sys, json, fastavro
for path in sys.argv[1:]:
    with open(path, 'rb') as f:
        r = fastavro.reader(f)
        meta = {k: v.decode() if isinstance(v, bytes) else v for k, v in r.metadata.items() if k.startswith('form_etl.')}
        for rec in r:
            for k, v in list(rec.items()):
                if hasattr(v, 'isoformat'):
                    rec[k] = v.isoformat()
            rec['__file'] = path
            rec['__meta'] = meta
            print(json.dumps(rec, ensure_ascii=False))
"#;
    python_rows(script, &[], files)
}

/// Counts the rows of `files` with Java avro-tools (`count`), if its jar and `java` are here.
pub fn count_with_avro_tools(files: &[PathBuf]) -> Result<Option<u64>> {
    let jar = std::fs::read_dir(root().join(".cache/avro"))
        .ok()
        .and_then(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path())
                .find(|p| p.extension().is_some_and(|x| x == "jar"))
        });
    let Some(jar) = jar else { return Ok(None) };
    let mut total = 0;
    for chunk in files.chunks(500) {
        let out = Command::new("java")
            .arg("-jar")
            .arg(&jar)
            .arg("count")
            .args(chunk)
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "avro-tools count failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout)?;
        total += text
            .trim()
            .lines()
            .last()
            .unwrap_or("0")
            .trim()
            .parse::<u64>()
            .context("avro-tools count output")?;
    }
    Ok(Some(total))
}

/// Sends SIGTERM and waits for the exit status.
pub fn terminate(child: &mut Child, deadline: Duration) -> Result<std::process::ExitStatus> {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    wait_exit(child, deadline).context("after SIGTERM")
}

/// Waits for `child` to exit; past `deadline` it is killed and this fails.
pub fn wait_exit(child: &mut Child, deadline: Duration) -> Result<std::process::ExitStatus> {
    let end = Instant::now() + deadline;
    loop {
        if let Some(s) = child.try_wait()? {
            return Ok(s);
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the process did not exit within {deadline:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The sum of the samples of metric `name` in a Prometheus text scrape.
pub fn metric_value(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Counts of values by key, for duplicate checks.
pub fn duplicates<K: Ord + Clone>(items: impl IntoIterator<Item = K>) -> Vec<(K, usize)> {
    let mut m = BTreeMap::new();
    for k in items {
        *m.entry(k).or_insert(0usize) += 1;
    }
    m.into_iter().filter(|(_, n)| *n > 1).collect()
}

/// Peak RSS of a running process: the largest `VmHWM` read from `/proc/PID/status`, polled on
/// a thread every [`PeakRss::POLL`] until the process is gone or [`PeakRss::stop`] is called.
/// (`wait4`'s `ru_maxrss` is no use: Linux carries the parent's peak over fork+exec.)
#[derive(Debug)]
pub struct PeakRss {
    peak_kib: std::sync::Arc<std::sync::atomic::AtomicU64>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PeakRss {
    /// How often `/proc/PID/status` is read.
    pub const POLL: Duration = Duration::from_millis(10);

    pub fn watch(pid: u32) -> Self {
        use std::sync::atomic::Ordering;
        let peak_kib = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (peak, halt) = (peak_kib.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let path = format!("/proc/{pid}/status");
            while !halt.load(Ordering::Relaxed) {
                let Ok(text) = std::fs::read_to_string(&path) else {
                    return; // reaped
                };
                // A zombie has no `VmHWM` line any more: its last value stays the peak.
                if let Some(kib) = text
                    .lines()
                    .find(|l| l.starts_with("VmHWM:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse::<u64>().ok())
                {
                    peak.fetch_max(kib, Ordering::Relaxed);
                }
                std::thread::sleep(Self::POLL);
            }
        });
        Self {
            peak_kib,
            stop,
            thread: Some(thread),
        }
    }

    /// The peak so far, MiB.
    pub fn peak_mib(&self) -> f64 {
        self.peak_kib.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1024.0
    }

    /// Stops polling; returns the peak, MiB.
    pub fn stop(mut self) -> f64 {
        self.halt();
        self.peak_mib()
    }

    fn halt(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for PeakRss {
    fn drop(&mut self) {
        self.halt();
    }
}

/// `(key, size)` of every data file under `prefix`, sorted (the schema versions under
/// `{prefix}/_schemas/` are left out).
pub async fn list_sizes(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    prefix: &str,
) -> Result<Vec<(String, u64)>> {
    let mut out = Vec::new();
    let mut token = None;
    loop {
        let page = s3
            .list_objects_v2()
            .bucket(bucket)
            .prefix(format!("{prefix}/"))
            .set_continuation_token(token)
            .send()
            .await
            .context("listing objects")?;
        for o in page.contents() {
            // The schema versions the sink keeps beside the data are not data files.
            if let Some(k) = o.key().filter(|k| !k.contains("/_schemas/")) {
                out.push((k.to_owned(), o.size().unwrap_or(0).max(0) as u64));
            }
        }
        match page.next_continuation_token() {
            Some(t) => token = Some(t.to_owned()),
            None => break,
        }
    }
    out.sort();
    Ok(out)
}

/// Deletes every object under `prefix` (clean-up after a test that wrote a lot).
pub async fn delete_prefix(s3: &aws_sdk_s3::Client, bucket: &str, prefix: &str) -> Result<()> {
    for key in list(s3, bucket, prefix).await? {
        s3.delete_object()
            .bucket(bucket)
            .key(&key)
            .send()
            .await
            .with_context(|| format!("DELETE {key}"))?;
    }
    Ok(())
}

/// The kafka-source config of `config/`, pointed at this test's topics.
pub fn shipped_source_config(
    dir: &std::path::Path,
    events: &str,
    enriched: &str,
    dlq: &str,
    group: &str,
) -> Result<std::path::PathBuf> {
    let path = root().join("config/form-events-source.yaml");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("{} (kafka-source's config)", path.display()))?;
    let mut v: serde_yaml::Value = serde_yaml::from_str(&text)?;
    // apiVersion 0.2.0: `meta.topic` is a map (Fluvio's TopicConfig).
    v["meta"]["topic"] = serde_yaml::from_str(&format!("{{meta: {{name: {enriched}}}}}"))?;
    v["meta"]["name"] = "e2e-source".into();
    v["kafka"]["topic"] = events.into();
    v["kafka"]["group"] = group.into();
    v["kafka"]["brokers"] = kafka_addr().into();
    if v.get("dlq").is_some() {
        v["dlq"]["topic"] = dlq.into();
    }
    if v.get("metrics").is_some() {
        v["metrics"]["address"] = format!("127.0.0.1:{}", free_port()).into();
    }
    let out = dir.join("source.yaml");
    std::fs::write(&out, serde_yaml::to_string(&v)?)?;
    Ok(out)
}

/// Runs a Python snippet of the test venv (`FORM_ETL_PYTHON`) with `args` then `files` (200 at
/// a time) as its arguments; one JSON object per printed line.
pub fn python_rows(
    script: &str,
    args: &[&std::ffi::OsStr],
    files: &[PathBuf],
) -> Result<Vec<serde_json::Value>> {
    let python = std::env::var("FORM_ETL_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root().join(".cache/venv/bin/python"));
    anyhow::ensure!(
        python.exists(),
        "{} is missing (installed by `make cluster-up`)",
        python.display()
    );
    let mut rows = Vec::new();
    // Once with no files when there are none (a script that reads something else).
    let chunks: Vec<&[PathBuf]> = if files.is_empty() {
        vec![&[]]
    } else {
        files.chunks(200).collect()
    };
    for chunk in chunks {
        let out = Command::new(&python)
            .arg("-c")
            .arg(script)
            .args(args)
            .args(chunk)
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "python failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for line in String::from_utf8(out.stdout)?.lines() {
            rows.push(serde_json::from_str(line)?);
        }
    }
    Ok(rows)
}

/// Rows of Parquet files read with pyarrow (not our reader): one JSON object per row, plus
/// `__file` and `__meta` (the file's `form_etl.*` key-value metadata).
pub fn read_parquet_with_pyarrow(files: &[PathBuf]) -> Result<Vec<serde_json::Value>> {
    python_rows(
        r#"
import sys, json
import pyarrow.parquet as pq
for path in sys.argv[1:]:
    f = pq.ParquetFile(path)
    meta = {k.decode(): v.decode() for k, v in (f.metadata.metadata or {}).items() if k.startswith(b'form_etl.')}
    for rec in f.read().to_pylist():
        for k, v in list(rec.items()):
            if hasattr(v, 'isoformat'):
                rec[k] = v.isoformat()
        rec['__file'] = path
        rec['__meta'] = meta
        print(json.dumps(rec, ensure_ascii=False))
"#,
        &[],
        files,
    )
}

/// Rows of Parquet files read with DuckDB (`read_parquet`): one JSON object per row, plus
/// `__file`.
pub fn read_parquet_with_duckdb(files: &[PathBuf]) -> Result<Vec<serde_json::Value>> {
    python_rows(
        r#"
import sys, json, duckdb
con = duckdb.connect()
con.execute("SET TimeZone = 'UTC'")
for path in sys.argv[1:]:
    cur = con.execute("SELECT * FROM read_parquet(?, hive_partitioning = false)", [path])
    cols = [d[0] for d in cur.description]
    for row in cur.fetchall():
        rec = dict(zip(cols, row))
        for k, v in list(rec.items()):
            if hasattr(v, 'isoformat'):
                rec[k] = v.isoformat()
        rec['__file'] = path
        print(json.dumps(rec, ensure_ascii=False))
"#,
        &[],
        files,
    )
}

//! Helpers for the kafka-source integration tests (`tests/source.rs`): a per-test config file,
//! starting the connector, scraping its metrics, and the exactly-once check.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail, ensure};

use crate::{
    ChildProcess, Received, consume_to_end, create_topic, free_port, http_client, unique_name,
    wait_for, workspace_root,
};

/// Topics and group of one test.
#[derive(Debug, Clone)]
pub struct SourceTopics {
    /// Input (`form.events` role).
    pub input: String,
    /// Output (`form.enriched` role).
    pub output: String,
    /// Dead-letter topic.
    pub dlq: String,
    /// Consumer group.
    pub group: String,
}

impl SourceTopics {
    /// Creates unique topics (`partitions` each) for test `name`.
    pub async fn create(name: &str, partitions: i32) -> anyhow::Result<Self> {
        let t = Self {
            input: unique_name(&format!("{name}-in")),
            output: unique_name(&format!("{name}-out")),
            dlq: unique_name(&format!("{name}-dlq")),
            group: unique_name(&format!("{name}-g")),
        };
        for topic in [&t.input, &t.output, &t.dlq] {
            create_topic(topic, partitions).await?;
        }
        Ok(t)
    }
}

/// Knobs of the per-test config.
#[derive(Debug, Clone)]
pub struct SourceOptions {
    /// Forms API base URL.
    pub api: String,
    /// `enrich.concurrency`.
    pub concurrency: usize,
    /// `enrich.timeout`.
    pub timeout: &'static str,
    /// `enrich.cache.ttl`.
    pub cache_ttl: &'static str,
    /// `source.transaction-timeout`.
    pub transaction_timeout: &'static str,
    /// `source.commit-interval`.
    pub commit_interval: &'static str,
    /// `kafka.bootstrap` override (a private broker), else [`crate::kafka_bootstrap`].
    pub brokers: Option<String>,
}

impl SourceOptions {
    /// Defaults for tests against `api`.
    pub fn new(api: &str) -> Self {
        Self {
            api: api.to_owned(),
            concurrency: 256,
            timeout: "1s",
            cache_ttl: "5m",
            transaction_timeout: "10s",
            commit_interval: "100ms",
            brokers: None,
        }
    }
}

/// Where the sources of the tests keep their instance locks (`--state-dir`).
pub fn test_state_dir() -> PathBuf {
    workspace_root().join("target/test-logs/state")
}

/// A running kafka-source.
#[derive(Debug)]
pub struct Source {
    /// The process.
    pub process: ChildProcess,
    /// `http://127.0.0.1:{port}`.
    pub metrics_url: String,
    /// The config file written for it.
    pub config: PathBuf,
    /// The arguments it was started with (for [`Source::start_again`]).
    args: Vec<String>,
}

/// Writes a config for `topics` and starts `target/release/kafka-source` with it (plus a
/// `--secrets` file holding the API token) and `extra` flags.
pub fn start_source(
    topics: &SourceTopics,
    opts: &SourceOptions,
    extra: &[&str],
) -> anyhow::Result<Source> {
    let port = free_port();
    let dir = workspace_root().join("target/test-logs");
    std::fs::create_dir_all(&dir)?;
    let name = unique_name("source-cfg");
    let config = dir.join(format!("{name}.yaml"));
    let secrets = dir.join(format!("{name}.secrets"));
    std::fs::write(&secrets, "FORMS_API_TOKEN=test-token-never-logged\n")?;
    let yaml = format!(
        r#"apiVersion: 0.2.0
meta:
  version: 0.1.0
  name: {name}
  type: kafka-source
  topic:
    meta:
      name: {output}
  secrets:
    - name: FORMS_API_TOKEN
kafka:
  brokers: {brokers}
  topic: {input}
  group: {group}
  properties:
    auto.offset.reset: earliest
    session.timeout.ms: "10000"
dlq:
  topic: {dlq}
metrics:
  address: 127.0.0.1:{port}
  progress-interval: 1s
enrich:
  uri: {api}
  token: ${{{{ secrets.FORMS_API_TOKEN }}}}
  timeout: {timeout}
  concurrency: {concurrency}
  retry:
    initial-backoff: 50ms
    max-backoff: 1s
  cache:
    ttl: {ttl}
    max-entries: 10000
source:
  commit-max-records: 2000
  commit-interval: {commit_interval}
  transaction-timeout: {txn_timeout}
  drain-timeout: 10s
"#,
        output = topics.output,
        input = topics.input,
        group = topics.group,
        dlq = topics.dlq,
        brokers = opts.brokers.clone().unwrap_or_else(crate::kafka_bootstrap),
        txn_timeout = opts.transaction_timeout,
        commit_interval = opts.commit_interval,
        api = opts.api,
        timeout = opts.timeout,
        concurrency = opts.concurrency,
        ttl = opts.cache_ttl,
    );
    std::fs::write(&config, yaml)?;
    let cfg = config.to_string_lossy().into_owned();
    let sec = secrets.to_string_lossy().into_owned();
    let mut args = vec!["--config", &cfg, "--secrets", &sec];
    args.extend_from_slice(extra);
    let args: Vec<String> = args.into_iter().map(str::to_owned).collect();
    let process = spawn_source(&args)?;
    Ok(Source {
        process,
        metrics_url: format!("http://127.0.0.1:{port}"),
        config,
        args,
    })
}

fn spawn_source(args: &[String]) -> anyhow::Result<ChildProcess> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let state = test_state_dir().to_string_lossy().into_owned();
    ChildProcess::spawn_release(
        "kafka-source",
        &args,
        &[("RUST_LOG", "info"), ("FORM_ETL_STATE_DIR", &state)],
    )
}

/// Starts `target/release/kafka-source` with the config file `config` as it is (the shipped
/// one, or a copy of it), its metrics at `metrics_url`, plus `extra` flags.
pub fn start_source_with_config(
    config: &std::path::Path,
    metrics_url: &str,
    extra: &[&str],
) -> anyhow::Result<Source> {
    let mut args = vec!["--config".to_owned(), config.to_string_lossy().into_owned()];
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    Ok(Source {
        process: spawn_source(&args)?,
        metrics_url: metrics_url.to_owned(),
        config: config.to_owned(),
        args,
    })
}

impl Source {
    /// Starts the same connector again: same config file (so the same name, the same instance
    /// slot once this one is gone, the same metrics port) and flags.
    pub fn start_again(&self) -> anyhow::Result<Source> {
        Ok(Source {
            process: spawn_source(&self.args)?,
            metrics_url: self.metrics_url.clone(),
            config: self.config.clone(),
            args: self.args.clone(),
        })
    }

    /// `GET /health`: status code and body (`None` if unreachable).
    pub async fn health(&self) -> Option<(u16, String)> {
        let r = http_client()
            .get(format!("{}/health", self.metrics_url))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?;
        let code = r.status().as_u16();
        Some((code, r.text().await.ok()?))
    }

    /// Peak resident memory so far (`VmHWM` of `/proc/{pid}/status`), in KiB.
    pub fn peak_rss_kib(&self) -> anyhow::Result<u64> {
        let pid = self.process.id().context("the source has exited")?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmHWM in /proc/{pid}/status")
    }

    /// The first `key=value` field of the log line holding `message` (e.g. the transactional id
    /// of "Transactions initialised."), waiting at most `timeout` for it.
    pub async fn log_field(
        &self,
        message: &str,
        key: &str,
        timeout: Duration,
    ) -> anyhow::Result<String> {
        let path = self.process.log_path().to_owned();
        wait_for(
            timeout,
            &format!("`{message}` with {key}= in the log"),
            || {
                let text = strip_ansi(&std::fs::read_to_string(&path).unwrap_or_default());
                let found = text.lines().filter(|l| l.contains(message)).find_map(|l| {
                    let at = l.find(&format!("{key}="))? + key.len() + 1;
                    let v = l[at..].split_whitespace().next()?;
                    Some(v.trim_matches('"').to_owned())
                });
                async move { found }
            },
        )
        .await
    }

    /// The sum of every series of `metric` in `/metrics` (`None` if unreachable).
    pub async fn metric(&self, metric: &str) -> Option<f64> {
        let text = http_client()
            .get(format!("{}/metrics", self.metrics_url))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        Some(metric_sum(&text, metric))
    }

    /// `metric`, waiting (at most `timeout`) until the endpoint answers.
    pub async fn metric_wait(&self, metric: &str, timeout: Duration) -> anyhow::Result<f64> {
        wait_for(
            timeout,
            &format!("{metric} from {}", self.metrics_url),
            || self.metric(metric),
        )
        .await
    }

    /// Waits until `metric` ≥ `value`; fails early (with the log) if the process exited.
    pub async fn wait_metric_at_least(
        &mut self,
        metric: &str,
        value: f64,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(v) = self.metric(metric).await
                && v >= value
            {
                return Ok(());
            }
            if let Some(st) = self.process.try_exit()? {
                bail!(
                    "kafka-source exited ({st}) before {metric} ≥ {value}:\n{}",
                    self.process.log_tail(30)
                );
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "{metric} did not reach {value} within {timeout:?} (now {:?}); log:\n{}",
                    self.metric(metric).await,
                    self.process.log_tail(30)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// `text` without ANSI escape sequences (`ESC [ … letter`), as a terminal would show it.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Sum of every sample of `metric` (any labels) in Prometheus text.
pub fn metric_sum(text: &str, metric: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(metric)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Reads `topic` to its end until it holds at least `n` records (at most `timeout`).
pub async fn wait_records(
    topic: &str,
    n: usize,
    timeout: Duration,
) -> anyhow::Result<Vec<Received>> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let recs = consume_to_end(topic, Duration::from_secs(60)).await?;
        if recs.len() >= n || tokio::time::Instant::now() >= deadline {
            return Ok(recs);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Checks `form.enriched` records: exactly one per input position in `expected`, none other,
/// keyed by form id, and per input partition in input order within each output partition.
pub fn assert_exactly_once(
    output: &[Received],
    expected: &HashSet<(i32, i64)>,
) -> anyhow::Result<()> {
    let mut seen: HashMap<(i32, i64), usize> = HashMap::new();
    let mut last: HashMap<(i32, i32), i64> = HashMap::new();
    for r in output {
        let v = r.value_json()?;
        let p = v["source"]["partition"]
            .as_i64()
            .context("source.partition")? as i32;
        let o = v["source"]["offset"].as_i64().context("source.offset")?;
        *seen.entry((p, o)).or_default() += 1;
        ensure!(
            r.key_str() == v["event"]["form_id"].as_str().unwrap_or_default(),
            "record {}/{} keyed {:?}, form {}",
            r.partition,
            r.offset,
            r.key_str(),
            v["event"]["form_id"]
        );
        if let Some(prev) = last.insert((r.partition, p), o) {
            ensure!(
                prev < o,
                "output partition {} has input {p}/{o} after {p}/{prev}",
                r.partition
            );
        }
    }
    let dups: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).take(5).collect();
    ensure!(
        dups.is_empty(),
        "duplicates (input position → count): {dups:?}"
    );
    let missing: Vec<_> = expected
        .iter()
        .filter(|k| !seen.contains_key(k))
        .take(5)
        .collect();
    let extra: Vec<_> = seen
        .keys()
        .filter(|k| !expected.contains(k))
        .take(5)
        .collect();
    ensure!(
        missing.is_empty() && extra.is_empty(),
        "{} records for {} inputs; missing e.g. {missing:?}, unexpected e.g. {extra:?}",
        output.len(),
        expected.len()
    );
    Ok(())
}

/// Reads everything `topic` of the broker at `bootstrap` holds now (read_committed, from the
/// beginning, `partitions` partitions) until each partition's position reaches its high
/// watermark as of the start; fails after `timeout`. For private brokers (the helpers of
/// `lib.rs` read the shared one).
pub async fn consume_to_end_at(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    timeout: Duration,
) -> anyhow::Result<Vec<Received>> {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::message::{Headers, Message};
    use rdkafka::{Offset, TopicPartitionList};
    let c: StreamConsumer = crate::base_config(bootstrap)
        .set("group.id", unique_name("consume-at"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    let mut ends = Vec::new();
    for p in 0..partitions {
        ends.push(c.fetch_watermarks(topic, p, Duration::from_secs(10))?.1);
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    c.assign(&tpl)?;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut out: Vec<Received> = Vec::new();
    loop {
        let position = c.position()?;
        let done = (0..partitions).all(|p| {
            let end = ends[p as usize];
            end == 0
                || matches!(position.find_partition(topic, p).map(|e| e.offset()),
                    Some(Offset::Offset(o)) if o >= end)
                || out.iter().any(|r| r.partition == p && r.offset + 1 >= end)
        });
        if done {
            break;
        }
        if let Ok(m) = tokio::time::timeout(Duration::from_millis(200), c.recv()).await {
            let m = m?;
            out.push(Received {
                topic: m.topic().to_owned(),
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().map(<[u8]>::to_vec),
                value: m.payload().map(<[u8]>::to_vec),
                headers: m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                            .collect()
                    })
                    .unwrap_or_default(),
            });
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "reading {topic} at {bootstrap} to its end ({ends:?}) took more than {timeout:?}; read {}",
                out.len()
            );
        }
    }
    out.sort_by_key(|r| (r.partition, r.offset));
    Ok(out)
}

/// A valid event for `form_id`.
pub fn event(form_id: &str, happened_at: &str, event_type: &str) -> serde_json::Value {
    serde_json::json!({
        "form_id": form_id,
        "form_title": "t",
        "event_happened_at": happened_at,
        "event_type": event_type,
    })
}

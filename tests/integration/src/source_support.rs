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
}

impl SourceOptions {
    /// Defaults for tests against `api`.
    pub fn new(api: &str) -> Self {
        Self {
            api: api.to_owned(),
            concurrency: 256,
            timeout: "1s",
            cache_ttl: "5m",
        }
    }
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
  topic: {output}
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
  commit-interval: 100ms
  transaction-timeout: 10s
  drain-timeout: 10s
"#,
        output = topics.output,
        input = topics.input,
        group = topics.group,
        dlq = topics.dlq,
        brokers = crate::kafka_bootstrap(),
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
    let process = ChildProcess::spawn_release("kafka-source", &args, &[("RUST_LOG", "info")])?;
    Ok(Source {
        process,
        metrics_url: format!("http://127.0.0.1:{port}"),
        config,
    })
}

impl Source {
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

/// A valid event for `form_id`.
pub fn event(form_id: &str, happened_at: &str, event_type: &str) -> serde_json::Value {
    serde_json::json!({
        "form_id": form_id,
        "form_title": "t",
        "event_happened_at": happened_at,
        "event_type": event_type,
    })
}

//! One scenario's pipeline on the private cluster: its topics, the connectors' config files
//! (written from the shipped ones in `config/`, pointed at the private cluster), the
//! supervised connectors, a watcher of their `/metrics` and `/health`, the drain wait, and the
//! reading back of everything the oracle judges.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use form_etl_tests::sink_support::{committed, count_with_avro_tools, end_offsets, python_rows};
use form_etl_tests::source_support::metric_sum;
use form_etl_tests::{Received, consume_to_end, free_port, http_client, list_keys, unique_name};
use serde_yaml::Value;
use sha2::{Digest as _, Sha256};

use crate::ctx::{BUCKET, Ctx, S3_ACCESS_KEY};
use crate::flow::{self, Flow, Generator, Ledger, Plan, Times};
use crate::oracle::{self, EnrichedRec, Letter, ObjectRead, Observations, TablesRead};
use crate::supervisor::{ConnectorSpec, ExitRecord, Kill, Supervisor};

/// Time the oracle and the shutdown need at the end of a scenario (kept out of the drain wait).
const RESERVE_FOR_CHECKS: Duration = Duration::from_secs(40);
/// How often the watcher reads every connector's `/metrics` and `/health`.
const WATCH_EVERY: Duration = Duration::from_millis(500);

/// `a/b/c` = `yaml text` replacements of a connector config.
pub(crate) type Overrides = Vec<(&'static str, String)>;

/// Where a scenario's sinks write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Output {
    /// Avro files, from `config/form-s3-sink.yaml`.
    Files,
    /// Iceberg tables on the embedded SQL catalog, from `config/form-s3-sink-iceberg.yaml`: the
    /// catalog's SQLite file in the scenario's directory, the warehouse in the chaos bucket.
    Iceberg,
}

/// The Iceberg tables of an `output: iceberg` pipeline.
#[derive(Debug, Clone)]
pub(crate) struct IcebergTables {
    pub(crate) sqlite_file: PathBuf,
    pub(crate) warehouse: String,
    pub(crate) namespace: String,
}

/// The SQL catalog's name (the sink's default `output.catalog.name`).
const ICEBERG_CATALOG_NAME: &str = "form_etl";

/// What a scenario's pipeline looks like.
#[derive(Debug, Clone)]
pub(crate) struct PipelineOpts {
    pub(crate) output: Output,
    pub(crate) partitions: i32,
    /// Replacements in the sink's config (after the ones pointing it at the private cluster).
    pub(crate) sink: Overrides,
    /// Replacements in the source's config.
    pub(crate) source: Overrides,
    /// Sinks in the group.
    pub(crate) sinks: usize,
    /// The pipeline phase (flow, chaos, drain) must end by then; the oracle comes after.
    pub(crate) budget: Duration,
}

/// One recovery measurement: from a fault (a kill, the end of an outage) until the connector's
/// committed progress moved again, as its `/metrics` shows.
#[derive(Debug, Clone)]
pub(crate) struct Recovery {
    pub(crate) what: String,
    /// `None`: progress had not moved when the measurement ended (after `waited_s`).
    pub(crate) secs: Option<f64>,
    pub(crate) waited_s: f64,
}

/// Committed progress of a connector at a moment, to see it move.
#[derive(Debug, Clone)]
pub(crate) enum Progress {
    /// kafka-source: `kafka_source_committed_records_total` of process `pid`.
    Source { pid: Option<u32>, committed: f64 },
    /// s3-sink: the group's committed offsets (from Kafka) by partition; moved once any
    /// `s3_sink_committed_offset{partition}` is past them.
    Sink { committed: Vec<i64> },
}

/// The `/health` answers seen and where a secret turned up.
#[derive(Debug, Default)]
struct Watched {
    health: BTreeMap<String, usize>,
    secret_hits: Vec<String>,
    scrapes: usize,
}

/// A scenario's pipeline.
#[derive(Debug)]
pub(crate) struct Pipeline {
    pub(crate) name: String,
    pub(crate) dir: PathBuf,
    pub(crate) partitions: i32,
    pub(crate) events_topic: String,
    pub(crate) enriched_topic: String,
    pub(crate) dlq_topic: String,
    pub(crate) source_group: String,
    pub(crate) sink_group: String,
    pub(crate) prefix: String,
    /// `FORM_ETL_SMARTMODULE_DIR` of the sinks (a copy of `form_flatten.wasm`).
    pub(crate) modules_dir: PathBuf,
    /// `output: iceberg`: the tables the sinks commit to.
    pub(crate) iceberg: Option<IcebergTables>,
    sink_secrets: PathBuf,
    source_spec: ConnectorSpec,
    sink_specs: Vec<ConnectorSpec>,
    pub(crate) source: Option<Arc<Supervisor>>,
    pub(crate) sinks: Vec<Arc<Supervisor>>,
    watched: Arc<Mutex<Watched>>,
    watch_urls: Arc<Mutex<Vec<(String, String)>>>,
    watcher: tokio::task::JoinHandle<()>,
    pub(crate) started: Instant,
    pub(crate) deadline: Instant,
    pub(crate) recoveries: Vec<Recovery>,
    pending_recoveries: Vec<tokio::task::JoinHandle<Recovery>>,
    /// Facts for the report (what happened, preconditions).
    pub(crate) notes: Vec<String>,
    /// Scenario-specific failures (on top of the oracle's).
    pub(crate) failures: Vec<String>,
    secrets: Vec<String>,
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.watcher.abort();
        for t in &self.pending_recoveries {
            t.abort();
        }
    }
}

/// Sets `path` (`a/b/c`) in a YAML mapping, creating mappings on the way.
pub(crate) fn set_path(doc: &mut Value, path: &str, value: Value) {
    let mut cur = doc;
    let parts: Vec<&str> = path.split('/').collect();
    for (i, part) in parts.iter().enumerate() {
        if !cur.is_mapping() {
            *cur = Value::Mapping(Default::default());
        }
        let map = cur.as_mapping_mut().expect("a mapping");
        let key = Value::String((*part).to_owned());
        if i + 1 == parts.len() {
            map.insert(key, value);
            return;
        }
        cur = map
            .entry(key)
            .or_insert_with(|| Value::Mapping(Default::default()));
    }
}

/// Reads `path` (`a/b/c`) of a YAML mapping.
pub(crate) fn get_path<'a>(doc: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('/').try_fold(doc, |v, p| v.get(p))
}

fn yaml(text: &str) -> Value {
    serde_yaml::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
}

/// Adds `name` to `meta.secrets` unless it is declared.
fn declare_secret(doc: &mut Value, name: &str) {
    let declared = get_path(doc, "meta/secrets")
        .and_then(Value::as_sequence)
        .is_some_and(|s| {
            s.iter()
                .any(|d| d.get("name").and_then(Value::as_str) == Some(name))
        });
    if declared {
        return;
    }
    let mut list = get_path(doc, "meta/secrets")
        .and_then(Value::as_sequence)
        .cloned()
        .unwrap_or_default();
    let mut decl = serde_yaml::Mapping::new();
    decl.insert("name".into(), name.into());
    list.push(Value::Mapping(decl));
    set_path(doc, "meta/secrets", Value::Sequence(list));
}

/// The session timeout a config gives its consumer, in ms (librdkafka's default: 45 s).
pub(crate) fn session_timeout_ms(doc: &Value) -> u64 {
    get_path(doc, "kafka/properties/session.timeout.ms")
        .and_then(|v| match v {
            Value::String(s) => s.parse().ok(),
            Value::Number(n) => n.as_u64(),
            _ => None,
        })
        .unwrap_or(45_000)
}

/// Scrapes `{url}/metrics` (2 s timeout).
pub(crate) async fn scrape(url: &str) -> Option<String> {
    http_client()
        .get(format!("{url}/metrics"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()
}

/// The samples of `name{…partition="P"…}` by partition.
pub(crate) fn gauge_by_partition(text: &str, name: &str) -> BTreeMap<i32, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let Some(labels) = rest.strip_prefix('{') else {
            continue;
        };
        let Some((labels, value)) = labels.split_once('}') else {
            continue;
        };
        let part = labels.split(',').find_map(|l| {
            l.trim()
                .strip_prefix("partition=\"")
                .and_then(|v| v.strip_suffix('"'))
                .and_then(|v| v.parse::<i32>().ok())
        });
        if let (Some(p), Ok(v)) = (part, value.trim().parse::<f64>()) {
            out.insert(p, v);
        }
    }
    out
}

impl Pipeline {
    /// Creates the scenario's topics and config files; no connector runs yet.
    pub(crate) async fn create(ctx: &Ctx, name: &str, opts: &PipelineOpts) -> anyhow::Result<Self> {
        let started = Instant::now();
        let dir = ctx.run_dir.join(name);
        std::fs::create_dir_all(&dir)?;
        let tag = unique_name(name);
        let (events_topic, enriched_topic, dlq_topic) = (
            format!("{tag}.events"),
            format!("{tag}.enriched"),
            format!("{tag}.dlq"),
        );
        {
            let cluster = ctx.cluster.lock().await;
            for t in [&events_topic, &enriched_topic, &dlq_topic] {
                cluster.kafka.create_topic(t, opts.partitions).await?;
            }
        }
        let source_group = format!("{tag}-source");
        let sink_group = format!("{tag}-sink");
        let prefix = format!("{name}-{}", tag.rsplit('-').next().unwrap_or("x"));
        let modules_dir = dir.join("modules");
        std::fs::create_dir_all(&modules_dir)?;
        std::fs::copy(&ctx.bins.wasm, modules_dir.join("form_flatten.wasm"))?;

        // kafka-source: the shipped file, pointed at the private cluster, with a token secret.
        let mut src = ctx.shipped_source.clone();
        let source_port = free_port();
        for (path, value) in [
            ("meta/topic/meta/name", enriched_topic.as_str()),
            ("kafka/brokers", ctx.bootstrap.as_str()),
            ("kafka/topic", events_topic.as_str()),
            ("kafka/group", source_group.as_str()),
            ("dlq/topic", dlq_topic.as_str()),
            ("enrich/uri", ctx.api.as_str()),
            ("enrich/token", "${{ secrets.FORMS_API_TOKEN }}"),
        ] {
            set_path(&mut src, path, Value::String(value.to_owned()));
        }
        set_path(
            &mut src,
            "metrics/address",
            Value::String(format!("127.0.0.1:{source_port}")),
        );
        declare_secret(&mut src, "FORMS_API_TOKEN");
        for (path, text) in &opts.source {
            set_path(&mut src, path, yaml(text));
        }
        let source_cfg = dir.join("source.yaml");
        std::fs::write(&source_cfg, serde_yaml::to_string(&src)?)?;
        let source_secrets = dir.join("source.secrets");
        std::fs::write(
            &source_secrets,
            format!("FORMS_API_TOKEN={}\n", ctx.secrets.api_token),
        )?;
        let source_spec = ConnectorSpec {
            label: "source".into(),
            bin: ctx.bins.source.clone(),
            args: vec![
                "--config".into(),
                source_cfg.display().to_string(),
                "--secrets".into(),
                source_secrets.display().to_string(),
            ],
            envs: vec![
                ("RUST_LOG".into(), "info".into()),
                ("NO_COLOR".into(), "1".into()),
            ],
            cwd: ctx.root.clone(),
            log: dir.join("source.log"),
            metrics_url: format!("http://127.0.0.1:{source_port}"),
        };

        // s3-sink(s): the shipped file, pointed at the private cluster and bucket.
        let sink_secrets = dir.join("sink.secrets");
        std::fs::write(
            &sink_secrets,
            format!(
                "S3_ACCESS_KEY_ID={S3_ACCESS_KEY}\nS3_SECRET_ACCESS_KEY={}\n",
                ctx.secrets.s3_secret
            ),
        )?;
        // Short names: the local S3 server keeps keys (with the bucket) under ~130 bytes, and
        // Iceberg names its manifest lists long.
        let iceberg = (opts.output == Output::Iceberg).then(|| IcebergTables {
            sqlite_file: dir.join("iceberg-catalog.db"),
            warehouse: format!("s3://{BUCKET}/w{:08x}", rand::random::<u32>()),
            namespace: "chaos".to_owned(),
        });
        let mut sink_specs = Vec::new();
        for i in 0..opts.sinks.max(1) {
            let mut snk = match opts.output {
                Output::Files => ctx.shipped_sink.clone(),
                Output::Iceberg => ctx.shipped_sink_iceberg.clone(),
            };
            if let Some(t) = &iceberg {
                set_path(
                    &mut snk,
                    "output/catalog",
                    yaml(&format!(
                        "{{type: sql, uri: 'sqlite:{}?mode=rwc', warehouse: '{}'}}",
                        t.sqlite_file.display(),
                        t.warehouse
                    )),
                );
                set_path(
                    &mut snk,
                    "output/namespace",
                    Value::String(t.namespace.clone()),
                );
            }
            let port = free_port();
            for (path, value) in [
                ("meta/topic/meta/name", enriched_topic.as_str()),
                ("kafka/brokers", ctx.bootstrap.as_str()),
                ("kafka/topic", enriched_topic.as_str()),
                ("kafka/group", sink_group.as_str()),
                ("dlq/topic", dlq_topic.as_str()),
                ("s3/endpoint", ctx.s3_endpoint.as_str()),
                ("s3/bucket", BUCKET),
                ("s3/prefix", prefix.as_str()),
                ("s3/access-key-id", "${{ secrets.S3_ACCESS_KEY_ID }}"),
                (
                    "s3/secret-access-key",
                    "${{ secrets.S3_SECRET_ACCESS_KEY }}",
                ),
            ] {
                set_path(&mut snk, path, Value::String(value.to_owned()));
            }
            set_path(
                &mut snk,
                "metrics/address",
                Value::String(format!("127.0.0.1:{port}")),
            );
            declare_secret(&mut snk, "S3_ACCESS_KEY_ID");
            declare_secret(&mut snk, "S3_SECRET_ACCESS_KEY");
            for (path, text) in &opts.sink {
                set_path(&mut snk, path, yaml(text));
            }
            // A second instance needs its own instance id where the file names one (as it needs
            // its own metrics port); everything else stays as shipped.
            if i > 0 {
                for path in [
                    "kafka/properties/group.instance.id",
                    "commit/transactional-id",
                ] {
                    if let Some(Value::String(s)) = get_path(&snk, path).cloned() {
                        set_path(&mut snk, path, Value::String(format!("{s}-{i}")));
                    }
                }
            }
            let label = if i == 0 {
                "sink".to_owned()
            } else {
                format!("sink-{}", (b'a' + i as u8) as char)
            };
            let cfg = dir.join(format!("{label}.yaml"));
            std::fs::write(&cfg, serde_yaml::to_string(&snk)?)?;
            sink_specs.push(ConnectorSpec {
                label: label.clone(),
                bin: ctx.bins.sink.clone(),
                args: vec![
                    "--config".into(),
                    cfg.display().to_string(),
                    "--secrets".into(),
                    sink_secrets.display().to_string(),
                ],
                envs: vec![
                    ("RUST_LOG".into(), "info".into()),
                    ("NO_COLOR".into(), "1".into()),
                    (
                        "FORM_ETL_SMARTMODULE_DIR".into(),
                        modules_dir.display().to_string(),
                    ),
                ],
                cwd: ctx.root.clone(),
                log: dir.join(format!("{label}.log")),
                metrics_url: format!("http://127.0.0.1:{port}"),
            });
        }

        let watched = Arc::new(Mutex::new(Watched::default()));
        let watch_urls: Arc<Mutex<Vec<(String, String)>>> = Arc::new(Mutex::new(Vec::new()));
        let secrets: Vec<String> = ctx
            .secrets
            .values()
            .iter()
            .map(|(_, v)| (*v).to_owned())
            .collect();
        let watcher = tokio::spawn(watch(watch_urls.clone(), watched.clone(), secrets.clone()));
        let budget = opts
            .budget
            .min(ctx.remaining().saturating_sub(RESERVE_FOR_CHECKS));
        Ok(Self {
            name: name.to_owned(),
            dir,
            partitions: opts.partitions,
            events_topic,
            enriched_topic,
            dlq_topic,
            source_group,
            sink_group,
            prefix,
            modules_dir,
            iceberg,
            sink_secrets,
            source_spec,
            sink_specs,
            source: None,
            sinks: Vec::new(),
            watched,
            watch_urls,
            watcher,
            started,
            deadline: started + budget,
            recoveries: Vec::new(),
            pending_recoveries: Vec::new(),
            notes: Vec::new(),
            failures: Vec::new(),
            secrets,
        })
    }

    /// The sink config file of instance `i`.
    pub(crate) fn sink_config(&self, i: usize) -> PathBuf {
        self.dir.join(format!("{}.yaml", self.sink_specs[i].label))
    }

    /// A note for the report (also printed).
    pub(crate) fn note(&mut self, text: impl Into<String>) {
        let text = text.into();
        println!(
            "chaos: [{} +{:.1}s] {text}",
            self.name,
            self.started.elapsed().as_secs_f64()
        );
        self.notes.push(text);
    }

    /// A scenario-specific failure (also printed).
    pub(crate) fn fail(&mut self, text: impl Into<String>) {
        let text = text.into();
        println!("chaos: [{}] FAILED CHECK: {text}", self.name);
        self.failures.push(text);
    }

    /// Time left before the pipeline phase's deadline.
    pub(crate) fn left(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// Sleeps `d`, or less if the deadline comes first (noted: the scenario was cut short).
    /// The scenario's own timing (an outage's length, a flow's duration), not a wait for a
    /// condition.
    pub(crate) async fn hold(&mut self, d: Duration) {
        let left = self.left();
        if d > left {
            self.fail(format!(
                "the time budget cut a {:.1}s step of the scenario to {:.1}s",
                d.as_secs_f64(),
                left.as_secs_f64()
            ));
        }
        tokio::time::sleep(d.min(left)).await;
    }

    fn watch(&self, spec: &ConnectorSpec) {
        self.watch_urls
            .lock()
            .expect("watch urls")
            .push((spec.label.clone(), spec.metrics_url.clone()));
    }

    /// Starts the supervised kafka-source.
    pub(crate) fn start_source(&mut self) -> Arc<Supervisor> {
        let s = Arc::new(Supervisor::start(self.source_spec.clone()));
        self.watch(&self.source_spec);
        self.source = Some(s.clone());
        s
    }

    /// Starts supervised sink `i`; its first run gets `first_args` (a `--max-records` run when
    /// `clean_exit`).
    pub(crate) fn start_sink_with(
        &mut self,
        i: usize,
        first_args: Vec<String>,
        clean_exit: bool,
    ) -> Arc<Supervisor> {
        let spec = self.sink_specs[i].clone();
        let s = Arc::new(Supervisor::start_with(spec.clone(), first_args, clean_exit));
        self.watch(&spec);
        self.sinks.push(s.clone());
        s
    }

    /// Starts every sink.
    pub(crate) fn start_sinks(&mut self) {
        for i in 0..self.sink_specs.len() {
            self.start_sink_with(i, Vec::new(), false);
        }
    }

    /// A steady flow to the events topic.
    pub(crate) fn flow(
        &self,
        ctx: &Ctx,
        times: Times,
        plan: Plan,
        rate: f64,
    ) -> anyhow::Result<Flow> {
        let seed =
            ctx.seed ^ u64::from_le_bytes(Sha256::digest(self.name.as_bytes())[..8].try_into()?);
        let generator = Generator::new(seed, times, ctx.form_ids.clone());
        Ok(Flow::start(
            flow::producer(&ctx.bootstrap)?,
            self.events_topic.clone(),
            generator,
            plan,
            rate,
        ))
    }

    /// The connector's committed progress now (for [`Pipeline::measure_recovery`]).
    pub(crate) async fn progress(&self, sup: &Supervisor) -> Progress {
        if sup.label() == "source" {
            let pid = sup.pid();
            let committed = scrape(&sup.spec().metrics_url)
                .await
                .map(|t| metric_sum(&t, "kafka_source_committed_records_total"))
                .unwrap_or(0.0);
            Progress::Source { pid, committed }
        } else {
            let (g, t, n) = (
                self.sink_group.clone(),
                self.enriched_topic.clone(),
                self.partitions,
            );
            let committed = tokio::task::spawn_blocking(move || committed(&g, &t, n))
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_else(|| vec![-1; n as usize]);
            Progress::Sink { committed }
        }
    }

    /// Measures, in the background, how long after `from` the connector's committed progress
    /// moves past `before`; ends early (unmeasured) when the supervisor kills it again, or after
    /// `max`. Collected by [`Pipeline::collect_recoveries`].
    pub(crate) fn measure_recovery(
        &self,
        sup: &Arc<Supervisor>,
        what: String,
        from: Instant,
        before: Progress,
        kill: Option<Kill>,
        max: Duration,
    ) -> tokio::task::JoinHandle<Recovery> {
        let sup = sup.clone();
        tokio::spawn(async move {
            loop {
                let waited = from.elapsed();
                let censored = || Recovery {
                    what: what.clone(),
                    secs: None,
                    waited_s: waited.as_secs_f64(),
                };
                if kill.is_some_and(|k| sup.kills() > k.index + 1) || waited >= max {
                    return censored();
                }
                if let Some(text) = scrape(&sup.spec().metrics_url).await {
                    let moved = match &before {
                        Progress::Source { pid, committed } => {
                            let c = metric_sum(&text, "kafka_source_committed_records_total");
                            let now = sup.pid();
                            if now.is_some() && now == *pid {
                                c > *committed
                            } else {
                                c > 0.0
                            }
                        }
                        Progress::Sink { committed } => {
                            gauge_by_partition(&text, "s3_sink_committed_offset")
                                .iter()
                                .any(|(p, v)| {
                                    committed.get(*p as usize).is_some_and(|c| *v > *c as f64)
                                })
                        }
                    };
                    if moved {
                        return Recovery {
                            what,
                            secs: Some(from.elapsed().as_secs_f64()),
                            waited_s: from.elapsed().as_secs_f64(),
                        };
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    }

    /// Keeps a measurement's result.
    pub(crate) fn push_recovery(&mut self, r: Recovery) {
        match r.secs {
            Some(s) => self.note(format!("recovery after {}: {s:.1}s", r.what)),
            None => self.note(format!(
                "recovery after {}: not within {:.1}s",
                r.what, r.waited_s
            )),
        }
        self.recoveries.push(r);
    }

    /// Keeps a measurement still running; [`Pipeline::collect_recoveries`] waits for it.
    pub(crate) fn keep_pending(&mut self, t: tokio::task::JoinHandle<Recovery>) {
        self.pending_recoveries.push(t);
    }

    /// Waits for the measurements still running (they end by themselves at their `max`).
    pub(crate) async fn collect_recoveries(&mut self) {
        for t in std::mem::take(&mut self.pending_recoveries) {
            if let Ok(r) = t.await {
                self.push_recovery(r);
            }
        }
    }

    /// Waits (until `deadline`) for the source's committed offsets to reach the end of the
    /// events topic.
    pub(crate) async fn wait_source_drained(&self, deadline: Instant) -> bool {
        let (g, t, n) = (
            self.source_group.clone(),
            self.events_topic.clone(),
            self.partitions,
        );
        loop {
            let (g2, t2) = (g.clone(), t.clone());
            let state =
                tokio::task::spawn_blocking(move || -> anyhow::Result<(Vec<i64>, Vec<i64>)> {
                    Ok((end_offsets(&t2, n)?, committed(&g2, &t2, n)?))
                })
                .await;
            if let Ok(Ok((end, got))) = state
                && end
                    .iter()
                    .zip(&got)
                    .all(|(e, c)| *c >= *e || (*e == 0 && *c == -1))
            {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Waits (until `deadline`) for the sink group's committed offsets to pass the last record
    /// of every partition of the enriched topic (`last[p]`, -1 for none).
    pub(crate) async fn wait_sink_drained(&self, last: &[i64], deadline: Instant) -> bool {
        let (g, t, n) = (
            self.sink_group.clone(),
            self.enriched_topic.clone(),
            self.partitions,
        );
        loop {
            let (g2, t2) = (g.clone(), t.clone());
            let got = tokio::task::spawn_blocking(move || committed(&g2, &t2, n)).await;
            if let Ok(Ok(got)) = got
                && last.iter().zip(&got).all(|(l, c)| *l < 0 || *c > *l)
            {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The end of a scenario: the flow has stopped (`ledger` is everything produced). Waits for
    /// the drain, stops the connectors (a `SIGTERM` drain each), reads back the enriched topic,
    /// the dead letters and every object, and gives the observations to the oracle.
    pub(crate) async fn finish(mut self, ctx: &Ctx, ledger: Ledger) -> anyhow::Result<ScenarioRun> {
        let chaos_end = Instant::now();
        let source_drained = self.wait_source_drained(self.deadline).await;
        let mut sink_drained = false;
        let mut enriched = None;
        if source_drained {
            self.note(format!(
                "source drained {:.1}s after the flow stopped",
                chaos_end.elapsed().as_secs_f64()
            ));
            let recs = consume_to_end(&self.enriched_topic, Duration::from_secs(60)).await;
            match recs {
                Ok(r) => {
                    let last = last_offsets(&r, self.partitions);
                    sink_drained = self.wait_sink_drained(&last, self.deadline).await;
                    if sink_drained {
                        self.note(format!(
                            "sink drained {:.1}s after the flow stopped",
                            chaos_end.elapsed().as_secs_f64()
                        ));
                    }
                    enriched = Some(r);
                }
                Err(e) => self.fail(format!("reading {} failed: {e:#}", self.enriched_topic)),
            }
        }
        if !source_drained {
            self.fail(format!(
                "the source's committed offsets did not reach the end of {} within the scenario's time",
                self.events_topic
            ));
        } else if !sink_drained {
            self.fail(format!(
                "the sink's committed offsets did not reach the end of {} within the scenario's time",
                self.enriched_topic
            ));
        }
        self.collect_recoveries().await;
        // Stop everything: a SIGTERM drain must end with status 0.
        let timeout = if sink_drained {
            Duration::from_secs(60)
        } else {
            Duration::from_secs(30)
        };
        let mut exits: Vec<ExitRecord> = Vec::new();
        let sups: Vec<Arc<Supervisor>> = self
            .sinks
            .iter()
            .cloned()
            .chain(self.source.clone())
            .collect();
        let results = futures::future::join_all(sups.iter().map(|s| s.shutdown(timeout))).await;
        for r in results {
            exits.extend(r);
        }
        self.watcher.abort();
        let secs = self.started.elapsed().as_secs_f64();

        // Read back.
        let enriched = match enriched {
            Some(r) => r,
            None => match consume_to_end(&self.enriched_topic, Duration::from_secs(90)).await {
                Ok(r) => r,
                Err(e) => {
                    self.fail(format!("reading {} failed: {e:#}", self.enriched_topic));
                    Vec::new()
                }
            },
        };
        let letters = match consume_to_end(&self.dlq_topic, Duration::from_secs(90)).await {
            Ok(r) => r.iter().map(letter).collect(),
            Err(e) => {
                self.fail(format!("reading {} failed: {e:#}", self.dlq_topic));
                Vec::new()
            }
        };
        let download = self.dir.join("download");
        let (files, objects, avro_tools_rows, tables) = match self.iceberg.clone() {
            None => {
                let files = download_objects(ctx, &self.prefix, &download).await?;
                let objects = read_objects(&files, &download)?;
                let avro_tools_rows = count_with_avro_tools(&files).unwrap_or_else(|e| {
                    self.failures
                        .push(format!("avro-tools could not read every object: {e:#}"));
                    None
                });
                (files, objects, avro_tools_rows, None)
            }
            Some(t) => {
                let (topic, partitions) = (self.enriched_topic.clone(), self.partitions);
                let topic_end =
                    tokio::task::spawn_blocking(move || end_offsets(&topic, partitions)).await??;
                let (objects, tables) = match self.read_tables(ctx, &t).await {
                    Ok(read) => read,
                    // Both tables unreadable: the oracle reports it.
                    Err(e) => {
                        let e = serde_json::json!({"error": format!("{e:#}")});
                        oracle::tables_from_json(
                            &t.namespace,
                            &self.enriched_topic,
                            &serde_json::json!({"form": e, "form_field": e}),
                        )
                    }
                };
                (
                    Vec::new(),
                    objects,
                    None,
                    Some(TablesRead { tables, topic_end }),
                )
            }
        };
        let watched = std::mem::take(&mut *self.watched.lock().expect("watched"));
        let mut secret_hits = watched.secret_hits.clone();
        secret_hits.extend(grep_logs(&self.dir, &self.secrets));
        self.note(format!(
            "{} distinct /health answers seen in {} scrapes: {}",
            watched.health.len(),
            watched.scrapes,
            watched
                .health
                .keys()
                .map(|b| b.chars().take(120).collect::<String>())
                .collect::<Vec<_>>()
                .join(" | ")
        ));
        let obs = Observations {
            ledger,
            enriched: enriched.iter().map(enriched_rec).collect(),
            letters,
            objects,
            avro_tools_rows,
            tables,
            secret_hits,
            exits,
            events_topic: self.events_topic.clone(),
            enriched_topic: self.enriched_topic.clone(),
            prefix: self.prefix.clone(),
            drained: source_drained && sink_drained,
        };
        std::fs::write(self.dir.join("ledger.tsv"), ledger_tsv(&obs.ledger))?;
        Ok(ScenarioRun {
            obs,
            recoveries: std::mem::take(&mut self.recoveries),
            notes: std::mem::take(&mut self.notes),
            failures: std::mem::take(&mut self.failures),
            secs,
            download,
            files,
        })
    }
}

impl Pipeline {
    /// Both Iceberg tables, read by `read_iceberg.py` (DuckDB and pyiceberg).
    async fn read_tables(
        &self,
        ctx: &Ctx,
        t: &IcebergTables,
    ) -> anyhow::Result<(Vec<ObjectRead>, Vec<oracle::TableRead>)> {
        let args = serde_json::json!({
            "sqlite_file": t.sqlite_file,
            "name": ICEBERG_CATALOG_NAME,
            "warehouse": t.warehouse,
            "namespace": t.namespace,
            "s3_endpoint": ctx.s3_endpoint,
            "key_id": S3_ACCESS_KEY,
            "group": self.sink_group,
            "secrets_file": self.sink_secrets,
        })
        .to_string();
        let out = tokio::task::spawn_blocking(move || {
            python_rows(READ_ICEBERG_PY, &[std::ffi::OsStr::new(&args)], &[])
        })
        .await?
        .context("reading the Iceberg tables with read_iceberg.py")?;
        anyhow::ensure!(
            out.len() == 1,
            "read_iceberg.py printed {} lines",
            out.len()
        );
        Ok(oracle::tables_from_json(
            &t.namespace,
            &self.enriched_topic,
            &out[0],
        ))
    }
}

/// What a finished pipeline hands to the oracle and the report.
#[derive(Debug)]
pub(crate) struct ScenarioRun {
    pub(crate) obs: Observations,
    pub(crate) recoveries: Vec<Recovery>,
    pub(crate) notes: Vec<String>,
    pub(crate) failures: Vec<String>,
    pub(crate) secs: f64,
    /// Where the objects were downloaded (the oracle self-test corrupts a copy).
    pub(crate) download: PathBuf,
    pub(crate) files: Vec<PathBuf>,
}

async fn watch(
    urls: Arc<Mutex<Vec<(String, String)>>>,
    watched: Arc<Mutex<Watched>>,
    secrets: Vec<String>,
) {
    loop {
        let list = urls.lock().expect("watch urls").clone();
        for (label, url) in list {
            let health = async {
                http_client()
                    .get(format!("{url}/health"))
                    .timeout(Duration::from_secs(2))
                    .send()
                    .await
                    .ok()?
                    .text()
                    .await
                    .ok()
            };
            let (health, metrics) = tokio::join!(health, scrape(&url));
            let mut w = watched.lock().expect("watched");
            w.scrapes += 1;
            for (what, body) in [("/health", health), ("/metrics", metrics)] {
                let Some(body) = body else { continue };
                for s in &secrets {
                    if body.contains(s.as_str()) {
                        w.secret_hits.push(format!("{label} {what}"));
                    }
                }
                if what == "/health" {
                    *w.health.entry(format!("{label}: {body}")).or_default() += 1;
                }
            }
        }
        tokio::time::sleep(WATCH_EVERY).await;
    }
}

/// The last offset of any record per partition (-1: none).
fn last_offsets(recs: &[Received], partitions: i32) -> Vec<i64> {
    let mut last = vec![-1i64; partitions as usize];
    for r in recs {
        if let Some(l) = last.get_mut(r.partition as usize) {
            *l = (*l).max(r.offset);
        }
    }
    last
}

fn enriched_rec(r: &Received) -> EnrichedRec {
    #[derive(serde::Deserialize)]
    struct Source {
        topic: String,
        partition: i32,
        offset: i64,
    }
    #[derive(serde::Deserialize)]
    struct Head {
        source: Source,
    }
    let source = r
        .value
        .as_deref()
        .and_then(|v| serde_json::from_slice::<Head>(v).ok())
        .map(|h| (h.source.topic, h.source.partition, h.source.offset));
    EnrichedRec {
        partition: r.partition,
        offset: r.offset,
        source,
    }
}

fn letter(r: &Received) -> Letter {
    Letter {
        source_topic: r.header("dlq.source.topic"),
        partition: r
            .header("dlq.source.partition")
            .and_then(|v| v.parse().ok()),
        offset: r.header("dlq.source.offset").and_then(|v| v.parse().ok()),
        reason: r.header("dlq.reason"),
        key: r.key.clone(),
        value_sha256: r.value.as_deref().map(|v| Sha256::digest(v).into()),
    }
}

/// Downloads every object under `prefix` into `dir` (same layout), 8 at a time.
async fn download_objects(ctx: &Ctx, prefix: &str, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    use futures::StreamExt as _;
    let _ = std::fs::remove_dir_all(dir);
    let keys = list_keys(&ctx.s3, BUCKET, &format!("{prefix}/")).await?;
    // The schema versions (`{prefix}/_schemas/…`) are not data files.
    let schemas = format!("{prefix}/_schemas/");
    let keys = keys.into_iter().filter(|(k, _)| !k.starts_with(&schemas));
    let results: Vec<anyhow::Result<PathBuf>> = futures::stream::iter(keys)
        .map(|(key, _)| {
            let s3 = ctx.s3.clone();
            let path = dir.join(&key);
            async move {
                let bytes = form_etl_tests::get_object(&s3, BUCKET, &key).await?;
                std::fs::create_dir_all(path.parent().context("a parent")?)?;
                std::fs::write(&path, bytes)?;
                Ok(path)
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let mut files = results.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    files.sort();
    Ok(files)
}

/// The Python (fastavro) reader: one JSON line per file with its `form_etl.*` metadata and each
/// row's identity columns (timestamps as microseconds).
const READ_AVRO_PY: &str = include_str!("read_avro.py");
const READ_ICEBERG_PY: &str = include_str!("read_iceberg.py");

/// Reads `files` (under `dir`, named by their keys) with fastavro.
pub(crate) fn read_objects(files: &[PathBuf], dir: &Path) -> anyhow::Result<Vec<ObjectRead>> {
    let python = form_etl_tests::fastavro_python()
        .context("the fastavro venv (.cache/venv) is missing: run `make deps`")?;
    let mut out = Vec::new();
    for chunk in files.chunks(200) {
        let o = std::process::Command::new(&python)
            .arg("-c")
            .arg(READ_AVRO_PY)
            .args(chunk)
            .output()
            .context("running fastavro")?;
        if !o.status.success() {
            bail!("fastavro failed: {}", String::from_utf8_lossy(&o.stderr));
        }
        for line in String::from_utf8(o.stdout)?.lines() {
            let v: serde_json::Value = serde_json::from_str(line)?;
            let path = PathBuf::from(v["path"].as_str().unwrap_or_default());
            let key = path
                .strip_prefix(dir)
                .unwrap_or(&path)
                .to_string_lossy()
                .into_owned();
            out.push(oracle::object_from_json(key, &v));
        }
    }
    Ok(out)
}

/// Where a secret value appears in the connectors' logs (every file of the scenario directory
/// ending in `.log`).
pub(crate) fn grep_logs(dir: &Path, secrets: &[String]) -> Vec<String> {
    let mut hits = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return hits;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "log") {
            let bytes = std::fs::read(&p).unwrap_or_default();
            for s in secrets {
                let n = count_occurrences(&bytes, s.as_bytes());
                if n > 0 {
                    hits.push(format!("{} ({n} times)", p.display()));
                }
            }
        }
    }
    hits
}

fn count_occurrences(hay: &[u8], needle: &[u8]) -> usize {
    if needle.is_empty() || hay.len() < needle.len() {
        return 0;
    }
    hay.windows(needle.len()).filter(|w| *w == needle).count()
}

fn ledger_tsv(l: &Ledger) -> String {
    let mut s = String::from("seq\tkind\tpartition\toffset\tform\thappened_us\n");
    for e in &l.events {
        s.push_str(&format!(
            "{}\t{}\t{}\t{}\t{}\t{}\n",
            e.seq,
            e.kind.name(),
            e.partition,
            e.offset,
            e.form_id.as_deref().unwrap_or("-"),
            e.happened_us.map(|u| u.to_string()).unwrap_or_default()
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_paths_are_set_and_read() {
        let mut doc: Value =
            serde_yaml::from_str("a: {b: 1}\nkafka: {properties: {x: y}}").unwrap();
        set_path(&mut doc, "a/c/d", yaml("2s"));
        set_path(
            &mut doc,
            "kafka/properties/session.timeout.ms",
            yaml("'10000'"),
        );
        assert_eq!(get_path(&doc, "a/b"), Some(&yaml("1")));
        assert_eq!(get_path(&doc, "a/c/d"), Some(&Value::String("2s".into())));
        assert_eq!(session_timeout_ms(&doc), 10_000);
        assert_eq!(session_timeout_ms(&yaml("{}")), 45_000);
        declare_secret(&mut doc, "X");
        declare_secret(&mut doc, "X");
        assert_eq!(
            get_path(&doc, "meta/secrets")
                .and_then(Value::as_sequence)
                .map(Vec::len),
            Some(1)
        );
    }

    #[test]
    fn partition_gauges_are_parsed() {
        let text = "# TYPE s3_sink_committed_offset gauge\ns3_sink_committed_offset{partition=\"0\"} 12\ns3_sink_committed_offset{partition=\"2\"} 40\nother{partition=\"1\"} 3\n";
        let g = gauge_by_partition(text, "s3_sink_committed_offset");
        assert_eq!(
            g.into_iter().collect::<Vec<_>>(),
            vec![(0, 12.0), (2, 40.0)]
        );
    }

    #[test]
    fn occurrences_are_counted() {
        assert_eq!(count_occurrences(b"abcabc", b"bc"), 2);
        assert_eq!(count_occurrences(b"ab", b"abc"), 0);
    }
}

//! `form-etl-bench` (`make bench`): in one run against the local cluster, the connectors'
//! throughput, peak RSS and CPU beside the ceilings of the same machine: raw Kafka produce,
//! consume and consume→produce, and the forms API's capacity. Writes
//! `target/bench/results.json` and the generated section of `BENCHMARKS.md`.

mod api;
mod connectors;
mod events;
mod kafka;
mod monitor;
mod outputs;
mod report;
mod stages;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use rdkafka::message::Message as _;
use serde::Serialize;
use serde_json::json;

use crate::api::{LoadReport, OwnApi, Pick};
use crate::connectors::{Connector, Rewrite};
use crate::events::Event;
use crate::kafka::{PipeOut, Probe, Throughput};
use crate::monitor::ProcReport;
use crate::outputs::{IcebergCatalog, SinkOutput, Stored};
use crate::report::{Line, Machine, OutputRow, median};

/// Targets of issue 6.
const TARGET_E2E_EVENTS_PER_S: f64 = 40_000.0;
const TARGET_SINK_VS_CONSUME: f64 = 0.5;
const TARGET_SOURCE_VS_PIPE: f64 = 0.5;
const TARGET_COLD_VS_API: f64 = 0.8;
const TARGET_PEAK_RSS_MIB: f64 = 256.0;
/// Target of issue 17: the sink's CPU per event with `output: iceberg` at most this many times
/// its CPU per event with Avro files.
const TARGET_ICEBERG_VS_AVRO_CPU: f64 = 1.5;
/// How often the progress probes sample topic watermarks / committed offsets.
const PROBE_EVERY: Duration = Duration::from_millis(100);
/// The forms the cluster's forms API serves (`make cluster-up`: `--generate 1000 --seed 42`).
const CLUSTER_API_FORMS: usize = 1000;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "form-etl-bench",
    about = "Throughput and memory of the connectors beside the machine's ceilings"
)]
struct Args {
    /// Events per run.
    #[arg(long, default_value_t = 1_000_000)]
    events: usize,
    /// Generated forms the events refer to (uniformly).
    #[arg(long, default_value_t = 1_000)]
    forms: usize,
    /// Events (each about a different form) of the cold-cache run; default min(events, 300000):
    /// ~10 s at the API's capacity, so that the start (group join, transactions, the first
    /// commit) is not a quarter of the run; past 100k forms the cache (`max-entries`) evicts.
    #[arg(long)]
    cold_events: Option<usize>,
    /// Partitions of every bench topic.
    #[arg(long, default_value_t = 3)]
    partitions: i32,
    /// Repeats (medians are reported).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Kafka bootstrap servers.
    #[arg(long, default_value = "127.0.0.1:9092")]
    brokers: String,
    /// The cluster's forms API (serves `--generate 1000 --seed 42`).
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    api: String,
    /// S3 endpoint and bucket the sink writes to.
    #[arg(long, default_value = "http://127.0.0.1:9000")]
    s3_endpoint: String,
    #[arg(long, default_value = "output")]
    bucket: String,
    /// Where the connector binaries and forms-api are.
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    /// The connectors' committed YAML files.
    #[arg(long, default_value = "config")]
    config_dir: PathBuf,
    /// Output directory (results.json, generated configs, logs).
    #[arg(long, default_value = "target/bench")]
    out_dir: PathBuf,
    /// The Markdown report (its generated section is replaced).
    #[arg(long, default_value = "BENCHMARKS.md")]
    report: PathBuf,
    /// Requests in flight of the API load generator.
    #[arg(long, default_value_t = 64)]
    api_concurrency: usize,
    /// Duration of the API capacity measurement.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    api_duration: Duration,
    /// First port of our own forms-api processes (port, port+1 admin; port+2, port+3).
    #[arg(long, default_value_t = 18100)]
    own_api_port: u16,
    /// `/metrics` ports of the connectors under test (source, sink).
    #[arg(long, default_value_t = 19464)]
    source_metrics_port: u16,
    #[arg(long, default_value_t = 19465)]
    sink_metrics_port: u16,
    /// Producer compression of the raw ceilings.
    #[arg(long, default_value = "none")]
    compression: String,
    /// Seed of the event generator.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Deadline of each stage.
    #[arg(long, default_value = "600s", value_parser = humantime::parse_duration)]
    stage_timeout: Duration,
    /// Minimum seconds of each in-process stage timing.
    #[arg(long, default_value_t = 1.0)]
    stage_seconds: f64,
    /// Keep the bench topics (default: deleted after each repeat).
    #[arg(long)]
    keep_topics: bool,
    /// Measure the ceilings only.
    #[arg(long)]
    skip_connectors: bool,
    /// Override of the kafka-source bench config, `KEY.PATH=VALUE` (repeatable), e.g.
    /// `enrich.concurrency=256`, `kafka.properties[fetch.wait.max.ms]=10`: for profiling experiments.
    #[arg(long = "source-set", value_name = "KEY=VALUE")]
    source_set: Vec<String>,
    /// Override of the s3-sink bench config, `KEY.PATH=VALUE` (repeatable), e.g. `s3.codec=snappy`.
    /// Applied after the `output` of each `--sink-outputs` run.
    #[arg(long = "sink-set", value_name = "KEY=VALUE")]
    sink_set: Vec<String>,
    /// Outputs of s3-sink that the sink stage measures, one run each over the same input topic
    /// (comma separated): avro (files), parquet (files), iceberg (tables of Parquet files).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "avro,parquet,iceberg"
    )]
    sink_outputs: Vec<SinkOutput>,
    /// Catalog of the iceberg output: sql (a fresh SQLite file under --out-dir, a fresh
    /// warehouse `s3://{bucket}/w…` per run) or rest (--iceberg-rest-uri).
    #[arg(long, value_enum, default_value = "sql")]
    iceberg_catalog: IcebergCatalog,
    /// `output.commit-interval` of the iceberg output: the run's tail (its last commit) waits
    /// for up to this.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    iceberg_commit_interval: Duration,
    /// The REST catalog of `--iceberg-catalog rest` (`make cluster-up`'s).
    #[arg(long, default_value = "http://127.0.0.1:8181")]
    iceberg_rest_uri: String,
    /// The REST catalog's warehouse: its tables are under `{warehouse}/{namespace}/`.
    #[arg(long, default_value = "s3://iceberg/warehouse")]
    iceberg_rest_warehouse: String,
    /// The local S3 server's directory (s3s-fs: bucket B, key K is the file ROOT/B/K): each
    /// sink run's objects are listed there (bytes per row, Iceberg snapshots).
    #[arg(long, default_value = ".cluster/s3")]
    s3_root: PathBuf,
    /// Stages to run (comma separated): produce is always run; consume, pipe, source, sink, api,
    /// cold, e2e. Default: all.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "consume,pipe,source,sink,api,cold,e2e"
    )]
    stages: Vec<String>,
    /// Run each connector under `perf record` (flat CPU profile, `*.perf.txt` beside its log).
    /// Profiling run: RSS is then perf's, and everything is a little slower.
    #[arg(long)]
    perf: bool,
    /// Measure nothing: re-render BENCHMARKS.md and results.json from this results.json.
    #[arg(long, value_name = "RESULTS_JSON")]
    render_only: Option<PathBuf>,
    /// How the bench was invoked, for the report (the Makefile passes it).
    #[arg(long)]
    command: Option<String>,
}

/// A connector run under the bench.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
struct ConnectorRun {
    /// Records asked for (`--max-records`).
    events: u64,
    /// events / seconds from spawn to exit (startup, group join, final commit included).
    events_per_s: f64,
    /// Rate between 10% and 90% of the records, from the connector's own progress lines
    /// (else from the probe).
    steady_events_per_s: Option<f64>,
    /// Rate between 10% and 90% of the output, from the probe (watermarks / committed offsets).
    probe_steady_events_per_s: Option<f64>,
    /// Seconds from spawn to the first output the probe saw.
    first_output_s: Option<f64>,
    /// The process.
    proc: ProcReport,
    /// Exited 0 by itself (its rate counts).
    ok: bool,
    #[serde(default)]
    /// After the exit, the probe saw at least `events` records out (kafka-source: in the output
    /// topic; s3-sink: covered by the group's committed offsets, markers included).
    all_out: bool,
    /// The probe's last count.
    #[serde(default)]
    probe_last: u64,
    /// Input topic.
    input: String,
}

/// One output variant of s3-sink (`--sink-outputs`) over the sink stage's input.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
struct SinkOutputRun {
    output: SinkOutput,
    /// How it was configured (`files, parquet`, `iceberg, sql catalog, commit-interval 2s`).
    detail: String,
    run: ConnectorRun,
    /// Rows (both tables) of the input: the sink's flatten and row encoding, run in-process.
    rows: Option<u64>,
    /// The sink's `s3_sink_rows_total` at the last scrape of its /metrics (a cross-check; the
    /// scrape is every 500 ms, so the last rows may be missing).
    rows_metric: Option<f64>,
    /// What the run stored on S3.
    stored: Option<Stored>,
    /// The last scraped `s3_sink_iceberg_commits_total` (a lower bound: the last commits may
    /// come after the last scrape).
    commits_metric: Option<f64>,
    /// Iceberg: commits (snapshots of the table with the most) per minute, spawn to exit.
    commits_per_min: Option<f64>,
    /// Iceberg: how long a record waits until it is committed, records arriving one at a time.
    #[serde(default)]
    visibility: Option<Visibility>,
}

/// Iceberg, a second run on its own topic: the sink caught up, records produced one at a time
/// at phases spread over the commit cycle, each timed from its acknowledgement until the
/// group's committed offset passes it. The Kafka commit follows the tables' commits, so the
/// rows were visible in the tables by then: an upper bound of the wait.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
struct Visibility {
    commit_interval_s: f64,
    /// The first record (the first commit of the run), not in `samples_s`.
    warmup_s: f64,
    samples_s: Vec<f64>,
}

impl Visibility {
    fn max(&self) -> Option<f64> {
        self.samples_s.iter().copied().reduce(f64::max)
    }
}

impl SinkOutputRun {
    fn per_row(&self, bytes: impl Fn(&Stored) -> u64) -> Option<f64> {
        let rows = self.rows.filter(|r| *r > 0)?;
        Some(bytes(self.stored.as_ref()?) as f64 / rows as f64)
    }

    fn bytes_per_row(&self) -> Option<f64> {
        self.per_row(|s| s.data_bytes)
    }

    fn other_bytes_per_row(&self) -> Option<f64> {
        self.per_row(|s| s.other_bytes)
    }

    fn bytes_per_event(&self) -> Option<f64> {
        let s = self.stored.as_ref()?;
        Some(s.data_bytes as f64 / self.run.events.max(1) as f64)
    }

    fn cpu_per_million(&self) -> Option<f64> {
        self.run
            .ok
            .then(|| self.run.proc.cpu_seconds * 1e6 / self.run.events.max(1) as f64)
    }
}

/// End to end: both connectors running, events produced, until the sink has committed all.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
struct EndToEnd {
    events: u64,
    /// Seconds from the first produce to the sink's exit after its last commit.
    seconds: f64,
    events_per_s: f64,
    /// From the first produce to the last offset committed by the sink (probe).
    seconds_to_last_commit: Option<f64>,
    produce: Throughput,
    source: ProcReport,
    sink: ProcReport,
    ok: bool,
}

#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
struct Repeat {
    repeat: usize,
    raw_produce_events: Option<Throughput>,
    raw_consume_events: Option<Throughput>,
    raw_pipe: Option<Throughput>,
    raw_consume_enriched: Option<Throughput>,
    api_first_fetch: Option<LoadReport>,
    api_capacity: Option<LoadReport>,
    kafka_source_warm: Option<ConnectorRun>,
    kafka_source_cold: Option<ConnectorRun>,
    /// s3-sink with the Avro output (the same run as `sink_outputs`' avro entry).
    s3_sink: Option<ConnectorRun>,
    /// s3-sink once per `--sink-outputs` variant, over the same input.
    #[serde(default)]
    sink_outputs: Vec<SinkOutputRun>,
    end_to_end: Option<EndToEnd>,
    notes: Vec<String>,
}

struct Ctx {
    args: Args,
    run_id: String,
    source: Connector,
    sink: Connector,
    forms: Arc<Vec<Vec<u8>>>,
    events: Arc<Vec<Event>>,
    cold_events: Arc<Vec<Event>>,
    api_base: String,
    cold_api_base: String,
    /// Rows the sink writes for `events` (sink stage only).
    rows: Option<u64>,
}

fn note(r: &mut Repeat, msg: String) {
    eprintln!("bench: {msg}");
    r.notes.push(msg);
}

fn say(msg: impl std::fmt::Display) {
    eprintln!("bench: {msg}");
}

/// Runs a blocking closure off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("blocking task panicked")
}

/// Short names of the stages and topics (they end up in S3 keys).
fn short(what: &str) -> &str {
    match what {
        "events" => "ev",
        "enriched" => "enr",
        "cold-events" => "cev",
        "cold-enriched" => "cenr",
        "e2e-events" => "eev",
        "e2e-enriched" => "eenr",
        "e2e-sink" => "e2e",
        other => other,
    }
}

fn form_index(key: &[u8]) -> Option<usize> {
    std::str::from_utf8(key)
        .ok()?
        .strip_prefix("form-")?
        .parse()
        .ok()
}

impl Ctx {
    fn topic(&self, r: usize, what: &str) -> String {
        let what = short(what);
        format!("bench-{}-r{r}-{what}", self.run_id)
    }

    fn rewrite(
        &self,
        r: usize,
        stage: &str,
        events: &str,
        enriched: &str,
        api: &str,
        metrics_port: u16,
    ) -> Rewrite {
        Rewrite {
            name: format!("bench-{}-r{r}-{stage}", self.run_id),
            events_topic: events.to_owned(),
            enriched_topic: enriched.to_owned(),
            dlq_topic: self.topic(r, "dlq"),
            group: format!("bench-{}-r{r}-{stage}", self.run_id),
            brokers: self.args.brokers.clone(),
            api_base: api.to_owned(),
            metrics_addr: format!("127.0.0.1:{metrics_port}"),
            prefix: format!("bench/{}r{r}/{}", self.run_id, short(stage)),
            s3_endpoint: self.args.s3_endpoint.clone(),
            bucket: self.args.bucket.clone(),
        }
    }

    fn produce_events(
        &self,
        topic: &str,
        events: &Arc<Vec<Event>>,
    ) -> impl FnOnce() -> anyhow::Result<Throughput> + use<> {
        let (brokers, topic, compression, events) = (
            self.args.brokers.clone(),
            topic.to_owned(),
            self.args.compression.clone(),
            events.clone(),
        );
        move || {
            kafka::produce(
                &brokers,
                &topic,
                &compression,
                events.iter().map(|e| (e.form_id.as_bytes(), &e.value[..])),
            )
        }
    }

    /// Writes the bench config of `c` and checks it with the binary.
    fn config(&self, c: &Connector, rw: &Rewrite, file: &str) -> anyhow::Result<PathBuf> {
        self.config_with(c, rw, &[], file)
    }

    /// [`Self::config`] with `first` applied before the `--source-set`/`--sink-set` overrides.
    fn config_with(
        &self,
        c: &Connector,
        rw: &Rewrite,
        first: &[String],
        file: &str,
    ) -> anyhow::Result<PathBuf> {
        let path = self.args.out_dir.join("configs").join(file);
        let mut overrides = first.to_vec();
        overrides.extend_from_slice(if c.name == "kafka-source" {
            &self.args.source_set
        } else {
            &self.args.sink_set
        });
        connectors::write_config(&c.template, rw, &overrides, &path)?;
        c.check(&path)?;
        Ok(path)
    }

    /// The iceberg output's settings for repeat `r`: a fresh SQLite catalog file.
    fn iceberg_settings(&self, r: usize) -> anyhow::Result<outputs::IcebergSettings> {
        let dir = std::path::absolute(self.args.out_dir.join("iceberg"))?;
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(outputs::IcebergSettings {
            catalog: self.args.iceberg_catalog,
            commit_interval: humantime::format_duration(self.args.iceberg_commit_interval)
                .to_string(),
            sqlite_file: dir.join(format!("{}r{r}-{}.db", self.run_id, outputs::fresh_hex())),
            bucket: self.args.bucket.clone(),
            rest_uri: self.args.iceberg_rest_uri.clone(),
            rest_warehouse: self.args.iceberg_rest_warehouse.clone(),
        })
    }

    /// Runs connector `c` with `--max-records n` and the probe until it exits.
    #[allow(clippy::too_many_arguments)] // one call per stage, each naming every part
    async fn run_connector(
        &self,
        c: &Connector,
        cfg: &Path,
        n: u64,
        probe: Probe,
        log: &str,
        input: &str,
        metrics_port: u16,
    ) -> anyhow::Result<ConnectorRun> {
        let log = self.args.out_dir.join("logs").join(log);
        let perf_data = log.with_extension("perf.data");
        let mut cmd = c.command(cfg, n);
        if self.args.perf {
            cmd = monitor::under_perf(&cmd, &perf_data);
        }
        let m = monitor::spawn(c.name, cmd, &log, self.args.stage_timeout)?;
        let stop = Arc::new(AtomicBool::new(false));
        let scraper = monitor::spawn_metrics_scraper(
            format!("http://127.0.0.1:{metrics_port}/metrics"),
            log.with_extension("metrics.txt"),
            stop.clone(),
        );
        let probe = kafka::spawn_probe(
            &self.args.brokers,
            probe,
            self.args.partitions,
            PROBE_EVERY,
            stop.clone(),
            m.started,
        );
        let proc = blocking(move || m.join()).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let samples = blocking(move || probe.join().unwrap_or_default()).await;
        let _ = scraper.await;
        if self.args.perf {
            let report = log.with_extension("perf.txt");
            blocking(move || monitor::perf_report(&perf_data, &report)).await;
        }
        let last = samples.last().map_or(0, |s| s.1);
        say(format_args!(
            "{} CPU seconds by thread: {}",
            c.name,
            proc.threads_cpu_seconds
                .iter()
                .take(6)
                .map(|(n, c)| format!("{n} {c:.1}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        let probe_steady = kafka::steady_rate(&samples, n, 0.1, 0.9);
        let log_text = std::fs::read_to_string(&proc.log).unwrap_or_default();
        let log_steady = kafka::steady_rate(
            &kafka::progress_from_log(&log_text, c.progress_marker),
            n,
            0.1,
            0.9,
        );
        Ok(ConnectorRun {
            events: n,
            events_per_s: n as f64 / proc.wall_seconds.max(1e-9),
            steady_events_per_s: log_steady.or(probe_steady),
            probe_steady_events_per_s: probe_steady,
            first_output_s: kafka::time_to(&samples, 1),
            ok: proc.ok(),
            all_out: last >= n,
            probe_last: last,
            proc,
            input: input.to_owned(),
        })
    }
}

async fn one_repeat(ctx: &Ctx, r: usize) -> anyhow::Result<Repeat> {
    let a = &ctx.args;
    let n = ctx.events.len() as u64;
    let cold_n = ctx.cold_events.len() as u64;
    let mut rep = Repeat {
        repeat: r,
        ..Default::default()
    };
    let t_events = ctx.topic(r, "events");
    let t_enriched = ctx.topic(r, "enriched");
    let t_pipe = ctx.topic(r, "pipe");
    let t_cold_events = ctx.topic(r, "cold-events");
    let t_cold_enriched = ctx.topic(r, "cold-enriched");
    let t_e2e_events = ctx.topic(r, "e2e-events");
    let t_e2e_enriched = ctx.topic(r, "e2e-enriched");
    let topics = vec![
        t_events.clone(),
        t_enriched.clone(),
        t_pipe.clone(),
        ctx.topic(r, "dlq"),
        ctx.topic(r, "vis"),
        t_cold_events.clone(),
        t_cold_enriched.clone(),
        t_e2e_events.clone(),
        t_e2e_enriched.clone(),
    ];
    kafka::create_topics(&a.brokers, &topics, a.partitions).await?;
    let result = repeat_stages(ctx, r, &mut rep, n, cold_n).await;
    if !a.keep_topics {
        kafka::delete_topics(&a.brokers, &topics).await;
    }
    if let Err(e) = result {
        note(&mut rep, format!("repeat {r} stopped: {e:#}"));
    }
    Ok(rep)
}

async fn repeat_stages(
    ctx: &Ctx,
    r: usize,
    rep: &mut Repeat,
    n: u64,
    cold_n: u64,
) -> anyhow::Result<()> {
    let a = &ctx.args;
    let deadline = a.stage_timeout;
    let t_events = ctx.topic(r, "events");
    let t_enriched = ctx.topic(r, "enriched");
    let t_pipe = ctx.topic(r, "pipe");

    // 1. Raw produce of the events (the ceiling of any producer here).
    say(format_args!("[r{r}] raw produce of {n} events"));
    let p = blocking(ctx.produce_events(&t_events, &ctx.events)).await?;
    say(format_args!(
        "[r{r}] raw produce: {:.0} events/s ({:.1} MiB/s)",
        p.events_per_s, p.mib_per_s
    ));
    rep.raw_produce_events = Some(p);

    // 2. Raw consume of the events.
    if ctx.stage("consume") {
        let (b, t, g) = (
            a.brokers.clone(),
            t_events.clone(),
            format!("bench-{}-r{r}-raw-events", ctx.run_id),
        );
        let c = blocking(move || kafka::consume(&b, &t, &g, n, deadline)).await?;
        say(format_args!(
            "[r{r}] raw consume events: {:.0} events/s",
            c.events_per_s
        ));
        rep.raw_consume_events = Some(c);
    }

    // 3. Raw consume→produce pipe writing enriched-size records: the ceiling of kafka-source.
    let source_runs = ctx.stage("source") && ctx.skip(&ctx.source).is_none();
    let pipe_runs = ctx.stage("pipe") || (ctx.stage("sink") && !source_runs);
    let (b, t, g, out, comp, forms) = (
        a.brokers.clone(),
        t_events.clone(),
        format!("bench-{}-r{r}-raw-pipe", ctx.run_id),
        t_pipe.clone(),
        a.compression.clone(),
        ctx.forms.clone(),
    );
    let pipe = if !pipe_runs {
        None
    } else {
        Some(
            blocking(move || {
                let out_ref = PipeOut {
                    topic: &out,
                    compression: &comp,
                };
                let topic = t.clone();
                kafka::pipe(&b, &t, &g, n, deadline, Some(out_ref), |m, v| {
                    let form = m
                        .key()
                        .and_then(form_index)
                        .and_then(|i| forms.get(i))
                        .map_or(&b"null"[..], |f| &f[..]);
                    events::enriched(v, form, &topic, m.partition(), m.offset())
                })
            })
            .await?,
        )
    };
    if let Some(pipe) = pipe {
        say(format_args!(
            "[r{r}] raw consume→produce pipe: {:.0} events/s",
            pipe.events_per_s
        ));
        rep.raw_pipe = Some(pipe);
    }

    // 4. kafka-source, warm cache (1000 forms for 1M events: each fetched once, then hits).
    let mut enriched_input = pipe_runs.then(|| t_pipe.clone());
    if !ctx.stage("source") {
    } else if let Some(why) = ctx.skip(&ctx.source) {
        note(
            rep,
            format!(
                "kafka-source skipped: {why}; the sink reads the pipe's synthetic enriched records"
            ),
        );
    } else {
        let rw = ctx.rewrite(
            r,
            "source-warm",
            &t_events,
            &t_enriched,
            &ctx.api_base,
            a.source_metrics_port,
        );
        match ctx.config(&ctx.source, &rw, &format!("r{r}-kafka-source-warm.yaml")) {
            Err(e) => note(rep, format!("kafka-source warm: {e:#}")),
            Ok(cfg) => {
                say(format_args!("[r{r}] kafka-source, warm cache, {n} events"));
                let run = ctx
                    .run_connector(
                        &ctx.source,
                        &cfg,
                        n,
                        Probe::HighWatermarks {
                            topic: t_enriched.clone(),
                        },
                        &format!("r{r}-kafka-source-warm.log"),
                        &t_events,
                        a.source_metrics_port,
                    )
                    .await?;
                say(format_args!(
                    "[r{r}] kafka-source warm: {:.0} events/s (steady {:?}), exit {:?}, peak RSS {:.0} MiB, CPU {:.1} s",
                    run.events_per_s,
                    run.steady_events_per_s.map(|v| v.round()),
                    run.proc.exit_code,
                    run.proc.peak_rss_mib,
                    run.proc.cpu_seconds
                ));
                if run.ok && run.all_out {
                    enriched_input = Some(t_enriched.clone());
                } else {
                    note(
                        rep,
                        format!(
                            "kafka-source warm run failed (see {}); the sink reads the pipe's records",
                            run.proc.log
                        ),
                    );
                }
                rep.kafka_source_warm = Some(run);
            }
        }
    }

    // 5. Raw consume of the enriched records (kafka-source's output when it ran).
    if let Some(input) = enriched_input.clone().filter(|_| ctx.stage("consume")) {
        let (b, t, g) = (
            a.brokers.clone(),
            input.clone(),
            format!("bench-{}-r{r}-raw-enriched", ctx.run_id),
        );
        let c = blocking(move || kafka::consume(&b, &t, &g, n, deadline)).await?;
        say(format_args!(
            "[r{r}] raw consume enriched ({input}): {:.0} events/s ({:.1} MiB/s)",
            c.events_per_s, c.mib_per_s
        ));
        rep.raw_consume_enriched = Some(c);
    }

    // 6. s3-sink over the same enriched topic, once per output (`--sink-outputs`).
    if !ctx.stage("sink") {
    } else if let Some(why) = ctx.skip(&ctx.sink) {
        note(rep, format!("s3-sink skipped: {why}"));
    } else if let Some(enriched_input) = enriched_input.clone() {
        for &output in &a.sink_outputs {
            sink_output(ctx, r, rep, n, &t_events, &enriched_input, output).await?;
        }
    }

    // 7. The forms API's capacity (the cold-cache server), then the cold-cache source.
    if ctx.stage("api") || ctx.stage("cold") {
        if r == 0 {
            say(format_args!(
                "[r{r}] forms API: first fetch of {cold_n} forms"
            ));
            rep.api_first_fetch = Some(
                api::load(
                    &ctx.cold_api_base,
                    cold_n as usize,
                    a.api_concurrency,
                    deadline,
                    Pick::SweepOnce,
                )
                .await,
            );
        }
        let cap = api::load(
            &ctx.cold_api_base,
            cold_n as usize,
            a.api_concurrency,
            a.api_duration,
            Pick::Cycle,
        )
        .await;
        say(format_args!(
            "[r{r}] forms API capacity: {:.0} requests/s (p50 {:.2} ms, p99 {:.2} ms, {} errors)",
            cap.rps, cap.p50_ms, cap.p99_ms, cap.errors
        ));
        rep.api_capacity = Some(cap);
    }

    let t_cold_events = ctx.topic(r, "cold-events");
    let t_cold_enriched = ctx.topic(r, "cold-enriched");
    if ctx.stage("cold") && ctx.skip(&ctx.source).is_none() {
        blocking(ctx.produce_events(&t_cold_events, &ctx.cold_events)).await?;
        let rw = ctx.rewrite(
            r,
            "source-cold",
            &t_cold_events,
            &t_cold_enriched,
            &ctx.cold_api_base,
            a.source_metrics_port,
        );
        match ctx.config(&ctx.source, &rw, &format!("r{r}-kafka-source-cold.yaml")) {
            Err(e) => note(rep, format!("kafka-source cold: {e:#}")),
            Ok(cfg) => {
                say(format_args!(
                    "[r{r}] kafka-source, cold cache, {cold_n} events over {cold_n} forms"
                ));
                let run = ctx
                    .run_connector(
                        &ctx.source,
                        &cfg,
                        cold_n,
                        Probe::HighWatermarks {
                            topic: t_cold_enriched.clone(),
                        },
                        &format!("r{r}-kafka-source-cold.log"),
                        &t_cold_events,
                        a.source_metrics_port,
                    )
                    .await?;
                say(format_args!(
                    "[r{r}] kafka-source cold: {:.0} events/s (steady {:?}), exit {:?}",
                    run.events_per_s,
                    run.steady_events_per_s.map(|v| v.round()),
                    run.proc.exit_code
                ));
                if !run.ok {
                    note(
                        rep,
                        format!("kafka-source cold run failed (see {})", run.proc.log),
                    );
                }
                rep.kafka_source_cold = Some(run);
            }
        }
    }

    // 8. End to end: both connectors up, then the events produced as fast as possible.
    if ctx.stage("e2e")
        && ctx.skip(&ctx.source).is_none()
        && ctx.skip(&ctx.sink).is_none()
        && let Err(e) = end_to_end(ctx, r, rep, n).await
    {
        note(rep, format!("end to end: {e:#}"));
    }
    Ok(())
}

/// s3-sink with `output` over `input` (`n` records), then what it stored on S3.
async fn sink_output(
    ctx: &Ctx,
    r: usize,
    rep: &mut Repeat,
    n: u64,
    events_topic: &str,
    input: &str,
    output: SinkOutput,
) -> anyhow::Result<()> {
    let a = &ctx.args;
    let name = output.name();
    let rw = ctx.rewrite(
        r,
        output.stage(),
        events_topic,
        input,
        &ctx.api_base,
        a.sink_metrics_port,
    );
    let place = ctx
        .iceberg_settings(r)
        .and_then(|ice| outputs::placement(output, &rw.bucket, &rw.prefix, &ice));
    let file = format!("r{r}-s3-sink{}", output.file_suffix());
    let cfg = place.and_then(|p| {
        let cfg = ctx.config_with(
            &ctx.sink,
            &rw,
            std::slice::from_ref(&p.set_output),
            &format!("{file}.yaml"),
        )?;
        Ok((p, cfg))
    });
    let (place, cfg) = match cfg {
        Ok(v) => v,
        Err(e) => {
            note(rep, format!("s3-sink, output {name}: {e:#}"));
            return Ok(());
        }
    };
    say(format_args!(
        "[r{r}] s3-sink, output {name} ({}), {n} records of {input}",
        place.detail
    ));
    let run = ctx
        .run_connector(
            &ctx.sink,
            &cfg,
            n,
            Probe::Committed {
                topic: input.to_owned(),
                group: rw.group.clone(),
            },
            &format!("{file}.log"),
            input,
            a.sink_metrics_port,
        )
        .await?;
    if !run.ok {
        note(
            rep,
            format!("s3-sink, output {name}: run failed (see {})", run.proc.log),
        );
    } else if !run.all_out {
        note(
            rep,
            format!(
                "s3-sink, output {name}: exited 0 after reading {n} records, but its group's committed offsets \
                 sum to {} (below {n}: the last segments' offsets were not committed; see {})",
                run.probe_last, run.proc.log
            ),
        );
    }
    let metrics = std::fs::read_to_string(Path::new(&run.proc.log).with_extension("metrics.txt"))
        .unwrap_or_default();
    let stored = match outputs::stored(&a.s3_root, &place.bucket, &place.prefix, output) {
        Ok(s) => Some(s),
        Err(e) => {
            note(
                rep,
                format!("s3-sink, output {name}: its objects were not listed: {e:#}"),
            );
            None
        }
    };
    let commits_per_min = match (output, stored.as_ref().and_then(Stored::commits)) {
        (SinkOutput::Iceberg, Some(c)) => Some(c as f64 * 60.0 / run.proc.wall_seconds.max(1e-9)),
        _ => None,
    };
    let o = SinkOutputRun {
        output,
        detail: place.detail,
        rows: ctx.rows,
        rows_metric: outputs::metric_sum(&metrics, "s3_sink_rows_total"),
        commits_metric: outputs::metric_sum(&metrics, "s3_sink_iceberg_commits_total"),
        stored,
        commits_per_min,
        run,
        visibility: None,
    };
    say(format_args!(
        "[r{r}] s3-sink {name}: {:.0} events/s (steady {:?}), exit {:?}, peak RSS {:.0} MiB, \
         CPU {:.1} s ({:.2} s per 1M), data {} objects {} bytes ({:.1} bytes/row, {} rows), \
         other {} objects {} bytes, commits {:?} ({:.1}/min, metric {:?})",
        o.run.events_per_s,
        o.run.steady_events_per_s.map(|v| v.round()),
        o.run.proc.exit_code,
        o.run.proc.peak_rss_mib,
        o.run.proc.cpu_seconds,
        o.run.proc.cpu_seconds * 1e6 / n.max(1) as f64,
        o.stored.as_ref().map_or(0, |s| s.data_objects),
        o.stored.as_ref().map_or(0, |s| s.data_bytes),
        o.bytes_per_row().unwrap_or(f64::NAN),
        o.rows.map_or("?".to_owned(), |r| r.to_string()),
        o.stored.as_ref().map_or(0, |s| s.other_objects),
        o.stored.as_ref().map_or(0, |s| s.other_bytes),
        o.stored.as_ref().and_then(Stored::commits),
        o.commits_per_min.unwrap_or(f64::NAN),
        o.commits_metric,
    ));
    let mut o = o;
    if output == SinkOutput::Iceberg && o.run.ok {
        match iceberg_visibility(ctx, r, events_topic).await {
            Ok(v) => {
                say(format_args!(
                    "[r{r}] s3-sink iceberg: committed {:?} s after arriving (max {:?} s, commit interval {} s; first record {:.2} s)",
                    v.samples_s
                        .iter()
                        .map(|x| (x * 100.0).round() / 100.0)
                        .collect::<Vec<_>>(),
                    v.max().map(|x| (x * 100.0).round() / 100.0),
                    v.commit_interval_s,
                    v.warmup_s
                ));
                o.visibility = Some(v);
            }
            Err(e) => note(rep, format!("s3-sink iceberg, visibility: {e:#}")),
        }
    }
    if output == SinkOutput::Avro {
        rep.s3_sink = Some(o.run.clone());
    }
    rep.sink_outputs.push(o);
    Ok(())
}

/// Records timed in [`iceberg_visibility`] (after one warm-up record).
const VISIBILITY_RECORDS: usize = 8;

/// See [`Visibility`]. The sink runs with the Iceberg output on the fresh topic `vis` until
/// the records are timed, then is stopped (SIGTERM).
async fn iceberg_visibility(ctx: &Ctx, r: usize, events_topic: &str) -> anyhow::Result<Visibility> {
    let a = &ctx.args;
    let topic = ctx.topic(r, "vis");
    let rw = ctx.rewrite(
        r,
        "sink-ice-vis",
        events_topic,
        &topic,
        &ctx.api_base,
        a.sink_metrics_port,
    );
    let ice = ctx.iceberg_settings(r)?;
    let place = outputs::placement(SinkOutput::Iceberg, &rw.bucket, &rw.prefix, &ice)?;
    let file = format!("r{r}-s3-sink-iceberg-visibility");
    let cfg = ctx.config_with(
        &ctx.sink,
        &rw,
        std::slice::from_ref(&place.set_output),
        &format!("{file}.yaml"),
    )?;
    let log = a.out_dir.join("logs").join(format!("{file}.log"));
    let m = monitor::spawn(
        ctx.sink.name,
        ctx.sink.command(&cfg, u64::MAX),
        &log,
        a.stage_timeout,
    )?;
    let interval = a.iceberg_commit_interval;
    let records: Vec<(Vec<u8>, Vec<u8>)> = ctx
        .events
        .iter()
        .take(VISIBILITY_RECORDS + 1)
        .enumerate()
        .map(|(i, e)| {
            let form = ctx.forms.get(e.form).map_or(&b"null"[..], |f| &f[..]);
            let v = events::enriched(&e.value, form, events_topic, 0, i as i64);
            (e.form_id.clone().into_bytes(), v)
        })
        .collect();
    let (b, t, g, parts) = (
        a.brokers.clone(),
        topic.clone(),
        rw.group.clone(),
        a.partitions,
    );
    let timed = blocking(move || {
        kafka::produce_until_committed(
            &b,
            &t,
            &g,
            parts,
            &records,
            // Arrivals at phases spread over the commit cycle (the golden ratio's steps).
            |i| interval.mul_f64((i as f64 * 0.618_034).fract()),
            interval * 4 + Duration::from_secs(30),
        )
    })
    .await;
    m.stop();
    let proc = blocking(move || m.join()).await;
    let mut samples = timed.with_context(|| format!("see {}", proc.log))?;
    let warmup_s = samples.remove(0);
    Ok(Visibility {
        commit_interval_s: interval.as_secs_f64(),
        warmup_s,
        samples_s: samples,
    })
}

async fn end_to_end(ctx: &Ctx, r: usize, rep: &mut Repeat, n: u64) -> anyhow::Result<()> {
    let a = &ctx.args;
    let t_in = ctx.topic(r, "e2e-events");
    let t_mid = ctx.topic(r, "e2e-enriched");
    let rw_src = ctx.rewrite(
        r,
        "e2e-source",
        &t_in,
        &t_mid,
        &ctx.api_base,
        a.source_metrics_port,
    );
    let rw_sink = ctx.rewrite(
        r,
        "e2e-sink",
        &t_in,
        &t_mid,
        &ctx.api_base,
        a.sink_metrics_port,
    );
    let cfg_src = ctx.config(&ctx.source, &rw_src, &format!("r{r}-e2e-kafka-source.yaml"))?;
    let cfg_sink = ctx.config(&ctx.sink, &rw_sink, &format!("r{r}-e2e-s3-sink.yaml"))?;
    let logs = a.out_dir.join("logs");
    say(format_args!("[r{r}] end to end, {n} events"));
    let src = monitor::spawn(
        "kafka-source",
        ctx.source.command(&cfg_src, n),
        &logs.join(format!("r{r}-e2e-kafka-source.log")),
        a.stage_timeout,
    )?;
    let sink = monitor::spawn(
        "s3-sink",
        ctx.sink.command(&cfg_sink, n),
        &logs.join(format!("r{r}-e2e-s3-sink.log")),
        a.stage_timeout,
    )?;
    for (what, port) in [
        ("kafka-source", a.source_metrics_port),
        ("s3-sink", a.sink_metrics_port),
    ] {
        if !monitor::wait_http_ok(
            &format!("http://127.0.0.1:{port}/health"),
            Duration::from_secs(20),
        )
        .await
        {
            note(
                rep,
                format!(
                    "end to end: {what} /health on port {port} did not answer within 20 s; producing anyway"
                ),
            );
        }
    }
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let probe = kafka::spawn_probe(
        &a.brokers,
        Probe::Committed {
            topic: t_mid.clone(),
            group: rw_sink.group.clone(),
        },
        a.partitions,
        PROBE_EVERY,
        stop.clone(),
        start,
    );
    let produced = blocking(ctx.produce_events(&t_in, &ctx.events)).await;
    let produced = match produced {
        Ok(p) => p,
        Err(e) => {
            src.stop();
            sink.stop();
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            return Err(e);
        }
    };
    let sink_report = blocking(move || sink.join()).await;
    let seconds = start.elapsed().as_secs_f64();
    if !src.finished() {
        // The source's own exit may lag its last transaction by its commit interval.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let src_report = blocking(move || src.join()).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let samples = blocking(move || probe.join().unwrap_or_default()).await;
    let e2e = EndToEnd {
        events: n,
        seconds,
        events_per_s: n as f64 / seconds.max(1e-9),
        seconds_to_last_commit: kafka::time_to(&samples, n),
        produce: produced,
        ok: sink_report.ok() && src_report.ok(),
        source: src_report,
        sink: sink_report,
    };
    say(format_args!(
        "[r{r}] end to end: {:.0} events/s ({:.1} s), source exit {:?} RSS {:.0} MiB, sink exit {:?} RSS {:.0} MiB",
        e2e.events_per_s,
        e2e.seconds,
        e2e.source.exit_code,
        e2e.source.peak_rss_mib,
        e2e.sink.exit_code,
        e2e.sink.peak_rss_mib
    ));
    if !e2e.ok {
        note(
            rep,
            format!(
                "end to end failed (see {} and {})",
                e2e.source.log, e2e.sink.log
            ),
        );
    }
    rep.end_to_end = Some(e2e);
    Ok(())
}

impl Ctx {
    fn stage(&self, name: &str) -> bool {
        self.args.stages.iter().any(|s| s == name)
    }

    fn skip(&self, c: &Connector) -> Option<String> {
        if self.args.skip_connectors {
            return Some("--skip-connectors".into());
        }
        c.unavailable()
    }
}

fn ok_rate(run: &Option<ConnectorRun>) -> Option<f64> {
    run.as_ref().filter(|r| r.ok).map(|r| r.events_per_s)
}

/// A target's text and its test.
type Target = Option<(String, Box<dyn Fn(f64) -> bool>)>;

fn line(
    measure: &str,
    unit: &str,
    runs: Vec<Option<f64>>,
    versus: Option<(&str, Option<f64>)>,
    target: Target,
    target_on_ratio: bool,
) -> Line {
    let m = median(runs.iter().copied());
    let ratio = match (&versus, m) {
        (Some((_, Some(v))), Some(m)) if *v > 0.0 => Some(m / v),
        _ => None,
    };
    let (target, met) = match target {
        Some((t, f)) => {
            let x = if target_on_ratio { ratio } else { m };
            (Some(t), x.map(f))
        }
        None => (None, None),
    };
    Line {
        measure: measure.to_owned(),
        unit: unit.to_owned(),
        median: m,
        runs,
        versus: versus.map(|(n, v)| (n.to_owned(), v)),
        ratio,
        target,
        met,
    }
}

fn harmonic(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    Some(1.0 / (1.0 / a? + 1.0 / b?))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(path) = args.render_only.clone() {
        return render_only(args, &path);
    }
    let started_at = chrono::Utc::now();
    let machine = Machine::detect();
    // Short: s3s-fs (the local S3 server) fails multipart uploads of keys over ~125 characters
    // ("File name too long"), and topic names end up in the sink's keys.
    let run_id = format!("{}", started_at.format("%d%H%M%S"));
    for d in ["configs", "logs"] {
        std::fs::create_dir_all(args.out_dir.join(d))
            .with_context(|| format!("creating {}", args.out_dir.display()))?;
    }
    let cold_n = args.cold_events.unwrap_or(args.events.min(300_000));
    anyhow::ensure!(
        args.events > 0 && args.forms > 0 && cold_n > 0 && args.repeats > 0,
        "--events, --forms, --cold-events and --repeats must be > 0"
    );
    let forms_api_bin = args.bin_dir.join("forms-api");

    // Forms: the cluster's API serves 1000; another --forms gets its own server.
    let mut own_apis = Vec::new();
    let api_base = if args.forms == CLUSTER_API_FORMS {
        args.api.clone()
    } else {
        let api = OwnApi::start(
            &forms_api_bin,
            args.own_api_port + 2,
            args.forms,
            42,
            &args.out_dir.join("logs/forms-api-warm.log"),
        )
        .await?;
        let b = api.base.clone();
        own_apis.push(api);
        b
    };
    say(format_args!(
        "fetching {} forms from {api_base}",
        args.forms
    ));
    let forms = api::fetch_forms(&api_base, args.forms)
        .await
        .context("fetching the generated forms (is `make cluster-up` done?)")?;
    let mean_form = forms.iter().map(Vec::len).sum::<usize>() as f64 / forms.len() as f64;
    say(format_args!(
        "starting our forms-api for the cold cache ({cold_n} forms, port {})",
        args.own_api_port
    ));
    let cold_api = OwnApi::start(
        &forms_api_bin,
        args.own_api_port,
        cold_n,
        42,
        &args.out_dir.join("logs/forms-api-cold.log"),
    )
    .await?;
    let cold_api_base = cold_api.base.clone();
    own_apis.push(cold_api);

    say(format_args!(
        "generating {} events over {} forms, {cold_n} cold-cache events",
        args.events, args.forms
    ));
    let events = Arc::new(events::generate(args.events, args.forms, args.seed, false));
    let cold_events = Arc::new(events::generate(cold_n, cold_n, args.seed, true));
    let mean_event =
        events.iter().map(|e| e.value.len()).sum::<usize>() as f64 / events.len() as f64;

    // In-process stage costs on a sample of enriched records.
    let sample: Vec<Vec<u8>> = events
        .iter()
        .take(20_000)
        .enumerate()
        .map(|(i, e)| events::enriched(&e.value, &forms[e.form], "form.events", 0, i as i64))
        .collect();
    let mean_enriched = sample.iter().map(Vec::len).sum::<usize>() as f64 / sample.len() as f64;
    let secs = args.stage_seconds;
    let (stage_costs, rows_per_record) = blocking(move || stages::measure(&sample, secs)).await?;
    for s in &stage_costs {
        say(format_args!(
            "stage {}: {:.0} records/s ({:.2} µs/record)",
            s.name, s.records_per_s, s.us_per_record
        ));
    }

    // The rows every output of the sink writes for this input (bytes per row).
    let rows = if args.stages.iter().any(|s| s == "sink") && !args.sink_outputs.is_empty() {
        let (ev, fo) = (events.clone(), Arc::new(forms.clone()));
        let start = Instant::now();
        match blocking(move || stages::count_rows(&ev, &fo)).await {
            Ok(rows) => {
                say(format_args!(
                    "the sink writes {rows} rows for the {} events ({:.2} per event; counted in {:.1} s)",
                    events.len(),
                    rows as f64 / events.len() as f64,
                    start.elapsed().as_secs_f64()
                ));
                Some(rows)
            }
            Err(e) => {
                say(format_args!("rows of the input not counted: {e:#}"));
                None
            }
        }
    } else {
        None
    };

    let ctx = Ctx {
        source: Connector {
            name: "kafka-source",
            progress_marker: "committed=",
            bin: args.bin_dir.join("kafka-source"),
            template: args.config_dir.join("form-events-source.yaml"),
        },
        sink: Connector {
            name: "s3-sink",
            progress_marker: "records in: ",
            bin: args.bin_dir.join("s3-sink"),
            template: args.config_dir.join("form-s3-sink.yaml"),
        },
        forms: Arc::new(forms),
        events,
        cold_events,
        api_base,
        cold_api_base,
        rows,
        run_id,
        args: args.clone(),
    };
    let mut repeats = Vec::new();
    for r in 0..args.repeats {
        let rep = one_repeat(&ctx, r).await?;
        repeats.push(rep);
        write_outputs(
            &ctx.args,
            (ctx.events.len(), ctx.cold_events.len()),
            &machine,
            &started_at,
            &repeats,
            &stage_costs,
            rows_per_record,
            (mean_event, mean_enriched, mean_form),
        )?;
    }
    drop(own_apis);
    say(format_args!(
        "wrote {} and {}",
        args.out_dir.join("results.json").display(),
        args.report.display()
    ));
    Ok(())
}

/// Re-renders the outputs from an earlier results.json (older files: a connector's rate then
/// counted only when the probe also saw every record out; now an exit 0 is enough).
fn render_only(mut args: Args, path: &Path) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text)?;
    let get = |k: &str| v.get(k).cloned().unwrap_or(serde_json::Value::Null);
    let mut reps: Vec<Repeat> = serde_json::from_value(get("runs")).context("`runs`")?;
    for r in &mut reps {
        for run in [
            &mut r.kafka_source_warm,
            &mut r.kafka_source_cold,
            &mut r.s3_sink,
        ]
        .into_iter()
        .flatten()
        {
            if !run.all_out && run.probe_last == 0 {
                // Written before `all_out` existed: `ok` meant exit 0 and all out.
                run.all_out = run.ok;
                run.ok = run.proc.ok();
            }
        }
        if let Some(s) = &r.s3_sink
            && s.ok
            && !s.all_out
        {
            r.notes.retain(|n| !n.starts_with("s3-sink run failed"));
            r.notes.push(format!(
                "s3-sink exited 0 after reading {} records, but its group's committed offsets were below that \
                 when the process exited (see {})",
                s.events, s.proc.log
            ));
        }
    }
    let machine: Machine = serde_json::from_value(get("machine")).context("`machine`")?;
    let started_at = chrono::DateTime::parse_from_rfc3339(get("date").as_str().unwrap_or_default())
        .context("`date`")?
        .with_timezone(&chrono::Utc);
    let st = get("in_process_stages_one_thread");
    let stage_costs: Vec<stages::Stage> =
        serde_json::from_value(st["stages"].clone()).context("`stages`")?;
    let rows_per_record = st["rows_per_record"].as_f64().unwrap_or(0.0);
    let mb = get("mean_bytes");
    let f = |x: &serde_json::Value| x.as_f64().unwrap_or(0.0);
    let n = |k: &str| v.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
    args.forms = n("forms") as usize;
    args.partitions = n("partitions") as i32;
    args.repeats = n("repeats") as usize;
    if args.command.is_none() {
        args.command = get("command").as_str().map(str::to_owned);
    }
    write_outputs(
        &args,
        (n("events") as usize, n("cold_events") as usize),
        &machine,
        &started_at,
        &reps,
        &stage_costs,
        rows_per_record,
        (f(&mb["event"]), f(&mb["enriched"]), f(&mb["form"])),
    )?;
    say(format_args!(
        "re-rendered {} and {}",
        args.out_dir.join("results.json").display(),
        args.report.display()
    ));
    Ok(())
}

#[allow(clippy::too_many_arguments)] // everything the report shows
fn write_outputs(
    a: &Args,
    (n_events, n_cold): (usize, usize),
    machine: &Machine,
    started_at: &chrono::DateTime<chrono::Utc>,
    reps: &[Repeat],
    stage_costs: &[stages::Stage],
    rows_per_record: f64,
    (mean_event, mean_enriched, mean_form): (f64, f64, f64),
) -> anyhow::Result<()> {
    let col = |f: &dyn Fn(&Repeat) -> Option<f64>| reps.iter().map(f).collect::<Vec<_>>();
    let raw_produce = col(&|r| r.raw_produce_events.as_ref().map(|t| t.events_per_s));
    let raw_consume_events = col(&|r| r.raw_consume_events.as_ref().map(|t| t.events_per_s));
    let raw_consume_enriched = col(&|r| r.raw_consume_enriched.as_ref().map(|t| t.events_per_s));
    let raw_pipe = col(&|r| r.raw_pipe.as_ref().map(|t| t.events_per_s));
    let api_cap = col(&|r| r.api_capacity.as_ref().map(|l| l.rps));
    let source_warm = col(&|r| ok_rate(&r.kafka_source_warm));
    let source_warm_steady = col(&|r| {
        r.kafka_source_warm
            .as_ref()
            .and_then(|c| c.steady_events_per_s)
    });
    let source_cold = col(&|r| ok_rate(&r.kafka_source_cold));
    let source_cold_steady = col(&|r| {
        r.kafka_source_cold
            .as_ref()
            .and_then(|c| c.steady_events_per_s)
    });
    let sink = col(&|r| ok_rate(&r.s3_sink));
    let sink_steady = col(&|r| r.s3_sink.as_ref().and_then(|c| c.steady_events_per_s));
    let e2e = col(&|r| {
        r.end_to_end
            .as_ref()
            .filter(|e| e.ok)
            .map(|e| e.events_per_s)
    });
    let procs = |name: &str| -> Vec<ProcReport> {
        reps.iter()
            .flat_map(|r| {
                let mut v: Vec<ProcReport> = Vec::new();
                for c in [&r.kafka_source_warm, &r.kafka_source_cold, &r.s3_sink]
                    .into_iter()
                    .flatten()
                {
                    v.push(c.proc.clone());
                }
                if let Some(e) = &r.end_to_end {
                    v.push(e.source.clone());
                    v.push(e.sink.clone());
                }
                v
            })
            .filter(|p| p.name == name)
            .collect()
    };
    let peak = |name: &str| {
        procs(name)
            .iter()
            .map(|p| p.peak_rss_mib)
            .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))))
    };
    let peak_rss_src = peak("kafka-source");
    let peak_rss_sink = peak("s3-sink");
    let cpu_per_million = |f: &dyn Fn(&Repeat) -> Option<(f64, u64)>| {
        median(
            reps.iter()
                .map(|r| f(r).map(|(cpu, n)| cpu * 1e6 / n.max(1) as f64)),
        )
    };

    let m_pipe = median(raw_pipe.iter().copied());
    let m_consume_enriched = median(raw_consume_enriched.iter().copied());
    let m_api = median(api_cap.iter().copied());
    let m_consume_events = median(raw_consume_events.iter().copied());
    let m_produce = median(raw_produce.iter().copied());
    let rss_target = |v: Option<f64>| -> Line {
        Line {
            measure: String::new(),
            unit: "MiB, worst run".into(),
            median: v,
            runs: vec![v],
            versus: None,
            ratio: None,
            target: Some(format!("≤ {TARGET_PEAK_RSS_MIB:.0} MiB")),
            met: v.map(|x| x <= TARGET_PEAK_RSS_MIB),
        }
    };
    let mut lines = vec![
        line(
            "end to end, warm cache",
            "events/s",
            e2e.clone(),
            Some(("target", Some(TARGET_E2E_EVENTS_PER_S))),
            Some((
                format!("≥ {TARGET_E2E_EVENTS_PER_S:.0} events/s"),
                Box::new(|x| x >= TARGET_E2E_EVENTS_PER_S),
            )),
            false,
        ),
        line(
            "kafka-source, warm cache",
            "events/s",
            source_warm.clone(),
            Some(("raw consume→produce pipe", m_pipe)),
            Some((
                format!("≥ {:.0}% of the pipe", TARGET_SOURCE_VS_PIPE * 100.0),
                Box::new(|x| x >= TARGET_SOURCE_VS_PIPE),
            )),
            true,
        ),
        line(
            "kafka-source, warm cache, steady 10–90%",
            "events/s",
            source_warm_steady,
            Some(("raw consume→produce pipe", m_pipe)),
            None,
            false,
        ),
        line(
            "kafka-source, cold cache",
            "events/s",
            source_cold.clone(),
            Some(("forms API capacity", m_api)),
            Some((
                format!("≥ {:.0}% of API capacity", TARGET_COLD_VS_API * 100.0),
                Box::new(|x| x >= TARGET_COLD_VS_API),
            )),
            true,
        ),
        line(
            "kafka-source, cold cache, steady 10–90%",
            "events/s",
            source_cold_steady,
            Some(("forms API capacity", m_api)),
            None,
            false,
        ),
        line(
            "s3-sink",
            "events/s",
            sink.clone(),
            Some(("raw consume of form.enriched", m_consume_enriched)),
            Some((
                format!("≥ {:.0}% of raw consume", TARGET_SINK_VS_CONSUME * 100.0),
                Box::new(|x| x >= TARGET_SINK_VS_CONSUME),
            )),
            true,
        ),
        line(
            "s3-sink, steady 10–90%",
            "events/s",
            sink_steady,
            Some(("raw consume of form.enriched", m_consume_enriched)),
            None,
            false,
        ),
        line(
            "raw produce of the events",
            "events/s",
            raw_produce.clone(),
            None,
            None,
            false,
        ),
        line(
            "raw consume of form.events",
            "events/s",
            raw_consume_events.clone(),
            None,
            None,
            false,
        ),
        line(
            "raw consume→produce pipe (events in, enriched-size out)",
            "events/s",
            raw_pipe.clone(),
            Some((
                "harmonic of raw consume and produce",
                harmonic(m_consume_events, m_produce),
            )),
            None,
            false,
        ),
        line(
            "raw consume of form.enriched",
            "events/s",
            raw_consume_enriched.clone(),
            None,
            None,
            false,
        ),
        line(
            "forms API capacity",
            "requests/s",
            api_cap.clone(),
            None,
            None,
            false,
        ),
    ];
    let mut l = rss_target(peak_rss_src);
    l.measure = "kafka-source peak RSS".into();
    lines.push(l);
    let mut l = rss_target(peak_rss_sink);
    l.measure = "s3-sink peak RSS".into();
    lines.push(l);
    for (what, f) in [
        (
            "kafka-source CPU, warm",
            Box::new(|r: &Repeat| {
                r.kafka_source_warm
                    .as_ref()
                    .map(|c| (c.proc.cpu_seconds, c.events))
            }) as Box<dyn Fn(&Repeat) -> Option<(f64, u64)>>,
        ),
        (
            "kafka-source CPU, cold",
            Box::new(|r: &Repeat| {
                r.kafka_source_cold
                    .as_ref()
                    .map(|c| (c.proc.cpu_seconds, c.events))
            }),
        ),
        (
            "s3-sink CPU",
            Box::new(|r: &Repeat| r.s3_sink.as_ref().map(|c| (c.proc.cpu_seconds, c.events))),
        ),
    ] {
        let v = cpu_per_million(&*f);
        lines.push(Line {
            measure: what.into(),
            unit: "CPU s per 1M events".into(),
            median: v,
            runs: reps
                .iter()
                .map(|r| f(r).map(|(c, n)| c * 1e6 / n.max(1) as f64))
                .collect(),
            versus: None,
            ratio: None,
            target: None,
            met: None,
        });
    }

    // s3-sink by output (in the order of their runs).
    let mut outputs_seen: Vec<SinkOutput> = Vec::new();
    for o in reps.iter().flat_map(|r| &r.sink_outputs) {
        if !outputs_seen.contains(&o.output) {
            outputs_seen.push(o.output);
        }
    }
    // Per repeat: that output's run, if any.
    let output_runs = |out: SinkOutput| -> Vec<Option<&SinkOutputRun>> {
        reps.iter()
            .map(|r| r.sink_outputs.iter().find(|o| o.output == out))
            .collect()
    };
    let output_rows: Vec<OutputRow> = outputs_seen
        .iter()
        .map(|&out| {
            let runs = output_runs(out);
            let m = |f: &dyn Fn(&SinkOutputRun) -> Option<f64>| {
                median(runs.iter().map(|o| o.and_then(f)))
            };
            let present: Vec<&SinkOutputRun> = runs.iter().flatten().copied().collect();
            OutputRow {
                output: out.name().to_owned(),
                detail: present
                    .first()
                    .map(|o| o.detail.clone())
                    .unwrap_or_default(),
                runs: present.len(),
                ok_runs: present.iter().filter(|o| o.run.ok).count(),
                events_per_s: m(&|o| o.run.ok.then_some(o.run.events_per_s)),
                steady_events_per_s: m(&|o| {
                    o.run.ok.then_some(o.run.steady_events_per_s).flatten()
                }),
                cpu_seconds_per_million_events: m(&|o| o.cpu_per_million()),
                peak_rss_mib: present
                    .iter()
                    .map(|o| o.run.proc.peak_rss_mib)
                    .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x)))),
                bytes_per_row: m(&|o| o.bytes_per_row()),
                bytes_per_event: m(&|o| o.bytes_per_event()),
                other_bytes_per_row: m(&|o| o.other_bytes_per_row()),
                commits_per_min: m(&|o| o.commits_per_min),
                visible_max_s: present
                    .iter()
                    .filter_map(|o| o.visibility.as_ref().and_then(Visibility::max))
                    .reduce(f64::max),
                visible_median_s: median(
                    present
                        .iter()
                        .filter_map(|o| o.visibility.as_ref())
                        .flat_map(|v| v.samples_s.iter().map(|x| Some(*x))),
                ),
                commit_interval_s: present
                    .iter()
                    .find_map(|o| o.visibility.as_ref().map(|v| v.commit_interval_s)),
            }
        })
        .collect();
    let cpu_of = |out: SinkOutput| -> Vec<Option<f64>> {
        output_runs(out)
            .iter()
            .map(|o| o.and_then(SinkOutputRun::cpu_per_million))
            .collect()
    };
    let avro_cpu = median(cpu_of(SinkOutput::Avro));
    let iceberg_vs_avro = line(
        "s3-sink CPU, Iceberg output vs Avro output",
        "CPU s per 1M events",
        cpu_of(SinkOutput::Iceberg),
        Some(("s3-sink CPU, Avro output", avro_cpu)),
        Some((
            format!("≤ {:.0}% of Avro's", TARGET_ICEBERG_VS_AVRO_CPU * 100.0),
            Box::new(|x| x <= TARGET_ICEBERG_VS_AVRO_CPU),
        )),
        true,
    );
    let iceberg_ratio = iceberg_vs_avro.ratio;
    let iceberg_met = iceberg_vs_avro.met;
    if outputs_seen.contains(&SinkOutput::Iceberg) {
        lines.push(iceberg_vs_avro);
    }

    let results = json!({
        "events": n_events,
        "forms": a.forms,
        "cold_events": n_cold,
        "partitions": a.partitions,
        "repeats": a.repeats,
        "repeats_done": reps.len(),
        "date": started_at.to_rfc3339(),
        "machine": machine,
        "command": a.command,
        "args": std::env::args().collect::<Vec<_>>(),
        "mean_bytes": {"event": mean_event, "enriched": mean_enriched, "form": mean_form},
        "end_to_end_events_per_s": median(e2e.iter().copied()),
        "kafka_source_events_per_s": median(source_warm.iter().copied()),
        "cold_cache_events_per_s": median(source_cold.iter().copied()),
        "s3_sink_events_per_s": median(sink.iter().copied()),
        "raw_consume_events_per_s": {"form.events": m_consume_events, "form.enriched": m_consume_enriched},
        "raw_produce_events_per_s": m_produce,
        "raw_consume_produce_events_per_s": m_pipe,
        "api_capacity_rps": m_api,
        "peak_rss_mib": {"kafka-source": peak_rss_src, "s3-sink": peak_rss_sink},
        "cpu_seconds_per_million_events": lines.iter().filter(|l| l.unit.starts_with("CPU")).map(|l| (l.measure.clone(), l.median)).collect::<std::collections::BTreeMap<_, _>>(),
        "ratios": {
            "end_to_end_vs_target": median(e2e.iter().copied()).map(|v| v / TARGET_E2E_EVENTS_PER_S),
            "kafka_source_vs_raw_consume_produce": lines[1].ratio,
            "cold_cache_vs_api_capacity": lines[3].ratio,
            "s3_sink_vs_raw_consume_enriched": lines[5].ratio,
            "s3_sink_iceberg_vs_avro_cpu_per_event": iceberg_ratio,
        },
        "sink_outputs": output_rows,
        "iceberg_vs_avro_cpu_per_event": {"ratio": iceberg_ratio, "target": TARGET_ICEBERG_VS_AVRO_CPU, "met": iceberg_met},
        "targets": lines.iter().filter(|l| l.target.is_some()).map(|l| json!({"measure": l.measure, "value": l.median, "ratio": l.ratio, "target": l.target, "met": l.met})).collect::<Vec<_>>(),
        "table": lines,
        "in_process_stages_one_thread": {"rows_per_record": rows_per_record, "stages": stage_costs},
        "runs": reps,
    });
    let path = a.out_dir.join("results.json");
    std::fs::write(&path, serde_json::to_string_pretty(&results)?)
        .with_context(|| format!("writing {}", path.display()))?;

    let mut commands = vec![
        a.command
            .clone()
            .unwrap_or_else(|| std::env::args().collect::<Vec<_>>().join(" ")),
    ];
    commands.push(format!("# results: {}", path.display()));
    let mut params = vec![
        ("events".to_owned(), n_events.to_string()),
        ("forms".to_owned(), a.forms.to_string()),
        (
            "cold-cache events (each a different form)".to_owned(),
            n_cold.to_string(),
        ),
        ("partitions".to_owned(), a.partitions.to_string()),
        (
            "repeats".to_owned(),
            format!("{} of {}", reps.len(), a.repeats),
        ),
        (
            "API load concurrency".to_owned(),
            a.api_concurrency.to_string(),
        ),
        (
            "mean sizes (bytes)".to_owned(),
            format!("event {mean_event:.0}, form {mean_form:.0}, enriched {mean_enriched:.0}"),
        ),
        (
            "producer compression of the ceilings".to_owned(),
            a.compression.clone(),
        ),
    ];
    if !output_rows.is_empty() {
        params.push((
            "s3-sink outputs".to_owned(),
            output_rows
                .iter()
                .map(|o| format!("{} ({})", o.output, o.detail))
                .collect::<Vec<_>>()
                .join("; "),
        ));
    }
    let mut extra = String::new();
    extra.push_str("In-process cost of the sink's per-record stages on generated records (one thread, this machine; ");
    extra.push_str(&format!("{rows_per_record:.2} rows per record):\n\n| stage | records/s | µs/record |\n|---|---:|---:|\n"));
    for s in stage_costs {
        extra.push_str(&format!(
            "| {} | {:.0} | {:.2} |\n",
            s.name, s.records_per_s, s.us_per_record
        ));
    }
    if !output_rows.is_empty() {
        extra.push('\n');
        extra.push_str(&report::outputs_table(
            &output_rows,
            iceberg_ratio,
            TARGET_ICEBERG_VS_AVRO_CPU,
        ));
    }
    let notes: Vec<String> = reps
        .iter()
        .flat_map(|r| r.notes.iter().map(move |n| format!("- r{}: {n}", r.repeat)))
        .collect();
    if !notes.is_empty() {
        extra.push_str("\nNotes of this run:\n\n");
        extra.push_str(&notes.join("\n"));
        extra.push('\n');
    }
    extra.push_str(
        "\nHow it is measured: connector rates are `--max-records N` runs timed from spawn to exit (startup, group join \
         and the final commit included); \"steady\" is the rate between 10% and 90% of the output, read from the \
         connectors' own progress lines (every second: kafka-source `committed=`, s3-sink `records in:`). Raw \
         rates are first record to last. Peak RSS is the largest `VmHWM` polled every 20 ms from \
         `/proc/PID/status` (`wait4`'s `ru_maxrss` is not used: Linux carries the parent's peak over fork+exec); CPU is \
         utime+stime from `wait4`.\n",
    );
    if !output_rows.is_empty() {
        extra.push_str(
            "\nThe sink's outputs: one `--max-records N` run per output over the same input topic, each with its own \
             consumer group, timed until it exits after its last commit (Iceberg: the group's offsets are committed in \
             Kafka after each table commit, every `commit-interval`, 2 s by default in the bench, so the run's tail waits \
             up to that). Bytes are the sizes of the objects the run wrote, read from the local S3 server's directory \
             (`--s3-root`): data files (`.avro`, `.parquet`) under the run's prefix or, for Iceberg, the `.parquet` data \
             files under its fresh namespace (SQL catalog: on a fresh SQLite file, in a fresh warehouse; \
             `--iceberg-catalog rest`: in the REST catalog's warehouse); \"other\" is \
             everything else there (Iceberg: table metadata, manifests, manifest lists; files: `_schemas/`). Rows are \
             the rows of both tables that the input makes (the sink's flatten and row encoding run in the bench over \
             every record). Iceberg commits are the snapshots of the table with the most (one `metadata/snap-*.avro` \
             manifest list each) per minute of the run, spawn to exit.\n",
        );
    }
    let md = report::markdown(
        machine,
        &started_at.format("%Y-%m-%d %H:%M UTC").to_string(),
        &commands,
        &params,
        &lines,
        &extra,
    );
    report::write_markdown(&a.report, &md)
}

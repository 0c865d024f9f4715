//! `kafka-source` binary: wiring only.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use connector_common::cli::CommonArgs;
use connector_common::kafka::{RestartBudget, is_fenced};
use connector_common::telemetry::{self, Health};
use kafka_source::config::{DEFAULT_CONFIG_PATH, SourceConfig};
use kafka_source::enrich::Enricher;
use kafka_source::problems::Problems;
use kafka_source::source::{self, Stats};
use tracing::{error, info, warn};

/// mimalloc, not glibc's malloc. With glibc, 300k events each about a different form (the cache
/// full from 100k on, evicting) ran at 14–16k/s, 57 CPU s per 1M events, slowing down as the
/// cache filled, with `_int_malloc`, `_int_free` and `malloc_consolidate` at the top of the
/// profile (glibc's trim and mmap thresholds and `arena_max=1` did not help: 18–19k/s). With
/// mimalloc the same run: 25–31k/s, 32–39 CPU s per 1M, and no slowdown; peak RSS 240–246 MiB
/// with the cache full (100k forms; glibc 218), warm 155 MiB (glibc 111–125).
/// `form-etl-bench --events 300000 --cold-events 300000 --stages cold`.
/// (The sink keeps glibc: there mimalloc saved 2–3% CPU for ~70 MiB more peak RSS.)
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Kafka form events → forms API enrichment → form.enriched, exactly once.
#[derive(Debug, Parser)]
#[command(name = "kafka-source", version)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// The dead-letter queue (`dlq.topic` of the config): list the letters, or re-send chosen
    /// ones to the topic they came from, exactly once. The letters of every connector are
    /// there: filter with `--connector`.
    #[command(subcommand)]
    Dlq(connector_common::redrive::DlqCommand),
}

fn main() {
    let args = Args::parse();
    let cfg: SourceConfig = args.common.load_config_or_exit(DEFAULT_CONFIG_PATH);
    telemetry::init_logging(args.common.log_format);
    if let Some(Command::Dlq(cmd)) = &args.command {
        let result =
            connector_common::redrive::run_command(cmd, &cfg.kafka.client_config(), &cfg.dlq.topic);
        if let Err(e) = result {
            error!(error = format!("{e:#}"), "dlq command failed.");
            std::process::exit(1);
        }
        return;
    }
    // Held until exit (the kernel releases its lock however the process ends).
    let instance = match args.common.instance(&cfg.meta.name) {
        Ok(i) => i,
        Err(e) => {
            error!(error = %e, "No instance id for kafka-source.");
            std::process::exit(1);
        }
    };
    info!(
        instance_id = %instance.id,
        slot = ?instance.slot,
        lock = ?instance.lock_path(),
        "Instance id."
    );
    // Two threads, each with its own single-threaded runtime: this one runs the loop (Kafka,
    // events, output records); "enrich" runs the forms API requests, their connections and
    // the checks of their answers. No work-stealing scheduler: tasks never migrate, and the
    // threads meet only where a request is started and where its answer is shared. librdkafka
    // has its own threads and commits run on the blocking pool. Measured on the cold-cache
    // bench (2 cores shared with the API and Kafka): 112 -> 77 CPU seconds per 1M events for
    // one thread against tokio's 2-worker runtime. That one thread then was the bound (cold
    // 12.9–15.4k events/s, ~75% of its time on the requests' side); with the requests on a
    // thread of their own: 17.3–17.6k events/s, 61 -> 57–58 CPU seconds per 1M events.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("building the tokio runtime");
    let requests = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("building the forms API requests' runtime");
    let (stop_requests, stopped) = tokio::sync::oneshot::channel::<()>();
    let requests_handle = requests.handle().clone();
    let requests_thread = std::thread::Builder::new()
        .name("enrich".into())
        .spawn(move || {
            requests.block_on(async {
                let _ = stopped.await;
            })
        })
        .expect("starting the forms API requests' thread");
    let result = rt.block_on(run(
        cfg,
        args.common.max_records,
        requests_handle,
        &instance.id,
    ));
    drop(stop_requests);
    let _ = requests_thread.join();
    match result {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            error!(error = format!("{e:#}"), "kafka-source failed.");
            std::process::exit(1);
        }
    }
}

async fn run(
    cfg: SourceConfig,
    max_records: Option<u64>,
    requests: tokio::runtime::Handle,
    instance_id: &str,
) -> anyhow::Result<()> {
    info!(
        name = %cfg.meta.name,
        input = %cfg.kafka.topic,
        output = %cfg.output_topic(),
        api = %kafka_source::redact::url(&cfg.enrich.uri),
        max_answer_bytes = cfg.max_answer_bytes(),
        "Starting kafka-source."
    );
    if let Some(w) = cfg.plain_http_token_warning() {
        warn!("{w}");
    }
    let shutdown = connector_common::shutdown_signal();
    let handle = telemetry::install_metrics()?;
    let health = Health::default();
    telemetry::serve_http(
        cfg.metrics.address,
        handle,
        health.clone(),
        shutdown.clone(),
    )
    .await
    .with_context(|| format!("binding the metrics endpoint {}", cfg.metrics.address))?;
    let problems = Problems::new(health.clone());
    let enricher = Enricher::new(
        &cfg.enrich,
        cfg.max_answer_bytes(),
        problems.clone(),
        requests,
    )?;
    let stats = Arc::new(Stats::default());
    let progress = {
        let (stats, enricher) = (stats.clone(), enricher.clone());
        telemetry::spawn_progress(cfg.metrics.progress_interval, shutdown.clone(), move |dt| {
            source::progress_line(&stats, &enricher, dt)
        })
    };
    // A fencing by the cluster (a static member fenced by its own id after a coordinator
    // restart, a producer fenced after its transaction timed out while the broker was away)
    // leaves the clients unusable: new ones resume from the committed offsets, as a process
    // restart would. A few times per hour at most (a live twin with our id would fence us back).
    let mut restarts = RestartBudget::new(5, Duration::from_secs(3600));
    let result = loop {
        let result = source::run(
            cfg.clone(),
            enricher.clone(),
            stats.clone(),
            problems.clone(),
            shutdown.clone(),
            max_records,
            instance_id,
        )
        .await;
        match result {
            Err(e) if is_fenced(&e) && !shutdown.is_triggered() && restarts.take() => {
                warn!(
                    error = format!("{e:#}"),
                    "Fenced by the cluster: starting new Kafka clients with the same ids (they resume from the committed offsets)."
                );
                metrics::counter!("kafka_source_client_restarts_total").increment(1);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            other => break other,
        }
    };
    shutdown.trigger();
    progress.abort();
    result
}

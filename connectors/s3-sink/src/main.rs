//! `s3-sink`: reads enriched form records from Kafka, runs the `transforms:` chain, and writes
//! the `form` and `form_field` tables as Avro files to S3, exactly once. Wiring only.

mod avro;
mod commit;
mod committer;
mod config;
mod format;
mod iceberg_committer;
mod keys;
mod lake;
mod maintain;
mod parquet_file;
mod pipeline;
mod rolling;
mod schemas;
mod seal;
mod sink;
mod store;
mod tables;
mod tracker;
mod transform;
mod uploads;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use clap::Parser;
use connector_common::cli::CommonArgs;
use connector_common::telemetry::{self, Health};

use crate::config::{DEFAULT_CONFIG, SinkConfig};

/// glibc malloc, set once before any thread starts (`mallopt` is not thread-safe):
/// - every block of 1 MiB or more gets its own mapping, returned to the kernel when freed. By
///   default glibc raises that threshold (up to 32 MiB) each time such a block is freed, and then
///   the file parts, heads and tails (8–16 MiB each) are carved from the arenas, whose freed
///   space stays resident and fragments: peak RSS with 64 MiB files (`tests/sink_memory.rs`)
///   298–308 MiB with a 32 MiB threshold, 203–213 MiB with 1 MiB, for ~5% more CPU. The
///   per-batch buffers (the SmartModule engine's copies) stay below 1 MiB: batches are capped
///   at 256 KiB of input (`sink.rs`);
/// - up to 64 MiB of free heap is kept rather than trimmed, so those per-batch buffers do not
///   fault in fresh zeroed pages every batch (that was a quarter of the sink's CPU).
fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: plain libc calls with valid parameters, on the only thread.
    unsafe {
        if libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20) != 1
            || libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20) != 1
        {
            eprintln!("s3-sink: mallopt failed: large buffers may stay resident after use.");
        }
    }
}

/// Default `/metrics` and `/health` address (docs/internals.md).
const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9465";

#[derive(Debug, Parser)]
#[command(name = "s3-sink", version, about)]
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
    /// Upkeep of the Iceberg tables (`output.type: iceberg`): expire snapshots, delete orphan
    /// files.
    #[command(subcommand)]
    Iceberg(maintain::IcebergCommand),
}

fn main() -> anyhow::Result<()> {
    tune_malloc();
    let mut args = Args::parse();
    // `--check-config` also loads the SmartModules (resolve, compile, canary record), so the
    // config's own check runs without it and this function says OK only once they load.
    let check = std::mem::take(&mut args.common.check_config);
    let cfg: SinkConfig = args.common.load_config_or_exit(DEFAULT_CONFIG);
    match &args.command {
        Some(Command::Dlq(cmd)) => {
            telemetry::init_logging(args.common.log_format);
            return connector_common::redrive::run_command(
                cmd,
                &cfg.kafka.client_config(),
                &cfg.dlq.topic,
            );
        }
        Some(Command::Iceberg(cmd)) => {
            telemetry::init_logging(args.common.log_format);
            return tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?
                .block_on(maintain::run(&cfg, cmd, &args.common.state_dir));
        }
        None => {}
    }
    if check {
        let path = args
            .common
            .config_path(DEFAULT_CONFIG)
            .display()
            .to_string();
        match transform::load_chain(&cfg.transforms, false) {
            Ok(chain) => {
                let m = &cfg.meta;
                println!(
                    "{path}: OK ({} {} `{}` → topic `{}`)",
                    m.connector_type, m.version, m.name, m.topic
                );
                for d in chain.module_digests() {
                    println!(
                        "  transforms: {} = {} (sha256 {})",
                        d.uses,
                        d.path.display(),
                        d.sha256
                    );
                }
                std::process::exit(0);
            }
            Err(e) => {
                eprintln!("invalid config: {path}: {e:#}");
                std::process::exit(2);
            }
        }
    }
    telemetry::init_logging(args.common.log_format);
    let result = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run(cfg, args.common));
    // Fenced by the cluster (a static member fenced by its own group.instance.id after its
    // coordinator restarted: apache/kafka#23542): new clients resume, in this same process.
    // Or it must resume from elsewhere than it started (`sink::Restart`).
    if let Err(e) = &result
        && (connector_common::kafka::is_fenced(e) || e.downcast_ref::<sink::Restart>().is_some())
    {
        connector_common::kafka::reexec_after_fencing(e);
    }
    result
}

async fn run(cfg: SinkConfig, args: CommonArgs) -> anyhow::Result<()> {
    let shutdown = connector_common::shutdown_signal();
    let health = Health::default();
    let handle = telemetry::install_metrics()?;
    let (addr, every) = match &cfg.metrics {
        Some(m) => (m.address, m.progress_interval),
        None => (
            DEFAULT_METRICS_ADDR.parse::<SocketAddr>()?,
            telemetry::DEFAULT_PROGRESS_INTERVAL,
        ),
    };
    let server = telemetry::serve_http(addr, handle, health.clone(), shutdown.clone()).await?;
    let progress = Arc::new(sink::Progress::default());
    let p = progress.clone();
    let mut last = 0u64;
    let _line = telemetry::spawn_progress(every, shutdown.clone(), move |elapsed| {
        let total = p.records_in.load(Ordering::Relaxed);
        let rate = (total - last) as f64 / elapsed.as_secs_f64().max(1e-3);
        last = total;
        format!("records in: {total} ({rate:.0}/s)")
    });
    // Before Kafka or S3: a missing or broken module is a start-up error saying what to do.
    let transform: Box<dyn transform::Transform> =
        Box::new(transform::ParallelChain::load(&cfg.transforms)?);
    let instance = args
        .instance(&cfg.meta.name)
        .map_err(|e| anyhow::anyhow!("no instance id for the sink: {e}"))?;
    tracing::info!(instance_id = %instance.id, slot = ?instance.slot, "Instance.");
    let opts = sink::RunOptions {
        max_records: args.max_records,
        instance_id: instance.id.clone(),
        state_dir: args.state_dir.clone(),
    };
    let res = sink::run(cfg, opts, transform, shutdown.clone(), health, progress).await;
    shutdown.trigger();
    let _ = server.task.await;
    res
}

//! `s3-sink`: reads enriched form records from Kafka, runs the `transforms:` chain, and writes
//! the `form` and `form_field` tables as Avro files to S3, exactly once. Wiring only.

mod avro;
mod commit;
mod config;
mod keys;
mod pipeline;
mod rolling;
mod sink;
mod tables;
mod transform;
mod upload;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use clap::Parser;
use connector_common::cli::CommonArgs;
use connector_common::telemetry::{self, Health};

use crate::config::{DEFAULT_CONFIG, SinkConfig};

/// Default `/metrics` and `/health` address (docs/internals.md).
const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9465";

#[derive(Debug, Parser)]
#[command(name = "s3-sink", version, about)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let cfg: SinkConfig = args.common.load_config_or_exit(DEFAULT_CONFIG);
    telemetry::init_logging(args.common.log_format);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run(cfg, args.common))
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
    for step in &cfg.transforms {
        anyhow::ensure!(
            step.uses == "form-flatten",
            "`transforms`: `{}` is not available (this build runs `form-flatten`)",
            step.uses
        );
    }
    let transform: Box<dyn transform::Transform> = Box::new(transform::NativeFlatten);
    let opts = sink::RunOptions {
        max_records: args.max_records,
    };
    let res = sink::run(cfg, opts, transform, shutdown.clone(), health, progress).await;
    shutdown.trigger();
    let _ = server.task.await;
    res
}

//! The forms API side: fetching the generated forms, starting our own forms-api with another
//! N, and the load generator that measures the API's capacity (tokio + reqwest, keep-alive,
//! many requests in flight).

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::{StreamExt as _, TryStreamExt as _};
use serde::Serialize;

use crate::events::form_id;
use crate::monitor::{self, Monitored};

/// Fetches forms `0..n` from `base` (`GET /internal.forms/{id}`), in order.
pub(crate) async fn fetch_forms(base: &str, n: usize) -> anyhow::Result<Vec<Vec<u8>>> {
    let client = reqwest::Client::new();
    futures::stream::iter(0..n)
        .map(|i| {
            let client = client.clone();
            async move {
                let url = format!("{base}/internal.forms/{}", form_id(i));
                let r = client
                    .get(&url)
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await
                    .with_context(|| format!("GET {url}"))?;
                if !r.status().is_success() {
                    bail!("GET {url}: {}", r.status());
                }
                let body = r.bytes().await.with_context(|| format!("GET {url}"))?;
                // Compact JSON, as it would sit inside an enriched record.
                let v: serde_json::Value = serde_json::from_slice(&body)
                    .with_context(|| format!("GET {url}: not JSON"))?;
                Ok(serde_json::to_vec(&v)?)
            }
        })
        .buffered(32)
        .try_collect()
        .await
}

/// Our own forms-api process (other N, other ports); stopped on drop.
#[derive(Debug)]
pub(crate) struct OwnApi {
    proc: Option<Monitored>,
    /// `http://127.0.0.1:PORT`.
    pub(crate) base: String,
}

impl OwnApi {
    /// Starts `bin --port port --admin-port port+1 --generate n --seed seed` and waits for
    /// `/health`.
    pub(crate) async fn start(
        bin: &Path,
        port: u16,
        n: usize,
        seed: u64,
        log: &Path,
    ) -> anyhow::Result<Self> {
        let mut cmd = Command::new(bin);
        cmd.args([
            "--port",
            &port.to_string(),
            "--admin-port",
            &(port + 1).to_string(),
        ])
        .args(["--generate", &n.to_string(), "--seed", &seed.to_string()]);
        let proc = monitor::spawn("forms-api", cmd, log, Duration::from_secs(24 * 3600))?;
        let base = format!("http://127.0.0.1:{port}");
        if !monitor::wait_http_ok(&format!("{base}/health"), Duration::from_secs(20)).await {
            proc.stop();
            let r = proc.join();
            bail!(
                "our forms-api on port {port} did not answer /health (exit {:?}, log {})",
                r.exit_code,
                r.log
            );
        }
        Ok(Self {
            proc: Some(proc),
            base,
        })
    }
}

impl Drop for OwnApi {
    fn drop(&mut self) {
        if let Some(p) = self.proc.take() {
            p.stop();
            let _ = p.join();
        }
    }
}

/// Result of a load run.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub(crate) struct LoadReport {
    /// Requests in flight.
    pub(crate) concurrency: usize,
    /// Measured seconds.
    pub(crate) seconds: f64,
    /// 200 answers.
    pub(crate) ok: u64,
    /// Errors and non-200 answers.
    pub(crate) errors: u64,
    /// ok / seconds.
    pub(crate) rps: f64,
    /// Latency percentiles, milliseconds.
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    /// How ids were picked.
    pub(crate) mode: String,
}

/// How the load generator picks ids.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Pick {
    /// Each id of `0..n` once, in order (stops when all are fetched).
    SweepOnce,
    /// Cycles over `0..n` until the duration is over.
    Cycle,
}

/// `concurrency` keep-alive loops of `GET /internal.forms/{id}` against `base`.
pub(crate) async fn load(
    base: &str,
    n: usize,
    concurrency: usize,
    duration: Duration,
    pick: Pick,
) -> LoadReport {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .tcp_nodelay(true)
        .build()
        .expect("reqwest client");
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, next, base) = (client.clone(), next.clone(), base.to_owned());
            tokio::spawn(async move {
                let (mut ok, mut errors, mut lat) = (0u64, 0u64, Vec::with_capacity(4096));
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let idx = match pick {
                        Pick::SweepOnce if i >= n => break,
                        Pick::SweepOnce => i,
                        Pick::Cycle if start.elapsed() >= duration => break,
                        Pick::Cycle => i % n,
                    };
                    let t = Instant::now();
                    let url = format!("{base}/internal.forms/{}", form_id(idx));
                    match client
                        .get(&url)
                        .timeout(Duration::from_secs(10))
                        .send()
                        .await
                    {
                        Ok(r) if r.status().is_success() => match r.bytes().await {
                            Ok(_) => ok += 1,
                            Err(_) => errors += 1,
                        },
                        _ => errors += 1,
                    }
                    lat.push(t.elapsed().as_secs_f64() * 1e3);
                }
                (ok, errors, lat)
            })
        })
        .collect();
    let (mut ok, mut errors, mut lat) = (0u64, 0u64, Vec::new());
    for t in tasks {
        if let Ok((o, e, l)) = t.await {
            ok += o;
            errors += e;
            lat.extend(l);
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(0.0)
    };
    LoadReport {
        concurrency,
        seconds,
        ok,
        errors,
        rps: ok as f64 / seconds.max(1e-9),
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
        mode: format!("{pick:?}"),
    }
}

//! Logging init, the Prometheus `/metrics` + `/health` endpoint, and the periodic progress line.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::Deserialize;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tracing::info;
use tracing_subscriber::EnvFilter;

use crate::shutdown::Shutdown;

/// Default progress-line interval.
pub const DEFAULT_PROGRESS_INTERVAL: Duration = Duration::from_secs(5);

/// Latency buckets (seconds) for every `*_seconds` histogram: 1 ms … 30 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Log output format (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, fields flattened.
    Json,
}

/// Installs the global tracing subscriber. The filter comes from `RUST_LOG`, default `info`
/// (noisy dependencies at `warn`).
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,rdkafka=warn,hyper=warn,reqwest=warn,h2=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// The `metrics:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address of the `/metrics` and `/health` endpoint, e.g. `127.0.0.1:9464` (port 0: any).
    pub address: SocketAddr,
    /// How often the progress line is logged.
    #[serde(default = "default_progress", with = "crate::duration")]
    pub progress_interval: Duration,
}

fn default_progress() -> Duration {
    DEFAULT_PROGRESS_INTERVAL
}

/// Installs the global `metrics` recorder (Prometheus format, no listener of its own).
pub fn install_metrics() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)?
        .install_recorder()?;
    Ok(handle)
}

/// Health as `/health` reports it: 200 once ready and while no problem is set, else 503.
#[derive(Debug, Clone, Default)]
pub struct Health(Arc<HealthInner>);

#[derive(Debug, Default)]
struct HealthInner {
    ready: AtomicBool,
    problem: Mutex<Option<String>>,
}

impl Health {
    /// Marks the connector as started (connected, assigned, serving).
    pub fn set_ready(&self, ready: bool) {
        self.0.ready.store(ready, Ordering::Relaxed);
    }

    /// Sets or clears a current problem (e.g. "forms API unreachable").
    pub fn set_problem(&self, problem: Option<String>) {
        *self.0.problem.lock().expect("health lock") = problem;
    }

    /// `(healthy, body)`.
    pub fn report(&self) -> (bool, String) {
        let ready = self.0.ready.load(Ordering::Relaxed);
        let problem = self.0.problem.lock().expect("health lock").clone();
        let status = match (ready, &problem) {
            (false, _) => "starting",
            (true, None) => "ok",
            (true, Some(_)) => "degraded",
        };
        let body = serde_json::json!({ "status": status, "problem": problem }).to_string();
        (ready && problem.is_none(), body)
    }
}

/// The running HTTP endpoint.
#[derive(Debug)]
pub struct HttpServer {
    /// The address actually bound.
    pub local_addr: SocketAddr,
    /// The server task.
    pub task: JoinHandle<()>,
}

#[derive(Clone)]
struct AppState {
    handle: PrometheusHandle,
    health: Health,
}

/// Binds `addr` and serves `/metrics` and `/health` until `shutdown` fires.
pub async fn serve_http(
    addr: SocketAddr,
    handle: PrometheusHandle,
    health: Health,
    shutdown: Shutdown,
) -> std::io::Result<HttpServer> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local_addr = listener.local_addr()?;
    let upkeep = handle.clone();
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/health", get(health_handler))
        .with_state(AppState { handle, health });
    let task = tokio::spawn(async move {
        let up = tokio::spawn(async move {
            let mut t = tokio::time::interval(Duration::from_secs(5));
            t.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                t.tick().await;
                upkeep.run_upkeep();
            }
        });
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.wait().await })
            .await;
        up.abort();
    });
    info!(%local_addr, "Serving /metrics and /health.");
    Ok(HttpServer { local_addr, task })
}

async fn metrics_handler(State(s): State<AppState>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4")],
        s.handle.render(),
    )
}

async fn health_handler(State(s): State<AppState>) -> impl IntoResponse {
    let (ok, body) = s.health.report();
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, [("content-type", "application/json")], body)
}

/// Spawns a task that logs one progress line every `every` until `shutdown`. `line` gets the
/// time since its previous call (to turn counters into rates) and returns the message. Ticks
/// missed while the process was stopped (SIGSTOP, a stalled host) are not caught up: one line
/// follows the pause, covering all of it, instead of a burst of `0/s` lines.
pub fn spawn_progress<F>(every: Duration, shutdown: Shutdown, mut line: F) -> JoinHandle<()>
where
    F: FnMut(Duration) -> String + Send + 'static,
{
    tokio::spawn(async move {
        let mut last = Instant::now();
        let mut t = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        t.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = t.tick() => {}
                _ = shutdown.wait() => break,
            }
            let now = Instant::now();
            let msg = line(now - last);
            last = now;
            info!(target: "progress", "{msg}");
        }
    })
}

/// Counts something and reports its rate between two reads (for progress lines).
#[derive(Debug, Default)]
pub struct RateCounter {
    total: std::sync::atomic::AtomicU64,
    last: std::sync::atomic::AtomicU64,
}

impl RateCounter {
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.total.fetch_add(n, Ordering::Relaxed);
    }

    /// The running total.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// `(total, per second since the previous call)` given the time elapsed.
    pub fn rate(&self, elapsed: Duration) -> (u64, f64) {
        let total = self.total();
        let prev = self.last.swap(total, Ordering::Relaxed);
        let secs = elapsed.as_secs_f64().max(1e-9);
        (total, (total - prev) as f64 / secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_states() {
        let h = Health::default();
        assert!(!h.report().0);
        h.set_ready(true);
        assert_eq!(
            h.report(),
            (true, r#"{"status":"ok","problem":null}"#.into())
        );
        h.set_problem(Some("api down".into()));
        assert!(!h.report().0);
    }

    #[test]
    fn rate_counter() {
        let c = RateCounter::default();
        c.add(10);
        assert_eq!(c.rate(Duration::from_secs(2)), (10, 5.0));
        c.add(4);
        assert_eq!(c.rate(Duration::from_secs(1)), (14, 4.0));
    }

    /// A runtime blocked for ten intervals (as under SIGSTOP) then gets one progress line, not
    /// ten: `tokio::time::interval`'s default would fire every missed tick at once.
    #[test]
    fn progress_after_a_pause_is_one_line_not_a_burst() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let gaps = Arc::new(Mutex::new(Vec::new()));
        let every = Duration::from_millis(200);
        rt.block_on(async {
            let shutdown = Shutdown::manual();
            let (c, g) = (calls.clone(), gaps.clone());
            let task = spawn_progress(every, shutdown.clone(), move |gap| {
                c.fetch_add(1, Ordering::SeqCst);
                g.lock().unwrap().push(gap);
                String::new()
            });
            tokio::task::yield_now().await;
            // Blocks the only runtime thread: no tick can run for ten intervals.
            std::thread::sleep(every * 10);
            tokio::time::sleep(Duration::from_millis(50)).await;
            shutdown.trigger();
            task.await.unwrap();
        });
        let n = calls.load(Ordering::SeqCst);
        assert!((1..=2).contains(&n), "{n} progress lines after one pause");
        let first = gaps.lock().unwrap()[0];
        assert!(
            first >= every * 10,
            "the line after the pause covers it: {first:?}"
        );
    }
}

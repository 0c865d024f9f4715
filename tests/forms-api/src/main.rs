//! The forms API test server (see `docs/internals.md`, "Forms API test server").
//!
//! - API port: `GET /internal.forms/{id}` (fixture files from `--forms-dir`, then generated forms
//!   `form-000000` … when `--generate N`, Typeform-shaped forms `tf-000000` … when
//!   `--typeform N`), `GET /health`. Every answer carries hyper's real `Date`.
//! - Admin port: `GET/PUT /faults`, `GET /stats`, `POST /reset`, `GET /health`.
//!
//! Answers are served from memory: fixture files are read once at start, a generated form is
//! serialized on its first request and kept (`OnceLock` per id), so serving is a lookup and a
//! reference-counted clone of the bytes.

mod faults;
mod generator;
mod typeform;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{Context, bail};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use clap::Parser;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::faults::{Decision, Faults, Outage, Stats};

/// Command line of `forms-api`.
#[derive(Debug, Parser)]
#[command(name = "forms-api", about = "The forms API test server of form-etl")]
struct Cli {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: std::net::IpAddr,
    /// Port of the API (`/internal.forms/{id}`, `/health`).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Port of the admin API (`/faults`, `/stats`, `/reset`).
    #[arg(long, default_value_t = 8001)]
    admin_port: u16,
    /// Directory of fixture forms, one `{id}.json` file each, served verbatim.
    #[arg(long)]
    forms_dir: Option<PathBuf>,
    /// Number of generated forms (`form-000000` … `form-{N-1:06}`).
    #[arg(long, default_value_t = 0)]
    generate: u64,
    /// Number of generated Typeform-shaped forms (`tf-000000` … `tf-{N-1:06}`), beside the
    /// `--generate` ones: the shape of Typeform's "retrieve form" answer, attributes outside the
    /// column catalogue included.
    #[arg(long, default_value_t = 0)]
    typeform: u64,
    /// Seed of the generator: the same `(generate, seed)` always gives byte-identical answers.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

/// How long a "hanging" request waits before the server gives up on it (the client is expected
/// to time out long before).
const HANG_FOR: Duration = Duration::from_secs(3600);

#[derive(Debug)]
struct Forms {
    fixtures: HashMap<String, Bytes>,
    generated: Vec<OnceLock<Bytes>>,
    typeform: Vec<OnceLock<Bytes>>,
    seed: u64,
}

impl Forms {
    fn get(&self, id: &str) -> Option<Bytes> {
        if let Some(b) = self.fixtures.get(id) {
            return Some(b.clone());
        }
        if let Some(index) = typeform::parse_form_id(id) {
            let slot = self.typeform.get(usize::try_from(index).ok()?)?;
            return Some(
                slot.get_or_init(|| Bytes::from(typeform::generate_form_json(self.seed, index)))
                    .clone(),
            );
        }
        let index = generator::parse_form_id(id)?;
        let slot = self.generated.get(usize::try_from(index).ok()?)?;
        Some(
            slot.get_or_init(|| Bytes::from(generator::generate_form_json(self.seed, index)))
                .clone(),
        )
    }
}

#[derive(Debug, Clone)]
struct AppState {
    forms: Arc<Forms>,
    faults: Arc<watch::Sender<Faults>>,
    stats: Arc<Stats>,
}

fn load_fixtures(dir: &Path) -> anyhow::Result<HashMap<String, Bytes>> {
    let mut out = HashMap::new();
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("reading --forms-dir {}", dir.display()))?;
    for entry in entries {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let Some(id) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_slice::<serde_json::Value>(&bytes)
            .with_context(|| format!("{} is not valid JSON", path.display()))?;
        out.insert(id.to_owned(), Bytes::from(bytes));
    }
    Ok(out)
}

fn json_response(status: StatusCode, body: Bytes) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn error_response(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({ "error": message }).to_string();
    let mut resp = json_response(status, Bytes::from(body));
    if matches!(
        status,
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
    ) {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    }
    resp
}

async fn get_form(State(state): State<AppState>, UrlPath(id): UrlPath<String>) -> Response {
    let faults = *state.faults.borrow();
    let status = match faults.decide() {
        Decision::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Decision::Hang => {
            state.stats.record(&id, None);
            tokio::time::sleep(HANG_FOR).await;
            return error_response(StatusCode::GATEWAY_TIMEOUT, "hung request gave up");
        }
        Decision::Answer { delay, status } => {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            status
        }
    };
    let resp = if status != StatusCode::OK {
        error_response(status, "injected fault")
    } else if let Some(resp) = faults::special_answer(&faults, &id) {
        resp
    } else if let Some(body) = state.forms.get(&id) {
        json_response(StatusCode::OK, body)
    } else {
        error_response(StatusCode::NOT_FOUND, "form not found")
    };
    state.stats.record(&id, Some(resp.status()));
    resp
}

async fn health(State(state): State<AppState>) -> Response {
    if state.faults.borrow().outage == Outage::Unavailable {
        return error_response(StatusCode::SERVICE_UNAVAILABLE, "outage: unavailable");
    }
    json_response(StatusCode::OK, Bytes::from_static(b"{\"status\":\"ok\"}"))
}

async fn get_faults(State(state): State<AppState>) -> Response {
    axum::Json(*state.faults.borrow()).into_response()
}

async fn put_faults(State(state): State<AppState>, body: Bytes) -> Response {
    let faults: Faults = match serde_json::from_slice(&body) {
        Ok(f) => f,
        Err(e) => return error_response(StatusCode::BAD_REQUEST, &format!("invalid faults: {e}")),
    };
    if let Err(e) = faults.validate() {
        return error_response(StatusCode::BAD_REQUEST, &e);
    }
    warn!(?faults, "Faults changed.");
    state.faults.send_replace(faults);
    axum::Json(faults).into_response()
}

async fn get_stats(State(state): State<AppState>) -> Response {
    axum::Json(state.stats.snapshot()).into_response()
}

async fn reset(State(state): State<AppState>) -> Response {
    state.faults.send_replace(Faults::default());
    state.stats.clear();
    info!("Faults and counters reset.");
    axum::Json(Faults::default()).into_response()
}

/// Serves the API port, following the `outage` fault: while it is `refuse` the port is closed and
/// every open connection is dropped; when it leaves `refuse` the port is bound again.
async fn serve_api(
    mut listener: Option<TcpListener>,
    addr: SocketAddr,
    app: Router,
    state: AppState,
) {
    let mut faults = state.faults.subscribe();
    loop {
        let listener_now = match listener.take() {
            Some(l) => l,
            None => {
                let _ = faults.wait_for(|f| f.outage != Outage::Refuse).await;
                match bind_with_retry(addr).await {
                    Ok(l) => l,
                    Err(e) => {
                        warn!(%addr, error = %e, "Cannot listen again; retrying.");
                        continue;
                    }
                }
            }
        };
        info!(%addr, "API listening.");
        loop {
            tokio::select! {
                accepted = listener_now.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    let _ = stream.set_nodelay(true);
                    let service = hyper_util::service::TowerToHyperService::new(app.clone());
                    let mut conn_faults = state.faults.subscribe();
                    tokio::spawn(async move {
                        let conn = hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                        tokio::select! {
                            _ = conn => {}
                            // Dropping the connection closes the socket, as a crashed server would.
                            _ = conn_faults.wait_for(|f| f.outage == Outage::Refuse) => {}
                        }
                    });
                }
                _ = faults.wait_for(|f| f.outage == Outage::Refuse) => break,
            }
        }
        drop(listener_now);
        warn!(%addr, "Outage `refuse`: API port closed.");
    }
}

async fn bind_with_retry(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let mut attempt = 0;
    loop {
        match TcpListener::bind(addr).await {
            Ok(l) => return Ok(l),
            Err(e) if attempt >= 50 => return Err(e),
            Err(_) => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();

    let fixtures = match &cli.forms_dir {
        Some(dir) => load_fixtures(dir)?,
        None => HashMap::new(),
    };
    let Ok(generate) = usize::try_from(cli.generate) else {
        bail!("--generate {} is too large", cli.generate);
    };
    let Ok(typeform) = usize::try_from(cli.typeform) else {
        bail!("--typeform {} is too large", cli.typeform);
    };
    let forms = Forms {
        fixtures,
        generated: (0..generate).map(|_| OnceLock::new()).collect(),
        typeform: (0..typeform).map(|_| OnceLock::new()).collect(),
        seed: cli.seed,
    };
    info!(
        fixtures = forms.fixtures.len(),
        generated = generate,
        typeform,
        seed = cli.seed,
        "Forms loaded."
    );
    let state = AppState {
        forms: Arc::new(forms),
        faults: Arc::new(watch::Sender::new(Faults::default())),
        stats: Arc::new(Stats::default()),
    };

    let api = Router::new()
        .route("/internal.forms/{id}", get(get_form))
        .route("/health", get(health))
        .with_state(state.clone());
    let admin = Router::new()
        .route("/faults", get(get_faults).put(put_faults))
        .route("/stats", get(get_stats))
        .route("/reset", post(reset))
        .route("/health", get(|| async { "ok" }))
        .with_state(state.clone());

    let api_addr = SocketAddr::new(cli.host, cli.port);
    let admin_addr = SocketAddr::new(cli.host, cli.admin_port);
    let api_listener = TcpListener::bind(api_addr)
        .await
        .with_context(|| format!("listening on {api_addr}"))?;
    let admin_listener = TcpListener::bind(admin_addr)
        .await
        .with_context(|| format!("listening on {admin_addr}"))?;
    info!(%admin_addr, "Admin listening.");

    let api_task = tokio::spawn(serve_api(Some(api_listener), api_addr, api, state));
    tokio::select! {
        r = axum::serve(admin_listener, admin) => r.context("admin server")?,
        r = api_task => r.context("API server task")?,
        _ = tokio::signal::ctrl_c() => info!("Interrupted."),
    }
    Ok(())
}

//! What every scenario shares: the private cluster, the binaries under test (copied into the
//! run directory, so a rebuild by someone else mid-run changes nothing), the SmartModule, the
//! secrets given to the connectors, and the forms catalogue the oracle expects rows from.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use form_etl_tests::private_cluster::{ClusterOptions, Ports, PrivateCluster};
use form_etl_tests::{http_client, seed_fixture_dir, workspace_root};
use sha2::{Digest as _, Sha256};
use tokio::sync::Mutex;

use crate::flow;

/// Forms the private API generates (`--generate`), as `make cluster-up` does.
pub(crate) const GENERATED_FORMS: u64 = 1000;
/// The generator seed of `make cluster-up`.
pub(crate) const FORMS_SEED: u64 = 42;
/// The bucket every scenario writes to (each under its own prefix).
pub(crate) const BUCKET: &str = "chaos";
/// The private S3 server's access key id (not a secret).
pub(crate) const S3_ACCESS_KEY: &str = "chaos";

/// The secret values given to the connectors; the oracle greps every log and `/health` answer
/// for them.
#[derive(Debug, Clone)]
pub(crate) struct Secrets {
    /// kafka-source's `enrich.token` (from its `--secrets` file).
    pub(crate) api_token: String,
    /// s3-sink's `s3.secret-access-key` (from its `--secrets` file; the private S3's key).
    pub(crate) s3_secret: String,
}

impl Secrets {
    fn fresh() -> Self {
        let hex = |n: usize| -> String {
            (0..n)
                .map(|_| char::from(b"0123456789abcdef"[rand::random_range(0..16usize)]))
                .collect()
        };
        Self {
            api_token: format!("chaos-token-{}", hex(24)),
            s3_secret: format!("chaos-s3-secret-{}", hex(24)),
        }
    }

    pub(crate) fn values(&self) -> [(&'static str, &str); 2] {
        [
            ("FORMS_API_TOKEN", self.api_token.as_str()),
            ("S3_SECRET_ACCESS_KEY", self.s3_secret.as_str()),
        ]
    }
}

/// The binaries under test, copied into the run directory.
#[derive(Debug, Clone)]
pub(crate) struct Bins {
    pub(crate) source: PathBuf,
    pub(crate) sink: PathBuf,
    pub(crate) forms_api: PathBuf,
    /// `form_flatten.wasm`.
    pub(crate) wasm: PathBuf,
    /// `name sha256` lines, for the report.
    pub(crate) digests: Vec<(String, String)>,
}

/// Shared by every scenario of one run.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub(crate) root: PathBuf,
    pub(crate) run_dir: PathBuf,
    pub(crate) bins: Bins,
    pub(crate) cluster: Mutex<PrivateCluster>,
    pub(crate) bootstrap: String,
    pub(crate) s3_endpoint: String,
    pub(crate) api: String,
    pub(crate) admin: String,
    pub(crate) s3: form_etl_tests::aws_sdk_s3::Client,
    pub(crate) secrets: Secrets,
    /// Field ids of every generated form.
    pub(crate) catalog: HashMap<String, Vec<String>>,
    /// The generated forms' ids.
    pub(crate) form_ids: Arc<Vec<String>>,
    pub(crate) seed: u64,
    /// The whole run must end by then.
    pub(crate) deadline: Instant,
    pub(crate) shipped_source: serde_yaml::Value,
    pub(crate) shipped_sink: serde_yaml::Value,
    pub(crate) shipped_sink_iceberg: serde_yaml::Value,
}

fn sha256_file(p: &Path) -> anyhow::Result<String> {
    let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
    Ok(hex::encode(Sha256::digest(&bytes)))
}

fn copy_bin(from: &Path, dir: &Path, what: &str) -> anyhow::Result<PathBuf> {
    if !from.is_file() {
        bail!("{} is missing: {what}", from.display());
    }
    let to = dir.join(from.file_name().context("a file name")?);
    std::fs::copy(from, &to).with_context(|| format!("copying {}", from.display()))?;
    Ok(to)
}

impl Ctx {
    /// Copies the binaries, starts the private cluster on `ports`, creates the bucket and
    /// reads the forms catalogue.
    /// The binaries come from `build_root`'s `target/` (default: this workspace's).
    pub(crate) async fn setup(
        run_dir: &Path,
        ports: Ports,
        seed: u64,
        budget: Duration,
        build_root: Option<&Path>,
    ) -> anyhow::Result<Self> {
        let started = Instant::now();
        let root = workspace_root();
        let build_root = build_root
            .map(Path::to_owned)
            .unwrap_or_else(|| root.clone());
        let bin_dir = run_dir.join("bin");
        std::fs::create_dir_all(&bin_dir)?;
        let build =
            "run `cargo build --release -p kafka-source -p s3-sink -p forms-api` (make chaos does)";
        let release = build_root.join("target/release");
        let source = copy_bin(&release.join("kafka-source"), &bin_dir, build)?;
        let sink = copy_bin(&release.join("s3-sink"), &bin_dir, build)?;
        let forms_api = copy_bin(&release.join("forms-api"), &bin_dir, build)?;
        let wasm = copy_bin(
            &build_root.join("target/wasm32-unknown-unknown/release/form_flatten.wasm"),
            &bin_dir,
            "run `make build-smartmodules`",
        )?;
        let mut digests = Vec::new();
        for p in [&source, &sink, &forms_api, &wasm] {
            let name = p
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            digests.push((name, sha256_file(p)?));
        }
        let bins = Bins {
            source,
            sink,
            forms_api,
            wasm,
            digests,
        };

        let forms_dir = run_dir.join("forms");
        std::fs::create_dir_all(&forms_dir)?;
        for entry in std::fs::read_dir(seed_fixture_dir().join("forms"))? {
            let entry = entry?;
            std::fs::copy(entry.path(), forms_dir.join(entry.file_name()))?;
        }
        flow::write_fixture_forms(&forms_dir)?;

        let secrets = Secrets::fresh();
        let opts = ClusterOptions {
            forms_dir,
            generate: GENERATED_FORMS,
            seed: FORMS_SEED,
            s3_access_key: S3_ACCESS_KEY.into(),
            s3_secret_key: secrets.s3_secret.clone(),
            forms_api_bin: Some(bins.forms_api.clone()),
        };
        let cluster = PrivateCluster::start(&run_dir.join("cluster"), ports, &opts)
            .await
            .context("starting the private cluster")?;
        let s3 = cluster.s3.client();
        cluster.s3.create_bucket(BUCKET).await?;
        let (bootstrap, s3_endpoint, api, admin) = (
            cluster.kafka.bootstrap(),
            cluster.s3.endpoint(),
            cluster.forms_api.api(),
            cluster.forms_api.admin(),
        );
        println!(
            "chaos: private cluster up in {:.1}s: kafka {bootstrap}, s3 {s3_endpoint}, forms API {api} (admin {admin}); state in {}",
            started.elapsed().as_secs_f64(),
            run_dir.join("cluster").display()
        );
        let (catalog, form_ids) = read_catalog(&api).await?;
        let read = |p: &str| -> anyhow::Result<serde_yaml::Value> {
            let path = root.join(p);
            serde_yaml::from_str(&std::fs::read_to_string(&path)?)
                .with_context(|| format!("parsing {}", path.display()))
        };
        Ok(Self {
            shipped_source: read("config/form-events-source.yaml")?,
            shipped_sink: read("config/form-s3-sink.yaml")?,
            shipped_sink_iceberg: read("config/form-s3-sink-iceberg.yaml")?,
            root,
            run_dir: run_dir.to_owned(),
            bins,
            cluster: Mutex::new(cluster),
            bootstrap,
            s3_endpoint,
            api,
            admin,
            s3,
            secrets,
            catalog,
            form_ids: Arc::new(form_ids),
            seed,
            deadline: started + budget,
        })
    }

    /// Time left in the run's budget.
    pub(crate) fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }
}

/// Every generated form's field ids, read from the private API (before any fault).
async fn read_catalog(api: &str) -> anyhow::Result<(HashMap<String, Vec<String>>, Vec<String>)> {
    use futures::StreamExt as _;
    let client = http_client();
    let ids: Vec<String> = (0..GENERATED_FORMS)
        .map(|i| format!("form-{i:06}"))
        .collect();
    let answers: Vec<anyhow::Result<(String, Vec<String>)>> = futures::stream::iter(ids.clone())
        .map(|id| {
            let client = client.clone();
            async move {
                let url = format!("{api}/internal.forms/{id}");
                let v: serde_json::Value = client
                    .get(&url)
                    .send()
                    .await?
                    .error_for_status()?
                    .json()
                    .await
                    .with_context(|| format!("GET {url}"))?;
                let fields = v["fields"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|f| f["id"].as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                Ok((id, fields))
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let mut catalog = HashMap::new();
    for a in answers {
        let (id, fields) = a?;
        catalog.insert(id, fields);
    }
    Ok((catalog, ids))
}

//! s3-sink against the real local cluster: exactly once across `kill -9`, an S3 outage, and
//! dead letters for rows that do not fit the schema.
//!
//! Needs `cargo build --release -p s3-sink` and `make cluster-up`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use form_etl_tests::sink_support::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;

const PARTITIONS: i32 = 3;

/// `(partition, key, value)` for `n` enriched records; returns them and the field-row count.
fn records(n: usize, tag: &str) -> (Vec<(i32, String, Vec<u8>)>, usize) {
    enriched_records(n, tag, PARTITIONS)
}

/// Rows of every object of the run, read with apache-avro (Rust) — and counted again with
/// avro-tools (Java) when its jar is installed.
struct Output {
    /// (table, form id, field id or "") per row.
    rows: Vec<(String, String, String)>,
    files: Vec<PathBuf>,
}

async fn read_output(setup: &SinkSetup) -> Result<Output> {
    let s3 = setup.s3().await;
    let dir = setup.dir.join("download");
    let _ = std::fs::remove_dir_all(&dir);
    let files = download_all(&s3, &setup.bucket, &setup.prefix, &dir).await?;
    let mut rows = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(&dir)?.to_string_lossy().into_owned();
        let table = rel.split('/').nth(1).context("table dir")?.to_owned();
        let bytes = std::fs::read(f)?;
        let reader =
            apache_avro::Reader::new(bytes.as_slice()).with_context(|| format!("reading {rel}"))?;
        let meta = reader.user_metadata().clone();
        assert_eq!(
            meta.get("form_etl.table").map(Vec::as_slice),
            Some(table.as_bytes()),
            "{rel}"
        );
        let first: i64 =
            String::from_utf8(meta["form_etl.source.first_offset"].clone())?.parse()?;
        assert!(
            rel.ends_with(&format!("+{first:020}.avro")),
            "{rel} named by its first offset {first}"
        );
        for v in reader {
            let v = apache_avro::from_value::<serde_json::Value>(&v?)?;
            let s = |k: &str| {
                v.get(k)
                    .and_then(|x| x.as_str())
                    .unwrap_or_default()
                    .to_owned()
            };
            rows.push(if table == "form" {
                (table.clone(), s("id"), String::new())
            } else {
                (table.clone(), s("form_id"), s("id"))
            });
        }
    }
    Ok(Output { rows, files })
}

fn check_exact(out: &Output, n: usize, fields: usize) {
    let form = out.rows.iter().filter(|r| r.0 == "form").count();
    let field = out.rows.iter().filter(|r| r.0 == "form_field").count();
    let dups = duplicates(out.rows.iter().cloned());
    assert!(
        dups.is_empty(),
        "duplicated rows: {} e.g. {:?}",
        dups.len(),
        &dups[..dups.len().min(5)]
    );
    assert_eq!(form, n, "form rows");
    assert_eq!(field, fields, "form_field rows");
    if let Some(total) = count_with_avro_tools(&out.files).expect("avro-tools reads every file") {
        assert_eq!(total as usize, n + fields, "avro-tools count");
    }
}

async fn topics(name: &str) -> Result<(String, String)> {
    let topic = unique(&format!("{name}-in"));
    let dlq = unique(&format!("{name}-dlq"));
    create_topic(&topic, PARTITIONS).await?;
    create_topic(&dlq, 1).await?;
    Ok((topic, dlq))
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_five_times_no_row_lost_or_duplicated() -> Result<()> {
    if !cluster_available("kill_9_five_times") {
        return Ok(());
    }
    let (topic, dlq) = topics("kill").await?;
    let n = 50_000;
    let (recs, fields) = records(n, "k");
    produce(&topic, &recs).await?;
    let setup = SinkSetup::new(
        "kill",
        &topic,
        &dlq,
        &s3_endpoint(),
        "output",
        "  max-records: 4000\n  max-age: 1s\n  idle-flush: 1s\n  codec: zstd\n",
    )?;
    for round in 0..5 {
        let mut child = setup.spawn(&[])?;
        // A random moment: between 0.5 and 4 s after start (start-up included).
        let ms = 500 + rand::random::<u64>() % 3500;
        tokio::time::sleep(Duration::from_millis(ms)).await;
        assert!(
            child.try_wait()?.is_none(),
            "the sink died on its own in round {round}:\n{}",
            setup.log()
        );
        child.kill()?; // SIGKILL
        child.wait()?;
        // Only a diagnostic: a kill between the offsets sent and the commit leaves them
        // pending until the next run fences the dead transaction, and a read_committed fetch
        // waits for that (the check is the final one, after the last run).
        match committed_once(&setup.group, &topic, PARTITIONS) {
            Ok(c) => eprintln!("round {round}: killed after {ms} ms; committed {c:?}"),
            Err(e) => {
                eprintln!("round {round}: killed after {ms} ms; committed offsets pending ({e})")
            }
        }
    }
    let mut child = setup.spawn(&[])?;
    let res = wait_committed(&setup, PARTITIONS, Duration::from_secs(240)).await;
    let status = terminate(&mut child, Duration::from_secs(60))?;
    res.with_context(|| setup.log())?;
    assert!(status.success(), "exit status {status}");
    let out = read_output(&setup).await?;
    check_exact(&out, n, fields);
    eprintln!("{} files, {} rows", out.files.len(), out.rows.len());
    Ok(())
}

/// A separate S3 server (never the shared one) that the test stops and restarts.
struct OwnS3 {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl OwnS3 {
    fn start(dir: &Path) -> Result<Self> {
        let mut s = Self {
            port: free_port(),
            dir: dir.to_owned(),
            child: None,
        };
        std::fs::create_dir_all(&s.dir)?;
        s.up()?;
        Ok(s)
    }

    fn up(&mut self) -> Result<()> {
        let bin = root().join(".cache/tools/bin/s3s-fs");
        let child = Command::new(bin)
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &self.port.to_string(),
                "--access-key",
                "admin",
                "--secret-key",
                "password",
            ])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting s3s-fs")?;
        self.child = Some(child);
        Ok(())
    }

    fn down(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill()?;
            c.wait()?;
        }
        Ok(())
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for OwnS3 {
    fn drop(&mut self) {
        let _ = self.down();
    }
}

async fn wait_port(port: u16) -> Result<()> {
    wait_for(
        "the S3 server to listen",
        Duration::from_secs(30),
        || async move {
            Ok(std::net::TcpStream::connect(("127.0.0.1", port))
                .is_ok()
                .then_some(()))
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_down_for_20s_stalls_then_resumes_exactly() -> Result<()> {
    if !cluster_available("s3_down_for_20s") {
        return Ok(());
    }
    let (topic, dlq) = topics("s3down").await?;
    let base = root().join("target/it").join(unique("s3down-data"));
    let mut s3 = OwnS3::start(&base)?;
    wait_port(s3.port).await?;
    let client = s3_client(&s3.endpoint()).await;
    ensure_bucket(&client, "output").await?;
    let setup = SinkSetup::new(
        "s3down",
        &topic,
        &dlq,
        &s3.endpoint(),
        "output",
        "  max-records: 2000\n  idle-flush: 1s\n",
    )?;
    let mut child = setup.spawn(&[])?;

    let n = 20_000;
    let (recs, fields) = records(n, "s");
    let (first, second) = recs.split_at(n / 2);
    produce(&topic, first).await?;
    // Some files are out, then S3 goes away.
    wait_for("the first files", Duration::from_secs(60), || {
        let (c, b, p) = (client.clone(), setup.bucket.clone(), setup.prefix.clone());
        async move { Ok((list(&c, &b, &p).await?.len() >= 2).then_some(())) }
    })
    .await?;
    s3.down()?;
    let stopped = std::time::Instant::now();
    produce(&topic, second).await?;
    // While S3 is down the sink keeps running, retries, and commits nothing past what is in S3.
    let committed_during = committed(&setup.group, &topic, PARTITIONS)?;
    wait_for(
        "upload errors to be counted",
        Duration::from_secs(20),
        || {
            let s = &setup;
            async move {
                Ok(s.metrics()
                    .await
                    .filter(|m| metric_value(m, "component_errors_total{error_type=\"s3_") > 0.0))
            }
        },
    )
    .await?;
    let remaining = Duration::from_secs(20).saturating_sub(stopped.elapsed());
    tokio::time::sleep(remaining).await; // the outage lasts 20 s: this is the scenario, not a wait
    assert!(
        child.try_wait()?.is_none(),
        "the sink must stall, not exit:\n{}",
        setup.log()
    );
    let end = end_offsets(&topic, PARTITIONS)?;
    let now = committed(&setup.group, &topic, PARTITIONS)?;
    assert_ne!(now, end, "nothing can be fully committed while S3 is down");
    assert!(now.iter().zip(&committed_during).all(|(a, b)| a >= b));
    s3.up()?;
    wait_port(s3.port).await?;
    let res = wait_committed(&setup, PARTITIONS, Duration::from_secs(120)).await;
    let status = terminate(&mut child, Duration::from_secs(60))?;
    res.with_context(|| setup.log())?;
    assert!(status.success(), "exit status {status}");
    let out = read_output(&setup).await?;
    check_exact(&out, n, fields);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn in_strict_mode_a_schema_mismatch_goes_to_the_dlq_with_the_original_record() -> Result<()> {
    if !cluster_available("schema_mismatch") {
        return Ok(());
    }
    let (topic, dlq) = topics("dlq").await?;
    let (mut recs, fields) = records(30, "d");
    // Record 7: the API grew a new attribute the schema does not have.
    let mut bad: serde_json::Value = serde_json::from_slice(&recs[7].2)?;
    bad["form"]["settings"]["brand_new_setting"] = serde_json::json!("surprise");
    let bad_value = bad.to_string().into_bytes();
    recs[7].2 = bad_value.clone();
    let bad_fields = 8; // 1 + 7 % 9
    produce(&topic, &recs).await?;
    let setup = SinkSetup::new(
        "dlq",
        &topic,
        &dlq,
        &s3_endpoint(),
        "output",
        "  idle-flush: 1s\n",
    )?;
    // The fixed schema of `config/*.avsc` (the default, `evolve`, adds the column instead:
    // tests/schema_evolution.rs).
    let mut text = std::fs::read_to_string(&setup.config)?;
    text.push_str("schema: {mode: strict}\n");
    std::fs::write(&setup.config, text)?;
    let mut child = setup.spawn(&["--max-records", "30"])?;
    let status = tokio::task::spawn_blocking(move || child.wait()).await??;
    assert!(status.success(), "exit status {status}:\n{}", setup.log());
    assert_eq!(
        committed(&setup.group, &topic, PARTITIONS)?,
        end_offsets(&topic, PARTITIONS)?
    );

    let c: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", kafka_addr())
        .set("group.id", unique("dlq-reader"))
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .create()?;
    c.subscribe(&[&dlq])?;
    let mut got = Vec::new();
    let end = std::time::Instant::now() + Duration::from_secs(30);
    while got.is_empty() && std::time::Instant::now() < end {
        if let Some(m) = c.poll(Duration::from_millis(500)) {
            got.push(m?.detach());
        }
    }
    assert_eq!(got.len(), 1, "one dead letter");
    let m = &got[0];
    assert_eq!(
        m.payload(),
        Some(bad_value.as_slice()),
        "the original value, untouched"
    );
    assert_eq!(m.key(), Some(recs[7].1.as_bytes()));
    let h: BTreeMap<String, String> = {
        use rdkafka::message::Headers;
        let hs = m.headers().context("headers")?;
        hs.iter()
            .map(|h| {
                (
                    h.key.to_owned(),
                    String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                )
            })
            .collect()
    };
    assert_eq!(h["dlq.reason"], "schema_mismatch");
    assert!(
        h["dlq.detail"].contains("settings_brand_new_setting"),
        "{}",
        h["dlq.detail"]
    );
    assert_eq!(h["dlq.source.topic"], topic);
    assert_eq!(h["dlq.source.partition"], (7 % PARTITIONS).to_string());
    assert_eq!(h["dlq.source.offset"], (7 / PARTITIONS).to_string());
    assert_eq!(h["dlq.connector"], "dlq");

    let out = read_output(&setup).await?;
    let forms: BTreeSet<&str> = out
        .rows
        .iter()
        .filter(|r| r.0 == "form")
        .map(|r| r.1.as_str())
        .collect();
    assert_eq!(forms.len(), 29);
    assert!(!forms.contains(recs[7].1.as_str()));
    check_exact(&out, 29, fields - bad_fields);
    Ok(())
}

/// The built `form_flatten.wasm` (`make build-smartmodules`).
fn flatten_wasm() -> Result<PathBuf> {
    let p = root().join("target/wasm32-unknown-unknown/release/form_flatten.wasm");
    anyhow::ensure!(
        p.is_file(),
        "{} is missing: run `make build-smartmodules`",
        p.display()
    );
    Ok(p)
}

/// Builds form-flatten with `feature` (form-transforms' test support) and copies the module
/// to `dest`.
fn build_variant(feature: &str, dest: &Path) -> Result<()> {
    form_transforms::variants::build_flatten_variant(&root(), feature, dest)
        .map_err(anyhow::Error::msg)
}

/// Replaces `dest` in one step (a rename), as a deployment would.
fn replace_file(dest: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = dest.with_extension("wasm.tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, dest)?;
    Ok(())
}

fn sha256_hex(bytes: &[u8]) -> String {
    let out = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().expect("stdin").write_all(bytes)?;
            c.wait_with_output()
        })
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// One row of the swap test: table, form id, field id, the form title, the file's
/// `form_etl.transforms` digests.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct TitledRow {
    table: String,
    form: String,
    field: String,
    title: String,
    digests: Vec<String>,
}

async fn read_titled(setup: &SinkSetup) -> Result<Vec<TitledRow>> {
    let s3 = setup.s3().await;
    let dir = setup.dir.join("download");
    let _ = std::fs::remove_dir_all(&dir);
    let files = download_all(&s3, &setup.bucket, &setup.prefix, &dir).await?;
    let mut rows = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(&dir)?.to_string_lossy().into_owned();
        let table = rel.split('/').nth(1).context("table dir")?.to_owned();
        let bytes = std::fs::read(f)?;
        let reader = apache_avro::Reader::new(bytes.as_slice())?;
        let meta: serde_json::Value = serde_json::from_slice(
            reader
                .user_metadata()
                .get("form_etl.transforms")
                .with_context(|| format!("{rel}: no form_etl.transforms"))?,
        )?;
        let digests: Vec<String> = meta
            .as_array()
            .context("transforms metadata is a list")?
            .iter()
            .map(|m| {
                format!(
                    "{}@{}",
                    m["uses"].as_str().unwrap_or(""),
                    m["sha256"].as_str().unwrap_or("")
                )
            })
            .collect();
        for v in reader {
            let v = apache_avro::from_value::<serde_json::Value>(&v?)?;
            let s = |k: &str| {
                v.get(k)
                    .and_then(|x| x.as_str())
                    .unwrap_or_default()
                    .to_owned()
            };
            rows.push(if table == "form" {
                TitledRow {
                    table: table.clone(),
                    form: s("id"),
                    field: String::new(),
                    title: s("title"),
                    digests: digests.clone(),
                }
            } else {
                TitledRow {
                    table: table.clone(),
                    form: s("form_id"),
                    field: s("id"),
                    title: s("form_title"),
                    digests: digests.clone(),
                }
            });
        }
    }
    Ok(rows)
}

/// A sink gauge or counter, once `/metrics` answers.
async fn wait_metric(
    setup: &SinkSetup,
    name: &str,
    at_least: f64,
    deadline: Duration,
) -> Result<f64> {
    wait_for(&format!("{name} >= {at_least}"), deadline, || async move {
        Ok(setup
            .metrics()
            .await
            .map(|m| metric_value(&m, name))
            .filter(|v| *v >= at_least))
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn smartmodule_hot_swap_under_a_running_sink() -> Result<()> {
    if !cluster_available("smartmodule_hot_swap") {
        return Ok(());
    }
    let (topic, dlq) = topics("swap").await?;
    let setup = SinkSetup::new(
        "swap",
        &topic,
        &dlq,
        &s3_endpoint(),
        "output",
        "  idle-flush: 1s\n",
    )?;
    // The sink finds `form-flatten` in this directory (FORM_ETL_SMARTMODULE_DIR).
    let modules = setup.dir.join("modules");
    std::fs::create_dir_all(&modules)?;
    let watched = modules.join("form_flatten.wasm");
    let base = std::fs::read(flatten_wasm()?)?;
    std::fs::write(&watched, &base)?;
    let upper_path = setup.dir.join("upper.wasm");
    build_variant("upper-title", &upper_path)?;
    let upper = std::fs::read(&upper_path)?;
    let (base_sha, upper_sha) = (sha256_hex(&base), sha256_hex(&upper));
    assert_ne!(base_sha, upper_sha);

    let mut child = setup.spawn_with_env(&[], &[("FORM_ETL_SMARTMODULE_DIR", &modules)])?;
    let (first, first_fields) = records(60, "a");
    produce(&topic, &first).await?;
    wait_committed(&setup, PARTITIONS, Duration::from_secs(60))
        .await
        .with_context(|| setup.log())?;
    assert_eq!(
        wait_metric(
            &setup,
            "s3_sink_transform_generation",
            0.0,
            Duration::from_secs(10)
        )
        .await?,
        0.0
    );

    // The upper-title build replaces the module: the sink swaps it in, idle, within seconds.
    replace_file(&watched, &upper)?;
    wait_metric(
        &setup,
        "s3_sink_transform_generation",
        1.0,
        Duration::from_secs(30),
    )
    .await
    .with_context(|| setup.log())?;
    let (second, second_fields) = records(60, "b");
    produce(&topic, &second).await?;
    wait_committed(&setup, PARTITIONS, Duration::from_secs(60))
        .await
        .with_context(|| setup.log())?;

    // A broken module is refused; the upper-title one keeps running.
    replace_file(&watched, b"\0asm this is not a SmartModule")?;
    wait_metric(
        &setup,
        "s3_sink_transform_rejected_total",
        1.0,
        Duration::from_secs(30),
    )
    .await
    .with_context(|| setup.log())?;
    let (third, third_fields) = records(30, "c");
    produce(&topic, &third).await?;
    wait_committed(&setup, PARTITIONS, Duration::from_secs(60))
        .await
        .with_context(|| setup.log())?;
    assert!(
        child.try_wait()?.is_none(),
        "the sink must keep running after a broken module:\n{}",
        setup.log()
    );
    let status = terminate(&mut child, Duration::from_secs(60))?;
    assert!(status.success(), "exit status {status}");
    let log = setup.log();
    assert!(
        log.contains("SmartModule rejected; the old one keeps running."),
        "{log}"
    );

    let rows = read_titled(&setup).await?;
    let keys: Vec<(String, String, String)> = rows
        .iter()
        .map(|r| (r.table.clone(), r.form.clone(), r.field.clone()))
        .collect();
    let dups = duplicates(keys.iter().cloned());
    assert!(dups.is_empty(), "duplicated rows: {dups:?}");
    let n = first.len() + second.len() + third.len();
    let fields = first_fields + second_fields + third_fields;
    assert_eq!(rows.iter().filter(|r| r.table == "form").count(), n);
    assert_eq!(
        rows.iter().filter(|r| r.table == "form_field").count(),
        fields
    );
    let old = vec![format!("form-flatten@{base_sha}")];
    let new = vec![format!("form-flatten@{upper_sha}")];
    for r in &rows {
        let original = format!("Formulaire n°{}", r.form);
        if r.form.starts_with("a-") {
            assert_eq!(r.title, original, "{r:?}");
            assert_eq!(r.digests, old, "{r:?}");
        } else {
            assert!(
                r.form.starts_with("b-") || r.form.starts_with("c-"),
                "{r:?}"
            );
            assert_eq!(r.title, original.to_uppercase(), "{r:?}");
            assert_eq!(r.digests, new, "{r:?}");
        }
    }
    Ok(())
}

/// Not a test: throughput and peak RSS of the sink on `FORM_ETL_MEASURE_EVENTS` enriched records
/// (default 200,000; about 5 fields each), `--max-records` under `/usr/bin/time -v`.
/// `cargo test --release -p form-etl-tests --test sink -- --ignored measure --nocapture`
#[tokio::test(flavor = "multi_thread")]
#[ignore]
async fn measure() -> Result<()> {
    if !cluster_available("measure") {
        return Ok(());
    }
    let n: usize = std::env::var("FORM_ETL_MEASURE_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let codec = std::env::var("FORM_ETL_MEASURE_CODEC").unwrap_or_else(|_| "zstd".into());
    let (topic, dlq) = topics("measure").await?;
    let (recs, fields) = records(n, "m");
    produce(&topic, &recs).await?;
    let setup = SinkSetup::new(
        "measure",
        &topic,
        &dlq,
        &s3_endpoint(),
        "output",
        &format!("  codec: {codec}\n"),
    )?;
    let started = std::time::Instant::now();
    let out = Command::new("/usr/bin/time")
        .arg("-v")
        .arg(root().join("target/release/s3-sink"))
        .current_dir(root())
        .args(["--max-records", &n.to_string(), "--config"])
        .arg(&setup.config)
        .env("S3_ACCESS_KEY_ID", "admin")
        .env("S3_SECRET_ACCESS_KEY", "password")
        .env("RUST_LOG", "warn")
        .output()?;
    let secs = started.elapsed().as_secs_f64();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let rss = err
        .lines()
        .find(|l| l.contains("Maximum resident set size"))
        .unwrap_or_default()
        .trim()
        .to_owned();
    eprintln!(
        "MEASURE codec={codec} events={n} rows={} wall={secs:.1}s events/s={:.0} rows/s={:.0} {rss}",
        n + fields,
        n as f64 / secs,
        (n + fields) as f64 / secs
    );
    Ok(())
}

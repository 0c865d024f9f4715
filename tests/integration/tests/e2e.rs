//! Golden end to end: the seed event through kafka-source and s3-sink; the rows read back from
//! S3 with fastavro (not our reader) equal `tests/fixtures/seed/expected/*.jsonl`, the retrieved
//! timestamp within the run.
//!
//! Needs `cargo build --release -p kafka-source -p s3-sink` and `make cluster-up` (which serves
//! the seed forms on the forms API and installs fastavro in `.cache/venv`).

use std::time::Duration;

use anyhow::{Context, Result};
use chrono::{DateTime, NaiveDateTime, Utc};
use form_etl_tests::iceberg_support::{Catalog, namespace, read_tables, snapshot_offsets};
use form_etl_tests::sink_support::*;
use serde_json::{Map, Value};

fn expected(table: &str) -> Result<Vec<Map<String, Value>>> {
    let path = root().join(format!("tests/fixtures/seed/expected/{table}.jsonl"));
    let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| Ok(serde_json::from_str(l)?))
        .collect()
}

/// A timestamp column as the expected files write it (`YYYY-MM-DD HH:MM:SS`, UTC) or as our
/// fastavro script prints it (ISO 8601 with offset).
fn instant(v: &Value) -> Option<DateTime<Utc>> {
    let s = v.as_str()?;
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S")
        .ok()
        .map(|n| n.and_utc())
}

const RETRIEVED: [&str; 2] = ["retrieved_timestamp", "form_retrieved_timestamp"];
const HAPPENED: [&str; 2] = ["event_happened_at", "form_event_happened_at"];

fn compare(
    table: &str,
    got: &[Value],
    want: &[Map<String, Value>],
    started: DateTime<Utc>,
    ended: DateTime<Utc>,
) {
    assert_eq!(got.len(), want.len(), "{table}: row count");
    let mut got: Vec<Map<String, Value>> = got
        .iter()
        .map(|r| {
            r.as_object()
                .unwrap()
                .iter()
                .filter(|(k, v)| !k.starts_with("__") && !v.is_null())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .collect();
    got.sort_by_key(|r| {
        r.get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    });
    let mut want = want.to_vec();
    want.sort_by_key(|r| {
        r.get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    });
    for (g, w) in got.iter().zip(&want) {
        let gk: Vec<&String> = g.keys().collect();
        let mut gk = gk;
        gk.sort();
        let mut wk: Vec<&String> = w.keys().collect();
        wk.sort();
        assert_eq!(gk, wk, "{table}: columns of row {:?}", w.get("id"));
        for (k, wv) in w {
            let gv = &g[k];
            if RETRIEVED.contains(&k.as_str()) {
                let t = instant(gv).unwrap_or_else(|| panic!("{table}.{k}: {gv}"));
                // The API's Date header has second precision.
                assert!(
                    t >= started - chrono::Duration::seconds(1)
                        && t <= ended + chrono::Duration::seconds(1),
                    "{table}.{k} = {t} is not within the run ({started} .. {ended})"
                );
            } else if HAPPENED.contains(&k.as_str()) {
                assert_eq!(instant(gv), instant(wv), "{table}.{k}");
            } else {
                assert_eq!(gv, wv, "{table}.{k} of row {:?}", w.get("id"));
            }
        }
    }
}

/// The seed event through kafka-source and s3-sink (`output` appended to the sink's config):
/// the sink, the files it wrote (data files only), the topic, and when the run started and
/// ended.
async fn run_seed(
    output: impl FnOnce(&SinkSetup) -> String,
) -> Result<(
    SinkSetup,
    Vec<std::path::PathBuf>,
    String,
    DateTime<Utc>,
    DateTime<Utc>,
)> {
    let events = unique("e2e-events");
    let enriched = unique("e2e-enriched");
    let dlq = unique("e2e-dlq");
    for t in [&events, &enriched] {
        create_topic(t, 3).await?;
    }
    create_topic(&dlq, 1).await?;
    let sink = SinkSetup::new(
        "e2e",
        &enriched,
        &dlq,
        &s3_endpoint(),
        "output",
        // The default codec (zstd): the test venv has fastavro's optional `zstandard` module
        // (`tests/cluster/install.sh venv`).
        "  idle-flush: 1s\n",
    )?;
    let text = std::fs::read_to_string(&sink.config)?;
    std::fs::write(&sink.config, format!("{text}{}", output(&sink)))?;
    let source_cfg =
        shipped_source_config(&sink.dir, &events, &enriched, &dlq, &unique("e2e-source-g"))?;

    let seed = std::fs::read_to_string(root().join("tests/fixtures/seed/form.events.kv"))?;
    let (key, value) = seed.trim_end().split_once(':').context("key:value")?;
    let started = Utc::now();
    produce(&events, &[(0, key.to_owned(), value.as_bytes().to_vec())]).await?;

    let source_bin = root().join("target/release/kafka-source");
    anyhow::ensure!(
        source_bin.exists(),
        "{} is missing: cargo build --release -p kafka-source",
        source_bin.display()
    );
    let source_log = std::fs::File::create(sink.dir.join("source.log"))?;
    let mut source = std::process::Command::new(source_bin)
        .current_dir(root())
        .args(["--max-records", "1", "--config"])
        .arg(&source_cfg)
        .stderr(source_log)
        .spawn()?;
    let mut s = sink.spawn(&["--max-records", "1"])?;
    let (src_status, sink_status) = tokio::task::spawn_blocking(move || -> Result<_> {
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        let wait = |c: &mut std::process::Child| -> Result<std::process::ExitStatus> {
            loop {
                if let Some(st) = c.try_wait()? {
                    return Ok(st);
                }
                if std::time::Instant::now() > deadline {
                    let _ = c.kill();
                    anyhow::bail!("timed out waiting for a connector to finish");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        };
        Ok((wait(&mut source)?, wait(&mut s)?))
    })
    .await??;
    let ended = Utc::now();
    let source_log = std::fs::read_to_string(sink.dir.join("source.log")).unwrap_or_default();
    assert!(
        src_status.success(),
        "kafka-source: {src_status}\n{source_log}"
    );
    assert!(
        sink_status.success(),
        "s3-sink: {sink_status}\n{}",
        sink.log()
    );

    let s3 = sink.s3().await;
    let dir = sink.dir.join("download");
    let files = download_all(&s3, &sink.bucket, &sink.prefix, &dir).await?;
    Ok((sink, files, enriched, started, ended))
}

/// The object keys of the seed's run: one file per table, named by offset 0.
fn check_names(sink: &SinkSetup, files: &[std::path::PathBuf], enriched: &str, ext: &str) {
    let dir = sink.dir.join("download");
    let names: Vec<String> = files
        .iter()
        .map(|f| f.strip_prefix(&dir).unwrap().display().to_string())
        .collect();
    let first = format!("{enriched}+0+{:020}.{ext}", 0);
    assert_eq!(
        names,
        vec![
            format!("{}/form/event_date=2022-10-02/{first}", sink.prefix),
            format!("{}/form_field/event_date=2022-10-02/{first}", sink.prefix),
        ],
        "object keys"
    );
}

fn check_rows(rows: &[Value], started: DateTime<Utc>, ended: DateTime<Utc>) -> Result<()> {
    let by_table = |t: &str| -> Vec<Value> {
        rows.iter()
            .filter(|r| r["__file"].as_str().unwrap().contains(&format!("/{t}/")))
            .cloned()
            .collect()
    };
    compare(
        "form",
        &by_table("form"),
        &expected("form")?,
        started,
        ended,
    );
    compare(
        "form_field",
        &by_table("form_field"),
        &expected("form_field")?,
        started,
        ended,
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn seed_event_through_both_connectors_matches_expected_rows() -> Result<()> {
    if !cluster_available("golden e2e") {
        return Ok(());
    }
    let (sink, files, enriched, started, ended) = run_seed(|_| String::new()).await?;
    check_names(&sink, &files, &enriched, "avro");
    let rows = read_with_fastavro(&files)?;
    check_rows(&rows, started, ended)?;
    // Each file says where its rows come from.
    for r in &rows {
        assert_eq!(
            r["__meta"]["form_etl.source.topic"],
            Value::from(enriched.as_str())
        );
        assert_eq!(r["__meta"]["form_etl.source.first_offset"], "0");
    }
    Ok(())
}

/// `output: {type: files, format: parquet}`: the same rows, read by pyarrow and by DuckDB.
#[tokio::test(flavor = "multi_thread")]
async fn seed_event_as_parquet_matches_expected_rows_in_pyarrow_and_duckdb() -> Result<()> {
    if !cluster_available("golden e2e parquet") {
        return Ok(());
    }
    let (sink, files, enriched, started, ended) =
        run_seed(|_| "output: {type: files, format: parquet}\n".to_owned()).await?;
    check_names(&sink, &files, &enriched, "parquet");
    let rows = read_parquet_with_pyarrow(&files)?;
    check_rows(&rows, started, ended)?;
    for r in &rows {
        assert_eq!(
            r["__meta"]["form_etl.source.topic"],
            Value::from(enriched.as_str())
        );
    }
    let rows = read_parquet_with_duckdb(&files)?;
    check_rows(&rows, started, ended)?;
    Ok(())
}

/// `output: iceberg`: the seed through both connectors into Iceberg tables of `catalog`; both
/// tables read back by pyiceberg and by DuckDB's `iceberg_scan` equal the expected rows, and the
/// newest snapshot of each holds the topic's offsets.
async fn seed_through_iceberg(catalog: impl FnOnce(&SinkSetup) -> Catalog) -> Result<()> {
    let namespace = namespace();
    let mut cat = None;
    let (sink, _files, enriched, started, ended) = run_seed(|s| {
        let c = catalog(s);
        let out = c.output(&namespace, "  commit-interval: 1s\n");
        cat = Some(c);
        out
    })
    .await?;
    let cat = cat.expect("the catalog");
    let t = read_tables(&cat, &namespace, serde_json::json!({"rows": true}))?;
    for (table, reader) in [
        ("form", "rows"),
        ("form", "duckdb_rows"),
        ("form_field", "rows"),
        ("form_field", "duckdb_rows"),
    ] {
        let rows = t[table][reader].as_array().cloned().unwrap_or_default();
        eprintln!("{table} by {reader}: {} rows", rows.len());
        compare(table, &rows, &expected(table)?, started, ended);
    }
    for table in ["form", "form_field"] {
        let tt = &t[table];
        assert_eq!(tt["format_version"], 2, "{table}: format version");
        let spec = tt["partition_spec"].to_string();
        assert!(spec.contains("day"), "{table}: partitioned by day: {spec}");
        let offsets = snapshot_offsets(tt, &sink.group, &enriched).unwrap_or_else(|| {
            panic!(
                "{table}: no offsets in the newest snapshot: {}",
                tt["snapshots"]
            )
        });
        let total: i64 = offsets.iter().map(|o| o.1).sum();
        assert!(total >= 1, "{table}: offsets {offsets:?}");
        assert!(
            tt["snapshots"][0]["summary"]["form-etl.commit-id"].is_string(),
            "{table}: commit id"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn seed_event_into_iceberg_on_the_sql_catalog_matches_expected_rows() -> Result<()> {
    if !cluster_available("golden e2e iceberg sql") {
        return Ok(());
    }
    seed_through_iceberg(|s| Catalog::sql(&s.dir, &s.bucket)).await
}

#[tokio::test(flavor = "multi_thread")]
async fn seed_event_into_iceberg_on_the_rest_catalog_matches_expected_rows() -> Result<()> {
    if !cluster_available("golden e2e iceberg rest") {
        return Ok(());
    }
    seed_through_iceberg(|_| Catalog::rest()).await
}

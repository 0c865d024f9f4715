//! s3-sink with `output: iceberg` against the real local cluster: exactly once across `kill -9`
//! (counted by DuckDB, duplicates looked for by key), two sinks of one group committing to the
//! same tables, and a new attribute that adds a column mid-run (DuckDB reads the old snapshot
//! without it and the new one with it). Readers: pyiceberg and DuckDB's `iceberg_scan`.
//!
//! Needs `cargo build --release -p s3-sink` and `make cluster-up` (the REST catalog included).

use std::time::Duration;

use anyhow::{Context, Result};
use form_etl_tests::iceberg_support::{Catalog, namespace, read_tables, snapshot_offsets};
use form_etl_tests::sink_support::*;
use serde_json::{Value, json};

const PARTITIONS: i32 = 3;

async fn topics(name: &str) -> Result<(String, String)> {
    let topic = unique(&format!("{name}-in"));
    let dlq = unique(&format!("{name}-dlq"));
    create_topic(&topic, PARTITIONS).await?;
    create_topic(&dlq, 1).await?;
    Ok((topic, dlq))
}

/// Keys that make a row unique: a form row per record, a field row per record and field.
fn keys() -> Value {
    json!({"form": ["id"], "form_field": ["form_id", "id"]})
}

/// Both tables hold exactly `n` form rows and `fields` field rows (pyiceberg and DuckDB), no key
/// twice, and their newest snapshots the topic's end offsets.
fn check_tables(t: &Value, setup: &SinkSetup, n: usize, fields: usize) -> Result<()> {
    let ends = end_offsets(&setup.topic, PARTITIONS)?;
    let want_offsets: Vec<(i32, i64)> = ends
        .iter()
        .enumerate()
        .map(|(p, o)| (p as i32, *o))
        .collect();
    for (table, rows) in [("form", n), ("form_field", fields)] {
        let tt = &t[table];
        assert_eq!(tt["duckdb_count"], json!(rows), "{table}: DuckDB count(*)");
        assert_eq!(
            tt["pyiceberg_count"],
            json!(rows),
            "{table}: pyiceberg rows"
        );
        assert_eq!(tt["duplicates"], json!(0), "{table}: keys seen twice");
        assert_eq!(
            snapshot_offsets(tt, &setup.group, &setup.topic),
            Some(want_offsets.clone()),
            "{table}: offsets in the newest snapshot against the topic's end"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn iceberg_kill_9_five_times_exact_counts_and_offsets() -> Result<()> {
    if !cluster_available("iceberg kill -9") {
        return Ok(());
    }
    let (topic, dlq) = topics("ice-kill").await?;
    let n = 50_000;
    let (recs, fields) = enriched_records(n, "k", PARTITIONS);
    produce(&topic, &recs).await?;
    let setup = SinkSetup::new(
        "ice-kill",
        &topic,
        &dlq,
        &s3_endpoint(),
        "output",
        "  max-records: 4000\n  idle-flush: 1s\n",
    )?;
    let ns = namespace();
    let catalog = Catalog::sql(&setup.dir, &setup.bucket);
    setup.append_config(&catalog.output(&ns, "  commit-interval: 1s\n"))?;
    for round in 0..5 {
        let mut child = setup.spawn(&[])?;
        // A random moment: between 1 and 6 s after start (start-up included).
        let ms = 1000 + rand::random::<u64>() % 5000;
        tokio::time::sleep(Duration::from_millis(ms)).await;
        assert!(
            child.try_wait()?.is_none(),
            "the sink died on its own in round {round}:\n{}",
            setup.log()
        );
        child.kill()?; // SIGKILL
        child.wait()?;
        eprintln!("round {round}: killed after {ms} ms");
    }
    let mut child = setup.spawn(&[])?;
    let res = wait_committed(&setup, PARTITIONS, Duration::from_secs(240)).await;
    let status = terminate(&mut child, Duration::from_secs(60))?;
    res.with_context(|| setup.log())?;
    assert!(status.success(), "exit status {status}\n{}", setup.log());
    let t = read_tables(&catalog, &ns, json!({"key": keys()}))?;
    check_tables(&t, &setup, n, fields)?;
    eprintln!(
        "snapshots: form {}, form_field {}",
        t["form"]["snapshots"].as_array().map_or(0, Vec::len),
        t["form_field"]["snapshots"].as_array().map_or(0, Vec::len)
    );
    Ok(())
}

/// Two sinks of one group commit to the same tables of the REST catalog, the second joining
/// mid-run: the partitions move between them, and every partition's offset is in the summary.
#[tokio::test(flavor = "multi_thread")]
async fn iceberg_two_sinks_one_joining_mid_run_commit_every_row_once() -> Result<()> {
    if !cluster_available("iceberg two sinks") {
        return Ok(());
    }
    let (topic, dlq) = topics("ice-two").await?;
    let n = 12_000;
    let (recs, fields) = enriched_records(n, "t", PARTITIONS);
    let (first, rest) = recs.split_at(n / 2);
    produce(&topic, first).await?;
    let a = SinkSetup::new(
        "ice-two",
        &topic,
        &dlq,
        &s3_endpoint(),
        "output",
        "  idle-flush: 1s\n",
    )?;
    let ns = namespace();
    let catalog = Catalog::rest();
    a.append_config(&catalog.output(&ns, "  commit-interval: 1s\n"))?;
    let b = a.second("b")?;
    let mut sink_a = a.spawn(&[])?;
    let res = async {
        // A's first commits land, then B joins while the second half arrives.
        wait_for("the first commit", Duration::from_secs(120), || async {
            let c = committed_once(&a.group, &a.topic, PARTITIONS).unwrap_or_default();
            Ok((c.iter().sum::<i64>() > 0).then_some(()))
        })
        .await?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let sink_b = b.spawn(&[])?;
        produce(&topic, rest).await?;
        Ok::<_, anyhow::Error>(sink_b)
    }
    .await;
    let mut sink_b = match res {
        Ok(b) => b,
        Err(e) => {
            let _ = sink_a.kill();
            return Err(e.context(a.log()));
        }
    };
    let res = wait_committed(&a, PARTITIONS, Duration::from_secs(240)).await;
    for (c, s) in [(&mut sink_a, &a), (&mut sink_b, &b)] {
        let st = terminate(c, Duration::from_secs(60))?;
        assert!(st.success(), "a sink: {st}\n{}", s.log());
    }
    res.with_context(|| format!("{}\n---\n{}", a.log(), b.log()))?;
    assert!(
        b.log().contains("Partition assigned"),
        "the second sink never got a partition:\n{}",
        b.log()
    );
    let t = read_tables(&catalog, &ns, json!({"key": keys()}))?;
    check_tables(&t, &a, n, fields)?;
    Ok(())
}

/// A new attribute mid-run adds a column by an add-column commit: DuckDB reads the snapshot
/// before it without the column and the newest with it, the old rows null there.
#[tokio::test(flavor = "multi_thread")]
async fn iceberg_a_new_attribute_adds_a_column_and_old_snapshots_read_without_it() -> Result<()> {
    if !cluster_available("iceberg new column") {
        return Ok(());
    }
    let (topic, dlq) = topics("ice-col").await?;
    let setup = SinkSetup::new(
        "ice-col",
        &topic,
        &dlq,
        &s3_endpoint(),
        "output",
        "  idle-flush: 1s\n",
    )?;
    let ns = namespace();
    let catalog = Catalog::sql(&setup.dir, &setup.bucket);
    setup.append_config(&catalog.output(&ns, "  commit-interval: 1s\n"))?;
    let (old, old_fields) = enriched_records(300, "o", PARTITIONS);
    produce(&topic, &old).await?;
    let mut child = setup.spawn(&[])?;
    let res = async {
        wait_committed(&setup, PARTITIONS, Duration::from_secs(120)).await?;
        // The same records with a form setting no column has yet.
        let (new, _) = enriched_records(300, "n", PARTITIONS);
        let new: Vec<(i32, String, Vec<u8>)> = new
            .into_iter()
            .map(|(p, k, v)| {
                let mut j: Value = serde_json::from_slice(&v).unwrap();
                j["form"]["settings"]["brand_new_flag"] = json!(true);
                (p, k, j.to_string().into_bytes())
            })
            .collect();
        produce(&topic, &new).await?;
        wait_committed(&setup, PARTITIONS, Duration::from_secs(120)).await
    }
    .await;
    let st = terminate(&mut child, Duration::from_secs(60))?;
    res.with_context(|| setup.log())?;
    assert!(st.success(), "{st}\n{}", setup.log());
    let t = read_tables(&catalog, &ns, json!({"key": keys(), "per_snapshot": true}))?;
    let column = "settings_brand_new_flag";
    let form = &t["form"];
    let schema = form["schema"].to_string();
    assert!(
        schema.contains(column),
        "the newest schema has {column}: {schema}"
    );
    let per = form["per_snapshot"]
        .as_array()
        .context("per-snapshot reads")?;
    let has = |s: &Value| s["columns"].as_array().unwrap().iter().any(|c| c == column);
    let first_with = per
        .iter()
        .position(has)
        .context("no snapshot with the column")?;
    assert!(
        first_with > 0,
        "the first snapshot already has the column: {per:?}"
    );
    assert!(!has(&per[first_with - 1]), "{per:?}");
    assert_eq!(per.last().unwrap()["rows"], json!(600), "{per:?}");
    assert_eq!(per[first_with - 1]["rows"], json!(300), "{per:?}");
    assert_eq!(form["duplicates"], json!(0));
    assert_eq!(t["form_field"]["duckdb_count"], json!(2 * old_fields));
    Ok(())
}

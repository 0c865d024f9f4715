//! s3-sink with `output: iceberg` against the real local cluster: exactly once across `kill -9`
//! (counted by DuckDB, duplicates looked for by key), two sinks of one group committing to the
//! same tables, and a new attribute that adds a column mid-run (DuckDB reads the old snapshot
//! without it and the new one with it), and S3 down mid-run. Readers: pyiceberg and DuckDB's `iceberg_scan`.
//!
//! Needs `cargo build --release -p s3-sink` and `make cluster-up` (the REST catalog included).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use form_etl_tests::consume_to_end;
use form_etl_tests::iceberg_support::{Catalog, namespace, read_tables, snapshot_offsets};
use form_etl_tests::private_cluster::PrivateS3;
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
    let mut chunks = recs.chunks(n / 5);
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
        // Each run has new records to work on when it is killed.
        produce(&topic, chunks.next().expect("five chunks")).await?;
        let mut child = setup.spawn(&[])?;
        // A random moment: between 1 and 3 s after start (start-up is about 1 s; the sink
        // writes ~10k records a second here).
        let ms = 1000 + rand::random::<u64>() % 2000;
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
        // The second half only once B has partitions: it then commits some of them.
        wait_for(
            "the second sink's assignment",
            Duration::from_secs(120),
            || async { Ok(b.log().contains("Partition assigned").then_some(())) },
        )
        .await?;
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

/// A crash right after the `form` commit (before `form_field`'s), or right after both (before
/// the Kafka transaction with the dead letters and the group's offsets): the next run commits
/// to each table only what it lacks, and sends each dead letter once.
async fn crash_between_commits(after: &str) -> Result<()> {
    let (topic, dlq) = topics("ice-crash").await?;
    let n = 3000;
    let (mut recs, fields) = enriched_records(n, "c", PARTITIONS);
    // Every 100th record is not JSON: a dead letter.
    let mut poison = 0;
    for (i, r) in recs.iter_mut().enumerate() {
        if i % 100 == 7 {
            r.2 = b"not json {".to_vec();
            poison += 1;
        }
    }
    let (form_rows, field_rows) = {
        // The poisoned records have no rows.
        let mut f = 0;
        for (i, _) in recs.iter().enumerate() {
            if i % 100 != 7 {
                f += 1 + i % 9;
            }
        }
        let _ = fields;
        (n - poison, f)
    };
    // Half before the crash, half after: the next run's ranges then run past what the crash
    // left committed in one table.
    let (first, second) = recs.split_at(n / 2);
    produce(&topic, first).await?;
    let setup = SinkSetup::new(
        "ice-crash",
        &topic,
        &dlq,
        &s3_endpoint(),
        "output",
        "  idle-flush: 1s\n",
    )?;
    let ns = namespace();
    let catalog = Catalog::sql(&setup.dir, &setup.bucket);
    setup.append_config(&catalog.output(&ns, "  commit-interval: 1s\n"))?;
    let mut child =
        setup.spawn_with_env(&[], &[("FORM_ETL_CRASH_AFTER_COMMIT", Path::new(after))])?;
    let st = wait_exit(&mut child, Duration::from_secs(120))?;
    assert!(
        !st.success(),
        "the sink did not crash after {after}: {st}\n{}",
        setup.log()
    );
    let t = read_tables(&catalog, &ns, json!({}))?;
    let snaps = |table: &str| t[table]["snapshots"].as_array().map_or(0, Vec::len);
    assert!(snaps("form") >= 1, "form was committed before the crash");
    if after == "form" {
        assert_eq!(
            snaps("form_field"),
            0,
            "form_field was not committed before the crash"
        );
    } else {
        assert!(
            snaps("form_field") >= 1,
            "form_field was committed before the crash"
        );
    }
    assert!(
        committed_once(&setup.group, &topic, PARTITIONS)
            .unwrap_or_default()
            .iter()
            .all(|o| *o <= 0),
        "the group's offsets were not committed before the crash"
    );
    produce(&topic, second).await?;
    let mut child = setup.spawn(&[])?;
    let res = wait_committed(&setup, PARTITIONS, Duration::from_secs(120)).await;
    let st = terminate(&mut child, Duration::from_secs(60))?;
    res.with_context(|| setup.log())?;
    assert!(st.success(), "{st}\n{}", setup.log());
    let t = read_tables(&catalog, &ns, json!({"key": keys()}))?;
    check_tables(&t, &setup, form_rows, field_rows)?;
    let letters = consume_to_end(&dlq, Duration::from_secs(60)).await?;
    let header = |l: &form_etl_tests::Received, name: &str| {
        l.headers
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.clone())
    };
    let offsets = duplicates(letters.iter().map(|l| {
        (
            header(l, "dlq.source.partition"),
            header(l, "dlq.source.offset"),
        )
    }));
    assert_eq!(letters.len(), poison, "dead letters");
    assert!(offsets.is_empty(), "a dead letter sent twice: {offsets:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn iceberg_a_crash_between_the_two_tables_commits_leaves_no_duplicate() -> Result<()> {
    if !cluster_available("iceberg crash after form") {
        return Ok(());
    }
    crash_between_commits("form").await
}

#[tokio::test(flavor = "multi_thread")]
async fn iceberg_a_crash_before_the_kafka_transaction_sends_each_dead_letter_once() -> Result<()> {
    if !cluster_available("iceberg crash after form_field") {
        return Ok(());
    }
    crash_between_commits("form_field").await
}

/// S3 down mid-run: its server (a private one) `kill -9`ed for 15 s while new records arrive,
/// then started again on the same port and directory; then four short stalls (`kill -STOP`
/// for 2 s at a random moment while records arrive), which may catch a commit writing the
/// table's metadata. The data files' uploads and the catalog's metadata reads and writes fail
/// or hang meanwhile (records without rows, produced during the outage, need a commit and no
/// upload: their commit meets the outage for sure); the sink stays up, retries, and once S3 is
/// back commits every row and sends every dead letter once (no data file of a failed attempt
/// is referenced).
#[tokio::test(flavor = "multi_thread")]
async fn iceberg_s3_down_mid_run_then_back_commits_every_row_once() -> Result<()> {
    if !cluster_available("iceberg s3 down") {
        return Ok(());
    }
    let (topic, dlq) = topics("ice-s3").await?;
    let dir = root().join("target/it").join(unique("ice-s3"));
    let mut s3 =
        PrivateS3::start(&dir.join("data"), &dir, free_port(), "admin", "password").await?;
    s3.create_bucket("output").await?;
    let setup = SinkSetup::new(
        "ice-s3",
        &topic,
        &dlq,
        &s3.endpoint(),
        "output",
        "  idle-flush: 1s\n",
    )?;
    let ns = namespace();
    let catalog = Catalog::sql(&setup.dir, &setup.bucket);
    setup.append_config(&catalog.output(&ns, "  commit-interval: 1s\n"))?;
    let n = 6_000;
    let (recs, fields) = enriched_records(n, "s", PARTITIONS);
    let mut chunks = recs.chunks(n / 6);
    let poison: Vec<(i32, String, Vec<u8>)> = (0..30)
        .map(|i| {
            (
                i % PARTITIONS,
                format!("poison-{i}"),
                b"not json {".to_vec(),
            )
        })
        .collect();
    produce(&topic, chunks.next().expect("chunk")).await?;
    let mut child = setup.spawn(&[])?;
    let res = async {
        wait_committed(&setup, PARTITIONS, Duration::from_secs(120)).await?;
        s3.down()?;
        // Records without rows first: their range needs no upload, only a commit, which
        // must reach S3 for the table's metadata (and fails).
        produce(&topic, &poison).await?;
        tokio::time::sleep(Duration::from_secs(5)).await;
        produce(&topic, chunks.next().expect("chunk")).await?;
        // The outage: commit intervals come and go while every S3 request fails.
        tokio::time::sleep(Duration::from_secs(10)).await;
        anyhow::ensure!(
            child.try_wait()?.is_none(),
            "the sink ended while S3 was down:\n{}",
            setup.log()
        );
        s3.up().await?;
        for chunk in chunks.by_ref() {
            produce(&topic, chunk).await?;
            tokio::time::sleep(Duration::from_millis(200 + rand::random::<u64>() % 1000)).await;
            s3.stop()?;
            tokio::time::sleep(Duration::from_secs(2)).await;
            s3.cont()?;
        }
        wait_committed(&setup, PARTITIONS, Duration::from_secs(180)).await
    }
    .await;
    let _ = s3.cont();
    let status = terminate(&mut child, Duration::from_secs(60))?;
    res.with_context(|| setup.log())?;
    assert!(status.success(), "exit status {status}\n{}", setup.log());
    let log = setup.log();
    let lake_failures = [
        "Loading the table failed",
        "outcome is unknown",
        "Commit failed",
    ]
    .iter()
    .map(|m| log.matches(m).count())
    .sum::<usize>();
    assert!(
        lake_failures > 0,
        "no commit met the outage (the test did not test it):\n{log}"
    );
    let t = read_tables(
        &catalog,
        &ns,
        json!({"key": keys(), "s3_endpoint": s3.endpoint()}),
    )?;
    check_tables(&t, &setup, n, fields)?;
    let letters = consume_to_end(&dlq, Duration::from_secs(60)).await?;
    assert_eq!(letters.len(), poison.len(), "dead letters, each once");
    Ok(())
}

//! s3-sink under S3 faults (issue #15): a recorded boundary stays recorded while its upload
//! stalls (review finding D2), a permanent S3 error ends the sink with a clear message and no
//! commit (W4), the sink stays in its group while S3 stalls (W7), and a drain has a deadline.
//!
//! Each test runs its own S3 server (`s3s-fs`, private_cluster) so it can stop it; Kafka and
//! the shared S3 server are the local cluster's. Rows are read back with fastavro.
//!
//! Needs `cargo build --release -p s3-sink`, `make build-smartmodules` and `make cluster-up`.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use form_etl_tests::private_cluster::PrivateS3;
use form_etl_tests::sink_support::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// `len` letters that do not compress (a xorshift stream seeded by `seed`).
fn noise(seed: u64, len: usize) -> String {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b'a' + (x % 26) as u8)
        })
        .collect()
}

/// `n` one-field records on one partition, record `i` named `{tag}-{i:06}`.
fn records(n: usize, from: usize, tag: &str) -> Vec<(i32, String, Vec<u8>)> {
    padded(n, from, tag, 0)
}

/// The same with `pad` bytes of form title (large rows fill the upload budget soon).
fn padded(n: usize, from: usize, tag: &str, pad: usize) -> Vec<(i32, String, Vec<u8>)> {
    (from..from + n)
        .map(|i| {
            let id = format!("{tag}-{i:06}");
            let mut v: serde_json::Value =
                serde_json::from_slice(&enriched(&id, 1, 2, i as i64)).expect("json");
            if pad > 0 {
                v["form"]["title"] = format!("{id} {}", noise(i as u64, pad)).into();
            }
            (0, id, v.to_string().into_bytes())
        })
        .collect()
}

/// The group's committed offset and metadata of partition 0.
fn committed_with_metadata(group: &str, topic: &str) -> Result<(i64, String)> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka_addr())
        .set("group.id", group)
        .create()?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, 0);
    let got = c.committed_offsets(tpl, Duration::from_secs(10))?;
    let e = got.find_partition(topic, 0).context("partition 0")?;
    let offset = match e.offset() {
        Offset::Offset(o) => o,
        _ => -1,
    };
    Ok((offset, e.metadata().to_owned()))
}

async fn topics(name: &str) -> Result<(String, String)> {
    let topic = unique(&format!("{name}-in"));
    let dlq = unique(&format!("{name}-dlq"));
    create_topic(&topic, 1).await?;
    create_topic(&dlq, 1).await?;
    Ok((topic, dlq))
}

/// A private S3 server for one test, with the bucket `output`.
async fn own_s3(name: &str) -> Result<PrivateS3> {
    let dir = root().join("target/it").join(unique(name));
    let s3 = PrivateS3::start(&dir.join("data"), &dir, free_port(), "admin", "password").await?;
    s3.create_bucket("output").await?;
    Ok(s3)
}

/// Every row of the setup's objects read with fastavro: checks each of `ids` once, and no two
/// objects of one table and date with overlapping offset ranges.
async fn check_rows(setup: &SinkSetup, ids: &BTreeSet<String>) -> Result<()> {
    let s3 = setup.s3().await;
    let dir = setup.dir.join("download");
    let _ = std::fs::remove_dir_all(&dir);
    let files: Vec<PathBuf> = download_all(&s3, &setup.bucket, &setup.prefix, &dir).await?;
    let rows = read_with_fastavro(&files)?;
    let mut form = Vec::new();
    let mut ranges = std::collections::BTreeMap::<(String, String), Vec<(i64, i64)>>::new();
    for r in &rows {
        let meta = &r["__meta"];
        let table = meta["form_etl.table"].as_str().context("table")?.to_owned();
        let date = meta["form_etl.event_date"]
            .as_str()
            .context("date")?
            .to_owned();
        let first: i64 = meta["form_etl.source.first_offset"]
            .as_str()
            .context("first")?
            .parse()?;
        let end: i64 = meta["form_etl.source.end_offset"]
            .as_str()
            .context("end")?
            .parse()?;
        let v = ranges.entry((table.clone(), date)).or_default();
        if !v.contains(&(first, end)) {
            v.push((first, end));
        }
        if table == "form" {
            form.push(r["id"].as_str().context("id")?.to_owned());
        }
    }
    for ((table, date), mut v) in ranges {
        v.sort();
        for w in v.windows(2) {
            anyhow::ensure!(
                w[1].0 >= w[0].1,
                "{table} {date}: overlapping objects {w:?}"
            );
        }
    }
    let dups = duplicates(form.iter().cloned());
    anyhow::ensure!(dups.is_empty(), "duplicated form rows: {dups:?}");
    let got: BTreeSet<String> = form.into_iter().collect();
    anyhow::ensure!(
        &got == ids,
        "{} form rows for {} records ({} missing)",
        got.len(),
        ids.len(),
        ids.difference(&got).count()
    );
    Ok(())
}

fn ids(n: usize, tag: &str) -> BTreeSet<String> {
    (0..n).map(|i| format!("{tag}-{i:06}")).collect()
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Until `pred` holds of the committed (offset, metadata), or the deadline.
async fn wait_metadata(
    setup: &SinkSetup,
    what: &str,
    pred: impl Fn(&(i64, String)) -> bool,
) -> Result<(i64, String)> {
    wait_for(what, Duration::from_secs(60), || {
        let got = committed_with_metadata(&setup.group, &setup.topic);
        let ok = got.as_ref().map(&pred).unwrap_or(false);
        async move { Ok(if ok { Some(got?) } else { None }) }
    })
    .await
}

/// D2: a segment closed while S3 is stalled is recorded at once and stays recorded, commit
/// after commit, until its objects are durable; a `kill -9` then replays it exactly.
#[tokio::test(flavor = "multi_thread")]
async fn a_boundary_stays_recorded_while_its_upload_stalls() -> Result<()> {
    if !cluster_available("a_boundary_stays_recorded") {
        return Ok(());
    }
    let (topic, dlq) = topics("stall").await?;
    let mut s3 = own_s3("stall-s3").await?;
    let setup = SinkSetup::new(
        "stall",
        &topic,
        &dlq,
        &s3.endpoint(),
        "output",
        "  max-records: 300\n  idle-flush: 1s\n",
    )?;
    let mut sink = setup.spawn(&[])?;
    let res = async {
        produce(&topic, &records(50, 0, "st")).await?;
        wait_metadata(&setup, "offset 50 committed", |(o, m)| {
            *o == 50 && m.is_empty()
        })
        .await?;
        s3.stop()?;
        produce(&topic, &records(50, 50, "st")).await?;
        // The idle flush closes [50, 100): recorded although nothing can be uploaded.
        let (o, _) = wait_metadata(&setup, "[50, 100) recorded", |(_, m)| {
            m.contains(r#""s":50,"e":100"#)
        })
        .await?;
        assert_eq!(
            o, 50,
            "the offset stays at the start of what is not durable"
        );
        // Commit after commit (200 ms each), it stays recorded.
        let until = Instant::now() + Duration::from_secs(3);
        while Instant::now() < until {
            let (o, m) = committed_with_metadata(&setup.group, &setup.topic)?;
            anyhow::ensure!(
                o == 50 && m.contains(r#""s":50,"e":100"#),
                "erased: ({o}, {m})"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        kill(&mut sink);
        s3.cont()?;
        // Many more records: the replay must still close at 100.
        produce(&topic, &records(900, 100, "st")).await?;
        let mut run2 = setup.spawn(&[])?;
        let r = wait_committed(&setup, 1, Duration::from_secs(120)).await;
        let status = terminate(&mut run2, Duration::from_secs(60));
        kill(&mut run2);
        r.with_context(|| setup.log())?;
        anyhow::ensure!(status?.success(), "run 2 failed:\n{}", setup.log());
        check_rows(&setup, &ids(1000, "st")).await
    }
    .await;
    let _ = s3.cont();
    kill(&mut sink);
    res
}

/// W4: a permanent S3 error (the secret key is wrong: the signatures do not match) is retried
/// a few times (5), then the sink ends with a message naming it, having committed nothing of the
/// range; with the right key, the next run writes every row.
#[tokio::test(flavor = "multi_thread")]
async fn a_permanent_s3_error_ends_the_sink_without_committing() -> Result<()> {
    if !cluster_available("a_permanent_s3_error") {
        return Ok(());
    }
    let (topic, dlq) = topics("perm").await?;
    let s3 = own_s3("perm-s3").await?;
    let setup = SinkSetup::new(
        "perm",
        &topic,
        &dlq,
        &s3.endpoint(),
        "output",
        "  max-records: 100\n  idle-flush: 1s\n",
    )?;
    produce(&topic, &records(250, 0, "pm")).await?;
    let wrong = std::path::Path::new("not-the-secret");
    let mut sink = setup.spawn_with_env(&[], &[("S3_SECRET_ACCESS_KEY", wrong)])?;
    let status = wait_exit(&mut sink, Duration::from_secs(90));
    kill(&mut sink);
    let status = status?;
    assert!(!status.success(), "the sink must fail:\n{}", setup.log());
    let log = setup.log();
    assert!(
        // The first S3 request is the schema registry's read at start (an empty prefix), else
        // an upload: either way the error is named and the sink ends.
        (log.contains("an upload failed for good")
            || log.contains("loading the tables' schema versions"))
            && log.contains("SignatureDoesNotMatch"),
        "{log}"
    );
    assert!(!log.contains("not-the-secret"), "the secret is in the log");
    let (offset, _) = committed_with_metadata(&setup.group, &topic)?;
    assert!(
        offset <= 0,
        "nothing may be committed past the failed range: {offset}"
    );
    let mut run2 = setup.spawn(&[])?;
    let r = wait_committed(&setup, 1, Duration::from_secs(90)).await;
    let st = terminate(&mut run2, Duration::from_secs(60));
    kill(&mut run2);
    r.with_context(|| setup.log())?;
    anyhow::ensure!(st?.success(), "run 2 failed:\n{}", setup.log());
    check_rows(&setup, &ids(250, "pm")).await
}

/// W7 and the drain deadline: while S3 is stalled longer than `max.poll.interval.ms`, the sink
/// pauses its consumer but keeps polling, so it stays in the group (no revoke); a SIGTERM then
/// ends it after `commit.drain-timeout` without committing what is not durable; the next run
/// writes every row once.
#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_s3_neither_evicts_the_sink_nor_wedges_its_drain() -> Result<()> {
    if !cluster_available("a_stalled_s3") {
        return Ok(());
    }
    let (topic, dlq) = topics("evict").await?;
    let mut s3 = own_s3("evict-s3").await?;
    let setup = SinkSetup::new(
        "evict",
        &topic,
        &dlq,
        &s3.endpoint(),
        "output",
        // Small budget: the pipeline blocks soon once uploads stall.
        "  max-records: 200\n  idle-flush: 1s\n  memory-budget: 20MiB\n  part-size: 5MiB\n",
    )?;
    let text = std::fs::read_to_string(&setup.config)?
        .replace(
            "    session.timeout.ms: '10000'\n",
            "    session.timeout.ms: '6000'\n    max.poll.interval.ms: '8000'\n",
        )
        .replace(
            "commit: {interval: 200ms}",
            "commit: {interval: 200ms, drain-timeout: 3s}",
        );
    std::fs::write(&setup.config, text)?;
    let n = 10_000;
    let mut sink = setup.spawn(&[])?;
    let res = async {
        produce(&topic, &padded(1000, 0, "ev", 5000)).await?;
        wait_committed(&setup, 1, Duration::from_secs(60)).await?;
        s3.stop()?;
        // ~100 MB of rows: far more than the 10 MiB the uploads may hold.
        produce(&topic, &padded(n - 1000, 1000, "ev", 5000)).await?;
        wait_for("the consumer to pause", Duration::from_secs(60), || {
            let s = &setup;
            async move {
                Ok(s.metrics()
                    .await
                    .filter(|m| metric_value(m, "s3_sink_consumer_paused") == 1.0))
            }
        })
        .await?;
        // Twice max.poll.interval.ms: the scenario, not a wait for a condition.
        tokio::time::sleep(Duration::from_secs(16)).await;
        let m = setup.metrics().await.context("the sink answers")?;
        let revokes = metric_value(&m, "s3_sink_rebalances_total{kind=\"revoke\"}");
        anyhow::ensure!(
            revokes == 0.0,
            "the sink lost its partitions while S3 stalled:\n{}",
            setup.log()
        );
        let (before, _) = committed_with_metadata(&setup.group, &topic)?;
        let t = Instant::now();
        let status = terminate(&mut sink, Duration::from_secs(30))?;
        let took = t.elapsed();
        anyhow::ensure!(
            !status.success(),
            "a drain that timed out is a failure: {status}"
        );
        anyhow::ensure!(took < Duration::from_secs(15), "the drain took {took:?}");
        anyhow::ensure!(
            setup
                .log()
                .contains("did not finish within `commit.drain-timeout`"),
            "{}",
            setup.log()
        );
        let (after, _) = committed_with_metadata(&setup.group, &topic)?;
        anyhow::ensure!(
            after == before,
            "committed {before} → {after} while nothing was durable"
        );
        s3.cont()?;
        let mut run2 = setup.spawn(&[])?;
        let r = wait_committed(&setup, 1, Duration::from_secs(180)).await;
        let st = terminate(&mut run2, Duration::from_secs(60));
        kill(&mut run2);
        r.with_context(|| setup.log())?;
        anyhow::ensure!(st?.success(), "run 2 failed:\n{}", setup.log());
        check_rows(&setup, &ids(n, "ev")).await
    }
    .await;
    let _ = s3.cont();
    kill(&mut sink);
    if let Err(e) = &res {
        bail!("{e:#}");
    }
    res
}

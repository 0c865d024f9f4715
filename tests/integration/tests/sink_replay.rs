//! Replays that cut segments differently from the first run (issue #15): a run killed with
//! `kill -9` once its files are on S3, then a run whose boundaries would fall elsewhere (a
//! `--max-records` drain, a SIGTERM drain, a smaller memory budget, a module swap), then a run
//! to the end. Whatever cuts the replay, every record's rows must be in S3 exactly once and no
//! two objects of one table, partition and event date may hold overlapping offset ranges.
//!
//! The rows are read back with fastavro (not our reader); the ranges come from each file's
//! `form_etl.source.*` metadata.
//!
//! Needs `cargo build --release -p s3-sink`, `make build-smartmodules` and `make cluster-up`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Child;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use form_etl_tests::sink_support::*;

/// Records of the scenario (one partition): record `i` has one field and happens on day
/// `day(i)`; `pad` bytes of title make the records large (memory scenarios).
fn records(
    n: usize,
    tag: &str,
    day: impl Fn(usize) -> u32,
    pad: usize,
) -> Vec<(i32, String, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let id = format!("{tag}-{i:06}");
            let mut v: serde_json::Value =
                serde_json::from_slice(&enriched(&id, 1, day(i), i as i64)).expect("json");
            if pad > 0 {
                v["form"]["title"] = serde_json::Value::String(format!("{id} {}", "x".repeat(pad)));
            }
            (0, id, v.to_string().into_bytes())
        })
        .collect()
}

/// A one-partition scenario: its topic, DLQ topic, and sink setup with `commit.interval: 60s`,
/// `s3.max-records: 1000`, `s3.idle-flush: 1h` (the settings) plus `extra_s3`.
async fn scenario(name: &str, extra_s3: &str) -> Result<SinkSetup> {
    let topic = unique(&format!("{name}-in"));
    let dlq = unique(&format!("{name}-dlq"));
    create_topic(&topic, 1).await?;
    create_topic(&dlq, 1).await?;
    let s3 = form_etl_tests::sink_support::s3_endpoint();
    let setup = SinkSetup::new(
        name,
        &topic,
        &dlq,
        &s3,
        "output",
        &format!("  max-records: 1000\n  idle-flush: 1h\n{extra_s3}"),
    )?;
    set_commit_interval(&setup, "60s")?;
    Ok(setup)
}

fn set_commit_interval(setup: &SinkSetup, interval: &str) -> Result<()> {
    let text = std::fs::read_to_string(&setup.config)?;
    anyhow::ensure!(
        text.contains("commit: {interval: 200ms}"),
        "unexpected sink config"
    );
    std::fs::write(
        &setup.config,
        text.replace(
            "commit: {interval: 200ms}",
            &format!("commit: {{interval: {interval}}}"),
        ),
    )?;
    Ok(())
}

fn replace_in_config(setup: &SinkSetup, from: &str, to: &str) -> Result<()> {
    let text = std::fs::read_to_string(&setup.config)?;
    anyhow::ensure!(text.contains(from), "`{from}` is not in the sink config");
    std::fs::write(&setup.config, text.replace(from, to))?;
    Ok(())
}

/// Objects of `table` under the setup's prefix.
async fn objects(setup: &SinkSetup, table: &str) -> Result<Vec<String>> {
    let s3 = setup.s3().await;
    list(&s3, &setup.bucket, &format!("{}/{table}", setup.prefix)).await
}

/// Run 1: starts the sink and `kill -9`s it once `want` objects of the `form` table are visible.
async fn run_until_objects_then_kill(setup: &SinkSetup, want: usize) -> Result<()> {
    let mut child = setup.spawn(&[])?;
    let seen = wait_for("the first run's objects", Duration::from_secs(90), || {
        let exited = child.try_wait().ok().flatten();
        async move {
            if let Some(status) = exited {
                bail!("the sink exited early ({status}):\n{}", setup.log());
            }
            let keys = objects(setup, "form").await?;
            Ok((keys.len() >= want).then_some(keys))
        }
    })
    .await;
    child.kill()?;
    child.wait()?;
    let seen = seen?;
    eprintln!(
        "run 1 killed with {} form objects visible: {seen:?}",
        seen.len()
    );
    Ok(())
}

/// The sink's counter of consumed records, once it answers (`None` before: its signal
/// handlers are installed by then).
async fn received(setup: &SinkSetup) -> Option<f64> {
    let text = setup.metrics().await?;
    Some(metric_value(&text, "component_received_events_total"))
}

/// The last run: starts the sink, waits until it has consumed every record from the committed
/// offset on, then stops it with SIGTERM (the drain commits the rest) and checks it committed
/// all `n`.
async fn run_to_the_end(setup: &SinkSetup, n: usize) -> Result<()> {
    let from = committed(&setup.group, &setup.topic, 1)?[0].max(0) as usize;
    let n_left = n - from;
    let mut child = setup.spawn(&[])?;
    let res = async {
        wait_for(
            "the last run to consume every record",
            Duration::from_secs(120),
            || {
                let exited = child.try_wait().ok().flatten();
                async move {
                    if let Some(status) = exited {
                        bail!("the sink exited early ({status}):\n{}", setup.log());
                    }
                    Ok((received(setup).await >= Some(n_left as f64)).then_some(()))
                }
            },
        )
        .await?;
        let status = terminate(&mut child, Duration::from_secs(60))?;
        anyhow::ensure!(
            status.success(),
            "the last run exited with {status}:\n{}",
            setup.log()
        );
        let committed = committed(&setup.group, &setup.topic, 1)?;
        anyhow::ensure!(
            committed == vec![n as i64],
            "committed {committed:?}, expected [{n}]"
        );
        Ok(())
    }
    .await;
    let _ = child.kill();
    let _ = child.wait();
    res
}

/// (first, end, file) of the objects of one table and date.
type Ranges = BTreeSet<(i64, i64, String)>;

/// Every object read back with fastavro: rows exactly once, ranges disjoint per table and date.
async fn check_output(setup: &SinkSetup, n: usize, tag: &str) -> Result<()> {
    let s3 = setup.s3().await;
    let dir = setup.dir.join("download");
    let _ = std::fs::remove_dir_all(&dir);
    let files: Vec<PathBuf> = download_all(&s3, &setup.bucket, &setup.prefix, &dir).await?;
    let rows = read_with_fastavro(&files)?;
    let mut form: BTreeMap<String, usize> = BTreeMap::new();
    let mut field: BTreeMap<(String, String), usize> = BTreeMap::new();
    // (table, event date) → (first, end, file) of every object.
    let mut ranges: BTreeMap<(String, String), Ranges> = BTreeMap::new();
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
        let file = r["__file"].as_str().context("file")?.to_owned();
        ranges
            .entry((table.clone(), date))
            .or_default()
            .insert((first, end, file));
        if table == "form" {
            *form
                .entry(r["id"].as_str().context("id")?.to_owned())
                .or_default() += 1;
        } else {
            let key = (
                r["form_id"].as_str().context("form_id")?.to_owned(),
                r["id"].as_str().context("field id")?.to_owned(),
            );
            *field.entry(key).or_default() += 1;
        }
    }
    let dup_form: Vec<_> = form.iter().filter(|(_, c)| **c > 1).collect();
    let dup_field: Vec<_> = field.iter().filter(|(_, c)| **c > 1).collect();
    let mut overlaps = Vec::new();
    for ((table, date), set) in &ranges {
        let v: Vec<_> = set.iter().collect();
        for w in v.windows(2) {
            if w[1].0 < w[0].1 {
                overlaps.push(format!(
                    "{table} {date}: [{},{}) {} and [{},{}) {}",
                    w[0].0, w[0].1, w[0].2, w[1].0, w[1].1, w[1].2
                ));
            }
        }
    }
    let expected: BTreeSet<String> = (0..n).map(|i| format!("{tag}-{i:06}")).collect();
    let missing = expected.iter().filter(|id| !form.contains_key(*id)).count();
    anyhow::ensure!(
        dup_form.is_empty() && dup_field.is_empty() && overlaps.is_empty() && missing == 0,
        "{} form rows for {n} records: {} duplicated form rows, {} duplicated field rows, {missing} missing, overlapping objects: {overlaps:#?}",
        form.values().sum::<usize>(),
        dup_form.len(),
        dup_field.len(),
    );
    anyhow::ensure!(
        form.len() == n && field.len() == n,
        "{} form / {} field rows",
        form.len(),
        field.len()
    );
    Ok(())
}

fn kill_on_drop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// The scenario: `kill -9` once the first run's files are visible, then a run cut by
/// `--max-records 300`, then a run to the end.
#[tokio::test(flavor = "multi_thread")]
async fn replay_cut_by_max_records_writes_every_row_once() -> Result<()> {
    if !cluster_available("replay_cut_by_max_records") {
        return Ok(());
    }
    let setup = scenario("rcut", "").await?;
    let n = 2000;
    produce(&setup.topic, &records(n, "rc", |_| 2, 0)).await?;
    run_until_objects_then_kill(&setup, 2).await?;
    let mut run2 = setup.spawn(&["--max-records", "300"])?;
    let status = wait_exit(&mut run2, Duration::from_secs(120));
    kill_on_drop(&mut run2);
    anyhow::ensure!(status?.success(), "run 2 failed:\n{}", setup.log());
    run_to_the_end(&setup, n).await?;
    check_output(&setup, n, "rc").await
}

/// As above, with the events of one segment split over two event dates (two objects per
/// table share the segment's first offset), and the replay cut by a SIGTERM drain.
#[tokio::test(flavor = "multi_thread")]
async fn replay_cut_by_a_drain_across_event_dates_writes_every_row_once() -> Result<()> {
    if !cluster_available("replay_cut_by_a_drain") {
        return Ok(());
    }
    let setup = scenario("rdrain", "").await?;
    let n = 2000;
    // Large records (~20 KiB): the replay takes long enough for the drain to come in its middle.
    produce(
        &setup.topic,
        &records(n, "rd", |i| if i < 900 { 1 } else { 2 }, 20_000),
    )
    .await?;
    // The first segment closes when its day-2 file reaches 1000 rows (offset 1900): it has a
    // `form` object on each day.
    run_until_objects_then_kill(&setup, 2).await?;
    let mut run2 = setup.spawn(&[])?;
    let res = async {
        wait_for(
            "run 2 to consume part of the records",
            Duration::from_secs(60),
            || async { Ok((received(&setup).await >= Some(1.0)).then_some(())) },
        )
        .await?;
        let status = terminate(&mut run2, Duration::from_secs(60))?;
        anyhow::ensure!(
            status.success(),
            "run 2 exited with {status}:\n{}",
            setup.log()
        );
        Ok(())
    }
    .await;
    kill_on_drop(&mut run2);
    res?;
    run_to_the_end(&setup, n).await?;
    check_output(&setup, n, "rd").await
}

/// The replay runs with a memory budget small enough that the open files of the replayed
/// segment exceed it (a memory flush would cut it): records of ~20 KiB, 1000 per segment.
#[tokio::test(flavor = "multi_thread")]
async fn replay_under_a_smaller_memory_budget_writes_every_row_once() -> Result<()> {
    if !cluster_available("replay_under_a_smaller_memory_budget") {
        return Ok(());
    }
    let setup = scenario(
        "rmem",
        "  memory-budget: 512MiB\n  max-bytes: 512MiB\n  part-size: 64MiB\n",
    )
    .await?;
    let n = 2000;
    produce(&setup.topic, &records(n, "rm", |_| 3, 20_000)).await?;
    run_until_objects_then_kill(&setup, 2).await?;
    replace_in_config(&setup, "memory-budget: 512MiB", "memory-budget: 20MiB")?;
    replace_in_config(&setup, "part-size: 64MiB", "part-size: 5MiB")?;
    // Fewer records than a segment: the drain comes in the middle of the replay.
    let mut run2 = setup.spawn(&["--max-records", "700"])?;
    let status = wait_exit(&mut run2, Duration::from_secs(120));
    kill_on_drop(&mut run2);
    anyhow::ensure!(status?.success(), "run 2 failed:\n{}", setup.log());
    run_to_the_end(&setup, n).await?;
    check_output(&setup, n, "rm").await
}

/// `module` with a custom section appended: the same code (the same rows), other bytes, so
/// the sink sees a changed module (another sha256) and swaps it in.
fn variant_of(module: &[u8], tag: &str) -> Vec<u8> {
    let name = b"form-etl-test";
    let mut payload = vec![name.len() as u8];
    payload.extend_from_slice(name);
    payload.extend_from_slice(tag.as_bytes());
    let mut out = module.to_vec();
    out.push(0); // custom section
    let mut n = payload.len();
    loop {
        let b = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(b);
            break;
        }
        out.push(b | 0x80);
    }
    out.extend_from_slice(&payload);
    out
}

/// The replay runs while the module file is replaced (a hot swap): the swap waits until the
/// replay is done (the sink counts it), so it cannot cut the replayed segment.
#[tokio::test(flavor = "multi_thread")]
async fn replay_during_a_module_swap_writes_every_row_once() -> Result<()> {
    if !cluster_available("replay_during_a_module_swap") {
        return Ok(());
    }
    let setup = scenario("rswap", "").await?;
    let n = 2000;
    // Large records (~20 KiB): the replay of a 1000-record segment takes a while.
    produce(&setup.topic, &records(n, "rs", |_| 2, 20_000)).await?;
    let modules = setup.dir.join("modules");
    std::fs::create_dir_all(&modules)?;
    let base =
        std::fs::read(root().join("target/wasm32-unknown-unknown/release/form_flatten.wasm"))
            .context("the form-flatten module (make build-smartmodules)")?;
    let path = modules.join("form_flatten.wasm");
    std::fs::write(&path, &base)?;
    let env = [("FORM_ETL_SMARTMODULE_DIR", modules.as_path())];

    let mut run1 = setup.spawn_with_env(&[], &env)?;
    let seen = wait_for("the first run's objects", Duration::from_secs(90), || {
        let exited = run1.try_wait().ok().flatten();
        let s = &setup;
        async move {
            if let Some(status) = exited {
                bail!("the sink exited early ({status}):\n{}", s.log());
            }
            Ok((objects(s, "form").await?.len() >= 2).then_some(()))
        }
    })
    .await;
    kill_on_drop(&mut run1);
    seen?;

    let mut run2 = setup.spawn_with_env(&[], &env)?;
    let res = async {
        wait_for(
            "run 2 to start replaying",
            Duration::from_secs(60),
            || async { Ok((received(&setup).await >= Some(1.0)).then_some(())) },
        )
        .await?;
        let tmp = modules.join("form_flatten.wasm.tmp");
        std::fs::write(&tmp, variant_of(&base, "v2"))?;
        std::fs::rename(&tmp, &path)?;
        // The watcher loads the new module; the swap must wait for the replay, then happen.
        wait_for("the swap", Duration::from_secs(60), || async {
            let m = setup.metrics().await;
            Ok(m.filter(|m| metric_value(m, "s3_sink_transform_swaps_total") >= 1.0))
        })
        .await?;
        let status = terminate(&mut run2, Duration::from_secs(60))?;
        anyhow::ensure!(
            status.success(),
            "run 2 exited with {status}:\n{}",
            setup.log()
        );
        Ok(())
    }
    .await;
    kill_on_drop(&mut run2);
    res?;
    run_to_the_end(&setup, n).await?;
    check_output(&setup, n, "rs").await
}

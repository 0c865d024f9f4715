//! The way back from the dead-letter queue (issue #16): a sink in `strict` mode dead-letters
//! 1,000 records with an attribute its schema lacks; after the fix (`evolve` mode) `s3-sink dlq
//! replay` re-sends them to the topic they came from, is killed with `kill -9` in the middle,
//! and run again: each letter is re-sent exactly once (its `dlq.redriven` header names it), and
//! the sink then writes every row once.
//!
//! Needs `cargo build --release -p s3-sink`, `make build-smartmodules`, `make cluster-up`.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use form_etl_tests::sink_support::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

const PARTITIONS: i32 = 3;

/// `n` records over 3 partitions; the first `bad` have an attribute the starting schema lacks.
fn records(n: usize, bad: usize) -> Vec<(i32, String, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let id = format!("rd-{i:06}");
            let mut v: serde_json::Value =
                serde_json::from_slice(&enriched(&id, 2, 3, i as i64)).expect("json");
            if i < bad {
                v["form"]["settings"]["brand_new_setting"] = format!("new {i}").into();
            }
            (
                (i % PARTITIONS as usize) as i32,
                id,
                v.to_string().into_bytes(),
            )
        })
        .collect()
}

fn sink_cli(setup: &SinkSetup, args: &[&str]) -> Command {
    let mut c = Command::new(root().join("target/release/s3-sink"));
    c.current_dir(root())
        .arg("--config")
        .arg(&setup.config)
        .args(args)
        .env("S3_ACCESS_KEY_ID", "admin")
        .env("S3_SECRET_ACCESS_KEY", "password")
        .env("RUST_LOG", "warn");
    c
}

/// The committed offsets of `group` on `topic` (-1: none), summed.
fn committed_sum(group: &str, topic: &str, partitions: i32) -> Result<i64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka_addr())
        .set("group.id", group)
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let got = c.committed_offsets(tpl, Duration::from_secs(10))?;
    Ok((0..partitions)
        .map(|p| match got.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o,
            _ => 0,
        })
        .sum())
}

/// The `dlq.redriven` markers of every record of `topic` (read_committed).
fn redriven_markers(topic: &str) -> Result<Vec<String>> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka_addr())
        .set("group.id", unique("redriven-reader"))
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    c.assign(&tpl)?;
    let mut eof = BTreeSet::new();
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while eof.len() < PARTITIONS as usize {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "reading {topic} timed out"
        );
        match c.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                if let Some(h) = m.headers() {
                    for x in h.iter().filter(|x| x.key == "dlq.redriven") {
                        out.push(String::from_utf8_lossy(x.value.unwrap_or_default()).into_owned());
                    }
                }
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                eof.insert(p);
            }
            Some(Err(e)) => return Err(e.into()),
            None => {}
        }
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread")]
async fn dlq_replay_after_a_fix_resends_each_letter_once_across_a_kill() -> Result<()> {
    if !cluster_available("dlq_replay") {
        return Ok(());
    }
    let topic = unique("redrive-in");
    let dlq = unique("redrive-dlq");
    create_topic(&topic, PARTITIONS).await?;
    create_topic(&dlq, 1).await?;
    let (n, bad) = (1200, 1000);
    produce(&topic, &records(n, bad)).await?;
    let setup = SinkSetup::new(
        "redrive",
        &topic,
        &dlq,
        &s3_endpoint(),
        "output",
        "  idle-flush: 1s\n",
    )?;
    let base = std::fs::read_to_string(&setup.config)?;
    std::fs::write(&setup.config, format!("{base}schema: {{mode: strict}}\n"))?;

    // 1. strict: the new attribute is a dead letter.
    let mut sink = setup.spawn(&["--max-records", &n.to_string()])?;
    let st = tokio::task::spawn_blocking(move || sink.wait()).await??;
    anyhow::ensure!(st.success(), "strict run: {st}\n{}", setup.log());
    let listed = sink_cli(&setup, &["dlq", "list"]).output()?;
    let text = String::from_utf8_lossy(&listed.stdout).into_owned();
    anyhow::ensure!(
        listed.status.success(),
        "dlq list: {}",
        String::from_utf8_lossy(&listed.stderr)
    );
    anyhow::ensure!(
        text.contains("schema_mismatch: 1000"),
        "dlq list said:\n{text}"
    );
    anyhow::ensure!(
        text.contains("brand_new_setting"),
        "the detail names the column:\n{text}"
    );

    // 2. The fix: evolve mode. Replay, killed once in the middle.
    std::fs::write(&setup.config, &base)?;
    let group = unique("redrive-g");
    let replay_args = [
        "dlq",
        "replay",
        "--reason",
        "schema_mismatch",
        "--batch",
        "5",
        "--group",
        &group,
    ];
    let dry = sink_cli(
        &setup,
        &[
            "dlq",
            "replay",
            "--reason",
            "schema_mismatch",
            "--dry-run",
            "--group",
            &group,
        ],
    )
    .output()?;
    let dry_text = String::from_utf8_lossy(&dry.stdout).into_owned();
    anyhow::ensure!(
        dry_text.contains("would re-send 1000 dead letters"),
        "dry run said:\n{dry_text}"
    );
    anyhow::ensure!(
        committed_sum(&group, &dlq, 1)? == 0,
        "a dry run commits nothing"
    );
    let log = std::fs::File::create(setup.dir.join("replay-1.log"))?;
    let mut first = sink_cli(&setup, &replay_args)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?;
    let killed_at = wait_for(
        "the replay to be part done",
        Duration::from_secs(120),
        || {
            let g = group.clone();
            let d = dlq.clone();
            let exited = first.try_wait().ok().flatten();
            async move {
                if let Some(st) = exited {
                    anyhow::bail!("the replay finished ({st}) before it could be killed mid-way");
                }
                let c = committed_sum(&g, &d, 1)?;
                Ok((c > 0).then_some(c))
            }
        },
    )
    .await;
    let _ = first.kill();
    let _ = first.wait();
    let killed_at = killed_at?;
    eprintln!("replay killed with {killed_at} letters' offsets committed");
    let second = sink_cli(&setup, &replay_args).output()?;
    anyhow::ensure!(
        second.status.success(),
        "replay 2: {}",
        String::from_utf8_lossy(&second.stderr)
    );

    // 3. Each letter re-sent once.
    let markers = redriven_markers(&topic)?;
    let distinct: BTreeSet<&String> = markers.iter().collect();
    anyhow::ensure!(
        markers.len() == bad && distinct.len() == bad,
        "{} re-sent records, {} distinct letters, expected {bad} (killed at {killed_at})",
        markers.len(),
        distinct.len()
    );

    // 4. The sink (evolve) writes the re-sent records: every row once.
    let mut sink = setup.spawn(&[])?;
    let res = wait_committed(&setup, PARTITIONS, Duration::from_secs(120)).await;
    let st = terminate(&mut sink, Duration::from_secs(60));
    let _ = sink.kill();
    res.with_context(|| setup.log())?;
    anyhow::ensure!(st?.success(), "evolve run: {}", setup.log());
    let s3 = setup.s3().await;
    let dir = setup.dir.join("download");
    let files = download_all(&s3, &setup.bucket, &format!("{}/form", setup.prefix), &dir).await?;
    let rows = read_with_fastavro(&files)?;
    let ids: Vec<String> = rows
        .iter()
        .map(|r| r["id"].as_str().unwrap_or_default().to_owned())
        .collect();
    let distinct: BTreeSet<&String> = ids.iter().collect();
    anyhow::ensure!(
        ids.len() == n && distinct.len() == n,
        "{} form rows, {} distinct, expected {n}",
        ids.len(),
        distinct.len()
    );
    let with_new = rows
        .iter()
        .filter(|r| r["settings_brand_new_setting"].is_string())
        .count();
    anyhow::ensure!(
        with_new == bad,
        "{with_new} rows have the new column, expected {bad}"
    );
    Ok(())
}

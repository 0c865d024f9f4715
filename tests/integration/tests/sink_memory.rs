//! s3-sink memory against the real local cluster, with 64 MiB files (issue #5: "peak RSS stays
//! under 256 MiB with 64 MiB files"):
//!
//! - one sink writes enough rows over 3 partitions that several files reach `max-bytes: 64MiB`
//!   and roll by size; its peak RSS (`VmHWM` polled every 10 ms) stays under 256 MiB, every
//!   object reads with avro-tools, and the row counts per table are exact;
//! - two sinks in one consumer group, the second joining mid-run (a rebalance): no row lost or
//!   duplicated, and each one's peak RSS stays under the same bound.
//!
//! Only the codec differs from the shipped defaults (`memory-budget`, `part-size`, Kafka
//! prefetch): `null`, so 64 MiB files take a modest input. Needs `cargo build --release -p
//! s3-sink`, `make build-smartmodules`, `make cluster-up` and avro-tools (`make deps`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use form_etl_tests::sink_support::*;

const PARTITIONS: i32 = 3;
const MIB: u64 = 1 << 20;
/// The bound of issue #5.
const RSS_LIMIT_MIB: f64 = 256.0;
/// The file size under test.
const MAX_BYTES: &str = "64MiB";
/// An object this large rolled by size (it cannot be a flushed remainder by chance).
const BIG_OBJECT: u64 = 60 * MIB;
/// Fields per form: one `form` row and this many `form_field` rows per event.
const FIELDS: usize = 9;

/// The two tests each run sinks that want a whole core: one at a time, so neither's timing
/// (nor the rebalance's) depends on the other.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A plausible, somewhat wordy enriched record: a form with a long description and `FIELDS`
/// multiple-choice fields. Every `form_field` row repeats the form's columns, so the rows
/// (about 9 KiB per event, 90% of it in `form_field`) outweigh the input (about 3.4 KiB).
fn event(id: &str, source_offset: i64) -> Vec<u8> {
    let fields: Vec<serde_json::Value> = (0..FIELDS)
        .map(|i| {
            let choices: Vec<serde_json::Value> = ["Oui", "Non"]
                .iter()
                .map(
                    |label| serde_json::json!({"id": format!("{id}-q{i}-{label}"), "label": label}),
                )
                .collect();
            serde_json::json!({
                "id": format!("{id}-q{i}"),
                "title": format!("Question {i} : êtes-vous satisfait ?"),
                "reference": format!("r{i}"),
                "type": "multiple_choice",
                "properties": {"choices": choices, "allow_other_choice": i % 2 == 0},
                "validations": {"required": i % 2 == 1}
            })
        })
        .collect();
    let description = format!(
        "Enquête {id} : {}",
        "Merci de prendre quelques minutes pour nous dire ce que vous pensez de nos services. "
            .repeat(7)
    );
    serde_json::json!({
        "event": {"form_id": id, "form_title": "t", "event_happened_at": "2022-10-02 13:00:15", "event_type": "created"},
        "form": {"id": id, "type": "form", "title": format!("Enquête de satisfaction client {id} — édition 2022"),
                 "settings": {"language": "fr", "progress_bar": "proportion", "show_time_to_complete": true,
                              "show_number_of_submissions": false,
                              "redirect_after_submit_url": format!("https://example.com/merci/{id}?source=enquete"),
                              "meta": {"allow_indexing": false, "description": description}},
                 "fields": fields},
        "retrieved_timestamp": "2026-01-02T03:04:05.123456Z",
        "source": {"topic": "form.events", "partition": 0, "offset": source_offset}
    })
    .to_string()
    .into_bytes()
}

/// `(partition, key, value)` of `n` events, round robin over the partitions.
fn events(n: usize, tag: &str) -> Vec<(i32, String, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let id = format!("{tag}-{i:06}");
            let v = event(&id, i as i64);
            ((i % PARTITIONS as usize) as i32, id, v)
        })
        .collect()
}

async fn topics(name: &str) -> Result<(String, String)> {
    let topic = unique(&format!("{name}-in"));
    let dlq = unique(&format!("{name}-dlq"));
    create_topic(&topic, PARTITIONS).await?;
    create_topic(&dlq, 1).await?;
    Ok((topic, dlq))
}

fn setup(name: &str, topic: &str, dlq: &str) -> Result<SinkSetup> {
    SinkSetup::new(
        name,
        topic,
        dlq,
        &s3_endpoint(),
        "output",
        &format!("  codec: none\n  max-bytes: {MAX_BYTES}\n"),
    )
}

/// A second instance of `first`'s sink in the same group: its own static member id,
/// transactional id, metrics port and log.
fn second_instance(first: &SinkSetup, tag: &str) -> Result<SinkSetup> {
    let dir = first.dir.join(tag);
    std::fs::create_dir_all(&dir)?;
    let metrics_port = free_port();
    let text = std::fs::read_to_string(&first.config)?;
    let text = text
        .replace(
            &format!("group.instance.id: {}-i", first.group),
            &format!("group.instance.id: {}-{tag}", first.group),
        )
        .replace(
            "commit: {interval: 200ms}",
            &format!(
                "commit: {{interval: 200ms, transactional-id: {}-{tag}}}",
                first.group
            ),
        )
        .replace(
            &format!("127.0.0.1:{}", first.metrics_port),
            &format!("127.0.0.1:{metrics_port}"),
        );
    anyhow::ensure!(
        text.contains(&format!("{}-{tag}", first.group)) && text.contains("transactional-id"),
        "the sink config changed shape: {text}"
    );
    let config = dir.join("sink.yaml");
    std::fs::write(&config, text)?;
    Ok(SinkSetup {
        dir,
        config,
        topic: first.topic.clone(),
        group: first.group.clone(),
        dlq_topic: first.dlq_topic.clone(),
        prefix: first.prefix.clone(),
        bucket: first.bucket.clone(),
        endpoint: first.endpoint.clone(),
        metrics_port,
    })
}

/// The objects of a run, downloaded, with their sizes.
struct Objects {
    /// (key, size), by key.
    sizes: Vec<(String, u64)>,
    /// Local copies by table (`form`, `form_field`).
    by_table: BTreeMap<String, Vec<PathBuf>>,
    dir: PathBuf,
}

async fn download(setup: &SinkSetup) -> Result<Objects> {
    let s3 = setup.s3().await;
    let sizes = list_sizes(&s3, &setup.bucket, &setup.prefix).await?;
    let dir = setup.dir.join("download");
    let _ = std::fs::remove_dir_all(&dir);
    let files = download_all(&s3, &setup.bucket, &setup.prefix, &dir).await?;
    let mut by_table: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for f in files {
        let table = f
            .strip_prefix(&dir)?
            .iter()
            .nth(1)
            .context("table dir")?
            .to_string_lossy()
            .into_owned();
        by_table.entry(table).or_default().push(f);
    }
    Ok(Objects {
        sizes,
        by_table,
        dir,
    })
}

/// Rows per table as Java avro-tools counts them (it reads every block of every file).
fn avro_tools_counts(objects: &Objects) -> Result<BTreeMap<String, u64>> {
    let mut out = BTreeMap::new();
    for (table, files) in &objects.by_table {
        let n = count_with_avro_tools(files)?
            .context("avro-tools is missing under .cache/avro (install it with `make deps`)")?;
        out.insert(table.clone(), n);
    }
    Ok(out)
}

/// Every row's identity, read with apache-avro.
#[derive(Debug, Default)]
struct RowIds {
    /// `form.id` of every `form` row.
    forms: Vec<String>,
    /// (`form_id`, `id`) of every `form_field` row.
    fields: Vec<(String, String)>,
}

fn row_ids(objects: &Objects) -> Result<RowIds> {
    let mut ids = RowIds::default();
    for (table, files) in &objects.by_table {
        for f in files {
            let bytes = std::fs::read(f)?;
            let reader = apache_avro::Reader::new(bytes.as_slice())
                .with_context(|| format!("reading {}", f.display()))?;
            for v in reader {
                let apache_avro::types::Value::Record(cols) = v? else {
                    bail!("{}: a row that is not a record", f.display());
                };
                let col = |name: &str| -> String {
                    cols.iter()
                        .find(|(k, _)| k == name)
                        .and_then(|(_, v)| match v {
                            apache_avro::types::Value::String(s) => Some(s.clone()),
                            _ => None,
                        })
                        .unwrap_or_default()
                };
                match table.as_str() {
                    "form" => ids.forms.push(col("id")),
                    "form_field" => ids.fields.push((col("form_id"), col("id"))),
                    other => bail!("unexpected table directory {other}"),
                }
            }
        }
    }
    Ok(ids)
}

fn segments_closed(log: &str, reason: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("Segment closed") && l.contains(reason))
        .count()
}

/// Deletes what a passing test wrote (hundreds of MiB): objects, local copies, topics.
async fn clean_up(setup: &SinkSetup, objects: &Objects) -> Result<()> {
    delete_prefix(&setup.s3().await, &setup.bucket, &setup.prefix).await?;
    let _ = std::fs::remove_dir_all(&objects.dir);
    form_etl_tests::delete_topic(&setup.topic).await?;
    form_etl_tests::delete_topic(&setup.dlq_topic).await?;
    Ok(())
}

fn report_sizes(sizes: &[(String, u64)]) -> String {
    sizes
        .iter()
        .map(|(k, s)| {
            let name = Path::new(k)
                .file_name()
                .unwrap_or_default()
                .to_string_lossy();
            let table = k.split('/').nth(1).unwrap_or("?");
            format!("{table}/{name} {:.1} MiB", *s as f64 / MIB as f64)
        })
        .collect::<Vec<_>>()
        .join("\n  ")
}

/// Events of the single-sink run: 18,000 per partition, about 150 MiB of `form_field` rows
/// each (7,760 events fill a 64 MiB file), so each partition rolls two files by size and
/// drains a third.
const EVENTS: usize = 54_000;

#[tokio::test(flavor = "multi_thread")]
async fn peak_rss_under_256_mib_with_64_mib_files() -> Result<()> {
    if !cluster_available("peak_rss_under_256_mib_with_64_mib_files") {
        return Ok(());
    }
    let _serial = SERIAL.lock().await;
    let (topic, dlq) = topics("mem").await?;
    let recs = events(EVENTS, "m");
    let input_mib = recs.iter().map(|r| r.2.len()).sum::<usize>() as f64 / MIB as f64;
    let t = Instant::now();
    produce(&topic, &recs).await?;
    drop(recs);
    eprintln!(
        "produced {EVENTS} events ({input_mib:.0} MiB) in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    let setup = setup("mem", &topic, &dlq)?;
    let t = Instant::now();
    let mut child = setup.spawn(&["--max-records", &EVENTS.to_string()])?;
    let rss = PeakRss::watch(child.id());
    let status = tokio::task::block_in_place(|| wait_exit(&mut child, Duration::from_secs(240)));
    let peak = rss.stop();
    let log = setup.log();
    let status = status.with_context(|| log.clone())?;
    eprintln!(
        "sink: {EVENTS} events in {:.1}s, peak RSS {peak:.1} MiB; segments closed by size {}, by memory {}, by drain {}",
        t.elapsed().as_secs_f64(),
        segments_closed(&log, "max_bytes"),
        segments_closed(&log, "memory"),
        segments_closed(&log, "drain"),
    );
    assert!(status.success(), "exit status {status}\n{log}");
    assert_eq!(
        committed(&setup.group, &topic, PARTITIONS)?,
        end_offsets(&topic, PARTITIONS)?,
        "committed offsets"
    );

    let t = Instant::now();
    let objects = download(&setup).await?;
    eprintln!("objects:\n  {}", report_sizes(&objects.sizes));
    let big = objects
        .sizes
        .iter()
        .filter(|(_, s)| *s >= BIG_OBJECT)
        .count();
    assert!(
        big >= 2 * PARTITIONS as usize,
        "only {big} objects of 60 MiB or more: the files did not reach max-bytes {MAX_BYTES}"
    );
    let expected = BTreeMap::from([
        ("form".to_owned(), EVENTS as u64),
        ("form_field".to_owned(), (EVENTS * FIELDS) as u64),
    ]);
    let counted = avro_tools_counts(&objects)?;
    assert_eq!(counted, expected, "rows per table (avro-tools count)");
    eprintln!(
        "{} objects checked with avro-tools in {:.1}s",
        objects.sizes.len(),
        t.elapsed().as_secs_f64()
    );
    assert!(
        peak < RSS_LIMIT_MIB,
        "peak RSS {peak:.1} MiB, limit {RSS_LIMIT_MIB} MiB"
    );
    clean_up(&setup, &objects).await?;
    Ok(())
}

/// Events of the two-sink run: one 64 MiB file per partition and a remainder, unless a
/// rebalance or the memory budget cuts them first.
const REBALANCE_EVENTS: usize = 36_000;

/// A counter of the sink's `/metrics` (0 if absent or the sink does not answer).
async fn metric(setup: &SinkSetup, name: &str) -> f64 {
    setup
        .metrics()
        .await
        .map_or(0.0, |text| metric_value(&text, name))
}

#[tokio::test(flavor = "multi_thread")]
async fn two_sinks_rebalance_mid_run_exactly_once_and_bounded() -> Result<()> {
    if !cluster_available("two_sinks_rebalance_mid_run_exactly_once_and_bounded") {
        return Ok(());
    }
    let _serial = SERIAL.lock().await;
    let (topic, dlq) = topics("memrb").await?;
    let recs = events(REBALANCE_EVENTS, "r");
    produce(&topic, &recs).await?;
    drop(recs);
    let first = SinkSetup::new(
        "memrb",
        &topic,
        &dlq,
        &s3_endpoint(),
        "output",
        &format!("  codec: none\n  max-bytes: {MAX_BYTES}\n  idle-flush: 2s\n"),
    )?;
    let second = second_instance(&first, "b")?;

    let t = Instant::now();
    let mut a = first.spawn(&[])?;
    let rss_a = PeakRss::watch(a.id());
    // The second instance joins once the first has read a third of the input.
    let joined_at = wait_for(
        "the first sink to read a third of the input",
        Duration::from_secs(120),
        || async {
            let n = metric(&first, "component_received_events_total").await;
            Ok((n >= (REBALANCE_EVENTS / 3) as f64).then_some(n))
        },
    )
    .await;
    let joined_at = match joined_at {
        Ok(n) => n,
        Err(e) => {
            let _ = a.kill();
            return Err(e.context(first.log()));
        }
    };
    let mut b = second.spawn(&[])?;
    let rss_b = PeakRss::watch(b.id());
    eprintln!(
        "second sink started after {:.1}s, when the first had read {joined_at} records",
        t.elapsed().as_secs_f64()
    );
    let done = wait_committed(&first, PARTITIONS, Duration::from_secs(180)).await;
    let got_b = metric(&second, "component_received_events_total").await;
    let got_a = metric(&first, "component_received_events_total").await;
    let status_a = terminate(&mut a, Duration::from_secs(60));
    let status_b = terminate(&mut b, Duration::from_secs(60));
    let (peak_a, peak_b) = (rss_a.stop(), rss_b.stop());
    let (log_a, log_b) = (first.log(), second.log());
    done.with_context(|| format!("first sink:\n{log_a}\nsecond sink:\n{log_b}"))?;
    eprintln!(
        "all committed after {:.1}s; records read: first {got_a}, second {got_b}; peak RSS: first {peak_a:.1} MiB, second {peak_b:.1} MiB; \
         segments closed by size {}, by memory {}, by idle flush {}",
        t.elapsed().as_secs_f64(),
        segments_closed(&log_a, "max_bytes") + segments_closed(&log_b, "max_bytes"),
        segments_closed(&log_a, "memory") + segments_closed(&log_b, "memory"),
        segments_closed(&log_a, "idle") + segments_closed(&log_b, "idle"),
    );
    for (name, status, log) in [("first", status_a, &log_a), ("second", status_b, &log_b)] {
        let status = status.with_context(|| log.clone())?;
        assert!(status.success(), "{name} sink: exit status {status}\n{log}");
    }
    assert!(
        log_a.contains("Partitions revoked"),
        "the first sink saw no rebalance:\n{log_a}"
    );
    assert!(got_b > 0.0, "the second sink read nothing:\n{log_b}");

    let objects = download(&second).await?;
    eprintln!("objects:\n  {}", report_sizes(&objects.sizes));
    let RowIds { forms, fields } = row_ids(&objects)?;
    let dup_forms = duplicates(forms.iter().cloned());
    let dup_fields = duplicates(fields.iter().cloned());
    assert!(
        dup_forms.is_empty() && dup_fields.is_empty(),
        "duplicated rows: {} form, {} form_field, e.g. {:?} {:?}",
        dup_forms.len(),
        dup_fields.len(),
        dup_forms.first(),
        dup_fields.first()
    );
    let want: Vec<String> = (0..REBALANCE_EVENTS).map(|i| format!("r-{i:06}")).collect();
    let mut got = forms.clone();
    got.sort();
    assert!(
        got == want,
        "form rows: {} of {REBALANCE_EVENTS}, not every id once",
        got.len()
    );
    assert_eq!(fields.len(), REBALANCE_EVENTS * FIELDS, "form_field rows");
    let counted = avro_tools_counts(&objects)?;
    assert_eq!(
        counted,
        BTreeMap::from([
            ("form".to_owned(), REBALANCE_EVENTS as u64),
            ("form_field".to_owned(), (REBALANCE_EVENTS * FIELDS) as u64),
        ]),
        "rows per table (avro-tools count)"
    );
    for (name, peak) in [("first", peak_a), ("second", peak_b)] {
        assert!(
            peak < RSS_LIMIT_MIB,
            "{name} sink: peak RSS {peak:.1} MiB, limit {RSS_LIMIT_MIB} MiB"
        );
    }
    clean_up(&first, &objects).await?;
    Ok(())
}

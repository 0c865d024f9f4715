//! Schema evolution end to end (issue #16), on Typeform-shaped forms (`forms-api --typeform`,
//! ids `tf-…`, served by the local cluster): events through kafka-source and s3-sink with the
//! default `schema:` settings must not dead-letter a single valid event, the rows must all be
//! there once, and every file must read with the newest schema version (fastavro and
//! avro-tools, readers that are not ours: Avro resolution fills the columns an older file
//! lacks with their defaults).
//!
//! Needs `cargo build --release -p kafka-source -p s3-sink`, `make build-smartmodules`,
//! `make cluster-up`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use form_etl_tests::sink_support::*;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

const FORMS: usize = 1000;
const PARTITIONS: i32 = 3;

fn forms_api() -> String {
    std::env::var("FORM_ETL_FORMS_API").unwrap_or_else(|_| "http://127.0.0.1:8000".into())
}

/// `n` events over the Typeform forms `tf-000000` …, each with its own time.
fn events(n: usize, tag: &str) -> Vec<(i32, String, Vec<u8>)> {
    let base = chrono::NaiveDate::from_ymd_opt(2024, 3, 1)
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap();
    (0..n)
        .map(|i| {
            let id = format!("tf-{:06}", i % FORMS);
            let at = base + chrono::Duration::seconds(37 * i as i64);
            let v = serde_json::json!({
                "form_id": id,
                "form_title": format!("{tag} {i}"),
                "event_happened_at": at.format("%Y-%m-%d %H:%M:%S").to_string(),
                "event_type": if i % 2 == 0 { "created" } else { "updated" },
            });
            (
                (i % PARTITIONS as usize) as i32,
                id,
                v.to_string().into_bytes(),
            )
        })
        .collect()
}

/// Fields per form, from the forms API (a form's `fields`: one `form_field` row each).
async fn fields_per_form() -> Result<BTreeMap<String, usize>> {
    let client = reqwest::Client::new();
    let mut out = BTreeMap::new();
    for i in 0..FORMS {
        let id = format!("tf-{i:06}");
        let url = format!("{}/internal.forms/{id}", forms_api());
        let v: serde_json::Value = client
            .get(&url)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let n = v["fields"].as_array().map_or(0, Vec::len);
        out.insert(id, n);
    }
    Ok(out)
}

/// Every record of `topic` (read_committed) with its headers, until `want` or the deadline.
async fn read_topic(topic: &str, partitions: i32) -> Result<Vec<(Vec<(String, String)>, Vec<u8>)>> {
    let end = end_offsets(topic, partitions)?;
    let c: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka_addr())
        .set("group.id", unique("reader"))
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    c.assign(&tpl)?;
    let total: i64 = end.iter().sum();
    let mut out = Vec::new();
    let mut seen = vec![0i64; partitions as usize];
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while seen.iter().zip(&end).any(|(s, e)| s < e) {
        if std::time::Instant::now() > deadline {
            bail!("read {} of at most {total} records of {topic}", out.len());
        }
        let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(2), c.recv()).await else {
            // Transaction markers take offsets too: stop once the positions pass the ends.
            let pos = c.position()?;
            let done = (0..partitions).all(|p| {
                matches!(pos.find_partition(topic, p).map(|e| e.offset()), Some(Offset::Offset(o)) if o >= end[p as usize])
            });
            if done {
                break;
            }
            continue;
        };
        seen[m.partition() as usize] = m.offset() + 1;
        let headers = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|x| {
                        (
                            x.key.to_owned(),
                            String::from_utf8_lossy(x.value.unwrap_or_default()).into_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push((headers, m.payload().unwrap_or_default().to_vec()));
    }
    Ok(out)
}

/// The newest schema version of `table` in the sink's prefix, and every version's JSON.
async fn versions(setup: &SinkSetup, table: &str) -> Result<Vec<String>> {
    let s3 = setup.s3().await;
    let mut out = Vec::new();
    for v in 1.. {
        let key = format!("{}/_schemas/{table}/v{v}.avsc", setup.prefix);
        match get(&s3, &setup.bucket, &key).await {
            Ok(b) => out.push(String::from_utf8(b)?),
            Err(_) => break,
        }
    }
    Ok(out)
}

/// Reads every file of `table` with fastavro using `reader_schema` (the newest version):
/// the rows, as JSON, with `__file`.
fn read_with_reader_schema(
    files: &[PathBuf],
    reader_schema: &Path,
) -> Result<Vec<serde_json::Value>> {
    let script = r#"
import sys, json, fastavro
schema = fastavro.parse_schema(json.load(open(sys.argv[1])))
for path in sys.argv[2:]:
    with open(path, 'rb') as f:
        for rec in fastavro.reader(f, reader_schema=schema):
            for k, v in list(rec.items()):
                if hasattr(v, 'isoformat'):
                    rec[k] = v.isoformat()
            rec['__file'] = path
            print(json.dumps(rec, ensure_ascii=False))
"#;
    python_rows(script, &[reader_schema.as_os_str()], files)
}

/// Counts the rows of `files` with avro-tools `tojson --reader-schema-file`.
fn count_with_avro_tools_reader(files: &[PathBuf], reader_schema: &Path) -> Result<usize> {
    let jar = std::env::var("FORM_ETL_AVRO_TOOLS_JAR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root().join(".cache/avro/avro-tools-1.12.1.jar"));
    let mut n = 0;
    for f in files {
        let out = Command::new("java")
            .arg("-jar")
            .arg(&jar)
            .arg("tojson")
            .arg("--reader-schema-file")
            .arg(reader_schema)
            .arg(f)
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "avro-tools tojson {}: {}",
            f.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        n += String::from_utf8(out.stdout)?
            .lines()
            .filter(|l| !l.trim().is_empty())
            .count();
    }
    Ok(n)
}

fn kill(c: &mut Child) {
    let _ = c.kill();
    let _ = c.wait();
}

/// Runs kafka-source until it has committed all `n` events (`--max-records`).
fn spawn_source(setup: &SinkSetup, events: &str, enriched: &str, n: usize) -> Result<Child> {
    let cfg = shipped_source_config(
        &setup.dir,
        events,
        enriched,
        &setup.dlq_topic,
        &unique("src-g"),
    )?;
    let log = std::fs::File::create(setup.dir.join("source.log"))?;
    Ok(Command::new(root().join("target/release/kafka-source"))
        .current_dir(root())
        .args(["--max-records", &n.to_string(), "--config"])
        .arg(&cfg)
        .env("FORM_ETL_STATE_DIR", setup.dir.join("source-state"))
        // Its own instance (so its own transactional id): tests run side by side.
        .env("FORM_ETL_INSTANCE_ID", unique("src"))
        .stderr(log)
        .spawn()?)
}

/// Downloads the table's files, reads them with the newest schema (fastavro, avro-tools) and
/// checks: each (form id, event time) once in `form`, each (form id, event time, field id)
/// once in `form_field`, and the expected counts. Answers the newest schema's JSON.
async fn check_tables(
    setup: &SinkSetup,
    n: usize,
    fields: &BTreeMap<String, usize>,
    tag: &str,
) -> Result<()> {
    let s3 = setup.s3().await;
    let dir = setup.dir.join("download");
    let _ = std::fs::remove_dir_all(&dir);
    let mut expected_fields = 0;
    for i in 0..n {
        expected_fields += fields[&format!("tf-{:06}", i % FORMS)];
    }
    for (table, want) in [("form", n), ("form_field", expected_fields)] {
        let files = download_all(
            &s3,
            &setup.bucket,
            &format!("{}/{table}", setup.prefix),
            &dir,
        )
        .await?;
        let history = versions(setup, table).await?;
        anyhow::ensure!(
            history.len() > 1,
            "{table}: no schema version was made ({} versions)",
            history.len()
        );
        let newest = dir.join(format!("{table}-newest.avsc"));
        std::fs::write(&newest, history.last().expect("one"))?;
        let rows = read_with_reader_schema(&files, &newest)?;
        let mut ids = BTreeSet::new();
        for r in &rows {
            let title = if table == "form" {
                &r["id"]
            } else {
                &r["form_id"]
            };
            let at = if table == "form" {
                &r["event_happened_at"]
            } else {
                &r["form_event_happened_at"]
            };
            let field = if table == "form" {
                String::new()
            } else {
                r["id"].to_string()
            };
            let key = (title.to_string(), at.to_string(), field);
            anyhow::ensure!(ids.insert(key.clone()), "{table}: duplicated row {key:?}");
        }
        anyhow::ensure!(
            rows.len() == want,
            "{table}: {} rows, expected {want}",
            rows.len()
        );
        let counted = count_with_avro_tools_reader(&files, &newest)?;
        anyhow::ensure!(
            counted == want,
            "{table}: avro-tools read {counted} rows, expected {want}"
        );
        eprintln!(
            "{tag}: {table}: {want} rows in {} files, {} schema versions",
            files.len(),
            history.len()
        );
    }
    Ok(())
}

/// 10,000 events over 1,000 Typeform-shaped forms: 0 dead letters, every row once, every
/// file read with the newest schema.
#[tokio::test(flavor = "multi_thread")]
async fn typeform_events_evolve_the_schema_and_nothing_is_dead_lettered() -> Result<()> {
    if !cluster_available("typeform_events_evolve") {
        return Ok(());
    }
    let fields = fields_per_form().await?;
    let (events_topic, enriched, dlq) =
        (unique("tf-events"), unique("tf-enriched"), unique("tf-dlq"));
    create_topic(&events_topic, PARTITIONS).await?;
    create_topic(&enriched, PARTITIONS).await?;
    create_topic(&dlq, 1).await?;
    let setup = SinkSetup::new(
        "tfevolve",
        &enriched,
        &dlq,
        &s3_endpoint(),
        "output",
        "  idle-flush: 1s\n",
    )?;
    let n = 10_000;
    produce(&events_topic, &events(n, "e")).await?;
    let mut source = spawn_source(&setup, &events_topic, &enriched, n)?;
    let mut sink = setup.spawn(&[])?;
    let res = async {
        let st = tokio::task::spawn_blocking(move || {
            let st = wait_exit(&mut source, Duration::from_secs(240));
            kill(&mut source);
            st
        })
        .await??;
        anyhow::ensure!(
            st.success(),
            "kafka-source: {st}\n{}",
            std::fs::read_to_string(setup.dir.join("source.log")).unwrap_or_default()
        );
        wait_committed(&setup, PARTITIONS, Duration::from_secs(240))
            .await
            .with_context(|| setup.log())?;
        let st = terminate(&mut sink, Duration::from_secs(60))?;
        anyhow::ensure!(st.success(), "s3-sink: {st}\n{}", setup.log());
        let letters = read_topic(&dlq, 1).await?;
        let reasons: BTreeMap<String, usize> =
            letters.iter().fold(BTreeMap::new(), |mut m, (h, _)| {
                let r = h
                    .iter()
                    .find(|(k, _)| k == "dlq.reason")
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default();
                *m.entry(r).or_default() += 1;
                m
            });
        anyhow::ensure!(letters.is_empty(), "dead letters: {reasons:?}");
        check_tables(&setup, n, &fields, "typeform").await
    }
    .await;
    kill(&mut sink);
    res
}

/// Two sinks in one group take the same new attributes at once (each its own partitions): one
/// version history in the store (v1, v2, … without gaps, each extending the one before), and
/// every file's schema is one of its versions.
#[tokio::test(flavor = "multi_thread")]
async fn two_sinks_discovering_the_same_columns_keep_one_history() -> Result<()> {
    if !cluster_available("two_sinks_discovering") {
        return Ok(());
    }
    let fields = fields_per_form().await?;
    let (events_topic, enriched, dlq) = (
        unique("tf2-events"),
        unique("tf2-enriched"),
        unique("tf2-dlq"),
    );
    create_topic(&events_topic, PARTITIONS).await?;
    create_topic(&enriched, PARTITIONS).await?;
    create_topic(&dlq, 1).await?;
    let n = 3000;
    produce(&events_topic, &events(n, "t")).await?;
    let a = SinkSetup::new(
        "tf2",
        &enriched,
        &dlq,
        &s3_endpoint(),
        "output",
        "  idle-flush: 1s\n",
    )?;
    // The second sink: same group, prefix and bucket, its own metrics port and instance.
    let b_dir = a.dir.join("b");
    std::fs::create_dir_all(&b_dir)?;
    let b_config = b_dir.join("sink.yaml");
    let b_port = free_port();
    std::fs::write(
        &b_config,
        std::fs::read_to_string(&a.config)?
            .replace(
                &format!("127.0.0.1:{}", a.metrics_port),
                &format!("127.0.0.1:{b_port}"),
            )
            .replace(
                &format!("group.instance.id: {}-i", a.group),
                &format!("group.instance.id: {}-j", a.group),
            ),
    )?;
    // Enrich everything first, then start both sinks at once on the finished topic.
    let mut source = spawn_source(&a, &events_topic, &enriched, n)?;
    let st = tokio::task::spawn_blocking(move || {
        let st = wait_exit(&mut source, Duration::from_secs(240));
        kill(&mut source);
        st
    })
    .await??;
    anyhow::ensure!(st.success(), "kafka-source: {st}");
    let mut sink_a = a.spawn(&[])?;
    let b_setup = SinkSetup {
        dir: b_dir.clone(),
        config: b_config.clone(),
        topic: a.topic.clone(),
        group: a.group.clone(),
        dlq_topic: a.dlq_topic.clone(),
        prefix: a.prefix.clone(),
        bucket: a.bucket.clone(),
        endpoint: a.endpoint.clone(),
        metrics_port: b_port,
    };
    let mut sink_b = b_setup.spawn(&[])?;
    let res = async {
        wait_committed(&a, PARTITIONS, Duration::from_secs(240))
            .await
            .with_context(|| a.log())?;
        for (c, s) in [(&mut sink_a, &a), (&mut sink_b, &b_setup)] {
            let st = terminate(c, Duration::from_secs(60))?;
            anyhow::ensure!(st.success(), "a sink: {st}\n{}", s.log());
        }
        for table in ["form", "form_field"] {
            let history = versions(&a, table).await?;
            let parsed: Vec<serde_json::Value> = history
                .iter()
                .map(|h| serde_json::from_str(h))
                .collect::<Result<_, _>>()?;
            for w in parsed.windows(2) {
                let (old, new) = (
                    w[0]["fields"].as_array().unwrap(),
                    w[1]["fields"].as_array().unwrap(),
                );
                anyhow::ensure!(new.len() >= old.len(), "{table}: a version lost columns");
                for (o, n) in old.iter().zip(new) {
                    anyhow::ensure!(
                        o["name"] == n["name"],
                        "{table}: column {} moved",
                        o["name"]
                    );
                }
            }
            // Each file's embedded schema is one of the versions.
            let s3 = a.s3().await;
            let dir = a.dir.join(format!("files-{table}"));
            let files =
                download_all(&s3, &a.bucket, &format!("{}/{table}", a.prefix), &dir).await?;
            let names: BTreeSet<Vec<String>> = parsed
                .iter()
                .map(|v| {
                    v["fields"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|f| f["name"].as_str().unwrap().to_owned())
                        .collect()
                })
                .collect();
            for f in &files {
                let bytes = std::fs::read(f)?;
                let r = apache_avro::Reader::new(bytes.as_slice())?;
                let apache_avro::Schema::Record(rec) = r.writer_schema() else {
                    bail!("not a record")
                };
                let cols: Vec<String> = rec.fields.iter().map(|f| f.name.clone()).collect();
                anyhow::ensure!(
                    names.contains(&cols),
                    "{}: its schema is no version of the history",
                    f.display()
                );
            }
            eprintln!("{table}: {} versions, {} files", history.len(), files.len());
        }
        check_tables(&a, n, &fields, "two sinks").await
    }
    .await;
    kill(&mut sink_a);
    kill(&mut sink_b);
    res
}

/// `kill -9` as soon as a new schema version exists (before or just after its first file),
/// then a replay: no further version for the same columns, every row once.
#[tokio::test(flavor = "multi_thread")]
async fn a_kill_after_a_new_schema_version_replays_with_the_same_version() -> Result<()> {
    if !cluster_available("a_kill_after_a_new_schema_version") {
        return Ok(());
    }
    let fields = fields_per_form().await?;
    let (events_topic, enriched, dlq) = (
        unique("tfk-events"),
        unique("tfk-enriched"),
        unique("tfk-dlq"),
    );
    create_topic(&events_topic, PARTITIONS).await?;
    create_topic(&enriched, PARTITIONS).await?;
    create_topic(&dlq, 1).await?;
    let n = 2000;
    produce(&events_topic, &events(n, "k")).await?;
    let setup = SinkSetup::new(
        "tfkill",
        &enriched,
        &dlq,
        &s3_endpoint(),
        "output",
        "  idle-flush: 1s\n",
    )?;
    let mut source = spawn_source(&setup, &events_topic, &enriched, n)?;
    let st = tokio::task::spawn_blocking(move || {
        let st = wait_exit(&mut source, Duration::from_secs(240));
        kill(&mut source);
        st
    })
    .await??;
    anyhow::ensure!(st.success(), "kafka-source: {st}");
    let mut sink = setup.spawn(&[])?;
    let seen = wait_for("a second schema version", Duration::from_secs(120), || {
        let s = &setup;
        async move { Ok((versions(s, "form").await?.len() >= 2).then_some(())) }
    })
    .await;
    kill(&mut sink);
    seen?;
    let before = (
        versions(&setup, "form").await?,
        versions(&setup, "form_field").await?,
    );
    let objects_then = list(&setup.s3().await, &setup.bucket, &setup.prefix)
        .await?
        .len();
    eprintln!(
        "killed with {} + {} versions and {objects_then} objects",
        before.0.len(),
        before.1.len()
    );
    let mut run2 = setup.spawn(&[])?;
    let res = async {
        wait_committed(&setup, PARTITIONS, Duration::from_secs(240))
            .await
            .with_context(|| setup.log())?;
        let st = terminate(&mut run2, Duration::from_secs(60))?;
        anyhow::ensure!(st.success(), "run 2: {st}\n{}", setup.log());
        // The replay found the versions the first run made: the ones it had are unchanged.
        let after = (
            versions(&setup, "form").await?,
            versions(&setup, "form_field").await?,
        );
        anyhow::ensure!(
            after.0.starts_with(&before.0) && after.1.starts_with(&before.1),
            "versions were rewritten"
        );
        check_tables(&setup, n, &fields, "kill").await
    }
    .await;
    kill(&mut run2);
    res
}

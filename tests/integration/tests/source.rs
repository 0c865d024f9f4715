//! kafka-source against the real local cluster: Kafka, and the forms API (the shared one for the
//! seed; a private `forms-api` process on free ports for every test that injects faults or
//! counts requests). Each test has its own topics, group and config file.
//!
//! Needs `cargo build --release -p kafka-source -p forms-api` and `make cluster-up`.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use form_etl_tests::source_support::*;
use form_etl_tests::*;
use serde_json::{Value, json};

const OLD: &str = "2022-10-02 13:00:15";

fn positions(p: &[(i32, i64)]) -> HashSet<(i32, i64)> {
    p.iter().copied().collect()
}

async fn assert_dlq_empty(t: &SourceTopics) -> Result<()> {
    let dlq = consume_to_end(&t.dlq, Duration::from_secs(30)).await?;
    ensure!(
        dlq.is_empty(),
        "DLQ holds {} records, e.g. {:?}",
        dlq.len(),
        dlq.first().map(|r| r.headers.clone())
    );
    Ok(())
}

/// The seed event gives exactly one record in the output topic carrying the fixture form.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_event_is_enriched_with_the_fixture_form() -> Result<()> {
    require_cluster!(&[Service::Kafka, Service::FormsApi]);
    let t = SourceTopics::create("src-seed", 3).await?;
    let kv = std::fs::read_to_string(seed_fixture_dir().join("form.events.kv"))?;
    let (key, value) = kv.trim().split_once(':').context("key:value")?;
    let at = produce(
        &producer()?,
        &t.input,
        Some(key.as_bytes()),
        value.as_bytes(),
        None,
        &[],
    )
    .await?;
    let mut src = start_source(
        &t,
        &SourceOptions::new(&forms_api()),
        &["--max-records", "1"],
    )?;
    let status = src.process.wait_exit(Duration::from_secs(60)).await?;
    ensure!(
        status.success(),
        "exit {status}:\n{}",
        src.process.log_tail(30)
    );

    let out = consume_to_end(&t.output, Duration::from_secs(30)).await?;
    ensure!(out.len() == 1, "{} records", out.len());
    let v = out[0].value_json()?;
    let fixture: Value = serde_json::from_str(&std::fs::read_to_string(
        seed_fixture_dir().join("forms/abcde.json"),
    )?)?;
    assert_eq!(out[0].key_str(), "abcde");
    assert_eq!(v["form"], fixture);
    assert_eq!(v["event"], serde_json::from_str::<Value>(value)?);
    assert_eq!(
        v["source"],
        json!({"topic": t.input, "partition": at.0, "offset": at.1})
    );
    let ts = v["retrieved_timestamp"]
        .as_str()
        .context("retrieved_timestamp")?;
    let ts = chrono::DateTime::parse_from_rfc3339(ts)?;
    let age = chrono::Utc::now().signed_duration_since(ts);
    ensure!(
        age.num_seconds().abs() < 120,
        "retrieved_timestamp {ts} is not from this run"
    );
    assert_dlq_empty(&t).await?;
    let log = std::fs::read_to_string(src.process.log_path())?;
    ensure!(
        !log.contains("test-token-never-logged"),
        "the API token appears in the log"
    );
    Ok(())
}

/// Poison events go to the DLQ with the right reason and untouched key/value; the rest flows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_events_are_dead_lettered_while_the_rest_flows() -> Result<()> {
    require_cluster!(&[Service::Kafka]);
    // A private API whose forms dir also holds two broken answers.
    let dir = workspace_root()
        .join("target/test-logs")
        .join(unique_name("poison-forms"));
    std::fs::create_dir_all(&dir)?;
    std::fs::copy(
        seed_fixture_dir().join("forms/abcde.json"),
        dir.join("abcde.json"),
    )?;
    std::fs::write(
        dir.join("other.json"),
        r#"{"id":"someone-else","title":"x"}"#,
    )?;
    std::fs::write(dir.join("broken.json"), "[1, 2, 3]")?; // JSON, not a form (the server refuses non-JSON files)
    let (port, admin) = (free_port(), free_port());
    let (ps, ads, ds) = (
        port.to_string(),
        admin.to_string(),
        dir.to_string_lossy().into_owned(),
    );
    let _api = ChildProcess::spawn_release(
        "forms-api",
        &["--port", &ps, "--admin-port", &ads, "--forms-dir", &ds],
        &[],
    )?;
    let api = format!("http://127.0.0.1:{port}");
    wait_until(Duration::from_secs(10), "private forms-api", || {
        let r = http_client().get(format!("{api}/health")).send();
        async move { r.await.is_ok_and(|r| r.status().is_success()) }
    })
    .await?;

    let t = SourceTopics::create("src-poison", 3).await?;
    let p = producer()?;
    let cases: Vec<(&str, String, Option<&str>)> = vec![
        ("k1", event("abcde", OLD, "created").to_string(), None),
        ("k2", "not json {".into(), Some("invalid_json")),
        (
            "k3",
            json!({"form_title":"x","event_happened_at":OLD,"event_type":"created"}).to_string(),
            Some("missing_field"),
        ),
        (
            "k4",
            json!({"form_id":5,"event_happened_at":OLD,"event_type":"created"}).to_string(),
            Some("wrong_type"),
        ),
        (
            "k5",
            event("abcde", "yesterday at noon", "created").to_string(),
            Some("invalid_timestamp"),
        ),
        (
            "k6",
            event("gone", OLD, "created").to_string(),
            Some("form_not_found"),
        ),
        ("k7", event("gone", OLD, "deleted").to_string(), None),
        (
            "k8",
            event("other", OLD, "updated").to_string(),
            Some("invalid_api_response"),
        ),
        (
            "k9",
            event("broken", OLD, "updated").to_string(),
            Some("invalid_api_response"),
        ),
        (
            "k10",
            event("abcde", "2022-10-03T10:00:00Z", "updated").to_string(),
            None,
        ),
    ];
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for (k, v, reason) in &cases {
        let at = produce(
            &p,
            &t.input,
            Some(k.as_bytes()),
            v.as_bytes(),
            None,
            &[("trace", k)],
        )
        .await?;
        match reason {
            None => good.push(at),
            Some(r) => bad.push((at, *k, v.clone(), *r)),
        }
    }
    let mut src = start_source(
        &t,
        &SourceOptions::new(&api),
        &["--max-records", &cases.len().to_string()],
    )?;
    let status = src.process.wait_exit(Duration::from_secs(60)).await?;
    ensure!(
        status.success(),
        "exit {status}:\n{}",
        src.process.log_tail(30)
    );

    let out = consume_to_end(&t.output, Duration::from_secs(30)).await?;
    assert_exactly_once(&out, &positions(&good))?;
    let deleted = out
        .iter()
        .find(|r| r.key_str() == "gone")
        .context("deleted event enriched")?;
    assert_eq!(deleted.value_json()?["form"], Value::Null);

    let dlq = consume_to_end(&t.dlq, Duration::from_secs(30)).await?;
    ensure!(
        dlq.len() == bad.len(),
        "DLQ has {} records, want {}",
        dlq.len(),
        bad.len()
    );
    for ((pos, key, value, reason), r) in bad.iter().zip({
        let mut d = dlq.clone();
        d.sort_by_key(|r| {
            (
                r.header("dlq.source.partition"),
                r.header("dlq.source.offset")
                    .map(|o| o.parse::<i64>().unwrap_or(0)),
            )
        });
        d
    }) {
        let _ = r;
        let got = dlq
            .iter()
            .find(|r| {
                r.header("dlq.source.partition") == Some(pos.0.to_string())
                    && r.header("dlq.source.offset") == Some(pos.1.to_string())
            })
            .with_context(|| format!("no DLQ record for {key} at {pos:?}"))?;
        assert_eq!(
            got.header("dlq.reason").as_deref(),
            Some(*reason),
            "{key}: {:?}",
            got.header("dlq.detail")
        );
        assert_eq!(got.key_str(), *key);
        assert_eq!(got.value.as_deref(), Some(value.as_bytes()));
        assert_eq!(got.header("dlq.source.topic"), Some(t.input.clone()));
        assert_eq!(got.header("trace").as_deref(), Some(*key));
        ensure!(
            got.header("dlq.connector")
                .is_some_and(|c| c.starts_with("source-cfg"))
        );
        ensure!(got.header("dlq.detail").is_some_and(|d| !d.is_empty()));
    }
    let missing = dlq.iter().find(|r| r.key_str() == "k3").context("k3")?;
    ensure!(
        missing
            .header("dlq.detail")
            .unwrap_or_default()
            .contains("form_id"),
        "detail names the field"
    );
    Ok(())
}

/// 1,000 events for one form make one API call while the cache is fresh; an event that happened
/// after the cached retrieval makes a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_serves_fresh_forms_and_refetches_for_newer_events() -> Result<()> {
    require_cluster!(&[Service::Kafka]);
    let api = FormsApiServer::start(10, 7).await?;
    api.reset().await?;
    let t = SourceTopics::create("src-cache", 3).await?;
    let events: Vec<(String, Value)> = (0..1000)
        .map(|i| (format!("k{i}"), event("form-000003", OLD, "updated")))
        .collect();
    let mut pos = produce_json(&t.input, &events).await?;
    let mut src = start_source(&t, &SourceOptions::new(&api.api), &[])?;
    src.wait_metric_at_least(
        "kafka_source_committed_records_total",
        1000.0,
        Duration::from_secs(60),
    )
    .await?;
    let stats = forms_api_stats(&api.admin).await?;
    assert_eq!(stats["by_id"]["form-000003"], json!(1), "{stats}");

    let out = wait_records(&t.output, 1000, Duration::from_secs(30)).await?;
    let retrieved = out[0].value_json()?["retrieved_timestamp"]
        .as_str()
        .context("ts")?
        .to_owned();
    let retrieved = chrono::DateTime::parse_from_rfc3339(&retrieved)?.with_timezone(&chrono::Utc);
    // An event that happened after that retrieval (by the API's clock, second precision).
    let later = (retrieved + chrono::Duration::seconds(1)).to_rfc3339();
    wait_until(
        Duration::from_secs(5),
        "the clock passes the event time",
        || {
            let ok = chrono::Utc::now() > retrieved + chrono::Duration::seconds(1);
            async move { ok }
        },
    )
    .await?;
    pos.extend(
        produce_json(
            &t.input,
            &[("late".into(), event("form-000003", &later, "updated"))],
        )
        .await?,
    );
    src.wait_metric_at_least(
        "kafka_source_committed_records_total",
        1001.0,
        Duration::from_secs(30),
    )
    .await?;
    let stats = forms_api_stats(&api.admin).await?;
    assert_eq!(stats["by_id"]["form-000003"], json!(2), "{stats}");
    let hits = src
        .metric("enrich_cache_lookups_total")
        .await
        .unwrap_or(0.0);
    ensure!(hits >= 1001.0, "cache lookups {hits}");

    src.process.terminate()?;
    let st = src.process.wait_exit(Duration::from_secs(30)).await?;
    ensure!(st.success(), "exit {st}");
    let out = consume_to_end(&t.output, Duration::from_secs(30)).await?;
    assert_exactly_once(&out, &positions(&pos))?;
    assert_dlq_empty(&t).await
}

/// 10,000 events over 500 forms while the API answers 25% 500s, 5% hangs and is fully down for
/// 20 s mid-run: every event exactly once, DLQ empty, consumption paused during the outage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_faults_and_outage_exactly_once_and_paused() -> Result<()> {
    require_cluster!(&[Service::Kafka]);
    let api = FormsApiServer::start(500, 7).await?;
    api.set_faults(json!({"error_500_ratio": 0.25, "hang_ratio": 0.05}))
        .await?;
    let t = SourceTopics::create("src-faults", 3).await?;
    let first: Vec<(String, Value)> = (0..5000)
        .map(|i| {
            (
                format!("k{i}"),
                event(&format!("form-{:06}", i % 500), OLD, "updated"),
            )
        })
        .collect();
    let mut pos = produce_json(&t.input, &first).await?;
    let mut src = start_source(&t, &SourceOptions::new(&api.api), &[])?;
    src.wait_metric_at_least(
        "kafka_source_committed_records_total",
        5000.0,
        Duration::from_secs(120),
    )
    .await?;

    // Full outage; the second half happened after every cached retrieval, so each needs the API.
    api.set_faults(json!({"error_500_ratio": 0.25, "hang_ratio": 0.05, "outage": "refuse"}))
        .await?;
    let outage_start = Instant::now();
    let now = chrono::Utc::now() + chrono::Duration::seconds(1);
    wait_until(
        Duration::from_secs(5),
        "clock past the last retrieval",
        || {
            let ok = chrono::Utc::now() > now;
            async move { ok }
        },
    )
    .await?;
    let happened = now.to_rfc3339();
    let second: Vec<(String, Value)> = (0..5000)
        .map(|i| {
            (
                format!("k2-{i}"),
                event(&format!("form-{:06}", i % 500), &happened, "updated"),
            )
        })
        .collect();
    pos.extend(produce_json(&t.input, &second).await?);
    src.wait_metric_at_least("kafka_source_paused", 1.0, Duration::from_secs(15))
        .await?;
    let received_at_pause = src
        .metric("kafka_source_events_received_total")
        .await
        .context("metrics")?;
    let committed_at_pause = src
        .metric("kafka_source_committed_records_total")
        .await
        .context("metrics")?;
    // Hold the outage for 20 s, checking all along that nothing is consumed or committed.
    let mut checks = 0;
    wait_until(Duration::from_secs(30), "20 s of outage", || {
        checks += 1;
        let src = &src;
        async move {
            let r = src
                .metric("kafka_source_events_received_total")
                .await
                .unwrap_or(-1.0);
            let c = src
                .metric("kafka_source_committed_records_total")
                .await
                .unwrap_or(-1.0);
            let p = src.metric("kafka_source_paused").await.unwrap_or(-1.0);
            assert_eq!(
                (r, c, p),
                (received_at_pause, committed_at_pause, 1.0),
                "consumption moved during the outage"
            );
            outage_start.elapsed() >= Duration::from_secs(20)
        }
    })
    .await?;
    ensure!(checks > 10, "only {checks} checks during the outage");
    ensure!(
        received_at_pause < 10_000.0,
        "everything was consumed during the outage: {received_at_pause}"
    );
    let lag = src.metric("kafka_source_consumer_lag").await.unwrap_or(0.0);
    ensure!(lag > 0.0, "consumer lag {lag} during the outage");

    api.set_faults(json!({"error_500_ratio": 0.25, "hang_ratio": 0.05, "outage": "none"}))
        .await?;
    src.wait_metric_at_least(
        "kafka_source_committed_records_total",
        10_000.0,
        Duration::from_secs(120),
    )
    .await?;
    src.process.terminate()?;
    let st = src.process.wait_exit(Duration::from_secs(30)).await?;
    ensure!(st.success(), "exit {st}");
    let out = consume_to_end(&t.output, Duration::from_secs(60)).await?;
    assert_exactly_once(&out, &positions(&pos))?;
    assert_dlq_empty(&t).await
}

/// kill -9 mid-run, then a restart: every event exactly once (read_committed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_run_then_restart_exactly_once() -> Result<()> {
    require_cluster!(&[Service::Kafka]);
    let api = FormsApiServer::start(500, 7).await?;
    api.set_faults(json!({"latency_ms": 40})).await?;
    let t = SourceTopics::create("src-kill", 3).await?;
    let events: Vec<(String, Value)> = (0..4000)
        .map(|i| {
            (
                format!("k{i}"),
                event(&format!("form-{:06}", i % 500), OLD, "updated"),
            )
        })
        .collect();
    let pos = produce_json(&t.input, &events).await?;
    let mut opts = SourceOptions::new(&api.api);
    opts.cache_ttl = "1ms"; // every event calls the API: a slow run to kill in the middle
    opts.concurrency = 16;
    let mut src = start_source(&t, &opts, &[])?;
    src.wait_metric_at_least(
        "kafka_source_committed_records_total",
        800.0,
        Duration::from_secs(60),
    )
    .await?;
    src.process.kill().await?;
    let partial = consume_to_end(&t.output, Duration::from_secs(60))
        .await?
        .len();
    ensure!(
        partial < 4000,
        "the run finished before the kill ({partial})"
    );

    opts.concurrency = 256;
    let mut again = start_source(&t, &opts, &[])?;
    let out = wait_records(&t.output, 4000, Duration::from_secs(120)).await?;
    again.process.terminate()?;
    again.process.wait_exit(Duration::from_secs(30)).await?;
    let out = if out.len() >= 4000 {
        consume_to_end(&t.output, Duration::from_secs(60)).await?
    } else {
        out
    };
    assert_exactly_once(&out, &positions(&pos))?;
    assert_dlq_empty(&t).await
}

/// Two instances in one group over 6 partitions (the second joins mid-run): exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_one_group_exactly_once() -> Result<()> {
    require_cluster!(&[Service::Kafka]);
    let api = FormsApiServer::start(500, 7).await?;
    api.set_faults(json!({"latency_ms": 20})).await?;
    let t = SourceTopics::create("src-two", 6).await?;
    let events: Vec<(String, Value)> = (0..6000)
        .map(|i| {
            (
                format!("k{i}"),
                event(&format!("form-{:06}", i % 500), OLD, "updated"),
            )
        })
        .collect();
    let pos = produce_json(&t.input, &events).await?;
    let mut opts = SourceOptions::new(&api.api);
    opts.cache_ttl = "1ms";
    // 4 in flight at 20 ms: ~200 events/s per instance, so the first one is still far from
    // done when the second joins (a group rebalance takes a few seconds); at 32 in flight the
    // first instance finished the partitions the second was then assigned.
    opts.concurrency = 4;
    let mut a = start_source(&t, &opts, &[])?;
    a.wait_metric_at_least(
        "kafka_source_committed_records_total",
        500.0,
        Duration::from_secs(60),
    )
    .await?;
    let mut b = start_source(&t, &opts, &[])?;
    b.wait_metric_at_least(
        "kafka_source_committed_records_total",
        100.0,
        Duration::from_secs(90),
    )
    .await?;
    let out = wait_records(&t.output, 6000, Duration::from_secs(180)).await?;
    for s in [&a, &b] {
        s.process.terminate()?;
    }
    let sa = a.process.wait_exit(Duration::from_secs(30)).await?;
    let sb = b.process.wait_exit(Duration::from_secs(30)).await?;
    ensure!(sa.success() && sb.success(), "exit {sa} / {sb}");
    let out = if out.len() >= 6000 {
        consume_to_end(&t.output, Duration::from_secs(60)).await?
    } else {
        out
    };
    assert_exactly_once(&out, &positions(&pos))?;
    assert_dlq_empty(&t).await
}

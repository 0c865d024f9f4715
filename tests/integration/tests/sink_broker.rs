//! s3-sink when its broker goes away (review finding W1): a broker stopped (`kill -STOP`) for
//! longer than `commit.timeout` during the commits makes `commit_transaction` time out; the sink
//! must retry the same call (as librdkafka requires) rather than abort into a state where every
//! later transaction conflicts. Once the broker is back, the commits reach the end of the topic,
//! a SIGTERM ends the sink, and every row is in S3 once. Then the broker is restarted
//! (`kill -9`, started again): the sink rides it out without exiting.
//!
//! The broker is a private one of this test (private_cluster), so that stopping it disturbs no
//! other test; S3 is the local cluster's. One test in this file: it points the helpers at the
//! private broker through `FORM_ETL_KAFKA`.
//!
//! Needs `cargo build --release -p s3-sink`, `make build-smartmodules`, `make cluster-up`.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, Result};
use form_etl_tests::private_cluster::PrivateKafka;
use form_etl_tests::sink_support::*;

#[tokio::test(flavor = "multi_thread")]
async fn a_commit_that_times_out_while_the_broker_is_stopped_is_retried_not_wedged() -> Result<()> {
    if !cluster_available("a_commit_that_times_out") {
        return Ok(());
    }
    let dir = root().join("target/it").join(unique("broker"));
    let mut kafka = PrivateKafka::start(&dir.join("kafka"), free_port(), free_port()).await?;
    // SAFETY: the only test of this binary sets it before any thread reads it.
    unsafe { std::env::set_var("FORM_ETL_KAFKA", kafka.bootstrap()) };
    let topic = unique("broker-in");
    let dlq = unique("broker-dlq");
    kafka.create_topic(&topic, 1).await?;
    kafka.create_topic(&dlq, 1).await?;
    let setup = SinkSetup::new(
        "broker",
        &topic,
        &dlq,
        &s3_endpoint(),
        "output",
        "  max-records: 100\n  idle-flush: 1s\n",
    )?;
    // A session longer than the outage: this test is about the commits, not the group.
    let text = std::fs::read_to_string(&setup.config)?
        .replace(
            "commit: {interval: 200ms}",
            "commit: {interval: 200ms, timeout: 3s}",
        )
        .replace("session.timeout.ms: '10000'", "session.timeout.ms: '45000'");
    std::fs::write(&setup.config, text)?;
    let records = |from: usize, n: usize| -> Vec<(i32, String, Vec<u8>)> {
        (from..from + n)
            .map(|i| {
                let id = format!("bk-{i:06}");
                (0, id.clone(), enriched(&id, 1, 2, i as i64))
            })
            .collect()
    };
    produce(&topic, &records(0, 500)).await?;
    let mut sink = setup.spawn(&[])?;
    let res = async {
        wait_committed(&setup, 1, Duration::from_secs(60))
            .await
            .with_context(|| setup.log())?;
        // More records, then the broker stops while their segments are being recorded.
        produce(&topic, &records(500, 500)).await?;
        kafka.stop()?;
        // Five commit timeouts: the scenario, not a wait for a condition.
        tokio::time::sleep(Duration::from_secs(15)).await;
        kafka.cont()?;
        wait_committed(&setup, 1, Duration::from_secs(90))
            .await
            .with_context(|| setup.log())?;
        let log = setup.log();
        anyhow::ensure!(
            !log.contains("Conflicting commit_transaction"),
            "the sink aborted into a conflicting state:\n{log}"
        );
        // Then a broker restart (kill -9, started again on its port and directory) with records
        // to commit: the sink must ride it out in the same process. (Its static membership can
        // be fenced by its own group.instance.id once the coordinator is back; the sink then
        // starts again in place, `reexec_after_fencing`.)
        produce(&topic, &records(1000, 500)).await?;
        kafka.restart().await?;
        wait_committed(&setup, 1, Duration::from_secs(120))
            .await
            .with_context(|| setup.log())?;
        anyhow::ensure!(
            sink.try_wait()?.is_none(),
            "the sink exited after the broker restart:\n{}",
            setup.log()
        );
        let status = terminate(&mut sink, Duration::from_secs(30))?;
        anyhow::ensure!(status.success(), "exit status {status}:\n{}", setup.log());
        let s3 = setup.s3().await;
        let files = download_all(
            &s3,
            &setup.bucket,
            &format!("{}/form", setup.prefix),
            &setup.dir.join("download"),
        )
        .await?;
        let rows = read_with_fastavro(&files)?;
        let ids: Vec<&str> = rows.iter().filter_map(|r| r["id"].as_str()).collect();
        let distinct: BTreeSet<&str> = ids.iter().copied().collect();
        anyhow::ensure!(
            ids.len() == 1500 && distinct.len() == 1500,
            "{} rows, {} distinct",
            ids.len(),
            distinct.len()
        );
        Ok(())
    }
    .await;
    let _ = kafka.cont();
    let _ = sink.kill();
    let _ = sink.wait();
    res
}

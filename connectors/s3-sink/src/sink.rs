//! The sink's main loop: consume `form.enriched`, feed the pipeline thread, run uploads and
//! commits, follow rebalances, drain on shutdown.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use connector_common::Shutdown;
use connector_common::eos::TxnProducer;
use connector_common::kafka::{
    CLOSE_TIMEOUT, ConsumerErrorAction, close_consumer, consumer_error_action,
};
use connector_common::telemetry::Health;
use futures::FutureExt;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::ThreadedProducer;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::commit::{Assigned, CommitResult, Committer, Manager, RunningCommit};
use crate::committer::{CommitPlan, KafkaCommitter, PlannedPartition, TRANSACTION_TIMEOUT};
use crate::config::{OutputConfig, SinkConfig};
use crate::iceberg_committer::{GroupAhead, IcebergCommitter};
use crate::lake::Lake;
use crate::pipeline::{Cmd, DataKeys, InFlightBudget, InRecord, Pipeline, PipelineSettings};
use crate::schemas::{Evolver, Registry};
use crate::tables::Table;
use crate::tracker::Wanted;
use crate::transform::Transform;
use crate::uploads::{Fence, UploadCtx, Uploads};

/// Records handed to the pipeline in one command (amortises the SmartModule call).
const BATCH_MAX: usize = 1000;
/// Input bytes (keys and values) in one command. A batch's memory is several times its input
/// (the engine's copies in and out, the module's JSON output, encoded rows; two SmartModule
/// instances keep their linear memory's high-water mark) and up to `CMD_CAPACITY + 2` batches
/// are alive at once. Peak RSS with 3.4 KiB records and 64 MiB files (`tests/sink_memory.rs`):
/// 1 MiB batches 203–213 MiB, 256 KiB 157–169 MiB, at the same CPU time. 256 KiB is still
/// ~170 records of the usual 1.5 KiB, and keeps the engine's per-batch buffers below the
/// 1 MiB mmap threshold set in `main.rs`.
const BATCH_MAX_BYTES: usize = 256 << 10;
/// Commands queued for the pipeline thread: at most 48 batches of `BATCH_MAX_BYTES` (12 MiB of
/// input). It was sized when the loop stopped feeding the pipeline while it awaited each commit
/// (100–200 ms every `commit.interval`): with 4 the pipeline starved (`make bench` sink stage,
/// 300k records: 4 → 11.3k/s, 16 → 13.1k/s, 48 → 16.7–17.2k/s at the same CPU time). Commits
/// now run beside the loop; the queue still absorbs an upload or a rebalance pause.
const CMD_CAPACITY: usize = 48;
/// Batches the loop holds beyond the pipeline's queue before it pauses the consumer (which it
/// keeps polling, so rebalances are served and the member stays in the group while S3 stalls).
const PENDING_PAUSE_AT: usize = 2;
/// How long the pipeline must stay behind before the consumer is paused: meanwhile the loop
/// only stops taking records. Pausing purges librdkafka's prefetched records of the partitions
/// (they are fetched again on resume), so pausing whenever the transform is briefly behind
/// (all the time at full speed) cost three quarters of the throughput (8.5k against 35k
/// events/s in `form-etl-bench --stages sink`). Far below `max.poll.interval.ms`.
const PAUSE_AFTER: Duration = Duration::from_secs(1);
/// Events queued from the pipeline thread (parts carry their own memory budget).
const EVENT_CAPACITY: usize = 1024;
/// Wall-clock tick: idle flushes, commits, gauges, drain progress.
const TICK: Duration = Duration::from_millis(100);
/// How long the loop waits for the consumer while paused (it polls to serve rebalances).
const PAUSED_POLL: Duration = Duration::from_millis(100);
/// librdkafka prefetches up to `queued.max.messages.kbytes` (default 64 MiB; for a subscribed
/// consumer one queue for all its partitions, since their fetch queues forward to it) and may
/// overshoot it by one fetch response. Defaults of ours unless `kafka.properties` sets them.
const QUEUED_MAX_KBYTES: &str = "16384";
/// One fetch response (default 50 MiB: with many partitions, each up to
/// `max.partition.fetch.bytes`, one response alone could be 50 MiB). Must stay at least
/// `message.max.bytes` (default 1000000); librdkafka still returns a larger record whole.
const FETCH_MAX_BYTES: &str = "8388608";
/// How long librdkafka waits before fetching again once that queue was full (default 1 s).
/// With the smaller queue above, the default emptied the queue and starved the pipeline for
/// up to a second at a time: the sink stayed at ~19k records/s whatever its CPU cost.
const FETCH_QUEUE_BACKOFF_MS: &str = "10";
/// A static member's session (librdkafka's default is 45 s): a restarted sink takes its old
/// place at once whatever this is; a sink that does not come back gives its partitions up after
/// it. 15 s: a few heartbeats (3 s) lost to a busy machine are not a departure.
const SESSION_TIMEOUT_MS: &str = "15000";
/// How long the committed offsets of newly assigned partitions are waited for per attempt (a
/// transaction another instance left open keeps them pending until it ends).
const COMMITTED_FETCH_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
enum RebalanceEvent {
    Assign(Vec<(i32, u64)>),
    Revoke(Vec<i32>),
}

/// The consumer's context: on a revoke it waits for a running commit and takes the partitions
/// out of the fence before librdkafka hands them over (so nothing of theirs is committed or made
/// visible afterwards); on an assign it gives them a new epoch. The main loop then applies the
/// events in order with the records.
pub(crate) struct SinkContext {
    events: Mutex<Vec<RebalanceEvent>>,
    fence: Arc<Fence>,
    committer: Arc<KafkaCommitter>,
    epochs: AtomicU64,
}

impl std::fmt::Debug for SinkContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinkContext").finish_non_exhaustive()
    }
}

impl ClientContext for SinkContext {}

impl ConsumerContext for SinkContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let ps: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
            {
                // Waits for a running commit: its offsets land before the hand-over.
                let _commit = self.committer.txn.lock();
                for p in &ps {
                    self.fence.revoke(*p);
                }
            }
            self.events
                .lock()
                .expect("rebalance lock")
                .push(RebalanceEvent::Revoke(ps));
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let ps: Vec<(i32, u64)> = tpl
                .elements()
                .iter()
                .map(|e| {
                    let epoch = self.epochs.fetch_add(1, Ordering::SeqCst) + 1;
                    self.fence.assign(e.partition(), epoch);
                    (e.partition(), epoch)
                })
                .collect();
            self.events
                .lock()
                .expect("rebalance lock")
                .push(RebalanceEvent::Assign(ps));
        }
    }
}

impl SinkContext {
    fn has_events(&self) -> bool {
        !self.events.lock().expect("rebalance lock").is_empty()
    }
}

/// Options from the command line.
#[derive(Debug, Clone)]
pub(crate) struct RunOptions {
    pub(crate) max_records: Option<u64>,
    /// This instance's stable id (`connector_common::instance`).
    pub(crate) instance_id: String,
    /// `--state-dir` (the embedded Iceberg catalog lives there).
    pub(crate) state_dir: std::path::PathBuf,
}

/// Counters shared with the progress line.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    pub(crate) records_in: AtomicU64,
}

/// Runs the sink until shutdown (or `--max-records`), then drains and commits.
pub(crate) async fn run(
    cfg: SinkConfig,
    opts: RunOptions,
    transform: Box<dyn Transform>,
    shutdown: Shutdown,
    health: Health,
    progress: Arc<Progress>,
) -> anyhow::Result<()> {
    let topic = cfg.kafka.topic.clone();
    let store = cfg.s3.store().await;
    if cfg.s3.create_bucket || cfg.s3.is_local() {
        store
            .ensure_bucket()
            .await
            .context("creating the output bucket")?;
    }
    // S3 first, Kafka next: a sink that cannot read its schema versions (a wrong key, no
    // bucket) ends before it joins the group (a consumer dropped while its assignment waits
    // to be served can block its close).
    let registry = Registry::new(store.clone(), &cfg.s3.prefix, cfg.s3.retry.clone());
    let evolver = Evolver::open(registry, cfg.schema.policy())
        .await
        .context("loading the tables' schema versions")?;
    // Iceberg: the catalog and the tables before Kafka too.
    let lake = match &cfg.output {
        OutputConfig::Iceberg(ic) => {
            let catalog = crate::lake::open_catalog(ic, &cfg.s3, &opts.state_dir).await?;
            let current = evolver.current();
            let lake = Lake::open(
                catalog,
                ic,
                [
                    current.get(Table::Form.into()).clone(),
                    current.get(Table::FormField.into()).clone(),
                ],
                i32::from(cfg.s3.zstd_level.0),
                cfg.group(),
                &topic,
            )
            .await?;
            Some((Arc::new(lake), ic.commit_interval))
        }
        OutputConfig::Files { .. } => None,
    };

    let mut pc = cfg.kafka.client_config();
    let transactional_id = cfg.transactional_id(&opts.instance_id);
    pc.set("transactional.id", &transactional_id)
        .set("enable.idempotence", "true");
    if pc.get("transaction.timeout.ms").is_none() {
        pc.set(
            "transaction.timeout.ms",
            TRANSACTION_TIMEOUT.as_millis().to_string(),
        );
    }
    for k in [
        "group.instance.id",
        "session.timeout.ms",
        "heartbeat.interval.ms",
        "max.poll.interval.ms",
        "isolation.level",
        "auto.offset.reset",
    ] {
        pc.remove(k);
    }
    let producer: ThreadedProducer<_> = pc
        .create()
        .context("creating the Kafka producer (dead letters, commits)")?;
    let txn = TxnProducer::new(producer, cfg.commit.timeout);
    let txn = tokio::task::spawn_blocking(move || txn.init().map(|()| txn))
        .await?
        .context("initialising Kafka transactions")?;
    let fence = Arc::new(Fence::default());
    let committer = Arc::new(KafkaCommitter {
        txn,
        topic: topic.clone(),
        dlq_topic: cfg.dlq.topic.clone(),
        connector: cfg.meta.name.clone(),
        fence: fence.clone(),
    });

    let mut cc = cfg.kafka.client_config();
    cc.set("group.id", cfg.group())
        .set(
            "group.instance.id",
            cfg.group_instance_id(&opts.instance_id),
        )
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest");
    for (k, v) in [
        ("session.timeout.ms", SESSION_TIMEOUT_MS),
        ("queued.max.messages.kbytes", QUEUED_MAX_KBYTES),
        ("fetch.max.bytes", FETCH_MAX_BYTES),
        ("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS),
    ] {
        if cc.get(k).is_none() {
            cc.set(k, v);
        }
    }
    if let Some(c) = &cfg.meta.consumer
        && let Some(b) = c.max_bytes
    {
        cc.set("max.partition.fetch.bytes", b.as_u64().to_string());
    }
    let context = SinkContext {
        events: Mutex::new(Vec::new()),
        fence: fence.clone(),
        committer: committer.clone(),
        epochs: AtomicU64::new(0),
    };
    let consumer: Arc<StreamConsumer<SinkContext>> = Arc::new(
        cc.create_with_context(context)
            .context("creating the Kafka consumer")?,
    );
    consumer.subscribe(&[&topic]).context("subscribing")?;

    let (open_budget, inflight_budget) =
        split_budget(cfg.s3.memory_budget.as_u64(), cfg.s3.part_size.as_u64());
    let inflight = InFlightBudget::new(inflight_budget);
    let settings = PipelineSettings {
        topic: topic.clone(),
        prefix: cfg.s3.prefix.clone(),
        policy: cfg.s3.rolling(),
        idle_flush: cfg.s3.idle_flush,
        open_budget,
        part_size: cfg.s3.part_size.as_u64() as usize,
        format: match &lake {
            Some((l, _)) => l.format(),
            None => cfg.file_format(),
        },
        data_keys: lake.as_ref().map(|(l, _)| DataKeys {
            tables: l.data_prefixes(),
            run: uuid::Uuid::new_v4().simple().to_string()[..8].to_owned(),
        }),
    };
    let (cmd_tx, cmd_rx) = mpsc::channel(CMD_CAPACITY);
    let (ev_tx, mut ev_rx) = mpsc::channel(EVENT_CAPACITY);
    let pipeline = Pipeline::new(settings, transform, evolver, ev_tx, inflight.clone());
    let pipeline_thread = std::thread::Builder::new()
        .name("pipeline".into())
        .spawn(move || pipeline.run(cmd_rx))
        .context("starting the pipeline thread")?;

    let (done_tx, done_rx) = mpsc::unbounded_channel();
    let store = match &lake {
        // The tables' bucket (a REST catalog's warehouse may be another than `s3.bucket`).
        Some((l, _)) if l.bucket != cfg.s3.bucket => {
            let mut s3 = cfg.s3.clone();
            s3.bucket = l.bucket.clone();
            s3.store().await
        }
        _ => store,
    };
    let ctx = Arc::new(UploadCtx {
        store,
        retry: cfg.s3.retry.clone(),
        fence: fence.clone(),
        done: done_tx,
    });
    let mut manager: Box<dyn Committer> = match lake {
        Some((lake, interval)) => Box::new(IcebergCommitter::new(
            lake,
            committer.clone(),
            fence.clone(),
            Uploads::new(ctx, done_rx),
            interval,
        )),
        None => Box::new(Manager::new(
            ctx,
            done_rx,
            committer.clone(),
            topic.clone(),
            cfg.s3.prefix.clone(),
            cfg.file_format().extension(),
            cfg.commit.interval,
        )),
    };
    let mut pending: VecDeque<Cmd> = VecDeque::new();
    let mut forwarded = 0u64;
    // Per partition, the offset after the last record handed to the pipeline.
    let mut forwarded_upto: std::collections::HashMap<i32, i64> = std::collections::HashMap::new();
    let mut draining = false;
    let mut drain_deadline: Option<tokio::time::Instant> = None;
    let mut paused = false;
    // Since when the pipeline has been behind (pending over PENDING_PAUSE_AT).
    let mut behind_since: Option<Instant> = None;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_commit = Instant::now();
    // A flush (Iceberg: close the open files) was asked for this interval's commit.
    let mut flushed = false;
    // The commit running on a blocking thread, if any: the loop keeps consuming meanwhile.
    let mut running: Option<RunningCommit> = None;
    let mut last_idle_tick = Instant::now();
    health.set_ready(true);
    info!(%topic, group = cfg.group(), %transactional_id, group_instance_id = %cfg.group_instance_id(&opts.instance_id), "Sink running.");

    let rebalance = |pending: &mut VecDeque<Cmd>,
                     manager: &mut dyn Committer|
     -> anyhow::Result<()> {
        let events: Vec<RebalanceEvent> =
            std::mem::take(&mut *consumer.context().events.lock().expect("rebalance lock"));
        for ev in events {
            match ev {
                RebalanceEvent::Revoke(ps) => {
                    info!(partitions = ?ps, "Partitions revoked: their open files are dropped, nothing more of theirs is committed or made visible.");
                    metrics::counter!("s3_sink_rebalances_total", "kind" => "revoke").increment(1);
                    for p in ps {
                        manager.revoke(p);
                        pending.push_back(Cmd::Revoke { partition: p });
                    }
                }
                RebalanceEvent::Assign(ps) => {
                    metrics::counter!("s3_sink_rebalances_total", "kind" => "assign").increment(1);
                    let committed = committed_offsets(&consumer, &topic, &ps)?;
                    let assigned: Vec<Assigned> = ps
                        .into_iter()
                        .map(|(partition, epoch)| {
                            let (committed, metadata) = committed
                                .iter()
                                .find(|c| c.0 == partition)
                                .map(|c| (c.1, c.2.clone()))
                                .unwrap_or((None, String::new()));
                            Assigned {
                                partition,
                                epoch,
                                committed,
                                metadata,
                            }
                        })
                        .collect();
                    let epochs: Vec<(i32, u64)> =
                        assigned.iter().map(|a| (a.partition, a.epoch)).collect();
                    match manager.assign(assigned) {
                        Ok(cmds) => pending.extend(cmds),
                        Err(e) => match e.downcast::<GroupAhead>() {
                            Ok(ahead) => {
                                rewind_group(&consumer, &committer, &topic, &epochs, &ahead)?;
                                return Err(Restart(format!(
                                    "{ahead}; the group's offsets were rewound to the tables'"
                                ))
                                .into());
                            }
                            Err(e) => return Err(e),
                        },
                    }
                }
            }
        }
        Ok(())
    };

    let result: anyhow::Result<()> = loop {
        if let Some(failure) = manager.take_failure() {
            health.set_problem(Some(format!("S3: {failure}")));
            break Err(anyhow::anyhow!(
                "an upload failed for good: {failure}; stopping without committing its range (the next run replays it)"
            ));
        }
        // Backpressure: the pipeline is behind (S3 stalls, or the transform is slower than
        // Kafka). Pause the consumer rather than stop polling it.
        let behind = pending.len() > PENDING_PAUSE_AT;
        if behind {
            behind_since.get_or_insert_with(Instant::now);
        } else {
            behind_since = None;
        }
        let want_pause = draining
            || behind_since.is_some_and(|t| t.elapsed() >= PAUSE_AFTER)
            || (paused && behind);
        if want_pause != paused {
            if let Err(e) = set_paused(&consumer, want_pause) {
                warn!(error = %e, "Could not pause or resume the consumer.");
            } else {
                paused = want_pause;
                metrics::gauge!("s3_sink_consumer_paused").set(f64::from(u8::from(paused)));
            }
        }
        tokio::select! {
            biased;
            Some(ev) = ev_rx.recv() => {
                manager.on_event(ev);
                if running.is_none() && manager.commit_now() {
                    running = start_commit(manager.as_mut(), &consumer);
                    last_commit = Instant::now();
                }
            }
            Some(done) = manager.done_rx().recv() => manager.on_done(done),
            result = commit_result(&mut running) => {
                let finished = running.take().expect("a commit was running");
                if let Err(e) = manager.finish_commit(finished, result) {
                    health.set_problem(Some(format!("Kafka: {e}")));
                    break Err(e.into());
                }
            }
            permit = cmd_tx.reserve(), if !pending.is_empty() => {
                match permit {
                    Ok(permit) => permit.send(pending.pop_front().expect("non-empty")),
                    Err(_) => break Err(anyhow::anyhow!("the pipeline thread stopped")),
                }
            }
            _ = shutdown.wait(), if !draining => {
                info!("Draining: closing open files, uploading, committing.");
                draining = true;
                drain_deadline = Some(tokio::time::Instant::now() + cfg.commit.drain_timeout);
                if let Err(e) = rebalance(&mut pending, manager.as_mut()) { break Err(e); }
                pending.push_back(Cmd::Drain);
            }
            _ = sleep_until_opt(drain_deadline), if drain_deadline.is_some() => {
                manager.log_unfinished();
                break Err(anyhow::anyhow!(
                    "the drain did not finish within `commit.drain-timeout` ({:?}): exiting without committing what is not durable (the next run replays it)",
                    cfg.commit.drain_timeout
                ));
            }
            _ = tick.tick() => {
                if let Err(e) = rebalance(&mut pending, manager.as_mut()) { break Err(e); }
                if !draining && pending.is_empty() && last_idle_tick.elapsed() >= Duration::from_secs(1) {
                    pending.push_back(Cmd::Tick);
                    last_idle_tick = Instant::now();
                    // Transaction markers after the last record: commit past them too.
                    if let Ok(positions) = consumer.position() {
                        for e in positions.elements_for_topic(&topic) {
                            if let Offset::Offset(o) = e.offset() {
                                let p = e.partition();
                                manager.advance_to_position(p, o, forwarded_upto.get(&p).copied());
                            }
                        }
                    }
                }
                let due = last_commit.elapsed() >= manager.interval();
                if due && manager.flush_before_commit() && !flushed && !draining {
                    // Only closed files commit: close them now, commit once they are durable.
                    pending.push_back(Cmd::Flush);
                    flushed = true;
                }
                if running.is_none() && (manager.commit_now() || due || draining) {
                    running = start_commit(manager.as_mut(), &consumer);
                    last_commit = Instant::now();
                    flushed = false;
                }
                metrics::gauge!("s3_sink_oldest_pending_record_age_seconds").set(manager.oldest_pending_age());
                metrics::gauge!("s3_sink_inflight_bytes").set(inflight.used() as f64);
                if draining && manager.drained() && pending.is_empty() && running.is_none() && manager.quiescent() {
                    break Ok(());
                }
            }
            // Not taking records while behind (until the pause, which polls again).
            msg = recv_or_wait(&consumer, paused), if paused || !behind => {
                let Some(msg) = msg else { continue };
                if draining {
                    // Not forwarded: the drain closed the open segments already. Left uncommitted
                    // for the next run (the consumer is paused, so few arrive).
                    continue;
                }
                // Copied once, straight from librdkafka's buffer (not detached first).
                let first = match msg {
                    Ok(m) => to_record(&m),
                    Err(e) => match consumer_error_action(&e) {
                        ConsumerErrorAction::Ignore => continue,
                        ConsumerErrorAction::Warn => {
                            warn!(error = %e, "Kafka consumer error (retried by the client).");
                            metrics::counter!("component_errors_total", "error_type" => "consumer", "stage" => "receiving").increment(1);
                            continue;
                        }
                        ConsumerErrorAction::Fatal => {
                            health.set_problem(Some(format!("Kafka consumer: {e}")));
                            break Err(anyhow::Error::new(e).context(
                                "fatal Kafka consumer error; exiting without committing what is not durable (a restart resumes)",
                            ));
                        }
                    },
                };
                // Rebalances seen while polling come before this record.
                if let Err(e) = rebalance(&mut pending, manager.as_mut()) { break Err(e); }
                let limit = opts.max_records.map_or(BATCH_MAX as u64, |m| (m - forwarded).min(BATCH_MAX as u64)) as usize;
                let mut batch = vec![first];
                let mut batch_bytes = batch[0].input_bytes();
                let mut failed = None;
                while batch.len() < limit && batch_bytes < BATCH_MAX_BYTES {
                    match consumer.recv().now_or_never() {
                        Some(Ok(m)) => {
                            let r = to_record(&m);
                            drop(m);
                            if consumer.context().has_events() {
                                for r in &batch {
                                    let e = forwarded_upto.entry(r.partition).or_insert(0);
                                    *e = (*e).max(r.offset + 1);
                                }
                                pending.push_back(Cmd::Batch(std::mem::take(&mut batch)));
                                if let Err(e) = rebalance(&mut pending, manager.as_mut()) {
                                    failed = Some(e);
                                    break;
                                }
                            }
                            batch_bytes += r.input_bytes();
                            batch.push(r);
                        }
                        Some(Err(e)) => {
                            if consumer_error_action(&e) == ConsumerErrorAction::Fatal {
                                failed = Some(
                                    anyhow::Error::new(e).context("fatal Kafka consumer error"),
                                );
                            } else {
                                warn!(error = %e, "Kafka consumer error (retried by the client).");
                            }
                            break;
                        }
                        None => break,
                    }
                }
                if let Some(e) = failed {
                    break Err(e);
                }
                forwarded += batch.len() as u64;
                for r in &batch {
                    let e = forwarded_upto.entry(r.partition).or_insert(0);
                    *e = (*e).max(r.offset + 1);
                }
                progress.records_in.fetch_add(batch.len() as u64, Ordering::Relaxed);
                pending.push_back(Cmd::Batch(batch));
                if opts.max_records.is_some_and(|m| forwarded >= m) {
                    info!(records = forwarded, "--max-records reached: draining.");
                    draining = true;
                    drain_deadline = Some(tokio::time::Instant::now() + cfg.commit.drain_timeout);
                    pending.push_back(Cmd::Drain);
                }
            }
        }
    };
    health.set_ready(false);
    if result.is_ok() {
        info!(committed = %manager.committed_summary(), files = manager.files_uploaded(), "Drained: every file is uploaded and every offset committed.");
    }
    drop(cmd_tx);
    let pipeline_result = if result.is_ok() {
        match pipeline_thread.join() {
            Ok(r) => r,
            Err(p) => std::panic::resume_unwind(p),
        }
    } else {
        // The pipeline may be blocked on the upload budget: it is not waited for.
        Ok(())
    };
    drop(manager);
    // A SIGTERM during the group join can make librdkafka's close wait for good (see
    // `close_consumer`); everything is uploaded and committed by now.
    if !close_consumer(consumer, CLOSE_TIMEOUT) {
        warn!(
            timeout = ?CLOSE_TIMEOUT,
            "The Kafka consumer did not leave the group in time (a rebalance was in progress); \
             exiting anyway: the broker expires this member after its session timeout."
        );
    }
    result.and(pipeline_result)
}

/// The sink must start again in a new process (`main` re-execs it): what it resumes from
/// changed under it.
#[derive(Debug, thiserror::Error)]
#[error("{0}: starting again")]
pub(crate) struct Restart(pub(crate) String);

/// Commits the group's offsets back to the Iceberg tables' (the topic's first offset where a
/// table has nothing of a partition), so that the next start reads what the tables lack.
fn rewind_group(
    consumer: &StreamConsumer<SinkContext>,
    committer: &KafkaCommitter,
    topic: &str,
    epochs: &[(i32, u64)],
    ahead: &GroupAhead,
) -> anyhow::Result<()> {
    let group = consumer
        .group_metadata()
        .context("no consumer group metadata to rewind the group with")?;
    let mut partitions = Vec::new();
    for (p, g, table) in &ahead.0 {
        let to = match table {
            Some(t) => *t,
            None => {
                tokio::task::block_in_place(|| {
                    consumer.fetch_watermarks(topic, *p, Duration::from_secs(10))
                })
                .with_context(|| format!("reading the first offset of partition {p}"))?
                .0
            }
        };
        warn!(partition = p, group_offset = g, table_offset = ?table, rewound_to = to, "The group's offset is ahead of the Iceberg tables: rewinding it to them (the tables are the truth).");
        let epoch = epochs
            .iter()
            .find(|e| e.0 == *p)
            .map(|e| e.1)
            .context("an assigned partition")?;
        partitions.push(PlannedPartition {
            partition: *p,
            epoch,
            wanted: Wanted {
                offset: to,
                chain: Vec::new(),
            },
        });
    }
    let plan = CommitPlan {
        group,
        partitions,
        letters: Vec::new(),
    };
    tokio::task::block_in_place(|| committer.commit(&plan))?;
    Ok(())
}

/// Starts a commit with the consumer's group metadata of now (this assignment's generation).
fn start_commit(
    manager: &mut dyn Committer,
    consumer: &StreamConsumer<SinkContext>,
) -> Option<RunningCommit> {
    let Some(group) = consumer.group_metadata() else {
        warn!("No consumer group metadata yet: the commit waits.");
        return None;
    };
    manager.start_commit(group)
}

/// The result of the running commit; never ready when none runs.
async fn commit_result(running: &mut Option<RunningCommit>) -> CommitResult {
    match running {
        Some(r) => (&mut r.task).await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// The next message, or, while paused, `None` after a short wait (librdkafka serves
/// rebalances and errors inside the poll, so a paused consumer is still polled).
async fn recv_or_wait(
    consumer: &StreamConsumer<SinkContext>,
    paused: bool,
) -> Option<Result<rdkafka::message::BorrowedMessage<'_>, rdkafka::error::KafkaError>> {
    if !paused {
        return Some(consumer.recv().await);
    }
    tokio::time::timeout(PAUSED_POLL, consumer.recv())
        .await
        .ok()
}

fn set_paused(consumer: &StreamConsumer<SinkContext>, pause: bool) -> anyhow::Result<()> {
    let assignment = consumer.assignment().context("reading the assignment")?;
    if assignment.count() == 0 {
        return Ok(());
    }
    if pause {
        consumer.pause(&assignment).context("pausing")?;
    } else {
        consumer.resume(&assignment).context("resuming")?;
    }
    Ok(())
}

/// `(partition, committed offset, metadata)` of newly assigned partitions. A `read_committed`
/// fetch waits while another instance's transaction holds pending offsets for them; it is
/// retried (with a warning) until it answers, never ended.
fn committed_offsets(
    consumer: &StreamConsumer<SinkContext>,
    topic: &str,
    partitions: &[(i32, u64)],
) -> anyhow::Result<Vec<(i32, Option<i64>, String)>> {
    let mut tpl = TopicPartitionList::new();
    for (p, _) in partitions {
        tpl.add_partition(topic, *p);
    }
    let mut attempt = 0u32;
    let got = loop {
        attempt += 1;
        match tokio::task::block_in_place(|| {
            consumer.committed_offsets(tpl.clone(), COMMITTED_FETCH_TIMEOUT)
        }) {
            Ok(got) => break got,
            Err(e) => {
                warn!(attempt, error = %e, "Reading the committed offsets of the assigned partitions failed (another instance's transaction may still hold them); retrying.");
                metrics::counter!("component_errors_total", "error_type" => "committed_offsets", "stage" => "receiving").increment(1);
            }
        }
    };
    Ok(partitions
        .iter()
        .map(|(p, _)| {
            let e = got.find_partition(topic, *p);
            let offset = e.as_ref().and_then(|e| match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            });
            let metadata = e.map(|e| e.metadata().to_owned()).unwrap_or_default();
            (*p, offset, metadata)
        })
        .collect())
}

/// `memory-budget` split into (open files, uploads in flight). Uploads need a few parts at once
/// (a closing file hands over its held-back first part and its last part together); the open
/// files need the rest. Each open file holds up to two parts, counted by capacity (a full first
/// part is a 16 MiB allocation with 8 MiB parts), and every partition keeps a file per table
/// open: with 64 MiB files and 8 MiB parts one partition counted 24.5 MiB, so half of 128 MiB
/// flushed 3 partitions early (52–64 MiB files) while three quarters holds them. Over budget,
/// the largest partition is flushed: smaller files, memory still bounded.
/// 128 MiB with 8 MiB parts: 96 MiB for open files, 32 MiB (four parts) in flight.
fn split_budget(budget: u64, part_size: u64) -> (usize, usize) {
    let inflight = (budget / 4).max(2 * part_size).min(budget / 2);
    ((budget - inflight) as usize, inflight as usize)
}

fn to_record(m: &impl Message) -> InRecord {
    InRecord {
        partition: m.partition(),
        offset: m.offset(),
        timestamp_ms: m.timestamp().to_millis(),
        key: m.key().map(<[u8]>::to_vec),
        value: m.payload().map(<[u8]>::to_vec),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn budget_split_leaves_most_to_open_files_and_a_few_parts_in_flight() {
        assert_eq!(
            split_budget(128 * MIB, 8 * MIB),
            ((96 * MIB) as usize, (32 * MIB) as usize)
        );
        // The smallest budget config.rs accepts (4 parts): two parts each.
        assert_eq!(
            split_budget(32 * MIB, 8 * MIB),
            ((16 * MIB) as usize, (16 * MIB) as usize)
        );
        // Never more than half in flight, never less than two parts.
        assert_eq!(
            split_budget(20 * MIB, 5 * MIB),
            ((10 * MIB) as usize, (10 * MIB) as usize)
        );
        assert_eq!(
            split_budget(1024 * MIB, 8 * MIB),
            ((768 * MIB) as usize, (256 * MIB) as usize)
        );
    }
}

//! The read-process-write loop: consume `form.events`, enrich in order with bounded
//! concurrency, produce to `form.enriched` / the DLQ and commit the consumed offsets in the
//! same Kafka transaction (EOS v2, KIP-447).
//!
//! One task owns the consumer and the producer. Rebalance callbacks run inside
//! `consumer.recv()` (librdkafka serves them from the poll call), i.e. in this task between
//! two steps of the loop: on a revoke the callback aborts the open transaction and bumps the
//! epoch; the loop then drops every in-flight or pending result of the old epoch, so work for
//! revoked partitions is neither committed twice nor lost (the next owner resumes from the
//! committed offset). The group protocol is eager (config refuses cooperative strategies), so
//! a revoke always covers every partition and nothing needs rewinding.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use connector_common::Shutdown;
use connector_common::dlq::{DlqInfo, DlqReason};
use connector_common::retry::{ErrorClass, classify_kafka};
use connector_common::telemetry::{Health, RateCounter};
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use metrics::{counter, gauge};
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::statistics::Statistics;
use rdkafka::{Offset, TopicPartitionList};
use tracing::{debug, error, info, warn};

use crate::config::SourceConfig;
use crate::enrich::{Answer, Enricher, Fetched};

/// Timeout of blocking transaction calls (commit, abort, send offsets).
const TXN_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Counters shared with the progress line.
#[derive(Debug, Default)]
pub struct Stats {
    /// Records consumed.
    pub received: RateCounter,
    /// Records whose output was committed (enriched + dead-lettered).
    pub committed: RateCounter,
    /// Enriched records committed.
    pub enriched: AtomicU64,
    /// Dead-lettered records committed.
    pub dead_lettered: AtomicU64,
    /// Events waiting for enrichment.
    pub in_flight: AtomicI64,
    /// Consumer lag (from librdkafka statistics).
    pub lag: AtomicI64,
    /// Whether consumption is paused (API backpressure).
    pub paused: AtomicBool,
}

/// The consumer context: aborts the open transaction on revoke, reports lag.
struct Ctx {
    producer: Arc<FutureProducer>,
    txn_open: AtomicBool,
    epoch: AtomicU64,
    fatal: std::sync::Mutex<Option<String>>,
    input_topic: String,
    stats: Arc<Stats>,
    /// Offsets committed by our transactions, per partition (for the lag).
    committed: std::sync::Mutex<HashMap<i32, i64>>,
}

impl ClientContext for Ctx {
    fn stats(&self, s: Statistics) {
        // Lag = last stable offset − our committed offset (the transactions commit offsets
        // through the producer, which librdkafka's own `consumer_lag` does not see; and while
        // paused it stops computing it).
        if let Some(t) = s.topics.get(&self.input_topic) {
            let committed = self.committed.lock().expect("committed lock");
            let lag: i64 = t
                .partitions
                .iter()
                .filter(|(p, _)| **p >= 0)
                .filter_map(|(p, st)| {
                    let end = if st.ls_offset >= 0 {
                        st.ls_offset
                    } else {
                        st.hi_offset
                    };
                    let base = committed
                        .get(p)
                        .copied()
                        .or((st.app_offset >= 0).then_some(st.app_offset))?;
                    (end >= 0).then(|| (end - base).max(0))
                })
                .sum();
            self.stats.lag.store(lag, Ordering::Relaxed);
            gauge!("kafka_source_consumer_lag").set(lag as f64);
        }
    }
}

impl ConsumerContext for Ctx {
    fn pre_rebalance(&self, _c: &rdkafka::consumer::BaseConsumer<Self>, r: &Rebalance<'_>) {
        match r {
            Rebalance::Revoke(tpl) => {
                info!(
                    partitions = tpl.count(),
                    "Partitions revoked: aborting the open transaction, dropping in-flight work."
                );
                self.abort_open("revoke");
                self.committed.lock().expect("committed lock").clear();
                self.epoch.fetch_add(1, Ordering::SeqCst);
                counter!("kafka_source_rebalances_total", "kind" => "revoke").increment(1);
            }
            Rebalance::Assign(tpl) => {
                let parts: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                info!(?parts, "Partitions assigned.");
                self.epoch.fetch_add(1, Ordering::SeqCst);
                counter!("kafka_source_rebalances_total", "kind" => "assign").increment(1);
            }
            Rebalance::Error(e) => warn!(error = %e, "Rebalance error."),
        }
    }
}

impl Ctx {
    fn abort_open(&self, why: &str) {
        if self.txn_open.swap(false, Ordering::SeqCst) {
            counter!("kafka_source_transactions_total", "result" => "aborted").increment(1);
            if let Err(e) = self.producer.abort_transaction(TXN_CALL_TIMEOUT) {
                error!(error = %e, why, "Aborting the transaction failed.");
                *self.fatal.lock().expect("fatal lock") =
                    Some(format!("aborting the transaction ({why}): {e}"));
            }
        }
    }
}

/// What one input record becomes.
enum Output {
    Enriched { key: String, value: Vec<u8> },
    Dead { reason: DlqReason, detail: String },
}

struct Processed {
    epoch: u64,
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    headers: Option<OwnedHeaders>,
    output: Output,
}

/// Records produced in the open transaction, not yet committed.
#[derive(Default)]
struct Pending {
    offsets: HashMap<i32, i64>,
    records: usize,
    enriched: u64,
    dead: HashMap<DlqReason, u64>,
    since: Option<Instant>,
}

/// Runs the connector until shutdown or `--max-records`.
pub async fn run(
    cfg: SourceConfig,
    enricher: Enricher,
    stats: Arc<Stats>,
    health: Health,
    shutdown: Shutdown,
    max_records: Option<u64>,
) -> anyhow::Result<()> {
    let input_topic = cfg.kafka.topic.clone();
    let output_topic = cfg.output_topic().to_owned();
    let dlq_topic = cfg.dlq.topic.clone();
    let connector = cfg.meta.name.clone();

    // Producer: transactional, one id per process (EOS v2 fences zombies through the group).
    let prefix = cfg
        .source
        .transactional_id_prefix
        .clone()
        .unwrap_or_else(|| cfg.meta.name.clone());
    let txn_id = format!(
        "{prefix}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    );
    let mut pc: ClientConfig = cfg.kafka.client_config();
    pc.set("linger.ms", "5");
    if let Some(p) = &cfg.meta.producer {
        p.apply(&mut pc);
    }
    for (k, v) in &cfg.kafka.properties {
        if is_consumer_only(k) {
            pc.remove(k);
        } else {
            pc.set(k, v);
        }
    }
    pc.set("transactional.id", &txn_id)
        .set(
            "transaction.timeout.ms",
            cfg.source.transaction_timeout.as_millis().to_string(),
        )
        .set("enable.idempotence", "true");
    let producer: Arc<FutureProducer> = Arc::new(pc.create().context("creating the producer")?);
    {
        let p = producer.clone();
        tokio::task::spawn_blocking(move || p.init_transactions(TXN_CALL_TIMEOUT))
            .await?
            .context("initialising transactions")?;
    }
    info!(transactional_id = %txn_id, "Transactions initialised.");

    let ctx = Ctx {
        producer: producer.clone(),
        txn_open: AtomicBool::new(false),
        epoch: AtomicU64::new(0),
        fatal: std::sync::Mutex::new(None),
        input_topic: input_topic.clone(),
        stats: stats.clone(),
        committed: std::sync::Mutex::new(HashMap::new()),
    };
    let mut cc = ClientConfig::new();
    cc.set("auto.offset.reset", "earliest")
        .set("statistics.interval.ms", "5000");
    for (k, v) in cfg.kafka.client_config().config_map() {
        if !is_producer_only(k) {
            cc.set(k, v);
        }
    }
    cc.set("group.id", cfg.group())
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed");
    let consumer: StreamConsumer<Ctx> = cc
        .create_with_context(ctx)
        .context("creating the consumer")?;
    consumer
        .subscribe(&[&input_topic])
        .with_context(|| format!("subscribing to {input_topic}"))?;
    info!(topic = %input_topic, group = cfg.group(), "Subscribed.");
    health.set_ready(true);

    let cap = cfg.enrich.concurrency;
    let resume_at = cap / 2;
    let commit_max = cfg.source.commit_max_records;
    let commit_interval = cfg.source.commit_interval;
    let mut inflight: FuturesOrdered<BoxFuture<'static, Processed>> = FuturesOrdered::new();
    let mut pending = Pending::default();
    let mut epoch = consumer.context().epoch.load(Ordering::SeqCst);
    let mut paused = false;
    let mut draining = false;
    let mut drain_deadline: Option<tokio::time::Instant> = None;
    let mut committed_total: u64 = 0;
    let mut tick = tokio::time::interval(commit_interval.max(Duration::from_millis(5)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        if let Some(f) = consumer.context().fatal.lock().expect("fatal lock").take() {
            bail!(f);
        }
        // A rebalance ran inside recv(): the old transaction is gone, so is its work.
        let now_epoch = consumer.context().epoch.load(Ordering::SeqCst);
        if now_epoch != epoch {
            let dropped = inflight.len() + pending.records;
            if dropped > 0 {
                info!(
                    dropped,
                    "Dropping uncommitted work of the previous assignment."
                );
            }
            inflight = FuturesOrdered::new();
            pending = Pending::default();
            epoch = now_epoch;
            paused = false;
            stats.paused.store(false, Ordering::Relaxed);
            gauge!("kafka_source_paused").set(0.0);
        }
        stats
            .in_flight
            .store(inflight.len() as i64, Ordering::Relaxed);
        gauge!("kafka_source_in_flight").set(inflight.len() as f64);

        // Backpressure: pause fetching while the window is full (the API is slow or down);
        // keep polling so rebalances and statistics are still served.
        if !paused && inflight.len() >= cap {
            set_paused(&consumer, true)?;
            paused = true;
            stats.paused.store(true, Ordering::Relaxed);
            gauge!("kafka_source_paused").set(1.0);
            debug!(
                in_flight = inflight.len(),
                "Window full: consumption paused."
            );
        } else if paused && inflight.len() <= resume_at {
            set_paused(&consumer, false)?;
            paused = false;
            stats.paused.store(false, Ordering::Relaxed);
            gauge!("kafka_source_paused").set(0.0);
            debug!(in_flight = inflight.len(), "Consumption resumed.");
        }

        let uncommitted = (inflight.len() + pending.records) as u64;
        let limit_reached = max_records.is_some_and(|n| committed_total + uncommitted >= n);
        let poll = !draining && !limit_reached;

        tokio::select! {
            biased;
            Some(p) = inflight.next(), if !inflight.is_empty() => {
                if p.epoch == consumer.context().epoch.load(Ordering::SeqCst) {
                    produce(&consumer, &producer, &mut pending, p, &output_topic, &dlq_topic, &connector, &input_topic).await?;
                }
            }
            m = consumer.recv(), if poll => {
                let m = m.context("consuming")?;
                let now_epoch = consumer.context().epoch.load(Ordering::SeqCst);
                if now_epoch != epoch {
                    inflight = FuturesOrdered::new();
                    pending = Pending::default();
                    epoch = now_epoch;
                }
                stats.received.add(1);
                counter!("kafka_source_events_received_total").increment(1);
                inflight.push_back(process(&m, epoch, &enricher));
            }
            _ = tick.tick() => {}
            _ = shutdown.wait(), if !draining => {
                info!(in_flight = inflight.len(), "Draining before exit.");
                draining = true;
                drain_deadline = Some(tokio::time::Instant::now() + cfg.source.drain_timeout);
            }
            _ = sleep_until_opt(drain_deadline), if draining && !inflight.is_empty() => {
                warn!(abandoned = inflight.len(), "Drain timeout: leaving the rest uncommitted for the next run.");
                inflight = FuturesOrdered::new();
            }
        }

        let due = pending.records >= commit_max
            || pending
                .since
                .is_some_and(|s| s.elapsed() >= commit_interval)
            || (pending.records > 0 && (draining || limit_reached) && inflight.is_empty());
        if due && pending.records > 0 {
            let n = pending.records as u64;
            match commit(&consumer, &producer, &mut pending, &input_topic).await? {
                true => {
                    committed_total += n;
                    stats.committed.add(n);
                }
                false => {
                    // Aborted: everything after the committed offsets is redone.
                    inflight = FuturesOrdered::new();
                    epoch = consumer.context().epoch.load(Ordering::SeqCst);
                }
            }
        }
        if max_records.is_some_and(|n| committed_total >= n) {
            info!(committed = committed_total, "--max-records reached.");
            break;
        }
        if draining && inflight.is_empty() && pending.records == 0 {
            break;
        }
    }
    health.set_ready(false);
    consumer.unsubscribe();
    info!(committed = committed_total, "Stopped.");
    Ok(())
}

async fn sleep_until_opt(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => futures::future::pending().await,
    }
}

fn set_paused(consumer: &StreamConsumer<Ctx>, pause: bool) -> anyhow::Result<()> {
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

fn is_consumer_only(k: &str) -> bool {
    k.starts_with("auto.offset")
        || k.starts_with("session.")
        || k.starts_with("heartbeat.")
        || k.starts_with("fetch.")
        || k.starts_with("max.poll")
        || k.starts_with("partition.assignment")
        || k.starts_with("group.")
        || k.starts_with("queued.")
        || k == "max.partition.fetch.bytes"
}

fn is_producer_only(k: &str) -> bool {
    k.starts_with("linger")
        || k.starts_with("batch.")
        || k.starts_with("compression")
        || k.starts_with("acks")
        || k.starts_with("queue.buffering")
        || k.starts_with("message.timeout")
}

/// Turns one consumed record into the future of its output.
fn process(
    m: &rdkafka::message::BorrowedMessage<'_>,
    epoch: u64,
    enricher: &Enricher,
) -> BoxFuture<'static, Processed> {
    let partition = m.partition();
    let offset = m.offset();
    let topic = m.topic().to_owned();
    let payload = m.payload().map(<[u8]>::to_vec);
    let key = m.key().map(<[u8]>::to_vec);
    let headers = m.headers().map(|h| h.detach());
    let done = move |output| Processed {
        epoch,
        partition,
        offset,
        key: None,
        payload: None,
        headers: None,
        output,
    };
    let event = match form_model::Event::from_slice(payload.as_deref().unwrap_or_default()) {
        Ok(e) => e,
        Err(e) => {
            let reason = e.reason();
            let mut p = done(Output::Dead {
                reason,
                detail: e.to_string(),
            });
            p.key = key;
            p.payload = payload;
            p.headers = headers;
            return Box::pin(futures::future::ready(p));
        }
    };
    let enricher = enricher.clone();
    Box::pin(async move {
        let fetched = enricher
            .lookup(event.form_id(), event.happened_at_micros())
            .await;
        let output = build_output(&event, &fetched, &topic, partition, offset);
        let mut p = done(output);
        if matches!(p.output, Output::Dead { .. }) {
            p.key = key;
            p.payload = payload;
            p.headers = headers;
        }
        p
    })
}

/// The `form.enriched` record (docs/internals.md), or the DLQ verdict.
fn build_output(
    event: &form_model::Event,
    fetched: &Fetched,
    topic: &str,
    partition: i32,
    offset: i64,
) -> Output {
    let form: &str = match &fetched.answer {
        Answer::Form(f) => f,
        Answer::NotFound if event.is_deleted() => "null",
        Answer::NotFound => {
            return Output::Dead {
                reason: DlqReason::FormNotFound,
                detail: format!(
                    "the forms API has no form `{}` (404) for a `{}` event",
                    event.form_id(),
                    event.event_type()
                ),
            };
        }
        Answer::Invalid(d) => {
            return Output::Dead {
                reason: DlqReason::InvalidApiResponse,
                detail: d.clone(),
            };
        }
    };
    let mut v = Vec::with_capacity(256 + form.len());
    v.extend_from_slice(b"{\"event\":");
    serde_json::to_writer(&mut v, event.as_object()).expect("a JSON map serializes");
    v.extend_from_slice(b",\"form\":");
    v.extend_from_slice(form.as_bytes());
    v.extend_from_slice(b",\"retrieved_timestamp\":\"");
    v.extend_from_slice(form_model::format_rfc3339_micros(fetched.retrieved_micros).as_bytes());
    v.extend_from_slice(b"\",\"source\":{\"topic\":");
    serde_json::to_writer(&mut v, topic).expect("a string serializes");
    v.extend_from_slice(format!(",\"partition\":{partition},\"offset\":{offset}}}}}").as_bytes());
    Output::Enriched {
        key: event.form_id().to_owned(),
        value: v,
    }
}

#[allow(clippy::too_many_arguments)]
async fn produce(
    consumer: &StreamConsumer<Ctx>,
    producer: &FutureProducer,
    pending: &mut Pending,
    p: Processed,
    output_topic: &str,
    dlq_topic: &str,
    connector: &str,
    input_topic: &str,
) -> anyhow::Result<()> {
    let ctx = consumer.context();
    if !ctx.txn_open.load(Ordering::SeqCst) {
        producer
            .begin_transaction()
            .context("beginning a transaction")?;
        ctx.txn_open.store(true, Ordering::SeqCst);
        pending.since = Some(Instant::now());
    }
    let (topic, key, value, headers): (&str, &[u8], &[u8], Option<OwnedHeaders>) = match &p.output {
        Output::Enriched { key, value } => (output_topic, key.as_bytes(), value, None),
        Output::Dead { reason, detail } => {
            let info = DlqInfo {
                reason: *reason,
                detail: detail.clone(),
                connector: connector.to_owned(),
                topic: input_topic.to_owned(),
                partition: p.partition,
                offset: p.offset,
            };
            let h = info.headers(p.headers.as_ref());
            (
                dlq_topic,
                p.key.as_deref().unwrap_or_default(),
                p.payload.as_deref().unwrap_or_default(),
                Some(h),
            )
        }
    };
    loop {
        let mut rec = FutureRecord::to(topic).payload(value);
        if !key.is_empty() || matches!(p.output, Output::Enriched { .. }) || p.key.is_some() {
            rec = rec.key(key);
        }
        if let Some(h) = headers.clone() {
            rec = rec.headers(h);
        }
        match producer.send_result(rec) {
            Ok(_delivery) => break, // delivery is checked by commit_transaction
            Err((
                KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                _,
            )) => {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Err((e, _)) => bail!("producing to {topic}: {e}"),
        }
    }
    pending.offsets.insert(p.partition, p.offset + 1);
    pending.records += 1;
    match p.output {
        Output::Enriched { .. } => pending.enriched += 1,
        Output::Dead { reason, .. } => *pending.dead.entry(reason).or_default() += 1,
    }
    Ok(())
}

/// Sends the offsets and commits. `Ok(true)` committed; `Ok(false)` aborted (positions were
/// rewound to the committed offsets); `Err` fatal.
async fn commit(
    consumer: &StreamConsumer<Ctx>,
    producer: &FutureProducer,
    pending: &mut Pending,
    input_topic: &str,
) -> anyhow::Result<bool> {
    let ctx = consumer.context();
    let mut tpl = TopicPartitionList::new();
    for (p, o) in &pending.offsets {
        tpl.add_partition_offset(input_topic, *p, Offset::Offset(*o))?;
    }
    let started = Instant::now();
    let result = tokio::task::block_in_place(|| -> Result<(), KafkaError> {
        let gm = consumer
            .group_metadata()
            .ok_or(KafkaError::Global(rdkafka::types::RDKafkaErrorCode::Fail))?;
        retrying(|| producer.send_offsets_to_transaction(&tpl, &gm, TXN_CALL_TIMEOUT))?;
        retrying(|| producer.commit_transaction(TXN_CALL_TIMEOUT))
    });
    match result {
        Ok(()) => {
            ctx.txn_open.store(false, Ordering::SeqCst);
            ctx.committed
                .lock()
                .expect("committed lock")
                .extend(pending.offsets.iter().map(|(p, o)| (*p, *o)));
            counter!("kafka_source_transactions_total", "result" => "committed").increment(1);
            counter!("kafka_source_events_enriched_total").increment(pending.enriched);
            for (r, n) in &pending.dead {
                counter!("kafka_source_events_dead_lettered_total", "reason" => r.as_str())
                    .increment(*n);
            }
            counter!("kafka_source_committed_records_total").increment(pending.records as u64);
            metrics::histogram!("kafka_source_commit_duration_seconds")
                .record(started.elapsed().as_secs_f64());
            debug!(records = pending.records, "Transaction committed.");
            *pending = Pending::default();
            Ok(true)
        }
        Err(e) if classify_kafka(&e) == ErrorClass::Fatal => {
            Err(anyhow::anyhow!(e).context("committing the transaction"))
        }
        Err(e) => {
            warn!(error = %e, records = pending.records, "Commit failed: aborting and rewinding to the committed offsets.");
            ctx.abort_open("commit failed");
            ctx.epoch.fetch_add(1, Ordering::SeqCst);
            *pending = Pending::default();
            tokio::task::block_in_place(|| rewind(consumer))?;
            Ok(false)
        }
    }
}

fn retrying(mut f: impl FnMut() -> Result<(), KafkaError>) -> Result<(), KafkaError> {
    let mut attempt = 0;
    loop {
        match f() {
            Err(KafkaError::Transaction(e)) if e.is_retriable() && attempt < 10 => {
                attempt += 1;
                std::thread::sleep(Duration::from_millis(100 * attempt));
            }
            other => return other,
        }
    }
}

/// Seeks every assigned partition back to its committed offset.
fn rewind(consumer: &StreamConsumer<Ctx>) -> anyhow::Result<()> {
    let committed = consumer
        .committed(TXN_CALL_TIMEOUT)
        .context("reading committed offsets")?;
    let mut tpl = TopicPartitionList::new();
    for e in committed.elements() {
        let o = match e.offset() {
            Offset::Offset(o) => Offset::Offset(o),
            _ => Offset::Beginning,
        };
        tpl.add_partition_offset(e.topic(), e.partition(), o)?;
    }
    if tpl.count() > 0 {
        consumer
            .seek_partitions(tpl, TXN_CALL_TIMEOUT)
            .context("seeking to committed offsets")?;
    }
    Ok(())
}

/// The progress line.
pub fn progress_line(stats: &Stats, enricher: &Enricher, elapsed: Duration) -> String {
    let (received, in_rate) = stats.received.rate(elapsed);
    let (committed, out_rate) = stats.committed.rate(elapsed);
    format!(
        "received={received} ({in_rate:.0}/s) committed={committed} ({out_rate:.0}/s) in_flight={} lag={} paused={} cached_forms={}",
        stats.in_flight.load(Ordering::Relaxed),
        stats.lag.load(Ordering::Relaxed),
        stats.paused.load(Ordering::Relaxed),
        enricher.cached(),
    )
}

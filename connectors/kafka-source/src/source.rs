//! The read-process-write loop: consume `form.events`, enrich in order with bounded
//! concurrency, produce to `form.enriched` / the DLQ and commit the consumed offsets in the
//! same Kafka transaction (EOS v2, KIP-447).
//!
//! One task owns the consumer and the producer; one transaction is open at a time, and the
//! next one begins only after the previous commit returned, so offset commits land in order.
//! A commit (`send_offsets_to_transaction` + `commit_transaction`, tens of milliseconds) runs
//! on a blocking thread: meanwhile the loop keeps consuming and enriching, and holds the
//! finished records (bounded) until the commit is done, then produces them into the next
//! transaction. `init_transactions` runs the same way at start, while the group is joined.
//! The transactional calls follow librdkafka's rules through `connector_common::eos` (the
//! sink's module too): a timed-out commit is retried as the same call, never aborted into a
//! conflicting state.
//!
//! Flow control: the loop stops taking records from the consumer while the enrichment window
//! (`enrich.concurrency`) or the buffer of finished records is full, or while twice
//! `enrich.connections` requests are started and unanswered, and takes the next one as soon as
//! a slot frees (librdkafka keeps prefetching meanwhile, within its queue bounds). Only a window
//! that stays full (the API is slow or down) pauses the consumer, which keeps being polled so
//! that rebalances and statistics are served, and resumes at half the window (and half the
//! requests).
//!
//! Rebalance callbacks run inside `consumer.recv()` (librdkafka serves them from the poll
//! call), i.e. in this task between two steps of the loop: on a revoke the callback first waits
//! for a running commit (so offsets are never committed for partitions already handed over),
//! then aborts the open transaction and bumps the epoch; the loop then drops every in-flight,
//! finished or pending result of the old epoch, so work for revoked partitions is neither
//! committed twice nor lost (the next owner resumes from the committed offset). The group
//! protocol is eager (config refuses cooperative strategies), so a revoke always covers every
//! partition and nothing needs rewinding.
//!
//! Identity: the producer's `transactional.id` is `{prefix}-{instance id}` and the consumer is a
//! static member (`group.instance.id` = `{meta.name}-{instance id}`), the instance id stable
//! across restarts (`connector_common::instance`). A restart after `kill -9` therefore fences the
//! dead producer and aborts its open transaction in `init_transactions`, and takes the dead
//! member's place in the group without a rebalance: output moves again within seconds, instead
//! of after the transaction timeout and the dead member's session.
//!
//! Consumer errors (a broker restarting, all brokers down, a leader moving) are warnings:
//! counted, shown in `/health` while they last, and librdkafka recovers by itself; only a fatal
//! error ends the source (`connector_common::kafka::consumer_error_action`).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use connector_common::Shutdown;
use connector_common::dlq::{DlqInfo, DlqReason};
use connector_common::eos::{TxnError, TxnProducer};
use connector_common::kafka::{
    CLOSE_TIMEOUT, ConsumerErrorAction, close_consumer, consumer_error_action,
};
use connector_common::telemetry::RateCounter;
use futures::FutureExt;
use futures::future::BoxFuture;
use metrics::{Counter, counter, gauge};
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    Consumer, ConsumerContext, ConsumerGroupMetadata, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, ThreadedProducer};
use rdkafka::statistics::Statistics;
use rdkafka::{Offset, TopicPartitionList};
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

use crate::config::SourceConfig;
use crate::enrich::{Answer, Enricher, Fetched, Lookup};
use crate::problems::{Part, Problems};

/// Timeout of blocking transaction calls (commit, abort, send offsets).
const TXN_CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// A window full for this long means the API is slow or down: the consumer is then paused
/// (and kept polled for rebalances) instead of merely not being read, so that it does not
/// go silent for `max.poll.interval.ms`.
const PAUSE_WHEN_FULL_FOR: Duration = Duration::from_secs(1);
/// Enriched records held while the previous transaction commits (about 1.7 KB each in the
/// bench: ~28 MB); at ~80k records/s it covers a 200 ms commit.
const READY_MAX: usize = 16_384;
/// Produced records not yet acknowledged by the broker (librdkafka's default is 100,000: up to
/// ~170 MB of enriched records when the broker is the bottleneck); a full queue makes the loop
/// wait, which is the backpressure we want. Overridable in `kafka.properties`.
const PRODUCER_QUEUE_MAX_MESSAGES: &str = "20000";
/// Prefetched records per partition (librdkafka's default, 100,000, prefetches whole topics
/// of small events: tens of MB); enough for a fraction of a second at any rate we reach.
/// Overridable in `kafka.properties`.
const CONSUMER_QUEUED_MIN_MESSAGES: &str = "20000";
/// Prefetched bytes in all (librdkafka's default is 64 MiB). Overridable in `kafka.properties`.
const CONSUMER_QUEUED_MAX_KBYTES: &str = "16384";
/// How soon a partition whose prefetch queue was full is fetched again (librdkafka's default,
/// 1 s, caps the rate at one queue-full per partition per second once the queue bounds above
/// are reached). Overridable in `kafka.properties`.
const CONSUMER_FETCH_QUEUE_BACKOFF_MS: &str = "10";
/// Records handled per pass of the loop (taken from the consumer, or finished enrichments):
/// the `select!` and the checks around it cost about as much as a cached record.
const LOOP_BATCH: usize = 64;
/// Housekeeping period: gauges, batched counters, the pause check, the commit interval.
const TICK: Duration = Duration::from_millis(50);
/// Default `session.timeout.ms` (Kafka's is 45 s), for a static member: how long the group waits
/// for an instance that stopped before handing its partitions to the others. A restarted
/// instance (same `group.instance.id`) takes its place back at once, whatever this is, so the
/// timeout only delays a member that never comes back (or is stopped for good: static members
/// do not leave the group on shutdown, so a scale-down also waits this long). 30 s: the same as
/// the default transaction timeout, after which the broker aborts a dead instance's transaction
/// anyway; shorter risks evicting a live member on a long pause (a broker failover, a stalled
/// host). Overridable in `kafka.properties`.
const DEFAULT_SESSION_TIMEOUT_MS: &str = "30000";
/// librdkafka's per-record framing counted against `message.max.bytes`
/// (`RD_KAFKAP_MESSAGE_V2_MAX_OVERHEAD`, rdkafka_proto.h: length, attributes, timestamp and
/// offset deltas, key and value lengths, header count, as varints at their largest).
const RECORD_OVERHEAD: usize = 5 + 1 + 10 + 5 + 5 + 5 + 5;

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

/// The producer: delivery reports are not awaited one by one (`commit_transaction` fails if
/// any record of the transaction failed), so no per-record future or channel (as
/// `FutureProducer` makes); its thread serves the reports.
type RawProducer = ThreadedProducer<DefaultProducerContext>;

/// The transaction state shared by the loop, the commit thread and the rebalance callback.
/// The transactional calls and their rules (retries, aborts, fatal errors, the commit lock a
/// revoke waits on) are `connector_common::eos`'s, shared with the sink.
struct Txn {
    eos: TxnProducer<DefaultProducerContext>,
    /// Offsets committed by our transactions, per partition (for the lag).
    committed: Mutex<HashMap<i32, i64>>,
}

impl Txn {
    /// Aborts the open transaction, if any (flushing first: see `TxnProducer::abort`). The
    /// caller holds the commit lock.
    fn abort_open(&self, why: &str) -> Result<(), TxnError> {
        if self.eos.is_open() {
            counter!("kafka_source_transactions_total", "result" => "aborted").increment(1);
        }
        self.eos.abort(why).inspect_err(|e| {
            error!(error = %e, why, "Aborting the transaction failed.");
        })
    }
}

/// The consumer context: aborts the open transaction on revoke, reports lag, clears a Kafka
/// problem once every broker is up again.
struct Ctx {
    txn: Arc<Txn>,
    epoch: AtomicU64,
    fatal: Mutex<Option<String>>,
    input_topic: String,
    stats: Arc<Stats>,
    problems: Problems,
    /// A consumer error is shown in `/health` (cleared by the next record, or once the
    /// statistics show every broker up).
    kafka_problem: AtomicBool,
}

impl Ctx {
    /// Handles an error `recv()` returned: `Err` if it is fatal, else a warning that lasts until
    /// librdkafka has recovered.
    fn consumer_error(&self, e: &KafkaError) -> anyhow::Result<()> {
        match consumer_error_action(e) {
            ConsumerErrorAction::Ignore => Ok(()),
            ConsumerErrorAction::Fatal => Err(anyhow::Error::new(e.clone()).context("consuming")),
            ConsumerErrorAction::Warn => {
                let code = e
                    .rdkafka_error_code()
                    .map_or_else(|| "other".to_owned(), |c| format!("{c:?}"));
                counter!("kafka_source_consumer_errors_total", "code" => code).increment(1);
                warn!(error = %e, "Kafka consumer error; librdkafka retries, consumption goes on.");
                self.problems.set(
                    Part::Kafka,
                    Some(format!("Kafka consumer error: {e} (retrying)")),
                );
                self.kafka_problem.store(true, Ordering::Relaxed);
                Ok(())
            }
        }
    }

    /// Consumption works again: the Kafka problem, if any, is over.
    fn kafka_ok(&self) {
        if self.kafka_problem.load(Ordering::Relaxed)
            && self.kafka_problem.swap(false, Ordering::Relaxed)
        {
            self.problems.set(Part::Kafka, None);
            info!("Kafka consumer recovered.");
        }
    }
}

/// Whether statistics show every broker learned from the cluster connected (and at least one).
fn brokers_up(s: &Statistics) -> bool {
    let mut learned = s
        .brokers
        .values()
        .filter(|b| b.source == "learned")
        .peekable();
    learned.peek().is_some() && learned.all(|b| b.state == "UP" || b.state == "UPDATE")
}

impl ClientContext for Ctx {
    fn stats(&self, s: Statistics) {
        if self.kafka_problem.load(Ordering::Relaxed) && brokers_up(&s) {
            self.kafka_ok();
        }
        // Lag = last stable offset − our committed offset (the transactions commit offsets
        // through the producer, which librdkafka's own `consumer_lag` does not see; and while
        // paused it stops computing it).
        if let Some(t) = s.topics.get(&self.input_topic) {
            let committed = self.txn.committed.lock().expect("committed lock");
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
                {
                    // Waits for a running commit: its offsets land before the hand-over.
                    let _commit = self.txn.eos.lock();
                    if let Err(e) = self.txn.abort_open("revoke") {
                        *self.fatal.lock().expect("fatal lock") =
                            Some(format!("aborting the transaction (revoke): {e}"));
                    }
                    self.txn.committed.lock().expect("committed lock").clear();
                }
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

/// Records being enriched, oldest first. Only the oldest is polled: its output is the next
/// to produce, and the requests of the others run without being polled (see
/// `enrich::Pending`), so an answer for a later record wakes nobody. (A `FuturesOrdered`
/// polled them all: on the cold bench, the loop's thread woke for most answers, out of order,
/// to find the oldest still waiting.)
type InFlight = VecDeque<BoxFuture<'static, Processed>>;

/// The oldest record in flight, once it is done (never, while there is none).
fn oldest(inflight: &mut InFlight) -> impl Future<Output = Processed> + '_ {
    std::future::poll_fn(move |cx| {
        let Some(first) = inflight.front_mut() else {
            return Poll::Pending;
        };
        let done = std::task::ready!(first.as_mut().poll(cx));
        inflight.pop_front();
        Poll::Ready(done)
    })
}

/// A consumed record: done at once (invalid, or its form cached), or waiting for the API.
enum Step {
    Done(Processed),
    Wait(BoxFuture<'static, Processed>),
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

/// A commit (or the initialisation of transactions) running on a blocking thread.
struct Committing {
    handle: JoinHandle<CommitOutcome>,
    batch: Pending,
    started: Instant,
    /// `init_transactions`, not a commit.
    init: bool,
    transactional_id: String,
}

enum CommitOutcome {
    Committed,
    /// A revoke aborted the transaction before the commit could start.
    Aborted,
    /// Failed and aborted: positions must be rewound to the committed offsets.
    Failed(KafkaError),
    Fatal(anyhow::Error),
}

/// Where the records go, and the constant parts of an enriched record.
struct Route {
    output_topic: String,
    dlq_topic: String,
    connector: String,
    input_topic: String,
    /// `,"source":{"topic":<input topic as JSON>,"partition":`
    source_prefix: Arc<[u8]>,
    /// The producer's `message.max.bytes`: a larger record is dead-lettered, never sent.
    max_message_bytes: usize,
}

/// Metric handles used per batch.
struct Meters {
    received: Counter,
    committed_txns: Counter,
    enriched: Counter,
    committed_records: Counter,
}

/// Owns the consumer; whichever way `run` ends (errors included), closes it on a thread of its
/// own and waits at most [`CLOSE_TIMEOUT`].
///
/// librdkafka's close can block for good when the group's assignment arrives while it closes:
/// rust-rdkafka serves that rebalance by calling `assign`, which waits on the closing group
/// forever (s3-sink hit it on a SIGTERM during the group join). The normal exit unsubscribes
/// first, which we could not make hang (SIGTERM 100 ms–10 s into the join, with and without a
/// dead member holding the group); an error exit drops the consumer still subscribed. Either
/// way nothing uncommitted remains: the process exits, and the broker expires the member.
struct ClosingConsumer(Option<StreamConsumer<Ctx>>);

impl std::ops::Deref for ClosingConsumer {
    type Target = StreamConsumer<Ctx>;

    fn deref(&self) -> &StreamConsumer<Ctx> {
        self.0.as_ref().expect("the consumer is kept until drop")
    }
}

impl Drop for ClosingConsumer {
    fn drop(&mut self) {
        let Some(consumer) = self.0.take() else {
            return;
        };
        if !close_consumer(consumer, CLOSE_TIMEOUT) {
            warn!(
                timeout = ?CLOSE_TIMEOUT,
                "The Kafka consumer did not leave the group in time (a rebalance was in \
                 progress); exiting anyway: the broker expires this member after its \
                 session timeout."
            );
        }
    }
}

/// Runs the connector until shutdown or `--max-records`.
///
/// `instance_id` is this instance's stable id (`connector_common::instance`): the transactional
/// id and the static group membership derive from it.
pub async fn run(
    cfg: SourceConfig,
    enricher: Enricher,
    stats: Arc<Stats>,
    problems: Problems,
    shutdown: Shutdown,
    max_records: Option<u64>,
    instance_id: &str,
) -> anyhow::Result<()> {
    let health = problems.health().clone();
    let input_topic = cfg.kafka.topic.clone();
    let mut source_prefix = b",\"source\":{\"topic\":".to_vec();
    serde_json::to_writer(&mut source_prefix, &input_topic).expect("a string serializes");
    source_prefix.extend_from_slice(b",\"partition\":");
    let route = Route {
        output_topic: cfg.output_topic().to_owned(),
        dlq_topic: cfg.dlq.topic.clone(),
        connector: cfg.meta.name.clone(),
        input_topic: input_topic.clone(),
        source_prefix: source_prefix.into(),
        max_message_bytes: usize::try_from(cfg.message_max_bytes()).unwrap_or(usize::MAX),
    };
    let meters = Meters {
        received: counter!("kafka_source_events_received_total"),
        committed_txns: counter!("kafka_source_transactions_total", "result" => "committed"),
        enriched: counter!("kafka_source_events_enriched_total"),
        committed_records: counter!("kafka_source_committed_records_total"),
    };

    // Producer: transactional, one id per instance, the same after a restart (so that
    // `init_transactions` fences the dead process and aborts its transaction at once; EOS v2
    // fences zombies of a rebalance through the group metadata).
    let prefix = cfg
        .source
        .transactional_id_prefix
        .clone()
        .unwrap_or_else(|| cfg.meta.name.clone());
    let txn_id = format!("{prefix}-{instance_id}");
    let mut pc: ClientConfig = cfg.kafka.client_config();
    pc.set("linger.ms", "5")
        .set("queue.buffering.max.messages", PRODUCER_QUEUE_MAX_MESSAGES);
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
    let producer: RawProducer = pc.create().context("creating the producer")?;
    let txn = Arc::new(Txn {
        eos: TxnProducer::new(producer, TXN_CALL_TIMEOUT),
        committed: Mutex::new(HashMap::new()),
    });
    let ctx = Ctx {
        txn: txn.clone(),
        epoch: AtomicU64::new(0),
        fatal: Mutex::new(None),
        input_topic: input_topic.clone(),
        stats: stats.clone(),
        problems: problems.clone(),
        kafka_problem: AtomicBool::new(false),
    };
    let mut cc = ClientConfig::new();
    // Static membership: a restart takes its old place (and partitions) without a rebalance.
    cc.set(
        "group.instance.id",
        format!("{}-{instance_id}", cfg.meta.name),
    )
    .set("session.timeout.ms", DEFAULT_SESSION_TIMEOUT_MS);
    cc.set("auto.offset.reset", "earliest")
        .set("statistics.interval.ms", "5000")
        .set("queued.min.messages", CONSUMER_QUEUED_MIN_MESSAGES)
        .set("queued.max.messages.kbytes", CONSUMER_QUEUED_MAX_KBYTES)
        .set("fetch.queue.backoff.ms", CONSUMER_FETCH_QUEUE_BACKOFF_MS);
    for (k, v) in cfg.kafka.client_config().config_map() {
        if !is_producer_only(k) {
            cc.set(k, v);
        }
    }
    cc.set("group.id", cfg.group())
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed");
    let consumer = ClosingConsumer(Some(
        cc.create_with_context(ctx)
            .context("creating the consumer")?,
    ));
    consumer
        .subscribe(&[&input_topic])
        .with_context(|| format!("subscribing to {input_topic}"))?;
    info!(
        topic = %input_topic,
        group = cfg.group(),
        group_instance_id = cc.get("group.instance.id").unwrap_or_default(),
        session_timeout_ms = cc.get("session.timeout.ms").unwrap_or_default(),
        "Subscribed."
    );
    health.set_ready(true);

    let cap = cfg.enrich.concurrency;
    // Requests started and not answered: twice the connections keeps every connection busy
    // (the next request waits for it) while the rest of the window holds cache hits and joins
    // behind them. More waiting requests cost CPU (live tasks, a deeper ordered set) and gain
    // nothing: on the cold bench (a 1,024 window over 128 connections) bounding them cut
    // 40.5-43.0 to 35.4-41.0 CPU s per 1M events.
    let fetch_max = 2 * cfg.enrich.max_connections();
    let resume_at = cap / 2;
    let commit_max = cfg.source.commit_max_records;
    let commit_interval = cfg.source.commit_interval;
    let mut inflight = InFlight::new();
    // Finished records waiting for the running commit to end.
    let mut ready: VecDeque<Processed> = VecDeque::new();
    let mut pending = Pending::default();
    // Transactions are initialised (a few hundred milliseconds) while the group is joined and
    // the first records are enriched; nothing is produced before.
    let mut committing: Option<Committing> = Some(start_init(&txn, txn_id));
    let mut epoch = consumer.context().epoch.load(Ordering::SeqCst);
    let mut paused = false;
    let mut full_since: Option<Instant> = None;
    let mut draining = false;
    let mut drain_deadline: Option<tokio::time::Instant> = None;
    let mut committed_total: u64 = 0;
    // Records received since the counters were last updated (they are updated per batch).
    let mut received_unreported: u64 = 0;
    let mut tick = tokio::time::interval(TICK.min(commit_interval.max(Duration::from_millis(5))));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        if let Some(f) = consumer.context().fatal.lock().expect("fatal lock").take() {
            bail!(f);
        }
        // A rebalance ran inside recv(): the old transaction is gone, so is its work.
        let now_epoch = consumer.context().epoch.load(Ordering::SeqCst);
        if now_epoch != epoch {
            let dropped = inflight.len() + ready.len() + pending.records;
            if dropped > 0 {
                info!(
                    dropped,
                    "Dropping uncommitted work of the previous assignment."
                );
            }
            inflight = InFlight::new();
            ready.clear();
            pending = Pending::default();
            epoch = now_epoch;
            paused = false;
            full_since = None;
            stats.paused.store(false, Ordering::Relaxed);
            gauge!("kafka_source_paused").set(0.0);
        }

        // Flow control: stop reading while the window is full; pause the consumer if it stays
        // full (the API is slow or down), keeping it polled for rebalances and statistics.
        let window_full = inflight.len() >= cap
            || ready.len() >= READY_MAX
            || enricher.outstanding() >= fetch_max;
        if !window_full {
            full_since = None;
        } else if full_since.is_none() {
            full_since = Some(Instant::now());
        }
        if !paused && full_since.is_some_and(|t| t.elapsed() >= PAUSE_WHEN_FULL_FOR) {
            report_received(&stats, &meters, &mut received_unreported);
            set_paused(&consumer, true)?;
            paused = true;
            stats.paused.store(true, Ordering::Relaxed);
            gauge!("kafka_source_paused").set(1.0);
            debug!(
                in_flight = inflight.len(),
                "Window full: consumption paused."
            );
        } else if paused
            && inflight.len() <= resume_at
            && ready.len() < READY_MAX
            && enricher.outstanding() <= fetch_max / 2
        {
            set_paused(&consumer, false)?;
            paused = false;
            stats.paused.store(false, Ordering::Relaxed);
            gauge!("kafka_source_paused").set(0.0);
            debug!(in_flight = inflight.len(), "Consumption resumed.");
        }

        let uncommitted = (inflight.len()
            + ready.len()
            + pending.records
            + committing.as_ref().map_or(0, |c| c.batch.records)) as u64;
        let limit_reached = max_records.is_some_and(|n| committed_total + uncommitted >= n);
        let poll = !draining && !limit_reached && (paused || !window_full);

        tokio::select! {
            biased;
            outcome = join_commit(&mut committing), if committing.is_some() => {
                let c = committing.take().expect("a commit is running");
                let outcome = outcome.context("the commit thread")?;
                match outcome {
                    CommitOutcome::Committed if c.init => {
                        info!(transactional_id = %c.transactional_id, "Transactions initialised.");
                    }
                    CommitOutcome::Committed => {
                        let n = c.batch.records as u64;
                        committed_total += n;
                        stats.committed.add(n);
                        report_commit(&meters, &c.batch, c.started);
                    }
                    CommitOutcome::Aborted => {
                        debug!(records = c.batch.records, "Transaction aborted by a revoke before its commit.");
                    }
                    CommitOutcome::Failed(e) => {
                        warn!(error = %e, records = c.batch.records, "Commit failed: aborted, rewinding to the committed offsets.");
                        consumer.context().epoch.fetch_add(1, Ordering::SeqCst);
                        epoch = consumer.context().epoch.load(Ordering::SeqCst);
                        inflight = InFlight::new();
                        ready.clear();
                        pending = Pending::default();
                        // Blocks the (single-threaded) runtime for a round trip: rare, and
                        // nothing in flight is kept anyway.
                        rewind(&consumer)?;
                    }
                    CommitOutcome::Fatal(e) if c.init => return Err(e.context("initialising transactions")),
                    CommitOutcome::Fatal(e) => return Err(e.context("committing the transaction")),
                }
                // What finished meanwhile goes into the next transaction.
                if epoch == consumer.context().epoch.load(Ordering::SeqCst) {
                    while let Some(p) = ready.pop_front() {
                        produce(&txn, &mut pending, p, &route).await?;
                    }
                } else {
                    ready.clear();
                }
            }
            p = oldest(&mut inflight), if !inflight.is_empty() => {
                // This one and whatever else is already finished, up to a batch (one pass of
                // the loop per batch, not per record). Rebalances run only inside `recv`, so
                // the epoch holds for the whole batch.
                let current = consumer.context().epoch.load(Ordering::SeqCst);
                let mut next = Some(p);
                let mut n = 0;
                while let Some(p) = next {
                    if p.epoch == current {
                        if committing.is_some() {
                            ready.push_back(p);
                        } else {
                            produce(&txn, &mut pending, p, &route).await?;
                        }
                    }
                    n += 1;
                    if n == LOOP_BATCH {
                        break;
                    }
                    // A no-op waker here is fine: the next `select!` polls `inflight` again
                    // with the task's own before waiting.
                    next = oldest(&mut inflight).now_or_never();
                }
            }
            m = consumer.recv(), if poll => {
                // This record and those already fetched, while the window has room, up to a batch.
                let mut next = Some(m);
                let mut taken: u64 = 0;
                while let Some(m) = next {
                    let m = match m {
                        Ok(m) => m,
                        Err(e) => {
                            consumer.context().consumer_error(&e)?;
                            break;
                        }
                    };
                    if taken == 0 {
                        consumer.context().kafka_ok();
                    }
                    let now_epoch = consumer.context().epoch.load(Ordering::SeqCst);
                    if now_epoch != epoch {
                        inflight = InFlight::new();
                        ready.clear();
                        pending = Pending::default();
                        epoch = now_epoch;
                    }
                    received_unreported += 1;
                    taken += 1;
                    match prepare(&m, epoch, &enricher, &route) {
                        Step::Done(p) if inflight.is_empty() => {
                            if committing.is_some() {
                                ready.push_back(p);
                            } else {
                                produce(&txn, &mut pending, p, &route).await?;
                            }
                        }
                        Step::Done(p) => inflight.push_back(Box::pin(futures::future::ready(p))),
                        Step::Wait(f) => inflight.push_back(f),
                    }
                    let room = inflight.len() < cap
                        && ready.len() < READY_MAX
                        && enricher.outstanding() < fetch_max;
                    let limit = max_records.is_some_and(|n| committed_total + uncommitted + taken >= n);
                    if !room || limit || taken == LOOP_BATCH as u64 {
                        break;
                    }
                    next = consumer.recv().now_or_never();
                }
            }
            _ = tick.tick() => {
                report_received(&stats, &meters, &mut received_unreported);
                stats.in_flight.store(inflight.len() as i64, Ordering::Relaxed);
                gauge!("kafka_source_in_flight").set(inflight.len() as f64);
            }
            _ = shutdown.wait(), if !draining => {
                info!(in_flight = inflight.len(), "Draining before exit.");
                draining = true;
                drain_deadline = Some(tokio::time::Instant::now() + cfg.source.drain_timeout);
            }
            _ = sleep_until_opt(drain_deadline), if draining && !inflight.is_empty() => {
                warn!(abandoned = inflight.len(), "Drain timeout: leaving the rest uncommitted for the next run.");
                inflight = InFlight::new();
            }
        }

        let finishing = (draining || limit_reached) && inflight.is_empty() && ready.is_empty();
        let due = pending.records >= commit_max
            || finishing
            || pending
                .since
                .is_some_and(|s| s.elapsed() >= commit_interval);
        if due && pending.records > 0 && committing.is_none() {
            committing = Some(start_commit(&consumer, &txn, &mut pending, &input_topic)?);
        }
        if committing.is_none() && max_records.is_some_and(|n| committed_total >= n) {
            info!(committed = committed_total, "--max-records reached.");
            break;
        }
        if draining
            && inflight.is_empty()
            && ready.is_empty()
            && pending.records == 0
            && committing.is_none()
        {
            break;
        }
    }
    report_received(&stats, &meters, &mut received_unreported);
    health.set_ready(false);
    consumer.unsubscribe();
    info!(committed = committed_total, "Stopped.");
    Ok(())
}

fn report_received(stats: &Stats, meters: &Meters, n: &mut u64) {
    if *n > 0 {
        stats.received.add(*n);
        meters.received.increment(*n);
        *n = 0;
    }
}

fn report_commit(meters: &Meters, batch: &Pending, started: Instant) {
    meters.committed_txns.increment(1);
    meters.enriched.increment(batch.enriched);
    for (r, n) in &batch.dead {
        counter!("kafka_source_events_dead_lettered_total", "reason" => r.as_str()).increment(*n);
    }
    meters.committed_records.increment(batch.records as u64);
    metrics::histogram!("kafka_source_commit_duration_seconds")
        .record(started.elapsed().as_secs_f64());
    debug!(records = batch.records, "Transaction committed.");
}

async fn join_commit(c: &mut Option<Committing>) -> Result<CommitOutcome, tokio::task::JoinError> {
    match c {
        Some(c) => (&mut c.handle).await,
        None => futures::future::pending().await,
    }
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

/// Turns one consumed record into its output, or the future of it.
fn prepare(
    m: &rdkafka::message::BorrowedMessage<'_>,
    epoch: u64,
    enricher: &Enricher,
    route: &Route,
) -> Step {
    let partition = m.partition();
    let offset = m.offset();
    // The original key, value and headers, for the DLQ.
    let original = || {
        (
            m.key().map(<[u8]>::to_vec),
            m.payload().map(<[u8]>::to_vec),
            m.headers().map(|h| h.detach()),
        )
    };
    let done = |output: Output| {
        let (key, payload, headers) = match output {
            Output::Dead { .. } => original(),
            Output::Enriched { .. } => (None, None, None),
        };
        Processed {
            epoch,
            partition,
            offset,
            key,
            payload,
            headers,
            output,
        }
    };
    let event = match form_model::Event::from_slice(m.payload().unwrap_or_default()) {
        Ok(e) => e,
        Err(e) => {
            return Step::Done(done(Output::Dead {
                reason: e.reason(),
                detail: e.to_string(),
            }));
        }
    };
    if let Err(detail) = crate::enrich::check_form_id(event.form_id()) {
        return Step::Done(done(Output::Dead {
            reason: DlqReason::InvalidFormId,
            detail,
        }));
    }
    let pending = match enricher.lookup(event.form_id(), event.happened_at_micros()) {
        Lookup::Ready(fetched) => {
            return Step::Done(done(build_output(
                &event, &fetched, route, partition, offset,
            )));
        }
        Lookup::Pending(pending) => pending,
    };
    let (key, payload, headers) = original();
    let source_prefix = route.source_prefix.clone();
    let max = route.max_message_bytes;
    Step::Wait(Box::pin(async move {
        let fetched = pending.answer().await;
        let output = build_output_with(&event, &fetched, &source_prefix, partition, offset, max);
        let dead = matches!(output, Output::Dead { .. });
        Processed {
            epoch,
            partition,
            offset,
            key: if dead { key } else { None },
            payload: if dead { payload } else { None },
            headers: if dead { headers } else { None },
            output,
        }
    }))
}

fn build_output(
    event: &form_model::Event,
    fetched: &Fetched,
    route: &Route,
    partition: i32,
    offset: i64,
) -> Output {
    build_output_with(
        event,
        fetched,
        &route.source_prefix,
        partition,
        offset,
        route.max_message_bytes,
    )
}

/// The `form.enriched` record (docs/internals.md), or the DLQ verdict; a record larger than
/// `max_message_bytes` (as librdkafka counts it) is a dead letter, not a send that fails.
fn build_output_with(
    event: &form_model::Event,
    fetched: &Fetched,
    source_prefix: &[u8],
    partition: i32,
    offset: i64,
    max_message_bytes: usize,
) -> Output {
    let form: &[u8] = match &fetched.answer {
        Answer::Form(f) => f,
        Answer::NotFound if event.is_deleted() => b"null",
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
        Answer::TooLarge(d) => {
            return Output::Dead {
                reason: DlqReason::AnswerTooLarge,
                detail: d.clone(),
            };
        }
    };
    let mut v = Vec::with_capacity(256 + form.len());
    v.extend_from_slice(b"{\"event\":");
    serde_json::to_writer(&mut v, event.as_object()).expect("a JSON map serializes");
    v.extend_from_slice(b",\"form\":");
    v.extend_from_slice(form);
    v.extend_from_slice(b",\"retrieved_timestamp\":\"");
    v.extend_from_slice(fetched.retrieved_text.as_bytes());
    v.push(b'"');
    v.extend_from_slice(source_prefix);
    form_model::write_i64(&mut v, partition.into());
    v.extend_from_slice(b",\"offset\":");
    form_model::write_i64(&mut v, offset);
    v.extend_from_slice(b"}}");
    let key = event.form_id();
    let size = RECORD_OVERHEAD + key.len() + v.len();
    if size > max_message_bytes {
        return Output::Dead {
            reason: DlqReason::RecordTooLarge,
            detail: format!(
                "the enriched record for form `{key}` would be {size} bytes (form {} bytes), over the producer's `message.max.bytes` ({max_message_bytes} bytes)",
                form.len()
            ),
        };
    }
    Output::Enriched {
        key: key.to_owned(),
        value: v,
    }
}

/// The bytes librdkafka counts for `headers` (`rd_kafka_headers_serialized_size`: each name and
/// value with their lengths as zig-zag varints).
fn headers_size(headers: &OwnedHeaders) -> usize {
    use rdkafka::message::Headers;
    fn varint(n: usize) -> usize {
        let mut z = (n as u64) << 1; // zig-zag of a non-negative number
        let mut len = 1;
        while z >= 0x80 {
            z >>= 7;
            len += 1;
        }
        len
    }
    headers
        .iter()
        .map(|h| {
            let v = h.value.map_or(0, <[u8]>::len);
            h.key.len() + v + varint(h.key.len()) + varint(v)
        })
        .sum()
}

/// Produces `p` into the open transaction (beginning one if none is open).
async fn produce(
    txn: &Txn,
    pending: &mut Pending,
    p: Processed,
    route: &Route,
) -> anyhow::Result<()> {
    if !txn.eos.is_open() {
        txn.eos.begin().context("beginning a transaction")?;
        pending.since = Some(Instant::now());
    }
    let producer = txn.eos.producer();
    // Key and value as they were (a null key or a tombstone's null value stays null).
    type Parts<'a> = (
        &'a str,
        Option<&'a [u8]>,
        Option<&'a [u8]>,
        Option<OwnedHeaders>,
    );
    let (topic, key, value, headers): Parts<'_> = match &p.output {
        Output::Enriched { key, value } => {
            (&route.output_topic, Some(key.as_bytes()), Some(value), None)
        }
        Output::Dead { reason, detail } => {
            let (value, headers) = dead_letter(&p, *reason, detail, route);
            (&route.dlq_topic, p.key.as_deref(), value, Some(headers))
        }
    };
    loop {
        let mut rec = BaseRecord::<[u8], [u8]>::to(topic);
        if let Some(v) = value {
            rec = rec.payload(v);
        }
        if let Some(k) = key {
            rec = rec.key(k);
        }
        if let Some(h) = headers.clone() {
            rec = rec.headers(h);
        }
        match producer.send(rec) {
            Ok(()) => break, // delivery is checked by commit_transaction
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

/// The DLQ record's value and headers for `p`: its original value, unless the letter would then
/// be over `message.max.bytes` (an input record near the broker's limit plus our headers): the
/// value is then left out, and the detail says so (then the original headers too, if needed).
fn dead_letter<'a>(
    p: &'a Processed,
    reason: DlqReason,
    detail: &str,
    route: &Route,
) -> (Option<&'a [u8]>, OwnedHeaders) {
    let info = |detail: String| DlqInfo {
        reason,
        detail,
        connector: route.connector.clone(),
        topic: route.input_topic.clone(),
        partition: p.partition,
        offset: p.offset,
    };
    let key = p.key.as_ref().map_or(0, Vec::len);
    let fits = |value: usize, h: &OwnedHeaders| {
        RECORD_OVERHEAD + key + value + headers_size(h) <= route.max_message_bytes
    };
    let value_len = p.payload.as_ref().map_or(0, Vec::len);
    let headers = info(detail.to_owned()).headers(p.headers.as_ref());
    if fits(value_len, &headers) {
        return (p.payload.as_deref(), headers);
    }
    let detail = format!(
        "{detail} (the original value, {value_len} bytes, is left out: with it the letter would be over the producer's `message.max.bytes`, {} bytes)",
        route.max_message_bytes
    );
    let headers = info(detail.clone()).headers(p.headers.as_ref());
    if fits(0, &headers) {
        return (None, headers);
    }
    let detail = format!("{detail}; so are its original headers");
    (None, info(detail).headers(None::<&OwnedHeaders>))
}

/// Starts committing the open transaction (its offsets, then the commit) on a blocking
/// thread; `pending` is taken.
fn start_commit(
    consumer: &StreamConsumer<Ctx>,
    txn: &Arc<Txn>,
    pending: &mut Pending,
    input_topic: &str,
) -> anyhow::Result<Committing> {
    let batch = std::mem::take(pending);
    let mut tpl = TopicPartitionList::new();
    for (p, o) in &batch.offsets {
        tpl.add_partition_offset(input_topic, *p, Offset::Offset(*o))?;
    }
    let offsets: Vec<(i32, i64)> = batch.offsets.iter().map(|(p, o)| (*p, *o)).collect();
    let gm = consumer.group_metadata();
    let txn = txn.clone();
    let handle = tokio::task::spawn_blocking(move || commit_blocking(&txn, &tpl, gm, &offsets));
    Ok(Committing {
        handle,
        batch,
        started: Instant::now(),
        init: false,
        transactional_id: String::new(),
    })
}

/// Starts `init_transactions` on a blocking thread.
fn start_init(txn: &Arc<Txn>, transactional_id: String) -> Committing {
    let txn = txn.clone();
    let handle = tokio::task::spawn_blocking(move || match txn.eos.init() {
        Ok(()) => CommitOutcome::Committed,
        Err(e) => CommitOutcome::Fatal(e.into()),
    });
    Committing {
        handle,
        batch: Pending::default(),
        started: Instant::now(),
        init: true,
        transactional_id,
    }
}

/// Sends the offsets and commits, by `connector_common::eos`'s rules: a retriable failure
/// (a commit that timed out) is retried as the same call, one that requires an abort is
/// aborted (the loop rewinds), a fatal one ends the source.
fn commit_blocking(
    txn: &Txn,
    tpl: &TopicPartitionList,
    gm: Option<ConsumerGroupMetadata>,
    offsets: &[(i32, i64)],
) -> CommitOutcome {
    let _commit = txn.eos.lock();
    if !txn.eos.is_open() {
        return CommitOutcome::Aborted;
    }
    let Some(gm) = gm else {
        // No group metadata: the consumer has left the group; the offsets cannot be committed.
        return match txn.abort_open("no group metadata") {
            Ok(()) => {
                CommitOutcome::Failed(KafkaError::Global(rdkafka::types::RDKafkaErrorCode::Fail))
            }
            Err(a) => {
                CommitOutcome::Fatal(anyhow::anyhow!(a).context("aborting (no group metadata)"))
            }
        };
    };
    match txn.eos.commit_locked(tpl, &gm) {
        Ok(()) => {
            txn.committed
                .lock()
                .expect("committed lock")
                .extend(offsets.iter().copied());
            CommitOutcome::Committed
        }
        Err(TxnError::Aborted(e)) => {
            counter!("kafka_source_transactions_total", "result" => "aborted").increment(1);
            CommitOutcome::Failed(e)
        }
        Err(e @ TxnError::Fatal(_)) => CommitOutcome::Fatal(e.into()),
    }
}

/// How long a rewind keeps trying to read the committed offsets (a broker restarting) before
/// the source gives up (and exits: going on from the current positions would skip the records
/// of the aborted transaction).
const REWIND_FOR: Duration = Duration::from_secs(120);

/// Seeks every assigned partition back to its committed offset, retrying while the group
/// coordinator is away.
fn rewind(consumer: &StreamConsumer<Ctx>) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut attempt = 0;
    let committed = loop {
        match consumer.committed(TXN_CALL_TIMEOUT) {
            Ok(c) => break c,
            Err(e) if started.elapsed() < REWIND_FOR => {
                attempt += 1;
                warn!(error = %e, attempt, "Reading the committed offsets to rewind failed; retrying.");
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => return Err(e).context("reading committed offsets"),
        }
    };
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
        "received={received} ({in_rate:.0}/s) committed={committed} ({out_rate:.0}/s) in_flight={} lag={} paused={} cached_forms={} cached_mib={:.1}",
        stats.in_flight.load(Ordering::Relaxed),
        stats.lag.load(Ordering::Relaxed),
        stats.paused.load(Ordering::Relaxed),
        enricher.cached(),
        enricher.cached_bytes() as f64 / (1024.0 * 1024.0),
    )
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    fn processed(offset: i64) -> Processed {
        Processed {
            epoch: 0,
            partition: 0,
            offset,
            key: None,
            payload: None,
            headers: None,
            output: Output::Enriched {
                key: String::new(),
                value: Vec::new(),
            },
        }
    }

    #[tokio::test]
    async fn only_the_oldest_record_in_flight_is_polled() {
        let (first_done, first) = tokio::sync::oneshot::channel::<()>();
        let polls = Arc::new(AtomicUsize::new(0));
        let mut inflight = InFlight::new();
        inflight.push_back(Box::pin(async move {
            first.await.unwrap();
            processed(1)
        }));
        let counted = polls.clone();
        inflight.push_back(Box::pin(futures::future::poll_fn(move |_| {
            counted.fetch_add(1, Ordering::Relaxed);
            Poll::Ready(processed(2))
        })));
        assert!(oldest(&mut inflight).now_or_never().is_none());
        assert_eq!(
            polls.load(Ordering::Relaxed),
            0,
            "a later record was polled"
        );
        first_done.send(()).unwrap();
        assert_eq!(oldest(&mut inflight).await.offset, 1);
        assert_eq!(polls.load(Ordering::Relaxed), 0);
        assert_eq!(
            oldest(&mut inflight).now_or_never().map(|p| p.offset),
            Some(2)
        );
        assert_eq!(polls.load(Ordering::Relaxed), 1);
        assert!(inflight.is_empty());
        assert!(
            oldest(&mut inflight).now_or_never().is_none(),
            "none: pending"
        );
    }
}

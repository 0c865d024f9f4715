//! The Kafka ceilings: a raw produce, a raw no-op consume (consumer group, read_committed) and a
//! raw consume→produce pipe, with plain rdkafka; plus topic admin and progress probes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use serde::Serialize;

/// Producer settings of the ceiling: batches as large as librdkafka allows by default, a short
/// linger, idempotence on (what an exactly-once producer pays too).
fn producer_config(brokers: &str, compression: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("batch.size", "1000000")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .set("compression.type", compression);
    c
}

/// Consumer settings of the ceiling: a consumer group, read_committed, librdkafka defaults.
fn consumer_config(brokers: &str, group: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false");
    c
}

/// Creates the topics (fails if one exists: names are unique per run).
pub(crate) async fn create_topics(
    brokers: &str,
    names: &[String],
    partitions: i32,
) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .context("creating admin client")?;
    let topics: Vec<NewTopic<'_>> = names
        .iter()
        .map(|n| NewTopic::new(n, partitions, TopicReplication::Fixed(1)))
        .collect();
    let res = admin
        .create_topics(
            &topics,
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .context("creating topics")?;
    for r in res {
        if let Err((name, code)) = r {
            bail!("creating topic {name}: {code}");
        }
    }
    Ok(())
}

/// Deletes the topics (errors ignored: cleanup only).
pub(crate) async fn delete_topics(brokers: &str, names: &[String]) {
    let Ok(admin) = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create::<AdminClient<DefaultClientContext>>()
    else {
        return;
    };
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let _ = admin
        .delete_topics(
            &refs,
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await;
}

/// Result of a timed Kafka loop.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub(crate) struct Throughput {
    /// Records moved.
    pub(crate) records: u64,
    /// Value bytes moved.
    pub(crate) bytes: u64,
    /// Seconds from the first record to the last (for a produce: first send to flush done).
    pub(crate) seconds: f64,
    /// Seconds from the start (subscribe / first send) to the end, startup included.
    pub(crate) wall_seconds: f64,
    /// records / seconds.
    pub(crate) events_per_s: f64,
    /// MiB of values per second.
    pub(crate) mib_per_s: f64,
}

impl Throughput {
    fn new(records: u64, bytes: u64, seconds: f64, wall_seconds: f64) -> Self {
        let s = seconds.max(1e-9);
        Self {
            records,
            bytes,
            seconds,
            wall_seconds,
            events_per_s: records as f64 / s,
            mib_per_s: bytes as f64 / s / 1_048_576.0,
        }
    }
}

#[derive(Debug, Default)]
struct Counting {
    errors: AtomicU64,
}

impl ClientContext for Counting {}

impl ProducerContext for Counting {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: Self::DeliveryOpaque) {
        if result.is_err() {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Sends with backpressure: on a full queue, serve delivery reports and retry.
fn send_blocking(
    p: &BaseProducer<Counting>,
    mut rec: BaseRecord<'_, [u8], [u8]>,
) -> anyhow::Result<()> {
    loop {
        match p.send(rec) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                rec = r;
                p.poll(Duration::from_millis(5));
            }
            Err((e, _)) => bail!("producing: {e}"),
        }
    }
}

/// Produces `(key, value)` records to `topic` as fast as possible; returns when all are
/// acknowledged.
pub(crate) fn produce<'a, I>(
    brokers: &str,
    topic: &str,
    compression: &str,
    records: I,
) -> anyhow::Result<Throughput>
where
    I: IntoIterator<Item = (&'a [u8], &'a [u8])>,
{
    let p: BaseProducer<Counting> = producer_config(brokers, compression)
        .create_with_context(Counting::default())
        .context("creating producer")?;
    // Connect before the clock starts.
    p.client()
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .context("fetching metadata")?;
    let start = Instant::now();
    let (mut n, mut bytes) = (0u64, 0u64);
    for (key, value) in records {
        send_blocking(&p, BaseRecord::to(topic).key(key).payload(value))?;
        n += 1;
        bytes += value.len() as u64;
        if n % 1024 == 0 {
            p.poll(Duration::ZERO);
        }
    }
    p.flush(Duration::from_secs(120))
        .context("flushing producer")?;
    let s = start.elapsed().as_secs_f64();
    let errors = p.context().errors.load(Ordering::Relaxed);
    if errors > 0 {
        bail!("{errors} records failed to be delivered to {topic}");
    }
    Ok(Throughput::new(n, bytes, s, s))
}

/// Produces `records` to a fresh `topic` one at a time; after each one's acknowledgement,
/// waits until `group`'s committed offsets on the topic sum to the records produced so far.
/// Returns, per record, the seconds from its acknowledgement to that commit (`pause(i)` is
/// slept before record `i`). Gives up after `deadline` per record.
pub(crate) fn produce_until_committed(
    brokers: &str,
    topic: &str,
    group: &str,
    partitions: i32,
    records: &[(Vec<u8>, Vec<u8>)],
    pause: impl Fn(usize) -> Duration,
    deadline: Duration,
) -> anyhow::Result<Vec<f64>> {
    let p: BaseProducer<Counting> = producer_config(brokers, "none")
        .set("linger.ms", "0")
        .create_with_context(Counting::default())
        .context("creating producer")?;
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .context("creating the offsets reader")?;
    let mut out = Vec::with_capacity(records.len());
    for (i, (key, value)) in records.iter().enumerate() {
        std::thread::sleep(pause(i));
        send_blocking(&p, BaseRecord::to(topic).key(&key[..]).payload(&value[..]))?;
        p.flush(Duration::from_secs(30))
            .context("flushing producer")?;
        let errors = p.context().errors.load(Ordering::Relaxed);
        if errors > 0 {
            bail!("a record failed to be delivered to {topic}");
        }
        let acked = Instant::now();
        let want = i as u64 + 1;
        loop {
            if committed_sum(&c, topic, partitions).is_some_and(|n| n >= want) {
                out.push(acked.elapsed().as_secs_f64());
                break;
            }
            if acked.elapsed() > deadline {
                bail!(
                    "record {want} of {topic} not committed by group {group} within {deadline:?}"
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(out)
}

/// Consumes `topic` in a fresh consumer group (read_committed) until `expect` records arrived;
/// does nothing with them.
pub(crate) fn consume(
    brokers: &str,
    topic: &str,
    group: &str,
    expect: u64,
    deadline: Duration,
) -> anyhow::Result<Throughput> {
    pipe(
        brokers,
        topic,
        group,
        expect,
        deadline,
        None,
        |_, _| unreachable!(),
    )
}

/// Where a pipe writes.
pub(crate) struct PipeOut<'a> {
    /// Output topic.
    pub(crate) topic: &'a str,
    /// Producer compression.
    pub(crate) compression: &'a str,
}

/// Consumes `topic` (fresh group, read_committed) and, with `out`, produces `map(key, value)`
/// of every record to `out.topic` (a no-op consume→produce: the ceiling of kafka-source).
pub(crate) fn pipe<F>(
    brokers: &str,
    topic: &str,
    group: &str,
    expect: u64,
    deadline: Duration,
    out: Option<PipeOut<'_>>,
    mut map: F,
) -> anyhow::Result<Throughput>
where
    F: FnMut(&rdkafka::message::BorrowedMessage<'_>, &[u8]) -> Vec<u8>,
{
    let c: BaseConsumer = consumer_config(brokers, group)
        .create()
        .context("creating consumer")?;
    let producer: Option<(BaseProducer<Counting>, &str)> = match &out {
        Some(o) => Some((
            producer_config(brokers, o.compression)
                .create_with_context(Counting::default())
                .context("creating producer")?,
            o.topic,
        )),
        None => None,
    };
    let start = Instant::now();
    c.subscribe(&[topic]).context("subscribing")?;
    let (mut n, mut bytes) = (0u64, 0u64);
    let mut first: Option<Instant> = None;
    while n < expect {
        if start.elapsed() > deadline {
            bail!("consuming {topic}: only {n} of {expect} records within {deadline:?}");
        }
        let Some(m) = c.poll(Duration::from_millis(100)) else {
            continue;
        };
        let m = m.with_context(|| format!("consuming {topic}"))?;
        first.get_or_insert_with(Instant::now);
        let value = m.payload().unwrap_or_default();
        n += 1;
        bytes += value.len() as u64;
        if let Some((p, out_topic)) = &producer {
            let mapped = map(&m, value);
            let key = m.key().unwrap_or_default();
            send_blocking(p, BaseRecord::to(out_topic).key(key).payload(&mapped[..]))?;
            if n % 1024 == 0 {
                p.poll(Duration::ZERO);
            }
        }
    }
    if let Some((p, out_topic)) = &producer {
        p.flush(Duration::from_secs(120))
            .context("flushing producer")?;
        let errors = p.context().errors.load(Ordering::Relaxed);
        if errors > 0 {
            bail!("{errors} records failed to be delivered to {out_topic}");
        }
    }
    let end = Instant::now();
    let first = first.unwrap_or(end);
    Ok(Throughput::new(
        n,
        bytes,
        (end - first).as_secs_f64(),
        (end - start).as_secs_f64(),
    ))
}

/// What a progress probe counts.
#[derive(Debug, Clone)]
pub(crate) enum Probe {
    /// Sum of the high watermarks of a topic (records written, markers included).
    HighWatermarks { topic: String },
    /// Sum of a group's committed offsets on a topic (records durably processed).
    Committed { topic: String, group: String },
}

/// Samples `(seconds since start, count)` every `every` until `stop`; runs on its own thread.
pub(crate) fn spawn_probe(
    brokers: &str,
    probe: Probe,
    partitions: i32,
    every: Duration,
    stop: Arc<std::sync::atomic::AtomicBool>,
    start: Instant,
) -> std::thread::JoinHandle<Vec<(f64, u64)>> {
    let brokers = brokers.to_owned();
    std::thread::spawn(move || {
        let mut samples = Vec::new();
        let group = match &probe {
            Probe::Committed { group, .. } => group.clone(),
            Probe::HighWatermarks { .. } => "form-etl-bench-probe".to_owned(),
        };
        let Ok(c) = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .create::<BaseConsumer>()
        else {
            return samples;
        };
        // One last sample after `stop` (set once the process exited): its final commit counts.
        loop {
            let stopping = stop.load(Ordering::Relaxed);
            let count = match &probe {
                Probe::HighWatermarks { topic } => (0..partitions)
                    .map(|p| {
                        c.fetch_watermarks(topic, p, Duration::from_secs(2))
                            .map(|(_, hi)| hi.max(0) as u64)
                    })
                    .sum::<Result<u64, _>>()
                    .ok(),
                Probe::Committed { topic, .. } => committed_sum(&c, topic, partitions),
            };
            if let Some(count) = count {
                samples.push((start.elapsed().as_secs_f64(), count));
            }
            if stopping {
                break;
            }
            std::thread::sleep(every);
        }
        samples
    })
}

/// Sum of the committed offsets of `c`'s group on `topic` (`None` when the broker does not
/// answer).
pub(crate) fn committed_sum(c: &BaseConsumer, topic: &str, partitions: i32) -> Option<u64> {
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    c.committed_offsets(tpl, Duration::from_secs(2))
        .ok()
        .map(|t| {
            t.elements()
                .iter()
                .map(|e| match e.offset() {
                    Offset::Offset(o) => o.max(0) as u64,
                    _ => 0,
                })
                .sum()
        })
}

/// Steady rate from probe samples: records per second between the first sample at or above
/// `lo` and the first at or above `hi` (fractions of `total`).
pub(crate) fn steady_rate(samples: &[(f64, u64)], total: u64, lo: f64, hi: f64) -> Option<f64> {
    let at = |f: f64| {
        samples
            .iter()
            .find(|(_, c)| *c as f64 >= f * total as f64)
            .copied()
    };
    let (t0, c0) = at(lo)?;
    let (t1, c1) = at(hi)?;
    (t1 > t0 && c1 > c0).then(|| (c1 - c0) as f64 / (t1 - t0))
}

/// Seconds at which the samples first reach `count`.
pub(crate) fn time_to(samples: &[(f64, u64)], count: u64) -> Option<f64> {
    samples.iter().find(|(_, c)| *c >= count).map(|(t, _)| *t)
}

/// `(seconds since the first line, count)` from a connector's progress lines: the number
/// after `marker` (e.g. `committed=` for kafka-source, `records in: ` for s3-sink) on lines that
/// start with an RFC 3339 timestamp (ANSI colours ignored).
pub(crate) fn progress_from_log(log: &str, marker: &str) -> Vec<(f64, u64)> {
    let mut out = Vec::new();
    let mut t0: Option<chrono::DateTime<chrono::FixedOffset>> = None;
    for raw in log.lines() {
        let line = strip_ansi(raw);
        let Some(ts) = line
            .split_whitespace()
            .next()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        else {
            continue;
        };
        let t0 = *t0.get_or_insert(ts);
        let Some(i) = line.find(marker) else { continue };
        let digits: String = line[i + marker.len()..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        if let Ok(n) = digits.parse::<u64>() {
            out.push(((ts - t0).num_microseconds().unwrap_or(0) as f64 / 1e6, n));
        }
    }
    out
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod log_tests {
    use super::*;

    #[test]
    fn parses_progress_lines() {
        let log = "\u{1b}[2m2026-11-25T19:11:05.000000Z\u{1b}[0m INFO start\n\
                   \u{1b}[2m2026-11-25T19:11:06.500000Z\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m progress: received=10 committed=5 (5/s)\n\
                   2026-11-25T19:11:07.000000Z INFO progress: records in: 98760 (7001/s)\n";
        assert_eq!(progress_from_log(log, "committed="), vec![(1.5, 5)]);
        assert_eq!(progress_from_log(log, "records in: "), vec![(2.0, 98760)]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steady_rate_between_fractions() {
        let s = [
            (0.0, 0),
            (1.0, 0),
            (2.0, 100),
            (3.0, 500),
            (4.0, 900),
            (5.0, 1000),
        ];
        assert_eq!(steady_rate(&s, 1000, 0.1, 0.9), Some(400.0));
        assert_eq!(time_to(&s, 500), Some(3.0));
        assert_eq!(steady_rate(&s[..2], 1000, 0.1, 0.9), None);
    }
}

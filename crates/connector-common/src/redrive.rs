//! The dead-letter queue's way back: `dlq list` (what is there, by reason, detail, connector
//! and time) and `dlq replay` (re-send chosen letters to the topic they came from, exactly
//! once), as a subcommand of each connector (`s3-sink dlq …`, `kafka-source dlq …`). Both read
//! the connector's config for the brokers, their properties and the DLQ topic.
//!
//! A replay reads the DLQ with a consumer group of its own (`--group`, default
//! `form-etl-redrive-{hash of the filters}`, so a repeated replay with the same filters goes on
//! where the last one stopped) and re-sends each chosen letter, key, value and headers as they
//! were plus a `dlq.redriven` header (`{dlq topic}/{partition}/{offset}`), to the partition of
//! the topic its headers name. Every `--batch` letters, one Kafka transaction commits the
//! re-sent records and the group's offsets together: a replay killed anywhere re-sends, when
//! run again, exactly the letters not yet committed. It stops at the ends the DLQ had when it
//! started (letters that arrive meanwhile, e.g. a re-sent record dead-lettered again, wait for
//! the next replay). Letters it does not choose are passed over (their offsets committed too).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, bail};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, ThreadedProducer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use sha2::{Digest, Sha256};
use tracing::info;

use crate::dlq::DlqInfo;
use crate::eos::{SendError, TxnProducer};

/// The header a re-sent record carries: where its letter was.
pub const HEADER_REDRIVEN: &str = "dlq.redriven";

/// `dlq list` / `dlq replay`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum DlqCommand {
    /// Counts the dead letters by reason, detail, connector and time.
    List {
        #[command(flatten)]
        filter: FilterArgs,
        /// Details shown per reason (the most frequent first).
        #[arg(long, default_value_t = 5)]
        details: usize,
    },
    /// Re-sends the chosen dead letters to the topic they came from, exactly once.
    Replay {
        #[command(flatten)]
        filter: FilterArgs,
        /// Show what would be re-sent; send and commit nothing.
        #[arg(long)]
        dry_run: bool,
        /// Letters per transaction.
        #[arg(long, default_value_t = 500)]
        batch: usize,
        /// The consumer group that remembers how far the replay went (default: derived from
        /// the filters).
        #[arg(long)]
        group: Option<String>,
    },
}

/// Which letters.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct FilterArgs {
    /// Only letters with this reason (repeatable), e.g. `schema_mismatch`.
    #[arg(long = "reason")]
    pub reasons: Vec<String>,
    /// Only letters of this connector (`dlq.connector`).
    #[arg(long)]
    pub connector: Option<String>,
    /// Only letters written at or after this time (RFC 3339, e.g. `2026-12-03T10:00:00Z`).
    #[arg(long, value_parser = parse_time)]
    pub since: Option<i64>,
    /// Only letters written before this time (RFC 3339).
    #[arg(long, value_parser = parse_time)]
    pub until: Option<i64>,
}

fn parse_time(s: &str) -> Result<i64, String> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_millis())
        .map_err(|e| format!("`{s}` is not an RFC 3339 time: {e}"))
}

impl FilterArgs {
    fn matches(&self, info: &DlqInfo, timestamp_ms: Option<i64>) -> bool {
        (self.reasons.is_empty() || self.reasons.iter().any(|r| r == info.reason.as_str()))
            && self.connector.as_ref().is_none_or(|c| *c == info.connector)
            && self
                .since
                .is_none_or(|s| timestamp_ms.is_some_and(|t| t >= s))
            && self
                .until
                .is_none_or(|u| timestamp_ms.is_some_and(|t| t < u))
    }

    /// The default replay group: one per set of filters.
    fn group(&self, dlq_topic: &str) -> String {
        let mut reasons = self.reasons.clone();
        reasons.sort();
        let text = format!(
            "{dlq_topic}|{}|{:?}|{:?}|{:?}",
            reasons.join(","),
            self.connector,
            self.since,
            self.until
        );
        let h = Sha256::digest(text.as_bytes());
        format!("form-etl-redrive-{}", hex_short(&h))
    }
}

fn hex_short(b: &[u8]) -> String {
    b.iter().take(6).map(|x| format!("{x:02x}")).collect()
}

/// What `dlq list` found.
#[derive(Debug, Default)]
pub struct Summary {
    pub total: u64,
    pub chosen: u64,
    /// reason → (count, detail → count)
    pub by_reason: BTreeMap<String, (u64, BTreeMap<String, u64>)>,
    pub by_connector: BTreeMap<String, u64>,
    pub first_ms: Option<i64>,
    pub last_ms: Option<i64>,
    /// Letters without form-etl's headers.
    pub unreadable: u64,
}

impl Summary {
    /// The report `dlq list` prints.
    pub fn render(&self, details: usize) -> String {
        let t = |ms: Option<i64>| {
            ms.and_then(chrono::DateTime::from_timestamp_millis)
                .map_or("-".to_owned(), |d| d.to_rfc3339())
        };
        let mut out = format!(
            "{} dead letters ({} chosen by the filters), written {} .. {}\n",
            self.total,
            self.chosen,
            t(self.first_ms),
            t(self.last_ms)
        );
        for (c, n) in &self.by_connector {
            out.push_str(&format!("  connector {c}: {n}\n"));
        }
        for (reason, (n, by_detail)) in &self.by_reason {
            out.push_str(&format!("  {reason}: {n}\n"));
            let mut d: Vec<(&String, &u64)> = by_detail.iter().collect();
            d.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            for (detail, k) in d.into_iter().take(details) {
                out.push_str(&format!("    {k} × {detail}\n"));
            }
        }
        if self.unreadable > 0 {
            out.push_str(&format!(
                "  {} records without dlq.* headers\n",
                self.unreadable
            ));
        }
        out
    }
}

/// The partitions of `topic` and their high watermarks now.
fn ends(consumer: &BaseConsumer, topic: &str) -> anyhow::Result<Vec<(i32, i64)>> {
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .with_context(|| format!("reading the metadata of `{topic}`"))?;
    let t = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .with_context(|| format!("no topic `{topic}`"))?;
    if t.partitions().is_empty() {
        bail!("the topic `{topic}` does not exist");
    }
    t.partitions()
        .iter()
        .map(|p| {
            let (_, hi) = consumer
                .fetch_watermarks(topic, p.id(), Duration::from_secs(10))
                .with_context(|| format!("the end of `{topic}` partition {}", p.id()))?;
            Ok((p.id(), hi))
        })
        .collect()
}

/// Reads `topic` from `start` (per partition) to the `ends`, calling `each` per record.
fn read_to_ends(
    consumer: &BaseConsumer,
    topic: &str,
    start: &[(i32, Offset)],
    ends: &[(i32, i64)],
    mut each: impl FnMut(&rdkafka::message::BorrowedMessage<'_>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut tpl = TopicPartitionList::new();
    for (p, o) in start {
        tpl.add_partition_offset(topic, *p, *o)?;
    }
    consumer.assign(&tpl)?;
    let done = |consumer: &BaseConsumer| -> anyhow::Result<bool> {
        let pos = consumer.position()?;
        Ok(ends.iter().all(|(p, end)| {
            *end == 0
                || matches!(pos.find_partition(topic, *p).map(|e| e.offset()), Some(Offset::Offset(o)) if o >= *end)
        }))
    };
    let mut idle = 0;
    loop {
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                idle = 0;
                let end = ends
                    .iter()
                    .find(|(p, _)| *p == m.partition())
                    .map_or(0, |e| e.1);
                if m.offset() < end {
                    each(&m)?;
                }
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "Kafka consumer error (retried by the client).")
            }
            None => {
                idle += 1;
                // Transaction markers take offsets: the positions pass the ends without a record.
                if done(consumer)? || idle > 120 {
                    return Ok(());
                }
            }
        }
        if done(consumer)? {
            return Ok(());
        }
    }
}

fn reader(kafka: &ClientConfig, group: &str) -> anyhow::Result<BaseConsumer> {
    let mut c = kafka.clone();
    c.set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest");
    c.create().context("creating the DLQ consumer")
}

/// `dlq list`.
pub fn list(kafka: &ClientConfig, dlq_topic: &str, filter: &FilterArgs) -> anyhow::Result<Summary> {
    let consumer = reader(kafka, &format!("form-etl-dlq-list-{}", std::process::id()))?;
    let ends = ends(&consumer, dlq_topic)?;
    let start: Vec<(i32, Offset)> = ends.iter().map(|(p, _)| (*p, Offset::Beginning)).collect();
    let mut s = Summary::default();
    read_to_ends(&consumer, dlq_topic, &start, &ends, |m| {
        s.total += 1;
        let ts = m.timestamp().to_millis();
        s.first_ms = s.first_ms.min(ts).or(ts);
        s.last_ms = s.last_ms.max(ts);
        let Some(info) = m.headers().and_then(DlqInfo::from_headers) else {
            s.unreadable += 1;
            return Ok(());
        };
        if !filter.matches(&info, ts) {
            return Ok(());
        }
        s.chosen += 1;
        *s.by_connector.entry(info.connector.clone()).or_default() += 1;
        let e = s
            .by_reason
            .entry(info.reason.as_str().to_owned())
            .or_default();
        e.0 += 1;
        *e.1.entry(info.detail.clone()).or_default() += 1;
        Ok(())
    })?;
    Ok(s)
}

/// What `dlq replay` did.
#[derive(Debug, Default)]
pub struct Replayed {
    pub resent: u64,
    pub passed_over: u64,
    pub transactions: u64,
    pub by_topic: BTreeMap<String, u64>,
}

/// `dlq replay` (see the module docs). `transactional_id` must be unique to this replay group.
pub fn replay(
    kafka: &ClientConfig,
    dlq_topic: &str,
    filter: &FilterArgs,
    group: Option<&str>,
    batch: usize,
    dry_run: bool,
) -> anyhow::Result<Replayed> {
    let group = group.map_or_else(|| filter.group(dlq_topic), str::to_owned);
    let consumer = reader(kafka, &group)?;
    let ends = ends(&consumer, dlq_topic)?;
    // The producer first: its `init_transactions` fences a killed replay of this group and
    // aborts its open transaction, whose pending offsets would otherwise hold the fetch below.
    let txn = if dry_run {
        None
    } else {
        let mut pc = kafka.clone();
        for k in [
            "group.instance.id",
            "session.timeout.ms",
            "isolation.level",
            "auto.offset.reset",
        ] {
            pc.remove(k);
        }
        pc.set("transactional.id", format!("{group}-txn"))
            .set("enable.idempotence", "true");
        let producer: ThreadedProducer<_> = pc.create().context("creating the producer")?;
        let t = TxnProducer::new(producer, Duration::from_secs(30));
        t.init().context("initialising transactions")?;
        Some(t)
    };
    // Where this group's replay stopped last time.
    let mut tpl = TopicPartitionList::new();
    for (p, _) in &ends {
        tpl.add_partition(dlq_topic, *p);
    }
    let mut attempt = 0;
    let committed = loop {
        attempt += 1;
        match consumer.committed_offsets(tpl.clone(), Duration::from_secs(30)) {
            Ok(c) => break c,
            Err(e) if attempt < 4 => {
                tracing::warn!(error = %e, attempt, "Reading how far the replay group went failed; retrying.");
            }
            Err(e) => return Err(e).context("reading how far the replay group went"),
        }
    };
    let start: Vec<(i32, Offset)> = ends
        .iter()
        .map(|(p, _)| {
            let o = committed
                .find_partition(dlq_topic, *p)
                .map(|e| e.offset())
                .filter(|o| matches!(o, Offset::Offset(_)))
                .unwrap_or(Offset::Beginning);
            (*p, o)
        })
        .collect();
    info!(%group, dlq_topic, ?start, ?ends, dry_run, "Replaying dead letters.");
    let mut out = Replayed::default();
    let mut pending = 0usize;
    let mut positions: BTreeMap<i32, i64> = BTreeMap::new();
    let commit = |txn: &TxnProducer<_>,
                  positions: &BTreeMap<i32, i64>,
                  out: &mut Replayed|
     -> anyhow::Result<()> {
        let mut tpl = TopicPartitionList::new();
        for (p, o) in positions {
            tpl.add_partition_offset(dlq_topic, *p, Offset::Offset(*o))?;
        }
        let gm = consumer
            .group_metadata()
            .context("the replay consumer has no group metadata")?;
        txn.begin()?;
        txn.commit(&tpl, &gm)?;
        out.transactions += 1;
        Ok(())
    };
    read_to_ends(&consumer, dlq_topic, &start, &ends, |m| {
        positions.insert(m.partition(), m.offset() + 1);
        let info = m.headers().and_then(DlqInfo::from_headers);
        let chosen = info
            .as_ref()
            .filter(|i| filter.matches(i, m.timestamp().to_millis()));
        let Some(info) = chosen else {
            out.passed_over += 1;
            return Ok(());
        };
        out.resent += 1;
        *out.by_topic.entry(info.topic.clone()).or_default() += 1;
        let Some(txn) = &txn else { return Ok(()) };
        txn.begin()?;
        let marker = format!("{dlq_topic}/{}/{}", m.partition(), m.offset());
        let mut headers = OwnedHeaders::new();
        if let Some(h) = m.headers() {
            for x in h.iter().filter(|x| !x.key.starts_with("dlq.")) {
                headers = headers.insert(Header {
                    key: x.key,
                    value: x.value,
                });
            }
        }
        headers = headers.insert(Header {
            key: HEADER_REDRIVEN,
            value: Some(marker.as_str()),
        });
        let mut rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&info.topic)
            .partition(info.partition)
            .headers(headers);
        if let Some(k) = m.key() {
            rec = rec.key(k);
        }
        if let Some(v) = m.payload() {
            rec = rec.payload(v);
        }
        match txn.send(rec) {
            Ok(()) => {}
            Err(SendError::TooLarge(e) | SendError::Other(e)) => {
                bail!("re-sending the letter at {marker} to `{}`: {e}", info.topic)
            }
        }
        pending += 1;
        if pending >= batch {
            commit(txn, &positions, &mut out)?;
            pending = 0;
        }
        Ok(())
    })?;
    if let Some(txn) = &txn
        && !positions.is_empty()
    {
        commit(txn, &positions, &mut out)?;
    }
    Ok(out)
}

/// Runs `cmd` against `dlq_topic` (the connector's `dlq.topic`), printing its report.
pub fn run_command(cmd: &DlqCommand, kafka: &ClientConfig, dlq_topic: &str) -> anyhow::Result<()> {
    match cmd {
        DlqCommand::List { filter, details } => {
            let s = list(kafka, dlq_topic, filter)?;
            print!("{}", s.render(*details));
        }
        DlqCommand::Replay {
            filter,
            dry_run,
            batch,
            group,
        } => {
            let r = replay(
                kafka,
                dlq_topic,
                filter,
                group.as_deref(),
                (*batch).max(1),
                *dry_run,
            )?;
            let verb = if *dry_run { "would re-send" } else { "re-sent" };
            println!(
                "{verb} {} dead letters ({} passed over) in {} transactions",
                r.resent, r.passed_over, r.transactions
            );
            for (t, n) in &r.by_topic {
                println!("  to {t}: {n}");
            }
        }
    }
    Ok(())
}

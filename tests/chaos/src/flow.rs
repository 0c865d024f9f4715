//! The events a scenario produces to its `form.events` topic, and the ledger of what was
//! produced where: the oracle's expectations.
//!
//! Valid events refer to the private API's generated forms (`form-000000` …) and each carries a
//! unique `event_happened_at` (microseconds): the identity the oracle recovers from every row.
//! Poison events are of known kinds, each with the dead-letter reason it must get.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use sha2::{Digest as _, Sha256};

/// A fixture form whose answer (~1.2 MB) is larger than Kafka takes: the event must be
/// dead-lettered with `answer_too_large`.
pub(crate) const HUGE_ANSWER_FORM: &str = "chaos-huge-answer";
/// A valid fixture form of ~100 KB; with a ~990 KB event the enriched record (~1.09 MB) is
/// larger than any Kafka default takes (1,048,588 bytes): `record_too_large`.
pub(crate) const WIDE_FORM: &str = "chaos-wide";
/// Bytes of a huge event: below the producers' default `message.max.bytes` (1,000,000), so the
/// event and its dead letter fit; the enriched record does not.
pub(crate) const HUGE_EVENT_BYTES: usize = 990_000;

/// What an event is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Kind {
    /// A valid event about a generated form.
    Valid,
    /// Not JSON (truncated, garbage, a stray comma).
    InvalidJson,
    /// A required field of the wrong JSON type, or an empty `form_id`.
    WrongType,
    /// `event_happened_at` that is no timestamp.
    BadTimestamp,
    /// A required field absent or null.
    MissingField,
    /// Bytes that are not UTF-8 inside a JSON string.
    InvalidUtf8,
    /// An event whose form's answer is too large ([`HUGE_ANSWER_FORM`]).
    HugeAnswer,
    /// An event so large that the enriched record is too large ([`WIDE_FORM`]).
    HugeEvent,
}

impl Kind {
    /// The small poison kinds, mixed into every flow.
    pub(crate) const SMALL_POISON: [Kind; 5] = [
        Kind::InvalidJson,
        Kind::WrongType,
        Kind::BadTimestamp,
        Kind::MissingField,
        Kind::InvalidUtf8,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Valid => "valid",
            Kind::InvalidJson => "invalid-json",
            Kind::WrongType => "wrong-type",
            Kind::BadTimestamp => "bad-timestamp",
            Kind::MissingField => "missing-field",
            Kind::InvalidUtf8 => "invalid-utf8",
            Kind::HugeAnswer => "huge-answer",
            Kind::HugeEvent => "huge-event",
        }
    }

    /// The `dlq.reason` the event must be dead-lettered with (`None`: it must not be).
    /// The two huge kinds' reasons are form-model's `AnswerTooLarge` and `RecordTooLarge`.
    pub(crate) fn expected_reason(self) -> Option<&'static str> {
        match self {
            Kind::Valid => None,
            Kind::InvalidJson | Kind::InvalidUtf8 => Some("invalid_json"),
            Kind::WrongType => Some("wrong_type"),
            Kind::BadTimestamp => Some("invalid_timestamp"),
            Kind::MissingField => Some("missing_field"),
            Kind::HugeAnswer => Some("answer_too_large"),
            Kind::HugeEvent => Some("record_too_large"),
        }
    }
}

/// How valid events' `event_happened_at` are chosen (both unique to the microsecond).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Times {
    /// 2024-03-01, -02, … (the sequence number modulo `days`) at 12:00:00 plus the sequence
    /// number in microseconds: `days` event dates, older than any answer (the cache serves them).
    Past { days: u32 },
    /// The wall clock (strictly increasing): every event happened after the cached answer was
    /// retrieved, so nearly every one needs a fresh API request.
    Now,
}

/// One event, as produced.
#[derive(Debug, Clone)]
pub(crate) struct Event {
    pub(crate) seq: u64,
    pub(crate) kind: Kind,
    pub(crate) key: Vec<u8>,
    pub(crate) value: Vec<u8>,
    /// Valid events: the form.
    pub(crate) form_id: Option<String>,
    /// Valid events: `event_happened_at` in microseconds since the epoch.
    pub(crate) happened_us: Option<i64>,
}

/// Makes events (deterministic for a seed, but for [`Times::Now`]).
#[derive(Debug)]
pub(crate) struct Generator {
    rng: StdRng,
    next_seq: u64,
    times: Times,
    last_us: i64,
    forms: Arc<Vec<String>>,
}

const POISON_TS: &str = "2024-03-01 12:00:00";

impl Generator {
    pub(crate) fn new(seed: u64, times: Times, forms: Arc<Vec<String>>) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
            next_seq: 0,
            times,
            last_us: 0,
            forms,
        }
    }

    pub(crate) fn rng(&mut self) -> &mut StdRng {
        &mut self.rng
    }

    fn happened_us(&mut self, seq: u64) -> i64 {
        match self.times {
            Times::Past { days } => {
                past_base_us(1 + (seq % u64::from(days.max(1))) as u32) + seq as i64
            }
            Times::Now => {
                let now = chrono::Utc::now().timestamp_micros();
                self.last_us = now.max(self.last_us + 1);
                self.last_us
            }
        }
    }

    /// The next event of `kind`.
    pub(crate) fn next(&mut self, kind: Kind) -> Event {
        let seq = self.next_seq;
        self.next_seq += 1;
        if kind == Kind::Valid {
            let form = self.forms[self.rng.random_range(0..self.forms.len())].clone();
            let us = self.happened_us(seq);
            let event_type = ["created", "updated", "deleted"][self.rng.random_range(0..3)];
            let value = serde_json::json!({
                "form_id": form,
                "form_title": "chaos",
                "event_happened_at": rfc3339_micros(us),
                "event_type": event_type,
            });
            return Event {
                seq,
                kind,
                key: form.clone().into_bytes(),
                value: value.to_string().into_bytes(),
                form_id: Some(form),
                happened_us: Some(us),
            };
        }
        let variant = self.rng.random_range(0..5usize);
        let value = poison_value(kind, variant, seq);
        Event {
            seq,
            kind,
            key: format!("poison-{seq}").into_bytes(),
            value,
            form_id: None,
            happened_us: None,
        }
    }
}

/// 2024-03-`day` 12:00:00 UTC in microseconds.
fn past_base_us(day: u32) -> i64 {
    chrono::NaiveDate::from_ymd_opt(2024, 3, day)
        .and_then(|d| d.and_hms_opt(12, 0, 0))
        .expect("a valid date")
        .and_utc()
        .timestamp_micros()
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
pub(crate) fn rfc3339_micros(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .expect("a representable time")
        .format("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string()
}

fn poison_value(kind: Kind, variant: usize, seq: u64) -> Vec<u8> {
    let ok_ts = POISON_TS;
    let text = match kind {
        Kind::Valid => unreachable!("not poison"),
        Kind::InvalidJson => match variant % 3 {
            0 => format!(
                r#"{{"form_id":"form-000001","event_happened_at":"{ok_ts}","event_type":"created""#
            ),
            1 => format!("not json {{ {seq}"),
            _ => format!(r#"{{"form_id":"form-000002",,"event_type":"created","n":{seq}}}"#),
        },
        Kind::WrongType => match variant {
            0 => format!(
                r#"{{"form_id":{seq},"event_happened_at":"{ok_ts}","event_type":"created"}}"#
            ),
            1 => r#"{"form_id":"form-000003","event_happened_at":20240301,"event_type":"created"}"#
                .to_owned(),
            2 => format!(
                r#"{{"form_id":"form-000004","event_happened_at":"{ok_ts}","event_type":true,"n":{seq}}}"#
            ),
            3 => format!(
                r#"{{"form_id":"","event_happened_at":"{ok_ts}","event_type":"created","n":{seq}}}"#
            ),
            _ => format!(
                r#"{{"form_id":"form-000005","form_title":7,"event_happened_at":"{ok_ts}","event_type":"created","n":{seq}}}"#
            ),
        },
        Kind::BadTimestamp => {
            let ts = [
                "2024-13-45 12:00:00",
                "yesterday at noon",
                "2024-03-01 25:61:00",
                "",
                "2024-03-01T12:00:00+25:00",
            ][variant];
            format!(
                r#"{{"form_id":"form-000006","event_happened_at":"{ts}","event_type":"created","n":{seq}}}"#
            )
        }
        Kind::MissingField => match variant % 3 {
            0 => format!(r#"{{"event_happened_at":"{ok_ts}","event_type":"created","n":{seq}}}"#),
            1 => format!(r#"{{"form_id":"form-000007","event_happened_at":"{ok_ts}","n":{seq}}}"#),
            _ => format!(
                r#"{{"form_id":"form-000008","event_happened_at":null,"event_type":"created","n":{seq}}}"#
            ),
        },
        Kind::InvalidUtf8 => {
            let (head, tail) = match variant % 3 {
                0 => ("{\"form_id\":\"form-", &b"\xff\xfe\""[..]),
                1 => (
                    "{\"form_id\":\"form-000009\",\"note\":\"",
                    &b"\xc3\x28\""[..],
                ),
                _ => (
                    "{\"form_id\":\"form-000010\",\"note\":\"",
                    &b"\xc0\xaf\""[..],
                ),
            };
            let mut v = head.as_bytes().to_vec();
            v.extend_from_slice(tail);
            v.extend_from_slice(
                format!(r#","event_happened_at":"{ok_ts}","event_type":"created","n":{seq}}}"#)
                    .as_bytes(),
            );
            return v;
        }
        Kind::HugeAnswer => format!(
            r#"{{"form_id":"{HUGE_ANSWER_FORM}","event_happened_at":"{ok_ts}","event_type":"updated","n":{seq}}}"#
        ),
        Kind::HugeEvent => {
            let head = format!(
                r#"{{"form_id":"{WIDE_FORM}","event_happened_at":"{ok_ts}","event_type":"updated","n":{seq},"padding":""#
            );
            let pad = HUGE_EVENT_BYTES - head.len() - 2;
            let mut s = head;
            s.extend(std::iter::repeat_n('p', pad));
            s.push_str("\"}");
            s
        }
    };
    text.into_bytes()
}

/// The fixture forms of the private API besides the seed's: the two huge ones.
pub(crate) fn write_fixture_forms(dir: &std::path::Path) -> anyhow::Result<()> {
    let field = |i: usize| serde_json::json!({"id": format!("wide-q{i}"), "title": "q", "reference": format!("r{i}"), "type": "open_text"});
    let wide = serde_json::json!({
        "id": WIDE_FORM, "type": "form", "title": "W".repeat(100_000),
        "settings": {"language": "en"}, "fields": [field(0)],
    });
    std::fs::write(dir.join(format!("{WIDE_FORM}.json")), wide.to_string())?;
    let huge = serde_json::json!({
        "id": HUGE_ANSWER_FORM, "type": "form", "title": "H".repeat(1_200_000),
        "settings": {"language": "en"}, "fields": [field(0)],
    });
    std::fs::write(
        dir.join(format!("{HUGE_ANSWER_FORM}.json")),
        huge.to_string(),
    )?;
    Ok(())
}

/// One produced event: where it went, and what the oracle needs of it.
#[derive(Debug, Clone)]
pub(crate) struct Produced {
    pub(crate) seq: u64,
    pub(crate) kind: Kind,
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    pub(crate) key: Vec<u8>,
    pub(crate) value_sha256: [u8; 32],
    pub(crate) form_id: Option<String>,
    pub(crate) happened_us: Option<i64>,
}

/// Everything a flow produced, in delivery order.
#[derive(Debug, Clone, Default)]
pub(crate) struct Ledger {
    pub(crate) events: Vec<Produced>,
}

impl Ledger {
    pub(crate) fn poison(&self) -> usize {
        self.events.iter().filter(|e| e.kind != Kind::Valid).count()
    }
}

/// What a flow produces.
#[derive(Debug)]
pub(crate) enum Plan {
    /// Valid events with a share of small poison, until stopped.
    Mix { poison_ratio: f64 },
    /// These kinds in this order, then the flow ends.
    List(VecDeque<Kind>),
}

/// A producer for the chaos flows: idempotent, `acks=all`, and a delivery timeout long
/// enough to ride out a broker restart (5 minutes).
pub(crate) fn producer(bootstrap: &str) -> anyhow::Result<FutureProducer> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "300000")
        .create()
        .context("creating the chaos producer")
}

/// A running producer at a steady rate; [`Flow::finish`] stops it and returns the ledger.
#[derive(Debug)]
pub(crate) struct Flow {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<anyhow::Result<Ledger>>,
}

impl Flow {
    /// Starts producing `plan` to `topic` at `rate` events per second.
    pub(crate) fn start(
        producer: FutureProducer,
        topic: String,
        generator: Generator,
        plan: Plan,
        rate: f64,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(run_flow(
            producer,
            topic,
            generator,
            plan,
            rate,
            stop.clone(),
        ));
        Self { stop, task }
    }

    /// Stops producing (a list plan stops early), waits for every delivery, returns the ledger.
    pub(crate) async fn finish(self) -> anyhow::Result<Ledger> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.context("the flow task")?
    }

    /// Waits until a [`Plan::List`] flow has produced everything.
    pub(crate) async fn wait_all(self) -> anyhow::Result<Ledger> {
        self.task.await.context("the flow task")?
    }
}

type Pending = futures::future::BoxFuture<'static, anyhow::Result<Produced>>;

async fn run_flow(
    producer: FutureProducer,
    topic: String,
    mut generator: Generator,
    mut plan: Plan,
    rate: f64,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Ledger> {
    let started = Instant::now();
    let mut sent = 0u64;
    let mut ledger = Ledger::default();
    let mut pending: FuturesUnordered<Pending> = FuturesUnordered::new();
    'outer: loop {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let due = (started.elapsed().as_secs_f64() * rate) as u64;
        while sent < due {
            let kind = match &mut plan {
                Plan::Mix { poison_ratio } => {
                    let r: f64 = generator.rng().random();
                    if r < *poison_ratio {
                        let i = generator.rng().random_range(0..Kind::SMALL_POISON.len());
                        Kind::SMALL_POISON[i]
                    } else {
                        Kind::Valid
                    }
                }
                Plan::List(kinds) => match kinds.pop_front() {
                    Some(k) => k,
                    None => break 'outer,
                },
            };
            let event = generator.next(kind);
            let delivery = send(&producer, &topic, event).await?;
            pending.push(delivery);
            sent += 1;
        }
        let tick = tokio::time::sleep(Duration::from_millis(20));
        tokio::pin!(tick);
        loop {
            tokio::select! {
                _ = &mut tick => break,
                Some(done) = pending.next(), if !pending.is_empty() => {
                    ledger.events.push(done?);
                }
            }
        }
    }
    while let Some(done) = pending.next().await {
        ledger.events.push(done?);
    }
    producer
        .flush(Duration::from_secs(60))
        .context("flushing the chaos producer")?;
    Ok(ledger)
}

/// Enqueues `event` (waiting while librdkafka's queue is full) and returns its delivery.
async fn send(producer: &FutureProducer, topic: &str, event: Event) -> anyhow::Result<Pending> {
    let mut record = FutureRecord::to(topic)
        .key(event.key.as_slice())
        .payload(event.value.as_slice());
    let delivery = loop {
        match producer.send_result(record) {
            Ok(d) => break d,
            Err((e, r))
                if e.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::QueueFull) =>
            {
                record = r;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err((e, _)) => bail!("producing event {} to {topic}: {e}", event.seq),
        }
    };
    let sha: [u8; 32] = Sha256::digest(&event.value).into();
    let topic = topic.to_owned();
    Ok(Box::pin(async move {
        let d = delivery
            .await
            .map_err(|_| anyhow!("the producer dropped event {}", event.seq))?
            .map_err(|(e, _)| anyhow!("delivering event {} to {topic}: {e}", event.seq))?;
        Ok(Produced {
            seq: event.seq,
            kind: event.kind,
            partition: d.partition,
            offset: d.offset,
            key: event.key,
            value_sha256: sha,
            form_id: event.form_id,
            happened_us: event.happened_us,
        })
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generator(times: Times) -> Generator {
        Generator::new(
            7,
            times,
            Arc::new(vec!["form-000001".into(), "form-000002".into()]),
        )
    }

    #[test]
    fn valid_events_have_unique_micro_timestamps_over_three_dates() {
        let mut g = generator(Times::Past { days: 3 });
        let events: Vec<Event> = (0..30).map(|_| g.next(Kind::Valid)).collect();
        let mut us: Vec<i64> = events.iter().map(|e| e.happened_us.unwrap()).collect();
        us.sort();
        us.dedup();
        assert_eq!(us.len(), 30);
        let v: serde_json::Value = serde_json::from_slice(&events[4].value).unwrap();
        assert_eq!(v["event_happened_at"], "2024-03-02T12:00:00.000004Z");
        let mut g = generator(Times::Now);
        let a = g.next(Kind::Valid).happened_us.unwrap();
        let b = g.next(Kind::Valid).happened_us.unwrap();
        assert!(b > a);
    }

    #[test]
    fn poison_is_what_it_claims() {
        for variant in 0..5 {
            for kind in Kind::SMALL_POISON {
                let v = poison_value(kind, variant, 42);
                let parsed: Result<serde_json::Value, _> = serde_json::from_slice(&v);
                match kind {
                    Kind::InvalidJson | Kind::InvalidUtf8 => {
                        assert!(parsed.is_err(), "{kind:?} {variant}")
                    }
                    _ => assert!(
                        parsed.is_ok(),
                        "{kind:?} {variant}: {}",
                        String::from_utf8_lossy(&v)
                    ),
                }
                if kind == Kind::InvalidUtf8 {
                    assert!(std::str::from_utf8(&v).is_err());
                }
            }
        }
        let huge = poison_value(Kind::HugeEvent, 0, 1);
        assert_eq!(huge.len(), HUGE_EVENT_BYTES);
        let v: serde_json::Value = serde_json::from_slice(&huge).unwrap();
        assert_eq!(v["form_id"], WIDE_FORM);
    }
}

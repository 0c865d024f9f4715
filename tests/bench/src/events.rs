//! Generated input: form events (docs/internals.md, `form.events`) and, for the ceilings, the
//! enriched records kafka-source would write for them (`form.enriched`).

use std::fmt::Write as _;

/// First `event_happened_at` of a run: a past instant, so every cached form (retrieved now)
/// may serve every event.
const BASE_EPOCH_S: i64 = 1_714_521_600; // 2024-05-01 00:00:00 UTC
/// Events are spaced this far apart in event time: 1M events span about 14 hours, one date.
const EVENT_SPACING_MS: i64 = 50;
/// The event types the generator cycles through (none is `deleted`: no 404 path in the bench).
const EVENT_TYPES: [&str; 3] = ["created", "updated", "submitted"];

/// One generated event.
#[derive(Debug, Clone)]
pub(crate) struct Event {
    /// The form id (also the record key).
    pub(crate) form_id: String,
    /// Index of the form among the generated ones.
    pub(crate) form: usize,
    /// The JSON value.
    pub(crate) value: Vec<u8>,
}

/// SplitMix64: deterministic, dependency-free.
#[derive(Debug)]
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0; the modulo bias is irrelevant here).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// The generated forms API's id of form `i`.
pub(crate) fn form_id(i: usize) -> String {
    format!("form-{i:06}")
}

/// `n` events over `forms` forms. `distinct`: event `i` is about form `i` (every form once, the
/// cold-cache case); otherwise forms are drawn uniformly with `seed`.
pub(crate) fn generate(n: usize, forms: usize, seed: u64, distinct: bool) -> Vec<Event> {
    let mut rng = SplitMix64::new(seed);
    let mut out = Vec::with_capacity(n);
    let mut value = String::with_capacity(160);
    for i in 0..n {
        let form = if distinct {
            i % forms
        } else {
            rng.below(forms)
        };
        let id = form_id(form);
        let at = chrono::DateTime::from_timestamp(
            BASE_EPOCH_S + (i as i64 * EVENT_SPACING_MS) / 1000,
            0,
        )
        .expect("in range");
        value.clear();
        let _ = write!(
            value,
            r#"{{"form_id":"{id}","form_title":"bench_form_{form}","event_happened_at":"{}","event_type":"{}"}}"#,
            at.format("%Y-%m-%d %H:%M:%S"),
            EVENT_TYPES[i % EVENT_TYPES.len()],
        );
        out.push(Event {
            form_id: id,
            form,
            value: value.clone().into_bytes(),
        });
    }
    out
}

/// The enriched record (docs/internals.md, `form.enriched`) for an event value and the API's
/// answer, as kafka-source would write it (fixed `retrieved_timestamp`).
pub(crate) fn enriched(
    event_value: &[u8],
    form_json: &[u8],
    topic: &str,
    partition: i32,
    offset: i64,
) -> Vec<u8> {
    let mut v = Vec::with_capacity(event_value.len() + form_json.len() + 160);
    v.extend_from_slice(br#"{"event":"#);
    v.extend_from_slice(event_value);
    v.extend_from_slice(br#","form":"#);
    v.extend_from_slice(form_json);
    v.extend_from_slice(
        br#","retrieved_timestamp":"2024-05-02T00:00:00.000000Z","source":{"topic":""#,
    );
    v.extend_from_slice(topic.as_bytes());
    let _ = write!(
        VecWriter(&mut v),
        r#"","partition":{partition},"offset":{offset}}}}}"#
    );
    v
}

struct VecWriter<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for VecWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_valid_and_deterministic() {
        let a = generate(10, 3, 7, false);
        let b = generate(10, 3, 7, false);
        assert_eq!(
            a.iter().map(|e| &e.value).collect::<Vec<_>>(),
            b.iter().map(|e| &e.value).collect::<Vec<_>>()
        );
        let v: serde_json::Value = serde_json::from_slice(&a[0].value).unwrap();
        assert_eq!(v["event_happened_at"], "2024-05-01 00:00:00");
        assert_eq!(v["form_id"], a[0].form_id.as_str());
        let e = form_model::Event::from_slice(&a[3].value).unwrap();
        assert_eq!(e.form_id(), a[3].form_id);
    }

    #[test]
    fn distinct_events_cover_every_form_once() {
        let a = generate(5, 5, 1, true);
        let ids: Vec<_> = a.iter().map(|e| e.form_id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "form-000000",
                "form-000001",
                "form-000002",
                "form-000003",
                "form-000004"
            ]
        );
    }

    #[test]
    fn enriched_record_is_json_of_the_contract() {
        let e = generate(1, 1, 1, true);
        let rec = enriched(
            &e[0].value,
            br#"{"id":"form-000000","fields":[]}"#,
            "t",
            2,
            42,
        );
        let v: serde_json::Value = serde_json::from_slice(&rec).unwrap();
        assert_eq!(v["source"]["partition"], 2);
        assert_eq!(v["source"]["offset"], 42);
        assert_eq!(v["form"]["id"], "form-000000");
        assert_eq!(v["event"]["form_id"], "form-000000");
    }
}

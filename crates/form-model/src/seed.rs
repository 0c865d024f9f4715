//! The reference case (`test-data/seed`, a copy of the project's seed fixture), embedded:
//! the runner uses it as the canary record for a new SmartModule.

use serde_json::{Map, Value};

use crate::event::{EnrichedRecord, Event, Source};

/// The seed event (`form.events.kv`, the value after the first `:`).
pub const SEED_EVENT_KV: &str = include_str!("../test-data/seed/form.events.kv");
/// The API's answer for the seed event.
pub const SEED_FORM_JSON: &str = include_str!("../test-data/seed/forms/abcde.json");
/// The `form` rows the seed case must give (`<time of the API response>` placeholder).
pub const SEED_EXPECTED_FORM: &str = include_str!("../test-data/seed/expected/form.jsonl");
/// The `form_field` rows the seed case must give.
pub const SEED_EXPECTED_FORM_FIELD: &str =
    include_str!("../test-data/seed/expected/form_field.jsonl");
/// The retrieved timestamp used for the canary record.
pub const CANARY_RETRIEVED_MICROS: i64 = 1_795_631_524_123_456;

/// The seed case as a `form.enriched` value, with `retrieved_micros` as the API's answer
/// time. Panics only if the embedded fixture is broken (a build defect, caught by tests).
pub fn seed_enriched(retrieved_micros: i64) -> Vec<u8> {
    let line = SEED_EVENT_KV.lines().next().unwrap_or_default();
    let value = line.split_once(':').map(|(_, v)| v).unwrap_or_default();
    let event = Event::from_slice(value.as_bytes()).expect("seed event is valid");
    let form: Map<String, Value> = serde_json::from_str(SEED_FORM_JSON).expect("seed form is JSON");
    let source = Source {
        topic: "form.events".to_owned(),
        partition: 0,
        offset: 0,
    };
    EnrichedRecord::new(event, Some(form), retrieved_micros, source).to_vec()
}

/// The canary record: the seed case at [`CANARY_RETRIEVED_MICROS`].
pub fn canary_record() -> Vec<u8> {
    seed_enriched(CANARY_RETRIEVED_MICROS)
}

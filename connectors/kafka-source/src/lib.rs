//! kafka-source: consume `form.events`, enrich every event from the forms API, produce the
//! enriched record to `form.enriched` (or the original to the DLQ) in Kafka transactions that
//! also commit the consumed offsets.

pub mod config;
pub mod enrich;
mod http1;
pub mod problems;
pub mod redact;
pub mod source;

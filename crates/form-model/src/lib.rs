#![doc = include_str!("../README.md")]

mod error;
mod event;
mod flatten;
mod json;
mod on_error;
pub mod seed;
mod time;

#[cfg(feature = "golden")]
#[doc(hidden)]
pub mod golden;

#[cfg(feature = "avro")]
pub mod avro;
#[cfg(feature = "avro")]
pub mod avro_encode;
#[cfg(feature = "avro")]
pub mod evolve;

pub use error::{DlqReason, RecordError};
pub use event::{DELETED_EVENT_TYPE, EnrichedRecord, Event, Source, validate_api_form};
pub use flatten::{
    FORM_FIELD_TABLE, FORM_TABLE, Flattened, Row, TIMESTAMP_COLUMNS, flatten, flatten_to_json,
    row_event_date, write_i64,
};
pub use json::plain_end as json_plain_end;
pub use on_error::{ON_ERROR_PARAM, OnError, flatten_or_error_record, write_error_record};
pub use seed::{CANARY_RETRIEVED_MICROS, canary_record, seed_enriched};
pub use time::{
    TimestampError, day_to_date, format_rfc3339_micros, micros_to_date, parse_timestamp,
};

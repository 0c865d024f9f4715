//! The record-level error: why one record cannot be modelled, with the dead-letter reason.

use thiserror::Error;

/// Dead-letter reasons (`dlq.reason` header values, docs/internals.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DlqReason {
    /// The value is not JSON.
    InvalidJson,
    /// A required field is absent.
    MissingField,
    /// A field has the wrong JSON type (or a required string is empty).
    WrongType,
    /// A timestamp field is not `YYYY-MM-DD HH:MM:SS` nor RFC 3339.
    InvalidTimestamp,
    /// The API has no such form (and the event is not a `deleted` one).
    FormNotFound,
    /// The API answered something that is not a form.
    InvalidApiResponse,
    /// A row does not fit the Avro schema.
    SchemaMismatch,
    /// A SmartModule refused the record.
    TransformError,
    /// The API's answer is longer than the connector takes (`enrich.max-answer-bytes`).
    AnswerTooLarge,
    /// The output record is larger than the producer may send (`message.max.bytes`).
    RecordTooLarge,
    /// The form id cannot be requested as a path segment (`.` or `..`).
    InvalidFormId,
}

impl DlqReason {
    /// Every reason, for metrics initialisation and header parsing.
    pub const ALL: [DlqReason; 11] = [
        Self::InvalidJson,
        Self::MissingField,
        Self::WrongType,
        Self::InvalidTimestamp,
        Self::FormNotFound,
        Self::InvalidApiResponse,
        Self::SchemaMismatch,
        Self::TransformError,
        Self::AnswerTooLarge,
        Self::RecordTooLarge,
        Self::InvalidFormId,
    ];

    /// Parses a `dlq.reason` header value.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// The `dlq.reason` header value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidJson => "invalid_json",
            Self::MissingField => "missing_field",
            Self::WrongType => "wrong_type",
            Self::InvalidTimestamp => "invalid_timestamp",
            Self::FormNotFound => "form_not_found",
            Self::InvalidApiResponse => "invalid_api_response",
            Self::SchemaMismatch => "schema_mismatch",
            Self::TransformError => "transform_error",
            Self::AnswerTooLarge => "answer_too_large",
            Self::RecordTooLarge => "record_too_large",
            Self::InvalidFormId => "invalid_form_id",
        }
    }
}

impl std::fmt::Display for DlqReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why one record cannot be read or flattened. `field` is a dotted path into the record
/// (`event.form_id`, `form.fields[2]`; for a bare input event just `form_id`).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RecordError {
    /// Not JSON at all.
    #[error("invalid JSON: {detail}")]
    InvalidJson {
        /// serde_json's message (with line and column).
        detail: String,
    },
    /// A required field is absent (or null).
    #[error("missing field `{field}`")]
    MissingField {
        /// Path of the field.
        field: String,
    },
    /// A field has the wrong type.
    #[error("field `{field}` must be {expected}, found {found}")]
    WrongType {
        /// Path of the field.
        field: String,
        /// What was wanted (`a string`, `a non-empty string`, `an object`).
        expected: &'static str,
        /// What was there (`a number`, `an empty string`, …).
        found: &'static str,
    },
    /// A timestamp field is not `YYYY-MM-DD HH:MM:SS` nor RFC 3339.
    #[error("field `{field}`: invalid timestamp {value:?}: {detail}")]
    InvalidTimestamp {
        /// Path of the field.
        field: String,
        /// The text found (cut to 64 characters).
        value: String,
        /// What is wrong with it.
        detail: String,
    },
    /// `form` is null but the event is not a `deleted` one.
    #[error(
        "form `{form_id}` not found (form is null) and event_type is {event_type:?}: only a `deleted` event may have no form"
    )]
    FormNotFound {
        /// The event's form id.
        form_id: String,
        /// The event's type.
        event_type: String,
    },
    /// The forms API answered something that is not a usable form.
    #[error("invalid API response: {detail}")]
    InvalidApiResponse {
        /// What is wrong, naming the field.
        detail: String,
    },
}

impl RecordError {
    /// The dead-letter reason for this error.
    pub fn reason(&self) -> DlqReason {
        match self {
            Self::InvalidJson { .. } => DlqReason::InvalidJson,
            Self::MissingField { .. } => DlqReason::MissingField,
            Self::WrongType { .. } => DlqReason::WrongType,
            Self::InvalidTimestamp { .. } => DlqReason::InvalidTimestamp,
            Self::FormNotFound { .. } => DlqReason::FormNotFound,
            Self::InvalidApiResponse { .. } => DlqReason::InvalidApiResponse,
        }
    }

    /// The field path the error names, if any.
    pub fn field(&self) -> Option<&str> {
        match self {
            Self::MissingField { field }
            | Self::WrongType { field, .. }
            | Self::InvalidTimestamp { field, .. } => Some(field),
            _ => None,
        }
    }

    /// `reason: message`, the text the SmartModule returns for a refused record (the runner
    /// passes it on as the DLQ detail).
    pub fn to_detail(&self) -> String {
        format!("{}: {}", self.reason(), self)
    }
}

pub(crate) fn type_name(v: &serde_json::Value) -> &'static str {
    use serde_json::Value;
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(s) if s.is_empty() => "an empty string",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

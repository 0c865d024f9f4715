//! The input event (`form.events`) and the enriched record (`form.enriched`).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{RecordError, type_name};
use crate::time::{format_rfc3339_micros, parse_timestamp};

/// The `event_type` whose form may be gone (API 404).
pub const DELETED_EVENT_TYPE: &str = "deleted";

/// A validated input event: the JSON object as received (other attributes kept untouched),
/// known to hold `form_id` (non-empty string), `event_type` (string), `event_happened_at`
/// (a valid timestamp) and, if present and not null, `form_title` (string).
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    object: Map<String, Value>,
    happened_at_micros: i64,
}

impl Event {
    /// Parses and validates an event value from `form.events`. Errors name the field
    /// (`form_id`, …) and carry the DLQ reason.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, RecordError> {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| RecordError::InvalidJson {
            detail: e.to_string(),
        })?;
        match value {
            Value::Object(object) => Self::from_object(object, ""),
            other => Err(RecordError::WrongType {
                field: "(event)".to_owned(),
                expected: "an object",
                found: type_name(&other),
            }),
        }
    }

    /// Validates an already parsed event object. `path` prefixes field names in errors
    /// (`"event."` inside an enriched record, `""` for a bare event).
    pub fn from_object(object: Map<String, Value>, path: &str) -> Result<Self, RecordError> {
        let happened_at_micros = validate_event(&object, path)?.happened_at_micros;
        Ok(Self {
            object,
            happened_at_micros,
        })
    }

    /// The form id (non-empty).
    pub fn form_id(&self) -> &str {
        str_field(&self.object, "form_id").unwrap_or_default()
    }

    /// The event's form title, if it has one.
    pub fn form_title(&self) -> Option<&str> {
        str_field(&self.object, "form_title")
    }

    /// The event type (`created`, `updated`, `deleted`, …).
    pub fn event_type(&self) -> &str {
        str_field(&self.object, "event_type").unwrap_or_default()
    }

    /// Whether this is a `deleted` event (the only kind whose form may be gone).
    pub fn is_deleted(&self) -> bool {
        self.event_type() == DELETED_EVENT_TYPE
    }

    /// `event_happened_at` in microseconds since the Unix epoch, UTC.
    pub fn happened_at_micros(&self) -> i64 {
        self.happened_at_micros
    }

    /// The object as received.
    pub fn as_object(&self) -> &Map<String, Value> {
        &self.object
    }

    /// The object as received.
    pub fn into_object(self) -> Map<String, Value> {
        self.object
    }
}

fn str_field<'a>(object: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    match object.get(name) {
        Some(Value::String(s)) => Some(s),
        _ => None,
    }
}

/// What validation of an event object yields (borrowed from it).
#[derive(Debug, Clone, Copy)]
pub(crate) struct EventFields<'a> {
    pub(crate) form_id: &'a str,
    pub(crate) form_title: Option<&'a str>,
    pub(crate) event_type: &'a str,
    pub(crate) happened_at_micros: i64,
}

fn required_str<'a>(
    object: &'a Map<String, Value>,
    path: &str,
    name: &str,
    non_empty: bool,
) -> Result<&'a str, RecordError> {
    match object.get(name) {
        None | Some(Value::Null) => Err(RecordError::MissingField {
            field: format!("{path}{name}"),
        }),
        Some(Value::String(s)) if !(non_empty && s.is_empty()) => Ok(s),
        Some(other) => Err(RecordError::WrongType {
            field: format!("{path}{name}"),
            expected: if non_empty {
                "a non-empty string"
            } else {
                "a string"
            },
            found: type_name(other),
        }),
    }
}

/// Parses a timestamp field, naming it in the error.
pub(crate) fn timestamp_field(text: &str, field: impl Into<String>) -> Result<i64, RecordError> {
    parse_timestamp(text).map_err(|e| RecordError::InvalidTimestamp {
        field: field.into(),
        value: text.chars().take(64).collect(),
        detail: e.to_string(),
    })
}

/// One attribute of an object, as validation sees it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum FieldView<'a> {
    /// Absent or null.
    Absent,
    /// A string.
    Str(&'a str),
    /// Anything else, by its [`type_name`].
    Other(&'static str),
}

impl<'a> FieldView<'a> {
    fn of_value(value: Option<&'a Value>) -> Self {
        match value {
            None | Some(Value::Null) => Self::Absent,
            Some(Value::String(s)) => Self::Str(s),
            Some(other) => Self::Other(type_name(other)),
        }
    }
}

pub(crate) fn validate_event<'a>(
    object: &'a Map<String, Value>,
    path: &str,
) -> Result<EventFields<'a>, RecordError> {
    validate_event_with(|name| FieldView::of_value(object.get(name)), path)
}

fn required<'a>(
    get: &impl Fn(&str) -> FieldView<'a>,
    path: &str,
    name: &str,
    non_empty: bool,
) -> Result<&'a str, RecordError> {
    match get(name) {
        FieldView::Absent => Err(RecordError::MissingField {
            field: format!("{path}{name}"),
        }),
        FieldView::Str(s) if !(non_empty && s.is_empty()) => Ok(s),
        found => Err(RecordError::WrongType {
            field: format!("{path}{name}"),
            expected: if non_empty {
                "a non-empty string"
            } else {
                "a string"
            },
            found: match found {
                FieldView::Str("") => "an empty string",
                FieldView::Str(_) => "a string",
                FieldView::Other(t) => t,
                FieldView::Absent => "null",
            },
        }),
    }
}

/// [`validate_event`] over any object representation: `get` gives an attribute.
pub(crate) fn validate_event_with<'a>(
    get: impl Fn(&str) -> FieldView<'a>,
    path: &str,
) -> Result<EventFields<'a>, RecordError> {
    let form_id = required(&get, path, "form_id", true)?;
    let happened_at = required(&get, path, "event_happened_at", false)?;
    let event_type = required(&get, path, "event_type", false)?;
    let form_title = match get("form_title") {
        FieldView::Absent => None,
        FieldView::Str(s) => Some(s),
        FieldView::Other(found) => {
            return Err(RecordError::WrongType {
                field: format!("{path}form_title"),
                expected: "a string",
                found,
            });
        }
    };
    let happened_at_micros = timestamp_field(happened_at, format!("{path}event_happened_at"))?;
    Ok(EventFields {
        form_id,
        form_title,
        event_type,
        happened_at_micros,
    })
}

/// Checks that an API answer is a form the flattening can use: an object with `id`
/// (non-empty string), `title` (string) and, if present, `fields` (an array of objects each
/// with a string `id`). The error's reason is `invalid_api_response`; the message names
/// the field.
pub fn validate_api_form(form: &Value) -> Result<(), RecordError> {
    let invalid = |detail: String| RecordError::InvalidApiResponse { detail };
    let Value::Object(object) = form else {
        return Err(invalid(format!(
            "the answer must be a JSON object, found {}",
            type_name(form)
        )));
    };
    required_str(object, "form.", "id", true).map_err(|e| invalid(e.to_string()))?;
    required_str(object, "form.", "title", false).map_err(|e| invalid(e.to_string()))?;
    match object.get("fields") {
        None | Some(Value::Null) => {}
        Some(Value::Array(fields)) => {
            for (i, field) in fields.iter().enumerate() {
                let Value::Object(field) = field else {
                    return Err(invalid(format!(
                        "field `form.fields[{i}]` must be an object, found {}",
                        type_name(field)
                    )));
                };
                required_str(field, &format!("form.fields[{i}]."), "id", true)
                    .map_err(|e| invalid(e.to_string()))?;
            }
        }
        Some(other) => {
            return Err(invalid(format!(
                "field `form.fields` must be an array, found {}",
                type_name(other)
            )));
        }
    }
    Ok(())
}

/// Where an enriched record came from (`source` in `form.enriched`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    /// Input topic.
    pub topic: String,
    /// Input partition.
    pub partition: i32,
    /// Input offset.
    pub offset: i64,
}

/// A `form.enriched` record, as kafka-source writes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnrichedRecord {
    /// The input event object as received.
    pub event: Map<String, Value>,
    /// The API's answer; `None` (null) only for a `deleted` event whose form is gone (404).
    pub form: Option<Map<String, Value>>,
    /// When the API answered, RFC 3339 UTC.
    pub retrieved_timestamp: String,
    /// Input topic, partition, offset.
    pub source: Source,
}

impl EnrichedRecord {
    /// Builds the record; `retrieved_micros` is formatted as RFC 3339 UTC with microseconds.
    pub fn new(
        event: Event,
        form: Option<Map<String, Value>>,
        retrieved_micros: i64,
        source: Source,
    ) -> Self {
        Self {
            event: event.into_object(),
            form,
            retrieved_timestamp: format_rfc3339_micros(retrieved_micros),
            source,
        }
    }

    /// The JSON value written to `form.enriched`.
    pub fn to_vec(&self) -> Vec<u8> {
        // A Map/String/number structure always serializes.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

//! Dead-letter records: the headers of `docs/internals.md` (`dlq.reason`, `dlq.detail`,
//! `dlq.connector`, `dlq.source.topic`, `dlq.source.partition`, `dlq.source.offset`).
//! The record's key and value are the original ones, untouched.

use rdkafka::message::{Header, Headers, OwnedHeaders};
use serde::Deserialize;

/// Header: why the record was dead-lettered ([`DlqReason::as_str`]).
pub const HEADER_REASON: &str = "dlq.reason";
/// Header: human-readable detail naming the field or column.
pub const HEADER_DETAIL: &str = "dlq.detail";
/// Header: the connector's `meta.name`.
pub const HEADER_CONNECTOR: &str = "dlq.connector";
/// Header: the source topic.
pub const HEADER_SOURCE_TOPIC: &str = "dlq.source.topic";
/// Header: the source partition (decimal).
pub const HEADER_SOURCE_PARTITION: &str = "dlq.source.partition";
/// Header: the source offset (decimal).
pub const HEADER_SOURCE_OFFSET: &str = "dlq.source.offset";

/// Default dead-letter topic.
pub const DEFAULT_DLQ_TOPIC: &str = "form.events.dlq";

/// The `dlq:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct DlqConfig {
    /// The dead-letter topic (must exist).
    #[serde(default = "default_topic")]
    pub topic: String,
}

impl Default for DlqConfig {
    fn default() -> Self {
        Self {
            topic: default_topic(),
        }
    }
}

fn default_topic() -> String {
    DEFAULT_DLQ_TOPIC.to_owned()
}

/// Why a record went to the dead-letter queue (closed set, `docs/internals.md`): the one
/// definition lives in form-model, which decides most of them.
pub use form_model::DlqReason;

/// Everything the DLQ headers say about one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DlqInfo {
    /// Why.
    pub reason: DlqReason,
    /// Details naming the field or column.
    pub detail: String,
    /// The connector's name.
    pub connector: String,
    /// Source topic.
    pub topic: String,
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
}

impl DlqInfo {
    /// The headers: the record's original headers (if any) first, then the `dlq.*` ones.
    pub fn headers<H: Headers>(&self, original: Option<&H>) -> OwnedHeaders {
        let mut h = OwnedHeaders::new_with_capacity(6 + original.map_or(0, |o| o.count()));
        if let Some(o) = original {
            for hdr in o.iter() {
                if hdr.key.starts_with("dlq.") {
                    continue;
                }
                h = h.insert(Header {
                    key: hdr.key,
                    value: hdr.value,
                });
            }
        }
        let partition = self.partition.to_string();
        let offset = self.offset.to_string();
        for (k, v) in [
            (HEADER_REASON, self.reason.as_str()),
            (HEADER_DETAIL, self.detail.as_str()),
            (HEADER_CONNECTOR, self.connector.as_str()),
            (HEADER_SOURCE_TOPIC, self.topic.as_str()),
            (HEADER_SOURCE_PARTITION, partition.as_str()),
            (HEADER_SOURCE_OFFSET, offset.as_str()),
        ] {
            h = h.insert(Header {
                key: k,
                value: Some(v),
            });
        }
        h
    }

    /// Reads the `dlq.*` headers back (tests, tools). `None` if any is missing or malformed.
    pub fn from_headers<H: Headers>(h: &H) -> Option<Self> {
        let get = |name: &str| -> Option<String> {
            h.iter()
                .find(|x| x.key == name)
                .and_then(|x| x.value)
                .and_then(|v| std::str::from_utf8(v).ok())
                .map(str::to_owned)
        };
        Some(Self {
            reason: DlqReason::parse(&get(HEADER_REASON)?)?,
            detail: get(HEADER_DETAIL)?,
            connector: get(HEADER_CONNECTOR)?,
            topic: get(HEADER_SOURCE_TOPIC)?,
            partition: get(HEADER_SOURCE_PARTITION)?.parse().ok()?,
            offset: get(HEADER_SOURCE_OFFSET)?.parse().ok()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip() {
        let info = DlqInfo {
            reason: DlqReason::MissingField,
            detail: "`form_id` is missing".into(),
            connector: "src".into(),
            topic: "form.events".into(),
            partition: 2,
            offset: 42,
        };
        let orig = OwnedHeaders::new().insert(Header {
            key: "trace",
            value: Some("x"),
        });
        let h = info.headers(Some(&orig));
        assert_eq!(h.count(), 7);
        assert_eq!(h.get(0).key, "trace");
        assert_eq!(DlqInfo::from_headers(&h), Some(info));
        for r in DlqReason::ALL {
            assert_eq!(DlqReason::parse(r.as_str()), Some(r));
        }
    }
}

//! The record of segment boundaries kept in the consumer group, beside the committed offset.
//!
//! Every segment's end is recorded here, inside the commit transaction, before any object of
//! the segment becomes visible, and stays recorded until all its objects are durable: the
//! committed offset of a partition is the start of its oldest segment not yet durable, and its
//! offset metadata lists that segment and every later recorded one (a *chain*). A replay from the
//! committed offset closes its segments exactly at the recorded ends and names their objects by
//! the recorded starts, so it rewrites the keys the first run may have made visible and no
//! others, whatever would cut the replay otherwise (a drain, the memory budget, a module swap,
//! another rolling policy or codec).
//!
//! Each recorded segment also lists the event days of its objects per table, so that a replay
//! that writes fewer objects (a new module that sends a record's rows to another day or
//! dead-letters them) deletes the first run's objects it does not rewrite, and a fingerprint of
//! what produced its rows (module digests, schema versions), for the logs.
//!
//! Format (version 2): `form-etl/2 ` followed by JSON
//! `{"s":[{"s":start,"e":end,"d":[[day,tables],…],"f":"fingerprint","v":[1,3]},…]}` where `day` counts
//! days since 1970-01-01 and `tables` is a bit mask (1 `form`, 2 `form_field`). Version 1
//! (`form-etl-seal:{start}:{end}`, one wall-clock boundary, no days) is still read.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::tables::Table;

/// Prefix of the version 2 record.
pub(crate) const CHAIN_PREFIX: &str = "form-etl/2 ";
/// Prefix of the version 1 record (one sealed wall-clock boundary).
const LEGACY_SEAL_PREFIX: &str = "form-etl-seal:";
/// The broker's `offset.metadata.max.bytes` (default 4096): a longer metadata string fails the
/// whole commit. Segments that do not fit wait, invisible, until earlier ones are durable.
pub(crate) const MAX_METADATA_BYTES: usize = 4096;

/// The objects of a segment: (table, event day) pairs.
pub(crate) type Keys = BTreeSet<(Table, i64)>;

/// A segment whose boundaries were recorded in the group before its objects became visible.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Recorded {
    /// The segment's first offset (it names the objects).
    #[serde(rename = "s")]
    pub(crate) start: i64,
    /// Its end (exclusive): the offset after its last record.
    #[serde(rename = "e")]
    pub(crate) end: i64,
    /// `[day, tables]` of its objects; absent when unknown (a version 1 seal).
    #[serde(rename = "d", default, skip_serializing_if = "Option::is_none")]
    pub(crate) days: Option<Vec<(i64, u8)>>,
    /// What produced its rows (the modules' digests), for the logs.
    #[serde(rename = "f", default, skip_serializing_if = "String::is_empty")]
    pub(crate) fingerprint: String,
    /// The schema versions of its files (`form`, `form_field`): a replay writes them again.
    #[serde(rename = "v", default, skip_serializing_if = "Option::is_none")]
    pub(crate) versions: Option<[u32; 2]>,
}

impl Recorded {
    pub(crate) fn new(
        start: i64,
        end: i64,
        keys: &Keys,
        fingerprint: &str,
        versions: Option<[u32; 2]>,
    ) -> Self {
        Self {
            start,
            end,
            days: Some(days_of(keys)),
            fingerprint: fingerprint.to_owned(),
            versions,
        }
    }

    /// Its objects' (table, day) pairs, if recorded.
    pub(crate) fn keys(&self) -> Option<Keys> {
        self.days.as_ref().map(|days| keys_of(days))
    }
}

fn mask(t: Table) -> u8 {
    1 << (t as u8)
}

fn days_of(keys: &Keys) -> Vec<(i64, u8)> {
    let mut out: Vec<(i64, u8)> = Vec::new();
    let mut by_day: std::collections::BTreeMap<i64, u8> = Default::default();
    for (t, d) in keys {
        *by_day.entry(*d).or_default() |= mask(*t);
    }
    out.extend(by_day);
    out
}

fn keys_of(days: &[(i64, u8)]) -> Keys {
    let mut keys = Keys::new();
    for (d, m) in days {
        for t in Table::ALL {
            if m & mask(t) != 0 {
                keys.insert((t, *d));
            }
        }
    }
    keys
}

#[derive(Serialize, Deserialize)]
struct Chain {
    s: Vec<Recorded>,
}

/// The metadata string recording `chain` (empty for an empty chain).
pub(crate) fn encode(chain: &[Recorded]) -> String {
    if chain.is_empty() {
        return String::new();
    }
    let json = serde_json::to_string(&Chain { s: chain.to_vec() }).expect("serializes");
    format!("{CHAIN_PREFIX}{json}")
}

/// The metadata length of `chain`, as [`encode`] writes it.
pub(crate) fn encoded_len(chain: &[Recorded]) -> usize {
    encode(chain).len()
}

/// Why recorded metadata could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum ChainError {
    #[error("offset metadata `{0}` is not a form-etl record")]
    Unknown(String),
    #[error("offset metadata is not a valid form-etl/2 record: {0}")]
    Invalid(String),
    #[error("recorded segments are not in order from the committed offset {committed}: {detail}")]
    OutOfOrder { committed: i64, detail: String },
}

/// The recorded segments at committed offset `committed`, from its metadata. Empty metadata is
/// an empty chain; a version 1 seal recorded for another offset is stale and ignored.
pub(crate) fn decode(committed: i64, metadata: &str) -> Result<Vec<Recorded>, ChainError> {
    if metadata.is_empty() {
        return Ok(Vec::new());
    }
    let chain = if let Some(json) = metadata.strip_prefix(CHAIN_PREFIX) {
        serde_json::from_str::<Chain>(json)
            .map_err(|e| ChainError::Invalid(e.to_string()))?
            .s
    } else if let Some(rest) = metadata.strip_prefix(LEGACY_SEAL_PREFIX) {
        let parsed = rest
            .split_once(':')
            .and_then(|(s, e)| Some((s.parse::<i64>().ok()?, e.parse::<i64>().ok()?)));
        match parsed {
            Some((s, e)) if s == committed => vec![Recorded {
                start: s,
                end: e,
                days: None,
                fingerprint: String::new(),
                versions: None,
            }],
            Some(_) => Vec::new(),
            None => return Err(ChainError::Invalid(metadata.to_owned())),
        }
    } else {
        return Err(ChainError::Unknown(metadata.chars().take(80).collect()));
    };
    let mut prev = committed;
    for r in &chain {
        if r.start < prev || r.end <= r.start {
            return Err(ChainError::OutOfOrder {
                committed,
                detail: format!("[{}, {}) after {prev}", r.start, r.end),
            });
        }
        prev = r.end;
    }
    Ok(chain)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(v: &[(Table, i64)]) -> Keys {
        v.iter().copied().collect()
    }

    #[test]
    fn round_trip() {
        let a = Recorded::new(
            10,
            300,
            &keys(&[
                (Table::Form, 19_000),
                (Table::FormField, 19_000),
                (Table::Form, 19_001),
            ]),
            "abc",
            Some([1, 3]),
        );
        let b = Recorded::new(300, 1300, &keys(&[(Table::FormField, 5)]), "", None);
        let m = encode(&[a.clone(), b.clone()]);
        assert_eq!(
            m,
            r#"form-etl/2 {"s":[{"s":10,"e":300,"d":[[19000,3],[19001,1]],"f":"abc","v":[1,3]},{"s":300,"e":1300,"d":[[5,2]]}]}"#
        );
        assert_eq!(encoded_len(&[a.clone(), b.clone()]), m.len());
        let back = decode(10, &m).unwrap();
        assert_eq!(back, vec![a.clone(), b]);
        assert_eq!(
            back[0].keys().unwrap(),
            keys(&[
                (Table::Form, 19_000),
                (Table::FormField, 19_000),
                (Table::Form, 19_001)
            ])
        );
        // The committed offset may be below the first start (records without rows before it).
        assert_eq!(decode(5, &m).unwrap().len(), 2);
        assert_eq!(encode(&[]), "");
        assert_eq!(decode(7, "").unwrap(), vec![]);
    }

    #[test]
    fn refuses_what_a_replay_cannot_follow() {
        let a = Recorded::new(10, 300, &Keys::new(), "", None);
        let m = encode(&[a]);
        // Recorded segments start at or after the committed offset.
        assert!(matches!(decode(11, &m), Err(ChainError::OutOfOrder { .. })));
        let overlapping = r#"form-etl/2 {"s":[{"s":0,"e":10},{"s":5,"e":20}]}"#;
        assert!(matches!(
            decode(0, overlapping),
            Err(ChainError::OutOfOrder { .. })
        ));
        let empty = r#"form-etl/2 {"s":[{"s":3,"e":3}]}"#;
        assert!(matches!(
            decode(0, empty),
            Err(ChainError::OutOfOrder { .. })
        ));
        assert!(matches!(
            decode(0, "form-etl/2 {"),
            Err(ChainError::Invalid(_))
        ));
        assert!(matches!(
            decode(0, "something else"),
            Err(ChainError::Unknown(_))
        ));
    }

    #[test]
    fn reads_version_1_seals() {
        let v1 = decode(10, "form-etl-seal:10:42").unwrap();
        assert_eq!(v1.len(), 1);
        assert_eq!((v1[0].start, v1[0].end, v1[0].keys()), (10, 42, None));
        // A seal recorded with another offset is stale.
        assert_eq!(decode(11, "form-etl-seal:10:42").unwrap(), vec![]);
        assert!(decode(10, "form-etl-seal:10:5").is_err());
    }
}

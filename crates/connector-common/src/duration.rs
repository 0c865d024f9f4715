//! Durations in config files, humantime syntax (`10ms`, `5s`, `1m 30s`), with error messages
//! that say what was wrong and what is allowed.
//!
//! `#[serde(with = "connector_common::duration")]` for `Duration`,
//! `#[serde(default, with = "connector_common::duration::option")]` for `Option<Duration>`.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Parses one duration, e.g. `250ms`.
pub fn parse(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("`{s}` is not a duration ({e}); write e.g. `250ms`, `5s`, `1m 30s`"))
}

/// Deserializes a `Duration` from a humantime string.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse(&s).map_err(serde::de::Error::custom)
}

/// Serializes a `Duration` as a humantime string.
pub fn serialize<S: serde::Serializer>(v: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*v).to_string())
}

/// The same for `Option<Duration>`.
pub mod option {
    use super::*;

    /// Deserializes an optional humantime string.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s = Option::<String>::deserialize(d)?;
        s.map(|s| parse(&s).map_err(serde::de::Error::custom))
            .transpose()
    }

    /// Serializes an optional duration.
    pub fn serialize<S: serde::Serializer>(v: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(d) => super::serialize(d, s),
            None => s.serialize_none(),
        }
    }
}

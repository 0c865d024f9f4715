//! Sizes in config files, bytesize syntax (`64MB`, `512KiB`, `1000`), with error messages
//! that say what is allowed. `#[serde(with = "connector_common::size")]` for `ByteSize`.

use bytesize::ByteSize;
use serde::{Deserialize, Deserializer};

/// Parses one size, e.g. `64MB`.
pub fn parse(s: &str) -> Result<ByteSize, String> {
    s.trim()
        .parse::<ByteSize>()
        .map_err(|_| format!("`{s}` is not a size; write e.g. `64MB`, `512KiB`, `1000`"))
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Raw {
    Int(u64),
    Str(String),
}

/// Deserializes a `ByteSize` from a number (bytes) or a string with a unit.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<ByteSize, D::Error> {
    match Raw::deserialize(d)? {
        Raw::Int(n) => Ok(ByteSize::b(n)),
        Raw::Str(s) => parse(&s).map_err(serde::de::Error::custom),
    }
}

/// The same for `Option<ByteSize>`.
pub mod option {
    use super::*;

    /// Deserializes an optional size.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<ByteSize>, D::Error> {
        match Option::<Raw>::deserialize(d)? {
            None => Ok(None),
            Some(Raw::Int(n)) => Ok(Some(ByteSize::b(n))),
            Some(Raw::Str(s)) => parse(&s).map(Some).map_err(serde::de::Error::custom),
        }
    }
}

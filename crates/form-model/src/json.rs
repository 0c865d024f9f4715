//! A JSON tree that borrows its strings from the input: what the flattening parses into.
//!
//! Same parser as `serde_json::Value` (serde_json's deserializer, so the same accepted
//! inputs, numbers and error messages) and the same object semantics as
//! `serde_json::Map` with `preserve_order` (insertion order; a repeated key replaces the
//! value in the first key's place), but without a `String` per key and value or a hash
//! table per object: strings without escapes are slices of the input, objects are small
//! vectors.

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Number;

/// A JSON value borrowing from the input.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Json<'a> {
    Null,
    Bool(bool),
    Number(Number),
    Str(Cow<'a, str>),
    Array(Vec<Json<'a>>),
    Object(Object<'a>),
}

/// An object: attributes in insertion order, keys unique.
pub(crate) type Object<'a> = Vec<(Cow<'a, str>, Json<'a>)>;

impl<'a> Json<'a> {
    /// Parses `input` (all of it, like `serde_json::from_slice`).
    pub(crate) fn parse(input: &'a [u8]) -> serde_json::Result<Self> {
        serde_json::from_slice(input)
    }

    /// The name of its type, as `error::type_name` says it for a `serde_json::Value`.
    pub(crate) fn type_name(&self) -> &'static str {
        match self {
            Json::Null => "null",
            Json::Bool(_) => "a boolean",
            Json::Number(_) => "a number",
            Json::Str(s) if s.is_empty() => "an empty string",
            Json::Str(_) => "a string",
            Json::Array(_) => "an array",
            Json::Object(_) => "an object",
        }
    }
}

/// The value of `key` in `object`.
pub(crate) fn get<'o, 'a>(
    object: &'o [(Cow<'a, str>, Json<'a>)],
    key: &str,
) -> Option<&'o Json<'a>> {
    object.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

impl<'de> Deserialize<'de> for Json<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any valid JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Json::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Json::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Json::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        // As serde_json::Value: a non-finite float is null.
        Ok(Number::from_f64(v).map_or(Json::Null, Json::Number))
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Json::Str(Cow::Borrowed(v)))
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Json::Str(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Json::Str(Cow::Owned(v)))
    }

    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(Json::Null)
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Json::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        Deserialize::deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut object: Object<'de> = Vec::with_capacity(8);
        while let Some(Key(key)) = map.next_key()? {
            let value: Json<'de> = map.next_value()?;
            match object.iter_mut().find(|(k, _)| *k == key) {
                Some((_, slot)) => *slot = value,
                None => object.push((key, value)),
            }
        }
        Ok(Json::Object(object))
    }
}

/// An object key, borrowed from the input when it has no escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string key")
            }

            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }

            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }

            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_serde_json_map_semantics() {
        let j = Json::parse(br#"{"b":1,"a":"x\"y","b":[2,{"c":null}],"d":1.5e3,"e":-0}"#).unwrap();
        let Json::Object(o) = &j else { panic!() };
        let keys: Vec<&str> = o.iter().map(|(k, _)| k.as_ref()).collect();
        assert_eq!(keys, ["b", "a", "d", "e"]);
        assert!(matches!(get(o, "a"), Some(Json::Str(Cow::Owned(s))) if s == "x\"y"));
        assert!(matches!(get(o, "b"), Some(Json::Array(a)) if a.len() == 2));
        for bad in [&b"{"[..], b"[1,]", b"{\"a\":1} x", b"", b"\xff", b"1e999"] {
            assert_eq!(
                Json::parse(bad).unwrap_err().to_string(),
                serde_json::from_slice::<serde_json::Value>(bad)
                    .unwrap_err()
                    .to_string()
            );
        }
    }
}

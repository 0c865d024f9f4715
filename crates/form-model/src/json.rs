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
    /// `Cow::Borrowed` only for a string that had no escapes in the input: its text needs
    /// none when written back as JSON (`"`, `\\` and control characters are always escaped).
    Str(Cow<'a, str>),
    Array(Vec<Json<'a>>),
    Object(Object<'a>),
}

/// An object: attributes in insertion order, keys unique.
pub(crate) type Object<'a> = Vec<(Cow<'a, str>, Json<'a>)>;

impl<'a> Json<'a> {
    /// Parses `input` (all of it, like `serde_json::from_slice`).
    ///
    /// A hand-written parser reads what it is sure of, the same way serde_json would;
    /// anything else (invalid JSON, a lone surrogate, deep nesting, a number it leaves to
    /// serde_json) goes through serde_json, so the accepted inputs, the values and the error
    /// messages are serde_json's. Inside the SmartModule this is ~2× faster than serde's
    /// generic deserializer (fewer calls for the fuel meter to count).
    pub(crate) fn parse(input: &'a [u8]) -> serde_json::Result<Self> {
        if let Some(value) = Reader::parse(input) {
            return Ok(value);
        }
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

/// The hand-written JSON reader behind [`Json::parse`] (and the sink's row encoding): every
/// method answers `None` for anything it does not read exactly as serde_json would (the
/// caller then lets serde_json parse the input, for its value or its error).
pub(crate) struct Reader<'a> {
    /// The input, checked UTF-8 once: strings are slices of it.
    text: &'a str,
    s: &'a [u8],
    i: usize,
    depth: usize,
}

/// Deeper goes to serde_json (its limit is 127 levels; past that, its error).
const MAX_DEPTH: usize = 100;

impl<'a> Reader<'a> {
    /// A reader of `input`; `None` if it is not UTF-8 (serde_json checks the UTF-8 of
    /// strings; outside strings only ASCII is valid JSON).
    pub(crate) fn new(input: &'a [u8]) -> Option<Self> {
        let text = std::str::from_utf8(input).ok()?;
        Some(Reader {
            text,
            s: input,
            i: 0,
            depth: 0,
        })
    }

    /// All of `input` as one value.
    fn parse(input: &'a [u8]) -> Option<Json<'a>> {
        let mut r = Reader::new(input)?;
        let value = r.value()?;
        r.at_end().then_some(value)
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\t' | b'\r') = self.s.get(self.i) {
            self.i += 1;
        }
    }

    /// The position of the next byte.
    #[cfg_attr(
        not(feature = "avro"),
        allow(dead_code, reason = "used by avro_encode")
    )]
    pub(crate) fn pos(&self) -> usize {
        self.i
    }

    /// Continues at `pos` (a position this reader answered before, or the end of a text
    /// it has already read there).
    #[cfg_attr(
        not(feature = "avro"),
        allow(dead_code, reason = "used by avro_encode")
    )]
    pub(crate) fn set_pos(&mut self, pos: usize) {
        self.i = pos;
    }

    /// Whether only whitespace is left.
    pub(crate) fn at_end(&mut self) -> bool {
        self.skip_ws();
        self.i == self.s.len()
    }

    /// The next byte after whitespace, consumed.
    pub(crate) fn next_token(&mut self) -> Option<u8> {
        self.skip_ws();
        let b = *self.s.get(self.i)?;
        self.i += 1;
        Some(b)
    }

    /// Consumes `b` if it comes next (after whitespace).
    #[cfg_attr(
        not(feature = "avro"),
        allow(dead_code, reason = "used by avro_encode")
    )]
    pub(crate) fn eat(&mut self, b: u8) -> bool {
        self.skip_ws();
        let found = self.s.get(self.i) == Some(&b);
        if found {
            self.i += 1;
        }
        found
    }

    /// `true`, `false` or `null`, after its first letter.
    pub(crate) fn literal_after(&mut self, first: u8) -> Option<Json<'a>> {
        match first {
            b't' => self.literal(b"rue", Json::Bool(true)),
            b'f' => self.literal(b"alse", Json::Bool(false)),
            b'n' => self.literal(b"ull", Json::Null),
            _ => None,
        }
    }

    fn value(&mut self) -> Option<Json<'a>> {
        match self.next_token()? {
            b'{' => self.object(),
            b'[' => self.array(),
            b'"' => self.string().map(Json::Str),
            b'-' | b'0'..=b'9' => self.number_after().map(Json::Number),
            first => self.literal_after(first),
        }
    }

    fn literal(&mut self, rest: &[u8], value: Json<'a>) -> Option<Json<'a>> {
        let end = self.i + rest.len();
        (self.s.get(self.i..end)? == rest).then(|| {
            self.i = end;
            value
        })
    }

    fn enter(&mut self) -> Option<()> {
        self.depth += 1;
        (self.depth <= MAX_DEPTH).then_some(())
    }

    fn object(&mut self) -> Option<Json<'a>> {
        self.enter()?;
        let mut object: Object<'a> = Vec::with_capacity(8);
        let mut b = self.next_token()?;
        if b != b'}' {
            loop {
                if b != b'"' {
                    return None;
                }
                let key = self.string()?;
                if self.next_token()? != b':' {
                    return None;
                }
                let value = self.value()?;
                match object.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, slot)) => *slot = value,
                    None => object.push((key, value)),
                }
                match self.next_token()? {
                    b',' => b = self.next_token()?,
                    b'}' => break,
                    _ => return None,
                }
            }
        }
        self.depth -= 1;
        Some(Json::Object(object))
    }

    fn array(&mut self) -> Option<Json<'a>> {
        self.enter()?;
        let mut items = Vec::new();
        self.skip_ws();
        if self.s.get(self.i) == Some(&b']') {
            self.i += 1;
        } else {
            loop {
                items.push(self.value()?);
                match self.next_token()? {
                    b',' => {}
                    b']' => break,
                    _ => return None,
                }
            }
        }
        self.depth -= 1;
        Some(Json::Array(items))
    }

    /// A string's contents, after its opening quote.
    pub(crate) fn string(&mut self) -> Option<Cow<'a, str>> {
        let start = self.i;
        self.i = plain_end(self.s, self.i);
        loop {
            match *self.s.get(self.i)? {
                b'"' => {
                    // `"` is ASCII, so both ends are char boundaries.
                    let text = self.text.get(start..self.i)?;
                    self.i += 1;
                    return Some(Cow::Borrowed(text));
                }
                b'\\' => break,
                0..=0x1f => return None,
                _ => self.i += 1,
            }
        }
        let mut text = self.s[start..self.i].to_vec();
        loop {
            let b = *self.s.get(self.i)?;
            self.i += 1;
            match b {
                b'"' => return String::from_utf8(text).ok().map(Cow::Owned),
                b'\\' => {
                    let c = match *self.s.get(self.i)? {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            self.i += 1;
                            let unit = self.hex4()?;
                            let code = match unit {
                                0xD800..=0xDBFF => {
                                    // A pair: the low half must follow.
                                    if self.s.get(self.i..self.i + 2)? != b"\\u" {
                                        return None;
                                    }
                                    self.i += 2;
                                    let low = self.hex4()?;
                                    if !(0xDC00..=0xDFFF).contains(&low) {
                                        return None;
                                    }
                                    0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00)
                                }
                                0xDC00..=0xDFFF => return None,
                                _ => unit,
                            };
                            self.i -= 1;
                            char::from_u32(code)?
                        }
                        _ => return None,
                    };
                    self.i += 1;
                    let mut utf8 = [0; 4];
                    text.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
                }
                0..=0x1f => return None,
                _ => text.push(b),
            }
        }
    }

    /// Four hex digits.
    fn hex4(&mut self) -> Option<u32> {
        let digits = self.s.get(self.i..self.i + 4)?;
        let mut v = 0;
        for &d in digits {
            v = v * 16 + char::from(d).to_digit(16)?;
        }
        self.i += 4;
        Some(v)
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while self.s.get(self.i).is_some_and(u8::is_ascii_digit) {
            self.i += 1;
        }
        self.i - start
    }

    /// A number, after its first character (`-` or a digit).
    pub(crate) fn number_after(&mut self) -> Option<Number> {
        self.i -= 1;
        let start = self.i;
        let negative = self.s[self.i] == b'-';
        if negative {
            self.i += 1;
        }
        let int_digits = match self.s.get(self.i)? {
            b'0' => {
                self.i += 1;
                1
            }
            b'1'..=b'9' => self.digits(),
            _ => return None,
        };
        let mut plain = true;
        if self.s.get(self.i) == Some(&b'.') {
            self.i += 1;
            plain = false;
            if self.digits() == 0 {
                return None;
            }
        }
        if let Some(b'e' | b'E') = self.s.get(self.i) {
            self.i += 1;
            plain = false;
            if let Some(b'+' | b'-') = self.s.get(self.i) {
                self.i += 1;
            }
            if self.digits() == 0 {
                return None;
            }
        }
        let text = &self.s[start..self.i];
        let digits = &text[usize::from(negative)..];
        // An integer of up to 18 digits fits an i64 (serde_json: u64 or i64, the same
        // `Number`), except `-0`, which serde_json reads as the float -0.0.
        if plain && int_digits <= 18 && !(negative && digits == b"0") {
            let magnitude = digits
                .iter()
                .fold(0i64, |v, d| v * 10 + i64::from(d - b'0'));
            let v = if negative { -magnitude } else { magnitude };
            return Some(v.into());
        }
        // Floats and long integers: serde_json's own number reading.
        serde_json::from_slice::<Number>(text).ok()
    }
}

/// The index of the first byte from `i` on that ends a plain run of string text: `"`, `\\`
/// or a control character (or `s.len()`). Eight bytes at a time: a byte's match is found by
/// the zero-byte test on `word ^ pattern`, and "below 0x20" by the same borrow trick; a
/// false match can only sit above a true one in the same word, so the lowest is exact.
fn plain_end(s: &[u8], mut i: usize) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let below = |w: u64, n: u8| w.wrapping_sub(ONES * u64::from(n)) & !w & HIGH;
    while let Some(chunk) = s.get(i..i + 8) {
        let w = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        let hits = below(w ^ (ONES * u64::from(b'"')), 1)
            | below(w ^ (ONES * u64::from(b'\\')), 1)
            | below(w, 0x20);
        if hits != 0 {
            return i + (hits.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while s
        .get(i)
        .is_some_and(|&b| !matches!(b, b'"' | b'\\' | 0..=0x1f))
    {
        i += 1;
    }
    i
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

    /// Inputs the hand-written parser reads, and inputs it leaves to serde_json.
    const CASES: &[&str] = &[
        r#"{"a":1,"b":-2,"c":0,"d":123456789012345678,"e":-123456789012345678}"#,
        r#"{"big":12345678901234567890,"neg":-9223372036854775808,"over":-9223372036854775809}"#,
        r#"[1.5, -0, -0.0, 0.1e2, 1E+2, 2e-3, 1.7976931348623157e308, 5e-324, 100000000000000000000000]"#,
        " { \"ws\" :\t[ true ,false,\r\nnull ] } ",
        r#"{"esc":"a\"b\\c\/d\be\ff\ng\rh\ti","u":"\u00e9\u0000\u001f\uD83D\uDE00x"}"#,
        r#"{"é":"ü€😀","k\u0041":{"":[]},"dup":1,"x":{},"dup":[2]}"#,
        r#"["", "a", [[[]]], {"a":{"b":{"c":{}}}}]"#,
        "\"just a string\"",
        "42",
        "-7",
        "  null  ",
        // Invalid, or left to serde_json:
        r#"{"a":1,}"#,
        r#"[1,]"#,
        r#"{"a" 1}"#,
        r#"{'a':1}"#,
        r#"{"a":01}"#,
        r#"{"a":1.}"#,
        r#"{"a":.5}"#,
        r#"{"a":1e}"#,
        r#"{"a":-}"#,
        r#"{"a":+1}"#,
        r#"{"a":1e999}"#,
        r#"{"a":tru}"#,
        r#"{"a":nul}"#,
        r#"{"a":"\uD83D"}"#,
        r#"{"a":"\uDE00"}"#,
        r#"{"a":"\uD83Dx"}"#,
        r#"{"a":"\uD83D\u0041"}"#,
        r#"{"a":"\x"}"#,
        r#"{"a":"\u12G4"}"#,
        "{\"a\":\"tab\there\"}",
        r#"{"a":1} x"#,
        r#"{"a":1}}"#,
        r#"{"a":[1}"#,
        r#"{"a":"open"#,
        "",
        "   ",
        "{\"a\":\"\u{7f}\"}",
    ];

    #[test]
    fn the_hand_written_parser_reads_as_serde_json_does() {
        let mut deep = String::new();
        for depth in [100, 127, 128, 129, 300] {
            deep.clear();
            deep.push_str(&"[".repeat(depth));
            deep.push_str(&"]".repeat(depth));
            check(deep.as_bytes());
        }
        for case in CASES {
            check(case.as_bytes());
        }
        check(b"{\"a\":\"\xff\"}");
        check(b"{\"a\":\"\xc3\"}");
        check(b"\xef\xbb\xbf{}");
        check(crate::seed::SEED_FORM_JSON.as_bytes());
        for line in crate::seed::SEED_EXPECTED_FORM_FIELD.lines() {
            check(line.as_bytes());
        }
    }

    fn check(input: &[u8]) {
        let theirs = serde_json::from_slice::<Json<'_>>(input);
        let fast = Reader::parse(input);
        match (&theirs, &fast) {
            (Ok(t), Some(f)) => assert_eq!(t, f, "{}", String::from_utf8_lossy(input)),
            (Ok(_) | Err(_), None) => {}
            (Err(e), Some(f)) => panic!(
                "serde_json refuses {:?} ({e}), the fast parser read {f:?}",
                String::from_utf8_lossy(input)
            ),
        }
        match (theirs, Json::parse(input)) {
            (Ok(t), Ok(ours)) => assert_eq!(t, ours),
            (Err(t), Err(ours)) => assert_eq!(t.to_string(), ours.to_string()),
            (t, ours) => panic!(
                "{:?}: {t:?} against {ours:?}",
                String::from_utf8_lossy(input)
            ),
        }
    }

    #[test]
    fn plain_end_finds_the_first_special_byte() {
        let specials = [b'"', b'\\', 0x00, 0x1f, b'\n'];
        let plain = [
            b'a', b' ', 0x20, 0x7f, 0x80, 0xff, b'!', b'#', b']', 0x21, 0x5b, 0x5d,
        ];
        for len in 0..40 {
            for at in 0..=len {
                for &special in &specials {
                    for &filler in &plain {
                        let mut s = vec![filler; len];
                        if at < len {
                            s[at] = special;
                            // Something special later too: the first one must win.
                            if at + 3 < len {
                                s[at + 3] = b'"';
                            }
                        }
                        assert_eq!(plain_end(&s, 0), at, "{s:?}");
                        if at > 0 {
                            assert_eq!(plain_end(&s, at - 1), at, "{s:?}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn the_hand_written_parser_takes_the_common_inputs() {
        for case in &CASES[..11] {
            assert!(Reader::parse(case.as_bytes()).is_some(), "{case}");
        }
        // Strings: borrowed exactly when they had no escapes.
        let Some(Json::Object(o)) = Reader::parse(br#"{"plain":"abc","esc":"a\nb","k\u0041":1}"#)
        else {
            panic!()
        };
        assert!(matches!(
            &o[0],
            (Cow::Borrowed("plain"), Json::Str(Cow::Borrowed("abc")))
        ));
        assert!(matches!(&o[1], (Cow::Borrowed("esc"), Json::Str(Cow::Owned(s))) if s == "a\nb"));
        assert!(matches!(&o[2], (Cow::Owned(k), _) if k == "kA"));
    }
}

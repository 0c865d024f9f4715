//! A flat JSON tape: what the flattening parses an input into.
//!
//! One pass over the input writes one entry per value (and per object key) into a single
//! vector, in document order; an array or object entry says where its contents end, so a
//! reader steps over a whole value in one move. Strings without escapes are slices of the
//! input; nothing else is allocated per value. (Against the tree of small vectors it
//! replaces, the module's fuel went from 97.7k to 96.2k per record: the parse's cost is the
//! WASM operations per byte and per token, not the allocations.)
//!
//! The tape reads exactly what serde_json reads (the same accepted inputs and values, checked
//! by the tests against `serde_json::Value` with `preserve_order`). What it leaves to serde_json
//! ([`Tape::parse`] answers `None`): anything invalid (for serde_json's error), a lone
//! surrogate, nesting deeper than 100, a number it cannot read as serde_json does, and an
//! object with a repeated key (serde_json keeps the last value in the first key's place).

use std::borrow::Cow;

use serde_json::Number;

/// What a tape entry holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Null,
    True,
    False,
    /// A number serde_json reads as an `i64`: its input text, which is what `write_i64`
    /// writes for it (JSON has no leading zeros or `+`).
    Int,
    /// Any other number (a float, an integer past `i64`): its input text, read by serde_json
    /// when it is written.
    Num,
    /// A string that had no escapes in the input: its text, a slice of the input (it needs
    /// no escaping when written back: `"`, `\\` and control characters are always escaped).
    Str,
    /// A string that had escapes: decoded, kept in the tape's `owned` strings.
    Esc,
    /// An array: its items follow.
    Array,
    /// An object: its keys (as `Str` or `Esc` entries) follow, each followed by its value.
    Object,
}

#[derive(Debug, Clone, Copy)]
struct Entry<'a> {
    kind: Kind,
    /// `Esc`: the index in `owned`.
    owned: u32,
    /// The index of the entry after this value (and everything inside it).
    next: u32,
    /// A scalar's input text, quotes included: `input[start..end]`.
    start: u32,
    end: u32,
    /// `Int`, `Num`, `Str`: the input text (without quotes).
    text: &'a str,
}

/// The index of a value in a [`Tape`].
pub(crate) type At = usize;

/// A parsed input: [`At`] `0` is the top value.
#[derive(Debug)]
pub(crate) struct Tape<'a> {
    input: &'a [u8],
    entries: Vec<Entry<'a>>,
    /// The decoded strings that had escapes.
    owned: Vec<String>,
}

impl<'a> Tape<'a> {
    /// The tape of all of `input` (like `serde_json::from_slice`), or `None` for what it
    /// leaves to serde_json (see the module's doc).
    pub(crate) fn parse(input: &'a [u8]) -> Option<Self> {
        Self::parse_to_depth(input, MAX_DEPTH)
    }

    /// [`Tape::parse`] of text written by serde_json from a value it parsed (no repeated
    /// keys, no lone surrogates): any depth serde_json accepted.
    pub(crate) fn parse_written(input: &'a [u8]) -> Option<Self> {
        Self::parse_to_depth(input, usize::MAX)
    }

    /// One loop over the input with its position in a local (in the SmartModule, every
    /// call and every field access is WASM operations the fuel meter counts): a value is
    /// read, then the commas and closing brackets after it, until the next value.
    fn parse_to_depth(input: &'a [u8], max_depth: usize) -> Option<Self> {
        // UTF-8 checked once for the whole input (in the SmartModule, cheaper than string
        // by string): strings are then slices of `text`.
        let text = std::str::from_utf8(input).ok()?;
        let s = input;
        // Offsets are kept as u32.
        u32::try_from(s.len()).ok()?;
        let mut tape = Tape {
            input,
            entries: Vec::with_capacity(s.len() / 8 + 1),
            owned: Vec::new(),
        };
        // The open arrays and objects: their entry, and for an object one bit per key so
        // far (by length and last byte; a key is compared with the earlier ones only when
        // its bit is already set).
        let mut open: Vec<(At, u64)> = Vec::new();
        let mut i = 0;
        loop {
            // A value.
            i = skip_ws(s, i);
            match *s.get(i)? {
                b'"' => i = tape.string(text, i + 1)?,
                b'{' | b'[' => {
                    if open.len() >= max_depth {
                        return None;
                    }
                    let object = s[i] == b'{';
                    let kind = if object { Kind::Object } else { Kind::Array };
                    let at = tape.push(kind, "", 0, 0);
                    i = skip_ws(s, i + 1);
                    if s.get(i) == Some(if object { &b'}' } else { &b']' }) {
                        i += 1;
                        tape.close(at)?;
                    } else {
                        open.push((at, 0));
                        if object {
                            i = tape.key(text, i, &mut open)?;
                        }
                        continue;
                    }
                }
                b'-' | b'0'..=b'9' => i = tape.number(text, i)?,
                first => {
                    let mut r = Reader::at(text, i + 1);
                    let kind = r.literal_after(first)?;
                    tape.push(kind, "", i, r.pos());
                    i = r.pos();
                }
            }
            // What follows it: a comma (then the next value) or the end of its container.
            loop {
                let Some(&(at, _)) = open.last() else {
                    return (skip_ws(s, i) == s.len()).then_some(tape);
                };
                let object = tape.entries[at].kind == Kind::Object;
                i = skip_ws(s, i);
                match *s.get(i)? {
                    b',' => {
                        i += 1;
                        if object {
                            i = skip_ws(s, i);
                            i = tape.key(text, i, &mut open)?;
                        }
                        break;
                    }
                    b'}' if object => {}
                    b']' if !object => {}
                    _ => return None,
                }
                i += 1;
                tape.close(at)?;
                open.pop();
            }
        }
    }

    /// Appends an entry: `start..end` is a scalar's input text (offsets fit a u32: checked
    /// once for the input, and there are fewer entries than bytes).
    fn push(&mut self, kind: Kind, text: &'a str, start: usize, end: usize) -> At {
        let at = self.entries.len();
        self.entries.push(Entry {
            kind,
            owned: 0,
            next: (at + 1) as u32,
            start: start as u32,
            end: end as u32,
            text,
        });
        at
    }

    /// Sets where the array or object at `at` ends: here.
    fn close(&mut self, at: At) -> Option<()> {
        self.entries[at].next = u32::try_from(self.entries.len()).ok()?;
        Some(())
    }

    /// A string whose contents start at `i` (after its quote); the position after it.
    fn string(&mut self, text: &'a str, i: usize) -> Option<usize> {
        let s = text.as_bytes();
        let end = plain_end(s, i);
        if s.get(end) == Some(&b'"') {
            // `"` is ASCII, so both ends are char boundaries.
            self.push(Kind::Str, text.get(i..end)?, i - 1, end + 1);
            return Some(end + 1);
        }
        // Escapes (or an error): decoded by the reader.
        let mut r = Reader::at(text, i);
        match r.string()? {
            Cow::Borrowed(plain) => {
                self.push(Kind::Str, plain, i - 1, r.pos());
            }
            Cow::Owned(decoded) => {
                let at = self.push(Kind::Esc, "", i - 1, r.pos());
                self.entries[at].owned = u32::try_from(self.owned.len()).ok()?;
                self.owned.push(decoded);
            }
        }
        Some(r.pos())
    }

    /// An object's key at `i` and the `:` after it (refusing a repeated key); the position
    /// of its value.
    fn key(&mut self, text: &'a str, i: usize, open: &mut [(At, u64)]) -> Option<usize> {
        let s = text.as_bytes();
        if s.get(i) != Some(&b'"') {
            return None;
        }
        let key = self.entries.len();
        let i = self.string(text, i + 1)?;
        let (object, seen) = open.last_mut()?;
        let name = self.str(key);
        let bit =
            1u64 << ((name.len() * 31 + usize::from(*name.as_bytes().last().unwrap_or(&0))) & 63);
        if *seen & bit != 0
            && self
                .entries_of(*object, key)
                .any(|(k, _)| self.str(k) == name)
        {
            // A repeated key: serde_json's map semantics, left to it.
            return None;
        }
        *seen |= bit;
        let i = skip_ws(s, i);
        (s.get(i) == Some(&b':')).then_some(i + 1)
    }

    /// A number starting at `i`; the position after it.
    fn number(&mut self, text: &'a str, i: usize) -> Option<usize> {
        let s = text.as_bytes();
        // The common case here: a short plain integer (not `-0`, which serde_json reads as
        // a float), whose text is what `write_i64` writes.
        let digits = usize::from(s[i] == b'-');
        let mut end = i + digits;
        while s.get(end).is_some_and(u8::is_ascii_digit) {
            end += 1;
        }
        let n = end - i - digits;
        if (1..=18).contains(&n)
            && (s[i + digits] != b'0' || (n == 1 && digits == 0))
            && !matches!(s.get(end), Some(b'.' | b'e' | b'E'))
        {
            self.push(Kind::Int, text.get(i..end)?, i, end);
            return Some(end);
        }
        let mut r = Reader::at(text, i + 1);
        let kind = if r.number_after()?.is_i64() {
            Kind::Int
        } else {
            Kind::Num
        };
        self.push(kind, text.get(i..r.pos())?, i, r.pos());
        Some(r.pos())
    }

    /// The kind of the value at `at`.
    pub(crate) fn kind(&self, at: At) -> Kind {
        self.entries[at].kind
    }

    /// A string's text (`Str`, `Esc`), a number's (`Int`, `Num`); `""` for anything else.
    pub(crate) fn str(&self, at: At) -> &str {
        let e = &self.entries[at];
        match e.kind {
            Kind::Esc => &self.owned[e.owned as usize],
            _ => e.text,
        }
    }

    /// The input text of an object's pair from after the key's opening quote to the value's
    /// end (`name":value`), when it is exactly the text serde_json writes for the pair: a
    /// key and a value without escapes (a string, an integer, a literal), nothing but the
    /// colon between them. Answered as the range of the input.
    pub(crate) fn verbatim(&self, key: At, value: At) -> Option<(usize, usize)> {
        let (k, v) = (&self.entries[key], &self.entries[value]);
        (k.kind == Kind::Str
            && matches!(
                v.kind,
                Kind::Str | Kind::Int | Kind::True | Kind::False | Kind::Null
            )
            && v.start == k.end + 1)
            .then_some((k.start as usize + 1, v.end as usize))
    }

    /// Input bytes, by a range [`Tape::verbatim`] answered.
    pub(crate) fn input(&self, start: usize, end: usize) -> &[u8] {
        &self.input[start..end]
    }

    /// The (key, value) pairs of the object at `object`, in order.
    pub(crate) fn entries(&self, object: At) -> impl Iterator<Item = (At, At)> + '_ {
        self.entries_of(object, self.entries[object].next as usize)
    }

    /// The pairs of the object at `object` before `end`.
    fn entries_of(&self, object: At, end: At) -> impl Iterator<Item = (At, At)> + '_ {
        let mut key = object + 1;
        std::iter::from_fn(move || {
            (key < end).then(|| {
                let pair = (key, key + 1);
                key = self.entries[key + 1].next as usize;
                pair
            })
        })
    }

    /// The items of the array at `array`, in order.
    pub(crate) fn items(&self, array: At) -> impl Iterator<Item = At> + '_ {
        let end = self.entries[array].next as usize;
        let mut item = array + 1;
        std::iter::from_fn(move || {
            (item < end).then(|| {
                let at = item;
                item = self.entries[item].next as usize;
                at
            })
        })
    }

    /// The value of `key` in the object at `object`.
    pub(crate) fn get(&self, object: At, key: &str) -> Option<At> {
        self.entries(object)
            .find(|&(k, _)| self.str(k) == key)
            .map(|(_, v)| v)
    }

    /// The name of the type of the value at `at`, as `error::type_name` says it for a
    /// `serde_json::Value`.
    pub(crate) fn type_name(&self, at: At) -> &'static str {
        match self.kind(at) {
            Kind::Null => "null",
            Kind::True | Kind::False => "a boolean",
            Kind::Int | Kind::Num => "a number",
            Kind::Str | Kind::Esc if self.str(at).is_empty() => "an empty string",
            Kind::Str | Kind::Esc => "a string",
            Kind::Array => "an array",
            Kind::Object => "an object",
        }
    }
}

/// The hand-written JSON reader behind [`Tape`] (and the sink's row encoding): every
/// method answers `None` for anything it does not read exactly as serde_json would (the
/// caller then lets serde_json parse the input, for its value or its error).
pub(crate) struct Reader<'a> {
    /// The input, checked UTF-8 once (measured: cheaper than string by string, natively
    /// and in the SmartModule): strings are slices of it.
    text: &'a str,
    s: &'a [u8],
    i: usize,
}

/// Deeper goes to serde_json (its limit is 127 levels; past that, its error).
const MAX_DEPTH: usize = 100;

impl<'a> Reader<'a> {
    /// A reader of `input`; `None` if it is not UTF-8 (serde_json checks the UTF-8 of
    /// strings; outside strings only ASCII is valid JSON).
    #[cfg_attr(
        not(feature = "avro"),
        allow(dead_code, reason = "used by avro_encode")
    )]
    pub(crate) fn new(input: &'a [u8]) -> Option<Self> {
        Some(Self::at(std::str::from_utf8(input).ok()?, 0))
    }

    /// A reader of `text` at `pos`.
    fn at(text: &'a str, pos: usize) -> Self {
        Reader {
            text,
            s: text.as_bytes(),
            i: pos,
        }
    }

    fn skip_ws(&mut self) {
        self.i = skip_ws(self.s, self.i);
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
    #[cfg_attr(
        not(feature = "avro"),
        allow(dead_code, reason = "used by avro_encode")
    )]
    pub(crate) fn at_end(&mut self) -> bool {
        self.skip_ws();
        self.i == self.s.len()
    }

    /// The next byte after whitespace, consumed.
    #[cfg_attr(
        not(feature = "avro"),
        allow(dead_code, reason = "used by avro_encode")
    )]
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

    /// Consumes the rest of a string (after its opening quote) if it is exactly `plain`, a
    /// text with nothing JSON escapes (`"`, `\\`, control characters): then the string's
    /// value is `plain`, whatever else could have spelled it.
    #[cfg_attr(
        not(feature = "avro"),
        allow(dead_code, reason = "used by avro_encode")
    )]
    pub(crate) fn eat_plain_string(&mut self, plain: &str) -> bool {
        let end = self.i + plain.len();
        let found =
            self.s.get(self.i..end) == Some(plain.as_bytes()) && self.s.get(end) == Some(&b'"');
        if found {
            self.i = end + 1;
        }
        found
    }

    /// `true`, `false` or `null`, after its first letter.
    pub(crate) fn literal_after(&mut self, first: u8) -> Option<Kind> {
        match first {
            b't' => self.literal(b"rue", Kind::True),
            b'f' => self.literal(b"alse", Kind::False),
            b'n' => self.literal(b"ull", Kind::Null),
            _ => None,
        }
    }

    fn literal(&mut self, rest: &[u8], value: Kind) -> Option<Kind> {
        let end = self.i + rest.len();
        (self.s.get(self.i..end)? == rest).then(|| {
            self.i = end;
            value
        })
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

/// The position of the first byte from `i` on that is not JSON whitespace.
fn skip_ws(s: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\n' | b'\t' | b'\r') = s.get(i) {
        i += 1;
    }
    i
}

/// The index of the first byte from `i` on that ends a plain run of string text: `"`, `\\`
/// or a control character (or `s.len()`). Eight bytes at a time: a byte's match is found by
/// the zero-byte test on `word ^ pattern`, and "below 0x20" by the same borrow trick; a
/// false match can only sit above a true one in the same word, so the lowest is exact.
/// (Also kafka-source's check of the forms API's answers, as `form_model::json_plain_end`.)
pub fn plain_end(s: &[u8], mut i: usize) -> usize {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The tape's value as compact JSON text (what the flattening writes for it).
    fn written(tape: &Tape<'_>) -> String {
        let mut out = Vec::new();
        crate::flatten::write_json(&mut out, tape, 0);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn repeated_keys_are_left_to_serde_json() {
        let input = br#"{"b":1,"a":"x\"y","b":[2,{"c":null}],"d":1.5e3,"e":-0}"#;
        assert!(Tape::parse(input).is_none());
        // serde_json keeps the last value in the first key's place; its text reads back.
        let value: serde_json::Value = serde_json::from_slice(input).unwrap();
        let text = serde_json::to_vec(&value).unwrap();
        let tape = Tape::parse_written(&text).unwrap();
        let keys: Vec<&str> = tape.entries(0).map(|(k, _)| tape.str(k)).collect();
        assert_eq!(keys, ["b", "a", "d", "e"]);
        assert_eq!(
            tape.get(0, "a").map(|a| (tape.kind(a), tape.str(a))),
            Some((Kind::Esc, "x\"y"))
        );
        let b = tape.get(0, "b").unwrap();
        assert_eq!((tape.kind(b), tape.items(b).count()), (Kind::Array, 2));
        assert_eq!(written(&tape), value.to_string());
        // Same keys in other objects, and keys whose filter bits collide, are not repeats.
        let tape = Tape::parse(br#"{"a":{"a":1},"ab":1,"cb":2,"b":[{"b":1},{"b":2}]}"#).unwrap();
        assert_eq!(tape.entries(0).count(), 4);
        assert!(Tape::parse(br#"{"ab":1,"cb":2,"ab":3}"#).is_none());
        assert!(Tape::parse(br#"{"k\u0041":1,"kA":2}"#).is_none());
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
    fn the_tape_reads_as_serde_json_does() {
        let mut deep = String::new();
        for depth in [100, 101, 127, 128, 129, 300] {
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

    /// What the tape reads, serde_json reads as the same value; what serde_json reads, the
    /// tape reads from serde_json's own text.
    fn check(input: &[u8]) {
        let theirs = serde_json::from_slice::<serde_json::Value>(input);
        match (&theirs, Tape::parse(input)) {
            (Ok(t), Some(tape)) => {
                assert_eq!(
                    written(&tape),
                    t.to_string(),
                    "{}",
                    String::from_utf8_lossy(input)
                )
            }
            (Ok(_) | Err(_), None) => {}
            (Err(e), Some(tape)) => panic!(
                "serde_json refuses {:?} ({e}), the tape read {}",
                String::from_utf8_lossy(input),
                written(&tape)
            ),
        }
        if let Ok(t) = theirs {
            let text = serde_json::to_vec(&t).unwrap();
            let tape = Tape::parse_written(&text).expect("serde_json's text");
            assert_eq!(written(&tape), t.to_string());
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
    fn the_tape_takes_the_common_inputs() {
        for (i, case) in CASES[..11].iter().enumerate() {
            // Case 5 repeats a key.
            assert_eq!(Tape::parse(case.as_bytes()).is_some(), i != 5, "{case}");
        }
        // Strings: slices of the input exactly when they had no escapes.
        let tape = Tape::parse(br#"{"plain":"abc","esc":"a\nb","k\u0041":1}"#).unwrap();
        let pairs: Vec<_> = tape
            .entries(0)
            .map(|(k, v)| (tape.kind(k), tape.str(k), tape.kind(v), tape.str(v)))
            .collect();
        assert_eq!(
            pairs,
            [
                (Kind::Str, "plain", Kind::Str, "abc"),
                (Kind::Str, "esc", Kind::Esc, "a\nb"),
                (Kind::Esc, "kA", Kind::Int, "1"),
            ]
        );
        let tape = Tape::parse(b"[-0,1.5,12345678901234567890,-9223372036854775808]").unwrap();
        let kinds: Vec<_> = tape.items(0).map(|v| tape.kind(v)).collect();
        assert_eq!(kinds, [Kind::Num, Kind::Num, Kind::Num, Kind::Int]);
        assert_eq!(tape.type_name(0), "an array");
    }
}

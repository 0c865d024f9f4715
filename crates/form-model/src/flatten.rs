//! The flattening rules (DESIGN.md "Modelling rules"): one enriched record in, the rows of
//! both tables out, written straight to JSON (the SmartModule's output value).
//!
//! Output: `{"form":[{…}],"form_field":[{…},…]}`. Nested objects are joined with `_` to any
//! depth, arrays (other than the form's `fields`) become their compact JSON text, scalars are
//! kept; timestamps are integers (microseconds since the Unix epoch, UTC). An absent column
//! means null.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::RecordError;
use crate::event::{DELETED_EVENT_TYPE, FieldView, timestamp_field, validate_event_with};
use crate::json::{At, Kind, Tape};

/// One row: column name → value (insertion-ordered).
pub type Row = Map<String, Value>;

/// Table names, as in the output object and the S3 keys.
pub const FORM_TABLE: &str = "form";
/// Table names, as in the output object and the S3 keys.
pub const FORM_FIELD_TABLE: &str = "form_field";
/// Timestamp columns (integers, microseconds since the Unix epoch, UTC).
pub const TIMESTAMP_COLUMNS: [&str; 4] = [
    "retrieved_timestamp",
    "event_happened_at",
    "form_retrieved_timestamp",
    "form_event_happened_at",
];

/// The rows of one enriched record (the SmartModule's output value, parsed).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Flattened {
    /// `form` rows (one per record).
    pub form: Vec<Row>,
    /// `form_field` rows (one per field of the form).
    pub form_field: Vec<Row>,
}

impl Flattened {
    /// Parses the SmartModule's output value.
    pub fn from_slice(bytes: &[u8]) -> serde_json::Result<Self> {
        serde_json::from_slice(bytes)
    }

    /// Serializes back to the output format.
    pub fn to_vec(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// Flattens one `form.enriched` value into rows.
pub fn flatten(input: &[u8]) -> Result<Flattened, RecordError> {
    let mut out = Vec::with_capacity(input.len() * 3);
    flatten_to_json(input, &mut out)?;
    // Our own output always parses.
    Flattened::from_slice(&out).map_err(|e| RecordError::InvalidJson {
        detail: format!("internal: flattened output does not parse: {e}"),
    })
}

/// Flattens one `form.enriched` value, appending the output JSON to `out` (nothing is
/// appended on error). This is the hot path: the input is parsed once into a flat tape
/// that borrows its strings from the input (`json.rs`) and walked by index; the form's
/// columns are serialized once and copied into each field row.
pub fn flatten_to_json(input: &[u8], out: &mut Vec<u8>) -> Result<(), RecordError> {
    let start = out.len();
    let result = flatten_inner(input, out);
    if result.is_err() {
        out.truncate(start);
    }
    result
}

fn flatten_inner(input: &[u8], out: &mut Vec<u8>) -> Result<(), RecordError> {
    // The tape reads almost every input. What it leaves to serde_json (invalid JSON, for
    // serde_json's error; a repeated key; deep nesting) is parsed by serde_json and read
    // back from the compact text serde_json writes for it, which the tape always reads.
    let written;
    let tape = match Tape::parse(input) {
        Some(tape) => tape,
        None => {
            let value: serde_json::Value =
                serde_json::from_slice(input).map_err(|e| RecordError::InvalidJson {
                    detail: e.to_string(),
                })?;
            written = serde_json::to_vec(&value).unwrap_or_default();
            Tape::parse_written(&written).ok_or_else(|| RecordError::InvalidJson {
                detail: "internal: serde_json's own text does not parse again".to_owned(),
            })?
        }
    };
    let top = 0;
    if tape.kind(top) != Kind::Object {
        return Err(RecordError::WrongType {
            field: "(record)".to_owned(),
            expected: "an object",
            found: tape.type_name(top),
        });
    }
    let event = match tape.get(top, "event") {
        Some(event) if tape.kind(event) == Kind::Object => event,
        Some(null) if tape.kind(null) != Kind::Null => {
            return Err(RecordError::WrongType {
                field: "event".to_owned(),
                expected: "an object",
                found: tape.type_name(null),
            });
        }
        _ => {
            return Err(RecordError::MissingField {
                field: "event".to_owned(),
            });
        }
    };
    let ev = validate_event_with(
        |name| match tape.get(event, name) {
            None => FieldView::Absent,
            Some(v) => match tape.kind(v) {
                Kind::Null => FieldView::Absent,
                Kind::Str | Kind::Esc => FieldView::Str(tape.str(v)),
                _ => FieldView::Other(tape.type_name(v)),
            },
        },
        "event.",
    )?;
    let retrieved = match tape.get(top, "retrieved_timestamp") {
        Some(v) if matches!(tape.kind(v), Kind::Str | Kind::Esc) => {
            timestamp_field(tape.str(v), "retrieved_timestamp")?
        }
        Some(v) if tape.kind(v) != Kind::Null => {
            return Err(RecordError::WrongType {
                field: "retrieved_timestamp".to_owned(),
                expected: "a string",
                found: tape.type_name(v),
            });
        }
        _ => {
            return Err(RecordError::MissingField {
                field: "retrieved_timestamp".to_owned(),
            });
        }
    };

    // The columns every row of this record gets from the event.
    let mut event_cols = Vec::with_capacity(64 + ev.event_type.len());
    event_cols.extend_from_slice(b"\"retrieved_timestamp\":");
    write_i64(&mut event_cols, retrieved);
    event_cols.extend_from_slice(b",\"event_happened_at\":");
    write_i64(&mut event_cols, ev.happened_at_micros);
    event_cols.extend_from_slice(b",\"event_type\":");
    write_str(&mut event_cols, ev.event_type);

    let Some(form) = tape.get(top, "form") else {
        return Err(RecordError::MissingField {
            field: "form".to_owned(),
        });
    };
    match tape.kind(form) {
        Kind::Object => {
            let fields = match tape.get(form, "fields") {
                Some(fields) if tape.kind(fields) == Kind::Array => Some(fields),
                Some(other) if tape.kind(other) != Kind::Null => {
                    return Err(RecordError::WrongType {
                        field: "form.fields".to_owned(),
                        expected: "an array",
                        found: tape.type_name(other),
                    });
                }
                _ => None,
            };
            let fields = || fields.into_iter().flat_map(|f| tape.items(f));
            if let Some((i, field)) = fields()
                .enumerate()
                .find(|&(_, f)| tape.kind(f) != Kind::Object)
            {
                return Err(RecordError::WrongType {
                    field: format!("form.fields[{i}]"),
                    expected: "an object",
                    found: tape.type_name(field),
                });
            }

            out.extend_from_slice(b"{\"form\":[{");
            let mut first = true;
            let mut path = Vec::new();
            let mut scratch = Vec::new();
            let columns = Columns { tape: &tape };
            columns.write(out, &mut path, &mut scratch, form, true, &mut first);
            if !first {
                out.push(b',');
            }
            out.extend_from_slice(&event_cols);
            out.extend_from_slice(b"}],\"form_field\":[");

            let mut fields = fields().peekable();
            if fields.peek().is_some() {
                // The form's columns, prefixed `form_`, once for all field rows.
                let mut form_cols = Vec::with_capacity(out.len());
                let mut first = true;
                path.clear();
                path.extend_from_slice(b"form_");
                columns.write(
                    &mut form_cols,
                    &mut path,
                    &mut scratch,
                    form,
                    true,
                    &mut first,
                );
                if !first {
                    form_cols.push(b',');
                }
                write_prefixed_event_cols(&mut form_cols, retrieved, &ev);

                for (i, field) in fields.enumerate() {
                    out.reserve(form_cols.len() + 512);
                    if i > 0 {
                        out.push(b',');
                    }
                    out.push(b'{');
                    let mut first = true;
                    path.clear();
                    columns.write(out, &mut path, &mut scratch, field, false, &mut first);
                    if !first {
                        out.push(b',');
                    }
                    out.extend_from_slice(&form_cols);
                    out.push(b'}');
                }
            }
            out.extend_from_slice(b"]}");
        }
        Kind::Null => {
            if ev.event_type != DELETED_EVENT_TYPE {
                return Err(RecordError::FormNotFound {
                    form_id: ev.form_id.to_owned(),
                    event_type: ev.event_type.to_owned(),
                });
            }
            // The form is gone: a form row from the event alone, no field rows.
            let Some(title) = ev.form_title else {
                return Err(RecordError::MissingField {
                    field: "event.form_title".to_owned(),
                });
            };
            out.extend_from_slice(b"{\"form\":[{\"id\":");
            write_str(out, ev.form_id);
            out.extend_from_slice(b",\"title\":");
            write_str(out, title);
            out.push(b',');
            out.extend_from_slice(&event_cols);
            out.extend_from_slice(b"}],\"form_field\":[]}");
        }
        _ => {
            return Err(RecordError::WrongType {
                field: "form".to_owned(),
                expected: "an object or null",
                found: tape.type_name(form),
            });
        }
    }
    Ok(())
}

fn write_prefixed_event_cols(
    out: &mut Vec<u8>,
    retrieved: i64,
    ev: &crate::event::EventFields<'_>,
) {
    out.extend_from_slice(b"\"form_retrieved_timestamp\":");
    write_i64(out, retrieved);
    out.extend_from_slice(b",\"form_event_happened_at\":");
    write_i64(out, ev.happened_at_micros);
    out.extend_from_slice(b",\"form_event_type\":");
    write_str(out, ev.event_type);
}

/// Writes columns from a tape.
struct Columns<'t, 'a> {
    tape: &'t Tape<'a>,
}

impl Columns<'_, '_> {
    /// Writes `"path+key":value` pairs for every scalar (or array) under `object`, recursing
    /// into nested objects with `key_` appended to `path` (already JSON-escaped bytes).
    /// `scratch` is a reusable buffer for the JSON text of arrays.
    fn write(
        &self,
        out: &mut Vec<u8>,
        path: &mut Vec<u8>,
        scratch: &mut Vec<u8>,
        object: At,
        skip_fields: bool,
        first: &mut bool,
    ) {
        let tape = self.tape;
        // Pairs whose input text is their output text (`Tape::verbatim`) are copied as they
        // are; with no path, consecutive ones (one comma apart) as one run.
        let mut run: Option<(usize, usize)> = None;
        for (key, value) in tape.entries(object) {
            if skip_fields && tape.str(key) == "fields" {
                continue;
            }
            if let Some((start, end)) = tape.verbatim(key, value) {
                match &mut run {
                    Some((_, run_end)) if path.is_empty() && start == *run_end + 2 => {
                        *run_end = end;
                    }
                    _ => {
                        self.write_run(out, path, run.take(), first);
                        run = Some((start, end));
                    }
                }
                continue;
            }
            self.write_run(out, path, run.take(), first);
            let kind = tape.kind(value);
            if kind == Kind::Object {
                let len = path.len();
                write_text(path, tape, key);
                path.push(b'_');
                self.write(out, path, scratch, value, false, first);
                path.truncate(len);
                continue;
            }
            if !*first {
                out.push(b',');
            }
            *first = false;
            out.push(b'"');
            put(out, path);
            write_text(out, tape, key);
            out.extend_from_slice(b"\":");
            if kind == Kind::Array {
                // Compact JSON text of the array, as a string column.
                scratch.clear();
                write_json(scratch, tape, value);
                // Our own JSON text: valid UTF-8 (strings came from a `str`).
                write_str(out, std::str::from_utf8(scratch).unwrap_or_default());
            } else {
                write_json(out, tape, value);
            }
        }
        self.write_run(out, path, run, first);
    }

    /// Writes a run of verbatim pairs: `"`, the path, then the input text from after the
    /// first key's opening quote to the last value's end.
    fn write_run(
        &self,
        out: &mut Vec<u8>,
        path: &[u8],
        run: Option<(usize, usize)>,
        first: &mut bool,
    ) {
        if let Some((start, end)) = run {
            if !*first {
                out.push(b',');
            }
            *first = false;
            out.push(b'"');
            put(out, path);
            put(out, self.tape.input(start, end));
        }
    }
}

/// Compact JSON text of the value at `at`, as `serde_json::to_writer` writes the same
/// `serde_json::Value` (same escaping, same number text).
pub(crate) fn write_json(out: &mut Vec<u8>, tape: &Tape<'_>, at: At) {
    match tape.kind(at) {
        Kind::Null => out.extend_from_slice(b"null"),
        Kind::True => out.extend_from_slice(b"true"),
        Kind::False => out.extend_from_slice(b"false"),
        // An integer's input text is the text serde_json writes for it.
        Kind::Int => put(out, tape.str(at).as_bytes()),
        // Floats and integers past i64 keep serde_json's text (shortest round-trip float).
        Kind::Num => {
            // The tape read it as a number serde_json reads.
            if let Ok(n) = serde_json::from_str::<serde_json::Number>(tape.str(at)) {
                let _ = serde_json::to_writer(&mut *out, &n);
            }
        }
        Kind::Str | Kind::Esc => {
            out.push(b'"');
            write_text(out, tape, at);
            out.push(b'"');
        }
        Kind::Array => {
            out.push(b'[');
            for (i, item) in tape.items(at).enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_json(out, tape, item);
            }
            out.push(b']');
        }
        Kind::Object => {
            out.push(b'{');
            for (i, (key, item)) in tape.entries(at).enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.push(b'"');
                write_text(out, tape, key);
                out.extend_from_slice(b"\":");
                write_json(out, tape, item);
            }
            out.push(b'}');
        }
    }
}

/// Appends `v` in decimal (what `write!` writes, without the formatting machinery; used by
/// kafka-source for the enriched record's offsets too).
pub fn write_i64(out: &mut Vec<u8>, v: i64) {
    // Enough for any i64.
    let mut buf = [0u8; 20];
    let mut n = v.unsigned_abs();
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if v < 0 {
        out.push(b'-');
    }
    put(out, &buf[i..]);
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    write_escaped(out, s);
    out.push(b'"');
}

/// Appends `bytes`; short pieces 8 bytes at a time. In the SmartModule every copy of a
/// length not known at compile time is a call out of the WASM code into the engine's
/// `memory.copy`, which costs more than copying a key or a value here (measured: those
/// calls were a quarter of the module's time).
#[inline]
fn put(out: &mut Vec<u8>, bytes: &[u8]) {
    if bytes.len() > 64 {
        out.extend_from_slice(bytes);
        return;
    }
    out.reserve(bytes.len());
    let mut words = bytes.chunks_exact(8);
    for word in &mut words {
        let word: &[u8; 8] = word.try_into().expect("8 bytes");
        out.extend_from_slice(word);
    }
    // The rest (0–7 bytes) as 4, 2 and 1: copies of fixed sizes, no call.
    let mut rest = words.remainder();
    if let Some((four, tail)) = rest.split_first_chunk::<4>() {
        out.extend_from_slice(four);
        rest = tail;
    }
    if let Some((two, tail)) = rest.split_first_chunk::<2>() {
        out.extend_from_slice(two);
        rest = tail;
    }
    if let Some(&one) = rest.first() {
        out.push(one);
    }
}

/// A string's JSON text without the quotes: one that had no escapes in the input needs
/// none (see [`Kind::Str`]) and is copied as it is.
fn write_text(out: &mut Vec<u8>, tape: &Tape<'_>, at: At) {
    match tape.kind(at) {
        Kind::Str => put(out, tape.str(at).as_bytes()),
        _ => write_escaped(out, tape.str(at)),
    }
}

/// JSON string escaping without the quotes (non-ASCII kept as UTF-8).
fn write_escaped(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..=0x1f => {
                put(out, &bytes[start..i]);
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xf)]);
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        put(out, &bytes[start..i]);
        out.extend_from_slice(esc);
        start = i + 1;
    }
    put(out, &bytes[start..]);
}

/// The event date (`YYYY-MM-DD`, UTC) of a row of either table, from its
/// `event_happened_at` (form) or `form_event_happened_at` (form_field) column; for the
/// sink's object keys. `None` if the row has neither as an integer.
pub fn row_event_date(row: &Row) -> Option<String> {
    let micros = row
        .get("event_happened_at")
        .or_else(|| row.get("form_event_happened_at"))?
        .as_i64()?;
    Some(crate::time::micros_to_date(micros))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_like_serde_json() {
        for s in [
            "plain",
            "q\"b\\s",
            "ctl\u{1}\u{1f}\n\t\r\u{8}\u{c}",
            "ünï😀",
            "",
        ] {
            let mut out = Vec::new();
            write_str(&mut out, s);
            assert_eq!(out, serde_json::to_vec(s).unwrap(), "{s:?}");
        }
        for v in [0i64, 7, -7, i64::MAX, i64::MIN, 1_664_715_615_000_000] {
            let mut out = Vec::new();
            write_i64(&mut out, v);
            assert_eq!(out, v.to_string().into_bytes());
        }
    }

    #[test]
    fn verbatim_runs_write_what_the_column_by_column_path_writes() {
        // Compact input takes the verbatim runs (`Tape::verbatim`); the same value
        // pretty-printed (whitespace between all tokens) takes the column-by-column path.
        let mut inputs = vec![crate::seed_enriched(1_664_715_615_123_456)];
        inputs.extend(crate::golden::load_cases().into_iter().map(|c| c.input));
        inputs.push(
            r#"{"event":{"form_id":"a","form_title":"t","event_happened_at":"2024-05-01 10:00:00","event_type":"created"},"retrieved_timestamp":"2024-05-01T10:00:00Z","form":{"id":"a","t\u0069tle":"x\"y","u":"\u0041\/","n":-0,"f":1.50,"big":18446744073709551615,"nul":null,"ok":true,"s":{"a":"b","c":[1,{"d":"\u00e9"}],"e":false},"fields":[{"id":"q","type":"t","v":{"r":true,"m":10}},{"id":"r","title":"é ✓","type":"t"}]}}"#.as_bytes().to_vec(),
        );
        let mut rows = 0;
        for input in inputs {
            let Ok(value) = serde_json::from_slice::<serde_json::Value>(&input) else {
                continue;
            };
            // As given (escapes as written), compact, pretty.
            let texts = [
                input.clone(),
                serde_json::to_vec(&value).unwrap(),
                serde_json::to_vec_pretty(&value).unwrap(),
            ];
            let outputs: Vec<_> = texts
                .iter()
                .map(|text| {
                    let mut out = Vec::new();
                    let result = flatten_to_json(text, &mut out).map_err(|e| e.to_string());
                    (result, String::from_utf8(out).unwrap())
                })
                .collect();
            for other in &outputs[1..] {
                assert_eq!(&outputs[0], other, "{}", String::from_utf8_lossy(&input));
            }
            rows += usize::from(outputs[0].0.is_ok());
        }
        assert!(rows >= 8, "only {rows} inputs flattened");
    }

    #[test]
    fn nothing_written_on_error() {
        let mut out = b"keep".to_vec();
        assert!(flatten_to_json(b"{\"event\":{}}", &mut out).is_err());
        assert_eq!(out, b"keep");
    }

    #[test]
    fn decimals() {
        for n in [0, 7, -7, 10, 1_234_567, i64::MAX, i64::MIN] {
            let mut v = b"x".to_vec();
            write_i64(&mut v, n);
            assert_eq!(v, format!("x{n}").into_bytes());
        }
    }

    #[test]
    fn event_date_of_rows() {
        let f: Row = serde_json::from_str(r#"{"event_happened_at":1664715615000000}"#).unwrap();
        assert_eq!(row_event_date(&f).as_deref(), Some("2022-10-02"));
        let ff: Row =
            serde_json::from_str(r#"{"form_event_happened_at":1664715615000000}"#).unwrap();
        assert_eq!(row_event_date(&ff).as_deref(), Some("2022-10-02"));
        assert_eq!(row_event_date(&Row::new()), None);
    }
}

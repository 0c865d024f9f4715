//! The sink's fast path (feature `avro`): a SmartModule output value
//! (`{"form":[…],"form_field":[…]}`) parsed once, straight into Avro binary datums, one per
//! row, with no intermediate `serde_json::Value` or `apache_avro::types::Value`.
//!
//! It accepts and refuses exactly what [`Flattened::from_slice`](crate::Flattened::from_slice)
//! followed by [`row_to_value`](crate::avro::row_to_value) does, with the same
//! [`SchemaMismatch`] for the first row that does not fit, and writes the bytes
//! apache-avro's datum writer writes for that value (the tests hold it to both).

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::avro::{ColumnType, Problem, SchemaMismatch, Schemas, Table, TableSchema};
use crate::json::{Kind, Reader};

const MICROS_PER_DAY: i64 = 86_400_000_000;

/// One encoded row: its table, its event day and its datum in [`EncodedRows::bytes`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedRow {
    /// The row's table.
    pub table: Table,
    /// The row's event date as days since 1970-01-01 (UTC), from [`Table::date_column`].
    pub day: i64,
    /// The row's Avro datum: `bytes[range]`.
    pub range: Range<usize>,
}

/// Encoded rows of one or more output values (a reusable buffer: [`EncodedRows::clear`]).
#[derive(Debug, Default)]
pub struct EncodedRows {
    /// Concatenated datums.
    pub bytes: Vec<u8>,
    /// The rows, in output order (`form` rows, then `form_field` rows, per value).
    pub rows: Vec<EncodedRow>,
}

impl EncodedRows {
    /// Empties the buffer, keeping its allocations.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.rows.clear();
    }

    /// The datum of `row`.
    pub fn datum(&self, row: &EncodedRow) -> &[u8] {
        &self.bytes[row.range.clone()]
    }
}

/// Why an output value could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// Not `{"form":[{…}],"form_field":[{…}]}` JSON (the transform's fault).
    #[error("the transform's output is not {{form, form_field}} JSON: {0}")]
    NotRows(serde_json::Error),
    /// A row does not fit its table's schema.
    #[error(transparent)]
    Mismatch(#[from] SchemaMismatch),
}

/// Encodes every row of one output value with the first schema versions (the embedded
/// `config/*.avsc`), appending to `out`. On error `out` is left as it was: a record's rows are
/// all encoded or none.
pub fn encode_output(value: &[u8], out: &mut EncodedRows) -> Result<(), EncodeError> {
    static INITIAL: std::sync::OnceLock<Schemas> = std::sync::OnceLock::new();
    encode_output_with(value, INITIAL.get_or_init(Schemas::initial), out)
}

/// [`encode_output`] with the given schemas (one version per table).
pub fn encode_output_with(
    value: &[u8],
    schemas: &Schemas,
    out: &mut EncodedRows,
) -> Result<(), EncodeError> {
    let (bytes_len, rows_len) = (out.bytes.len(), out.rows.len());
    // The hand-written reader takes what is valid and fits; anything else (and every error,
    // for its exact text) goes through serde_json below.
    if encode_fast(value, schemas, out).is_some() {
        return Ok(());
    }
    out.bytes.truncate(bytes_len);
    out.rows.truncate(rows_len);
    encode_serde(value, schemas, out)
}

/// [`encode_output`] through serde_json: every answer, errors included.
fn encode_serde(value: &[u8], schemas: &Schemas, out: &mut EncodedRows) -> Result<(), EncodeError> {
    let (bytes_len, rows_len) = (out.bytes.len(), out.rows.len());
    let mut state = State {
        out,
        schemas,
        mismatch: None,
        seen: [false; 2],
    };
    let mut de = serde_json::Deserializer::from_slice(value);
    let parsed = TopSeed(&mut state)
        .deserialize(&mut de)
        .and_then(|()| de.end());
    let result = match (parsed, state.mismatch.take()) {
        (Err(e), _) => Err(EncodeError::NotRows(e)),
        (Ok(()), Some(m)) => Err(EncodeError::Mismatch(m)),
        (Ok(()), None) => Ok(()),
    };
    if result.is_err() {
        out.bytes.truncate(bytes_len);
        out.rows.truncate(rows_len);
    }
    result
}

/// [`encode_output`] for an output value whose every row fits, read by `json::Reader`:
/// `None` for anything else (a syntax error, a key or value the schema refuses, an input the
/// reader leaves to serde_json), with `out` then partly written.
fn encode_fast(value: &[u8], schemas: &Schemas, out: &mut EncodedRows) -> Option<()> {
    let mut r = Reader::new(value)?;
    if r.next_token()? != b'{' {
        return None;
    }
    let mut seen = [false; 2];
    let mut slots: Vec<Option<Scalar<'_>>> = Vec::new();
    // The field rows of one record end with the same `form_…` columns, written the same
    // way: the text of the previous row's tail (from its first `form_…` key to its `}`)
    // and what it set. A row whose tail is the same text gets the same assignments, in the
    // same order, without parsing it again.
    let mut tail = Tail::default();
    loop {
        if r.next_token()? != b'"' {
            return None;
        }
        let table = Table::from_name(&r.string()?)?;
        if std::mem::replace(&mut seen[table as usize], true)
            || r.next_token()? != b':'
            || r.next_token()? != b'['
        {
            return None;
        }
        let ts: &TableSchema = schemas.get(table);
        let schema_columns = ts.columns();
        let columns = schema_columns.len();
        let tail_from = ts.tail_from();
        tail.clear();
        if !r.eat(b']') {
            loop {
                if r.next_token()? != b'{' {
                    return None;
                }
                slots.clear();
                slots.resize_with(columns, || None);
                // Set when this row's tail is the previous row's: its encoded columns from
                // `tail_from` on are then the previous row's bytes.
                let mut reuse = None;
                let mut in_tail: Option<usize> = None;
                if !r.eat(b'}') {
                    // Rows usually list their columns in schema order: try the next one first.
                    let mut next = 0;
                    loop {
                        let key_at = r.pos();
                        if r.next_token()? != b'"' {
                            return None;
                        }
                        // The expected name is compared where it stands, without reading
                        // the key (column names are plain: `[A-Za-z0-9_]`).
                        let column = match schema_columns.get(next) {
                            Some(c) if r.eat_plain_string(&c.name) => next,
                            _ => ts.column_index(&r.string()?)?,
                        };
                        next = column + 1;
                        if in_tail.is_none() && column >= tail_from {
                            if let Some(end) = tail.matches(value, key_at) {
                                reuse = tail.encoded.clone();
                                if reuse.is_none() {
                                    for (c, v) in &tail.sets {
                                        slots[*c] = Some(v.clone());
                                    }
                                }
                                r.set_pos(end);
                                break;
                            }
                            in_tail = Some(key_at);
                            tail.sets.clear();
                            tail.encoded = None;
                        }
                        if r.next_token()? != b':' {
                            return None;
                        }
                        // A repeated key keeps its last value, as a JSON object parse does.
                        let v = match r.next_token()? {
                            b'"' => Scalar::Str(r.string()?),
                            b'-' | b'0'..=b'9' => {
                                let n = r.number_after()?;
                                match (n.as_i64(), n.as_u64(), n.as_f64()) {
                                    (Some(v), _, _) => Scalar::I64(v),
                                    (None, Some(v), _) => Scalar::U64(v),
                                    (None, None, Some(v)) => Scalar::F64(v),
                                    (None, None, None) => return None,
                                }
                            }
                            first => match r.literal_after(first)? {
                                Kind::True => Scalar::Bool(true),
                                Kind::False => Scalar::Bool(false),
                                _ => Scalar::Null,
                            },
                        };
                        if in_tail.is_some() {
                            tail.sets.push((column, v.clone()));
                        }
                        slots[column] = Some(v);
                        match r.next_token()? {
                            b',' => {}
                            b'}' => {
                                if let Some(start) = in_tail {
                                    tail.text = start..r.pos();
                                }
                                break;
                            }
                            _ => return None,
                        }
                    }
                }
                let split = Split {
                    from: tail_from,
                    reuse: reuse.as_ref(),
                };
                let suffix = encode_row(ts, &slots, None, out, split).ok()?;
                // The next rows may reuse this row's encoded tail if it sets only tail
                // columns (then their values there are exactly this row's).
                if in_tail.is_some() && tail.sets.iter().all(|(c, _)| *c >= tail_from) {
                    tail.encoded = suffix;
                }
                match r.next_token()? {
                    b',' => {}
                    b']' => break,
                    _ => return None,
                }
            }
        }
        match r.next_token()? {
            b',' => {}
            b'}' => break,
            _ => return None,
        }
    }
    (seen == [true; 2] && r.at_end()).then_some(())
}

/// The previous row's tail: its text in the value, the columns it set, in order, and its
/// encoded columns from the table's tail on (when it set only those).
#[derive(Default)]
struct Tail<'a> {
    text: std::ops::Range<usize>,
    sets: Vec<(usize, Scalar<'a>)>,
    encoded: Option<Suffix>,
}

impl Tail<'_> {
    fn clear(&mut self) {
        self.text = 0..0;
        self.sets.clear();
        self.encoded = None;
    }

    /// Where the row ends if its text from `at` on repeats the previous row's tail (which
    /// ends with the row's `}`).
    fn matches(&self, value: &[u8], at: usize) -> Option<usize> {
        let text = value.get(self.text.clone()).filter(|t| !t.is_empty())?;
        let end = at + text.len();
        (value.get(at..end)? == text).then_some(end)
    }
}

struct State<'o> {
    out: &'o mut EncodedRows,
    schemas: &'o Schemas,
    /// The first row that did not fit: later rows are still parsed (a syntax error anywhere
    /// wins, as with a full parse) but not encoded.
    mismatch: Option<SchemaMismatch>,
    seen: [bool; 2],
}

struct TopSeed<'s, 'o>(&'s mut State<'o>);

impl<'de> DeserializeSeed<'de> for TopSeed<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for TopSeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("struct Flattened")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<Str<'de>>()? {
            let Some(table) = Table::from_name(&key.0) else {
                return Err(de::Error::unknown_field(&key.0, &["form", "form_field"]));
            };
            let seen = &mut self.0.seen[table as usize];
            if *seen {
                return Err(de::Error::duplicate_field(table.name()));
            }
            *seen = true;
            let ts = self.0.schemas.get(table).clone();
            map.next_value_seed(RowsSeed {
                state: self.0,
                table: &ts,
            })?;
        }
        for t in Table::ALL {
            if !self.0.seen[t as usize] {
                return Err(de::Error::missing_field(t.name()));
            }
        }
        Ok(())
    }
}

struct RowsSeed<'s, 'o> {
    state: &'s mut State<'o>,
    table: &'s TableSchema,
}

impl<'de> DeserializeSeed<'de> for RowsSeed<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for RowsSeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a sequence of rows")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let columns = self.table.columns().len();
        let mut slots: Vec<Option<Scalar<'de>>> = Vec::with_capacity(columns);
        loop {
            slots.clear();
            slots.resize_with(columns, || None);
            let seed = RowSeed {
                table: self.table,
                slots: &mut slots,
            };
            let Some(extra) = seq.next_element_seed(seed)? else {
                return Ok(());
            };
            if self.state.mismatch.is_none()
                && let Err(m) = encode_row(self.table, &slots, extra, self.state.out, Split::NONE)
            {
                self.state.mismatch = Some(m);
            }
        }
    }
}

/// Parses one row object into `slots` (by column position); answers the first key the
/// schema lacks, if any.
struct RowSeed<'s, 'de> {
    table: &'s TableSchema,
    slots: &'s mut Vec<Option<Scalar<'de>>>,
}

impl<'de> DeserializeSeed<'de> for RowSeed<'_, 'de> {
    type Value = Option<String>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<String>, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RowSeed<'_, 'de> {
    type Value = Option<String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<String>, A::Error> {
        let mut extra = None;
        while let Some(key) = map.next_key::<Str<'de>>()? {
            match self.table.column_index(&key.0) {
                // A repeated key keeps its last value, as a JSON object parse does.
                Some(i) => self.slots[i] = Some(map.next_value::<Scalar<'de>>()?),
                None => {
                    map.next_value::<IgnoredAny>()?;
                    extra.get_or_insert_with(|| key.0.into_owned());
                }
            }
        }
        Ok(extra)
    }
}

/// Checks one parsed row against its schema (same order and answers as `row_to_value`) and
/// appends its datum.
/// Where a row's datum is split: the columns from `from` on are either encoded from the slots
/// (and their bytes answered, for later rows) or, with `reuse`, copied from an earlier row.
#[derive(Clone, Copy)]
struct Split<'s> {
    from: usize,
    reuse: Option<&'s Suffix>,
}

impl Split<'_> {
    const NONE: Self = Split {
        from: usize::MAX,
        reuse: None,
    };
}

/// The encoded columns of a row from its split on: their bytes in [`EncodedRows::bytes`], and
/// the date column's value if it is among them.
#[derive(Debug, Clone)]
struct Suffix {
    bytes: Range<usize>,
    micros: Option<i64>,
}

/// Encodes one row; answers its encoded suffix (from `split.from`), if the row has one.
fn encode_row(
    table: &TableSchema,
    slots: &[Option<Scalar<'_>>],
    extra: Option<String>,
    out: &mut EncodedRows,
    split: Split<'_>,
) -> Result<Option<Suffix>, SchemaMismatch> {
    let start = out.bytes.len();
    let result = write_row(table, slots, extra, &mut out.bytes, split);
    let (day, suffix) = match result {
        Ok(done) => done,
        Err(m) => {
            out.bytes.truncate(start);
            return Err(m);
        }
    };
    out.rows.push(EncodedRow {
        table: table.table(),
        day,
        range: start..out.bytes.len(),
    });
    Ok(suffix)
}

fn write_row(
    schema: &TableSchema,
    slots: &[Option<Scalar<'_>>],
    extra: Option<String>,
    buf: &mut Vec<u8>,
    split: Split<'_>,
) -> Result<(i64, Option<Suffix>), SchemaMismatch> {
    let table = schema.table();
    let date_column = table.date_column();
    let mut micros = None;
    let mut suffix = None;
    for (i, (col, slot)) in schema.columns().iter().zip(slots).enumerate() {
        if i == split.from {
            if let Some(reuse) = split.reuse {
                buf.extend_from_within(reuse.bytes.clone());
                micros = reuse.micros.or(micros);
                break;
            }
            suffix = Some((buf.len(), micros));
        }
        let mismatch = |problem| SchemaMismatch {
            table: table.name(),
            column: col.name.clone(),
            problem,
        };
        let value = match slot {
            None | Some(Scalar::Null) => {
                if !col.nullable {
                    return Err(mismatch(Problem::MissingRequired));
                }
                put_long(buf, 0);
                continue;
            }
            Some(v) => v,
        };
        if col.nullable {
            put_long(buf, 1);
        }
        let fits = match (col.ty, value) {
            (ColumnType::String, Scalar::Str(s)) => {
                put_long(buf, s.len() as i64);
                buf.extend_from_slice(s.as_bytes());
                true
            }
            (ColumnType::Boolean, Scalar::Bool(b)) => {
                buf.push(u8::from(*b));
                true
            }
            (ColumnType::Long | ColumnType::TimestampMicros, n) => match n.as_i64() {
                Some(v) => {
                    if col.name == date_column {
                        micros = Some(v);
                    }
                    put_long(buf, v);
                    true
                }
                None => false,
            },
            (ColumnType::Double, n) => match n.as_f64() {
                Some(v) => {
                    buf.extend_from_slice(&v.to_le_bytes());
                    true
                }
                None => false,
            },
            _ => false,
        };
        if !fits {
            return Err(mismatch(Problem::WrongType {
                expected: col.ty.name(),
                found: value.type_name(),
            }));
        }
    }
    if let Some(column) = extra {
        return Err(SchemaMismatch {
            table: table.name(),
            column,
            problem: Problem::NotInSchema,
        });
    }
    // The date column is required by both schemas, so a row that got here has it.
    let micros = micros.ok_or_else(|| SchemaMismatch {
        table: table.name(),
        column: date_column.to_owned(),
        problem: Problem::MissingRequired,
    })?;
    let suffix = suffix.map(|(at, before)| Suffix {
        bytes: at..buf.len(),
        micros: if before == Some(micros) {
            None
        } else {
            Some(micros)
        },
    });
    Ok((micros.div_euclid(MICROS_PER_DAY), suffix))
}

/// Appends an Avro `long`: zig-zag, then variable-length base 128.
pub fn put_long(buf: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        buf.push((z as u8) | 0x80);
        z >>= 7;
    }
    buf.push(z as u8);
}

/// A JSON value as far as a column cares: scalars borrowed from the input, containers only
/// named (they never fit a column).
#[derive(Debug, Clone)]
enum Scalar<'de> {
    Null,
    Bool(bool),
    I64(i64),
    U64(u64),
    F64(f64),
    Str(Cow<'de, str>),
    Array,
    Object,
}

impl Scalar<'_> {
    /// As `serde_json::Number::as_i64`.
    fn as_i64(&self) -> Option<i64> {
        match *self {
            Self::I64(v) => Some(v),
            Self::U64(v) => i64::try_from(v).ok(),
            _ => None,
        }
    }

    /// As `serde_json::Number::as_f64`.
    fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::I64(v) => Some(v as f64),
            Self::U64(v) => Some(v as f64),
            Self::F64(v) => Some(v),
            _ => None,
        }
    }

    /// As `error::type_name`.
    fn type_name(&self) -> &'static str {
        match self {
            Self::Null => "null",
            Self::Bool(_) => "a boolean",
            Self::I64(_) | Self::U64(_) | Self::F64(_) => "a number",
            Self::Str(s) if s.is_empty() => "an empty string",
            Self::Str(_) => "a string",
            Self::Array => "an array",
            Self::Object => "an object",
        }
    }
}

impl<'de> de::Deserialize<'de> for Scalar<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor)
    }
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E>(self) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Null)
    }
    fn visit_none<E>(self) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Null)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Scalar<'de>, E> {
        Ok(Scalar::I64(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Scalar<'de>, E> {
        Ok(Scalar::U64(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Scalar<'de>, E> {
        Ok(Scalar::F64(v))
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Str(Cow::Owned(v)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Scalar<'de>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Scalar::Array)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Scalar<'de>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Scalar::Object)
    }
}

/// A JSON string, borrowed from the input when it has no escapes.
struct Str<'de>(Cow<'de, str>);

impl<'de> de::Deserialize<'de> for Str<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(StrVisitor)
    }
}

struct StrVisitor;

impl<'de> Visitor<'de> for StrVisitor {
    type Value = Str<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Str<'de>, E> {
        Ok(Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Str<'de>, E> {
        Ok(Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Str<'de>, E> {
        Ok(Str(Cow::Owned(v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::avro::row_to_value;
    use crate::{Flattened, day_to_date, flatten_to_json};

    /// apache-avro's datum encoding of `value`.
    fn datum_of(schema: &apache_avro::Schema, value: apache_avro::types::Value) -> Vec<u8> {
        apache_avro::writer::datum::GenericDatumWriter::builder(schema)
            .build()
            .unwrap()
            .write_value_to_vec(value)
            .unwrap()
    }

    /// The reference: full parse, `row_to_value`, apache-avro's datum encoder.
    fn reference(value: &[u8]) -> Result<Vec<(Table, String, Vec<u8>)>, String> {
        let flat = Flattened::from_slice(value).map_err(|e| format!("json: {e}"))?;
        let mut out = Vec::new();
        for (table, rows) in [
            (Table::Form, flat.form),
            (Table::FormField, flat.form_field),
        ] {
            for row in rows {
                let date = crate::row_event_date(&row);
                let v = row_to_value(table, row).map_err(|e| format!("mismatch: {e}"))?;
                let datum = datum_of(table.schema(), v);
                out.push((table, date.unwrap(), datum));
            }
        }
        Ok(out)
    }

    fn ours(value: &[u8]) -> Result<Vec<(Table, String, Vec<u8>)>, String> {
        let mut enc = EncodedRows::default();
        enc.bytes.extend_from_slice(b"junk before");
        encode_output(value, &mut enc).map_err(|e| match e {
            EncodeError::NotRows(e) => format!("json: {e}"),
            EncodeError::Mismatch(m) => format!("mismatch: {m}"),
        })?;
        Ok(enc
            .rows
            .iter()
            .map(|r| {
                let date = day_to_date(r.day);
                (r.table, date, enc.datum(r).to_vec())
            })
            .collect())
    }

    fn same(value: &[u8]) {
        let text = String::from_utf8_lossy(value);
        match (reference(value), ours(value)) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "{text}"),
            (Err(a), Err(b)) if a.starts_with("json") => assert!(b.starts_with("json"), "{text}"),
            (Err(a), Err(b)) => assert_eq!(a, b, "{text}"),
            (a, b) => panic!("{text}\nreference {a:?}\nours {b:?}"),
        }
    }

    /// Every golden case's output, the schemas evolved until it fits (new columns, rescued
    /// values): the fast path, the serde path and apache-avro's datum writer agree.
    #[test]
    fn evolved_schemas_encode_every_golden_case_as_apache_avro_does() {
        use crate::avro::{Schemas, row_to_value_with};
        use crate::evolve::{Policy, evolve, needs, rescue};
        let mut evolved = 0;
        for case in crate::golden::load_cases() {
            let mut out = Vec::new();
            if flatten_to_json(&case.input, &mut out).is_err() {
                continue;
            }
            let mut schemas = Schemas::initial();
            let mut value = out.clone();
            if encode_output_with(&value, &schemas, &mut EncodedRows::default()).is_err() {
                evolved += 1;
                let n = needs(&value, &schemas, &Policy::default()).unwrap();
                for t in Table::ALL {
                    if !n.changes[t as usize].is_empty() {
                        let next = evolve(schemas.get(t), &n.changes[t as usize]).unwrap();
                        schemas.set(std::sync::Arc::new(next));
                    }
                }
                if let Some((v, _)) = rescue(&value, &schemas).unwrap() {
                    value = v;
                }
            }
            let mut fast = EncodedRows::default();
            let mut slow = EncodedRows::default();
            encode_serde(&value, &schemas, &mut slow)
                .unwrap_or_else(|e| panic!("{}: {e}", case.name));
            if encode_fast(&value, &schemas, &mut fast).is_some() {
                assert_eq!(
                    (&fast.bytes, &fast.rows),
                    (&slow.bytes, &slow.rows),
                    "{}",
                    case.name
                );
            }
            let flat = Flattened::from_slice(&value).unwrap();
            let rows: Vec<(Table, crate::Row)> = flat
                .form
                .into_iter()
                .map(|r| (Table::Form, r))
                .chain(flat.form_field.into_iter().map(|r| (Table::FormField, r)))
                .collect();
            assert_eq!(rows.len(), slow.rows.len(), "{}", case.name);
            for ((t, row), enc) in rows.into_iter().zip(&slow.rows) {
                let ts = schemas.get(t);
                let v = row_to_value_with(ts, row).unwrap_or_else(|e| panic!("{}: {e}", case.name));
                assert_eq!(datum_of(ts.schema(), v), slow.datum(enc), "{}", case.name);
            }
        }
        assert!(evolved >= 5, "only {evolved} cases needed a new schema");
    }

    #[test]
    fn golden_cases_encode_like_apache_avro() {
        let mut n = 0;
        for case in crate::golden::load_cases() {
            let mut out = Vec::new();
            if flatten_to_json(&case.input, &mut out).is_ok() {
                same(&out);
                n += 1;
            }
        }
        assert!(n >= 5, "only {n} cases flattened");
        let mut seed = Vec::new();
        flatten_to_json(&crate::seed_enriched(1_664_715_615_123_456), &mut seed).unwrap();
        same(&seed);
        assert_eq!(ours(&seed).unwrap().len(), 3, "1 form row + 2 field rows");
    }

    #[test]
    fn bad_rows_are_refused_like_row_to_value() {
        let form = r#""id":"a","title":"t","retrieved_timestamp":5,"event_happened_at":6,"event_type":"x""#;
        let field = r#""id":"f","type":"short_text","form_id":"a","form_title":"t","form_retrieved_timestamp":5,"form_event_happened_at":-86400000001,"form_event_type":"x""#;
        let cases = [
            format!(r#"{{"form":[{{{form}}}],"form_field":[{{{field}}}]}}"#),
            format!(r#"{{"form":[{{{form},"colour":"red"}}],"form_field":[]}}"#),
            // A name that starts with the expected next column's.
            format!(r#"{{"form":[{{"idx":"a",{form}}}],"form_field":[]}}"#),
            format!(r#"{{"form":[{{{form},"type":7}}],"form_field":[]}}"#),
            format!(r#"{{"form":[{{{form},"type":""}}],"form_field":[]}}"#),
            format!(r#"{{"form":[{{{form},"type":null}}],"form_field":[]}}"#),
            format!(r#"{{"form":[{{{form},"type":[1,{{"a":2}}]}}],"form_field":[]}}"#),
            format!(r#"{{"form":[{{{form},"type":{{"a":[]}}}}],"form_field":[]}}"#),
            format!(r#"{{"form":[{{{form},"id":"dup\"\u00e9"}}],"form_field":[]}}"#),
            format!(r#"{{"form":[{{{form},"event_happened_at":1.5}}],"form_field":[]}}"#),
            format!(
                r#"{{"form":[{{{form},"event_happened_at":18446744073709551615}}],"form_field":[]}}"#
            ),
            format!(
                r#"{{"form":[{{{form},"event_happened_at":-9223372036854775808}}],"form_field":[]}}"#
            ),
            r#"{"form":[{"title":"t"}],"form_field":[]}"#.to_owned(),
            format!(
                r#"{{"form":[{{{form},"settings_show_time_to_complete":"yes"}}],"form_field":[]}}"#
            ),
            format!(
                r#"{{"form":[{{{form},"settings_show_time_to_complete":false}}],"form_field":[]}}"#
            ),
            format!(r#"{{"form":[{{{form}}}],"form_field":[{{{field},"extra":1}},{{"broken"}}]}}"#),
            format!(r#"{{"form":[{{{form}}}]}}"#),
            format!(r#"{{"form":[{{{form}}}],"form_field":[],"x":[]}}"#),
            format!(r#"{{"form":[{{{form}}}],"form_field":[],"form":[]}}"#),
            format!(r#"{{"form":[{{{form}}}],"form_field":[]}} trailing"#),
            r#"{"form":{},"form_field":[]}"#.to_owned(),
            r#"[]"#.to_owned(),
            String::new(),
        ];
        for c in &cases {
            same(c.as_bytes());
        }
        // Not UTF-8, in a value, a key, or a field row's `form_…` tail: serde_json's error.
        let field_row = format!("{{{field}}}");
        for bad in [
            format!(r#"{{"form":[{{{form},"type":"X"}}],"form_field":[]}}"#),
            format!(r#"{{"form":[{{{form},"X":1}}],"form_field":[]}}"#),
            format!(
                r#"{{"form":[{{{form}}}],"form_field":[{field_row},{}]}}"#,
                field_row.replace(r#""form_title":"t""#, r#""form_title":"X""#)
            ),
        ] {
            let bytes: Vec<u8> = bad
                .bytes()
                .map(|b| if b == b'X' { 0xff } else { b })
                .collect();
            same(&bytes);
            assert!(matches!(
                encode_output(&bytes, &mut EncodedRows::default()),
                Err(EncodeError::NotRows(_))
            ));
        }
        // A failing record leaves the buffer as it was.
        let mut enc = EncodedRows::default();
        encode_output(cases[0].as_bytes(), &mut enc).unwrap();
        let before = (enc.bytes.clone(), enc.rows.clone());
        assert!(encode_output(cases[1].as_bytes(), &mut enc).is_err());
        assert_eq!((enc.bytes, enc.rows), before);
    }

    #[test]
    fn numbers_and_negative_days() {
        let numeric = Table::ALL
            .iter()
            .flat_map(|t| t.columns().iter().map(move |c| (*t, c)))
            .filter(|(_, c)| matches!(c.ty, ColumnType::Double | ColumnType::Long) && c.nullable)
            .collect::<Vec<_>>();
        assert!(!numeric.is_empty());
        for (table, col) in numeric {
            for v in [
                "1",
                "-3",
                "2.5",
                "1e300",
                "18446744073709551615",
                "9223372036854775807",
            ] {
                let body = match table {
                    Table::Form => format!(
                        r#"{{"form":[{{"id":"a","title":"t","retrieved_timestamp":5,"event_happened_at":6,"event_type":"x","{}":{v}}}],"form_field":[]}}"#,
                        col.name
                    ),
                    Table::FormField => format!(
                        r#"{{"form":[],"form_field":[{{"id":"f","type":"short_text","form_id":"a","form_title":"t","form_retrieved_timestamp":5,"form_event_happened_at":6,"form_event_type":"x","{}":{v}}}]}}"#,
                        col.name
                    ),
                };
                same(body.as_bytes());
            }
        }
        let mut enc = EncodedRows::default();
        let body = r#"{"form":[{"id":"a","title":"t","retrieved_timestamp":5,"event_happened_at":-1,"event_type":"x"}],"form_field":[]}"#;
        encode_output(body.as_bytes(), &mut enc).unwrap();
        assert_eq!(enc.rows[0].day, -1);
        assert_eq!(day_to_date(enc.rows[0].day), "1969-12-31");
    }

    #[test]
    fn the_fast_path_takes_valid_rows_and_agrees_with_serde_json() {
        let form = r#""id":"a","title":"t\u00e9\"","retrieved_timestamp":5,"event_happened_at":6,"event_type":"x""#;
        let field = r#""id":"f","type":"short_text","form_id":"a","form_title":"t","form_retrieved_timestamp":5,"form_event_happened_at":-86400000001,"form_event_type":"x""#;
        let mut valid = vec![
            format!(r#"{{"form":[{{{form}}}],"form_field":[{{{field}}},{{{field}}}]}}"#),
            format!(r#" {{ "form_field" : [ {{{field}}} ] , "form" : [ {{{form}}} ] }} "#),
            format!(r#"{{"form":[{{{form},"title":"again","id":"b"}}],"form_field":[]}}"#),
            format!(r#"{{"form":[{{{form},"type":null}}],"form_field":[]}}"#),
            // Names spelled with escapes.
            format!(
                r#"{{"form":[{{{}}}],"form_field":[]}}"#,
                form.replace(r#""id""#, r#""\u0069d""#)
            ),
            format!(
                r#"{{"form":[{{{}}}],"form_field":[{{{}}}]}}"#,
                form.replace(r#""title""#, r#""titl\u0065""#),
                field.replace(r#""type""#, r#""typ\u0065""#)
            ),
            r#"{"form":[],"form_field":[]}"#.to_owned(),
            // Field rows sharing a tail, or nearly: the tail text is reused only when equal,
            // its encoded bytes only when it sets nothing but tail columns (not `i`'s `type`).
            format!(
                r#"{{"form":[{{{form}}}],"form_field":[{{{field}}},{{"id":"g",{}}},{{"id":"h","type":"x","form_id":"a","form_title":"t","form_retrieved_timestamp":5,"form_event_happened_at":-86400000001,"form_event_type":"y"}},{{"id":"i","form_id":"b","type":"t","form_title":"t","form_retrieved_timestamp":5,"form_event_happened_at":7,"form_event_type":"x"}},{{"id":"i2","form_id":"b","type":"t","form_title":"t","form_retrieved_timestamp":5,"form_event_happened_at":7,"form_event_type":"x"}},{{"id":"j","type":"t","form_id":"b","form_title":"t","form_retrieved_timestamp":5,"form_event_happened_at":7,"form_event_type":"x"}},{{"id":"k","type":"t","form_id":"b","form_title":"t","form_retrieved_timestamp":5,"form_event_happened_at":7,"form_event_type":"x" }}]}}"#,
                &field[9..]
            ),
        ];
        for case in crate::golden::load_cases() {
            let mut out = Vec::new();
            if flatten_to_json(&case.input, &mut out).is_ok() {
                valid.push(String::from_utf8(out).unwrap());
            }
        }
        let mut taken = 0;
        let initial = Schemas::initial();
        for v in &valid {
            let mut slow = EncodedRows::default();
            if encode_serde(v.as_bytes(), &initial, &mut slow).is_err() {
                // Rows the schema refuses (a golden case's extra columns): serde_json's.
                assert!(encode_fast(v.as_bytes(), &initial, &mut EncodedRows::default()).is_none());
                continue;
            }
            taken += 1;
            let mut fast = EncodedRows::default();
            assert!(
                encode_fast(v.as_bytes(), &initial, &mut fast).is_some(),
                "{v}"
            );
            assert_eq!((fast.bytes, fast.rows), (slow.bytes, slow.rows), "{v}");
        }
        assert!(taken >= 8, "only {taken} valid outputs");
    }

    #[test]
    fn long_encoding() {
        for v in [0i64, 1, -1, 63, -64, 64, 300, i64::MAX, i64::MIN] {
            let mut ours = Vec::new();
            put_long(&mut ours, v);
            let theirs = datum_of(
                &apache_avro::Schema::Long,
                apache_avro::types::Value::Long(v),
            );
            assert_eq!(ours, theirs, "{v}");
        }
    }
}

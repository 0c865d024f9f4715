//! The Avro side (feature `avro`, host only): the two table schemas, embedded from
//! `config/*.avsc` (their first versions) or evolved from them ([`TableSchema`], see
//! `evolve.rs`), and rows → `apache_avro` values, checked column by column.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, OnceLock};

use apache_avro::Schema;
use apache_avro::types::Value as AvroValue;
use serde_json::Value;
use thiserror::Error;

use crate::error::{DlqReason, type_name};
use crate::flatten::{FORM_FIELD_TABLE, FORM_TABLE, Flattened, Row};

/// `config/form.avsc`, as embedded.
pub const FORM_SCHEMA_JSON: &str = include_str!("../../../config/form.avsc");
/// `config/form_field.avsc`, as embedded.
pub const FORM_FIELD_SCHEMA_JSON: &str = include_str!("../../../config/form_field.avsc");

/// One of the two output tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// `form`: one row per event.
    Form,
    /// `form_field`: one row per field per event.
    FormField,
}

/// The Avro type of a column (inside its `["null", T]` union if nullable).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    /// `string`
    String,
    /// `boolean`
    Boolean,
    /// `long`
    Long,
    /// `double`
    Double,
    /// `long` with logicalType `timestamp-micros` (UTC)
    TimestampMicros,
}

impl ColumnType {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::String => "a string",
            Self::Boolean => "a boolean",
            Self::Long => "an integer (long)",
            Self::Double => "a number (double)",
            Self::TimestampMicros => "an integer (timestamp-micros)",
        }
    }
}

impl ColumnType {
    /// The Avro type name (`"string"`, …; timestamps are `long` with a logical type).
    pub fn avro_json(self) -> serde_json::Value {
        match self {
            Self::String => "string".into(),
            Self::Boolean => "boolean".into(),
            Self::Long => "long".into(),
            Self::Double => "double".into(),
            Self::TimestampMicros => {
                serde_json::json!({"type": "long", "logicalType": "timestamp-micros"})
            }
        }
    }
}

/// The field attribute that keeps a column's original attribute name, when that name is not
/// a valid Avro name and the column was named after it (see `evolve.rs`).
pub const ORIGINAL_NAME_ATTRIBUTE: &str = "form_etl.original";

/// A column of a table's schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Column name.
    pub name: String,
    /// Avro type.
    pub ty: ColumnType,
    /// `["null", T]` with default null.
    pub nullable: bool,
    /// The attribute name the column stands for, when it is not `name` itself.
    pub original: Option<String>,
}

/// One version of a table's schema: its Avro schema (and JSON text), its columns in order,
/// and where a row's key goes (by column name or by original attribute name).
#[derive(Debug)]
pub struct TableSchema {
    table: Table,
    version: u32,
    json: String,
    schema: Schema,
    columns: Vec<Column>,
    /// Column name (and original attribute name) → position, for the streaming encoder.
    index: HashMap<String, usize, BuildHasherDefault<Fnv>>,
    /// The first of the `form_…` columns a `form_field` row ends with (`usize::MAX`: none).
    tail_from: usize,
}

impl TableSchema {
    /// Version `version` of `table`'s schema, from its Avro JSON text.
    pub fn from_json(table: Table, version: u32, json: &str) -> Result<Self, String> {
        let schema = Schema::parse_str(json).map_err(|e| e.to_string())?;
        let columns = columns_of(&schema)?;
        // A row's key finds a column by the attribute name it stands for: its own name, or
        // the original name it was mapped from (then not by its own name: another attribute
        // may be called that).
        let index = columns
            .iter()
            .enumerate()
            .map(|(i, c)| (c.original.clone().unwrap_or_else(|| c.name.clone()), i))
            .collect();
        let tail_from = match table {
            Table::Form => usize::MAX,
            Table::FormField => columns
                .iter()
                .position(|c| c.name.starts_with("form_"))
                .unwrap_or(usize::MAX),
        };
        Ok(Self {
            table,
            version,
            json: json.to_owned(),
            schema,
            columns,
            index,
            tail_from,
        })
    }

    /// The first version: `config/<table>.avsc` as embedded.
    pub fn initial(table: Table) -> Arc<TableSchema> {
        table.table_schema().clone()
    }

    /// Its table.
    pub fn table(&self) -> Table {
        self.table
    }

    /// Its version (1 for the embedded starting schema).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Its Avro JSON text.
    pub fn json(&self) -> &str {
        &self.json
    }

    /// The parsed schema.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// The columns, in schema order.
    pub fn columns(&self) -> &[Column] {
        &self.columns
    }

    /// The position of the column for key `name` (the attribute name a column stands for).
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    /// The first column of a `form_field` row's `form_…` tail.
    pub(crate) fn tail_from(&self) -> usize {
        self.tail_from
    }

    /// Whether a column is named `name`.
    pub fn has_column_named(&self, name: &str) -> bool {
        self.columns.iter().any(|c| c.name == name)
    }

    /// Whether every column of `self` is in `newer` at the same place with the same type:
    /// `newer` only added columns after them.
    pub fn is_prefix_of(&self, newer: &TableSchema) -> bool {
        self.columns.len() <= newer.columns.len()
            && self.columns.iter().zip(&newer.columns).all(|(a, b)| a == b)
    }
}

/// The schemas rows are encoded with, one per table.
#[derive(Debug, Clone)]
pub struct Schemas {
    tables: [Arc<TableSchema>; 2],
}

impl Schemas {
    /// The embedded starting schemas (version 1).
    pub fn initial() -> Self {
        Self {
            tables: Table::ALL.map(TableSchema::initial),
        }
    }

    /// From one schema per table.
    pub fn new(form: Arc<TableSchema>, form_field: Arc<TableSchema>) -> Self {
        Self {
            tables: [form, form_field],
        }
    }

    /// `table`'s schema.
    pub fn get(&self, table: Table) -> &Arc<TableSchema> {
        &self.tables[table as usize]
    }

    /// Replaces `table`'s schema.
    pub fn set(&mut self, schema: Arc<TableSchema>) {
        let t = schema.table;
        self.tables[t as usize] = schema;
    }

    /// The versions, by table.
    pub fn versions(&self) -> [u32; 2] {
        [self.tables[0].version, self.tables[1].version]
    }
}

/// FNV-1a: column names are short and trusted (our schemas), SipHash is not needed.
#[derive(Default)]
struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
}

impl Table {
    /// Both tables.
    pub const ALL: [Table; 2] = [Table::Form, Table::FormField];

    /// `form` / `form_field` (also the key of the rows in the SmartModule output).
    pub fn name(self) -> &'static str {
        match self {
            Self::Form => FORM_TABLE,
            Self::FormField => FORM_FIELD_TABLE,
        }
    }

    /// The table named `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }

    /// The schema's JSON text (`config/<table>.avsc`).
    pub fn schema_json(self) -> &'static str {
        match self {
            Self::Form => FORM_SCHEMA_JSON,
            Self::FormField => FORM_FIELD_SCHEMA_JSON,
        }
    }

    /// The parsed schema of the first version (parsed once).
    pub fn schema(self) -> &'static Schema {
        &self.table_schema().schema
    }

    /// The columns of the first version, in schema order.
    pub fn columns(self) -> &'static [Column] {
        &self.table_schema().columns
    }

    /// The position of column `name` in [`Table::columns`].
    pub fn column_index(self, name: &str) -> Option<usize> {
        self.table_schema().column_index(name)
    }

    /// The timestamp column that dates a row (its object key's `event_date`):
    /// `event_happened_at` (form) or `form_event_happened_at` (form_field).
    pub fn date_column(self) -> &'static str {
        match self {
            Self::Form => "event_happened_at",
            Self::FormField => "form_event_happened_at",
        }
    }

    fn table_schema(self) -> &'static Arc<TableSchema> {
        static FORM: OnceLock<Arc<TableSchema>> = OnceLock::new();
        static FORM_FIELD: OnceLock<Arc<TableSchema>> = OnceLock::new();
        let cell = match self {
            Self::Form => &FORM,
            Self::FormField => &FORM_FIELD,
        };
        cell.get_or_init(|| {
            // The embedded schemas are checked by the tests: failing here is a build defect.
            Arc::new(
                TableSchema::from_json(self, 1, self.schema_json())
                    .unwrap_or_else(|e| panic!("embedded schema of `{}`: {e}", self.name())),
            )
        })
    }
}

fn columns_of(schema: &Schema) -> Result<Vec<Column>, String> {
    let Schema::Record(record) = schema else {
        return Err("not a record".to_owned());
    };
    record
        .fields
        .iter()
        .map(|f| {
            let (inner, nullable) = match &f.schema {
                Schema::Union(u) => match u.variants() {
                    [Schema::Null, t] => (t, true),
                    _ => return Err(format!("column `{}`: only [\"null\", T] unions", f.name)),
                },
                t => (t, false),
            };
            let ty = match inner {
                Schema::String => ColumnType::String,
                Schema::Boolean => ColumnType::Boolean,
                Schema::Long => ColumnType::Long,
                Schema::Double => ColumnType::Double,
                Schema::TimestampMicros => ColumnType::TimestampMicros,
                other => return Err(format!("column `{}`: unsupported type {other:?}", f.name)),
            };
            let original = f
                .custom_attributes
                .get(ORIGINAL_NAME_ATTRIBUTE)
                .and_then(|v| v.as_str())
                .map(str::to_owned);
            Ok(Column {
                name: f.name.clone(),
                ty,
                nullable,
                original,
            })
        })
        .collect()
}

/// What is wrong with a row's column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The row has a column the schema lacks.
    NotInSchema,
    /// A required (non-nullable) column is absent or null.
    MissingRequired,
    /// The value's type does not fit the column.
    WrongType {
        /// The column's type.
        expected: &'static str,
        /// The value's JSON type.
        found: &'static str,
    },
}

/// A row that does not fit its table's schema (DLQ reason `schema_mismatch`).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("table `{table}` column `{column}`: {}", problem_text(.problem))]
pub struct SchemaMismatch {
    /// Table name.
    pub table: &'static str,
    /// Column name.
    pub column: String,
    /// What is wrong.
    pub problem: Problem,
}

fn problem_text(p: &Problem) -> String {
    match p {
        Problem::NotInSchema => "not in the schema".to_owned(),
        Problem::MissingRequired => "required column missing or null".to_owned(),
        Problem::WrongType { expected, found } => format!("expected {expected}, found {found}"),
    }
}

impl SchemaMismatch {
    /// Always [`DlqReason::SchemaMismatch`].
    pub fn reason(&self) -> DlqReason {
        DlqReason::SchemaMismatch
    }
}

/// Converts a row into an Avro record value of `table`'s schema (fields in schema order,
/// nullable columns as union branch 0 = null / 1 = value, timestamps as
/// `TimestampMicros`). Consumes the row (strings are moved, not copied). An absent column
/// is null.
pub fn row_to_value(table: Table, row: Row) -> Result<AvroValue, SchemaMismatch> {
    row_to_value_with(table.table_schema(), row)
}

/// [`row_to_value`] with a given schema version (a row's key finds its column as in
/// [`TableSchema::column_index`]).
pub fn row_to_value_with(ts: &TableSchema, mut row: Row) -> Result<AvroValue, SchemaMismatch> {
    let table = ts.table();
    let columns = ts.columns();
    let mut fields = Vec::with_capacity(columns.len());
    for col in columns {
        // `shift_remove` keeps the order of what is left: the first extra column is reported.
        let key = col.original.as_ref().unwrap_or(&col.name);
        let value = row.shift_remove(key).unwrap_or(Value::Null);
        let mismatch = |problem| SchemaMismatch {
            table: table.name(),
            column: col.name.clone(),
            problem,
        };
        let avro = if value.is_null() {
            if !col.nullable {
                return Err(mismatch(Problem::MissingRequired));
            }
            AvroValue::Union(0, Box::new(AvroValue::Null))
        } else {
            let found = type_name(&value);
            let v = match (col.ty, value) {
                (ColumnType::String, Value::String(s)) => Some(AvroValue::String(s)),
                (ColumnType::Boolean, Value::Bool(b)) => Some(AvroValue::Boolean(b)),
                (ColumnType::Long, Value::Number(n)) => n.as_i64().map(AvroValue::Long),
                (ColumnType::TimestampMicros, Value::Number(n)) => {
                    n.as_i64().map(AvroValue::TimestampMicros)
                }
                (ColumnType::Double, Value::Number(n)) => n.as_f64().map(AvroValue::Double),
                _ => None,
            };
            let Some(v) = v else {
                return Err(mismatch(Problem::WrongType {
                    expected: col.ty.name(),
                    found,
                }));
            };
            if col.nullable {
                AvroValue::Union(1, Box::new(v))
            } else {
                v
            }
        };
        fields.push((col.name.clone(), avro));
    }
    if let Some((extra, _)) = row.into_iter().next() {
        return Err(SchemaMismatch {
            table: table.name(),
            column: extra,
            problem: Problem::NotInSchema,
        });
    }
    Ok(AvroValue::Record(fields))
}

/// Converts all rows of one flattened record: `(form values, form_field values)`. The first
/// mismatching row fails the whole record (it goes to the DLQ as one).
pub fn flattened_to_values(
    flattened: Flattened,
) -> Result<(Vec<AvroValue>, Vec<AvroValue>), SchemaMismatch> {
    let form = flattened
        .form
        .into_iter()
        .map(|r| row_to_value(Table::Form, r))
        .collect::<Result<Vec<_>, _>>()?;
    let form_field = flattened
        .form_field
        .into_iter()
        .map(|r| row_to_value(Table::FormField, r))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((form, form_field))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(json: &str) -> Row {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn schemas_parse_and_resolve() {
        for t in Table::ALL {
            assert!(!t.columns().is_empty());
            assert_eq!(Table::from_name(t.name()), Some(t));
        }
    }

    #[test]
    fn converts_and_validates_a_form_row() {
        let ok = row(
            r#"{"id":"a","title":"t","type":"quiz","settings_show_time_to_complete":true,
            "retrieved_timestamp":5,"event_happened_at":6,"event_type":"created"}"#,
        );
        let v = row_to_value(Table::Form, ok).unwrap();
        assert!(v.validate(Table::Form.schema()), "{v:?}");
        let AvroValue::Record(fields) = v else {
            unreachable!()
        };
        assert_eq!(fields[0], ("id".into(), AvroValue::String("a".into())));
        assert_eq!(
            fields[1],
            (
                "type".into(),
                AvroValue::Union(1, Box::new(AvroValue::String("quiz".into())))
            )
        );
        assert_eq!(
            fields[3],
            (
                "settings_language".into(),
                AvroValue::Union(0, Box::new(AvroValue::Null))
            )
        );
        assert_eq!(
            fields[10],
            ("retrieved_timestamp".into(), AvroValue::TimestampMicros(5))
        );
    }

    #[test]
    fn mismatches_name_table_and_column() {
        let base = r#""id":"a","title":"t","retrieved_timestamp":5,"event_happened_at":6,"event_type":"x""#;
        let cases = [
            (
                format!("{{{base},\"colour\":\"red\"}}"),
                "colour",
                Problem::NotInSchema,
            ),
            (
                r#"{"id":"a","retrieved_timestamp":5,"event_happened_at":6,"event_type":"x"}"#
                    .to_owned(),
                "title",
                Problem::MissingRequired,
            ),
            (
                format!("{{{base},\"settings_show_time_to_complete\":\"yes\"}}"),
                "settings_show_time_to_complete",
                Problem::WrongType {
                    expected: "a boolean",
                    found: "a string",
                },
            ),
        ];
        for (json, column, problem) in cases {
            let e = row_to_value(Table::Form, row(&json)).unwrap_err();
            assert_eq!(e.table, "form");
            assert_eq!(e.column, column);
            assert_eq!(e.problem, problem);
            assert!(e.to_string().contains(column), "{e}");
        }
        let e = row_to_value(
            Table::FormField,
            row(r#"{"id":"f","type":"number","validations_max_value":1.5}"#),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "table `form_field` column `validations_max_value`: expected an integer (long), found a number"
        );
    }
}

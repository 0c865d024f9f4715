//! Schema evolution (feature `avro`): what a row that does not fit its table's current schema
//! needs, and how the schema grows to take it.
//!
//! Rules (documented in `docs/internals.md`, "Schema evolution"):
//! - An attribute the schema lacks becomes a new nullable column (`["null", T]`, default null)
//!   at the end of the record, `T` inferred from the value: boolean, long (an integer that fits
//!   i64), double (any other number), string. A null value tells nothing: no column for it.
//!   Arrays and nested objects are already text and flattened columns (the flatten's rules).
//! - Column names are Avro names, `[A-Za-z_][A-Za-z0-9_]*`. Another attribute name is mapped:
//!   every other character becomes `_`, a leading digit gets a `_` in front, an empty name is
//!   `_`; if that name is taken, `__2`, `__3`, … is appended (the first free one). The original
//!   name is kept in the field (`doc`, and the `form_etl.original` attribute), and a row's key
//!   finds its column by either name. Names differing only in case are different columns.
//! - A value whose type does not fit its column (a string where a long was) is a *type
//!   conflict*: `rescue` (the default) writes the row with that column null and the value, under
//!   its attribute name, in a JSON object in the `_rescued_data` string column (added when first
//!   needed); `widen` turns a `long` column that meets a non-integer number into a `double`
//!   (Avro readers promote long to double, so older files still read) and rescues any other
//!   conflict; `dlq` sends the record to the dead-letter queue (`schema_mismatch`).
//! - `max-columns` bounds each table: attributes past it go to `_rescued_data`.
//! - `strict` mode: no evolution, every mismatch is a dead letter (the fixed schema).

use std::collections::{BTreeMap, HashSet};

use serde_json::{Map, Value};

use crate::avro::{
    ColumnType, ORIGINAL_NAME_ATTRIBUTE, Problem, SchemaMismatch, Schemas, Table, TableSchema,
};

/// The column that holds rescued values (Databricks Auto Loader's name).
pub const RESCUED_COLUMN: &str = "_rescued_data";

/// Default `schema.max-columns` per table.
pub const DEFAULT_MAX_COLUMNS: usize = 1000;

/// `schema.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The schema follows the data.
    Evolve,
    /// The starting schema only: a row that does not fit is a dead letter.
    Strict,
}

/// `schema.on-type-conflict`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnConflict {
    Rescue,
    Widen,
    Dlq,
}

/// How rows that do not fit are handled.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub mode: Mode,
    pub on_conflict: OnConflict,
    pub max_columns: usize,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            mode: Mode::Evolve,
            on_conflict: OnConflict::Rescue,
            max_columns: DEFAULT_MAX_COLUMNS,
        }
    }
}

/// One change of a table's schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A new nullable column at the end.
    Add {
        column: String,
        /// The attribute name it stands for, when not `column`.
        original: Option<String>,
        ty: ColumnType,
    },
    /// A `long` column becomes a `double`.
    Widen { column: String },
}

/// What one output value needs.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Needs {
    /// Schema changes, per table (in order).
    pub changes: [Vec<Change>; 2],
    /// Some value must be rescued (written to `_rescued_data`).
    pub rescue: bool,
}

impl Needs {
    pub fn is_empty(&self) -> bool {
        !self.rescue && self.changes.iter().all(Vec::is_empty)
    }
}

/// Why an output value cannot be taken (a dead letter).
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// Not `{"form":[…],"form_field":[…]}` JSON.
    #[error("the transform's output is not {{form, form_field}} JSON: {0}")]
    NotRows(String),
    /// The policy refuses it (strict mode, `on-type-conflict: dlq`, a required column missing).
    #[error(transparent)]
    Mismatch(#[from] SchemaMismatch),
}

/// The output value's rows, by table.
fn rows_of(value: &[u8]) -> Result<[Vec<Map<String, Value>>; 2], Refusal> {
    let v: Value = serde_json::from_slice(value).map_err(|e| Refusal::NotRows(e.to_string()))?;
    let Value::Object(mut top) = v else {
        return Err(Refusal::NotRows("not an object".into()));
    };
    let mut out: [Vec<Map<String, Value>>; 2] = [Vec::new(), Vec::new()];
    for t in Table::ALL {
        let Some(Value::Array(rows)) = top.remove(t.name()) else {
            return Err(Refusal::NotRows(format!("no `{}` array", t.name())));
        };
        for r in rows {
            let Value::Object(m) = r else {
                return Err(Refusal::NotRows(format!(
                    "a `{}` row is not an object",
                    t.name()
                )));
            };
            out[t as usize].push(m);
        }
    }
    Ok(out)
}

/// The column type a JSON value would get.
fn infer(v: &Value) -> Option<ColumnType> {
    match v {
        Value::Bool(_) => Some(ColumnType::Boolean),
        Value::Number(n) if n.as_i64().is_some() => Some(ColumnType::Long),
        Value::Number(_) => Some(ColumnType::Double),
        Value::String(_) => Some(ColumnType::String),
        // Arrays are text and objects flattened by the module: a container here does not fit.
        Value::Array(_) | Value::Object(_) => Some(ColumnType::String),
        Value::Null => None,
    }
}

/// Whether `v` fits a column of type `ty` (the encoder's rules).
fn fits(ty: ColumnType, v: &Value) -> bool {
    match (ty, v) {
        (_, Value::Null) => true,
        (ColumnType::String, Value::String(_)) => true,
        (ColumnType::Boolean, Value::Bool(_)) => true,
        (ColumnType::Long | ColumnType::TimestampMicros, Value::Number(n)) => n.as_i64().is_some(),
        (ColumnType::Double, Value::Number(_)) => true,
        _ => false,
    }
}

/// The Avro column name for attribute `original` (see the module docs), not in `taken`.
pub fn column_name(original: &str, taken: &dyn Fn(&str) -> bool) -> String {
    let mut base: String = original
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if base.is_empty() || base.starts_with(|c: char| c.is_ascii_digit()) {
        base.insert(0, '_');
    }
    if !taken(&base) {
        return base;
    }
    (2..)
        .map(|n| format!("{base}__{n}"))
        .find(|c| !taken(c))
        .expect("a free name")
}

/// What `value` (one output value: `{"form":[…],"form_field":[…]}`) needs under `schemas` and
/// `policy`, or why it is refused.
pub fn needs(value: &[u8], schemas: &Schemas, policy: &Policy) -> Result<Needs, Refusal> {
    let rows = rows_of(value)?;
    let mut needs = Needs::default();
    for t in Table::ALL {
        let ts = schemas.get(t);
        let changes = &mut needs.changes[t as usize];
        // Attributes new to the schema: name → inferred type.
        let mut added: BTreeMap<String, ColumnType> = BTreeMap::new();
        let mut widened: HashSet<String> = HashSet::new();
        for row in &rows[t as usize] {
            for col in ts.columns().iter().filter(|c| !c.nullable) {
                let present = row
                    .get(&col.name)
                    .or_else(|| col.original.as_ref().and_then(|o| row.get(o)));
                if present.is_none_or(Value::is_null) {
                    return Err(SchemaMismatch {
                        table: t.name(),
                        column: col.name.clone(),
                        problem: Problem::MissingRequired,
                    }
                    .into());
                }
            }
            for (key, v) in row {
                if let Some(i) = ts.column_index(key) {
                    let col = &ts.columns()[i];
                    if fits(col.ty, v) || widened.contains(&col.name) && fits(ColumnType::Double, v)
                    {
                        continue;
                    }
                    let found = crate::error::type_name(v);
                    let mismatch = || SchemaMismatch {
                        table: t.name(),
                        column: col.name.clone(),
                        problem: Problem::WrongType {
                            expected: col.ty.name(),
                            found,
                        },
                    };
                    if policy.mode == Mode::Strict || policy.on_conflict == OnConflict::Dlq {
                        return Err(mismatch().into());
                    }
                    let widen = policy.on_conflict == OnConflict::Widen
                        && col.ty == ColumnType::Long
                        && col.nullable
                        && matches!(v, Value::Number(_));
                    if widen {
                        if widened.insert(col.name.clone()) {
                            changes.push(Change::Widen {
                                column: col.name.clone(),
                            });
                        }
                    } else {
                        needs.rescue = true;
                    }
                    continue;
                }
                if policy.mode == Mode::Strict {
                    return Err(SchemaMismatch {
                        table: t.name(),
                        column: key.clone(),
                        problem: Problem::NotInSchema,
                    }
                    .into());
                }
                let Some(ty) = infer(v) else { continue };
                if let Some(had) = added.get_mut(key) {
                    let compatible =
                        *had == ty || (*had == ColumnType::Double && ty == ColumnType::Long);
                    if compatible {
                        continue;
                    }
                    if *had == ColumnType::Long
                        && ty == ColumnType::Double
                        && policy.on_conflict == OnConflict::Widen
                    {
                        *had = ColumnType::Double;
                    } else if policy.on_conflict == OnConflict::Dlq {
                        return Err(SchemaMismatch {
                            table: t.name(),
                            column: key.clone(),
                            problem: Problem::WrongType {
                                expected: had.name(),
                                found: crate::error::type_name(v),
                            },
                        }
                        .into());
                    } else {
                        needs.rescue = true;
                    }
                    continue;
                }
                added.insert(key.clone(), ty);
            }
        }
        // Names are given in a fixed order, whatever the rows' order: attributes whose name is
        // already a valid column name first (so they keep it), then the others, each group by
        // name.
        let valid = |k: &str| column_name(k, &|_| false) == k;
        let mut order: Vec<(&String, &ColumnType)> = added.iter().collect();
        order.sort_by_key(|(k, _)| (!valid(k), (*k).clone()));
        let mut names: Vec<String> = Vec::new();
        for (original, ty) in order {
            if ts.columns().len() + names.len() >= policy.max_columns {
                needs.rescue = true;
                continue;
            }
            let taken = |c: &str| ts.has_column_named(c) || names.iter().any(|n| n == c);
            let column = column_name(original, &taken);
            names.push(column.clone());
            changes.push(Change::Add {
                original: (*original != column).then(|| original.clone()),
                column,
                ty: *ty,
            });
        }
    }
    if needs.rescue {
        for t in Table::ALL {
            let has = schemas.get(t).has_column_named(RESCUED_COLUMN)
                || needs.changes[t as usize]
                    .iter()
                    .any(|c| matches!(c, Change::Add { column, .. } if column == RESCUED_COLUMN));
            if !has
                && table_needs_rescue(
                    &rows[t as usize],
                    schemas.get(t),
                    &needs.changes[t as usize],
                    policy,
                )
            {
                needs.changes[t as usize].push(Change::Add {
                    column: RESCUED_COLUMN.to_owned(),
                    original: None,
                    ty: ColumnType::String,
                });
            }
        }
    }
    Ok(needs)
}

/// Whether some row of `rows` has a value that the schema with `changes` cannot hold.
fn table_needs_rescue(
    rows: &[Map<String, Value>],
    ts: &TableSchema,
    changes: &[Change],
    policy: &Policy,
) -> bool {
    rows.iter().any(|row| {
        row.iter().any(|(k, v)| {
            let added = changes.iter().find_map(|c| match c {
                Change::Add {
                    column,
                    original,
                    ty,
                } if original.as_deref().unwrap_or(column) == k => Some(*ty),
                _ => None,
            });
            let widened = |name: &str| {
                changes
                    .iter()
                    .any(|c| matches!(c, Change::Widen { column } if column == name))
            };
            match (ts.column_index(k), added) {
                (Some(i), _) => {
                    let col = &ts.columns()[i];
                    let ty = if widened(&col.name) {
                        ColumnType::Double
                    } else {
                        col.ty
                    };
                    !fits(ty, v)
                }
                (None, Some(ty)) => !fits(ty, v),
                (None, None) => !v.is_null() && policy.mode == Mode::Evolve,
            }
        })
    })
}

/// The next version of `ts` with `changes` (columns appended in order, or widened in place).
pub fn evolve(ts: &TableSchema, changes: &[Change]) -> Result<TableSchema, String> {
    let mut v: Value = serde_json::from_str(ts.json()).map_err(|e| e.to_string())?;
    let fields = v
        .get_mut("fields")
        .and_then(Value::as_array_mut)
        .ok_or("the schema has no fields")?;
    for c in changes {
        match c {
            Change::Add {
                column,
                original,
                ty,
            } => {
                let mut f = serde_json::json!({
                    "name": column,
                    "type": ["null", ty.avro_json()],
                    "default": null,
                });
                if let Some(o) = original {
                    f["doc"] = format!("form-etl: the attribute `{o}`").into();
                    f[ORIGINAL_NAME_ATTRIBUTE] = o.clone().into();
                } else if column == RESCUED_COLUMN {
                    f["doc"] = "form-etl: values that did not fit their column, as a JSON object by attribute name".into();
                }
                fields.push(f);
            }
            Change::Widen { column } => {
                let f = fields
                    .iter_mut()
                    .find(|f| f["name"] == column.as_str())
                    .ok_or_else(|| format!("no column `{column}` to widen"))?;
                f["type"] = serde_json::json!(["null", "double"]);
            }
        }
    }
    let json = serde_json::to_string(&v).map_err(|e| e.to_string())?;
    TableSchema::from_json(ts.table(), ts.version() + 1, &json)
}

/// `value` rewritten to fit `schemas`: every value its schema cannot hold moved into
/// `_rescued_data` (a JSON object by attribute name, merged into what the row may already
/// hold there) where the table has that column, and attributes the schema lacks whose value
/// is null dropped (null is what an absent column reads as). `None` when nothing changes. Also
/// answers the number of rows rescued.
pub fn rescue(value: &[u8], schemas: &Schemas) -> Result<Option<(Vec<u8>, usize)>, Refusal> {
    let mut rows = rows_of(value)?;
    let mut rescued_rows = 0;
    let mut changed = false;
    for t in Table::ALL {
        let ts = schemas.get(t);
        let ri = ts.column_index(RESCUED_COLUMN);
        for row in &mut rows[t as usize] {
            let mut rescued = Map::new();
            let keys: Vec<String> = row.keys().cloned().collect();
            for k in keys {
                let keep = match ts.column_index(&k) {
                    Some(i) if Some(i) == ri => true,
                    Some(i) => fits(ts.columns()[i].ty, &row[&k]),
                    None if row[&k].is_null() => {
                        row.shift_remove(&k);
                        changed = true;
                        continue;
                    }
                    None => false,
                };
                if !keep && ri.is_some() {
                    let v = row.shift_remove(&k).expect("listed");
                    rescued.insert(k, v);
                }
            }
            if rescued.is_empty() {
                continue;
            }
            rescued_rows += 1;
            if let Some(Value::String(prev)) = row.get(RESCUED_COLUMN)
                && let Ok(Value::Object(p)) = serde_json::from_str::<Value>(prev)
            {
                for (k, v) in p {
                    rescued.entry(k).or_insert(v);
                }
            }
            row.insert(
                RESCUED_COLUMN.to_owned(),
                Value::String(Value::Object(rescued).to_string()),
            );
        }
    }
    if rescued_rows == 0 && !changed {
        return Ok(None);
    }
    let [form, form_field] = rows;
    let out = serde_json::json!({
        "form": form.into_iter().map(Value::Object).collect::<Vec<_>>(),
        "form_field": form_field.into_iter().map(Value::Object).collect::<Vec<_>>(),
    });
    Ok(Some((out.to_string().into_bytes(), rescued_rows)))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::avro_encode::{EncodeError, EncodedRows, encode_output_with};

    fn form_row(extra: &str) -> String {
        format!(
            r#"{{"id":"a","type":"quiz","title":"t","retrieved_timestamp":5,"event_happened_at":6,"event_type":"created"{extra}}}"#
        )
    }

    fn value(form_extra: &str, field_extra: &str) -> Vec<u8> {
        format!(
            r#"{{"form":[{}],"form_field":[{{"id":"f","type":"short_text","form_id":"a","form_title":"t","form_retrieved_timestamp":5,"form_event_happened_at":6,"form_event_type":"created"{field_extra}}}]}}"#,
            form_row(form_extra)
        )
        .into_bytes()
    }

    /// Evolves until the value fits (as the sink does), answers the final schemas.
    fn evolve_all(v: &[u8], mut schemas: Schemas, policy: &Policy) -> (Schemas, Option<Vec<u8>>) {
        let n = needs(v, &schemas, policy).unwrap();
        for t in Table::ALL {
            let c = &n.changes[t as usize];
            if !c.is_empty() {
                let next = evolve(schemas.get(t), c).unwrap();
                schemas.set(Arc::new(next));
            }
        }
        let rewritten = rescue(v, &schemas).unwrap().map(|(b, _)| b);
        (schemas, rewritten)
    }

    #[test]
    fn new_attributes_become_nullable_columns_with_inferred_types() {
        let v = value(
            r#","settings_meta_image_href":"https://x","variables_score":3,"variables_ratio":0.5,"settings_capabilities_e2e":true,"nothing":null"#,
            r#","ref":"r1""#,
        );
        let schemas = Schemas::initial();
        let mut out = EncodedRows::default();
        assert!(matches!(
            encode_output_with(&v, &schemas, &mut out),
            Err(EncodeError::Mismatch(_))
        ));
        let n = needs(&v, &schemas, &Policy::default()).unwrap();
        assert!(!n.rescue);
        let names: Vec<(String, ColumnType)> = n.changes[0]
            .iter()
            .map(|c| match c {
                Change::Add { column, ty, .. } => (column.clone(), *ty),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            names,
            vec![
                ("settings_capabilities_e2e".into(), ColumnType::Boolean),
                ("settings_meta_image_href".into(), ColumnType::String),
                ("variables_ratio".into(), ColumnType::Double),
                ("variables_score".into(), ColumnType::Long),
            ]
        );
        let (schemas, rewritten) = evolve_all(&v, schemas, &Policy::default());
        assert_eq!(schemas.versions(), [2, 2]);
        // The null attribute makes no column: it is dropped from the row.
        let rewritten = rewritten.expect("the null attribute dropped");
        assert!(!String::from_utf8_lossy(&rewritten).contains("nothing"));
        encode_output_with(&rewritten, &schemas, &mut out).unwrap();
        // Older columns keep their places: the new schema only appends.
        let initial = Schemas::initial();
        for t in Table::ALL {
            assert!(initial.get(t).is_prefix_of(schemas.get(t)));
        }
    }

    #[test]
    fn odd_names_are_mapped_and_found_by_either_name() {
        let v = value(
            r#","my-key":"a","my key":"b","1st":"c","Title":"d","my_key":"e""#,
            "",
        );
        let (schemas, _) = evolve_all(&v, Schemas::initial(), &Policy::default());
        let form = schemas.get(Table::Form);
        let col = |k: &str| form.columns()[form.column_index(k).unwrap()].name.clone();
        // A valid name keeps itself; the others get it with a suffix, by attribute name.
        assert_eq!(col("my_key"), "my_key");
        assert_eq!(col("my key"), "my_key__2");
        assert_eq!(col("my-key"), "my_key__3");
        assert_eq!(col("1st"), "_1st");
        assert_eq!(col("Title"), "Title", "case makes another column");
        let c = &form.columns()[form.column_index("my-key").unwrap()];
        assert_eq!(c.original.as_deref(), Some("my-key"));
        // The schema JSON keeps the original name (and Avro accepts every column name).
        assert!(
            form.json().contains(r#""form_etl.original":"my-key""#),
            "{}",
            form.json()
        );
        let mut out = EncodedRows::default();
        encode_output_with(&v, &schemas, &mut out).unwrap();
    }

    #[test]
    fn type_conflicts_are_rescued_widened_or_refused() {
        // `settings_show_time_to_complete` is a boolean column; `validations_max_length` a long.
        let v = value(
            r#","settings_show_time_to_complete":"yes""#,
            r#","validations_max_length":2.5"#,
        );
        let (schemas, rewritten) = evolve_all(&v, Schemas::initial(), &Policy::default());
        let rewritten = rewritten.expect("rescued");
        let text = String::from_utf8(rewritten.clone()).unwrap();
        assert!(
            text.contains(r#""_rescued_data":"{\"settings_show_time_to_complete\":\"yes\"}""#),
            "{text}"
        );
        assert!(
            text.contains(r#""_rescued_data":"{\"validations_max_length\":2.5}""#),
            "{text}"
        );
        let mut out = EncodedRows::default();
        encode_output_with(&rewritten, &schemas, &mut out).unwrap();

        let widen = Policy {
            on_conflict: OnConflict::Widen,
            ..Policy::default()
        };
        let n = needs(&v, &Schemas::initial(), &widen).unwrap();
        assert_eq!(
            n.changes[1],
            vec![Change::Widen {
                column: "validations_max_length".into()
            }]
        );
        // The boolean conflict is still rescued: `form` gets the column for it.
        assert!(n.rescue);
        assert_eq!(
            n.changes[0],
            vec![Change::Add {
                column: RESCUED_COLUMN.into(),
                original: None,
                ty: ColumnType::String
            }]
        );
        let (schemas, _) = evolve_all(&v, Schemas::initial(), &widen);
        let ff = schemas.get(Table::FormField);
        assert_eq!(
            ff.columns()[ff.column_index("validations_max_length").unwrap()].ty,
            ColumnType::Double
        );

        let dlq = Policy {
            on_conflict: OnConflict::Dlq,
            ..Policy::default()
        };
        let e = needs(&v, &Schemas::initial(), &dlq)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "table `form` column `settings_show_time_to_complete`: expected a boolean, found a string"
        );
        let strict = Policy {
            mode: Mode::Strict,
            ..Policy::default()
        };
        let e = needs(&value(r#","new_one":1"#, ""), &Schemas::initial(), &strict).unwrap_err();
        assert_eq!(
            e.to_string(),
            "table `form` column `new_one`: not in the schema"
        );
    }

    #[test]
    fn columns_past_the_limit_go_to_rescued_data() {
        let policy = Policy {
            max_columns: Table::Form.columns().len() + 1,
            ..Policy::default()
        };
        let v = value(r#","a1":1,"a2":2"#, "");
        let (schemas, rewritten) = evolve_all(&v, Schemas::initial(), &policy);
        let form = schemas.get(Table::Form);
        assert!(form.column_index("a1").is_some());
        assert!(form.column_index("a2").is_none());
        assert!(form.column_index(RESCUED_COLUMN).is_some());
        let text = String::from_utf8(rewritten.unwrap()).unwrap();
        assert!(text.contains(r#""_rescued_data":"{\"a2\":2}""#), "{text}");
    }

    #[test]
    fn a_required_column_missing_is_refused() {
        let v = br#"{"form":[{"id":"a","retrieved_timestamp":5,"event_happened_at":6,"event_type":"x"}],"form_field":[]}"#;
        let e = needs(v, &Schemas::initial(), &Policy::default()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "table `form` column `title`: required column missing or null"
        );
    }
}

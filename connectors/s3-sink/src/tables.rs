//! The two tables, their Avro schemas, and row → Avro value conversion.

use apache_avro::Schema;
use apache_avro::types::Value;
use form_model::Row;

/// An output table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Table {
    Form = 0,
    FormField = 1,
}

impl Table {
    pub(crate) const ALL: [Table; 2] = [Table::Form, Table::FormField];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Table::Form => form_model::FORM_TABLE,
            Table::FormField => form_model::FORM_FIELD_TABLE,
        }
    }
}

/// Schemas of both tables (leaked once: every Avro writer borrows them for the process's life).
#[derive(Debug, Clone, Copy)]
pub(crate) struct TableCodec {
    form: &'static Schema,
    form_field: &'static Schema,
}

/// A row that does not fit its table's schema.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Mismatch(String);

impl TableCodec {
    pub(crate) fn load_default() -> anyhow::Result<Self> {
        let (form, form_field) = local::schemas()?;
        Ok(Self { form: Box::leak(Box::new(form)), form_field: Box::leak(Box::new(form_field)) })
    }

    pub(crate) fn schema(&self, table: Table) -> &'static Schema {
        match table {
            Table::Form => self.form,
            Table::FormField => self.form_field,
        }
    }

    /// Converts and checks a row: a column the schema lacks, a missing required column or a
    /// value of the wrong type is a [`Mismatch`] naming the column.
    pub(crate) fn to_avro(&self, table: Table, row: &Row) -> Result<Value, Mismatch> {
        local::to_avro(self.schema(table), row).map_err(Mismatch)
    }
}

/// Conversion following the column catalogue of docs/internals.md.
mod local {
    use super::*;
    use apache_avro::schema::{RecordSchema, UnionSchema};
    use serde_json::Value as J;

    const FORM: &[(&str, &str, bool)] = &[
        ("id", "string", false),
        ("type", "string", true),
        ("title", "string", false),
        ("settings_language", "string", true),
        ("settings_progress_bar", "string", true),
        ("settings_show_time_to_complete", "boolean", true),
        ("settings_show_number_of_submissions", "boolean", true),
        ("settings_redirect_after_submit_url", "string", true),
        ("settings_meta_allow_indexing", "boolean", true),
        ("settings_meta_description", "string", true),
        ("retrieved_timestamp", "ts", false),
        ("event_happened_at", "ts", false),
        ("event_type", "string", false),
    ];
    const FIELD: &[(&str, &str, bool)] = &[
        ("id", "string", false),
        ("title", "string", true),
        ("reference", "string", true),
        ("type", "string", false),
        ("validations_required", "boolean", true),
        ("validations_max_length", "long", true),
        ("validations_min_value", "long", true),
        ("validations_max_value", "long", true),
        ("attachment_type", "string", true),
        ("attachment_href", "string", true),
        ("properties_description", "string", true),
        ("properties_default_country_code", "string", true),
        ("properties_choices", "string", true),
        ("properties_allow_multiple_selection", "boolean", true),
        ("properties_randomize", "boolean", true),
        ("properties_allow_other_choice", "boolean", true),
        ("properties_steps", "long", true),
        ("properties_shape", "string", true),
        ("properties_start_at_one", "boolean", true),
        ("properties_labels_left", "string", true),
        ("properties_labels_center", "string", true),
        ("properties_labels_right", "string", true),
        ("properties_button_text", "string", true),
        ("properties_hide_marks", "boolean", true),
    ];

    fn field_json(name: &str, ty: &str, nullable: bool) -> J {
        let t = match ty {
            "ts" => serde_json::json!({"type": "long", "logicalType": "timestamp-micros"}),
            t => J::String(t.into()),
        };
        if nullable {
            serde_json::json!({"name": name, "type": ["null", t], "default": null})
        } else {
            serde_json::json!({"name": name, "type": t})
        }
    }

    pub(super) fn schemas() -> anyhow::Result<(Schema, Schema)> {
        let form: Vec<J> = FORM.iter().map(|(n, t, o)| field_json(n, t, *o)).collect();
        let mut field: Vec<J> = FIELD.iter().map(|(n, t, o)| field_json(n, t, *o)).collect();
        field.extend(FORM.iter().map(|(n, t, o)| field_json(&format!("form_{n}"), t, *o)));
        let f = serde_json::json!({"type": "record", "name": "form", "namespace": "form_etl", "fields": form});
        let ff = serde_json::json!({"type": "record", "name": "form_field", "namespace": "form_etl", "fields": field});
        Ok((Schema::parse(&f)?, Schema::parse(&ff)?))
    }

    fn scalar(schema: &Schema, v: &J, col: &str) -> Result<Value, String> {
        let wrong = |want: &str| format!("column `{col}`: expected {want}, got {v}");
        Ok(match schema {
            Schema::String => Value::String(v.as_str().ok_or_else(|| wrong("a string"))?.to_owned()),
            Schema::Boolean => Value::Boolean(v.as_bool().ok_or_else(|| wrong("a boolean"))?),
            Schema::Long => Value::Long(v.as_i64().ok_or_else(|| wrong("an integer"))?),
            Schema::TimestampMicros => Value::TimestampMicros(v.as_i64().ok_or_else(|| wrong("microseconds"))?),
            other => return Err(format!("column `{col}`: unsupported schema {other:?}")),
        })
    }

    fn column(schema: &Schema, v: Option<&J>, col: &str) -> Result<Value, String> {
        match schema {
            Schema::Union(u) => union(u, v, col),
            s => match v {
                None | Some(J::Null) => Err(format!("column `{col}` is required but missing or null")),
                Some(v) => scalar(s, v, col),
            },
        }
    }

    fn union(u: &UnionSchema, v: Option<&J>, col: &str) -> Result<Value, String> {
        match v {
            None | Some(J::Null) => Ok(Value::Union(0, Box::new(Value::Null))),
            Some(v) => {
                let inner = &u.variants()[1];
                Ok(Value::Union(1, Box::new(scalar(inner, v, col)?)))
            }
        }
    }

    pub(super) fn to_avro(schema: &Schema, row: &Row) -> Result<Value, String> {
        let Schema::Record(RecordSchema { fields, lookup, .. }) = schema else {
            return Err("not a record schema".into());
        };
        if let Some(extra) = row.keys().find(|k| !lookup.contains_key(k.as_str())) {
            return Err(format!("column `{extra}` is not in the schema"));
        }
        let mut out = Vec::with_capacity(fields.len());
        for f in fields {
            out.push((f.name.clone(), column(&f.schema, row.get(&f.name), &f.name)?));
        }
        Ok(Value::Record(out))
    }
}

//! Keeps the Avro schemas, the column catalogue of docs/internals.md and the flattening in
//! step.

use apache_avro::types::Value as AvroValue;
use form_model::avro::{ColumnType, Table, flattened_to_values, row_to_value};
use form_model::golden::{self, Expected};
use form_model::{flatten, row_event_date, seed_enriched};

const INTERNALS: &str = include_str!("../../../docs/internals.md");

/// (name, type, nullable) as written in the catalogue.
type Columns = Vec<(String, String, bool)>;

fn catalogue() -> (Columns, Columns) {
    let section = INTERNALS
        .split("## Column catalogue")
        .nth(1)
        .expect("catalogue section")
        .split("Generator field kinds")
        .next()
        .unwrap();
    let form_text = section
        .split("`form`: ")
        .nth(1)
        .unwrap()
        .split("`form_field`: ")
        .next()
        .unwrap();
    let field_text = section.split("`form_field`: ").nth(1).unwrap();
    let parse = |text: &str, form: &[(String, String, bool)]| {
        let mut cols = Vec::new();
        for piece in text.split(';') {
            let piece = piece.trim();
            if piece.starts_with("then every `form` column prefixed `form_`") {
                cols.extend(
                    form.iter()
                        .map(|(n, t, o)| (format!("form_{n}"), t.clone(), *o)),
                );
                continue;
            }
            let mut parts = piece.splitn(3, '`');
            parts.next();
            let name = parts.next().unwrap().to_owned();
            let ty = parts.next().unwrap().split_whitespace().next().unwrap();
            let ty = ty.trim_end_matches('.');
            let (ty, nullable) = match ty.strip_prefix('?') {
                Some(t) => (t, true),
                None => (ty, false),
            };
            cols.push((name, ty.to_owned(), nullable));
        }
        cols
    };
    let form = parse(form_text, &[]);
    let form_field = parse(field_text, &form);
    (form, form_field)
}

fn type_word(t: ColumnType) -> &'static str {
    match t {
        ColumnType::String => "string",
        ColumnType::Boolean => "boolean",
        ColumnType::Long => "long",
        ColumnType::Double => "double",
        ColumnType::TimestampMicros => "timestamp-micros",
    }
}

#[test]
fn schemas_match_the_catalogue() {
    let (form, form_field) = catalogue();
    assert_eq!(form.len(), 13);
    assert_eq!(form_field.len(), 24 + 13);
    for (table, cat) in [(Table::Form, form), (Table::FormField, form_field)] {
        let schema: Vec<(String, String, bool)> = table
            .columns()
            .iter()
            .map(|c| (c.name.clone(), type_word(c.ty).to_owned(), c.nullable))
            .collect();
        assert_eq!(
            schema,
            cat,
            "config/{}.avsc vs docs/internals.md",
            table.name()
        );
    }
}

#[test]
fn nullable_columns_default_to_null() {
    for table in Table::ALL {
        let schema: serde_json::Value = serde_json::from_str(table.schema_json()).unwrap();
        for f in schema["fields"].as_array().unwrap() {
            if f["type"].is_array() {
                assert_eq!(f["type"][0], "null", "{f}");
                assert!(f.get("default").is_some_and(|d| d.is_null()), "{f}");
            } else {
                assert!(f.get("default").is_none(), "{f}");
            }
        }
    }
}

#[test]
fn seed_and_golden_rows_fit_the_schemas() {
    let seed = flatten(&seed_enriched(1_795_631_524_123_456)).unwrap();
    let (f, ff) = flattened_to_values(seed).unwrap();
    assert_eq!((f.len(), ff.len()), (1, 2));
    for v in &f {
        assert!(v.validate(Table::Form.schema()));
    }
    for v in &ff {
        assert!(v.validate(Table::FormField.schema()));
    }
    let mut checked = 0;
    for case in golden::load_cases() {
        let Expected::Rows(_) = case.expected else {
            continue;
        };
        let rows = flatten(&case.input).unwrap();
        // `tf-` (Typeform-shaped) cases have columns outside the fixed schemas in every row.
        let mismatch_expected =
            case.name.starts_with("schema-mismatch-") || case.name.starts_with("tf-");
        for (table, rows) in [
            (Table::Form, &rows.form),
            (Table::FormField, &rows.form_field),
        ] {
            for row in rows {
                assert!(row_event_date(row).is_some(), "{}", case.name);
                match row_to_value(table, row.clone()) {
                    Ok(v) => {
                        assert!(!mismatch_expected, "{}: row fits", case.name);
                        assert!(v.validate(table.schema()), "{}: {v:?}", case.name);
                        checked += 1;
                    }
                    Err(e) => assert!(mismatch_expected, "{}: {e}", case.name),
                }
            }
        }
    }
    assert!(checked > 10);
}

#[test]
fn timestamps_are_timestamp_micros() {
    let seed = flatten(&seed_enriched(1_795_631_524_123_456)).unwrap();
    let AvroValue::Record(fields) = row_to_value(Table::Form, seed.form[0].clone()).unwrap() else {
        unreachable!()
    };
    let get = |n: &str| fields.iter().find(|(k, _)| k == n).unwrap().1.clone();
    assert_eq!(
        get("event_happened_at"),
        AvroValue::TimestampMicros(1_664_715_615_000_000)
    );
    assert_eq!(
        get("retrieved_timestamp"),
        AvroValue::TimestampMicros(1_795_631_524_123_456)
    );
}

//! Golden-test support (feature `golden`, tests only): loads the cases under `test-data/`
//! and compares actual output with the expected files. Timestamp columns are text in the
//! expected files and compared as microseconds.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::flatten::{Flattened, Row, TIMESTAMP_COLUMNS};
use crate::seed::{SEED_EXPECTED_FORM, SEED_EXPECTED_FORM_FIELD};
use crate::time::{format_rfc3339_micros, parse_timestamp};

/// What a case must give.
#[derive(Debug, Clone, PartialEq)]
pub enum Expected {
    /// These rows (timestamps already as micros).
    Rows(Flattened),
    /// A record-level error with this DLQ reason (and naming this field, if given).
    Error {
        /// `dlq.reason`
        reason: String,
        /// The field the message must name.
        field: Option<String>,
    },
}

/// One golden case.
#[derive(Debug, Clone)]
pub struct Case {
    /// Directory name.
    pub name: String,
    /// `input.json` bytes (a `form.enriched` value, or not).
    pub input: Vec<u8>,
    /// `expected.json`, parsed.
    pub expected: Expected,
}

/// `crates/form-model/test-data`.
pub fn test_data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("test-data")
}

/// All cases under `test-data/cases`, sorted by name.
pub fn load_cases() -> Vec<Case> {
    let dir = test_data_dir().join("cases");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let input = std::fs::read(dir.join(&name).join("input.json")).unwrap();
            let expected: Value = serde_json::from_slice(
                &std::fs::read(dir.join(&name).join("expected.json")).unwrap(),
            )
            .unwrap_or_else(|e| panic!("{name}/expected.json: {e}"));
            let expected = if let Some(err) = expected.get("error") {
                Expected::Error {
                    reason: err["reason"].as_str().unwrap().to_owned(),
                    field: err.get("field").and_then(|f| f.as_str()).map(str::to_owned),
                }
            } else {
                Expected::Rows(rows_with_micros(
                    serde_json::from_value(expected).unwrap(),
                    None,
                ))
            };
            Case {
                name,
                input,
                expected,
            }
        })
        .collect()
}

/// The seed case's expected rows, with `<time of the API response>` = `retrieved_micros`.
pub fn seed_expected(retrieved_micros: i64) -> Flattened {
    let parse = |text: &str| -> Vec<Row> {
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let f = Flattened {
        form: parse(SEED_EXPECTED_FORM),
        form_field: parse(SEED_EXPECTED_FORM_FIELD),
    };
    rows_with_micros(f, Some(&format_rfc3339_micros(retrieved_micros)))
}

fn rows_with_micros(mut f: Flattened, placeholder: Option<&str>) -> Flattened {
    for row in f.form.iter_mut().chain(f.form_field.iter_mut()) {
        for col in TIMESTAMP_COLUMNS {
            if let Some(Value::String(s)) = row.get(col) {
                let s = match placeholder {
                    Some(p) if s == "<time of the API response>" => p.to_owned(),
                    _ => s.clone(),
                };
                let micros = parse_timestamp(&s)
                    .unwrap_or_else(|e| panic!("expected timestamp {s:?} in `{col}`: {e}"));
                row.insert(col.to_owned(), Value::from(micros));
            }
        }
    }
    f
}

/// Compares rows as JSON maps (column order ignored); `Err` describes the first difference.
pub fn compare(expected: &Flattened, actual: &Flattened) -> Result<(), String> {
    for (table, e, a) in [
        ("form", &expected.form, &actual.form),
        ("form_field", &expected.form_field, &actual.form_field),
    ] {
        if e.len() != a.len() {
            return Err(format!(
                "{table}: {} rows expected, got {}",
                e.len(),
                a.len()
            ));
        }
        for (i, (er, ar)) in e.iter().zip(a).enumerate() {
            if er != ar {
                let mut diff = Vec::new();
                for (k, v) in er {
                    if ar.get(k) != Some(v) {
                        diff.push(format!("`{k}`: expected {v}, got {:?}", ar.get(k)));
                    }
                }
                for (k, v) in ar {
                    if !er.contains_key(k) {
                        diff.push(format!("`{k}`: unexpected {v}"));
                    }
                }
                return Err(format!("{table} row {i}: {}", diff.join("; ")));
            }
        }
    }
    Ok(())
}

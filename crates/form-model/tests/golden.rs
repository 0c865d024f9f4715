//! Golden tests: the seed case and every case under `test-data/cases`, natively.
//! (The same cases run through the built `.wasm` in crates/transforms/tests.)

use form_model::golden::{self, Expected};
use form_model::{Event, flatten, flatten_to_json, seed_enriched};

const RETRIEVED: i64 = 1_795_631_524_123_456; // 2026-11-25T18:32:04.123456Z

#[test]
fn seed_gives_exactly_the_expected_rows() {
    let input = seed_enriched(RETRIEVED);
    let actual = flatten(&input).unwrap();
    let expected = golden::seed_expected(RETRIEVED);
    assert_eq!(expected.form.len(), 1);
    assert_eq!(expected.form_field.len(), 2);
    golden::compare(&expected, &actual).unwrap();
    // Same columns in the same order as the prototype's rows.
    for (e, a) in expected.form_field.iter().zip(&actual.form_field) {
        let mut ek: Vec<_> = e.keys().collect();
        let mut ak: Vec<_> = a.keys().collect();
        ek.sort();
        ak.sort();
        assert_eq!(ek, ak);
    }
    assert_eq!(
        expected.form[0].keys().collect::<Vec<_>>(),
        actual.form[0].keys().collect::<Vec<_>>()
    );
}

#[test]
fn golden_cases() {
    let cases = golden::load_cases();
    assert!(cases.len() >= 20, "only {} cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let actual = flatten(&case.input);
        match (&case.expected, actual) {
            (Expected::Rows(e), Ok(a)) => {
                if let Err(d) = golden::compare(e, &a) {
                    failures.push(format!("{}: {d}", case.name));
                }
            }
            (Expected::Error { reason, field }, Err(err)) => {
                if err.reason().as_str() != reason {
                    failures.push(format!(
                        "{}: reason {} != {reason} ({err})",
                        case.name,
                        err.reason()
                    ));
                }
                if let Some(field) = field
                    && (err.field() != Some(field.as_str())
                        || !err.to_string().contains(&format!("`{field}`")))
                {
                    failures.push(format!(
                        "{}: message {err:?} does not name `{field}`",
                        case.name
                    ));
                }
            }
            (Expected::Rows(_), Err(err)) => {
                failures.push(format!("{}: unexpected error {err}", case.name))
            }
            (Expected::Error { reason, .. }, Ok(a)) => {
                failures.push(format!("{}: expected {reason}, got rows {a:?}", case.name))
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn output_is_compact_single_object() {
    let mut out = Vec::new();
    flatten_to_json(&seed_enriched(RETRIEVED), &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(text.starts_with("{\"form\":[{\"id\":\"abcde\""), "{text}");
    assert!(!text.contains('\n'));
}

#[test]
fn bare_event_validation() {
    let ok = Event::from_slice(
        br#"{"form_id":"abcde","form_title":"my_test_form","event_happened_at":"2022-10-02 13:00:15","event_type":"created","extra":{"k":[1]}}"#,
    )
    .unwrap();
    assert_eq!(ok.form_id(), "abcde");
    assert_eq!(ok.form_title(), Some("my_test_form"));
    assert_eq!(ok.event_type(), "created");
    assert!(!ok.is_deleted());
    assert_eq!(ok.happened_at_micros(), 1_664_715_615_000_000);
    assert_eq!(ok.as_object()["extra"]["k"][0], 1);

    let cases: [(&[u8], &str, Option<&str>); 7] = [
        (b"not json", "invalid_json", None),
        (b"[]", "wrong_type", Some("(event)")),
        (br#"{"event_happened_at":"2022-10-02 13:00:15","event_type":"c"}"#, "missing_field", Some("form_id")),
        (br#"{"form_id":"","event_happened_at":"2022-10-02 13:00:15","event_type":"c"}"#, "wrong_type", Some("form_id")),
        (br#"{"form_id":"a","event_happened_at":"2022-10-02","event_type":"c"}"#, "invalid_timestamp", Some("event_happened_at")),
        (br#"{"form_id":"a","event_happened_at":"2022-10-02 13:00:15","event_type":true}"#, "wrong_type", Some("event_type")),
        (br#"{"form_id":"a","event_happened_at":"2022-10-02 13:00:15","event_type":"c","form_title":[]}"#, "wrong_type", Some("form_title")),
    ];
    for (input, reason, field) in cases {
        let err = Event::from_slice(input).unwrap_err();
        assert_eq!(err.reason().as_str(), reason, "{err}");
        assert_eq!(err.field(), field, "{err}");
        if let Some(field) = field {
            assert!(err.to_string().contains(field), "{err}");
        }
    }
}

#[test]
fn validates_api_answers() {
    use form_model::validate_api_form;
    use serde_json::json;
    assert!(
        validate_api_form(&serde_json::from_str(form_model::seed::SEED_FORM_JSON).unwrap()).is_ok()
    );
    for bad in [
        json!("x"),
        json!({"title": "t"}),
        json!({"id": "a"}),
        json!({"id": "a", "title": "t", "fields": {}}),
        json!({"id": "a", "title": "t", "fields": [1]}),
        json!({"id": "a", "title": "t", "fields": [{"title": "no id"}]}),
    ] {
        let e = validate_api_form(&bad).unwrap_err();
        assert_eq!(e.reason().as_str(), "invalid_api_response", "{e}");
    }
}

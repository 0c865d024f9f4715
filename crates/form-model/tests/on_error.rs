//! `on-error: emit` golden cases (`test-data/on-error/*/`), natively: each `input.json` (any
//! bytes) gives exactly `expected.json` (one line, compared byte for byte). The same cases
//! run through the built `.wasm` in crates/transforms/tests/on_error.rs.

use std::path::Path;

use form_model::{DlqReason, OnError, flatten_or_error_record, flatten_to_json};
use serde_json::Value;

/// `(name, input, expected output)` of every case, sorted by name.
fn cases() -> Vec<(String, Vec<u8>, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("test-data/on-error");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let input = std::fs::read(dir.join(&name).join("input.json")).unwrap();
            let mut expected = std::fs::read(dir.join(&name).join("expected.json"))
                .unwrap_or_else(|e| panic!("{name}/expected.json: {e}"));
            if expected.last() == Some(&b'\n') {
                expected.pop();
            }
            (name, input, expected)
        })
        .collect()
}

#[test]
fn golden_cases_under_emit() {
    let cases = cases();
    assert!(cases.len() >= 10, "only {} cases", cases.len());
    let mut failures = Vec::new();
    let mut error_records = 0;
    for (name, input, expected) in &cases {
        let mut out = b"previous output ".to_vec();
        let err = flatten_or_error_record(input, &mut out);
        // Appends, never touches what `out` held.
        assert_eq!(&out[..16], b"previous output ", "{name}");
        let out = &out[16..];
        if out != expected.as_slice() {
            failures.push(format!(
                "{name}:\n  expected {}\n  got      {}",
                String::from_utf8_lossy(expected),
                String::from_utf8_lossy(out)
            ));
            continue;
        }
        // The error (if any) is what `fail` mode reports for the same record.
        let mut rows = Vec::new();
        let fail = flatten_to_json(input, &mut rows);
        assert_eq!(fail.as_ref().err(), err.as_ref(), "{name}");
        let v: Value = serde_json::from_slice(out).unwrap_or_else(|e| panic!("{name}: {e}"));
        match err {
            None => {
                // Rows, byte for byte those of `fail` mode.
                assert_eq!(out, rows.as_slice(), "{name}");
                assert!(
                    v.get("form").is_some() && v.get("error").is_none(),
                    "{name}"
                );
            }
            Some(err) => {
                error_records += 1;
                let obj = v.as_object().unwrap();
                assert_eq!(obj.keys().collect::<Vec<_>>(), ["error", "input"], "{name}");
                let reason = v["error"]["reason"].as_str().unwrap();
                assert!(DlqReason::parse(reason).is_some(), "{name}: {reason}");
                assert_eq!(reason, err.reason().as_str(), "{name}");
                assert_eq!(v["error"]["detail"], err.to_string(), "{name}");
                assert_eq!(err.to_detail(), format!("{reason}: {}", err), "{name}");
                // `input`: the same JSON value when the input is JSON serde_json reads, else
                // its text.
                match serde_json::from_slice::<Value>(input) {
                    Ok(parsed) => assert_eq!(v["input"], parsed, "{name}"),
                    Err(_) => assert_eq!(
                        v["input"].as_str().unwrap(),
                        String::from_utf8_lossy(input),
                        "{name}"
                    ),
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(error_records >= 9, "only {error_records} error cases");
}

/// `input` keeps the JSON as written: numbers serde_json would round (`1.50`, a 30-digit
/// integer, `1E+2`), escapes and repeated keys are not rewritten.
#[test]
fn input_is_the_json_as_written() {
    let cases = cases();
    let (_, _, pretty) = cases
        .iter()
        .find(|(n, _, _)| n == "pretty-printed-bad-timestamp")
        .unwrap();
    let text = std::str::from_utf8(pretty).unwrap();
    for kept in [
        r#""big":123456789012345678901234567890"#,
        r#""price":1.50"#,
        r#""exp":1E+2"#,
        r#""caf\u00e9 \"quoted\"  two  spaces""#,
    ] {
        assert!(text.contains(kept), "{kept} not in {text}");
    }
    let (_, _, repeated) = cases
        .iter()
        .find(|(n, _, _)| n == "repeated-key-wrong-type")
        .unwrap();
    let text = std::str::from_utf8(repeated).unwrap();
    assert!(text.contains(r#""form_id":"é✓","form_id":42"#), "{text}");
}

#[test]
fn the_parameter() {
    assert_eq!(OnError::default(), OnError::Fail);
    assert_eq!(OnError::from_params([]), Ok(OnError::Fail));
    assert_eq!(
        OnError::from_params([("on-error", "fail")]),
        Ok(OnError::Fail)
    );
    assert_eq!(
        OnError::from_params([("on-error", "emit")]),
        Ok(OnError::Emit)
    );
    assert_eq!(
        OnError::from_params([("on-error", "skip")]).unwrap_err(),
        "form-flatten: `on-error` is `skip`: use `fail` (the default: a record that cannot be \
         flattened is a record error) or `emit` (it becomes one {\"error\":…,\"input\":…} record)"
    );
    assert_eq!(
        OnError::from_params([("on-error", "emit"), ("mode", "x")]).unwrap_err(),
        "form-flatten: unknown parameter `mode`: the only parameter is `on-error` (`fail` or `emit`)"
    );
    for m in [OnError::Fail, OnError::Emit] {
        assert_eq!(OnError::parse(m.as_str()), Ok(m));
    }
}

//! The `form-flatten` module's `on-error` parameter through the built `.wasm` (as a Fluvio SPU
//! runs it: the engine calls the module's `init` with the `with:` parameters): the golden cases
//! of crates/form-model/test-data/on-error give exactly their `expected.json` under `emit`, and
//! a bad value is refused when the chain is built.

mod common;

use std::collections::BTreeMap;

use common::{enriched, flatten_wasm};
use form_model::golden::test_data_dir;
use form_model::{Flattened, flatten_to_json};
use form_transforms::{ChainOptions, Input, TransformChain, TransformStep};

fn step(with: &[(&str, &str)]) -> TransformStep {
    TransformStep {
        uses: flatten_wasm().to_str().unwrap().to_owned(),
        with: with
            .iter()
            .map(|(k, v)| ((*k).to_owned(), serde_json::Value::from(*v)))
            .collect::<BTreeMap<_, _>>(),
    }
}

fn chain(with: &[(&str, &str)]) -> Result<TransformChain, form_transforms::TransformsError> {
    TransformChain::new(
        &[step(with)],
        ChainOptions {
            watch: false,
            ..ChainOptions::default()
        },
    )
}

/// `(name, input, expected output)` of every on-error case.
fn cases() -> Vec<(String, Vec<u8>, Vec<u8>)> {
    let dir = test_data_dir().join("on-error");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let input = std::fs::read(dir.join(&name).join("input.json")).unwrap();
            let mut expected = std::fs::read(dir.join(&name).join("expected.json")).unwrap();
            if expected.last() == Some(&b'\n') {
                expected.pop();
            }
            (name, input, expected)
        })
        .collect()
}

#[test]
fn golden_cases_under_emit_never_stop_the_batch() {
    let mut chain = chain(&[("on-error", "emit")]).unwrap();
    let cases = cases();
    assert!(cases.len() >= 10, "only {} cases", cases.len());
    // One batch: each case between two good records, so a bad record that stopped the batch
    // (as an error does: the engine stops at the first failing record) would show.
    let goods: Vec<Vec<u8>> = (0..=cases.len() as u64).map(|n| enriched(n, 2)).collect();
    let mut inputs = Vec::new();
    for (i, (name, input, _)) in cases.iter().enumerate() {
        inputs.push(Input {
            key: Some(b"good"),
            value: &goods[i],
            offset: 2 * i as i64,
        });
        inputs.push(Input {
            key: Some(name.as_bytes()),
            value: input,
            offset: 2 * i as i64 + 1,
        });
    }
    inputs.push(Input {
        key: Some(b"good"),
        value: &goods[cases.len()],
        offset: 2 * cases.len() as i64,
    });
    let results = chain.process(&inputs);
    assert_eq!(results.len(), inputs.len());
    let mut failures = Vec::new();
    for (input, result) in inputs.iter().zip(&results) {
        let outs = match result {
            Ok(outs) => outs,
            Err(e) => {
                failures.push(format!("{:?}: error {e}", input.key));
                continue;
            }
        };
        assert_eq!(outs.len(), 1, "{:?}", input.key);
        assert_eq!(outs[0].key.as_deref(), input.key, "key kept");
        let want = match cases
            .iter()
            .find(|(n, _, _)| Some(n.as_bytes()) == input.key)
        {
            Some((_, _, expected)) => expected.clone(),
            None => {
                let mut rows = Vec::new();
                flatten_to_json(input.value, &mut rows).unwrap();
                rows
            }
        };
        if outs[0].value != want {
            failures.push(format!(
                "{}:\n  expected {}\n  got      {}",
                String::from_utf8_lossy(input.key.unwrap_or_default()),
                String::from_utf8_lossy(&want),
                String::from_utf8_lossy(&outs[0].value)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Error records are not rows: a sink reading `emit` output would see them.
    let (_, _, missing) = cases
        .iter()
        .find(|(n, _, _)| n == "missing-event-happened-at")
        .unwrap();
    assert!(Flattened::from_slice(missing).is_err());
}

/// `fail` (the default, and written out) gives record errors for the same bad records, with
/// the `<reason>: <detail>` message, and the same rows for the good ones.
#[test]
fn fail_is_the_default_and_refuses_the_bad_records() {
    let cases = cases();
    for with in [&[][..], &[("on-error", "fail")][..]] {
        let mut chain = chain(with).unwrap();
        for (name, input, expected) in &cases {
            let results = chain.process(&[Input {
                key: None,
                value: input,
                offset: 0,
            }]);
            let mut rows = Vec::new();
            match (flatten_to_json(input, &mut rows), &results[0]) {
                (Ok(()), Ok(outs)) => {
                    assert_eq!(outs[0].value, rows, "{name}");
                    assert_eq!(&outs[0].value, expected, "{name}");
                }
                (Err(e), Err(te)) => {
                    assert_eq!(te.message, e.to_detail(), "{name}");
                    // The same reason and detail as the error record under `emit`.
                    let v: serde_json::Value = serde_json::from_slice(expected).unwrap();
                    assert_eq!(
                        te.message,
                        format!(
                            "{}: {}",
                            v["error"]["reason"].as_str().unwrap(),
                            v["error"]["detail"].as_str().unwrap()
                        ),
                        "{name}"
                    );
                }
                (n, w) => panic!("{name}: native {n:?}, wasm {w:?}"),
            }
        }
    }
}

/// A value other than `fail`/`emit`, or another parameter, is refused by the module's `init`:
/// the chain is not built, and the message says what is allowed.
#[test]
fn bad_parameters_are_refused_at_init() {
    for (with, want) in [
        (
            [("on-error", "skip")],
            "form-flatten: `on-error` is `skip`: use `fail` (the default: a record that cannot be \
             flattened is a record error) or `emit`",
        ),
        (
            [("on_error", "emit")],
            "form-flatten: unknown parameter `on_error`: the only parameter is `on-error` \
             (`fail` or `emit`)",
        ),
    ] {
        let Err(e) = chain(&with) else {
            panic!("the chain was built with {with:?}");
        };
        let e = e.to_string();
        assert!(e.starts_with("loading SmartModule chain ("), "{e}");
        assert!(e.contains(want), "{e}");
    }
}

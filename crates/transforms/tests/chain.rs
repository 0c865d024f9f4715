//! The chain through the built `form_flatten.wasm`: golden outputs, bad records, config.

mod common;

use common::{enriched, flatten_wasm, workspace_root};
use form_model::golden::{self, Expected};
use form_model::{Flattened, flatten_to_json};
use form_transforms::{ChainOptions, Input, TransformChain, TransformStep, resolve_module_from};

fn chain() -> TransformChain {
    let path = flatten_wasm();
    TransformChain::new(
        &[TransformStep::new(path.to_str().unwrap())],
        ChainOptions {
            watch: false,
            ..ChainOptions::default()
        },
    )
    .unwrap()
}

#[test]
fn golden_cases_through_the_wasm() {
    let mut chain = chain();
    let retrieved = 1_795_631_524_123_456;
    let seed = form_model::seed_enriched(retrieved);
    let cases = golden::load_cases();
    // All cases in one batch (bad ones interleaved), then the seed.
    let mut inputs: Vec<Input<'_>> = cases
        .iter()
        .enumerate()
        .map(|(i, c)| Input {
            key: Some(c.name.as_bytes()),
            value: &c.input,
            offset: 100 + i as i64,
        })
        .collect();
    inputs.push(Input {
        key: Some(b"test-key"),
        value: &seed,
        offset: 100 + cases.len() as i64,
    });
    let results = chain.process(&inputs);
    assert_eq!(results.len(), inputs.len());

    let seed_out = results.last().unwrap().as_ref().unwrap();
    assert_eq!(seed_out.len(), 1);
    assert_eq!(seed_out[0].key.as_deref(), Some(&b"test-key"[..]));
    let rows = Flattened::from_slice(&seed_out[0].value).unwrap();
    golden::compare(&golden::seed_expected(retrieved), &rows).unwrap();

    let mut failures = Vec::new();
    for (case, result) in cases.iter().zip(&results) {
        match (&case.expected, result) {
            (Expected::Rows(e), Ok(outs)) => {
                assert_eq!(outs.len(), 1, "{}", case.name);
                assert_eq!(outs[0].key.as_deref(), Some(case.name.as_bytes()));
                let a = Flattened::from_slice(&outs[0].value).unwrap();
                if let Err(d) = golden::compare(e, &a) {
                    failures.push(format!("{}: {d}", case.name));
                }
                // Byte for byte what the native code writes.
                let mut native = Vec::new();
                flatten_to_json(&case.input, &mut native).unwrap();
                assert_eq!(outs[0].value, native, "{}", case.name);
            }
            (Expected::Error { reason, field }, Err(e)) => {
                if !e.message.starts_with(&format!("{reason}: ")) {
                    failures.push(format!(
                        "{}: message {:?} lacks reason {reason}",
                        case.name, e.message
                    ));
                }
                if let Some(f) = field
                    && !e.message.contains(&format!("`{f}`"))
                {
                    failures.push(format!(
                        "{}: message {:?} does not name {f}",
                        case.name, e.message
                    ));
                }
            }
            (_, other) => failures.push(format!("{}: unexpected {other:?}", case.name)),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn one_result_per_input_whatever_fails() {
    let mut chain = chain();
    let good: Vec<Vec<u8>> = (0..1000)
        .map(|n| enriched(n, (n % 9 + 1) as usize))
        .collect();
    let bad: &[&[u8]] = &[
        b"not json",
        b"{}",
        br#"{"event":{"form_id":""}}"#,
        b"\xff\xfe",
    ];
    let mut values: Vec<&[u8]> = Vec::new();
    for (i, g) in good.iter().enumerate() {
        values.push(if i % 7 == 3 { bad[i % bad.len()] } else { g });
    }
    // Ends with a run of bad records, and includes two adjacent bad ones.
    values[500] = bad[0];
    values[501] = bad[1];
    values[998] = bad[2];
    values[999] = bad[3];
    for offsets_increasing in [true, false] {
        let inputs: Vec<Input<'_>> = values
            .iter()
            .enumerate()
            .map(|(i, v)| Input {
                key: None,
                value: v,
                // Also a batch mixing partitions (offsets repeat).
                offset: if offsets_increasing {
                    5000 + i as i64
                } else {
                    (i % 10) as i64
                },
            })
            .collect();
        let results = chain.process(&inputs);
        assert_eq!(results.len(), inputs.len());
        for (i, (input, result)) in inputs.iter().zip(&results).enumerate() {
            let mut native = Vec::new();
            match (flatten_to_json(input.value, &mut native), result) {
                (Ok(()), Ok(outs)) => {
                    assert_eq!(outs.len(), 1, "record {i}");
                    assert_eq!(outs[0].value, native, "record {i}");
                }
                (Err(e), Err(te)) => assert_eq!(te.message, e.to_detail(), "record {i}"),
                (n, w) => panic!("record {i}: native {n:?}, wasm {w:?}"),
            }
        }
    }
}

#[test]
fn periodic_rebuild_keeps_every_record() {
    let path = flatten_wasm();
    let mut chain = TransformChain::new(
        &[TransformStep::new(path.to_str().unwrap())],
        ChainOptions {
            watch: false,
            rebuild_every_records: 300,
            ..ChainOptions::default()
        },
    )
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut n = 0u64;
    while chain.rebuilds() < 2 {
        assert!(std::time::Instant::now() < deadline, "no rebuild");
        let values: Vec<Vec<u8>> = (n..n + 100).map(|i| enriched(i, 3)).collect();
        let inputs = Input::numbered(&values, n as i64);
        let results = chain.process(&inputs);
        for (i, r) in results.iter().enumerate() {
            let outs = r.as_ref().unwrap();
            let rows = Flattened::from_slice(&outs[0].value).unwrap();
            assert_eq!(rows.form[0]["id"], format!("f-{}", n + i as u64));
        }
        n += 100;
    }
    assert_eq!(chain.generation(), 0);
}

#[test]
fn empty_batch_and_empty_chain() {
    let mut chain = chain();
    assert!(chain.process(&[]).is_empty());
    let mut none = TransformChain::new(&[], ChainOptions::default()).unwrap();
    let r = none.process(&[Input {
        key: None,
        value: b"x",
        offset: 0,
    }]);
    assert_eq!(r[0].as_ref().unwrap()[0].value, b"x");
    assert!(none.module_digests().is_empty());
}

#[test]
fn digests_are_the_file_sha256() {
    use sha2::Digest;
    let chain = chain();
    let d = &chain.module_digests()[0];
    let bytes = std::fs::read(flatten_wasm()).unwrap();
    assert_eq!(d.sha256, hex::encode(sha2::Sha256::digest(&bytes)));
}

#[test]
fn resolution_rule() {
    let root = workspace_root();
    assert_eq!(
        resolve_module_from("form-flatten", &root).unwrap(),
        flatten_wasm()
    );
    let e = resolve_module_from("no-such-module", &root)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no_such_module.wasm"), "{e}");
    assert!(e.contains("target/wasm32-unknown-unknown/release"), "{e}");
    assert!(e.contains("make build-smartmodules"), "{e}");
    let e = resolve_module_from("missing/x.wasm", &root)
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing/x.wasm"), "{e}");
    assert!(resolve_module_from("../x", &root).is_err());
}

#[test]
fn config_yaml() {
    #[derive(serde::Deserialize)]
    struct Doc {
        transforms: Vec<TransformStep>,
    }
    let doc: Doc = serde_yaml::from_str(
        "transforms:\n  - uses: form-flatten\n    with:\n      n: 3\n      s: text\n  - uses: other.wasm\n",
    )
    .unwrap();
    assert_eq!(doc.transforms[0].uses, "form-flatten");
    assert_eq!(doc.transforms[0].with["n"], 3);
    assert_eq!(doc.transforms[1].with.len(), 0);
    let e = serde_yaml::from_str::<Doc>("transforms:\n  - uses: x\n    wiht: {}\n")
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("wiht"), "{e}");
}

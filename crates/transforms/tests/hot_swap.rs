//! Hot swap under a running chain: a second build (upper-cased titles) swapped in mid-stream
//! without losing or repeating a record; a garbage file and a module that fails the canary
//! rejected while the old module keeps running.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{build_variant, enriched, flatten_wasm};
use form_model::Flattened;
use form_transforms::{ChainOptions, Input, TransformChain, TransformStep};

/// Runs one batch of `size` new records; checks each gives exactly its own row; returns
/// per record whether the title was upper-cased.
fn batch(chain: &mut TransformChain, next: &mut u64, size: u64) -> Vec<bool> {
    let values: Vec<Vec<u8>> = (*next..*next + size).map(|n| enriched(n, 2)).collect();
    let inputs = Input::numbered(&values, *next as i64);
    let results = chain.process(&inputs);
    assert_eq!(results.len(), inputs.len());
    let mut upper = Vec::new();
    for (i, r) in results.iter().enumerate() {
        let n = *next + i as u64;
        let outs = r.as_ref().unwrap_or_else(|e| panic!("record {n}: {e}"));
        assert_eq!(outs.len(), 1, "record {n}");
        let rows = Flattened::from_slice(&outs[0].value).unwrap();
        assert_eq!(rows.form.len(), 1);
        assert_eq!(rows.form[0]["id"], format!("f-{n}"));
        assert_eq!(rows.form_field.len(), 2);
        let title = rows.form[0]["title"].as_str().unwrap();
        if title == format!("Title {n} é") {
            upper.push(false);
        } else {
            assert_eq!(title, format!("TITLE {n} É"));
            assert_eq!(rows.form_field[0]["form_title"], title);
            upper.push(true);
        }
    }
    *next += size;
    upper
}

fn sha256(path: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

#[test]
fn swap_mid_stream_and_reject_broken_modules() {
    let dir = tempfile::tempdir().unwrap();
    let upper = dir.path().join("upper.wasm");
    let failing = dir.path().join("always_fail.wasm");
    build_variant("upper-title", &upper);
    build_variant("always-fail", &failing);

    let watched = dir.path().join("form_flatten.wasm");
    std::fs::copy(flatten_wasm(), &watched).unwrap();
    let mut chain = TransformChain::new(
        &[TransformStep::new(watched.to_str().unwrap())],
        ChainOptions {
            poll_interval: Duration::from_millis(20),
            ..ChainOptions::default()
        },
    )
    .unwrap();
    let original = chain.module_digests()[0].sha256.clone();
    assert_eq!(original, sha256(&watched));

    let mut next = 0;
    let mut seen: Vec<bool> = Vec::new();
    for _ in 0..5 {
        seen.extend(batch(&mut chain, &mut next, 200));
    }

    // Swap while records keep flowing.
    std::fs::copy(&upper, &watched).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while chain.generation() == 0 {
        assert!(
            Instant::now() < deadline,
            "the new module was never swapped in"
        );
        seen.extend(batch(&mut chain, &mut next, 200));
    }
    for _ in 0..5 {
        seen.extend(batch(&mut chain, &mut next, 200));
    }
    assert_eq!(seen.len() as u64, next, "one result per record");
    let switch = seen
        .iter()
        .position(|&u| u)
        .expect("some records upper-cased");
    assert!(switch >= 1000, "swapped before the file changed");
    assert!(
        seen[switch..].iter().all(|&u| u),
        "old module used after the swap"
    );
    assert_eq!(switch % 200, 0, "swap inside a batch");
    assert_eq!(chain.module_digests()[0].sha256, sha256(&upper));
    assert_ne!(chain.module_digests()[0].sha256, original);

    // Garbage bytes: rejected, the upper-title module keeps running.
    std::fs::write(&watched, b"\0asm garbage, not a module").unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while chain.rejections().0 < 1 {
        assert!(Instant::now() < deadline, "garbage never rejected");
        assert!(batch(&mut chain, &mut next, 100).iter().all(|&u| u));
    }
    let (_, why) = chain.rejections();
    assert!(why.unwrap().contains("loading"));

    // A valid module that refuses every record: fails the canary, rejected too.
    std::fs::copy(&failing, &watched).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while chain.rejections().0 < 2 {
        assert!(Instant::now() < deadline, "failing module never rejected");
        assert!(batch(&mut chain, &mut next, 100).iter().all(|&u| u));
    }
    let (_, why) = chain.rejections();
    assert!(why.unwrap().contains("canary"));
    for _ in 0..3 {
        assert!(batch(&mut chain, &mut next, 100).iter().all(|&u| u));
    }
    assert_eq!(chain.generation(), 1);
    assert_eq!(chain.module_digests()[0].sha256, sha256(&upper));

    // Back to the original: swapped in again.
    std::fs::copy(flatten_wasm(), &watched).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while chain.generation() < 2 {
        assert!(Instant::now() < deadline, "original never swapped back");
        batch(&mut chain, &mut next, 100);
    }
    assert!(batch(&mut chain, &mut next, 100).iter().all(|&u| !u));
    assert_eq!(chain.module_digests()[0].sha256, original);
}

#[test]
fn broken_modules_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.wasm");
    std::fs::write(&garbage, b"not wasm at all").unwrap();
    let e = TransformChain::new(
        &[TransformStep::new(garbage.to_str().unwrap())],
        ChainOptions::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("loading SmartModule chain"), "{e}");
}

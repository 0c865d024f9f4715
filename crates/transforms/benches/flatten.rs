//! Rows/s of the flattening: native (`form_model::flatten_to_json`) vs through the built
//! `form_flatten.wasm` (`TransformChain::process`), batches of 1000 enriched records of 1–9
//! fields (5 on average, like the forms API generator).
//!
//! make build-smartmodules && cargo bench -p form-transforms --bench flatten

#[path = "../tests/common/mod.rs"]
mod common;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use form_transforms::{ChainOptions, Input, TransformChain, TransformStep};

const BATCH: u64 = 1000;

fn records() -> (Vec<Vec<u8>>, u64) {
    let values = common::mixed_records(BATCH);
    // One form row per record plus one form_field row per field.
    let rows = (0..BATCH).map(|n| 1 + n % 9 + 1).sum();
    (values, rows)
}

fn bench(c: &mut Criterion) {
    let (values, rows) = records();
    let mut group = c.benchmark_group("flatten_1000_records");
    group.throughput(Throughput::Elements(rows));

    let mut out = Vec::with_capacity(1 << 20);
    group.bench_function("native", |b| {
        b.iter(|| {
            for v in &values {
                out.clear();
                form_model::flatten_to_json(v, &mut out).unwrap();
                std::hint::black_box(&out);
            }
        })
    });

    let wasm = common::flatten_wasm();
    let mut chain = TransformChain::new(
        &[TransformStep::new(wasm.to_str().unwrap())],
        ChainOptions {
            watch: false,
            ..ChainOptions::default()
        },
    )
    .unwrap();
    let inputs: Vec<Input<'_>> = values
        .iter()
        .enumerate()
        .map(|(i, v)| Input {
            key: Some(b"k"),
            value: v,
            offset: i as i64,
        })
        .collect();
    group.bench_function("wasm", |b| {
        b.iter(|| {
            let r = chain.process(&inputs);
            assert!(r.iter().all(|r| r.is_ok()));
            std::hint::black_box(r);
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(8));
    targets = bench
}
criterion_main!(benches);

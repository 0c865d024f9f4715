//! Where the time of the flattening goes: the same 1000 enriched records (1–9 fields, like
//! the bench) timed natively (parse only, full flatten) and through the engine (the built
//! `form_flatten.wasm`, and an identity module built with `--features identity` to show the
//! engine's own cost per record). Prints the median of REPS runs, records/s and rows/s.
//!
//! cargo run --release -p form-transforms --example profile_flatten -- [IDENTITY_WASM] [REPS] [BATCH]

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Instant;

use form_transforms::{ChainOptions, Input, TransformChain, TransformStep};

const RECORDS: u64 = 1000;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Median seconds per pass over the records.
fn time(reps: usize, mut pass: impl FnMut()) -> f64 {
    pass(); // warm-up
    median(
        (0..reps)
            .map(|_| {
                let t = Instant::now();
                pass();
                t.elapsed().as_secs_f64()
            })
            .collect(),
    )
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let identity = args.first().filter(|a| !a.is_empty()).cloned();
    let reps: usize = args.get(1).map_or(15, |a| a.parse().expect("REPS"));
    let batch: usize = args.get(2).map_or(1000, |a| a.parse().expect("BATCH"));
    let values = common::mixed_records(RECORDS);
    let rows: u64 = (0..RECORDS).map(|n| 1 + n % 9 + 1).sum();
    let in_bytes: usize = values.iter().map(Vec::len).sum();
    let mut out = Vec::with_capacity(1 << 20);
    let mut out_bytes = 0;
    for v in &values {
        out.clear();
        form_model::flatten_to_json(v, &mut out).unwrap();
        out_bytes += out.len();
    }
    println!(
        "{RECORDS} records, {rows} rows, input {} B/record, output {} B/record, engine batch {batch}",
        in_bytes / RECORDS as usize,
        out_bytes / RECORDS as usize
    );
    let report = |name: &str, secs: f64| {
        println!(
            "{name:<28} {:>8.2} us/record {:>9.0} records/s {:>9.0} rows/s",
            secs * 1e6 / RECORDS as f64,
            RECORDS as f64 / secs,
            rows as f64 / secs
        );
    };

    // `ONLY=<text>` runs only the measurements whose name contains it (for a profile of one).
    let only = std::env::var("ONLY").unwrap_or_default();
    let report = |name: &str, pass: &mut dyn FnMut()| {
        if name.contains(only.as_str()) {
            report(name, time(reps, pass));
        }
    };
    report("native parse (Value)", &mut || {
        for v in &values {
            let v: serde_json::Value = serde_json::from_slice(v).unwrap();
            std::hint::black_box(v);
        }
    });
    report("native flatten_to_json", &mut || {
        for v in &values {
            out.clear();
            form_model::flatten_to_json(v, &mut out).unwrap();
            std::hint::black_box(&out);
        }
    });

    let run_chain = |name: &str, wasm: String, canary: bool| {
        if !name.contains(only.as_str()) {
            return;
        }
        let mut chain = TransformChain::new(
            &[TransformStep::new(wasm)],
            ChainOptions {
                watch: false,
                canary,
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
        report(name, &mut || {
            for chunk in inputs.chunks(batch) {
                let r = chain.process(chunk);
                assert!(r.iter().all(|r| r.is_ok()));
                std::hint::black_box(r);
            }
        });
    };
    run_chain(
        "wasm form_flatten",
        common::flatten_wasm().to_string_lossy().into_owned(),
        true,
    );
    if let Some(identity) = identity {
        run_chain("wasm identity (engine cost)", identity, false);
    }
}

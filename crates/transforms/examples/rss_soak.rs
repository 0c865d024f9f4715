//! Memory soak: runs N enriched records through the built `form_flatten.wasm` in batches
//! and prints the process RSS (from /proc/self/status) as it goes.
//!
//! cargo run --release -p form-transforms --example rss_soak -- RECORDS REBUILD_EVERY [BATCH]
//! (REBUILD_EVERY = 0: never rebuild the instance.)

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Instant;

use form_transforms::{ChainOptions, Input, TransformChain, TransformStep};

fn rss_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("a number"))
        .collect();
    let total = args.first().copied().unwrap_or(2_000_000);
    let rebuild_every = args.get(1).copied().unwrap_or(0);
    let batch = args.get(2).copied().unwrap_or(1000);
    let wasm = common::flatten_wasm();
    let mut chain = TransformChain::new(
        &[TransformStep::new(wasm.to_str().unwrap())],
        ChainOptions {
            watch: false,
            rebuild_every_records: rebuild_every,
            ..ChainOptions::default()
        },
    )
    .unwrap();
    // 64 distinct records, 1..9 fields (about 5 on average), reused.
    let values = common::mixed_records(64);
    println!("records,rss_kb,rebuilds,elapsed_s");
    println!("0,{},0,0", rss_kb());
    let start = Instant::now();
    let mut done = 0u64;
    let mut next_report = 250_000;
    while done < total {
        let inputs: Vec<Input<'_>> = (0..batch)
            .map(|i| Input {
                key: None,
                value: &values[((done + i) % 64) as usize],
                offset: (done + i) as i64,
            })
            .collect();
        let results = chain.process(&inputs);
        assert!(results.iter().all(|r| r.is_ok()));
        done += batch;
        if done >= next_report {
            println!(
                "{done},{},{},{:.1}",
                rss_kb(),
                chain.rebuilds(),
                start.elapsed().as_secs_f64()
            );
            next_report += 250_000;
        }
    }
}

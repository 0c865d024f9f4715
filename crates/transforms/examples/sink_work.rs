//! The sink's work per record without Kafka or S3: the chain (a `form_flatten.wasm` through
//! the engine, 32 records per call, as the pipeline thread runs it), then the Avro datums
//! of each output (`form_model::avro_encode`), over the bench's 1000 enriched records (1–9
//! fields). Instruction counts under callgrind repeat from run to run, where this VM's
//! timings move by ±10% and `perf stat` has no hardware counters:
//!
//! cargo build --release -p form-transforms --example sink_work
//! valgrind --tool=callgrind --smc-check=all-non-file --callgrind-out-file=/tmp/cg.out \
//!     target/release/examples/sink_work [WASM] [PASSES]
//! callgrind_annotate /tmp/cg.out | head
//!
//! The first pass compiles the module: compare runs with the same PASSES, or the difference
//! between two PASSES values (the cost of the extra passes).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Instant;

use anyhow::Context;
use form_model::avro_encode::{EncodedRows, encode_output};
use form_transforms::{ChainOptions, Input, TransformChain, TransformStep};

/// Records per engine call, as `s3-sink`'s transform (`CHUNK_RECORDS`).
const CHUNK: usize = 32;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let wasm = common::wasm_arg(&args);
    let passes: usize = args.get(1).map_or(1, |a| a.parse().expect("PASSES"));

    let values = common::mixed_records(1000);
    let inputs = Input::numbered(&values, 0);
    let mut chain = TransformChain::new(&[TransformStep::new(&wasm)], ChainOptions::default())
        .with_context(|| format!("loading {wasm}"))?;
    let mut rows = EncodedRows::default();
    let mut total_rows = 0;
    let start = Instant::now();
    for _ in 0..passes {
        for chunk in inputs.chunks(CHUNK) {
            for result in chain.process_held(chunk) {
                let outputs = result.map_err(|e| anyhow::anyhow!(e.message))?;
                rows.clear();
                for o in &outputs {
                    encode_output(&o.value, &mut rows)?;
                }
                total_rows += rows.rows.len();
            }
        }
    }
    let records = passes * values.len();
    println!(
        "{wasm}: {records} records, {total_rows} rows, {:.2} us/record",
        start.elapsed().as_secs_f64() * 1e6 / records as f64
    );
    Ok(())
}

//! In-process cost of the sink's per-record stages on the generated records, one thread:
//! flatten (native form-model, and the `.wasm` SmartModule when a runner is available), the
//! rows straight to Avro datums and zstd blocks (the sink's path), and for comparison the
//! apache-avro path (rows, Avro values, apache-avro's writer).

use std::time::Instant;

use apache_avro::{Codec, Writer, ZstandardSettings};
use form_model::Flattened;
use form_model::avro::{Table, flattened_to_values};
use form_model::avro_encode::{EncodedRows, encode_output};
use serde::Serialize;

use crate::events::Event;

/// One stage's cost.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub(crate) struct Stage {
    /// What was timed.
    pub(crate) name: String,
    /// Input records per second (one thread).
    pub(crate) records_per_s: f64,
    /// Microseconds per input record.
    pub(crate) us_per_record: f64,
}

fn stage(name: &str, records: usize, seconds: f64) -> Stage {
    Stage {
        name: name.to_owned(),
        records_per_s: records as f64 / seconds.max(1e-9),
        us_per_record: seconds * 1e6 / records.max(1) as f64,
    }
}

/// All stages over `inputs` (enriched record values), each at least `min_seconds` long.
pub(crate) fn measure(inputs: &[Vec<u8>], min_seconds: f64) -> anyhow::Result<(Vec<Stage>, f64)> {
    let mut stages = Vec::new();
    let n = inputs.len();

    // 1. Flatten, native (the SmartModule's own code, compiled for the host).
    let mut out = Vec::with_capacity(64 * 1024);
    let mut flat_json: Vec<Vec<u8>> = Vec::with_capacity(n);
    for i in inputs {
        out.clear();
        form_model::flatten_to_json(i, &mut out)?;
        flat_json.push(out.clone());
    }
    let (mut reps, start) = (0usize, Instant::now());
    while start.elapsed().as_secs_f64() < min_seconds {
        for i in inputs {
            out.clear();
            form_model::flatten_to_json(i, &mut out)?;
        }
        reps += 1;
    }
    let native = start.elapsed().as_secs_f64();
    stages.push(stage(
        "flatten native (form-model)",
        n * reps,
        start.elapsed().as_secs_f64(),
    ));

    // 1b. Flatten through the `.wasm` SmartModule (form-transforms' chain, in the sink's
    //     chunks of 32 records per call).
    let _ = native;
    match wasm_flatten(inputs, min_seconds) {
        Ok(st) => stages.push(st),
        Err(e) => eprintln!("bench: the .wasm flatten was not measured: {e:#}"),
    }

    // 2. The sink's path: the flattened JSON straight to Avro datums (one borrowed parse).
    let mut encoded = EncodedRows::default();
    let (mut reps, start) = (0usize, Instant::now());
    let mut rows = 0usize;
    while start.elapsed().as_secs_f64() < min_seconds {
        for j in &flat_json {
            encoded.clear();
            encode_output(j, &mut encoded).map_err(|e| anyhow::anyhow!("{e}"))?;
            rows += encoded.rows.len();
        }
        reps += 1;
    }
    let rows_per_record = rows as f64 / (n * reps).max(1) as f64;
    stages.push(stage(
        "rows to Avro datums (form-model avro_encode: the sink's path)",
        n * reps,
        start.elapsed().as_secs_f64(),
    ));

    // 3. The same plus zstd blocks of 64 KiB per table, one reused context (the sink's path).
    // Level 1: the sink's default `s3.zstd-level`.
    let mut compressor = zstd::bulk::Compressor::new(1)?;
    let (mut reps, start) = (0usize, Instant::now());
    let mut blocks = [Vec::with_capacity(BLOCK), Vec::with_capacity(BLOCK)];
    let mut compressed = 0usize;
    while start.elapsed().as_secs_f64() < min_seconds {
        for j in &flat_json {
            encoded.clear();
            encode_output(j, &mut encoded).map_err(|e| anyhow::anyhow!("{e}"))?;
            for r in &encoded.rows {
                let block = &mut blocks[r.table as usize];
                block.extend_from_slice(encoded.datum(r));
                if block.len() >= BLOCK {
                    compressed += compressor.compress(block)?.len();
                    block.clear();
                }
            }
        }
        reps += 1;
    }
    let _ = compressed;
    stages.push(stage(
        "rows to Avro datums + zstd blocks (the sink's path)",
        n * reps,
        start.elapsed().as_secs_f64(),
    ));

    // 4. For comparison, the apache-avro path: parse into rows, Avro values, apache-avro's
    // writer (zstd).
    let (mut reps, start) = (0usize, Instant::now());
    while start.elapsed().as_secs_f64() < min_seconds {
        let mut wf = Writer::with_codec(
            Table::Form.schema(),
            Vec::new(),
            Codec::Zstandard(ZstandardSettings::new(3)),
        )?;
        let mut wff = Writer::with_codec(
            Table::FormField.schema(),
            Vec::new(),
            Codec::Zstandard(ZstandardSettings::new(3)),
        )?;
        for j in &flat_json {
            let f = Flattened::from_slice(j)?;
            let (f, ff) = flattened_to_values(f).map_err(|e| anyhow::anyhow!("{e:?}"))?;
            for v in f {
                wf.append_value(v)?;
            }
            for v in ff {
                wff.append_value(v)?;
            }
        }
        let _ = wf.into_inner()?.len() + wff.into_inner()?.len();
        reps += 1;
    }
    stages.push(stage(
        "apache-avro path: rows, Avro values, Writer zstd (reference)",
        n * reps,
        start.elapsed().as_secs_f64(),
    ));
    Ok((stages, rows_per_record))
}

/// Rows the sink writes (both tables) for `events` enriched with `forms`: the sink's own
/// flatten and row encoding over every record, on two threads. Every output variant of one
/// input writes these rows; "bytes per row" divides by this.
pub(crate) fn count_rows(events: &[Event], forms: &[Vec<u8>]) -> anyhow::Result<u64> {
    let count = |events: &[Event]| -> anyhow::Result<u64> {
        let (mut flat, mut encoded, mut rows) = (Vec::new(), EncodedRows::default(), 0u64);
        for (i, e) in events.iter().enumerate() {
            let form = forms.get(e.form).map_or(&b"null"[..], |f| &f[..]);
            let rec = crate::events::enriched(&e.value, form, "form.enriched", 0, i as i64);
            flat.clear();
            form_model::flatten_to_json(&rec, &mut flat)?;
            encoded.clear();
            encode_output(&flat, &mut encoded).map_err(|e| anyhow::anyhow!("{e}"))?;
            rows += encoded.rows.len() as u64;
        }
        Ok(rows)
    };
    let (a, b) = events.split_at(events.len() / 2);
    std::thread::scope(|s| {
        let h = s.spawn(|| count(a));
        let rb = count(b)?;
        Ok(h.join().expect("row count thread panicked")? + rb)
    })
}

/// The sink's Avro block size (uncompressed bytes).
const BLOCK: usize = 64 * 1024;

/// Records per `process` call of the wasm chain (the sink's batch size is of this order).
/// Records per call: the chunks the sink's two transform threads take (s3-sink
/// `transform.rs`, `CHUNK_RECORDS`; 32–128 per call cost the same, 1,000 ~35% more).
const WASM_BATCH: usize = 32;

fn wasm_flatten(inputs: &[Vec<u8>], min_seconds: f64) -> anyhow::Result<Stage> {
    use form_transforms::{ChainOptions, Input, TransformChain, TransformStep};
    let opts = ChainOptions {
        watch: false,
        rebuild_every_records: 0,
        ..ChainOptions::default()
    };
    let mut chain = TransformChain::new(&[TransformStep::new("form-flatten")], opts)?;
    let batch = Input::numbered(inputs, 0);
    // Same output as native on the first record.
    let first = chain
        .process(&batch[..1])
        .pop()
        .expect("one result")
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut native = Vec::new();
    form_model::flatten_to_json(&inputs[0], &mut native)?;
    anyhow::ensure!(
        first.first().map(|o| &o.value) == Some(&native),
        "the .wasm output differs from the native flatten on the first record"
    );
    let (mut n, start) = (0usize, Instant::now());
    while start.elapsed().as_secs_f64() < min_seconds {
        for chunk in batch.chunks(WASM_BATCH) {
            let out = chain.process(chunk);
            n += out.len();
        }
    }
    Ok(stage(
        "flatten .wasm (form-transforms chain, 32 per call)",
        n,
        start.elapsed().as_secs_f64(),
    ))
}

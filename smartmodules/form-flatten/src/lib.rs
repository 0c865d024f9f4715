//! `form-flatten`: a `map` SmartModule. One output record per input record (so the output
//! keeps the input offset), key kept, value `{"form":[…],"form_field":[…]}` as
//! `form_model::flatten_to_json` writes it.
//!
//! A record that cannot be flattened, with the parameter `on-error` (`with:` in a
//! `transforms:` entry, `-e on-error=…` for `fluvio consume`):
//! - `fail` (the default): a record-level error whose message is
//!   `<dlq reason>: <detail naming the field>` (the s3-sink dead-letters it; on a Fluvio SPU
//!   it ends the stream);
//! - `emit`: one output record `{"error":{"reason":…,"detail":…},"input":…}` instead
//!   (`form_model::write_error_record`), so the stream goes on.
//!
//! Any other value, or any other parameter, is refused by `init`: the module does not load.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};

use fluvio_smartmodule::{RecordData, Result, SmartModuleRecord, eyre};
use form_model::OnError;

// The WASM entry point: hand-written glue, not `#[smartmodule(map)]`, whose glue leaks
// every call's output buffer (see abi.rs).
#[cfg(target_arch = "wasm32")]
mod abi;

// Free lists by size class in front of dlmalloc (see alloc.rs): only where the module is
// single-threaded.
#[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
mod alloc;

/// `on-error: emit`, as `init` read it. The engine calls `init` once per instance, before
/// any record; the module runs on one thread.
static EMIT_ERROR_RECORDS: AtomicBool = AtomicBool::new(false);

/// Reads the module's parameters (called by the WASM entry point `init`).
pub fn init(params: &BTreeMap<String, String>) -> Result<()> {
    let mode = OnError::from_params(params.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .map_err(|e| eyre!(e))?;
    EMIT_ERROR_RECORDS.store(mode == OnError::Emit, Ordering::Relaxed);
    Ok(())
}

/// Flattens one record (called by the WASM entry point for each record of a batch).
pub fn map(record: &SmartModuleRecord) -> Result<(Option<RecordData>, RecordData)> {
    if cfg!(feature = "always-fail") {
        return Err(eyre!("always-fail test build: refuses every record"));
    }
    if cfg!(feature = "identity") {
        return Ok((record.key.clone(), record.value.clone()));
    }
    let input = record.value.as_ref();
    let mut out = Vec::with_capacity(input.len() * 3 + 256);
    if EMIT_ERROR_RECORDS.load(Ordering::Relaxed) {
        form_model::flatten_or_error_record(input, &mut out);
    } else {
        form_model::flatten_to_json(input, &mut out).map_err(|e| eyre!(e.to_detail()))?;
    }
    #[cfg(feature = "upper-title")]
    let out = upper_title(&out);
    Ok((record.key.clone(), RecordData::from(out)))
}

#[cfg(feature = "upper-title")]
fn upper_title(out: &[u8]) -> Vec<u8> {
    let Ok(mut rows) = form_model::Flattened::from_slice(out) else {
        return out.to_vec();
    };
    for (col, rows) in [
        ("title", &mut rows.form),
        ("form_title", &mut rows.form_field),
    ] {
        for row in rows.iter_mut() {
            if let Some(value) = row.get_mut(col)
                && let Some(s) = value.as_str()
            {
                *value = s.to_uppercase().into();
            }
        }
    }
    rows.to_vec()
}

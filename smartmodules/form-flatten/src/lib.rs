//! `form-flatten`: a `map` SmartModule. One output record per input record (so the output
//! keeps the input offset), key kept, value `{"form":[…],"form_field":[…]}` as
//! `form_model::flatten_to_json` writes it. A record that cannot be flattened is a
//! record-level error whose message is `<dlq reason>: <detail naming the field>`.

use fluvio_smartmodule::{RecordData, Result, SmartModuleRecord, eyre};

// The WASM entry point: hand-written glue, not `#[smartmodule(map)]`, whose glue leaks
// every call's output buffer (see abi.rs).
#[cfg(target_arch = "wasm32")]
mod abi;

// Free lists by size class in front of dlmalloc (see alloc.rs): only where the module is
// single-threaded.
#[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
mod alloc;

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
    form_model::flatten_to_json(input, &mut out).map_err(|e| eyre!(e.to_detail()))?;
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

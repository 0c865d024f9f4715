//! Shared by the runner's tests, bench and examples: finding the built module, building
//! the test variants, making enriched records.
#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};

use form_transforms::resolve_module_from;

/// The workspace root (where `make build-smartmodules` writes `target/...`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// The built `form_flatten.wasm`, found by the resolution rule from the workspace root.
/// Fails (does not skip) when it is missing.
pub fn flatten_wasm() -> PathBuf {
    match resolve_module_from("form-flatten", &workspace_root()) {
        Ok(p) => p,
        Err(e) => {
            panic!("{e}\n\nThe SmartModule is not built: run `make build-smartmodules` first.")
        }
    }
}

/// Builds the form-flatten SmartModule with `feature` and copies the result to `dest`.
pub fn build_variant(feature: &str, dest: &Path) {
    form_transforms::variants::build_flatten_variant(&workspace_root(), feature, dest)
        .unwrap_or_else(|e| panic!("{e}"));
}

/// The module an example runs: its first argument when given and not empty, else the built
/// `form_flatten.wasm`.
pub fn wasm_arg(args: &[String]) -> String {
    args.first()
        .filter(|a| !a.is_empty())
        .cloned()
        .unwrap_or_else(|| flatten_wasm().to_string_lossy().into_owned())
}

/// `count` enriched records with 1–9 fields (`n % 9 + 1`, about 5 on average): the bench's mix.
pub fn mixed_records(count: u64) -> Vec<Vec<u8>> {
    (0..count)
        .map(|n| enriched(n, (n % 9 + 1) as usize))
        .collect()
}

/// A valid enriched record for form `f-{n}` titled `Title {n} é` with `fields` fields
/// (kinds cycling through the generator's).
pub fn enriched(n: u64, fields: usize) -> Vec<u8> {
    let kinds = [
        r#"{"id":"o","title":"Name?","reference":"r1","type":"open_text","validations":{"required":true,"max_length":100},"attachment":{"type":"image","href":"https://images.example.com/x"}}"#,
        r#"{"id":"p","title":"Phone?","reference":"r2","type":"phone_number","properties":{"default_country_code":"us"},"validations":{"required":false}}"#,
        r#"{"id":"m","title":"Pick ✓","reference":"r3","type":"multiple_choice","properties":{"choices":[{"id":"a","label":"Oui","ref":"a1"},{"id":"b","label":"Non","ref":"b1"}],"allow_multiple_selection":false,"randomize":true,"allow_other_choice":false,"description":"d"},"validations":{"required":true}}"#,
        r#"{"id":"r","title":"Rate","reference":"r4","type":"rating","properties":{"steps":5,"shape":"star"},"validations":{"required":false}}"#,
        r#"{"id":"s","title":"Scale","reference":"r5","type":"opinion_scale","properties":{"steps":10,"start_at_one":true,"labels":{"left":"bad","center":"ok","right":"good"}}}"#,
        r#"{"id":"n","title":"Age","reference":"r6","type":"number","validations":{"min_value":0,"max_value":120,"required":true}}"#,
        r#"{"id":"t","title":"Thanks","reference":"r7","type":"statement","properties":{"button_text":"Go","hide_marks":true}}"#,
        r#"{"id":"y","title":"Adult?","reference":"r8","type":"yes_no","properties":{"description":"yes or no"},"validations":{"required":true}}"#,
    ];
    let fields: Vec<&str> = (0..fields)
        .map(|i| kinds[(n as usize + i) % kinds.len()])
        .collect();
    format!(
        r#"{{"event":{{"form_id":"f-{n}","form_title":"t","event_happened_at":"2024-05-0{d} 10:00:00","event_type":"updated"}},"form":{{"id":"f-{n}","type":"quiz","title":"Title {n} é","settings":{{"language":"en","progress_bar":"proportion","show_time_to_complete":true,"show_number_of_submissions":false,"redirect_after_submit_url":"https://example.com","meta":{{"allow_indexing":false,"description":"x"}}}},"fields":[{}]}},"retrieved_timestamp":"2024-05-01T10:00:00.5Z","source":{{"topic":"form.events","partition":0,"offset":{n}}}}}"#,
        fields.join(","),
        d = 1 + n % 9,
    )
    .into_bytes()
}

//! The `transforms:` entries of a connector's YAML file.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One `transforms:` entry.
///
/// ```yaml
/// transforms:
///   - uses: form-flatten
///     with:
///       some-param: value
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct TransformStep {
    /// The SmartModule: a path to a `.wasm` file, or a name (`form-flatten`) looked up as
    /// `form_flatten.wasm` in `$FORM_ETL_SMARTMODULE_DIR` then
    /// `target/wasm32-unknown-unknown/release/`.
    pub uses: String,
    /// Parameters passed to the module's `init`: strings as they are, other values as their
    /// JSON text.
    #[serde(default)]
    pub with: BTreeMap<String, serde_json::Value>,
}

impl TransformStep {
    /// A step without parameters.
    pub fn new(uses: impl Into<String>) -> Self {
        Self {
            uses: uses.into(),
            with: BTreeMap::new(),
        }
    }

    /// The `with:` parameters as the engine's string map.
    pub(crate) fn params(&self) -> BTreeMap<String, String> {
        self.with
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), v)
            })
            .collect()
    }
}

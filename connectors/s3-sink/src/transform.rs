//! The `transforms:` chain as the pipeline sees it: a batch of records in, per record either the
//! output values or the chain's error message.

/// A synchronous transform chain (runs on the pipeline thread).
pub(crate) trait Transform: Send {
    /// One result per input, in order: the output record values, or the error of the record.
    fn process(&mut self, inputs: &[(Option<&[u8]>, &[u8])]) -> Vec<Result<Vec<Vec<u8>>, String>>;

    /// `(uses, sha256)` of every module currently in the chain (recorded in each file).
    fn digests(&self) -> Vec<(String, String)>;
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Passes values through (tests feed already-flattened values).
    #[derive(Debug)]
    pub(crate) struct Identity;

    impl Transform for Identity {
        fn process(
            &mut self,
            inputs: &[(Option<&[u8]>, &[u8])],
        ) -> Vec<Result<Vec<Vec<u8>>, String>> {
            inputs.iter().map(|(_, v)| Ok(vec![v.to_vec()])).collect()
        }

        fn digests(&self) -> Vec<(String, String)> {
            vec![("identity".into(), "0".repeat(64))]
        }
    }
}

/// The form-flatten rules run natively (the same `form_model::flatten` the SmartModule wraps).
/// Used until the WASM runner is wired in, and by `--transform native`.
#[derive(Debug, Default)]
pub(crate) struct NativeFlatten;

impl Transform for NativeFlatten {
    fn process(&mut self, inputs: &[(Option<&[u8]>, &[u8])]) -> Vec<Result<Vec<Vec<u8>>, String>> {
        inputs
            .iter()
            .map(|(_, v)| {
                let mut out = Vec::new();
                form_model::flatten_to_json(v, &mut out)
                    .map(|()| vec![out])
                    .map_err(|e| e.to_string())
            })
            .collect()
    }

    fn digests(&self) -> Vec<(String, String)> {
        vec![("form-flatten(native)".into(), String::new())]
    }
}

//! The `transforms:` chain as the pipeline sees it: `.wasm` SmartModules run in-process by
//! `form-transforms` (fluvio-smartengine), synchronously, on the pipeline thread.
//!
//! There is no native fallback: a module that cannot be found or loaded stops the sink at
//! start with the reason (and what to do about it).
//!
//! # Hot swap and replays
//!
//! The chain watches its `.wasm` files and swaps a changed module in at the start of a
//! `process` call, so every record of one call is transformed by one module version; its
//! [`Transform::generation`] then changes. The pipeline closes every open segment of every
//! partition at that point (a wall-clock boundary, sealed in the consumer group like an idle
//! flush), so the `form_etl.transforms` digests in a file's metadata hold for all its rows.
//!
//! A replay after a crash reproduces the object keys and segment boundaries (deterministic
//! rules, or the seal recorded with the committed offset), but the rows' content comes from
//! whichever module is current when the records are replayed, and each rewritten file records
//! that module's digest. So "the same offsets give the same keys and the same rows" holds
//! only for one module version: across an upgrade, a replayed segment is rewritten with the
//! new module's rows under the old keys. That is the accepted meaning of a transform upgrade
//! (the upgrade applies from the first uncommitted offset on). Two consequences:
//! - A segment replayed under a seal must end exactly at the sealed offset, so a swap during
//!   such a replay does not close it early: that file lists both digests (old and new).
//! - A new module that sends a record's rows to a different table or event date than the old
//!   one did could, after a crash in the middle of the upgrade, leave an object of the first
//!   run that the replay does not overwrite. `form-flatten` versions keep table and date.

use anyhow::Context as _;
use form_transforms::{ChainOptions, Input, Output, TransformChain, TransformError, TransformStep};

/// A synchronous transform chain (runs on the pipeline thread).
pub(crate) trait Transform: Send {
    /// One result per input, in order: the output records, or why the chain refused it.
    fn process(&mut self, inputs: &[Input<'_>]) -> Vec<Result<Vec<Output>, TransformError>>;

    /// `(uses, sha256)` of every module currently in the chain (recorded in each file).
    fn digests(&self) -> Vec<(String, String)>;

    /// Changes whenever a changed module was swapped in (read after `process`: the modules
    /// that processed that batch).
    fn generation(&self) -> u64;

    /// Takes a module the watcher has ready, without a batch (an idle sink swaps too);
    /// `process` does it by itself.
    fn apply_pending(&mut self) {}

    /// How many changed modules were refused so far (the old ones kept running).
    fn rejections(&self) -> u64 {
        0
    }
}

impl Transform for TransformChain {
    fn process(&mut self, inputs: &[Input<'_>]) -> Vec<Result<Vec<Output>, TransformError>> {
        TransformChain::process(self, inputs)
    }

    fn digests(&self) -> Vec<(String, String)> {
        self.module_digests()
            .iter()
            .map(|d| (d.uses.clone(), d.sha256.clone()))
            .collect()
    }

    fn generation(&self) -> u64 {
        TransformChain::generation(self)
    }

    fn apply_pending(&mut self) {
        TransformChain::apply_pending(self);
    }

    fn rejections(&self) -> u64 {
        TransformChain::rejections(self).0
    }
}

/// Resolves, loads and checks the `transforms:` modules (on the canary record). With `watch`,
/// the chain also watches the files for hot swap.
pub(crate) fn load_chain(steps: &[TransformStep], watch: bool) -> anyhow::Result<TransformChain> {
    let options = ChainOptions {
        watch,
        ..ChainOptions::default()
    };
    TransformChain::new(steps, options).context("`transforms`: loading the SmartModule chain")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// Passes values through (tests feed already-flattened values); its generation is set by
    /// the test through the shared counter.
    #[derive(Debug, Default)]
    pub(crate) struct Identity {
        pub(crate) generation: Arc<AtomicU64>,
    }

    impl Transform for Identity {
        fn process(&mut self, inputs: &[Input<'_>]) -> Vec<Result<Vec<Output>, TransformError>> {
            inputs
                .iter()
                .map(|i| {
                    Ok(vec![Output {
                        key: i.key.map(<[u8]>::to_vec),
                        value: i.value.to_vec(),
                    }])
                })
                .collect()
        }

        fn digests(&self) -> Vec<(String, String)> {
            let g = self.generation.load(Ordering::SeqCst);
            vec![("identity".into(), format!("{g:064}"))]
        }

        fn generation(&self) -> u64 {
            self.generation.load(Ordering::SeqCst)
        }
    }
}

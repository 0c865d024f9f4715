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

use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Context as _;
use connector_common::dlq::DlqReason;
use form_model::avro_encode::{EncodeError, EncodedRows, encode_output};
use form_transforms::{ChainOptions, Input, Output, TransformChain, TransformError, TransformStep};
use tracing::{info, warn};

/// One record's rows, encoded and checked (all of them), or why it goes to the dead-letter
/// queue.
pub(crate) type Prepared = Result<EncodedRows, (DlqReason, String)>;

/// A synchronous transform chain (runs on the pipeline thread).
pub(crate) trait Transform: Send {
    /// One result per input, in order: the output records, or why the chain refused it.
    fn process(&mut self, inputs: &[Input<'_>]) -> Vec<Result<Vec<Output>, TransformError>>;

    /// Transforms and encodes `inputs`: one result per input, in order. The default runs on
    /// the calling thread; [`ParallelChain`] splits the batch over two threads.
    fn prepare(&mut self, inputs: &[Input<'_>]) -> Vec<Prepared> {
        prepare_with(self, inputs)
    }

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

/// Transforms `inputs` with `t` and encodes each record's outputs.
fn prepare_with<T: Transform + ?Sized>(t: &mut T, inputs: &[Input<'_>]) -> Vec<Prepared> {
    t.process(inputs)
        .into_iter()
        .map(|out| match out {
            Err(e) => Err((DlqReason::TransformError, e.message)),
            Ok(outs) => {
                let mut rows = EncodedRows::default();
                encode_rows(&outs, &mut rows).map(|()| rows)
            }
        })
        .collect()
}

/// The rows of one record's transform outputs, encoded and checked: all of them or a dead
/// letter.
pub(crate) fn encode_rows(
    outputs: &[Output],
    rows: &mut EncodedRows,
) -> Result<(), (DlqReason, String)> {
    for o in outputs {
        if let Err(e) = encode_output(&o.value, rows) {
            rows.clear();
            let reason = match e {
                EncodeError::NotRows(_) => DlqReason::TransformError,
                EncodeError::Mismatch(_) => DlqReason::SchemaMismatch,
            };
            return Err((reason, e.to_string()));
        }
    }
    Ok(())
}

/// Batches smaller than this run on one thread (a thread hand-off costs more than it saves).
const PARALLEL_MIN_RECORDS: usize = 64;
/// Records per transform call when a batch is shared by two threads (the engine's cost per
/// call is small: `examples/profile_flatten.rs` gives the same µs per record at 80 and 1,000).
const CHUNK_RECORDS: usize = 32;

/// The sink's chain: the watched chain, plus a second instance of the same modules on another
/// thread; both take chunks of each batch until none is left (the records of a batch are
/// independent; the WASM call and the row encoding are most of the sink's CPU).
///
/// Both halves always run the same module bytes: the helper is rebuilt from the files
/// whenever the watched chain swaps, and used only if its sha256s equal the watched chain's.
/// A swap that lands inside a batch (at the start of one of the watched chain's calls) makes
/// the whole batch run again on the watched chain, so one batch never mixes module versions.
pub(crate) struct ParallelChain {
    main: TransformChain,
    steps: Vec<TransformStep>,
    helper: Option<TransformChain>,
    /// The watched chain's generation the helper was last built (or tried) for.
    helper_generation: Option<u64>,
    /// The helper's thread, kept for the sink's life: a new thread per batch (`clone3`, the
    /// engine's per-thread set-up) was ~30% of the pipeline thread's samples.
    pool: Option<rayon_core::ThreadPool>,
}

impl ParallelChain {
    /// The watched chain, with a helper if this machine has more than one core.
    pub(crate) fn load(steps: &[TransformStep]) -> anyhow::Result<Self> {
        let main = load_chain(steps, true)?;
        let mut chain = Self {
            main,
            steps: steps.to_vec(),
            helper: None,
            helper_generation: None,
            pool: None,
        };
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        if cores < 2 {
            info!("One core: the transform chain runs on the pipeline thread only.");
            chain.helper_generation = Some(u64::MAX);
            return Ok(chain);
        }
        match rayon_core::ThreadPoolBuilder::new()
            .num_threads(1)
            .thread_name(|_| "pipeline-helper".into())
            .build()
        {
            Ok(pool) => {
                chain.pool = Some(pool);
                chain.helper_ready();
            }
            Err(e) => {
                warn!(error = %e, "Could not start the helper thread: the transforms run on the pipeline thread only.");
                chain.helper_generation = Some(u64::MAX);
            }
        }
        Ok(chain)
    }

    /// Whether the helper runs the watched chain's modules, (re)building it once per
    /// generation.
    fn helper_ready(&mut self) -> bool {
        if self.helper_generation == Some(u64::MAX) {
            return false;
        }
        let generation = self.main.generation();
        if self.helper_generation != Some(generation) {
            self.helper_generation = Some(generation);
            self.helper = None;
            let options = ChainOptions {
                watch: false,
                ..ChainOptions::default()
            };
            match TransformChain::new(&self.steps, options) {
                Ok(h) if same_modules(&h, &self.main) => self.helper = Some(h),
                Ok(_) => warn!(
                    "The module files changed again while the helper instance loaded: the \
                     transforms run on one thread until the next swap."
                ),
                Err(e) => warn!(
                    error = %format!("{e:#}"),
                    "Could not load a second instance of the transforms: they run on one \
                     thread until the next swap."
                ),
            }
        }
        self.helper.is_some()
    }
}

fn same_modules(a: &TransformChain, b: &TransformChain) -> bool {
    let sums = |c: &TransformChain| {
        c.module_digests()
            .iter()
            .map(|d| d.sha256.clone())
            .collect::<Vec<_>>()
    };
    sums(a) == sums(b)
}

impl Transform for ParallelChain {
    fn process(&mut self, inputs: &[Input<'_>]) -> Vec<Result<Vec<Output>, TransformError>> {
        self.main.process(inputs)
    }

    fn prepare(&mut self, inputs: &[Input<'_>]) -> Vec<Prepared> {
        self.main.apply_pending();
        if inputs.len() < PARALLEL_MIN_RECORDS || !self.helper_ready() {
            return prepare_with(&mut self.main, inputs);
        }
        let generation = self.main.generation();
        let chunks: Vec<&[Input<'_>]> = inputs.chunks(CHUNK_RECORDS).collect();
        let next = AtomicUsize::new(0);
        // Both threads take the next chunk until none is left: on a busy machine the helper
        // may start late or run slowly, and the pipeline thread then does more of the batch
        // instead of waiting for it.
        let take_chunks = |chain: &mut TransformChain| {
            let mut done = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(chunk) = chunks.get(i) else {
                    return done;
                };
                done.push((i, prepare_with(chain, chunk)));
            }
        };
        let Self {
            main, helper, pool, ..
        } = self;
        let helper = helper.as_mut().expect("helper_ready");
        let pool = pool.as_ref().expect("helper_ready: a pool");
        let mut theirs = Vec::new();
        let mut results = pool.in_place_scope(|s| {
            s.spawn(|_| theirs = take_chunks(helper));
            take_chunks(main)
        });
        results.append(&mut theirs);
        if main.generation() != generation {
            // Swapped at the start of one of the watched chain's calls: some chunks ran the
            // old module. Run the whole batch again on the new one (one call: one version).
            return prepare_with(main, inputs);
        }
        results.sort_unstable_by_key(|(i, _)| *i);
        debug_assert_eq!(results.len(), chunks.len());
        results.into_iter().flat_map(|(_, p)| p).collect()
    }

    fn digests(&self) -> Vec<(String, String)> {
        self.main.digests()
    }

    fn generation(&self) -> u64 {
        TransformChain::generation(&self.main)
    }

    fn apply_pending(&mut self) {
        TransformChain::apply_pending(&mut self.main);
    }

    fn rejections(&self) -> u64 {
        TransformChain::rejections(&self.main).0
    }
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

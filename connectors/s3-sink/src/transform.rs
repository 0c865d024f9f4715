//! The `transforms:` chain as the pipeline sees it: `.wasm` SmartModules run in-process by
//! `form-transforms` (fluvio-smartengine), synchronously, on the pipeline thread.
//!
//! There is no native fallback: a module that cannot be found or loaded stops the sink at
//! start with the reason (and what to do about it).
//!
//! # Hot swap and replays
//!
//! The chain watches its `.wasm` files; the pipeline swaps a changed module in only between
//! batches ([`Transform::apply_pending`], at the start of each batch and on every tick), so
//! every record of one batch is transformed by one module version; its
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
use form_model::avro::Schemas;
use form_model::avro_encode::{EncodeError, EncodedRows, encode_output_with};
use form_transforms::{ChainOptions, Input, Output, TransformChain, TransformError, TransformStep};
use tracing::{info, warn};

/// One record's rows, encoded and checked (all of them), with the transform's outputs they
/// come from (the pipeline encodes them again if the schemas changed meanwhile).
#[derive(Debug)]
pub(crate) struct PreparedRows {
    pub(crate) rows: EncodedRows,
    /// The schema versions the rows were encoded with.
    pub(crate) versions: [u32; 2],
    pub(crate) outputs: Vec<Output>,
}

/// Why a record's outputs could not be encoded as they are.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// A dead letter.
    Dlq(DlqReason, String),
    /// A row does not fit the schemas: the pipeline decides (schema evolution).
    Mismatch(Vec<Output>),
}

/// One record, transformed and encoded, or refused.
pub(crate) type Prepared = Result<PreparedRows, Refusal>;

/// What [`Transform::prepare_each`] hands prepared records to: `(index of the first input,
/// results)`; `Ok(false)` or an error stops the batch.
pub(crate) type Accept<'a> = dyn FnMut(usize, Vec<Prepared>) -> anyhow::Result<bool> + 'a;

/// A synchronous transform chain (runs on the pipeline thread).
pub(crate) trait Transform: Send {
    /// One result per input, in order: the output records, or why the chain refused it.
    /// Never swaps modules (see [`Transform::apply_pending`]).
    fn process(&mut self, inputs: &[Input<'_>]) -> Vec<Result<Vec<Output>, TransformError>>;

    /// Transforms and encodes `inputs` and hands the results, in input order, to `accept`
    /// (on the calling thread) as `(index of the first, results)`; stops when `accept` answers
    /// `Ok(false)` or an error, and returns that. The default prepares the batch chunk by
    /// chunk on the calling thread; [`ParallelChain`] shares it with a second thread and
    /// hands over each chunk as soon as it and those before it are ready, so the pipeline
    /// thread files the first rows while the other thread still transforms.
    ///
    /// Never swaps modules: the caller does, between batches, with [`Transform::apply_pending`].
    fn prepare_each(
        &mut self,
        inputs: &[Input<'_>],
        schemas: &Schemas,
        accept: &mut Accept<'_>,
    ) -> anyhow::Result<bool> {
        prepare_in_chunks(self, inputs, schemas, accept)
    }

    /// `(uses, sha256)` of every module currently in the chain (recorded in each file).
    fn digests(&self) -> Vec<(String, String)>;

    /// Changes whenever a changed module was swapped in (read after `process`: the modules
    /// that processed that batch).
    fn generation(&self) -> u64;

    /// Takes a module the watcher has ready: the only place modules swap (the pipeline calls
    /// it before each batch and on every tick).
    fn apply_pending(&mut self) {}

    /// How many changed modules were refused so far (the old ones kept running).
    fn rejections(&self) -> u64 {
        0
    }
}

impl Transform for TransformChain {
    fn process(&mut self, inputs: &[Input<'_>]) -> Vec<Result<Vec<Output>, TransformError>> {
        TransformChain::process_held(self, inputs)
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

/// Transforms `inputs` with `t` and encodes each record's outputs with `schemas`.
fn prepare_with<T: Transform + ?Sized>(
    t: &mut T,
    inputs: &[Input<'_>],
    schemas: &Schemas,
) -> Vec<Prepared> {
    t.process(inputs)
        .into_iter()
        .map(|out| match out {
            Err(e) => Err(Refusal::Dlq(DlqReason::TransformError, e.message)),
            Ok(outs) => {
                // The datums are shorter than the JSON text they come from (no keys): one
                // allocation, where growing from empty took ~10 per record.
                let mut rows = EncodedRows {
                    bytes: Vec::with_capacity(outs.iter().map(|o| o.value.len()).sum()),
                    rows: Vec::with_capacity(16),
                };
                match encode_rows(&outs, schemas, &mut rows) {
                    Ok(()) => Ok(PreparedRows {
                        rows,
                        versions: schemas.versions(),
                        outputs: outs,
                    }),
                    Err(EncodeError::Mismatch(_)) => Err(Refusal::Mismatch(outs)),
                    Err(e @ EncodeError::NotRows(_)) => {
                        Err(Refusal::Dlq(DlqReason::TransformError, e.to_string()))
                    }
                }
            }
        })
        .collect()
}

/// [`Transform::prepare_each`] on the calling thread: `CHUNK_RECORDS` records per call (the
/// engine's buffers per call stay small), each chunk handed to `accept` before the next.
fn prepare_in_chunks<T: Transform + ?Sized>(
    t: &mut T,
    inputs: &[Input<'_>],
    schemas: &Schemas,
    accept: &mut Accept<'_>,
) -> anyhow::Result<bool> {
    for (i, chunk) in inputs.chunks(CHUNK_RECORDS).enumerate() {
        if !accept(i * CHUNK_RECORDS, prepare_with(t, chunk, schemas))? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The rows of one record's transform outputs, encoded and checked: all of them or none.
pub(crate) fn encode_rows(
    outputs: &[Output],
    schemas: &Schemas,
    rows: &mut EncodedRows,
) -> Result<(), EncodeError> {
    for o in outputs {
        if let Err(e) = encode_output_with(&o.value, schemas, rows) {
            rows.clear();
            return Err(e);
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
/// whenever the watched chain swaps (between batches only), and used only if its sha256s equal
/// the watched chain's.
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
        self.main.process_held(inputs)
    }

    fn prepare_each(
        &mut self,
        inputs: &[Input<'_>],
        schemas: &Schemas,
        accept: &mut Accept<'_>,
    ) -> anyhow::Result<bool> {
        if inputs.len() < PARALLEL_MIN_RECORDS || !self.helper_ready() {
            return prepare_in_chunks(&mut self.main, inputs, schemas, accept);
        }
        let chunks: Vec<&[Input<'_>]> = inputs.chunks(CHUNK_RECORDS).collect();
        let n = chunks.len();
        let next = AtomicUsize::new(0);
        let Self {
            main, helper, pool, ..
        } = self;
        let helper = helper.as_mut().expect("helper_ready");
        let pool = pool.as_ref().expect("helper_ready: a pool");
        let (done_tx, done_rx) = std::sync::mpsc::channel::<(usize, Vec<Prepared>)>();
        let (chunks, next) = (&chunks, &next);
        pool.in_place_scope(|s| {
            // The helper takes the next chunk until none is left (on a busy machine it may
            // start late or run slowly: the pipeline thread then takes more of them).
            s.spawn(move |_| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(chunk) = chunks.get(i) else {
                        return;
                    };
                    if done_tx.send((i, prepare_with(helper, chunk, schemas))).is_err() {
                        return;
                    }
                }
            });
            // The pipeline thread hands over every chunk that is ready in order, and
            // otherwise transforms the next one, or waits for the helper's.
            let mut ready: Vec<Option<Vec<Prepared>>> = (0..n).map(|_| None).collect();
            let mut handed = 0;
            let outcome = 'batch: loop {
                while let Ok((i, prepared)) = done_rx.try_recv() {
                    ready[i] = Some(prepared);
                }
                while let Some(prepared) = ready.get_mut(handed).and_then(Option::take) {
                    match accept(handed * CHUNK_RECORDS, prepared) {
                        Ok(true) => handed += 1,
                        stop => break 'batch stop,
                    }
                }
                if handed == n {
                    break Ok(true);
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                if let Some(chunk) = chunks.get(i) {
                    ready[i] = Some(prepare_with(main, chunk, schemas));
                    continue;
                }
                match done_rx.recv() {
                    Ok((i, prepared)) => ready[i] = Some(prepared),
                    Err(_) => {
                        break Err(anyhow::anyhow!(
                            "internal: the transform helper stopped with chunk {handed} of {n} not done"
                        ));
                    }
                }
            };
            // Stopped early: the helper takes no further chunk (the scope waits for its last).
            next.store(n, Ordering::Relaxed);
            outcome
        })
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
        /// The newest module version the "watcher" has ready (tests bump it).
        pub(crate) generation: Arc<AtomicU64>,
        /// The version in use: taken from `generation` by `apply_pending`, as the chain does.
        pub(crate) applied: u64,
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
            vec![("identity".into(), format!("{:064}", self.applied))]
        }

        fn generation(&self) -> u64 {
            self.applied
        }

        fn apply_pending(&mut self) {
            self.applied = self.generation.load(Ordering::SeqCst);
        }
    }

    /// The built `form-flatten` module (`make build-smartmodules`).
    fn flatten_step() -> TransformStep {
        TransformStep::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../target/wasm32-unknown-unknown/release/form_flatten.wasm"
        ))
    }

    /// 1,000 records, every 7th one not JSON (a dead letter).
    fn records() -> Vec<Vec<u8>> {
        (0..1000)
            .map(|i| {
                if i % 7 == 3 {
                    format!("not json {i}").into_bytes()
                } else {
                    form_model::canary_record()
                }
            })
            .collect()
    }

    /// `values` as inputs at offsets 0, 1, ….
    fn inputs(values: &[Vec<u8>]) -> Vec<Input<'_>> {
        Input::numbered(values, 0)
    }

    /// A prepared result as comparable data.
    fn summary(p: &Prepared) -> Result<Vec<(u8, i64, Vec<u8>)>, String> {
        match p {
            Ok(p) => Ok(p
                .rows
                .rows
                .iter()
                .map(|r| (r.table as u8, r.day, p.rows.datum(r).to_vec()))
                .collect()),
            Err(Refusal::Dlq(reason, detail)) => Err(format!("{reason:?}: {detail}")),
            Err(Refusal::Mismatch(_)) => Err("mismatch".into()),
        }
    }

    #[test]
    fn both_threads_hand_over_every_chunk_in_order_as_one_thread_prepares_it() {
        let values = records();
        let inputs = inputs(&values);
        let mut one = load_chain(&[flatten_step()], false).expect("form-flatten is built");
        let expected: Vec<_> = prepare_with(&mut one, &inputs, &Schemas::initial())
            .iter()
            .map(summary)
            .collect();
        assert!(expected.iter().any(Result::is_err) && expected.iter().any(Result::is_ok));

        let mut two = ParallelChain::load(&[flatten_step()]).unwrap();
        for _ in 0..3 {
            let mut got = Vec::new();
            let more = two
                .prepare_each(&inputs, &Schemas::initial(), &mut |first, prepared| {
                    assert_eq!(first, got.len(), "handed over in order");
                    got.extend(prepared.iter().map(summary));
                    Ok(true)
                })
                .unwrap();
            assert!(more);
            assert_eq!(got, expected);
        }
    }

    #[test]
    fn a_stop_or_an_error_ends_the_batch_at_that_chunk() {
        let values = records();
        let inputs = inputs(&values);
        let mut two = ParallelChain::load(&[flatten_step()]).unwrap();
        let mut calls = 0;
        let more = two
            .prepare_each(&inputs, &Schemas::initial(), &mut |_, _| {
                calls += 1;
                Ok(calls < 3)
            })
            .unwrap();
        assert!(!more);
        assert_eq!(calls, 3);
        let mut calls = 0;
        let e = two
            .prepare_each(&inputs, &Schemas::initial(), &mut |_, _| {
                calls += 1;
                anyhow::ensure!(calls < 2, "full disk");
                Ok(true)
            })
            .unwrap_err();
        assert_eq!(e.to_string(), "full disk");
        assert_eq!(calls, 2);
        // The chain is still usable afterwards.
        let mut handed = 0;
        assert!(
            two.prepare_each(&inputs, &Schemas::initial(), &mut |_, prepared| {
                handed += prepared.len();
                Ok(true)
            })
            .unwrap()
        );
        assert_eq!(handed, inputs.len());
    }

    #[test]
    fn a_small_batch_runs_on_one_thread_chunk_by_chunk_and_stops_where_asked() {
        // Under PARALLEL_MIN_RECORDS: the pipeline thread alone, 32 records per chunk.
        let values = records();
        let inputs = inputs(&values[..PARALLEL_MIN_RECORDS - 1]);
        let mut one = load_chain(&[flatten_step()], false).expect("form-flatten is built");
        let expected: Vec<_> = prepare_with(&mut one, &inputs, &Schemas::initial())
            .iter()
            .map(summary)
            .collect();
        let mut two = ParallelChain::load(&[flatten_step()]).unwrap();
        let mut got = Vec::new();
        let mut firsts = Vec::new();
        assert!(
            two.prepare_each(&inputs, &Schemas::initial(), &mut |first, prepared| {
                firsts.push((first, prepared.len()));
                got.extend(prepared.iter().map(summary));
                Ok(true)
            })
            .unwrap()
        );
        let chunks: Vec<_> = (0..inputs.len())
            .step_by(CHUNK_RECORDS)
            .map(|first| (first, CHUNK_RECORDS.min(inputs.len() - first)))
            .collect();
        assert!(chunks.len() >= 2);
        assert_eq!(firsts, chunks);
        assert_eq!(got, expected);
        // A stop after the first chunk: the second is not prepared.
        let mut calls = 0;
        assert!(
            !two.prepare_each(&inputs, &Schemas::initial(), &mut |_, _| {
                calls += 1;
                Ok(false)
            })
            .unwrap()
        );
        assert_eq!(calls, 1);
        let e = two
            .prepare_each(&inputs, &Schemas::initial(), &mut |_, _| {
                anyhow::bail!("full disk")
            })
            .unwrap_err();
        assert_eq!(e.to_string(), "full disk");
    }
}

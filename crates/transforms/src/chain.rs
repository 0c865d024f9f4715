//! The chain: loading, processing a batch record by record, hot swap and periodic rebuild.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use fluvio_smartengine::{
    DEFAULT_SMARTENGINE_VERSION, SmartEngine, SmartModuleChainBuilder, SmartModuleChainInstance,
    SmartModuleConfig,
};
use fluvio_smartmodule::Record;
use fluvio_smartmodule::dataplane::smartmodule::SmartModuleInput;
use sha2::{Digest, Sha256};
use tracing::{debug, info, warn};

use crate::config::TransformStep;
use crate::error::TransformsError;
use crate::resolve::resolve_module;

/// One input record of a batch.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// Record key.
    pub key: Option<&'a [u8]>,
    /// Record value.
    pub value: &'a [u8],
    /// Its offset in its partition (passed to the modules; any i64 is accepted).
    pub offset: i64,
}

/// One output record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// Record key (the `form-flatten` module keeps the input's).
    pub key: Option<Vec<u8>>,
    /// Record value.
    pub value: Vec<u8>,
}

/// A record the chain refused (DLQ reason `transform_error`; `message` is the detail).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct TransformError {
    /// The module's message (for `form-flatten`: `<reason>: <detail naming the field>`).
    pub message: String,
}

/// A module of the running chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleDigest {
    /// The `uses` value.
    pub uses: String,
    /// The resolved file.
    pub path: PathBuf,
    /// sha256 of the module bytes in use, lowercase hex.
    pub sha256: String,
}

/// Tuning of a [`TransformChain`].
#[derive(Debug, Clone)]
pub struct ChainOptions {
    /// Watch the `.wasm` files and hot-swap changed modules.
    pub watch: bool,
    /// How often the files are looked at.
    pub poll_interval: Duration,
    /// Rebuild the engine instance (same modules, off the hot path) after this many input
    /// records; 0 = never. The engine's store grows with use, so a long-running chain is
    /// rebuilt periodically.
    pub rebuild_every_records: u64,
    /// Try each new module on the canary record (the seed case) and require the
    /// `form-flatten` rows; turn off only for chains that are not the flattening.
    pub canary: bool,
}

/// Poll the module files once a second: a swap within about a second of the copy.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Rebuild every 100 000 records. Measured with `examples/rss_soak.rs` (records of 1–9
/// fields): without rebuilds the engine's store grows by about 1.1 KB per record (the guest
/// output buffers are never freed), so RSS passes 550 MB after 500 000 records and the store
/// hits the engine's 1 GB limit after roughly 250 000 records of this size (the chain then
/// rebuilds synchronously after the failed call). Rebuilding every 100 000 records keeps
/// the store near 110 MB and costs one 0.2–0.6 s compile off the hot path.
pub const DEFAULT_REBUILD_EVERY_RECORDS: u64 = 100_000;
/// After a refused record, go on in sub-batches this small (doubling while clean), so a
/// batch full of bad records does not cost a quadratic amount of copying.
const AFTER_ERROR_CHUNK: usize = 16;

impl Default for ChainOptions {
    fn default() -> Self {
        Self {
            watch: true,
            poll_interval: DEFAULT_POLL_INTERVAL,
            rebuild_every_records: DEFAULT_REBUILD_EVERY_RECORDS,
            canary: true,
        }
    }
}

/// A resolved step.
#[derive(Debug, Clone)]
struct ModuleSpec {
    uses: String,
    path: PathBuf,
    params: std::collections::BTreeMap<String, String>,
}

/// A built chain and what it was built from.
struct Loaded {
    instance: SmartModuleChainInstance,
    bytes: Arc<Vec<Vec<u8>>>,
    digests: Vec<ModuleDigest>,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded")
            .field("digests", &self.digests)
            .finish_non_exhaustive()
    }
}

enum Control {
    Rebuild,
}

#[derive(Debug, Default)]
struct Shared {
    rejected: AtomicU64,
    last_rejection: Mutex<Option<String>>,
}

/// The `transforms:` chain, run synchronously. See the crate docs.
#[derive(Debug)]
pub struct TransformChain {
    specs: Arc<Vec<ModuleSpec>>,
    engine: SmartEngine,
    current: Loaded,
    generation: u64,
    rebuilds: u64,
    records_since_build: u64,
    rebuild_requested: bool,
    options: ChainOptions,
    swap_rx: Receiver<Loaded>,
    ctl_tx: Option<Sender<Control>>,
    watcher: Option<JoinHandle<()>>,
    shared: Arc<Shared>,
}

impl TransformChain {
    /// Resolves and loads the steps, checks them on the canary record (if
    /// `options.canary` and there is at least one step), and starts the watcher thread.
    pub fn new(steps: &[TransformStep], options: ChainOptions) -> Result<Self, TransformsError> {
        let specs = steps
            .iter()
            .map(|s| {
                Ok(ModuleSpec {
                    uses: s.uses.clone(),
                    path: resolve_module(&s.uses)?,
                    params: s.params(),
                })
            })
            .collect::<Result<Vec<_>, TransformsError>>()?;
        let specs = Arc::new(specs);
        let bytes = specs
            .iter()
            .map(|s| {
                std::fs::read(&s.path).map_err(|source| TransformsError::Read {
                    path: s.path.clone(),
                    source,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let engine = SmartEngine::new();
        let current = build(&engine, &specs, Arc::new(bytes), options.canary)?;
        for d in &current.digests {
            info!(uses = %d.uses, path = %d.path.display(), sha256 = %d.sha256, "SmartModule loaded.");
        }

        let (swap_tx, swap_rx) = mpsc::sync_channel::<Loaded>(1);
        let (ctl_tx, ctl_rx) = mpsc::channel::<Control>();
        let shared = Arc::new(Shared::default());
        let watcher = Watcher {
            specs: Arc::clone(&specs),
            engine: engine.clone(),
            options: options.clone(),
            bytes: Arc::clone(&current.bytes),
            fingerprints: specs.iter().map(|s| fingerprint(&s.path)).collect(),
            last_rejected: vec![None; specs.len()],
            swap_tx,
            ctl_rx,
            shared: Arc::clone(&shared),
        };
        let handle = std::thread::Builder::new()
            .name("smartmodule-watch".into())
            .spawn(move || watcher.run())
            .map_err(TransformsError::Thread)?;
        Ok(Self {
            specs,
            engine,
            current,
            generation: 0,
            rebuilds: 0,
            records_since_build: 0,
            rebuild_requested: false,
            options,
            swap_rx,
            ctl_tx: Some(ctl_tx),
            watcher: Some(handle),
            shared,
        })
    }

    /// The modules in use (`uses`, path, sha256), in chain order. Changes only on a swap.
    pub fn module_digests(&self) -> &[ModuleDigest] {
        &self.current.digests
    }

    /// Incremented each time a changed module is swapped in (not on periodic rebuilds of
    /// the same modules). A sink may roll its files when it changes, so that the digests in
    /// a file's metadata hold for every row in it.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// How many times the instance was rebuilt from the same modules (periodically, or after
    /// a trap).
    pub fn rebuilds(&self) -> u64 {
        self.rebuilds
    }

    /// How many changed modules were refused so far (failed to load or failed the canary),
    /// and the last reason.
    pub fn rejections(&self) -> (u64, Option<String>) {
        let last = self
            .shared
            .last_rejection
            .lock()
            .map(|g| g.clone())
            .unwrap_or(None);
        (self.shared.rejected.load(Ordering::SeqCst), last)
    }

    /// Applies a module that is ready (changed file or periodic rebuild); `process` does this
    /// itself before each batch. Returns whether the instance changed.
    pub fn apply_pending(&mut self) -> bool {
        let mut changed = false;
        while let Ok(loaded) = self.swap_rx.try_recv() {
            let swapped = loaded.digests != self.current.digests;
            if swapped {
                self.generation += 1;
                for (old, new) in self.current.digests.iter().zip(&loaded.digests) {
                    if old.sha256 != new.sha256 {
                        info!(uses = %new.uses, old_sha256 = %old.sha256, sha256 = %new.sha256, generation = self.generation, "SmartModule swapped.");
                    }
                }
            } else {
                self.rebuilds += 1;
                debug!(
                    records = self.records_since_build,
                    "SmartModule instance rebuilt."
                );
            }
            self.current = loaded;
            self.records_since_build = 0;
            self.rebuild_requested = false;
            changed = true;
        }
        changed
    }

    /// Runs `inputs` through the chain: exactly one entry per input, in order — the output
    /// records it gave (none if a module filtered it out) or why a module refused it. A
    /// refused record never stops the others. Never panics on bad input.
    pub fn process(&mut self, inputs: &[Input<'_>]) -> Vec<Result<Vec<Output>, TransformError>> {
        self.apply_pending();
        let n = inputs.len();
        let mut results: Vec<Option<Result<Vec<Output>, TransformError>>> = vec![None; n];
        let mut start = 0;
        let mut chunk = n.max(1);
        while start < n {
            let end = (start + chunk).min(n);
            match self.run_sub_batch(&inputs[start..end], &mut results[start..end]) {
                SubBatch::Clean => {
                    start = end;
                    chunk = chunk.saturating_mul(2).min(n);
                }
                SubBatch::Refused(i) => {
                    start += i + 1;
                    chunk = AFTER_ERROR_CHUNK;
                }
                SubBatch::Trapped(message) => {
                    // The instance may be broken: rebuild it now, then find the culprit one
                    // record at a time.
                    if end - start == 1 {
                        results[start] = Some(Err(TransformError { message }));
                        start = end;
                        chunk = AFTER_ERROR_CHUNK;
                    } else {
                        chunk = 1;
                    }
                    if let Err(e) = self.rebuild_now() {
                        for r in &mut results[start..] {
                            *r = Some(Err(TransformError {
                                message: format!("SmartModule chain unusable: {e}"),
                            }));
                        }
                        break;
                    }
                }
            }
        }
        self.records_since_build += n as u64;
        if self.options.rebuild_every_records > 0
            && self.records_since_build >= self.options.rebuild_every_records
            && !self.rebuild_requested
            && let Some(tx) = &self.ctl_tx
        {
            self.rebuild_requested = tx.send(Control::Rebuild).is_ok();
        }
        results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(TransformError {
                        message: "internal: record not processed".to_owned(),
                    })
                })
            })
            .collect()
    }

    fn rebuild_now(&mut self) -> Result<(), TransformsError> {
        let loaded = build(
            &self.engine,
            &self.specs,
            Arc::clone(&self.current.bytes),
            false,
        )?;
        warn!("SmartModule instance rebuilt after a trap.");
        self.rebuilds += 1;
        self.current = loaded;
        self.records_since_build = 0;
        Ok(())
    }

    /// Runs one sub-batch; fills `results` for the records it settled.
    fn run_sub_batch(
        &mut self,
        inputs: &[Input<'_>],
        results: &mut [Option<Result<Vec<Output>, TransformError>>],
    ) -> SubBatch {
        // Offsets as given if they increase (one partition), else the index: either way a
        // record's offset delta identifies it in the output and in the error.
        let increasing = inputs.windows(2).all(|w| w[0].offset < w[1].offset);
        let base = if increasing {
            inputs.first().map_or(0, |i| i.offset)
        } else {
            0
        };
        let records: Vec<Record> = inputs
            .iter()
            .enumerate()
            .map(|(i, input)| {
                let mut r = Record::new(input.value.to_vec());
                r.key = input.key.map(|k| k.to_vec().into());
                let delta = if increasing {
                    input.offset.wrapping_sub(base)
                } else {
                    i as i64
                };
                r.preamble.set_offset_delta(delta);
                r
            })
            .collect();
        let locate = |offset: i64| -> Option<usize> {
            let delta = offset.wrapping_sub(base);
            if increasing {
                inputs.binary_search_by_key(&offset, |i| i.offset).ok()
            } else {
                usize::try_from(delta).ok().filter(|&i| i < inputs.len())
            }
        };
        let mut sm_input =
            match SmartModuleInput::try_from_records(records, DEFAULT_SMARTENGINE_VERSION) {
                Ok(i) => i,
                Err(e) => {
                    return SubBatch::Trapped(format!("encoding records for the SmartModule: {e}"));
                }
            };
        sm_input.set_base_offset(base);
        let output = match self.current.instance.process(sm_input) {
            Ok(o) => o,
            Err(e) => return SubBatch::Trapped(format!("SmartModule failed: {e:#}")),
        };
        let failed = output
            .error
            .as_ref()
            .map(|err| (locate(err.offset), clean_hint(&err.hint)));
        // Outputs go to the input whose offset they carry.
        let mut per_input: Vec<Vec<Output>> = vec![Vec::new(); inputs.len()];
        for rec in output.successes {
            let offset = base.wrapping_add(rec.preamble.offset_delta());
            let Some(i) = locate(offset) else {
                warn!(offset, "SmartModule output with an unknown offset dropped.");
                continue;
            };
            per_input[i].push(Output {
                key: rec.key.map(|k| k.into_vec()),
                value: rec.value.into_vec(),
            });
        }
        match failed {
            None => {
                for (slot, outs) in results.iter_mut().zip(per_input) {
                    *slot = Some(Ok(outs));
                }
                SubBatch::Clean
            }
            Some((at, message)) => {
                // The engine stopped at the failing record: the ones before it are done.
                let at = at.unwrap_or_else(|| {
                    // Unknown offset: blame the first record without output.
                    per_input.iter().position(Vec::is_empty).unwrap_or(0)
                });
                for (slot, outs) in results[..at].iter_mut().zip(per_input) {
                    *slot = Some(Ok(outs));
                }
                results[at] = Some(Err(TransformError { message }));
                SubBatch::Refused(at)
            }
        }
    }
}

enum SubBatch {
    Clean,
    Refused(usize),
    Trapped(String),
}

/// The engine's hint is the guest's `eyre` report in Debug form; keep its first paragraph.
fn clean_hint(hint: &str) -> String {
    let first = hint.split("\n\n").next().unwrap_or(hint).trim();
    if first.is_empty() {
        "SmartModule refused the record".to_owned()
    } else {
        first.to_owned()
    }
}

impl Drop for TransformChain {
    fn drop(&mut self) {
        // Closing the control channel stops the watcher at its next wake-up.
        self.ctl_tx = None;
        if let Some(h) = self.watcher.take() {
            let _ = h.join();
        }
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn label(specs: &[ModuleSpec], digests: &[String]) -> String {
    specs
        .iter()
        .zip(digests)
        .map(|(s, d)| format!("{}@sha256:{}", s.uses, &d[..12.min(d.len())]))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Builds a chain instance from module bytes, and tries it on the canary record.
fn build(
    engine: &SmartEngine,
    specs: &[ModuleSpec],
    bytes: Arc<Vec<Vec<u8>>>,
    canary: bool,
) -> Result<Loaded, TransformsError> {
    let hashes: Vec<String> = bytes.iter().map(|b| sha256_hex(b)).collect();
    let modules = label(specs, &hashes);
    let mut builder = SmartModuleChainBuilder::default();
    for (spec, b) in specs.iter().zip(bytes.iter()) {
        let mut config = SmartModuleConfig::builder();
        config.smartmodule_names(vec![spec.uses.clone()]);
        for (k, v) in &spec.params {
            config.param(k.clone(), v.clone());
        }
        let config = config.build().map_err(|e| TransformsError::Load {
            modules: modules.clone(),
            message: e.to_string(),
        })?;
        builder.add_smart_module(config, b.clone());
    }
    // wasmtime may panic on some malformed inputs; a bad file must never take the sink down.
    let built =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| builder.initialize(engine)));
    let mut instance = match built {
        Ok(Ok(i)) => i,
        Ok(Err(e)) => {
            return Err(TransformsError::Load {
                modules,
                message: format!("{e:#}"),
            });
        }
        Err(_) => {
            return Err(TransformsError::Load {
                modules,
                message: "the engine panicked while loading".to_owned(),
            });
        }
    };
    if canary && !specs.is_empty() {
        check_canary(&mut instance).map_err(|message| TransformsError::Canary {
            modules: modules.clone(),
            message,
        })?;
    }
    let digests = specs
        .iter()
        .zip(hashes)
        .map(|(s, sha256)| ModuleDigest {
            uses: s.uses.clone(),
            path: s.path.clone(),
            sha256,
        })
        .collect();
    Ok(Loaded {
        instance,
        bytes,
        digests,
    })
}

/// The canary: the seed case must give one output with one `form` row for `abcde` (with
/// the seed's event time) and two `form_field` rows. Titles may differ (a module may
/// legitimately change them).
fn check_canary(instance: &mut SmartModuleChainInstance) -> Result<(), String> {
    let mut record = Record::new(form_model::canary_record());
    record.key = Some(b"abcde".to_vec().into());
    let input = SmartModuleInput::try_from_records(vec![record], DEFAULT_SMARTENGINE_VERSION)
        .map_err(|e| e.to_string())?;
    let out = instance.process(input).map_err(|e| format!("{e:#}"))?;
    if let Some(err) = out.error {
        return Err(format!(
            "refused the canary record: {}",
            clean_hint(&err.hint)
        ));
    }
    let [rec] = out.successes.as_slice() else {
        return Err(format!(
            "{} output records for 1 input, expected 1",
            out.successes.len()
        ));
    };
    let rows = form_model::Flattened::from_slice(rec.value.as_ref())
        .map_err(|e| format!("output is not the flattened rows: {e}"))?;
    let ok = rows.form.len() == 1
        && rows.form[0].get("id").and_then(|v| v.as_str()) == Some("abcde")
        && rows.form[0]
            .get("event_happened_at")
            .and_then(|v| v.as_i64())
            == Some(1_664_715_615_000_000)
        && rows.form[0]
            .get("retrieved_timestamp")
            .and_then(|v| v.as_i64())
            == Some(form_model::CANARY_RETRIEVED_MICROS)
        && rows.form_field.len() == 2;
    if ok {
        Ok(())
    } else {
        Err(format!(
            "unexpected rows: {} form, {} form_field",
            rows.form.len(),
            rows.form_field.len()
        ))
    }
}

type Fingerprint = Option<(SystemTime, u64)>;

fn fingerprint(path: &std::path::Path) -> Fingerprint {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// The background thread: watches the files, builds changed or periodic instances.
struct Watcher {
    specs: Arc<Vec<ModuleSpec>>,
    engine: SmartEngine,
    options: ChainOptions,
    bytes: Arc<Vec<Vec<u8>>>,
    fingerprints: Vec<Fingerprint>,
    last_rejected: Vec<Option<String>>,
    swap_tx: mpsc::SyncSender<Loaded>,
    ctl_rx: Receiver<Control>,
    shared: Arc<Shared>,
}

impl Watcher {
    fn run(mut self) {
        loop {
            match self.ctl_rx.recv_timeout(self.options.poll_interval) {
                Ok(Control::Rebuild) => {
                    match build(&self.engine, &self.specs, Arc::clone(&self.bytes), false) {
                        Ok(loaded) => {
                            if self.swap_tx.send(loaded).is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            warn!(error = %e, "Periodic SmartModule rebuild failed; the current instance keeps running.")
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            if self.options.watch && !self.check_files() {
                return;
            }
        }
    }

    /// Returns false when the chain is gone.
    fn check_files(&mut self) -> bool {
        let mut candidate: Option<Vec<Vec<u8>>> = None;
        for (i, spec) in self.specs.iter().enumerate() {
            let before = fingerprint(&spec.path);
            if before == self.fingerprints[i] || before.is_none() {
                continue;
            }
            let Ok(bytes) = std::fs::read(&spec.path) else {
                continue;
            };
            // Still being written: look again at the next poll.
            if fingerprint(&spec.path) != before {
                continue;
            }
            self.fingerprints[i] = before;
            let digest = sha256_hex(&bytes);
            if digest == sha256_hex(&self.bytes[i])
                || self.last_rejected[i].as_deref() == Some(digest.as_str())
            {
                continue;
            }
            info!(uses = %spec.uses, path = %spec.path.display(), sha256 = %digest, "SmartModule file changed; compiling.");
            let c = candidate.get_or_insert_with(|| self.bytes.as_ref().clone());
            c[i] = bytes;
        }
        let Some(candidate) = candidate else {
            return true;
        };
        match build(
            &self.engine,
            &self.specs,
            Arc::new(candidate.clone()),
            self.options.canary,
        ) {
            Ok(loaded) => {
                self.bytes = Arc::clone(&loaded.bytes);
                for r in &mut self.last_rejected {
                    *r = None;
                }
                self.swap_tx.send(loaded).is_ok()
            }
            Err(e) => {
                for (i, b) in candidate.iter().enumerate() {
                    if *b != self.bytes[i] {
                        let sha256 = sha256_hex(b);
                        warn!(uses = %self.specs[i].uses, path = %self.specs[i].path.display(), %sha256, error = %e, "SmartModule rejected; the old one keeps running.");
                        self.last_rejected[i] = Some(sha256);
                    }
                }
                if let Ok(mut last) = self.shared.last_rejection.lock() {
                    *last = Some(e.to_string());
                }
                self.shared.rejected.fetch_add(1, Ordering::SeqCst);
                true
            }
        }
    }
}

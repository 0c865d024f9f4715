//! The pipeline thread: transform chain → rows per table → Avro files, per partition segment.
//!
//! It owns every open file and the rolling decisions, and runs on its own OS thread (the
//! SmartModule chain and Avro encoding are CPU-bound and synchronous). It hears from the async
//! side through [`Cmd`] and tells it about parts to stream, sealed segments, progress and dead
//! letters through [`Event`], both over bounded channels.
//!
//! A partition's records are cut into *segments* at partition-wide offsets: every file of a
//! segment (both tables, every event date) starts at the segment's first offset, which names
//! them, and they all close at the same boundary. Whatever closes a segment (`rolling.rs`), its
//! boundaries are recorded in the consumer group before its objects become visible
//! (`commit.rs`, `seal.rs`). A replay of recorded segments closes them exactly where they were
//! recorded and names their files by the recorded starts; nothing else closes a segment being
//! replayed (no rolling rule, drain, memory flush or module swap): a drain abandons it instead,
//! for the next run to replay.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use connector_common::dlq::DlqReason;
use tokio::sync::mpsc;
use tracing::{debug, error, info};

use crate::format::{FileFormat, FileWriter, FinishedFile};
use crate::keys::object_key;
use crate::rolling::{FileSize, RollReason, RollingPolicy};
use crate::schemas::Evolver;
use crate::tables::Table;
use crate::transform::{Prepared, Refusal, Transform};
use crate::uploads::FileId;
use form_model::avro::Schemas;
use form_model::avro_encode::EncodedRows;
use form_transforms::{Input, Output, TransformError};

/// One consumed record.
#[derive(Debug, Clone)]
pub(crate) struct InRecord {
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    /// Kafka timestamp (ms); the record time used by `max-age`.
    pub(crate) timestamp_ms: Option<i64>,
    pub(crate) key: Option<Vec<u8>>,
    pub(crate) value: Option<Vec<u8>>,
}

impl InRecord {
    /// Its key and value bytes (what batches are cut and merged by).
    pub(crate) fn input_bytes(&self) -> usize {
        self.key.as_ref().map_or(0, Vec::len) + self.value.as_ref().map_or(0, Vec::len)
    }
}

/// A segment recorded by an earlier run: the replay names its files by `start`, closes it at
/// `end`, and writes them with the schema versions it was recorded with (when known).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Replay {
    pub(crate) start: i64,
    pub(crate) end: i64,
    pub(crate) versions: Option<[u32; 2]>,
}

/// Commands from the async side.
#[derive(Debug)]
pub(crate) enum Cmd {
    Assign {
        partition: i32,
        epoch: u64,
        replay: Vec<Replay>,
    },
    Revoke {
        partition: i32,
    },
    /// Rows of `partition`'s records below `offsets[table]` are dropped: they are in that
    /// table already (an Iceberg table's committed offsets; the two tables commit one after the
    /// other, so after a crash one may be ahead). The records still run, for their dead letters.
    SkipBelow {
        partition: i32,
        offsets: [i64; 2],
    },
    Batch(Vec<InRecord>),
    /// Wall-clock tick: idle flushes.
    Tick,
    /// Close every open segment now (an Iceberg commit is due: only closed files commit).
    Flush,
    /// Close every open segment (shutdown, `--max-records`), then answer [`Event::Drained`].
    Drain,
}

/// Records one batch may reach by taking the batches queued behind it (see [`coalesce`]).
const COALESCE_MAX_RECORDS: usize = 1024;
/// Input bytes one batch may reach that way (four of the async side's 256 KiB batches): the
/// transform's results for a batch may all be alive at once, so this bounds them whatever the
/// records' size.
const COALESCE_MAX_BYTES: usize = 1 << 20;

/// `records`, followed by the batches already queued behind it, while it has fewer than
/// [`COALESCE_MAX_RECORDS`] records and [`COALESCE_MAX_BYTES`] of input; the first other
/// command read is left in `next`. The async side cuts batches at 256 KiB (~160 records) for
/// memory; when the pipeline is behind, handling them one by one left the transform helper
/// idle at the end of each (a batch is only ~5 of its 32-record chunks). Same records in the
/// same order: only the batch boundaries move.
fn coalesce(
    mut records: Vec<InRecord>,
    cmds: &mut mpsc::Receiver<Cmd>,
    next: &mut Option<Cmd>,
) -> Vec<InRecord> {
    let mut bytes: usize = records.iter().map(InRecord::input_bytes).sum();
    while records.len() < COALESCE_MAX_RECORDS && bytes < COALESCE_MAX_BYTES {
        match cmds.try_recv() {
            Ok(Cmd::Batch(more)) => {
                bytes += more.iter().map(InRecord::input_bytes).sum::<usize>();
                records.extend(more);
            }
            Ok(other) => {
                *next = Some(other);
                break;
            }
            Err(_) => break,
        }
    }
    records
}

/// One closed file of a sealed segment.
#[derive(Debug)]
pub(crate) struct SealedFile {
    pub(crate) file_id: u64,
    pub(crate) key: String,
    pub(crate) table: Table,
    /// Its event day (days since 1970-01-01).
    pub(crate) day: i64,
    /// Its rows.
    pub(crate) rows: u64,
    pub(crate) file: FinishedFile,
    pub(crate) budget: BudgetGuard,
}

/// A closed segment: its files are ready, and once they are all durable its offsets may be
/// committed up to `end`.
#[derive(Debug)]
pub(crate) struct SealedSegment {
    pub(crate) partition: i32,
    pub(crate) epoch: u64,
    pub(crate) start: i64,
    pub(crate) end: i64,
    pub(crate) reason: RollReason,
    pub(crate) first_ts_ms: Option<i64>,
    /// What produced its rows (the modules' digests), for the record.
    pub(crate) fingerprint: String,
    /// The schema versions of its files, by table.
    pub(crate) versions: [u32; 2],
    pub(crate) files: Vec<SealedFile>,
}

/// Dead letter produced by the pipeline (sent in the transaction that commits its offset).
#[derive(Debug, Clone)]
pub(crate) struct DeadLetter {
    pub(crate) offset: i64,
    pub(crate) key: Option<Vec<u8>>,
    pub(crate) value: Option<Vec<u8>>,
    pub(crate) reason: DlqReason,
    pub(crate) detail: String,
}

/// Events for the async side, in the order they happened.
#[derive(Debug)]
pub(crate) enum Event {
    /// A full part of an open file (part 2, 3, …).
    Part {
        file: FileId,
        body: Vec<u8>,
        budget: BudgetGuard,
    },
    Sealed(SealedSegment),
    /// The open segment of a replay was dropped (a drain): its files' uploads are abandoned.
    Abandoned {
        partition: i32,
        epoch: u64,
        file_ids: Vec<u64>,
    },
    /// Where a partition stands after a batch: its next offset and its open segment, if any
    /// (start offset and first record time).
    Progress {
        partition: i32,
        epoch: u64,
        next_offset: i64,
        open: Option<(i64, Option<i64>)>,
    },
    Dlq {
        partition: i32,
        epoch: u64,
        letter: DeadLetter,
    },
    Drained,
}

/// Bytes handed from the pipeline to the uploads and not yet uploaded: the pipeline waits when
/// the budget is spent (backpressure: an S3 outage stalls the pipeline, then the consumer).
#[derive(Debug)]
pub(crate) struct InFlightBudget {
    cap: usize,
    used: Mutex<usize>,
    freed: Condvar,
}

impl InFlightBudget {
    pub(crate) fn new(cap: usize) -> Arc<Self> {
        Arc::new(Self {
            cap,
            used: Mutex::new(0),
            freed: Condvar::new(),
        })
    }

    /// Blocks until `n` bytes fit (a single request larger than the budget waits until nothing
    /// else is in flight).
    pub(crate) fn acquire(self: &Arc<Self>, n: usize) -> BudgetGuard {
        let mut used = self.used.lock().expect("budget lock");
        while *used > 0 && *used + n > self.cap {
            used = self.freed.wait(used).expect("budget lock");
        }
        *used += n;
        BudgetGuard {
            budget: Some(self.clone()),
            n,
        }
    }

    pub(crate) fn used(&self) -> usize {
        *self.used.lock().expect("budget lock")
    }
}

/// Releases its bytes when dropped (after the upload, or when abandoned).
#[derive(Debug)]
pub(crate) struct BudgetGuard {
    budget: Option<Arc<InFlightBudget>>,
    n: usize,
}

impl Drop for BudgetGuard {
    fn drop(&mut self) {
        if let Some(b) = self.budget.take() {
            let mut used = b.used.lock().expect("budget lock");
            *used -= self.n;
            b.freed.notify_all();
        }
    }
}

/// Settings of the pipeline.
#[derive(Debug, Clone)]
pub(crate) struct PipelineSettings {
    pub(crate) topic: String,
    pub(crate) prefix: String,
    pub(crate) policy: RollingPolicy,
    pub(crate) idle_flush: Duration,
    /// Bytes the open files may hold together before the largest partition is flushed.
    pub(crate) open_budget: usize,
    pub(crate) part_size: usize,
    /// The files' format.
    pub(crate) format: Arc<dyn FileFormat>,
    /// Where the files go when they are an Iceberg table's data files (else `keys.rs`).
    pub(crate) data_keys: Option<DataKeys>,
}

/// Keys of Iceberg data files: `{table's data prefix}/day={YYYY-MM-DD}/{partition}-{first
/// offset}-{run}.parquet` (short: S3 servers limit keys, and the local one more than most). A
/// file is invisible until a snapshot references it, so nothing depends on a replay rewriting
/// the same key: `run` (random per process) keeps a replay from overwriting a file an earlier
/// run may have committed.
#[derive(Debug, Clone)]
pub(crate) struct DataKeys {
    /// By table: the key prefix of its data files in the bucket.
    pub(crate) tables: [String; 2],
    pub(crate) run: String,
}

impl DataKeys {
    pub(crate) fn key(&self, table: Table, day: i64, partition: i32, start: i64) -> String {
        format!(
            "{}/day={}/{partition}-{start}-{}.parquet",
            self.tables[table as usize].trim_end_matches('/'),
            form_model::day_to_date(day),
            self.run
        )
    }
}

struct OpenFile {
    id: u64,
    key: String,
    table: Table,
    day: i64,
    enc: Box<dyn FileWriter>,
}

struct Segment {
    start: i64,
    first_ts_ms: Option<i64>,
    /// The schemas of its files (one version per table for the whole segment).
    schemas: Schemas,
    /// By (table, event day since 1970-01-01): at most one file each.
    files: BTreeMap<(Table, i64), OpenFile>,
    /// Transform modules (name, sha256) that produced rows of this segment.
    digests: BTreeSet<(String, String)>,
}

struct PartitionState {
    epoch: u64,
    next_offset: Option<i64>,
    /// Recorded segments still to replay, in order.
    replay: VecDeque<Replay>,
    segment: Option<Segment>,
    last_record: Instant,
    /// See [`Cmd::SkipBelow`].
    skip_below: [i64; 2],
}

impl PartitionState {
    /// Replaying recorded segments: nothing but their recorded ends may close a segment.
    fn replaying(&self) -> bool {
        !self.replay.is_empty()
    }
}

/// At most this many event days in one segment: a record that would add one more closes the
/// segment before it. Bounds the files open per partition (two tables per day) and the size of
/// the segment's record in the offset metadata (`seal.rs`), whatever the spread of the dates.
pub(crate) const MAX_SEGMENT_DAYS: usize = 32;

/// Stands in for the transform chain while [`Pipeline::batch`] has it out of the pipeline;
/// nothing calls it meanwhile.
struct Lent;

impl Transform for Lent {
    fn process(&mut self, inputs: &[Input<'_>]) -> Vec<Result<Vec<Output>, TransformError>> {
        let lent = || TransformError {
            message: "internal: the transform chain is in use by a batch".into(),
        };
        inputs.iter().map(|_| Err(lent())).collect()
    }

    fn digests(&self) -> Vec<(String, String)> {
        Vec::new()
    }

    fn generation(&self) -> u64 {
        0
    }
}

/// The pipeline (runs on its own thread: [`Pipeline::run`]).
pub(crate) struct Pipeline {
    settings: PipelineSettings,
    transform: Box<dyn Transform>,
    evolver: Evolver,
    /// The schemas of recorded segments being replayed, by versions.
    replay_schemas: HashMap<[u32; 2], Schemas>,
    partitions: HashMap<i32, PartitionState>,
    events: mpsc::Sender<Event>,
    inflight: Arc<InFlightBudget>,
    next_file_id: u64,
    /// The chain's generation when the open segments got their rows.
    generation: u64,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("partitions", &self.partitions.len())
            .finish()
    }
}

impl Pipeline {
    pub(crate) fn new(
        settings: PipelineSettings,
        transform: Box<dyn Transform>,
        evolver: Evolver,
        events: mpsc::Sender<Event>,
        inflight: Arc<InFlightBudget>,
    ) -> Self {
        Self {
            settings,
            evolver,
            replay_schemas: HashMap::new(),
            partitions: HashMap::new(),
            events,
            generation: transform.generation(),
            transform,
            inflight,
            next_file_id: 0,
        }
    }

    /// Runs until the command channel closes. A failure here (a bug: Avro encoding of a
    /// validated row) is returned and stops the sink without committing.
    pub(crate) fn run(mut self, mut cmds: mpsc::Receiver<Cmd>) -> anyhow::Result<()> {
        let mut next = None;
        while let Some(cmd) = next.take().or_else(|| cmds.blocking_recv()) {
            let cmd = match cmd {
                Cmd::Batch(records) => Cmd::Batch(coalesce(records, &mut cmds, &mut next)),
                other => other,
            };
            let more = self.handle(cmd)?;
            if !more {
                break;
            }
        }
        Ok(())
    }

    fn emit(&self, ev: Event) -> bool {
        self.events.blocking_send(ev).is_ok()
    }

    /// Handles one command; `false` when the async side is gone.
    pub(crate) fn handle(&mut self, cmd: Cmd) -> anyhow::Result<bool> {
        match cmd {
            Cmd::Assign {
                partition,
                epoch,
                replay,
            } => {
                if let (Some(first), Some(last)) = (replay.first(), replay.last()) {
                    info!(
                        partition,
                        segments = replay.len(),
                        from = first.start,
                        to = last.end,
                        "Replaying recorded segments: they close where they were recorded."
                    );
                }
                self.partitions.insert(
                    partition,
                    PartitionState {
                        epoch,
                        next_offset: None,
                        replay: replay.into_iter().collect(),
                        segment: None,
                        last_record: Instant::now(),
                        skip_below: [i64::MIN; 2],
                    },
                );
            }
            Cmd::Revoke { partition } => {
                if let Some(ps) = self.partitions.remove(&partition)
                    && let Some(seg) = ps.segment
                {
                    info!(
                        partition,
                        start = seg.start,
                        files = seg.files.len(),
                        "Partition revoked: its open files are abandoned, uncommitted."
                    );
                }
            }
            Cmd::SkipBelow { partition, offsets } => {
                if let Some(ps) = self.partitions.get_mut(&partition) {
                    ps.skip_below = offsets;
                }
            }
            Cmd::Batch(records) => return self.batch(records),
            Cmd::Flush => {
                let open: Vec<i32> = self
                    .partitions
                    .iter()
                    .filter(|(_, ps)| ps.segment.is_some() && !ps.replaying())
                    .map(|(p, _)| *p)
                    .collect();
                for p in open {
                    self.roll_at_next(p, RollReason::Commit)?;
                    if !self.progress(p) {
                        return Ok(false);
                    }
                }
            }
            Cmd::Tick => {
                self.apply_pending_modules();
                let generation = self.transform.generation();
                if generation != self.generation {
                    self.roll_all_for_swap(generation)?;
                }
                metrics::counter!("s3_sink_transform_rejected_total")
                    .absolute(self.transform.rejections());
                metrics::gauge!("s3_sink_transform_generation").set(self.generation as f64);
                let idle: Vec<i32> = self
                    .partitions
                    .iter()
                    .filter(|(_, ps)| {
                        ps.segment.is_some()
                            && !ps.replaying()
                            && ps.last_record.elapsed() >= self.settings.idle_flush
                    })
                    .map(|(p, _)| *p)
                    .collect();
                for p in idle {
                    self.roll_at_next(p, RollReason::Idle)?;
                    if !self.progress(p) {
                        return Ok(false);
                    }
                }
            }
            Cmd::Drain => {
                let open: Vec<i32> = self
                    .partitions
                    .iter()
                    .filter(|(_, ps)| ps.segment.is_some())
                    .map(|(p, _)| *p)
                    .collect();
                for p in open {
                    if self.partitions[&p].replaying() {
                        if !self.abandon_replay(p) {
                            return Ok(false);
                        }
                    } else {
                        self.roll_at_next(p, RollReason::Drain)?;
                    }
                    if !self.progress(p) {
                        return Ok(false);
                    }
                }
                return Ok(self.emit(Event::Drained));
            }
        }
        Ok(true)
    }

    /// Takes a changed module the watcher has ready, unless a partition is replaying recorded
    /// segments: those are rewritten by the modules the replay started with.
    fn apply_pending_modules(&mut self) {
        if !self.partitions.values().any(PartitionState::replaying) {
            self.transform.apply_pending();
        }
    }

    /// A drain during a replay: the open segment is dropped (its uploads abandoned, nothing
    /// made visible), to be replayed again by the next run from the committed offset.
    fn abandon_replay(&mut self, p: i32) -> bool {
        let Some(ps) = self.partitions.get_mut(&p) else {
            return true;
        };
        let Some(seg) = ps.segment.take() else {
            return true;
        };
        info!(
            partition = p,
            start = seg.start,
            "Draining during a replay: the replayed segment is left for the next run (its end is recorded)."
        );
        let epoch = ps.epoch;
        let file_ids = seg.files.values().map(|f| f.id).collect();
        self.emit(Event::Abandoned {
            partition: p,
            epoch,
            file_ids,
        })
    }

    fn progress(&self, partition: i32) -> bool {
        let Some(ps) = self.partitions.get(&partition) else {
            return true;
        };
        let Some(next_offset) = ps.next_offset else {
            return true;
        };
        self.emit(Event::Progress {
            partition,
            epoch: ps.epoch,
            next_offset,
            open: ps.segment.as_ref().map(|s| (s.start, s.first_ts_ms)),
        })
    }

    fn batch(&mut self, records: Vec<InRecord>) -> anyhow::Result<bool> {
        let records: Vec<InRecord> = records
            .into_iter()
            .filter(|r| {
                self.partitions
                    .get(&r.partition)
                    .is_some_and(|ps| ps.next_offset.is_none_or(|n| r.offset >= n))
            })
            .collect();
        if records.is_empty() {
            return Ok(true);
        }
        metrics::counter!("component_received_events_total").increment(records.len() as u64);
        // Modules swap only here, between batches: every record of this batch sees one version.
        self.apply_pending_modules();
        let generation = self.transform.generation();
        if generation != self.generation {
            self.roll_all_for_swap(generation)?;
        }
        let digests = self.transform.digests();
        let inputs: Vec<Input<'_>> = records
            .iter()
            .map(|r| Input {
                key: r.key.as_deref(),
                value: r.value.as_deref().unwrap_or_default(),
                offset: r.offset,
            })
            .collect();
        let mut touched = BTreeSet::new();
        let mut rows_by_table = [0u64; 2];
        let mut handed = 0;
        // The chain runs while this pipeline files the rows it hands over (chunk by chunk, in
        // order): it is lent out of `self` meanwhile.
        let mut transform = std::mem::replace(&mut self.transform, Box::new(Lent));
        let schemas = self.evolver.current().clone();
        let outcome = transform.prepare_each(&inputs, &schemas, &mut |first, prepared| {
            anyhow::ensure!(
                first == handed && first + prepared.len() <= records.len(),
                "the transform chain handed results for records {first}..{} of {} (expected from {handed})",
                first + prepared.len(),
                records.len()
            );
            handed += prepared.len();
            for (rec, prepared) in records[first..].iter().zip(prepared) {
                touched.insert(rec.partition);
                if !self.file_prepared(rec, prepared, &digests, &mut rows_by_table)? {
                    return Ok(false);
                }
            }
            Ok(true)
        });
        self.transform = transform;
        if !outcome? {
            return Ok(false);
        }
        anyhow::ensure!(
            handed == records.len(),
            "the transform chain answered {handed} results for {} records",
            records.len()
        );
        for t in Table::ALL {
            metrics::counter!("s3_sink_rows_total", "table" => t.as_str())
                .increment(rows_by_table[t as usize]);
        }
        self.ship_parts()?;
        // A memory flush may close a partition this batch did not touch (one whose records all
        // came earlier): it must report its closed segment too, or the commit side keeps it
        // open and never commits past its start.
        touched.extend(self.enforce_budget()?);
        for p in touched {
            if !self.progress(p) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Files one record's prepared rows, or sends it to the dead-letter queue; `false` when
    /// the async side is gone.
    fn file_prepared(
        &mut self,
        rec: &InRecord,
        prepared: Prepared,
        digests: &[(String, String)],
        rows_by_table: &mut [u64; 2],
    ) -> anyhow::Result<bool> {
        // A replayed segment is written with the versions it was recorded with; everything
        // else with the current ones (evolved here when a row needs it).
        let fixed = self.replay_schemas_of(rec.partition)?;
        let target = fixed.as_ref().unwrap_or(self.evolver.current()).versions();
        let encoded = match prepared {
            Ok(p) if p.versions == target => Ok((p.rows, p.versions)),
            Ok(p) => self.encode_again(&p.outputs, fixed.as_ref())?,
            Err(Refusal::Mismatch(outputs)) => self.encode_again(&outputs, fixed.as_ref())?,
            Err(Refusal::Dlq(reason, detail)) => Err((reason, detail)),
        };
        match encoded {
            Ok((rows, versions)) => {
                for r in &rows.rows {
                    rows_by_table[r.table as usize] += 1;
                }
                let schemas = match fixed {
                    Some(f) => f,
                    None => self.evolver.current().clone(),
                };
                debug_assert_eq!(schemas.versions(), versions);
                self.accept(rec, &rows, &schemas, digests)?;
            }
            Err((reason, detail)) => {
                metrics::counter!("s3_sink_dlq_records_total", "reason" => reason.as_str())
                    .increment(1);
                debug!(partition = rec.partition, offset = rec.offset, %reason, %detail, "Record sent to the dead-letter queue.");
                let ps = self.partitions.get(&rec.partition).expect("filtered above");
                let ev = Event::Dlq {
                    partition: rec.partition,
                    epoch: ps.epoch,
                    letter: DeadLetter {
                        offset: rec.offset,
                        key: rec.key.clone(),
                        value: rec.value.clone(),
                        reason,
                        detail,
                    },
                };
                if !self.emit(ev) {
                    return Ok(false);
                }
                let schemas = self.evolver.current().clone();
                self.accept(rec, &EncodedRows::default(), &schemas, digests)?;
            }
        }
        Ok(true)
    }

    /// The schemas a replayed segment of partition `p` is written with, if it replays one
    /// whose versions were recorded.
    fn replay_schemas_of(&mut self, p: i32) -> anyhow::Result<Option<Schemas>> {
        let Some(versions) = self
            .partitions
            .get(&p)
            .and_then(|ps| ps.replay.front())
            .and_then(|r| r.versions)
        else {
            return Ok(None);
        };
        if let Some(s) = self.replay_schemas.get(&versions) {
            return Ok(Some(s.clone()));
        }
        let s = self.evolver.schemas_of(versions)?;
        self.replay_schemas.insert(versions, s.clone());
        Ok(Some(s))
    }

    /// Encodes a record's outputs on this thread: under `fixed`, or the current schemas
    /// evolved as needed.
    #[allow(clippy::type_complexity)]
    fn encode_again(
        &mut self,
        outputs: &[form_transforms::Output],
        fixed: Option<&Schemas>,
    ) -> anyhow::Result<Result<(EncodedRows, [u32; 2]), (DlqReason, String)>> {
        let mut rows = EncodedRows::default();
        Ok(self
            .evolver
            .encode(outputs, fixed, &mut rows)?
            .map(|e| (rows, e.versions)))
    }

    /// Adds one record's rows to its partition's segment, rolling before/after as the policy
    /// says, or, during a replay, exactly at the recorded ends.
    fn accept(
        &mut self,
        rec: &InRecord,
        rows: &EncodedRows,
        schemas: &Schemas,
        digests: &[(String, String)],
    ) -> anyhow::Result<()> {
        let p = rec.partition;
        let skip = self.partitions[&p].skip_below;
        let kept_rows;
        let rows = if skip.iter().any(|s| rec.offset < *s) {
            kept_rows = EncodedRows {
                bytes: rows.bytes.clone(),
                rows: rows
                    .rows
                    .iter()
                    .filter(|r| rec.offset >= skip[Table::from(r.table) as usize])
                    .cloned()
                    .collect(),
            };
            &kept_rows
        } else {
            rows
        };
        // Recorded ends at or before this record close their replayed segments first.
        while let Some(r) = self.partitions[&p].replay.front().copied()
            && rec.offset >= r.end
        {
            self.close_replayed(p, r, digests)?;
        }
        let replay = self.partitions[&p].replay.front().copied();
        let policy = self.settings.policy;
        if replay.is_none() && !rows.rows.is_empty() {
            let ps = &self.partitions[&p];
            let before = ps.segment.as_ref().and_then(|seg| {
                // A file has one schema: rows of other versions start a new segment.
                if seg.schemas.versions() != schemas.versions() {
                    return Some(RollReason::SchemaChange);
                }
                let age = rec
                    .timestamp_ms
                    .and_then(|ts| policy.roll_before(seg.first_ts_ms.unwrap_or(ts), ts));
                age.or_else(|| too_many_days(seg, rows).then_some(RollReason::MaxDays))
            });
            if let Some(reason) = before {
                self.roll(p, rec.offset, reason)?;
            }
        }
        if !rows.rows.is_empty() {
            let part_size = self.settings.part_size;
            let ps = self.partitions.get_mut(&p).expect("assigned");
            // A replayed segment is named by its recorded start (the first record with rows
            // there, unless a changed module gives rows to an earlier one).
            let start = replay.map_or(rec.offset, |r| r.start);
            let seg = ps.segment.get_or_insert_with(|| Segment {
                start,
                first_ts_ms: rec.timestamp_ms,
                schemas: schemas.clone(),
                files: BTreeMap::new(),
                digests: BTreeSet::new(),
            });
            // Once per segment and module version, not a clone of every digest per record.
            for d in digests {
                if !seg.digests.contains(d) {
                    seg.digests.insert(d.clone());
                }
            }
            for row in &rows.rows {
                let table = Table::from(row.table);
                let file = seg.files.entry((table, row.day)).or_insert_with(|| {
                    let id = self.next_file_id;
                    self.next_file_id += 1;
                    let key = match &self.settings.data_keys {
                        Some(k) => k.key(table, row.day, p, seg.start),
                        None => object_key(
                            &self.settings.prefix,
                            table.as_str(),
                            &form_model::day_to_date(row.day),
                            &self.settings.topic,
                            p,
                            seg.start,
                            self.settings.format.extension(),
                        ),
                    };
                    let ts = seg.schemas.get(table.into()).clone();
                    let enc = self.settings.format.open(ts, part_size);
                    OpenFile {
                        id,
                        key,
                        table,
                        day: row.day,
                        enc,
                    }
                });
                file.enc.append(rows.datum(row))?;
            }
        }
        let ps = self.partitions.get_mut(&p).expect("assigned");
        ps.next_offset = Some(rec.offset + 1);
        ps.last_record = Instant::now();
        let after = match replay {
            Some(_) => None,
            None => ps.segment.as_ref().and_then(|seg| {
                policy.roll_after(seg.files.values().map(|f| FileSize {
                    rows: f.enc.rows(),
                    bytes: f.enc.encoded_bytes(),
                }))
            }),
        };
        if let Some(r) = replay
            && rec.offset + 1 >= r.end
        {
            self.close_replayed(p, r, digests)?;
        }
        if let Some(reason) = after {
            self.roll(p, rec.offset + 1, reason)?;
        }
        Ok(())
    }

    /// Closes the replayed segment `r` at its recorded end (an empty one too: the commit side
    /// then deletes the earlier run's objects that this replay does not rewrite).
    fn close_replayed(
        &mut self,
        p: i32,
        r: Replay,
        digests: &[(String, String)],
    ) -> anyhow::Result<()> {
        let ps = self.partitions.get_mut(&p).expect("assigned");
        ps.replay.pop_front();
        if ps.segment.is_some() {
            return self.roll(p, r.end, RollReason::Replayed);
        }
        let sealed = SealedSegment {
            partition: p,
            epoch: ps.epoch,
            start: r.start,
            end: r.end,
            reason: RollReason::Replayed,
            first_ts_ms: None,
            fingerprint: fingerprint(digests.iter()),
            versions: r
                .versions
                .unwrap_or_else(|| self.evolver.current().versions()),
            files: Vec::new(),
        };
        if !self.emit(Event::Sealed(sealed)) {
            error!("The upload side is gone; stopping the pipeline.");
        }
        Ok(())
    }

    /// A changed module was swapped in: every open segment closes at its partition's next
    /// offset, so each file holds the rows of one module version. (No partition replays
    /// recorded segments then: modules swap only once every replay is done.)
    fn roll_all_for_swap(&mut self, generation: u64) -> anyhow::Result<()> {
        let open: Vec<i32> = self
            .partitions
            .iter()
            .filter(|(_, ps)| ps.segment.is_some() && !ps.replaying())
            .map(|(p, _)| *p)
            .collect();
        info!(
            generation,
            partitions = open.len(),
            digests = ?self.transform.digests(),
            "Transform modules swapped: closing the open files."
        );
        for p in open {
            self.roll_at_next(p, RollReason::TransformSwap)?;
            if !self.progress(p) {
                break;
            }
        }
        self.generation = generation;
        metrics::gauge!("s3_sink_transform_generation").set(generation as f64);
        metrics::counter!("s3_sink_transform_swaps_total").increment(1);
        Ok(())
    }

    fn roll_at_next(&mut self, p: i32, reason: RollReason) -> anyhow::Result<()> {
        let Some(next) = self.partitions.get(&p).and_then(|ps| ps.next_offset) else {
            return Ok(());
        };
        self.roll(p, next, reason)
    }

    /// Closes partition `p`'s open segment at `end` (exclusive) and hands its files over.
    fn roll(&mut self, p: i32, end: i64, reason: RollReason) -> anyhow::Result<()> {
        let Some(ps) = self.partitions.get_mut(&p) else {
            return Ok(());
        };
        let Some(seg) = ps.segment.take() else {
            return Ok(());
        };
        let epoch = ps.epoch;
        let transforms = serde_json::to_string(
            &seg.digests
                .iter()
                .map(|(n, d)| serde_json::json!({"uses": n, "sha256": d}))
                .collect::<Vec<_>>(),
        )?;
        let mut files = Vec::with_capacity(seg.files.len());
        for ((table, day), f) in seg.files {
            let meta = vec![
                ("form_etl.table".to_owned(), table.as_str().to_owned()),
                (
                    "form_etl.event_date".to_owned(),
                    form_model::day_to_date(day),
                ),
                (
                    "form_etl.source.topic".to_owned(),
                    self.settings.topic.clone(),
                ),
                ("form_etl.source.partition".to_owned(), p.to_string()),
                (
                    "form_etl.source.first_offset".to_owned(),
                    seg.start.to_string(),
                ),
                ("form_etl.source.end_offset".to_owned(), end.to_string()),
                ("form_etl.transforms".to_owned(), transforms.clone()),
            ];
            let rows = f.enc.rows();
            let file = f.enc.finish(&meta)?;
            let budget = self.inflight.acquire(file.head.len() + file.tail.len());
            files.push(SealedFile {
                file_id: f.id,
                key: f.key,
                table: f.table,
                day: f.day,
                rows,
                file,
                budget,
            });
        }
        debug!(
            partition = p,
            start = seg.start,
            end,
            reason = reason.as_str(),
            files = files.len(),
            "Segment closed."
        );
        metrics::counter!("s3_sink_segments_total", "reason" => reason.as_str()).increment(1);
        let sealed = SealedSegment {
            partition: p,
            epoch,
            start: seg.start,
            end,
            reason,
            first_ts_ms: seg.first_ts_ms,
            fingerprint: fingerprint(seg.digests.iter()),
            versions: seg.schemas.versions(),
            files,
        };
        if !self.emit(Event::Sealed(sealed)) {
            error!("The upload side is gone; stopping the pipeline.");
        }
        Ok(())
    }

    /// Streams every full part.
    fn ship_parts(&mut self) -> anyhow::Result<()> {
        let mut out = Vec::new();
        for (p, ps) in self.partitions.iter_mut() {
            if let Some(seg) = ps.segment.as_mut() {
                for f in seg.files.values_mut() {
                    while let Some(body) = f.enc.take_part() {
                        let file = FileId {
                            id: f.id,
                            partition: *p,
                            epoch: ps.epoch,
                            table: f.table,
                            key: f.key.clone(),
                            first: seg.start,
                        };
                        out.push((file, body));
                    }
                }
            }
        }
        for (file, body) in out {
            let budget = self.inflight.acquire(body.len());
            if !self.emit(Event::Part { file, body, budget }) {
                break;
            }
        }
        Ok(())
    }

    fn open_bytes(&self, p: i32) -> usize {
        self.partitions
            .get(&p)
            .and_then(|ps| ps.segment.as_ref())
            .map_or(0, |s| s.files.values().map(|f| f.enc.buffered()).sum())
    }

    /// Over budget: flush the partition holding the most (a sealed, wall-clock boundary).
    /// Returns the partitions flushed; the caller reports their progress.
    fn enforce_budget(&mut self) -> anyhow::Result<Vec<i32>> {
        let mut flushed = Vec::new();
        loop {
            let total: usize = self.partitions.keys().map(|p| self.open_bytes(*p)).sum();
            metrics::gauge!("s3_sink_open_file_bytes").set(total as f64);
            if total <= self.settings.open_budget {
                return Ok(flushed);
            }
            let largest = self
                .partitions
                .iter()
                .filter(|(_, ps)| ps.segment.is_some() && !ps.replaying())
                .map(|(p, _)| (self.open_bytes(*p), *p))
                .max();
            let Some((bytes, p)) = largest else {
                return Ok(flushed);
            };
            info!(
                partition = p,
                bytes,
                total,
                budget = self.settings.open_budget,
                "Memory budget exceeded: flushing the largest partition."
            );
            self.roll_at_next(p, RollReason::Memory)?;
            flushed.push(p);
        }
    }
}

/// Whether `rows` would give `seg` more than [`MAX_SEGMENT_DAYS`] event days.
fn too_many_days(seg: &Segment, rows: &EncodedRows) -> bool {
    let mut days: BTreeSet<i64> = seg.files.keys().map(|(_, d)| *d).collect();
    if days.len() < MAX_SEGMENT_DAYS && rows.rows.len() < MAX_SEGMENT_DAYS - days.len() {
        return false;
    }
    days.extend(rows.rows.iter().map(|r| r.day));
    days.len() > MAX_SEGMENT_DAYS
}

/// A short digest of the modules that produced a segment's rows (12 hex digits of the sha256
/// of their `uses=sha256` list), recorded with its boundaries.
pub(crate) fn fingerprint<'a>(digests: impl Iterator<Item = &'a (String, String)>) -> String {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    for (uses, sha) in digests {
        h.update(uses.as_bytes());
        h.update(b"=");
        h.update(sha.as_bytes());
        h.update(b";");
    }
    hex::encode(&h.finalize()[..6])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transform::tests::Identity;

    fn settings(max_records: u64) -> PipelineSettings {
        PipelineSettings {
            topic: "t".into(),
            prefix: "p".into(),
            policy: RollingPolicy {
                max_records,
                max_bytes: u64::MAX,
                max_age: Duration::from_secs(3600),
            },
            idle_flush: Duration::from_secs(3600),
            open_budget: usize::MAX,
            part_size: 5 << 20,
            data_keys: None,
            format: Arc::new(crate::avro::AvroFormat {
                codec: apache_avro::Codec::Null,
            }),
        }
    }

    /// An enriched-record stand-in already in flattened form (the Identity transform passes it).
    fn record(partition: i32, offset: i64, day: u32, fields: usize) -> InRecord {
        let ts = format!("2022-10-{day:02} 13:00:15");
        let micros = form_model::parse_timestamp(&ts).unwrap();
        let form = serde_json::json!({
            "id": format!("f{offset}"), "type": null, "title": "t", "settings_language": null,
            "settings_progress_bar": null, "settings_show_time_to_complete": null,
            "settings_show_number_of_submissions": null, "settings_redirect_after_submit_url": null,
            "settings_meta_allow_indexing": null, "settings_meta_description": null,
            "retrieved_timestamp": micros, "event_happened_at": micros, "event_type": "created"
        });
        let mut ff = Vec::new();
        for i in 0..fields {
            let mut row = serde_json::json!({"id": format!("x{i}"), "type": "open_text"});
            for (k, v) in form.as_object().unwrap() {
                row[format!("form_{k}")] = v.clone();
            }
            ff.push(row);
        }
        let value = serde_json::json!({"form": [form], "form_field": ff})
            .to_string()
            .into_bytes();
        InRecord {
            partition,
            offset,
            timestamp_ms: Some(offset * 1000),
            key: None,
            value: Some(value),
        }
    }

    #[test]
    fn queued_batches_coalesce_in_order_up_to_the_limit_and_stop_at_another_command() {
        let (tx, mut rx) = mpsc::channel(16);
        let batch = |p: i32, from: i64, n: i64| {
            Cmd::Batch((from..from + n).map(|o| record(p, o, 1, 0)).collect())
        };
        let offsets = |rs: &[InRecord]| {
            rs.iter()
                .map(|r| (r.partition, r.offset))
                .collect::<Vec<_>>()
        };
        for cmd in [batch(1, 10, 2), batch(0, 0, 3), Cmd::Tick, batch(0, 3, 1)] {
            tx.try_send(cmd).unwrap();
        }
        let mut next = None;
        let first = vec![record(0, 100, 1, 0)];
        let got = coalesce(first, &mut rx, &mut next);
        assert_eq!(
            offsets(&got),
            [(0, 100), (1, 10), (1, 11), (0, 0), (0, 1), (0, 2)]
        );
        assert!(matches!(next, Some(Cmd::Tick)), "the tick is kept for next");
        // Nothing queued: the batch alone.
        let Some(Cmd::Batch(rest)) = rx.try_recv().ok() else {
            panic!("the last batch is still queued");
        };
        let mut next = None;
        assert_eq!(offsets(&coalesce(rest, &mut rx, &mut next)), [(0, 3)]);
        assert!(next.is_none());
        // The limit: a batch at it takes nothing more.
        tx.try_send(batch(0, 4, 1)).unwrap();
        let full: Vec<InRecord> = (0..COALESCE_MAX_RECORDS as i64)
            .map(|o| record(2, o, 1, 0))
            .collect();
        assert_eq!(
            coalesce(full, &mut rx, &mut next).len(),
            COALESCE_MAX_RECORDS
        );
        assert!(rx.try_recv().is_ok(), "left queued");
        // And by bytes: one record of 1 MiB takes nothing more.
        tx.try_send(batch(0, 5, 1)).unwrap();
        let mut big = record(3, 0, 1, 0);
        big.value = Some(vec![b' '; COALESCE_MAX_BYTES]);
        assert_eq!(coalesce(vec![big], &mut rx, &mut next).len(), 1);
        assert!(rx.try_recv().is_ok(), "left queued");
    }

    struct Harness {
        pipe: Pipeline,
        rx: mpsc::Receiver<Event>,
        _rt: tokio::runtime::Runtime,
        _dir: tempfile::TempDir,
    }

    fn harness(max_records: u64) -> Harness {
        harness_with(max_records, Identity::default())
    }

    /// A pipeline with its schema versions in a temporary directory (a `file://` store).
    fn harness_with(max_records: u64, transform: Identity) -> Harness {
        let (tx, rx) = mpsc::channel(100_000);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn crate::store::ObjectStore> =
            Arc::new(crate::store::FsStore::new(dir.path().join("bucket")));
        let registry = crate::schemas::Registry::new(store, "p", Default::default());
        let evolver = rt
            .block_on(Evolver::open(
                registry,
                form_model::evolve::Policy::default(),
            ))
            .unwrap();
        let pipe = Pipeline::new(
            settings(max_records),
            Box::new(transform),
            evolver,
            tx,
            InFlightBudget::new(1 << 30),
        );
        Harness {
            pipe,
            rx,
            _rt: rt,
            _dir: dir,
        }
    }

    /// (start, end, keys) of every sealed segment so far.
    fn sealed(h: &mut Harness) -> Vec<(i64, i64, Vec<String>)> {
        let mut out = Vec::new();
        while let Ok(ev) = h.rx.try_recv() {
            if let Event::Sealed(s) = ev {
                out.push((
                    s.start,
                    s.end,
                    s.files.iter().map(|f| f.key.clone()).collect(),
                ));
            }
        }
        out
    }

    #[test]
    fn replay_from_a_boundary_reproduces_keys() {
        let recs: Vec<InRecord> = (0..20)
            .map(|o| record(0, o, 1 + (o as u32 % 3), 2))
            .collect();
        let mut h = harness(5);
        h.pipe
            .handle(Cmd::Assign {
                partition: 0,
                epoch: 1,
                replay: vec![],
            })
            .unwrap();
        h.pipe.handle(Cmd::Batch(recs.clone())).unwrap();
        let first = sealed(&mut h);
        assert!(!first.is_empty());
        // Replay from the second boundary, in small batches: same segments from there on.
        let from = first[1].0;
        let mut h2 = harness(5);
        h2.pipe
            .handle(Cmd::Assign {
                partition: 0,
                epoch: 1,
                replay: vec![],
            })
            .unwrap();
        for chunk in recs[from as usize..].chunks(3) {
            h2.pipe.handle(Cmd::Batch(chunk.to_vec())).unwrap();
        }
        assert_eq!(sealed(&mut h2), first[1..].to_vec());
    }

    #[test]
    fn sealed_boundary_is_honoured_on_replay() {
        let recs: Vec<InRecord> = (0..10).map(|o| record(0, o, 1, 1)).collect();
        let mut h = harness(1000);
        h.pipe
            .handle(Cmd::Assign {
                partition: 0,
                epoch: 1,
                replay: vec![Replay {
                    start: 0,
                    end: 4,
                    versions: None,
                }],
            })
            .unwrap();
        h.pipe.handle(Cmd::Batch(recs)).unwrap();
        let s = sealed(&mut h);
        assert_eq!(s.len(), 1);
        assert_eq!((s[0].0, s[0].1), (0, 4));
        assert!(
            s[0].2
                .iter()
                .all(|k| k.ends_with("t+0+00000000000000000000.avro")),
            "{s:?}"
        );
        h.pipe.handle(Cmd::Drain).unwrap();
        let s = sealed(&mut h);
        assert_eq!((s[0].0, s[0].1), (4, 10));
    }

    /// A record with `extra` attributes added to its form row.
    fn with_form_attributes(mut r: InRecord, extra: serde_json::Value) -> InRecord {
        let mut v: serde_json::Value = serde_json::from_slice(r.value.as_ref().unwrap()).unwrap();
        for (k, x) in extra.as_object().unwrap() {
            v["form"][0][k] = x.clone();
        }
        r.value = Some(v.to_string().into_bytes());
        r
    }

    #[test]
    fn strict_mode_dead_letters_a_schema_mismatch() {
        let mut h = harness(1000);
        h.pipe.evolver.set_policy(form_model::evolve::Policy {
            mode: form_model::evolve::Mode::Strict,
            ..Default::default()
        });
        h.pipe
            .handle(Cmd::Assign {
                partition: 0,
                epoch: 1,
                replay: vec![],
            })
            .unwrap();
        let bad = with_form_attributes(record(0, 0, 1, 1), serde_json::json!({"surprise": 1}));
        h.pipe
            .handle(Cmd::Batch(vec![bad, record(0, 1, 1, 1)]))
            .unwrap();
        let mut dlq = Vec::new();
        let mut progress = None;
        while let Ok(ev) = h.rx.try_recv() {
            match ev {
                Event::Dlq { letter, .. } => dlq.push(letter),
                Event::Progress {
                    next_offset, open, ..
                } => progress = Some((next_offset, open)),
                _ => {}
            }
        }
        assert_eq!(dlq.len(), 1);
        assert_eq!(dlq[0].reason, DlqReason::SchemaMismatch);
        assert_eq!(
            dlq[0].detail,
            "table `form` column `surprise`: not in the schema"
        );
        // The good record opens the segment at its own offset.
        assert_eq!(progress, Some((2, Some((1, Some(1000))))));
        assert_eq!(h.pipe.evolver.current().versions(), [1, 1]);
    }

    #[test]
    fn a_new_attribute_makes_a_schema_version_and_starts_a_segment() {
        let mut h = harness(1000);
        h.pipe
            .handle(Cmd::Assign {
                partition: 0,
                epoch: 1,
                replay: vec![],
            })
            .unwrap();
        let new = with_form_attributes(
            record(0, 2, 1, 1),
            serde_json::json!({"settings_meta_image_href": "https://x/i.png", "my-key": 3}),
        );
        let conflict =
            with_form_attributes(record(0, 3, 1, 1), serde_json::json!({"my-key": "three"}));
        h.pipe
            .handle(Cmd::Batch(vec![
                record(0, 0, 1, 1),
                record(0, 1, 1, 1),
                new,
                conflict,
                record(0, 4, 1, 1),
            ]))
            .unwrap();
        h.pipe.handle(Cmd::Drain).unwrap();
        let mut sealed = Vec::new();
        while let Ok(ev) = h.rx.try_recv() {
            match ev {
                Event::Dlq { letter, .. } => panic!("dead-lettered: {letter:?}"),
                Event::Sealed(s) => sealed.push(s),
                _ => {}
            }
        }
        let got: Vec<_> = sealed
            .iter()
            .map(|s| (s.start, s.end, s.reason, s.versions))
            .collect();
        assert_eq!(
            got,
            vec![
                (0, 2, RollReason::SchemaChange, [1, 1]),
                // The conflict needs `_rescued_data`: one more version of `form`.
                (2, 3, RollReason::SchemaChange, [2, 1]),
                (3, 5, RollReason::Drain, [3, 1])
            ]
        );
        // The files carry their own schema, and read back with it.
        let last = &sealed[2];
        let form = last.files.iter().find(|f| f.table == Table::Form).unwrap();
        let bytes = [form.file.head.as_slice(), form.file.tail.as_slice()].concat();
        let reader = apache_avro::Reader::new(bytes.as_slice()).unwrap();
        let rows: Vec<_> = reader.map(|v| v.unwrap()).collect();
        assert_eq!(rows.len(), 2);
        let apache_avro::types::Value::Record(fields) = &rows[0] else {
            panic!()
        };
        let get = |name: &str| {
            fields
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(
            get("_rescued_data"),
            Some(apache_avro::types::Value::Union(
                1,
                Box::new(apache_avro::types::Value::String(
                    r#"{"my-key":"three"}"#.into()
                ))
            ))
        );
        assert_eq!(
            get("my_key"),
            Some(apache_avro::types::Value::Union(
                0,
                Box::new(apache_avro::types::Value::Null)
            ))
        );
        assert_eq!(h.pipe.evolver.current().versions(), [3, 1]);
    }

    /// (start, end, reason, transforms metadata of its files) of every sealed segment so far.
    fn sealed_digests(h: &mut Harness) -> Vec<(i64, i64, RollReason, BTreeSet<String>)> {
        let mut out = Vec::new();
        while let Ok(ev) = h.rx.try_recv() {
            if let Event::Sealed(s) = ev {
                let metas = s
                    .files
                    .iter()
                    .map(|f| {
                        let r = apache_avro::Reader::new(
                            [f.file.head.as_slice(), f.file.tail.as_slice()]
                                .concat()
                                .as_slice(),
                        )
                        .unwrap()
                        .user_metadata()
                        .clone();
                        String::from_utf8(r["form_etl.transforms"].clone()).unwrap()
                    })
                    .collect();
                out.push((s.start, s.end, s.reason, metas));
            }
        }
        out
    }

    #[test]
    fn a_module_swap_closes_every_open_segment() {
        let gen_counter = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut h = harness_with(
            1000,
            Identity {
                generation: gen_counter.clone(),
                applied: 0,
            },
        );
        for p in 0..2 {
            h.pipe
                .handle(Cmd::Assign {
                    partition: p,
                    epoch: 1,
                    replay: vec![],
                })
                .unwrap();
        }
        h.pipe
            .handle(Cmd::Batch(vec![record(0, 0, 1, 1), record(1, 0, 1, 1)]))
            .unwrap();
        assert!(sealed_digests(&mut h).is_empty());
        gen_counter.store(1, std::sync::atomic::Ordering::SeqCst);
        // Only partition 0 gets new records: partition 1's open files close too.
        h.pipe.handle(Cmd::Batch(vec![record(0, 1, 1, 1)])).unwrap();
        let s = sealed_digests(&mut h);
        assert_eq!(s.len(), 2, "{s:?}");
        let old = format!("[{{\"uses\":\"identity\",\"sha256\":\"{:064}\"}}]", 0);
        let new = format!("[{{\"uses\":\"identity\",\"sha256\":\"{:064}\"}}]", 1);
        for (start, end, reason, metas) in &s {
            assert_eq!((*start, *end, *reason), (0, 1, RollReason::TransformSwap));
            assert_eq!(metas, &BTreeSet::from([old.clone()]));
        }
        h.pipe.handle(Cmd::Drain).unwrap();
        let s = sealed_digests(&mut h);
        assert_eq!(s.len(), 1, "{s:?}");
        assert_eq!((s[0].0, s[0].1), (1, 2));
        assert_eq!(s[0].3, BTreeSet::from([new]));
    }

    #[test]
    fn a_module_swap_waits_for_the_replay_to_end() {
        let gen_counter = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut h = harness_with(
            1000,
            Identity {
                generation: gen_counter.clone(),
                applied: 0,
            },
        );
        h.pipe
            .handle(Cmd::Assign {
                partition: 0,
                epoch: 1,
                replay: vec![Replay {
                    start: 0,
                    end: 4,
                    versions: None,
                }],
            })
            .unwrap();
        h.pipe
            .handle(Cmd::Batch((0..2).map(|o| record(0, o, 1, 1)).collect()))
            .unwrap();
        gen_counter.store(1, std::sync::atomic::Ordering::SeqCst);
        h.pipe
            .handle(Cmd::Batch((2..6).map(|o| record(0, o, 1, 1)).collect()))
            .unwrap();
        let s = sealed_digests(&mut h);
        assert_eq!(s.len(), 1, "{s:?}");
        assert_eq!((s[0].0, s[0].1, s[0].2), (0, 4, RollReason::Replayed));
        // Rewritten by the modules the replay started with only.
        let old = format!("[{{\"uses\":\"identity\",\"sha256\":\"{:064}\"}}]", 0);
        assert_eq!(s[0].3, BTreeSet::from([old.clone()]));
        // Once the replay is done, the swap closes the segment after it.
        h.pipe.handle(Cmd::Batch(vec![record(0, 6, 1, 1)])).unwrap();
        let s = sealed_digests(&mut h);
        assert_eq!(s.len(), 1, "{s:?}");
        assert_eq!((s[0].0, s[0].1, s[0].2), (4, 6, RollReason::TransformSwap));
        assert_eq!(s[0].3, BTreeSet::from([old]));
    }

    #[test]
    fn a_drain_during_a_replay_abandons_the_replayed_segment() {
        let mut h = harness(3);
        h.pipe
            .handle(Cmd::Assign {
                partition: 0,
                epoch: 1,
                replay: vec![Replay {
                    start: 2,
                    end: 10,
                    versions: None,
                }],
            })
            .unwrap();
        // Records 0 and 1 had no rows in the first run; here they do: they join the replayed
        // segment, named by its recorded start. max-records (3) does not cut it.
        h.pipe
            .handle(Cmd::Batch((0..6).map(|o| record(0, o, 1, 0)).collect()))
            .unwrap();
        h.pipe.handle(Cmd::Drain).unwrap();
        let mut sealed = Vec::new();
        let mut abandoned = Vec::new();
        let mut progress = None;
        while let Ok(ev) = h.rx.try_recv() {
            match ev {
                Event::Sealed(s) => sealed.push((s.start, s.end)),
                Event::Abandoned { file_ids, .. } => abandoned.extend(file_ids),
                Event::Progress {
                    next_offset, open, ..
                } => progress = Some((next_offset, open)),
                _ => {}
            }
        }
        assert!(sealed.is_empty(), "{sealed:?}");
        assert_eq!(abandoned.len(), 1, "the open form file");
        assert_eq!(progress, Some((6, None)));
    }

    #[test]
    fn recorded_segments_replay_exactly_even_when_empty_now() {
        let mut h = harness(1000);
        h.pipe
            .handle(Cmd::Assign {
                partition: 0,
                epoch: 1,
                replay: vec![
                    Replay {
                        start: 0,
                        end: 3,
                        versions: None,
                    },
                    Replay {
                        start: 5,
                        end: 8,
                        versions: None,
                    },
                ],
            })
            .unwrap();
        let mut recs: Vec<InRecord> = (0..12).map(|o| record(0, o, 1, 1)).collect();
        // Records 3..8 are not rows any more (a changed module refuses them): the recorded
        // segment [5, 8) still closes, with no files, so that the commit side deletes the
        // objects the first run wrote for it.
        for r in &mut recs[3..8] {
            r.value = Some(b"not rows".to_vec());
        }
        h.pipe.handle(Cmd::Batch(recs)).unwrap();
        h.pipe.handle(Cmd::Drain).unwrap();
        let s = sealed(&mut h);
        let ranges: Vec<(i64, i64, usize)> = s.iter().map(|s| (s.0, s.1, s.2.len())).collect();
        assert_eq!(ranges, vec![(0, 3, 2), (5, 8, 0), (8, 12, 2)]);
    }

    #[test]
    fn rows_before_a_recorded_start_join_the_recorded_segment() {
        let mut h = harness(1000);
        h.pipe
            .handle(Cmd::Assign {
                partition: 0,
                epoch: 1,
                replay: vec![Replay {
                    start: 5,
                    end: 8,
                    versions: None,
                }],
            })
            .unwrap();
        // The first run had no rows before offset 5; this run (another module) has: they go
        // into the recorded segment, whose objects keep the recorded name.
        h.pipe
            .handle(Cmd::Batch((3..9).map(|o| record(0, o, 1, 0)).collect()))
            .unwrap();
        h.pipe.handle(Cmd::Drain).unwrap();
        let s = sealed(&mut h);
        assert_eq!(s.len(), 2, "{s:?}");
        assert_eq!((s[0].0, s[0].1), (5, 8));
        assert!(
            s[0].2[0].ends_with("t+0+00000000000000000005.avro"),
            "{s:?}"
        );
        assert_eq!((s[1].0, s[1].1), (8, 9));
    }

    #[test]
    fn a_segment_spans_at_most_max_segment_days() {
        let mut h = harness(1_000_000);
        h.pipe
            .handle(Cmd::Assign {
                partition: 0,
                epoch: 1,
                replay: vec![],
            })
            .unwrap();
        let n = MAX_SEGMENT_DAYS as i64 + 3;
        let recs: Vec<InRecord> = (0..n)
            .map(|o| {
                let mut r = record(0, o, 1, 0);
                let micros = form_model::parse_timestamp("2022-01-01 00:00:00").unwrap()
                    + o * 86_400_000_000;
                let mut v: serde_json::Value =
                    serde_json::from_slice(r.value.as_ref().unwrap()).unwrap();
                v["form"][0]["event_happened_at"] = serde_json::json!(micros);
                r.value = Some(v.to_string().into_bytes());
                r
            })
            .collect();
        h.pipe.handle(Cmd::Batch(recs)).unwrap();
        let s = sealed_digests(&mut h);
        assert_eq!(s.len(), 1, "{s:?}");
        assert_eq!(
            (s[0].0, s[0].1, s[0].2),
            (0, MAX_SEGMENT_DAYS as i64, RollReason::MaxDays)
        );
    }

    /// A memory flush of a partition the batch did not touch still reports where that
    /// partition stands: otherwise the commit side keeps its segment open and never commits
    /// past the segment's start (the bench's `--max-records` runs ended so).
    #[test]
    fn a_memory_flush_of_an_untouched_partition_reports_its_progress() {
        let mut h = harness(1_000_000);
        for partition in [0, 1] {
            h.pipe
                .handle(Cmd::Assign {
                    partition,
                    epoch: 1,
                    replay: vec![],
                })
                .unwrap();
        }
        let recs: Vec<InRecord> = (0..50).map(|o| record(0, o, 1, 20)).collect();
        h.pipe.handle(Cmd::Batch(recs)).unwrap();
        while h.rx.try_recv().is_ok() {}
        let held = h.pipe.open_bytes(0);
        assert!(held > 0);
        // Exactly full: one more record of partition 1 flushes partition 0, the largest.
        h.pipe.settings.open_budget = held;
        h.pipe.handle(Cmd::Batch(vec![record(1, 0, 1, 1)])).unwrap();
        let mut sealed = Vec::new();
        let mut progress = BTreeMap::new();
        while let Ok(ev) = h.rx.try_recv() {
            match ev {
                Event::Sealed(s) => sealed.push((s.partition, s.start, s.end, s.reason)),
                Event::Progress {
                    partition,
                    next_offset,
                    open,
                    ..
                } => {
                    progress.insert(partition, (next_offset, open.map(|o| o.0)));
                }
                _ => {}
            }
        }
        assert_eq!(sealed, vec![(0, 0, 50, RollReason::Memory)]);
        assert_eq!(progress.get(&0), Some(&(50, None)), "{progress:?}");
        assert_eq!(progress.get(&1), Some(&(1, Some(0))), "{progress:?}");
    }
}

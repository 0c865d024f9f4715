//! The committer of `output.type: iceberg`: a range of a partition is committed when its data
//! files are uploaded, by one snapshot per table that appends them and moves the partition's
//! offset in the summary (`lake.rs`); then one Kafka transaction sends the range's dead letters
//! and moves the group's offset.
//!
//! Why this is exactly once, whatever a replay cuts differently:
//! - A data file is invisible until a snapshot references it; uploaded files of a range that
//!   never committed are orphans (`s3-sink iceberg orphans` lists and deletes them).
//! - The tables are the truth for rows: on assignment each table's offsets are read from its
//!   snapshot history, and the rows of records below a table's offset are dropped for that
//!   table ([`Cmd::SkipBelow`]): `form` and `form_field` are two commits, and a crash between
//!   them leaves one ahead.
//! - A commit checks, on the base it merges onto, that each partition still holds the offset
//!   the range starts from (or already holds its end: an earlier attempt landed), under a
//!   compare-and-swap on the base snapshot: a zombie or a lost answer cannot add a range twice.
//! - Dead letters go in the Kafka transaction that moves the group's offset, after the tables:
//!   the group offset is never ahead of the tables, and a replay from it sends again only
//!   letters whose transaction did not commit.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::ConsumerGroupMetadata;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::commit::{
    Assigned, CommitResult, Committer, RunningCommit, advance_next, age_of_oldest, raise,
};
use crate::committer::{CommitError, CommitPlan, KafkaCommitter, PlannedPartition};
use crate::lake::{Lake, NewFile, RangeCommit};
use crate::pipeline::{Cmd, DeadLetter, Event};
use crate::tables::Table;
use crate::tracker::Wanted;
use crate::uploads::{Fence, FileDone, FileId, FileMsg, Outcome, Uploads, count_outcome};

/// A closed segment: its files, until all are uploaded.
#[derive(Debug)]
struct Seg {
    end: i64,
    first_ts_ms: Option<i64>,
    /// By file id: table and file (its size known once uploaded).
    files: HashMap<u64, (Table, NewFile)>,
    pending: HashSet<u64>,
    /// Kept open for the uploads (a data file needs no gate: it is invisible until committed).
    _gate: watch::Sender<bool>,
}

/// One partition.
#[derive(Debug)]
struct Part {
    epoch: u64,
    /// The offset each table holds (`None`: nothing of this partition yet).
    tables: [Option<i64>; 2],
    /// The group's committed offset: dead letters below it were sent.
    group: Option<i64>,
    next_offset: Option<i64>,
    open: Option<(i64, Option<i64>)>,
    segments: VecDeque<Seg>,
    dlq: Vec<DeadLetter>,
}

fn min_opt(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        _ => None,
    }
}

impl Part {
    /// Committed everywhere (both tables and the group) up to here.
    fn cursor(&self) -> Option<i64> {
        min_opt(min_opt(self.tables[0], self.tables[1]), self.group)
    }

    /// How far a commit may go now: past every uploaded segment in order, and to the next
    /// offset when nothing is open or waiting (records with no rows, transaction markers).
    fn upto(&self) -> (Option<i64>, usize) {
        let mut upto = self.cursor();
        let mut n = 0;
        for s in &self.segments {
            if !s.pending.is_empty() {
                return (upto, n);
            }
            upto = Some(upto.map_or(s.end, |u| u.max(s.end)));
            n += 1;
        }
        if self.open.is_none()
            && let Some(next) = self.next_offset
        {
            upto = Some(upto.map_or(next, |u| u.max(next)));
        }
        (upto, n)
    }

    fn wants_commit(&self) -> Option<(i64, usize)> {
        let (upto, n) = self.upto();
        let upto = upto?;
        (self.cursor().is_none_or(|c| upto > c)).then_some((upto, n))
    }
}

/// One partition of a commit.
#[derive(Debug)]
struct PlanPart {
    partition: i32,
    epoch: u64,
    to: i64,
    from: [Option<i64>; 2],
    files: [Vec<NewFile>; 2],
}

/// A commit: the tables' part, then the Kafka part.
#[derive(Debug)]
struct Plan {
    commit_id: String,
    parts: Vec<PlanPart>,
    kafka: CommitPlan,
    /// What each table holds after its commit (filled by the task as they land).
    landed: Mutex<[Vec<(i32, i64)>; 2]>,
}

/// See the module's doc.
pub(crate) struct IcebergCommitter {
    lake: Arc<Lake>,
    kafka: Arc<KafkaCommitter>,
    fence: Arc<Fence>,
    uploads: Uploads,
    interval: Duration,
    partitions: HashMap<i32, Part>,
    drained: bool,
    failure: Option<String>,
    files_uploaded: u64,
}

impl std::fmt::Debug for IcebergCommitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IcebergCommitter")
            .field("lake", &self.lake)
            .field("partitions", &self.partitions.len())
            .finish_non_exhaustive()
    }
}

impl IcebergCommitter {
    pub(crate) fn new(
        lake: Arc<Lake>,
        kafka: Arc<KafkaCommitter>,
        fence: Arc<Fence>,
        uploads: Uploads,
        interval: Duration,
    ) -> Self {
        Self {
            lake,
            kafka,
            fence,
            uploads,
            interval,
            partitions: HashMap::new(),
            drained: false,
            failure: None,
            files_uploaded: 0,
        }
    }

    fn current(&mut self, partition: i32, epoch: u64) -> Option<&mut Part> {
        self.partitions
            .get_mut(&partition)
            .filter(|p| p.epoch == epoch)
    }
}

/// The group is ahead of a table: its offsets say records were committed that the table does
/// not have (the table was replaced, or the group's offsets were moved by hand). The sink rewinds
/// the group to the tables and starts again.
#[derive(Debug, thiserror::Error)]
#[error(
    "the consumer group's offsets are ahead of the Iceberg tables for partitions {0:?} (partition, group offset, tables' offset): the tables are the truth"
)]
pub(crate) struct GroupAhead(pub(crate) Vec<(i32, i64, Option<i64>)>);

impl Committer for IcebergCommitter {
    fn assign(&mut self, assigned: Vec<Assigned>) -> anyhow::Result<Vec<Cmd>> {
        let lake = self.lake.clone();
        let stored = tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(lake.stored_offsets())
        })?;
        let mut cmds = Vec::new();
        let mut ahead = Vec::new();
        for a in assigned {
            let p = a.partition;
            let tables = [stored[0].get(&p).copied(), stored[1].get(&p).copied()];
            let low = min_opt(tables[0], tables[1]);
            if let Some(g) = a.committed
                && low.is_none_or(|l| l < g)
            {
                ahead.push((p, g, low));
                continue;
            }
            info!(partition = p, group = ?a.committed, form = ?tables[0], form_field = ?tables[1], "Partition assigned: resuming from the Iceberg tables' offsets.");
            self.revoke(p);
            self.partitions.insert(
                p,
                Part {
                    epoch: a.epoch,
                    tables,
                    group: a.committed,
                    next_offset: a.committed,
                    open: None,
                    segments: VecDeque::new(),
                    dlq: Vec::new(),
                },
            );
            cmds.push(Cmd::Assign {
                partition: p,
                epoch: a.epoch,
                replay: Vec::new(),
            });
            cmds.push(Cmd::SkipBelow {
                partition: p,
                offsets: [tables[0].unwrap_or(i64::MIN), tables[1].unwrap_or(i64::MIN)],
            });
        }
        if !ahead.is_empty() {
            return Err(GroupAhead(ahead).into());
        }
        Ok(cmds)
    }

    fn revoke(&mut self, partition: i32) {
        self.partitions.remove(&partition);
        self.uploads.abandon_partition(partition);
    }

    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Part { file, body, budget } => {
                if self.current(file.partition, file.epoch).is_some() {
                    self.uploads.part(file, body, budget);
                }
            }
            Event::Sealed(seg) => {
                if self.current(seg.partition, seg.epoch).is_none() {
                    return;
                }
                let (gate, _) = watch::channel(true);
                let mut files = HashMap::new();
                for f in seg.files {
                    files.insert(
                        f.file_id,
                        (
                            f.table,
                            NewFile {
                                key: f.key.clone(),
                                day: f.day,
                                rows: f.rows,
                                bytes: 0,
                            },
                        ),
                    );
                    let track = self.uploads.file(FileId {
                        id: f.file_id,
                        partition: seg.partition,
                        epoch: seg.epoch,
                        table: f.table,
                        key: f.key,
                        first: seg.start,
                    });
                    let _ = track.tx.send(FileMsg::Finish {
                        file: f.file,
                        end: seg.end,
                        gate: gate.subscribe(),
                        budget: f.budget,
                    });
                }
                debug!(
                    partition = seg.partition,
                    start = seg.start,
                    end = seg.end,
                    files = files.len(),
                    "Segment handed to the uploads."
                );
                let pending = files.keys().copied().collect();
                if let Some(p) = self.current(seg.partition, seg.epoch) {
                    p.segments.push_back(Seg {
                        end: seg.end,
                        first_ts_ms: seg.first_ts_ms,
                        files,
                        pending,
                        _gate: gate,
                    });
                }
            }
            Event::Progress {
                partition,
                epoch,
                next_offset,
                open,
            } => {
                if let Some(p) = self.current(partition, epoch) {
                    raise(&mut p.next_offset, next_offset);
                    p.open = open;
                }
            }
            Event::Dlq {
                partition,
                epoch,
                letter,
            } => {
                if let Some(p) = self.current(partition, epoch) {
                    p.dlq.push(letter);
                }
            }
            Event::Abandoned {
                partition,
                epoch,
                file_ids,
            } => {
                if self.current(partition, epoch).is_some() {
                    for id in file_ids {
                        self.uploads.abandon(id);
                    }
                }
            }
            Event::Drained => self.drained = true,
        }
    }

    fn done_rx(&mut self) -> &mut mpsc::UnboundedReceiver<FileDone> {
        &mut self.uploads.done_rx
    }

    fn on_done(&mut self, done: FileDone) {
        self.uploads.finished(done.file_id);
        let Some(p) = self.current(done.partition, done.epoch) else {
            return;
        };
        count_outcome(&done, true);
        match done.outcome {
            Outcome::Durable => {
                if let Some(s) = p
                    .segments
                    .iter_mut()
                    .find(|s| s.files.contains_key(&done.file_id))
                {
                    s.pending.remove(&done.file_id);
                    if let Some((_, f)) = s.files.get_mut(&done.file_id) {
                        f.bytes = done.bytes;
                    }
                }
                self.files_uploaded += 1;
            }
            Outcome::Abandoned => {}
            Outcome::Failed(msg) => {
                self.failure.get_or_insert(msg);
            }
        }
    }

    fn advance_to_position(&mut self, partition: i32, position: i64, forwarded: Option<i64>) {
        if let Some(p) = self.partitions.get_mut(&partition) {
            advance_next(&mut p.next_offset, position, forwarded);
        }
    }

    fn quiescent(&self) -> bool {
        self.partitions
            .values()
            .all(|p| p.segments.is_empty() && p.wants_commit().is_none())
    }

    fn commit_now(&self) -> bool {
        // Everything closed is uploaded and something waits: commit it in one snapshot.
        let all_up = self
            .partitions
            .values()
            .all(|p| p.segments.iter().all(|s| s.pending.is_empty()));
        all_up
            && self
                .partitions
                .values()
                .any(|p| p.segments.front().is_some())
    }

    fn interval(&self) -> Duration {
        self.interval
    }

    fn flush_before_commit(&self) -> bool {
        true
    }

    fn oldest_pending_age(&self) -> f64 {
        age_of_oldest(self.partitions.values().flat_map(|p| {
            p.segments
                .iter()
                .map(|s| s.first_ts_ms)
                .chain(p.open.map(|o| o.1))
        }))
    }

    fn start_commit(&mut self, group: ConsumerGroupMetadata) -> Option<RunningCommit> {
        let mut parts = Vec::new();
        let mut kafka_parts = Vec::new();
        let mut letters = Vec::new();
        for (partition, p) in &self.partitions {
            let Some((to, n)) = p.wants_commit() else {
                continue;
            };
            let mut files: [Vec<NewFile>; 2] = [Vec::new(), Vec::new()];
            for s in p.segments.iter().take(n) {
                for (t, f) in s.files.values() {
                    files[*t as usize].push(f.clone());
                }
            }
            letters.extend(
                p.dlq
                    .iter()
                    .filter(|l| l.offset < to)
                    .map(|l| (*partition, p.epoch, l.clone())),
            );
            kafka_parts.push(PlannedPartition {
                partition: *partition,
                epoch: p.epoch,
                wanted: Wanted {
                    offset: to,
                    chain: Vec::new(),
                },
            });
            parts.push(PlanPart {
                partition: *partition,
                epoch: p.epoch,
                to,
                from: p.tables,
                files,
            });
        }
        if parts.is_empty() {
            return None;
        }
        let plan = Arc::new(Plan {
            commit_id: uuid::Uuid::new_v4().to_string(),
            parts,
            kafka: CommitPlan {
                group,
                partitions: kafka_parts,
                letters,
            },
            landed: Mutex::new([Vec::new(), Vec::new()]),
        });
        let (lake, kafka, fence) = (self.lake.clone(), self.kafka.clone(), self.fence.clone());
        let p = plan.clone();
        let handle = tokio::runtime::Handle::current();
        let task = tokio::task::spawn_blocking(move || {
            // A revoke waits for this lock: the partitions stay ours until the commit ends.
            let _lock = kafka.lock();
            let owned: Vec<&PlanPart> = p
                .parts
                .iter()
                .filter(|pp| fence.owns(pp.partition, pp.epoch))
                .collect();
            if owned.is_empty() {
                return Ok(Vec::new());
            }
            for t in Table::ALL {
                let ranges: Vec<RangeCommit> = owned
                    .iter()
                    .map(|pp| RangeCommit {
                        partition: pp.partition,
                        from: pp.from[t as usize],
                        to: pp.to,
                        files: pp.files[t as usize].clone(),
                    })
                    .collect();
                match handle.block_on(lake.commit(t, &ranges, &p.commit_id)) {
                    Ok(landed) => {
                        p.landed.lock().expect("landed lock")[t as usize] = landed;
                        crash_point(t);
                    }
                    Err(e) => {
                        return Err(CommitError {
                            what: format!("Iceberg table `{}`", lake.ident(t)),
                            fatal: e.fatal(),
                            source: Box::new(e),
                        });
                    }
                }
            }
            kafka.commit_held(&p.kafka)
        });
        Some(RunningCommit::new(plan, task))
    }

    fn finish_commit(
        &mut self,
        running: RunningCommit,
        result: CommitResult,
    ) -> Result<(), CommitError> {
        let plan = running.plan::<Plan>();
        let landed = std::mem::take(&mut *plan.landed.lock().expect("landed lock"));
        for (t, offsets) in landed.iter().enumerate() {
            for (partition, offset) in offsets {
                let Some(pp) = plan.parts.iter().find(|pp| pp.partition == *partition) else {
                    continue;
                };
                if let Some(p) = self.current(*partition, pp.epoch) {
                    p.tables[t] = Some(p.tables[t].map_or(*offset, |o| o.max(*offset)));
                }
            }
        }
        match result.expect("commit task panicked") {
            Ok(committed) => {
                for pp in plan
                    .parts
                    .iter()
                    .filter(|pp| committed.contains(&pp.partition))
                {
                    let Some(p) = self.current(pp.partition, pp.epoch) else {
                        continue;
                    };
                    p.group = Some(pp.to);
                    while p
                        .segments
                        .front()
                        .is_some_and(|s| s.end <= pp.to && s.pending.is_empty())
                    {
                        let s = p.segments.pop_front().expect("non-empty");
                        for (t, f) in s.files.values() {
                            metrics::counter!("s3_sink_iceberg_rows_committed_total", "table" => t.as_str())
                                .increment(f.rows);
                        }
                    }
                    for l in p.dlq.iter().filter(|l| l.offset < pp.to) {
                        metrics::counter!("s3_sink_dlq_sent_total", "reason" => l.reason.as_str())
                            .increment(1);
                    }
                    p.dlq.retain(|l| l.offset >= pp.to);
                    metrics::gauge!("s3_sink_committed_offset", "partition" => pp.partition.to_string())
                        .set(pp.to as f64);
                }
                metrics::counter!("s3_sink_iceberg_commits_total").increment(1);
                Ok(())
            }
            Err(e) if e.fatal => Err(e),
            Err(e) => {
                warn!(error = %e, "Commit failed; it is retried (what landed is kept: the retry commits only the rest).");
                metrics::counter!("component_errors_total", "error_type" => "commit_failed", "stage" => "sending").increment(1);
                Ok(())
            }
        }
    }

    fn committed_summary(&self) -> String {
        let mut v: Vec<_> = self
            .partitions
            .iter()
            .map(|(p, t)| (*p, t.cursor()))
            .collect();
        v.sort();
        v.iter()
            .map(|(p, c)| format!("{p}:{}", c.map_or("-".to_string(), |c| c.to_string())))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn log_unfinished(&self) {
        for (p, t) in &self.partitions {
            if !t.segments.is_empty() {
                let waiting: Vec<(i64, usize)> = t
                    .segments
                    .iter()
                    .map(|s| (s.end, s.pending.len()))
                    .collect();
                info!(partition = p, form = ?t.tables[0], form_field = ?t.tables[1], segments = ?waiting, "Not committed: left for the next run (end, files in flight).");
            }
        }
    }

    fn take_failure(&mut self) -> Option<String> {
        self.failure.take()
    }

    fn drained(&self) -> bool {
        self.drained
    }

    fn files_uploaded(&self) -> u64 {
        self.files_uploaded
    }
}

/// For the tests of the windows between one commit and the next: with
/// `FORM_ETL_CRASH_AFTER_COMMIT={table}` the process aborts (as a `kill -9` would end it) right
/// after its first commit to that table lands. Unset: nothing.
fn crash_point(t: Table) {
    if std::env::var("FORM_ETL_CRASH_AFTER_COMMIT").as_deref() == Ok(t.as_str()) {
        tracing::error!(
            table = t.as_str(),
            "FORM_ETL_CRASH_AFTER_COMMIT: aborting now."
        );
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(tables: [Option<i64>; 2], group: Option<i64>) -> Part {
        Part {
            epoch: 1,
            tables,
            group,
            next_offset: group,
            open: None,
            segments: VecDeque::new(),
            dlq: Vec::new(),
        }
    }

    fn seg(end: i64, pending: &[u64]) -> Seg {
        Seg {
            end,
            first_ts_ms: None,
            files: HashMap::new(),
            pending: pending.iter().copied().collect(),
            _gate: watch::channel(true).0,
        }
    }

    #[test]
    fn the_cursor_is_the_lowest_of_the_tables_and_the_group() {
        assert_eq!(part([Some(10), Some(7)], Some(5)).cursor(), Some(5));
        assert_eq!(part([Some(10), None], Some(5)).cursor(), None);
        assert_eq!(part([Some(10), Some(10)], Some(10)).cursor(), Some(10));
    }

    #[test]
    fn a_commit_goes_past_uploaded_segments_in_order_only() {
        let mut p = part([Some(0), Some(0)], Some(0));
        p.segments.push_back(seg(5, &[]));
        p.segments.push_back(seg(9, &[3]));
        p.segments.push_back(seg(12, &[]));
        p.next_offset = Some(12);
        assert_eq!(
            p.wants_commit(),
            Some((5, 1)),
            "stops at the segment still uploading"
        );
        p.segments[1].pending.clear();
        assert_eq!(p.wants_commit(), Some((12, 3)));
        // Nothing open or waiting: on to the next offset (records without rows, markers).
        p.segments.clear();
        p.next_offset = Some(14);
        assert_eq!(p.wants_commit(), Some((14, 0)));
        p.open = Some((13, None));
        assert_eq!(
            p.wants_commit(),
            None,
            "an open segment holds the offset back"
        );
    }

    #[test]
    fn nothing_to_commit_when_everything_is_committed() {
        let p = part([Some(8), Some(8)], Some(8));
        assert_eq!(p.wants_commit(), None);
        // A table ahead after a crash: the replay up to it commits the group and the other.
        let mut p = part([Some(8), Some(4)], Some(4));
        p.next_offset = Some(8);
        assert_eq!(p.wants_commit(), Some((8, 0)));
    }
}

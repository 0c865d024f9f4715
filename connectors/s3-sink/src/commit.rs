//! The commit side of the sink: follows each partition's segments from their close to their
//! durability (`tracker.rs`), runs their files' uploads (`uploads.rs`), and commits offsets,
//! recorded boundaries and dead letters (`committer.rs`).
//!
//! The protocol, per partition (see `seal.rs` for why):
//! 1. The pipeline closes a segment (any reason) and hands its files over; their parts upload at
//!    once, but no object becomes visible yet.
//! 2. The next commit (started as soon as one runs no more) records the segment's boundaries and
//!    keys in the group's offset metadata; only then does its gate open and its objects become
//!    visible (PutObject / CompleteMultipartUpload, or the rename of a `file://` output).
//! 3. Once every object of the segment is durable (and every stale object of an earlier run
//!    deleted), a commit moves the offset past it; until then every commit keeps it recorded.
//!
//! Offsets and dead letters are committed in one Kafka transaction
//! (`send_offsets_to_transaction`): a dead letter is sent by the transaction that commits its
//! source offset, so the DLQ is exactly once too.

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::ConsumerGroupMetadata;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

use crate::committer::{CommitError, CommitPlan, KafkaCommitter, PlannedPartition};
use crate::keys::object_key;
use crate::pipeline::{Cmd, Event, Replay, SealedSegment};
use crate::seal::{self, Keys, Recorded};
use crate::tracker::{PartitionTrack, Tracker};
use crate::uploads::{FileDone, FileId, FileMsg, Outcome, UploadCtx, Uploads, count_outcome};

/// File ids handed out here (deletions of stale objects) count down from the top, away from
/// the pipeline's, which count up from 0.
const FIRST_DELETE_ID: u64 = u64::MAX;

/// A commit running beside the loop (see [`Committer::start_commit`]).
#[derive(Debug)]
pub(crate) struct RunningCommit {
    /// The committer's plan, handed back to it by [`Committer::finish_commit`].
    plan: Arc<dyn Any + Send + Sync>,
    /// The commit; its result (the partitions committed) goes to [`Committer::finish_commit`].
    pub(crate) task: JoinHandle<Result<Vec<i32>, CommitError>>,
}

impl RunningCommit {
    pub(crate) fn new(
        plan: Arc<dyn Any + Send + Sync>,
        task: JoinHandle<Result<Vec<i32>, CommitError>>,
    ) -> Self {
        Self { plan, task }
    }

    /// The plan, as the committer that made it knows it.
    pub(crate) fn plan<T: Any + Send + Sync>(&self) -> Arc<T> {
        self.plan
            .clone()
            .downcast::<T>()
            .unwrap_or_else(|_| unreachable!("a commit finished by the committer that started it"))
    }
}

/// The outcome of a commit task (a panic included).
pub(crate) type CommitResult = Result<Result<Vec<i32>, CommitError>, tokio::task::JoinError>;

/// Raises a partition's next offset to `to` (never lowers it).
pub(crate) fn raise(next: &mut Option<i64>, to: i64) {
    *next = Some(next.map_or(to, |n| n.max(to)));
}

/// The rule of [`Committer::advance_to_position`] on a partition's next offset `next`: when
/// the pipeline has handled every record received (`forwarded`, the offset after the last one,
/// is `next`, or none came), what lies between `next` and the consumer's `position` is
/// transaction markers, and the next offset moves to the position.
pub(crate) fn advance_next(next: &mut Option<i64>, position: i64, forwarded: Option<i64>) {
    if let Some(handled) = *next
        && forwarded.is_none_or(|f| f == handled)
        && position > handled
    {
        *next = Some(position);
    }
}

/// Seconds since the oldest of these record timestamps (ms since the epoch), 0 for none.
pub(crate) fn age_of_oldest(ts_ms: impl Iterator<Item = Option<i64>>) -> f64 {
    let now = chrono::Utc::now().timestamp_millis();
    ts_ms
        .flatten()
        .min()
        .map_or(0.0, |ts| (now - ts).max(0) as f64 / 1000.0)
}

/// A partition just assigned, with the consumer group's committed offset and its metadata.
#[derive(Debug, Clone)]
pub(crate) struct Assigned {
    pub(crate) partition: i32,
    pub(crate) epoch: u64,
    pub(crate) committed: Option<i64>,
    pub(crate) metadata: String,
}

/// How a range of records becomes durable and committed: the commit side of the sink, fed by
/// the pipeline's events and driven by the loop in `sink.rs`. One implementation per kind of
/// output, chosen by the config (`output.type`): [`Manager`] (files, committed with the
/// consumer group's offsets, `seal.rs`) and `iceberg_committer::IcebergCommitter` (snapshots
/// of Iceberg tables holding the offsets). Adding one is one new file and one arm of
/// `OutputConfig`.
pub(crate) trait Committer: Send + std::fmt::Debug {
    /// Partitions assigned: the commands that start each in the pipeline (its replay, the rows
    /// to skip). An error stops the sink.
    fn assign(&mut self, assigned: Vec<Assigned>) -> anyhow::Result<Vec<Cmd>>;
    /// Drops everything of a revoked partition: its uploads stop, nothing more of it commits.
    fn revoke(&mut self, partition: i32);
    fn on_event(&mut self, ev: Event);
    /// Where the uploads report their files.
    fn done_rx(&mut self) -> &mut mpsc::UnboundedReceiver<FileDone>;
    fn on_done(&mut self, done: FileDone);
    /// The consumer's position of a partition (see [`Manager`]'s).
    fn advance_to_position(&mut self, partition: i32, position: i64, forwarded: Option<i64>);
    /// Nothing in flight and everything committed (the end of a drain).
    fn quiescent(&self) -> bool;
    /// A commit should start at once rather than at the interval.
    fn commit_now(&self) -> bool;
    /// Commits are started at least this often.
    fn interval(&self) -> Duration;
    /// Whether the open files close before each interval's commit ([`Cmd::Flush`]).
    fn flush_before_commit(&self) -> bool;
    /// Age in seconds of the oldest record not yet committed.
    fn oldest_pending_age(&self) -> f64;
    /// Starts committing whatever changed; `None` when there is nothing to commit. One runs at
    /// a time. `group` is the consumer's group metadata now.
    fn start_commit(&mut self, group: ConsumerGroupMetadata) -> Option<RunningCommit>;
    /// Applies a commit's outcome; an error is fatal.
    fn finish_commit(
        &mut self,
        running: RunningCommit,
        result: CommitResult,
    ) -> Result<(), CommitError>;
    /// `partition → committed offset` for the progress line.
    fn committed_summary(&self) -> String;
    /// Logs what is not committed (at the end of a drain that timed out).
    fn log_unfinished(&self);
    /// A file failed for good: the sink stops (its range is replayed by the next run).
    fn take_failure(&mut self) -> Option<String>;
    /// The pipeline answered the drain.
    fn drained(&self) -> bool;
    /// Files made durable so far.
    fn files_uploaded(&self) -> u64;
}

/// Tracks segments, runs the uploads, and commits.
pub(crate) struct Manager {
    uploads: Uploads,
    committer: Arc<KafkaCommitter>,
    tracker: Tracker,
    topic: String,
    prefix: String,
    /// The files' extension (their format's).
    ext: &'static str,
    next_delete_id: u64,
    drained: bool,
    /// A file that failed for good: the sink stops (its range is replayed by the next run).
    failure: Option<String>,
    /// Totals for the progress line.
    files_uploaded: u64,
    bytes_uploaded: u64,
    dlq_sent: u64,
    interval: Duration,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("partitions", &self.tracker.partitions.len())
            .field("files", &self.uploads.len())
            .finish()
    }
}

impl Manager {
    pub(crate) fn new(
        ctx: Arc<UploadCtx>,
        done_rx: mpsc::UnboundedReceiver<FileDone>,
        committer: Arc<KafkaCommitter>,
        topic: String,
        prefix: String,
        ext: &'static str,
        interval: Duration,
    ) -> Self {
        Self {
            uploads: Uploads::new(ctx, done_rx),
            committer,
            tracker: Tracker::default(),
            topic,
            prefix,
            ext,
            next_delete_id: FIRST_DELETE_ID,
            drained: false,
            failure: None,
            files_uploaded: 0,
            bytes_uploaded: 0,
            dlq_sent: 0,
            interval,
        }
    }

    /// A partition assigned at `committed` (offset and metadata), with the segments an
    /// earlier run recorded there.
    fn assign_one(
        &mut self,
        partition: i32,
        epoch: u64,
        committed: Option<(i64, String)>,
        recorded: &[Recorded],
    ) {
        self.revoke(partition);
        self.tracker.partitions.insert(
            partition,
            PartitionTrack::assigned(epoch, committed, recorded),
        );
    }

    fn sealed(&mut self, seg: SealedSegment) {
        let SealedSegment {
            partition,
            epoch,
            start,
            end,
            reason,
            first_ts_ms,
            fingerprint,
            versions,
            files,
        } = seg;
        let Some(p) = self.tracker.current(partition, epoch) else {
            return;
        };
        let keys: Keys = files.iter().map(|f| (f.table, f.day)).collect();
        let (stale, track) = match p.closed(start, end, keys, &fingerprint, versions, first_ts_ms) {
            Ok(v) => v,
            Err(bug) => {
                // A bug of ours: stop rather than write objects no record covers.
                self.failure = Some(format!("partition {partition}: {bug}"));
                return;
            }
        };
        debug!(
            partition,
            start,
            end,
            reason = reason.as_str(),
            files = files.len(),
            stale = stale.len(),
            "Segment handed to the uploads."
        );
        let gate = track.gate.clone();
        let mut pending = Vec::new();
        for f in files {
            pending.push(f.file_id);
            let track = self.uploads.file(FileId {
                id: f.file_id,
                partition,
                epoch,
                table: f.table,
                key: f.key,
                first: start,
            });
            let _ = track.tx.send(FileMsg::Finish {
                file: f.file,
                end,
                gate: gate.subscribe(),
                budget: f.budget,
            });
        }
        for (table, day) in stale {
            let id = self.next_delete_id;
            self.next_delete_id -= 1;
            pending.push(id);
            let key = object_key(
                &self.prefix,
                table.as_str(),
                &form_model::day_to_date(day),
                &self.topic,
                partition,
                start,
                self.ext,
            );
            let track = self.uploads.file(FileId {
                id,
                partition,
                epoch,
                table,
                key,
                first: start,
            });
            let _ = track.tx.send(FileMsg::Delete {
                gate: gate.subscribe(),
            });
        }
        if let Some(p) = self.tracker.current(partition, epoch)
            && let Some(s) = p.segments.iter_mut().find(|s| s.start == start)
        {
            s.pending.extend(pending);
        }
    }
}

impl Committer for Manager {
    fn assign(&mut self, assigned: Vec<Assigned>) -> anyhow::Result<Vec<Cmd>> {
        let mut cmds = Vec::new();
        for a in assigned {
            let recorded = match a.committed {
                Some(o) => seal::decode(o, &a.metadata).unwrap_or_else(|e| {
                    error!(partition = a.partition, error = %e, "The offset metadata is unreadable: replaying without recorded boundaries.");
                    Vec::new()
                }),
                None => Vec::new(),
            };
            info!(partition = a.partition, committed = ?a.committed, recorded = recorded.len(), "Partition assigned.");
            let replay = recorded
                .iter()
                .map(|r| Replay {
                    start: r.start,
                    end: r.end,
                    versions: r.versions,
                })
                .collect();
            self.assign_one(
                a.partition,
                a.epoch,
                a.committed.map(|o| (o, a.metadata)),
                &recorded,
            );
            cmds.push(Cmd::Assign {
                partition: a.partition,
                epoch: a.epoch,
                replay,
            });
        }
        Ok(cmds)
    }

    fn revoke(&mut self, partition: i32) {
        self.tracker.partitions.remove(&partition);
        self.uploads.abandon_partition(partition);
    }

    fn done_rx(&mut self) -> &mut mpsc::UnboundedReceiver<FileDone> {
        &mut self.uploads.done_rx
    }

    fn interval(&self) -> Duration {
        self.interval
    }

    fn flush_before_commit(&self) -> bool {
        false
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

    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Part { file, body, budget } => {
                if self.tracker.current(file.partition, file.epoch).is_some() {
                    self.uploads.part(file, body, budget);
                }
            }
            Event::Sealed(seg) => self.sealed(seg),
            Event::Progress {
                partition,
                epoch,
                next_offset,
                open,
            } => {
                if let Some(p) = self.tracker.current(partition, epoch) {
                    raise(&mut p.next_offset, next_offset);
                    p.open = open;
                }
            }
            Event::Dlq {
                partition,
                epoch,
                letter,
            } => {
                if let Some(p) = self.tracker.current(partition, epoch) {
                    p.dlq.push(letter);
                }
            }
            Event::Abandoned {
                partition,
                epoch,
                file_ids,
            } => {
                if self.tracker.current(partition, epoch).is_some() {
                    for id in file_ids {
                        self.uploads.abandon(id);
                    }
                }
            }
            Event::Drained => self.drained = true,
        }
    }

    fn on_done(&mut self, done: FileDone) {
        self.uploads.finished(done.file_id);
        let Some(p) = self.tracker.current(done.partition, done.epoch) else {
            return;
        };
        let is_file = done.file_id <= FIRST_DELETE_ID / 2;
        count_outcome(&done, is_file);
        match done.outcome {
            Outcome::Durable => {
                p.done(done.file_id);
                if is_file {
                    self.files_uploaded += 1;
                    self.bytes_uploaded += done.bytes;
                }
            }
            Outcome::Abandoned => {}
            Outcome::Failed(msg) => {
                self.failure.get_or_insert(msg);
            }
        }
    }

    /// The consumer's position of `partition` is `position`: when the pipeline has handled
    /// every record received for it (`forwarded`: the offset after the last one, `None` if none
    /// came since the assignment), what lies between is transaction markers, and the committed
    /// offset may move past them (to the end of the topic, when that is where it stands).
    fn advance_to_position(&mut self, partition: i32, position: i64, forwarded: Option<i64>) {
        if let Some(p) = self.tracker.partitions.get_mut(&partition) {
            advance_next(&mut p.next_offset, position, forwarded);
        }
    }

    /// Nothing in flight and everything committed (the end of a drain).
    fn quiescent(&self) -> bool {
        self.tracker.partitions.values().all(|p| {
            p.segments.iter().all(|s| s.durable() || s.replay)
                && p.wanted().is_none_or(|w| p.holds(&w))
        })
    }

    /// Whether a closed segment waits for its boundaries to be recorded (its objects stay
    /// invisible until a commit does it): the loop commits at once rather than at the interval.
    fn commit_now(&self) -> bool {
        self.tracker
            .partitions
            .values()
            .any(|p| p.wanted().is_some_and(|w| p.needs_record(&w)))
    }

    /// Age in seconds of the oldest record whose rows are not yet durable in S3.
    fn oldest_pending_age(&self) -> f64 {
        age_of_oldest(self.tracker.partitions.values().flat_map(|p| {
            p.segments
                .iter()
                .map(|s| s.first_ts_ms)
                .chain(p.open.map(|o| o.1))
        }))
    }

    /// Starts committing whatever changed, on a blocking thread: the loop goes on consuming
    /// meanwhile. `group` is the consumer's group metadata now (taken on the loop's thread, so
    /// it belongs to the current assignment). `None` when there is nothing to commit. One
    /// commit runs at a time (the producer has one transaction open at most).
    fn start_commit(&mut self, group: ConsumerGroupMetadata) -> Option<RunningCommit> {
        let mut partitions = Vec::new();
        let mut letters = Vec::new();
        for (part, p) in self.tracker.partitions.iter_mut() {
            p.pop_durable();
            let Some(wanted) = p.wanted() else { continue };
            if p.holds(&wanted) {
                continue;
            }
            letters.extend(
                p.dlq
                    .iter()
                    .filter(|l| l.offset < wanted.offset)
                    .map(|l| (*part, p.epoch, l.clone())),
            );
            partitions.push(PlannedPartition {
                partition: *part,
                epoch: p.epoch,
                wanted,
            });
        }
        if partitions.is_empty() {
            return None;
        }
        let plan = Arc::new(CommitPlan {
            group,
            partitions,
            letters,
        });
        let committer = self.committer.clone();
        let p = plan.clone();
        let task = tokio::task::spawn_blocking(move || committer.commit(&p));
        Some(RunningCommit::new(plan, task))
    }

    /// Applies the outcome of a commit started by [`Manager::start_commit`], to the partitions
    /// it committed that are still assigned in the same epoch (a partition revoked meanwhile
    /// was handed over after the commit: the revoke waited for it).
    fn finish_commit(
        &mut self,
        running: RunningCommit,
        result: CommitResult,
    ) -> Result<(), CommitError> {
        let plan = running.plan::<CommitPlan>();
        match result.expect("commit task panicked") {
            Ok(committed) => {
                for pp in plan
                    .partitions
                    .iter()
                    .filter(|p| committed.contains(&p.partition))
                {
                    let Some(p) = self.tracker.current(pp.partition, pp.epoch) else {
                        continue;
                    };
                    let sent = p.dlq.iter().filter(|l| l.offset < pp.wanted.offset).count();
                    for l in p.dlq.iter().filter(|l| l.offset < pp.wanted.offset) {
                        metrics::counter!("s3_sink_dlq_sent_total", "reason" => l.reason.as_str())
                            .increment(1);
                    }
                    self.dlq_sent += sent as u64;
                    let newly = p.segments.iter().filter(|s| !s.recorded_whole()).count();
                    p.committed(&pp.wanted);
                    let recorded =
                        newly - p.segments.iter().filter(|s| !s.recorded_whole()).count();
                    if recorded > 0 {
                        debug!(
                            partition = pp.partition,
                            recorded, "Segment boundaries recorded."
                        );
                    }
                    metrics::gauge!("s3_sink_committed_offset", "partition" => pp.partition.to_string())
                        .set(pp.wanted.offset as f64);
                }
                Ok(())
            }
            Err(e) if e.fatal => Err(e),
            Err(e) => {
                warn!(error = %e, "Commit failed (aborted); it is retried (offsets stay uncommitted meanwhile).");
                metrics::counter!("component_errors_total", "error_type" => "commit_failed", "stage" => "sending").increment(1);
                Ok(())
            }
        }
    }

    /// `partition → committed offset` for the progress line.
    fn committed_summary(&self) -> String {
        let mut v: Vec<_> = self
            .tracker
            .partitions
            .iter()
            .map(|(p, t)| (*p, t.committed.as_ref().map(|c| c.0)))
            .collect();
        v.sort();
        v.iter()
            .map(|(p, c)| format!("{p}:{}", c.map_or("-".to_string(), |c| c.to_string())))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Logs the partitions' state (at the end of a drain that timed out).
    fn log_unfinished(&self) {
        for (p, t) in &self.tracker.partitions {
            let waiting: Vec<(i64, i64, bool, usize)> = t
                .segments
                .iter()
                .map(|s| (s.start, s.end, s.recorded_whole(), s.pending.len()))
                .collect();
            if !waiting.is_empty() {
                info!(partition = p, committed = ?t.committed.as_ref().map(|c| c.0), segments = ?waiting, "Not durable: left for the next run (start, end, recorded, files in flight).");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_offset_moves_to_the_position_only_when_every_record_is_handled() {
        // Nothing handled yet: no offset to move.
        let mut next = None;
        advance_next(&mut next, 10, None);
        assert_eq!(next, None);
        // Everything received is handled: the gap is markers, the offset moves.
        let mut next = Some(7);
        advance_next(&mut next, 10, Some(7));
        assert_eq!(next, Some(10));
        // None received since the assignment: likewise.
        let mut next = Some(7);
        advance_next(&mut next, 10, None);
        assert_eq!(next, Some(10));
        // Records received that the pipeline has not handled: the offset stays.
        let mut next = Some(7);
        advance_next(&mut next, 10, Some(9));
        assert_eq!(next, Some(7));
        // Never backwards.
        let mut next = Some(12);
        advance_next(&mut next, 10, Some(12));
        assert_eq!(next, Some(12));
        raise(&mut next, 11);
        assert_eq!(next, Some(12));
        raise(&mut next, 13);
        assert_eq!(next, Some(13));
    }

    #[test]
    fn the_oldest_age_is_zero_for_nothing_and_never_negative() {
        assert_eq!(age_of_oldest(std::iter::empty()), 0.0);
        assert_eq!(age_of_oldest([None, None].into_iter()), 0.0);
        let future = chrono::Utc::now().timestamp_millis() + 60_000;
        assert_eq!(age_of_oldest([Some(future)].into_iter()), 0.0);
        let past = chrono::Utc::now().timestamp_millis() - 5_000;
        let age = age_of_oldest([Some(future), None, Some(past)].into_iter());
        assert!((5.0..10.0).contains(&age), "{age}");
    }
}

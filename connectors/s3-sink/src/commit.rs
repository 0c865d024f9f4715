//! Uploads and the commit protocol.
//!
//! Per partition, sealed segments queue up in offset order. A segment's files upload
//! concurrently; its offsets are committed once every file of it and of every earlier segment is
//! durable: the committable offset is the start of the oldest segment not yet durable, else the
//! start of the open segment, else the next offset.
//!
//! Boundaries that a replay reproduces by itself (max records, bytes, record-time age) need
//! nothing more. A wall-clock boundary (idle, memory, drain) is *sealed* first: once every earlier
//! segment is committed, the segment's start is committed again with metadata
//! `form-etl-seal:{start}:{end}`, and only then may its objects (and those of any later segment
//! of the partition) become visible (PutObject / CompleteMultipartUpload, or the rename of a
//! `file://` output). A restart reads that metadata and closes the replayed segment at exactly
//! `end`, so it rewrites the same keys with the same rows and leaves no object holding rows of
//! another.
//!
//! Offsets and dead letters are committed in one Kafka transaction
//! (`send_offsets_to_transaction`): a dead letter is sent by the transaction that commits its
//! source offset, so the DLQ is exactly once too.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use connector_common::dlq::DlqInfo;
use connector_common::retry::RetryPolicy;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::avro::FinishedFile;
use crate::pipeline::{BudgetGuard, DeadLetter, Event, Seal, SealedSegment};
use crate::sink::SinkContext;
use crate::tables::Table;
use crate::upload::{Multipart, Part, Uploader, retry_forever};

/// Prefix of the consumer-group offset metadata that seals a wall-clock boundary.
pub(crate) const SEAL_PREFIX: &str = "form-etl-seal:";

pub(crate) fn seal_metadata(start: i64, end: i64) -> String {
    format!("{SEAL_PREFIX}{start}:{end}")
}

/// The seal recorded with a committed offset, if it applies to that offset.
pub(crate) fn parse_seal(committed: i64, metadata: &str) -> Option<Seal> {
    let rest = metadata.strip_prefix(SEAL_PREFIX)?;
    let (s, e) = rest.split_once(':')?;
    let seal = Seal {
        start: s.parse().ok()?,
        end: e.parse().ok()?,
    };
    (seal.start == committed && seal.end > seal.start).then_some(seal)
}

/// Messages to one file's upload task.
#[derive(Debug)]
enum FileMsg {
    Part(Vec<u8>, BudgetGuard),
    Finish {
        file: FinishedFile,
        gate: watch::Receiver<bool>,
        budget: BudgetGuard,
    },
}

/// A file is durable.
#[derive(Debug)]
pub(crate) struct FileDone {
    file_id: u64,
    partition: i32,
    epoch: u64,
    table: Table,
    bytes: u64,
}

#[derive(Debug)]
struct FileTrack {
    partition: i32,
    key: String,
    tx: mpsc::UnboundedSender<FileMsg>,
    task: JoinHandle<()>,
    multipart: Arc<Mutex<Option<Multipart>>>,
}

#[derive(Debug)]
struct SegmentTrack {
    start: i64,
    end: i64,
    deterministic: bool,
    seal_committed: bool,
    first_ts_ms: Option<i64>,
    gate: watch::Sender<bool>,
    pending: HashSet<u64>,
}

impl SegmentTrack {
    fn durable(&self) -> bool {
        self.pending.is_empty() && (self.deterministic || self.seal_committed)
    }
}

#[derive(Debug)]
struct PartitionTrack {
    epoch: u64,
    next_offset: Option<i64>,
    open: Option<(i64, Option<i64>)>,
    segments: VecDeque<SegmentTrack>,
    committed: Option<(i64, String)>,
    dlq: Vec<DeadLetter>,
}

impl PartitionTrack {
    /// What this partition's offset commit should be now: (offset, metadata).
    fn wanted(&self) -> Option<(i64, String)> {
        if let Some(front) = self.segments.front()
            && !front.deterministic
            && !front.seal_committed
        {
            return Some((front.start, seal_metadata(front.start, front.end)));
        }
        let next = self.next_offset?;
        let mut c = next;
        if let Some(front) = self.segments.front() {
            c = c.min(front.start);
        }
        if let Some((start, _)) = self.open {
            c = c.min(start);
        }
        Some((c, String::new()))
    }

    fn update_gates(&self) {
        let mut open = true;
        for s in &self.segments {
            if !s.deterministic && !s.seal_committed {
                open = false;
            }
            if open && !*s.gate.borrow() {
                s.gate.send_replace(true);
            }
        }
    }
}

/// Commits offsets (and dead letters) in one Kafka transaction.
pub(crate) struct TxnCommitter {
    pub(crate) producer: ThreadedProducer<DefaultProducerContext>,
    pub(crate) consumer: Arc<StreamConsumer<SinkContext>>,
    pub(crate) topic: String,
    pub(crate) dlq_topic: String,
    pub(crate) connector: String,
    pub(crate) timeout: Duration,
}

impl std::fmt::Debug for TxnCommitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxnCommitter")
            .field("topic", &self.topic)
            .finish()
    }
}

/// A commit that failed: `fatal` ones stop the sink (the producer was fenced or broken).
#[derive(Debug, thiserror::Error)]
#[error("committing offsets of `{topic}`: {source}")]
pub(crate) struct CommitError {
    topic: String,
    fatal: bool,
    #[source]
    source: KafkaError,
}

impl TxnCommitter {
    fn commit(
        &self,
        offsets: &[(i32, i64, String)],
        letters: &[(i32, DeadLetter)],
    ) -> Result<(), CommitError> {
        let res = self.try_commit(offsets, letters);
        if let Err(e) = &res {
            let fatal = matches!(e, KafkaError::Transaction(t) if t.is_fatal());
            if !fatal && let Err(abort) = self.producer.abort_transaction(self.timeout) {
                warn!(error = %abort, "Aborting the failed transaction failed too.");
            }
            return res.map_err(|source| CommitError {
                topic: self.topic.clone(),
                fatal,
                source,
            });
        }
        Ok(())
    }

    fn try_commit(
        &self,
        offsets: &[(i32, i64, String)],
        letters: &[(i32, DeadLetter)],
    ) -> Result<(), KafkaError> {
        let group = self
            .consumer
            .group_metadata()
            .ok_or(KafkaError::ConsumerCommit(RDKafkaErrorCode::State))?;
        self.producer.begin_transaction()?;
        for (partition, l) in letters {
            let info = DlqInfo {
                reason: l.reason,
                detail: l.detail.clone(),
                connector: self.connector.clone(),
                topic: self.topic.clone(),
                partition: *partition,
                offset: l.offset,
            };
            let headers = info.headers(None::<&OwnedHeaders>);
            let mut rec: BaseRecord<'_, [u8], [u8]> =
                BaseRecord::to(&self.dlq_topic).headers(headers);
            if let Some(k) = &l.key {
                rec = rec.key(k.as_slice());
            }
            if let Some(v) = &l.value {
                rec = rec.payload(v.as_slice());
            }
            loop {
                match self.producer.send(rec) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        rec = r;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err((e, _)) => return Err(e),
                }
            }
        }
        let mut tpl = TopicPartitionList::new();
        for (p, off, meta) in offsets {
            tpl.add_partition_offset(&self.topic, *p, Offset::Offset(*off))?;
            if !meta.is_empty()
                && let Some(mut e) = tpl.find_partition(&self.topic, *p)
            {
                e.set_metadata(meta.as_str());
            }
        }
        self.producer
            .send_offsets_to_transaction(&tpl, &group, self.timeout)?;
        self.producer.commit_transaction(self.timeout)?;
        Ok(())
    }
}

/// A commit running on a blocking thread (see [`Manager::start_commit`]).
#[derive(Debug)]
pub(crate) struct RunningCommit {
    offsets: Vec<(i32, i64, String)>,
    letters: Vec<(i32, DeadLetter)>,
    /// The transaction; its result goes to [`Manager::finish_commit`].
    pub(crate) task: tokio::task::JoinHandle<Result<(), CommitError>>,
}

/// Tracks segments, runs the uploads, and commits.
pub(crate) struct Manager {
    uploader: Uploader,
    retry: RetryPolicy,
    committer: Arc<TxnCommitter>,
    partitions: HashMap<i32, PartitionTrack>,
    files: HashMap<u64, FileTrack>,
    done_tx: mpsc::UnboundedSender<FileDone>,
    pub(crate) done_rx: mpsc::UnboundedReceiver<FileDone>,
    pub(crate) drained: bool,
    /// Totals for the progress line.
    pub(crate) files_uploaded: u64,
    pub(crate) bytes_uploaded: u64,
    pub(crate) dlq_sent: u64,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("partitions", &self.partitions.len())
            .field("files", &self.files.len())
            .finish()
    }
}

impl Manager {
    pub(crate) fn new(
        uploader: Uploader,
        retry: RetryPolicy,
        committer: Arc<TxnCommitter>,
    ) -> Self {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        Self {
            uploader,
            retry,
            committer,
            partitions: HashMap::new(),
            files: HashMap::new(),
            done_tx,
            done_rx,
            drained: false,
            files_uploaded: 0,
            bytes_uploaded: 0,
            dlq_sent: 0,
        }
    }

    pub(crate) fn assign(&mut self, partition: i32, epoch: u64, committed: Option<i64>) {
        self.revoke(partition);
        self.partitions.insert(
            partition,
            PartitionTrack {
                epoch,
                next_offset: None,
                open: None,
                segments: VecDeque::new(),
                committed: committed.map(|c| (c, String::new())),
                dlq: Vec::new(),
            },
        );
    }

    /// Abandons everything of `partition`: uploads stop, nothing more is committed for it.
    pub(crate) fn revoke(&mut self, partition: i32) {
        self.partitions.remove(&partition);
        let ids: Vec<u64> = self
            .files
            .iter()
            .filter(|(_, f)| f.partition == partition)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            let f = self.files.remove(&id).expect("listed");
            f.task.abort();
            let mp = f.multipart.lock().expect("multipart lock").take();
            if let Some(mp) = mp {
                let up = self.uploader.clone();
                tokio::spawn(async move { up.abort(&f.key, &mp).await });
            }
        }
    }

    fn current(&mut self, partition: i32, epoch: u64) -> Option<&mut PartitionTrack> {
        self.partitions
            .get_mut(&partition)
            .filter(|p| p.epoch == epoch)
    }

    pub(crate) fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Part {
                partition,
                epoch,
                file_id,
                key,
                table,
                body,
                budget,
            } => {
                if self.current(partition, epoch).is_none() {
                    return;
                }
                let f = self.file(file_id, partition, epoch, key, table);
                let _ = f.tx.send(FileMsg::Part(body, budget));
            }
            Event::Sealed(seg) => self.sealed(seg),
            Event::Progress {
                partition,
                epoch,
                next_offset,
                open,
            } => {
                if let Some(p) = self.current(partition, epoch) {
                    p.next_offset = Some(next_offset);
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
            Event::Drained => self.drained = true,
        }
    }

    fn sealed(&mut self, seg: SealedSegment) {
        let SealedSegment {
            partition,
            epoch,
            start,
            end,
            reason,
            first_ts_ms,
            files,
        } = seg;
        if self.current(partition, epoch).is_none() {
            return;
        }
        let (gate, _) = watch::channel(false);
        let mut pending = HashSet::new();
        for f in files {
            pending.insert(f.file_id);
            let gate_rx = gate.subscribe();
            let track = self.file(f.file_id, partition, epoch, f.key, f.table);
            let _ = track.tx.send(FileMsg::Finish {
                file: f.file,
                gate: gate_rx,
                budget: f.budget,
            });
        }
        let p = self.partitions.get_mut(&partition).expect("current");
        p.segments.push_back(SegmentTrack {
            start,
            end,
            deterministic: reason.is_deterministic(),
            seal_committed: false,
            first_ts_ms,
            gate,
            pending,
        });
        p.update_gates();
    }

    fn file(
        &mut self,
        file_id: u64,
        partition: i32,
        epoch: u64,
        key: String,
        table: Table,
    ) -> &FileTrack {
        let (uploader, retry, done) = (
            self.uploader.clone(),
            self.retry.clone(),
            self.done_tx.clone(),
        );
        self.files.entry(file_id).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            let multipart = Arc::new(Mutex::new(None));
            let task = tokio::spawn(upload_file(
                uploader,
                retry,
                key.clone(),
                rx,
                multipart.clone(),
                done,
                FileDone {
                    file_id,
                    partition,
                    epoch,
                    table,
                    bytes: 0,
                },
            ));
            FileTrack {
                partition,
                key,
                tx,
                task,
                multipart,
            }
        })
    }

    pub(crate) fn on_done(&mut self, done: FileDone) {
        self.files.remove(&done.file_id);
        let Some(p) = self.current(done.partition, done.epoch) else {
            return;
        };
        for s in p.segments.iter_mut() {
            if s.pending.remove(&done.file_id) {
                break;
            }
        }
        self.files_uploaded += 1;
        self.bytes_uploaded += done.bytes;
        metrics::counter!("s3_sink_files_total", "table" => done.table.as_str()).increment(1);
        metrics::counter!("s3_sink_bytes_total", "table" => done.table.as_str())
            .increment(done.bytes);
    }

    /// Nothing in flight and everything committed (the end of a drain).
    pub(crate) fn quiescent(&self) -> bool {
        self.partitions.values().all(|p| {
            p.segments.iter().all(|s| s.durable())
                && (p.wanted().is_none() || p.wanted() == p.committed)
        }) && self
            .partitions
            .values()
            .all(|p| p.segments.iter().all(|s| s.pending.is_empty()))
    }

    /// Age in seconds of the oldest record whose rows are not yet durable in S3.
    pub(crate) fn oldest_pending_age(&self) -> f64 {
        let now = chrono::Utc::now().timestamp_millis();
        let oldest = self
            .partitions
            .values()
            .flat_map(|p| {
                p.segments
                    .iter()
                    .map(|s| s.first_ts_ms)
                    .chain(p.open.map(|o| o.1))
            })
            .flatten()
            .min();
        oldest.map_or(0.0, |ts| (now - ts).max(0) as f64 / 1000.0)
    }

    /// Commits whatever became committable, and waits for it. `Err` only for a fatal
    /// producer error.
    pub(crate) async fn commit_round(&mut self) -> Result<(), CommitError> {
        match self.start_commit() {
            Some(mut running) => {
                let result = (&mut running.task).await;
                self.finish_commit(running, result)
            }
            None => Ok(()),
        }
    }

    /// Starts committing whatever became committable, on a blocking thread: the loop goes on
    /// consuming meanwhile. `None` when there is nothing new to commit. The caller awaits
    /// [`RunningCommit::task`] and hands the result to [`Manager::finish_commit`]; one commit
    /// runs at a time (the producer has one transaction open at most).
    pub(crate) fn start_commit(&mut self) -> Option<RunningCommit> {
        let mut offsets = Vec::new();
        let mut letters = Vec::new();
        for (part, p) in self.partitions.iter_mut() {
            while p.segments.front().is_some_and(|s| s.durable()) {
                p.segments.pop_front();
            }
            let Some(wanted) = p.wanted() else { continue };
            if p.committed.as_ref() == Some(&wanted) {
                continue;
            }
            letters.extend(
                p.dlq
                    .iter()
                    .filter(|l| l.offset < wanted.0)
                    .map(|l| (*part, l.clone())),
            );
            offsets.push((*part, wanted.0, wanted.1));
        }
        if offsets.is_empty() {
            return None;
        }
        let committer = self.committer.clone();
        let (o, l) = (offsets.clone(), letters.clone());
        let task = tokio::task::spawn_blocking(move || committer.commit(&o, &l));
        Some(RunningCommit {
            offsets,
            letters,
            task,
        })
    }

    /// Applies the outcome of a commit started by [`Manager::start_commit`]. A partition
    /// revoked meanwhile is skipped; one assigned again meanwhile read its committed offset
    /// after this commit (a `read_committed` consumer's offset fetch waits for pending
    /// transactional offsets), so the result holds for it too.
    pub(crate) fn finish_commit(
        &mut self,
        running: RunningCommit,
        result: Result<Result<(), CommitError>, tokio::task::JoinError>,
    ) -> Result<(), CommitError> {
        let RunningCommit {
            offsets, letters, ..
        } = running;
        match result.expect("commit task panicked") {
            Ok(()) => {
                self.dlq_sent += letters.len() as u64;
                for (_, l) in &letters {
                    metrics::counter!("s3_sink_dlq_sent_total", "reason" => l.reason.as_str())
                        .increment(1);
                }
                for (part, off, meta) in offsets {
                    let Some(p) = self.partitions.get_mut(&part) else {
                        continue;
                    };
                    p.dlq.retain(|l| l.offset >= off);
                    if !meta.is_empty()
                        && let Some(front) = p.segments.front_mut()
                        && front.start == off
                    {
                        front.seal_committed = true;
                        debug!(
                            partition = part,
                            start = front.start,
                            end = front.end,
                            "Boundary sealed."
                        );
                    }
                    p.committed = Some((off, meta));
                    p.update_gates();
                    metrics::gauge!("s3_sink_committed_offset", "partition" => part.to_string())
                        .set(off as f64);
                }
                Ok(())
            }
            Err(e) if e.fatal => Err(e),
            Err(e) => {
                warn!(error = %e, "Commit failed; it is retried (offsets stay uncommitted meanwhile).");
                metrics::counter!("component_errors_total", "error_type" => "commit_failed", "stage" => "sending").increment(1);
                Ok(())
            }
        }
    }

    /// `partition → committed offset` for the progress line.
    pub(crate) fn committed_summary(&self) -> String {
        let mut v: Vec<_> = self
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
}

async fn upload_file(
    uploader: Uploader,
    retry: RetryPolicy,
    key: String,
    mut rx: mpsc::UnboundedReceiver<FileMsg>,
    slot: Arc<Mutex<Option<Multipart>>>,
    done: mpsc::UnboundedSender<FileDone>,
    mut report: FileDone,
) {
    let mut parts: Vec<Part> = Vec::new();
    let mut next_part = 2;
    let puts = metrics::counter!("s3_sink_puts_total", "table" => report.table.as_str());
    while let Some(msg) = rx.recv().await {
        match msg {
            FileMsg::Part(body, budget) => {
                let mp = ensure_multipart(&uploader, &retry, &key, &slot).await;
                let body = bytes::Bytes::from(body);
                report.bytes += body.len() as u64;
                let n = next_part;
                let part = retry_forever(&retry, "UploadPart", &key, || {
                    uploader.upload_part(&key, &mp, n, body.clone())
                })
                .await;
                puts.increment(1);
                next_part += 1;
                parts.push(part);
                drop(budget);
            }
            FileMsg::Finish {
                file,
                mut gate,
                budget,
            } => {
                report.bytes += (file.head.len() + file.tail.len()) as u64;
                let mp = slot.lock().expect("multipart lock").clone();
                match mp {
                    None => {
                        if gate.wait_for(|open| *open).await.is_err() {
                            return;
                        }
                        let mut body = file.head;
                        body.extend_from_slice(&file.tail);
                        // Shared by every attempt (no copy of the file per retry).
                        let body = bytes::Bytes::from(body);
                        retry_forever(&retry, "PutObject", &key, || {
                            uploader.put(&key, body.clone())
                        })
                        .await;
                        puts.increment(1);
                    }
                    Some(mp) => {
                        let head = bytes::Bytes::from(file.head);
                        let p1 = retry_forever(&retry, "UploadPart", &key, || {
                            uploader.upload_part(&key, &mp, 1, head.clone())
                        })
                        .await;
                        puts.increment(1);
                        parts.push(p1);
                        if !file.tail.is_empty() {
                            let tail = bytes::Bytes::from(file.tail);
                            let n = next_part;
                            let pn = retry_forever(&retry, "UploadPart", &key, || {
                                uploader.upload_part(&key, &mp, n, tail.clone())
                            })
                            .await;
                            puts.increment(1);
                            parts.push(pn);
                        }
                        if gate.wait_for(|open| *open).await.is_err() {
                            return;
                        }
                        retry_forever(&retry, "CompleteMultipartUpload", &key, || {
                            uploader.complete(&key, &mp, parts.clone())
                        })
                        .await;
                        puts.increment(1);
                        slot.lock().expect("multipart lock").take();
                    }
                }
                drop(budget);
                debug!(key, bytes = report.bytes, "File uploaded.");
                let _ = done.send(report);
                return;
            }
        }
    }
}

async fn ensure_multipart(
    uploader: &Uploader,
    retry: &RetryPolicy,
    key: &str,
    slot: &Mutex<Option<Multipart>>,
) -> Multipart {
    if let Some(mp) = slot.lock().expect("multipart lock").clone() {
        return mp;
    }
    let mp = retry_forever(retry, "CreateMultipartUpload", key, || {
        uploader.create_multipart(key)
    })
    .await;
    *slot.lock().expect("multipart lock") = Some(mp.clone());
    info!(key, "Streaming a large file with a multipart upload.");
    mp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_metadata_round_trip() {
        let m = seal_metadata(10, 42);
        assert_eq!(parse_seal(10, &m), Some(Seal { start: 10, end: 42 }));
        // A seal recorded with another offset is stale.
        assert_eq!(parse_seal(11, &m), None);
        assert_eq!(parse_seal(10, ""), None);
        assert_eq!(parse_seal(10, "form-etl-seal:10:5"), None);
    }
}

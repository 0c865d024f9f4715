//! One task per file: streams its parts as the pipeline fills them, and makes it visible (PUT or
//! CompleteMultipartUpload) once its segment's gate opens, while the partition is still ours.
//! Also the deletion of an earlier run's stale objects (see `seal.rs`).
//!
//! Every request goes through the retry policy (`s3.retry`): transient errors (the server away,
//! throttling, timeouts) are retried for ever unless `max-attempts` says otherwise, so an
//! outage stalls the sink; permanent ones (access denied, no such bucket) a few times, then the
//! file fails and the sink ends with the error, leaving its range to be replayed. A Complete
//! whose answer was lost is checked with a HEAD (the ETag S3 gives the parts) rather than
//! retried for ever against an upload id that no longer exists.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use connector_common::retry::{GaveUp, RetryPolicy};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::format::FinishedFile;
use crate::pipeline::BudgetGuard;
use crate::store::{
    ErrorKind, META_END_OFFSET, META_FIRST_OFFSET, Multipart, ObjectStore, Part, StoreError, Write,
    Written,
};
use crate::tables::Table;

/// Which partitions this instance owns now, by epoch. A revoke (in the consumer's rebalance
/// callback) takes its partitions out before it returns, so no file of a revoked partition
/// becomes visible after the hand-over (a request already sent may still land; the
/// conditional create keeps it from overwriting what the new owner wrote).
#[derive(Debug, Default)]
pub(crate) struct Fence {
    owned: Mutex<HashMap<i32, u64>>,
}

impl Fence {
    pub(crate) fn assign(&self, partition: i32, epoch: u64) {
        self.owned
            .lock()
            .expect("fence lock")
            .insert(partition, epoch);
    }

    pub(crate) fn revoke(&self, partition: i32) {
        self.owned.lock().expect("fence lock").remove(&partition);
    }

    pub(crate) fn owns(&self, partition: i32, epoch: u64) -> bool {
        self.owned.lock().expect("fence lock").get(&partition) == Some(&epoch)
    }
}

/// Messages to one file's task.
#[derive(Debug)]
pub(crate) enum FileMsg {
    /// A full part (2, 3, …) of the file.
    Part(Vec<u8>, BudgetGuard),
    /// The file is closed: upload what is left and make it visible once `gate` opens.
    Finish {
        file: FinishedFile,
        end: i64,
        gate: watch::Receiver<bool>,
        budget: BudgetGuard,
    },
    /// Not a file: delete the object at the key once `gate` opens.
    Delete { gate: watch::Receiver<bool> },
}

/// A file (or deletion) is done: durable, abandoned (the partition was revoked), or failed.
#[derive(Debug)]
pub(crate) struct FileDone {
    pub(crate) file_id: u64,
    pub(crate) partition: i32,
    pub(crate) epoch: u64,
    pub(crate) table: Table,
    pub(crate) bytes: u64,
    pub(crate) outcome: Outcome,
}

#[derive(Debug)]
pub(crate) enum Outcome {
    /// Visible (or deleted, or found already written by an earlier run).
    Durable,
    /// The partition is no longer ours: nothing was made visible.
    Abandoned,
    /// A request failed for good: the sink must stop without committing this range.
    Failed(String),
}

/// What the file tasks share.
#[derive(Debug)]
pub(crate) struct UploadCtx {
    pub(crate) store: Arc<dyn ObjectStore>,
    pub(crate) retry: RetryPolicy,
    pub(crate) fence: Arc<Fence>,
    pub(crate) done: mpsc::UnboundedSender<FileDone>,
}

/// One file's identity.
#[derive(Debug, Clone)]
pub(crate) struct FileId {
    pub(crate) id: u64,
    pub(crate) partition: i32,
    pub(crate) epoch: u64,
    pub(crate) table: Table,
    pub(crate) key: String,
    /// The segment's first offset.
    pub(crate) first: i64,
}

/// Counts a task's outcome in the metrics: files and bytes made durable (`is_file`: not a
/// deletion), failures, by table.
pub(crate) fn count_outcome(done: &FileDone, is_file: bool) {
    let table = done.table.as_str();
    match &done.outcome {
        Outcome::Durable if !is_file => {}
        Outcome::Durable => {
            metrics::counter!("s3_sink_files_total", "table" => table).increment(1);
            metrics::counter!("s3_sink_bytes_total", "table" => table).increment(done.bytes);
        }
        Outcome::Abandoned => {}
        Outcome::Failed(_) => {
            metrics::counter!("s3_sink_upload_failures_total", "table" => table).increment(1);
        }
    }
}

/// The file tasks of a committer: one per file (or deletion), by file id.
pub(crate) struct Uploads {
    ctx: Arc<UploadCtx>,
    files: HashMap<u64, FileTrack>,
    /// Where the tasks report (see [`FileDone`]).
    pub(crate) done_rx: mpsc::UnboundedReceiver<FileDone>,
}

impl std::fmt::Debug for Uploads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uploads")
            .field("files", &self.files.len())
            .finish()
    }
}

/// One file's task.
#[derive(Debug)]
pub(crate) struct FileTrack {
    partition: i32,
    key: String,
    pub(crate) tx: mpsc::UnboundedSender<FileMsg>,
    task: tokio::task::JoinHandle<()>,
    multipart: Arc<Mutex<Option<Multipart>>>,
}

impl Uploads {
    pub(crate) fn new(ctx: Arc<UploadCtx>, done_rx: mpsc::UnboundedReceiver<FileDone>) -> Self {
        Self {
            ctx,
            files: HashMap::new(),
            done_rx,
        }
    }

    /// The task of `file`, started if new.
    pub(crate) fn file(&mut self, file: FileId) -> &FileTrack {
        let ctx = self.ctx.clone();
        self.files.entry(file.id).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            let multipart = Arc::new(Mutex::new(None));
            let (partition, key) = (file.partition, file.key.clone());
            let task = tokio::spawn(run_file(ctx, file, rx, multipart.clone()));
            FileTrack {
                partition,
                key,
                tx,
                task,
                multipart,
            }
        })
    }

    /// A full part of `file` (its task started if new): it uploads at once.
    pub(crate) fn part(&mut self, file: FileId, body: Vec<u8>, budget: BudgetGuard) {
        let _ = self.file(file).tx.send(FileMsg::Part(body, budget));
    }

    /// A task reported its end.
    pub(crate) fn finished(&mut self, id: u64) {
        self.files.remove(&id);
    }

    /// Stops a file's upload and aborts its multipart upload, if any.
    pub(crate) fn abandon(&mut self, id: u64) {
        let Some(f) = self.files.remove(&id) else {
            return;
        };
        f.task.abort();
        let mp = f.multipart.lock().expect("multipart lock").take();
        if let Some(mp) = mp {
            let ctx = self.ctx.clone();
            tokio::spawn(async move { abort_upload(&ctx, &f.key, &mp).await });
        }
    }

    /// Stops every upload of `partition`.
    pub(crate) fn abandon_partition(&mut self, partition: i32) {
        let ids: Vec<u64> = self
            .files
            .iter()
            .filter(|(_, f)| f.partition == partition)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.abandon(id);
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.files.len()
    }
}

/// A failure that ends the file.
enum Stop {
    Abandoned,
    Failed(String),
}

fn failed(g: GaveUp<StoreError>) -> Stop {
    Stop::Failed(format!("{} (after {} attempts)", g.error, g.attempts))
}

/// The file's task: runs until the file is durable, abandoned or failed, and reports it.
pub(crate) async fn run_file(
    ctx: Arc<UploadCtx>,
    file: FileId,
    rx: mpsc::UnboundedReceiver<FileMsg>,
    slot: Arc<Mutex<Option<Multipart>>>,
) {
    let mut bytes = 0;
    let outcome = match file_steps(&ctx, &file, rx, &slot, &mut bytes).await {
        Ok(()) => Outcome::Durable,
        Err(Stop::Abandoned) => Outcome::Abandoned,
        Err(Stop::Failed(msg)) => Outcome::Failed(msg),
    };
    if matches!(outcome, Outcome::Abandoned | Outcome::Failed(_)) {
        let upload = slot.lock().expect("multipart lock").take();
        if let Some(upload) = upload {
            abort_upload(&ctx, &file.key, &upload).await;
        }
    }
    let _ = ctx.done.send(FileDone {
        file_id: file.id,
        partition: file.partition,
        epoch: file.epoch,
        table: file.table,
        bytes,
        outcome,
    });
}

/// Best effort: an abandoned upload is invisible anyway (a bucket lifecycle rule cleans up).
pub(crate) async fn abort_upload(ctx: &UploadCtx, key: &str, upload: &Multipart) {
    if let Err(error) = ctx.store.abort(key, upload).await {
        warn!(%error, key, "Could not abort a multipart upload (left for the bucket's lifecycle rule).");
    }
}

async fn file_steps(
    ctx: &UploadCtx,
    file: &FileId,
    mut rx: mpsc::UnboundedReceiver<FileMsg>,
    slot: &Mutex<Option<Multipart>>,
    bytes: &mut u64,
) -> Result<(), Stop> {
    let key = file.key.as_str();
    let retry = &ctx.retry;
    let store = ctx.store.as_ref();
    let mut parts: Vec<Part> = Vec::new();
    let mut next_part = 2;
    let puts = metrics::counter!("s3_sink_puts_total", "table" => file.table.as_str());
    let first_meta = vec![(META_FIRST_OFFSET.to_owned(), file.first.to_string())];
    while let Some(msg) = rx.recv().await {
        match msg {
            FileMsg::Part(body, budget) => {
                let upload = ensure_multipart(ctx, key, &first_meta, slot).await?;
                let body = Bytes::from(body);
                *bytes += body.len() as u64;
                let n = next_part;
                let part = retry
                    .run("s3_upload_part", key, || {
                        store.upload_part(key, &upload, n, body.clone())
                    })
                    .await
                    .map_err(failed)?;
                puts.increment(1);
                next_part += 1;
                parts.push(part);
                drop(budget);
            }
            FileMsg::Delete { mut gate } => {
                if gate.wait_for(|open| *open).await.is_err() {
                    return Err(Stop::Abandoned);
                }
                if !ctx.fence.owns(file.partition, file.epoch) {
                    return Err(Stop::Abandoned);
                }
                retry
                    .run("s3_delete", key, || store.delete(key))
                    .await
                    .map_err(failed)?;
                info!(
                    key,
                    "Deleted an earlier run's object that the replay did not rewrite."
                );
                return Ok(());
            }
            FileMsg::Finish {
                file: finished,
                end,
                mut gate,
                budget,
            } => {
                *bytes += (finished.head.len() + finished.tail.len()) as u64;
                let upload = slot.lock().expect("multipart lock").clone();
                let written = match upload {
                    None => {
                        let mut body = finished.head;
                        body.extend_from_slice(&finished.tail);
                        // Shared by every attempt (no copy of the file per retry).
                        let body = Bytes::from(body);
                        let mut meta = first_meta.clone();
                        meta.push((META_END_OFFSET.to_owned(), end.to_string()));
                        visible_gate(ctx, file, &mut gate).await?;
                        let w = retry
                            .run("s3_put_object", key, || {
                                store.put(key, body.clone(), &meta, Write::IfAbsent)
                            })
                            .await
                            .map_err(failed)?;
                        puts.increment(1);
                        if w == Written::Exists && !same_segment(ctx, file, end).await? {
                            retry
                                .run("s3_put_object", key, || {
                                    store.put(key, body.clone(), &meta, Write::Overwrite)
                                })
                                .await
                                .map_err(failed)?;
                        }
                        w
                    }
                    Some(upload) => {
                        let head = Bytes::from(finished.head);
                        let p1 = retry
                            .run("s3_upload_part", key, || {
                                store.upload_part(key, &upload, 1, head.clone())
                            })
                            .await
                            .map_err(failed)?;
                        puts.increment(1);
                        parts.push(p1);
                        if !finished.tail.is_empty() {
                            let tail = Bytes::from(finished.tail);
                            let n = next_part;
                            let pn = retry
                                .run("s3_upload_part", key, || {
                                    store.upload_part(key, &upload, n, tail.clone())
                                })
                                .await
                                .map_err(failed)?;
                            puts.increment(1);
                            parts.push(pn);
                        }
                        visible_gate(ctx, file, &mut gate).await?;
                        let w = complete(ctx, file, &upload, &parts, Write::IfAbsent).await?;
                        puts.increment(1);
                        if w == Written::Exists {
                            if same_segment(ctx, file, end).await? {
                                abort_upload(ctx, key, &upload).await;
                            } else {
                                complete(ctx, file, &upload, &parts, Write::Overwrite).await?;
                            }
                        }
                        slot.lock().expect("multipart lock").take();
                        w
                    }
                };
                drop(budget);
                match written {
                    Written::Created => debug!(key, bytes = *bytes, "File uploaded."),
                    Written::Exists => {
                        debug!(key, "The file was already there (an earlier run wrote it).")
                    }
                }
                return Ok(());
            }
        }
    }
    // The sender went away: the partition was revoked.
    Err(Stop::Abandoned)
}

/// Waits for the segment's gate, then checks the partition is still ours.
async fn visible_gate(
    ctx: &UploadCtx,
    file: &FileId,
    gate: &mut watch::Receiver<bool>,
) -> Result<(), Stop> {
    if gate.wait_for(|open| *open).await.is_err() {
        return Err(Stop::Abandoned);
    }
    if !ctx.fence.owns(file.partition, file.epoch) {
        return Err(Stop::Abandoned);
    }
    Ok(())
}

/// An object already exists at the file's key: whether it belongs to the same segment (same
/// first offset and, where recorded, end offset). Only then is it left as it is.
async fn same_segment(ctx: &UploadCtx, file: &FileId, end: i64) -> Result<bool, Stop> {
    let key = file.key.as_str();
    let head = ctx
        .retry
        .run("s3_head_object", key, || ctx.store.head(key))
        .await
        .map_err(failed)?;
    let Some(head) = head else {
        // Deleted meanwhile: write it.
        return Ok(false);
    };
    let first = head
        .metadata
        .get(META_FIRST_OFFSET)
        .and_then(|v| v.parse::<i64>().ok());
    let same = first == Some(file.first) && head.end_offset().is_none_or(|e| e == end);
    if !same {
        warn!(
            key,
            first = ?first,
            end = ?head.end_offset(),
            our_end = end,
            "An object of another range is at this key (offsets reset, or a topic recreated?): overwriting it."
        );
    }
    Ok(same)
}

async fn ensure_multipart(
    ctx: &UploadCtx,
    key: &str,
    meta: &[(String, String)],
    slot: &Mutex<Option<Multipart>>,
) -> Result<Multipart, Stop> {
    if let Some(mp) = slot.lock().expect("multipart lock").clone() {
        return Ok(mp);
    }
    let mp = ctx
        .retry
        .run("s3_create_multipart_upload", key, || {
            ctx.store.create_multipart(key, meta)
        })
        .await
        .map_err(failed)?;
    *slot.lock().expect("multipart lock") = Some(mp.clone());
    info!(key, "Streaming a large file with a multipart upload.");
    Ok(mp)
}

/// CompleteMultipartUpload. When an attempt may have succeeded without its answer coming back
/// (a timeout, a reset connection), a retry finds no such upload: a HEAD then says whether the
/// object is the one these parts make (its ETag), which is success, or not, which fails.
async fn complete(
    ctx: &UploadCtx,
    file: &FileId,
    upload: &Multipart,
    parts: &[Part],
    write: Write,
) -> Result<Written, Stop> {
    let key = file.key.as_str();
    let store = ctx.store.as_ref();
    let tried = std::sync::atomic::AtomicBool::new(false);
    ctx.retry
        .run("s3_complete_multipart_upload", key, || async {
            match store.complete(key, upload, parts, write).await {
                Err(e) if e.kind == ErrorKind::NoSuchUpload && tried.load(Ordering::Relaxed) => {
                    completed_earlier(ctx, key, parts, e).await
                }
                other => {
                    tried.store(true, Ordering::Relaxed);
                    other
                }
            }
        })
        .await
        .map_err(failed)
}

/// After a lost Complete answer: `Created` if the object at `key` is made of `parts`.
async fn completed_earlier(
    ctx: &UploadCtx,
    key: &str,
    parts: &[Part],
    err: StoreError,
) -> Result<Written, StoreError> {
    let expected = ctx.store.multipart_etag(parts);
    let head = ctx.store.head(key).await?;
    let etag = head
        .as_ref()
        .and_then(|h| h.etag.as_deref())
        .map(|e| e.trim_matches('"'));
    match (expected.as_deref(), etag) {
        (Some(want), Some(got)) if want == got => {
            info!(
                key,
                etag = got,
                "A Complete whose answer was lost had succeeded (same ETag)."
            );
            Ok(Written::Created)
        }
        _ => Err(StoreError {
            kind: ErrorKind::Permanent,
            message: format!(
                "{}; the object at the key is not the one its parts make (ETag {etag:?}, expected {expected:?})",
                err.message
            ),
            ..err
        }),
    }
}

//! Where finished files go: an object store. One trait, one implementation per kind of store
//! (`s3.rs`: S3 and S3-compatible servers through aws-sdk-s3; `fs.rs`: a local directory for
//! `file://` endpoints), chosen by the config. Adding a store is one new file here and one arm
//! in `S3Config::store`.
//!
//! Objects are created with [`Write::IfAbsent`] (`If-None-Match: *`, as Kafka Connect's S3 sink
//! does) where the store enforces it: an object that already exists is never overwritten by a
//! replay or by an old owner of the partition; the caller compares the existing object's range
//! (user metadata) with its own instead. A store that ignores the header overwrites, which is
//! safe too, because a replay rewrites a key only with the rows of the same recorded segment.

mod fs;
mod s3;

use std::collections::HashMap;

use bytes::Bytes;
use connector_common::retry::{Classify, ErrorClass};
use futures::future::BoxFuture;

pub(crate) use fs::FsStore;
pub(crate) use s3::S3Store;

/// Object user metadata written with every object (`x-amz-meta-…` on S3): the offset range of
/// the segment it belongs to.
pub(crate) const META_FIRST_OFFSET: &str = "form-etl-first-offset";
pub(crate) const META_END_OFFSET: &str = "form-etl-end-offset";

/// How an object is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Write {
    /// Only if no object has the key (`If-None-Match: *`).
    IfAbsent,
    /// Whatever is there.
    Overwrite,
}

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Written {
    Created,
    /// [`Write::IfAbsent`] found an object at the key: nothing was written.
    Exists,
}

/// A multipart upload in progress: the store's id for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Multipart(pub(crate) String);

/// A part that was uploaded.
#[derive(Debug, Clone)]
pub(crate) struct Part {
    pub(crate) number: i32,
    /// The store's ETag for it (S3: the hex MD5 of the part, quoted).
    pub(crate) etag: Option<String>,
}

/// What a HEAD tells of an existing object.
#[derive(Debug, Clone, Default)]
pub(crate) struct Head {
    pub(crate) etag: Option<String>,
    pub(crate) metadata: HashMap<String, String>,
}

impl Head {
    /// The end offset of the segment the object belongs to, if recorded.
    pub(crate) fn end_offset(&self) -> Option<i64> {
        self.metadata.get(META_END_OFFSET)?.parse().ok()
    }
}

/// The object store.
pub(crate) trait ObjectStore: Send + Sync + std::fmt::Debug {
    /// Creates the bucket (or directory) if missing (local runs and tests).
    fn ensure_bucket(&self) -> BoxFuture<'_, Result<(), StoreError>>;
    /// One object in one request.
    fn put<'a>(
        &'a self,
        key: &'a str,
        body: Bytes,
        metadata: &'a [(String, String)],
        write: Write,
    ) -> BoxFuture<'a, Result<Written, StoreError>>;
    fn create_multipart<'a>(
        &'a self,
        key: &'a str,
        metadata: &'a [(String, String)],
    ) -> BoxFuture<'a, Result<Multipart, StoreError>>;
    fn upload_part<'a>(
        &'a self,
        key: &'a str,
        upload: &'a Multipart,
        number: i32,
        body: Bytes,
    ) -> BoxFuture<'a, Result<Part, StoreError>>;
    /// Makes the object visible from its parts (in part number order).
    fn complete<'a>(
        &'a self,
        key: &'a str,
        upload: &'a Multipart,
        parts: &'a [Part],
        write: Write,
    ) -> BoxFuture<'a, Result<Written, StoreError>>;
    fn abort<'a>(
        &'a self,
        key: &'a str,
        upload: &'a Multipart,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    /// The object's bytes, or `None` if there is no object at `key` (small objects only).
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Bytes>, StoreError>>;
    /// The object's ETag and metadata, or `None` if there is no object at `key`.
    fn head<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Head>, StoreError>>;
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StoreError>>;
    /// The ETag the store gives an object completed from `parts`, when it can be computed.
    fn multipart_etag(&self, parts: &[Part]) -> Option<String>;
}

/// What went wrong with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorKind {
    /// The server is away, slow or overloaded (timeouts, connection errors, 5xx, throttling).
    Transient,
    /// Refused: credentials, permissions, a missing bucket; the same request fails again.
    Permanent,
    /// The multipart upload is unknown (completed or aborted already, or the server lost it).
    NoSuchUpload,
}

/// An error of one request.
#[derive(Debug, thiserror::Error)]
#[error("{op} `{key}`: {message}")]
pub(crate) struct StoreError {
    pub(crate) op: &'static str,
    pub(crate) key: String,
    pub(crate) kind: ErrorKind,
    pub(crate) message: String,
}

impl StoreError {
    pub(crate) fn io(op: &'static str, path: &std::path::Path, e: &std::io::Error) -> Self {
        Self {
            op,
            key: path.display().to_string(),
            // A local disk that fails is no passing state: report it.
            kind: ErrorKind::Permanent,
            message: e.to_string(),
        }
    }
}

impl Classify for StoreError {
    fn class(&self) -> ErrorClass {
        match self.kind {
            ErrorKind::Transient => ErrorClass::Transient,
            ErrorKind::Permanent | ErrorKind::NoSuchUpload => ErrorClass::Permanent,
        }
    }
}

//! The output file format: one trait, one implementation per format (`avro.rs`: Avro object
//! container files; `parquet_file.rs`: Parquet), chosen by the config (`output.format`).
//! Adding a format is one new file here and one arm in `FormatName`.
//!
//! A format takes the rows as form-model encodes them (Avro binary datums of the file's schema
//! version: one encoding for every format) and makes a file of them, holding back its first part
//! (a format may put something there at the end: Avro's header) and handing over every further
//! part as soon as it is full, so the pipeline streams big files with multipart uploads and keeps
//! at most two parts per open file in memory.

use std::sync::Arc;

use form_model::avro::TableSchema;

/// A file closed, ready to upload: `head` (part 1) then `tail` (the last part).
#[derive(Debug)]
pub(crate) struct FinishedFile {
    pub(crate) head: Vec<u8>,
    pub(crate) tail: Vec<u8>,
}

/// Errors of a format (all are bugs or schema trouble: not retried).
#[derive(Debug, thiserror::Error)]
pub(crate) enum FormatError {
    #[error("encoding an Avro block: {0}")]
    Avro(#[from] apache_avro::Error),
    #[error("compressing: {0}")]
    Io(#[from] std::io::Error),
    #[error("writing Parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("building Arrow arrays: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
    #[error("a row is not a datum of its schema: {0}")]
    BadDatum(String),
}

/// One open file.
pub(crate) trait FileWriter: Send + std::fmt::Debug {
    /// Appends one row: its Avro datum under the file's schema (checked by the encoder).
    fn append(&mut self, datum: &[u8]) -> Result<(), FormatError>;
    /// Rows appended.
    fn rows(&self) -> u64;
    /// Encoded (compressed) bytes so far: a function of the rows appended, for `max-bytes`.
    fn encoded_bytes(&self) -> u64;
    /// Bytes held in memory (for the memory budget).
    fn buffered(&self) -> usize;
    /// A full part to stream now, if any (part 2, 3, …).
    fn take_part(&mut self) -> Option<Vec<u8>>;
    /// Closes the file with `metadata` (the segment's `form_etl.*` keys).
    fn finish(self: Box<Self>, metadata: &[(String, String)]) -> Result<FinishedFile, FormatError>;
}

/// A file format.
pub(crate) trait FileFormat: Send + Sync + std::fmt::Debug {
    /// Opens a file of rows of `schema`; parts of `part_size` bytes.
    fn open(&self, schema: Arc<TableSchema>, part_size: usize) -> Box<dyn FileWriter>;
    /// The objects' file name extension (`avro`, `parquet`).
    fn extension(&self) -> &'static str;
}

/// Where bytes a file writes go: its held-back first part, then the part being filled.
#[derive(Debug, Default)]
pub(crate) struct Parts {
    pub(crate) head: Vec<u8>,
    pub(crate) tail: Vec<u8>,
    pub(crate) part_size: usize,
}

impl Parts {
    pub(crate) fn new(part_size: usize) -> Self {
        Self {
            head: Vec::new(),
            tail: Vec::new(),
            part_size,
        }
    }

    /// Appends `bytes`: to the head until it holds a part, then to the tail.
    pub(crate) fn push(&mut self, mut bytes: &[u8]) {
        if self.head.len() < self.part_size {
            let n = (self.part_size - self.head.len()).min(bytes.len());
            self.head.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
        }
        self.tail.extend_from_slice(bytes);
    }

    /// A full part, if the tail holds one.
    pub(crate) fn take_part(&mut self) -> Option<Vec<u8>> {
        (self.tail.len() >= self.part_size).then(|| std::mem::take(&mut self.tail))
    }

    pub(crate) fn capacity(&self) -> usize {
        self.head.capacity() + self.tail.capacity()
    }
}

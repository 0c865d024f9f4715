//! Avro object container file encoder, separate from the uploader (Arroyo's buffering writer).
//!
//! The header carries the file's metadata (source topic, partition, offset range, transform
//! digests), which is only known when the file closes. So the encoder holds back the file's first
//! `part-size` bytes of blocks ("head") and streams everything after it ("parts"): when the file
//! closes, the header is written in front of the head, which becomes multipart part 1 (S3 allows
//! parts in any order), and what is left becomes the last part. Memory per open file stays below
//! two parts plus one Avro block, whatever the file size.

use std::cell::RefCell;
use std::collections::HashMap;

use std::sync::Arc;

use apache_avro::{Codec, Writer, types::Value};
use form_model::avro::TableSchema;

use crate::format::{FileFormat, FileWriter, FinishedFile, FormatError};
use form_model::avro_encode::put_long;

/// Avro block size in bytes before compression (apache-avro's default is 16000).
pub(crate) const BLOCK_SIZE: usize = 64 * 1024;

thread_local! {
    /// One zstd context per thread and level, reused for every block: apache-avro's codec
    /// builds (and zeroes) a new one per block, which cost more than the compression itself.
    static ZSTD: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { RefCell::new(None) };
}

/// Compresses one block's datums in place, as `codec` does (same format: one zstd frame, no
/// checksum; the other codecs are apache-avro's own).
fn compress(codec: Codec, data: &mut Vec<u8>) -> Result<(), FormatError> {
    let Codec::Zstandard(settings) = codec else {
        codec.compress(data)?;
        return Ok(());
    };
    let level = i32::from(settings.compression_level);
    ZSTD.with_borrow_mut(|slot| {
        if slot.as_ref().is_none_or(|(l, _)| *l != level) {
            *slot = Some((level, zstd::bulk::Compressor::new(level)?));
        }
        let (_, compressor) = slot.as_mut().expect("set above");
        *data = compressor.compress(data)?;
        Ok(())
    })
}

/// One open Avro file.
pub(crate) struct FileEncoder {
    schema: Arc<TableSchema>,
    codec: Codec,
    marker: [u8; 16],
    /// Datums of the block being filled (uncompressed).
    block: Vec<u8>,
    block_rows: u64,
    head: Vec<u8>,
    tail: Vec<u8>,
    part_size: usize,
    rows: u64,
    block_bytes: u64,
}

impl std::fmt::Debug for FileEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileEncoder")
            .field("rows", &self.rows)
            .field("block_bytes", &self.block_bytes)
            .field("head", &self.head.len())
            .field("tail", &self.tail.len())
            .finish()
    }
}

impl FileEncoder {
    pub(crate) fn new(schema: Arc<TableSchema>, codec: Codec, part_size: usize) -> Self {
        // The sync marker is random, like every Avro writer's: keys and rows are what a replay
        // must reproduce, not the bytes.
        let marker: [u8; 16] = rand::random();
        Self {
            schema,
            codec,
            marker,
            block: Vec::new(),
            block_rows: 0,
            head: Vec::new(),
            tail: Vec::new(),
            part_size,
            rows: 0,
            block_bytes: 0,
        }
    }

    /// Appends one row: its Avro datum, already encoded and checked against the schema
    /// (form-model's `avro_encode`). Blocks close at [`BLOCK_SIZE`] uncompressed bytes, so
    /// the block boundaries, like the rows, are a function of the rows appended.
    fn append_datum(&mut self, datum: &[u8]) -> Result<(), FormatError> {
        self.block.extend_from_slice(datum);
        self.block_rows += 1;
        self.rows += 1;
        if self.block.len() >= BLOCK_SIZE {
            self.flush_block()?;
        }
        Ok(())
    }

    /// Writes the pending block: row count, compressed size, compressed datums, sync marker.
    fn flush_block(&mut self) -> Result<(), FormatError> {
        if self.block_rows == 0 {
            return Ok(());
        }
        let mut data = std::mem::take(&mut self.block);
        let uncompressed = data.capacity();
        compress(self.codec, &mut data)?;
        let out = if self.head.len() < self.part_size {
            &mut self.head
        } else {
            &mut self.tail
        };
        // Head and tail hold at most a part plus one block: grow them by doubling only up to
        // that, not to twice the part size (memory is counted by capacity).
        let needed = out.len() + data.len() + 32;
        if needed > out.capacity() {
            let limit = self.part_size + BLOCK_SIZE + 1024;
            let target = (out.capacity() * 2).clamp(needed, limit.max(needed));
            out.reserve_exact(target - out.len());
        }
        let before = out.len();
        put_long(out, self.block_rows as i64);
        put_long(out, data.len() as i64);
        out.extend_from_slice(&data);
        out.extend_from_slice(&self.marker);
        self.block_bytes += (out.len() - before) as u64;
        self.block_rows = 0;
        // Keep the block buffer's allocation (the codecs other than null compress into a new one).
        data.clear();
        if data.capacity() < uncompressed {
            data.reserve(uncompressed);
        }
        self.block = data;
        Ok(())
    }

    pub(crate) fn rows(&self) -> u64 {
        self.rows
    }

    /// Encoded (compressed) bytes of the complete blocks so far: a deterministic function of
    /// the rows appended, used by `max-bytes`.
    pub(crate) fn encoded_bytes(&self) -> u64 {
        self.block_bytes
    }

    /// Bytes held in memory by this file (for the memory budget).
    pub(crate) fn buffered(&self) -> usize {
        self.head.capacity() + self.tail.capacity() + self.block.capacity()
    }

    /// A full part to stream now, if any (part 2, 3, …: the head is kept for the header).
    pub(crate) fn take_part(&mut self) -> Option<Vec<u8>> {
        if self.tail.len() >= self.part_size {
            Some(std::mem::take(&mut self.tail))
        } else {
            None
        }
    }

    /// Closes the file: flushes the last block and puts the header (with `metadata`) in front.
    fn finish_file(mut self, metadata: &[(String, String)]) -> Result<FinishedFile, FormatError> {
        self.flush_block()?;
        let mut user_metadata = HashMap::new();
        for (k, v) in metadata {
            user_metadata.insert(k.clone(), Value::Bytes(v.as_bytes().to_vec()));
        }
        let mut header_writer = Writer::builder()
            .schema(self.schema.schema())
            .writer(Vec::new())
            .codec(self.codec)
            .marker(self.marker)
            .user_metadata(user_metadata)
            .build()?;
        header_writer.flush()?;
        let header = header_writer.into_inner()?;
        let mut head = Vec::with_capacity(header.len() + self.head.len());
        head.extend_from_slice(&header);
        head.extend_from_slice(&self.head);
        drop(self.head);
        Ok(FinishedFile {
            head,
            tail: self.tail,
        })
    }
}

/// Avro object container files, with `codec` (`s3.codec`, `s3.zstd-level`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct AvroFormat {
    pub(crate) codec: Codec,
}

impl FileFormat for AvroFormat {
    fn open(&self, schema: Arc<TableSchema>, part_size: usize) -> Box<dyn FileWriter> {
        Box::new(FileEncoder::new(schema, self.codec, part_size))
    }

    fn extension(&self) -> &'static str {
        "avro"
    }
}

impl FileWriter for FileEncoder {
    fn append(&mut self, datum: &[u8]) -> Result<(), FormatError> {
        self.append_datum(datum)
    }

    fn rows(&self) -> u64 {
        FileEncoder::rows(self)
    }

    fn encoded_bytes(&self) -> u64 {
        FileEncoder::encoded_bytes(self)
    }

    fn buffered(&self) -> usize {
        FileEncoder::buffered(self)
    }

    fn take_part(&mut self) -> Option<Vec<u8>> {
        FileEncoder::take_part(self)
    }

    fn finish(self: Box<Self>, metadata: &[(String, String)]) -> Result<FinishedFile, FormatError> {
        (*self).finish_file(metadata)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apache_avro::Reader;

    fn table_schema() -> Arc<TableSchema> {
        Arc::new(
            TableSchema::from_json(
                form_model::avro::Table::Form,
                1,
                r#"{"type":"record","name":"r","fields":[{"name":"id","type":"string"},{"name":"n","type":["null","long"],"default":null}]}"#,
            )
            .unwrap(),
        )
    }

    fn schema() -> &'static apache_avro::Schema {
        let leaked: &'static Arc<TableSchema> = Box::leak(Box::new(table_schema()));
        leaked.schema()
    }

    fn row(i: i64) -> Value {
        Value::Record(vec![
            (
                "id".into(),
                Value::String(format!("row-{i:08}-{}", "x".repeat(40))),
            ),
            ("n".into(), Value::Union(1, Box::new(Value::Long(i)))),
        ])
    }

    fn datum(i: i64) -> Vec<u8> {
        apache_avro::writer::datum::GenericDatumWriter::builder(schema())
            .build()
            .unwrap()
            .write_value_to_vec(row(i))
            .unwrap()
    }

    fn read_all(bytes: &[u8]) -> (Vec<Value>, HashMap<String, Vec<u8>>) {
        let r = Reader::new(bytes).unwrap();
        let meta = r.user_metadata().clone();
        (r.map(|v| v.unwrap()).collect(), meta)
    }

    #[test]
    fn streamed_parts_reassemble_into_a_valid_file() {
        for codec in [
            Codec::Null,
            Codec::Snappy,
            Codec::Zstandard(apache_avro::ZstandardSettings::new(3)),
            Codec::Deflate(apache_avro::DeflateSettings::default()),
        ] {
            let mut enc = FileEncoder::new(table_schema(), codec, 100_000);
            let mut parts = Vec::new();
            for i in 0..50_000 {
                enc.append_datum(&datum(i)).unwrap();
                if let Some(p) = enc.take_part() {
                    assert!(p.len() >= 100_000);
                    parts.push(p);
                }
            }
            let meta = vec![("form_etl.source.topic".to_owned(), "t".to_owned())];
            assert_eq!(enc.rows(), 50_000);
            let f = enc.finish_file(&meta).unwrap();
            let mut file = f.head;
            for p in &parts {
                file.extend_from_slice(p);
            }
            file.extend_from_slice(&f.tail);
            let (rows, meta) = read_all(&file);
            assert_eq!(rows.len(), 50_000, "{codec:?}");
            assert_eq!(meta.get("form_etl.source.topic").unwrap(), b"t");
            if codec == Codec::Null {
                assert!(!parts.is_empty(), "a big file streams parts");
            }
        }
    }

    #[test]
    fn byte_count_is_deterministic() {
        let run = || {
            let mut enc = FileEncoder::new(table_schema(), Codec::Snappy, 1 << 20);
            for i in 0..10_000 {
                enc.append_datum(&datum(i)).unwrap();
            }
            enc.encoded_bytes()
        };
        assert_eq!(run(), run());
        assert!(run() > 0);
    }

    #[test]
    fn empty_tail_small_file() {
        let mut enc = FileEncoder::new(table_schema(), Codec::Null, 1 << 20);
        enc.append(&datum(1)).unwrap();
        let f = enc.finish_file(&[]).unwrap();
        let (rows, _) = read_all(&[f.head, f.tail].concat());
        assert_eq!(rows, vec![row(1)]);
    }
}

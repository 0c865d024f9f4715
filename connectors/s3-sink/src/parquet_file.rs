//! Parquet files (`output.format: parquet`, and the data files of `output.type: iceberg`), with
//! the `parquet` crate (arrow-rs).
//!
//! Rows arrive as Avro datums of the file's schema version (form-model's one encoding); they are
//! decoded column by column into Arrow builders (strings, booleans, longs, doubles, and
//! `timestamp-micros` as Arrow `Timestamp(Microsecond, "+00:00")`, the Parquet timestamp of a UTC
//! instant), written as a record batch every [`BATCH_ROWS`] rows, compressed with zstd
//! (`s3.zstd-level`). Row groups close at [`ROW_GROUP_BYTES`] of encoded data (readers skip and
//! parallelise by row group; the whole group is in memory until it closes). The file's
//! `form_etl.*` metadata goes into the footer's key-value metadata. For Iceberg, each column
//! carries its field id (`PARQUET:field_id`).

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};

use arrow_array::builder::{
    BooleanBuilder, Float64Builder, Int64Builder, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use form_model::avro::{ColumnType, TableSchema};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;

use crate::format::{FileFormat, FileWriter, FinishedFile, FormatError, Parts};

/// Rows per record batch handed to the Parquet writer.
const BATCH_ROWS: usize = 4096;
/// Encoded bytes per row group: large enough for analytics engines (Spark and Trino read
/// groups of 16–128 MiB well), small enough that a few open files fit the memory budget.
pub(crate) const ROW_GROUP_BYTES: usize = 16 << 20;
/// The time zone of timestamp columns (UTC; Iceberg's `timestamptz` as Arrow writes it).
const UTC: &str = "+00:00";

/// Field ids of the columns, by name (Iceberg's).
pub(crate) type FieldIds = HashMap<String, i32>;

/// Parquet with zstd at `zstd_level`.
#[derive(Debug, Clone)]
pub(crate) struct ParquetFormat {
    pub(crate) zstd_level: i32,
}

impl ParquetFormat {
    /// A file whose columns carry `field_ids` (Iceberg data files).
    pub(crate) fn open_with_ids(
        &self,
        schema: Arc<TableSchema>,
        part_size: usize,
        field_ids: Option<&FieldIds>,
    ) -> Box<dyn FileWriter> {
        Box::new(ParquetFile::new(
            schema,
            part_size,
            self.zstd_level,
            field_ids,
        ))
    }
}

impl FileFormat for ParquetFormat {
    fn open(&self, schema: Arc<TableSchema>, part_size: usize) -> Box<dyn FileWriter> {
        self.open_with_ids(schema, part_size, None)
    }

    fn extension(&self) -> &'static str {
        "parquet"
    }
}

/// The Arrow schema of a table schema version (nullable columns nullable).
pub(crate) fn arrow_schema(ts: &TableSchema, field_ids: Option<&FieldIds>) -> SchemaRef {
    let fields: Vec<Field> = ts
        .columns()
        .iter()
        .map(|c| {
            let ty = match c.ty {
                ColumnType::String => DataType::Utf8,
                ColumnType::Boolean => DataType::Boolean,
                ColumnType::Long => DataType::Int64,
                ColumnType::Double => DataType::Float64,
                ColumnType::TimestampMicros => {
                    DataType::Timestamp(TimeUnit::Microsecond, Some(UTC.into()))
                }
            };
            let mut f = Field::new(&c.name, ty, c.nullable);
            if let Some(id) = field_ids.and_then(|ids| ids.get(&c.name)) {
                f = f.with_metadata(HashMap::from([(
                    parquet::arrow::PARQUET_FIELD_ID_META_KEY.to_owned(),
                    id.to_string(),
                )]));
            }
            f
        })
        .collect();
    Arc::new(Schema::new(fields))
}

/// What the Parquet writer writes to: bytes taken out after every write.
#[derive(Debug, Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("sink lock").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

enum Column {
    Str(StringBuilder),
    Bool(BooleanBuilder),
    Long(Int64Builder),
    Double(Float64Builder),
    Time(TimestampMicrosecondBuilder),
}

impl Column {
    fn new(ty: ColumnType) -> Self {
        match ty {
            ColumnType::String => Self::Str(StringBuilder::new()),
            ColumnType::Boolean => Self::Bool(BooleanBuilder::new()),
            ColumnType::Long => Self::Long(Int64Builder::new()),
            ColumnType::Double => Self::Double(Float64Builder::new()),
            ColumnType::TimestampMicros => {
                Self::Time(TimestampMicrosecondBuilder::new().with_timezone(UTC))
            }
        }
    }

    fn null(&mut self) {
        match self {
            Self::Str(b) => b.append_null(),
            Self::Bool(b) => b.append_null(),
            Self::Long(b) => b.append_null(),
            Self::Double(b) => b.append_null(),
            Self::Time(b) => b.append_null(),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Self::Str(b) => Arc::new(b.finish()),
            Self::Bool(b) => Arc::new(b.finish()),
            Self::Long(b) => Arc::new(b.finish()),
            Self::Double(b) => Arc::new(b.finish()),
            Self::Time(b) => Arc::new(b.finish()),
        }
    }
}

/// Reads an Avro datum.
struct Datum<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Datum<'_> {
    fn bad(&self, what: &str) -> FormatError {
        FormatError::BadDatum(format!("{what} at byte {}", self.pos))
    }

    fn long(&mut self) -> Result<i64, FormatError> {
        let mut z: u64 = 0;
        let mut shift = 0;
        loop {
            let b = *self
                .bytes
                .get(self.pos)
                .ok_or_else(|| self.bad("a truncated long"))?;
            self.pos += 1;
            z |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                break;
            }
            shift += 7;
            if shift > 63 {
                return Err(self.bad("a long of more than 10 bytes"));
            }
        }
        Ok(((z >> 1) as i64) ^ -((z & 1) as i64))
    }

    fn take(&mut self, n: usize) -> Result<&[u8], FormatError> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.bytes.len());
        let end = end.ok_or_else(|| self.bad("a truncated value"))?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }
}

struct ParquetFile {
    schema: Arc<TableSchema>,
    arrow: SchemaRef,
    columns: Vec<Column>,
    pending: usize,
    pending_bytes: usize,
    writer: Option<ArrowWriter<Sink>>,
    sink: Sink,
    parts: Parts,
    rows: u64,
}

impl std::fmt::Debug for ParquetFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParquetFile")
            .field("rows", &self.rows)
            .field("pending", &self.pending)
            .finish_non_exhaustive()
    }
}

impl ParquetFile {
    fn new(
        schema: Arc<TableSchema>,
        part_size: usize,
        zstd_level: i32,
        field_ids: Option<&FieldIds>,
    ) -> Self {
        let arrow = arrow_schema(&schema, field_ids);
        let level = ZstdLevel::try_new(zstd_level).unwrap_or_default();
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(level))
            .set_max_row_group_bytes(Some(ROW_GROUP_BYTES))
            .build();
        let sink = Sink::default();
        let writer = ArrowWriter::try_new(sink.clone(), arrow.clone(), Some(props))
            .expect("an Arrow schema of our column types is a Parquet schema");
        let columns = schema.columns().iter().map(|c| Column::new(c.ty)).collect();
        Self {
            schema,
            arrow,
            columns,
            pending: 0,
            pending_bytes: 0,
            writer: Some(writer),
            sink,
            parts: Parts::new(part_size),
            rows: 0,
        }
    }

    fn decode(&mut self, datum: &[u8]) -> Result<(), FormatError> {
        let mut d = Datum {
            bytes: datum,
            pos: 0,
        };
        for (col, b) in self.schema.columns().iter().zip(self.columns.iter_mut()) {
            if col.nullable {
                match d.long()? {
                    0 => {
                        b.null();
                        continue;
                    }
                    1 => {}
                    other => return Err(d.bad(&format!("union branch {other}"))),
                }
            }
            match b {
                Column::Str(s) => {
                    let n = usize::try_from(d.long()?).map_err(|_| d.bad("a negative length"))?;
                    let bytes = d.take(n)?;
                    let text = std::str::from_utf8(bytes)
                        .map_err(|_| FormatError::BadDatum("a string that is not UTF-8".into()))?;
                    s.append_value(text);
                }
                Column::Bool(v) => {
                    let b = d.take(1)?[0];
                    v.append_value(b != 0);
                }
                Column::Long(v) => v.append_value(d.long()?),
                Column::Time(v) => v.append_value(d.long()?),
                Column::Double(v) => {
                    let raw: [u8; 8] = d.take(8)?.try_into().expect("8 bytes");
                    v.append_value(f64::from_le_bytes(raw));
                }
            }
        }
        if d.pos != datum.len() {
            return Err(d.bad("bytes after the last column"));
        }
        Ok(())
    }

    /// Writes the pending rows as one record batch, and moves what the writer wrote.
    fn flush_batch(&mut self) -> Result<(), FormatError> {
        if self.pending == 0 {
            return Ok(());
        }
        let arrays: Vec<ArrayRef> = self.columns.iter_mut().map(Column::finish).collect();
        let batch = RecordBatch::try_new(self.arrow.clone(), arrays)?;
        self.writer.as_mut().expect("open").write(&batch)?;
        self.pending = 0;
        self.pending_bytes = 0;
        self.drain();
        Ok(())
    }

    fn drain(&mut self) {
        let bytes = std::mem::take(&mut *self.sink.0.lock().expect("sink lock"));
        self.parts.push(&bytes);
    }
}

impl FileWriter for ParquetFile {
    fn append(&mut self, datum: &[u8]) -> Result<(), FormatError> {
        self.decode(datum)?;
        self.pending += 1;
        self.pending_bytes += datum.len();
        self.rows += 1;
        if self.pending >= BATCH_ROWS {
            self.flush_batch()?;
        }
        Ok(())
    }

    fn rows(&self) -> u64 {
        self.rows
    }

    fn encoded_bytes(&self) -> u64 {
        let w = self.writer.as_ref().expect("open");
        (w.bytes_written() + w.in_progress_size()) as u64
    }

    fn buffered(&self) -> usize {
        let w = self.writer.as_ref().expect("open");
        self.parts.capacity() + w.memory_size() + self.pending_bytes * 2
    }

    fn take_part(&mut self) -> Option<Vec<u8>> {
        self.parts.take_part()
    }

    fn finish(
        mut self: Box<Self>,
        metadata: &[(String, String)],
    ) -> Result<FinishedFile, FormatError> {
        self.flush_batch()?;
        let mut writer = self.writer.take().expect("open");
        for (k, v) in metadata {
            writer.append_key_value_metadata(KeyValue::new(k.clone(), v.clone()));
        }
        writer.close()?;
        self.drain();
        let Parts { head, tail, .. } = std::mem::take(&mut self.parts);
        Ok(FinishedFile { head, tail })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::Array;
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Float64Type, Int64Type, TimestampMicrosecondType};
    use form_model::avro::Table;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    fn schema() -> Arc<TableSchema> {
        Arc::new(
            TableSchema::from_json(
                Table::Form,
                1,
                r#"{"type":"record","name":"r","fields":[
                    {"name":"id","type":"string"},
                    {"name":"n","type":["null","long"],"default":null},
                    {"name":"x","type":["null","double"],"default":null},
                    {"name":"b","type":["null","boolean"],"default":null},
                    {"name":"at","type":{"type":"long","logicalType":"timestamp-micros"}}]}"#,
            )
            .unwrap(),
        )
    }

    fn datum(i: i64) -> Vec<u8> {
        let mut d = Vec::new();
        let id = format!("row-{i}");
        form_model::avro_encode::put_long(&mut d, id.len() as i64);
        d.extend_from_slice(id.as_bytes());
        if i % 3 == 0 {
            d.push(0);
        } else {
            form_model::avro_encode::put_long(&mut d, 1);
            form_model::avro_encode::put_long(&mut d, -i);
        }
        form_model::avro_encode::put_long(&mut d, 1);
        d.extend_from_slice(&(i as f64 / 2.0).to_le_bytes());
        form_model::avro_encode::put_long(&mut d, 1);
        d.push(u8::from(i % 2 == 0));
        form_model::avro_encode::put_long(&mut d, 1_700_000_000_000_000 + i);
        d
    }

    #[test]
    fn rows_read_back_with_the_parquet_reader_and_parts_reassemble() {
        let ids = FieldIds::from([("id".into(), 7), ("at".into(), 9)]);
        let fmt = ParquetFormat { zstd_level: 1 };
        let mut f = fmt.open_with_ids(schema(), 64 * 1024, Some(&ids));
        let mut parts = Vec::new();
        let n = 50_000;
        for i in 0..n {
            f.append(&datum(i)).unwrap();
            if let Some(p) = f.take_part() {
                parts.push(p);
            }
        }
        assert!(f.encoded_bytes() > 0 && f.rows() == n as u64);
        let done = f
            .finish(&[("form_etl.table".into(), "form".into())])
            .unwrap();
        let mut bytes = done.head;
        for p in parts {
            bytes.extend_from_slice(&p);
        }
        bytes.extend_from_slice(&done.tail);
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes)).unwrap();
        let kv = reader
            .metadata()
            .file_metadata()
            .key_value_metadata()
            .unwrap()
            .clone();
        assert!(
            kv.iter()
                .any(|k| k.key == "form_etl.table" && k.value.as_deref() == Some("form"))
        );
        let fields = reader.schema().fields().clone();
        assert_eq!(
            fields[0]
                .metadata()
                .get(parquet::arrow::PARQUET_FIELD_ID_META_KEY)
                .map(String::as_str),
            Some("7")
        );
        let mut seen = 0i64;
        for batch in reader.build().unwrap() {
            let batch = batch.unwrap();
            let ids = batch.column(0).as_string::<i32>();
            let n = batch.column(1).as_primitive::<Int64Type>();
            let x = batch.column(2).as_primitive::<Float64Type>();
            let at = batch.column(4).as_primitive::<TimestampMicrosecondType>();
            for r in 0..batch.num_rows() {
                let i = seen;
                assert_eq!(ids.value(r), format!("row-{i}"));
                assert_eq!(n.is_null(r), i % 3 == 0);
                if i % 3 != 0 {
                    assert_eq!(n.value(r), -i);
                }
                assert_eq!(x.value(r), i as f64 / 2.0);
                assert_eq!(at.value(r), 1_700_000_000_000_000 + i);
                seen += 1;
            }
        }
        assert_eq!(seen, n);
    }

    #[test]
    fn a_bad_datum_is_an_error() {
        let mut f = ParquetFormat { zstd_level: 1 }.open(schema(), 1 << 20);
        assert!(f.append(&[2, b'a']).is_err());
        let mut d = datum(1);
        d.push(0);
        assert!(f.append(&d).is_err(), "trailing bytes");
    }
}

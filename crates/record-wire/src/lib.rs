//! fluvio-protocol 0.50.1 encodes a record's key and value one byte at a time (`RecordData`'s
//! `Encoder` calls `u8::encode` per byte, after a `write_size` that also walks every byte).
//! Inside a SmartModule that loop runs as fuel-metered WASM and was most of the engine's cost
//! per record. [`encode_records`] writes the same bytes (the tests compare them with
//! fluvio-protocol's own encoder), copying keys and values whole.
//!
//! Used by the `form-flatten` guest for its output and by `form-transforms` for the chain's
//! input. The wire format is that of the engine version we pin (0.50.1).

use fluvio_smartmodule::Record;
use fluvio_smartmodule::dataplane::core::{Encoder, EncoderVarInt, Version};

/// Appends `records` as fluvio-protocol encodes a `Vec<Record>`: the count (`u32`, big
/// endian), then each record: its length (varint), header, key (`Option`), value, headers.
pub fn encode_records<'a>(
    out: &mut Vec<u8>,
    records: impl ExactSizeIterator<Item = &'a Record>,
    version: Version,
) -> Result<(), std::io::Error> {
    let count = u32::try_from(records.len()).map_err(std::io::Error::other)?;
    out.extend_from_slice(&count.to_be_bytes());
    for record in records {
        encode_record(out, record, version)?;
    }
    Ok(())
}

fn encode_record(
    out: &mut Vec<u8>,
    record: &Record,
    version: Version,
) -> Result<(), std::io::Error> {
    let key = record.key.as_ref().map(|k| k.as_ref());
    let value = record.value.as_ref();
    let len = record.preamble.write_size(version)
        + 1
        + key.map_or(0, data_size)
        + data_size(value)
        + record.headers.var_write_size();
    (len as i64).encode_varint(out)?;
    record.preamble.encode(out, version)?;
    match key {
        Some(k) => {
            out.push(1);
            put_data(out, k)?;
        }
        None => out.push(0),
    }
    put_data(out, value)?;
    record.headers.encode_varint(out)
}

fn data_size(bytes: &[u8]) -> usize {
    (bytes.len() as i64).var_write_size() + bytes.len()
}

/// A `RecordData`: its length (varint), then its bytes.
fn put_data(out: &mut Vec<u8>, bytes: &[u8]) -> Result<(), std::io::Error> {
    (bytes.len() as i64).encode_varint(out)?;
    out.extend_from_slice(bytes);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use fluvio_smartmodule::dataplane::core::Decoder;

    fn records() -> Vec<Record> {
        let mut rs = Vec::new();
        for (i, len) in [0usize, 1, 63, 64, 127, 128, 300, 20_000, 70_000]
            .into_iter()
            .enumerate()
        {
            let value: Vec<u8> = (0..len).map(|b| (b * 7 + i) as u8).collect();
            let mut r = Record::new(value);
            if i % 3 != 0 {
                r.key = Some(format!("key-{i}").into_bytes().into());
            }
            r.preamble.set_offset_delta(i as i64 * 1000);
            r.preamble.set_timestamp_delta(-(i as i64));
            rs.push(r);
        }
        rs
    }

    #[test]
    fn same_bytes_as_fluvio_protocol() {
        for version in [0, 21, 23] {
            for n in [0, 1, 9] {
                let rs: Vec<Record> = records().into_iter().take(n).collect();
                let mut theirs = Vec::new();
                rs.encode(&mut theirs, version).unwrap();
                let mut ours = vec![0xAA];
                encode_records(&mut ours, rs.iter(), version).unwrap();
                assert_eq!(&ours[1..], &theirs[..], "version {version}, {n} records");
                let mut back: Vec<Record> = Vec::new();
                back.decode(&mut std::io::Cursor::new(&ours[1..]), version)
                    .unwrap();
                assert_eq!(back.len(), n);
            }
        }
    }
}

//! fluvio-protocol 0.50.1 encodes a record's key and value one byte at a time (`RecordData`'s
//! `Encoder` calls `u8::encode` per byte, after a `write_size` that also walks every byte).
//! Inside a SmartModule that loop runs as fuel-metered WASM and was most of the engine's cost
//! per record. [`encode_records`] writes the same bytes (the tests compare them with
//! fluvio-protocol's own encoder), copying keys and values whole.
//!
//! Used by the `form-flatten` guest for its output and by `form-transforms` for the chain's
//! input. The wire format is that of the engine version we pin (0.50.1).
//!
//! The decoding side has the same problem: fluvio-protocol decodes the `Vec<u8>` that holds a
//! `SmartModuleInput`'s encoded records one pushed byte at a time, which in the guest was
//! about half of the engine's cost per record. [`decode_input`] copies those bytes whole.

use std::io::Cursor;

use fluvio_smartmodule::Record;
use fluvio_smartmodule::dataplane::core::{Decoder, Encoder, EncoderVarInt, Version};
use fluvio_smartmodule::dataplane::record::RecordHeader;
use fluvio_smartmodule::dataplane::smartmodule::SmartModuleInput;

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

/// One record to encode from borrowed bytes: what [`encode_parts`] takes.
#[derive(Debug, Clone, Copy)]
pub struct Parts<'a> {
    /// The record's key.
    pub key: Option<&'a [u8]>,
    /// The record's value.
    pub value: &'a [u8],
    /// Its offset delta (the timestamp delta is 0 and there are no headers, as in
    /// `Record::new`).
    pub offset_delta: i64,
}

/// [`encode_records`] for records given as borrowed bytes: the same wire bytes as for
/// `Record`s built from copies of them (`Record::new(value)`, key and offset delta set),
/// without making those copies.
pub fn encode_parts<'a>(
    out: &mut Vec<u8>,
    records: impl ExactSizeIterator<Item = Parts<'a>>,
    version: Version,
) -> Result<(), std::io::Error> {
    let count = u32::try_from(records.len()).map_err(std::io::Error::other)?;
    out.extend_from_slice(&count.to_be_bytes());
    for parts in records {
        let mut preamble = RecordHeader::default();
        preamble.set_offset_delta(parts.offset_delta);
        put_record(out, &preamble, parts.key, parts.value, 0, version)?;
    }
    Ok(())
}

fn encode_record(
    out: &mut Vec<u8>,
    record: &Record,
    version: Version,
) -> Result<(), std::io::Error> {
    put_record(
        out,
        &record.preamble,
        record.key.as_ref().map(|k| k.as_ref()),
        record.value.as_ref(),
        record.headers,
        version,
    )
}

fn put_record(
    out: &mut Vec<u8>,
    preamble: &RecordHeader,
    key: Option<&[u8]>,
    value: &[u8],
    headers: i64,
    version: Version,
) -> Result<(), std::io::Error> {
    let len = preamble.write_size(version)
        + 1
        + key.map_or(0, data_size)
        + data_size(value)
        + headers.var_write_size();
    (len as i64).encode_varint(out)?;
    preamble.encode(out, version)?;
    match key {
        Some(k) => {
            out.push(1);
            put_data(out, k)?;
        }
        None => out.push(0),
    }
    put_data(out, value)?;
    headers.encode_varint(out)
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

/// Decodes an encoded `SmartModuleInput` (what the engine hands a guest): its base offset,
/// records and base timestamp, as fluvio-protocol decodes them, with the records' bytes
/// copied whole. The deprecated `params` and `join_record` (versions up to 22) are read and
/// dropped: a `map` module gets its parameters through `init`, not here.
pub fn decode_input(bytes: &[u8], version: Version) -> Result<SmartModuleInput, std::io::Error> {
    // The layout: base offset (i64), the records (a `Vec<u8>`: i32 length, bytes), then the
    // version-dependent rest (small). The rest goes through fluvio-protocol, with an empty
    // `Vec<u8>` in place of the records.
    let raw_len = bytes
        .get(8..12)
        .map(|b| i32::from_be_bytes(b.try_into().expect("4 bytes")));
    let raw = raw_len
        .and_then(|len| usize::try_from(len).ok())
        .and_then(|len| bytes.get(12..12 + len));
    let Some(raw) = raw else {
        // No records (a negative or zero length) or a truncated input: fluvio-protocol
        // decodes it, or gives its error.
        let mut input = SmartModuleInput::default();
        input.decode(&mut Cursor::new(bytes), version)?;
        return Ok(input);
    };
    let mut rest = Vec::with_capacity(bytes.len() - raw.len());
    rest.extend_from_slice(&bytes[..8]);
    rest.extend_from_slice(&0i32.to_be_bytes());
    rest.extend_from_slice(&bytes[12 + raw.len()..]);
    let mut head = SmartModuleInput::default();
    head.decode(&mut Cursor::new(&rest), version)?;
    Ok(SmartModuleInput::new(
        raw.to_vec(),
        head.base_offset(),
        head.base_timestamp(),
    ))
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

    #[test]
    fn parts_encode_as_the_records_built_from_them() {
        for version in [0, 21, 23] {
            let rs = records();
            let parts = rs.iter().map(|r| Parts {
                key: r.key.as_ref().map(|k| k.as_ref()),
                value: r.value.as_ref(),
                offset_delta: r.preamble.offset_delta(),
            });
            let mut ours = Vec::new();
            encode_parts(&mut ours, parts, version).unwrap();
            // The records as `Record::new` builds them: timestamp delta 0, no headers.
            let built: Vec<Record> = rs
                .iter()
                .map(|r| {
                    let mut b = Record::new(r.value.as_ref().to_vec());
                    b.key = r.key.clone();
                    b.preamble.set_offset_delta(r.preamble.offset_delta());
                    b
                })
                .collect();
            let mut theirs = Vec::new();
            built.encode(&mut theirs, version).unwrap();
            assert_eq!(ours, theirs, "version {version}");
        }
    }

    #[test]
    fn decode_input_reads_what_fluvio_protocol_writes() {
        for version in [0, 16, 21, 22, 23] {
            for n in [0, 1, 9] {
                let rs: Vec<Record> = records().into_iter().take(n).collect();
                let mut input = SmartModuleInput::try_from_records(rs, version).unwrap();
                input.set_base_offset(1234567);
                input.set_base_timestamp(-98765);
                let mut wire = Vec::new();
                input.encode(&mut wire, version).unwrap();
                let mut theirs = SmartModuleInput::default();
                theirs.decode(&mut Cursor::new(&wire), version).unwrap();
                let ours = decode_input(&wire, version).unwrap();
                let what = format!("version {version}, {n} records");
                assert_eq!(ours.raw_bytes(), theirs.raw_bytes(), "{what}");
                assert_eq!(ours.base_offset(), theirs.base_offset(), "{what}");
                assert_eq!(ours.base_timestamp(), theirs.base_timestamp(), "{what}");
                assert_eq!(ours.base_offset(), 1234567, "{what}");
                let back = ours.try_into_smartmodule_records(version).unwrap();
                assert_eq!(back.len(), n, "{what}");
            }
        }
    }

    #[test]
    fn decode_input_rejects_a_truncated_input() {
        let rs: Vec<Record> = records().into_iter().take(3).collect();
        let input = SmartModuleInput::try_from_records(rs, 22).unwrap();
        let mut wire = Vec::new();
        input.encode(&mut wire, 22).unwrap();
        for cut in [0, 5, 11, 12, 40, wire.len() - 9, wire.len() - 1] {
            assert!(decode_input(&wire[..cut], 22).is_err(), "cut at {cut}");
        }
    }
}

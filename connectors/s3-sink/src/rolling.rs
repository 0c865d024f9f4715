//! When a partition's open segment must be closed.
//!
//! The rules here look only at the segment's own content (its input records, their Kafka
//! timestamps, the rows and encoded bytes of its files), never at the wall clock; wall-clock
//! flushes (idle partition, memory pressure, shutdown, module swap) are decided by the pipeline.
//! Whatever the reason, a segment's boundaries are recorded in the consumer group before any of
//! its objects becomes visible (`seal.rs`), and a replay closes recorded segments where they
//! were recorded: no rule here is relied on to cut a replay at the same place (another
//! `max-records`, codec or module would not).

use std::time::Duration;

/// What a roll decision is based on, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RollReason {
    /// A file reached `max-records` rows.
    MaxRecords,
    /// A file reached `max-bytes` encoded bytes.
    MaxBytes,
    /// The next record is `max-age` (record time) younger than the segment's first record.
    MaxAge,
    /// The next record would give the segment more than `MAX_SEGMENT_DAYS` event days.
    MaxDays,
    /// The next record's rows are of other schema versions (a file has one schema).
    SchemaChange,
    /// A replay reached the end an earlier run recorded.
    Replayed,
    /// No record for the idle flush interval (wall clock).
    Idle,
    /// The memory budget was exceeded: the largest partition is flushed.
    Memory,
    /// Shutdown or `--max-records`.
    Drain,
    /// A changed transform module was swapped in, so every file's `form_etl.transforms`
    /// digests hold for all its rows.
    TransformSwap,
    /// An Iceberg commit is due (`iceberg.commit-interval`): only closed files commit.
    Commit,
}

impl RollReason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            RollReason::MaxRecords => "max_records",
            RollReason::MaxBytes => "max_bytes",
            RollReason::MaxAge => "max_age",
            RollReason::MaxDays => "max_days",
            RollReason::SchemaChange => "schema_change",
            RollReason::Replayed => "replayed",
            RollReason::Idle => "idle",
            RollReason::Memory => "memory",
            RollReason::Drain => "drain",
            RollReason::TransformSwap => "transform_swap",
            RollReason::Commit => "commit",
        }
    }
}

/// The deterministic part of the rolling policy (Arroyo's `RollingPolicy::should_roll`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct RollingPolicy {
    pub(crate) max_records: u64,
    pub(crate) max_bytes: u64,
    pub(crate) max_age: Duration,
}

/// The size of one open file, as seen by the policy.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct FileSize {
    pub(crate) rows: u64,
    pub(crate) bytes: u64,
}

impl RollingPolicy {
    /// Checked before a record joins the open segment: roll at the record's offset when its
    /// Kafka timestamp is `max-age` past the segment's first record.
    pub(crate) fn roll_before(
        &self,
        segment_first_ts_ms: i64,
        record_ts_ms: i64,
    ) -> Option<RollReason> {
        let age_ms = record_ts_ms.saturating_sub(segment_first_ts_ms);
        (age_ms >= 0 && age_ms as u128 >= self.max_age.as_millis()).then_some(RollReason::MaxAge)
    }

    /// Checked after a record's rows were appended: roll after that record when one file is full.
    pub(crate) fn roll_after(
        &self,
        files: impl IntoIterator<Item = FileSize>,
    ) -> Option<RollReason> {
        for f in files {
            if f.rows >= self.max_records {
                return Some(RollReason::MaxRecords);
            }
            if f.bytes >= self.max_bytes {
                return Some(RollReason::MaxBytes);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RollingPolicy {
        RollingPolicy {
            max_records: 3,
            max_bytes: 100,
            max_age: Duration::from_secs(60),
        }
    }

    #[test]
    fn age_is_record_time() {
        let p = policy();
        assert_eq!(p.roll_before(1_000, 60_999), None);
        assert_eq!(p.roll_before(1_000, 61_000), Some(RollReason::MaxAge));
        // A record older than the segment start (producer clock skew) never rolls.
        assert_eq!(p.roll_before(100_000, 1_000), None);
    }

    #[test]
    fn size_limits() {
        let p = policy();
        assert_eq!(p.roll_after([FileSize { rows: 2, bytes: 99 }]), None);
        assert_eq!(
            p.roll_after([
                FileSize { rows: 1, bytes: 1 },
                FileSize { rows: 3, bytes: 1 }
            ]),
            Some(RollReason::MaxRecords)
        );
        assert_eq!(
            p.roll_after([FileSize {
                rows: 1,
                bytes: 100
            }]),
            Some(RollReason::MaxBytes)
        );
    }
}

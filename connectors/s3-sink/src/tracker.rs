//! Where each partition's output stands: its closed segments until they are durable, whether
//! their boundaries are recorded in the group (see `seal.rs`), the gates that keep their objects
//! invisible until then, and what the next commit must say.
//!
//! Rules (per partition):
//! - The committable offset is the start of the oldest segment not yet durable, else the start
//!   of the open segment, else the offset after the last record handled (at first: the offset
//!   committed when the partition was assigned).
//! - The commit records every segment from there on, in order, as far as the metadata has room
//!   (a prefix: a segment is recorded only if every earlier one is). A segment stays recorded
//!   until it is durable, whatever the commits in between.
//! - A segment's objects may become visible (its gate opens) only once a commit recorded it
//!   with every (table, day) it writes; it is durable once every one of its files is uploaded
//!   and every stale object of an earlier run deleted.
//! - Segments recorded by an earlier run are tracked from the assignment on (as *replays*), so
//!   no commit forgets them before the replay has rewritten them.

use std::collections::{HashMap, HashSet, VecDeque};

use tokio::sync::watch;

use crate::pipeline::DeadLetter;
use crate::seal::{self, Keys, MAX_METADATA_BYTES, Recorded};

/// Room kept in the metadata for the JSON framing around the last entry that fits.
const METADATA_MARGIN: usize = 64;

/// One segment between its close (or its assignment, for a replay) and its durability.
#[derive(Debug)]
pub(crate) struct SegmentTrack {
    pub(crate) start: i64,
    pub(crate) end: i64,
    /// Recorded by an earlier run and not yet rewritten by this one.
    pub(crate) replay: bool,
    /// Every (table, day) its objects have, in this run or an earlier one.
    pub(crate) keys: Keys,
    /// What the group's metadata records for it (`None`: not recorded).
    pub(crate) recorded: Option<Keys>,
    /// Whether the recorded keys were known (a version 1 seal recorded none).
    pub(crate) keys_known: bool,
    pub(crate) fingerprint: String,
    /// The schema versions of its files, if known.
    pub(crate) versions: Option<[u32; 2]>,
    pub(crate) first_ts_ms: Option<i64>,
    /// Files and deletions still in flight (ids).
    pub(crate) pending: HashSet<u64>,
    pub(crate) gate: watch::Sender<bool>,
}

impl SegmentTrack {
    fn new(start: i64, end: i64) -> Self {
        Self {
            start,
            end,
            replay: false,
            keys: Keys::new(),
            recorded: None,
            keys_known: true,
            fingerprint: String::new(),
            versions: None,
            first_ts_ms: None,
            pending: HashSet::new(),
            gate: watch::channel(false).0,
        }
    }

    /// Recorded with every key it writes: its objects may become visible.
    pub(crate) fn recorded_whole(&self) -> bool {
        self.recorded
            .as_ref()
            .is_some_and(|r| !self.keys_known || self.keys.is_subset(r))
    }

    pub(crate) fn durable(&self) -> bool {
        !self.replay && self.pending.is_empty() && self.recorded_whole()
    }

    fn entry(&self) -> Recorded {
        let mut r = Recorded::new(
            self.start,
            self.end,
            &self.keys,
            &self.fingerprint,
            self.versions,
        );
        if !self.keys_known && self.keys.is_empty() {
            r.days = None;
        }
        r
    }

    fn open_gate(&self) {
        if self.recorded_whole() && !*self.gate.borrow() {
            self.gate.send_replace(true);
        }
    }
}

/// One partition.
#[derive(Debug)]
pub(crate) struct PartitionTrack {
    pub(crate) epoch: u64,
    /// The offset after the last record the pipeline handled (at first: the committed one).
    pub(crate) next_offset: Option<i64>,
    /// The open segment: start offset and first record time.
    pub(crate) open: Option<(i64, Option<i64>)>,
    pub(crate) segments: VecDeque<SegmentTrack>,
    /// What the group holds: (offset, metadata).
    pub(crate) committed: Option<(i64, String)>,
    pub(crate) dlq: Vec<DeadLetter>,
}

/// What a partition's next commit must say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Wanted {
    pub(crate) offset: i64,
    /// The recorded segments, in order (a prefix of the partition's segments).
    pub(crate) chain: Vec<Recorded>,
}

impl Wanted {
    pub(crate) fn metadata(&self) -> String {
        seal::encode(&self.chain)
    }
}

impl PartitionTrack {
    /// A partition assigned at `committed` (absent: nothing committed yet), with the segments
    /// an earlier run recorded there.
    pub(crate) fn assigned(
        epoch: u64,
        committed: Option<(i64, String)>,
        recorded: &[Recorded],
    ) -> Self {
        let segments = recorded
            .iter()
            .map(|r| {
                let mut s = SegmentTrack::new(r.start, r.end);
                s.replay = true;
                s.keys_known = r.days.is_some();
                s.keys = r.keys().unwrap_or_default();
                s.recorded = Some(s.keys.clone());
                s.fingerprint = r.fingerprint.clone();
                s.versions = r.versions;
                s
            })
            .collect();
        Self {
            epoch,
            next_offset: committed.as_ref().map(|c| c.0),
            open: None,
            segments,
            committed,
            dlq: Vec::new(),
        }
    }

    /// A segment closed by the pipeline with objects at `keys`: a new one, or the rewrite of the
    /// recorded segment it replays. Returns the keys an earlier run wrote that this one does not
    /// (to delete once the segment is recorded), and the segment.
    pub(crate) fn closed(
        &mut self,
        start: i64,
        end: i64,
        keys: Keys,
        fingerprint: &str,
        versions: [u32; 2],
        first_ts_ms: Option<i64>,
    ) -> Result<(Keys, &mut SegmentTrack), String> {
        let pos = self.segments.iter().position(|s| s.replay);
        if let Some(i) = pos {
            let s = &mut self.segments[i];
            if s.start != start || s.end != end {
                return Err(format!(
                    "the pipeline closed [{start}, {end}) while the recorded segment [{}, {}) is being replayed",
                    s.start, s.end
                ));
            }
            s.replay = false;
            s.first_ts_ms = first_ts_ms;
            s.versions.get_or_insert(versions);
            let stale: Keys = if s.keys_known {
                s.keys.difference(&keys).copied().collect()
            } else {
                Keys::new()
            };
            s.keys.extend(keys);
            s.keys_known = true;
            s.open_gate();
            return Ok((stale, s));
        }
        if let Some(last) = self.segments.back()
            && start < last.end
        {
            return Err(format!(
                "the pipeline closed [{start}, {end}) before the end of the last segment [{}, {})",
                last.start, last.end
            ));
        }
        let mut s = SegmentTrack::new(start, end);
        s.keys = keys;
        s.fingerprint = fingerprint.to_owned();
        s.versions = Some(versions);
        s.first_ts_ms = first_ts_ms;
        self.segments.push_back(s);
        Ok((Keys::new(), self.segments.back_mut().expect("pushed")))
    }

    /// A file or deletion of the segment at `start` is done.
    pub(crate) fn done(&mut self, id: u64) -> bool {
        self.segments.iter_mut().any(|s| s.pending.remove(&id))
    }

    /// Drops the durable segments at the front.
    pub(crate) fn pop_durable(&mut self) {
        while self.segments.front().is_some_and(SegmentTrack::durable) {
            self.segments.pop_front();
        }
    }

    /// What the next commit should say, if anything can be said yet.
    pub(crate) fn wanted(&self) -> Option<Wanted> {
        let mut offset = self.next_offset?;
        if let Some(front) = self.segments.front() {
            offset = offset.min(front.start);
        }
        if let Some((start, _)) = self.open {
            offset = offset.min(start);
        }
        let mut chain = Vec::new();
        for s in &self.segments {
            chain.push(s.entry());
            if seal::encoded_len(&chain) + METADATA_MARGIN > MAX_METADATA_BYTES {
                chain.pop();
                break;
            }
        }
        Some(Wanted { offset, chain })
    }

    /// Whether a segment waits for its record (its objects invisible until then) and the next
    /// commit would record it.
    pub(crate) fn needs_record(&self, wanted: &Wanted) -> bool {
        self.segments
            .iter()
            .zip(&wanted.chain)
            .any(|(s, _)| !s.recorded_whole())
    }

    /// The commit of `wanted` succeeded.
    pub(crate) fn committed(&mut self, wanted: &Wanted) {
        for r in &wanted.chain {
            if let Some(s) = self.segments.iter_mut().find(|s| s.start == r.start) {
                s.recorded = r.keys().or_else(|| Some(s.keys.clone()));
                s.open_gate();
            }
        }
        self.dlq.retain(|l| l.offset >= wanted.offset);
        self.committed = Some((wanted.offset, wanted.metadata()));
    }

    /// Whether the group already holds `wanted`.
    pub(crate) fn holds(&self, wanted: &Wanted) -> bool {
        self.committed
            .as_ref()
            .is_some_and(|(o, m)| *o == wanted.offset && *m == wanted.metadata())
    }
}

/// Every assigned partition.
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    pub(crate) partitions: HashMap<i32, PartitionTrack>,
}

impl Tracker {
    pub(crate) fn current(&mut self, partition: i32, epoch: u64) -> Option<&mut PartitionTrack> {
        self.partitions
            .get_mut(&partition)
            .filter(|p| p.epoch == epoch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tables::Table;

    fn keys(v: &[(Table, i64)]) -> Keys {
        v.iter().copied().collect()
    }

    const D1: (Table, i64) = (Table::Form, 1);
    const D2: (Table, i64) = (Table::Form, 2);

    #[test]
    fn a_segment_is_recorded_before_its_gate_opens_and_stays_recorded_until_durable() {
        let mut p = PartitionTrack::assigned(1, None, &[]);
        assert_eq!(p.wanted(), None, "nothing handled, nothing to commit");
        p.next_offset = Some(1000);
        let (stale, s) = p.closed(0, 1000, keys(&[D1]), "fp", [1, 1], None).unwrap();
        assert!(stale.is_empty());
        s.pending.insert(7);
        assert!(!*s.gate.borrow(), "not visible before it is recorded");
        let w = p.wanted().unwrap();
        assert_eq!(w.offset, 0);
        assert_eq!(
            w.chain,
            vec![Recorded::new(0, 1000, &keys(&[D1]), "fp", Some([1, 1]))]
        );
        assert!(p.needs_record(&w));
        p.committed(&w);
        assert!(*p.segments[0].gate.borrow(), "visible once recorded");
        assert!(!p.needs_record(&w));
        // While its file uploads, every commit keeps the record (the offset stays at its start).
        p.next_offset = Some(1500);
        p.open = Some((1000, None));
        let w2 = p.wanted().unwrap();
        assert_eq!((w2.offset, w2.chain.len()), (0, 1));
        assert!(p.holds(&w2), "nothing new to commit");
        // Durable: popped, and the next commit moves past it.
        assert!(p.done(7));
        p.pop_durable();
        let w3 = p.wanted().unwrap();
        assert_eq!((w3.offset, w3.chain.len()), (1000, 0));
    }

    #[test]
    fn recorded_segments_are_kept_from_the_assignment_until_the_replay_rewrote_them() {
        let recorded = vec![
            Recorded::new(10, 1000, &keys(&[D1, D2]), "old", None),
            Recorded::new(1000, 2000, &keys(&[D2]), "old", None),
        ];
        let meta = seal::encode(&recorded);
        let mut p = PartitionTrack::assigned(3, Some((5, meta.clone())), &recorded);
        // Nothing replayed yet: the commit would say exactly what the group holds.
        let w = p.wanted().unwrap();
        assert_eq!(w.offset, 5);
        assert_eq!(w.metadata(), meta);
        assert!(p.holds(&w));
        assert!(!p.needs_record(&w));
        // The replay rewrites the first one without the day-2 objects: those are stale.
        p.next_offset = Some(1000);
        let (stale, s) = p
            .closed(10, 1000, keys(&[D1]), "new", [1, 1], None)
            .unwrap();
        assert_eq!(stale, keys(&[D2]));
        assert!(*s.gate.borrow(), "already recorded with these keys");
        // A replay that would close elsewhere is a bug, reported.
        assert!(
            p.closed(1000, 1500, keys(&[D2]), "new", [1, 1], None)
                .is_err()
        );
        // A replay that writes a key the record lacks must be recorded again first.
        let (_, s) = p
            .closed(
                1000,
                2000,
                keys(&[D2, (Table::FormField, 2)]),
                "new",
                [1, 1],
                None,
            )
            .unwrap();
        assert!(!*s.gate.borrow());
        let w = p.wanted().unwrap();
        assert!(p.needs_record(&w));
        p.committed(&w);
        assert!(*p.segments[1].gate.borrow());
    }

    #[test]
    fn the_chain_is_a_prefix_that_fits_the_metadata() {
        let mut p = PartitionTrack::assigned(1, Some((0, String::new())), &[]);
        let many: Keys = (0..40)
            .map(|d| (Table::FormField, 19_000 + d * 7))
            .collect();
        let mut start = 0;
        for _ in 0..20 {
            p.closed(
                start,
                start + 100,
                many.clone(),
                "fingerprint",
                [1, 1],
                None,
            )
            .unwrap();
            start += 100;
        }
        p.next_offset = Some(start);
        let w = p.wanted().unwrap();
        assert!(w.metadata().len() <= MAX_METADATA_BYTES);
        assert!(
            w.chain.len() < 20 && !w.chain.is_empty(),
            "{}",
            w.chain.len()
        );
        for (i, r) in w.chain.iter().enumerate() {
            assert_eq!(r.start, i as i64 * 100);
        }
        p.committed(&w);
        // Only the recorded ones may become visible.
        let open: Vec<bool> = p.segments.iter().map(|s| *s.gate.borrow()).collect();
        assert!(open[..w.chain.len()].iter().all(|o| *o));
        assert!(open[w.chain.len()..].iter().all(|o| !*o));
    }

    #[test]
    fn dead_letters_ride_the_commit_that_passes_them() {
        let mut p = PartitionTrack::assigned(1, Some((0, String::new())), &[]);
        for offset in [3, 12] {
            p.dlq.push(DeadLetter {
                offset,
                key: None,
                value: None,
                reason: connector_common::dlq::DlqReason::InvalidJson,
                detail: String::new(),
            });
        }
        p.next_offset = Some(20);
        p.open = Some((10, None));
        let w = p.wanted().unwrap();
        assert_eq!(w.offset, 10);
        p.committed(&w);
        assert_eq!(p.dlq.iter().map(|l| l.offset).collect::<Vec<_>>(), vec![12]);
    }
}

//! The oracle: judges what a scenario left behind against what it produced.
//!
//! Row identity. A `form` row is the event whose `event_happened_at` it carries (every valid
//! event has its own, to the microsecond) and whose form it names (`id`); that event is a
//! (partition, offset) of the events topic, from the producer's delivery reports. A
//! `form_field` row is (that event, the field `id`), found by `form_event_happened_at` and
//! `form_id`. The file metadata (`form_etl.source.partition`, `first_offset`, `end_offset`) is
//! checked against the enriched topic: the enriched record of a row's event must lie in the
//! row's file's range.
//!
//! Checks, each counted: every valid event's rows exactly once (form and field rows); no row
//! the flow did not ask for; no two objects of one (table, partition, event date) with
//! overlapping offset ranges; every key as the metadata names it; fastavro and avro-tools count
//! the same rows; every valid event enriched exactly once and no poison event enriched; every
//! poison event dead-lettered exactly once with its reason, key and value untouched; no other
//! dead letter; no secret in any log or `/health`/`/metrics` answer; no exit but ours.
//!
//! An `output: iceberg` run has no files to name or range: each table is read whole, by DuckDB's
//! `iceberg_scan` (the rows judged) and by pyiceberg (the same rows, counted against DuckDB's),
//! and the newest snapshot holding the group's offsets must hold the enriched topic's end for
//! every partition.

use std::collections::{BTreeMap, HashMap};

use crate::flow::{Kind, Ledger};
use crate::supervisor::ExitRecord;

/// A row's identity columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RowId {
    Form {
        id: Option<String>,
        us: Option<i64>,
    },
    Field {
        form_id: Option<String>,
        us: Option<i64>,
        field: Option<String>,
    },
}

/// One object read back with fastavro.
#[derive(Debug, Clone)]
pub(crate) struct ObjectRead {
    /// The S3 key.
    pub(crate) key: String,
    pub(crate) table: Option<String>,
    pub(crate) topic: Option<String>,
    pub(crate) partition: Option<i32>,
    pub(crate) date: Option<String>,
    pub(crate) first: Option<i64>,
    pub(crate) end: Option<i64>,
    pub(crate) rows: Vec<RowId>,
    /// `form_etl.transforms` (the modules and their sha256s).
    pub(crate) transforms: Option<String>,
    pub(crate) error: Option<String>,
}

/// Parses one line of `read_avro.py`.
pub(crate) fn object_from_json(key: String, v: &serde_json::Value) -> ObjectRead {
    let meta = &v["meta"];
    let m = |k: &str| meta[k].as_str().map(str::to_owned);
    let num = |k: &str| m(k).and_then(|s| s.parse::<i64>().ok());
    let table = m("form_etl.table");
    let s = |x: &serde_json::Value| x.as_str().map(str::to_owned);
    let rows = v["rows"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .map(|r| match table.as_deref() {
                    Some("form") => RowId::Form {
                        id: s(&r[0]),
                        us: r[1].as_i64(),
                    },
                    _ => RowId::Field {
                        form_id: s(&r[0]),
                        us: r[1].as_i64(),
                        field: s(&r[2]),
                    },
                })
                .collect()
        })
        .unwrap_or_default();
    ObjectRead {
        key,
        topic: m("form_etl.source.topic"),
        partition: num("form_etl.source.partition").map(|p| p as i32),
        date: m("form_etl.event_date"),
        first: num("form_etl.source.first_offset"),
        end: num("form_etl.source.end_offset"),
        transforms: m("form_etl.transforms"),
        table,
        rows,
        error: v["error"].as_str().map(str::to_owned),
    }
}

/// Parses the per-table JSON of `read_iceberg.py`: one [`ObjectRead`] per table (its rows, as
/// DuckDB reads them) and what the oracle checks of the table itself. `topic`: the enriched
/// topic, whose offsets the snapshots hold.
pub(crate) fn tables_from_json(
    namespace: &str,
    topic: &str,
    v: &serde_json::Value,
) -> (Vec<ObjectRead>, Vec<TableRead>) {
    let mut objects = Vec::new();
    let mut tables = Vec::new();
    for name in ["form", "form_field"] {
        let t = &v[name];
        let error = match (t.is_object(), t["error"].as_str()) {
            (false, _) => Some("the reader printed nothing for it".to_owned()),
            (true, Some(e)) => Some(e.to_owned()),
            (true, None) => None,
        };
        let mut o = object_from_json(
            format!("iceberg table {namespace}.{name}"),
            &serde_json::json!({"meta": {"form_etl.table": name}, "rows": t["rows"]}),
        );
        o.error = error.clone();
        objects.push(o);
        let offsets = t["offsets"].as_str().map(|json| {
            serde_json::from_str::<serde_json::Value>(json)
                .ok()
                .and_then(|v| {
                    v[topic].as_object().map(|m| {
                        m.iter()
                            .filter_map(|(p, o)| Some((p.parse().ok()?, o.as_i64()?)))
                            .collect::<BTreeMap<i32, i64>>()
                    })
                })
                .ok_or_else(|| format!("unreadable: {json}"))
        });
        tables.push(TableRead {
            name: name.to_owned(),
            pyiceberg_rows: t["pyiceberg_rows"].as_u64().unwrap_or(0),
            disagreeing_rows: t["disagreeing_rows"].as_u64().unwrap_or(0),
            snapshots: t["snapshots"].as_u64().unwrap_or(0) as usize,
            offsets,
            error,
        });
    }
    (objects, tables)
}

/// One table of an `output: iceberg` run, as `read_iceberg.py` reads it.
#[derive(Debug, Clone, Default)]
pub(crate) struct TableRead {
    pub(crate) name: String,
    /// Rows as pyiceberg reads them.
    pub(crate) pyiceberg_rows: u64,
    /// Rows one reader has and the other has not (as many times).
    pub(crate) disagreeing_rows: u64,
    pub(crate) snapshots: usize,
    /// The enriched topic's offsets in the newest snapshot that holds the group's, by
    /// partition; `None`: no snapshot holds them; `Err`: they could not be read.
    pub(crate) offsets: Option<Result<BTreeMap<i32, i64>, String>>,
    pub(crate) error: Option<String>,
}

/// An `output: iceberg` run's tables.
#[derive(Debug, Clone, Default)]
pub(crate) struct TablesRead {
    pub(crate) tables: Vec<TableRead>,
    /// The enriched topic's end offsets, by partition.
    pub(crate) topic_end: Vec<i64>,
}

/// One record of the enriched topic: where it is and the event it says it enriches.
#[derive(Debug, Clone)]
pub(crate) struct EnrichedRec {
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    /// `source.{topic, partition, offset}`.
    pub(crate) source: Option<(String, i32, i64)>,
}

/// One dead letter.
#[derive(Debug, Clone)]
pub(crate) struct Letter {
    pub(crate) source_topic: Option<String>,
    pub(crate) partition: Option<i32>,
    pub(crate) offset: Option<i64>,
    pub(crate) reason: Option<String>,
    pub(crate) key: Option<Vec<u8>>,
    pub(crate) value_sha256: Option<[u8; 32]>,
}

/// Everything the oracle looks at.
#[derive(Debug, Clone)]
pub(crate) struct Observations {
    pub(crate) ledger: Ledger,
    pub(crate) enriched: Vec<EnrichedRec>,
    pub(crate) letters: Vec<Letter>,
    /// Files read with fastavro, or (`output: iceberg`) one entry per table read with DuckDB.
    pub(crate) objects: Vec<ObjectRead>,
    pub(crate) avro_tools_rows: Option<u64>,
    /// `output: iceberg`: the tables themselves (`None` for file outputs).
    pub(crate) tables: Option<TablesRead>,
    /// Where a secret value was seen (logs, `/health`, `/metrics`).
    pub(crate) secret_hits: Vec<String>,
    pub(crate) exits: Vec<ExitRecord>,
    pub(crate) events_topic: String,
    pub(crate) enriched_topic: String,
    pub(crate) prefix: String,
    /// Both connectors' committed offsets reached the end in time.
    pub(crate) drained: bool,
}

/// The oracle's figures and failures.
#[derive(Debug, Clone, Default)]
pub(crate) struct Findings {
    pub(crate) valid: usize,
    pub(crate) poison: usize,
    pub(crate) form_expected: usize,
    pub(crate) form_found: usize,
    pub(crate) form_dups: usize,
    pub(crate) form_missing: usize,
    pub(crate) field_expected: usize,
    pub(crate) field_found: usize,
    pub(crate) field_dups: usize,
    pub(crate) field_missing: usize,
    /// Rows that are no valid event's (or name another form).
    pub(crate) unknown_rows: usize,
    pub(crate) objects: usize,
    pub(crate) unreadable: usize,
    pub(crate) overlaps: usize,
    pub(crate) bad_keys: usize,
    pub(crate) misplaced: usize,
    /// Rows read by the first reader (fastavro; DuckDB for `output: iceberg`).
    pub(crate) rows_read: u64,
    pub(crate) avro_tools_rows: Option<u64>,
    /// `output: iceberg`: per table, what its snapshots and the second reader say.
    pub(crate) tables: Vec<String>,
    /// `output: iceberg`: partitions whose stored offset is not the topic's end (per table).
    pub(crate) offset_mismatches: usize,
    pub(crate) enriched: usize,
    pub(crate) enriched_dups: usize,
    pub(crate) enriched_missing: usize,
    pub(crate) enriched_unexpected: usize,
    pub(crate) dlq_expected: usize,
    /// Dead letters about the events topic.
    pub(crate) dlq_found: usize,
    pub(crate) dlq_missing: usize,
    pub(crate) dlq_dups: usize,
    pub(crate) dlq_wrong_reason: usize,
    pub(crate) dlq_altered: usize,
    pub(crate) dlq_unexpected: usize,
    /// (kind, reason found) → count.
    pub(crate) reasons: BTreeMap<(String, String), usize>,
    pub(crate) secret_hits: Vec<String>,
    pub(crate) foreign_exits: Vec<String>,
    pub(crate) exits_ours: usize,
    pub(crate) drained: bool,
    pub(crate) failures: Vec<String>,
}

impl Findings {
    pub(crate) fn rows_expected(&self) -> usize {
        self.form_expected + self.field_expected
    }
    pub(crate) fn rows_found(&self) -> usize {
        self.form_found + self.field_found
    }
    pub(crate) fn duplicates(&self) -> usize {
        self.form_dups + self.field_dups
    }
    pub(crate) fn missing(&self) -> usize {
        self.form_missing + self.field_missing
    }
}

fn sample<T: std::fmt::Debug>(items: &[T]) -> String {
    let shown: Vec<String> = items.iter().take(3).map(|i| format!("{i:?}")).collect();
    shown.join(", ")
}

/// Judges `obs`; `catalog` holds each generated form's field ids.
pub(crate) fn judge(obs: &Observations, catalog: &HashMap<String, Vec<String>>) -> Findings {
    let mut f = Findings {
        drained: obs.drained,
        avro_tools_rows: obs.avro_tools_rows,
        objects: obs.objects.len(),
        ..Findings::default()
    };
    let mut failures: Vec<String> = Vec::new();

    // --- The valid events: identity by event_happened_at.
    struct Expect<'a> {
        form: &'a str,
        pos: (i32, i64),
        fields: HashMap<&'a str, usize>,
    }
    let mut by_us: HashMap<i64, Expect<'_>> = HashMap::new();
    let mut by_pos: HashMap<(i32, i64), Kind> = HashMap::new();
    for e in &obs.ledger.events {
        by_pos.insert((e.partition, e.offset), e.kind);
        if e.kind != Kind::Valid {
            f.poison += 1;
            continue;
        }
        f.valid += 1;
        let form = e.form_id.as_deref().unwrap_or_default();
        let mut fields: HashMap<&str, usize> = HashMap::new();
        for id in catalog.get(form).map(Vec::as_slice).unwrap_or_default() {
            *fields.entry(id.as_str()).or_default() += 1;
        }
        f.field_expected += fields.values().sum::<usize>();
        if let Some(us) = e.happened_us {
            by_us.insert(
                us,
                Expect {
                    form,
                    pos: (e.partition, e.offset),
                    fields,
                },
            );
        }
    }
    f.form_expected = f.valid;

    // --- The enriched topic: which enriched record holds which event.
    let mut enriched_at: HashMap<(i32, i64), Vec<(i32, i64)>> = HashMap::new();
    for r in &obs.enriched {
        f.enriched += 1;
        match &r.source {
            Some((t, p, o)) if *t == obs.events_topic => {
                enriched_at
                    .entry((*p, *o))
                    .or_default()
                    .push((r.partition, r.offset));
            }
            _ => f.enriched_unexpected += 1,
        }
    }
    let mut enriched_poison = Vec::new();
    for (pos, at) in &enriched_at {
        match by_pos.get(pos) {
            Some(Kind::Valid) => f.enriched_dups += at.len() - 1,
            Some(k) => {
                f.enriched_unexpected += at.len();
                enriched_poison.push((*pos, k.name()));
            }
            None => f.enriched_unexpected += at.len(),
        }
    }
    f.enriched_missing = obs
        .ledger
        .events
        .iter()
        .filter(|e| e.kind == Kind::Valid && !enriched_at.contains_key(&(e.partition, e.offset)))
        .count();

    // --- The objects.
    let mut form_seen: HashMap<i64, usize> = HashMap::new();
    let mut field_seen: HashMap<(i64, &str), usize> = HashMap::new();
    let mut unknown = Vec::new();
    let mut misplaced = Vec::new();
    let mut bad_keys = Vec::new();
    // (table, partition, event date) → (first, end, key) of each object.
    type Ranges<'a> = BTreeMap<(String, i32, String), Vec<(i64, i64, &'a str)>>;
    let mut ranges: Ranges<'_> = BTreeMap::new();
    let files = obs.tables.is_none();
    for o in &obs.objects {
        if let Some(e) = &o.error {
            f.unreadable += 1;
            failures.push(format!("unreadable object {}: {e}", o.key));
            continue;
        }
        f.rows_read += o.rows.len() as u64;
        // A file's (partition, first, end); a table has none.
        let mut range = None;
        if files {
            let (Some(table), Some(p), Some(date), Some(first), Some(end)) =
                (&o.table, o.partition, &o.date, o.first, o.end)
            else {
                bad_keys.push(format!("{} (form_etl metadata missing)", o.key));
                continue;
            };
            let want_key = format!(
                "{}/{table}/event_date={date}/{}+{p}+{first:020}.avro",
                obs.prefix, obs.enriched_topic
            );
            if o.key != want_key || o.topic.as_deref() != Some(obs.enriched_topic.as_str()) {
                bad_keys.push(o.key.clone());
            }
            ranges
                .entry((table.clone(), p, date.clone()))
                .or_default()
                .push((first, end, o.key.as_str()));
            range = Some((p, first, end));
        }
        let in_file = |us: i64| -> bool {
            let (Some(ex), Some((p, first, end))) = (by_us.get(&us), range) else {
                return true;
            };
            enriched_at.get(&ex.pos).is_none_or(|at| {
                at.iter()
                    .any(|(ep, eo)| *ep == p && first <= *eo && *eo < end)
            })
        };
        for row in &o.rows {
            match row {
                RowId::Form { id, us: Some(us) }
                    if by_us.get(us).is_some_and(|e| id.as_deref() == Some(e.form)) =>
                {
                    *form_seen.entry(*us).or_default() += 1;
                    f.form_found += 1;
                    if !in_file(*us) {
                        misplaced.push((o.key.clone(), *us));
                    }
                }
                RowId::Field {
                    form_id,
                    us: Some(us),
                    field: Some(field),
                } if by_us.get(us).is_some_and(|e| {
                    form_id.as_deref() == Some(e.form) && e.fields.contains_key(field.as_str())
                }) =>
                {
                    *field_seen.entry((*us, field.as_str())).or_default() += 1;
                    f.field_found += 1;
                    if !in_file(*us) {
                        misplaced.push((o.key.clone(), *us));
                    }
                }
                other => {
                    match other {
                        RowId::Form { .. } => f.form_found += 1,
                        RowId::Field { .. } => f.field_found += 1,
                    }
                    unknown.push((o.key.clone(), other.clone()));
                }
            }
        }
    }
    for (us, ex) in &by_us {
        match form_seen.get(us).copied().unwrap_or(0) {
            0 => f.form_missing += 1,
            n => f.form_dups += n - 1,
        }
        for (field, want) in &ex.fields {
            let n = field_seen.get(&(*us, *field)).copied().unwrap_or(0);
            f.field_dups += n.saturating_sub(*want);
            f.field_missing += want.saturating_sub(n);
        }
    }
    f.unknown_rows = unknown.len();
    f.misplaced = misplaced.len();
    f.bad_keys = bad_keys.len();
    let mut overlapping = Vec::new();
    for ((table, p, date), mut list) in ranges {
        list.sort();
        for w in list.windows(2) {
            if w[1].0 < w[0].1 {
                overlapping.push(format!(
                    "{table}/{date}/p{p}: [{}, {}) {} and [{}, {}) {}",
                    w[0].0, w[0].1, w[0].2, w[1].0, w[1].1, w[1].2
                ));
            }
        }
    }
    f.overlaps = overlapping.len();

    // --- Dead letters.
    let mut letters_at: HashMap<(i32, i64), Vec<&crate::oracle::Letter>> = HashMap::new();
    for l in &obs.letters {
        match (&l.source_topic, l.partition, l.offset) {
            (Some(t), Some(p), Some(o)) if *t == obs.events_topic => {
                f.dlq_found += 1;
                letters_at.entry((p, o)).or_default().push(l);
            }
            _ => f.dlq_unexpected += 1,
        }
    }
    let mut wrong = Vec::new();
    for e in &obs.ledger.events {
        let got = letters_at.get(&(e.partition, e.offset));
        let Some(reason) = e.kind.expected_reason() else {
            if let Some(got) = got {
                f.dlq_unexpected += got.len();
                wrong.push(format!(
                    "valid event at {}/{} dead-lettered ({:?})",
                    e.partition, e.offset, got[0].reason
                ));
            }
            continue;
        };
        f.dlq_expected += 1;
        let Some(got) = got else {
            f.dlq_missing += 1;
            continue;
        };
        f.dlq_dups += got.len() - 1;
        for l in got {
            let found = l.reason.clone().unwrap_or_else(|| "(none)".into());
            *f.reasons
                .entry((e.kind.name().to_owned(), found.clone()))
                .or_default() += 1;
            if found != reason {
                f.dlq_wrong_reason += 1;
                wrong.push(format!(
                    "{} at {}/{}: reason {found}, want {reason}",
                    e.kind.name(),
                    e.partition,
                    e.offset
                ));
            }
            if l.key.as_deref() != Some(e.key.as_slice()) || l.value_sha256 != Some(e.value_sha256)
            {
                f.dlq_altered += 1;
            }
        }
    }

    // --- Logs, health, exits.
    f.secret_hits = obs.secret_hits.clone();
    for x in &obs.exits {
        if x.ours {
            f.exits_ours += 1;
        } else {
            f.foreign_exits.push(format!(
                "{} run {} (pid {}) at +{:.1}s: {} ({})",
                x.label, x.run, x.pid, x.at_s, x.status, x.why
            ));
        }
    }

    // --- Failures, in words.
    if !obs.drained {
        failures.push(
            "not drained: the connectors' committed offsets did not reach the end in time".into(),
        );
    }
    if f.form_dups + f.field_dups > 0 {
        failures.push(format!(
            "duplicated rows: {} form, {} form_field",
            f.form_dups, f.field_dups
        ));
    }
    if f.form_missing + f.field_missing > 0 {
        failures.push(format!(
            "missing rows: {} form, {} form_field",
            f.form_missing, f.field_missing
        ));
    }
    if !unknown.is_empty() {
        failures.push(format!(
            "{} rows of no valid event, e.g. {}",
            unknown.len(),
            sample(&unknown)
        ));
    }
    if !overlapping.is_empty() {
        failures.push(format!(
            "{} overlapping object pairs, e.g. {}",
            overlapping.len(),
            sample(&overlapping)
        ));
    }
    if !bad_keys.is_empty() {
        failures.push(format!(
            "{} objects not named by their metadata, e.g. {}",
            bad_keys.len(),
            sample(&bad_keys)
        ));
    }
    if !misplaced.is_empty() {
        failures.push(format!(
            "{} rows outside their file's offset range, e.g. {}",
            misplaced.len(),
            sample(&misplaced)
        ));
    }
    match (&obs.tables, f.avro_tools_rows) {
        (Some(tables), _) => judge_tables(obs, tables, &mut f, &mut failures),
        (None, Some(n)) if n != f.rows_read => failures.push(format!(
            "avro-tools counts {n} rows, fastavro {}",
            f.rows_read
        )),
        (None, None) if !obs.objects.is_empty() => {
            failures.push("avro-tools did not count the rows (jar or java missing)".into())
        }
        _ => {}
    }
    if f.enriched_dups + f.enriched_missing + f.enriched_unexpected > 0 {
        failures.push(format!(
                "enriched topic: {} duplicated, {} missing, {} unexpected records (poison enriched: {})",
                f.enriched_dups,
                f.enriched_missing,
                f.enriched_unexpected,
                sample(&enriched_poison)
            ),
        );
    }
    if f.dlq_missing + f.dlq_dups + f.dlq_wrong_reason + f.dlq_altered + f.dlq_unexpected > 0 {
        failures.push(format!(
                "dead letters: {} missing, {} duplicated, {} with a wrong reason, {} altered, {} unexpected; e.g. {}",
                f.dlq_missing,
                f.dlq_dups,
                f.dlq_wrong_reason,
                f.dlq_altered,
                f.dlq_unexpected,
                sample(&wrong)
            ),
        );
    }
    if !f.secret_hits.is_empty() {
        let hits = f.secret_hits.clone();
        failures.push(format!("a secret value appears in: {}", hits.join("; ")));
    }
    if !f.foreign_exits.is_empty() {
        let x = f.foreign_exits.clone();
        failures.push(format!(
            "{} exits that were not ours: {}",
            x.len(),
            x.join("; ")
        ));
    }
    f.failures = failures;
    f
}

/// `output: iceberg`: both tables read, pyiceberg agreeing with DuckDB row for row, and the
/// newest snapshot holding the group's offsets at the topic's end for every partition.
fn judge_tables(
    obs: &Observations,
    tables: &TablesRead,
    f: &mut Findings,
    failures: &mut Vec<String>,
) {
    for name in ["form", "form_field"] {
        if !tables.tables.iter().any(|t| t.name == name) {
            failures.push(format!("table {name} was not read"));
        }
    }
    for t in &tables.tables {
        if t.error.is_some() {
            // Reported with the unreadable objects.
            f.tables.push(format!("{}: unreadable", t.name));
            continue;
        }
        let duckdb: usize = obs
            .objects
            .iter()
            .filter(|o| o.table.as_deref() == Some(t.name.as_str()))
            .map(|o| o.rows.len())
            .sum();
        if t.pyiceberg_rows != duckdb as u64 || t.disagreeing_rows > 0 {
            failures.push(format!(
                "{}: pyiceberg reads {} rows, DuckDB {duckdb}; {} rows differ",
                t.name, t.pyiceberg_rows, t.disagreeing_rows
            ));
        }
        let offsets = match &t.offsets {
            None => {
                failures.push(format!("{}: no snapshot holds the group's offsets", t.name));
                f.offset_mismatches += tables.topic_end.len();
                f.tables.push(format!("{}: no offsets stored", t.name));
                continue;
            }
            Some(Err(e)) => {
                failures.push(format!("{}: its stored offsets are {e}", t.name));
                f.offset_mismatches += tables.topic_end.len();
                f.tables.push(format!("{}: offsets unreadable", t.name));
                continue;
            }
            Some(Ok(o)) => o,
        };
        let wrong: Vec<String> = tables
            .topic_end
            .iter()
            .enumerate()
            .filter_map(|(p, end)| {
                let got = offsets.get(&(p as i32)).copied();
                // A partition with no record needs no stored offset.
                (got != Some(*end) && !(got.is_none() && *end == 0))
                    .then(|| format!("p{p}: stored {got:?}, end {end}"))
            })
            .collect();
        f.offset_mismatches += wrong.len();
        if !wrong.is_empty() {
            failures.push(format!(
                "{}: the newest snapshot's offsets are not the topic's end: {}",
                t.name,
                wrong.join(", ")
            ));
        }
        f.tables.push(format!(
            "{}: {} snapshots, pyiceberg {} rows = DuckDB {duckdb}, stored offsets {:?} (topic end {:?})",
            t.name, t.snapshots, t.pyiceberg_rows, offsets, tables.topic_end
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::Produced;

    fn produced(seq: u64, kind: Kind, p: i32, o: i64) -> Produced {
        Produced {
            seq,
            kind,
            partition: p,
            offset: o,
            key: format!("k{seq}").into_bytes(),
            value_sha256: [seq as u8; 32],
            form_id: (kind == Kind::Valid).then(|| "form-000001".to_owned()),
            happened_us: (kind == Kind::Valid).then_some(1_000 + seq as i64),
        }
    }

    fn clean() -> (Observations, HashMap<String, Vec<String>>) {
        let catalog = HashMap::from([(
            "form-000001".to_owned(),
            vec!["q1".to_owned(), "q2".to_owned()],
        )]);
        let events = vec![
            produced(0, Kind::Valid, 0, 0),
            produced(1, Kind::Valid, 0, 1),
            produced(2, Kind::WrongType, 0, 2),
        ];
        let form = |seq: i64| RowId::Form {
            id: Some("form-000001".into()),
            us: Some(1_000 + seq),
        };
        let field = |seq: i64, q: &str| RowId::Field {
            form_id: Some("form-000001".into()),
            us: Some(1_000 + seq),
            field: Some(q.into()),
        };
        let object = |table: &str, rows: Vec<RowId>| ObjectRead {
            key: format!("pre/{table}/event_date=2024-03-01/enr+0+{:020}.avro", 0),
            table: Some(table.into()),
            topic: Some("enr".into()),
            partition: Some(0),
            date: Some("2024-03-01".into()),
            first: Some(0),
            end: Some(2),
            rows,
            transforms: None,
            error: None,
        };
        let obs = Observations {
            enriched: vec![
                EnrichedRec {
                    partition: 0,
                    offset: 0,
                    source: Some(("ev".into(), 0, 0)),
                },
                EnrichedRec {
                    partition: 0,
                    offset: 1,
                    source: Some(("ev".into(), 0, 1)),
                },
            ],
            letters: vec![Letter {
                source_topic: Some("ev".into()),
                partition: Some(0),
                offset: Some(2),
                reason: Some("wrong_type".into()),
                key: Some(b"k2".to_vec()),
                value_sha256: Some([2u8; 32]),
            }],
            objects: vec![
                object("form", vec![form(0), form(1)]),
                object(
                    "form_field",
                    vec![
                        field(0, "q1"),
                        field(0, "q2"),
                        field(1, "q1"),
                        field(1, "q2"),
                    ],
                ),
            ],
            avro_tools_rows: Some(6),
            tables: None,
            ledger: Ledger { events },
            secret_hits: vec![],
            exits: vec![],
            events_topic: "ev".into(),
            enriched_topic: "enr".into(),
            prefix: "pre".into(),
            drained: true,
        };
        (obs, catalog)
    }

    #[test]
    fn a_clean_run_passes() {
        let (obs, catalog) = clean();
        let f = judge(&obs, &catalog);
        assert!(f.failures.is_empty(), "{:?}", f.failures);
        assert_eq!(
            (
                f.rows_expected(),
                f.rows_found(),
                f.dlq_expected,
                f.dlq_found
            ),
            (6, 6, 1, 1)
        );
    }

    #[test]
    fn each_corruption_is_caught() {
        let (obs, catalog) = clean();
        // A duplicated object: same range, another key.
        let mut o = obs.clone();
        let mut copy = o.objects[0].clone();
        copy.key = copy
            .key
            .replace("+00000000000000000000", "+00000000000000000001");
        o.objects.push(copy);
        o.avro_tools_rows = Some(8);
        let f = judge(&o, &catalog);
        assert_eq!(
            (f.form_dups, f.overlaps, f.bad_keys),
            (2, 1, 1),
            "{:?}",
            f.failures
        );
        // A deleted object.
        let mut o = obs.clone();
        o.objects.remove(1);
        o.avro_tools_rows = Some(2);
        assert_eq!(judge(&o, &catalog).field_missing, 4);
        // A missing and a duplicated dead letter.
        let mut o = obs.clone();
        o.letters.clear();
        assert_eq!(judge(&o, &catalog).dlq_missing, 1);
        let mut o = obs.clone();
        o.letters.push(o.letters[0].clone());
        assert_eq!(judge(&o, &catalog).dlq_dups, 1);
        let mut o = obs.clone();
        o.letters[0].reason = Some("invalid_json".into());
        assert_eq!(judge(&o, &catalog).dlq_wrong_reason, 1);
        // A duplicated enriched record, a row outside its file's range.
        let mut o = obs.clone();
        o.enriched[1].offset = 7;
        let f = judge(&o, &catalog);
        assert_eq!(f.misplaced, 3, "{:?}", f.failures);
        let mut o = obs.clone();
        o.enriched.push(EnrichedRec {
            partition: 0,
            offset: 5,
            source: Some(("ev".into(), 0, 1)),
        });
        assert_eq!(judge(&o, &catalog).enriched_dups, 1);
        // A secret in a log, an exit that was not ours, a count that differs.
        let mut o = obs.clone();
        o.secret_hits.push("x.log".into());
        o.avro_tools_rows = Some(5);
        o.exits.push(ExitRecord {
            label: "source".into(),
            run: 1,
            pid: 1,
            at_s: 0.0,
            status: "exit 1".into(),
            ours: false,
            why: "exited by itself".into(),
        });
        let f = judge(&o, &catalog);
        assert_eq!(f.failures.len(), 3, "{:?}", f.failures);
    }

    /// The clean run as an `output: iceberg` one: the two tables as `read_iceberg.py` prints
    /// them (`offsets`: the stored JSON of both).
    fn iceberg(offsets: &str) -> Observations {
        let (mut obs, _) = clean();
        let v = serde_json::json!({
            "form": {"rows": [["form-000001", 1000], ["form-000001", 1001]],
                     "pyiceberg_rows": 2, "disagreeing_rows": 0, "snapshots": 3, "offsets": offsets},
            "form_field": {"rows": [["form-000001", 1000, "q1"], ["form-000001", 1000, "q2"],
                                    ["form-000001", 1001, "q1"], ["form-000001", 1001, "q2"]],
                           "pyiceberg_rows": 4, "disagreeing_rows": 0, "snapshots": 3,
                           "offsets": offsets},
        });
        let (objects, tables) = tables_from_json("ns", "enr", &v);
        obs.objects = objects;
        obs.avro_tools_rows = None;
        obs.tables = Some(TablesRead {
            tables,
            topic_end: vec![3],
        });
        obs
    }

    #[test]
    fn a_clean_iceberg_run_passes_and_its_corruptions_are_caught() {
        let (_, catalog) = clean();
        let f = judge(&iceberg(r#"{"enr":{"0":3}}"#), &catalog);
        assert!(f.failures.is_empty(), "{:?}", f.failures);
        assert_eq!((f.rows_found(), f.rows_read, f.tables.len()), (6, 6, 2));
        // Offsets behind the topic's end, none stored, unreadable.
        let f = judge(&iceberg(r#"{"enr":{"0":2}}"#), &catalog);
        assert_eq!(
            (f.offset_mismatches, f.failures.len()),
            (2, 2),
            "{:?}",
            f.failures
        );
        let f = judge(&iceberg(r#"{"other":{"0":3}}"#), &catalog);
        assert_eq!(f.offset_mismatches, 2, "{:?}", f.failures);
        let mut o = iceberg(r#"{"enr":{"0":3}}"#);
        for t in &mut o.tables.as_mut().unwrap().tables {
            t.offsets = None;
        }
        assert_eq!(judge(&o, &catalog).offset_mismatches, 2);
        // A row twice (both readers), a row only DuckDB has, a table that cannot be read.
        let mut o = iceberg(r#"{"enr":{"0":3}}"#);
        let row = o.objects[0].rows[0].clone();
        o.objects[0].rows.push(row);
        o.tables.as_mut().unwrap().tables[0].pyiceberg_rows = 3;
        let f = judge(&o, &catalog);
        assert_eq!((f.form_dups, f.failures.len()), (1, 1), "{:?}", f.failures);
        o.tables.as_mut().unwrap().tables[0].disagreeing_rows = 1;
        assert_eq!(judge(&o, &catalog).failures.len(), 2);
        let mut o = iceberg(r#"{"enr":{"0":3}}"#);
        o.objects[1].error = Some("NoSuchTableError".into());
        o.tables.as_mut().unwrap().tables[1].error = Some("NoSuchTableError".into());
        let f = judge(&o, &catalog);
        assert_eq!((f.unreadable, f.field_missing), (1, 4), "{:?}", f.failures);
        // No key names or offset ranges are asked of tables.
        assert_eq!((f.bad_keys, f.overlaps, f.misplaced), (0, 0, 0));
    }
}

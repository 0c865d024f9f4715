//! The tables' schema versions: kept beside the data, and evolved as rows need it.
//!
//! Each version is an Avro schema at `{prefix}/_schemas/{table}/v{N}.avsc`, created with
//! `If-None-Match: *` before any file that uses it is made (so before any such file becomes
//! visible), and never changed; `{prefix}/_schemas/{table}/latest` names the newest (a hint: a
//! reader also probes past it). Version 1 is `config/<table>.avsc`.
//!
//! Two instances that need a new column at once both try to create the next version; one
//! creation wins, the other finds the version there, reads it, and builds on it (another
//! version if it still lacks something): one history, in the store, for every instance and
//! every replay. The object store is the registry because it is already the sink's durable
//! state for the data and enforces the create-once rule itself (S3 conditional writes); a
//! compacted Kafka topic would need a second ordering protocol of its own.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Context as _;
use bytes::Bytes;
use connector_common::dlq::DlqReason;
use connector_common::retry::RetryPolicy;
use form_model::avro::{Schemas, Table, TableSchema};
use form_model::avro_encode::{EncodeError, EncodedRows, encode_output_with};
use form_model::evolve::{self, Policy};
use form_transforms::Output;
use tracing::{info, warn};

use crate::store::{ObjectStore, Write, Written};

/// How many versions one record may make (two instances racing, each adding a column).
const MAX_EVOLUTIONS_PER_RECORD: usize = 16;

/// The versions in the object store.
pub(crate) struct Registry {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    retry: RetryPolicy,
    known: HashMap<(Table, u32), Arc<TableSchema>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("prefix", &self.prefix)
            .field("known", &self.known.len())
            .finish()
    }
}

impl Registry {
    pub(crate) fn new(store: Arc<dyn ObjectStore>, prefix: &str, retry: RetryPolicy) -> Self {
        Self {
            store,
            prefix: prefix.trim_matches('/').to_owned(),
            retry,
            known: HashMap::new(),
        }
    }

    fn dir(&self, table: Table) -> String {
        if self.prefix.is_empty() {
            format!("_schemas/{}", table.name())
        } else {
            format!("{}/_schemas/{}", self.prefix, table.name())
        }
    }

    pub(crate) fn key(&self, table: Table, version: u32) -> String {
        format!("{}/v{version}.avsc", self.dir(table))
    }

    fn latest_key(&self, table: Table) -> String {
        format!("{}/latest", self.dir(table))
    }

    async fn get(&self, key: &str) -> anyhow::Result<Option<Bytes>> {
        self.retry
            .run("s3_get_object", key, || self.store.get(key))
            .await
            .map_err(|g| anyhow::anyhow!("{} (after {} attempts)", g.error, g.attempts))
    }

    async fn put(&self, key: &str, body: Bytes, write: Write) -> anyhow::Result<Written> {
        self.retry
            .run("s3_put_object", key, || {
                self.store.put(key, body.clone(), &[], write)
            })
            .await
            .map_err(|g| anyhow::anyhow!("{} (after {} attempts)", g.error, g.attempts))
    }

    /// Version `version` of `table`, if it exists.
    pub(crate) async fn fetch(
        &mut self,
        table: Table,
        version: u32,
    ) -> anyhow::Result<Option<Arc<TableSchema>>> {
        if let Some(s) = self.known.get(&(table, version)) {
            return Ok(Some(s.clone()));
        }
        let key = self.key(table, version);
        let Some(bytes) = self.get(&key).await? else {
            return Ok(None);
        };
        let text = std::str::from_utf8(&bytes).with_context(|| format!("`{key}` is not UTF-8"))?;
        let schema = TableSchema::from_json(table, version, text)
            .map_err(|e| anyhow::anyhow!("`{key}` is not a valid schema: {e}"))?;
        let schema = Arc::new(schema);
        self.known.insert((table, version), schema.clone());
        Ok(Some(schema))
    }

    /// The newest version of `table`; creates version 1 (the starting schema) if there is none.
    pub(crate) async fn newest(&mut self, table: Table) -> anyhow::Result<Arc<TableSchema>> {
        let hint = self
            .get(&self.latest_key(table))
            .await?
            .and_then(|b| std::str::from_utf8(&b).ok()?.trim().parse::<u32>().ok())
            .filter(|v| *v >= 1)
            .unwrap_or(1);
        let mut newest = match self.fetch(table, hint).await? {
            Some(s) => s,
            None if hint == 1 => self.create(TableSchema::initial(table)).await?,
            None => {
                warn!(
                    table = table.name(),
                    version = hint,
                    "The schema pointer names a missing version: looking from version 1."
                );
                match self.fetch(table, 1).await? {
                    Some(s) => s,
                    None => self.create(TableSchema::initial(table)).await?,
                }
            }
        };
        while let Some(next) = self.fetch(table, newest.version() + 1).await? {
            newest = next;
        }
        if newest.version() == 1 && newest.json() != TableSchema::initial(table).json() {
            warn!(
                table = table.name(),
                key = self.key(table, 1),
                "Version 1 in the store differs from config/*.avsc: the store's history is used."
            );
        }
        Ok(newest)
    }

    /// Creates `schema`'s version, or answers the one another instance created first.
    async fn create(&mut self, schema: Arc<TableSchema>) -> anyhow::Result<Arc<TableSchema>> {
        let table = schema.table();
        let key = self.key(table, schema.version());
        let body = Bytes::from(schema.json().to_owned());
        match self.put(&key, body, Write::IfAbsent).await? {
            Written::Created => {
                info!(table = table.name(), version = schema.version(), %key, "Schema version created.");
                let pointer = Bytes::from(schema.version().to_string());
                if let Err(e) = self
                    .put(&self.latest_key(table), pointer, Write::Overwrite)
                    .await
                {
                    warn!(error = %e, "Could not move the newest-version pointer (readers probe past it).");
                }
                self.known.insert((table, schema.version()), schema.clone());
                Ok(schema)
            }
            Written::Exists => {
                let theirs = self
                    .fetch(table, schema.version())
                    .await?
                    .with_context(|| format!("`{key}` exists but cannot be read"))?;
                info!(
                    table = table.name(),
                    version = schema.version(),
                    "Another instance created this schema version first: building on it."
                );
                Ok(theirs)
            }
        }
    }

    /// The version after `base` with `changes`, or the one another instance made first.
    pub(crate) async fn create_after(
        &mut self,
        base: &TableSchema,
        changes: &[evolve::Change],
    ) -> anyhow::Result<Arc<TableSchema>> {
        let next = evolve::evolve(base, changes)
            .map_err(|e| anyhow::anyhow!("evolving `{}`: {e}", base.table().name()))?;
        self.create(Arc::new(next)).await
    }
}

/// Drops what `out` got of a record, and makes it a dead letter.
fn refuse(
    out: &mut EncodedRows,
    (bytes_len, rows_len): (usize, usize),
    detail: String,
) -> anyhow::Result<Result<Encoded, (DlqReason, String)>> {
    out.bytes.truncate(bytes_len);
    out.rows.truncate(rows_len);
    Ok(Err((DlqReason::SchemaMismatch, detail)))
}

/// A record's rows, encoded: under which versions.
#[derive(Debug)]
pub(crate) struct Encoded {
    pub(crate) versions: [u32; 2],
}

/// The pipeline's side of schema evolution: the current versions and the policy.
pub(crate) struct Evolver {
    registry: Registry,
    policy: Policy,
    current: Schemas,
    rt: tokio::runtime::Handle,
}

impl std::fmt::Debug for Evolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Evolver")
            .field("versions", &self.current.versions())
            .finish()
    }
}

impl Evolver {
    /// Loads (or creates) the newest versions. Runs on the async side at start.
    pub(crate) async fn open(mut registry: Registry, policy: Policy) -> anyhow::Result<Self> {
        let form = registry.newest(Table::Form).await?;
        let form_field = registry.newest(Table::FormField).await?;
        let current = Schemas::new(form, form_field);
        for t in Table::ALL {
            metrics::gauge!("s3_sink_schema_version", "table" => t.name())
                .set(f64::from(current.get(t).version()));
        }
        info!(versions = ?current.versions(), "Schemas loaded.");
        Ok(Self {
            registry,
            policy,
            current,
            rt: tokio::runtime::Handle::current(),
        })
    }

    pub(crate) fn current(&self) -> &Schemas {
        &self.current
    }

    #[cfg(test)]
    pub(crate) fn set_policy(&mut self, policy: Policy) {
        self.policy = policy;
    }

    /// The schemas of `versions` (a replayed segment's), read from the store. Blocks: the
    /// pipeline thread only.
    pub(crate) fn schemas_of(&mut self, versions: [u32; 2]) -> anyhow::Result<Schemas> {
        if versions == self.current.versions() {
            return Ok(self.current.clone());
        }
        let mut out = self.current.clone();
        for t in Table::ALL {
            let v = versions[t as usize];
            let s = self
                .rt
                .block_on(self.registry.fetch(t, v))?
                .with_context(|| {
                    format!(
                        "schema version {v} of `{}` is missing from the store",
                        t.name()
                    )
                })?;
            out.set(s);
        }
        Ok(out)
    }

    /// Encodes a record's outputs into `out` (all of them, or none): under `fixed` when given
    /// (a replayed segment's versions), else under the current versions, evolving them as the
    /// policy allows. `Ok(Err(..))` is a dead letter; `Err` a failure of the store (the sink
    /// stops). Blocks on the store: the pipeline thread only.
    pub(crate) fn encode(
        &mut self,
        outputs: &[Output],
        fixed: Option<&Schemas>,
        out: &mut EncodedRows,
    ) -> anyhow::Result<Result<Encoded, (DlqReason, String)>> {
        let (bytes_len, rows_len) = (out.bytes.len(), out.rows.len());
        let mut values: Vec<Vec<u8>> = outputs.iter().map(|o| o.value.clone()).collect();
        let mut rescued_rows = 0;
        let mut evolutions = 0;
        'record: loop {
            out.bytes.truncate(bytes_len);
            out.rows.truncate(rows_len);
            let schemas = fixed.unwrap_or(&self.current).clone();
            for value in values.iter_mut() {
                let mismatch = match encode_output_with(value, &schemas, out) {
                    Ok(()) => continue,
                    Err(EncodeError::NotRows(e)) => {
                        out.bytes.truncate(bytes_len);
                        out.rows.truncate(rows_len);
                        let msg = EncodeError::NotRows(e).to_string();
                        return Ok(Err((DlqReason::TransformError, msg)));
                    }
                    Err(EncodeError::Mismatch(m)) => m,
                };
                if let Some(fixed) = fixed {
                    // A replayed segment keeps the versions it was recorded with.
                    match evolve::rescue(value, fixed) {
                        Ok(Some((v, n))) => {
                            *value = v;
                            rescued_rows += n;
                            continue 'record;
                        }
                        Ok(None) => {}
                        Err(r) => return refuse(out, (bytes_len, rows_len), r.to_string()),
                    }
                    return refuse(
                        out,
                        (bytes_len, rows_len),
                        format!(
                            "{mismatch} (while replaying a segment recorded with schema versions {:?}: re-drive it from the dead-letter queue)",
                            fixed.versions()
                        ),
                    );
                }
                if evolutions >= MAX_EVOLUTIONS_PER_RECORD {
                    return refuse(
                        out,
                        (bytes_len, rows_len),
                        format!("{mismatch} (after {evolutions} schema versions)"),
                    );
                }
                let needs = match evolve::needs(value, &self.current, &self.policy) {
                    Ok(n) => n,
                    Err(r) => return refuse(out, (bytes_len, rows_len), r.to_string()),
                };
                let mut changed = false;
                for t in Table::ALL {
                    let changes = &needs.changes[t as usize];
                    if changes.is_empty() {
                        continue;
                    }
                    let base = self.current.get(t).clone();
                    let next = self
                        .rt
                        .block_on(self.registry.create_after(&base, changes))?;
                    let added = next.columns().len().saturating_sub(base.columns().len());
                    metrics::counter!("s3_sink_schema_columns_added_total", "table" => t.name())
                        .increment(added as u64);
                    metrics::gauge!("s3_sink_schema_version", "table" => t.name())
                        .set(f64::from(next.version()));
                    self.current.set(next);
                    changed = true;
                }
                evolutions += 1;
                if changed {
                    continue 'record;
                }
                match evolve::rescue(value, &self.current) {
                    Ok(Some((v, n))) => {
                        *value = v;
                        rescued_rows += n;
                        continue 'record;
                    }
                    Ok(None) => return refuse(out, (bytes_len, rows_len), mismatch.to_string()),
                    Err(r) => return refuse(out, (bytes_len, rows_len), r.to_string()),
                }
            }
            if rescued_rows > 0 {
                metrics::counter!("s3_sink_rescued_rows_total").increment(rescued_rows as u64);
            }
            return Ok(Ok(Encoded {
                versions: schemas.versions(),
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::FsStore;
    use form_model::avro::ColumnType;
    use form_model::evolve::Change;

    fn add(column: &str) -> Vec<Change> {
        vec![Change::Add {
            column: column.into(),
            original: None,
            ty: ColumnType::String,
        }]
    }

    /// Two instances that both make "the next version" from v1, each with its own column: the
    /// second finds v2 taken, builds v3 on it, and both end on one history.
    #[tokio::test]
    async fn two_instances_racing_for_a_version_keep_one_history() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(FsStore::new(dir.path().to_path_buf()));
        let mut a = Registry::new(store.clone(), "p", RetryPolicy::default());
        let mut b = Registry::new(store.clone(), "p", RetryPolicy::default());
        let v1a = a.newest(Table::Form).await.unwrap();
        let v1b = b.newest(Table::Form).await.unwrap();
        assert_eq!((v1a.version(), v1b.version()), (1, 1));
        let a2 = a.create_after(&v1a, &add("from_a")).await.unwrap();
        assert_eq!(a2.version(), 2);
        // b still works from v1: its v2 is taken, and it answers a's.
        let b2 = b.create_after(&v1b, &add("from_b")).await.unwrap();
        assert_eq!(b2.version(), 2);
        assert!(b2.column_index("from_a").is_some() && b2.column_index("from_b").is_none());
        // b builds on it: v3 has both, in the order they were made.
        let b3 = b.create_after(&b2, &add("from_b")).await.unwrap();
        assert_eq!(b3.version(), 3);
        assert!(v1a.is_prefix_of(&a2) && a2.is_prefix_of(&b3));
        assert!(b3.column_index("from_a").is_some() && b3.column_index("from_b").is_some());
        // A third instance starting now reads the newest.
        let mut c = Registry::new(store, "p", RetryPolicy::default());
        assert_eq!(c.newest(Table::Form).await.unwrap().version(), 3);
        assert_eq!(c.newest(Table::FormField).await.unwrap().version(), 1);
        let on_disk = std::fs::read_to_string(dir.path().join("p/_schemas/form/v3.avsc")).unwrap();
        assert_eq!(on_disk, b3.json());
    }
}

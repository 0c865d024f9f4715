//! The Iceberg side of `output.type: iceberg`: the catalog (SQL on SQLite, or REST), the two
//! tables (created if missing: format v2, partitioned by `day(event_happened_at)`, the columns
//! of the sink's schema versions with Iceberg field ids), and the commit of a range's data
//! files with the source offsets in the snapshot summary (`iceberg_committer.rs` drives it).
//!
//! **Field ids.** A Parquet data file carries the field id of each column. The sink writes a
//! file before the table knows a new column, so ids are handed out here: a column the table has
//! keeps the table's id; a new one gets the next free id (the table's `last-column-id` + 1, …),
//! which is the id Iceberg gives it when the commit adds the columns in that order. After each
//! commit the table's ids are checked against these; a difference (another writer changed the
//! schema meanwhile) fails the commit before anything references the files.
//!
//! **Offsets.** Each snapshot the sink makes carries `form-etl.offsets.{group}`: JSON
//! `{"topic": {"partition": next offset}}` for every partition the group has committed (merged
//! with the other instances' under a compare-and-swap on the base snapshot: [`PinnedBase`]),
//! and `form-etl.commit-id`. The newest snapshot that has the key is the table's truth.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use form_model::avro::{ColumnType, TableSchema};
use iceberg::spec::{
    DataContentType, DataFile, DataFileBuilder, DataFileFormat, Literal, NestedField,
    PrimitiveType, Schema, Struct, Transform, Type, UnboundPartitionSpec,
};
use iceberg::table::Table as IcebergTable;
use iceberg::transaction::{AddColumn, ApplyTransactionAction, Transaction};
use iceberg::util::snapshot::ancestors_of;
use iceberg::{
    Catalog, CatalogBuilder, ErrorKind, Namespace, NamespaceIdent, TableCommit, TableCreation,
    TableIdent,
};
use tracing::{debug, info, warn};

use crate::config::{CatalogConfig, IcebergConfig, S3Config};
use crate::format::{FileFormat, FileWriter};
use crate::parquet_file::{FieldIds, ParquetFormat};
use crate::tables::Table;

/// Snapshot summary key prefix of the offsets (`form-etl.offsets.{group}`).
pub(crate) const OFFSETS_KEY: &str = "form-etl.offsets.";
/// Snapshot summary key of the commit id (a UUID per range committed).
pub(crate) const COMMIT_ID_KEY: &str = "form-etl.commit-id";

/// `partition → next offset` of one topic.
pub(crate) type Offsets = BTreeMap<i32, i64>;

/// Ids of one table's columns: the table's, and those handed out for columns it lacks yet.
#[derive(Debug, Default, Clone)]
struct TableIds {
    by_name: FieldIds,
    /// Columns handed out an id the table does not have yet, in id order, with their type.
    new: Vec<(String, i32, ColumnType)>,
    last: i32,
}

impl TableIds {
    fn of(schema: &Schema, last: i32) -> Self {
        let by_name = schema
            .as_struct()
            .fields()
            .iter()
            .map(|f| (f.name.clone(), f.id))
            .collect();
        Self {
            by_name,
            new: Vec::new(),
            last,
        }
    }

    fn ids_for(&mut self, ts: &TableSchema) -> FieldIds {
        for c in ts.columns() {
            if !self.by_name.contains_key(&c.name) {
                self.last += 1;
                self.by_name.insert(c.name.clone(), self.last);
                self.new.push((c.name.clone(), self.last, c.ty));
            }
        }
        ts.columns()
            .iter()
            .map(|c| (c.name.clone(), self.by_name[&c.name]))
            .collect()
    }
}

/// The Iceberg Parquet data files: Parquet whose columns carry the tables' field ids.
#[derive(Debug)]
pub(crate) struct IcebergParquet {
    parquet: ParquetFormat,
    ids: Arc<Mutex<[TableIds; 2]>>,
}

impl FileFormat for IcebergParquet {
    fn open(&self, schema: Arc<TableSchema>, part_size: usize) -> Box<dyn FileWriter> {
        let t = Table::from(schema.table()) as usize;
        let ids = self.ids.lock().expect("field ids lock")[t].ids_for(&schema);
        self.parquet.open_with_ids(schema, part_size, Some(&ids))
    }

    fn extension(&self) -> &'static str {
        "parquet"
    }
}

/// One data file ready to commit.
#[derive(Debug, Clone)]
pub(crate) struct NewFile {
    pub(crate) key: String,
    /// Event day (days since 1970-01-01): the partition value.
    pub(crate) day: i64,
    pub(crate) rows: u64,
    pub(crate) bytes: u64,
}

/// One partition's part of a commit to one table: its files, and the offsets it moves from
/// (what the table held when the range was planned) to.
#[derive(Debug, Clone)]
pub(crate) struct RangeCommit {
    pub(crate) partition: i32,
    pub(crate) from: Option<i64>,
    pub(crate) to: i64,
    pub(crate) files: Vec<NewFile>,
}

/// Why a commit to a table did not happen.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LakeError {
    /// Another writer moved a partition's offsets in the table (a zombie instance, or two
    /// pipelines with one group): this range must not be committed; a restart resumes from
    /// the table.
    #[error(
        "partition {partition} of table `{table}` holds offset {found:?}, not {expected:?} as planned: another writer committed it; restart to resume from the table"
    )]
    Moved {
        table: String,
        partition: i32,
        expected: Option<i64>,
        found: Option<i64>,
    },
    /// The table's field ids are not the ones the files were written with.
    #[error("table `{table}`: {detail}; restart to write the range again with the table's ids")]
    Ids { table: String, detail: String },
    /// The catalog or storage failed (retried by the next commit).
    #[error("table `{table}`: {source}")]
    Catalog {
        table: String,
        #[source]
        source: Box<iceberg::Error>,
    },
}

impl LakeError {
    /// Retrying cannot help: the sink stops (a restart resumes from the table).
    pub(crate) fn fatal(&self) -> bool {
        !matches!(self, LakeError::Catalog { .. })
    }
}

/// The catalog and the two tables.
pub(crate) struct Lake {
    catalog: Arc<dyn Catalog>,
    idents: [TableIdent; 2],
    /// `s3://bucket/`-less key prefix of each table's data files.
    data_prefix: [String; 2],
    /// The bucket the tables live in.
    pub(crate) bucket: String,
    ids: Arc<Mutex<[TableIds; 2]>>,
    zstd_level: i32,
    /// `form-etl.offsets.{group}`.
    offsets_key: String,
    topic: String,
    /// Attempts per commit of a table (conflicts and unknown states), then the next commit
    /// tries again.
    attempts: u32,
}

impl std::fmt::Debug for Lake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lake")
            .field("tables", &self.idents)
            .field("bucket", &self.bucket)
            .finish_non_exhaustive()
    }
}

/// The S3 properties of the catalog's storage (our `s3:` section in Iceberg's words).
fn s3_props(s3: &S3Config) -> HashMap<String, String> {
    let mut p = HashMap::new();
    if let Some(e) = &s3.endpoint {
        p.insert(
            iceberg::io::S3_ENDPOINT.to_owned(),
            e.as_str().trim_end_matches('/').to_owned(),
        );
    }
    p.insert(
        iceberg::io::S3_PATH_STYLE_ACCESS.to_owned(),
        s3.path_style.to_string(),
    );
    p.insert(iceberg::io::S3_REGION.to_owned(), s3.region.clone());
    p.insert("client.region".to_owned(), s3.region.clone());
    if let (Some(id), Some(secret)) = (&s3.access_key_id, &s3.secret_access_key) {
        p.insert(
            iceberg::io::S3_ACCESS_KEY_ID.to_owned(),
            id.expose().to_owned(),
        );
        p.insert(
            iceberg::io::S3_SECRET_ACCESS_KEY.to_owned(),
            secret.expose().to_owned(),
        );
        if let Some(t) = &s3.session_token {
            p.insert("s3.session-token".to_owned(), t.expose().to_owned());
        }
        p.insert("s3.disable-ec2-metadata".to_owned(), "true".to_owned());
        p.insert("s3.disable-config-load".to_owned(), "true".to_owned());
    }
    p
}

fn storage() -> Arc<iceberg_storage_opendal::OpenDalStorageFactory> {
    Arc::new(iceberg_storage_opendal::OpenDalStorageFactory::S3 {
        customized_credential_load: None,
    })
}

/// Opens the catalog the config names.
pub(crate) async fn open_catalog(
    cfg: &IcebergConfig,
    s3: &S3Config,
    state_dir: &std::path::Path,
) -> anyhow::Result<Arc<dyn Catalog>> {
    let mut props = s3_props(s3);
    props.extend(cfg.properties.clone());
    match &cfg.catalog {
        CatalogConfig::Sql { uri, warehouse } => {
            let uri = match uri {
                Some(u) => u.clone(),
                None => {
                    std::fs::create_dir_all(state_dir).map_err(|e| {
                        anyhow::anyhow!("creating the state dir {}: {e}", state_dir.display())
                    })?;
                    format!(
                        "sqlite:{}?mode=rwc",
                        state_dir.join("iceberg-catalog.db").display()
                    )
                }
            };
            let warehouse = warehouse.clone().unwrap_or_else(|| {
                let prefix = s3.prefix.trim_matches('/');
                if prefix.is_empty() {
                    format!("s3://{}/iceberg", s3.bucket)
                } else {
                    format!("s3://{}/{prefix}/iceberg", s3.bucket)
                }
            });
            props.insert(
                iceberg_catalog_sql::SQL_CATALOG_PROP_URI.to_owned(),
                uri.clone(),
            );
            props.insert(
                iceberg_catalog_sql::SQL_CATALOG_PROP_WAREHOUSE.to_owned(),
                warehouse.clone(),
            );
            props.insert(
                iceberg_catalog_sql::SQL_CATALOG_PROP_BIND_STYLE.to_owned(),
                "QMark".to_owned(),
            );
            info!(catalog = %cfg.name, %uri, %warehouse, "Iceberg SQL catalog.");
            let c = iceberg_catalog_sql::SqlCatalogBuilder::default()
                .with_storage_factory(storage())
                .load(cfg.name.clone(), props)
                .await
                .map_err(|e| anyhow::anyhow!("opening the SQL catalog at {uri}: {e}"))?;
            Ok(Arc::new(c))
        }
        CatalogConfig::Rest {
            uri,
            warehouse,
            token,
            credential,
        } => {
            // Without the slash url::Url adds: `{uri}/v1/config`, not `{uri}//v1/config`.
            props.insert(
                iceberg_catalog_rest::REST_CATALOG_PROP_URI.to_owned(),
                uri.as_str().trim_end_matches('/').to_owned(),
            );
            if let Some(w) = warehouse {
                props.insert(
                    iceberg_catalog_rest::REST_CATALOG_PROP_WAREHOUSE.to_owned(),
                    w.clone(),
                );
            }
            if let Some(t) = token {
                props.insert("token".to_owned(), t.expose().to_owned());
            }
            if let Some(c) = credential {
                props.insert("credential".to_owned(), c.expose().to_owned());
            }
            info!(catalog = %cfg.name, uri = %crate::lake::redacted(uri), "Iceberg REST catalog.");
            let c = iceberg_catalog_rest::RestCatalogBuilder::default()
                .with_storage_factory(storage())
                .load(cfg.name.clone(), props)
                .await
                .map_err(|e| anyhow::anyhow!("opening the REST catalog at {uri}: {e}"))?;
            Ok(Arc::new(c))
        }
        CatalogConfig::Glue {} | CatalogConfig::S3Tables {} => anyhow::bail!(
            "output.catalog.type `{}` is not built into this sink: use the catalog's Iceberg REST endpoint with `type: rest` (docs/iceberg.md)",
            cfg.catalog.kind()
        ),
    }
}

/// A URL without its user info and query (they may hold secrets).
pub(crate) fn redacted(u: &url::Url) -> String {
    let mut u = u.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.set_query(None);
    u.to_string()
}

/// The Iceberg schema of a table schema version, ids from 1 in column order (the catalog
/// gives them again on create; they are read back from the table).
fn iceberg_schema(ts: &TableSchema) -> anyhow::Result<Schema> {
    let fields = ts
        .columns()
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let id = i as i32 + 1;
            let ty = Type::Primitive(primitive(c.ty));
            Arc::new(if c.nullable {
                NestedField::optional(id, c.name.clone(), ty)
            } else {
                NestedField::required(id, c.name.clone(), ty)
            })
        })
        .collect::<Vec<_>>();
    Ok(Schema::builder().with_fields(fields).build()?)
}

fn primitive(ty: ColumnType) -> PrimitiveType {
    match ty {
        ColumnType::String => PrimitiveType::String,
        ColumnType::Boolean => PrimitiveType::Boolean,
        ColumnType::Long => PrimitiveType::Long,
        ColumnType::Double => PrimitiveType::Double,
        ColumnType::TimestampMicros => PrimitiveType::Timestamptz,
    }
}

/// `s3://bucket/key/prefix` → (`bucket`, `key/prefix`).
pub(crate) fn split_s3(location: &str) -> anyhow::Result<(String, String)> {
    let rest = location
        .strip_prefix("s3://")
        .or_else(|| location.strip_prefix("s3a://"))
        .ok_or_else(|| anyhow::anyhow!("table location {location} is not on S3 (s3://bucket/…)"))?;
    let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
    Ok((bucket.to_owned(), key.trim_end_matches('/').to_owned()))
}

impl Lake {
    /// Opens (or creates) the two tables with the schemas of `current` (a table that exists
    /// keeps its own: new columns are added by the commits).
    pub(crate) async fn open(
        catalog: Arc<dyn Catalog>,
        cfg: &IcebergConfig,
        current: [Arc<TableSchema>; 2],
        zstd_level: i32,
        group: &str,
        topic: &str,
    ) -> anyhow::Result<Self> {
        let ns = NamespaceIdent::new(cfg.namespace.clone());
        match catalog.create_namespace(&ns, HashMap::new()).await {
            Ok(_) => info!(namespace = %cfg.namespace, "Iceberg namespace created."),
            Err(e) if e.kind() == ErrorKind::NamespaceAlreadyExists => {}
            Err(e) => {
                // A catalog may refuse creates but have it (read-only principals).
                if !catalog.namespace_exists(&ns).await.unwrap_or(false) {
                    anyhow::bail!("creating Iceberg namespace `{}`: {e}", cfg.namespace);
                }
            }
        }
        let names = [cfg.tables.form.clone(), cfg.tables.form_field.clone()];
        let mut tables = Vec::new();
        for (t, name) in Table::ALL.iter().zip(&names) {
            let ident = TableIdent::new(ns.clone(), name.clone());
            let table = ensure_table(catalog.as_ref(), &ns, &ident, &current[*t as usize])
                .await
                .map_err(|e| {
                    anyhow::anyhow!("opening Iceberg table `{}.{name}`: {e}", cfg.namespace)
                })?;
            tables.push((ident, table));
        }
        let mut bucket = None;
        let mut data_prefix = Vec::new();
        let mut ids = Vec::new();
        for (ident, table) in &tables {
            let meta = table.metadata();
            let (b, key) = split_s3(meta.location())?;
            if bucket.get_or_insert_with(|| b.clone()) != &b {
                anyhow::bail!(
                    "the two tables are in different buckets ({b} and {bucket:?}): not supported"
                );
            }
            data_prefix.push(format!("{key}/data"));
            ids.push(TableIds::of(meta.current_schema(), meta.last_column_id()));
            info!(table = %ident, location = meta.location(), snapshot = ?meta.current_snapshot().map(|s| s.snapshot_id()), "Iceberg table.");
        }
        let [a, b]: [(TableIdent, IcebergTable); 2] = tables.try_into().expect("two tables");
        Ok(Self {
            catalog,
            idents: [a.0, b.0],
            data_prefix: data_prefix.try_into().expect("two tables"),
            bucket: bucket.expect("two tables"),
            ids: Arc::new(Mutex::new(ids.try_into().expect("two tables"))),
            zstd_level,
            offsets_key: format!("{OFFSETS_KEY}{group}"),
            topic: topic.to_owned(),
            attempts: 8,
        })
    }

    /// The data files' format (Parquet with these tables' field ids).
    pub(crate) fn format(&self) -> Arc<dyn FileFormat> {
        Arc::new(IcebergParquet {
            parquet: ParquetFormat {
                zstd_level: self.zstd_level,
            },
            ids: self.ids.clone(),
        })
    }

    /// Key prefixes of the data files, by table.
    pub(crate) fn data_prefixes(&self) -> [String; 2] {
        self.data_prefix.clone()
    }

    pub(crate) fn ident(&self, t: Table) -> &TableIdent {
        &self.idents[t as usize]
    }

    /// The offsets the tables hold for the topic, by table.
    pub(crate) async fn stored_offsets(&self) -> Result<[Offsets; 2], LakeError> {
        let mut out = [Offsets::new(), Offsets::new()];
        for t in Table::ALL {
            let table = self.load(t).await?;
            out[t as usize] = self.offsets_in(&table);
        }
        Ok(out)
    }

    async fn load(&self, t: Table) -> Result<IcebergTable, LakeError> {
        self.catalog
            .load_table(self.ident(t))
            .await
            .map_err(|source| LakeError::Catalog {
                table: self.ident(t).to_string(),
                source: Box::new(source),
            })
    }

    /// The newest offsets of the group in `table`'s history (`main`'s ancestry).
    fn offsets_in(&self, table: &IcebergTable) -> Offsets {
        let meta = table.metadata_ref();
        let Some(head) = meta.current_snapshot() else {
            return Offsets::new();
        };
        ancestors_of(&meta, head.snapshot_id())
            .find_map(|s| s.summary().additional_properties.get(&self.offsets_key).cloned())
            .and_then(|json| match parse_offsets(&json, &self.topic) {
                Ok(o) => Some(o),
                Err(e) => {
                    warn!(table = %table.identifier(), error = %e, "Unreadable offsets in the table's snapshot summary: ignored.");
                    None
                }
            })
            .unwrap_or_default()
    }

    /// Commits `ranges` to table `t`, unless the table has them already (an earlier attempt
    /// whose answer was lost). Returns the offsets the table holds afterwards for these
    /// partitions. Our own compare-and-swap: the base the offsets were merged on is pinned, a
    /// conflict reloads and decides again, an unknown outcome (5xx, a lost answer) reloads and
    /// looks.
    pub(crate) async fn commit(
        &self,
        t: Table,
        ranges: &[RangeCommit],
        commit_id: &str,
    ) -> Result<Vec<(i32, i64)>, LakeError> {
        let name = self.ident(t).to_string();
        let mut delay = Duration::from_millis(100);
        let mut last_err = None;
        for attempt in 1..=self.attempts {
            let base = match self.load(t).await {
                Ok(b) => b,
                Err(e) => {
                    warn!(table = %name, attempt, error = %e, "Loading the table failed; retrying.");
                    last_err = Some(e);
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            let stored = self.offsets_in(&base);
            let mut merged = stored.clone();
            let mut files = Vec::new();
            let mut result = Vec::new();
            let mut todo = false;
            for r in ranges {
                let found = stored.get(&r.partition).copied();
                match found {
                    Some(f) if f >= r.to => result.push((r.partition, f)),
                    _ if found == r.from => {
                        merged.insert(r.partition, r.to);
                        result.push((r.partition, r.to));
                        for f in &r.files {
                            files.push(self.data_file(t, &base, f)?);
                        }
                        todo = true;
                    }
                    _ => {
                        return Err(LakeError::Moved {
                            table: name,
                            partition: r.partition,
                            expected: r.from,
                            found,
                        });
                    }
                }
            }
            if !todo {
                return Ok(result);
            }
            let n_files = files.len();
            let tx = self.transaction(t, &base, files, &merged, commit_id)?;
            let pinned = PinnedBase {
                inner: self.catalog.clone(),
                base: base.clone(),
            };
            match tx.commit(&pinned).await {
                Ok(table) => {
                    self.check_ids(t, &table)?;
                    debug!(
                        table = %name,
                        snapshot = ?table.metadata().current_snapshot_id(),
                        files = n_files,
                        attempt,
                        commit_id,
                        "Snapshot committed."
                    );
                    return Ok(result);
                }
                Err(e) if e.kind() == ErrorKind::CatalogCommitConflicts => {
                    info!(table = %name, attempt, "Another commit landed first: reloading and deciding again.");
                }
                Err(e) => {
                    warn!(table = %name, attempt, error = %e, "The commit's outcome is unknown: reloading to look for it.");
                    last_err = Some(LakeError::Catalog {
                        table: name.clone(),
                        source: Box::new(e),
                    });
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
        Err(last_err.unwrap_or_else(|| LakeError::Catalog {
            table: name,
            source: Box::new(iceberg::Error::new(
                ErrorKind::CatalogCommitConflicts,
                format!("{} attempts all conflicted", self.attempts),
            )),
        }))
    }

    /// The append of `files` with the merged offsets, after adding the columns the files have
    /// and the table lacks (one atomic commit).
    fn transaction(
        &self,
        t: Table,
        base: &IcebergTable,
        files: Vec<DataFile>,
        merged: &Offsets,
        commit_id: &str,
    ) -> Result<Transaction, LakeError> {
        let err = |source: iceberg::Error| LakeError::Catalog {
            table: self.ident(t).to_string(),
            source: Box::new(source),
        };
        let mut tx = Transaction::new(base);
        let new = self.columns_to_add(t, base)?;
        if !new.is_empty() {
            let mut action = tx.update_schema();
            for (name, id, ty) in &new {
                info!(table = %self.ident(t), column = %name, field_id = id, "Adding a column.");
                action = action.add_column(AddColumn::optional(
                    name.clone(),
                    Type::Primitive(primitive(*ty)),
                ));
            }
            tx = action.apply(tx).map_err(err)?;
        }
        let mut props = HashMap::new();
        props.insert(self.offsets_key.clone(), offsets_json(&self.topic, merged));
        props.insert(COMMIT_ID_KEY.to_owned(), commit_id.to_owned());
        tx.fast_append()
            .with_check_duplicate(false)
            .add_data_files(files)
            .set_snapshot_properties(props)
            .apply(tx)
            .map_err(err)
    }

    /// The columns handed out ids that `base` lacks, in id order, checked first: every id
    /// handed out must be the table's for a column it has, and the next free ones (as the add
    /// will give them) for those it lacks. Else another writer changed the schema since.
    fn columns_to_add(
        &self,
        t: Table,
        base: &IcebergTable,
    ) -> Result<Vec<(String, i32, ColumnType)>, LakeError> {
        let meta = base.metadata();
        let schema = meta.current_schema();
        let ids = self.ids.lock().expect("field ids lock");
        let mine = &ids[t as usize];
        let wrong = |detail: String| LakeError::Ids {
            table: self.ident(t).to_string(),
            detail,
        };
        for (name, id) in &mine.by_name {
            if let Some(theirs) = schema.field_id_by_name(name)
                && theirs != *id
            {
                return Err(wrong(format!(
                    "column `{name}` has field id {theirs} in the table, {id} in the files"
                )));
            }
        }
        let mut new: Vec<(String, i32, ColumnType)> = mine
            .new
            .iter()
            .filter(|(name, _, _)| schema.field_by_name(name).is_none())
            .cloned()
            .collect();
        new.sort_by_key(|c| c.1);
        for (k, (name, id, _)) in new.iter().enumerate() {
            let next = meta.last_column_id() + 1 + k as i32;
            if *id != next {
                return Err(wrong(format!(
                    "new column `{name}` was written with field id {id}, but the table would give it {next}"
                )));
            }
        }
        Ok(new)
    }

    fn data_file(&self, t: Table, base: &IcebergTable, f: &NewFile) -> Result<DataFile, LakeError> {
        let meta = base.metadata();
        let day = i32::try_from(f.day).map_err(|_| LakeError::Ids {
            table: self.ident(t).to_string(),
            detail: format!("event day {} is out of range", f.day),
        })?;
        let mut b = DataFileBuilder::default();
        b.content(DataContentType::Data)
            .file_path(format!("s3://{}/{}", self.bucket, f.key))
            .file_format(DataFileFormat::Parquet)
            .partition(Struct::from_iter([Some(Literal::date(day))]))
            .partition_spec_id(meta.default_partition_spec().spec_id())
            .record_count(f.rows)
            .file_size_in_bytes(f.bytes);
        b.build().map_err(|e| LakeError::Catalog {
            table: self.ident(t).to_string(),
            source: Box::new(iceberg::Error::new(ErrorKind::DataInvalid, e.to_string())),
        })
    }

    /// After a commit: the table's ids are the ones handed out (else the files are wrong).
    fn check_ids(&self, t: Table, table: &IcebergTable) -> Result<(), LakeError> {
        let schema = table.metadata().current_schema();
        let mut ids = self.ids.lock().expect("field ids lock");
        let mine = &mut ids[t as usize];
        for (name, id) in &mine.by_name {
            match schema.field_id_by_name(name) {
                Some(theirs) if theirs == *id => {}
                Some(theirs) => {
                    return Err(LakeError::Ids {
                        table: self.ident(t).to_string(),
                        detail: format!(
                            "column `{name}` has field id {theirs} in the table, {id} in the files"
                        ),
                    });
                }
                // Handed out to a file not in this commit yet.
                None => {}
            }
        }
        mine.new
            .retain(|(name, _, _)| schema.field_by_name(name).is_none());
        // Columns another writer added: known from now on.
        for f in schema.as_struct().fields() {
            mine.by_name.entry(f.name.clone()).or_insert(f.id);
        }
        mine.last = mine.last.max(table.metadata().last_column_id());
        Ok(())
    }
}

/// Creates the table if missing (with the partition spec and properties), else loads it.
async fn ensure_table(
    catalog: &dyn Catalog,
    ns: &NamespaceIdent,
    ident: &TableIdent,
    ts: &TableSchema,
) -> anyhow::Result<IcebergTable> {
    if catalog.table_exists(ident).await? {
        return Ok(catalog.load_table(ident).await?);
    }
    let schema = iceberg_schema(ts)?;
    // `day(event_happened_at)` (`form_event_happened_at` in `form_field`): the event date the
    // files are cut by.
    let column = ts.table().date_column();
    let source = schema
        .field_id_by_name(column)
        .ok_or_else(|| anyhow::anyhow!("the schema has no `{column}` column"))?;
    // With its id: Java's REST server refuses a create without `spec-id`.
    let spec = UnboundPartitionSpec::builder()
        .with_spec_id(0)
        .add_partition_field(source, format!("{column}_day"), Transform::Day)?
        .build();
    let creation = TableCreation::builder()
        .name(ident.name().to_owned())
        .schema(schema)
        .partition_spec(spec)
        .properties([
            // Our own retry loop (Lake::commit): the crate's would re-apply the append on a
            // newer base with the offsets merged on the old one.
            ("commit.retry.num-retries".to_owned(), "0".to_owned()),
            ("write.format.default".to_owned(), "parquet".to_owned()),
            (
                "write.parquet.compression-codec".to_owned(),
                "zstd".to_owned(),
            ),
        ])
        .build();
    match catalog.create_table(ns, creation).await {
        Ok(t) => {
            info!(table = %ident, "Iceberg table created.");
            Ok(t)
        }
        Err(e) if e.kind() == ErrorKind::TableAlreadyExists => {
            Ok(catalog.load_table(ident).await?)
        }
        Err(e) => Err(e.into()),
    }
}

/// `{"topic": {"0": 12, …}}`.
pub(crate) fn offsets_json(topic: &str, offsets: &Offsets) -> String {
    let inner: serde_json::Map<String, serde_json::Value> = offsets
        .iter()
        .map(|(p, o)| (p.to_string(), serde_json::Value::from(*o)))
        .collect();
    serde_json::json!({ topic: inner }).to_string()
}

/// The offsets of `topic` in a summary's JSON.
pub(crate) fn parse_offsets(json: &str, topic: &str) -> Result<Offsets, String> {
    let v: serde_json::Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
    let Some(t) = v.get(topic) else {
        return Ok(Offsets::new());
    };
    let obj = t
        .as_object()
        .ok_or_else(|| format!("`{topic}` is not an object"))?;
    obj.iter()
        .map(|(p, o)| {
            let p: i32 = p
                .parse()
                .map_err(|_| format!("partition `{p}` is not a number"))?;
            let o = o
                .as_i64()
                .ok_or_else(|| format!("offset of partition {p} is not an integer"))?;
            Ok((p, o))
        })
        .collect()
}

/// A catalog whose `load_table` answers the base the commit was decided on, so
/// `Transaction::commit` never rebases onto a newer snapshot (it would keep our offsets merged
/// on the old one): the append's requirement on `main`'s snapshot then fails at the catalog if
/// anyone committed meanwhile, and the conflict comes back to [`Lake::commit`].
#[derive(Debug)]
struct PinnedBase {
    inner: Arc<dyn Catalog>,
    base: IcebergTable,
}

#[async_trait]
impl Catalog for PinnedBase {
    async fn list_namespaces(
        &self,
        parent: Option<&NamespaceIdent>,
    ) -> iceberg::Result<Vec<NamespaceIdent>> {
        self.inner.list_namespaces(parent).await
    }
    async fn create_namespace(
        &self,
        namespace: &NamespaceIdent,
        properties: HashMap<String, String>,
    ) -> iceberg::Result<Namespace> {
        self.inner.create_namespace(namespace, properties).await
    }
    async fn get_namespace(&self, namespace: &NamespaceIdent) -> iceberg::Result<Namespace> {
        self.inner.get_namespace(namespace).await
    }
    async fn namespace_exists(&self, namespace: &NamespaceIdent) -> iceberg::Result<bool> {
        self.inner.namespace_exists(namespace).await
    }
    async fn update_namespace(
        &self,
        namespace: &NamespaceIdent,
        properties: HashMap<String, String>,
    ) -> iceberg::Result<()> {
        self.inner.update_namespace(namespace, properties).await
    }
    async fn drop_namespace(&self, namespace: &NamespaceIdent) -> iceberg::Result<()> {
        self.inner.drop_namespace(namespace).await
    }
    async fn list_tables(&self, namespace: &NamespaceIdent) -> iceberg::Result<Vec<TableIdent>> {
        self.inner.list_tables(namespace).await
    }
    async fn create_table(
        &self,
        namespace: &NamespaceIdent,
        creation: TableCreation,
    ) -> iceberg::Result<IcebergTable> {
        self.inner.create_table(namespace, creation).await
    }
    async fn load_table(&self, table: &TableIdent) -> iceberg::Result<IcebergTable> {
        if table == self.base.identifier() {
            Ok(self.base.clone())
        } else {
            self.inner.load_table(table).await
        }
    }
    async fn drop_table(&self, table: &TableIdent) -> iceberg::Result<()> {
        self.inner.drop_table(table).await
    }
    async fn purge_table(&self, table: &TableIdent) -> iceberg::Result<()> {
        self.inner.purge_table(table).await
    }
    async fn table_exists(&self, table: &TableIdent) -> iceberg::Result<bool> {
        self.inner.table_exists(table).await
    }
    async fn rename_table(&self, src: &TableIdent, dest: &TableIdent) -> iceberg::Result<()> {
        self.inner.rename_table(src, dest).await
    }
    async fn register_table(
        &self,
        table: &TableIdent,
        metadata_location: String,
    ) -> iceberg::Result<IcebergTable> {
        self.inner.register_table(table, metadata_location).await
    }
    async fn update_table(&self, commit: TableCommit) -> iceberg::Result<IcebergTable> {
        // Never retried against the pinned base: a conflict comes back to Lake::commit.
        self.inner
            .update_table(commit)
            .await
            .map_err(|e| e.with_retryable(false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_round_trip_and_other_topics_are_ignored() {
        let o: Offsets = [(0, 12), (2, 7)].into_iter().collect();
        let json = offsets_json("form.enriched", &o);
        assert_eq!(json, r#"{"form.enriched":{"0":12,"2":7}}"#);
        assert_eq!(parse_offsets(&json, "form.enriched").unwrap(), o);
        assert!(parse_offsets(&json, "other").unwrap().is_empty());
        assert!(parse_offsets(r#"{"form.enriched":{"x":1}}"#, "form.enriched").is_err());
        assert!(parse_offsets(r#"{"form.enriched":{"1":"a"}}"#, "form.enriched").is_err());
    }

    #[test]
    fn s3_locations_split_into_bucket_and_key() {
        assert_eq!(
            split_s3("s3://iceberg/warehouse/form_etl/form").unwrap(),
            ("iceberg".to_owned(), "warehouse/form_etl/form".to_owned())
        );
        assert!(split_s3("file:///tmp/x").is_err());
    }
}

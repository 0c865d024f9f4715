//! `s3-sink iceberg maintain`: table upkeep for `output.type: iceberg`, run by hand or by cron
//! beside the sink (it commits through the catalog like the sink, so the two can run at once).
//!
//! 1. **Expire snapshots** older than `--expire-older-than`, keeping at least `--retain-last`.
//!    Safe for exactly once: every snapshot the sink makes carries the whole offsets map, so the
//!    newest one (always kept) is all the sink needs. Metadata only: no file is deleted by it.
//! 2. **Remove orphan files**: objects under a table's location that no kept snapshot, manifest
//!    list, manifest or metadata file references, and older than `--orphans-older-than` (a
//!    crash's uploaded-but-never-committed data files, the manifest lists of expired snapshots,
//!    an interrupted commit's manifests). The age guards a commit in flight: keep it well above
//!    the commit interval plus the longest upload.
//! 3. **Compaction** (rewriting small data files into larger ones) is not possible with
//!    iceberg-rust 0.10.1: it has no rewrite/overwrite action, and its commit types cannot be
//!    built outside the crate. This says so; Spark's `rewrite_data_files` procedure does it
//!    against the same catalog.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use iceberg::table::Table as IcebergTable;
use iceberg::transaction::{ApplyTransactionAction, Transaction};
use iceberg::{NamespaceIdent, TableIdent};

use crate::config::{OutputConfig, SinkConfig};

/// `s3-sink iceberg …`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum IcebergCommand {
    /// Expire old snapshots, then delete orphan files (and say what compaction needs).
    Maintain(MaintainArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct MaintainArgs {
    /// Expire snapshots older than this (humantime: `5d`, `12h`).
    #[arg(long, default_value = "5d", value_parser = humantime::parse_duration)]
    expire_older_than: Duration,
    /// Keep at least this many snapshots, however old.
    #[arg(long, default_value_t = 10)]
    retain_last: usize,
    /// Delete unreferenced objects older than this.
    #[arg(long, default_value = "1d", value_parser = humantime::parse_duration)]
    orphans_older_than: Duration,
    /// Say what would be expired and deleted; change nothing.
    #[arg(long)]
    dry_run: bool,
}

pub(crate) async fn run(
    cfg: &SinkConfig,
    cmd: &IcebergCommand,
    state_dir: &Path,
) -> anyhow::Result<()> {
    let IcebergCommand::Maintain(args) = cmd;
    let OutputConfig::Iceberg(ic) = &cfg.output else {
        anyhow::bail!("`output.type` is not `iceberg` in this config: nothing to maintain");
    };
    let catalog = crate::lake::open_catalog(ic, &cfg.s3, state_dir).await?;
    let s3 = cfg.s3.s3_client().await;
    let ns = NamespaceIdent::new(ic.namespace.clone());
    let now_ms = chrono::Utc::now().timestamp_millis();
    for name in [&ic.tables.form, &ic.tables.form_field] {
        let ident = TableIdent::new(ns.clone(), name.clone());
        let mut table = catalog
            .load_table(&ident)
            .await
            .with_context(|| format!("loading table {ident}"))?;
        let before = table.metadata().snapshots().len();
        let cutoff = now_ms - args.expire_older_than.as_millis() as i64;
        if args.dry_run {
            let old = table
                .metadata()
                .snapshots()
                .filter(|s| s.timestamp_ms() < cutoff)
                .count();
            println!(
                "{ident}: {before} snapshots, {old} older than {:?} (at most {} would go: the newest {} stay)",
                args.expire_older_than,
                old.min(before.saturating_sub(args.retain_last)),
                args.retain_last
            );
        } else {
            let tx = Transaction::new(&table);
            let tx = tx
                .expire_snapshots()
                .expire_older_than_ms(cutoff)
                .retain_last(args.retain_last.max(1))
                .apply(tx)?;
            table = tx
                .commit(catalog.as_ref())
                .await
                .with_context(|| format!("expiring snapshots of {ident}"))?;
            let after = table.metadata().snapshots().len();
            println!("{ident}: expired {} of {before} snapshots", before - after);
        }
        let referenced = referenced(&table).await?;
        let (bucket, prefix) = crate::lake::split_s3(table.metadata().location())?;
        let orphan_cutoff = std::time::SystemTime::now() - args.orphans_older_than;
        let mut token = None;
        let (mut orphans, mut bytes, mut kept) = (0u64, 0u64, 0u64);
        loop {
            let page = s3
                .list_objects_v2()
                .bucket(&bucket)
                .prefix(format!("{prefix}/"))
                .set_continuation_token(token.take())
                .send()
                .await
                .with_context(|| format!("listing s3://{bucket}/{prefix}/"))?;
            for o in page.contents() {
                let Some(key) = o.key() else { continue };
                let path = format!("s3://{bucket}/{key}");
                if referenced.contains(&path) {
                    kept += 1;
                    continue;
                }
                let old = o
                    .last_modified()
                    .and_then(|t| std::time::SystemTime::try_from(*t).ok())
                    .is_some_and(|t| t < orphan_cutoff);
                if !old {
                    continue;
                }
                orphans += 1;
                bytes += o.size().unwrap_or(0).max(0) as u64;
                if args.dry_run {
                    println!("  orphan: {path}");
                } else {
                    s3.delete_object()
                        .bucket(&bucket)
                        .key(key)
                        .send()
                        .await
                        .with_context(|| format!("deleting {path}"))?;
                }
            }
            match page.next_continuation_token() {
                Some(t) => token = Some(t.to_owned()),
                None => break,
            }
        }
        println!(
            "{ident}: {kept} referenced objects; {orphans} orphans older than {:?} ({bytes} bytes){}",
            args.orphans_older_than,
            if args.dry_run {
                ", not deleted (--dry-run)"
            } else {
                " deleted"
            }
        );
    }
    println!(
        "compaction: not available here (iceberg-rust 0.10.1 has no rewrite action); run Spark's \
         `CALL <catalog>.system.rewrite_data_files('{}.<table>')` against the same catalog",
        ic.namespace
    );
    Ok(())
}

/// Every file a kept snapshot reaches, and the metadata files.
async fn referenced(table: &IcebergTable) -> anyhow::Result<HashSet<String>> {
    let meta = table.metadata();
    let mut out = HashSet::new();
    if let Some(loc) = table.metadata_location() {
        out.insert(loc.to_owned());
    }
    for m in meta.metadata_log() {
        out.insert(m.metadata_file.clone());
    }
    for snap in meta.snapshots() {
        out.insert(snap.manifest_list().to_owned());
        let list = table
            .manifest_list_reader(snap)
            .load()
            .await
            .with_context(|| format!("reading manifest list {}", snap.manifest_list()))?;
        for mf in list.entries() {
            out.insert(mf.manifest_path.clone());
            let manifest = mf
                .load_manifest(table.file_io())
                .await
                .with_context(|| format!("reading manifest {}", mf.manifest_path))?;
            for e in manifest.entries() {
                out.insert(e.file_path().to_owned());
            }
        }
    }
    Ok(out)
}

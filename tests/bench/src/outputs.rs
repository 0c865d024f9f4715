//! The sink's output variants measured side by side over the same input (`--sink-outputs`):
//! Avro files, Parquet files and Iceberg tables (Parquet data files). Per variant: the config
//! override that selects it, where its objects land, and what it stored there (read from the
//! local S3 server's directory: s3s-fs keeps bucket `b`, key `k` as the file `{root}/b/k`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::json;

/// One output of s3-sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub(crate) enum SinkOutput {
    /// `output: {type: files, format: avro}` (the default output).
    Avro,
    /// `output: {type: files, format: parquet}`.
    Parquet,
    /// `output: {type: iceberg, …}`: Parquet data files committed to Iceberg tables.
    Iceberg,
}

impl SinkOutput {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Avro => "avro",
            Self::Parquet => "parquet",
            Self::Iceberg => "iceberg",
        }
    }

    /// The bench stage name (connector name, group, S3 prefix): Avro keeps the sink stage's
    /// name of earlier runs.
    pub(crate) fn stage(self) -> &'static str {
        match self {
            Self::Avro => "sink",
            Self::Parquet => "sink-pq",
            Self::Iceberg => "sink-ice",
        }
    }

    /// Config and log file names: `r0-s3-sink{suffix}.yaml`.
    pub(crate) fn file_suffix(self) -> &'static str {
        match self {
            Self::Avro => "",
            Self::Parquet => "-parquet",
            Self::Iceberg => "-iceberg",
        }
    }
}

/// The Iceberg catalog of the iceberg output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub(crate) enum IcebergCatalog {
    /// Apache Iceberg's SQL catalog on a fresh SQLite file under the bench's out dir.
    Sql,
    /// The REST catalog of `make cluster-up` (`--iceberg-rest-uri`).
    Rest,
}

/// Where one variant writes, and the `output=` override that selects it.
#[derive(Debug, Clone)]
pub(crate) struct Placement {
    /// `output=<JSON>` (JSON is YAML: `connectors::write_config` parses it as a YAML value).
    pub(crate) set_output: String,
    /// Bucket and key prefix of the objects this run writes (files: `s3.prefix`; iceberg: the
    /// namespace's directory under the warehouse).
    pub(crate) bucket: String,
    pub(crate) prefix: String,
    /// How the output was configured (for the report).
    pub(crate) detail: String,
}

/// What the iceberg variant needs beyond the output name.
#[derive(Debug, Clone)]
pub(crate) struct IcebergSettings {
    pub(crate) catalog: IcebergCatalog,
    /// `output.commit-interval` (humantime, e.g. `2s`).
    pub(crate) commit_interval: String,
    /// The SQL catalog's SQLite file (absolute), and its warehouse bucket.
    pub(crate) sqlite_file: PathBuf,
    pub(crate) bucket: String,
    /// REST catalog URI and its warehouse (`s3://iceberg/warehouse` for `make cluster-up`).
    pub(crate) rest_uri: String,
    pub(crate) rest_warehouse: String,
}

/// 8 hex characters, different on every call (names of fresh namespaces and warehouses).
pub(crate) fn fresh_hex() -> String {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    format!("{:08x}", h.finish() as u32)
}

/// Splits `s3://bucket/key/prefix` into (bucket, prefix).
fn split_s3_url(url: &str) -> Option<(String, String)> {
    let rest = url.strip_prefix("s3://")?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    Some((bucket.to_owned(), prefix.trim_matches('/').to_owned()))
}

/// The override and location of `output` for a run whose files go under `bucket/prefix`.
/// Iceberg: a fresh namespace (and with the SQL catalog a fresh warehouse `s3://{bucket}/w…`;
/// short: s3s-fs fails on bucket + key over ~130 bytes).
pub(crate) fn placement(
    output: SinkOutput,
    bucket: &str,
    prefix: &str,
    ice: &IcebergSettings,
) -> anyhow::Result<Placement> {
    let files = |format: &str| Placement {
        set_output: format!("output={}", json!({"type": "files", "format": format})),
        bucket: bucket.to_owned(),
        prefix: prefix.to_owned(),
        detail: format!("files, {format}"),
    };
    Ok(match output {
        SinkOutput::Avro => files("avro"),
        SinkOutput::Parquet => files("parquet"),
        SinkOutput::Iceberg => {
            let hex = fresh_hex();
            let namespace = format!("ns{hex}");
            let (catalog, warehouse) = match ice.catalog {
                IcebergCatalog::Sql => {
                    let warehouse = format!("s3://{}/w{hex}", ice.bucket);
                    (
                        json!({
                            "type": "sql",
                            "uri": format!("sqlite:{}?mode=rwc", ice.sqlite_file.display()),
                            "warehouse": warehouse,
                        }),
                        warehouse,
                    )
                }
                IcebergCatalog::Rest => (
                    json!({"type": "rest", "uri": ice.rest_uri}),
                    ice.rest_warehouse.clone(),
                ),
            };
            let (wb, wp) = split_s3_url(&warehouse).ok_or_else(|| {
                anyhow::anyhow!("the Iceberg warehouse {warehouse} is not an s3:// URL")
            })?;
            let ns_prefix = if wp.is_empty() {
                namespace.clone()
            } else {
                format!("{wp}/{namespace}")
            };
            Placement {
                set_output: format!(
                    "output={}",
                    json!({
                        "type": "iceberg",
                        "namespace": namespace,
                        "commit-interval": ice.commit_interval,
                        "catalog": catalog,
                    })
                ),
                bucket: wb,
                prefix: ns_prefix,
                detail: format!(
                    "iceberg, {} catalog, commit-interval {}",
                    match ice.catalog {
                        IcebergCatalog::Sql => "sql",
                        IcebergCatalog::Rest => "rest",
                    },
                    ice.commit_interval
                ),
            }
        }
    })
}

/// The objects of one run on S3.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub(crate) struct Stored {
    /// `s3://bucket/prefix` listed.
    pub(crate) location: String,
    /// Data files (`.avro` / `.parquet` of the tables; for Iceberg the `.parquet` files).
    pub(crate) data_objects: u64,
    pub(crate) data_bytes: u64,
    /// Everything else under the location (Iceberg: table metadata, manifests, manifest lists;
    /// files: `_schemas/`).
    pub(crate) other_objects: u64,
    pub(crate) other_bytes: u64,
    /// Iceberg: snapshots per table (`metadata/snap-*.avro`, one manifest list per snapshot).
    pub(crate) snapshots_per_table: BTreeMap<String, u64>,
}

impl Stored {
    /// Commits of the sink: each appends one snapshot to every table it has rows for, so the
    /// table with the most snapshots.
    pub(crate) fn commits(&self) -> Option<u64> {
        self.snapshots_per_table.values().copied().max()
    }
}

fn walk(dir: &Path, out: &mut Vec<(PathBuf, u64)>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let t = e.file_type()?;
        if t.is_dir() {
            walk(&e.path(), out)?;
        } else if t.is_file() {
            out.push((e.path(), e.metadata()?.len()));
        }
    }
    Ok(())
}

/// Lists `{s3_root}/{bucket}/{prefix}` (the local S3 server's files) and sorts the objects.
pub(crate) fn stored(
    s3_root: &Path,
    bucket: &str,
    prefix: &str,
    output: SinkOutput,
) -> anyhow::Result<Stored> {
    let dir = s3_root.join(bucket).join(prefix);
    anyhow::ensure!(
        dir.is_dir(),
        "{} does not exist (nothing written, or --s3-root is not the S3 server's directory)",
        dir.display()
    );
    let mut files = Vec::new();
    walk(&dir, &mut files)?;
    let mut s = Stored {
        location: format!("s3://{bucket}/{prefix}"),
        ..Default::default()
    };
    for (path, len) in files {
        let rel = path.strip_prefix(&dir).unwrap_or(&path);
        let parts: Vec<&str> = rel.iter().filter_map(|p| p.to_str()).collect();
        let name = parts.last().copied().unwrap_or_default();
        let data = match output {
            SinkOutput::Avro => name.ends_with(".avro") && !parts.contains(&"_schemas"),
            SinkOutput::Parquet => name.ends_with(".parquet") && !parts.contains(&"_schemas"),
            SinkOutput::Iceberg => name.ends_with(".parquet"),
        };
        if data {
            s.data_objects += 1;
            s.data_bytes += len;
            continue;
        }
        s.other_objects += 1;
        s.other_bytes += len;
        // `{table}/metadata/snap-….avro`
        if output == SinkOutput::Iceberg
            && name.starts_with("snap-")
            && name.ends_with(".avro")
            && parts.len() >= 3
            && parts[parts.len() - 2] == "metadata"
        {
            *s.snapshots_per_table
                .entry(parts[..parts.len() - 2].join("/"))
                .or_default() += 1;
        }
    }
    Ok(s)
}

/// Sum of the samples of metric `name` (any labels) in a Prometheus text exposition.
pub(crate) fn metric_sum(text: &str, name: &str) -> Option<f64> {
    let mut sum = None;
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = l.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            continue;
        }
        let value = match rest.rfind('}') {
            Some(i) if rest.starts_with('{') => &rest[i + 1..],
            _ => rest,
        };
        if let Some(v) = value
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        {
            *sum.get_or_insert(0.0) += v;
        }
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ice(catalog: IcebergCatalog) -> IcebergSettings {
        IcebergSettings {
            catalog,
            commit_interval: "2s".into(),
            sqlite_file: "/tmp/b/c.db".into(),
            bucket: "output".into(),
            rest_uri: "http://127.0.0.1:8181".into(),
            rest_warehouse: "s3://iceberg/warehouse".into(),
        }
    }

    #[test]
    fn placements() {
        let p = placement(
            SinkOutput::Parquet,
            "output",
            "bench/x/spq",
            &ice(IcebergCatalog::Sql),
        )
        .unwrap();
        assert_eq!(
            p.set_output,
            r#"output={"type":"files","format":"parquet"}"#
        );
        assert_eq!(
            (p.bucket.as_str(), p.prefix.as_str()),
            ("output", "bench/x/spq")
        );
        let p = placement(
            SinkOutput::Iceberg,
            "output",
            "bench/x",
            &ice(IcebergCatalog::Sql),
        )
        .unwrap();
        let v: serde_yaml::Value =
            serde_yaml::from_str(p.set_output.strip_prefix("output=").unwrap()).unwrap();
        assert_eq!(v["type"], "iceberg");
        assert_eq!(v["commit-interval"], "2s");
        assert_eq!(v["catalog"]["uri"], "sqlite:/tmp/b/c.db?mode=rwc");
        let ns = v["namespace"].as_str().unwrap();
        assert!(ns.starts_with("ns") && ns.len() == 10, "{ns}");
        let w = v["catalog"]["warehouse"].as_str().unwrap();
        assert_eq!(p.bucket, "output");
        assert_eq!(
            p.prefix,
            format!("{}/{ns}", w.strip_prefix("s3://output/").unwrap())
        );
        let p = placement(
            SinkOutput::Iceberg,
            "output",
            "bench/x",
            &ice(IcebergCatalog::Rest),
        )
        .unwrap();
        assert_eq!(p.bucket, "iceberg");
        assert!(p.prefix.starts_with("warehouse/ns"), "{}", p.prefix);
    }

    #[test]
    fn sorts_stored_objects() {
        let root = std::env::temp_dir().join(format!("form-etl-bench-s3-{}", std::process::id()));
        let put = |key: &str, len: usize| {
            let p = root.join("output").join(key);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, vec![0u8; len]).unwrap();
        };
        put("w1/ns1/form/data/day=2024-05-01/0-0-a.parquet", 100);
        put("w1/ns1/form_field/data/day=2024-05-01/0-0-a.parquet", 300);
        put("w1/ns1/form/metadata/snap-1-0-a.avro", 10);
        put("w1/ns1/form/metadata/snap-2-0-b.avro", 10);
        put("w1/ns1/form_field/metadata/snap-1-0-a.avro", 10);
        put("w1/ns1/form/metadata/00001-x.metadata.json", 5);
        let s = stored(&root, "output", "w1/ns1", SinkOutput::Iceberg).unwrap();
        assert_eq!((s.data_objects, s.data_bytes), (2, 400));
        assert_eq!((s.other_objects, s.other_bytes), (4, 35));
        assert_eq!(s.commits(), Some(2));
        assert_eq!(s.snapshots_per_table["form_field"], 1);
        put(
            "p/form/event_date=2024-05-01/t+0+00000000000000000000.avro",
            50,
        );
        put("p/_schemas/form/v1.avsc", 7);
        let s = stored(&root, "output", "p", SinkOutput::Avro).unwrap();
        assert_eq!((s.data_objects, s.data_bytes), (1, 50));
        assert_eq!((s.other_objects, s.other_bytes), (1, 7));
        assert_eq!(s.commits(), None);
        assert!(stored(&root, "output", "missing", SinkOutput::Avro).is_err());
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn sums_metrics() {
        let t = "# TYPE s3_sink_rows_total counter\ns3_sink_rows_total{table=\"form\"} 10\n\
                 s3_sink_rows_total{table=\"form_field\"} 32\ns3_sink_rows_totalx 5\n\
                 s3_sink_iceberg_commits_total 4\n";
        assert_eq!(metric_sum(t, "s3_sink_rows_total"), Some(42.0));
        assert_eq!(metric_sum(t, "s3_sink_iceberg_commits_total"), Some(4.0));
        assert_eq!(metric_sum(t, "nope"), None);
    }
}

//! Helpers for the `output: iceberg` tests: the sink's `output:` section for either catalog, and
//! a reader that is not ours (pyiceberg and DuckDB's `iceberg_scan`, from `.cache/venv`).

use std::path::PathBuf;

use anyhow::Result;
use serde_json::{Value, json};

use crate::sink_support::{python_rows, s3_endpoint};

/// Which catalog a test's sink commits to.
#[derive(Debug, Clone)]
pub enum Catalog {
    /// The SQL catalog on a SQLite file (the sink's embedded default), tables under `warehouse`.
    Sql { file: PathBuf, warehouse: String },
    /// The local REST catalog (`make cluster-up`), warehouse `s3://iceberg/warehouse`.
    Rest { uri: String },
}

/// A namespace of its own for a test: short (see [`Catalog::sql`]).
pub fn namespace() -> String {
    format!("ns{:08x}", rand::random::<u32>())
}

/// The catalog's name in the SQL catalog (the sink's default `output.name`).
pub const CATALOG_NAME: &str = "form_etl";

impl Catalog {
    /// A SQL catalog in `dir`, tables under `s3://{bucket}/w{random}`: short, as the local
    /// S3 server stores keys of at most ~130 bytes with the bucket (`s3s-fs` names a temporary
    /// file after them), and Iceberg's manifest lists are named long.
    pub fn sql(dir: &std::path::Path, bucket: &str) -> Self {
        Catalog::Sql {
            file: dir.join("catalog.db"),
            warehouse: format!("s3://{bucket}/w{:08x}", rand::random::<u32>()),
        }
    }

    /// The cluster's REST catalog.
    pub fn rest() -> Self {
        Catalog::Rest {
            uri: crate::iceberg_rest(),
        }
    }

    /// The sink's `output:` section for this catalog and `namespace` (`extra`: more keys of
    /// `output`, e.g. `commit-interval: 1s`).
    pub fn output(&self, namespace: &str, extra: &str) -> String {
        let catalog = match self {
            Catalog::Sql { file, warehouse } => format!(
                "{{type: sql, uri: 'sqlite:{}?mode=rwc', warehouse: '{warehouse}'}}",
                file.display()
            ),
            Catalog::Rest { uri } => format!("{{type: rest, uri: '{uri}'}}"),
        };
        format!("output:\n  type: iceberg\n  namespace: {namespace}\n  catalog: {catalog}\n{extra}")
    }

    fn args(&self) -> Value {
        match self {
            Catalog::Sql { file, warehouse } => json!({
                "catalog": "sql", "name": CATALOG_NAME, "sqlite_file": file, "warehouse": warehouse,
            }),
            Catalog::Rest { uri } => json!({"catalog": "rest", "rest_uri": uri}),
        }
    }
}

const READER: &str = r#"
import json, pathlib, sys
args = json.loads(sys.argv[1])
S3 = {"s3.endpoint": args["s3_endpoint"], "s3.path-style-access": "true",
      "s3.access-key-id": "admin", "s3.secret-access-key": "password", "s3.region": "us-east-1"}

def catalog():
    if args["catalog"] == "rest":
        from pyiceberg.catalog.rest import RestCatalog
        return RestCatalog("rest", uri=args["rest_uri"], **S3)
    from pyiceberg.catalog.sql import SqlCatalog
    return SqlCatalog(args["name"], uri="sqlite:///" + args["sqlite_file"], warehouse=args["warehouse"], **S3)

def iso(o):
    return o.isoformat() if hasattr(o, "isoformat") else str(o)

import duckdb, duckdb_extension_httpfs, duckdb_extension_iceberg, duckdb_extension_avro
con = duckdb.connect(config={"autoinstall_known_extensions": "false", "autoload_known_extensions": "false"})
for module, name in [(duckdb_extension_httpfs, "httpfs"), (duckdb_extension_avro, "avro"),
                     (duckdb_extension_iceberg, "iceberg")]:
    [path] = pathlib.Path(module.__file__).parent.glob(f"extensions/*/{name}.duckdb_extension")
    con.load_extension(str(path))
con.execute("CREATE SECRET local_s3 (TYPE s3, KEY_ID 'admin', SECRET 'password', REGION 'us-east-1', "
            "ENDPOINT ?, URL_STYLE 'path', USE_SSL false)", [args["s3_endpoint"].removeprefix("http://")])

cat = catalog()
out = {}
for name in args["tables"]:
    table = cat.load_table((args["namespace"], name))
    meta = table.metadata
    snaps = []
    s = table.current_snapshot()
    while s is not None:
        snaps.append({"id": s.snapshot_id, "parent": s.parent_snapshot_id,
                      "summary": {"operation": s.summary.operation.value, **s.summary.additional_properties}})
        s = meta.snapshot_by_id(s.parent_snapshot_id) if s.parent_snapshot_id else None
    loc = table.metadata_location
    t = {
        "metadata_location": loc,
        "snapshots": snaps,
        "schema": [[f.field_id, f.name, str(f.field_type), f.required] for f in table.schema().fields],
        "partition_spec": [[f.source_id, f.name, str(f.transform)] for f in table.spec().fields],
        "format_version": meta.format_version,
        "properties": dict(meta.properties),
        "pyiceberg_count": table.scan().to_arrow().num_rows,
        "duckdb_count": con.execute("SELECT count(*) FROM iceberg_scan(?)", [loc]).fetchone()[0],
    }
    key = args.get("key")
    if key:
        # Rows that appear more than once, by the key columns (DuckDB).
        cols = ", ".join(key[name])
        t["duplicates"] = con.execute(
            f"SELECT count(*) FROM (SELECT {cols}, count(*) AS c FROM iceberg_scan(?) GROUP BY ALL HAVING c > 1)",
            [loc]).fetchone()[0]
    if args.get("rows"):
        t["rows"] = table.scan().to_arrow().to_pylist()
        t["duckdb_rows"] = [dict(zip([d[0] for d in cur.description], r)) for cur in
                            [con.execute("SELECT * FROM iceberg_scan(?)", [loc])] for r in cur.fetchall()]
    # Per snapshot (oldest first): its columns and row count as DuckDB reads that snapshot.
    if args.get("per_snapshot"):
        t["per_snapshot"] = []
        for sn in reversed(snaps):
            cur = con.execute("SELECT * FROM iceberg_scan(?, snapshot_from_id => ?) LIMIT 1", [loc, sn["id"]])
            cols = [d[0] for d in cur.description]
            n = con.execute("SELECT count(*) FROM iceberg_scan(?, snapshot_from_id => ?)", [loc, sn["id"]]).fetchone()[0]
            t["per_snapshot"].append({"id": sn["id"], "columns": cols, "rows": n})
    out[name] = t
print(json.dumps(out, default=iso))
"#;

/// The two tables of `namespace` as pyiceberg and DuckDB read them: per table its snapshots
/// (newest first, summaries included), schema, partition spec, properties, and row counts by
/// both readers; with `opts`: `"rows": true` (every row, from both), `"key": {table: [columns]}`
/// (the number of duplicated keys, by DuckDB), `"per_snapshot": true` (DuckDB's columns and
/// count at each snapshot).
pub fn read_tables(catalog: &Catalog, namespace: &str, opts: Value) -> Result<Value> {
    let mut args = catalog.args();
    args["s3_endpoint"] = json!(s3_endpoint());
    args["namespace"] = json!(namespace);
    args["tables"] = json!(["form", "form_field"]);
    for (k, v) in opts.as_object().into_iter().flatten() {
        args[k] = v.clone();
    }
    let arg = args.to_string();
    let mut out = python_rows(READER, &[std::ffi::OsStr::new(&arg)], &[])?;
    anyhow::ensure!(out.len() == 1, "the reader printed {} lines", out.len());
    Ok(out.remove(0))
}

/// The offsets the newest snapshot of `table` holds for `group` and `topic`, by partition.
pub fn snapshot_offsets(table: &Value, group: &str, topic: &str) -> Option<Vec<(i32, i64)>> {
    let key = format!("form-etl.offsets.{group}");
    let json = table["snapshots"][0]["summary"][key.as_str()].as_str()?;
    let v: Value = serde_json::from_str(json).ok()?;
    let mut out: Vec<(i32, i64)> = v[topic]
        .as_object()?
        .iter()
        .map(|(p, o)| (p.parse().unwrap(), o.as_i64().unwrap()))
        .collect();
    out.sort();
    Some(out)
}

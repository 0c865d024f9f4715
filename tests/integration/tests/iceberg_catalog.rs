//! The Iceberg ground of issue 17, proven with readers that are not ours: Apache Iceberg's REST
//! catalog of the local cluster (`make cluster-up`, `FORM_ETL_ICEBERG_REST`, default
//! `http://127.0.0.1:8181`, warehouse `s3://iceberg/warehouse` on the local S3 server) and
//! pyiceberg's SQL catalog on a SQLite file, each with pyiceberg and DuckDB (`iceberg_scan` of
//! the table's metadata file on S3; through the REST catalog too).
//!
//! Each test creates a namespace and a format-v2 table of its own (unique names), appends two
//! batches with pyiceberg, each with a custom snapshot summary property, and checks: the rows read
//! back by pyiceberg and by DuckDB (exactly, nulls and non-ASCII text included), both snapshots'
//! summaries as pyiceberg reads them and as DuckDB reads the metadata JSON, the snapshot ancestry,
//! the data files on S3, the table properties; then drops what it made. The Python of
//! `.cache/venv` (`tests/cluster/install.sh venv`, `FORM_ETL_PYTHON`) runs pyiceberg and DuckDB.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use form_etl_tests::{
    S3_ACCESS_KEY, S3_REGION, S3_SECRET_KEY, Service, create_bucket, delete_bucket, iceberg_rest,
    list_keys, require_cluster, s3_client, s3_endpoint, unique_name, workspace_root,
};
use serde_json::{Value, json};

/// How long one Python step (pyiceberg or DuckDB) may take.
const PYTHON_TIMEOUT: Duration = Duration::from_secs(120);

/// Bucket plus key length s3s-fs 0.14.1 can store from a multipart upload (pyarrow writes with
/// one): it names a sidecar file `.bucket-{b64 bucket}.object-{b64 key}.upload-{uuid}.metadata.json`
/// (URL-safe base64, no padding), at most 255 bytes: 74 + 4/3 × (bucket + key) ≤ 255.
const S3_KEY_BUDGET: usize = 134;

/// The REST catalog's warehouse bucket (`ICEBERG_BUCKET` in `tests/cluster/common.sh`).
const REST_WAREHOUSE_BUCKET: &str = "iceberg";

/// The rows of the two appends: (id, name, event_happened_at in microseconds since the epoch, UTC).
fn batches() -> [Vec<(i64, Option<&'static str>, i64)>; 2] {
    [
        vec![
            (1, Some("first"), 1_664_715_615_000_000), // 2022-10-02 13:00:15
            (2, None, 1_664_715_615_000_001),
            (3, Some("Grüße, 表单 ✓"), 1_700_000_000_123_456),
        ],
        vec![
            (4, Some("fourth"), 0),
            (5, Some(""), 1_735_689_599_999_999), // 2024-12-31 23:59:59.999999
        ],
    ]
}

/// pyiceberg and DuckDB. `write` creates the namespace and table, appends the batches (each with
/// its summary property), reads everything back; `duckdb` reads a metadata file's rows and
/// snapshot summaries (and, given a REST URI, the table through the catalog); `drop` purges the
/// table and drops the namespace. Prints one JSON object.
const SCRIPT: &str = r#"
import datetime, json, pathlib, sqlite3, sys

mode, args = sys.argv[1], json.loads(sys.argv[2])
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
US = datetime.timedelta(microseconds=1)
S3 = {
    "s3.endpoint": args["s3_endpoint"],
    "s3.path-style-access": "true",
    "s3.access-key-id": args["s3_access_key"],
    "s3.secret-access-key": args["s3_secret_key"],
    "s3.region": args["s3_region"],
}

def micros(ts):
    return (ts - EPOCH) // US

def rows_of(pylist):
    return sorted([r["id"], r["name"], micros(r["event_happened_at"])] for r in pylist)

def catalog():
    if args["catalog"] == "rest":
        from pyiceberg.catalog.rest import RestCatalog
        return RestCatalog("rest", uri=args["rest_uri"], **S3)
    from pyiceberg.catalog.sql import SqlCatalog
    return SqlCatalog("sql", uri="sqlite:///" + args["sqlite_file"], warehouse=args["warehouse"], **S3)

def write():
    import pyarrow as pa
    from pyiceberg.schema import Schema
    from pyiceberg.table.snapshots import ancestors_of
    from pyiceberg.types import LongType, NestedField, StringType, TimestamptzType

    cat = catalog()
    ns, ident = args["namespace"], (args["namespace"], args["table"])
    cat.create_namespace(ns)
    schema = Schema(
        NestedField(1, "id", LongType(), required=True),
        NestedField(2, "name", StringType(), required=False),
        NestedField(3, "event_happened_at", TimestamptzType(), required=True),
    )
    table = cat.create_table(ident, schema=schema, properties=args["table_properties"])
    for batch, props in zip(args["batches"], args["snapshot_properties"]):
        data = pa.Table.from_pylist(
            [{"id": i, "name": n, "event_happened_at": EPOCH + t * US} for i, n, t in batch],
            schema=schema.as_arrow(),
        )
        table.append(data, snapshot_properties=props)
    table = cat.load_table(ident)
    meta = table.metadata
    history = [
        {"snapshot_id": s.snapshot_id, "parent_id": s.parent_snapshot_id,
         "summary": {"operation": s.summary.operation.value, **s.summary.additional_properties}}
        for s in ancestors_of(table.current_snapshot(), meta)
    ]
    out = {
        "namespaces": [".".join(n) for n in cat.list_namespaces()],
        "tables": [".".join(t) for t in cat.list_tables(ns)],
        "metadata_location": table.metadata_location,
        "location": table.location(),
        "format_version": meta.format_version,
        "properties": dict(meta.properties),
        "field_ids": [[f.field_id, f.name, str(f.field_type), f.required] for f in table.schema().fields],
        "rows": rows_of(table.scan().to_arrow().to_pylist()),
        "history": history,
    }
    if args["catalog"] == "sql":
        con = sqlite3.connect(args["sqlite_file"])
        out["sqlite_metadata_location"] = con.execute(
            "SELECT metadata_location FROM iceberg_tables WHERE table_namespace = ? AND table_name = ?",
            ident,
        ).fetchall()
    print(json.dumps(out))

def duck():
    import duckdb, duckdb_extension_avro, duckdb_extension_httpfs, duckdb_extension_iceberg

    con = duckdb.connect(config={"autoinstall_known_extensions": "false",
                                 "autoload_known_extensions": "false"})
    # The extensions come from their PyPI wheels, loaded by path: nothing is downloaded.
    for module, name in [(duckdb_extension_httpfs, "httpfs"), (duckdb_extension_avro, "avro"),
                         (duckdb_extension_iceberg, "iceberg")]:
        [path] = pathlib.Path(module.__file__).parent.glob(f"extensions/*/{name}.duckdb_extension")
        con.load_extension(str(path))
    endpoint = args["s3_endpoint"].removeprefix("http://")
    con.execute(
        "CREATE SECRET local_s3 (TYPE s3, KEY_ID ?, SECRET ?, REGION ?, ENDPOINT ?, "
        "URL_STYLE 'path', USE_SSL false)",
        [args["s3_access_key"], args["s3_secret_key"], args["s3_region"], endpoint],
    )
    meta = args["metadata_location"]
    out = {
        "rows": rows_of(con.execute(
            "SELECT id, name, event_happened_at FROM iceberg_scan(?)", [meta]).to_arrow_table().to_pylist()),
        "summaries": [s for (s,) in con.execute(
            "SELECT s.summary FROM (SELECT unnest(snapshots) AS s FROM read_json(?)) ORDER BY s.\"sequence-number\"",
            [meta]).fetchall()],
        "snapshot_count": con.execute("SELECT count(*) FROM iceberg_snapshots(?)", [meta]).fetchone()[0],
    }
    if args.get("rest_uri"):
        con.execute(f"ATTACH 'local' AS lake (TYPE iceberg, ENDPOINT '{args['rest_uri']}', AUTHORIZATION_TYPE 'none')")
        out["rest_rows"] = rows_of(con.execute(
            f'SELECT id, name, event_happened_at FROM lake."{args["namespace"]}"."{args["table"]}"'
        ).to_arrow_table().to_pylist())
    print(json.dumps(out))

def drop():
    cat = catalog()
    cat.purge_table((args["namespace"], args["table"]))
    cat.drop_namespace(args["namespace"])
    print(json.dumps({"namespaces": [".".join(n) for n in cat.list_namespaces()]}))

{"write": write, "duckdb": duck, "drop": drop}[mode]()
"#;

fn venv_python() -> anyhow::Result<PathBuf> {
    let python = std::env::var_os("FORM_ETL_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".cache/venv/bin/python"));
    ensure!(
        python.is_file(),
        "{} is missing: install the readers with `tests/cluster/install.sh venv` (make deps does)",
        python.display()
    );
    Ok(python)
}

/// Runs SCRIPT's `mode` with `args` and returns the JSON it prints.
async fn python(mode: &str, args: &Value) -> anyhow::Result<Value> {
    let mut cmd = tokio::process::Command::new(venv_python()?);
    cmd.args(["-c", SCRIPT, mode, &args.to_string()])
        .kill_on_drop(true);
    let out = tokio::time::timeout(PYTHON_TIMEOUT, cmd.output())
        .await
        .with_context(|| format!("python {mode} took more than {PYTHON_TIMEOUT:?}"))?
        .with_context(|| format!("running python {mode}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "python {mode} failed ({}):\n{}\n{stdout}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).with_context(|| format!("python {mode} printed: {stdout}"))
}

/// The arguments every step gets, plus `extra`.
fn script_args(catalog: &str, namespace: &str, table: &str, extra: Value) -> Value {
    let [first, second] = batches();
    let batch = |b: Vec<(i64, Option<&str>, i64)>| -> Value {
        b.into_iter().map(|(i, n, t)| json!([i, n, t])).collect()
    };
    let mut args = json!({
        "catalog": catalog,
        "namespace": namespace,
        "table": table,
        "s3_endpoint": s3_endpoint(),
        "s3_access_key": S3_ACCESS_KEY,
        "s3_secret_key": S3_SECRET_KEY,
        "s3_region": S3_REGION,
        "batches": [batch(first), batch(second)],
        "table_properties": {"format-version": "2", "commit.retry.num-retries": "0"},
        "snapshot_properties": [
            {"form-etl.smoke": format!("{namespace}/1"), "form-etl.commit-id": "c-1"},
            {"form-etl.smoke": format!("{namespace}/2"), "form-etl.commit-id": "c-2"},
        ],
    });
    for (k, v) in extra.as_object().expect("an object") {
        args[k] = v.clone();
    }
    args
}

/// Every row of both batches as the scripts print them, sorted by id.
fn expected_rows() -> Value {
    let mut rows: Vec<(i64, Option<&str>, i64)> = batches().into_iter().flatten().collect();
    rows.sort();
    rows.into_iter().map(|(i, n, t)| json!([i, n, t])).collect()
}

/// Checks what `write` printed; returns the metadata file's location.
fn check_written(w: &Value, namespace: &str, table: &str) -> anyhow::Result<String> {
    assert!(
        w["namespaces"]
            .as_array()
            .is_some_and(|n| n.contains(&json!(namespace))),
        "namespace {namespace} not listed: {}",
        w["namespaces"]
    );
    assert_eq!(w["tables"], json!([format!("{namespace}.{table}")]));
    assert_eq!(w["format_version"], 2);
    assert_eq!(w["properties"]["commit.retry.num-retries"], "0");
    assert_eq!(
        w["field_ids"],
        json!([
            [1, "id", "long", true],
            [2, "name", "string", false],
            [3, "event_happened_at", "timestamptz", true]
        ])
    );
    assert_eq!(w["rows"], expected_rows(), "rows read back by pyiceberg");

    // Newest first: the second append, whose parent is the first.
    let history = w["history"].as_array().context("history")?;
    assert_eq!(history.len(), 2, "snapshot ancestry: {history:?}");
    assert_eq!(history[0]["parent_id"], history[1]["snapshot_id"]);
    assert!(history[1]["parent_id"].is_null(), "{history:?}");
    for (snapshot, (n, added, total)) in history.iter().zip([(2, "2", "5"), (1, "3", "3")]) {
        let s = &snapshot["summary"];
        assert_eq!(s["operation"], "append", "{s}");
        assert_eq!(s["form-etl.smoke"], format!("{namespace}/{n}"), "{s}");
        assert_eq!(s["form-etl.commit-id"], format!("c-{n}"), "{s}");
        assert_eq!(s["added-records"], added, "{s}");
        assert_eq!(s["total-records"], total, "{s}");
        assert_eq!(s["total-data-files"], n.to_string(), "{s}");
    }

    let meta = w["metadata_location"]
        .as_str()
        .context("metadata_location")?
        .to_owned();
    let location = w["location"].as_str().context("location")?;
    assert!(
        meta.starts_with(&format!("{location}/metadata/")) && meta.ends_with(".metadata.json"),
        "metadata {meta} of table at {location}"
    );
    Ok(meta)
}

/// Checks what DuckDB read (`duckdb`) against the rows and summaries `write` saw.
fn check_duckdb(d: &Value, namespace: &str) {
    assert_eq!(
        d["rows"],
        expected_rows(),
        "rows read by DuckDB iceberg_scan"
    );
    assert_eq!(d["snapshot_count"], 2);
    let summaries = d["summaries"].as_array().expect("summaries");
    assert_eq!(summaries.len(), 2, "{summaries:?}");
    for (n, s) in (1..).zip(summaries) {
        assert_eq!(s["form-etl.smoke"], format!("{namespace}/{n}"), "{s}");
        assert_eq!(s["form-etl.commit-id"], format!("c-{n}"), "{s}");
    }
}

/// The keys under the table's location on S3: the metadata file is there, and exactly the two
/// appends' Parquet data files.
async fn check_s3(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    location: &str,
    meta: &str,
) -> anyhow::Result<()> {
    let prefix = location
        .strip_prefix(&format!("s3://{bucket}/"))
        .with_context(|| format!("table location {location} outside s3://{bucket}"))?;
    let keys: Vec<String> = list_keys(s3, bucket, &format!("{prefix}/"))
        .await?
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    let meta_key = meta
        .strip_prefix(&format!("s3://{bucket}/"))
        .unwrap_or(meta);
    assert!(
        keys.iter().any(|k| k == meta_key),
        "{meta_key} not in {keys:?}"
    );
    let data: Vec<&String> = keys
        .iter()
        .filter(|k| k.starts_with(&format!("{prefix}/data/")))
        .collect();
    assert_eq!(data.len(), 2, "data files: {data:?}");
    assert!(data.iter().all(|k| k.ends_with(".parquet")), "{data:?}");
    // Every key stayed within what s3s-fs can store (else the writes above had failed already;
    // this names the limit when a change of names gets close to it).
    for k in &keys {
        assert!(
            bucket.len() + k.len() <= S3_KEY_BUDGET,
            "s3://{bucket}/{k} is too long for s3s-fs"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_catalog_tables_are_read_by_pyiceberg_and_duckdb() -> anyhow::Result<()> {
    require_cluster!(&[Service::S3, Service::IcebergRest]);
    // Namespace names are SQL identifiers to DuckDB: no '-'.
    let (namespace, table) = (unique_name("rs").replace('-', "_"), "t".to_owned());
    let rest = iceberg_rest();
    let args = script_args("rest", &namespace, &table, json!({ "rest_uri": rest }));

    let written = python("write", &args).await?;
    let meta = check_written(&written, &namespace, &table)?;
    let location = written["location"].as_str().context("location")?;
    assert!(
        location.starts_with(&format!("s3://{REST_WAREHOUSE_BUCKET}/warehouse/")),
        "the REST catalog put the table at {location}"
    );
    check_s3(&s3_client(), REST_WAREHOUSE_BUCKET, location, &meta).await?;

    let mut duck_args = args.clone();
    duck_args["metadata_location"] = json!(meta);
    let duck = python("duckdb", &duck_args).await?;
    check_duckdb(&duck, &namespace);
    assert_eq!(
        duck["rest_rows"],
        expected_rows(),
        "rows read by DuckDB through the REST catalog"
    );

    let dropped = python("drop", &args).await?;
    assert!(
        !dropped["namespaces"]
            .as_array()
            .context("namespaces")?
            .contains(&json!(namespace)),
        "{dropped}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_catalog_on_sqlite_tables_are_read_by_pyiceberg_and_duckdb() -> anyhow::Result<()> {
    require_cluster!(&[Service::S3]);
    let s3 = s3_client();
    // Short names: s3s-fs keeps each object's metadata in a file named after the base64 of its
    // bucket and key (and upload id), which must fit in 255 bytes (S3_KEY_BUDGET).
    let bucket = unique_name("ice");
    create_bucket(&s3, &bucket).await?;
    let (namespace, table) = (unique_name("sq").replace('-', "_"), "t");
    let dir = workspace_root().join("target/test-logs");
    std::fs::create_dir_all(&dir)?;
    let sqlite = dir.join(format!("{bucket}.db"));
    let args = script_args(
        "sql",
        &namespace,
        table,
        json!({
            "sqlite_file": sqlite.to_string_lossy(),
            "warehouse": format!("s3://{bucket}/wh"),
        }),
    );

    let written = python("write", &args).await?;
    let meta = check_written(&written, &namespace, table)?;
    // The catalog's own row, read with Python's sqlite3: the table's current metadata file.
    assert_eq!(written["sqlite_metadata_location"], json!([[meta]]));
    let location = written["location"].as_str().context("location")?;
    assert_eq!(location, format!("s3://{bucket}/wh/{namespace}/{table}"));
    check_s3(&s3, &bucket, location, &meta).await?;

    let mut duck_args = args.clone();
    duck_args["metadata_location"] = json!(meta);
    check_duckdb(&python("duckdb", &duck_args).await?, &namespace);

    python("drop", &args).await?;
    delete_bucket(&s3, &bucket).await?;
    std::fs::remove_file(&sqlite)?;
    Ok(())
}

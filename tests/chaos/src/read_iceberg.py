# form-etl-chaos: reads an `output: iceberg` scenario's two tables with readers that are not
# ours, and prints one JSON line: per table the identity columns of every row as DuckDB's
# iceberg_scan reads them (form: id, event_happened_at; form_field: form_id,
# form_event_happened_at, id; timestamps as microseconds since the Unix epoch), the row count
# as pyiceberg reads it, how many rows the two readers disagree on, the number of snapshots,
# and the offsets of the newest snapshot that holds the group's (its summary's
# `form-etl.offsets.{group}`, as stored). A table that cannot be read gets an "error".
#
# argv[1]: JSON {sqlite_file, name, warehouse, namespace, s3_endpoint, key_id, group,
# secrets_file}; the S3 secret is read from the sink's secrets file (S3_SECRET_ACCESS_KEY=…),
# so that it is not on a command line.
import collections
import datetime
import json
import pathlib
import sys

args = json.loads(sys.argv[1])
SECRETS = dict(
    line.split("=", 1) for line in pathlib.Path(args["secrets_file"]).read_text().splitlines() if "=" in line
)
SECRET = SECRETS["S3_SECRET_ACCESS_KEY"]
S3 = {
    "s3.endpoint": args["s3_endpoint"],
    "s3.path-style-access": "true",
    "s3.access-key-id": args["key_id"],
    "s3.secret-access-key": SECRET,
    "s3.region": "us-east-1",
}
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
COLUMNS = {
    "form": ["id", "event_happened_at"],
    "form_field": ["form_id", "form_event_happened_at", "id"],
}
OFFSETS_KEY = "form-etl.offsets." + args["group"]


def micros(v):
    if v is None:
        return None
    if isinstance(v, datetime.datetime):
        if v.tzinfo is None:
            v = v.replace(tzinfo=datetime.timezone.utc)
        return (v - EPOCH) // datetime.timedelta(microseconds=1)
    return int(v)


def identity(row):
    return [micros(v) if isinstance(v, datetime.datetime) else v for v in row]


def duckdb_connection():
    import duckdb
    import duckdb_extension_avro
    import duckdb_extension_httpfs
    import duckdb_extension_iceberg

    con = duckdb.connect(
        config={"autoinstall_known_extensions": "false", "autoload_known_extensions": "false"}
    )
    # The iceberg extension needs avro (for the manifests) loaded first: offline, nothing is
    # installed on the fly.
    for module, name in [
        (duckdb_extension_httpfs, "httpfs"),
        (duckdb_extension_avro, "avro"),
        (duckdb_extension_iceberg, "iceberg"),
    ]:
        [path] = pathlib.Path(module.__file__).parent.glob(f"extensions/*/{name}.duckdb_extension")
        con.load_extension(str(path))
    con.execute(
        "CREATE SECRET chaos_s3 (TYPE s3, KEY_ID ?, SECRET ?, REGION 'us-east-1', ENDPOINT ?, "
        "URL_STYLE 'path', USE_SSL false)",
        [args["key_id"], SECRET, args["s3_endpoint"].removeprefix("http://")],
    )
    return con


def read_table(cat, con, name):
    table = cat.load_table((args["namespace"], name))
    cols = COLUMNS[name]
    loc = table.metadata_location
    select = ", ".join(f'"{c}"' for c in cols)
    duck = [identity(r) for r in con.execute(f"SELECT {select} FROM iceberg_scan(?)", [loc]).fetchall()]
    arrow = table.scan(selected_fields=tuple(cols)).to_arrow()
    ice = [identity([r[c] for c in cols]) for r in arrow.to_pylist()]
    key = lambda r: json.dumps(r)  # noqa: E731
    disagree = collections.Counter(map(key, duck))
    disagree.subtract(collections.Counter(map(key, ice)))
    snaps, offsets = 0, None
    s = table.current_snapshot()
    while s is not None:
        snaps += 1
        stored = s.summary.additional_properties.get(OFFSETS_KEY)
        if offsets is None and stored is not None:
            offsets = stored
        s = table.metadata.snapshot_by_id(s.parent_snapshot_id) if s.parent_snapshot_id else None
    return {
        "rows": duck,
        "pyiceberg_rows": len(ice),
        "disagreeing_rows": sum(abs(n) for n in disagree.values()),
        "snapshots": snaps,
        "offsets": offsets,
    }


out = {}
try:
    from pyiceberg.catalog.sql import SqlCatalog

    cat = SqlCatalog(
        args["name"], uri="sqlite:///" + args["sqlite_file"], warehouse=args["warehouse"], **S3
    )
    con = duckdb_connection()
except Exception as e:  # every table is then unreadable; the oracle reports it
    cat, con = None, None
    for name in COLUMNS:
        out[name] = {"error": "opening the catalog or DuckDB: " + repr(e)}
if cat is not None:
    for name in COLUMNS:
        try:
            out[name] = read_table(cat, con, name)
        except Exception as e:
            out[name] = {"error": repr(e)}
print(json.dumps(out, ensure_ascii=False))

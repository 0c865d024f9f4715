#!/usr/bin/env python3
"""Query the sink's Iceberg tables with DuckDB (`output.type: iceberg`).

    .cache/venv/bin/python scripts/iceberg-sql.py "SELECT type, count(*) FROM form GROUP BY 1"

`form` and `form_field` are views over DuckDB's `iceberg_scan` of each table's current metadata,
found through the catalog with pyiceberg. Default catalog: the sink's embedded SQL catalog
(`.form-etl/iceberg-catalog.db`, tables under s3://output/form-etl/iceberg on the local S3 server).
`--rest URI` uses a REST catalog instead. The DuckDB extensions load from their PyPI wheels
(nothing is downloaded); `make deps` installs them into .cache/venv.
"""
import argparse
import pathlib
import sys

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("sql", nargs="*", help="statements to run (default: a few examples)")
p.add_argument("--catalog-file", default=".form-etl/iceberg-catalog.db")
p.add_argument("--catalog-name", default="form_etl")
p.add_argument("--warehouse", default="s3://output/form-etl/iceberg")
p.add_argument("--rest", help="an Iceberg REST catalog's URI (instead of the SQL catalog)")
p.add_argument("--namespace", default="form_etl")
p.add_argument("--s3-endpoint", default="http://127.0.0.1:9000")
p.add_argument("--s3-key", default="admin")
p.add_argument("--s3-secret", default="password")
p.add_argument("--region", default="us-east-1")
p.add_argument("--wait-rows", type=int, default=0, metavar="N",
               help="first wait (up to --wait-timeout seconds) until `form` has at least N rows")
p.add_argument("--wait-timeout", type=float, default=90)
a = p.parse_args()

import duckdb, duckdb_extension_avro, duckdb_extension_httpfs, duckdb_extension_iceberg

S3 = {"s3.endpoint": a.s3_endpoint, "s3.path-style-access": "true", "s3.access-key-id": a.s3_key,
      "s3.secret-access-key": a.s3_secret, "s3.region": a.region}
if a.rest:
    from pyiceberg.catalog.rest import RestCatalog
    cat = RestCatalog("rest", uri=a.rest, **S3)
else:
    import time
    deadline = time.monotonic() + (a.wait_timeout if a.wait_rows else 0)
    while not pathlib.Path(a.catalog_file).exists() and time.monotonic() < deadline:
        time.sleep(1)
    if not pathlib.Path(a.catalog_file).exists():
        sys.exit(f"{a.catalog_file} does not exist: has an s3-sink with `output.type: iceberg` run here?")
    from pyiceberg.catalog.sql import SqlCatalog
    cat = SqlCatalog(a.catalog_name, uri="sqlite:///" + a.catalog_file, warehouse=a.warehouse, **S3)

con = duckdb.connect(config={"autoinstall_known_extensions": "false", "autoload_known_extensions": "false"})
for module, name in [(duckdb_extension_httpfs, "httpfs"), (duckdb_extension_avro, "avro"),
                     (duckdb_extension_iceberg, "iceberg")]:
    [path] = pathlib.Path(module.__file__).parent.glob(f"extensions/*/{name}.duckdb_extension")
    con.load_extension(str(path))
use_ssl = "true" if a.s3_endpoint.startswith("https://") else "false"
con.execute(f"CREATE SECRET s3 (TYPE s3, KEY_ID ?, SECRET ?, REGION ?, ENDPOINT ?, URL_STYLE 'path', USE_SSL {use_ssl})",
            [a.s3_key, a.s3_secret, a.region, a.s3_endpoint.split("://", 1)[-1]])
def views():
    for table in ["form", "form_field"]:
        t = cat.load_table((a.namespace, table))
        con.execute(f"CREATE OR REPLACE VIEW {table} AS SELECT * FROM iceberg_scan('{t.metadata_location}')")

import time
deadline = time.monotonic() + a.wait_timeout
while True:
    try:
        views()
        n = con.execute("SELECT count(*) FROM form").fetchone()[0]
    except Exception as e:  # the tables may not exist yet
        n, err = -1, e
    if n >= a.wait_rows:
        break
    if time.monotonic() > deadline:
        sys.exit(f"timed out waiting for {a.wait_rows} rows in form (have {n})")
    time.sleep(1)

statements = a.sql or [
    "SELECT type, count(*) AS forms, count(DISTINCT id) AS distinct_forms FROM form GROUP BY type ORDER BY forms DESC",
    "SELECT id, title, event_type, event_happened_at FROM form ORDER BY event_happened_at DESC, id LIMIT 5",
    "SELECT type, count(*) AS fields FROM form_field GROUP BY type ORDER BY fields DESC LIMIT 5",
]
for sql in statements:
    print(f"D {sql};")
    print(con.sql(sql))

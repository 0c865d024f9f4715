#!/usr/bin/env python3
"""Columns and JSON types of the flattened rows of the forms API's generated forms.

Fetches N forms over HTTP from a running forms API (`GET {api}/internal.forms/{id}`, ids
`tf-000000` … by default: `forms-api --typeform N`), wraps each in a form.enriched record (one
event per form), flattens it with make_cases.py's reference flattener (DESIGN.md's modelling
rules, no Rust code involved) and reports, per table, every column with the JSON types of its
values and how many rows carry each:

    python3 stats.py --api http://127.0.0.1:8000 --count 1000            # text
    python3 stats.py --count 1000 --json > columns.json                    # machine-readable
    python3 stats.py --prefix form- --count 1000                           # the catalogue forms

Types are JSON's as the flattened row holds them: `boolean`, `integer`, `float`, `string`,
`json-text` (a string column made from an array), `null`. A column with more than one non-null
type is a type conflict; a name outside Avro's `[A-Za-z_][A-Za-z0-9_]*` is flagged `odd-name`,
names that differ only in case `case-only`.
Only the standard library is used.
"""
import argparse
import json
import os
import re
import sys
import urllib.error
import urllib.request
from collections import Counter, defaultdict

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import make_cases  # noqa: E402  (the reference flattener; importing it writes nothing)

AVRO_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
TIMESTAMPS = {"retrieved_timestamp", "event_happened_at", "form_retrieved_timestamp",
              "form_event_happened_at"}


def json_type(column, value, array_columns):
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if column in TIMESTAMPS:
        return "timestamp"
    return "json-text" if column in array_columns else "string"


def array_columns_of(obj, prefix, out, skip_fields=False):
    """Names of the columns the flattener makes from arrays (they hold JSON text)."""
    for key, value in obj.items():
        if skip_fields and key == "fields":
            continue
        if isinstance(value, dict):
            array_columns_of(value, prefix + key + "_", out)
        elif isinstance(value, list):
            out.add(prefix + key)


def case_groups(columns):
    groups = defaultdict(list)
    for c in columns:
        groups[c.lower()].append(c)
    return groups.values()


def fetch(api, form_id, timeout):
    with urllib.request.urlopen(f"{api}/internal.forms/{form_id}", timeout=timeout) as resp:
        return json.loads(resp.read().decode("utf-8"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--api", default=os.environ.get("FORM_ETL_FORMS_API", "http://127.0.0.1:8000"))
    ap.add_argument("--count", type=int, default=1000, help="forms to fetch (ids 0..count-1)")
    ap.add_argument("--prefix", default="tf-", help="id prefix: tf- (Typeform) or form- (catalogue)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    ap.add_argument("--timeout", type=float, default=10.0)
    args = ap.parse_args()

    types = {"form": defaultdict(Counter), "form_field": defaultdict(Counter)}
    rows = Counter()
    fields_total = nested_fields = 0
    kinds = Counter()
    for i in range(args.count):
        form_id = f"{args.prefix}{i:06d}"
        try:
            form = fetch(args.api, form_id, args.timeout)
        except urllib.error.URLError as e:
            sys.exit(f"GET {args.api}/internal.forms/{form_id}: {e}")
        record = make_cases.enriched(make_cases.tf_event(form_id), form)
        out = make_cases.reference_flatten(record)
        form_arrays = set()
        array_columns_of(form, "", form_arrays, skip_fields=True)
        for field in form.get("fields") or []:
            kinds[field.get("type")] += 1
            fields_total += 1
            inner = (field.get("properties") or {}).get("fields") or []
            nested_fields += len(inner)
            for f in inner:
                kinds[f.get("type")] += 1
        for table in ("form", "form_field"):
            for n, row in enumerate(out[table]):
                rows[table] += 1
                arrays = set(form_arrays) if table == "form" else {"form_" + c for c in form_arrays}
                if table == "form_field":
                    array_columns_of(form["fields"][n], "", arrays)
                for column, value in row.items():
                    types[table][column][json_type(column, value, arrays)] += 1

    report = {"api": args.api, "prefix": args.prefix, "forms": args.count,
              "fields": fields_total, "nested_fields": nested_fields, "field_types": dict(kinds),
              "tables": {}}
    for table in ("form", "form_field"):
        cols = types[table]
        report["tables"][table] = {
            "rows": rows[table],
            "columns": len(cols),
            "type_conflicts": sorted(c for c, t in cols.items() if len(set(t) - {"null"}) > 1),
            "odd_names": sorted(c for c in cols if not AVRO_NAME.match(c)),
            "case_only_differences": sorted(
                sorted(g) for g in case_groups(cols) if len(g) > 1),
            "column_types": {c: dict(sorted(t.items())) for c, t in sorted(cols.items())},
        }
    if args.json:
        json.dump(report, sys.stdout, ensure_ascii=False, indent=1)
        print()
        return
    print(f"{args.count} forms ({args.prefix}…) from {args.api}: {fields_total} fields "
          f"(+{nested_fields} nested in groups), {len(kinds)} field types")
    for table, t in report["tables"].items():
        print(f"\n{table}: {t['rows']} rows, {t['columns']} columns, "
              f"{len(t['type_conflicts'])} with a type conflict, {len(t['odd_names'])} odd names, "
              f"{len(t['case_only_differences'])} pairs differing only in case")
        case_only = {c for g in t["case_only_differences"] for c in g}
        for column, counts in t["column_types"].items():
            flags = []
            if column in t["type_conflicts"]:
                flags.append("CONFLICT")
            if column in t["odd_names"]:
                flags.append("odd-name")
            if column in case_only:
                flags.append("case-only")
            seen = ", ".join(f"{ty} {n}" for ty, n in counts.items())
            print(f"  {column:<58} {seen}{'  [' + ', '.join(flags) + ']' if flags else ''}")


if __name__ == "__main__":
    main()

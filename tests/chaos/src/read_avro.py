# form-etl-chaos: reads Avro object container files with fastavro (a reader that is not ours)
# and prints one JSON line per file: its form_etl.* metadata and each row's identity columns
# (form: id, event_happened_at; form_field: form_id, form_event_happened_at, id), timestamps as
# microseconds since the Unix epoch. A file that cannot be read gets an "error".
import datetime
import json
import sys

import fastavro

EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def micros(v):
    if v is None:
        return None
    if isinstance(v, datetime.datetime):
        if v.tzinfo is None:
            v = v.replace(tzinfo=datetime.timezone.utc)
        return (v - EPOCH) // datetime.timedelta(microseconds=1)
    return int(v)


for path in sys.argv[1:]:
    out = {"path": path}
    try:
        with open(path, "rb") as f:
            r = fastavro.reader(f)
            meta = {}
            for k, v in r.metadata.items():
                if k.startswith("form_etl."):
                    meta[k] = v.decode() if isinstance(v, bytes) else v
            out["meta"] = meta
            out["codec"] = r.codec
            table = meta.get("form_etl.table")
            rows = []
            for rec in r:
                if table == "form":
                    rows.append([rec.get("id"), micros(rec.get("event_happened_at"))])
                else:
                    rows.append(
                        [rec.get("form_id"), micros(rec.get("form_event_happened_at")), rec.get("id")]
                    )
            out["rows"] = rows
    except Exception as e:  # reported as a finding by the oracle
        out["error"] = repr(e)
    print(json.dumps(out, ensure_ascii=False))

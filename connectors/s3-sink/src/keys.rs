//! Object keys: `{prefix}/{table}/event_date=YYYY-MM-DD/{topic}+{partition}+{first_offset:020}.{ext}`
//! (`ext` is the format's: `avro`, `parquet`).
//!
//! `first_offset` is the partition-wide offset at which the file's segment starts: every file of
//! one segment (both tables, every event date) carries the same boundary, and a replay of the
//! segment rewrites exactly these keys.

/// The key of one file.
pub(crate) fn object_key(
    prefix: &str,
    table: &str,
    event_date: &str,
    topic: &str,
    partition: i32,
    first_offset: i64,
    ext: &str,
) -> String {
    let prefix = prefix.trim_matches('/');
    let name =
        format!("{table}/event_date={event_date}/{topic}+{partition}+{first_offset:020}.{ext}");
    if prefix.is_empty() {
        name
    } else {
        format!("{prefix}/{name}")
    }
}

/// The parts of a key written by [`object_key`] (used by tests and `make run` listings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ParsedKey {
    pub(crate) table: String,
    pub(crate) event_date: String,
    pub(crate) topic: String,
    pub(crate) partition: i32,
    pub(crate) first_offset: i64,
}

#[cfg_attr(not(test), allow(dead_code))]
pub(crate) fn parse_key(key: &str) -> Option<ParsedKey> {
    let mut parts = key.rsplit('/');
    let file = parts.next()?;
    let file = file
        .strip_suffix(".avro")
        .or_else(|| file.strip_suffix(".parquet"))?;
    let date = parts.next()?.strip_prefix("event_date=")?;
    let table = parts.next()?.to_owned();
    let mut f = file.rsplitn(3, '+');
    let first_offset = f.next()?.parse().ok()?;
    let partition = f.next()?.parse().ok()?;
    let topic = f.next()?.to_owned();
    Some(ParsedKey {
        table,
        event_date: date.to_owned(),
        topic,
        partition,
        first_offset,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let d = "2022-10-02";
        let k = object_key("form-etl/", "form_field", d, "form.enriched", 2, 42, "avro");
        assert_eq!(
            k,
            "form-etl/form_field/event_date=2022-10-02/form.enriched+2+00000000000000000042.avro"
        );
        assert_eq!(
            object_key("", "form", d, "t", 0, 0, "parquet"),
            "form/event_date=2022-10-02/t+0+00000000000000000000.parquet"
        );
        let p = parse_key(&k).unwrap();
        assert_eq!(p.table, "form_field");
        assert_eq!(p.topic, "form.enriched");
        assert_eq!((p.partition, p.first_offset), (2, 42));
        assert_eq!(p.event_date, d);
    }

    #[test]
    fn keys_sort_by_offset() {
        let d = "2022-10-02";
        let a = object_key("p", "form", d, "t", 0, 9, "avro");
        let b = object_key("p", "form", d, "t", 0, 10, "avro");
        assert!(a < b);
    }
}

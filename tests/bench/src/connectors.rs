//! Bench configs for the connectors, written from their committed YAML files in `config/` by
//! replacing values (topics, API address, group, ports, S3 prefix), so the bench follows the
//! files' shape as it changes.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};
use serde_yaml::Value;

/// The connector's default values that a bench run replaces (docs/internals.md).
const DEFAULT_EVENTS_TOPIC: &str = "form.events";
const DEFAULT_ENRICHED_TOPIC: &str = "form.enriched";
const DEFAULT_DLQ_TOPIC: &str = "form.events.dlq";

/// What a bench run replaces in a connector's YAML.
#[derive(Debug, Clone)]
pub(crate) struct Rewrite {
    /// Connector name (`meta.name`), unique per run: transactional ids derive from it.
    pub(crate) name: String,
    pub(crate) events_topic: String,
    pub(crate) enriched_topic: String,
    pub(crate) dlq_topic: String,
    /// Consumer group, unique per run.
    pub(crate) group: String,
    /// Brokers.
    pub(crate) brokers: String,
    /// Forms API base URL (`http://127.0.0.1:8000`).
    pub(crate) api_base: String,
    /// `/metrics` address.
    pub(crate) metrics_addr: String,
    /// S3 key prefix (sink).
    pub(crate) prefix: String,
    /// S3 endpoint and bucket (sink).
    pub(crate) s3_endpoint: String,
    pub(crate) bucket: String,
}

fn rewrite_value(v: &mut Value, key: Option<&str>, parent: Option<&str>, r: &Rewrite) {
    match v {
        Value::Mapping(m) => {
            for (k, child) in m.iter_mut() {
                let k = k.as_str().map(str::to_owned);
                rewrite_value(child, k.as_deref(), key, r);
            }
        }
        Value::Sequence(s) => {
            for child in s {
                rewrite_value(child, None, key, r);
            }
        }
        Value::String(s) => {
            let new = match (parent, key, s.as_str()) {
                (_, _, DEFAULT_EVENTS_TOPIC) => Some(r.events_topic.clone()),
                (_, _, DEFAULT_ENRICHED_TOPIC) => Some(r.enriched_topic.clone()),
                (_, _, DEFAULT_DLQ_TOPIC) => Some(r.dlq_topic.clone()),
                (Some("meta"), Some("name"), _) => Some(r.name.clone()),
                (_, Some("group"), _) => Some(r.group.clone()),
                (_, Some("transactional-id"), _) => Some(format!("{}-txn", r.name)),
                (_, Some("brokers"), _) => Some(r.brokers.clone()),
                (Some("metrics"), Some("address"), _) => Some(r.metrics_addr.clone()),
                (Some("metrics"), Some("progress-interval"), _) => Some("1s".to_owned()),
                (Some("s3"), Some("prefix"), _) => Some(r.prefix.clone()),
                (Some("s3"), Some("endpoint"), _) => Some(r.s3_endpoint.clone()),
                (Some("s3"), Some("bucket"), _) => Some(r.bucket.clone()),
                (_, Some("uri" | "url" | "endpoint" | "base-url"), old)
                    if old.contains(":8000") =>
                {
                    Some(r.api_base.clone())
                }
                _ => None,
            };
            if let Some(n) = new {
                *s = n;
            }
        }
        _ => {}
    }
}

/// Sets `a.b.c` (creating maps) to `value` (parsed as YAML).
fn set_path(v: &mut Value, path: &str, value: &str) -> anyhow::Result<()> {
    let mut cur = v;
    // `a.b[c.d]`: a bracketed segment is one key (librdkafka properties have dots).
    let mut keys: Vec<String> = Vec::new();
    for part in path.split('[') {
        match part.split_once(']') {
            Some((inner, rest)) => {
                keys.push(inner.to_owned());
                keys.extend(rest.split('.').filter(|k| !k.is_empty()).map(str::to_owned));
            }
            None => keys.extend(part.split('.').filter(|k| !k.is_empty()).map(str::to_owned)),
        }
    }
    for key in &keys {
        let key = key.as_str();
        let Value::Mapping(m) = cur else {
            bail!("`{path}`: `{key}` is not inside a mapping")
        };
        cur = m
            .entry(key.into())
            .or_insert(Value::Mapping(Default::default()));
    }
    *cur = serde_yaml::from_str(value)
        .with_context(|| format!("`{path}={value}`: not a YAML value"))?;
    Ok(())
}

/// Reads `template`, applies `r` then the `KEY.PATH=VALUE` overrides, writes `out`.
pub(crate) fn write_config(
    template: &Path,
    r: &Rewrite,
    overrides: &[String],
    out: &Path,
) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(template)
        .with_context(|| format!("reading {}", template.display()))?;
    let mut v: Value =
        serde_yaml::from_str(&text).with_context(|| format!("parsing {}", template.display()))?;
    rewrite_value(&mut v, None, None, r);
    // Progress line every second (our own sampling of the connector's view), when it has one.
    if let Some(Value::Mapping(m)) = v.get_mut("metrics") {
        m.insert("progress-interval".into(), "1s".into());
        m.insert("address".into(), r.metrics_addr.clone().into());
    }
    for o in overrides {
        let (k, val) = o
            .split_once('=')
            .with_context(|| format!("override `{o}`: expected KEY.PATH=VALUE"))?;
        set_path(&mut v, k, val)?;
    }
    let header = format!(
        "# Written by form-etl-bench from {}; edit that file, not this one.\n",
        template.display()
    );
    std::fs::write(out, header + &serde_yaml::to_string(&v)?)
        .with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}

/// The environment for the connectors' secrets (the local cluster's S3 credentials; any other
/// declared secret gets a placeholder).
pub(crate) fn secret_env(template: &Path) -> Vec<(String, String)> {
    let Ok(text) = std::fs::read_to_string(template) else {
        return Vec::new();
    };
    let Ok(v) = serde_yaml::from_str::<Value>(&text) else {
        return Vec::new();
    };
    let Some(Value::Sequence(list)) = v.get("meta").and_then(|m| m.get("secrets")) else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|s| s.get("name").and_then(Value::as_str))
        .map(|name| {
            let value = match name {
                n if n.contains("ACCESS_KEY_ID") => "admin",
                n if n.contains("SECRET_ACCESS_KEY") => "password",
                _ => "form-etl-bench",
            };
            (name.to_owned(), value.to_owned())
        })
        .collect()
}

/// A connector binary and its committed YAML.
#[derive(Debug, Clone)]
pub(crate) struct Connector {
    pub(crate) name: &'static str,
    /// What precedes the record count in its progress line.
    pub(crate) progress_marker: &'static str,
    pub(crate) bin: PathBuf,
    pub(crate) template: PathBuf,
}

impl Connector {
    /// Why it cannot run, if it cannot.
    pub(crate) fn unavailable(&self) -> Option<String> {
        if !self.bin.is_file() {
            return Some(format!(
                "{} not built ({} missing)",
                self.name,
                self.bin.display()
            ));
        }
        if !self.template.is_file() {
            return Some(format!(
                "{} has no config ({} missing)",
                self.name,
                self.template.display()
            ));
        }
        None
    }

    /// `bin --config cfg --check-config`.
    pub(crate) fn check(&self, cfg: &Path) -> anyhow::Result<()> {
        let out = Command::new(&self.bin)
            .args([
                "--config".as_ref(),
                cfg.as_os_str(),
                "--check-config".as_ref(),
            ])
            .envs(secret_env(&self.template))
            .output()
            .with_context(|| format!("running {}", self.bin.display()))?;
        if !out.status.success() {
            bail!(
                "{} --check-config {}: {}{}",
                self.name,
                cfg.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// `bin --config cfg --max-records n`, secrets in the environment.
    pub(crate) fn command(&self, cfg: &Path, max_records: u64) -> Command {
        let mut c = Command::new(&self.bin);
        c.args(["--config".as_ref(), cfg.as_os_str()])
            .args(["--max-records", &max_records.to_string()])
            .envs(secret_env(&self.template));
        if std::env::var_os("RUST_LOG").is_none() {
            c.env("RUST_LOG", "info");
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_topics_group_prefix_and_ports() {
        let dir = std::env::temp_dir().join(format!("form-etl-bench-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let t = dir.join("t.yaml");
        std::fs::write(
            &t,
            "apiVersion: 0.2.0\nmeta:\n  name: form-s3-sink\n  topic:\n    meta:\n      name: form.enriched\n  secrets:\n    - name: S3_ACCESS_KEY_ID\n\
             kafka:\n  brokers: 127.0.0.1:9092\n  topic: form.enriched\n  group: form-s3-sink\ndlq:\n  topic: form.events.dlq\n\
             metrics:\n  address: 127.0.0.1:9465\n  progress-interval: 10s\ns3:\n  prefix: form-etl\n  bucket: output\n\
             enrich:\n  uri: http://127.0.0.1:8000\n",
        )
        .unwrap();
        let r = Rewrite {
            name: "n".into(),
            events_topic: "e".into(),
            enriched_topic: "en".into(),
            dlq_topic: "d".into(),
            group: "g".into(),
            brokers: "b:1".into(),
            api_base: "http://127.0.0.1:18000".into(),
            metrics_addr: "127.0.0.1:19465".into(),
            prefix: "p/x".into(),
            s3_endpoint: "http://127.0.0.1:9000".into(),
            bucket: "output".into(),
        };
        let out = dir.join("o.yaml");
        write_config(
            &t,
            &r,
            &[
                "enrich.concurrency=256".into(),
                "kafka.properties[fetch.wait.max.ms]=20".into(),
            ],
            &out,
        )
        .unwrap();
        let v: Value = serde_yaml::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
        assert_eq!(v["meta"]["name"], "n");
        assert_eq!(v["meta"]["topic"]["meta"]["name"], "en");
        assert_eq!(v["kafka"]["topic"], "en");
        assert_eq!(v["kafka"]["group"], "g");
        assert_eq!(v["kafka"]["brokers"], "b:1");
        assert_eq!(v["dlq"]["topic"], "d");
        assert_eq!(v["metrics"]["address"], "127.0.0.1:19465");
        assert_eq!(v["metrics"]["progress-interval"], "1s");
        assert_eq!(v["s3"]["prefix"], "p/x");
        assert_eq!(v["enrich"]["uri"], "http://127.0.0.1:18000");
        assert_eq!(v["enrich"]["concurrency"], 256);
        assert_eq!(v["kafka"]["properties"]["fetch.wait.max.ms"], 20);
        assert_eq!(
            secret_env(&t),
            vec![("S3_ACCESS_KEY_ID".to_owned(), "admin".to_owned())]
        );
    }
}

//! The flags every connector binary has. Flatten [`CommonArgs`] into the binary's clap parser.

use std::path::{Path, PathBuf};

use crate::config::{self, ConnectorConfig};
use crate::instance::{self, Instance, InstanceError};
use crate::secret::SecretStore;
use crate::telemetry::LogFormat;

/// `--config`, `--secrets`, `--check-config`, `--max-records`, `--log-format`, `--instance-id`,
/// `--state-dir`.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// Connector YAML file (default: the connector's file under `config/`).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// File of `KEY=VALUE` lines for `${{ secrets.KEY }}`; the environment is used otherwise.
    #[arg(long, value_name = "FILE")]
    pub secrets: Option<PathBuf>,
    /// Validate the config (and secrets) and exit: status 0 if valid, 2 if not.
    #[arg(long)]
    pub check_config: bool,
    /// Stop once this many input records are fully processed and committed, then exit 0.
    #[arg(long, value_name = "N")]
    pub max_records: Option<u64>,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// This instance's stable id (e.g. a Kubernetes pod name): its Kafka transactional id and
    /// static group membership derive from it, so a restart fences its dead predecessor at once.
    /// Must differ between running instances. Default: `{hostname}-{n}`, `n` the first free
    /// slot under `--state-dir`.
    #[arg(long, env = "FORM_ETL_INSTANCE_ID", value_name = "ID")]
    pub instance_id: Option<String>,
    /// Directory of the instance lock files (`{name}.instance-{n}.lock`), created if missing.
    #[arg(
        long,
        env = "FORM_ETL_STATE_DIR",
        value_name = "DIR",
        default_value = instance::DEFAULT_STATE_DIR
    )]
    pub state_dir: PathBuf,
}

impl CommonArgs {
    /// The config path: `--config`, else `default`.
    pub fn config_path<'a>(&'a self, default: &'a str) -> &'a Path {
        self.config.as_deref().unwrap_or(Path::new(default))
    }

    /// This instance's id for the connector named `connector_name` (its `meta.name`): see
    /// [`Instance::acquire`]. Keep the result until exit (it holds the slot's lock).
    pub fn instance(&self, connector_name: &str) -> Result<Instance, InstanceError> {
        Instance::acquire(&self.state_dir, connector_name, self.instance_id.as_deref())
    }

    /// Loads secrets and the config. With `--check-config`, prints the verdict and exits
    /// (0 valid, 2 invalid); otherwise an invalid config is also exit status 2 with the message.
    pub fn load_config_or_exit<C: ConnectorConfig>(&self, default: &str) -> C {
        let path = self.config_path(default);
        let result = SecretStore::load(self.secrets.as_deref())
            .map_err(|e| e.to_string())
            .and_then(|s| config::load::<C>(path, &s).map_err(|e| e.to_string()));
        match result {
            Ok(cfg) => {
                if self.check_config {
                    let m = cfg.meta();
                    println!(
                        "{}: OK ({} {} `{}` → topic `{}`)",
                        path.display(),
                        m.connector_type,
                        m.version,
                        m.name,
                        m.topic
                    );
                    std::process::exit(0);
                }
                cfg
            }
            Err(e) => {
                eprintln!("invalid config: {e}");
                std::process::exit(2);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        common: CommonArgs,
    }

    #[test]
    fn instance_flags_and_their_defaults() {
        let c = Cli::try_parse_from(["x"]).unwrap().common;
        if std::env::var_os("FORM_ETL_STATE_DIR").is_none() {
            assert_eq!(c.state_dir, Path::new(instance::DEFAULT_STATE_DIR));
        }
        if std::env::var_os("FORM_ETL_INSTANCE_ID").is_none() {
            assert_eq!(c.instance_id, None);
        }
        let c = Cli::try_parse_from(["x", "--instance-id", "pod-3", "--state-dir", "/tmp/s"])
            .unwrap()
            .common;
        assert_eq!(c.instance_id.as_deref(), Some("pod-3"));
        assert_eq!(c.state_dir, Path::new("/tmp/s"));
        let dir = tempfile::tempdir().unwrap();
        let c = Cli::try_parse_from(["x", "--state-dir", dir.path().to_str().unwrap()])
            .unwrap()
            .common;
        let i = c.instance("src").unwrap();
        assert!(i.id.ends_with("-0"), "{}", i.id);
        assert_eq!(i.slot, Some(0));
    }
}

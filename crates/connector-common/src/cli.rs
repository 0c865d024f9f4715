//! The flags every connector binary has. Flatten [`CommonArgs`] into the binary's clap parser.

use std::path::{Path, PathBuf};

use crate::config::{self, ConnectorConfig};
use crate::secret::SecretStore;
use crate::telemetry::LogFormat;

/// `--config`, `--secrets`, `--check-config`, `--max-records`, `--log-format`.
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
}

impl CommonArgs {
    /// The config path: `--config`, else `default`.
    pub fn config_path<'a>(&'a self, default: &'a str) -> &'a Path {
        self.config.as_deref().unwrap_or(Path::new(default))
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

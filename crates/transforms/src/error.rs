//! Errors of the runner (setting a chain up). Record-level failures are
//! [`crate::TransformError`] values in `process`'s results, not errors of this type.

use std::path::PathBuf;

use thiserror::Error;

/// Why a chain (or one of its modules) could not be set up.
#[derive(Debug, Error)]
pub enum TransformsError {
    /// No `.wasm` file for `uses`.
    #[error(
        "SmartModule `{uses}` not found; looked at: {}. Set FORM_ETL_SMARTMODULE_DIR, give a path ending in .wasm, or run `make build-smartmodules`",
        .looked_at.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    NotFound {
        /// The `uses` value.
        uses: String,
        /// Every path tried.
        looked_at: Vec<PathBuf>,
    },
    /// `uses` is neither a `.wasm` path nor a plain name.
    #[error(
        "transforms `uses: {uses}`: expected a module name (`form-flatten`) or a path ending in .wasm"
    )]
    BadName {
        /// The `uses` value.
        uses: String,
    },
    /// The file could not be read.
    #[error("reading SmartModule {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The engine refused the module (not wasm, wrong imports, no SmartModule export, init
    /// failed).
    #[error("loading SmartModule chain ({modules}): {message}")]
    Load {
        /// The modules, `uses@sha256`.
        modules: String,
        /// The engine's message.
        message: String,
    },
    /// The module loaded but did not give the expected rows for the canary record.
    #[error("SmartModule chain ({modules}) failed the canary record: {message}")]
    Canary {
        /// The modules, `uses@sha256`.
        modules: String,
        /// What went wrong.
        message: String,
    },
    /// The background watcher thread could not be started.
    #[error("starting the SmartModule watcher thread: {0}")]
    Thread(std::io::Error),
}

//! `uses` → `.wasm` file.

use std::path::{Path, PathBuf};

use crate::error::TransformsError;

/// Environment variable: directories (a path list) searched first for a module by name.
pub const SMARTMODULE_DIR_ENV: &str = "FORM_ETL_SMARTMODULE_DIR";
/// Where `make build-smartmodules` puts the modules, relative to the current directory.
pub const DEFAULT_SMARTMODULE_DIR: &str = "target/wasm32-unknown-unknown/release";

/// Resolves `uses` against the current directory (see [`resolve_module_from`]).
pub fn resolve_module(uses: &str) -> Result<PathBuf, TransformsError> {
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    resolve_module_from(uses, &cwd)
}

/// Resolves `uses`: a path ending in `.wasm` is taken as is (relative to `cwd`); a name
/// becomes `<name with - as _>.wasm`, searched in the directories of
/// `$FORM_ETL_SMARTMODULE_DIR`, then in `cwd/target/wasm32-unknown-unknown/release`. The
/// error lists every place looked at.
pub fn resolve_module_from(uses: &str, cwd: &Path) -> Result<PathBuf, TransformsError> {
    if uses.ends_with(".wasm") {
        let path = cwd.join(uses);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(TransformsError::NotFound {
                uses: uses.to_owned(),
                looked_at: vec![path],
            })
        };
    }
    if uses.is_empty() || uses.contains(['/', '\\']) {
        return Err(TransformsError::BadName {
            uses: uses.to_owned(),
        });
    }
    let file = format!("{}.wasm", uses.replace('-', "_"));
    let mut dirs: Vec<PathBuf> = std::env::var_os(SMARTMODULE_DIR_ENV)
        .map(|v| {
            std::env::split_paths(&v)
                .filter(|p| !p.as_os_str().is_empty())
                .collect()
        })
        .unwrap_or_default();
    dirs.push(PathBuf::from(DEFAULT_SMARTMODULE_DIR));
    let mut looked_at = Vec::with_capacity(dirs.len());
    for dir in dirs {
        let path = cwd.join(dir).join(&file);
        if path.is_file() {
            return Ok(path);
        }
        looked_at.push(path);
    }
    Err(TransformsError::NotFound {
        uses: uses.to_owned(),
        looked_at,
    })
}

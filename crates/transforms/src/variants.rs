//! Test builds of the `form-flatten` SmartModule (feature `test-support`; never deployed):
//! the module compiled with one of its test features (`upper-title`, `always-fail`,
//! `identity`), for the hot-swap tests of this crate and of the sink.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Builds `smartmodules/form-flatten` (under `workspace_root`) with `--features feature` for
/// `wasm32-unknown-unknown`, in a target directory of its own per feature (two tests building
/// different features at once never copy each other's module), and copies the module to
/// `dest`.
pub fn build_flatten_variant(
    workspace_root: &Path,
    feature: &str,
    dest: &Path,
) -> Result<(), String> {
    let target_dir: PathBuf = workspace_root
        .join("target/form-flatten-variants")
        .join(feature);
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let status = Command::new(cargo)
        .current_dir(workspace_root)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-unknown-unknown",
            "--manifest-path",
            "smartmodules/form-flatten/Cargo.toml",
            "--features",
            feature,
            "--target-dir",
        ])
        .arg(&target_dir)
        .status()
        .map_err(|e| format!("running cargo: {e}"))?;
    if !status.success() {
        return Err(format!(
            "building form-flatten --features {feature} failed ({status})"
        ));
    }
    let built = target_dir.join("wasm32-unknown-unknown/release/form_flatten.wasm");
    std::fs::copy(&built, dest)
        .map(drop)
        .map_err(|e| format!("copying {} to {}: {e}", built.display(), dest.display()))
}

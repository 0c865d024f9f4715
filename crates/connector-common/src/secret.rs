//! Secrets: a value type that never prints itself, and the store `${{ secrets.NAME }}` reads from.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};

/// A secret value (API token, password). `Debug` and `Display` print `****`; read it with
/// [`Secret::expose`] only where it is handed to a client.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret value itself. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("****")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("****")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

/// Errors reading a secrets file.
#[derive(Debug, thiserror::Error)]
pub enum SecretsFileError {
    /// The file could not be read.
    #[error("reading secrets file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A line is not `KEY=VALUE`.
    #[error("secrets file {path}, line {line}: expected KEY=VALUE")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
    },
}

/// Where `${{ secrets.NAME }}` values come from: a `--secrets` file (`KEY=VALUE` lines, `#`
/// comments, blank lines ignored) first, then the process environment.
#[derive(Clone, Default)]
pub struct SecretStore {
    file: HashMap<String, Secret>,
    use_env: bool,
}

impl fmt::Debug for SecretStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<_> = self.file.keys().collect();
        names.sort();
        f.debug_struct("SecretStore")
            .field("file_names", &names)
            .field("use_env", &self.use_env)
            .finish()
    }
}

impl SecretStore {
    /// Secrets from the optional file, then the environment.
    pub fn load(file: Option<&Path>) -> Result<Self, SecretsFileError> {
        let mut store = Self {
            file: HashMap::new(),
            use_env: true,
        };
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| SecretsFileError::Read {
                path: path.to_owned(),
                source,
            })?;
            store.file = parse_secrets(&text).map_err(|line| SecretsFileError::Syntax {
                path: path.to_owned(),
                line,
            })?;
        }
        Ok(store)
    }

    /// A store with exactly these values and no environment lookup (tests, tools).
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Self {
            file: pairs
                .into_iter()
                .map(|(k, v)| (k.to_owned(), Secret::new(v)))
                .collect(),
            use_env: false,
        }
    }

    /// The value of `name`, if set.
    pub fn get(&self, name: &str) -> Option<Secret> {
        if let Some(s) = self.file.get(name) {
            return Some(s.clone());
        }
        if self.use_env {
            return std::env::var(name).ok().map(Secret);
        }
        None
    }
}

/// Parses `KEY=VALUE` lines; `Err(line_number)` on a bad line.
fn parse_secrets(text: &str) -> Result<HashMap<String, Secret>, usize> {
    let mut out = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (k, v) = line.split_once('=').ok_or(i + 1)?;
        let k = k.trim();
        if k.is_empty() {
            return Err(i + 1);
        }
        out.insert(k.to_owned(), Secret::new(v.trim()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_never_prints() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s} {s:?}"), "**** ****");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn secrets_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.env");
        std::fs::write(&p, "# comment\n\nTOKEN = abc=def\nOTHER=x\n").unwrap();
        let store = SecretStore::load(Some(&p)).unwrap();
        assert_eq!(store.get("TOKEN").unwrap().expose(), "abc=def");
        std::fs::write(&p, "TOKEN\n").unwrap();
        let err = SecretStore::load(Some(&p)).unwrap_err().to_string();
        assert!(err.ends_with("line 1: expected KEY=VALUE"), "{err}");
    }
}

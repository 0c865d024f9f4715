//! A stable id per running instance of a connector, for its Kafka transactional id and its
//! static group membership (`group.instance.id`).
//!
//! Why stable: a restarted instance that comes back with the same transactional id fences the
//! dead process's producer and aborts its open transaction at once (`init_transactions`), and
//! one that comes back with the same `group.instance.id` takes its old place in the group
//! without a rebalance. With an id per process, both wait for timeouts (the transaction's and
//! the dead member's session: about 45 s with Kafka's defaults).
//!
//! Where the id comes from ([`Instance::acquire`]):
//! - configured (`--instance-id`, env `FORM_ETL_INSTANCE_ID`; e.g. a Kubernetes pod name or a
//!   StatefulSet ordinal): used as it is. Two instances must never share one: the second
//!   fences the first. On one machine a lock file catches that mistake.
//! - else `{hostname}-{n}`, `n` the first free slot `0, 1, …` among the lock files
//!   `{state_dir}/{connector_name}.instance-{n}.lock`. The lock is an `flock`, released by the
//!   kernel when the process dies however it dies, so a restart after `kill -9` takes the same
//!   slot again, and two instances started from the same config on one machine take different
//!   slots. Lock files are never deleted (deleting one that another process is opening would let
//!   two processes hold "the same" slot on two inodes).
//!
//! Hostnames must differ between machines (they do in containers and on Kubernetes); where they
//! do not, configure the id.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// Default `--state-dir`: relative to the working directory.
pub const DEFAULT_STATE_DIR: &str = ".form-etl";

/// Slots tried before giving up (instances of one connector on one machine).
pub const MAX_SLOTS: u32 = 1024;

/// Longest id accepted: Kafka allows 249 characters in a `group.instance.id`, and the
/// connectors put a prefix (the connector's name) in front of it.
pub const MAX_ID_LEN: usize = 128;

/// A running instance's id, holding its lock for as long as it lives (keep it until exit).
#[derive(Debug)]
pub struct Instance {
    /// The id: the configured one, or `{hostname}-{slot}`.
    pub id: String,
    /// The slot taken, when the id was not configured.
    pub slot: Option<u32>,
    /// The lock file held (none for a configured id whose state directory is not writable).
    lock: Option<(PathBuf, File)>,
}

/// Why no instance id could be had.
#[derive(Debug, Error)]
pub enum InstanceError {
    /// A configured id Kafka would refuse (or that is too long).
    #[error(
        "instance id {id:?} {why} (allowed: 1 to {MAX_ID_LEN} of `A-Z a-z 0-9 . _ -`, as Kafka requires of a group.instance.id)"
    )]
    InvalidId {
        /// The id as given.
        id: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The configured id is held by another process on this machine.
    #[error(
        "instance id {id:?} is in use by another process on this machine (lock {}): two instances with one id fence each other",
        path.display()
    )]
    InUse {
        /// The id.
        id: String,
        /// Its lock file.
        path: PathBuf,
    },
    /// The state directory or a lock file could not be created or locked.
    #[error("instance lock {}: {source}", path.display())]
    Io {
        /// The directory or file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Every slot is taken.
    #[error(
        "{connector}: all {MAX_SLOTS} instance slots under {} are taken",
        dir.display()
    )]
    NoFreeSlot {
        /// The connector's name.
        connector: String,
        /// The state directory.
        dir: PathBuf,
    },
}

impl Instance {
    /// The id of this instance of `connector_name` (the connector's `meta.name`): `configured`
    /// if given, else `{hostname}-{n}` for the first free lock slot `n` under `state_dir`
    /// (created if missing). See the module documentation.
    pub fn acquire(
        state_dir: &Path,
        connector_name: &str,
        configured: Option<&str>,
    ) -> Result<Instance, InstanceError> {
        Self::acquire_on(&hostname(), state_dir, connector_name, configured)
    }

    /// [`Instance::acquire`] with the host name given.
    fn acquire_on(
        host: &str,
        state_dir: &Path,
        connector_name: &str,
        configured: Option<&str>,
    ) -> Result<Instance, InstanceError> {
        let name = sanitize(connector_name);
        if let Some(id) = configured {
            check_id(id)?;
            // The lock only catches a duplicate on this machine: an unwritable state directory
            // (a read-only container filesystem) does not stop a configured instance.
            if std::fs::create_dir_all(state_dir).is_err() {
                return Ok(Instance {
                    id: id.to_owned(),
                    slot: None,
                    lock: None,
                });
            }
            let path = state_dir.join(format!("{name}.id-{id}.lock"));
            return match try_lock(&path, id) {
                Ok(Some(file)) => Ok(Instance {
                    id: id.to_owned(),
                    slot: None,
                    lock: Some((path, file)),
                }),
                Ok(None) => Err(InstanceError::InUse {
                    id: id.to_owned(),
                    path,
                }),
                Err(_) => Ok(Instance {
                    id: id.to_owned(),
                    slot: None,
                    lock: None,
                }),
            };
        }
        std::fs::create_dir_all(state_dir).map_err(|source| InstanceError::Io {
            path: state_dir.to_owned(),
            source,
        })?;
        let host = sanitize(host);
        let host: String = host.chars().take(MAX_ID_LEN - 6).collect();
        for n in 0..MAX_SLOTS {
            let path = state_dir.join(format!("{name}.instance-{n}.lock"));
            let id = format!("{host}-{n}");
            match try_lock(&path, &id) {
                Ok(Some(file)) => {
                    return Ok(Instance {
                        id,
                        slot: Some(n),
                        lock: Some((path, file)),
                    });
                }
                Ok(None) => continue,
                Err(source) => return Err(InstanceError::Io { path, source }),
            }
        }
        Err(InstanceError::NoFreeSlot {
            connector: connector_name.to_owned(),
            dir: state_dir.to_owned(),
        })
    }

    /// The lock file held, if any.
    pub fn lock_path(&self) -> Option<&Path> {
        self.lock.as_ref().map(|(p, _)| p.as_path())
    }
}

/// Locks `path` (created if missing) without waiting: `Some(file)` holding the lock, `None` if
/// another open file holds it. The file then says who holds it (for people, not for us).
fn try_lock(path: &Path, id: &str) -> std::io::Result<Option<File>> {
    // Not truncated on open: that would erase the holder's note before we know we hold it.
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => return Ok(None),
        Err(TryLockError::Error(e)) => return Err(e),
    }
    file.set_len(0)?;
    writeln!(file, "pid {}\nid {id}", std::process::id())?;
    Ok(Some(file))
}

/// Checks a configured id.
fn check_id(id: &str) -> Result<(), InstanceError> {
    let why = if id.is_empty() {
        Some("is empty")
    } else if id.len() > MAX_ID_LEN {
        Some("is too long")
    } else if !id.bytes().all(allowed) {
        Some("has characters Kafka does not allow")
    } else if id == "." || id == ".." {
        Some("is a dot path")
    } else {
        None
    };
    match why {
        Some(why) => Err(InstanceError::InvalidId {
            id: id.to_owned(),
            why,
        }),
        None => Ok(()),
    }
}

fn allowed(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
}

/// `s` with every character Kafka does not allow in an id (and a file name would not want)
/// replaced by `-`; `localhost` for an empty one.
fn sanitize(s: &str) -> String {
    let out: String = s
        .trim()
        .bytes()
        .map(|b| if allowed(b) { b as char } else { '-' })
        .collect();
    match out.as_str() {
        "" | "." | ".." => "localhost".to_owned(),
        _ => out,
    }
}

/// This machine's host name: the kernel's (`/proc/sys/kernel/hostname`, what `uname -n` says),
/// else `$HOSTNAME`, else `localhost`.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "localhost".to_owned())
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    #[test]
    fn instances_of_one_connector_take_distinct_slots_and_a_restart_gets_its_own_back() {
        let dir = tempfile::tempdir().unwrap();
        let a = Instance::acquire_on("box", dir.path(), "src", None).unwrap();
        let b = Instance::acquire_on("box", dir.path(), "src", None).unwrap();
        assert_eq!((a.id.as_str(), a.slot), ("box-0", Some(0)));
        assert_eq!((b.id.as_str(), b.slot), ("box-1", Some(1)));
        // Another connector has slots of its own.
        let other = Instance::acquire_on("box", dir.path(), "sink", None).unwrap();
        assert_eq!(other.id, "box-0");
        // Instance 0 ends: its restart takes slot 0 again, not 2.
        drop(a);
        let again = Instance::acquire_on("box", dir.path(), "src", None).unwrap();
        assert_eq!(again.id, "box-0");
        let c = Instance::acquire_on("box", dir.path(), "src", None).unwrap();
        assert_eq!(c.id, "box-2");
        let note = std::fs::read_to_string(again.lock_path().unwrap()).unwrap();
        assert!(
            note.contains(&format!("pid {}", std::process::id())),
            "{note}"
        );
        assert!(note.contains("id box-0"), "{note}");
    }

    /// The kernel releases the lock of a process killed with SIGKILL: the next one gets slot 0.
    #[test]
    fn a_killed_holder_frees_its_slot() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("src.instance-0.lock");
        // Another process takes the same flock(2) lock with flock(1) and keeps it open in the
        // process we then kill (the shell execs into sleep with the locked descriptor).
        let mut holder = std::process::Command::new("sh")
            .arg("-c")
            .arg(r#"exec 9>>"$0"; flock -x 9; exec sleep 60"#)
            .arg(&path)
            .spawn()
            .expect("sh and flock(1) (util-linux) are installed");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let i = Instance::acquire_on("box", dir.path(), "src", None).unwrap();
            if i.id == "box-1" {
                break; // the other process holds slot 0
            }
            drop(i);
            assert!(Instant::now() < deadline, "flock never took slot 0");
            std::thread::sleep(Duration::from_millis(20));
        }
        holder.kill().unwrap(); // SIGKILL
        holder.wait().unwrap();
        let i = Instance::acquire_on("box", dir.path(), "src", None).unwrap();
        assert_eq!(i.id, "box-0");
    }

    #[test]
    fn a_configured_id_is_used_as_is_and_only_once_per_machine() {
        let dir = tempfile::tempdir().unwrap();
        let a = Instance::acquire_on("box", dir.path(), "src", Some("pod-7")).unwrap();
        assert_eq!((a.id.as_str(), a.slot), ("pod-7", None));
        let err = Instance::acquire_on("box", dir.path(), "src", Some("pod-7")).unwrap_err();
        assert!(matches!(err, InstanceError::InUse { .. }), "{err}");
        assert!(err.to_string().contains("fence"), "{err}");
        // A configured id does not take a slot.
        let b = Instance::acquire_on("box", dir.path(), "src", None).unwrap();
        assert_eq!(b.id, "box-0");
        // An unwritable state directory does not stop a configured instance.
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, "").unwrap();
        let c = Instance::acquire_on("box", &file.join("state"), "src", Some("pod-8")).unwrap();
        assert_eq!((c.id.as_str(), c.lock_path()), ("pod-8", None));
        // …but an automatic one needs its slots.
        assert!(Instance::acquire_on("box", &file.join("state"), "src", None).is_err());
    }

    #[test]
    fn ids_kafka_would_refuse_are_refused_and_host_names_cleaned() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["", "a b", "a/b", "é", "..", &"x".repeat(MAX_ID_LEN + 1)] {
            let err = Instance::acquire_on("box", dir.path(), "src", Some(bad)).unwrap_err();
            assert!(
                matches!(err, InstanceError::InvalidId { .. }),
                "{bad:?}: {err}"
            );
        }
        let i = Instance::acquire_on("my host/x", dir.path(), "a/b c", None).unwrap();
        assert_eq!(i.id, "my-host-x-0");
        assert!(i.lock_path().unwrap().ends_with("a-b-c.instance-0.lock"));
        let i = Instance::acquire_on("", dir.path(), "src", None).unwrap();
        assert_eq!(i.id, "localhost-0");
        assert!(!hostname().is_empty());
    }
}

#![doc = include_str!("../README.md")]

pub mod cli;
pub mod config;
pub mod dlq;
pub mod duration;
pub mod eos;
pub mod instance;
pub mod kafka;
pub mod redrive;
pub mod retry;
pub mod secret;
pub mod shutdown;
pub mod size;
pub mod telemetry;

pub use bytesize::ByteSize;
pub use config::{ConfigError, ConnectorConfig, MetaConfig};
pub use secret::{Secret, SecretStore};
pub use shutdown::{Shutdown, shutdown_signal};

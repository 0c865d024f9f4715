#![doc = include_str!("../README.md")]

mod chain;
mod config;
mod error;
mod resolve;
#[cfg(feature = "test-support")]
pub mod variants;

pub use chain::{
    ChainOptions, DEFAULT_POLL_INTERVAL, DEFAULT_REBUILD_EVERY_RECORDS, Input,
    MAX_CALL_INPUT_BYTES, ModuleDigest, Output, REBUILD_AFTER_CALL_BYTES, STORE_MEMORY_LIMIT,
    TransformChain, TransformError,
};
pub use config::TransformStep;
pub use error::TransformsError;
pub use resolve::{
    DEFAULT_SMARTMODULE_DIR, SMARTMODULE_DIR_ENV, resolve_module, resolve_module_from,
};

//! Configuration: the TOML file ([`raw`]) and its validated runtime form
//! ([`Config`]).
//!
//! A file is parsed and checked exactly once; the proxy only ever sees a
//! [`Config`], so the hot path never re-parses or re-validates anything.

pub mod raw;

mod checked;

pub use checked::{BackendConfig, Config, Keepalive, SessionRules};
pub use raw::{Algorithm, InitialState, StoreKind};

use std::path::{Path, PathBuf};

/// Why a configuration could not be used. The `Display` form is one line
/// naming the file, the key and the problem, as `stickgate check` prints it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read at all.
    #[error("{file}: cannot read: {source} (check the path and its permissions)")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    /// TOML syntax or type error, or an unknown key.
    #[error("{file}:{line}: {message}")]
    Parse {
        file: PathBuf,
        line: usize,
        message: String,
    },
    /// The file parsed but a value is not acceptable.
    #[error("{file}: {key}: {problem}")]
    Invalid {
        file: PathBuf,
        key: String,
        problem: String,
    },
}

/// Read, parse and validate a configuration file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        file: path.to_path_buf(),
        source,
    })?;
    from_str(&text, path)
}

/// Parse and validate configuration text; `path` is only used in messages.
pub fn from_str(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let raw: raw::RawConfig = toml::from_str(text).map_err(|e| {
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].lines().count().max(1))
            .unwrap_or(1);
        ConfigError::Parse {
            file: path.to_path_buf(),
            line,
            message: e.message().replace('\n', " "),
        }
    })?;
    checked::validate(raw).map_err(|(key, problem)| ConfigError::Invalid {
        file: path.to_path_buf(),
        key,
        problem,
    })
}

//! Configuration: the TOML file ([`raw`]) and its validated runtime form
//! ([`Config`]).
//!
//! A file is parsed and checked exactly once; the proxy only ever sees a
//! [`Config`], so the hot path never re-parses or re-validates anything.

pub mod ajp;
pub mod raw;

mod checked;

pub use checked::{
    redact_url, AccessLog, AdminRules, AdminToken, BackendConfig, Config, Keepalive, SessionRules,
};
pub use raw::{AccessLogFormat, Algorithm, CpuAffinity, StoreKind};

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
        let at = e.span().map(|s| s.start.min(text.len())).unwrap_or(0);
        let message = e.message().replace('\n', " ");
        ConfigError::Parse {
            file: path.to_path_buf(),
            line: text[..at].matches('\n').count() + 1,
            message: match key_at(text, at) {
                Some(key) if !message.contains(&key) => format!("{key}: {message}"),
                _ => message,
            },
        }
    })?;
    checked::validate(raw).map_err(|(key, problem)| ConfigError::Invalid {
        file: path.to_path_buf(),
        key,
        problem,
    })
}

/// The dotted key (`health.interval`) of the `key = value` line holding
/// byte `at`, so a type error names its key, not only its line.
fn key_at(text: &str, at: usize) -> Option<String> {
    let start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let line = text[start..].lines().next()?;
    let (key, _) = line.split_once('=')?;
    let key = key.trim().trim_matches('"');
    if key.is_empty() || key.starts_with('[') || key.starts_with('#') {
        return None;
    }
    let section = text[..start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(['[', ']']).trim());
    Some(match section {
        Some(s) => format!("{s}.{key}"),
        None => key.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BACKENDS: &str = "[[backend]]\nroute = \"t1\"\nurl = \"http://127.0.0.1:8081\"\n[[backend]]\nroute = \"t2\"\nurl = \"http://127.0.0.1:8082\"\nweight = 3\ndomain = \"A\"\n";

    fn parse(extra: &str) -> Result<Config, ConfigError> {
        from_str(&format!("{extra}\n{BACKENDS}"), Path::new("t.toml"))
    }

    #[test]
    fn defaults_are_sane() {
        let c = parse("").unwrap();
        assert_eq!(&*c.session.cookie, "JSESSIONID");
        assert_eq!(c.session.path_parameter.as_deref(), Some("jsessionid"));
        assert!(c.upstream.connect_timeout <= std::time::Duration::from_secs(1));
        assert!(c.server.tcp_keepalive.time <= std::time::Duration::from_secs(300));
        assert_eq!(c.backends[1].weight, 3);
        assert_eq!(c.backends[1].domain.as_deref(), Some("A"));
        assert_eq!(c.admin.history_interval.as_secs(), 10);
    }

    #[test]
    fn threads_default_to_the_cores_and_can_be_set() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(parse("").unwrap().server.threads(), cores);
        let c = parse("[server]\nlisten = [\"127.0.0.1:0\"]\nthreads = 3").unwrap();
        assert_eq!(c.server.threads(), 3);
    }

    #[test]
    fn durations_parse() {
        let c = parse("[session]\nidle_timeout = \"90s\"\n[upstream]\nconnect_timeout = \"250ms\"")
            .unwrap();
        assert_eq!(c.session.idle_timeout.as_secs(), 90);
        assert_eq!(c.upstream.connect_timeout.as_millis(), 250);
    }

    #[test]
    fn errors_are_one_line_naming_file_and_key() {
        let cases = [
            ("[server]\nlisten = [\"127.0.0.1:80\"]\nbogus = 1", "bogus"),
            ("[health]\ninterval = \"soon\"", "t.toml:2: health.interval"),
            ("[server]\nbogus = 1", "t.toml:2"),
            (
                "[session]\nroute_separator = \"\"",
                "session.route_separator",
            ),
            ("[upstream]\nretries = 9", "upstream.retries"),
            ("[server]\nthreads = 0", "server.threads"),
            ("[server]\nthreads = 100000", "server.threads"),
            ("[store]\nkind = \"etcd\"", "etcd"),
            ("[admin]\nlisten = \"0.0.0.0:9901\"", "admin.listen"),
            (
                "[admin]\nhistory_interval = \"500ms\"",
                "admin.history_interval",
            ),
            (
                "[admin]\nhistory_interval = \"2m\"",
                "admin.history_interval",
            ),
        ];
        for (text, needle) in cases {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.starts_with("t.toml"), "{e}");
            assert!(e.contains(needle), "{e} should mention {needle}");
            assert!(!e.contains('\n'), "{e:?} must be one line");
        }
    }

    #[test]
    fn duplicate_listeners_are_refused_but_port_zero_is_not() {
        let dup = parse("[server]\nlisten = [\"127.0.0.1:8080\", \"127.0.0.1:8080\"]").unwrap_err();
        assert!(dup.to_string().contains("listed twice"), "{dup}");
        let c = parse("[server]\nlisten = [\"127.0.0.1:0\", \"127.0.0.1:0\"]").unwrap();
        assert_eq!(
            c.server.listen.len(),
            2,
            "port 0 means any free port; two are fine"
        );
    }

    #[test]
    fn backend_problems_are_named() {
        let dup = "[[backend]]\nroute = \"t1\"\nurl = \"http://a:1\"\n";
        let e = from_str(&format!("{BACKENDS}{dup}"), Path::new("t.toml")).unwrap_err();
        assert!(e.to_string().contains("backend[2].route"), "{e}");
        let e = from_str("", Path::new("t.toml")).unwrap_err();
        assert!(e.to_string().contains("no [[backend]]"), "{e}");
        let bad = "[[backend]]\nroute = \"a.b\"\nurl = \"http://a:1\"\n";
        assert!(from_str(bad, Path::new("t.toml")).is_err());
    }
}

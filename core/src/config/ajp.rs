//! The checked AJP settings of an `ajp://` backend (`ajp_secret`,
//! `ping_mode`, `ping_timeout`, `ping_after_idle`, `max_packet_size`):
//! validated once with the rest of the configuration, read by the AJP
//! client in `backend::ajp`.

use std::sync::Arc;
use std::time::Duration;

/// AJP packets are at most 8 KiB unless the connector says otherwise
/// (mod_jk's and Tomcat's `packetSize` default).
pub const DEFAULT_MAX_PACKET: usize = 8192;
/// Tomcat's largest `packetSize`.
pub const LIMIT_MAX_PACKET: usize = 65536;

/// When to send a CPing (mod_jk's `ping_mode` letters C, P and I).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PingModes {
    /// After opening a connection, before the first request (mod_jk `C`).
    pub connect: bool,
    /// Before a request on a pooled connection idle longer than
    /// `ping_after_idle` (mod_jk `P`, which pings before every request).
    pub prepost: bool,
    /// As the health check, instead of an HTTP request over AJP (mod_jk
    /// `I`).
    pub interval: bool,
}

impl PingModes {
    /// Every mode (mod_jk's `A`), the default for AJP backends: a hung
    /// Tomcat that still accepts connections is found before a request
    /// is sent to it.
    pub const ALL: PingModes = PingModes {
        connect: true,
        prepost: true,
        interval: true,
    };
}

/// The AJP settings of one backend, checked.
#[derive(Clone, PartialEq, Eq)]
pub struct AjpOptions {
    /// Tomcat's connector `secret` (sent as the AJP secret attribute).
    pub secret: Option<Arc<str>>,
    pub ping: PingModes,
    /// Longest wait for a CPong (and a CPing counts as failed past it).
    pub ping_timeout: Duration,
    /// With `prepost`: a pooled connection idle at least this long is
    /// pinged before it carries a request (zero: before every request).
    pub ping_after_idle: Duration,
    /// Largest AJP packet, header included, both ways.
    pub max_packet_size: usize,
}

impl Default for AjpOptions {
    fn default() -> Self {
        AjpOptions {
            secret: None,
            ping: PingModes::ALL,
            ping_timeout: Duration::from_secs(2),
            ping_after_idle: Duration::from_secs(1),
            max_packet_size: DEFAULT_MAX_PACKET,
        }
    }
}

impl std::fmt::Debug for AjpOptions {
    /// The secret is a credential: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AjpOptions")
            .field("secret", &self.secret.as_ref().map(|_| "***"))
            .field("ping", &self.ping)
            .field("ping_timeout", &self.ping_timeout)
            .field("ping_after_idle", &self.ping_after_idle)
            .field("max_packet_size", &self.max_packet_size)
            .finish()
    }
}

/// The AJP settings of a `[[backend]]`: `Ok(None)` for an HTTP backend
/// (which may set none of the AJP keys), the checked options for an
/// `ajp://` one; an error names the key and the problem.
pub fn check_options(
    b: &crate::config::raw::BackendSection,
    ajp: bool,
) -> Result<Option<AjpOptions>, (&'static str, String)> {
    use crate::config::raw::PingMode;
    if !ajp {
        let set = [
            ("ajp_secret", b.ajp_secret.is_some()),
            ("ajp_secret_file", b.ajp_secret_file.is_some()),
            ("ping_mode", b.ping_mode.is_some()),
            ("ping_timeout", b.ping_timeout.is_some()),
            ("ping_after_idle", b.ping_after_idle.is_some()),
            ("max_packet_size", b.max_packet_size.is_some()),
        ];
        if let Some((key, _)) = set.into_iter().find(|(_, s)| *s) {
            return Err((key, "is an AJP setting: it needs an ajp:// url".into()));
        }
        return Ok(None);
    }
    if b.http2 || b.ca_file.is_some() || b.client_cert.is_some() {
        return Err((
            "url",
            "an ajp:// backend takes no http2, ca_file or client_cert".into(),
        ));
    }
    let d = AjpOptions::default();
    let secret = match (&b.ajp_secret, &b.ajp_secret_file) {
        (Some(_), Some(_)) => {
            return Err((
                "ajp_secret_file",
                "set ajp_secret or ajp_secret_file, not both".into(),
            ))
        }
        (Some(s), None) => Some(s.clone()),
        (None, Some(f)) => Some(read_secret(f).map_err(|e| ("ajp_secret_file", e))?),
        (None, None) => None,
    };
    if secret.as_deref().is_some_and(str::is_empty) {
        return Err(("ajp_secret", "is empty".into()));
    }
    let ping = match &b.ping_mode {
        None => d.ping,
        Some(list) => PingModes {
            connect: list.contains(&PingMode::Connect),
            prepost: list.contains(&PingMode::Prepost),
            interval: list.contains(&PingMode::Interval),
        },
    };
    let ping_timeout = b.ping_timeout.unwrap_or(d.ping_timeout);
    if ping_timeout.is_zero() {
        return Err(("ping_timeout", "must be more than 0s".into()));
    }
    let max_packet_size = b.max_packet_size.unwrap_or(d.max_packet_size);
    if !(DEFAULT_MAX_PACKET..=LIMIT_MAX_PACKET).contains(&max_packet_size) {
        return Err((
            "max_packet_size",
            format!(
                "must be {}..={} (Tomcat's packetSize range)",
                DEFAULT_MAX_PACKET, LIMIT_MAX_PACKET
            ),
        ));
    }
    Ok(Some(AjpOptions {
        secret: secret.map(Into::into),
        ping,
        ping_timeout,
        ping_after_idle: b.ping_after_idle.unwrap_or(d.ping_after_idle),
        max_packet_size,
    }))
}

/// The first line of a secret file, without its line end.
fn read_secret(path: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(text.lines().next().unwrap_or("").trim_end().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn backend(keys: &str) -> Result<crate::config::Config, String> {
        let text =
            format!("[server]\nlisten = [\"127.0.0.1:0\"]\n[[backend]]\nroute = \"t1\"\n{keys}\n");
        crate::config::from_str(&text, Path::new("t.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn ajp_urls_default_to_port_8009_and_every_ping_mode() {
        let cfg = backend("url = \"ajp://10.0.0.1\"").unwrap();
        let b = &cfg.backends[0];
        assert_eq!((&*b.host, b.port), ("10.0.0.1", 8009));
        assert_eq!(b.ajp.as_deref(), Some(&AjpOptions::default()));
        let cfg = backend(
            "url = \"ajp://[::1]:8010/\"\najp_secret = \"s\"\nping_mode = [\"interval\"]\nping_timeout = \"300ms\"\nmax_packet_size = 65536",
        )
        .unwrap();
        let o = cfg.backends[0].ajp.clone().unwrap();
        assert_eq!(cfg.backends[0].port, 8010);
        assert_eq!(o.secret.as_deref(), Some("s"));
        assert_eq!(
            o.ping,
            PingModes {
                interval: true,
                ..PingModes::default()
            }
        );
        assert_eq!(o.ping_timeout, Duration::from_millis(300));
        assert_eq!(o.max_packet_size, 65536);
        assert!(!format!("{o:?}").contains("\"s\""), "secret not printed");
        assert!(backend("url = \"http://a:1\"").unwrap().backends[0]
            .ajp
            .is_none());
    }

    #[test]
    fn ajp_keys_are_checked() {
        for (keys, needle) in [
            ("url = \"http://a:1\"\najp_secret = \"x\"", "ajp_secret"),
            ("url = \"http://a:1\"\nping_mode = []", "ping_mode"),
            (
                "url = \"ajp://a:1\"\nmax_packet_size = 4096",
                "max_packet_size",
            ),
            ("url = \"ajp://a:1\"\nping_timeout = \"0s\"", "ping_timeout"),
            ("url = \"ajp://a:1\"\nhttp2 = true", "url"),
            ("url = \"ajp://a:1\"\najp_secret = \"\"", "ajp_secret"),
            (
                "url = \"ajp://a:1\"\nping_mode = [\"sometimes\"]",
                "sometimes",
            ),
            ("url = \"ajp://a/x\"", "ajp://"),
            (
                "url = \"ajp://a:1\"\najp_secret_file = \"/nonexistent/secret\"",
                "/nonexistent/secret",
            ),
        ] {
            let e = backend(keys).unwrap_err();
            assert!(e.contains(needle), "{keys}: {e}");
        }
    }

    #[test]
    fn the_secret_file_gives_its_first_line() {
        let dir = std::env::temp_dir().join(format!("stickgate-ajp-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("secret");
        std::fs::write(&f, "t0ps3cret\nignored\n").unwrap();
        let cfg = backend(&format!(
            "url = \"ajp://a:1\"\najp_secret_file = \"{}\"",
            f.display()
        ))
        .unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(
            cfg.backends[0].ajp.as_ref().unwrap().secret.as_deref(),
            Some("t0ps3cret")
        );
    }
}

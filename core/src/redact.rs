//! How a session id appears in logs. A leaf that depends on nothing, so
//! the session stores and the access log can redact ids without importing
//! routing; `routing::session::redact` re-exports it.

/// Session ids are credentials: logs only ever show `sid#` and 8 hex
/// digits of the id's SHA-256, stable so one session's lines can be
/// followed, and useless for hijacking it.
pub fn redact(id: &str) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(id.as_bytes());
    format!("sid#{:02x}{:02x}{:02x}{:02x}", d[0], d[1], d[2], d[3])
}

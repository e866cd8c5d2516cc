//! Shared secrets read from files: the multicast store's peer key and the
//! admin API's token. A plain helper that depends on nothing, so the config
//! check and the stores can both use it without importing each other.

use std::path::Path;

/// Read a shared secret for peer authentication, refusing files other
/// users could read and secrets too short to resist guessing.
pub fn read_key_file(path: &Path) -> Result<Vec<u8>, String> {
    let meta = std::fs::metadata(path).map_err(|e| {
        format!(
            "{}: {e} (create it with e.g. `head -c 32 /dev/urandom | base64 > {0}; chmod 600 {0}`)",
            path.display()
        )
    })?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o004 != 0 {
            return Err(format!(
                "{} is world-readable; run `chmod 600 {}`",
                path.display(),
                path.display()
            ));
        }
    }
    let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let key: Vec<u8> = text.trim_ascii().to_vec();
    if key.len() < 16 {
        return Err(format!(
            "{}: the secret must be at least 16 bytes",
            path.display()
        ));
    }
    Ok(key)
}

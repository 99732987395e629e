//! Secrets in the config (keys, tokens): a string `Debug` never shows, and the check that the
//! file holding one is not readable by other users.

use std::path::Path;

use serde::Deserialize;

/// A secret string (an S3 secret key); `Debug` never shows it.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A warning when `path` (a file holding a secret, configured as `key`) can be read by its
/// group or by other users; `None` when it cannot, or does not exist (a missing file is
/// reported where it is read). Shared by the config's checks and the daemon's own.
pub fn secret_file_warning(path: &Path, key: &str) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then(|| {
        format!(
            "{key} {p} has mode {mode:04o}: other users can read the secret in it; \
             fix with `chmod 600 {p}`",
            p = path.display()
        )
    })
}

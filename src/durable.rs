//! Making file-system changes survive a crash: fsync of files and of the directories that name
//! them. Every layer (metadata store, packs, volume files, recovery, settings) uses these, so
//! they live below all of them.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};

/// fsyncs a directory, so entries created, renamed or removed in it survive a crash.
pub fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(format!("syncing directory {}", dir.display()), e))
}

/// fsyncs the directory holding `path` (the current directory for a bare name).
pub fn fsync_parent(path: &Path) -> Result<()> {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => fsync_dir(p),
        _ => fsync_dir(Path::new(".")),
    }
}

/// Replaces `path` with `bytes` atomically and durably: a temporary file beside it, written and
/// fsynced, renamed over it, and the directory fsynced. A crash leaves the old or the new file.
pub fn write_file_durably(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let ctx = |what: &str| format!("{what} {}", tmp.display());
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| Error::io(ctx("creating"), e))?;
    f.write_all(bytes)
        .map_err(|e| Error::io(ctx("writing"), e))?;
    f.sync_all().map_err(|e| Error::io(ctx("syncing"), e))?;
    fs::rename(&tmp, path).map_err(|e| Error::io(format!("renaming to {}", path.display()), e))?;
    fsync_parent(path)
}

//! The local directory backend: objects are files under a root directory, the key being the
//! relative path. The embedded default when no S3 store is configured, and the store a NAS
//! mount or a second disk can provide.
//!
//! Durability: a put writes `<root>/.tmp/<random>`, fsyncs it, renames it into place (creating
//! parent directories, each fsynced), then fsyncs the target directory, so an object is either
//! absent, the old version, or complete. A crash can leave files in `.tmp/`; [`LocalDir::open`]
//! removes those not written to for [`STALE_TMP`] (another open of the same store, the probe at
//! serve start, must not take the temp file of a put in progress). Listing walks the tree and sorts keys, so pages are stable: a page token is the
//! last key of the previous page.
//!
//! All file work runs on tokio's blocking pool.
//!
//! No object lock: `[s3.object_lock]` applies to the S3 backend only, and a directory the
//! appliance can write is one it can delete from, so a retention recorded here would protect
//! nothing against a compromised appliance. [`Backend::object_lock`] says so, and GC deletes
//! dropped packs here without waiting for any retention.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use super::{
    check_key, check_prefix, BResult, Backend, BackendError, ErrorKind, ListPage, ObjectInfo,
    ObjectLock, PutReceipt,
};

/// Temporary files of puts in progress.
const TMP_DIR: &str = ".tmp";
/// A temp file untouched this long is a leftover of an interrupted put.
const STALE_TMP: std::time::Duration = std::time::Duration::from_secs(600);

/// Objects as files under a directory.
#[derive(Debug, Clone)]
pub struct LocalDir {
    root: Arc<PathBuf>,
}

impl LocalDir {
    /// Opens (creating if needed) a store at `root` and clears leftovers of interrupted puts.
    pub fn open(root: &Path) -> BResult<Self> {
        let tmp = root.join(TMP_DIR);
        fs::create_dir_all(&tmp)
            .map_err(|e| BackendError::io(format!("creating {}", tmp.display()), e))?;
        let entries =
            fs::read_dir(&tmp).map_err(|e| BackendError::io(format!("{}", tmp.display()), e))?;
        for e in entries.flatten() {
            let idle = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok());
            if idle.is_some_and(|d| d >= STALE_TMP) {
                let _ = fs::remove_file(e.path());
            }
        }
        Ok(LocalDir {
            root: Arc::new(root.to_path_buf()),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> BResult<PathBuf> {
        check_key(key)?;
        Ok(self.root.join(key))
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Path) -> BResult<T> + Send + 'static,
    ) -> BResult<T> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || f(&root))
            .await
            .map_err(|e| BackendError::new(ErrorKind::Io, format!("blocking task: {e}")))?
    }

    /// Writes `fill`'s output to a temp file, fsyncs, renames it to `key`, fsyncs directories.
    fn store(
        root: &Path,
        key: &str,
        fill: impl FnOnce(&mut File) -> std::io::Result<u64>,
    ) -> BResult<u64> {
        let target = root.join(key);
        let tmp = root
            .join(TMP_DIR)
            .join(hex::encode(rand::random::<[u8; 12]>()));
        let ctx = |what: &str| format!("{what} {key} in {}", root.display());
        let written = (|| {
            let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            let n = fill(&mut f)?;
            f.sync_all()?;
            Ok(n)
        })();
        let n = match written {
            Ok(n) => n,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(BackendError::io(ctx("writing"), e));
            }
        };
        let parent = target.parent().expect("key has a parent: the root");
        create_dirs_durably(root, parent)
            .map_err(|e| BackendError::io(ctx("creating dirs for"), e))?;
        if let Err(e) = fs::rename(&tmp, &target) {
            let _ = fs::remove_file(&tmp);
            return Err(BackendError::io(ctx("renaming into place"), e));
        }
        sync_dir(parent).map_err(|e| BackendError::io(ctx("fsync dir of"), e))?;
        Ok(n)
    }
}

/// Creates `dir` (under `root`) and fsyncs each new directory's parent.
fn create_dirs_durably(root: &Path, dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        if parent != root && parent.starts_with(root) {
            create_dirs_durably(root, parent)?;
        }
        match fs::create_dir(dir) {
            Ok(()) => sync_dir(parent)?,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

fn info(key: String, md: &fs::Metadata) -> ObjectInfo {
    ObjectInfo {
        key,
        size: md.len(),
        etag: None,
        last_modified: md.modified().ok(),
        retain_until: None,
    }
}

/// Every object key under `root` (files only; `.tmp` skipped), unsorted.
fn walk(dir: &Path, rel: &str, out: &mut Vec<(String, fs::Metadata)>) -> BResult<()> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(BackendError::io(format!("listing {}", dir.display()), e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| BackendError::io(format!("listing {}", dir.display()), e))?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if rel.is_empty() && name == TMP_DIR {
            continue;
        }
        let key = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        let md = entry
            .metadata()
            .map_err(|e| BackendError::io(format!("stat {key}"), e))?;
        if md.is_dir() {
            walk(&entry.path(), &key, out)?;
        } else if md.is_file() && check_key(&key).is_ok() {
            out.push((key, md));
        }
    }
    Ok(())
}

#[async_trait::async_trait]
impl Backend for LocalDir {
    fn describe(&self) -> String {
        format!("dir {}", self.root.display())
    }

    fn local_dir(&self) -> Option<&std::path::Path> {
        Some(&self.root)
    }

    async fn put(&self, key: &str, data: Bytes) -> BResult<PutReceipt> {
        check_key(key)?;
        let key = key.to_owned();
        self.blocking(move |root| {
            let size = Self::store(root, &key, |f| {
                f.write_all(&data)?;
                Ok(data.len() as u64)
            })?;
            Ok(PutReceipt {
                size,
                etag: None,
                parts: 0,
                peak_buffered: size,
            })
        })
        .await
    }

    async fn put_file(&self, key: &str, path: &Path) -> BResult<PutReceipt> {
        check_key(key)?;
        let key = key.to_owned();
        let src = path.to_path_buf();
        self.blocking(move |root| {
            let mut input = File::open(&src)
                .map_err(|e| BackendError::io(format!("opening {}", src.display()), e))?;
            let expect = input
                .metadata()
                .map_err(|e| BackendError::io(format!("stat {}", src.display()), e))?
                .len();
            // File to file: std copies in the kernel (copy_file_range), with no pass through
            // a buffer here; a pack is written once more, not read and written again.
            let size = Self::store(root, &key, |f| std::io::copy(&mut input, f))?;
            if size != expect {
                return Err(BackendError::new(
                    ErrorKind::Corrupt,
                    format!(
                        "{} changed while stored as {key}: {size} bytes copied, {expect} expected",
                        src.display()
                    ),
                ));
            }
            Ok(PutReceipt {
                size,
                etag: None,
                parts: 0,
                peak_buffered: 0,
            })
        })
        .await
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> BResult<Bytes> {
        if range.is_empty() {
            return Err(BackendError::new(
                ErrorKind::Invalid,
                format!("get {key}: empty range {range:?}"),
            ));
        }
        let path = self.path(key)?;
        let key = key.to_owned();
        self.blocking(move |_| {
            let f = File::open(&path).map_err(|e| BackendError::io(format!("get {key}"), e))?;
            let size = f
                .metadata()
                .map_err(|e| BackendError::io(format!("stat {key}"), e))?
                .len();
            let end = range.end.min(size);
            if range.start >= end {
                return Ok(Bytes::new());
            }
            let mut buf = vec![0u8; (end - range.start) as usize];
            f.read_exact_at(&mut buf, range.start)
                .map_err(|e| BackendError::io(format!("get {key} {range:?}"), e))?;
            Ok(Bytes::from(buf))
        })
        .await
    }

    async fn get(&self, key: &str) -> BResult<Bytes> {
        let path = self.path(key)?;
        let key = key.to_owned();
        self.blocking(move |_| {
            fs::read(&path)
                .map(Bytes::from)
                .map_err(|e| BackendError::io(format!("get {key}"), e))
        })
        .await
    }

    async fn head(&self, key: &str) -> BResult<ObjectInfo> {
        let path = self.path(key)?;
        let key = key.to_owned();
        self.blocking(move |_| {
            let md = fs::metadata(&path).map_err(|e| BackendError::io(format!("head {key}"), e))?;
            if !md.is_file() {
                return Err(BackendError::new(
                    ErrorKind::NotFound,
                    format!("head {key}: not an object"),
                ));
            }
            Ok(info(key, &md))
        })
        .await
    }

    async fn list_page(
        &self,
        prefix: &str,
        token: Option<String>,
        max_keys: u32,
    ) -> BResult<ListPage> {
        check_prefix(prefix)?;
        let prefix = prefix.to_owned();
        let max = max_keys.max(1) as usize;
        self.blocking(move |root| {
            // Walk only the deepest directory the prefix names completely.
            let (dir_rel, _) = prefix.rsplit_once('/').unwrap_or(("", ""));
            let mut all = Vec::new();
            walk(&root.join(dir_rel), dir_rel, &mut all)?;
            let mut keys: Vec<_> = all
                .into_iter()
                .filter(|(k, _)| k.starts_with(&prefix))
                .filter(|(k, _)| token.as_ref().is_none_or(|t| k.as_str() > t.as_str()))
                .collect();
            keys.sort_by(|a, b| a.0.cmp(&b.0));
            let more = keys.len() > max;
            keys.truncate(max);
            let next = if more {
                keys.last().map(|(k, _)| k.clone())
            } else {
                None
            };
            Ok(ListPage {
                objects: keys.into_iter().map(|(k, md)| info(k, &md)).collect(),
                next,
            })
        })
        .await
    }

    async fn delete(&self, key: &str) -> BResult<()> {
        let path = self.path(key)?;
        let key = key.to_owned();
        self.blocking(move |_| {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(BackendError::io(format!("delete {key}"), e)),
            }
            let parent = path.parent().expect("key has a parent");
            sync_dir(parent).map_err(|e| BackendError::io(format!("fsync dir of {key}"), e))
        })
        .await
    }

    async fn check_access(&self) -> BResult<()> {
        self.blocking(|root| {
            let md = fs::metadata(root)
                .map_err(|e| BackendError::io(format!("store directory {}", root.display()), e))?;
            if !md.is_dir() {
                return Err(BackendError::new(
                    ErrorKind::Invalid,
                    format!("{} is not a directory", root.display()),
                ));
            }
            Ok(())
        })
        .await
    }

    async fn object_lock(&self) -> BResult<ObjectLock> {
        Ok(ObjectLock::Unsupported("local directory".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn interrupted_put_leftovers_are_cleared_and_never_listed() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDir::open(dir.path()).unwrap();
        store.put("a/b", Bytes::from_static(b"x")).await.unwrap();
        let tmp = dir.path().join(TMP_DIR);
        fs::write(tmp.join("half"), b"partial").unwrap();
        let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        File::options()
            .write(true)
            .open(tmp.join("half"))
            .unwrap()
            .set_modified(hour_ago)
            .unwrap();
        // A put in progress (written to just now) belongs to someone else: left alone.
        fs::write(tmp.join("in-progress"), b"being written").unwrap();
        let listed = super::super::list_all(&store, "", 10).await.unwrap();
        assert_eq!(
            listed.iter().map(|o| o.key.as_str()).collect::<Vec<_>>(),
            ["a/b"]
        );
        LocalDir::open(dir.path()).unwrap();
        let left: Vec<_> = fs::read_dir(&tmp)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left, ["in-progress"]);
        // Keys cannot escape the root.
        let e = store.get("../etc/passwd").await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Invalid);
    }
}

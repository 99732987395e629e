//! The WebDAV users file: one `name:hash` line per user, the hash an argon2id PHC string
//! (`$argon2id$v=19$m=19456,t=2,p=1$salt$hash`). `tiergate user add` / `user del` edit it;
//! the share re-reads it when its modification time changes, so no restart is needed.
//!
//! Verifying an argon2id hash costs tens of milliseconds by design. A client sends its
//! credentials with every request, so a successful verification is remembered for a few
//! minutes under a keyed hash of `name:password` (the key is random per process and never
//! stored); a changed users file clears that memory.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use argon2::password_hash::{rand_core::OsRng, PasswordHash, SaltString};
use argon2::{Argon2, PasswordHasher, PasswordVerifier};
use parking_lot::Mutex;

use crate::error::{Error, Result};

/// How long a verified `name:password` pair is accepted without running argon2 again.
const VERIFIED_TTL: Duration = Duration::from_secs(300);

/// A user name: what a users-file line can hold unambiguously.
pub fn check_user_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 64
        || name
            .chars()
            .any(|c| c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(Error::Invalid(format!(
            "bad user name {name:?}: 1 to 64 characters, no ':', spaces or control characters"
        )));
    }
    Ok(())
}

/// An argon2id hash of `password` with a fresh random salt (argon2 crate defaults:
/// m = 19 MiB, t = 2, p = 1, the OWASP-recommended minimum).
pub fn hash_password(password: &str) -> Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| Error::Invalid(format!("hashing the password: {e}")))
}

fn parse(text: &str, path: &Path) -> Result<HashMap<String, String>> {
    let mut users = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, hash) = line.split_once(':').ok_or_else(|| {
            Error::Invalid(format!("{}:{}: expected name:hash", path.display(), i + 1))
        })?;
        PasswordHash::new(hash).map_err(|e| {
            Error::Invalid(format!(
                "{}:{}: bad password hash: {e}",
                path.display(),
                i + 1
            ))
        })?;
        users.insert(name.to_string(), hash.to_string());
    }
    Ok(users)
}

fn read_users(path: &Path) -> Result<(Option<SystemTime>, HashMap<String, String>)> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
            Ok((mtime, parse(&text, path)?))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((None, HashMap::new())),
        Err(e) => Err(Error::io(
            format!("reading users file {}", path.display()),
            e,
        )),
    }
}

/// Adds a user or replaces its password; returns true if the user existed. The file is
/// rewritten atomically with mode 0600.
pub fn set_user(path: &Path, name: &str, password: &str) -> Result<bool> {
    check_user_name(name)?;
    if password.is_empty() {
        return Err(Error::Invalid("empty password".into()));
    }
    let (_, mut users) = read_users(path)?;
    let existed = users
        .insert(name.to_string(), hash_password(password)?)
        .is_some();
    write_users(path, &users)?;
    Ok(existed)
}

/// Removes a user; returns false if there was no such user.
pub fn remove_user(path: &Path, name: &str) -> Result<bool> {
    let (_, mut users) = read_users(path)?;
    if users.remove(name).is_none() {
        return Ok(false);
    }
    write_users(path, &users)?;
    Ok(true)
}

fn write_users(path: &Path, users: &HashMap<String, String>) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut names: Vec<&String> = users.keys().collect();
    names.sort();
    let mut text =
        String::from("# tiergate WebDAV users: name:argon2id hash (tiergate user add)\n");
    for n in names {
        text.push_str(&format!("{n}:{}\n", users[n]));
    }
    let tmp = path.with_extension("tmp");
    let ctx = |what: &str| format!("{what} {}", tmp.display());
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| Error::io(ctx("creating"), e))?;
    f.write_all(text.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::io(ctx("writing"), e))?;
    std::fs::rename(&tmp, path)
        .map_err(|e| Error::io(format!("renaming to {}", path.display()), e))?;
    if let Some(dir) = path.parent() {
        let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}

struct Loaded {
    mtime: Option<SystemTime>,
    users: HashMap<String, String>,
    verified: HashMap<[u8; 32], Instant>,
}

/// The users the share accepts, re-read when the file changes.
pub struct Users {
    path: PathBuf,
    cache_key: [u8; 32],
    state: Mutex<Loaded>,
}

impl Users {
    /// Loads the users file (a missing file means no users).
    pub fn load(path: &Path) -> Result<Users> {
        let (mtime, users) = read_users(path)?;
        Ok(Users {
            path: path.to_path_buf(),
            cache_key: rand::random(),
            state: Mutex::new(Loaded {
                mtime,
                users,
                verified: HashMap::new(),
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn count(&self) -> usize {
        self.state.lock().users.len()
    }

    fn refresh(&self) {
        let mtime = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        let mut s = self.state.lock();
        if mtime == s.mtime {
            return;
        }
        match read_users(&self.path) {
            Ok((mtime, users)) => {
                tracing::info!(users = users.len(), file = %self.path.display(), "users file re-read");
                *s = Loaded {
                    mtime,
                    users,
                    verified: HashMap::new(),
                };
            }
            // Keep serving the users we had; say why the new file was not taken.
            Err(e) => tracing::error!("users file changed but cannot be used: {e}"),
        }
    }

    /// Checks a name and password. Blocking (argon2 is deliberately slow): call it off the
    /// async reactor.
    pub fn verify(&self, name: &str, password: &str) -> bool {
        self.refresh();
        let tag = *blake3::keyed_hash(&self.cache_key, format!("{name}:{password}").as_bytes())
            .as_bytes();
        let hash = {
            let mut s = self.state.lock();
            if let Some(t) = s.verified.get(&tag) {
                if t.elapsed() < VERIFIED_TTL {
                    return true;
                }
            }
            s.verified.retain(|_, t| t.elapsed() < VERIFIED_TTL);
            match s.users.get(name) {
                Some(h) => h.clone(),
                None => return false,
            }
        };
        let ok = PasswordHash::new(&hash)
            .map(|h| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &h)
                    .is_ok()
            })
            .unwrap_or(false);
        if ok {
            self.state.lock().verified.insert(tag, Instant::now());
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_verify_replace_remove() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        assert!(!set_user(&path, "alice", "s3cret").unwrap());
        assert!(!set_user(&path, "bob", "other").unwrap());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("alice:$argon2id$"), "{text}");
        assert!(!text.contains("s3cret"));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let users = Users::load(&path).unwrap();
        assert!(users.verify("alice", "s3cret"));
        assert!(users.verify("alice", "s3cret")); // from the cache
        assert!(!users.verify("alice", "wrong"));
        assert!(!users.verify("carol", "s3cret"));
        assert!(set_user(&path, "alice", "new").unwrap());
        assert!(remove_user(&path, "bob").unwrap());
        assert!(!remove_user(&path, "bob").unwrap());
        let users = Users::load(&path).unwrap();
        assert!(!users.verify("alice", "s3cret"));
        assert!(users.verify("alice", "new"));
        assert!(!users.verify("bob", "other"));
        assert!(check_user_name("a:b").is_err());
        assert!(check_user_name("").is_err());
    }
}

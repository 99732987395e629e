//! The WebDAV users file: one `name:hash` line per user, the hash an argon2id PHC string
//! (`$argon2id$v=19$m=19456,t=2,p=1$salt$hash`). `tiergate user add` / `user del` edit it;
//! the share re-reads it when its modification time changes, so no restart is needed.
//!
//! Verifying an argon2id hash costs tens of milliseconds and 19 MiB by design. A client sends
//! its credentials with every request, so a successful verification is remembered (sliding
//! [`VERIFIED_TTL`], at most [`VERIFIED_MAX`] entries) under a keyed hash of `name:password`
//! (the key is random per process and never stored); a changed users file clears that memory.
//!
//! [`Gate`] puts that behind the limits a listener reachable by strangers needs (issue 20,
//! docs/SECURITY.md): before any argon2 runs,
//! - a remembered `name:password` passes at once, without queueing or throttling: a valid
//!   client keeps working while a flood runs;
//! - a source address (IPv6: its /64) or a user name with too many recent failures is refused
//!   with 429 and `Retry-After` (exponential back-off, [`Policy`]); the tables are bounded and
//!   evict their oldest entries;
//! - a source has at most [`PER_SOURCE_INFLIGHT`] verifications queued or running; more get
//!   429 at once;
//! - at most [`ARGON2_PERMITS`] verifications run at once, plus one lane reserved for sources
//!   without recent failures (so a first login is not starved by a guesser elsewhere), each
//!   with a short bounded queue; beyond it the answer is 503 with `Retry-After` at once. Peak
//!   memory of verification is thereby ~(permits + 1) x 19 MiB whatever the load;
//! - an unknown user name is verified against a dummy hash with the same parameters, and every
//!   wrong answer is padded to the same delay, so answers do not tell names apart;
//! - names reach the log escaped (`{:?}`), so a control character cannot forge a line, and an
//!   `Authorization` header longer than [`MAX_AUTH_HEADER`] is refused before decoding.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use argon2::password_hash::{rand_core::OsRng, PasswordHash, SaltString};
use argon2::{Argon2, PasswordHasher};
use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::{Error, Result};

/// How long a verified `name:password` pair is accepted without running argon2 again, counted
/// from its last use.
const VERIFIED_TTL: Duration = Duration::from_secs(300);
/// Verified pairs remembered at most (the oldest go first).
const VERIFIED_MAX: usize = 1024;

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

/// The names in the users file, sorted (a missing file: none). Never the hashes.
pub fn user_names(path: &Path) -> Result<Vec<String>> {
    let (_, users) = read_users(path)?;
    let mut names: Vec<String> = users.into_keys().collect();
    names.sort();
    Ok(names)
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
    /// Keyed hashes of verified `name:password` pairs, and when each was last used.
    verified: HashMap<[u8; 32], Instant>,
}

/// What the users file says about a `name:password` pair before any argon2 runs.
enum Lookup {
    /// Verified recently: accepted without argon2.
    Cached,
    /// The user's stored hash, to verify against.
    Hash(String),
    /// No such user.
    Unknown,
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

    fn tag(&self, name: &str, password: &str) -> [u8; 32] {
        *blake3::keyed_hash(&self.cache_key, format!("{name}:{password}").as_bytes()).as_bytes()
    }

    fn lookup(&self, name: &str, password: &str, now: Instant) -> Lookup {
        self.refresh();
        let tag = self.tag(name, password);
        let mut s = self.state.lock();
        if let Some(t) = s.verified.get_mut(&tag) {
            if now.saturating_duration_since(*t) < VERIFIED_TTL {
                *t = now;
                return Lookup::Cached;
            }
        }
        match s.users.get(name) {
            Some(h) => Lookup::Hash(h.clone()),
            None => Lookup::Unknown,
        }
    }

    fn remember(&self, name: &str, password: &str, now: Instant) {
        let tag = self.tag(name, password);
        let mut s = self.state.lock();
        if s.verified.len() >= VERIFIED_MAX {
            s.verified
                .retain(|_, t| now.saturating_duration_since(*t) < VERIFIED_TTL);
        }
        if s.verified.len() >= VERIFIED_MAX {
            if let Some(oldest) = s.verified.iter().min_by_key(|(_, t)| **t).map(|(k, _)| *k) {
                s.verified.remove(&oldest);
            }
        }
        s.verified.insert(tag, now);
    }

    /// Checks a name and password. Blocking (argon2 is deliberately slow): call it off the
    /// async reactor. No limits: the share goes through [`Gate`].
    pub fn verify(&self, name: &str, password: &str) -> bool {
        let now = Instant::now();
        let ok = match self.lookup(name, password, now) {
            Lookup::Cached => return true,
            Lookup::Hash(h) => argon2_verify_in(&mut Vec::new(), &h, password),
            Lookup::Unknown => false,
        };
        if ok {
            self.remember(name, password, now);
        }
        ok
    }
}

/// Largest argon2 memory cost a stored hash may ask for (KiB): a users file is admin input,
/// but a hash that asked for gigabytes would make every verification a memory bomb.
const MAX_ARGON2_M_COST: u32 = 256 * 1024;

/// Verifies `password` against a PHC argon2 `hash`, using `memory` as argon2's working
/// blocks. Each verifier thread keeps its own `memory` for its whole life: a fresh 19 MiB
/// block per verification, freed into glibc's arenas and carved up by small allocations in
/// between, let a flood of wrong passwords grow the daemon by ~19 MiB per guess (measured:
/// 65 -> 370 MiB over 36 verifications in the hostile_auth flood test; 655 MiB with
/// MALLOC_ARENA_MAX=2). A reused buffer keeps it at one block per thread.
fn argon2_verify_in(memory: &mut Vec<argon2::Block>, hash: &str, password: &str) -> bool {
    let mut verify = || -> Option<bool> {
        let h = PasswordHash::new(hash).ok()?;
        let algorithm = argon2::Algorithm::try_from(h.algorithm).ok()?;
        let version = match h.version {
            Some(v) => argon2::Version::try_from(v).ok()?,
            None => argon2::Version::default(),
        };
        let params = argon2::Params::try_from(&h).ok()?;
        if params.m_cost() > MAX_ARGON2_M_COST {
            tracing::error!(
                m_cost_kib = params.m_cost(),
                "auth: a stored password hash asks for more argon2 memory than allowed"
            );
            return None;
        }
        let expected = h.hash?;
        let mut salt = [0u8; 64];
        let salt = h.salt?.decode_b64(&mut salt).ok()?;
        let blocks = params.block_count();
        if memory.len() < blocks {
            memory.resize(blocks, argon2::Block::default());
        }
        let mut out = vec![0u8; expected.len()];
        Argon2::new(algorithm, version, params)
            .hash_password_into_with_memory(
                password.as_bytes(),
                salt,
                &mut out,
                &mut memory[..blocks],
            )
            .ok()?;
        // Output's equality is constant-time.
        Some(argon2::password_hash::Output::new(&out).ok()? == expected)
    };
    verify().unwrap_or(false)
}

// ------------------------------------------------------------------------------ the gate

/// Verifications that may run at once for any source (each holds ~19 MiB for ~30 ms).
pub const ARGON2_PERMITS: usize = 2;
/// Requests that may wait for a verification permit, per lane; beyond: 503 at once.
const QUEUE: usize = 8;
/// Longest wait for a permit before answering 503.
const QUEUE_WAIT: Duration = Duration::from_secs(5);
/// `Retry-After` when the verification queue is full.
const BUSY_RETRY: Duration = Duration::from_secs(2);
/// Longest `Authorization` header value accepted (a 64-byte name and a long password fit).
pub const MAX_AUTH_HEADER: usize = 1024;
/// Entries per throttle table (source addresses, user names).
const THROTTLE_ENTRIES: usize = 4096;
/// Verifications one source may have queued or running at once; more get 429 at once (a
/// client's parallel connections are a few: the first success is remembered for the rest).
pub const PER_SOURCE_INFLIGHT: u32 = 4;
/// `Retry-After` for a source over [`PER_SOURCE_INFLIGHT`].
const INFLIGHT_RETRY: Duration = Duration::from_secs(1);

/// Exponential back-off of one throttle: `free` failures within `forget` of each other are
/// free; each further one blocks the key for `base` x 2^k, at most `max`.
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    pub free: u32,
    pub base: Duration,
    pub max: Duration,
    /// A key without failures for this long starts again from zero.
    pub forget: Duration,
}

/// Per source address: 5 free tries, then 1 s, 2 s, ... up to 5 min between tries.
pub const PER_SOURCE: Policy = Policy {
    free: 5,
    base: Duration::from_secs(1),
    max: Duration::from_secs(300),
    forget: Duration::from_secs(900),
};

/// Per user name (guessing from many addresses): 10 free tries, then back-off up to 1 min.
/// Kept short because anyone can run a name into it: while it holds, that user's new logins
/// are refused, but a client whose password was verified recently keeps working.
pub const PER_USER: Policy = Policy {
    free: 10,
    base: Duration::from_secs(1),
    max: Duration::from_secs(60),
    forget: Duration::from_secs(900),
};

struct Backoff {
    failures: u32,
    last: Instant,
    until: Instant,
}

/// One throttle table: failures per key, bounded to `cap` entries (the oldest go first).
pub struct Throttle<K> {
    policy: Policy,
    cap: usize,
    map: HashMap<K, Backoff>,
}

impl<K: std::hash::Hash + Eq + Clone> Throttle<K> {
    pub fn new(policy: Policy, cap: usize) -> Self {
        Throttle {
            policy,
            cap,
            map: HashMap::new(),
        }
    }

    /// How long `key` is still refused, if it is.
    pub fn blocked(&self, key: &K, now: Instant) -> Option<Duration> {
        let b = self.map.get(key)?;
        (b.until > now).then(|| b.until - now)
    }

    /// Whether `key` has failures on record (not yet forgotten).
    pub fn suspect(&self, key: &K, now: Instant) -> bool {
        self.map
            .get(key)
            .is_some_and(|b| now.saturating_duration_since(b.last) < self.policy.forget)
    }

    /// Records a failure; returns the block it starts, if any.
    pub fn fail(&mut self, key: &K, now: Instant) -> Option<Duration> {
        if !self.map.contains_key(key) && self.map.len() >= self.cap {
            self.evict(now);
        }
        let p = self.policy;
        let b = self.map.entry(key.clone()).or_insert(Backoff {
            failures: 0,
            last: now,
            until: now,
        });
        if now.saturating_duration_since(b.last) >= p.forget {
            b.failures = 0;
        }
        b.failures = b.failures.saturating_add(1);
        b.last = now;
        if b.failures <= p.free {
            return None;
        }
        let k = (b.failures - p.free - 1).min(30);
        let block = p.base.saturating_mul(1 << k).min(p.max);
        b.until = b.until.max(now + block);
        Some(block)
    }

    /// Forgets `key`'s failures (a successful login).
    pub fn succeed(&mut self, key: &K) {
        self.map.remove(key);
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Makes room for one entry: forgotten ones first, else the one whose last failure is the
    /// oldest (an attacker filling the table pushes out its own oldest entries first).
    fn evict(&mut self, now: Instant) {
        let p = self.policy;
        self.map
            .retain(|_, b| b.until > now || now.saturating_duration_since(b.last) < p.forget);
        while self.map.len() >= self.cap {
            let Some(k) = self
                .map
                .iter()
                .min_by_key(|(_, b)| b.last)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            self.map.remove(&k);
        }
    }
}

/// What the gate says about a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// In, as this user.
    Allowed(String),
    /// No credentials, or wrong ones: 401 with a `WWW-Authenticate` challenge.
    Denied,
    /// Too many recent failures from this source or for this name: 429, retry after this.
    Throttled(Duration),
    /// Too many verifications waiting: 503, retry after this.
    Busy(Duration),
    /// The `Authorization` header is too long: 400.
    Malformed,
}

impl Verdict {
    /// The HTTP status of a refusal (200 for `Allowed`).
    pub fn status(&self) -> u16 {
        match self {
            Verdict::Allowed(_) => 200,
            Verdict::Denied => 401,
            Verdict::Throttled(_) => 429,
            Verdict::Busy(_) => 503,
            Verdict::Malformed => 400,
        }
    }

    /// What the answer says.
    pub fn message(&self) -> &'static str {
        match self {
            Verdict::Allowed(_) => "ok",
            Verdict::Denied => "authentication required",
            Verdict::Throttled(_) => "too many failed logins: try again later",
            Verdict::Busy(_) => "too many logins at once: try again shortly",
            Verdict::Malformed => "Authorization header too long",
        }
    }

    /// Seconds for `Retry-After`, when the refusal has one (rounded up, at least 1).
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            Verdict::Throttled(d) | Verdict::Busy(d) => {
                Some((d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1))
            }
            _ => None,
        }
    }
}

/// The key a source address is throttled under: IPv4 as it is, IPv6 by its /64 (one host
/// usually holds a whole /64).
fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

struct Tables {
    sources: Throttle<IpAddr>,
    names: Throttle<String>,
    /// Verifications queued or running per source (entries go when they reach 0).
    inflight: HashMap<IpAddr, u32>,
}

/// One verification of a source in flight; counted down when dropped.
struct InFlight<'a> {
    gate: &'a Gate,
    src: IpAddr,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut t = self.gate.tables.lock();
        if let Some(n) = t.inflight.get_mut(&self.src) {
            *n -= 1;
            if *n == 0 {
                t.inflight.remove(&self.src);
            }
        }
    }
}

/// Authentication with limits in front of argon2: see the module doc.
pub struct Gate {
    users: Arc<Users>,
    failed_delay: Duration,
    /// Verifications for any source.
    shared: Arc<Semaphore>,
    /// One more, only for sources without recent failures.
    reserved: Arc<Semaphore>,
    waiting_shared: AtomicUsize,
    waiting_clean: AtomicUsize,
    tables: Mutex<Tables>,
    /// To the verifier threads.
    jobs: std::sync::mpsc::SyncSender<Job>,
}

/// One verification for the verifier threads; `hash` None: an unknown name (the dummy hash).
struct Job {
    hash: Option<String>,
    password: String,
    permit: OwnedSemaphorePermit,
    reply: tokio::sync::oneshot::Sender<bool>,
}

/// The verifier threads: one per permit, fed by a channel, each with its own argon2 working
/// memory reused for every verification ([`argon2_verify_in`]), so verification holds at most
/// (permits + 1) x 19 MiB however long a flood runs (measured in the hostile_auth flood test:
/// +40 MiB peak over 400 wrong passwords, against +305 MiB with a fresh block per guess).
fn spawn_verifiers(n: usize, dummy: String) -> Result<std::sync::mpsc::SyncSender<Job>> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(n);
    let rx = Arc::new(Mutex::new(rx));
    for i in 0..n {
        let (rx, dummy) = (rx.clone(), dummy.clone());
        std::thread::Builder::new()
            .name(format!("argon2-{i}"))
            .spawn(move || {
                let mut memory = Vec::new();
                loop {
                    let job = rx.lock().recv();
                    let Ok(job) = job else {
                        return; // the gate is gone
                    };
                    let ok = match &job.hash {
                        Some(h) => argon2_verify_in(&mut memory, h, &job.password),
                        None => {
                            argon2_verify_in(&mut memory, &dummy, &job.password);
                            false
                        }
                    };
                    drop(job.permit);
                    let _ = job.reply.send(ok);
                }
            })
            .map_err(|e| Error::io("starting the password verifier threads", e))?;
    }
    Ok(tx)
}

/// Decrements a waiting counter when a queued request leaves the queue (or is dropped).
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Gate {
    /// A gate over `users`; a wrong answer is given `failed_delay` after the request came.
    pub fn new(users: Users, failed_delay: Duration) -> Result<Gate> {
        let dummy = hash_password(&hex::encode(rand::random::<[u8; 16]>()))?;
        Ok(Gate {
            users: Arc::new(users),
            failed_delay,
            shared: Arc::new(Semaphore::new(ARGON2_PERMITS)),
            reserved: Arc::new(Semaphore::new(1)),
            waiting_shared: AtomicUsize::new(0),
            waiting_clean: AtomicUsize::new(0),
            jobs: spawn_verifiers(ARGON2_PERMITS + 1, dummy)?,
            tables: Mutex::new(Tables {
                sources: Throttle::new(PER_SOURCE, THROTTLE_ENTRIES),
                names: Throttle::new(PER_USER, THROTTLE_ENTRIES),
                inflight: HashMap::new(),
            }),
        })
    }

    pub fn users(&self) -> &Users {
        &self.users
    }

    /// Decides on a request with this `Authorization` header value from `peer`.
    pub async fn authenticate(&self, authorization: Option<&[u8]>, peer: IpAddr) -> Verdict {
        let start = tokio::time::Instant::now();
        let Some(value) = authorization else {
            return Verdict::Denied;
        };
        if value.len() > MAX_AUTH_HEADER {
            tracing::warn!(%peer, len = value.len(), "auth: Authorization header too long");
            return Verdict::Malformed;
        }
        let src = source_key(peer);
        let verdict = match basic_credentials(value) {
            Some((name, pass)) if check_user_name(&name).is_ok() => {
                self.check(&name, &pass, src, peer).await
            }
            // Not Basic, not decodable, or a name no users file can hold: wrong, without argon2.
            other => {
                let name = other.map(|(n, _)| n);
                let now = Instant::now();
                let blocked = self.tables.lock().sources.blocked(&src, now);
                match blocked {
                    Some(d) => Verdict::Throttled(d),
                    None => self.failed(name.as_deref(), src, peer, now),
                }
            }
        };
        if verdict == Verdict::Denied {
            // Every wrong answer leaves at the same time after the request came, however long
            // the verification took (or whether there was one).
            tokio::time::sleep_until(start + self.failed_delay).await;
        }
        verdict
    }

    async fn check(&self, name: &str, pass: &str, src: IpAddr, peer: IpAddr) -> Verdict {
        let hash = match self.users.lookup(name, pass, Instant::now()) {
            Lookup::Cached => return Verdict::Allowed(name.to_string()),
            Lookup::Hash(h) => Some(h),
            Lookup::Unknown => None,
        };
        let now = Instant::now();
        let (clean, _inflight) = {
            let mut t = self.tables.lock();
            let blocked = t
                .sources
                .blocked(&src, now)
                .into_iter()
                .chain(t.names.blocked(&name.to_string(), now))
                .max();
            if let Some(d) = blocked {
                tracing::debug!(%peer, user = ?name, "auth: throttled");
                return Verdict::Throttled(d);
            }
            let n = t.inflight.entry(src).or_default();
            if *n >= PER_SOURCE_INFLIGHT {
                return Verdict::Throttled(INFLIGHT_RETRY);
            }
            *n += 1;
            let clean = !t.sources.suspect(&src, now);
            (clean, InFlight { gate: self, src })
        };
        let permit = match self.permit(clean).await {
            Some(p) => p,
            None => {
                tracing::warn!(%peer, user = ?name, "auth: verification queue full, 503");
                return Verdict::Busy(BUSY_RETRY);
            }
        };
        let (reply, answer) = tokio::sync::oneshot::channel();
        // The permit travels with the work: a client that hangs up does not free it early.
        let job = Job {
            hash,
            password: pass.to_string(),
            permit,
            reply,
        };
        if self.jobs.try_send(job).is_err() {
            return Verdict::Busy(BUSY_RETRY); // cannot happen: permits bound the jobs
        }
        let ok = answer.await.unwrap_or(false);
        let now = Instant::now();
        if ok {
            self.users.remember(name, pass, now);
            self.tables.lock().names.succeed(&name.to_string());
            return Verdict::Allowed(name.to_string());
        }
        self.failed(Some(name), src, peer, now)
    }

    /// Records a failure for the source and (if any) the name, logs it, answers 401.
    fn failed(&self, name: Option<&str>, src: IpAddr, peer: IpAddr, now: Instant) -> Verdict {
        let (by_src, by_name) = {
            let mut t = self.tables.lock();
            let s = t.sources.fail(&src, now);
            let n = name.and_then(|n| t.names.fail(&n.to_string(), now));
            (s, n)
        };
        // Named in the log (for fail2ban and the like), escaped: a name is untrusted input.
        tracing::warn!(%peer, user = ?name.unwrap_or(""), "webdav: wrong user name or password");
        if let Some(d) = by_src {
            tracing::warn!(%peer, secs = d.as_secs(), "auth: source throttled after repeated failures");
        }
        if let Some(d) = by_name {
            tracing::warn!(user = ?name.unwrap_or(""), secs = d.as_secs(), "auth: user name throttled after repeated failures");
        }
        Verdict::Denied
    }

    /// A verification permit: the reserved lane or the shared one for a clean source, the
    /// shared one otherwise; `None` when the queue is full or the wait too long.
    async fn permit(&self, clean: bool) -> Option<OwnedSemaphorePermit> {
        if clean {
            if let Ok(p) = self.reserved.clone().try_acquire_owned() {
                return Some(p);
            }
        }
        if let Ok(p) = self.shared.clone().try_acquire_owned() {
            return Some(p);
        }
        let counter = if clean {
            &self.waiting_clean
        } else {
            &self.waiting_shared
        };
        if counter.fetch_add(1, Ordering::Relaxed) >= QUEUE {
            counter.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        let _w = Waiting(counter);
        let wait = async {
            if clean {
                tokio::select! {
                    p = self.reserved.clone().acquire_owned() => p.ok(),
                    p = self.shared.clone().acquire_owned() => p.ok(),
                }
            } else {
                self.shared.clone().acquire_owned().await.ok()
            }
        };
        tokio::time::timeout(QUEUE_WAIT, wait).await.ok().flatten()
    }
}

/// `Basic base64(name:password)` from an `Authorization` value.
fn basic_credentials(value: &[u8]) -> Option<(String, String)> {
    use base64::Engine;
    let v = std::str::from_utf8(value).ok()?;
    let (scheme, b64) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let s = String::from_utf8(raw).ok()?;
    let (u, p) = s.split_once(':')?;
    Some((u.to_string(), p.to_string()))
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

    const P: Policy = Policy {
        free: 3,
        base: Duration::from_secs(1),
        max: Duration::from_secs(8),
        forget: Duration::from_secs(60),
    };

    #[test]
    fn throttle_backs_off_exponentially_up_to_its_max_and_forgets() {
        let t0 = Instant::now();
        let s = |n: u64| t0 + Duration::from_secs(n);
        let mut t: Throttle<&str> = Throttle::new(P, 100);
        // Three free failures, then 1, 2, 4, 8, 8 s.
        for _ in 0..3 {
            assert_eq!(t.fail(&"a", t0), None);
            assert_eq!(t.blocked(&"a", t0), None);
        }
        assert!(t.suspect(&"a", t0));
        assert_eq!(t.fail(&"a", t0), Some(Duration::from_secs(1)));
        assert_eq!(t.blocked(&"a", t0), Some(Duration::from_secs(1)));
        assert_eq!(t.blocked(&"a", s(1)), None);
        assert_eq!(t.fail(&"a", s(1)), Some(Duration::from_secs(2)));
        assert_eq!(t.fail(&"a", s(3)), Some(Duration::from_secs(4)));
        assert_eq!(t.fail(&"a", s(7)), Some(Duration::from_secs(8)));
        assert_eq!(t.fail(&"a", s(15)), Some(Duration::from_secs(8)));
        assert_eq!(t.blocked(&"a", s(20)), Some(Duration::from_secs(3)));
        // Other keys are not affected.
        assert_eq!(t.blocked(&"b", s(20)), None);
        assert!(!t.suspect(&"b", s(20)));
        // Quiet for the forget period: free tries again.
        assert!(!t.suspect(&"a", s(75)));
        assert_eq!(t.fail(&"a", s(75)), None);
        assert_eq!(t.blocked(&"a", s(75)), None);
        // A success forgets at once.
        t.fail(&"a", s(75));
        t.fail(&"a", s(75));
        assert!(t.fail(&"a", s(75)).is_some());
        t.succeed(&"a");
        assert_eq!(t.blocked(&"a", s(75)), None);
        assert!(!t.suspect(&"a", s(75)));
    }

    #[test]
    fn throttle_table_is_bounded_and_evicts_oldest_first() {
        let t0 = Instant::now();
        let mut t: Throttle<u32> = Throttle::new(P, 4);
        for k in 0..4u32 {
            t.fail(&k, t0 + Duration::from_secs(k as u64));
        }
        for _ in 0..3 {
            t.fail(&3, t0 + Duration::from_secs(3));
        }
        assert_eq!(
            t.blocked(&3, t0 + Duration::from_secs(3)),
            Some(Duration::from_secs(1))
        );
        // A flood of new keys keeps the table at its cap; the oldest entries go first.
        for k in 100..1100u32 {
            t.fail(&k, t0 + Duration::from_secs(4));
            assert!(t.len() <= 4);
        }
        assert!(!t.suspect(&0, t0 + Duration::from_secs(4)));
        // Forgotten entries make room before live ones.
        let mut t: Throttle<u32> = Throttle::new(P, 2);
        t.fail(&1, t0);
        t.fail(&2, t0 + Duration::from_secs(50));
        t.fail(&3, t0 + Duration::from_secs(70));
        assert!(t.suspect(&2, t0 + Duration::from_secs(70)));
        assert!(t.suspect(&3, t0 + Duration::from_secs(70)));
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn ipv6_sources_are_throttled_by_their_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::7".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(source_key(a), source_key(b));
        assert_ne!(source_key(a), source_key(c));
        let m: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(source_key(m), "10.0.0.1".parse::<IpAddr>().unwrap());
    }

    fn basic(s: &str) -> Vec<u8> {
        use base64::Engine;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(s)
        )
        .into_bytes()
    }

    #[tokio::test]
    async fn gate_throttles_a_guesser_but_lets_the_known_password_in() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        set_user(&path, "alice", "s3cret").unwrap();
        let gate = Gate::new(Users::load(&path).unwrap(), Duration::ZERO).unwrap();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let ok = basic("alice:s3cret");
        assert_eq!(
            gate.authenticate(Some(&ok), ip).await,
            Verdict::Allowed("alice".into())
        );
        assert_eq!(gate.authenticate(None, ip).await, Verdict::Denied);
        for i in 0..PER_SOURCE.free {
            let v = gate
                .authenticate(Some(&basic(&format!("alice:{i}"))), ip)
                .await;
            assert_eq!(v, Verdict::Denied);
        }
        // The next failure blocks the source; while blocked, no verification runs.
        assert_eq!(
            gate.authenticate(Some(&basic("alice:x")), ip).await,
            Verdict::Denied
        );
        let v = gate.authenticate(Some(&basic("bob:x")), ip).await;
        assert!(matches!(v, Verdict::Throttled(_)), "{v:?}");
        assert_eq!(v.status(), 429);
        assert!(v.retry_after_secs().unwrap() >= 1);
        // The remembered password still gets in from there; another source is not blocked.
        assert_eq!(
            gate.authenticate(Some(&ok), ip).await,
            Verdict::Allowed("alice".into())
        );
        assert_eq!(
            gate.authenticate(Some(&basic("carol:x")), other).await,
            Verdict::Denied
        );
        // Oversized headers are refused before decoding; control characters never pass.
        let long = basic(&format!("alice:{}", "x".repeat(MAX_AUTH_HEADER)));
        assert_eq!(
            gate.authenticate(Some(&long), other).await,
            Verdict::Malformed
        );
        assert_eq!(
            gate.authenticate(Some(&basic("al\nice:s3cret")), other)
                .await,
            Verdict::Denied
        );
    }

    #[test]
    fn verified_pairs_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        set_user(&path, "alice", "s3cret").unwrap();
        let users = Users::load(&path).unwrap();
        let now = Instant::now();
        for i in 0..VERIFIED_MAX + 10 {
            users.remember("alice", &i.to_string(), now);
        }
        assert_eq!(users.state.lock().verified.len(), VERIFIED_MAX);
    }
}

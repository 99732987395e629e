//! Shared test fixtures: a volume in a temp dir and a real `tiergate serve` process mounting it.

use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tiergate::config::Config;
use tiergate::volume::{Volume, VolumeOptions, VolumeStats};

pub const PASSPHRASE: &str = "correct horse battery staple";

/// A volume on disk plus its config file; `start()` mounts it through the real binary.
pub struct TestVolume {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub mnt: PathBuf,
    daemon: Option<Child>,
}

impl TestVolume {
    /// Creates a volume. `extra` is appended to the `[volume]` section.
    pub fn new(extra: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("tiergate-test")
            .tempdir_in(test_root())
            .unwrap();
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        std::fs::write(dir.path().join("passphrase"), format!("{PASSPHRASE}\n")).unwrap();
        let config = dir.path().join("tiergate.toml");
        // Tests run daemons side by side: the status server takes any free port.
        let web = if extra.contains("[web]") {
            ""
        } else {
            "[web]\nlisten = \"127.0.0.1:0\"\n"
        };
        std::fs::write(
            &config,
            format!(
                "[volume]\npath = \"vol\"\npassphrase_file = \"passphrase\"\n{extra}\n{web}\
                 [fuse]\nmountpoint = \"mnt\"\nallow_other = true\n"
            ),
        )
        .unwrap();
        let cfg = Config::load(&config).unwrap();
        Volume::create(
            &cfg.volume.path,
            PASSPHRASE,
            cfg.chunking.params(),
            tiergate::crypto::KdfParams::for_tests(),
        )
        .unwrap();
        TestVolume {
            dir,
            config,
            mnt,
            daemon: None,
        }
    }

    pub fn vol_dir(&self) -> PathBuf {
        self.dir.path().join("vol")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("serve.log")
    }

    /// Starts `tiergate serve` and waits until the mount answers.
    pub fn start(&mut self) {
        self.start_with(&[]);
    }

    /// Starts `tiergate serve ARGS...` and waits until the mount answers.
    pub fn start_with(&mut self, args: &[&str]) {
        assert!(self.daemon.is_none());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_tiergate"))
            .args(["serve", "--config"])
            .arg(&self.config)
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("TIERGATE_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn tiergate");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if is_mounted(&self.mnt) {
                break;
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!("tiergate serve exited with {status}:\n{}", self.log_tail());
            }
            assert!(
                Instant::now() < deadline,
                "mount did not appear:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.daemon = Some(child);
    }

    /// The process id of the running daemon.
    pub fn pid(&self) -> u32 {
        self.daemon.as_ref().expect("daemon running").id()
    }

    /// SIGTERM, wait for a clean exit (asserting it was clean).
    pub fn stop(&mut self) {
        let mut child = self.daemon.take().expect("daemon running");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let status = wait_timeout(&mut child, Duration::from_secs(60));
        assert!(
            status.success(),
            "unclean exit {status}:\n{}",
            self.log_tail()
        );
        assert!(!is_mounted(&self.mnt));
    }

    /// SIGKILL the daemon and clear the dead mount, as an operator would after a crash.
    pub fn kill(&mut self) {
        let mut child = self.daemon.take().expect("daemon running");
        child.kill().unwrap();
        child.wait().unwrap();
        force_unmount(&self.mnt);
    }

    /// Opens the volume in-process (the daemon must be stopped) to read its figures.
    pub fn stats(&self) -> VolumeStats {
        let v = Volume::open(&self.vol_dir(), PASSPHRASE, VolumeOptions::default()).unwrap();
        v.stats().unwrap()
    }

    pub fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// Moves the (stopped) volume onto a tmpfs of `size` (e.g. "96m") so that tests can fill
    /// the disk. The tmpfs goes away when the guard is dropped.
    pub fn move_to_tmpfs(&mut self, size: &str) -> TmpfsGuard {
        assert!(self.daemon.is_none(), "stop the daemon first");
        let small = self.dir.path().join("small");
        let guard = mount_tmpfs(&small, size);
        let ok = Command::new("cp")
            .arg("-a")
            .arg(self.vol_dir())
            .arg(small.join("vol"))
            .status()
            .unwrap();
        assert!(ok.success());
        let cfg = std::fs::read_to_string(&self.config)
            .unwrap()
            .replace("path = \"vol\"", "path = \"small/vol\"");
        std::fs::write(&self.config, cfg).unwrap();
        guard
    }
}

/// Mounts a tmpfs of `size` (e.g. "96m") at the new directory `dir`, a small filesystem a test
/// can fill. It is unmounted when the guard is dropped.
pub fn mount_tmpfs(dir: &Path, size: &str) -> TmpfsGuard {
    std::fs::create_dir(dir).unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some(format!("size={size}").as_str()),
    )
    .expect("mount tmpfs (needs root)");
    TmpfsGuard(dir.to_path_buf())
}

/// Unmounts a test's tmpfs when dropped.
pub struct TmpfsGuard(PathBuf);

impl Drop for TmpfsGuard {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

impl Drop for TestVolume {
    fn drop(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            let _ = c.kill();
            let _ = c.wait();
            force_unmount(&self.mnt);
        }
    }
}

/// Where test volumes live: on the same disk as the build, not a tmpfs (sizes are real).
fn test_root() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(&p).unwrap();
    p
}

pub fn is_mounted(mnt: &Path) -> bool {
    let want = mnt.canonicalize().unwrap_or(mnt.to_path_buf());
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| {
            let mut f = l.split_whitespace();
            let dev = f.next().unwrap_or("");
            let mp = f.next().unwrap_or("");
            dev.starts_with("tiergate:") && Path::new(mp) == want
        })
}

pub fn force_unmount(mnt: &Path) {
    for _ in 0..50 {
        if !is_mounted(mnt) {
            return;
        }
        let _ = nix::mount::umount2(mnt, nix::mount::MntFlags::MNT_DETACH);
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn wait_timeout(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("process did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Deterministic pseudo-random bytes (incompressible), seeded.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    use rand::{RngCore, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut v = vec![0u8; len];
    rng.fill_bytes(&mut v);
    v
}

/// Runs `tiergate ARGS... --config CONFIG` and returns its output.
pub fn tiergate(args: &[&str], config: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tiergate"))
        .args(args)
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// `tiergate ARGS... --config CONFIG` with `stdin` as its standard input.
pub fn tiergate_stdin(args: &[&str], config: &Path, stdin: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_tiergate"))
        .args(args)
        .arg("--config")
        .arg(config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// A command's status and output, for assertion messages.
pub fn text(o: &std::process::Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// An S3 endpoint and credentials (the shared test server, or a private one).
#[derive(Clone, Debug)]
pub struct S3 {
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    pub key_id: String,
    pub secret: String,
}

/// The Garage server of this test run (`TIERGATE_TEST_S3_*`, exported by scripts/garage.sh).
pub fn shared_s3() -> S3 {
    let var = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| {
            panic!(
                "{name} is not set: the S3 tests need the Garage server that the test command \
                 starts. Run `bash scripts/test.sh`, or `source scripts/garage.sh start` and then \
                 `cargo test --release` in the same shell."
            )
        })
    };
    S3 {
        endpoint: var("TIERGATE_TEST_S3_ENDPOINT"),
        region: var("TIERGATE_TEST_S3_REGION"),
        bucket: var("TIERGATE_TEST_S3_BUCKET"),
        key_id: var("TIERGATE_TEST_S3_ACCESS_KEY_ID"),
        secret: var("TIERGATE_TEST_S3_SECRET_ACCESS_KEY"),
    }
}

/// A bucket prefix of its own for one test.
pub fn unique_prefix(test: &str) -> String {
    format!("{test}-{}", hex::encode(rand::random::<[u8; 4]>()))
}

/// The `[s3]` section for `s3` under `prefix`, with short timeouts so failures show quickly.
pub fn s3_section(s3: &S3, prefix: &str) -> String {
    format!(
        "[s3]\nendpoint = \"{}\"\nregion = \"{}\"\nbucket = \"{}\"\nprefix = \"{prefix}\"\n\
         path_style = true\naccess_key_id = \"{}\"\nsecret_access_key = \"{}\"\n\
         connect_timeout_secs = 2\nrequest_timeout_secs = 30\nmax_attempts = 2\n",
        s3.endpoint, s3.region, s3.bucket, s3.key_id, s3.secret
    )
}

// ------------------------------------------------------------- HTTP/1.1 proxy helpers

/// Reads until the end of an HTTP head; returns the head and what was read past it.
pub fn read_head(s: &mut TcpStream) -> Option<(Vec<u8>, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 << 10];
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(i + 4);
            return Some((buf, rest));
        }
        if buf.len() > 256 << 10 {
            return None;
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A header's value in an HTTP head (first match, case-insensitive name).
pub fn header_value(head: &[u8], name: &str) -> Option<String> {
    String::from_utf8_lossy(head).lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

/// The head with any `Connection` header replaced by `Connection: close`.
pub fn close_after(head: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(head);
    let mut out = String::new();
    for l in text.split("\r\n").filter(|l| !l.is_empty()) {
        let is_conn = l
            .split_once(':')
            .is_some_and(|(k, _)| k.trim().eq_ignore_ascii_case("connection"));
        if !is_conn {
            out.push_str(l);
            out.push_str("\r\n");
        }
    }
    out.push_str("Connection: close\r\n\r\n");
    out.into_bytes()
}

/// A KiB field of a process's /proc status ("VmRSS:", "VmHWM:").
pub fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// A self-signed P-256 certificate for 127.0.0.1: `cert.pem` and `key.pem` in `dir`.
pub fn self_signed_cert(dir: &Path) {
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:P-256", "-nodes", "-days", "2"])
        .args([
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            // A leaf, not a CA: webpki refuses a CA certificate as the server's own.
            "-addext",
            "basicConstraints=critical,CA:FALSE",
        ])
        .arg("-keyout")
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .output()
        .expect("openssl (scripts/install-test-deps.sh installs it)");
    assert!(out.status.success(), "{out:?}");
}

/// setxattr(2) of `name` on `path`; the errno on failure.
pub fn setxattr(path: &Path, name: &str, value: &[u8]) -> Result<(), i32> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    // SAFETY: valid C strings and buffer.
    let r = unsafe {
        libc::setxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap())
    }
}

/// The names in a directory, sorted (no `.` and `..`).
pub fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

//! Issue "an administrator's first day", the daemon's start: a crash's stale mount cleared by
//! the next start (and by the systemd unit's fallback step), every start-up check made before
//! anything listens, a busy status port fatal, the lock's holder named, the demo's banner and
//! stable share port, and fuser's not-implemented noise gone from the log.

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::common::{
    force_unmount, is_mounted, mount_tmpfs, random_bytes, wait_timeout, TestVolume,
};

/// `tiergate serve --config CONFIG` (or the demo, without), logging to `log`, in `cwd`.
fn spawn_serve(config: Option<&Path>, cwd: &Path, log: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let mut c = Command::new(env!("CARGO_BIN_EXE_tiergate"));
    c.arg("serve");
    if let Some(cfg) = config {
        c.arg("--config").arg(cfg);
    }
    c.current_dir(cwd)
        .env("RUST_LOG", "info")
        .env_remove("TIERGATE_CONFIG")
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn tiergate")
}

/// A daemon of this test's own: killed and its mount cleared if the test fails midway.
struct Daemon {
    child: Option<Child>,
    mnt: PathBuf,
    log: PathBuf,
}

impl Daemon {
    fn start(config: Option<&Path>, cwd: &Path, mnt: &Path, log: &Path) -> Daemon {
        let mut child = spawn_serve(config, cwd, log);
        let deadline = Instant::now() + Duration::from_secs(60);
        // Mounted and answering (a dead mount left by a crash is in the mount table too).
        while !(is_mounted(mnt) && nix::sys::statfs::statfs(mnt).is_ok()) {
            if let Some(s) = child.try_wait().unwrap() {
                panic!("tiergate serve exited with {s}:\n{}", read(log));
            }
            assert!(Instant::now() < deadline, "no mount:\n{}", read(log));
            std::thread::sleep(Duration::from_millis(50));
        }
        Daemon {
            child: Some(child),
            mnt: mnt.to_path_buf(),
            log: log.to_path_buf(),
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    fn signal(&mut self, sig: nix::sys::signal::Signal) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig).unwrap();
        wait_timeout(&mut child, Duration::from_secs(60))
    }

    /// SIGTERM and a clean exit.
    fn stop(mut self) {
        let s = self.signal(nix::sys::signal::Signal::SIGTERM);
        assert!(s.success(), "unclean exit {s}:\n{}", read(&self.log));
        assert!(!is_mounted(&self.mnt));
    }

    /// SIGKILL: the mount stays behind, dead.
    fn crash(mut self) {
        self.signal(nix::sys::signal::Signal::SIGKILL);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            force_unmount(&self.mnt);
        }
    }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// A dead FUSE mount: statfs (never answered from the kernel's caches) fails with ENOTCONN.
fn is_dead_mount(mnt: &Path) -> bool {
    is_mounted(mnt)
        && nix::sys::statfs::statfs(mnt).is_err_and(|e| e == nix::errno::Errno::ENOTCONN)
}

/// A loopback port free right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn accepts(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// Runs a `serve` that must refuse to start: waits for its exit, watching that `ports` never
/// accept a connection meanwhile. Returns the exit status and what it logged.
fn refused_start(tv: &TestVolume, ports: &[u16]) -> (ExitStatus, String) {
    let log = tv.dir.path().join("refused.log");
    let _ = std::fs::remove_file(&log);
    let mut child = spawn_serve(Some(&tv.config), tv.dir.path(), &log);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        for &p in ports {
            assert!(
                !accepts(p),
                "port {p} listened during a refused start:\n{}",
                read(&log)
            );
        }
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            force_unmount(&tv.mnt);
            panic!("serve did not refuse to start within 30 s:\n{}", read(&log));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let text = read(&log);
    // Nothing started: no listener, no store connection, no snapshot, no mount.
    for started in [
        "status page on",
        "webdav listening",
        "store probe",
        " mounted mountpoint=",
    ] {
        assert!(
            !text.contains(started),
            "{started:?} during a refused start:\n{text}"
        );
    }
    assert!(!is_mounted(&tv.mnt), "mounted during a refused start");
    (status, text)
}

/// A volume whose status page and share listen on fixed ports, so a test can watch them.
fn volume_on_ports() -> (TestVolume, u16, u16) {
    let (web, dav) = (free_port(), free_port());
    let tv = TestVolume::new(&format!(
        "\n[web]\nlisten = \"127.0.0.1:{web}\"\n\n[webdav]\nlisten = \"127.0.0.1:{dav}\"\n"
    ));
    (tv, web, dav)
}

/// The systemd unit's fallback step, as `/bin/sh` runs it (systemd's `$$` is a `$`).
fn unit_exec_start_pre() -> String {
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/tiergate.service"),
    )
    .unwrap();
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStartPre=-/bin/sh -c '"))
        .expect("the unit has an ExecStartPre=-/bin/sh -c '...' step");
    line.strip_suffix('\'')
        .unwrap()
        .replace("$$", "$")
        .replace("%%", "%")
}

#[test]
fn a_daemon_killed_with_sigkill_is_restarted_over_its_stale_mount() {
    let tv = TestVolume::new("");
    let log = tv.log_path();
    let d = Daemon::start(Some(&tv.config), tv.dir.path(), &tv.mnt, &log);
    let data = random_bytes(21, 3 << 20);
    {
        let mut f = std::fs::File::create(tv.path("before-crash.bin")).unwrap();
        f.write_all(&data).unwrap();
        f.sync_all().unwrap();
    }
    d.crash();
    assert!(
        is_dead_mount(&tv.mnt),
        "SIGKILL should leave a dead mount behind"
    );

    // No human, no fusermount3: the next start clears it and serves what was fsync'd.
    let d = Daemon::start(Some(&tv.config), tv.dir.path(), &tv.mnt, &log);
    assert_eq!(std::fs::read(tv.path("before-crash.bin")).unwrap(), data);
    assert!(
        read(&log).contains("detached a dead mount of this volume"),
        "the start should say what it cleared:\n{}",
        read(&log)
    );

    // The systemd unit's fallback step clears a dead tiergate mount by itself too.
    d.crash();
    assert!(is_dead_mount(&tv.mnt));
    let out = Command::new("/bin/sh")
        .arg("-c")
        .arg(unit_exec_start_pre())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        !is_mounted(&tv.mnt),
        "the unit's ExecStartPre left the dead mount: {out:?}"
    );
    let d = Daemon::start(Some(&tv.config), tv.dir.path(), &tv.mnt, &log);
    assert_eq!(std::fs::read(tv.path("before-crash.bin")).unwrap(), data);
    d.stop();
}

#[test]
fn the_unit_step_leaves_live_and_foreign_mounts_alone() {
    let tv = TestVolume::new("");
    let d = Daemon::start(Some(&tv.config), tv.dir.path(), &tv.mnt, &tv.log_path());
    let other = tv.dir.path().join("other");
    let _tmpfs = mount_tmpfs(&other, "1m");
    let out = Command::new("/bin/sh")
        .arg("-c")
        .arg(unit_exec_start_pre())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(is_mounted(&tv.mnt), "a live tiergate mount was cleared");
    std::fs::write(tv.path("still-here"), b"x").unwrap();
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(
        mounts.contains(&format!(" {} tmpfs ", other.display())),
        "a tmpfs was cleared"
    );
    d.stop();
}

#[test]
fn a_missing_or_non_empty_mountpoint_is_refused_before_anything_listens() {
    let (tv, web, dav) = volume_on_ports();

    std::fs::remove_dir(&tv.mnt).unwrap();
    let (status, log) = refused_start(&tv, &[web, dav]);
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains("does not exist") && log.contains("mkdir -p"),
        "the message should name the fix:\n{log}"
    );

    std::fs::create_dir(&tv.mnt).unwrap();
    std::fs::write(tv.mnt.join("keep.txt"), b"not a backup").unwrap();
    let (status, log) = refused_start(&tv, &[web, dav]);
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains("is not empty") && log.contains("allow_non_empty = true"),
        "the message should name the fix:\n{log}"
    );

    // Anything else mounted there is refused and left alone.
    std::fs::remove_file(tv.mnt.join("keep.txt")).unwrap();
    std::fs::remove_dir(&tv.mnt).unwrap();
    let tmpfs = mount_tmpfs(&tv.mnt, "1m");
    let (status, log) = refused_start(&tv, &[web, dav]);
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("is busy") && log.contains("tmpfs"), "{log}");
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(
        mounts.contains(&format!(" {} tmpfs ", tv.mnt.display())),
        "the tmpfs was touched"
    );
    drop(tmpfs);
    std::fs::remove_dir(&tv.mnt).unwrap();

    // allow_non_empty mounts over the files, which are back after the stop.
    std::fs::create_dir(&tv.mnt).unwrap();
    std::fs::write(tv.mnt.join("keep.txt"), b"not a backup").unwrap();
    let mut cfg = std::fs::read_to_string(&tv.config).unwrap();
    assert!(cfg.trim_end().ends_with("allow_other = true"), "{cfg}");
    cfg.push_str("allow_non_empty = true\n");
    std::fs::write(&tv.config, cfg).unwrap();
    let d = Daemon::start(Some(&tv.config), tv.dir.path(), &tv.mnt, &tv.log_path());
    assert!(
        !tv.mnt.join("keep.txt").exists(),
        "the mount should cover the directory"
    );
    assert!(accepts(web) && accepts(dav));
    d.stop();
    assert_eq!(
        std::fs::read(tv.mnt.join("keep.txt")).unwrap(),
        b"not a backup"
    );
}

#[test]
fn a_busy_status_page_port_refuses_the_start() {
    let (tv, web, dav) = volume_on_ports();
    let squatter = TcpListener::bind(("127.0.0.1", web)).unwrap();
    let (status, log) = refused_start(&tv, &[dav]);
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains(&format!("127.0.0.1:{web}")) && log.contains("[web] listen"),
        "the message should name the port and the setting:\n{log}"
    );
    drop(squatter);
}

#[test]
fn a_second_daemon_names_the_process_holding_the_volume() {
    let tv = TestVolume::new("");
    let d = Daemon::start(Some(&tv.config), tv.dir.path(), &tv.mnt, &tv.log_path());
    let log = tv.dir.path().join("second.log");
    let mut second = spawn_serve(Some(&tv.config), tv.dir.path(), &log);
    let status = wait_timeout(&mut second, Duration::from_secs(30));
    let text = read(&log);
    assert_eq!(status.code(), Some(1), "{text}");
    assert!(
        text.contains("in use by another tiergate process")
            && text.contains(&format!("pid {}", d.pid()))
            && text.contains("serve --config"),
        "the message should name the holder's pid and command:\n{text}"
    );
    assert!(
        is_mounted(&tv.mnt),
        "the running daemon's mount was touched"
    );
    d.stop();
}

/// The share URL of the demo's banner.
fn banner_share_port(log: &str) -> u16 {
    let line = log
        .lines()
        .find(|l| l.trim_start().starts_with("share "))
        .unwrap_or_else(|| panic!("no share line in the banner:\n{log}"));
    let url = line.split_whitespace().nth(1).unwrap();
    let port = url
        .trim_start_matches("http://127.0.0.1:")
        .trim_end_matches('/');
    port.parse()
        .unwrap_or_else(|_| panic!("no port in {line:?}"))
}

#[test]
fn the_demo_prints_one_banner_and_keeps_its_share_port() {
    let cwd = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let mnt = cwd.path().join("tiergate-demo/mnt");
    let mut ports = Vec::new();
    for start in 0..2 {
        let log = cwd.path().join(format!("demo-{start}.log"));
        let d = Daemon::start(None, cwd.path(), &mnt, &log);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !read(&log).contains("stop it with") {
            assert!(Instant::now() < deadline, "no banner:\n{}", read(&log));
            std::thread::sleep(Duration::from_millis(50));
        }
        let text = read(&log);
        assert_eq!(
            text.matches("tiergate demo is running").count(),
            1,
            "{text}"
        );
        let pid = d.pid();
        for want in [
            format!("mounted at    {}", mnt.display()),
            "status page   http://127.0.0.1:".to_string(),
            "the store is a directory on this disk: nothing is off-site".to_string(),
            format!("Ctrl-C, or `kill {pid}`"),
        ] {
            assert!(text.contains(&want), "banner lacks {want:?}:\n{text}");
        }
        let port = banner_share_port(&text);
        assert!(accepts(port), "the share does not listen on {port}");
        ports.push(port);
        d.stop();
    }
    assert_eq!(
        ports[0], ports[1],
        "the share's port changed across restarts"
    );
    let cfg = read(&cwd.path().join("tiergate-demo/tiergate.toml"));
    assert!(
        cfg.contains(&format!("listen = \"127.0.0.1:{}\"", ports[0])),
        "{cfg}"
    );
}

#[test]
fn ioctls_from_backup_tools_get_enotty_without_log_noise() {
    let mut tv = TestVolume::new("");
    tv.start();
    std::fs::write(tv.path("f"), b"data").unwrap();
    let f = std::fs::File::open(tv.path("f")).unwrap();
    // FS_IOC_GETFLAGS, as borg and lsattr ask it.
    const FS_IOC_GETFLAGS: libc::c_ulong = 0x8008_6601;
    let mut flags: libc::c_long = 0;
    for _ in 0..5 {
        // SAFETY: a valid fd and a pointer to a long, as FS_IOC_GETFLAGS expects.
        let r = unsafe {
            libc::ioctl(
                std::os::fd::AsRawFd::as_raw_fd(&f),
                FS_IOC_GETFLAGS as _,
                &mut flags,
            )
        };
        let errno = std::io::Error::last_os_error().raw_os_error();
        assert_eq!(r, -1);
        assert!(
            matches!(
                errno,
                Some(libc::ENOTTY) | Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP)
            ),
            "{errno:?}"
        );
    }
    drop(f);
    tv.stop();
    let log = read(&tv.log_path());
    assert!(
        !log.contains("Not Implemented"),
        "fuser noise in the log:\n{log}"
    );
}

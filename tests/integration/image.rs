//! The appliance image's first-boot step, without a VM: `image/test-firstboot.py` checks the
//! seed's rules (explicit NFS clients and management networks, unprivileged ports), the
//! firewall, smb.conf and tiergate.toml it writes, and that a seed disk is applied at the first
//! boot only. Here it runs in the test command, and the tiergate.toml it writes is loaded by
//! tiergate's own config code.

use std::path::PathBuf;
use std::process::Command;

use tiergate::config::Config;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn firstboot_unit_tests_pass() {
    let out = Command::new("python3")
        .arg(repo().join("image/test-firstboot.py"))
        .output()
        .expect("python3 (Debian package python3) runs image/test-firstboot.py");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "image/test-firstboot.py:\n{stderr}");
    assert!(stderr.contains("\nOK"), "{stderr}");
}

/// Runs the Python `code` with the first-boot script loaded as the module `fb` (and `sys`
/// imported), `arg` as `sys.argv[2]`; returns what it printed, or panics with its stderr.
fn with_firstboot(code: &str, arg: &str) -> Vec<u8> {
    let prelude = r#"
import importlib.machinery, importlib.util, sys
loader = importlib.machinery.SourceFileLoader("fb", sys.argv[1])
spec = importlib.util.spec_from_loader("fb", loader)
fb = importlib.util.module_from_spec(spec)
loader.exec_module(fb)
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(format!("{prelude}{code}"))
        .arg(repo().join("image/rootfs/usr/lib/tiergate/firstboot"))
        .arg(arg)
        .output()
        .expect("python3 runs the first-boot script");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The config the first-boot step writes for a seed is one tiergate accepts: the status server
/// and the share with TLS, the share with users.
#[test]
fn firstboot_config_loads_in_tiergate() {
    let seed = repo().join("image/seed.example.toml");
    let out = with_firstboot(
        r#"
seed = fb.load_seed(sys.argv[2])
fb.validate(seed)
sys.stdout.write(fb.render_config(seed, "1GiB"))
"#,
        seed.to_str().unwrap(),
    );
    let text = String::from_utf8(out).unwrap();
    let cfg = Config::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert!(cfg.webdav.tls_cert.is_some() && cfg.webdav.auth_required());
    assert!(!cfg.web.listen.ip().is_loopback());
    assert!(cfg.fuse.allow_other);
    assert!(
        text.contains("[web]\nlisten = \"0.0.0.0:8081\"\ntls_cert = "),
        "{text}"
    );
    // Only loud warnings that do not apply: TLS is on, the share needs a password.
    let warnings = cfg.warnings();
    assert!(
        warnings
            .iter()
            .all(|w| !w.contains("plain HTTP") && !w.contains("no password")),
        "{warnings:?}"
    );
}

/// The boot test checks the guest's firewall through `image/nft-summary.py` over
/// `nft -j list ruleset` (JSON, not the text listing). Here the ruleset the first-boot step
/// writes for the boot test's seed (SMB, NFS, WebDAV, SSH open; the status page from one
/// management address) is loaded into a network namespace of its own and summed up the same
/// way. Needs root, nft (nftables) and ip (iproute2).
#[test]
fn firewall_summary_reads_the_rulesets_json() {
    let rules = with_firstboot(
        r#"
import ipaddress
sys.stdout.write(fb.nft_conf([22, 445, 2049, 8080], 8081,
                             [ipaddress.ip_network("10.0.2.2/32"),
                              ipaddress.ip_network("192.0.2.0/24")]))
"#,
        "",
    );
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("nftables.conf");
    std::fs::write(&conf, rules).unwrap();

    let ns = format!("tg-nft-{}", std::process::id());
    let run = |args: &[&str]| {
        let out = Command::new(args[0])
            .args(&args[1..])
            .output()
            .unwrap_or_else(|e| panic!("{args:?}: {e} (needs nftables and iproute2)"));
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    run(&["ip", "netns", "add", &ns]);
    struct Netns(String);
    impl Drop for Netns {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }
    let _ns = Netns(ns.clone());
    run(&[
        "ip",
        "netns",
        "exec",
        &ns,
        "nft",
        "-f",
        conf.to_str().unwrap(),
    ]);
    let json = run(&["ip", "netns", "exec", &ns, "nft", "-j", "list", "ruleset"]);
    let rules = dir.path().join("nft.json");
    std::fs::write(&rules, json).unwrap();

    let summary = run(&[
        "python3",
        repo().join("image/nft-summary.py").to_str().unwrap(),
        rules.to_str().unwrap(),
    ]);
    let summary: serde_json::Value = serde_json::from_slice(&summary).unwrap();
    assert_eq!(
        summary,
        serde_json::json!({
            "open_tcp": [22, 445, 2049, 8080],
            "restricted_tcp": [
                {"ports": [8081], "from": {"ip saddr": ["10.0.2.2", "192.0.2.0/24"]}}
            ],
            "dropped_packets": 0,
        })
    );
}

//! Issue-22 filesystem fidelity tests (see docs/SEMANTICS.md): POSIX ACLs and set-uid/set-gid
//! bits through the real mount, each compared with the same operations on a tmpfs (the
//! kernel's own behaviour on a local filesystem).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{mount_tmpfs, setxattr, TestVolume, TmpfsGuard};

/// A mount and a tmpfs reference, each with a world-writable directory `name` to work in.
struct Pair {
    v: TestVolume,
    _tmpfs: TmpfsGuard,
    reference: PathBuf,
    mounted: PathBuf,
}

impl Pair {
    fn new(name: &str) -> Pair {
        let mut v = TestVolume::new("");
        v.start();
        // uid 65534 must reach the mount and the tmpfs.
        chmod(v.dir.path(), 0o755);
        let tmpfs = mount_tmpfs(&v.dir.path().join("ref"), "64m");
        let reference = v.dir.path().join("ref").join(name);
        let mounted = v.mnt.join(name);
        for d in [&reference, &mounted] {
            std::fs::create_dir(d).unwrap();
            chmod(d, 0o777);
        }
        Pair {
            v,
            _tmpfs: tmpfs,
            reference,
            mounted,
        }
    }

    /// Runs `script` in both directories; returns (reference output, mount output).
    fn both(&self, script: &str) -> (String, String) {
        (sh(&self.reference, script), sh(&self.mounted, script))
    }
}

fn chmod(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Runs a bash script in `dir`; stdout and stderr together.
fn sh(dir: &Path, script: &str) -> String {
    let out = Command::new("bash")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .output()
        .expect("bash");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// getfacl/getfattr output with its per-file blocks sorted (directory order differs).
fn sorted_blocks(s: &str) -> String {
    let mut blocks: Vec<&str> = s.split("\n\n").map(str::trim).collect();
    blocks.retain(|b| !b.is_empty());
    blocks.sort();
    blocks.join("\n\n")
}

/// What `cp -a` must preserve: ACLs (getfacl -R), modes and owners, and which xattrs exist.
const DESCRIBE: &str = "getfacl -n -R . 2>&1; echo; echo; \
                        find . -printf '%p %y %m %u %g\\n' | sort; echo; echo; \
                        getfattr -R -m - . 2>&1";

#[test]
fn cp_a_keeps_modes_and_acls() {
    let p = Pair::new("cp");
    let build = "set -e; umask 022; mkdir tree; cd tree
        echo a > f755; chmod 0755 f755
        echo b > f640; chmod 0640 f640
        echo c > f600; chmod 0600 f600
        mkdir d700; echo x > d700/in; chmod 0700 d700
        mkdir sg; chgrp 100 sg; chmod 2775 sg; echo y > sg/file
        echo n > named; setfacl -m u:1000:rw,g:100:r named
        echo g > grp; chmod 0640 grp; setfacl -m g:100:rw grp
        mkdir def; setfacl -d -m u:1000:rwx,g::r-x,o::- def
        touch def/inherited; mkdir def/sub; echo z > def/sub/deep";
    assert_eq!(sh(&p.reference, build), "");
    let out = sh(
        &p.reference,
        &format!("cp -a tree {}", p.mounted.join("tree").display()),
    );
    assert_eq!(out, "", "cp -a into the mount");
    let src = sorted_blocks(&sh(&p.reference.join("tree"), DESCRIBE));
    let dst = sorted_blocks(&sh(&p.mounted.join("tree"), DESCRIBE));
    assert!(src.contains("user:1000:rw-") && src.contains("# flags: -s-"));
    assert_eq!(dst, src, "the copy in the mount differs from its source");
    // Files whose ACL says no more than their mode carry no ACL record.
    let listed = sh(&p.mounted.join("tree"), "getfattr -m - f755 f640 d700");
    assert_eq!(listed, "");
}

#[test]
fn setfacl_chmod_and_default_acls_behave_as_on_tmpfs() {
    let p = Pair::new("ops");
    let script = "umask 022
        touch f; chmod 640 f
        setfacl -m u:1000:rwx f; stat -c 'after setfacl %a' f
        chmod 604 f; getfacl -n -c f
        setfacl -m m::r f; stat -c 'after mask %a' f
        setfacl -b f; stat -c 'after -b %a' f; getfattr -m - f
        touch min; setfacl -m u::rwx,g::r-x,o::r-x min; stat -c 'minimal %a' min; getfattr -m - min
        mkdir d; chgrp 100 d; chmod 2770 d; setfacl -d -m u:1000:rwx,g::rwx,o::r-x d
        (umask 077; touch d/file; mkdir d/sub; mknod d/fifo p; ln -s file d/link)
        stat -c '%n %a %g' d/file d/sub d/fifo d/sub/. ; stat -L -c '%n %a' d/link
        getfacl -n -c d/file d/sub d/fifo
        mkdir plain; (umask 027; touch plain/f; mkdir plain/d); stat -c '%n %a' plain/f plain/d
        setfacl -k d; getfacl -n -c d; touch d/after; getfacl -n -c d/after; stat -c '%n %a' d/after";
    let (reference, mounted) = p.both(script);
    assert!(
        reference.contains("after setfacl 670") && reference.contains("d/file 664 100"),
        "{reference}"
    );
    assert_eq!(mounted, reference);
}

#[test]
fn acls_are_enforced_for_other_users() {
    let p = Pair::new("enforce");
    let setup = "set -e
        echo secret > granted; chmod 600 granted; setfacl -m u:65534:r granted
        echo open > denied; chmod 644 denied; setfacl -m u:65534:- denied
        echo group > bygroup; chmod 640 bygroup; setfacl -m g:65534:r bygroup
        mkdir dir; chmod 700 dir; setfacl -m u:65534:rwx dir
        mkdir closed; chmod 777 closed; setfacl -m u:65534:r-x closed";
    let (a, b) = p.both(setup);
    assert_eq!((a.as_str(), b.as_str()), ("", ""));
    let run = "as() { setpriv --reuid=65534 --regid=65534 --clear-groups \"$@\" 2>&1 | sed 's/^[a-z]*: //'; }
        as cat granted; as cat denied; as cat bygroup
        as touch dir/new && echo created; as touch closed/new";
    let (reference, mounted) = p.both(run);
    assert_eq!(
        reference,
        "secret\ndenied: Permission denied\ngroup\ncreated\n\
         cannot touch 'closed/new': Permission denied\n"
    );
    assert_eq!(mounted, reference);
    // The grant is the ACL's: the mode alone (0600, 0700) denies uid 65534.
    assert!(p.mounted.join("dir/new").exists());
}

#[test]
fn malformed_acl_values_are_refused() {
    let p = Pair::new("bad");
    let f = p.mounted.join("f");
    std::fs::write(&f, b"x").unwrap();
    chmod(&f, 0o640);
    let entry = |tag: u16, perm: u16, id: u32| {
        let mut v = tag.to_le_bytes().to_vec();
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
        v
    };
    let acl = |entries: &[Vec<u8>]| {
        let mut v = 2u32.to_le_bytes().to_vec();
        for e in entries {
            v.extend_from_slice(e);
        }
        v
    };
    let u = u32::MAX;
    let bad: Vec<Vec<u8>> = vec![
        vec![2, 0, 0, 0, 1],
        {
            let mut v = acl(&[entry(1, 6, u), entry(4, 4, u), entry(0x20, 4, u)]);
            v[0] = 3;
            v
        },
        // A named user without a mask; an unknown tag; permissions beyond rwx.
        acl(&[
            entry(1, 6, u),
            entry(2, 4, 7),
            entry(4, 4, u),
            entry(0x20, 4, u),
        ]),
        acl(&[
            entry(1, 6, u),
            entry(0x40, 4, u),
            entry(4, 4, u),
            entry(0x20, 4, u),
        ]),
        acl(&[entry(1, 0xff, u), entry(4, 4, u), entry(0x20, 4, u)]),
    ];
    // The kernel parses the value first (an unknown version is EOPNOTSUPP there, on any
    // filesystem); whatever reaches the daemon is checked again. Same answers as tmpfs.
    let r = p.reference.join("f");
    std::fs::write(&r, b"x").unwrap();
    for (i, value) in bad.iter().enumerate() {
        let got = setxattr(&f, "system.posix_acl_access", value);
        assert!(got.is_err(), "case {i} accepted");
        assert_eq!(
            got,
            setxattr(&r, "system.posix_acl_access", value),
            "case {i}"
        );
    }
    assert_eq!(
        setxattr(&f, "system.posix_acl_access", &bad[2]),
        Err(libc::EINVAL)
    );
    let st = sh(&p.mounted, "stat -c %a f; getfattr -m - f");
    assert_eq!(st, "640\n");
    assert!(p.v.log_tail().lines().all(|l| !l.contains("panicked")));
}

#[test]
fn setuid_and_setgid_are_cleared_as_on_tmpfs() {
    let p = Pair::new("privs");
    // As uid 65534 (groups: 65534 only) on files of group 65534 (a member) and 0 (not a
    // member), then chown and a write as root.
    let script = r#"umask 022
        as() { setpriv --reuid=65534 --regid=65534 --clear-groups "$@"; }
        for g in 65534 0; do for m in 6755 6745 2745 4755 2755; do
            f=f_${g}_$m; echo x > $f; chown 65534:$g $f
            chmod $m $f; as sh -c "echo y >> $f"; echo "write $g $m $(stat -c %a $f)"
            chmod $m $f; as truncate -s 1 $f; echo "truncate $g $m $(stat -c %a $f)"
            chmod $m $f; as fallocate -l 8192 $f; echo "fallocate $g $m $(stat -c %a $f)"
            chmod $m $f; as chown 65534 $f; echo "chown $g $m $(stat -c %a $f)"
            chmod $m $f; chown 65534 $f; echo "root-chown $g $m $(stat -c %a $f)"
            chmod $m $f; echo z >> $f; echo "root-write $g $m $(stat -c %a $f)"
        done; done"#;
    let (reference, mounted) = p.both(script);
    assert!(reference.contains("write 0 2745 745"), "{reference}");
    assert_eq!(mounted, reference);
}

/// A file uploaded through the WebDAV share is staged elsewhere and renamed into place; it
/// still gets what a file created in its directory gets: the set-gid directory's group and
/// the access ACL from its default ACL (mode 0644 masked by it).
#[test]
fn webdav_uploads_get_the_directory_s_group_and_default_acl() {
    let p = Pair::new("dav");
    let setup = "chgrp 100 .; chmod 2775 .; setfacl -d -m u:1000:rwx,g::rwx,o::r-x .";
    let (a, b) = p.both(setup);
    assert_eq!((a.as_str(), b.as_str()), ("", ""));
    let dav = crate::webdav::share(&p.v);
    assert_eq!(dav.put("/dav/new.txt", b"hello").status, 201);
    let create =
        "python3 -c \"import os; os.close(os.open('new.txt', os.O_CREAT | os.O_WRONLY, 0o644))\"";
    assert_eq!(sh(&p.reference, create), "");
    let (reference, mounted) = p.both("stat -c '%a %g' new.txt; getfacl -n -c new.txt");
    assert!(reference.starts_with("644 100\n"), "{reference}");
    assert!(reference.contains("user:1000:rwx"), "{reference}");
    assert_eq!(mounted, reference);
    // Replacing a file keeps its mode and ACL.
    assert_eq!(sh(&p.mounted, "setfacl -m u:1000:rw,g::r,o::- new.txt"), "");
    let describe = "stat -c %a new.txt; getfacl -n -c new.txt";
    let before = sh(&p.mounted, describe);
    assert!(before.starts_with("660\n"), "{before}");
    assert_eq!(dav.put("/dav/new.txt", b"second").status, 204);
    assert_eq!(std::fs::read(p.mounted.join("new.txt")).unwrap(), b"second");
    assert_eq!(sh(&p.mounted, describe), before);
}

#!/usr/bin/env bash
# Installs what the test suites need on a Debian 12 machine, as root. Idempotent: installs only
# what is missing, runs `apt-get update` only if an install fails, and says what it did.
#
#   Debian packages  fuse3 (fusermount3, /etc/fuse.conf), attr (getfattr/setfattr),
#                    acl and libacl1-dev (pjdfstest's ACL support builds against libacl),
#                    litmus (the WebDAV conformance suite), rclone (a real WebDAV client),
#                    restic, borgbackup, duplicity, rsync, tar (the backup clients of
#                    tests/suites/clients.sh), openssl (test certificates), nftables (`nft -c`
#                    checks the image's firewall rules in image/test-firstboot.py), chromium
#                    (headless, for the status page test; installed only when
#                    /usr/bin/chromium is missing); for the image steps (image/build.sh,
#                    image/boot-test.sh): debootstrap, fdisk, e2fsprogs, binutils, smbclient,
#                    curl, openssh-client, mtools, dosfstools, and qemu-system-x86 with
#                    qemu-utils at one version (scripts/lib.sh install_qemu: from
#                    bookworm-backports where the machine's qemu-utils is a backport)
#                    Never removes a package to install another (apt-get --no-remove).
#   dummy user       `tests` (with group `tests`): pjdfstest switches to it and to `nobody`
#   cargo install    pjdfstest 0.2.2, fsx 0.3.2 and cargo-fuzz 0.13.2, pinned, with --locked,
#                    into ~/.cargo/bin
#   nightly          the Rust nightly toolchain (rustup), which cargo-fuzz builds with
#   garage 2.5.0     the S3 server of the backend tests, via scripts/garage.sh install (cargo
#                    install --locked; 15-20 minutes on 2 cores the first time, then kept)
#   moto 5.2.1       `moto_server`, the S3 server of the Object Lock tests (Garage has no Object
#                    Lock): pip install 'moto[server]==5.2.1' (seconds), unless present
set -euo pipefail

PJDFSTEST_VERSION=0.2.2
FSX_VERSION=0.3.2
CARGO_FUZZ_VERSION=0.13.2
APT_PACKAGES=(fuse3 attr acl libacl1-dev litmus rclone restic borgbackup duplicity rsync tar openssl nftables tmux
    debootstrap fdisk e2fsprogs binutils smbclient curl openssh-client mtools dosfstools)

did=()
note() {
    echo "install-test-deps: $*"
}

sudo=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        sudo=(sudo -n)
    else
        note "must run as root (or with sudo available)" >&2
        exit 1
    fi
fi

# --- Debian packages -------------------------------------------------------------------------
missing=()
for p in "${APT_PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null | grep -q '^ii'; then
        missing+=("$p")
    fi
done
# Chromium by its binary: any install that provides /usr/bin/chromium will do.
if [ ! -x /usr/bin/chromium ]; then
    missing+=(chromium)
fi
if [ "${#missing[@]}" -gt 0 ]; then
    note "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt_install=("${sudo[@]}" apt-get install -y -q -o DPkg::Lock::Timeout=600
        --no-install-recommends --no-remove "${missing[@]}")
    if ! "${apt_install[@]}"; then
        note "install failed; apt-get update and retry"
        "${sudo[@]}" apt-get update -q
        "${apt_install[@]}"
    fi
    did+=("apt: ${missing[*]}")
else
    note "apt packages present: ${APT_PACKAGES[*]} chromium"
fi

# qemu-system-x86 and qemu-utils: one origin, one version (scripts/lib.sh).
# shellcheck disable=SC2016 # $1 is the inner shell's
if ! "${sudo[@]}" bash -c '. "$1/lib.sh" && install_qemu' install_qemu "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"; then
    note "could not install qemu-system-x86 and qemu-utils at one version" >&2
    exit 1
fi
note "qemu-system-x86 and qemu-utils $(dpkg-query -W -f '${Version}' qemu-utils)"

# --- FUSE device -----------------------------------------------------------------------------
if [ ! -c /dev/fuse ]; then
    "${sudo[@]}" modprobe fuse 2>/dev/null || true
fi
if [ -c /dev/fuse ]; then
    note "/dev/fuse present"
else
    note "WARNING: no /dev/fuse; the mount tests cannot run on this machine" >&2
fi

# --- dummy users for pjdfstest -----------------------------------------------------------------
if ! getent passwd nobody >/dev/null; then
    note "WARNING: no user 'nobody'; pjdfstest will refuse to run" >&2
fi
if getent passwd tests >/dev/null; then
    note "user 'tests' present"
else
    if getent group tests >/dev/null; then
        "${sudo[@]}" useradd --system --gid tests --no-create-home --home-dir / \
            --shell /usr/sbin/nologin --comment "Dummy user for pjdfstest" tests
    else
        "${sudo[@]}" useradd --system --user-group --no-create-home --home-dir / \
            --shell /usr/sbin/nologin --comment "Dummy user for pjdfstest" tests
    fi
    did+=("user: tests")
    note "created user 'tests'"
fi

# --- pinned cargo tools ------------------------------------------------------------------------
cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"
if ! command -v cargo >/dev/null 2>&1; then
    export PATH="$cargo_bin:$PATH"
fi
command -v cargo >/dev/null 2>&1 || { note "cargo not found" >&2; exit 1; }

# cargo_tool CRATE VERSION: installs CRATE at VERSION unless `CRATE --version` already says so.
cargo_tool() {
    local crate="$1" version="$2" have=""
    if [ -x "$cargo_bin/$crate" ]; then
        have="$("$cargo_bin/$crate" --version 2>/dev/null | awk '{ print $2 }')" || have=""
    fi
    if [ "$have" = "$version" ]; then
        note "$crate $version present"
        return 0
    fi
    note "cargo install --locked $crate@$version (had: ${have:-none})"
    cargo install --quiet --locked --force --version "$version" "$crate"
    did+=("cargo: $crate $version")
}
cargo_tool pjdfstest "$PJDFSTEST_VERSION"
cargo_tool fsx "$FSX_VERSION"
# cargo-fuzz reports "cargo-fuzz 0.13.2": the same second field.
cargo_tool cargo-fuzz "$CARGO_FUZZ_VERSION"
if rustup run nightly rustc --version >/dev/null 2>&1; then
    note "nightly toolchain present"
elif command -v rustup >/dev/null 2>&1; then
    note "rustup toolchain install nightly --profile minimal (for cargo-fuzz)"
    rustup toolchain install nightly --profile minimal
    did+=("rustup: nightly")
else
    note "WARNING: no rustup; the fuzz step needs a nightly toolchain" >&2
fi

# shellcheck source=scripts/garage.sh
. "$(dirname "${BASH_SOURCE[0]}")/garage.sh" --
if garage_has_version; then
    note "garage $GARAGE_VERSION present"
else
    note "installing garage $GARAGE_VERSION (cargo install --locked; 15-20 min on 2 cores)"
    garage_install
    did+=("cargo: garage $GARAGE_VERSION")
fi

MOTO_VERSION=5.2.1
if command -v moto_server >/dev/null 2>&1 &&
    [ "$(python3 -c 'import moto; print(moto.__version__)' 2>/dev/null)" = "$MOTO_VERSION" ]; then
    note "moto $MOTO_VERSION present"
else
    note "pip install moto[server]==$MOTO_VERSION (the Object Lock tests' S3 server)"
    python3 -m pip install --quiet "moto[server]==$MOTO_VERSION"
    did+=("pip: moto $MOTO_VERSION")
fi

if [ "${#did[@]}" -eq 0 ]; then
    note "nothing to do"
else
    note "done: $(printf '%s; ' "${did[@]}" | sed 's/; $//')"
fi

#!/bin/bash
# Builds the tiergate appliance: a bootable x86-64 qcow2 disk image with Debian 12 (bookworm),
# tiergate and its systemd unit, Samba and NFS exports of the FUSE mount, a first-boot step that
# reads the tenant's settings from a seed, and an nftables firewall. See image/README.md.
#
#   sudo image/build.sh            # output in target/image/
#
# Environment (all optional):
#   TIERGATE_BIN        the tiergate binary (default target/release/tiergate; built with
#                       `cargo build --release --locked` when missing)
#   IMAGE_SIZE          virtual disk size (default 4G; the root partition grows to fill a larger
#                       disk at boot)
#   DEBIAN_MIRROR       default: the mirror apt on this host uses for bookworm (else for the
#                       host's own release), from /etc/apt/sources.list(.d); a
#                       snapshot.debian.org URL pins every package version
#   DEBIAN_SECURITY_MIRROR  default: the one apt uses for bookworm-security ("none": leave out;
#                       also the default when apt has no security source)
#   SOURCE_DATE_EPOCH   timestamps in the image (default: the commit time of HEAD)
#   OUT                 output directory (default target/image)
#   IMAGE_CACHE         the downloaded packages (debootstrap's and the chroot's apt's), kept for
#                       the next build (default OUT/cache; the test command uses
#                       /var/cache/tiergate-image, which outlives a fresh clone)
#
# Needs root (debootstrap, chroot, a loop mount for the boot loader), about 3 GiB in OUT, and
# network access to the Debian mirror. Missing host tools are installed with apt-get
# (scripts/lib.sh: never removing a package; qemu-utils with qemu-system-x86 at one version).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
# shellcheck source=scripts/lib.sh
. "$repo/scripts/lib.sh"
out=${OUT:-$repo/target/image}
cache=${IMAGE_CACHE:-$out/cache}
suite=bookworm
size=${IMAGE_SIZE:-4G}
binary=${TIERGATE_BIN:-$repo/target/release/tiergate}
name=tiergate-appliance

# Fixed identifiers, so two builds of the same inputs produce the same partition table and file
# system ids (every appliance shares them, as cloud images do; nothing relies on them being
# unique). The root file system is found by UUID.
disk_id=0x74676174                                   # "tgat"
root_uuid=7d1c0a6e-3b1f-4c52-9a36-5e0b7e1a2c01
hash_seed=0f3c6a52-8d4e-4b1a-b7c9-2e5d8f1a6b30
part_start=2048                                      # sectors: 1 MiB alignment

log() { printf '\n== %s\n' "$*"; }
die() { printf 'build.sh: %s\n' "$*" >&2; exit 1; }

[[ $(id -u) == 0 ]] || die "run as root (debootstrap, chroot and a loop mount need it)"
[[ $(uname -m) == x86_64 ]] || die "build on x86-64 (the image is x86-64)"

start_s=$(date +%s)
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$repo" log -1 --format=%ct)}
export LC_ALL=C.UTF-8 TZ=UTC DEBIAN_FRONTEND=noninteractive
# mke2fs takes its timestamps from this instead of the clock.
export E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH

# --- host tools: install only what is missing --------------------------------------------------
need=()
for pair in debootstrap:debootstrap sfdisk:fdisk mke2fs:e2fsprogs losetup:mount objcopy:binutils \
    python3:python3; do
    command -v "${pair%%:*}" >/dev/null || need+=("${pair#*:}")
done
if ((${#need[@]})); then
    log "installing host tools: ${need[*]}"
    apt_install "${need[@]}" || die "could not install ${need[*]}"
fi
# qemu-img; with qemu-system-x86 of the same version, which the boot test needs.
install_qemu || die "could not install qemu-utils and qemu-system-x86 at one version"

# The Debian mirror: the one apt uses here, so the build works wherever apt does.
if [[ -z ${DEBIAN_MIRROR:-} ]]; then
    DEBIAN_MIRROR=$(debian_mirror "$suite" "$(host_suite)") ||
        die "apt has no Debian source on this host: set DEBIAN_MIRROR"
fi
if [[ -z ${DEBIAN_SECURITY_MIRROR:-} ]]; then
    DEBIAN_SECURITY_MIRROR=$(debian_mirror "$suite-security" "$(host_suite)-security") ||
        DEBIAN_SECURITY_MIRROR=none
fi
mirror=$DEBIAN_MIRROR
security_mirror=$DEBIAN_SECURITY_MIRROR

# --- work area ---------------------------------------------------------------------------------
work=$out/work
rootfs=$work/rootfs
mnt=$work/mnt
raw=$work/disk.raw
mkdir -p "$cache/debootstrap" "$cache/apt-archives/partial" "$work"

mounts=()
cleanup() {
    local m
    for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do
        m=${mounts[i]}
        mountpoint -q "$m" && umount -l "$m"
    done
    mounts=()
}
trap cleanup EXIT
bind_system() { # bind /dev, /proc, /sys into a chroot
    local r=$1 d
    for d in dev dev/pts proc sys; do
        mkdir -p "$r/$d"
        mount --bind "/$d" "$r/$d"
        mounts+=("$r/$d")
    done
}
unbind_system() { cleanup; }

if [[ -d $rootfs ]]; then
    log "removing the previous build's root file system"
    cleanup
    rm -rf --one-file-system "$rootfs"
fi

# --- Debian base -------------------------------------------------------------------------------
log "debootstrap $suite (minbase) from $mirror"
debootstrap --variant=minbase --arch=amd64 --components=main \
    --cache-dir="$cache/debootstrap" "$suite" "$rootfs" "$mirror"

cat >"$rootfs/etc/apt/sources.list" <<EOF
deb $mirror $suite main
deb $mirror $suite-updates main
EOF
[[ $security_mirror == none ]] ||
    echo "deb $security_mirror $suite-security main" >>"$rootfs/etc/apt/sources.list"
cat >"$rootfs/etc/apt/apt.conf.d/90tiergate" <<'EOF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
EOF
# No daemon starts inside the chroot.
printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"
chmod 0755 "$rootfs/usr/sbin/policy-rc.d"
echo tiergate >"$rootfs/etc/hostname"
cp /etc/resolv.conf "$rootfs/etc/resolv.conf"

bind_system "$rootfs"
in_root() { chroot "$rootfs" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    LC_ALL=C.UTF-8 DEBIAN_FRONTEND=noninteractive SOURCE_DATE_EPOCH="$SOURCE_DATE_EPOCH" "$@"; }

# The chroot's apt downloads into the cache, bind-mounted at /mnt for the install only (so
# `apt-get clean` below does not empty it, and nothing of it stays in the image).
mount --bind "$cache/apt-archives" "$rootfs/mnt"
mounts+=("$rootfs/mnt")
apt_cached=(-o Dir::Cache::archives=/mnt/ -o APT::Sandbox::User=root)
mapfile -t packages < <(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' "$here/packages.txt")
log "installing ${#packages[@]} packages"
in_root apt-get update -q
in_root apt-get "${apt_cached[@]}" -y -q upgrade
in_root apt-get "${apt_cached[@]}" -y -q install --no-remove "${packages[@]}"
# Drops the cached packages the mirror no longer has.
in_root apt-get "${apt_cached[@]}" -q autoclean

# --- the tiergate binary (built if missing; cargo may wait for the shared target lock) ------
if [[ ! -x $binary ]]; then
    log "building tiergate (cargo build --release --locked)"
    # Without this script's SOURCE_DATE_EPOCH: build scripts that watch it would rebuild the
    # shared target directory's crates for everyone.
    (cd "$repo" && env -u SOURCE_DATE_EPOCH -u E2FSPROGS_FAKE_TIME cargo build --release --locked)
fi
tg_version=$("$binary" --version)
tg_commit=$(git -C "$repo" rev-parse HEAD)
tg_dirty=$(git -C "$repo" status --porcelain --untracked-files=no -- src Cargo.toml Cargo.lock \
    systemd | wc -l)
tg_sha=$(sha256sum "$binary" | cut -d' ' -f1)

# --- tiergate and the appliance's files --------------------------------------------------------
log "installing tiergate $tg_version and the appliance files"
# The release profile keeps debug info (~170 MB); the image gets the binary without it (symbols
# stay, for backtraces).
objcopy --strip-debug "$binary" "$rootfs/usr/bin/tiergate"
chmod 0755 "$rootfs/usr/bin/tiergate"
# Shell completion and man pages, generated from the CLI definition by the binary itself (a
# binary from before `tiergate completions` and `tiergate man` gets none, said in the log).
if "$binary" completions bash >"$work/tiergate.bash" 2>/dev/null &&
    "$binary" man --dir "$work/man1" >/dev/null 2>&1; then
    install -D -m 0644 "$work/tiergate.bash" \
        "$rootfs/usr/share/bash-completion/completions/tiergate"
    mkdir -p "$rootfs/usr/share/man/man1"
    for page in "$work"/man1/*.1; do
        gz=$rootfs/usr/share/man/man1/${page##*/}.gz
        gzip -9n <"$page" >"$gz"
    done
    rm -rf "$work/man1" "$work/tiergate.bash"
else
    echo "note: $binary has no completions/man subcommands: none in the image"
fi
install -m 0644 "$repo/systemd/tiergate.service" "$rootfs/usr/lib/systemd/system/tiergate.service"
install -m 0644 "$repo/systemd/tiergate.tmpfiles" "$rootfs/usr/lib/tmpfiles.d/tiergate.conf"
# The overlay: first-boot script, unit drop-ins, default firewall, sshd and network settings.
cp -R --no-preserve=ownership "$here/rootfs/." "$rootfs/"
chmod 0755 "$rootfs"/usr/lib/tiergate/*
doc=$rootfs/usr/share/doc/tiergate
mkdir -p "$doc"
install -m 0644 "$here/README.md" "$doc/IMAGE.md"
install -m 0644 "$here/seed.example.toml" "$doc/tiergate-seed.example.toml"
install -m 0644 "$repo/docs/OPERATIONS.md" "$doc/OPERATIONS.md"
install -m 0644 "$repo/systemd/README.md" "$doc/SYSTEMD.md"
install -m 0644 "$repo/config/tiergate.toml" "$doc/tiergate.example.toml"

kernel=$(basename "$(readlink -f "$rootfs/vmlinuz")")
kver=${kernel#vmlinuz-}
cat >"$rootfs/etc/fstab" <<EOF
# <file system>                           <mount point> <type> <options>          <dump> <pass>
UUID=$root_uuid  /             ext4   errors=remount-ro  0      1
EOF
mkdir -p "$rootfs/boot/extlinux"
cat >"$rootfs/boot/extlinux/extlinux.conf" <<EOF
# extlinux on the root file system; /vmlinuz and /initrd.img are the symlinks the Debian kernel
# package keeps pointing at the newest kernel.
# No prompt unless Shift or Alt is held at boot; at the prompt only a label can be chosen, no
# kernel option added (ALLOWOPTIONS 0: no init=/bin/sh from the console). "reseed" applies a
# seed disk to an appliance that is configured already (the first-boot step ignores a seed
# disk at any later boot without it).
SERIAL 0 115200
DEFAULT tiergate
PROMPT 0
TIMEOUT 0
ALLOWOPTIONS 0
LABEL tiergate
    MENU LABEL tiergate appliance (Debian 12)
    LINUX /vmlinuz
    INITRD /initrd.img
    APPEND root=UUID=$root_uuid ro console=tty0 console=ttyS0,115200n8
LABEL reseed
    MENU LABEL tiergate appliance: apply the attached seed disk
    LINUX /vmlinuz
    INITRD /initrd.img
    APPEND root=UUID=$root_uuid ro console=tty0 console=ttyS0,115200n8 tiergate.seed=apply
EOF

in_root systemctl enable systemd-networkd.service systemd-resolved.service \
    systemd-timesyncd.service nftables.service tiergate.service tiergate-growroot.service \
    tiergate-firstboot.service smbd.service nfs-server.service ssh.service
# NetBIOS is off (smb.conf: disable netbios); the first-boot wizard of systemd would prompt on
# the console for a root password.
in_root systemctl disable nmbd.service
in_root systemctl mask nmbd.service systemd-firstboot.service

# No passwords: root is locked, and the build refuses an image where any account has one.
in_root usermod -p '!' root
if awk -F: '$2 !~ /^[!*]/ { print $1; bad = 1 } END { exit !bad }' "$rootfs/etc/shadow"; then
    die "accounts with a password in /etc/shadow (above)"
fi
# Each appliance makes its own host keys, machine id and random seed at first boot.
rm -f "$rootfs"/etc/ssh/ssh_host_* "$rootfs/var/lib/systemd/random-seed"
touch "$rootfs/etc/ssh/sshd_not_to_be_run"
: >"$rootfs/etc/machine-id"
rm -f "$rootfs/var/lib/dbus/machine-id"
mkdir -p "$rootfs/var/log/journal"
ln -sf ../run/systemd/resolve/stub-resolv.conf "$rootfs/etc/resolv.conf"

# --- manifest ----------------------------------------------------------------------------------
log "writing the manifest"
manifest=$rootfs/usr/share/tiergate/image-manifest.txt
mkdir -p "$(dirname "$manifest")"
{
    echo "# tiergate appliance image manifest"
    echo "image: $name"
    echo "tiergate: $tg_version"
    echo "tiergate-commit: $tg_commit$( ((tg_dirty)) && echo ' (with uncommitted changes)')"
    echo "tiergate-sha256: $tg_sha (as built; in the image without debug info: $(sha256sum \
        "$rootfs/usr/bin/tiergate" | cut -d' ' -f1))"
    echo "debian-suite: $suite"
    echo "debian-mirror: $mirror"
    echo "debian-security-mirror: $security_mirror"
    echo "kernel: $kver"
    echo "source-date-epoch: $SOURCE_DATE_EPOCH"
    echo "built-with: debootstrap $(dpkg-query -W -f '${Version}' debootstrap 2>/dev/null ||
        echo '?'), qemu-utils $(pkg_version qemu-utils)"
    echo "root-fs-uuid: $root_uuid"
    echo "# packages (name version architecture):"
    # shellcheck disable=SC2016 # dpkg-query's own ${...} fields
    in_root dpkg-query -W -f '${Package} ${Version} ${Architecture}\n' | sort
} >"$manifest"

# --- clean up: caches, logs, generated files ---------------------------------------------------
in_root apt-get clean
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin \
    "$rootfs"/var/cache/debconf/*-old "$rootfs"/var/lib/dpkg/*-old \
    "$rootfs"/var/cache/ldconfig/aux-cache "$rootfs"/tmp/* "$rootfs"/var/tmp/* \
    "$rootfs/usr/sbin/policy-rc.d"
find "$rootfs/var/log" -type f -delete
unbind_system
# Every file's time no later than SOURCE_DATE_EPOCH.
find "$rootfs" -xdev -newermt "@$SOURCE_DATE_EPOCH" -print0 |
    xargs -0r touch -h --no-create -d "@$SOURCE_DATE_EPOCH"

# --- the disk: MBR, one ext4 partition, extlinux -----------------------------------------------
log "making the $size disk"
rm -f "$raw"
truncate -s "$size" "$raw"
total=$(($(stat -c %s "$raw") / 512))
part_sectors=$((total - part_start))
sfdisk --quiet "$raw" <<EOF
label: dos
label-id: $disk_id
unit: sectors

start=$part_start, size=$part_sectors, type=83, bootable
EOF
# The file system is written straight into the partition (offset) from the directory tree.
# extlinux 6.04 cannot read ext4's 64bit feature; without it ext4 still reaches 16 TiB.
mke2fs -q -F -t ext4 -L tiergate-root -U "$root_uuid" -O ^64bit \
    -E "offset=$((part_start * 512)),hash_seed=$hash_seed,root_owner=0:0" \
    -d "$rootfs" "$raw" "$((part_sectors / 2))k"
mkdir -p "$mnt"
loopdev=$(losetup --find --show --offset $((part_start * 512)) --sizelimit $((part_sectors * 512)) "$raw")
e2fsck -fn "$loopdev" >/dev/null || die "e2fsck found errors in the new file system"
mount "$loopdev" "$mnt"
mounts+=("$mnt")
bind_system "$mnt"
chroot "$mnt" extlinux --install /boot/extlinux
cleanup
losetup -d "$loopdev"
dd if="$rootfs/usr/lib/syslinux/mbr/mbr.bin" of="$raw" bs=440 count=1 conv=notrunc status=none

# --- qcow2 -------------------------------------------------------------------------------------
log "converting to qcow2"
qcow=$out/$name.qcow2
rm -f "$qcow"
qemu-img convert -c -O qcow2 -o compression_type=zlib "$raw" "$qcow"
rm -f "$raw"
cp "$manifest" "$out/$name.manifest.txt"
(cd "$out" && sha256sum "$name.qcow2" >"$name.qcow2.sha256")

end_s=$(date +%s)
qsize=$(stat -c %s "$qcow")
# The disk's virtual size from qemu-img's JSON (qemu 10 prints "virtual-size" again for the
# format's own block node, so no line matching).
vsize=$(qemu-img info --output=json "$qcow" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["virtual-size"])')
{
    echo "build-seconds: $((end_s - start_s))"
    echo "qcow2-bytes: $qsize"
    echo "virtual-bytes: $vsize"
    echo "rootfs-bytes: $(du -sb "$rootfs" | cut -f1)"
    echo "sha256: $(cut -d' ' -f1 "$qcow.sha256")"
} | tee "$out/$name.build.txt"
log "done: $qcow ($((qsize / 1048576)) MiB, virtual $((vsize / 1073741824)) GiB) in $((end_s - start_s)) s"

#!/bin/bash
# Boot test of the tiergate appliance image: boots target/image/tiergate-appliance.qcow2 under
# QEMU (KVM when /dev/kvm works, else TCG software emulation) with a seed disk, reaches the
# status page, the WebDAV share and the SMB share through host port forwards on 127.0.0.1,
# writes a file over each and reads both back over both, checks the status page's counters,
# the firewall, the NFS export and the no-password rules, then powers the VM off.
#
#   image/boot-test.sh [--tcg] [--s3] [IMAGE]
#
# --tcg: software emulation even where KVM works. --s3: tier to a Garage S3 server started on
# the host (scripts/garage.sh; needs the garage binary), which the guest reaches at QEMU's host
# address 10.0.2.2, and check that `tiergate sync` gets everything off-site; without it the
# appliance uses its embedded local-directory store.
#
# A step of the test command (scripts/test.sh: image-boot, after image-build). Needs
# qemu-system-x86 and qemu-utils at one version (scripts/lib.sh install_qemu), smbclient, curl,
# python3, ssh, mtools and dosfstools (installed when missing, never removing a package).
# The image itself is not modified: the VM runs on a throw-away overlay.
# Output: a PASS/FAIL line per check, a summary and the line "boot-test: N passed, N failed";
# the exit status is 1 if any check failed. Logs (the VM's serial console, the guest journal)
# stay in BOOT_TEST_DIR (default target/image/boot-test/). BOOT_TIMEOUT: seconds from the start
# of QEMU to the status page (default 900; under TCG it takes 2-4 minutes here).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
# shellcheck source=scripts/lib.sh
. "$repo/scripts/lib.sh"
accel=auto
s3=local
while [[ ${1:-} == --* ]]; do
    case $1 in
    --tcg) accel=tcg ;;
    --s3) s3=garage ;;
    *) echo "usage: $0 [--tcg] [--s3] [IMAGE]" >&2; exit 2 ;;
    esac
    shift
done
image=${1:-$repo/target/image/tiergate-appliance.qcow2}
work=${BOOT_TEST_DIR:-$repo/target/image/boot-test}
boot_timeout=${BOOT_TIMEOUT:-900}

[[ -f $image ]] || { echo "no image at $image: run image/build.sh first" >&2; exit 1; }

need=()
for t in smbclient:smbclient curl:curl ssh:openssh-client ssh-keygen:openssh-client \
    mcopy:mtools mkfs.vfat:dosfstools python3:python3; do
    command -v "${t%%:*}" >/dev/null || need+=("${t#*:}")
done
if ((${#need[@]})); then
    apt_install "${need[@]}"
fi
install_qemu

rm -rf "$work"
mkdir -p "$work"
cd "$work"

# --- results -------------------------------------------------------------------------------
fails=0
results=()
pass() { results+=("PASS  $*"); echo "PASS  $*"; }
fail() { results+=("FAIL  $*"); echo "FAIL  $*"; fails=$((fails + 1)); }
check() { # check DESCRIPTION COMMAND...
    local d=$1; shift
    if "$@" >>"$work/checks.log" 2>&1; then pass "$d"; else fail "$d"; fi
}

# --- host ports: free ones on 127.0.0.1 ------------------------------------------------------
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
p_web=$(free_port) p_dav=$(free_port) p_smb=$(free_port) p_ssh=$(free_port) p_rpc=$(free_port)

# --- the seed ------------------------------------------------------------------------------
password=$(python3 -c 'import secrets; print(secrets.token_urlsafe(18))')
passphrase=$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')
ssh-keygen -q -t ed25519 -N '' -C boot-test -f "$work/id_ed25519"
cat >"$work/tiergate-seed.toml" <<EOF
hostname = "tg-boot-test"
timezone = "Europe/Berlin"
[volume]
passphrase = "$passphrase"
[shares]
user = "backup-test"
password = "$password"
smb = true
# 10.0.2.0/24: QEMU's user network; 127.0.0.1: the guest's own check below.
nfs_clients = ["10.0.2.0/24", "127.0.0.1"]
[webdav]
listen = "0.0.0.0:8080"
tls = true
[web]
listen = "0.0.0.0:8081"
# QEMU's user network: connections forwarded from the host come from 10.0.2.2.
management_cidrs = ["10.0.2.2/32"]
[ssh]
authorized_keys = ["$(cat "$work/id_ed25519.pub")"]
EOF
garage_stop() { :; }
if [[ $s3 == garage ]]; then
    # shellcheck source=/dev/null
    source "$repo/scripts/garage.sh"
    garage_start >"$work/garage-start.log" 2>&1 || { cat "$work/garage-start.log"; exit 1; }
    s3_port=${TIERGATE_TEST_S3_ENDPOINT##*:}
    s3_prefix=boot-test-$(date +%s)
    cat >>"$work/tiergate-seed.toml" <<EOF
[s3]
endpoint = "http://10.0.2.2:$s3_port"
region = "$TIERGATE_TEST_S3_REGION"
bucket = "$TIERGATE_TEST_S3_BUCKET"
prefix = "$s3_prefix"
path_style = true
access_key_id = "$TIERGATE_TEST_S3_ACCESS_KEY_ID"
secret_access_key = "$TIERGATE_TEST_S3_SECRET_ACCESS_KEY"
EOF
    echo "store: Garage on the host (127.0.0.1:$s3_port, the guest's 10.0.2.2), prefix $s3_prefix"
fi
"$here/make-seed.sh" "$work/tiergate-seed.toml" "$work/seed.img" >/dev/null

# --- boot ----------------------------------------------------------------------------------
if [[ $accel == auto ]]; then
    # A QEMU that starts with KVM runs until the timeout kills it (124); without KVM it fails.
    rc=0
    timeout 3 qemu-system-x86_64 -accel kvm -machine none -nodefaults -display none \
        -monitor none -S </dev/null >/dev/null 2>&1 || rc=$?
    if [[ $rc == 124 ]]; then accel=kvm; else accel=tcg; fi
fi
fwd="hostfwd=tcp:127.0.0.1:$p_web-:8081,hostfwd=tcp:127.0.0.1:$p_dav-:8080"
fwd+=",hostfwd=tcp:127.0.0.1:$p_smb-:445,hostfwd=tcp:127.0.0.1:$p_ssh-:22"
fwd+=",hostfwd=tcp:127.0.0.1:$p_rpc-:111"
vsize=$(qemu-img info --output=json "$image" | python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])')
qemu_pid=""
stop_vm() {
    if [[ -n $qemu_pid ]] && kill -0 "$qemu_pid" 2>/dev/null; then
        kill "$qemu_pid" 2>/dev/null || true
        wait "$qemu_pid" 2>/dev/null || true
    fi
}
trap 'stop_vm; garage_stop >/dev/null 2>&1' EXIT
boot_vm() { # boot_vm ACCEL: a fresh overlay, QEMU in the background
    local cpu
    if [[ $1 == kvm ]]; then cpu=(-accel kvm -cpu host); else cpu=(-accel tcg -cpu max); fi
    # The VM's disk: an overlay on the image, 2 GiB larger, so the root file system must grow.
    rm -f "$work/disk.qcow2" "$work/console.log"
    qemu-img create -q -f qcow2 -F qcow2 -b "$image" "$work/disk.qcow2" \
        $((vsize + 2 * 1024 * 1024 * 1024))
    echo "booting $image with $1; ports on 127.0.0.1: status $p_web, webdav $p_dav, smb $p_smb, ssh $p_ssh, rpcbind (must be closed) $p_rpc"
    t0=$(date +%s.%N)
    qemu-system-x86_64 "${cpu[@]}" -machine q35 -m 1536 -smp 2 -nodefaults -display none \
        -drive "file=$work/disk.qcow2,if=virtio,format=qcow2" \
        -drive "file=$work/seed.img,if=virtio,format=raw,readonly=on" \
        -netdev "user,id=n0,$fwd" -device virtio-net-pci,netdev=n0 \
        -device virtio-rng-pci \
        -serial "file:$work/console.log" -monitor none \
        2>>"$work/qemu.stderr" &
    qemu_pid=$!
}
boot_vm "$accel"
if [[ $accel == kvm ]]; then
    # Where KVM runs nested without full real-mode support, the boot loader or the kernel's
    # real-mode setup stops ("KVM internal error ... emulation failure", or silence). The
    # kernel's first line on the serial console shows it got past that; otherwise use TCG.
    # QEMU reports the emulation failure on stderr at once and stays up, paused: no need to
    # wait the 60 s then.
    for _ in $(seq 60); do
        grep -aq 'Linux version' "$work/console.log" 2>/dev/null && break
        grep -aq 'KVM internal error' "$work/qemu.stderr" 2>/dev/null && break
        kill -0 "$qemu_pid" 2>/dev/null || break
        sleep 1
    done
    if ! grep -aq 'Linux version' "$work/console.log" 2>/dev/null; then
        if ! kill -0 "$qemu_pid" 2>/dev/null; then
            # qemu 10 on this machine kind: "failed to set MSR 0x10a", then an assertion.
            kvm_note="QEMU exited: $(grep -am1 . "$work/qemu.stderr" || echo 'no message')"
        else
            kvm_note=$(grep -am1 'KVM internal error' "$work/qemu.stderr" || echo 'no kernel output within 60 s')
        fi
        echo "NOTE  KVM cannot boot the image on this host ($kvm_note); falling back to TCG"
        results+=("NOTE  KVM could not boot the image here ($kvm_note); TCG used")
        stop_vm
        accel=tcg
        boot_vm tcg
    fi
fi

# --- ready ---------------------------------------------------------------------------------
# The status server speaks TLS with the appliance's self-signed certificate (hence -k).
status_url=https://127.0.0.1:$p_web/api/v1/status
ready=""
while :; do
    if curl -fsSk -m 5 -o "$work/status0.json" "$status_url" 2>/dev/null; then
        ready=$(python3 -c "import time; print(f'{time.time() - $t0:.1f}')")
        break
    fi
    kill -0 "$qemu_pid" 2>/dev/null || { fail "QEMU exited early (see $work/console.log)"; break; }
    if (($(date +%s) - ${t0%.*} > boot_timeout)); then
        fail "status page not reachable within ${boot_timeout}s"
        break
    fi
    sleep 2
done
if [[ -z $ready ]]; then
    tail -40 "$work/console.log" || true
    printf '\n%s\n' "${results[@]}"
    echo "RESULT: FAIL (the appliance did not come up)"
    echo "boot-test: 0 passed, $fails failed"
    exit 1
fi
pass "status page reachable through the forwarded port: boot to ready ${ready} s ($accel)"

sshg() {
    ssh -q -i "$work/id_ed25519" -p "$p_ssh" -o StrictHostKeyChecking=no \
        -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o ConnectTimeout=10 root@127.0.0.1 "$@"
}
jget() { # jget FILE a.b.c
    python3 -c 'import json,sys
d = json.load(open(sys.argv[1]))
for k in sys.argv[2].split("."): d = d[k]
print(d)' "$1" "$2"
}

# --- WebDAV ----------------------------------------------------------------------------------
head -c 3000000 /dev/urandom >"$work/dav.bin"
head -c 2000000 /dev/urandom >"$work/smb.bin"
dav=https://127.0.0.1:$p_dav
cred="backup-test:$password"
code=$(curl -sk -o /dev/null -w '%{http_code}' "$dav/dav.bin")
if [[ $code == 401 ]]; then pass "WebDAV refuses a request without credentials (401)"; else fail "WebDAV without credentials answered $code, not 401"; fi
code=$(curl -sk -o /dev/null -w '%{http_code}' -u "backup-test:wrong-password" "$dav/dav.bin")
if [[ $code == 401 ]]; then pass "WebDAV refuses a wrong password (401)"; else fail "WebDAV with a wrong password answered $code, not 401"; fi
code=$(curl -sk -o /dev/null -w '%{http_code}' -u "$cred" -T "$work/dav.bin" "$dav/dav.bin")
if [[ $code == 201 ]]; then pass "WebDAV PUT of 3000000 bytes over HTTPS (201)"; else fail "WebDAV PUT answered $code"; fi

# --- SMB -------------------------------------------------------------------------------------
printf 'username = backup-test\npassword = %s\n' "$password" >"$work/smb.auth"
chmod 600 "$work/smb.auth"
smb() { smbclient "//127.0.0.1/backup" -p "$p_smb" -A "$work/smb.auth" -m SMB3 "$@"; }
# The status page answers once tiergate runs; smbd is ordered after it and may still be
# starting (seen: "protocol negotiation failed: NT_STATUS_CONNECTION_RESET" for 10 s under
# TCG). Wait for a logon to work, up to SMB_TIMEOUT (default 120) seconds.
smb_ok=""
for _ in $(seq $((${SMB_TIMEOUT:-120} / 2))); do
    if smb -c ls >>"$work/checks.log" 2>&1; then
        smb_ok=$(python3 -c "import time; print(f'{time.time() - $t0:.1f}')")
        break
    fi
    sleep 2
done
if [[ -n $smb_ok ]]; then
    pass "SMB logon works (smbclient, SMB3) ${smb_ok} s after the start of QEMU"
else
    fail "SMB logon did not work within ${SMB_TIMEOUT:-120} s of the status page"
fi
check "SMB put of 2000000 bytes (smbclient, SMB3)" smb -c "put $work/smb.bin smb.bin"
# Refused by smbd itself, not by a connection that failed for any reason.
smb_refused() { # smb_refused STATUS SMBCLIENT-ARGS...
    local want=$1 out
    shift
    out=$(smbclient //127.0.0.1/backup -p "$p_smb" -m SMB3 "$@" -c ls 2>&1) && return 1
    echo "$out"
    [[ $out == *"$want"* ]]
}
check "SMB refuses a guest (NT_STATUS_ACCESS_DENIED)" smb_refused NT_STATUS_ACCESS_DENIED -N
printf 'username = backup-test\npassword = wrong\n' >"$work/smb-bad.auth"
check "SMB refuses a wrong password (NT_STATUS_LOGON_FAILURE)" smb_refused NT_STATUS_LOGON_FAILURE \
    -A "$work/smb-bad.auth"

# --- read back, each file through both protocols -----------------------------------------------
rm -f "$work"/back-*
curl -skf -u "$cred" -o "$work/back-dav-dav.bin" "$dav/dav.bin" || true
curl -skf -u "$cred" -o "$work/back-smb-dav.bin" "$dav/smb.bin" || true
smb -c "get dav.bin $work/back-dav-smb.bin; get smb.bin $work/back-smb-smb.bin" >>"$work/checks.log" 2>&1 || true
check "WebDAV file read back over WebDAV, identical" cmp "$work/dav.bin" "$work/back-dav-dav.bin"
check "WebDAV file read back over SMB, identical" cmp "$work/dav.bin" "$work/back-dav-smb.bin"
check "SMB file read back over SMB, identical" cmp "$work/smb.bin" "$work/back-smb-smb.bin"
check "SMB file read back over WebDAV, identical" cmp "$work/smb.bin" "$work/back-smb-dav.bin"

# --- status page counters ----------------------------------------------------------------------
curl -fsSk -m 10 -o "$work/status1.json" "$status_url" || true
logical=$(jget "$work/status1.json" space.logical_bytes 2>/dev/null || echo 0)
requests=$(jget "$work/status1.json" frontends.webdav_requests 2>/dev/null || echo 0)
logical0=$(jget "$work/status0.json" space.logical_bytes 2>/dev/null || echo 0)
if ((logical - logical0 >= 5000000)); then
    pass "status page: space.logical_bytes $logical0 -> $logical (both files counted)"
else
    fail "status page: space.logical_bytes $logical0 -> $logical, expected +5000000"
fi
if ((requests >= 3)); then pass "status page: frontends.webdav_requests = $requests"; else fail "status page: frontends.webdav_requests = $requests"; fi
store=$(jget "$work/status1.json" store.description 2>/dev/null || echo '?')
echo "      store: $store; cache used $(jget "$work/status1.json" cache.used_bytes 2>/dev/null || echo '?') bytes"
check "/metrics serves Prometheus text" bash -c "curl -fsSk -m 10 https://127.0.0.1:$p_web/metrics | grep -q '^tiergate_'"
check "the status page refuses plain HTTP" bash -c "! curl -fsS -m 10 -o /dev/null http://127.0.0.1:$p_web/"

# --- off-site (with --s3) ----------------------------------------------------------------------
if [[ $s3 == garage ]]; then
    t_sync=$(date +%s)
    if sshg tiergate sync --config /etc/tiergate/tiergate.toml --timeout 300 >>"$work/checks.log" 2>&1; then
        pass "tiergate sync: everything written is off-site in Garage ($(($(date +%s) - t_sync)) s)"
    else
        fail "tiergate sync did not finish"
    fi
    curl -fsSk -m 10 -o "$work/status2.json" "$status_url" || true
    pending=$(jget "$work/status2.json" offsite.pending_changes 2>/dev/null || echo '?')
    uploaded=$(jget "$work/status2.json" upload.uploaded_bytes 2>/dev/null || echo 0)
    recoverable=$(jget "$work/status2.json" offsite.recoverable 2>/dev/null || echo '?')
    healthy=$(jget "$work/status2.json" store.healthy 2>/dev/null || echo '?')
    echo "      store: $(jget "$work/status2.json" store.description 2>/dev/null || echo '?')"
    if [[ $pending == 0 && $recoverable == True && $healthy == True ]] && ((uploaded >= 5000000)); then
        pass "status page: pending_changes 0, uploaded_bytes $uploaded, recoverable, store healthy"
    else
        fail "status page after sync: pending_changes $pending, uploaded_bytes $uploaded, recoverable $recoverable, healthy $healthy"
    fi
fi

# --- firewall --------------------------------------------------------------------------------
# rpcbind listens on port 111 in the guest (nfs-common); the firewall must drop it. QEMU accepts
# the host side of a forward at once, so "closed" means: an RPC NULL call gets no answer.
rpc_probe() {
    python3 - "$1" <<'EOF'
import socket, struct, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
call = struct.pack(">IIIIII", 0x1234, 0, 2, 100000, 2, 0) + b"\0" * 16  # portmap v2 NULL
s.sendall(struct.pack(">I", 0x80000000 | len(call)) + call)
try:
    data = s.recv(100)
except (socket.timeout, ConnectionError):
    data = b""
print("answered" if data else "no answer")
sys.exit(0 if data else 1)
EOF
}
if rpc_probe "$p_rpc" >>"$work/checks.log" 2>&1; then
    fail "firewall: rpcbind (111) answers through the forward"
else
    pass "firewall: rpcbind (111) gets no answer from the host"
fi
# ss lists listening sockets only (-l), without a header (-H): any line is a listener.
if [[ -n $(sshg ss -ltnH 'sport = :111') ]]; then
    pass "firewall: ... while rpcbind does listen on 111 inside the guest"
else
    fail "rpcbind not listening in the guest (the closed-port check proves nothing)"
fi
# The guest's ruleset as nft's JSON, summed up by nft-summary.py: TCP ports accepted from
# anywhere, TCP ports accepted only from some sources, the packets the "dropped" counter saw.
sshg nft -j list ruleset >"$work/nft.json" 2>>"$work/checks.log" || true
python3 "$here/nft-summary.py" "$work/nft.json" >"$work/nft-summary.json" 2>>"$work/checks.log" || echo '{}' >"$work/nft-summary.json"
dropped=$(jget "$work/nft-summary.json" dropped_packets 2>/dev/null || echo '?')
if [[ $dropped =~ ^[0-9]+$ ]] && ((dropped > 0)); then pass "firewall: the guest's drop counter is $dropped"; else fail "firewall: the guest's drop counter is $dropped"; fi
open_ports=$(jget "$work/nft-summary.json" open_tcp 2>/dev/null || echo '?')
if [[ $open_ports == "[22, 445, 2049, 8080]" ]]; then pass "firewall: TCP ports open to all are exactly $open_ports"; else fail "firewall: TCP ports open to all: $open_ports"; fi
mgmt_rules=$(jget "$work/nft-summary.json" restricted_tcp 2>/dev/null || echo '?')
if [[ $mgmt_rules == "[{'ports': [8081], 'from': {'ip saddr': ['10.0.2.2']}}]" ]]; then
    pass "firewall: the status page (8081) only from the management network: $mgmt_rules"
else
    fail "firewall: rules for ports open to some sources only: $mgmt_rules"
fi

# --- inside the guest ------------------------------------------------------------------------
services_active() {
    [[ $(sshg 'systemctl is-active tiergate smbd nfs-server nftables' | grep -cx active) == 4 ]]
}
root_locked() { sshg passwd -S root | grep -q '^root L '; }
no_passwords() { [[ -z $(sshg "awk -F: '\$2 !~ /^[!*]/ {print \$1}' /etc/shadow") ]]; }
sshd_keys_only() { sshg sshd -T | grep -qx 'passwordauthentication no'; }
nfs_reads() {
    local guest host
    guest=$(sshg 'mkdir -p /mnt/nfs && mount -t nfs4 127.0.0.1:/srv/tiergate /mnt/nfs &&
        sha256sum /mnt/nfs/dav.bin /mnt/nfs/smb.bin; umount /mnt/nfs' | awk '{print $1}')
    host=$(sha256sum "$work/dav.bin" "$work/smb.bin" | awk '{print $1}')
    echo "nfs: $guest / host: $host"
    [[ -n $guest && $guest == "$host" ]]
}
# An NFS client keeps reading a file it holds open across a restart of the appliance's daemon:
# the first 1000000 bytes of dav.bin on a descriptor, `systemctl restart tiergate` (smbd and
# nfs-server restart with it, BindsTo=), the guest's caches dropped (the NFS client and nfsd
# share that kernel, so nfsd must find the file again by its handle on the new FUSE mount),
# then the rest from the same descriptor (dd on the fd: head would read ahead). A hard mount
# with a short timeo retries through the restart; `timeout -s KILL` bounds a hung read.
nfs_restart_reads() {
    local out host part
    out=$(timeout 600 ssh -q -i "$work/id_ed25519" -p "$p_ssh" -o StrictHostKeyChecking=no \
        -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o ConnectTimeout=10 root@127.0.0.1 \
        bash -s <<'EOF'
set -u
mkdir -p /mnt/nfs-restart
mount -t nfs4 -o hard,timeo=10,retrans=2 127.0.0.1:/srv/tiergate /mnt/nfs-restart || exit 1
exec 3</mnt/nfs-restart/dav.bin || exit 1
rm -f /tmp/nfs-part.bin
dd bs=1000000 count=1 iflag=fullblock status=none <&3 >/tmp/nfs-part.bin || exit 1
echo "before the restart: $(stat -c %s /tmp/nfs-part.bin) bytes read"
t0=$(date +%s.%N)
systemctl restart tiergate || echo "systemctl restart tiergate failed"
for _ in $(seq 120); do
    [[ $(systemctl is-active tiergate nfs-server | grep -cx active) == 2 &&
        $(findmnt -n -o FSTYPE /srv/tiergate) == fuse* ]] && break
    sleep 1
done
echo "after the restart: $(systemctl is-active tiergate nfs-server | tr '\n' ' ')" \
    "mount $(findmnt -n -o SOURCE,FSTYPE /srv/tiergate)," \
    "$(python3 -c "import time; print(f'{time.time() - $t0:.1f}')") s"
sync
echo 3 >/proc/sys/vm/drop_caches
t1=$(date +%s.%N)
timeout -s KILL 300 dd bs=1000000 iflag=fullblock status=none <&3 >>/tmp/nfs-part.bin ||
    echo "dd after the restart failed: $?"
echo "after the restart: read to $(stat -c %s /tmp/nfs-part.bin) bytes in" \
    "$(python3 -c "import time; print(f'{time.time() - $t1:.1f}')") s"
echo "sha256 $(sha256sum </tmp/nfs-part.bin | cut -d' ' -f1)"
timeout -s KILL 120 ls -l /mnt/nfs-restart && echo "ls ok"
timeout -s KILL 60 stat -c '%n %s' /mnt/nfs-restart/dav.bin /mnt/nfs-restart/smb.bin &&
    echo "stat ok"
exec 3<&-
umount /mnt/nfs-restart || umount -f -l /mnt/nfs-restart
# What the restart looked like: nfs-server stopped first, the unmount, nfsd's grace period.
journalctl -b --no-pager --since "-2min" | grep -E 'Stopp|Start|unmount|busy|NFSD|reclaim' |
    grep -Ei 'tiergate|nfs|NFSD|reclaim' | tail -30 | sed 's/^/journal: /'
EOF
    )
    echo "$out"
    host=$(sha256sum <"$work/dav.bin" | cut -d' ' -f1)
    part=$(sed -n 's/^sha256 //p' <<<"$out")
    echo "nfs across the restart: $part / host: $host"
    [[ $part == "$host" ]] && grep -qx 'ls ok' <<<"$out" && grep -qx 'stat ok' <<<"$out"
}
# The root file system's size (findmnt's JSON, in bytes) is larger than the whole image was.
grew() {
    local size
    size=$(sshg findmnt -J -b -o SIZE / | python3 -c 'import json, sys
print(json.load(sys.stdin)["filesystems"][0]["size"])')
    echo "root file system: $size bytes; image: $vsize bytes"
    ((size > vsize))
}
check "guest: tiergate, smbd, nfs-server, nftables active" services_active
check "guest: root is locked (passwd -S)" root_locked
check "guest: no account has a password in /etc/shadow" no_passwords
check "guest: sshd accepts public keys only" sshd_keys_only
check "guest: NFSv4 export of the mount (127.0.0.1:/srv/tiergate) reads both files" nfs_reads
check "guest: an NFS client reads on from an open file across a daemon restart (hard mount, caches dropped), identical; ls and stat after it" nfs_restart_reads
check "guest: the root file system grew past the image's size" grew
sshg 'journalctl -b --no-pager' >"$work/journal.txt" 2>&1 || true
# Generated by the binary at build time: `tiergate completions bash`, `tiergate man --dir`.
shell_help() {
    sshg 'man -w tiergate tiergate-sync &&
        bash -c ". /usr/share/bash-completion/completions/tiergate && complete -p tiergate"'
}
check "guest: tiergate's man pages and bash completion" shell_help
check "guest: no ordering cycle in the boot" bash -c "! grep -qi 'ordering cycle' $work/journal.txt"
check "guest: first-boot step configured from the seed disk" grep -q 'tiergate-firstboot: configured' "$work/journal.txt"
sshg 'systemd-analyze' >"$work/analyze.txt" 2>&1 || true

# --- clean power-off -------------------------------------------------------------------------
t_off=$(date +%s)
sshg 'systemctl poweroff' >/dev/null 2>&1 || true
for _ in $(seq 120); do kill -0 "$qemu_pid" 2>/dev/null || break; sleep 1; done
if kill -0 "$qemu_pid" 2>/dev/null; then
    fail "VM still running 120 s after poweroff"
else
    pass "clean power-off in $(($(date +%s) - t_off)) s"
fi

echo
echo "== summary ($accel, image $(basename "$image"))"
echo "boot to ready: ${ready} s; guest: $(head -1 "$work/analyze.txt" 2>/dev/null)"
printf '%s\n' "${results[@]}"
checks=$(printf '%s\n' "${results[@]}" | grep -c '^PASS\|^FAIL')
if ((fails)); then
    echo "RESULT: FAIL ($fails of $checks checks failed; logs in $work)"
    echo "boot-test: $((checks - fails)) passed, $fails failed"
    exit 1
fi
echo "RESULT: PASS ($checks checks)"
# The logs stay; the VM's disk overlay and the test files go (hundreds of MB).
rm -f "$work/disk.qcow2" "$work"/*.bin
echo "boot-test: $checks passed, 0 failed"

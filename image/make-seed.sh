#!/bin/bash
# Makes a seed disk for the tiergate appliance: a small FAT image labelled TGSEED that holds
# tiergate-seed.toml. Attach it as a second disk (raw) at the first boot.
#
#   image/make-seed.sh SEED.toml SEED.img
#
# Needs mkfs.vfat (dosfstools) and mcopy (mtools); no root, no mount.
set -euo pipefail
[[ $# == 2 ]] || { echo "usage: $0 SEED.toml SEED.img" >&2; exit 2; }
seed=$1 img=$2
[[ -f $seed ]] || { echo "$0: $seed: no such file" >&2; exit 1; }
for t in mkfs.vfat:dosfstools mcopy:mtools; do
    command -v "${t%%:*}" >/dev/null || { echo "$0: needs ${t%%:*} (apt-get install ${t#*:})" >&2; exit 1; }
done
rm -f "$img"
# A fixed volume id and --invariant: the same seed gives the same image.
mkfs.vfat -C -n TGSEED --invariant "$img" 2048 >/dev/null
mcopy -m -i "$img" "$seed" ::tiergate-seed.toml
echo "$img: FAT, label TGSEED, tiergate-seed.toml ($(stat -c %s "$seed") bytes)"

#!/usr/bin/env python3
"""Small-file workload (e) of benches/run.sh: create, stat, read and delete COUNT files.

    smallfiles.py DIR COUNT SEED

Files of 1-16 KiB (seeded sizes and bytes) in COUNT/200 directories of 200. Phases, each timed
on its own and printed as one JSON line of seconds:
  create  mkdir + open/write/close of every file (no fsync: what an application sees; a syncfs
          would also flush every other writer of a shared filesystem and measure them)
  stat    os.stat of every file, after sync and dropping the page cache, dentries and inodes
  read    read every file whole, after dropping them again
  delete  unlink every file and rmdir the directories
Dropping caches needs root (/proc/sys/vm/drop_caches); without it the figures are warm.
"""
import json
import os
import random
import sys
import time


def drop_caches():
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        pass


def main():
    root, count, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    rng = random.Random(seed)
    per_dir = 200
    blob = rng.randbytes(1 << 20)
    paths, sizes = [], []
    for i in range(count):
        paths.append(os.path.join(root, f"d{i // per_dir:04d}", f"f{i:06d}.dat"))
        sizes.append(rng.randint(1024, 16384))
    out = {"files": count}

    t = time.monotonic()
    made = set()
    for i, (p, n) in enumerate(zip(paths, sizes)):
        d = os.path.dirname(p)
        if d not in made:
            os.mkdir(d)
            made.add(d)
        off = (i * 7919) % (len(blob) - n)
        with open(p, "wb") as f:
            f.write(blob[off:off + n] + i.to_bytes(8, "little"))
    out["create_s"] = time.monotonic() - t

    drop_caches()
    t = time.monotonic()
    total = 0
    for p in paths:
        total += os.stat(p).st_size
    out["stat_s"] = time.monotonic() - t
    if total != sum(sizes) + 8 * count:
        sys.exit(f"smallfiles: stat sizes sum to {total}, expected {sum(sizes) + 8 * count}")

    drop_caches()
    t = time.monotonic()
    for i, (p, n) in enumerate(zip(paths, sizes)):
        with open(p, "rb") as f:
            data = f.read()
        if len(data) != n + 8 or data[-8:] != i.to_bytes(8, "little"):
            sys.exit(f"smallfiles: {p} reads back wrong")
    out["read_s"] = time.monotonic() - t

    t = time.monotonic()
    for p in paths:
        os.unlink(p)
    for d in sorted(made):
        os.rmdir(d)
    out["delete_s"] = time.monotonic() - t
    print(json.dumps(out))


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main()

/* Deterministic test data for benches/run.sh (built with `cc -O2` at the start of a run).
 *
 *   gen random SEED BYTES            incompressible bytes on stdout (splitmix64 stream)
 *   gen text SEED BYTES              log-like text on stdout (zstd -3 shrinks it ~3-4x; the same
 *                                    vocabulary as text_bytes() in benches/datapath.rs)
 *   gen chain DIR BYTES BLOCK PCT DAYS SEED
 *                                    a backup chain in DIR: full.vbk (BYTES of image blocks of
 *                                    BLOCK bytes) and inc1.vib .. incDAYS.vib, each holding the
 *                                    blocks changed that day (each block changes with probability
 *                                    PCT/100 per day), every block preceded by a 64-byte header
 *   gen synth DIR OUT BYTES BLOCK PCT DAYS SEED
 *                                    the synthetic full: reads full.vbk and the inc files from DIR
 *                                    (the backup target), writes the image as of the last day to
 *                                    OUT, fsyncs it; checks every block read against its expected
 *                                    content and fails on a difference
 *
 * Everything is a function of SEED: block i in version v is a splitmix64 stream seeded by
 * (SEED, i, v), so no two blocks and no two versions share content (nothing dedups by accident)
 * and every contender receives the same bytes. Incompressible on purpose for the chain: backup
 * software compresses its files before writing them.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define HDR 64

static uint64_t mix(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* splitmix64 stream state */
static uint64_t next(uint64_t *s) {
    *s += 0x9e3779b97f4a7c15ULL;
    return mix(*s);
}

static void fill_random(uint8_t *buf, size_t len, uint64_t *s) {
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        uint64_t v = next(s);
        memcpy(buf + i, &v, 8);
    }
    if (i < len) {
        uint64_t v = next(s);
        memcpy(buf + i, &v, len - i);
    }
}

static void die(const char *what) {
    fprintf(stderr, "gen: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void write_all(int fd, const uint8_t *buf, size_t len) {
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("write");
        }
        buf += n;
        len -= (size_t)n;
    }
}

static void pread_all(int fd, uint8_t *buf, size_t len, off_t off) {
    while (len > 0) {
        ssize_t n = pread(fd, buf, len, off);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("pread");
        }
        if (n == 0) {
            errno = EIO;
            die("pread: short file");
        }
        buf += n;
        len -= (size_t)n;
        off += n;
    }
}

static const char *WORDS[] = {
    "backup", "job", "started", "finished", "volume", "chunk", "pack", "upload", "retry",
    "error", "warning", "info", "debug", "client", "server", "session", "file", "directory",
    "read", "write", "merge", "synthetic", "full", "incremental", "retention", "deleted",
    "bytes", "seconds", "queue", "worker", "thread", "repository", "restore", "verify",
};
#define NWORDS (sizeof(WORDS) / sizeof(WORDS[0]))

static void cmd_stream(int text, uint64_t seed, uint64_t bytes) {
    enum { BUF = 1 << 20 };
    uint8_t *buf = malloc(BUF + 64);
    uint64_t s = mix(seed ^ 0x5eed);
    if (!buf) die("malloc");
    while (bytes > 0) {
        size_t n = bytes < BUF ? (size_t)bytes : BUF;
        if (!text) {
            fill_random(buf, n, &s);
        } else {
            size_t o = 0;
            while (o < n) {
                uint32_t r = (uint32_t)next(&s);
                switch (r % 8) {
                case 0:
                    o += (size_t)sprintf((char *)buf + o, "%u ", r >> 12);
                    break;
                case 1:
                    memcpy(buf + o, "\n2026-11-28T05:21:46Z ", 22);
                    o += 22;
                    break;
                default: {
                    const char *w = WORDS[(r >> 8) % NWORDS];
                    size_t l = strlen(w);
                    memcpy(buf + o, w, l);
                    buf[o + l] = ' ';
                    o += l + 1;
                }
                }
            }
        }
        write_all(1, buf, n);
        bytes -= n;
    }
    free(buf);
}

struct chain {
    uint64_t blocks, block, pct100, days, seed;
};

/* Did block i change on day d (1..days)? */
static int changed(const struct chain *c, uint64_t i, uint64_t d) {
    return mix(c->seed ^ mix(i * 0x100000001b3ULL + d * 0x9e3779b97f4a7c15ULL)) % 10000 <
           c->pct100;
}

static void block_data(const struct chain *c, uint64_t i, uint64_t version, uint8_t *buf) {
    uint64_t s = mix(c->seed * 31 + mix(i) * 7 + version * 0xa0761d6478bd642fULL);
    fill_random(buf, c->block, &s);
}

static void block_header(const struct chain *c, uint64_t i, uint64_t d, uint8_t *hdr) {
    memset(hdr, 0, HDR);
    snprintf((char *)hdr, HDR, "TGBLK day=%llu block=%llu size=%llu", (unsigned long long)d,
             (unsigned long long)i, (unsigned long long)c->block);
}

static int open_out(const char *path) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) die(path);
    return fd;
}

static void finish(int fd, const char *path) {
    if (fsync(fd) != 0) die(path);
    if (close(fd) != 0) die(path);
}

static void cmd_chain(const char *dir, const struct chain *c) {
    char path[4096];
    uint8_t *buf = malloc(c->block), hdr[HDR];
    uint64_t *version = calloc(c->blocks, sizeof(uint64_t));
    if (!buf || !version) die("malloc");
    snprintf(path, sizeof path, "%s/full.vbk", dir);
    int fd = open_out(path);
    for (uint64_t i = 0; i < c->blocks; i++) {
        block_data(c, i, 0, buf);
        write_all(fd, buf, c->block);
    }
    finish(fd, path);
    for (uint64_t d = 1; d <= c->days; d++) {
        uint64_t n = 0;
        snprintf(path, sizeof path, "%s/inc%llu.vib", dir, (unsigned long long)d);
        fd = open_out(path);
        for (uint64_t i = 0; i < c->blocks; i++) {
            if (!changed(c, i, d)) continue;
            version[i]++;
            block_header(c, i, d, hdr);
            write_all(fd, hdr, HDR);
            block_data(c, i, version[i], buf);
            write_all(fd, buf, c->block);
            n++;
        }
        finish(fd, path);
        fprintf(stderr, "gen: day %llu: %llu of %llu blocks changed\n", (unsigned long long)d,
                (unsigned long long)n, (unsigned long long)c->blocks);
    }
    free(buf);
    free(version);
}

static void cmd_synth(const char *dir, const char *out, const struct chain *c) {
    char path[4096];
    uint8_t *buf = malloc(c->block), *want = malloc(c->block);
    uint64_t *version = calloc(c->blocks, sizeof(uint64_t));
    uint64_t *last_day = calloc(c->blocks, sizeof(uint64_t));
    uint64_t *slot = calloc(c->blocks, sizeof(uint64_t)); /* index within last_day's inc */
    int *inc = calloc(c->days + 1, sizeof(int));
    if (!buf || !want || !version || !last_day || !slot || !inc) die("malloc");
    for (uint64_t d = 1; d <= c->days; d++) {
        uint64_t n = 0;
        for (uint64_t i = 0; i < c->blocks; i++) {
            if (!changed(c, i, d)) continue;
            version[i]++;
            last_day[i] = d;
            slot[i] = n++;
        }
        snprintf(path, sizeof path, "%s/inc%llu.vib", dir, (unsigned long long)d);
        inc[d] = open(path, O_RDONLY);
        if (inc[d] < 0) die(path);
    }
    snprintf(path, sizeof path, "%s/full.vbk", dir);
    inc[0] = open(path, O_RDONLY);
    if (inc[0] < 0) die(path);
    int fd = open_out(out);
    for (uint64_t i = 0; i < c->blocks; i++) {
        uint64_t d = last_day[i];
        off_t off = d == 0 ? (off_t)(i * c->block) : (off_t)(slot[i] * (HDR + c->block) + HDR);
        pread_all(inc[d], buf, c->block, off);
        block_data(c, i, version[i], want);
        if (memcmp(buf, want, c->block) != 0) {
            fprintf(stderr, "gen: synth: block %llu (day %llu) differs from what was written\n",
                    (unsigned long long)i, (unsigned long long)d);
            exit(1);
        }
        write_all(fd, buf, c->block);
    }
    finish(fd, out);
    for (uint64_t d = 0; d <= c->days; d++) close(inc[d]);
}

static uint64_t num(const char *s) {
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end) {
        fprintf(stderr, "gen: not a number: %s\n", s);
        exit(2);
    }
    return v;
}

static void usage(void) {
    fprintf(stderr, "usage: gen random|text SEED BYTES\n"
                    "       gen chain DIR BYTES BLOCK PCT DAYS SEED\n"
                    "       gen synth DIR OUT BYTES BLOCK PCT DAYS SEED\n");
    exit(2);
}

static struct chain chain_args(char **a) {
    struct chain c;
    uint64_t bytes = num(a[0]);
    c.block = num(a[1]);
    c.pct100 = (uint64_t)(strtod(a[2], NULL) * 100.0 + 0.5);
    c.days = num(a[3]);
    c.seed = num(a[4]);
    if (c.block == 0 || bytes % c.block != 0) {
        fprintf(stderr, "gen: BYTES must be a multiple of BLOCK\n");
        exit(2);
    }
    c.blocks = bytes / c.block;
    return c;
}

int main(int argc, char **argv) {
    if (argc == 4 && (!strcmp(argv[1], "random") || !strcmp(argv[1], "text"))) {
        cmd_stream(!strcmp(argv[1], "text"), num(argv[2]), num(argv[3]));
    } else if (argc == 8 && !strcmp(argv[1], "chain")) {
        struct chain c = chain_args(argv + 3);
        cmd_chain(argv[2], &c);
    } else if (argc == 9 && !strcmp(argv[1], "synth")) {
        struct chain c = chain_args(argv + 4);
        cmd_synth(argv[2], argv[3], &c);
    } else {
        usage();
    }
    return 0;
}

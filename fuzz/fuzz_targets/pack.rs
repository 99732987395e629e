//! The pack format (src/pack.rs): trailer, footer, sealed-pack reading and the torn-tail
//! recovery of unsealed packs.
//!
//! - Arbitrary bytes as a pack file: `is_sealed`, `read_footer` and `recover_unsealed` never
//!   panic; recovery leaves a file of `valid_len` bytes whose records a second recovery keeps
//!   unchanged, and every entry lies inside it in order.
//! - Real packs: `read_footer` of a sealed pack lists exactly the blobs appended and
//!   `read_blob` returns them; a flipped bit in the header, footer or trailer is refused, one
//!   in the records is not the footer's business (the blobs' AEAD covers it).
//! - Torn tails: an unsealed pack cut anywhere (and perhaps followed by garbage) recovers to
//!   the records complete before the cut, and can be reopened, appended to and sealed.
#![no_main]

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use tiergate::crypto::ChunkId;
use tiergate::pack::{self, PackEntry, PackWriter, Trailer, HEADER_LEN, RECORD_HEADER_LEN};

#[derive(Arbitrary, Debug)]
enum Input {
    /// Arbitrary bytes as a pack file.
    Raw(Vec<u8>),
    /// A sealed pack of these blobs, with one bit flipped (or none).
    Sealed {
        pack_id: u64,
        blobs: Vec<Vec<u8>>,
        flip: Option<(u32, u8)>,
    },
    /// An unsealed pack of these blobs cut at `cut` (of its length), then `garbage` appended,
    /// recovered, reopened, extended with `more` and sealed.
    Torn {
        pack_id: u64,
        blobs: Vec<Vec<u8>>,
        cut: u32,
        garbage: Vec<u8>,
        more: Vec<Vec<u8>>,
    },
}

/// A scratch file for this process, on a tmpfs when there is one (fsync is free there).
fn scratch() -> PathBuf {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let base = Path::new("/dev/shm");
        let b = tempfile::Builder::new()
            .prefix("tiergate-fuzz-pack")
            .to_owned();
        if base.is_dir() {
            b.tempdir_in(base).unwrap()
        } else {
            b.tempdir().unwrap()
        }
    });
    dir.path().join("p.pack")
}

fn id_of(blob: &[u8]) -> ChunkId {
    ChunkId(*blake3::hash(blob).as_bytes())
}

fn write_pack(path: &Path, pack_id: u64, blobs: &[Vec<u8>]) -> (PackWriter, Vec<PackEntry>) {
    let _ = std::fs::remove_file(path);
    let mut w = PackWriter::create(path, pack_id).unwrap();
    let mut entries = Vec::new();
    for b in blobs {
        let id = id_of(b);
        let loc = w.append(&id, b).unwrap();
        entries.push(PackEntry { id, loc });
    }
    assert_eq!(w.entries(), &entries[..]);
    (w, entries)
}

fn open(path: &Path) -> File {
    File::open(path).unwrap()
}

fn check_raw(path: &Path, bytes: &[u8]) {
    if bytes.len() >= pack::TRAILER_LEN as usize {
        let (rest, t) = bytes.split_at(bytes.len() - pack::TRAILER_LEN as usize);
        if let Ok(t) = Trailer::parse(t) {
            let _ = pack::parse_footer(&t, rest);
            let f = t.footer_len() as usize;
            if f <= rest.len() {
                let _ = pack::parse_footer(&t, &rest[rest.len() - f..]);
            }
        }
    }
    let _ = std::fs::remove_file(path);
    std::fs::write(path, bytes).unwrap();
    let sealed = pack::is_sealed(&open(path)).unwrap();
    let listed = pack::read_footer(&open(path));
    assert_eq!(sealed, listed.is_ok());
    if let Ok(entries) = listed {
        for e in &entries {
            assert!(e.loc.offset + e.loc.len as u64 <= bytes.len() as u64);
            pack::read_blob(&open(path), e.loc).unwrap();
        }
    }
    match pack::recover_unsealed(path) {
        Ok(r) => {
            assert!(!sealed, "recovery accepted a sealed pack");
            assert_eq!(r.valid_len + r.truncated_bytes, bytes.len() as u64);
            assert_eq!(std::fs::metadata(path).unwrap().len(), r.valid_len);
            assert_eq!(
                &std::fs::read(path).unwrap()[..],
                &bytes[..r.valid_len as usize]
            );
            let mut next = HEADER_LEN;
            for e in &r.entries {
                assert_eq!(e.loc.offset, next + RECORD_HEADER_LEN);
                next = e.loc.offset + e.loc.len as u64;
            }
            assert_eq!(next, r.valid_len);
            let again = pack::recover_unsealed(path).unwrap();
            assert_eq!(again.entries, r.entries);
            assert_eq!(again.truncated_bytes, 0);
        }
        Err(_) => {
            // Refused: sealed, or a header that is not a pack's; the file is left alone.
            assert_eq!(std::fs::read(path).unwrap(), bytes);
        }
    }
}

fn check_sealed(path: &Path, pack_id: u64, blobs: &[Vec<u8>], flip: Option<(u32, u8)>) {
    let (w, entries) = write_pack(path, pack_id, blobs);
    let len = w.seal().unwrap();
    assert_eq!(std::fs::metadata(path).unwrap().len(), len);
    assert!(pack::is_sealed(&open(path)).unwrap());
    assert_eq!(pack::read_footer(&open(path)).unwrap(), entries);
    for (e, b) in entries.iter().zip(blobs) {
        assert_eq!(&pack::read_blob(&open(path), e.loc).unwrap(), b);
    }
    // A sealed pack is never truncated by recovery.
    assert!(pack::recover_unsealed(path).is_err());
    assert_eq!(std::fs::metadata(path).unwrap().len(), len);

    let Some((at, bit)) = flip else { return };
    let mut bytes = std::fs::read(path).unwrap();
    let at = at as usize % bytes.len();
    bytes[at] ^= 1 << (bit % 8);
    std::fs::write(path, &bytes).unwrap();
    let footer_offset = entries
        .last()
        .map(|e| e.loc.offset + e.loc.len as u64)
        .unwrap_or(HEADER_LEN);
    let r = pack::read_footer(&open(path));
    if (at as u64) < HEADER_LEN || at as u64 >= footer_offset {
        assert!(
            r.is_err(),
            "a flipped bit at {at} of the header/footer/trailer was accepted"
        );
    } else {
        assert_eq!(
            r.unwrap(),
            entries,
            "a flip in the records changed the footer"
        );
    }
}

fn check_torn(
    path: &Path,
    pack_id: u64,
    blobs: &[Vec<u8>],
    cut: u32,
    garbage: &[u8],
    more: &[Vec<u8>],
) {
    let (mut w, entries) = write_pack(path, pack_id, blobs);
    w.sync().unwrap();
    let len = w.len();
    drop(w);
    // Cut somewhere after the header (a crash in `create` is another case).
    let cut = HEADER_LEN + cut as u64 % (len - HEADER_LEN + 1);
    {
        let f = OpenOptions::new().write(true).open(path).unwrap();
        f.set_len(cut).unwrap();
        let mut f = OpenOptions::new().append(true).open(path).unwrap();
        f.write_all(garbage).unwrap();
    }
    let complete: Vec<PackEntry> = entries
        .iter()
        .filter(|e| e.loc.offset + e.loc.len as u64 <= cut)
        .cloned()
        .collect();
    let r = pack::recover_unsealed(path).unwrap();
    // Garbage could only add a record if it held a valid checksum over its own bytes.
    assert!(
        r.entries.starts_with(&complete),
        "recovery lost complete records"
    );
    if garbage.is_empty() {
        assert_eq!(r.entries, complete);
        assert_eq!(r.valid_len + r.truncated_bytes, cut);
    }
    let kept = r.entries.clone();
    let mut w = PackWriter::reopen(path, pack_id, r).unwrap();
    let mut all = kept;
    for b in more {
        let id = id_of(b);
        let loc = w.append(&id, b).unwrap();
        all.push(PackEntry { id, loc });
    }
    w.seal().unwrap();
    assert_eq!(pack::read_footer(&open(path)).unwrap(), all);
    for (e, b) in all.iter().skip(all.len() - more.len()).zip(more) {
        assert_eq!(&pack::read_blob(&open(path), e.loc).unwrap(), b);
    }
}

fuzz_target!(|input: Input| {
    let path = scratch();
    match input {
        Input::Raw(bytes) => check_raw(&path, &bytes),
        Input::Sealed {
            pack_id,
            blobs,
            flip,
        } => check_sealed(&path, pack_id, &blobs, flip),
        Input::Torn {
            pack_id,
            blobs,
            cut,
            garbage,
            more,
        } => check_torn(&path, pack_id, &blobs, cut, &garbage, &more),
    }
});

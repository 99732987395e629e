//! Helpers the core's unit tests share (recycle bin, snapshots).

use super::{Caller, Volume};

pub const ME: Caller = Caller { uid: 0, gid: 0 };

/// Creates `name` in `parent` with `bytes`; returns its inode.
pub fn write(vol: &Volume, parent: u64, name: &str, bytes: &[u8]) -> u64 {
    let (a, fh) = vol.create_file(parent, name.as_bytes(), 0o644, ME).unwrap();
    vol.write(a.ino, 0, bytes).unwrap();
    vol.release(fh).unwrap();
    a.ino
}

/// The whole content of the file at `path`.
pub fn read_path(vol: &Volume, path: &str) -> Vec<u8> {
    let a = vol.resolve(path.as_bytes()).unwrap();
    vol.read(a.ino, 0, a.inode.size as u32).unwrap().to_vec()
}

/// Opens the volume in `tmp` (small chunks), creating it first if there is none: called again
/// after the first handle is dropped, it reopens the same volume, as a restart would.
pub fn volume(tmp: &tempfile::TempDir) -> std::sync::Arc<Volume> {
    let dir = tmp.path().join("vol");
    if !Volume::exists(&dir) {
        let params = crate::chunker::ChunkerParams {
            min_size: 16 << 10,
            avg_size: 64 << 10,
            max_size: 256 << 10,
        };
        Volume::create(&dir, "pw", params, crate::crypto::KdfParams::for_tests()).unwrap();
    }
    Volume::open(&dir, "pw", super::VolumeOptions::default()).unwrap()
}

//! The blob codec (src/blob.rs). Arbitrary bytes given to `decode` never panic and are never
//! returned as data; `decode(encode(x)) == x`; and any change to an encoded blob (a bit flip, a
//! truncation, bytes appended, another chunk's id) is refused.
#![no_main]

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use tiergate::blob;
use tiergate::crypto::{ChunkId, Keys, MasterKey};

#[derive(Arbitrary, Debug)]
enum Damage {
    None,
    Flip { at: u32, bit: u8 },
    Truncate { to: u32 },
    Append { bytes: Vec<u8> },
    OtherId { id: [u8; 32] },
}

#[derive(Arbitrary, Debug)]
enum Input {
    /// Raw bytes as a stored blob, claimed by chunk `id`.
    Raw { id: [u8; 32], blob: Vec<u8> },
    /// A real blob of `plain`, possibly damaged, then decoded.
    Encoded {
        plain: Vec<u8>,
        repeat: u8,
        level: i8,
        nonce: [u8; 12],
        damage: Damage,
    },
}

fn keys() -> Keys {
    MasterKey::from_bytes([7; 32]).subkeys()
}

fuzz_target!(|input: Input| {
    let keys = keys();
    match input {
        Input::Raw { id, blob } => {
            // Without the key nobody can make a valid blob: anything here is an error.
            let r = blob::decode(&keys, &ChunkId(id), &blob);
            assert!(r.is_err(), "arbitrary bytes decoded as a blob");
        }
        Input::Encoded {
            plain,
            repeat,
            level,
            nonce,
            damage,
        } => {
            // Repetition makes compressible chunks, so both payload kinds are covered.
            let plain: Vec<u8> = plain.repeat(1 + repeat as usize % 64);
            let id = keys.chunk_id(&plain);
            let level = 1 + (level as i32).rem_euclid(19);
            let mut b = blob::encode_with_nonce(&keys, &id, &plain, level, &nonce);
            assert!(b.len() <= plain.len() + blob::BLOB_OVERHEAD);
            let mut claimed = id;
            let changed = match damage {
                Damage::None => false,
                Damage::Flip { at, bit } => {
                    let at = at as usize % b.len();
                    b[at] ^= 1 << (bit % 8);
                    true
                }
                Damage::Truncate { to } => {
                    let to = to as usize % b.len();
                    b.truncate(to);
                    true
                }
                Damage::Append { bytes } => {
                    b.extend_from_slice(&bytes);
                    !bytes.is_empty()
                }
                Damage::OtherId { id: other } => {
                    claimed = ChunkId(other);
                    claimed != id
                }
            };
            match blob::decode(&keys, &claimed, &b) {
                Ok(got) => {
                    assert!(!changed, "a damaged blob decoded");
                    assert_eq!(got, plain, "decode(encode(x)) != x");
                }
                Err(e) => assert!(changed, "an intact blob did not decode: {e}"),
            }
        }
    }
});

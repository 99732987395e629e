//! Byte counts as the config writes them ("20MiB", "1.5GiB") and as messages print them.

use serde::Deserialize;

use crate::error::{Error, Result};

pub const KIB: u64 = 1 << 10;
pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;
pub const TIB: u64 = 1 << 40;

/// A byte count written as an integer (bytes) or a string with a binary unit: "512KiB",
/// "20MiB", "1.5GiB", "2TiB"; also "K", "M", "G", "T" and "KB", "MB", "GB", "TB", which mean the
/// binary units too; "B" or no unit is bytes. Units are case-insensitive, except that a
/// lowercase "b" ("20Mb") is refused: it reads as bits. Fractions are rounded down to whole
/// bytes. `Display` is exact and parses back ("20 MiB", "1536 MiB", "1000 B").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn bytes(self) -> u64 {
        self.0
    }

    /// Parses the string form; the error names the text and says what is accepted.
    pub fn parse(text: &str) -> Result<ByteSize> {
        parse_byte_size(text).map(ByteSize).map_err(Error::Invalid)
    }
}

fn parse_byte_size(text: &str) -> std::result::Result<u64, String> {
    const UNITS: &str = "write bytes as an integer or a string like \"512KiB\", \"20MiB\", \
                         \"1.5GiB\" (units B, KiB, MiB, GiB, TiB; K/KB, M/MB... mean the same)";
    let t = text.trim();
    if t.starts_with('-') {
        return Err(format!("byte size {text:?} is negative"));
    }
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = (&t[..split], t[split..].trim_start());
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    if int.is_empty() || frac.contains('.') || (number.contains('.') && frac.is_empty()) {
        return Err(format!(
            "byte size {text:?} does not start with a number: {UNITS}"
        ));
    }
    let mult = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => KIB,
        "m" | "mb" | "mib" => MIB,
        "g" | "gb" | "gib" => GIB,
        "t" | "tb" | "tib" => TIB,
        _ => {
            return Err(format!(
                "byte size {text:?} has an unknown unit {unit:?}: {UNITS}"
            ))
        }
    };
    // "20Mb", "100kb", "5b": megabits or megabytes? Refuse to guess for a bandwidth setting.
    if unit.ends_with('b') {
        let bytes_unit = match unit.chars().next() {
            Some(p) if unit.len() > 1 => format!("{}iB", p.to_ascii_uppercase()),
            _ => "B".into(),
        };
        return Err(format!(
            "byte size {text:?}: a lowercase b reads as bits; write bytes with B, \
             e.g. \"{number}{bytes_unit}\""
        ));
    }
    if mult == 1 && !frac.is_empty() {
        return Err(format!("byte size {text:?}: bytes have no fraction"));
    }
    if frac.len() > 18 {
        return Err(format!("byte size {text:?} has too many decimals"));
    }
    let overflow = || format!("byte size {text:?} is too large");
    let int: u128 = int.parse().map_err(|_| overflow())?;
    let frac_value = if frac.is_empty() {
        0
    } else {
        frac.parse::<u128>().map_err(|_| overflow())? * u128::from(mult)
            / 10u128.pow(frac.len() as u32)
    };
    let total = int
        .checked_mul(u128::from(mult))
        .and_then(|v| v.checked_add(frac_value))
        .ok_or_else(overflow)?;
    u64::try_from(total).map_err(|_| overflow())
}

impl std::fmt::Display for ByteSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0;
        let (div, unit) = [(TIB, "TiB"), (GIB, "GiB"), (MIB, "MiB"), (KIB, "KiB")]
            .into_iter()
            .find(|(d, _)| n != 0 && n.is_multiple_of(*d))
            .unwrap_or((1, "B"));
        write!(f, "{} {unit}", n / div)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ByteSize;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a byte count: an integer, or a string like \"20MiB\"")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> std::result::Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> std::result::Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("byte size {v} is negative")))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<ByteSize, E> {
                parse_byte_size(v).map(ByteSize).map_err(E::custom)
            }
        }
        d.deserialize_any(Visitor)
    }
}

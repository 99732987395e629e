//! Wall-clock dates for messages and names, without any protocol crate: the core formats
//! snapshot names and retention messages through here.

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// A Unix time as an RFC 3339 UTC date with seconds (`2026-12-09T19:44:07Z`), the form S3
/// writes retention dates in. A time outside the calendar's range prints as `@<seconds>`.
pub fn utc_date(unix: u64) -> String {
    i64::try_from(unix)
        .ok()
        .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| format!("@{unix}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_seconds() {
        assert_eq!(utc_date(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_date(1_795_848_708), "2026-11-28T06:51:48Z");
        assert_eq!(utc_date(u64::MAX), format!("@{}", u64::MAX));
    }
}

//! The configuration parser (src/config.rs): any TOML text through `Config::parse` (parse and
//! validate) never panics; a configuration it accepts validates again and yields a bandwidth
//! schedule; byte sizes print and parse back to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tiergate::config::{ByteSize, Config};

fuzz_target!(|data: &[u8]| {
    if data.len() >= 8 {
        // Display is exact: "20 MiB" parses back to the same number of bytes.
        let n = u64::from_le_bytes(data[..8].try_into().unwrap());
        let shown = ByteSize(n).to_string();
        assert_eq!(ByteSize::parse(&shown).ok(), Some(ByteSize(n)), "{shown}");
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(b) = ByteSize::parse(text) {
        assert_eq!(ByteSize::parse(&b.to_string()).ok(), Some(b), "{text:?}");
    }
    if let Ok(cfg) = Config::parse(text) {
        cfg.validate().expect("a parsed config validates again");
        cfg.tiering
            .bandwidth_schedule()
            .expect("a validated config has a valid schedule");
        let _ = cfg.chunking.params();
        if let Some(s3) = &cfg.s3 {
            let _ = s3.key_prefix();
        }
    }
});

//! Element nesting depth of an XML text, measured without parsing it.
//!
//! The XML parsers behind dav-server (xml-rs, xmltree) build and drop element trees
//! recursively: a body nested a few thousand levels deep overflows a thread's stack and aborts
//! the process. Anything that reaches them from a client (WebDAV request bodies) or from the
//! volume (dead properties stored as `user.tiergate.dav.*` xattrs, lock owners) is measured here
//! first, with a loop and a counter, and refused when it nests deeper than [`MAX_DEPTH`].
//!
//! The scanner is deliberately simpler than XML: it counts `<name` as an opening, `</` as a
//! closing and `/>` as no change, skips comments, CDATA sections, processing instructions and
//! declarations, and honours quotes inside tags. It never counts fewer open elements than a
//! parser would see, so a text it accepts cannot nest deeper in the parser. Kept free of any
//! protocol crate: the core (xattrs) and the WebDAV front-end both use it.

/// Deepest element nesting accepted. WebDAV bodies real clients send nest 4 to 6 levels
/// (`propertyupdate/set/prop/PROPERTY/...`); 64 leaves room for structured dead properties
/// and keeps the parsers' recursion a few KiB of stack.
pub const MAX_DEPTH: usize = 64;

/// The deepest element nesting in `xml`, stopping early (returning `limit + 1`) as soon as it
/// exceeds `limit`. Malformed text gives a best-effort count, never a panic.
pub fn depth(xml: &[u8], limit: usize) -> usize {
    let (mut d, mut max, mut i) = (0usize, 0usize, 0usize);
    let find = |from: usize, pat: &[u8]| -> usize {
        xml.get(from..)
            .and_then(|s| s.windows(pat.len()).position(|w| w == pat))
            .map(|p| from + p + pat.len())
            .unwrap_or(xml.len())
    };
    while i < xml.len() {
        if xml[i] != b'<' {
            i += 1;
            continue;
        }
        let rest = &xml[i + 1..];
        if rest.starts_with(b"!--") {
            i = find(i + 4, b"-->");
        } else if rest.starts_with(b"![CDATA[") {
            i = find(i + 9, b"]]>");
        } else if rest.starts_with(b"?") {
            i = find(i + 2, b"?>");
        } else if rest.starts_with(b"!") {
            i = find(i + 2, b">");
        } else if rest.starts_with(b"/") {
            d = d.saturating_sub(1);
            i = find(i + 2, b">");
        } else if rest
            .first()
            .is_some_and(|&c| c.is_ascii_alphabetic() || c == b'_' || c == b':' || c >= 0x80)
        {
            // An opening tag: find its end outside quotes; `/>` closes it at once.
            let (mut j, mut quote, mut selfclose) = (i + 1, 0u8, false);
            while j < xml.len() {
                let c = xml[j];
                if quote != 0 {
                    if c == quote {
                        quote = 0;
                    }
                } else if c == b'"' || c == b'\'' {
                    quote = c;
                } else if c == b'>' {
                    selfclose = xml[j - 1] == b'/';
                    break;
                }
                j += 1;
            }
            if !selfclose {
                d += 1;
                max = max.max(d);
                if max > limit {
                    return limit + 1;
                }
            }
            i = j + 1;
        } else {
            i += 1;
        }
    }
    max
}

/// True if `xml` nests deeper than [`MAX_DEPTH`].
pub fn too_deep(xml: &[u8]) -> bool {
    depth(xml, MAX_DEPTH) > MAX_DEPTH
}

/// The fields of a stored WebDAV dead property (an xattr under `user.tiergate.dav.`, written
/// by src/webdav.rs `encode_prop`): version byte 1, then namespace, prefix, name and the
/// property's XML, each as (u32 little-endian length, bytes), nothing after. Here rather than
/// in the WebDAV module so that the core can check the XML of a value set through the mount
/// (scanning the whole value would let its binary length bytes hide an opening construct).
pub fn prop_record(b: &[u8]) -> Option<[&[u8]; 4]> {
    let (&ver, mut rest) = b.split_first()?;
    if ver != 1 {
        return None;
    }
    let mut take = || -> Option<&[u8]> {
        let n = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        let f = rest.get(4..4usize.checked_add(n)?)?;
        rest = &rest[4 + n..];
        Some(f)
    };
    let f = [take()?, take()?, take()?, take()?];
    rest.is_empty().then_some(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(n: usize) -> Vec<u8> {
        let mut s = String::from("<?xml version=\"1.0\"?>");
        for _ in 0..n {
            s.push_str("<D:a xmlns:D=\"DAV:\">");
        }
        for _ in 0..n {
            s.push_str("</D:a>");
        }
        s.into_bytes()
    }

    #[test]
    fn counts_nesting_and_stops_at_the_limit() {
        assert_eq!(depth(&nested(5), 64), 5);
        assert_eq!(depth(&nested(64), 64), 64);
        assert_eq!(depth(&nested(2000), 64), 65);
        assert!(!too_deep(&nested(64)));
        assert!(too_deep(&nested(65)));
        assert_eq!(depth(b"<a><b/><c x='>'/><d>t</d></a>", 64), 2);
        assert_eq!(depth(b"<a><!-- <b><c> --><![CDATA[<x><y>]]></a>", 64), 1);
        assert_eq!(depth(b"<!DOCTYPE a><?pi <x> ?><a/>", 64), 0);
        // Binary noise and truncation never panic.
        for s in [
            &b"<"[..],
            b"<a",
            b"<a '",
            b"</",
            b"<!--",
            b"<![CDATA[",
            b"\x00<\x01>",
        ] {
            let _ = depth(s, 64);
        }
    }

    #[test]
    fn prop_records_split_into_four_fields() {
        let mut v = vec![1u8];
        for f in [&b"ns"[..], b"", b"name", b"<a/>"] {
            v.extend_from_slice(&(f.len() as u32).to_le_bytes());
            v.extend_from_slice(f);
        }
        assert_eq!(prop_record(&v), Some([&b"ns"[..], b"", b"name", b"<a/>"]));
        assert_eq!(prop_record(&v[..v.len() - 1]), None);
        v.push(0);
        assert_eq!(prop_record(&v), None);
        assert_eq!(prop_record(&[2, 0, 0, 0, 0]), None);
        assert_eq!(prop_record(&[1, 255, 255, 255, 255]), None);
    }

    #[test]
    fn unclosed_elements_count_as_open() {
        // What a parser would nest: every opening that is not closed before the next one.
        let mut s = Vec::new();
        for _ in 0..100 {
            s.extend_from_slice(b"<a>");
        }
        assert!(too_deep(&s));
        let mut s = Vec::new();
        for _ in 0..100 {
            s.extend_from_slice(b"<a></a>");
        }
        assert!(!too_deep(&s));
    }
}

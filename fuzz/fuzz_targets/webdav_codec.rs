//! The WebDAV adapter's own parsers and record formats (src/webdav.rs): request path checks,
//! the Destination header, dead properties as stored in xattrs, the durable lock records, the
//! XML nesting scanner (src/xmldepth.rs) and the Range normaliser.
//! None panics on any input; what is encoded decodes to the same value; what decodes from
//! arbitrary stored bytes encodes and decodes again to the same thing; nothing nested deeper
//! than the limit reaches the XML parser; a normalised Range is sorted, disjoint, inside the
//! file and short.
#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use dav_server::davpath::DavPath;
use dav_server::fs::DavProp;
use dav_server::ls::DavLock;
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use tiergate::{webdav, xmldepth};

#[derive(Arbitrary, Debug)]
struct Lock {
    token: String,
    path: String,
    principal: Option<String>,
    owner: Option<String>,
    timeout_at: Option<u32>,
    timeout: Option<u32>,
    shared: bool,
    deep: bool,
}

#[derive(Arbitrary, Debug)]
struct Input {
    uri_path: String,
    destination: String,
    prop: (String, Option<String>, Option<String>, Option<Vec<u8>>),
    stored_prop: Vec<u8>,
    locks: Vec<Lock>,
    stored_locks: Vec<u8>,
    /// Arbitrary text for the nesting scanner, and a nesting built from it: `depth` copies of
    /// an element around `inner`, as a stored dead property.
    xml: Vec<u8>,
    nest: (u16, String, String),
    range: (Vec<u8>, u64),
}

/// `<tag>` `depth` times, `inner`, then the closing tags: well-formed for a plain tag name.
fn nested(depth: usize, tag: &str, inner: &str) -> String {
    let mut s = String::new();
    for _ in 0..depth {
        s.push_str(&format!("<{tag}>"));
    }
    s.push_str(inner);
    for _ in 0..depth {
        s.push_str(&format!("</{tag}>"));
    }
    s
}

fn owner_xml(e: &xmltree::Element) -> Vec<u8> {
    let mut v = Vec::new();
    e.write(&mut v).unwrap();
    v
}

fn lock_fields(l: &DavLock) -> impl PartialEq + std::fmt::Debug {
    (
        l.token.clone(),
        l.path.as_url_string(),
        l.principal.clone(),
        l.owner.as_deref().map(owner_xml),
        l.timeout_at,
        l.timeout,
        l.shared,
        l.deep,
    )
}

fn same_props(a: &DavProp, b: &DavProp) -> bool {
    (&a.name, &a.prefix, &a.namespace, &a.xml) == (&b.name, &b.prefix, &b.namespace, &b.xml)
}

fuzz_target!(|input: Input| {
    // Request paths: refused or accepted, never a panic; an accepted path has no `..`.
    if webdav::check_uri_path(&input.uri_path).is_ok() {
        assert!(!input.uri_path.split('/').any(|s| s == ".."));
    }
    let d = webdav::destination_path(&input.destination);
    assert!(!d.contains(['?', '#']), "{d:?}");
    assert!(
        input.destination.contains(d),
        "{d:?} is not from the header"
    );

    // Dead properties: an empty namespace or prefix is stored as absent, empty XML likewise.
    let (name, prefix, namespace, xml) = input.prop;
    let norm = |s: Option<String>| s.filter(|s| !s.is_empty());
    let p = DavProp {
        name,
        prefix: norm(prefix),
        namespace: norm(namespace),
        xml: xml.filter(|x| !x.is_empty()),
    };
    let enc = webdav::encode_prop(&p);
    // A property whose XML is too deep or does not parse is hidden, never handed on.
    let readable = p
        .xml
        .as_deref()
        .is_none_or(|x| !xmldepth::too_deep(x) && xmltree::Element::parse(x).is_ok());
    match webdav::decode_prop(&enc, true) {
        Some(back) => {
            assert!(readable, "an unreadable property was handed on: {p:?}");
            assert!(same_props(&back, &p), "{back:?} != {p:?}");
            let bare = webdav::decode_prop(&enc, false).unwrap();
            assert!(bare.xml.is_none() && bare.name == p.name);
        }
        None => assert!(!readable, "a readable property did not decode: {p:?}"),
    }
    if let Some(d) = webdav::decode_prop(&input.stored_prop, true) {
        assert!(d.xml.as_deref().is_none_or(|x| !xmldepth::too_deep(x)));
        let again = webdav::decode_prop(&webdav::encode_prop(&d), true).unwrap();
        assert!(same_props(&again, &d));
    }

    // The nesting scanner: no panic on anything, never more than limit + 1, and exact on
    // nestings built around arbitrary text (it may count more, never fewer).
    let lim = xmldepth::MAX_DEPTH;
    assert!(xmldepth::depth(&input.xml, lim) <= lim + 1);
    let (n, tag, inner) = input.nest;
    let n = usize::from(n % 4096);
    let tag: String = tag
        .chars()
        .filter(|c| c.is_ascii_alphabetic())
        .take(8)
        .collect();
    let tag = if tag.is_empty() { "a".to_string() } else { tag };
    let doc = nested(n, &tag, &inner);
    let got = xmldepth::depth(doc.as_bytes(), lim);
    assert!(got >= n.min(lim + 1), "{n} levels counted as {got}");
    // Deep ones never reach the parser as a stored property.
    let stored = webdav::encode_prop(&DavProp {
        name: tag.clone(),
        prefix: None,
        namespace: None,
        xml: Some(doc.clone().into_bytes()),
    });
    if n > lim {
        assert!(
            webdav::decode_prop(&stored, true).is_none(),
            "{n} levels handed on"
        );
    } else if !xmldepth::too_deep(doc.as_bytes()) {
        // Bounded: parsing it cannot exhaust the stack.
        let _ = xmltree::Element::parse(doc.as_bytes());
    }

    // Range: a normalised header is short, sorted, disjoint and inside the file.
    let (range, len) = input.range;
    let len = len % (1 << 40);
    if let Some(v) = webdav::normalise_range(&range, len) {
        let specs = v.strip_prefix("bytes=").expect("a bytes range");
        let parts: Vec<&str> = specs.split(',').collect();
        assert!(parts.len() <= webdav::MAX_RANGES, "{v}");
        if parts != [format!("{len}-")] {
            let mut prev: Option<u64> = None;
            for p in parts {
                let (a, b) = p.split_once('-').unwrap();
                let (a, b): (u64, u64) = (a.parse().unwrap(), b.parse().unwrap());
                assert!(a <= b && b < len, "{v} for {len} bytes");
                assert!(prev.is_none_or(|e| a > e + 1), "{v}: not coalesced");
                prev = Some(b);
            }
        }
    }

    // Locks: every field survives the table's encoding.
    let mut locks = Vec::new();
    for l in input.locks {
        let Ok(path) = DavPath::new(&l.path) else {
            continue;
        };
        let owner = match l.owner {
            // Bounded first (xmltree recurses); deep owners are refused at the request.
            Some(x) if xmldepth::too_deep(x.as_bytes()) => continue,
            Some(x) => match xmltree::Element::parse(x.as_bytes()) {
                Ok(e) => Some(Box::new(e)),
                Err(_) => continue,
            },
            None => None,
        };
        locks.push(DavLock {
            token: l.token,
            path: Box::new(path),
            principal: l.principal,
            owner,
            timeout_at: l
                .timeout_at
                .map(|s| UNIX_EPOCH + Duration::from_secs(s.into())),
            timeout: l.timeout.map(|s| Duration::from_secs(s.into())),
            shared: l.shared,
            deep: l.deep,
        });
    }
    let table = webdav::encode_locks(&locks);
    let back = webdav::decode_locks(&table);
    let want: Vec<_> = locks.iter().map(lock_fields).collect();
    let got: Vec<_> = back.iter().map(lock_fields).collect();
    // An owner element may not survive writing and parsing as the same bytes only if xmltree
    // itself normalises it; compare after one round so that is allowed once.
    if got != want {
        let again: Vec<_> = webdav::decode_locks(&webdav::encode_locks(&back))
            .iter()
            .map(lock_fields)
            .collect();
        assert_eq!(again, got, "the lock table does not reach a fixed point");
        assert_eq!(got.len(), want.len(), "locks lost in the table");
    }

    // A damaged table: unreadable records are dropped, the rest round-trips.
    let stored = webdav::decode_locks(&input.stored_locks);
    let re = webdav::decode_locks(&webdav::encode_locks(&stored));
    assert_eq!(
        re.iter().map(lock_fields).collect::<Vec<_>>(),
        stored.iter().map(lock_fields).collect::<Vec<_>>()
    );
});

//! The caller's groups and `CAP_FSETID`, for clearing set-uid/set-gid bits
//! ([`crate::volume::PrivChange`]).
//!
//! A FUSE request carries only the caller's fsuid, fsgid and thread id; its supplementary
//! groups and capabilities are read from `/proc/<tid>/status` (libfuse's `fuse_getgroups`
//! does the same). The kernel waits for our reply, so the thread is still there. If it cannot
//! be read, the answer is built from the request alone: the fsgid as the only group, and
//! `CAP_FSETID` for uid 0.

use fuser::Request;

use crate::volume::{Creds, PrivChange, Volume};

const CAP_FSETID: u32 = 4;

pub fn of(req: &Request) -> Creds {
    let status = std::fs::read_to_string(format!("/proc/{}/status", req.pid())).ok();
    status
        .as_deref()
        .and_then(|s| parse(s, req.gid()))
        .unwrap_or_else(|| Creds {
            groups: vec![req.gid()],
            fsetid: req.uid() == 0,
        })
}

/// Clears the bits `change` by the caller of `req` clears from `ino`; `None` changes nothing.
pub fn drop_privs(
    vol: &Volume,
    req: &Request,
    ino: u64,
    change: Option<PrivChange>,
) -> crate::Result<()> {
    match change {
        Some(c) => vol.drop_privs(ino, c, || of(req)),
        None => Ok(()),
    }
}

/// What a SETATTR is, for the bits: a chown/chgrp, a truncate, or neither.
pub fn setattr_change(size: bool, owner: bool) -> Option<PrivChange> {
    if owner {
        Some(PrivChange::Chown)
    } else if size {
        Some(PrivChange::Modify)
    } else {
        None
    }
}

/// Reads `Gid:` (its fourth field is the fsgid), `Groups:` and `CapEff:`.
fn parse(status: &str, req_gid: u32) -> Option<Creds> {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
    };
    let fsgid = field("Gid:")?
        .split_whitespace()
        .nth(3)
        .and_then(|g| g.parse().ok())
        .unwrap_or(req_gid);
    let mut groups = vec![fsgid];
    groups.extend(
        field("Groups:")?
            .split_whitespace()
            .filter_map(|g| g.parse::<u32>().ok()),
    );
    let cap_eff = u64::from_str_radix(field("CapEff:")?, 16).ok()?;
    Some(Creds {
        groups,
        fsetid: cap_eff & (1 << CAP_FSETID) != 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_status() {
        let s = "Name:\tsh\nUid:\t65534\t65534\t65534\t65534\nGid:\t100\t100\t100\t7\n\
                 Groups:\t20 30 \nCapEff:\t0000000000000000\n";
        let c = parse(s, 100).unwrap();
        assert_eq!(c.groups, vec![7, 20, 30]);
        assert!(!c.fsetid);
        let root = "Gid:\t0\t0\t0\t0\nGroups:\t\nCapEff:\t000001ffffffffff\n";
        let c = parse(root, 0).unwrap();
        assert_eq!(c.groups, vec![0]);
        assert!(c.fsetid);
        assert!(parse("garbage", 0).is_none());
    }
}

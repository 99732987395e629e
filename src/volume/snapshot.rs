//! STUB of the snapshot core (issue 9 item 4): the API the plumbing around it (config, daemon,
//! control socket, status, metrics, page) is built against. Replaced wholesale by the real
//! implementation; nothing here is meant to last.

use serde::Serialize;

use super::*;

/// Name of the hidden read-only directory in the volume root holding the snapshots.
pub const SNAPSHOT_DIR_NAME: &str = ".snapshots";

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeepPolicy {
    pub last: u32,
    pub daily: u32,
    pub weekly: u32,
    pub monthly: u32,
}

impl KeepPolicy {
    pub fn is_empty(&self) -> bool {
        self.last == 0 && self.daily == 0 && self.weekly == 0 && self.monthly == 0
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct SnapshotInfo {
    pub id: u64,
    pub name: String,
    pub created_unix: u64,
    /// taken by the schedule (pruned by the keep policy) rather than by hand
    pub scheduled: bool,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct SnapshotStatus {
    pub count: u64,
    pub newest_name: Option<String>,
    pub newest_unix: Option<u64>,
    pub oldest_unix: Option<u64>,
    /// 0 = no schedule
    pub every_minutes: u64,
    pub last_error: Option<String>,
}

const STUB: &str = "snapshots are not implemented yet (stub)";

impl Volume {
    /// Takes a snapshot now (by hand). None: a generated name "manual-YYYY-MM-DD_HHMMSSZ".
    /// Error::Exists if the name is taken, Error::Invalid for a bad name.
    pub fn snapshot_create(&self, _name: Option<&str>) -> Result<SnapshotInfo> {
        Err(Error::Invalid(STUB.into()))
    }

    /// Oldest first.
    pub fn snapshot_list(&self) -> Result<Vec<SnapshotInfo>> {
        Ok(Vec::new())
    }

    /// Error::NotFound if no snapshot has that name.
    pub fn snapshot_delete(&self, _name: &str) -> Result<()> {
        Err(Error::NotFound)
    }

    pub fn set_snapshot_schedule(&self, _every_minutes: u64, _keep: KeepPolicy) {}

    /// Takes a scheduled snapshot ("auto-YYYY-MM-DD_HHMMSSZ") when one is due and deletes
    /// scheduled snapshots the keep policy no longer keeps (never hand-made ones). Cheap when
    /// nothing is due; the daemon calls it every minute.
    pub fn snapshot_tick(&self) -> Result<()> {
        Ok(())
    }

    pub fn snapshot_status(&self) -> SnapshotStatus {
        SnapshotStatus::default()
    }
}

//! The appliance's recent events (a bounded in-memory log): the core, tiering and the
//! management API record here; the status page and `/api/v1/manage/events` read it.

use std::collections::VecDeque;

use parking_lot::Mutex;
use serde::Serialize;

use crate::meta::unix_now;

/// Something an admin may want to know about, kept in memory (newest last).
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub at_unix: u64,
    /// "info", "warning" or "error".
    pub level: &'static str,
    pub message: String,
}

const EVENTS_KEPT: usize = 200;
static EVENTS: Mutex<VecDeque<Event>> = Mutex::new(VecDeque::new());

/// Records an event for the status page and the management API (the caller logs it too).
pub fn record(level: &'static str, message: impl Into<String>) {
    let mut e = EVENTS.lock();
    if e.len() == EVENTS_KEPT {
        e.pop_front();
    }
    e.push_back(Event {
        at_unix: unix_now(),
        level,
        message: message.into(),
    });
}

/// The recent events, oldest first.
pub fn recent() -> Vec<Event> {
    EVENTS.lock().iter().cloned().collect()
}

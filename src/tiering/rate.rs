//! Upload bandwidth: the weekly schedule of limits and the token bucket the upload tasks share.
//!
//! A [`Schedule`] maps a position in the local week ([`WeekTime`]) to a limit in bytes per second,
//! or none. It comes from `[tiering]`: `bandwidth_limit` is the default, and the rules of
//! `[[tiering.schedule]]` are tried in order, the first whose days and window contain the time
//! winning. A window whose end is not after its start (`22:00`-`06:00`) runs past midnight and
//! belongs to the day it starts on: `fri 22:00-06:00` covers Friday night until Saturday 06:00.
//! A rule with limit 0 makes its window unlimited. Times are the appliance's local wall clock, so
//! a daylight-saving change moves the windows with the office hours they describe.
//!
//! [`RateLimiter`] sits behind an `Arc` shared by the concurrent upload tasks; each asks for the
//! bytes it is about to send and waits until the limit in force allows them:
//! - A token bucket refilled at the current rate. It starts empty (no burst at start, so the
//!   average over the first few objects is already close to the limit) and holds at most
//!   max(1 s of the current rate, the request at hand): a request larger than one second of
//!   traffic is still served, and idle time buys at most one second of traffic at full speed.
//! - First come, first served: the bucket sits in tokio's fair (FIFO) mutex, and the waiter at
//!   the head holds it while it waits for its tokens, so a large request is never starved by a
//!   stream of small ones behind it.
//! - The head re-reads the limit at least once a second (a schedule boundary passes while it
//!   waits) and at once when [`RateLimiter::set_schedule`] swaps the schedule.
//! - Cancel-safe: dropping an `acquire` future takes no tokens and leaves the queue.
//! - Waiting uses `tokio::time`, so tests run on a paused clock; the week position comes from the
//!   local clock, or from a function given to [`RateLimiter::with_week_clock`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::bytesize::ByteSize;
use crate::error::{Error, Result};

/// One `[[tiering.schedule]]` rule: an upload limit on some days between two times
/// (src/tiering/rate.rs parses and applies it).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BandwidthRule {
    /// "mon-fri", "sat,sun", "mon,wed-fri", "daily"/"all"; case-insensitive, 3-letter names.
    pub days: String,
    /// "08:00" (HH:MM, 00:00..=23:59).
    pub from: String,
    /// "18:00"; `to <= from` means the window runs past midnight (22:00-06:00) and belongs to
    /// the day it starts on; "24:00" is the end of the day.
    pub to: String,
    /// Bytes per second; 0 = unlimited during this window.
    pub limit: ByteSize,
}

/// Minutes in a day; [`WeekTime::minute`] is below it.
const DAY_MINUTES: u16 = 24 * 60;

/// Local wall-clock position in the week.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WeekTime {
    /// 0 = Monday .. 6 = Sunday.
    pub weekday: u8,
    /// Minute of the day, 0..1440.
    pub minute: u16,
}

impl WeekTime {
    /// The appliance's local time (`localtime_r`, so TZ and /etc/localtime apply); UTC if the
    /// C library cannot convert it.
    pub fn now_local() -> WeekTime {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let t = secs as libc::time_t;
        // SAFETY: tm is plain old data and all-zero is a valid value.
        let mut tm: libc::tm = unsafe { std::mem::zeroed() };
        // SAFETY: localtime_r is the thread-safe variant and writes only into the tm we own.
        let ok = !unsafe { libc::localtime_r(&t, &mut tm) }.is_null();
        if ok && (0..7).contains(&tm.tm_wday) && (0..24).contains(&tm.tm_hour) {
            WeekTime {
                // tm_wday counts from Sunday = 0.
                weekday: ((tm.tm_wday + 6) % 7) as u8,
                minute: (tm.tm_hour * 60 + tm.tm_min.clamp(0, 59)) as u16,
            }
        } else {
            WeekTime::from_unix_utc(secs)
        }
    }

    /// The UTC week position of a Unix time in seconds.
    pub fn from_unix_utc(secs: i64) -> WeekTime {
        let days = secs.div_euclid(86_400);
        WeekTime {
            // 1970-01-01 was a Thursday (3 counting from Monday = 0).
            weekday: (days + 3).rem_euclid(7) as u8,
            minute: (secs.rem_euclid(86_400) / 60) as u16,
        }
    }
}

/// One schedule rule, parsed: see [`parse_rule`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScheduleRule {
    /// Days the window starts on: bit 0 = Monday .. bit 6 = Sunday.
    pub days: u8,
    /// Start minute of the day, 0..1440.
    pub from: u16,
    /// End minute, 0..=1440 (1440 is "24:00"); `to <= from` runs past midnight.
    pub to: u16,
    /// Bytes per second in the window; `None` = unlimited.
    pub limit: Option<u64>,
}

impl ScheduleRule {
    /// Whether `t` falls in the window.
    pub fn matches(&self, t: WeekTime) -> bool {
        let on = |day: u8| self.days & (1 << day) != 0;
        if self.from < self.to {
            on(t.weekday) && (self.from..self.to).contains(&t.minute)
        } else {
            // Past midnight: the evening part on a listed day, or the morning after one.
            (on(t.weekday) && t.minute >= self.from)
                || (on((t.weekday + 6) % 7) && t.minute < self.to)
        }
    }
}

/// Parses a `[[tiering.schedule]]` rule. `Error::Invalid` messages start with the key at fault
/// (`days: unknown day "mun" ...`), so the caller can put the rule's position in front.
pub fn parse_rule(rule: &BandwidthRule) -> Result<ScheduleRule> {
    let field = |key: &str, r: std::result::Result<u16, String>| {
        r.map_err(|m| Error::Invalid(format!("{key}: {m}")))
    };
    let days = parse_days(&rule.days).map_err(|m| Error::Invalid(format!("days: {m}")))?;
    let from = field("from", parse_hhmm(&rule.from, false))?;
    let to = field("to", parse_hhmm(&rule.to, true))?;
    Ok(ScheduleRule {
        days,
        from,
        to,
        limit: (rule.limit.bytes() > 0).then_some(rule.limit.bytes()),
    })
}

const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// Parses a day list into a bit set (bit 0 = Monday): comma-separated three-letter names and
/// ranges (`mon-fri`, `sat,sun`, `mon,wed-fri`; a range may wrap: `fri-mon`), or `daily` /
/// `all`. Case-insensitive. The error says what is wrong, without the key.
pub fn parse_days(s: &str) -> std::result::Result<u8, String> {
    let s = s.trim().to_ascii_lowercase();
    if s == "daily" || s == "all" {
        return Ok(0x7f);
    }
    let day = |name: &str| {
        let name = name.trim();
        DAY_NAMES
            .iter()
            .position(|d| *d == name)
            .map(|i| i as u8)
            .ok_or_else(|| {
                format!(
                    "unknown day {name:?} (use mon tue wed thu fri sat sun, ranges like mon-fri, \
                     lists like sat,sun, or daily)"
                )
            })
    };
    let mut set = 0u8;
    for part in s.split(',') {
        if part.trim().is_empty() {
            return Err(format!("empty entry in day list {s:?}"));
        }
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (day(a)?, day(b)?);
                // Walk from a to b, wrapping past Sunday.
                let mut d = a;
                loop {
                    set |= 1 << d;
                    if d == b {
                        break;
                    }
                    d = (d + 1) % 7;
                }
            }
            None => set |= 1 << day(part)?,
        }
    }
    Ok(set)
}

/// Parses `HH:MM` (00:00..=23:59; `24:00` too when `end` is set) into minutes of the day.
/// The error says what is wrong, without the key.
pub fn parse_hhmm(s: &str, end: bool) -> std::result::Result<u16, String> {
    let bad = || {
        format!(
            "{s:?} is not a time of day: write HH:MM, 00:00..=23:59{}",
            if end { " or 24:00" } else { "" }
        )
    };
    let (h, m) = s.trim().split_once(':').ok_or_else(bad)?;
    let digits = |x: &str, n: std::ops::RangeInclusive<usize>| {
        n.contains(&x.len()) && x.bytes().all(|c| c.is_ascii_digit())
    };
    if !digits(h, 1..=2) || !digits(m, 2..=2) {
        return Err(bad());
    }
    let (h, m): (u16, u16) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    match (h, m) {
        (24, 0) if end => Ok(DAY_MINUTES),
        (0..=23, 0..=59) => Ok(h * 60 + m),
        _ => Err(bad()),
    }
}

/// The upload limit through the week: a default and rules, the first matching rule winning.
#[derive(Debug, Clone)]
pub struct Schedule {
    default_limit: Option<u64>,
    rules: Vec<ScheduleRule>,
}

impl Schedule {
    /// `default_limit` in bytes per second applies where no rule matches (`None` = unlimited;
    /// `Some(0)` is refused: leave it out for unlimited). A bad rule is `Error::Invalid` naming
    /// its position, e.g. `schedule[1].days: unknown day "mun" ...`.
    pub fn new(default_limit: Option<u64>, rules: &[BandwidthRule]) -> Result<Schedule> {
        if default_limit == Some(0) {
            return Err(Error::Invalid(
                "bandwidth_limit = 0: leave it out for unlimited".into(),
            ));
        }
        let rules = rules
            .iter()
            .enumerate()
            .map(|(i, r)| {
                parse_rule(r).map_err(|e| match e {
                    Error::Invalid(m) => Error::Invalid(format!("schedule[{i}].{m}")),
                    other => other,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Schedule {
            default_limit,
            rules,
        })
    }

    /// The schedule in words, as the status shows it: "20 MiB/s", "unlimited outside 2
    /// schedule rule(s)".
    pub fn describe(&self) -> String {
        let base = match self.default_limit {
            Some(l) => format!("{}/s", ByteSize(l)),
            None => "unlimited".into(),
        };
        match self.rules.len() {
            0 => base,
            n => format!("{base} outside {n} schedule rule(s)"),
        }
    }

    /// No limit at any time.
    pub fn unlimited() -> Schedule {
        Schedule {
            default_limit: None,
            rules: Vec::new(),
        }
    }

    /// Bytes per second allowed at `t`; None = unlimited.
    pub fn limit_at(&self, t: WeekTime) -> Option<u64> {
        match self.rules.iter().find(|r| r.matches(t)) {
            Some(r) => r.limit,
            None => self.default_limit,
        }
    }

    /// Bytes per second allowed now (local time); None = unlimited.
    pub fn limit_now(&self) -> Option<u64> {
        self.limit_at(WeekTime::now_local())
    }
}

/// Longest nap of the waiter at the head: how late it may notice a schedule boundary.
const MAX_NAP: Duration = Duration::from_secs(1);

/// Float rounding in the token arithmetic; never more than a byte of credit.
const SLACK: f64 = 1.0;

/// Token bucket state, guarded by the FIFO mutex.
struct Bucket {
    tokens: f64,
    /// When tokens were last counted, and the rate in force since then (None: unlimited, or
    /// not used yet), which pays for the time up to the next count.
    last: Instant,
    rate: Option<f64>,
}

type WeekClock = Box<dyn Fn() -> WeekTime + Send + Sync>;

/// Upload bandwidth limiter shared by the upload tasks (see the module docs).
pub struct RateLimiter {
    schedule: parking_lot::Mutex<Schedule>,
    week_clock: WeekClock,
    bucket: tokio::sync::Mutex<Bucket>,
    /// Wakes the head waiter when the schedule is swapped.
    changed: Notify,
    granted: AtomicU64,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("current_limit", &self.current_limit())
            .field("granted_bytes", &self.granted_bytes())
            .finish()
    }
}

impl RateLimiter {
    /// A limiter following `schedule` on the local clock. Needs a tokio runtime only to wait.
    pub fn new(schedule: Schedule) -> RateLimiter {
        Self::with_week_clock(schedule, WeekTime::now_local)
    }

    /// A limiter that reads the week position from `clock` (tests and simulations; pair it with
    /// tokio's paused clock to pass schedule boundaries without waiting for them).
    pub fn with_week_clock(
        schedule: Schedule,
        clock: impl Fn() -> WeekTime + Send + Sync + 'static,
    ) -> RateLimiter {
        RateLimiter {
            schedule: parking_lot::Mutex::new(schedule),
            week_clock: Box::new(clock),
            bucket: tokio::sync::Mutex::new(Bucket {
                tokens: 0.0,
                last: Instant::now(),
                rate: None,
            }),
            changed: Notify::new(),
            granted: AtomicU64::new(0),
        }
    }

    /// Waits until `bytes` may be sent under the limit in force, then returns (see the module
    /// docs for the bucket, the order of waiters and limit changes). Unlimited: returns at once.
    pub async fn acquire(&self, bytes: u64) {
        if bytes > 0 && self.current_limit().is_some() {
            self.wait_for_tokens(bytes).await;
        }
        self.granted.fetch_add(bytes, Ordering::Relaxed);
    }

    async fn wait_for_tokens(&self, bytes: u64) {
        let need = bytes as f64;
        // Queue here: tokio's mutex hands the lock over in the order lock() was called.
        let mut bucket = self.bucket.lock().await;
        let mut first = true;
        loop {
            // Registered before the limit is read, so a swap in between still wakes us.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();

            let now = Instant::now();
            // Time since the last count earns tokens at the rate that was in force during it,
            // so a limit that just changed applies from the moment it was noticed.
            if let Some(old) = bucket.rate {
                let earned = now.duration_since(bucket.last).as_secs_f64() * old;
                bucket.tokens += earned;
            }
            bucket.last = now;
            bucket.rate = self.current_limit().map(|r| r as f64);
            let Some(rate) = bucket.rate else {
                // Unlimited now; the time until the next limited request earns nothing.
                return;
            };
            // Idle time before this request buys at most one second of traffic; while it waits,
            // the bucket may fill up to the request so that one larger than a second is served.
            let cap = if first { rate } else { rate.max(need) };
            first = false;
            bucket.tokens = bucket.tokens.min(cap);
            if bucket.tokens + SLACK >= need {
                bucket.tokens -= need;
                return;
            }
            let secs = ((need - bucket.tokens) / rate).min(MAX_NAP.as_secs_f64());
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs_f64(secs)) => {}
                _ = changed => {}
            }
        }
    }

    /// Swaps the schedule at run time; a waiting upload follows the new limit at once.
    pub fn set_schedule(&self, s: Schedule) {
        *self.schedule.lock() = s;
        self.changed.notify_waiters();
    }

    /// The schedule in force.
    pub fn schedule(&self) -> Schedule {
        self.schedule.lock().clone()
    }

    /// Bytes per second allowed now; None = unlimited.
    pub fn current_limit(&self) -> Option<u64> {
        let t = (self.week_clock)();
        self.schedule.lock().limit_at(t)
    }

    /// Total bytes granted so far (for status and metrics).
    pub fn granted_bytes(&self) -> u64 {
        self.granted.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const KIB: u64 = 1024;
    const MIB: u64 = 1024 * 1024;

    fn rule(days: &str, from: &str, to: &str, limit: u64) -> BandwidthRule {
        BandwidthRule {
            days: days.into(),
            from: from.into(),
            to: to.into(),
            limit: ByteSize(limit),
        }
    }

    /// `at("fri", "22:30")`.
    fn at(day: &str, hhmm: &str) -> WeekTime {
        WeekTime {
            weekday: DAY_NAMES.iter().position(|d| *d == day).unwrap() as u8,
            minute: parse_hhmm(hhmm, false).unwrap(),
        }
    }

    #[test]
    fn week_time_from_unix() {
        // 1970-01-01 00:00 UTC was a Thursday; 2024-01-01 12:34 UTC a Monday.
        assert_eq!(WeekTime::from_unix_utc(0), at("thu", "00:00"));
        assert_eq!(WeekTime::from_unix_utc(1_704_112_440), at("mon", "12:34"));
        assert_eq!(WeekTime::from_unix_utc(-60), at("wed", "23:59"));
        let now = WeekTime::now_local();
        assert!(now.weekday < 7 && now.minute < DAY_MINUTES, "{now:?}");
    }

    #[test]
    fn day_lists() {
        assert_eq!(parse_days("mon-fri"), Ok(0b001_1111));
        assert_eq!(parse_days("Sat, SUN"), Ok(0b110_0000));
        assert_eq!(parse_days("mon,wed-fri"), Ok(0b001_1101));
        assert_eq!(parse_days("daily"), Ok(0x7f));
        assert_eq!(parse_days("ALL"), Ok(0x7f));
        assert_eq!(parse_days("fri-mon"), Ok(0b111_0001));
        assert_eq!(parse_days("tue"), Ok(0b10));
        assert_eq!(parse_days("tue-tue"), Ok(0b10));
        for bad in [
            "",
            "mun",
            "monday",
            "mon,,tue",
            "mon-",
            "mon-fri-sat",
            "1-5",
        ] {
            assert!(parse_days(bad).is_err(), "{bad:?}");
        }
        assert!(parse_days("mun")
            .unwrap_err()
            .contains("unknown day \"mun\""));
    }

    #[test]
    fn times_of_day() {
        assert_eq!(parse_hhmm("08:00", false), Ok(480));
        assert_eq!(parse_hhmm("8:05", false), Ok(485));
        assert_eq!(parse_hhmm("23:59", false), Ok(1439));
        assert_eq!(parse_hhmm("24:00", true), Ok(1440));
        for bad in [
            "24:00", "25:00", "12:60", "12", "12:5", "-1:00", "ab:cd", "12:00:00", "",
        ] {
            assert!(parse_hhmm(bad, false).is_err(), "{bad:?}");
        }
        assert!(parse_hhmm("24:01", true).is_err());
    }

    #[test]
    fn bad_rules_are_named() {
        let err = Schedule::new(
            None,
            &[
                rule("mon", "08:00", "18:00", 1),
                rule("mun", "1:00", "2:00", 1),
            ],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("schedule[1].days: unknown day \"mun\""),
            "{err}"
        );
        let err = parse_rule(&rule("mon", "8", "18:00", 1))
            .unwrap_err()
            .to_string();
        assert!(err.contains("from: \"8\" is not a time of day"), "{err}");
        let err = parse_rule(&rule("mon", "08:00", "24:30", 1))
            .unwrap_err()
            .to_string();
        assert!(err.contains("to: \"24:30\""), "{err}");
        // 24:00 ends a window but does not start one.
        assert!(parse_rule(&rule("mon", "24:00", "06:00", 1)).is_err());
        let err = Schedule::new(Some(0), &[]).unwrap_err().to_string();
        assert!(err.contains("leave it out"), "{err}");
    }

    #[test]
    fn schedule_matching() {
        let s = Schedule::new(
            Some(100),
            &[
                // Office hours, then a slower overnight window, then weekends unlimited.
                rule("mon-fri", "08:00", "18:00", 10),
                rule("mon-fri", "22:00", "06:00", 50),
                rule("sat,sun", "00:00", "24:00", 0),
                // Never reached on Monday mornings: the first rule already covers them.
                rule("mon", "09:00", "10:00", 1),
            ],
        )
        .unwrap();
        assert_eq!(s.limit_at(at("mon", "07:59")), Some(100));
        assert_eq!(s.limit_at(at("mon", "08:00")), Some(10));
        assert_eq!(s.limit_at(at("mon", "09:30")), Some(10), "first rule wins");
        assert_eq!(s.limit_at(at("fri", "17:59")), Some(10));
        assert_eq!(
            s.limit_at(at("fri", "18:00")),
            Some(100),
            "end is exclusive"
        );
        assert_eq!(s.limit_at(at("tue", "23:00")), Some(50));
        assert_eq!(
            s.limit_at(at("wed", "05:59")),
            Some(50),
            "overnight into the next day"
        );
        assert_eq!(s.limit_at(at("wed", "06:00")), Some(100));
        // Monday 03:00 belongs to Sunday's night, and Sunday has no overnight window.
        assert_eq!(s.limit_at(at("mon", "03:00")), Some(100));
        // Friday's window runs into Saturday morning, before the weekend rule is looked at.
        assert_eq!(s.limit_at(at("sat", "05:00")), Some(50));
        assert_eq!(s.limit_at(at("sat", "06:00")), None, "unlimited window");
        assert_eq!(s.limit_at(at("sun", "23:59")), None);

        // Overnight across the week's end: Sunday night into Monday.
        let s = Schedule::new(None, &[rule("sun", "20:00", "02:00", 7)]).unwrap();
        assert_eq!(s.limit_at(at("sun", "20:00")), Some(7));
        assert_eq!(s.limit_at(at("mon", "01:59")), Some(7));
        assert_eq!(s.limit_at(at("mon", "02:00")), None);
        assert_eq!(s.limit_at(at("sat", "01:00")), None);
        // from == to: a whole day starting at `from`.
        let s = Schedule::new(None, &[rule("wed", "12:00", "12:00", 7)]).unwrap();
        assert_eq!(s.limit_at(at("wed", "12:00")), Some(7));
        assert_eq!(s.limit_at(at("thu", "11:59")), Some(7));
        assert_eq!(s.limit_at(at("thu", "12:00")), None);
        assert_eq!(s.limit_at(at("wed", "11:59")), None);

        assert_eq!(Schedule::unlimited().limit_at(at("tue", "10:00")), None);
    }

    fn limiter(limit: Option<u64>) -> Arc<RateLimiter> {
        Arc::new(RateLimiter::new(Schedule::new(limit, &[]).unwrap()))
    }

    /// `(actual - expected) / expected` of two durations.
    fn off_by(actual: Duration, expected: f64) -> f64 {
        (actual.as_secs_f64() - expected).abs() / expected
    }

    #[test]
    fn limiter_is_shareable() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<RateLimiter>();
    }

    #[tokio::test(start_paused = true)]
    async fn sequential_chunks_average_the_limit() {
        // 64 chunks of 64 KiB at 1 MiB/s: 4 s, the first chunk included (the bucket starts empty).
        let l = limiter(Some(MIB));
        let t0 = Instant::now();
        for _ in 0..64 {
            l.acquire(64 * KIB).await;
        }
        let took = t0.elapsed();
        assert!(off_by(took, 4.0) < 0.05, "{took:?}");
        assert_eq!(l.granted_bytes(), 4 * MIB);
        assert_eq!(l.current_limit(), Some(MIB));

        // A request larger than a second of traffic is served too, at the same rate.
        let t0 = Instant::now();
        l.acquire(3 * MIB).await;
        assert!(off_by(t0.elapsed(), 3.0) < 0.05, "{:?}", t0.elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn idle_time_buys_at_most_one_second() {
        let l = limiter(Some(MIB));
        l.acquire(MIB).await;
        tokio::time::sleep(Duration::from_secs(60)).await;
        // One second of credit, not a minute's: 4 MiB take 3 s.
        let t0 = Instant::now();
        l.acquire(4 * MIB).await;
        assert!(off_by(t0.elapsed(), 3.0) < 0.05, "{:?}", t0.elapsed());
        tokio::time::sleep(Duration::from_secs(60)).await;
        let t0 = Instant::now();
        l.acquire(MIB / 2).await;
        l.acquire(MIB / 2).await;
        l.acquire(MIB).await;
        assert!(off_by(t0.elapsed(), 1.0) < 0.05, "{:?}", t0.elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn unlimited_returns_at_once() {
        let l = Arc::new(RateLimiter::new(Schedule::unlimited()));
        let t0 = Instant::now();
        l.acquire(10 << 30).await;
        l.acquire(0).await;
        assert_eq!(t0.elapsed(), Duration::ZERO);
        assert_eq!(l.granted_bytes(), 10 << 30);
        assert_eq!(l.current_limit(), None);
        // So does a rule with limit 0 in force.
        let all_day = [rule("daily", "00:00", "24:00", 0)];
        let l = RateLimiter::new(Schedule::new(Some(KIB), &all_day).unwrap());
        l.acquire(MIB).await;
        assert_eq!(t0.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_acquirers_share_the_limit() {
        // 4 tasks × 32 chunks × 32 KiB = 4 MiB at 1 MiB/s: 4 s together.
        let l = limiter(Some(MIB));
        let t0 = Instant::now();
        let tasks: Vec<_> = (0..4)
            .map(|_| {
                let l = l.clone();
                tokio::spawn(async move {
                    for _ in 0..32 {
                        l.acquire(32 * KIB).await;
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let took = t0.elapsed();
        assert!(off_by(took, 4.0) < 0.05, "{took:?}");
        assert_eq!(l.granted_bytes(), 4 * MIB);
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_are_served_in_order() {
        // A big request queued first is not overtaken by small ones queued after it.
        let l = limiter(Some(MIB));
        let order = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let spawn = |name: &'static str, bytes: u64| {
            let (l, order) = (l.clone(), order.clone());
            tokio::spawn(async move {
                l.acquire(bytes).await;
                order.lock().push((name, Instant::now()));
            })
        };
        let t0 = Instant::now();
        let big = spawn("big", 2 * MIB);
        // Let it reach the queue before the small ones arrive.
        tokio::task::yield_now().await;
        let small: Vec<_> = (0..4).map(|_| spawn("small", 16 * KIB)).collect();
        big.await.unwrap();
        for s in small {
            s.await.unwrap();
        }
        let order = order.lock();
        assert_eq!(order[0].0, "big", "{order:?}");
        assert!(off_by(order[0].1 - t0, 2.0) < 0.05, "{order:?}");
        assert!(
            off_by(order[4].1 - t0, 2.0 + 64.0 / 1024.0) < 0.05,
            "{order:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn set_schedule_takes_effect_during_a_wait() {
        // 1 MiB at 64 KiB/s would take 16 s; after 1 s the limit goes to 1 MiB/s, so the
        // remaining 960 KiB take 0.94 s more.
        let l = limiter(Some(64 * KIB));
        let t0 = Instant::now();
        let waiter = {
            let l = l.clone();
            tokio::spawn(async move { l.acquire(MIB).await })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        l.set_schedule(Schedule::new(Some(MIB), &[]).unwrap());
        assert_eq!(l.current_limit(), Some(MIB));
        waiter.await.unwrap();
        assert!(off_by(t0.elapsed(), 1.9375) < 0.05, "{:?}", t0.elapsed());

        // Lifted to unlimited in the middle of a wait: the waiter goes at once.
        let l = limiter(Some(KIB));
        let waiter = {
            let l = l.clone();
            tokio::spawn(async move { l.acquire(MIB).await })
        };
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let t1 = Instant::now();
        l.set_schedule(Schedule::unlimited());
        waiter.await.unwrap();
        assert_eq!(t1.elapsed(), Duration::ZERO);
        assert_eq!(l.granted_bytes(), MIB);
    }

    #[tokio::test(start_paused = true)]
    async fn schedule_boundary_is_followed_while_waiting() {
        // The week clock runs off tokio's paused clock from Monday 00:00: the first minute is
        // limited to 16 KiB/s, then the default 1 MiB/s applies. 2 MiB: 960 KiB in the first
        // 60 s, the remaining 1088 KiB in 1.06 s more, noticed within a second of the boundary.
        let t0 = Instant::now();
        let clock = move || WeekTime {
            weekday: 0,
            minute: (t0.elapsed().as_secs() / 60) as u16,
        };
        let s = Schedule::new(Some(MIB), &[rule("mon", "00:00", "00:01", 16 * KIB)]).unwrap();
        let l = RateLimiter::with_week_clock(s, clock);
        assert_eq!(l.current_limit(), Some(16 * KIB));
        l.acquire(2 * MIB).await;
        let took = t0.elapsed().as_secs_f64();
        assert!((61.06..62.1).contains(&took), "{took}");
        assert_eq!(l.current_limit(), Some(MIB));
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_wait_takes_nothing() {
        // A cancelled acquire leaves the queue and its tokens to the next one.
        let l = limiter(Some(MIB));
        let t0 = Instant::now();
        let r = tokio::time::timeout(Duration::from_millis(500), l.acquire(4 * MIB)).await;
        assert!(r.is_err());
        assert_eq!(l.granted_bytes(), 0);
        // The half second already earned counts (the bucket holds up to 1 s of rate).
        l.acquire(MIB).await;
        assert!(off_by(t0.elapsed(), 1.0) < 0.05, "{:?}", t0.elapsed());
    }
}

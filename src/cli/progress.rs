//! Progress of the long commands (`verify`, `recover`, `sync`) on standard error: for a person
//! at a terminal, a bar per step with its rate and ETA, redrawn in place; where nobody watches a
//! terminal (journald, a pipe, a log file), a plain line every [`PLAIN_EVERY`] so a log shows the
//! command is alive and how far it got, never a stream of redraws. Standard output keeps only
//! the result, for scripts.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use super::{duration_text, human_bytes};

/// How often a plain progress line is written when standard error is not a terminal.
pub const PLAIN_EVERY: Duration = Duration::from_secs(10);

/// What a step counts.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Bytes,
    /// Records, segments, packs: shown as plain numbers.
    Items,
}

impl Unit {
    fn amount(self, n: u64) -> String {
        match self {
            Unit::Bytes => human_bytes(n),
            Unit::Items => n.to_string(),
        }
    }

    fn rate(self, per_sec: f64) -> String {
        match self {
            Unit::Bytes => format!("{}/s", human_bytes(per_sec as u64)),
            Unit::Items => format!("{per_sec:.0}/s"),
        }
    }
}

/// The estimated time left at `rate` per second, "--" while nothing moved yet.
fn eta(left: u64, rate: f64) -> String {
    if rate > 0.0 {
        duration_text(Duration::from_secs_f64(left as f64 / rate))
    } else {
        "--".into()
    }
}

fn is_terminal() -> bool {
    std::io::stderr().is_terminal()
}

/// The steps of one long operation, fed by its `progress(step, done, total)` callback.
pub struct Steps {
    unit: Unit,
    terminal: bool,
    steps: RefCell<HashMap<String, Step>>,
}

struct Step {
    bar: Option<ProgressBar>,
    started: Instant,
    last_line: Instant,
}

impl Steps {
    pub fn new(unit: Unit) -> Steps {
        Steps {
            unit,
            terminal: is_terminal(),
            steps: RefCell::new(HashMap::new()),
        }
    }

    pub fn update(&self, step: &str, done: u64, total: u64) {
        let mut steps = self.steps.borrow_mut();
        let s = steps.entry(step.to_string()).or_insert_with(|| {
            let bar = self.terminal.then(|| {
                let counts = match self.unit {
                    Unit::Bytes => "{bytes}/{total_bytes} {binary_bytes_per_sec}",
                    Unit::Items => "{pos}/{len} {per_sec}",
                };
                let b = ProgressBar::new(total);
                b.set_style(
                    ProgressStyle::with_template(&format!(
                        "{{msg:>24}} [{{bar:30}}] {counts}, ETA {{eta}}"
                    ))
                    .expect("progress template")
                    .progress_chars("=> "),
                );
                b.set_message(step.to_string());
                b
            });
            Step {
                bar,
                started: Instant::now(),
                last_line: Instant::now(),
            }
        });
        match &s.bar {
            Some(bar) => {
                bar.set_length(total);
                bar.set_position(done);
                if done >= total {
                    bar.finish();
                }
            }
            None if s.last_line.elapsed() >= PLAIN_EVERY && done < total => {
                s.last_line = Instant::now();
                let rate = done as f64 / s.started.elapsed().as_secs_f64().max(1e-3);
                eprintln!(
                    "tiergate: {step}: {} of {} ({:.0}%), {}, ETA {}",
                    self.unit.amount(done),
                    self.unit.amount(total),
                    done as f64 * 100.0 / total.max(1) as f64,
                    self.unit.rate(rate),
                    eta(total.saturating_sub(done), rate)
                );
            }
            None => {}
        }
    }
}

/// The upload queue while `tiergate sync` waits for the daemon's answer: a thread asks the
/// daemon's tiering counters (the control socket's `status`) every second and shows the
/// queued bytes going down, the upload rate and the time left.
pub struct SyncProgress {
    stop: mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

/// The upload rate is measured over this much of the recent past: uploads are counted per
/// whole pack, so a shorter window swings between zero and a burst.
const RATE_WINDOW: Duration = Duration::from_secs(30);

impl SyncProgress {
    /// Starts showing progress: a bar at a terminal; plain lines otherwise unless `quiet`.
    pub fn start(volume_dir: PathBuf, quiet: bool) -> Option<SyncProgress> {
        let terminal = is_terminal();
        if !terminal && quiet {
            return None;
        }
        let (stop, stopped) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("sync-progress".into())
            .spawn(move || show_sync(&volume_dir, terminal, &stopped))
            .ok()?;
        Some(SyncProgress { stop, thread })
    }

    /// Stops and clears the bar (the result follows on standard output).
    pub fn finish(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

fn show_sync(volume_dir: &std::path::Path, terminal: bool, stopped: &mpsc::Receiver<()>) {
    let bar = terminal.then(|| {
        let b = ProgressBar::new(0);
        b.set_style(
            ProgressStyle::with_template("{spinner} sync [{bar:30}] {msg}")
                .expect("progress template")
                .progress_chars("=> "),
        );
        b
    });
    let mut base = None;
    let mut samples: VecDeque<(Instant, u64)> = VecDeque::new();
    let mut last_line = Instant::now();
    let mut wait = Duration::ZERO;
    // Until told to stop (or the sender is gone): the first poll at once, then every second.
    while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(wait) {
        wait = Duration::from_secs(1);
        let Ok(s) = tiergate::control::call(volume_dir, "status") else {
            continue;
        };
        let n = |k: &str| s[k].as_u64().unwrap_or(0);
        let (uploaded, queued, packs) = (
            n("uploaded_bytes"),
            n("queued_bytes"),
            n("queued_packs") + n("uploading_packs"),
        );
        let sent = uploaded.saturating_sub(*base.get_or_insert(uploaded));
        let now = Instant::now();
        samples.push_back((now, uploaded));
        while samples.len() > 2 && now - samples[0].0 > RATE_WINDOW {
            samples.pop_front();
        }
        let (t0, u0) = samples[0];
        let span = (now - t0).as_secs_f64();
        let rate = if span >= 1.0 {
            uploaded.saturating_sub(u0) as f64 / span
        } else {
            0.0
        };
        let msg = if queued == 0 {
            format!(
                "{} sent; data off-site, waiting for the metadata",
                human_bytes(sent)
            )
        } else {
            format!(
                "{} queued in {packs} packs, {} sent, {}, ETA {}",
                human_bytes(queued),
                human_bytes(sent),
                Unit::Bytes.rate(rate),
                eta(queued, rate)
            )
        };
        match &bar {
            Some(b) => {
                b.set_length(sent + queued);
                b.set_position(sent);
                b.set_message(msg);
                b.tick();
            }
            None if last_line.elapsed() >= PLAIN_EVERY => {
                last_line = Instant::now();
                eprintln!("tiergate: sync: {msg}");
            }
            None => {}
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eta_waits_for_a_rate() {
        assert_eq!(eta(100, 0.0), "--");
        assert_eq!(eta(300 << 20, (2 << 20) as f64), "2m30s");
        assert_eq!(Unit::Bytes.rate((3 << 20) as f64), "3.0 MiB/s");
        assert_eq!(Unit::Items.rate(12.4), "12/s");
    }
}

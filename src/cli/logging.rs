//! The log: `tracing` to standard error, filtered by `RUST_LOG` (default `info`), with the
//! `log` records of our dependencies (fuser logs through `log`) passed into it.
//!
//! One thing is changed on the way: fuser reports every reply the kernel refuses at ERROR.
//! The kernel refuses the reply to a request whose caller was killed meanwhile (ENOENT: the
//! request is gone; a `kill -9` of a reader does it) and every reply once the mount is gone
//! (ENODEV). Neither is anything an operator can act on, so both are logged at DEBUG; any
//! other refused reply (a malformed reply would be our bug) stays an ERROR. fuser's own
//! "Unmounting" line is DEBUG too: `serve` says what it does at stop, and after an unmount
//! from outside fuser's line would claim an unmount that did not happen.

use tracing_log::log;
use tracing_log::LogTracer;

/// Installs the subscriber and the bridge from `log`. Call once, first thing.
pub fn init() {
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never in journald or log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .finish();
    if tracing::subscriber::set_global_default(subscriber).is_err() {
        return;
    }
    if log::set_boxed_logger(Box::new(Bridge(LogTracer::new()))).is_ok() {
        log::set_max_level(tracing_log::AsLog::as_log(
            &tracing::level_filters::LevelFilter::current(),
        ));
    }
}

struct Bridge(LogTracer);

/// Whether a `log` record of fuser's is one to log at DEBUG (see the module doc).
fn harmless(record: &log::Record<'_>) -> bool {
    if !record.target().starts_with("fuser") || record.level() > log::Level::Info {
        return false;
    }
    let text = record.args().to_string();
    if record.level() == log::Level::Info {
        return text.starts_with("Unmounting ");
    }
    text.starts_with("Failed to send FUSE reply")
        && (text.ends_with(&format!("(os error {})", libc::ENOENT))
            || text.ends_with(&format!("(os error {})", libc::ENODEV)))
}

impl log::Log for Bridge {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        self.0.enabled(metadata)
    }

    fn log(&self, record: &log::Record<'_>) {
        if harmless(record) {
            let quiet = log::Record::builder()
                .args(*record.args())
                .level(log::Level::Debug)
                .target(record.target())
                .module_path(record.module_path())
                .file(record.file())
                .line(record.line())
                .build();
            self.0.log(&quiet);
        } else {
            self.0.log(record);
        }
    }

    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(target: &str, level: log::Level, args: std::fmt::Arguments<'_>) -> bool {
        harmless(
            &log::Record::builder()
                .target(target)
                .level(level)
                .args(args)
                .build(),
        )
    }

    #[test]
    fn refused_replies_of_gone_requests_are_harmless() {
        use log::Level::Error;
        let enoent = std::io::Error::from_raw_os_error(libc::ENOENT);
        let enodev = std::io::Error::from_raw_os_error(libc::ENODEV);
        let einval = std::io::Error::from_raw_os_error(libc::EINVAL);
        let t = "fuser::reply";
        assert!(record(
            t,
            Error,
            format_args!("Failed to send FUSE reply: {enoent}")
        ));
        assert!(record(
            t,
            Error,
            format_args!("Failed to send FUSE reply: {enodev}")
        ));
        assert!(!record(
            t,
            Error,
            format_args!("Failed to send FUSE reply: {einval}")
        ));
        assert!(!record(t, Error, format_args!("Unknown FUSE opcode (99)")));
        assert!(record(
            "fuser::mnt",
            log::Level::Info,
            format_args!("Unmounting /mnt")
        ));
        assert!(!record(
            "fuser::session",
            log::Level::Info,
            format_args!("Mounting /mnt")
        ));
        assert!(!record(
            "other",
            Error,
            format_args!("Failed to send FUSE reply: {enoent}")
        ));
    }
}

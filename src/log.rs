//! Logging to stderr: one line per event, plain text (no colour, so journald
//! and the serial console get it as it is).

use std::io::Write;
use std::sync::atomic::{AtomicU8, Ordering};

pub const ERROR: u8 = 0;
pub const WARN: u8 = 1;
pub const INFO: u8 = 2;
pub const DEBUG: u8 = 3;

static LEVEL: AtomicU8 = AtomicU8::new(INFO);

pub fn set_level(level: u8) {
    LEVEL.store(level, Ordering::Relaxed);
}

pub fn enabled(level: u8) -> bool {
    level <= LEVEL.load(Ordering::Relaxed)
}

// Kept over log + env_logger: the facade would still need this writer, and
// env_logger brings environment parsing and styling a boot job has no use for.
/// Writes one line. Embedded newlines are escaped so that one event is
/// always one line, whatever text (host data included) it carries.
pub fn emit(level: u8, args: std::fmt::Arguments) {
    if !enabled(level) {
        return;
    }
    let tag = match level {
        ERROR => "error: ",
        WARN => "warning: ",
        DEBUG => "debug: ",
        _ => "",
    };
    let text = args.to_string().replace('\n', "\\n");
    // One write, and its error ignored: eprintln! panics when stderr is
    // gone (a closed pipe, a stopped journald), and with panic = "abort" a
    // boot helper would die of its own log line.
    let line = format!("vport-bootargs: {tag}{text}\n");
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

#[macro_export]
macro_rules! warn {
    ($($t:tt)*) => { $crate::log::emit($crate::log::WARN, format_args!($($t)*)) };
}
#[macro_export]
macro_rules! info {
    ($($t:tt)*) => { $crate::log::emit($crate::log::INFO, format_args!($($t)*)) };
}
#[macro_export]
macro_rules! debug {
    ($($t:tt)*) => { $crate::log::emit($crate::log::DEBUG, format_args!($($t)*)) };
}

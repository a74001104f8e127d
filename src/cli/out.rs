//! Shared plumbing of the commands: the result type, JSON output, number formatting.

use serde_json::Value;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;

/// `println!` that returns the write's error instead of panicking on it: a
/// closed pipe (`fibflow inspect D | head -1`) is an error like any other.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)
    }};
}
pub(crate) use outln;

/// What a command returns: an exit code, or an error printed by `main`.
pub type CliResult = Result<ExitCode, Box<dyn std::error::Error>>;

/// Prints `v` as one line on stdout (the last line, by convention of `--json`).
pub fn print_json(v: &Value) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{v}")?;
    out.flush()
}

/// Whether stdout is a terminal (progress bars are drawn only then).
pub fn stdout_is_tty() -> bool {
    std::io::stdout().is_terminal()
}

/// Rounds to `places` decimals, for readable JSON.
pub fn round(x: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (x * f).round() / f
}

/// The machine's cores (at least 1).
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

//! `fibflow`: the command-line front end. It parses arguments, calls the public
//! API of the `fibflow` library and prints; nothing else (STYLE.md). Each command
//! lives in its own file under `src/cli/`, which belongs to this binary, not to
//! the library.

mod cli {
    pub mod bench;
    pub mod crash;
    pub mod demo;
    pub mod inspect;
    pub mod out;
}

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// An embedded, durable task engine: demo, benchmark, inspect and crash-test it.
#[derive(Parser, Debug)]
#[command(name = "fibflow", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Runs a sample pipeline of exactly N tasks over a default and a `gpu` pool.
    Demo(cli::demo::DemoArgs),
    /// Measures submit→start latency and no-op throughput beside a raw channel baseline.
    Bench(cli::bench::BenchArgs),
    /// Prints counts by status and log figures of a directory, or one task's timeline.
    Inspect {
        /// The fibflow directory.
        dir: PathBuf,
        /// Prints one task: the task, its events and its attempts.
        #[arg(long)]
        task: Option<u64>,
        /// Prints one workflow: its tree of tasks with statuses, and its summary.
        #[arg(long, conflicts_with = "task")]
        workflow: Option<u64>,
        /// One JSON object on the last stdout line.
        #[arg(long)]
        json: bool,
    },
    /// Checks every record of a directory's log; exits non-zero on corruption.
    Verify {
        /// The fibflow directory.
        dir: PathBuf,
        /// One JSON object on the last stdout line.
        #[arg(long)]
        json: bool,
    },
    /// Kills the demo pipeline with SIGKILL at seeded random points and checks recovery.
    CrashTest(cli::crash::CrashArgs),
}

fn main() -> ExitCode {
    let args = Cli::parse();
    let result = match args.command {
        Command::Demo(a) => cli::demo::run(&a),
        Command::Bench(a) => cli::bench::run(&a),
        Command::Inspect {
            dir,
            task,
            workflow,
            json,
        } => cli::inspect::inspect(&dir, task, workflow, json),
        Command::Verify { dir, json } => cli::inspect::verify(&dir, json),
        Command::CrashTest(a) => cli::crash::run(&a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("fibflow: error: {e}");
            let mut source = e.source();
            while let Some(s) = source {
                eprintln!("  caused by: {s}");
                source = s.source();
            }
            ExitCode::from(2)
        }
    }
}

//! `offload`: one binary for the server, the agent and every user command.

#![cfg_attr(test, allow(clippy::unwrap_used))]

mod admin;
mod cli;
mod commands;
mod cp;
mod demo;
mod env;
mod events;
mod forward;
mod logs;
mod progress;
mod shell;
mod ssh;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    // rustls needs one process-wide crypto provider; offload standardises on aws-lc-rs.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let filter = tracing_subscriber::EnvFilter::try_from_env("OFFLOAD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(args.default_log_level()));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(commands::dispatch(args));
    let code = match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", one_sentence(&e));
            1
        }
    };
    // A thread blocked reading the terminal must not keep the process alive.
    std::process::exit(code)
}

/// The error and its causes as one line.
fn one_sentence(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text = format!("{text}: {cause}");
        }
    }
    text
}

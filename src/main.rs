//! The `coinstream` binary: the only composition root. It parses flags, loads and validates the
//! config, builds components from the connectors and hands them to the engine.

mod cli;
#[cfg(test)]
mod fuzz;
mod ingest;
mod pipeline;
mod ui;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    init_logging(&cli.log, cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(pipeline::dispatch(cli.command));
    // Every write, commit and close a command starts is awaited before `dispatch` returns; what
    // may still run is abandoned side-effect-free work, such as the blocking metadata fetch of a
    // Kafka sink healthcheck that a SIGINT cut short (up to its 10 s timeout). Dropping the
    // runtime would wait for it, so a stop would not be prompt.
    runtime.shutdown_background();
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if is_broken_pipe(&e) {
                return ExitCode::SUCCESS;
            }
            // Every cause once (anyhow's `{:#}` would repeat the causes that DataFusion, rdkafka
            // and scylla already print inside their own messages).
            eprintln!("error: {}", engine::report(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr (stdout carries query results and generated data). Text is coloured only
/// for a person at a terminal: a pipe or a file gets no ANSI escape codes, nor does anyone who
/// set `NO_COLOR` to a non-empty value (<https://no-color.org>). `json` is one object per line,
/// for log shippers, and never coloured.
fn init_logging(log: &str, format: cli::LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_new(log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(cli::DEFAULT_LOG));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        cli::LogFormat::Text => {
            let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
            builder
                .with_ansi(std::io::stderr().is_terminal() && !no_color)
                .init()
        }
        cli::LogFormat::Json => builder.json().with_ansi(false).init(),
    }
}

/// `coinstream query … | head` closing the pipe early is not a failure.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

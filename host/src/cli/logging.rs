//! The process's log: to stderr (stdout carries what a command prints for its caller),
//! filtered by `SIMGATE_LOG` (an env-filter such as `info` or `simgate=debug,warn`),
//! as text or as JSON lines.

use simgate::config::LogFormat;

/// Install the global subscriber. Call once, before anything logs.
pub fn init(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SIMGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        // Colours for a terminal only: a log file or journal gets plain text.
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        // The event's fields at the top level, beside `timestamp`, `level`, `target` and
        // `message`, as log collectors index them.
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

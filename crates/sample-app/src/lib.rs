//! The sample web service that baton's demo and tests deploy.
//!
//! Baton needs something real to switch traffic between: an HTTP/1.1 server
//! with keep-alive, health checks, WebSockets and graceful shutdown, plus
//! switches to misbehave in the ways a bad release does (slow start, never
//! healthy, crash at boot, fail real traffic). The `baton` binary exposes it
//! as a hidden `baton sample-app ...` subcommand.
//!
//! Endpoints: `/healthz`, `/slow?ms=N`, `/ws` (WebSocket echo), `/echo`
//! (the request body streamed back), `/headers`
//! (the request's headers, one `name: value` per line) and anything else
//! answering `version=X`. Every response carries `x-app-version`.

mod app;
mod options;
mod server;
pub mod ws;
mod ws_session;

use std::io::Write as _;

use anyhow::Context as _;

pub use app::VERSION_HEADER;
pub use options::{parse_duration, Options};
pub use server::Server;

/// Exit code used by `--crash`, so tests can tell it from other failures.
pub const CRASH_EXIT_CODE: i32 = 3;

/// Runs the app on a fresh current-thread runtime until SIGTERM/SIGINT.
///
/// `--crash` is handled before the runtime exists, mimicking a release that
/// dies during boot.
pub fn main_blocking(opts: Options) -> anyhow::Result<()> {
    let opts = opts.apply_behaviour().map_err(anyhow::Error::msg)?;
    crash_if_requested(&opts);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    runtime.block_on(run(opts))
}

/// Binds, announces itself on stdout, serves, and drains on SIGTERM/SIGINT.
pub async fn run(opts: Options) -> anyhow::Result<()> {
    crash_if_requested(&opts);
    let signals = ShutdownSignals::install()?;
    let server = Server::bind(&opts).await?;
    announce(&opts.version, &server)?;
    server.serve(signals.recv()).await?;
    eprintln!("sample-app: version={} stopped", opts.version);
    Ok(())
}

/// Exits the process with [`CRASH_EXIT_CODE`] when `--crash` is set.
fn crash_if_requested(opts: &Options) {
    if opts.crash {
        eprintln!("sample-app: crashing on purpose (version {})", opts.version);
        std::process::exit(CRASH_EXIT_CODE);
    }
}

/// Prints the single readiness line that supervisors and tests wait for.
fn announce(version: &str, server: &Server) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(
        stdout,
        "sample-app version={version} listening on {}",
        server.local_addr()
    )
    .and_then(|()| stdout.flush())
    .context("writing the listening line to stdout")
}

/// SIGTERM and SIGINT, registered up front so a failure surfaces at start.
struct ShutdownSignals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    /// Registers the signal handlers.
    #[cfg(unix)]
    fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
        })
    }

    /// Registers nothing; `recv` falls back to Ctrl-C.
    #[cfg(not(unix))]
    fn install() -> anyhow::Result<Self> {
        Ok(Self {})
    }

    /// Resolves on the first SIGTERM or SIGINT.
    #[cfg(unix)]
    async fn recv(mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }

    /// Resolves on Ctrl-C.
    #[cfg(not(unix))]
    async fn recv(self) {
        let _ = tokio::signal::ctrl_c().await;
    }
}

//! `baton`: zero-downtime releases for web services, in one binary.
//!
//! This crate is the thin edge: the command line, the control API that the
//! commands talk to over a unix socket, and `serve`, which wires the proxy,
//! the runtime, the store and the orchestrator together.

mod api;
mod client;
mod commands;
mod demo;
mod metrics;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use baton_orchestrator::Command as RolloutCommand;
use clap::{Parser, Subcommand};

/// The request path allocates a little per request (header maps, buffers);
/// mimalloc's thread-local heaps make that cheaper than glibc's malloc.
/// Built without transparent huge pages (the `no_thp` feature): mimalloc
/// would otherwise ask for them on its whole arena, and where the system
/// grants them on request (THP `madvise`, as here) the resident size grows by
/// 2 MiB at a time: 15 MB at start instead of 3, and about 0.3 KiB more per
/// idle connection, for no measurable gain on a heap this small.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit codes, so CI can tell failures apart.
pub mod exit {
    /// The deploy or rollback ran and failed; traffic did not move.
    pub const FAILED: u8 = 1;
    /// Bad input: the configuration, a service name, arguments.
    pub const BAD_INPUT: u8 = 2;
    /// `baton serve` cannot be reached.
    pub const UNREACHABLE: u8 = 3;
    /// Refused: another deploy of the service is running.
    pub const BUSY: u8 = 4;
}

#[derive(Parser)]
#[command(
    name = "baton",
    version,
    about = "Blue-green deploys that lose no request"
)]
struct Cli {
    /// The configuration file.
    #[arg(short, long, global = true, default_value = "baton.toml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy and the control API (the long-running process).
    Serve,
    /// Deploy VERSION of SERVICE: start it beside the live one, check it, switch.
    Deploy {
        service: String,
        version: String,
        /// A canary rollout (the service's `[canary]` steps), whatever its strategy.
        #[arg(long)]
        canary: bool,
        /// Print progress and the result as JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// Move SERVICE's canary rollout to its next step now (--full: to 100%).
    Promote {
        service: String,
        #[arg(long)]
        full: bool,
    },
    /// Hold SERVICE's canary rollout at its step (analysis goes on).
    Pause { service: String },
    /// Let a paused rollout go on.
    Resume { service: String },
    /// Roll SERVICE's canary back now.
    Abort { service: String },
    /// Switch SERVICE back to its previous version (or --to VERSION).
    Rollback {
        service: String,
        #[arg(long)]
        to: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// What each service (or SERVICE) runs now.
    Status {
        service: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// SERVICE's deploys, newest first.
    History {
        service: String,
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Stop `baton serve`; with --stop-apps, drain and stop every instance too.
    Shutdown {
        #[arg(long)]
        stop_apps: bool,
    },
    /// A real deploy cycle under load, on an embedded sample app, with a table.
    Demo,
    /// GET a URL a few times; exit non-zero unless every answer is 2xx
    /// (a ready-made smoke check).
    Check {
        url: String,
        #[arg(long, default_value_t = 5)]
        requests: u32,
    },
    /// The sample web service the demo and the tests deploy.
    #[command(hide = true, disable_version_flag = true)]
    SampleApp(baton_sample_app::Options),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            let unreachable = e.downcast_ref::<client::Unreachable>().is_some()
                || e.downcast_ref::<client::Lost>().is_some();
            ExitCode::from(if unreachable {
                exit::UNREACHABLE
            } else {
                exit::BAD_INPUT
            })
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<u8> {
    let command = match cli.command {
        Command::SampleApp(opts) => {
            baton_sample_app::main_blocking(opts)?;
            return Ok(0);
        }
        other => other,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match command {
            Command::Serve => serve::run(&cli.config).await,
            Command::Deploy {
                service,
                version,
                canary,
                json,
            } => commands::deploy(&cli.config, &service, &version, canary, json).await,
            Command::Promote { service, full } => {
                commands::rollout(&cli.config, &service, RolloutCommand::Promote { full }).await
            }
            Command::Pause { service } => {
                commands::rollout(&cli.config, &service, RolloutCommand::Pause).await
            }
            Command::Resume { service } => {
                commands::rollout(&cli.config, &service, RolloutCommand::Resume).await
            }
            Command::Abort { service } => {
                commands::rollout(&cli.config, &service, RolloutCommand::Abort).await
            }
            Command::Rollback { service, to, json } => {
                commands::rollback(&cli.config, &service, to.as_deref(), json).await
            }
            Command::Status { service, json } => {
                commands::status(&cli.config, service.as_deref(), json).await
            }
            Command::History {
                service,
                limit,
                json,
            } => commands::history(&cli.config, &service, limit, json).await,
            Command::Shutdown { stop_apps } => commands::shutdown(&cli.config, stop_apps).await,
            Command::Demo => demo::run().await,
            Command::Check { url, requests } => commands::check(&url, requests).await,
            Command::SampleApp(_) => Ok(0),
        }
    })
}

//! `baton serve`: binds everything first (so a busy port or a second baton
//! fails before anything changes), adopts what was running, then serves the
//! proxy and the control API until told to stop.
//!
//! Stopping `baton serve` leaves the apps running; the next `baton serve`
//! adopts them. `baton shutdown --stop-apps` stops them too.

use std::net::TcpListener as StdTcpListener;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use baton_config::{Config, Deliver, RuntimeKind};
use baton_orchestrator::Orchestrator;
use baton_proxy::{Proxy, Timeouts};
use baton_runtime::{DockerRuntime, Fleet, ProcessRuntime, RemoteRuntime, Runtimes};
use baton_store::Store;
use baton_traffic::{Backends, Builtin};
use tokio::net::UnixListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use crate::api::{self, ApiState};

pub async fn run(config_path: &Path) -> anyhow::Result<u8> {
    init_logging();
    let config = Config::load(config_path)?;
    // Refusals first, before anything is created on disk: another baton on
    // this socket, a busy proxy port.
    refuse_if_running(&config.control_socket).await?;
    let docker = connect_docker(&config).await?;
    let listeners = config
        .proxy
        .listen
        .iter()
        .map(|addr| bind(*addr).with_context(|| format!("cannot listen on {addr} (proxy.listen)")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let metrics = match config.metrics.listen {
        Some(addr) => {
            Some(bind(addr).with_context(|| format!("cannot listen on {addr} (metrics.listen)"))?)
        }
        None => None,
    };
    std::fs::create_dir_all(&config.state_dir)
        .with_context(|| format!("cannot create state dir {}", config.state_dir.display()))?;
    let control = bind_control(&config.control_socket).await?;
    let store = Arc::new(Store::open(&config.state_dir)?);

    let timeouts = Timeouts {
        connect: config.proxy.connect_timeout,
        response: config.proxy.response_timeout,
        idle: config.proxy.idle_timeout,
    };
    let proxy =
        Arc::new(Proxy::new(timeouts, config.proxy.workers).context("starting proxy workers")?);
    let traffic = Arc::new(Backends::new(Builtin::new(proxy.clone(), &config), &config));
    // Connections to remote hosts are made when first needed.
    let fleet = Arc::new(Fleet::new(
        &config.hosts,
        &config.state_dir.join("ssh"),
        docker.clone(),
    ));
    let orchestrator = Arc::new(Orchestrator::new(
        &config,
        traffic,
        proxy.prober().clone(),
        Arc::new(Runtimes {
            process: ProcessRuntime::new(),
            docker,
            remote: RemoteRuntime::new(fleet.clone()),
            fleet: fleet.clone(),
        }),
        fleet,
        store,
    ));
    orchestrator.recover().await?;
    for listener in listeners {
        // Clients get their connection when their request comes: see
        // baton_proxy::defer_accept (best effort: accepted at once otherwise).
        baton_proxy::defer_accept(&listener);
        let addr = proxy.serve(listener)?;
        tracing::info!(%addr, "proxy listening");
    }

    if let Some(listener) = metrics {
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let sources = crate::metrics::Sources {
            orchestrator: orchestrator.clone(),
            proxy: proxy.clone(),
        };
        tokio::spawn(crate::metrics::serve(
            tokio::net::TcpListener::from_std(listener)?,
            sources,
        ));
        tracing::info!(%addr, "metrics listening");
    }

    let (shutdown_tx, mut shutdown_rx) = mpsc::unbounded_channel();
    let app = api::router(Arc::new(ApiState {
        orchestrator: orchestrator.clone(),
        shutdown: shutdown_tx,
    }));
    tokio::spawn(async move {
        if let Err(e) = axum::serve(control, app).await {
            tracing::error!(error = %e, "control API stopped");
        }
    });
    tracing::info!(socket = %config.control_socket.display(), "control API listening");

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let stop_apps = tokio::select! {
        _ = term.recv() => false,
        _ = int.recv() => false,
        asked = shutdown_rx.recv() => asked.unwrap_or(false),
    };
    if stop_apps {
        tracing::info!("stopping every instance");
        orchestrator.stop_all().await?;
    }
    let _ = std::fs::remove_file(&config.control_socket);
    tracing::info!(
        "baton serve stopped; apps {}",
        if stop_apps { "stopped" } else { "left running" }
    );
    Ok(0)
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BATON_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// The Docker Engine, if some service runs containers: refused at once,
/// before anything starts, when it cannot be reached.
/// This machine's Docker Engine, when a service runs containers here or
/// pushes images from here to its hosts.
async fn connect_docker(config: &Config) -> anyhow::Result<Option<Arc<DockerRuntime>>> {
    let Some(service) = config.services.values().find(|s| {
        s.runtime == RuntimeKind::Docker && (s.on.is_empty() || s.deliver == Deliver::Push)
    }) else {
        return Ok(None);
    };
    let socket = baton_runtime::default_socket();
    let docker = DockerRuntime::connect(&socket).await.with_context(|| {
        format!(
            "service {} uses runtime \"docker\" (services.{}.runtime)",
            service.name, service.name
        )
    })?;
    tracing::info!(socket = %socket.display(), "connected to the Docker Engine");
    Ok(Some(Arc::new(docker)))
}

fn bind(addr: std::net::SocketAddr) -> anyhow::Result<StdTcpListener> {
    Ok(StdTcpListener::bind(addr)?)
}

/// Refuses if another `baton serve` answers on the control socket.
async fn refuse_if_running(socket: &Path) -> anyhow::Result<()> {
    if tokio::net::UnixStream::connect(socket).await.is_ok() {
        anyhow::bail!(
            "another `baton serve` is already running on {} (control.socket)",
            socket.display()
        );
    }
    Ok(())
}

/// Binds the control socket, refusing if another `baton serve` answers on it
/// (checked again: one may have started since `refuse_if_running`).
async fn bind_control(socket: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    refuse_if_running(socket).await?;
    let _ = std::fs::remove_file(socket);
    UnixListener::bind(socket)
        .with_context(|| format!("cannot bind {} (control.socket)", socket.display()))
}

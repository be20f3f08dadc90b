//! The Docker Engines of remote hosts, each reached through its socket
//! forwarded over the host's SSH connection, and images delivered to them.
//!
//! A forward lives as long as the SSH connection it was made on, so an
//! engine is connected again whenever the host's connection was made anew
//! or its event stream ended.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bollard::query_parameters::{CreateImageOptions, ImportImageOptions};
use bytes::Bytes;
use futures_util::StreamExt;

use crate::docker::{DockerRuntime, Place};
use crate::fleet::Delivery;
use crate::ssh::Host;
use crate::{lock, RuntimeError};

/// Longest a delivery of an image may take, whatever its size.
const DELIVERY_LIMIT: Duration = Duration::from_secs(1800);

/// One engine per host, connected when first needed.
#[derive(Default)]
pub(crate) struct Engines {
    /// Where the forwarded sockets go.
    dir: PathBuf,
    /// The connected engines, with the SSH connection they go through.
    engines: Mutex<HashMap<String, (u64, Arc<DockerRuntime>)>>,
    /// One connect at a time, so that two callers do not forward twice.
    connecting: tokio::sync::Mutex<()>,
}

impl Engines {
    pub(crate) fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            ..Self::default()
        }
    }

    /// The engine of `host` as last connected, without waiting: what
    /// [`crate::Runtime::exited`] needs.
    pub(crate) fn connected(&self, host: &str) -> Option<Arc<DockerRuntime>> {
        let engines = lock(&self.engines);
        engines.get(host).map(|(_, e)| e.clone())
    }

    /// The engine of `host`, connected (again) if needed.
    pub(crate) async fn engine(
        &self,
        host: &Arc<Host>,
    ) -> Result<Arc<DockerRuntime>, RuntimeError> {
        let _one = self.connecting.lock().await;
        let generation = host.generation().await;
        let current = lock(&self.engines).get(host.name()).cloned();
        if let Some((made_on, engine)) = current {
            if Some(made_on) == generation && engine.is_connected() {
                return Ok(engine);
            }
        }
        let socket = self.dir.join(format!("{}-docker.sock", host.name()));
        let generation = host.forward(&socket, &host.config.docker_socket).await?;
        let engine = DockerRuntime::connect_at(&socket, Place::Remote(host.clone()))
            .await
            .map_err(|e| RuntimeError::Host {
                host: host.name().to_string(),
                message: e.to_string(),
            })?;
        let engine = Arc::new(engine);
        lock(&self.engines).insert(host.name().to_string(), (generation, engine.clone()));
        Ok(engine)
    }
}

/// Whether `engine` has `image`.
pub(crate) async fn has_image(engine: &DockerRuntime, image: &str) -> Result<bool, String> {
    match engine.client().inspect_image(image).await {
        Ok(_) => Ok(true),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(false),
        Err(e) => Err(format!("inspecting image {image}: {e}")),
    }
}

/// Has `host`'s engine pull `image` from its registry.
pub(crate) async fn pull(engine: &DockerRuntime, image: &str) -> Result<(), String> {
    let options = CreateImageOptions {
        from_image: Some(image.to_string()),
        ..Default::default()
    };
    let mut pulling = engine.client().create_image(Some(options), None, None);
    while let Some(step) = pulling.next().await {
        step.map_err(|e| format!("pulling {image}: {e}"))?;
    }
    Ok(())
}

/// Sends `image` from `source` to `target`, gzip-compressed on the way
/// (`docker save | gzip | docker load`, without the shell). The engine
/// loads an image whole or not at all, so a delivery cut off leaves nothing.
pub(crate) async fn push(
    source: &DockerRuntime,
    target: &DockerRuntime,
    image: &str,
    progress: &mut (impl FnMut(Delivery) + Send),
) -> Result<(), String> {
    let total = source
        .client()
        .inspect_image(image)
        .await
        .map_err(|e| format!("image {image} on this machine: {e}"))?
        .size
        .map_or(0, |s| s.max(0) as u64);
    progress(Delivery::Sending { sent: 0, total });
    let started = Instant::now();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(8);
    let (counted_tx, mut counted) = tokio::sync::mpsc::unbounded_channel::<(u64, u64)>();
    let mut export = source.client().export_image(image);
    let compress = async move {
        let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let (mut read, mut sent) = (0u64, 0u64);
        while let Some(chunk) = export.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                    return;
                }
            };
            read += chunk.len() as u64;
            if gzip.write_all(&chunk).is_err() {
                return;
            }
            let compressed = Bytes::from(std::mem::take(gzip.get_mut()));
            sent += compressed.len() as u64;
            let _ = counted_tx.send((read, sent));
            if !compressed.is_empty() && tx.send(Ok(compressed)).await.is_err() {
                return;
            }
        }
        match gzip.finish() {
            Ok(rest) => {
                sent += rest.len() as u64;
                let _ = counted_tx.send((read, sent));
                let _ = tx.send(Ok(Bytes::from(rest))).await;
            }
            Err(e) => {
                let _ = tx.send(Err(e)).await;
            }
        }
    };
    let body = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let options = ImportImageOptions {
        quiet: true,
        ..Default::default()
    };
    let mut loading = target.client().import_image_stream(options, body, None);
    let load = async {
        while let Some(step) = loading.next().await {
            step.map_err(|e| format!("loading {image}: {e}"))?;
        }
        Ok::<(), String>(())
    };
    let mut last = Instant::now();
    let mut compressed = 0;
    let report = async {
        while let Some((read, sent)) = counted.recv().await {
            compressed = sent;
            if last.elapsed() >= Duration::from_secs(1) && read < total {
                last = Instant::now();
                progress(Delivery::Sending { sent: read, total });
            }
        }
    };
    let work = async {
        let (_, loaded, _) = tokio::join!(compress, load, report);
        loaded
    };
    tokio::time::timeout(DELIVERY_LIMIT, work)
        .await
        .map_err(|_| format!("loading {image}: not done within {DELIVERY_LIMIT:?}"))??;
    progress(Delivery::Unpacked {
        bytes: compressed,
        took: started.elapsed(),
    });
    Ok(())
}

//! The CLI's side of the control API: HTTP/1.1 over the unix socket named in
//! the configuration.

use std::path::{Path, PathBuf};

use anyhow::Context;
use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;

use crate::api::{DeployEvent, Outcome};

/// `baton serve` could not be reached; the CLI exits with `exit::UNREACHABLE`.
///
/// The io error is part of the message, not the error's source, so that
/// `{:#}` prints it once.
#[derive(Debug, thiserror::Error)]
#[error("cannot reach baton at {}: {io} (is `baton serve` running?)", .socket.display())]
pub struct Unreachable {
    socket: PathBuf,
    io: std::io::Error,
}

/// `baton serve` went away in the middle of a deploy's answer; the CLI
/// exits with `exit::UNREACHABLE`: how the deploy ended is unknown here.
#[derive(Debug, thiserror::Error)]
#[error("`baton serve` closed the connection before the deploy ended; see `baton status`")]
pub struct Lost;

/// The body of a 2xx answer; any other becomes its `error` text.
async fn answer(resp: Response<Incoming>) -> anyhow::Result<Bytes> {
    let status = resp.status();
    let bytes = resp.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        anyhow::bail!(
            "{}",
            v["error"].as_str().unwrap_or("the control API refused")
        );
    }
    Ok(bytes)
}

/// A connection target for the control API.
pub struct Client {
    socket: PathBuf,
}

impl Client {
    /// The client for the `baton serve` that `config` describes.
    pub fn for_config(config: &Path) -> anyhow::Result<Self> {
        let config = baton_config::Config::load(config)?;
        Ok(Self {
            socket: config.control_socket,
        })
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<Response<Incoming>> {
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|io| Unreachable {
                socket: self.socket.clone(),
                io,
            })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("control API handshake")?;
        tokio::spawn(conn);
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "baton")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))?;
        sender
            .send_request(req)
            .await
            .context("control API request")
    }

    /// A JSON answer; a non-2xx answer becomes its `error` text.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let bytes = answer(self.send("GET", path, None).await?).await?;
        serde_json::from_slice(&bytes).context("control API answer")
    }

    /// A POST whose answer says only whether it was taken.
    pub async fn post(&self, path: &str, body: serde_json::Value) -> anyhow::Result<()> {
        answer(self.send("POST", path, Some(body)).await?).await?;
        Ok(())
    }

    /// POSTs a deploy or rollback and hands each progress event to
    /// `on_progress` as it arrives; returns the outcome.
    pub async fn stream(
        &self,
        path: &str,
        body: serde_json::Value,
        mut on_event: impl FnMut(&DeployEvent),
    ) -> anyhow::Result<Outcome> {
        let mut body = self.send("POST", path, Some(body)).await?.into_body();
        let mut buf = BytesMut::new();
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else {
                return Err(Lost.into());
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            buf.extend_from_slice(&data);
            while let Some(end) = buf.iter().position(|&b| b == b'\n') {
                let line = buf.split_to(end + 1);
                let event: DeployEvent =
                    serde_json::from_slice(&line[..end]).context("control API event")?;
                on_event(&event);
                if let DeployEvent::Result(outcome) = event {
                    return Ok(outcome);
                }
            }
        }
        Err(Lost.into())
    }
}

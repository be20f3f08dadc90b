//! Listeners: accept client connections and serve HTTP/1.1 (with upgrades)
//! and HTTP/2 (h2c, prior knowledge) on each, handing every request to the
//! [`Forwarder`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::forward::{Forwarder, Peer, Routing};

/// Everything a listener needs to serve connections.
#[derive(Clone)]
pub(crate) struct Listener {
    pub(crate) forwarder: Arc<Forwarder>,
    pub(crate) routing: Routing,
    pub(crate) idle_timeout: Duration,
}

impl Listener {
    /// Accepts until `stop` fires; connections already open are left to finish.
    pub(crate) async fn run(self, listener: TcpListener, stop: CancellationToken) {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .keep_alive(true)
            // Starts when the connection waits for a request head, so it is
            // also the idle keep-alive timeout.
            .header_read_timeout(self.idle_timeout);
        builder
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(Some(self.idle_timeout / 2));
        let builder = Arc::new(builder);
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = stop.cancelled() => return,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(self.clone().serve(builder.clone(), stream, peer));
                }
                Err(e) => {
                    // Out of file descriptors, typically: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    async fn serve(
        self,
        builder: Arc<auto::Builder<TokioExecutor>>,
        stream: tokio::net::TcpStream,
        peer: SocketAddr,
    ) {
        let this = Arc::new((self, Peer::new(peer)));
        let service = service_fn(move |req| {
            let this = this.clone();
            async move {
                let (listener, peer) = &*this;
                Ok::<_, std::convert::Infallible>(
                    listener
                        .forwarder
                        .handle(&listener.routing, peer, req)
                        .await,
                )
            }
        });
        if let Err(e) = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .await
        {
            tracing::debug!(%peer, error = %e, "client connection ended with an error");
        }
    }
}

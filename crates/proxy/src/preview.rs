//! The preview route: a private listener that sends everything to one pool,
//! so smoke tests reach the candidate through the proxy's own request path
//! before any user traffic does.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use tokio_util::sync::{CancellationToken, DropGuard};

use crate::forward::Routing;
use crate::server::Listener;
use crate::target::Pool;
use crate::Proxy;

/// A running preview listener; it closes when dropped.
#[derive(Debug)]
pub struct Preview {
    addr: SocketAddr,
    _stop: DropGuard,
}

impl Preview {
    /// The URL a smoke command gets as `{preview_url}`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Proxy {
    /// Opens a preview route to `pool` on a free loopback port.
    pub async fn preview(&self, pool: Arc<Pool>) -> io::Result<Preview> {
        let listener = TcpListener::bind(("127.0.0.1", 0))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let serve = Listener {
            forwarder: self.preview_forwarder.clone(),
            routing: Routing::Fixed(pool),
        };
        tokio::spawn(serve.run(listener, stop.clone()));
        Ok(Preview {
            addr,
            _stop: stop.drop_guard(),
        })
    }
}

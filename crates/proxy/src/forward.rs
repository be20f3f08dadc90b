//! What both request paths share: how a listener finds its pool
//! ([`Routing`]), the timeouts, and the per-worker [`Forwarder`] that holds
//! the connections to targets.

use std::future::Future;
use std::io;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::Instant;

use crate::ask::Ask;
use crate::forwarded::RequestIds;
use crate::http1::{Connections, IdleClients, Upstream};
use crate::router::{pick_from, NoRoute, Picked, Router};
use crate::target::{InFlight, Pool};
use crate::tunnel::Tunnels;

/// Targets tried per request: the first, and others while nothing was sent.
const ATTEMPTS: usize = 3;

/// A deadline that does not come (a timer not armed yet).
const FAR: Duration = Duration::from_secs(86_400 * 365);

/// How a listener finds the pool for a request.
#[derive(Debug, Clone)]
pub(crate) enum Routing {
    /// By Host header, through the live route table (the main listeners).
    Hosts(Arc<Router>),
    /// Always one pool (a candidate's preview route, for smoke tests).
    Fixed(Arc<Pool>),
}

impl Routing {
    /// Takes a target for a request.
    pub(crate) fn pick(&self, ask: &impl Ask) -> Result<Picked, NoRoute> {
        match self {
            Self::Fixed(pool) => pick_from(pool).map(Picked::from),
            Self::Hosts(router) => router.pick(ask),
        }
    }
}

/// Timeouts of the request path.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    pub response: Duration,
    pub idle: Duration,
}

/// One worker's side of the request path: its connections to targets (HTTP/1.1
/// toward every target, whatever the client spoke) and its client connections.
pub(crate) struct Forwarder {
    pub(crate) connections: Arc<Connections>,
    /// HTTP/1.1 client connections, for the idle timeout and parking.
    pub(crate) idle_clients: Arc<IdleClients>,
    pub(crate) timeouts: Timeouts,
    pub(crate) request_ids: RequestIds,
    /// Client connections open on this worker, for metrics.
    pub(crate) open_clients: Arc<AtomicUsize>,
    /// Upgraded connections (WebSockets), relayed outside tokio's driver.
    pub(crate) tunnels: Arc<Tunnels>,
}

/// Why a request got no (complete) response.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Failed {
    /// The target closed or reset the connection before answering anything:
    /// a request still in hand may be sent again.
    #[error("{0}")]
    Unanswered(String),
    /// Anything else on the target's side.
    #[error("{0}")]
    Upstream(String),
    /// No answer within the response timeout of the request's end.
    #[error("the target did not answer in time")]
    TimedOut,
    /// The client went away, or its request body broke off.
    #[error("client: {0}")]
    Client(String),
    /// The response broke off after its head went to the client: all that
    /// is left is to close.
    #[error("the response broke off")]
    Broken,
}

/// How far an exchange has got, shared by the request body's copy and the
/// answer's read.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    /// The whole request body went to the target.
    pub(crate) request_done: AtomicBool,
    /// The answer's head came.
    pub(crate) answered: AtomicBool,
}

/// Streams a request body (`copy`) while waiting for the answer (`answer`):
/// a target may answer before the body is in (an early refusal, a `100
/// Continue`), or answer as it reads. The response timeout runs from the end
/// of the body (at once when there is none) until the answer's head came.
/// A body the target stopped taking is left there: its answer may say why.
pub(crate) async fn body_and_answer<T>(
    progress: &Progress,
    copy: impl Future<Output = Result<(), Failed>>,
    answer: impl Future<Output = Result<T, Failed>>,
    timeout: Duration,
) -> Result<T, Failed> {
    let mut copying = !progress.request_done.load(Relaxed);
    let mut copy = pin!(copy);
    let mut answer = pin!(answer);
    let mut deadline = pin!(tokio::time::sleep(if copying { FAR } else { timeout }));
    loop {
        tokio::select! {
            copied = &mut copy, if copying => {
                copying = false;
                match copied {
                    Ok(()) => progress.request_done.store(true, Relaxed),
                    Err(e @ Failed::Client(_)) => return Err(e),
                    Err(_) => tracing::debug!("request body not taken"),
                }
                deadline.as_mut().reset(Instant::now() + timeout);
            }
            answered = &mut answer => return answered,
            _ = &mut deadline => {
                if !progress.answered.load(Relaxed) {
                    return Err(Failed::TimedOut);
                }
                deadline.as_mut().reset(Instant::now() + FAR);
            }
        }
    }
}

/// Reads more of a response head into `buf`; `answered`: some of it came
/// already. A target that closes or fails here either never answered or
/// broke off in the middle of its head.
pub(crate) async fn read_head_more<R>(
    from: &mut R,
    buf: &mut BytesMut,
    answered: bool,
) -> Result<(), Failed>
where
    R: AsyncRead + Unpin,
{
    buf.reserve(4096);
    let reason = match from.read_buf(buf).await {
        Ok(0) => "closed the connection".to_string(),
        Err(e) => e.to_string(),
        Ok(_) => return Ok(()),
    };
    Err(if answered {
        Failed::Upstream(format!("{reason} in the middle of the response head"))
    } else {
        Failed::Unanswered(format!("{reason} without answering"))
    })
}

/// The attempts one request gets (at most [`ATTEMPTS`]): the target it holds,
/// and why the last attempt failed. Both request paths drive it the same way.
pub(crate) struct Attempts {
    hold: InFlight,
    left: usize,
    pub(crate) last_error: String,
}

impl Attempts {
    pub(crate) fn new(hold: InFlight) -> Self {
        Self {
            hold,
            left: ATTEMPTS,
            last_error: String::new(),
        }
    }

    /// A connection for the next attempt: to the held target or, when that
    /// cannot be reached, to another target of the same pool. `None` when
    /// the attempts are used up or no target is left; `last_error` says why.
    pub(crate) async fn next(&mut self, forwarder: &Forwarder) -> Option<Upstream> {
        while self.left > 0 {
            self.left -= 1;
            let addr = self.hold.target().addr();
            match forwarder.connections.get(addr).await {
                Ok(upstream) => return Some(upstream),
                Err(e) => {
                    tracing::debug!(target = %addr, error = %e, "upstream unreachable");
                    self.last_error = e;
                    self.hold.upstream_error();
                    self.hold = self.hold.another()?;
                }
            }
        }
        None
    }

    /// The attempt failed after the request went out.
    pub(crate) fn failed(&mut self, error: String) {
        tracing::debug!(target = %self.hold.target().addr(), %error, "upstream request failed");
        self.hold.upstream_error();
        self.last_error = error;
    }

    /// The client gets baton's own `status` (a 502 or 504) for this request.
    pub(crate) fn answered(&mut self, status: u16) {
        self.hold.answered(status);
    }

    /// The target of the attempt that got an answer.
    pub(crate) fn into_hold(self) -> InFlight {
        self.hold
    }
}

impl Forwarder {
    pub(crate) fn new(timeouts: Timeouts) -> io::Result<Self> {
        Ok(Self {
            connections: Arc::new(Connections::new(timeouts.connect)),
            idle_clients: Arc::new(IdleClients::new(timeouts.idle)?),
            timeouts,
            request_ids: RequestIds::new(),
            open_clients: Arc::default(),
            tunnels: Arc::new(Tunnels::new()?),
        })
    }

    /// Keeps the pool and the idle clients tidy, wakes parked clients and
    /// relays tunnels; runs on the runtime that uses them.
    pub(crate) fn spawn_sweeps(&self) {
        tokio::spawn(self.connections.clone().sweep());
        tokio::spawn(self.idle_clients.clone().sweep());
        tokio::spawn(self.idle_clients.clone().wake_parked());
        tokio::spawn(self.tunnels.clone().relay_ready());
    }
}

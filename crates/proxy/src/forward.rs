//! The HTTP/2 request path (HTTP/1.1 has its own, [`crate::http1`]): pick a
//! target, rewrite the request as RFC 9110 asks of a proxy, send it as
//! HTTP/1.1 over a pooled hyper connection, and stream the answer back.
//!
//! Nothing here takes a lock. The only shared writes are atomic counters
//! (round robin, in-flight), and the route lookups are `arc-swap` loads.

use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{request, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;

use crate::body::{RequestBody, ResponseBody};
use crate::forwarded::{Peer, RequestIds};
use crate::http1::{Connections, IdleClients};
use crate::router::{pick_from, NoRoute, Router};
use crate::target::{InFlight, Pool};
use crate::upstream::{Lease, SendError, Upstream};

/// How a listener finds the pool for a request.
#[derive(Debug, Clone)]
pub(crate) enum Routing {
    /// By Host header, through the live route table (the main listeners).
    Hosts(Arc<Router>),
    /// Always one pool (a candidate's preview route, for smoke tests).
    Fixed(Arc<Pool>),
}

impl Routing {
    /// Takes a target for a request to `host`.
    pub(crate) fn pick(&self, host: Option<&str>) -> Result<InFlight, NoRoute> {
        match self {
            Self::Fixed(pool) => pick_from(pool),
            Self::Hosts(router) => router.pick(host),
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

/// Sends requests to targets; one per worker.
#[derive(Debug)]
pub(crate) struct Forwarder {
    /// Connections for HTTP/1.1 clients' requests.
    pub(crate) connections: Arc<Connections>,
    /// HTTP/1.1 client connections, for the idle timeout.
    pub(crate) idle_clients: Arc<IdleClients>,
    /// Connections for HTTP/2 clients' requests.
    pub(crate) upstream: Arc<Upstream>,
    pub(crate) timeouts: Timeouts,
    pub(crate) request_ids: RequestIds,
}

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Targets tried per request: the first, and others while nothing was sent.
const ATTEMPTS: usize = 3;

impl Forwarder {
    pub(crate) fn new(timeouts: Timeouts) -> Self {
        Self {
            connections: Arc::new(Connections::new(timeouts.connect)),
            idle_clients: Arc::new(IdleClients::new(timeouts.idle)),
            upstream: Upstream::new(timeouts.connect),
            timeouts,
            request_ids: RequestIds::new(),
        }
    }

    /// Keeps both connection pools tidy; runs on the runtime that uses them.
    pub(crate) fn spawn_sweeps(&self) {
        tokio::spawn(self.connections.clone().sweep());
        tokio::spawn(self.idle_clients.clone().sweep());
        tokio::spawn(self.upstream.clone().sweep());
    }

    /// Serves one HTTP/2 client request.
    pub(crate) async fn handle(
        &self,
        routing: &Routing,
        peer: &Peer,
        req: Request<Incoming>,
    ) -> Response<ResponseBody> {
        let (mut parts, body) = req.into_parts();
        let original_host = prepare_headers(&mut parts, peer, &self.request_ids);
        let mut req = Request::from_parts(parts, RequestBody::Client(body));

        let mut last_error = String::new();
        for _ in 0..ATTEMPTS {
            let hold = match pick(routing, original_host.as_ref()) {
                Ok(hold) => hold,
                Err(resp) => return resp,
            };
            let addr = hold.target().addr();
            let sent = tokio::time::timeout(
                self.timeouts.response,
                self.upstream.send(addr, address(req, &hold)),
            );
            match sent.await {
                Ok(Ok((resp, lease))) => return respond(resp, hold, lease),
                Ok(Err(SendError::NotSent(unsent, e))) => {
                    tracing::debug!(target = %addr, error = %e, "upstream unreachable");
                    last_error = e;
                    req = unsent;
                }
                Ok(Err(SendError::Failed { error, retry })) => {
                    tracing::debug!(target = %addr, %error, "upstream request failed");
                    last_error = format!("{addr}: {error}");
                    match retry {
                        Some(head) => req = Request::from_parts(head, RequestBody::Empty),
                        None => break,
                    }
                }
                Err(_) => {
                    return error(
                        StatusCode::GATEWAY_TIMEOUT,
                        "baton: the target did not answer in time\n",
                    )
                }
            }
        }
        error(
            StatusCode::BAD_GATEWAY,
            format!("baton: upstream error: {last_error}\n"),
        )
    }
}

/// Takes a target for the request, or says why there is none.
// The error is the response to send, built on the cold path only.
#[allow(clippy::result_large_err)]
fn pick(routing: &Routing, host: Option<&HeaderValue>) -> Result<InFlight, Response<ResponseBody>> {
    routing
        .pick(host.and_then(|h| h.to_str().ok()))
        .map_err(|no| {
            let status = StatusCode::from_u16(no.status()).unwrap_or(StatusCode::BAD_GATEWAY);
            error(status, format!("baton: {no}\n"))
        })
}

/// Drops hop-by-hop headers (RFC 9110 §7.6.1), including those the
/// Connection header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if let Some(listed) = headers
        .get(header::CONNECTION)
        .and_then(|v| v.to_str().ok())
    {
        let names: Vec<HeaderName> = listed
            .split(',')
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        for name in names {
            headers.remove(name);
        }
    }
    for name in [
        &header::CONNECTION,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &header::TRANSFER_ENCODING,
        &header::UPGRADE,
    ] {
        headers.remove(name);
    }
    let te_trailers = headers
        .get(header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    if !te_trailers {
        headers.remove(header::TE);
    }
}

/// Rewrites the client's request head for the target. Returns the Host the
/// client asked for, used for routing.
fn prepare_headers(
    parts: &mut request::Parts,
    peer: &Peer,
    ids: &RequestIds,
) -> Option<HeaderValue> {
    let headers = &mut parts.headers;
    strip_hop_by_hop(headers);
    // HTTP/2 carries the host in :authority; HTTP/1.1 targets need a Host header.
    if !headers.contains_key(header::HOST) {
        if let Some(authority) = parts.uri.authority() {
            if let Ok(v) = HeaderValue::from_str(authority.as_str()) {
                headers.insert(header::HOST, v);
            }
        }
    }
    let forwarded_for = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prior) => HeaderValue::from_str(&format!("{prior}, {}", peer.ip())).ok(),
        None => HeaderValue::from_str(peer.ip()).ok(),
    };
    if let Some(v) = forwarded_for {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
    let host = headers.get(header::HOST).cloned();
    if let Some(h) = &host {
        headers.insert(X_FORWARDED_HOST.clone(), h.clone());
    }
    if !headers.contains_key(&X_REQUEST_ID) {
        let mut id = Vec::with_capacity(24);
        ids.write_next(&mut id);
        if let Ok(v) = HeaderValue::from_bytes(&id) {
            headers.insert(X_REQUEST_ID.clone(), v);
        }
    }
    parts.version = Version::HTTP_11;
    host
}

/// The request addressed to the picked target.
fn address(req: Request<RequestBody>, hold: &InFlight) -> Request<RequestBody> {
    let (mut parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    let mut uri = http::uri::Parts::default();
    uri.scheme = Some(http::uri::Scheme::HTTP);
    uri.authority = Some(hold.target().authority.clone());
    uri.path_and_query = Some(path);
    if let Ok(u) = Uri::from_parts(uri) {
        parts.uri = u;
    }
    Request::from_parts(parts, body)
}

/// Turns the target's response into the client's.
fn respond(resp: Response<Incoming>, hold: InFlight, lease: Lease) -> Response<ResponseBody> {
    let (mut parts, body) = resp.into_parts();
    if parts.status == StatusCode::SWITCHING_PROTOCOLS {
        // HTTP/2 has no upgrades; the target answered one it was not asked.
        return error(
            StatusCode::BAD_GATEWAY,
            "baton: unexpected 101 from the target\n",
        );
    }
    strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, ResponseBody::upstream(body, hold, lease))
}

pub(crate) fn error(status: StatusCode, text: impl Into<bytes::Bytes>) -> Response<ResponseBody> {
    let mut resp = Response::new(ResponseBody::full(text));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(headers: &[(&str, &str)]) -> request::Parts {
        let mut b = Request::get("http://example.com/a?b=1");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn strips_hop_by_hop_and_connection_listed_headers() {
        let mut p = parts(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "gzip"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut p.headers);
        for gone in ["connection", "keep-alive", "x-secret", "te"] {
            assert!(!p.headers.contains_key(gone), "{gone}");
        }
        assert!(p.headers.contains_key("x-kept"));
        let mut p = parts(&[("te", "trailers")]);
        strip_hop_by_hop(&mut p.headers);
        assert!(p.headers.contains_key("te"), "TE: trailers is end to end");
    }

    #[test]
    fn adds_forwarding_headers_and_keeps_a_request_id() {
        let ids = RequestIds::new();
        let peer = Peer::new("10.1.2.3:5555".parse().unwrap());
        let mut p = parts(&[("host", "app.example"), ("x-forwarded-for", "1.1.1.1")]);
        let host = prepare_headers(&mut p, &peer, &ids);
        assert_eq!(host.unwrap(), "app.example");
        assert_eq!(p.headers["x-forwarded-for"], "1.1.1.1, 10.1.2.3");
        assert_eq!(p.headers["x-forwarded-proto"], "http");
        assert_eq!(p.headers["x-forwarded-host"], "app.example");
        assert!(p.headers.contains_key("x-request-id"));
        let mut p = parts(&[("x-request-id", "abc")]);
        prepare_headers(&mut p, &peer, &ids);
        assert_eq!(p.headers["x-request-id"], "abc");
    }

    #[test]
    fn http2_authority_becomes_host() {
        let ids = RequestIds::new();
        let mut p = parts(&[]);
        let host = prepare_headers(&mut p, &Peer::new("127.0.0.1:1".parse().unwrap()), &ids);
        assert_eq!(host.unwrap(), "example.com");
        assert_eq!(p.version, Version::HTTP_11);
    }
}

//! The request path: pick a target, rewrite the request as RFC 9110 asks of a
//! proxy, send it over a pooled connection, and stream the answer back.
//!
//! Nothing here takes a lock. The only shared writes are atomic counters
//! (round robin, in-flight), and the route lookups are `arc-swap` loads.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{request, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;

use crate::body::{RequestBody, ResponseBody};
use crate::router::{pick_from, NoRoute, Router};
use crate::target::{InFlight, Pool};
use crate::tunnel;
use crate::upstream::{Lease, SendError, Upstream};

/// How a listener finds the pool for a request.
#[derive(Debug, Clone)]
pub(crate) enum Routing {
    /// By Host header, through the live route table (the main listeners).
    Hosts(Arc<Router>),
    /// Always one pool (a candidate's preview route, for smoke tests).
    Fixed(Arc<Pool>),
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
    pub(crate) upstream: Arc<Upstream>,
    response_timeout: Duration,
    request_ids: RequestIds,
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
            upstream: Upstream::new(timeouts.connect),
            response_timeout: timeouts.response,
            request_ids: RequestIds::new(),
        }
    }

    /// Serves one client request.
    pub(crate) async fn handle(
        &self,
        routing: &Routing,
        peer: &Peer,
        mut req: Request<Incoming>,
    ) -> Response<ResponseBody> {
        let upgrade = upgrade_protocol(&req);
        let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        let original_host = prepare_headers(&mut parts, peer, upgrade.as_ref(), &self.request_ids);
        let mut req = Request::from_parts(parts, RequestBody::Client(body));

        let mut last_error = String::new();
        for _ in 0..ATTEMPTS {
            let hold = match pick(routing, original_host.as_ref()) {
                Ok(hold) => hold,
                Err(resp) => return resp,
            };
            let addr = hold.target().addr();
            let sent = tokio::time::timeout(
                self.response_timeout,
                self.upstream.send(addr, address(req, &hold)),
            );
            match sent.await {
                Ok(Ok((resp, lease))) => {
                    return respond(resp, hold, lease, client_upgrade, upgrade.is_some())
                }
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

/// The client side of a connection, as forwarding headers need it.
#[derive(Debug)]
pub(crate) struct Peer {
    /// `X-Forwarded-For` when the client sent none: its IP, formatted once
    /// per connection rather than per request.
    forwarded_for: HeaderValue,
}

impl Peer {
    pub(crate) fn new(addr: SocketAddr) -> Self {
        let forwarded_for = HeaderValue::from_str(&addr.ip().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        Self { forwarded_for }
    }
}

/// Takes a target for the request, or says why there is none.
// The error is the response to send, built on the cold path only.
#[allow(clippy::result_large_err)]
fn pick(routing: &Routing, host: Option<&HeaderValue>) -> Result<InFlight, Response<ResponseBody>> {
    let picked = match routing {
        Routing::Fixed(pool) => pick_from(pool),
        Routing::Hosts(router) => router.pick(host.and_then(|h| h.to_str().ok())),
    };
    picked.map_err(|no| {
        let status = match no {
            NoRoute::UnknownHost => StatusCode::NOT_FOUND,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        error(status, format!("baton: {no}\n"))
    })
}

/// The `Upgrade` protocol of an HTTP/1.1 upgrade request.
fn upgrade_protocol<B>(req: &Request<B>) -> Option<HeaderValue> {
    if req.version() != Version::HTTP_11 || !has_token(req.headers(), "upgrade") {
        return None;
    }
    req.headers().get(header::UPGRADE).cloned()
}

/// True when the Connection header lists `token`.
fn has_token(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
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
    upgrade: Option<&HeaderValue>,
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
    if let Some(protocol) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol.clone());
    }
    let forwarded_for = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prior) => {
            let client = peer.forwarded_for.to_str().unwrap_or_default();
            HeaderValue::from_str(&format!("{prior}, {client}")).ok()
        }
        None => Some(peer.forwarded_for.clone()),
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
        headers.insert(X_REQUEST_ID.clone(), ids.next());
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

/// Turns the target's response into the client's; hands upgrades to a tunnel.
fn respond(
    resp: Response<Incoming>,
    hold: InFlight,
    lease: Lease,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    websocket_capable: bool,
) -> Response<ResponseBody> {
    let (mut parts, body) = resp.into_parts();
    if parts.status == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade else {
            return error(
                StatusCode::BAD_GATEWAY,
                "baton: unexpected 101 from the target\n",
            );
        };
        let websocket = websocket_capable
            && parts
                .headers
                .get(header::UPGRADE)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
        let upstream_upgrade = hyper::upgrade::on(Response::from_parts(parts.clone(), ()));
        let hold = hold.upgraded();
        tokio::spawn(async move {
            match tokio::try_join!(client_upgrade, upstream_upgrade) {
                Ok((client, upstream)) => tunnel::relay(client, upstream, hold, websocket).await,
                Err(e) => tracing::debug!(error = %e, "upgrade failed"),
            }
        });
        drop(body);
        return Response::from_parts(parts, ResponseBody::empty());
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

/// Request ids unique across restarts: a per-process prefix and a counter.
#[derive(Debug)]
struct RequestIds {
    prefix: u64,
    next: AtomicU64,
}

impl RequestIds {
    fn new() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Self {
            prefix: nanos ^ (u64::from(std::process::id()) << 40),
            next: AtomicU64::new(0),
        }
    }

    fn next(&self) -> HeaderValue {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        HeaderValue::from_str(&format!("{:016x}{n:08x}", self.prefix))
            .unwrap_or_else(|_| HeaderValue::from_static("0"))
    }
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
        let host = prepare_headers(&mut p, &peer, None, &ids);
        assert_eq!(host.unwrap(), "app.example");
        assert_eq!(p.headers["x-forwarded-for"], "1.1.1.1, 10.1.2.3");
        assert_eq!(p.headers["x-forwarded-proto"], "http");
        assert_eq!(p.headers["x-forwarded-host"], "app.example");
        assert!(p.headers.contains_key("x-request-id"));
        let mut p = parts(&[("x-request-id", "abc")]);
        prepare_headers(&mut p, &peer, None, &ids);
        assert_eq!(p.headers["x-request-id"], "abc");
    }

    #[test]
    fn http2_authority_becomes_host() {
        let ids = RequestIds::new();
        let mut p = parts(&[]);
        let host = prepare_headers(
            &mut p,
            &Peer::new("127.0.0.1:1".parse().unwrap()),
            None,
            &ids,
        );
        assert_eq!(host.unwrap(), "example.com");
        assert_eq!(p.version, Version::HTTP_11);
    }

    #[test]
    fn upgrades_keep_their_headers() {
        let req = Request::get("/ws")
            .header("connection", "keep-alive, Upgrade")
            .header("upgrade", "websocket")
            .body(())
            .unwrap();
        let proto = upgrade_protocol(&req).unwrap();
        let (mut p, _) = req.into_parts();
        prepare_headers(
            &mut p,
            &Peer::new("127.0.0.1:1".parse().unwrap()),
            Some(&proto),
            &RequestIds::new(),
        );
        assert_eq!(p.headers["connection"], "upgrade");
        assert_eq!(p.headers["upgrade"], "websocket");
    }
}

//! Request routing and the behaviours the options switch on.
//!
//! Kept apart from the accept loop so the HTTP semantics (health, injected
//! failures, slow responses, WebSocket handshake) read top to bottom in one
//! place, independent of connection management.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use tokio::sync::watch;

use crate::options::Options;
use crate::{ws, ws_session};

/// Header that names the version on every response.
pub const VERSION_HEADER: &str = "x-app-version";

/// Longest sleep `/slow` accepts, so a typo cannot wedge a shutdown forever.
const MAX_SLOW: Duration = Duration::from_secs(600);

/// The response type every handler produces.
pub(crate) type Resp = Response<BoxBody<Bytes, hyper::Error>>;

/// Shared, immutable-after-start state of one running app.
///
/// It also holds a receiver of the drain signal: every connection, request
/// and WebSocket session keeps an `Arc<App>` alive, so the server can wait
/// for "all receivers dropped" to know that everything in flight is done.
pub(crate) struct App {
    version: String,
    version_header: HeaderValue,
    started: Instant,
    unhealthy_for: Duration,
    never_healthy: bool,
    broken: bool,
    error_rate: f64,
    requests: AtomicU64,
    drain: watch::Receiver<bool>,
}

impl App {
    /// Builds the state from options; fails if the version is not header-safe.
    pub(crate) fn new(opts: &Options, drain: watch::Receiver<bool>) -> anyhow::Result<Self> {
        let version_header = HeaderValue::from_str(&opts.version).map_err(|_| {
            anyhow::anyhow!("version {:?} is not a valid header value", opts.version)
        })?;
        Ok(Self {
            version: opts.version.clone(),
            version_header,
            started: Instant::now(),
            unhealthy_for: opts.unhealthy_for,
            never_healthy: opts.never_healthy,
            broken: opts.broken,
            error_rate: opts.error_rate,
            requests: AtomicU64::new(0),
            drain,
        })
    }

    /// Resolves once the server starts draining (at once if it already has).
    pub(crate) fn draining(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut drain = self.drain.clone();
        async move {
            // An error means the sender is gone, which also means "stop".
            let _ = drain.wait_for(|draining| *draining).await;
        }
    }

    /// The version this app reports.
    pub(crate) fn version(&self) -> &str {
        &self.version
    }

    /// Whether /healthz should currently report healthy.
    fn is_healthy(&self) -> bool {
        !self.never_healthy && self.started.elapsed() >= self.unhealthy_for
    }

    /// Decides deterministically whether this request gets an injected 500.
    ///
    /// Request `n` fails when `floor(n * rate)` steps up, which spreads
    /// failures evenly and makes the long-run fraction exactly `rate`.
    fn inject_failure(&self) -> bool {
        if self.error_rate <= 0.0 {
            return false;
        }
        let n = self.requests.fetch_add(1, Ordering::Relaxed) + 1;
        let before = ((n - 1) as f64 * self.error_rate).floor();
        let after = (n as f64 * self.error_rate).floor();
        after > before
    }

    /// A plain-text response carrying the version header.
    pub(crate) fn text(&self, status: StatusCode, body: String) -> Resp {
        let full = Full::new(Bytes::from(body)).map_err(|never| match never {});
        let mut resp = Response::new(full.boxed());
        *resp.status_mut() = status;
        let headers = resp.headers_mut();
        headers.insert(VERSION_HEADER, self.version_header.clone());
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        resp
    }

    /// The normal answer: `version=X`.
    fn hello(&self) -> Resp {
        self.text(StatusCode::OK, format!("version={}\n", self.version))
    }
}

/// Entry point for every request on every connection.
pub(crate) async fn handle(app: Arc<App>, req: Request<Incoming>) -> Result<Resp, Infallible> {
    if req.uri().path() == "/healthz" {
        return Ok(health(&app));
    }
    if app.broken {
        let body = format!("broken version={}\n", app.version);
        return Ok(app.text(StatusCode::INTERNAL_SERVER_ERROR, body));
    }
    if app.inject_failure() {
        let body = format!("injected error version={}\n", app.version);
        return Ok(app.text(StatusCode::INTERNAL_SERVER_ERROR, body));
    }
    Ok(route(app, req).await)
}

/// `/healthz`: 200 once healthy, 503 before.
fn health(app: &App) -> Resp {
    if app.is_healthy() {
        app.text(StatusCode::OK, "ok\n".to_owned())
    } else {
        app.text(StatusCode::SERVICE_UNAVAILABLE, "starting\n".to_owned())
    }
}

/// Dispatches the non-health endpoints.
async fn route(app: Arc<App>, req: Request<Incoming>) -> Resp {
    match req.uri().path() {
        "/ws" => websocket(app, req),
        "/slow" => slow(app, req).await,
        "/headers" => headers(&app, req).await,
        "/echo" => echo(&app, req),
        _ => {
            if let Err(resp) = discard_body(&app, req).await {
                return resp;
            }
            app.hello()
        }
    }
}

/// `/slow?ms=N`: reads the request, sleeps `N` ms, then answers like `/`.
async fn slow(app: Arc<App>, req: Request<Incoming>) -> Resp {
    let delay = match slow_delay(req.uri().query()) {
        Ok(delay) => delay,
        Err(msg) => return app.text(StatusCode::BAD_REQUEST, msg),
    };
    if let Err(resp) = discard_body(&app, req).await {
        return resp;
    }
    tokio::time::sleep(delay).await;
    app.hello()
}

/// `/headers`: the request's headers as `name: value` lines, in the order
/// received, so tests can see what a proxy in front delivered.
async fn headers(app: &App, req: Request<Incoming>) -> Resp {
    let lines: String = req
        .headers()
        .iter()
        .map(|(name, value)| format!("{name}: {}\n", String::from_utf8_lossy(value.as_bytes())))
        .collect();
    if let Err(resp) = discard_body(app, req).await {
        return resp;
    }
    app.text(StatusCode::OK, lines)
}

/// `/echo`: streams the request body back as it arrives, with no length
/// (so chunked), both bodies in flight at once.
fn echo(app: &App, req: Request<Incoming>) -> Resp {
    let mut resp = Response::new(req.into_body().boxed());
    resp.headers_mut()
        .insert(VERSION_HEADER, app.version_header.clone());
    resp
}

/// Extracts `ms` from a query string; absent means no delay.
fn slow_delay(query: Option<&str>) -> Result<Duration, String> {
    let value = query
        .unwrap_or("")
        .split('&')
        .find_map(|pair| pair.strip_prefix("ms="));
    let Some(value) = value else {
        return Ok(Duration::ZERO);
    };
    let ms: u64 = value
        .parse()
        .map_err(|_| format!("invalid ms={value:?}\n"))?;
    Ok(Duration::from_millis(ms).min(MAX_SLOW))
}

/// Reads and drops the request body so the connection stays reusable.
async fn discard_body(app: &App, req: Request<Incoming>) -> Result<(), Resp> {
    let mut body = req.into_body();
    while let Some(frame) = body.frame().await {
        if let Err(e) = frame {
            let msg = format!("could not read request body: {e}\n");
            return Err(app.text(StatusCode::BAD_REQUEST, msg));
        }
    }
    Ok(())
}

/// `/ws`: validates the handshake, answers 101 and starts the echo session.
fn websocket(app: Arc<App>, mut req: Request<Incoming>) -> Resp {
    let key = match check_handshake(&req) {
        Ok(key) => key,
        Err(rejection) => return handshake_rejection(&app, rejection),
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let session_app = Arc::clone(&app);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => ws_session::run(upgraded, session_app).await,
            Err(e) => eprintln!("sample-app: websocket upgrade failed: {e}"),
        }
    });
    switching_protocols(&app, &key)
}

/// Checks the RFC 6455 §4.2.1 request requirements; returns the client key.
fn check_handshake(req: &Request<Incoming>) -> Result<String, (StatusCode, String)> {
    let bad = |msg: &str| Err((StatusCode::BAD_REQUEST, format!("{msg}\n")));
    if req.method() != Method::GET {
        return bad("websocket handshake must use GET");
    }
    if !header_has_token(req, header::UPGRADE, "websocket") {
        return bad("missing `Upgrade: websocket`");
    }
    if !header_has_token(req, header::CONNECTION, "upgrade") {
        return bad("missing `Connection: upgrade`");
    }
    let version = req.headers().get(header::SEC_WEBSOCKET_VERSION);
    if version.map(HeaderValue::as_bytes) != Some(b"13") {
        return Err((
            StatusCode::UPGRADE_REQUIRED,
            "unsupported Sec-WebSocket-Version (need 13)\n".to_owned(),
        ));
    }
    match req.headers().get(header::SEC_WEBSOCKET_KEY) {
        Some(key) => key
            .to_str()
            .map(str::to_owned)
            .or_else(|_| bad("invalid Sec-WebSocket-Key")),
        None => bad("missing Sec-WebSocket-Key"),
    }
}

/// Whether a comma-separated header contains `token` (case-insensitive).
fn header_has_token(req: &Request<Incoming>, name: header::HeaderName, token: &str) -> bool {
    req.headers()
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Renders a handshake rejection; 426 also advertises the supported version.
fn handshake_rejection(app: &App, (status, body): (StatusCode, String)) -> Resp {
    let mut resp = app.text(status, body);
    if status == StatusCode::UPGRADE_REQUIRED {
        resp.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
    }
    resp
}

/// The 101 response that completes the handshake.
fn switching_protocols(app: &App, key: &str) -> Resp {
    let mut resp = app.text(StatusCode::SWITCHING_PROTOCOLS, String::new());
    let headers = resp.headers_mut();
    headers.remove(header::CONTENT_TYPE);
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(accept) = HeaderValue::from_str(&ws::accept_key(key)) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(rate: f64) -> App {
        let (_tx, rx) = watch::channel(false);
        let mut opts = Options::new(0, "v1");
        opts.error_rate = rate;
        App::new(&opts, rx).unwrap()
    }

    fn failures(app: &App, n: usize) -> usize {
        (0..n).filter(|_| app.inject_failure()).count()
    }

    #[test]
    fn error_rate_is_exact_and_spread() {
        assert_eq!(failures(&app(0.0), 1000), 0);
        assert_eq!(failures(&app(1.0), 1000), 1000);
        assert_eq!(failures(&app(0.1), 1000), 100);
        assert_eq!(failures(&app(0.5), 10), 5);
        let quarter = app(0.25);
        let pattern: Vec<bool> = (0..8).map(|_| quarter.inject_failure()).collect();
        assert_eq!(pattern.iter().filter(|f| **f).count(), 2);
        assert!(!pattern[0] && pattern[3] && pattern[7]);
    }

    #[test]
    fn slow_delay_parsing() {
        assert_eq!(slow_delay(None), Ok(Duration::ZERO));
        assert_eq!(slow_delay(Some("ms=250")), Ok(Duration::from_millis(250)));
        assert_eq!(slow_delay(Some("a=b&ms=5")), Ok(Duration::from_millis(5)));
        assert!(slow_delay(Some("ms=abc")).is_err());
        assert_eq!(slow_delay(Some("ms=99999999")), Ok(MAX_SLOW));
    }

    #[test]
    fn rejects_header_unsafe_version() {
        let (_tx, rx) = watch::channel(false);
        assert!(App::new(&Options::new(0, "bad\nversion"), rx).is_err());
    }
}

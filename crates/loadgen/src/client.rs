//! One HTTP/1.1 connection and one request on it, with honest error text.
//!
//! The load client deliberately avoids a pooling client: each task owns a
//! single keep-alive connection so a test can see exactly when connections
//! break and are re-established across a switch.

use hyper::Method;
use std::time::Duration;

use anyhow::{bail, Context as _};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{self, HeaderValue};
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Header the sample app uses to name its version.
const VERSION_HEADER: &str = "x-app-version";

/// What every request identifies itself as.
const USER_AGENT: &str = "baton-loadgen";

/// Version recorded when a 2xx answer names none.
pub(crate) const UNKNOWN_VERSION: &str = "unknown";

/// The request side of one client connection.
pub(crate) type Sender = SendRequest<Empty<Bytes>>;

/// Where to connect and what to ask for, parsed once from the URL.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    connect_addr: String,
    host: HeaderValue,
    path: Uri,
    /// GET by default; POST makes requests a proxy must not retry.
    pub(crate) method: Method,
}

impl Target {
    /// Parses an `http://host[:port]/path?query` URL and the Host override.
    pub(crate) fn parse(url: &str, host_header: Option<&str>) -> anyhow::Result<Self> {
        let uri: Uri = url
            .parse()
            .with_context(|| format!("invalid URL {url:?}"))?;
        if uri.scheme_str() != Some("http") {
            bail!("unsupported URL {url:?}: only http:// is supported");
        }
        let authority = uri
            .authority()
            .with_context(|| format!("URL {url:?} has no host"))?;
        let port = authority.port_u16().unwrap_or(80);
        let connect_addr = format!("{}:{port}", authority.host());
        let host = host_header.unwrap_or(authority.as_str());
        let host =
            HeaderValue::from_str(host).with_context(|| format!("invalid Host header {host:?}"))?;
        let path = uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .parse()
            .context("invalid request path")?;
        Ok(Self {
            connect_addr,
            host,
            path,
            method: Method::GET,
        })
    }
}

/// A fully read response.
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) version: Option<String>,
    pub(crate) body: Bytes,
}

/// Opens a TCP connection and performs the HTTP/1.1 client handshake.
///
/// The connection driver runs in its own task and ends when the returned
/// sender is dropped or the peer closes.
pub(crate) async fn connect(target: &Target) -> anyhow::Result<Sender> {
    let stream = TcpStream::connect(&target.connect_addr)
        .await
        .with_context(|| format!("connect {}", target.connect_addr))?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP handshake")?;
    tokio::spawn(async move {
        // Failures surface through the sender; nothing to add here.
        let _ = conn.await;
    });
    Ok(sender)
}

/// Whether a kept connection can take another request.
///
/// A server may close an idle keep-alive connection at any time; that loses
/// no request, so it is not an error, just a reason to reconnect.
pub(crate) async fn still_usable(sender: &mut Sender, wait: Duration) -> bool {
    !sender.is_closed() && matches!(tokio::time::timeout(wait, sender.ready()).await, Ok(Ok(())))
}

/// Sends one request (GET unless the target says otherwise) and reads the whole response body.
pub(crate) async fn fetch(
    sender: &mut Sender,
    target: &Target,
    close: bool,
) -> anyhow::Result<Answer> {
    let mut req = Request::builder()
        .method(target.method.clone())
        .uri(target.path.clone())
        .header(header::HOST, target.host.clone())
        .header(header::USER_AGENT, USER_AGENT)
        .body(Empty::<Bytes>::new())
        .context("building request")?;
    if close {
        req.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    let resp = sender.send_request(req).await.context("sending request")?;
    let status = resp.status();
    let header_version = resp
        .headers()
        .get(VERSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = resp
        .into_body()
        .collect()
        .await
        .context("reading response body")?
        .to_bytes();
    let version = body_version(&body).or(header_version);
    Ok(Answer {
        status,
        version,
        body,
    })
}

/// Reads `version=X` from the first line of a body.
fn body_version(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    let first_line = text.lines().next()?.trim();
    let version = first_line.strip_prefix("version=")?.trim();
    (!version.is_empty()).then(|| version.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_targets() {
        let t = Target::parse("http://127.0.0.1:8080/a?b=1", None).unwrap();
        assert_eq!(t.connect_addr, "127.0.0.1:8080");
        assert_eq!(t.host, "127.0.0.1:8080");
        assert_eq!(t.path, "/a?b=1");

        let t = Target::parse("http://localhost", Some("app.test")).unwrap();
        assert_eq!(t.connect_addr, "localhost:80");
        assert_eq!(t.host, "app.test");
        assert_eq!(t.path, "/");

        let t = Target::parse("http://[::1]:9000/", None).unwrap();
        assert_eq!(t.connect_addr, "[::1]:9000");
    }

    #[test]
    fn rejects_unsupported_targets() {
        assert!(Target::parse("https://example.com/", None).is_err());
        assert!(Target::parse("/just/a/path", None).is_err());
        assert!(Target::parse("not a url", None).is_err());
        assert!(Target::parse("http://h/", Some("bad\nhost")).is_err());
    }

    #[test]
    fn reads_version_from_body() {
        assert_eq!(body_version(b"version=v2\n"), Some("v2".into()));
        assert_eq!(body_version(b"  version=blue  \nmore"), Some("blue".into()));
        assert_eq!(body_version(b"hello"), None);
        assert_eq!(body_version(b"version=\n"), None);
        assert_eq!(body_version(&[0xff, 0xfe]), None);
    }
}

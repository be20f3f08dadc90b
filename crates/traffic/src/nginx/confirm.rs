//! The request that confirms a reload: sent through nginx to the server
//! baton renders beside the upstream, it comes back with the generation of
//! the config that answered (`X-Baton-Generation`) and the upstream server
//! that did (`X-Baton-Upstream`, nginx's `$upstream_addr`).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Longest one confirming request may take.
const LIMIT: Duration = Duration::from_secs(2);
/// More than an answer's head needs; the body is not wanted.
const MAX_ANSWER: u64 = 64 * 1024;

/// What nginx answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Answer {
    pub status: u16,
    /// The generation of the config the answering worker runs.
    pub generation: Option<u64>,
    /// The server that answered, the last one nginx tried.
    pub upstream: Option<SocketAddr>,
}

/// Asks for `path` through nginx's server at `at`.
pub(super) async fn ask(at: SocketAddr, path: &str) -> Result<Answer, String> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(at).await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: baton\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut answer = Vec::new();
        stream.take(MAX_ANSWER).read_to_end(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    };
    let answer = match tokio::time::timeout(LIMIT, exchange).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => return Err(format!("{at}: {e}")),
        Err(_) => return Err(format!("{at}: no answer within {LIMIT:?}")),
    };
    parse(&String::from_utf8_lossy(&answer)).ok_or_else(|| format!("{at}: not an HTTP answer"))
}

/// The status and baton's two headers from an answer's head.
fn parse(answer: &str) -> Option<Answer> {
    let head = answer.split("\r\n\r\n").next()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let mut found = Answer {
        status,
        generation: None,
        upstream: None,
    };
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("x-baton-generation") {
            found.generation = value.parse().ok();
        } else if name.eq_ignore_ascii_case("x-baton-upstream") {
            // "a, b" when nginx tried a second server; "a : b" across an
            // internal redirect. The last one answered.
            let last = value
                .rsplit([',', ' '])
                .find(|s| !s.is_empty() && *s != ":");
            found.upstream = last.and_then(|s| s.parse().ok());
        }
    }
    Some(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_names_its_generation_and_the_server_that_answered() {
        let a = parse(
            "HTTP/1.1 200 OK\r\nServer: nginx\r\nX-Baton-Generation: 42\r\n\
             x-baton-upstream: 127.0.0.1:4000, 127.0.0.1:4001\r\n\r\nversion=v2\n",
        )
        .unwrap();
        assert_eq!(a.status, 200);
        assert_eq!(a.generation, Some(42));
        assert_eq!(a.upstream, Some("127.0.0.1:4001".parse().unwrap()));
    }

    #[test]
    fn an_answer_from_another_config_has_no_generation() {
        let a = parse("HTTP/1.1 502 Bad Gateway\r\nServer: nginx\r\n\r\n").unwrap();
        assert_eq!((a.status, a.generation, a.upstream), (502, None, None));
        assert_eq!(parse("garbage"), None);
    }
}

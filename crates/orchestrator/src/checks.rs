//! The analysis checks that ask something outside baton: a query to the
//! user's Prometheus and a webhook, each interval.
//!
//! They live apart from `analysis`, which is arithmetic over baton's own
//! counters, because they do network I/O: they can be slow, unreachable or
//! answer nonsense, and none of that may ever pass as a pass. Every such case
//! is an inconclusive check (no value) with a note saying what happened;
//! each check is bounded by a timeout so that a hung server cannot stall
//! the rollout.
//!
//! Before a canary deploy starts anything, [`validate`] runs each query once
//! so that a query Prometheus rejects is refused up front, not discovered
//! as an endless run of inconclusive intervals.
//!
//! What Prometheus answers is read by pure functions ([`parse_answer`]),
//! tested without a server. The HTTP client is a bare hyper HTTP/1
//! connection: `http://` only, as the configuration insists.

use std::time::Duration;

use baton_config::{AnalysisConfig, PrometheusCheck, WebhookCheck};
use bytes::Bytes;
use futures_util::future::{join, join_all};
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;

use crate::analysis::{Bound, Check};

/// Longest wait for Prometheus's answer to one query.
const PROMETHEUS_TIMEOUT: Duration = Duration::from_secs(5);
/// Most characters of a query shown in its check's name.
const SHORT_QUERY: usize = 40;
/// Most bytes of an answer read (Prometheus's or a webhook's).
const MAX_BODY: usize = 1 << 20;
/// Most characters of a webhook's answer quoted in its check.
const SHORT_ANSWER: usize = 200;

/// The Prometheus and webhook checks of one interval, run concurrently;
/// `payload` is what each webhook is POSTed.
pub(crate) async fn external(cfg: &AnalysisConfig, payload: &Value) -> Vec<Check> {
    let body = payload.to_string();
    let queries = join_all(
        cfg.prometheus
            .iter()
            .enumerate()
            .map(|(i, p)| prometheus(i, p)),
    );
    let hooks = join_all(
        cfg.webhook
            .iter()
            .enumerate()
            .map(|(i, w)| webhook(i, w, &body)),
    );
    let (queries, hooks) = join(queries, hooks).await;
    queries.into_iter().flatten().chain(hooks).collect()
}

/// Runs every Prometheus query once, before a canary deploy starts: a query
/// Prometheus rejects, one whose result can never be a single value, or a
/// Prometheus that does not answer is refused, in one line naming the key.
pub(crate) async fn validate(cfg: &AnalysisConfig, service: &str) -> Result<(), String> {
    let answers = join_all(cfg.prometheus.iter().map(query)).await;
    for (i, (p, answer)) in cfg.prometheus.iter().zip(answers).enumerate() {
        let key = format!("services.{service}.canary.analysis.prometheus[{i}]");
        match answer {
            Err(QueryError::Rejected(why)) => {
                return Err(format!(
                    "{key}.query: Prometheus at {} rejects it: {why}",
                    p.server
                ))
            }
            Err(QueryError::Unanswered(why)) => return Err(format!("{key}.server: {why}")),
            Ok(Answer::Unusable(kind)) => {
                return Err(format!(
                    "{key}.query: gives a {kind}; it must give a scalar or an instant vector \
                     of one sample"
                ))
            }
            Ok(_) => {}
        }
    }
    Ok(())
}

/// One Prometheus check, asked now.
async fn prometheus(i: usize, p: &PrometheusCheck) -> Vec<Check> {
    held(i, p, query(p).await)
}

/// A query's answer held against its bounds: a [`Check`] per bound, all
/// of the same value, named `prometheus[i]` and the query shortened.
fn held(i: usize, p: &PrometheusCheck, answer: Result<Answer, QueryError>) -> Vec<Check> {
    let name = format!("prometheus[{i}] `{}`", short(&p.query, SHORT_QUERY));
    let (value, note) = judge(answer);
    [(Bound::Max, p.max), (Bound::Min, p.min)]
        .into_iter()
        .filter_map(|(bound, threshold)| Some((bound, threshold?)))
        .map(|(bound, threshold)| {
            let check = Check::new(name.clone(), value, bound, threshold);
            match &note {
                Some(note) => check.with_note(note.clone()),
                None => check,
            }
        })
        .collect()
}

/// A query's answer as a value to check, or why there is none.
fn judge(answer: Result<Answer, QueryError>) -> (Option<f64>, Option<String>) {
    match answer {
        Ok(Answer::Value(v)) if v.is_nan() => (None, Some("NaN (no data to divide?)".into())),
        Ok(Answer::Value(v)) => (Some(v), None),
        Ok(Answer::Empty) => (None, Some("no data (empty vector)".into())),
        Ok(Answer::Several(n)) => (
            None,
            Some(format!(
                "{n} samples; the query must give one (aggregate it, e.g. with sum)"
            )),
        ),
        Ok(Answer::Unusable(kind)) => (None, Some(format!("gives a {kind}, not a value"))),
        Err(QueryError::Rejected(why) | QueryError::Unanswered(why)) => (None, Some(why)),
    }
}

/// What an instant query gave.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Answer {
    /// A scalar, or a vector of exactly one sample (maybe NaN or infinite).
    Value(f64),
    /// An empty vector: no series matched.
    Empty,
    /// A vector of this many samples.
    Several(usize),
    /// A result type that is never one value (`matrix`, `string`).
    Unusable(String),
}

/// Why a query gave no answer.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum QueryError {
    /// Prometheus refused the query (a 4xx with `"status":"error"`): its words.
    Rejected(String),
    /// No usable answer: unreachable, timed out, a server error, not Prometheus.
    Unanswered(String),
}

/// `GET {server}/api/v1/query?query=…`, within [`PROMETHEUS_TIMEOUT`].
async fn query(p: &PrometheusCheck) -> Result<Answer, QueryError> {
    let url = format!(
        "{}/api/v1/query?query={}",
        p.server,
        percent_encode(&p.query)
    );
    let request = exchange(Method::GET, &url, None);
    let (status, body) = match tokio::time::timeout(PROMETHEUS_TIMEOUT, request).await {
        Err(_) => {
            return Err(QueryError::Unanswered(format!(
                "Prometheus at {} did not answer within {PROMETHEUS_TIMEOUT:?}",
                p.server
            )))
        }
        Ok(Err(e)) => {
            return Err(QueryError::Unanswered(format!(
                "cannot reach Prometheus at {}: {e}",
                p.server
            )))
        }
        Ok(Ok(answer)) => answer,
    };
    parse_answer(status, &body).map_err(|e| match e {
        QueryError::Unanswered(why) => {
            QueryError::Unanswered(format!("Prometheus at {}: {why}", p.server))
        }
        rejected => rejected,
    })
}

/// Reads Prometheus's answer to an instant query (HTTP status and body).
pub(crate) fn parse_answer(status: u16, body: &[u8]) -> Result<Answer, QueryError> {
    let json: Value = serde_json::from_slice(body).map_err(|_| {
        QueryError::Unanswered(format!(
            "HTTP {status}, not a Prometheus API answer: {}",
            first_line(body)
        ))
    })?;
    if json["status"] == "error" {
        let why = match json["errorType"].as_str() {
            Some(kind) => format!("{kind}: {}", text(&json["error"])),
            None => text(&json["error"]),
        };
        let why = why.replace(['\n', '\r'], " ");
        return Err(match status {
            400..=499 => QueryError::Rejected(why),
            _ => QueryError::Unanswered(format!("HTTP {status}: {why}")),
        });
    }
    if json["status"] != "success" {
        return Err(QueryError::Unanswered(format!(
            "HTTP {status}, no status in the answer"
        )));
    }
    let data = &json["data"];
    let unreadable = || QueryError::Unanswered("an answer without a readable result".into());
    match data["resultType"].as_str() {
        Some("scalar") => sample_value(&data["result"])
            .map(Answer::Value)
            .ok_or_else(unreadable),
        Some("vector") => {
            let samples = data["result"].as_array().ok_or_else(unreadable)?;
            match samples.as_slice() {
                [] => Ok(Answer::Empty),
                [one] => sample_value(&one["value"])
                    .map(Answer::Value)
                    .ok_or_else(unreadable),
                several => Ok(Answer::Several(several.len())),
            }
        }
        Some(other) => Ok(Answer::Unusable(other.to_string())),
        None => Err(unreadable()),
    }
}

/// The value of a `[timestamp, "value"]` pair; Prometheus writes NaN and
/// the infinities as `NaN`, `+Inf`, `-Inf`.
fn sample_value(pair: &Value) -> Option<f64> {
    let text = pair.get(1)?.as_str()?;
    match text {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => text.parse().ok(),
    }
}

/// One webhook: passes on a 2xx answer (value 1), fails on any other
/// (value 0), inconclusive without an answer.
async fn webhook(i: usize, w: &WebhookCheck, body: &str) -> Check {
    let name = format!("webhook[{i}] {}", w.url);
    let post = exchange(Method::POST, &w.url, Some(body.to_string()));
    let (value, note) = match tokio::time::timeout(w.timeout, post).await {
        Err(_) => (None, format!("no answer within {:?}", w.timeout)),
        Ok(Err(e)) => (None, format!("cannot reach it: {e}")),
        Ok(Ok((status, answer))) => {
            let passed = (200..300).contains(&status);
            (Some(f64::from(u8::from(passed))), answered(status, &answer))
        }
    };
    Check::new(name, value, Bound::Min, 1.0).with_note(note)
}

/// `answered 500 Internal Server Error: nope`: the status and the body's first line.
fn answered(status: u16, body: &[u8]) -> String {
    let reason = StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let mut said = format!("answered {status}");
    if !reason.is_empty() {
        said = format!("{said} {reason}");
    }
    match first_line(body) {
        line if line.is_empty() => said,
        line => format!("{said}: {line}"),
    }
}

/// The first non-blank line of `body`, shortened.
fn first_line(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let line = text.lines().map(str::trim).find(|l| !l.is_empty());
    short(line.unwrap_or(""), SHORT_ANSWER)
}

/// A JSON string as is, anything else as JSON.
fn text(v: &Value) -> String {
    v.as_str()
        .map(str::to_string)
        .unwrap_or_else(|| v.to_string())
}

/// `s` on one line, cut to `max` characters with an ellipsis.
fn short(s: &str, max: usize) -> String {
    let one_line = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() <= max {
        return one_line;
    }
    let cut: String = one_line.chars().take(max - 1).collect();
    format!("{cut}…")
}

/// Percent-encodes `s` for a URL's query: RFC 3986's unreserved characters
/// pass, every other byte of its UTF-8 becomes `%XX`.
pub(crate) fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The parts of an `http://` URL a request needs.
#[derive(Debug, PartialEq)]
struct Url<'a> {
    /// `host:port` as written, for the Host header.
    authority: &'a str,
    /// Without an IPv6 literal's brackets.
    host: &'a str,
    port: u16,
    /// At least `/`.
    path_and_query: &'a str,
}

fn split_url(url: &str) -> Result<Url<'_>, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url:?} is not an http:// URL"))?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path_and_query) = rest.split_at(end);
    let path_and_query = match path_and_query {
        "" => "/",
        p if p.starts_with('?') => return Err(format!("{url:?}: a query needs a path")),
        p => p,
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !port.contains(']') => {
            let port = port
                .parse()
                .map_err(|_| format!("{url:?}: bad port {port:?}"))?;
            (host, port)
        }
        _ => (authority, 80),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("{url:?} has no host"));
    }
    Ok(Url {
        authority,
        host,
        port,
        path_and_query,
    })
}

/// Aborts the connection's task when the exchange ends or is dropped (timeout).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One request on a fresh connection; its status and (at most
/// [`MAX_BODY`] of) its body. A `body` is sent as JSON.
async fn exchange(method: Method, url: &str, body: Option<String>) -> Result<(u16, Bytes), String> {
    let u = split_url(url)?;
    let stream = TcpStream::connect((u.host, u.port))
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    let _conn = AbortOnDrop(tokio::spawn(async move {
        let _ = conn.await;
    }));
    let mut request = Request::builder()
        .method(method)
        .uri(u.path_and_query)
        .header(HOST, u.authority);
    if body.is_some() {
        request = request.header(CONTENT_TYPE, "application/json");
    }
    let request = request
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let body = Limited::new(response.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?
        .to_bytes();
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(status: u16, body: &str) -> Result<Answer, QueryError> {
        parse_answer(status, body.as_bytes())
    }

    #[test]
    fn a_scalar_or_a_one_sample_vector_is_a_value() {
        let scalar = r#"{"status":"success","data":{"resultType":"scalar","result":[1712345678.9,"0.052"]}}"#;
        assert_eq!(parse(200, scalar), Ok(Answer::Value(0.052)));
        let one = r#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"service":"web"},"value":[1712345678.9,"0.25"]}]}}"#;
        assert_eq!(parse(200, one), Ok(Answer::Value(0.25)));
        let inf = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"+Inf"]}]}}"#;
        assert_eq!(parse(200, inf), Ok(Answer::Value(f64::INFINITY)));
    }

    #[test]
    fn no_data_nan_or_several_samples_are_inconclusive() {
        let empty = r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
        assert_eq!(parse(200, empty), Ok(Answer::Empty));
        assert_eq!(judge(parse(200, empty)).0, None);

        let nan = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"NaN"]}]}}"#;
        let (value, note) = judge(parse(200, nan));
        assert_eq!(value, None);
        assert!(note.unwrap().contains("NaN"));

        let three = r#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"code":"2xx"},"value":[1,"1"]},
            {"metric":{"code":"4xx"},"value":[1,"2"]},
            {"metric":{"code":"5xx"},"value":[1,"3"]}]}}"#;
        assert_eq!(parse(200, three), Ok(Answer::Several(3)));
        let (value, note) = judge(parse(200, three));
        assert_eq!(value, None);
        assert!(note.unwrap().starts_with("3 samples"));

        let matrix = r#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#;
        assert_eq!(parse(200, matrix), Ok(Answer::Unusable("matrix".into())));
    }

    #[test]
    fn an_error_status_is_prometheus_s_own_words() {
        let bad = r#"{"status":"error","errorType":"bad_data","error":"invalid parameter \"query\": 1:10: parse error: unclosed left parenthesis"}"#;
        assert_eq!(
            parse(400, bad),
            Err(QueryError::Rejected(
                "bad_data: invalid parameter \"query\": 1:10: parse error: unclosed left parenthesis"
                    .into()
            ))
        );
        let timeout = r#"{"status":"error","errorType":"timeout","error":"query timed out"}"#;
        assert_eq!(
            parse(503, timeout),
            Err(QueryError::Unanswered(
                "HTTP 503: timeout: query timed out".into()
            ))
        );
        assert!(matches!(
            parse(502, "<html>Bad Gateway</html>\nmore"),
            Err(QueryError::Unanswered(why)) if why == "HTTP 502, not a Prometheus API answer: <html>Bad Gateway</html>"
        ));
    }

    fn check(max: Option<f64>, min: Option<f64>) -> PrometheusCheck {
        PrometheusCheck {
            server: "http://127.0.0.1:9090".into(),
            query: "sum(rate(baton_requests_total{version=\"bad\",code=\"5xx\"}[5s])) / 2".into(),
            max,
            min,
        }
    }

    #[test]
    fn a_check_per_bound_and_a_note_without_a_value() {
        use crate::analysis::Outcome;
        let both = held(0, &check(Some(0.9), Some(0.1)), Ok(Answer::Value(0.5)));
        assert_eq!(both.len(), 2);
        assert!(both
            .iter()
            .all(|c| c.result == Outcome::Pass && c.note.is_none()));
        assert!(
            both[0]
                .metric
                .starts_with("prometheus[0] `sum(rate(baton_requests_total{"),
            "{}",
            both[0].metric
        );
        let high = held(3, &check(Some(0.01), None), Ok(Answer::Value(0.05)));
        assert_eq!(high.len(), 1);
        assert_eq!(high[0].result, Outcome::Fail);
        assert!(
            high[0].describe().ends_with("0.05 > max 0.01"),
            "{}",
            high[0].describe()
        );
        assert!(high[0].describe().starts_with("prometheus[3] "));

        let down = held(
            0,
            &check(None, Some(1.0)),
            Err(QueryError::Unanswered(
                "cannot reach Prometheus at http://127.0.0.1:1: connection refused".into(),
            )),
        );
        assert_eq!(down[0].result, Outcome::Inconclusive);
        assert!(down[0]
            .describe()
            .contains("http://127.0.0.1:1: connection refused"));
        let several = held(0, &check(Some(1.0), None), Ok(Answer::Several(2)));
        assert_eq!(several[0].result, Outcome::Inconclusive);
        assert!(several[0].describe().contains("2 samples"));
    }

    #[tokio::test]
    async fn an_unreachable_prometheus_is_refused_and_inconclusive() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let mut p = check(Some(0.01), None);
        p.server = format!("http://127.0.0.1:{port}");
        let cfg = AnalysisConfig {
            prometheus: vec![p],
            ..AnalysisConfig::default()
        };
        let why = validate(&cfg, "web").await.unwrap_err();
        assert!(
            why.starts_with("services.web.canary.analysis.prometheus[0].server: ")
                && why.contains(&format!("http://127.0.0.1:{port}")),
            "{why}"
        );
        let checks = external(&cfg, &serde_json::json!({})).await;
        assert_eq!(checks.len(), 1);
        assert_eq!(checks[0].value, None);
    }

    #[tokio::test]
    async fn a_webhook_gets_the_json_and_its_answer_decides() {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream);
            let (mut head, mut length) = (String::new(), 0);
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap();
                }
                if line.trim().is_empty() {
                    break;
                }
                head.push_str(&line);
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            let answer = "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 8\r\n\r\nnot now\n";
            reader.get_mut().write_all(answer.as_bytes()).unwrap();
            (head, String::from_utf8(body).unwrap())
        });
        let cfg = AnalysisConfig {
            webhook: vec![WebhookCheck {
                url: format!("http://127.0.0.1:{port}/hook"),
                timeout: Duration::from_secs(5),
            }],
            ..AnalysisConfig::default()
        };
        let checks = external(&cfg, &serde_json::json!({"service": "web"})).await;
        let (head, body) = server.join().unwrap();
        assert!(head.starts_with("POST /hook HTTP/1.1"), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: application/json"),
            "{head}"
        );
        assert_eq!(body, r#"{"service":"web"}"#);
        assert_eq!(
            checks[0].result,
            crate::analysis::Outcome::Fail,
            "{}",
            checks[0].describe()
        );
        assert_eq!(
            checks[0].describe(),
            format!("webhook[0] http://127.0.0.1:{port}/hook: answered 503 Service Unavailable: not now")
        );
    }

    #[test]
    fn percent_encoding_passes_only_unreserved_characters() {
        assert_eq!(percent_encode("up"), "up");
        assert_eq!(percent_encode("a-b_c.d~e"), "a-b_c.d~e");
        assert_eq!(
            percent_encode(r#"sum(rate(x{code="5xx"}[5s])) / 2"#),
            "sum%28rate%28x%7Bcode%3D%225xx%22%7D%5B5s%5D%29%29%20%2F%202"
        );
        assert_eq!(percent_encode("a+b&c=d"), "a%2Bb%26c%3Dd");
        assert_eq!(percent_encode("é"), "%C3%A9");
    }

    #[test]
    fn urls_split_into_what_a_request_needs() {
        assert_eq!(
            split_url("http://127.0.0.1:9090/api/v1/query?query=up"),
            Ok(Url {
                authority: "127.0.0.1:9090",
                host: "127.0.0.1",
                port: 9090,
                path_and_query: "/api/v1/query?query=up",
            })
        );
        let hook = split_url("http://hooks.internal").unwrap();
        assert_eq!(
            (hook.host, hook.port, hook.path_and_query),
            ("hooks.internal", 80, "/")
        );
        let v6 = split_url("http://[::1]:8080/check").unwrap();
        assert_eq!(
            (v6.authority, v6.host, v6.port),
            ("[::1]:8080", "::1", 8080)
        );
        assert!(split_url("https://x/").is_err());
        assert!(split_url("http://x:port/").is_err());
    }

    #[test]
    fn a_webhook_answer_is_its_status_and_first_line() {
        assert_eq!(
            answered(500, b"nope\nsecond line"),
            "answered 500 Internal Server Error: nope"
        );
        assert_eq!(answered(204, b""), "answered 204 No Content");
        assert_eq!(answered(599, b"\n  odd  \n"), "answered 599: odd");
    }

    #[test]
    fn long_queries_are_shortened_on_one_line() {
        assert_eq!(short("sum(\n  up\n)", 40), "sum( up )");
        let long = "x".repeat(50);
        let shown = short(&long, 10);
        assert_eq!(shown.chars().count(), 10);
        assert!(shown.ends_with('…'));
    }
}

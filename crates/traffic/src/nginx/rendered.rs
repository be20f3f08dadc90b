//! The files baton owns in nginx's config: the upstream block with the
//! confirming server beside it, and the location's proxying directives;
//! and the upstream's servers read back from the file as it is on disk.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// What baton had nginx load: the upstream's servers with their weights,
/// under a generation that tells this config from every other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Upstream {
    pub servers: Vec<(SocketAddr, u64)>,
    pub generation: u64,
}

impl Upstream {
    pub(super) fn new(servers: Vec<(SocketAddr, u64)>) -> Self {
        // Microseconds: two reloads are always further apart.
        let generation = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        Self {
            servers,
            generation,
        }
    }

    pub(super) fn serves(&self, addr: SocketAddr) -> bool {
        self.servers.iter().any(|&(a, w)| a == addr && w > 0)
    }
}

/// The upstream block, and the confirming server beside it. nginx's own
/// failure counting is off (`max_fails=0`): baton's health checks are the
/// one gate.
pub(super) fn render_upstream(service: &str, upstream: &Upstream, confirm: SocketAddr) -> String {
    let mut text = format!(
        "# Written by baton for service {service} at every switch: edits here are overwritten.\n\
         upstream {service} {{\n"
    );
    for (addr, weight) in upstream.servers.iter().filter(|(_, w)| *w > 0) {
        text.push_str(&format!("    server {addr} weight={weight} max_fails=0;\n"));
    }
    text.push_str("    keepalive 32;\n}\n");
    text.push_str(&format!(
        "\n# How baton confirms that nginx runs this file: it asks here, through the\n\
         # upstream above, and reads which config and which server answered.\n\
         server {{\n    listen {confirm};\n    access_log off;\n    location / {{\n\
         \x20       proxy_pass http://{service};\n        proxy_http_version 1.1;\n\
         \x20       proxy_set_header Connection \"\";\n\
         \x20       add_header X-Baton-Generation {generation} always;\n\
         \x20       add_header X-Baton-Upstream $upstream_addr always;\n    }}\n}}\n",
        generation = upstream.generation,
    ));
    text
}

/// The directives for the user's `location` that serves the service.
pub(super) fn render_location(service: &str, client_keepalive: Duration) -> String {
    format!(
        "# Written by baton for service {service}: include it in the location that serves it.\n\
         proxy_pass http://{service};\n\
         proxy_http_version 1.1;\n\
         # A reload closes idle client connections under the requests clients send on them.\n\
         keepalive_timeout {};\n",
        nginx_time(client_keepalive)
    )
}

/// A duration as nginx writes one: whole seconds, or milliseconds.
fn nginx_time(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// The upstream's servers and weights in the file as it is now.
pub(super) fn on_disk(file: &Path) -> Result<Vec<(SocketAddr, u64)>, String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("upstream_file {}: {e}", file.display()))?;
    let servers = text
        .lines()
        .filter_map(|line| line.split('#').next())
        .flat_map(|line| line.split([';', '{', '}']))
        .filter_map(|statement| {
            let mut words = statement.trim().strip_prefix("server ")?.split_whitespace();
            let addr = words.next()?.parse().ok()?;
            let weight = words
                .find_map(|w| w.strip_prefix("weight="))
                .and_then(|w| w.parse().ok())
                .unwrap_or(1);
            Some((addr, weight))
        })
        .collect();
    Ok(servers)
}

/// `addr`'s weight in `servers`, if it is there.
pub(super) fn weight_of(servers: &[(SocketAddr, u64)], addr: SocketAddr) -> Option<u64> {
    servers.iter().find(|(a, _)| *a == addr).map(|(_, w)| *w)
}

/// Each server whose weight in `found` is not the one in `intended`.
pub(super) fn server_differences(
    intended: &[(SocketAddr, u64)],
    found: &[(SocketAddr, u64)],
) -> Vec<String> {
    let weight_in = |list: &[(SocketAddr, u64)], addr| weight_of(list, addr).unwrap_or(0);
    let mut addrs: Vec<SocketAddr> = intended.iter().chain(found).map(|(a, _)| *a).collect();
    addrs.sort();
    addrs.dedup();
    addrs
        .into_iter()
        .filter_map(|addr| {
            let (want, have) = (weight_in(intended, addr), weight_in(found, addr));
            (want != have).then(|| {
                format!("upstream_file: server {addr} has weight {have}, baton set {want}")
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_keepalive_is_written_as_nginx_reads_it() {
        let text = |d| render_location("web", d);
        assert!(text(Duration::ZERO).contains("keepalive_timeout 0s;"));
        assert!(text(Duration::from_secs(75)).contains("keepalive_timeout 75s;"));
        assert!(text(Duration::from_millis(1500)).contains("keepalive_timeout 1500ms;"));
    }

    #[test]
    fn the_upstream_names_the_service_and_leaves_zero_weights_out() {
        let a: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:4001".parse().unwrap();
        let upstream = Upstream {
            servers: vec![(a, 19), (b, 0)],
            generation: 7,
        };
        let text = render_upstream("web", &upstream, "127.0.0.1:8099".parse().unwrap());
        assert!(text.contains("upstream web {\n    server 127.0.0.1:4000 weight=19 max_fails=0;\n    keepalive 32;\n}"), "{text}");
        assert!(!text.contains("4001"), "{text}");
        assert!(text.contains("listen 127.0.0.1:8099;"), "{text}");
        assert!(
            text.contains("add_header X-Baton-Generation 7 always;"),
            "{text}"
        );
    }

    #[test]
    fn what_is_on_disk_is_compared_server_by_server() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("web.conf");
        let a: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:4001".parse().unwrap();
        let upstream = Upstream {
            servers: vec![(a, 1), (b, 19)],
            generation: 7,
        };
        std::fs::write(&file, render_upstream("web", &upstream, a)).unwrap();
        let found = on_disk(&file).unwrap();
        assert_eq!(found, upstream.servers);
        assert!(server_differences(&upstream.servers, &found).is_empty());
        std::fs::write(
            &file,
            "upstream web { server 127.0.0.1:4000; } # server 1.2.3.4:5;\n",
        )
        .unwrap();
        let edited = server_differences(&upstream.servers, &on_disk(&file).unwrap());
        assert_eq!(
            edited,
            ["upstream_file: server 127.0.0.1:4001 has weight 0, baton set 19"]
        );
    }
}

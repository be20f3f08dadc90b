//! An HAProxy the user runs, driven through its runtime API (the admin
//! socket), never by rewriting its config and reloading: a reload is what
//! loses requests. baton owns one backend per service and names its servers
//! `baton-<color>-<index>`:
//!
//! - stage: each target is added as a server with weight 0 (no traffic);
//! - split: the candidate's and the live release's servers get weights in
//!   the canary's proportion;
//! - switch: the new release's servers get full weight, the old ones go to
//!   `drain` (their users finish, new ones go elsewhere);
//! - drain: waits until HAProxy reports no session on the old servers;
//! - unstage: the old servers go to `maint` and are deleted.
//!
//! Every step is read back with `show servers state` before it counts as
//! done. Health stays baton's: servers are added without HAProxy checks, so
//! that baton's checker alone decides, as it does with its own proxy.
//!
//! HAProxy forgets servers added at run time when it restarts or reloads,
//! and someone may change them by hand: a watcher compares, every second,
//! what HAProxy reports with what baton set, puts back any difference and
//! says so (in the log, and in `status`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use baton_config::HaproxyConfig;
use baton_core::{Color, Weight};
use baton_proxy::{DrainReport, Pool};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::backends::Balancer;
use crate::files::{lock, now_ms, write_atomically};
use crate::{ServerReport, TrafficError, TrafficReport};

/// Longest HAProxy may take to answer one command.
const ANSWER: Duration = Duration::from_secs(5);
/// How often sessions are counted while a drain waits.
const DRAIN_POLL: Duration = Duration::from_millis(100);
/// HAProxy's highest server weight: what a server taking all its share gets.
const FULL: u32 = 256;
/// What baton's servers are called; any other server in the backend is
/// someone else's, and baton refuses to act beside it.
const PREFIX: &str = "baton-";

/// How often HAProxy's servers are compared with what baton set.
const WATCH: Duration = Duration::from_secs(1);

/// One service's backend in an HAProxy.
#[derive(Debug)]
pub struct HaproxyBackend {
    socket: PathBuf,
    backend: String,
    state_file: Option<PathBuf>,
    /// One change at a time, the watcher's repairs included, so that a
    /// repair never undoes a step half made.
    changing: tokio::sync::Mutex<()>,
    /// What baton set, server by server.
    intended: Mutex<BTreeMap<String, Want>>,
    /// What HAProxy reported last, for `status`.
    observed: Mutex<TrafficReport>,
    /// The pool each of baton's servers belongs to, whose counters get the
    /// answers HAProxy counted for it: the canary's analysis and `/metrics`
    /// see the requests that never pass through baton's proxy.
    pools: Mutex<BTreeMap<String, Arc<Pool>>>,
    /// Answers by status class HAProxy had counted per server at the last look.
    counted: Mutex<BTreeMap<String, [u64; 5]>>,
}

/// What baton set on one server.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Want {
    addr: SocketAddr,
    weight: u32,
    drain: bool,
}

/// A server as `show servers state` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Server {
    name: String,
    addr: String,
    port: String,
    /// Flags: 0x01 maint (forced), 0x08 drain (forced), and others.
    admin_state: u32,
    weight: u32,
}

impl Server {
    fn draining(&self) -> bool {
        self.admin_state & 0x08 != 0
    }
    fn in_maint(&self) -> bool {
        self.admin_state & 0x01 != 0
    }
    fn state_name(&self) -> &'static str {
        match (self.in_maint(), self.draining()) {
            (true, _) => "maint",
            (false, true) => "drain",
            (false, false) => "ready",
        }
    }
}

/// How HAProxy's servers differ from what baton set, one line each.
fn differences(intended: &BTreeMap<String, Want>, servers: &[Server]) -> Vec<String> {
    intended
        .iter()
        .filter_map(|(name, want)| {
            let Some(s) = servers.iter().find(|s| &s.name == name) else {
                return Some(format!("{name} is missing"));
            };
            let (ip, port) = (want.addr.ip().to_string(), want.addr.port().to_string());
            if s.addr != ip || s.port != port {
                return Some(format!(
                    "{name} points at {}:{}, not {}",
                    s.addr, s.port, want.addr
                ));
            }
            if s.weight != want.weight {
                return Some(format!(
                    "{name} has weight {}, not {}",
                    s.weight, want.weight
                ));
            }
            let state = if want.drain { "drain" } else { "ready" };
            (s.state_name() != state)
                .then(|| format!("{name} is in {}, not {state}", s.state_name()))
        })
        .collect()
}

/// Answers by status class (1xx to 5xx) HAProxy counted for each server of
/// `backend`, from `show stat`'s CSV (columns found by their header names).
fn answers_by_class(stat: &str, backend: &str) -> BTreeMap<String, [u64; 5]> {
    let mut lines = stat.lines();
    let Some(header) = lines.next().and_then(|h| h.strip_prefix("# ")) else {
        return BTreeMap::new();
    };
    let column = |name: &str| header.split(',').position(|c| c == name);
    let classes: Vec<Option<usize>> = ["hrsp_1xx", "hrsp_2xx", "hrsp_3xx", "hrsp_4xx", "hrsp_5xx"]
        .iter()
        .map(|c| column(c))
        .collect();
    lines
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(',').collect();
            let server = *fields.get(1)?;
            if fields.first() != Some(&backend) || !server.starts_with(PREFIX) {
                return None;
            }
            let count = |i: usize| {
                classes[i]
                    .and_then(|c| fields.get(c))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0)
            };
            Some((server.to_string(), std::array::from_fn(count)))
        })
        .collect()
}

impl HaproxyBackend {
    pub fn new(cfg: &HaproxyConfig) -> Self {
        Self {
            socket: cfg.socket.clone(),
            backend: cfg.backend.clone(),
            state_file: cfg.state_file.clone(),
            changing: tokio::sync::Mutex::new(()),
            intended: Mutex::default(),
            observed: Mutex::new(TrafficReport {
                backend: format!("haproxy {}", cfg.backend),
                ..TrafficReport::default()
            }),
            pools: Mutex::default(),
            counted: Mutex::default(),
        }
    }

    /// Compares HAProxy's servers with what baton set, every [`WATCH`], and
    /// puts back what differs; for as long as baton runs.
    pub(crate) async fn watch(self: Arc<Self>) {
        loop {
            tokio::time::sleep(WATCH).await;
            self.check().await;
            if let Err(e) = self.count_answers().await {
                tracing::debug!(error = %e, "cannot read haproxy's counters");
            }
        }
    }

    /// Adds the answers HAProxy counted since the last look to the pools'
    /// counters, server by server.
    async fn count_answers(&self) -> Result<(), TrafficError> {
        let stat = self.command("show stat").await?;
        let now = answers_by_class(&stat, &self.backend);
        let pools = lock(&self.pools).clone();
        let mut counted = lock(&self.counted);
        for (name, classes) in now {
            let Some(pool) = pools.get(&name) else {
                continue;
            };
            let before = counted.insert(name, classes).unwrap_or([0; 5]);
            for (i, (&now, &before)) in classes.iter().zip(before.iter()).enumerate() {
                // Fewer than before: HAProxy restarted and counts from zero.
                let new = if now >= before { now - before } else { now };
                if new > 0 {
                    pool.stats.count(i as u16 + 1, new);
                }
            }
        }
        Ok(())
    }

    async fn check(&self) {
        let _one = self.changing.lock().await;
        let mut servers = match self.servers().await {
            Ok(servers) => servers,
            Err(e) => {
                lock(&self.observed).error = Some(e.to_string());
                return;
            }
        };
        let intended = lock(&self.intended).clone();
        let found = differences(&intended, &servers);
        if !found.is_empty() {
            let said = found.join("; ");
            tracing::warn!(backend = %self.backend, "haproxy differs from what baton set ({said}): restoring it");
            let restored = match self.restore(&intended, &servers).await {
                Ok(()) => format!("restored after: {said}"),
                Err(e) => format!("could not restore after: {said}: {e}"),
            };
            {
                let mut observed = lock(&self.observed);
                observed.restored = Some(restored);
                observed.restored_at = Some(now_ms());
            }
            if let Ok(again) = self.servers().await {
                servers = again;
            }
        }
        let mut observed = lock(&self.observed);
        observed.error = None;
        observed.differences = differences(&intended, &servers);
        observed.servers = servers
            .iter()
            .map(|s| ServerReport {
                name: s.name.clone(),
                addr: format!("{}:{}", s.addr, s.port),
                weight: s.weight,
                state: s.state_name().to_string(),
                intended_weight: intended.get(&s.name).map(|w| w.weight),
            })
            .collect();
    }

    /// Puts every server back as baton set it.
    async fn restore(
        &self,
        intended: &BTreeMap<String, Want>,
        servers: &[Server],
    ) -> Result<(), TrafficError> {
        for (name, want) in intended {
            let exists = servers.iter().any(|s| &s.name == name);
            self.put(name, want, exists).await?;
        }
        self.save_state().await
    }

    /// Sets one server as `want` says, adding it unless it `exists`.
    async fn put(&self, name: &str, want: &Want, exists: bool) -> Result<(), TrafficError> {
        let full = format!("{}/{name}", self.backend);
        let (addr, weight) = (want.addr, want.weight);
        if exists {
            let (ip, port) = (addr.ip(), addr.port());
            self.command(&format!("set server {full} addr {ip} port {port}"))
                .await?;
            self.command(&format!("set server {full} weight {weight}"))
                .await?;
        } else {
            let answer = self
                .command(&format!("add server {full} {addr} weight {weight}"))
                .await?;
            if !answer.contains("New server registered") {
                return Err(self.error(format!("add server {full}: {}", answer.trim())));
            }
        }
        let state = if want.drain { "drain" } else { "ready" };
        self.command(&format!("set server {full} state {state}"))
            .await
            .map(|_| ())
    }

    /// Records what baton sets on `pool`'s servers.
    fn intend(&self, pool: &Arc<Pool>, change: impl Fn(&mut Want)) {
        let mut pools = lock(&self.pools);
        for i in 0..pool.targets().len() {
            pools.insert(server_name(pool.color, i), pool.clone());
        }
        drop(pools);
        let mut intended = lock(&self.intended);
        for (i, target) in pool.targets().iter().enumerate() {
            let want = intended.entry(server_name(pool.color, i)).or_insert(Want {
                addr: target.addr(),
                weight: 0,
                drain: false,
            });
            want.addr = target.addr();
            change(want);
        }
    }

    /// Adds the pool's servers that are missing, points the others at the
    /// pool's targets, and gives them all `weight`, ready for traffic.
    async fn ensure(
        &self,
        pool: &Arc<Pool>,
        servers: &[Server],
        weight: u32,
    ) -> Result<(), TrafficError> {
        self.intend(pool, |w| {
            w.weight = weight;
            w.drain = false;
        });
        let intended = lock(&self.intended).clone();
        for i in 0..pool.targets().len() {
            let name = server_name(pool.color, i);
            if let Some(want) = intended.get(&name) {
                let exists = servers.iter().any(|s| s.name == name);
                self.put(&name, want, exists).await?;
            }
        }
        Ok(())
    }

    async fn set_weight(&self, pool: &Arc<Pool>, weight: u32) -> Result<(), TrafficError> {
        self.intend(pool, |w| w.weight = weight);
        for i in 0..pool.targets().len() {
            let name = format!("{}/{}", self.backend, server_name(pool.color, i));
            self.command(&format!("set server {name} weight {weight}"))
                .await?;
        }
        Ok(())
    }

    async fn set_state(&self, pool: &Arc<Pool>, state: &str) -> Result<(), TrafficError> {
        self.intend(pool, |w| w.drain = state == "drain");
        for i in 0..pool.targets().len() {
            let name = format!("{}/{}", self.backend, server_name(pool.color, i));
            self.command(&format!("set server {name} state {state}"))
                .await?;
        }
        Ok(())
    }

    /// Reads the servers back: each of `pool`'s must exist and satisfy `ok`.
    async fn verify(&self, pool: &Pool, ok: impl Fn(&Server) -> bool) -> Result<(), TrafficError> {
        let servers = self.servers().await?;
        for (i, target) in pool.targets().iter().enumerate() {
            let name = server_name(pool.color, i);
            let found = servers.iter().find(|s| s.name == name);
            let right = found.is_some_and(|s| {
                s.addr == target.addr().ip().to_string()
                    && s.port == target.addr().port().to_string()
                    && ok(s)
            });
            if !right {
                return Err(self.error(format!(
                    "server {}/{name} did not take the change: {found:?}",
                    self.backend
                )));
            }
        }
        Ok(())
    }

    /// The backend's servers, as HAProxy reports them.
    async fn servers(&self) -> Result<Vec<Server>, TrafficError> {
        let answer = self
            .command(&format!("show servers state {}", self.backend))
            .await?;
        if !answer.starts_with('1') {
            return Err(self.error(answer.trim().to_string()));
        }
        Ok(parse_servers(&answer))
    }

    /// The sessions open on the servers named `names`.
    async fn sessions(&self, names: &[String]) -> Result<usize, TrafficError> {
        let answer = self.command("show stat").await?;
        Ok(answer
            .lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split(',').collect();
                let ours = fields.first() == Some(&self.backend.as_str())
                    && names.iter().any(|n| Some(&n.as_str()) == fields.get(1));
                // Field 4: scur, the sessions open now.
                ours.then(|| fields.get(4)?.parse::<usize>().ok())?
            })
            .sum())
    }

    /// Keeps the state file in step, written whole or not at all.
    async fn save_state(&self) -> Result<(), TrafficError> {
        let Some(file) = &self.state_file else {
            return Ok(());
        };
        let state = self
            .command(&format!("show servers state {}", self.backend))
            .await?;
        write_atomically(file, state.as_bytes())
            .map_err(|e| self.error(format!("state_file {}: {e}", file.display())))
    }

    /// Sends one command to the runtime API and returns HAProxy's answer;
    /// one HAProxy gives when it refuses (no admin level) is an error.
    async fn command(&self, command: &str) -> Result<String, TrafficError> {
        let exchange = async {
            let mut stream = UnixStream::connect(&self.socket).await?;
            stream.write_all(format!("{command}\n").as_bytes()).await?;
            let mut answer = String::new();
            stream.read_to_string(&mut answer).await?;
            Ok::<_, std::io::Error>(answer)
        };
        let answer = tokio::time::timeout(ANSWER, exchange)
            .await
            .map_err(|_| self.error(format!("no answer to `{command}` within {ANSWER:?}")))?
            .map_err(|e| self.error(format!("{}: {e}", self.socket.display())))?;
        if answer.contains("Permission denied") {
            return Err(self.error(format!(
                "{}: `{command}`: Permission denied (the socket needs `level admin`)",
                self.socket.display()
            )));
        }
        Ok(answer)
    }

    fn error(&self, message: String) -> TrafficError {
        TrafficError::Haproxy(message)
    }
}

/// The steps of a deploy, each read back before it counts.
#[async_trait::async_trait]
impl Balancer for HaproxyBackend {
    /// Adds (or updates) `pool`'s servers with weight 0, after checking that
    /// the backend exists and holds no server baton does not manage.
    async fn stage(&self, pool: &Arc<Pool>) -> Result<(), TrafficError> {
        let _one = self.changing.lock().await;
        let servers = self.servers().await?;
        let foreign: Vec<&str> = servers
            .iter()
            .map(|s| s.name.as_str())
            .filter(|n| !n.starts_with(PREFIX))
            .collect();
        if !foreign.is_empty() {
            return Err(self.error(format!(
                "backend {} has servers baton does not manage ({}); give baton a backend of its own",
                self.backend,
                foreign.join(", ")
            )));
        }
        self.ensure(pool, &servers, 0).await?;
        self.verify(pool, |s| s.weight == 0 && !s.in_maint())
            .await?;
        self.save_state().await
    }

    /// The switch: `to` takes everything, `from` drains.
    async fn switch(&self, to: &Arc<Pool>, from: Option<&Arc<Pool>>) -> Result<(), TrafficError> {
        let _one = self.changing.lock().await;
        let servers = self.servers().await?;
        // After a restart or a reload of HAProxy, the servers may be gone.
        self.ensure(to, &servers, FULL).await?;
        if let Some(from) = from.filter(|f| f.color != to.color) {
            self.set_state(from, "drain").await?;
        }
        self.verify(to, |s| s.weight == FULL && !s.draining() && !s.in_maint())
            .await?;
        self.save_state().await
    }

    /// The canary's proportion: `weight` of the requests to `candidate`,
    /// the rest to `live`.
    async fn split(
        &self,
        candidate: &Arc<Pool>,
        live: &Arc<Pool>,
        weight: Weight,
    ) -> Result<(), TrafficError> {
        let _one = self.changing.lock().await;
        let (c, l) = weights(weight, candidate.targets().len(), live.targets().len());
        self.set_weight(candidate, c).await?;
        self.set_weight(live, l).await?;
        self.verify(candidate, |s| s.weight == c).await?;
        self.verify(live, |s| s.weight == l).await?;
        self.save_state().await
    }

    /// Takes the candidate's share back: its servers drain.
    async fn withdraw(
        &self,
        pool: &Arc<Pool>,
        live: Option<&Arc<Pool>>,
    ) -> Result<(), TrafficError> {
        let _one = self.changing.lock().await;
        self.set_state(pool, "drain").await?;
        if let Some(live) = live {
            self.set_weight(live, FULL).await?;
        }
        self.verify(pool, Server::draining).await?;
        self.save_state().await
    }

    /// Removes `color`'s servers (in `maint` first, as HAProxy requires).
    async fn unstage(&self, color: Color) -> Result<(), TrafficError> {
        let _one = self.changing.lock().await;
        let prefix = server_prefix(color);
        lock(&self.intended).retain(|name, _| !name.starts_with(&prefix));
        lock(&self.pools).retain(|name, _| !name.starts_with(&prefix));
        lock(&self.counted).retain(|name, _| !name.starts_with(&prefix));
        for server in self.servers().await? {
            if !server.name.starts_with(&prefix) {
                continue;
            }
            let name = format!("{}/{}", self.backend, server.name);
            self.command(&format!("set server {name} state maint"))
                .await?;
            let answer = self.command(&format!("del server {name}")).await?;
            if !answer.contains("Server deleted") {
                return Err(self.error(format!("del server {name}: {}", answer.trim())));
            }
        }
        self.save_state().await
    }

    /// Waits until HAProxy reports no session on `pool`'s servers.
    async fn drain(&self, pool: &Pool, timeout: Duration) -> DrainReport {
        let started = Instant::now();
        let names: Vec<String> = (0..pool.targets().len())
            .map(|i| server_name(pool.color, i))
            .collect();
        loop {
            let open = match self.sessions(&names).await {
                Ok(open) => open,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot count sessions while draining");
                    usize::MAX
                }
            };
            if open == 0 {
                return report(false, 0, started);
            }
            if started.elapsed() >= timeout {
                return report(true, open.min(u32::MAX as usize), started);
            }
            tokio::time::sleep(DRAIN_POLL).await;
        }
    }

    fn report(&self) -> Option<TrafficReport> {
        Some(lock(&self.observed).clone())
    }
}

/// Per-server weights giving the candidate `weight` of the requests between
/// `candidates` and `lives` servers, the larger of the two at full weight.
fn weights(weight: Weight, candidates: usize, lives: usize) -> (u32, u32) {
    let share = f64::from(weight.basis_points()) / 10_000.0;
    let per_candidate = share / candidates.max(1) as f64;
    let per_live = (1.0 - share) / lives.max(1) as f64;
    let scale = f64::from(FULL) / per_candidate.max(per_live);
    let round = |w: f64, share: f64| match (w * scale).round() as u32 {
        0 if share > 0.0 => 1,
        w => w.min(FULL),
    };
    (round(per_candidate, share), round(per_live, 1.0 - share))
}

fn server_prefix(color: Color) -> String {
    format!("{PREFIX}{color}-")
}

fn server_name(color: Color, index: usize) -> String {
    format!("{}{index}", server_prefix(color))
}

/// `show servers state` (format 1): one server per line after the header.
fn parse_servers(answer: &str) -> Vec<Server> {
    answer
        .lines()
        .skip(1)
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            Some(Server {
                name: f.get(3)?.to_string(),
                addr: f.get(4)?.to_string(),
                admin_state: f.get(6)?.parse().ok()?,
                weight: f.get(7)?.parse().ok()?,
                port: f.get(18)?.to_string(),
            })
        })
        .collect()
}

fn report(timed_out: bool, abandoned: usize, started: Instant) -> DrainReport {
    DrainReport {
        timed_out,
        closed_upgraded: 0,
        abandoned,
        elapsed: started.elapsed(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_give_the_canary_its_share() {
        let w = |pct| Weight::from_percent(pct).unwrap();
        assert_eq!(weights(w(5.0), 1, 1), (13, 256));
        assert_eq!(weights(w(50.0), 2, 2), (256, 256));
        // Two candidates and one live server at 50%: each candidate half.
        assert_eq!(weights(w(50.0), 2, 1), (128, 256));
        assert_eq!(weights(w(0.01), 1, 1), (1, 256));
        assert_eq!(weights(Weight::FULL, 1, 1), (256, 0));
    }

    #[test]
    fn answers_are_read_by_column_name() {
        let stat = "# pxname,svname,scur,hrsp_1xx,hrsp_2xx,hrsp_3xx,hrsp_4xx,hrsp_5xx,\n\
                    web,baton-blue-0,0,0,90,1,2,7,\n\
                    web,legacy,0,0,5,0,0,0,\n\
                    web,BACKEND,0,0,95,1,2,7,\n\
                    other,baton-blue-0,0,0,1,0,0,0,\n";
        let counted = answers_by_class(stat, "web");
        assert_eq!(counted.len(), 1, "{counted:?}");
        assert_eq!(counted["baton-blue-0"], [0, 90, 1, 2, 7]);
    }

    #[test]
    fn servers_state_is_parsed() {
        let answer = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port\n3 web 1 baton-blue-0 127.0.0.1 2 8 256 256 0 1 0 0 0 0 0 0 - 18101 - 0 0 - - 0\n";
        let servers = parse_servers(answer);
        assert_eq!(
            servers,
            [Server {
                name: "baton-blue-0".into(),
                addr: "127.0.0.1".into(),
                port: "18101".into(),
                admin_state: 8,
                weight: 256,
            }]
        );
        assert!(servers[0].draining());
    }
}

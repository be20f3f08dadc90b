//! One remote host, reached with the system's OpenSSH client over one
//! multiplexed connection (ControlMaster), so that the many short commands a
//! deploy sends cost a round trip each, not a handshake.
//!
//! Everything baton does on a host is a POSIX shell script run here; a host
//! that stops answering fails the script after its time limit instead of
//! hanging the deploy, and the next script connects anew.

use std::collections::{HashSet, VecDeque};
use std::error::Error as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_config::HostConfig;
use openssh::{KnownHosts, OwningCommand, Session, SessionBuilder, Stdio};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Mutex;

use crate::{lock, RuntimeError};

/// Longest wait for a host to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a connected host may take to answer a short command: generous,
/// since a busy host (or a busy machine running baton) answers slowly, and
/// a host that is cut off is caught by the connection's own probes anyway.
pub(crate) const ANSWER: Duration = Duration::from_secs(15);
/// How long a handed-out port is not handed out again.
const PORT_QUARANTINE: Duration = Duration::from_secs(60);
/// How often the connection is probed, so that a host cut off is noticed
/// within a few of these even while nothing is sent.
const ALIVE_INTERVAL: Duration = Duration::from_secs(2);

/// A remote host and its (lazily made) connection.
pub struct Host {
    pub config: HostConfig,
    /// Where the connection's control socket lives.
    control_dir: PathBuf,
    connection: Mutex<Option<Connection>>,
    /// Connections made so far.
    connections: std::sync::atomic::AtomicU64,
    /// Ports handed out recently: an app may not listen on its port yet.
    handed_out: std::sync::Mutex<VecDeque<(Instant, u16)>>,
}

/// A live master connection and what it told us about the host.
#[derive(Clone)]
struct Connection {
    session: Arc<Session>,
    /// Counts the connections made to the host, so that what depends on
    /// one (a forwarded socket) knows when it must be made again.
    generation: u64,
    /// The host's address as the connection reached it, where its apps are
    /// reached too (`address` may be a name only `~/.ssh/config` knows).
    ip: IpAddr,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("name", &self.config.name)
            .finish()
    }
}

impl Host {
    pub fn new(config: HostConfig, control_dir: PathBuf) -> Self {
        Self {
            config,
            control_dir,
            connection: Mutex::new(None),
            connections: Default::default(),
            handed_out: Default::default(),
        }
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The host's IP address, connecting if needed.
    pub async fn ip(&self) -> Result<IpAddr, RuntimeError> {
        Ok(self.connection().await?.ip)
    }

    /// Makes a round trip to the host (connecting again if the last
    /// connection died), so that an unreachable host is known before
    /// anything is started anywhere.
    pub async fn reach(&self) -> Result<(), RuntimeError> {
        self.run("true", ANSWER).await.map(|_| ())
    }

    /// Forwards the local unix socket `local` to `remote` on the host, over
    /// the current connection; the generation of that connection is
    /// returned, since the forward ends with it.
    pub async fn forward(&self, local: &Path, remote: &str) -> Result<u64, RuntimeError> {
        let connection = self.connection().await?;
        let _ = std::fs::remove_file(local);
        let forwarding = connection.session.request_port_forward(
            openssh::ForwardType::Local,
            openssh::Socket::UnixSocket {
                path: local.to_path_buf().into(),
            },
            openssh::Socket::UnixSocket {
                path: PathBuf::from(remote).into(),
            },
        );
        tokio::time::timeout(ANSWER, forwarding)
            .await
            .map_err(|_| self.error(format!("forwarding {remote}: no answer")))?
            .map_err(|e| self.error(format!("forwarding {remote}: {}", describe(&e))))?;
        Ok(connection.generation)
    }

    /// The generation of the live connection, if there is one.
    pub async fn generation(&self) -> Option<u64> {
        self.connection.lock().await.as_ref().map(|c| c.generation)
    }

    /// A port no process on the host listens on, not handed out lately.
    pub async fn free_port(&self, range: std::ops::Range<u16>) -> Result<u16, RuntimeError> {
        let tables = self
            .run(
                "cat /proc/net/tcp /proc/net/tcp6 2>/dev/null || true",
                ANSWER,
            )
            .await?;
        let listening = listening_ports(&tables);
        let mut recent = lock(&self.handed_out);
        while recent
            .front()
            .is_some_and(|(at, _)| at.elapsed() > PORT_QUARANTINE)
        {
            recent.pop_front();
        }
        // Start somewhere different each time, so that two batons sharing a
        // host rarely pick the same port in the same moment.
        let span = range.end - range.start;
        let offset = (random() % u64::from(span)) as u16;
        let port = (0..span)
            .map(|i| range.start + (offset + i) % span)
            .find(|p| !listening.contains(p) && !recent.iter().any(|(_, r)| r == p))
            .ok_or_else(|| self.error(format!("no free port in {range:?}")))?;
        recent.push_back((Instant::now(), port));
        Ok(port)
    }

    /// Runs `script` with `sh` on the host and returns its output; a script
    /// that fails gives its last error line, a host that does not answer
    /// within `limit` an error saying so.
    pub async fn run(&self, script: &str, limit: Duration) -> Result<String, RuntimeError> {
        let connection = self.connection().await?;
        let mut command = shell(&connection.session, script, Stdio::null());
        let output = tokio::time::timeout(limit, command.output()).await;
        self.finish(output, limit).await
    }

    /// Runs `script` with the file at `input` on its stdin, calling `sent`
    /// with the bytes sent so far after every chunk.
    pub async fn run_with_input(
        &self,
        script: &str,
        input: &std::path::Path,
        limit: Duration,
        mut sent: impl FnMut(u64) + Send,
    ) -> Result<String, RuntimeError> {
        let mut file = tokio::fs::File::open(input)
            .await
            .map_err(|source| RuntimeError::Io {
                what: format!("reading {}", input.display()),
                source,
            })?;
        let connection = self.connection().await?;
        let mut command = shell(&connection.session, script, Stdio::piped());
        let work = async {
            let mut child = command.spawn().await?;
            let mut stdin = child.stdin().take().ok_or(openssh::Error::Disconnected)?;
            let mut buf = vec![0; 256 * 1024];
            let mut total = 0;
            loop {
                let n = file.read(&mut buf).await.map_err(openssh::Error::ChildIo)?;
                if n == 0 {
                    break;
                }
                // A script that stopped reading (it failed) says why below.
                if stdin.write_all(&buf[..n]).await.is_err() {
                    break;
                }
                total += n as u64;
                sent(total);
            }
            drop(stdin);
            child.wait_with_output().await
        };
        let output = tokio::time::timeout(limit, work).await;
        self.finish(output, limit).await
    }

    /// Turns a script's outcome into its output or an error naming the host.
    async fn finish(
        &self,
        output: Result<Result<std::process::Output, openssh::Error>, tokio::time::error::Elapsed>,
        limit: Duration,
    ) -> Result<String, RuntimeError> {
        let output = match output {
            Err(_) => {
                // Whatever the connection is doing, it is not answering.
                self.connection.lock().await.take();
                return Err(self.error(format!("no answer within {limit:?}")));
            }
            Ok(Err(e)) => {
                self.connection.lock().await.take();
                return Err(self.error(describe(&e)));
            }
            Ok(Ok(output)) => output,
        };
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        if output.status.success() {
            return Ok(stdout);
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        let why = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .map(str::trim)
            .map(String::from)
            .unwrap_or_else(|| match output.status.code() {
                // ssh's own status when the connection broke.
                Some(255) | None => "the connection was lost".to_string(),
                Some(code) => format!("a command failed with status {code}"),
            });
        Err(self.error(why))
    }

    fn error(&self, message: String) -> RuntimeError {
        RuntimeError::Host {
            host: self.config.name.clone(),
            message,
        }
    }

    /// The live connection, made anew if there is none or it died.
    async fn connection(&self) -> Result<Connection, RuntimeError> {
        let mut slot = self.connection.lock().await;
        if let Some(c) = slot.as_ref() {
            // Connecting to the master's control socket tells what `ssh -O
            // check` would, without a process per command.
            let socket = c.session.control_socket();
            if tokio::net::UnixStream::connect(socket).await.is_ok() {
                return Ok(c.clone());
            }
        }
        slot.take();
        let session = self.connect().await.map_err(|e| self.error(e))?;
        let session = Arc::new(session);
        let ip = self.remote_ip(&session).await?;
        let generation = 1 + self
            .connections
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let connection = Connection {
            session,
            generation,
            ip,
        };
        tracing::info!(host = %self.config.name, generation, %ip, "connected");
        *slot = Some(connection.clone());
        Ok(connection)
    }

    async fn connect(&self) -> Result<Session, String> {
        let c = &self.config;
        std::fs::create_dir_all(&self.control_dir)
            .map_err(|e| format!("creating {}: {e}", self.control_dir.display()))?;
        let mut builder = SessionBuilder::default();
        builder
            .known_hosts_check(KnownHosts::Add)
            .connect_timeout(CONNECT_TIMEOUT)
            .server_alive_interval(ALIVE_INTERVAL)
            .control_directory(&self.control_dir)
            // A baton killed outright leaves no connection behind for long.
            .control_persist(openssh::ControlPersist::IdleFor(
                std::num::NonZeroUsize::new(60).expect("nonzero"),
            ));
        if let Some(user) = &c.user {
            builder.user(user.clone());
        }
        if let Some(port) = c.port {
            builder.port(port);
        }
        if let Some(key) = &c.identity {
            builder.keyfile(key);
        }
        if let Some(file) = &c.known_hosts {
            builder.user_known_hosts_file(file);
        }
        let connecting = builder.connect(&c.address);
        match tokio::time::timeout(CONNECT_TIMEOUT + ANSWER, connecting).await {
            Ok(Ok(session)) => Ok(session),
            Ok(Err(e)) => Err(format!("cannot connect to {}: {}", c.address, describe(&e))),
            Err(_) => Err(format!("cannot connect to {}: timed out", c.address)),
        }
    }

    /// The address the host was reached on, from its side of the connection
    /// (`$SSH_CONNECTION`: client ip, client port, server ip, server port).
    async fn remote_ip(&self, session: &Arc<Session>) -> Result<IpAddr, RuntimeError> {
        let mut command = shell(session, "echo $SSH_CONNECTION", Stdio::null());
        let output = command.output();
        let output = tokio::time::timeout(ANSWER, output)
            .await
            .map_err(|_| self.error("no answer after connecting".into()))?
            .map_err(|e| self.error(describe(&e)))?;
        let text = String::from_utf8_lossy(&output.stdout);
        text.split_whitespace()
            .nth(2)
            .and_then(|ip| ip.parse().ok())
            .ok_or_else(|| self.error(format!("cannot tell its address from {:?}", text.trim())))
    }
}

/// `sh -c script` on the host, its output captured.
fn shell(session: &Arc<Session>, script: &str, stdin: Stdio) -> OwningCommand<Arc<Session>> {
    let mut command = session.clone().arc_command("sh");
    command
        .arg("-c")
        .arg(script)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// An ssh error with its causes, on one line.
fn describe(e: &openssh::Error) -> String {
    use openssh::Error as E;
    if matches!(e, E::Disconnected | E::RemoteProcessTerminated) {
        return "the connection was lost".to_string();
    }
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(s.to_string().trim());
        source = s.source();
    }
    text.replace('\n', " ")
}

/// The local ports in LISTEN state in `/proc/net/tcp`-format tables.
fn listening_ports(tables: &str) -> HashSet<u16> {
    tables
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let local = fields.nth(1)?;
            let state = fields.nth(1)?;
            let port = local.rsplit(':').next()?;
            (state == "0A").then(|| u16::from_str_radix(port, 16).ok())?
        })
        .collect()
}

/// A random number, from the standard library's randomly keyed hasher.
fn random() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

/// `s` quoted for a POSIX shell.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_ports_are_read_from_proc_net_tcp() {
        let tables = "\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1
   1: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 2 1
   0: 00000000000000000000000000000000:4E20 00000000000000000000000000000000:0000 0A 0 0 0 0 0 0 0
";
        assert_eq!(listening_ports(tables), HashSet::from([22, 20000]));
    }

    #[test]
    fn quoting_survives_quotes() {
        assert_eq!(quote("it's"), r"'it'\''s'");
    }
}

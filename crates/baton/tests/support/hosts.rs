//! Remote hosts for the tests: each a network namespace of its own, joined
//! to this one by a veth pair, with its own address and a real OpenSSH
//! sshd, so that baton reaches it as it would a server (over SSH and TCP)
//! and a test can cut it off the network or look at what runs there.
//!
//! The namespaces share this machine's filesystem and process table; each
//! host gets a directory of its own to keep its files apart. A host can also
//! run a Docker Engine of its own (`with_docker`), inside its namespace, so
//! that its containers are published on its address.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Hosts made by one call, so that parallel tests never share names or subnets.
static CALLS: AtomicUsize = AtomicUsize::new(0);

/// Test hosts; dropping them stops everything they run and removes them.
pub struct TestHosts {
    pub hosts: Vec<TestHost>,
    dir: tempfile::TempDir,
}

/// One test host.
pub struct TestHost {
    /// Its name in baton's config (`app1`, ...).
    pub name: String,
    /// Its address, reachable from here.
    pub address: Ipv4Addr,
    /// A directory of its own, baton's working area there (`dir`).
    pub dir: PathBuf,
    netns: String,
    /// This namespace's end of the veth pair.
    link: String,
    sshd: Child,
    /// Its Docker Engine, if it runs one, and that engine's socket.
    docker: Option<(Child, PathBuf)>,
}

impl TestHosts {
    /// `n` hosts named `app1`..`appN`, each answering ssh on port 22.
    pub fn start(n: usize) -> TestHosts {
        Self::make(n, false)
    }

    /// The same, each with its own Docker Engine running too.
    pub fn with_docker(n: usize) -> TestHosts {
        Self::make(n, true)
    }

    fn make(n: usize, docker: bool) -> TestHosts {
        remove_stale();
        let dir = tempfile::tempdir().unwrap();
        let call = CALLS.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        keygen(&dir.path().join("id_ed25519"));
        std::fs::copy(
            dir.path().join("id_ed25519.pub"),
            dir.path().join("authorized_keys"),
        )
        .unwrap();
        std::fs::create_dir_all("/run/sshd").unwrap();
        let mut hosts = Vec::new();
        let mut known_hosts = String::new();
        for i in 0..n {
            // One /30 per host: 10.(100 + pid % 100).(call * 8 + i).0/30 from here.
            let (b, c) = (100 + (pid % 100) as u8, (call * 8 + i) as u8 % 255);
            let (here, there) = (Ipv4Addr::new(10, b, c, 1), Ipv4Addr::new(10, b, c, 2));
            let netns = format!("bt{pid}n{call}x{i}");
            let link = format!("bv{}c{call}x{i}", pid % 100_000);
            let peer = format!("bp{}c{call}x{i}", pid % 100_000);
            sh(&format!(
                "ip netns add {netns} && ip link add {link} type veth peer name {peer} && \
                 ip link set {peer} netns {netns} && ip addr add {here}/30 dev {link} && \
                 ip link set {link} up && ip -n {netns} addr add {there}/30 dev {peer} && \
                 ip -n {netns} link set {peer} up && ip -n {netns} link set lo up"
            ));
            let name = format!("app{}", i + 1);
            let home = dir.path().join(&name);
            std::fs::create_dir_all(&home).unwrap();
            let key = dir.path().join(format!("host_{name}"));
            keygen(&key);
            let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
            let public: Vec<&str> = public.split_whitespace().take(2).collect();
            known_hosts.push_str(&format!("{there} {}\n", public.join(" ")));
            let config = dir.path().join(format!("sshd_{name}"));
            std::fs::write(
                &config,
                format!(
                    "ListenAddress {there}\nPort 22\nHostKey {key}\nPidFile {dir}/sshd_{name}.pid\n\
                     AuthorizedKeysFile {dir}/authorized_keys\nPermitRootLogin prohibit-password\n\
                     PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
                     StrictModes no\nMaxSessions 100\nMaxStartups 100\n",
                    key = key.display(),
                    dir = dir.path().display(),
                ),
            )
            .unwrap();
            let log = std::fs::File::create(dir.path().join(format!("sshd_{name}.log"))).unwrap();
            let sshd = Command::new("ip")
                .args(["netns", "exec", &netns, "/usr/sbin/sshd", "-D", "-e", "-f"])
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("starting sshd (is openssh-server installed?)");
            let docker = docker.then(|| start_engine(&netns, &home));
            hosts.push(TestHost {
                name,
                address: there,
                dir: home,
                netns,
                link,
                sshd,
                docker,
            });
        }
        std::fs::write(dir.path().join("known_hosts"), known_hosts).unwrap();
        let hosts = TestHosts { hosts, dir };
        for host in &hosts.hosts {
            host.wait_ssh(&hosts.dir.path().join(format!("sshd_{}.log", host.name)));
            if let Some((_, socket)) = &host.docker {
                wait_engine(socket);
            }
        }
        hosts
    }

    /// The `[hosts.NAME]` tables of every host, for baton.toml.
    pub fn toml(&self) -> String {
        self.hosts
            .iter()
            .map(|h| {
                let docker = h
                    .docker
                    .as_ref()
                    .map(|(_, s)| format!("docker_socket = \"{}\"\n", s.display()))
                    .unwrap_or_default();
                format!(
                    "[hosts.{}]\naddress = \"{}\"\nuser = \"root\"\nport = 22\nidentity = \"{}\"\n\
                     known_hosts = \"{}\"\ndir = \"{}\"\n{docker}\n",
                    h.name,
                    h.address,
                    self.identity().display(),
                    self.known_hosts().display(),
                    h.dir.display(),
                )
            })
            .collect()
    }

    /// The client key every host accepts.
    pub fn identity(&self) -> PathBuf {
        self.dir.path().join("id_ed25519")
    }

    /// Every host's key, as ssh's known_hosts lists them.
    pub fn known_hosts(&self) -> PathBuf {
        self.dir.path().join("known_hosts")
    }
}

impl TestHost {
    /// Takes the host off the network, as a pulled cable would: packets to
    /// it are lost, connections to it time out.
    pub fn cut_off(&self) {
        sh(&format!("ip link set {} down", self.link));
    }

    /// Puts it back, and waits until its sshd answers again.
    pub fn reconnect(&self) {
        sh(&format!("ip link set {} up", self.link));
        self.wait_ssh(Path::new("(sshd log not shown)"));
    }

    /// Runs `script` on the host directly (not over ssh); its stdout.
    pub fn sh(&self, script: &str) -> String {
        sh(&format!(
            "ip netns exec {} sh -c '{}'",
            self.netns,
            script.replace('\'', r"'\''")
        ))
    }

    /// The processes running on the host whose command line holds `needle`.
    pub fn pids_with(&self, needle: &str) -> Vec<u32> {
        let pids = sh(&format!("ip netns pids {}", self.netns));
        pids.split_whitespace()
            .filter_map(|p| p.parse().ok())
            .filter(|pid: &u32| {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                cmdline.contains(needle)
            })
            .collect()
    }

    /// The `docker` command against this host's engine.
    pub fn docker(&self, args: &[&str]) -> String {
        let (_, socket) = self
            .docker
            .as_ref()
            .expect("the host runs no Docker Engine");
        let out = Command::new("docker")
            .arg("-H")
            .arg(format!("unix://{}", socket.display()))
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "docker {args:?} on {}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn wait_ssh(&self, log: &Path) {
        let addr = SocketAddr::from((self.address, 22));
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(
                Instant::now() < deadline,
                "sshd on {} ({addr}) does not answer: {}",
                self.name,
                std::fs::read_to_string(log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for TestHosts {
    fn drop(&mut self) {
        for host in &mut self.hosts {
            if let Some((engine, socket)) = &mut host.docker {
                // Its containers first, while the engine can remove them.
                let _ = Command::new("sh")
                    .arg("-c")
                    .arg(format!(
                        "docker -H unix://{s} ps -aq | xargs -r docker -H unix://{s} rm -f",
                        s = socket.display()
                    ))
                    .output();
                let _ = engine.kill();
                let _ = engine.wait();
            }
            let _ = host.sshd.kill();
            let _ = host.sshd.wait();
            remove(&host.netns, &host.link);
        }
    }
}

/// Kills everything in a namespace, then removes it and its link.
fn remove(netns: &str, link: &str) {
    let _ = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ip netns pids {netns} | xargs -r kill -9; ip link del {link}; ip netns del {netns}"
        ))
        .stderr(Stdio::null())
        .output();
}

/// Removes namespaces left by test runs that died before cleaning up.
fn remove_stale() {
    let list = sh("ip netns list");
    for line in list.lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(rest) = name.strip_prefix("bt") else {
            continue;
        };
        let Some((pid, rest)) = rest.split_once('n') else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let (call, i) = rest.split_once('x').unwrap_or(("0", "0"));
        remove(name, &format!("bv{}c{call}x{i}", pid % 100_000));
    }
}

/// A Docker Engine inside the namespace, its state under `home`. `nsenter`
/// rather than `ip netns exec`, which would remount /sys and hide the
/// cgroups the engine needs.
fn start_engine(netns: &str, home: &Path) -> (Child, PathBuf) {
    let root = home.join("engine");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("daemon.json"), "{}").unwrap();
    let socket = root.join("docker.sock");
    let driver = sh("docker info --format '{{.Driver}}'");
    let log = std::fs::File::create(root.join("dockerd.log")).unwrap();
    let engine = Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{netns}"))
        .arg("dockerd")
        .arg("--config-file")
        .arg(root.join("daemon.json"))
        .args(["--storage-driver", driver.trim()])
        .arg("--host")
        .arg(format!("unix://{}", socket.display()))
        .arg("--data-root")
        .arg(root.join("data"))
        .arg("--exec-root")
        .arg(root.join("exec"))
        .arg("--pidfile")
        .arg(root.join("docker.pid"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("starting dockerd");
    (engine, socket)
}

fn wait_engine(socket: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let up = Command::new("docker")
            .arg("-H")
            .arg(format!("unix://{}", socket.display()))
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success());
        if up {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the test host's Docker Engine did not start: {}",
            std::fs::read_to_string(socket.with_file_name("dockerd.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn keygen(path: &Path) {
    let ok = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .status()
        .unwrap()
        .success();
    assert!(ok, "ssh-keygen failed");
}

/// Runs a shell command here; its stdout, or a panic with its stderr.
fn sh(script: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(script).output().unwrap();
    assert!(
        out.status.success(),
        "`{script}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

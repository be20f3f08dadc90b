//! Remote hosts for the integration tests. baton deploys to servers that it
//! reaches over SSH, with the system's OpenSSH client, and whose apps it
//! reaches over TCP. To test that for real, without machines or containers,
//! each test host is a network namespace of its own, joined to this one by a
//! veth pair, with its own address and a real OpenSSH sshd: baton, running
//! here, reaches it exactly as it would a server, and a test can cut it off
//! the network or look at what runs there.
//!
//! The namespaces share this machine's filesystem and process table; each
//! host gets a directory of its own to keep its files apart. A host can also
//! run a Docker Engine of its own (`with_docker`), inside its namespace, so
//! that its containers are published on its address.
//!
//! Needs root and Debian's openssh-server. The tests of one binary run in
//! parallel, and other test processes may make hosts at the same time, so
//! names carry the pid and a counter, and each host's /30 is picked, under a
//! lock, among those that nothing on this machine uses. Namespaces left by a
//! test process that died are removed by the next one.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Numbers this process's hosts; with the pid, that makes names unique.
static NEXT: AtomicUsize = AtomicUsize::new(0);

/// Hosts' subnets: one /30 each out of 10.77.0.0/16.
const POOL: u32 = u32::from_be_bytes([10, 77, 0, 0]);
const SLOTS: u32 = 1 << 14;

/// Held while a subnet is picked and claimed, so that test processes
/// running at once never pick the same one.
const LOCK: &str = "/run/baton-test-hosts.lock";

const SSHD: &str = "/usr/sbin/sshd";

/// The host's end of its veth pair.
const ETH: &str = "eth0";

/// How long an sshd or a Docker Engine gets to answer.
const READY: Duration = Duration::from_secs(20);

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
    /// A directory of its own, empty at first: baton's working area there.
    pub dir: PathBuf,
    netns: String,
    /// This namespace's end of the veth pair.
    link: String,
    sshd: Option<Child>,
    log: PathBuf,
    docker: Option<Engine>,
}

/// A host's own Docker Engine.
struct Engine {
    child: Child,
    socket: PathBuf,
}

impl TestHosts {
    /// `n` hosts named `app1`..`appN`, each with sshd answering on
    /// `address:22`.
    pub fn start(n: usize) -> TestHosts {
        Self::make(n, false)
    }

    /// The same, each with its own Docker Engine running too.
    pub fn with_docker(n: usize) -> TestHosts {
        Self::make(n, true)
    }

    fn make(n: usize, docker: bool) -> TestHosts {
        assert!(
            // SAFETY: geteuid has no preconditions.
            unsafe { libc::geteuid() } == 0,
            "test hosts need root (network namespaces, sshd)"
        );
        assert!(
            Path::new(SSHD).exists(),
            "test hosts need {SSHD} (apt-get install openssh-server)"
        );
        remove_stale();
        // sshd refuses to start without its privilege separation directory.
        fs::create_dir_all("/run/sshd").expect("creating /run/sshd");
        // Made first, so that if a step below panics, dropping it removes
        // what was made so far.
        let mut hosts = TestHosts {
            hosts: Vec::new(),
            dir: tempfile::tempdir().expect("creating a temp dir"),
        };
        let root = hosts.dir.path().to_path_buf();
        keygen(&hosts.identity());
        fs::copy(root.join("id_ed25519.pub"), root.join("authorized_keys"))
            .expect("writing authorized_keys");
        let penalties = if knows_penalties(&root) {
            "PerSourcePenalties no\n"
        } else {
            ""
        };
        let mut known_hosts = String::new();
        for i in 1..=n {
            let host = TestHost::create(&root, format!("app{i}"));
            hosts.hosts.push(host);
            let host = hosts.hosts.last_mut().unwrap();
            let key = root.join(format!("host_{}", host.name));
            keygen(&key);
            let public = fs::read_to_string(key.with_extension("pub")).unwrap();
            let public: Vec<&str> = public.split_whitespace().take(2).collect();
            writeln!(known_hosts, "{} {}", host.address, public.join(" ")).unwrap();
            let config = root.join(format!("sshd_{}", host.name));
            fs::write(
                &config,
                format!(
                    "Port 22\nListenAddress {address}\nHostKey {key}\n\
                     PidFile {root}/sshd_{name}.pid\nAuthorizedKeysFile {root}/authorized_keys\n\
                     PermitRootLogin prohibit-password\nPasswordAuthentication no\n\
                     KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n\
                     MaxSessions 100\nMaxStartups 100\nSubsystem sftp internal-sftp\n{penalties}",
                    address = host.address,
                    key = key.display(),
                    root = root.display(),
                    name = host.name,
                ),
            )
            .unwrap();
            let log = File::create(&host.log).unwrap();
            // Logins are this machine's root, whose shell start-up file is
            // this machine's (here it runs pyenv, which hangs for a minute on
            // a lock a killed session left behind). `ip netns exec` gives
            // sshd a mount namespace of its own (changes stay inside), where
            // that file is emptied, so the hosts' shells start clean. The
            // shell execs sshd: the child is sshd itself.
            let script = format!(
                "[ -f ~root/.bashrc ] && mount --bind /dev/null ~root/.bashrc; exec {SSHD} -D -e -f '{}'",
                config.display()
            );
            let sshd = Command::new("ip")
                .args(["netns", "exec", &host.netns, "sh", "-c", &script])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("starting sshd");
            host.sshd = Some(sshd);
            if docker {
                let engine = root.join(format!("engine_{}", host.name));
                host.docker = Some(start_engine(&host.netns, &engine));
            }
        }
        fs::write(hosts.known_hosts(), known_hosts).unwrap();
        for host in &hosts.hosts {
            host.wait_sshd();
            if let Some(engine) = &host.docker {
                wait_engine(&engine.socket);
            }
        }
        hosts
    }

    /// The `[hosts.NAME]` tables of every host, for baton.toml.
    pub fn toml(&self) -> String {
        let mut toml = String::new();
        for h in &self.hosts {
            write!(
                toml,
                "[hosts.{}]\naddress = \"{}\"\nuser = \"root\"\nport = 22\nidentity = \"{}\"\n\
                 known_hosts = \"{}\"\ndir = \"{}\"\n",
                h.name,
                h.address,
                self.identity().display(),
                self.known_hosts().display(),
                h.dir.display(),
            )
            .unwrap();
            if let Some(engine) = &h.docker {
                writeln!(toml, "docker_socket = \"{}\"", engine.socket.display()).unwrap();
            }
            toml.push('\n');
        }
        toml
    }

    /// The client key every host accepts (ed25519, no passphrase).
    pub fn identity(&self) -> PathBuf {
        self.dir.path().join("id_ed25519")
    }

    /// Every host's address with its host key, as ssh's known_hosts lists
    /// them: `StrictHostKeyChecking=yes` passes.
    pub fn known_hosts(&self) -> PathBuf {
        self.dir.path().join("known_hosts")
    }
}

impl TestHost {
    /// A namespace joined to this one by a veth pair, on a /30 of its own.
    fn create(root: &Path, name: String) -> TestHost {
        let pid = std::process::id();
        let k = NEXT.fetch_add(1, Ordering::SeqCst);
        let netns = format!("bh{pid}x{k}");
        let link = format!("bv{pid}x{k}");
        assert!(link.len() <= 15, "interface name {link} is too long");
        let dir = root.join(&name);
        fs::create_dir(&dir).unwrap();
        let there = {
            let _lock = lock();
            let (here, there) = free_subnet(pid);
            if let Err(e) = claim(&netns, &link, here) {
                remove(&netns, Some(&link));
                panic!("making test host {name}: {e}");
            }
            there
        };
        if let Err(e) = set_up(&netns, &link, there) {
            remove(&netns, Some(&link));
            panic!("making test host {name}: {e}");
        }
        let log = root.join(format!("sshd_{name}.log"));
        TestHost {
            name,
            address: there,
            dir,
            netns,
            link,
            sshd: None,
            log,
            docker: None,
        }
    }

    /// Takes the host off the network, as a pulled cable would: packets to
    /// it are lost, connections to it time out. The host's end goes down,
    /// not this one: with this end down, the route to the host would go,
    /// and its packets would take the default route instead, where on some
    /// machines something accepts any connection.
    pub fn cut_off(&self) {
        must(ip(&["-n", &self.netns, "link", "set", ETH, "down"]));
        let route = must(ip(&["route", "get", &self.address.to_string()]));
        assert!(
            route.contains(&format!("dev {} ", self.link)),
            "{} cut off, but its packets do not go to it (is \
             net.ipv4.conf.all.ignore_routes_with_linkdown set?): {route}",
            self.name
        );
    }

    /// Puts it back, and waits until its sshd answers again.
    pub fn reconnect(&self) {
        must(ip(&["-n", &self.netns, "link", "set", ETH, "up"]));
        self.wait_sshd();
    }

    /// Runs `sh -c script` on the host directly (not over ssh); its stdout.
    pub fn sh(&self, script: &str) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.netns, "sh", "-c", script])
            .stdin(Stdio::null())
            .output()
            .expect("running ip netns exec");
        assert!(
            out.status.success(),
            "`{script}` on {} failed ({}): {}",
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The live processes on the host whose command line holds `needle`;
    /// the command line is the arguments, each followed by a space.
    pub fn pids_with(&self, needle: &str) -> Vec<u32> {
        ns_pids(&self.netns)
            .into_iter()
            .filter(|pid| {
                let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                String::from_utf8_lossy(&cmdline)
                    .replace('\0', " ")
                    .contains(needle)
            })
            .collect()
    }

    /// The `docker` command against this host's engine.
    pub fn docker(&self, args: &[&str]) -> String {
        let engine = self
            .docker
            .as_ref()
            .expect("the host runs no Docker Engine");
        let out = Command::new("docker")
            .arg("-H")
            .arg(format!("unix://{}", engine.socket.display()))
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

    /// Waits until the host's sshd accepts TCP connections.
    fn wait_sshd(&self) {
        let addr = SocketAddr::from((self.address, 22));
        let deadline = Instant::now() + READY;
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            let pid = self.sshd.as_ref().map(|c| c.id());
            let why = if !pid.is_some_and(alive) {
                "has exited"
            } else if Instant::now() >= deadline {
                "does not answer"
            } else {
                std::thread::sleep(Duration::from_millis(25));
                continue;
            };
            panic!(
                "sshd of test host {} ({addr}) {why}; its log:\n{}",
                self.name,
                fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

impl Drop for TestHosts {
    fn drop(&mut self) {
        for host in &mut self.hosts {
            if let Some(engine) = host.docker.take() {
                engine.stop();
            }
            if let Some(mut sshd) = host.sshd.take() {
                let _ = sshd.kill();
                let _ = sshd.wait();
            }
            remove(&host.netns, Some(&host.link));
        }
    }
}

/// Kills everything in a namespace, then removes it and its link. Never
/// panics: Drop calls it.
fn remove(netns: &str, link: Option<&str>) {
    // Killed processes may have forked meanwhile: again until none is left.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let pids = ns_pids(netns);
        if pids.is_empty() || Instant::now() >= deadline {
            break;
        }
        for pid in pids {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Either may be gone already; deleting one end of a veth pair deletes both.
    if let Some(link) = link {
        let _ = ip(&["link", "del", link]);
    }
    let _ = ip(&["netns", "del", netns]);
}

/// Removes the namespaces and links of test processes that died before
/// cleaning up (their pid is in the name). `bt{pid}n…` namespaces come from
/// an earlier version of this file.
fn remove_stale() {
    let dead = |name: &str, prefix: &str| {
        let digits: String = name
            .strip_prefix(prefix)?
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        let pid: u32 = digits.parse().ok()?;
        (!Path::new(&format!("/proc/{pid}")).exists()).then_some(pid)
    };
    for line in ip(&["netns", "list"]).unwrap_or_default().lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        if let Some(pid) = dead(name, "bh") {
            let k = name.rsplit('x').next().unwrap_or_default();
            remove(name, Some(&format!("bv{pid}x{k}")));
        } else if dead(name, "bt").is_some() {
            remove(name, None);
        }
    }
    for line in ip(&["-o", "link", "show"]).unwrap_or_default().lines() {
        // "12: bv123x4@if11: <...": the name, without its peer.
        let Some(name) = line.split_whitespace().nth(1) else {
            continue;
        };
        let name = name
            .trim_end_matches(':')
            .split('@')
            .next()
            .unwrap_or_default();
        if dead(name, "bv").is_some() {
            let _ = ip(&["link", "del", name]);
        }
    }
}

/// The lock on picking subnets; held until the returned file is dropped.
fn lock() -> File {
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(LOCK)
        .unwrap_or_else(|e| panic!("opening {LOCK}: {e}"));
    loop {
        // SAFETY: the descriptor is open for as long as `file` lives.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
            return file;
        }
        let e = std::io::Error::last_os_error();
        assert!(
            e.kind() == std::io::ErrorKind::Interrupted,
            "locking {LOCK}: {e}"
        );
    }
}

/// Makes the namespace and the veth pair, and gives this end `here`: the
/// subnet is taken from then on.
fn claim(netns: &str, link: &str, here: Ipv4Addr) -> Result<(), String> {
    ip(&["netns", "add", netns])?;
    // The peer is made inside the namespace: never a stray interface here.
    ip(&[
        "link", "add", link, "type", "veth", "peer", "name", ETH, "netns", netns,
    ])?;
    ip(&["addr", "add", &format!("{here}/30"), "dev", link])?;
    ip(&["link", "set", link, "up"])?;
    Ok(())
}

/// Gives the host's end `there`, and brings the host's network up.
fn set_up(netns: &str, link: &str, there: Ipv4Addr) -> Result<(), String> {
    let (there, cidr) = (there.to_string(), format!("{there}/30"));
    ip(&["-n", netns, "addr", "add", &cidr, "dev", ETH])?;
    ip(&["-n", netns, "link", "set", ETH, "up"])?;
    // Apps there may listen on 127.0.0.1.
    ip(&["-n", netns, "link", "set", "lo", "up"])?;
    let show = ip(&["-n", netns, "-o", "link", "show", ETH])?;
    let mac = show
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .ok_or_else(|| format!("no MAC address in {show:?}"))?;
    // A fixed entry, not ARP: connections to a cut-off host then time out,
    // as to a server that died, rather than fail after three seconds with
    // "no route to host" once ARP gives up.
    ip(&[
        "neigh",
        "replace",
        &there,
        "lladdr",
        mac,
        "dev",
        link,
        "nud",
        "permanent",
    ])?;
    Ok(())
}

/// A /30 of the pool that no address or route here overlaps: this end's
/// address and the host's. Call with the lock held, and claim it before
/// letting go.
fn free_subnet(pid: u32) -> (Ipv4Addr, Ipv4Addr) {
    let mut taken = Vec::new();
    let listed = [
        ip(&["-4", "-o", "addr", "show"]),
        ip(&["-4", "route", "show", "table", "all"]),
    ];
    for line in listed.iter().flatten().flat_map(|text| text.lines()) {
        // The first word that is an address or a prefix: "default" is not,
        // nor are wider routes (say a VPN's 10.0.0.0/8), which ours would
        // override anyway.
        let prefix = line.split_whitespace().find_map(|word| {
            let (addr, len) = word.split_once('/').unwrap_or((word, "32"));
            Some((addr.parse::<Ipv4Addr>().ok()?, len.parse::<u32>().ok()?))
        });
        if let Some((addr, len)) = prefix.filter(|&(_, len)| (16..=32).contains(&len)) {
            taken.push((u32::from(addr), len));
        }
    }
    // Processes start in different places, so that they rarely even meet.
    let start = (pid % 128) * 128;
    for i in 0..SLOTS {
        let net = POOL + ((start + i) % SLOTS) * 4;
        let overlaps = |&(addr, len): &(u32, u32)| {
            let mask = u32::MAX << (32 - len.min(30));
            addr & mask == net & mask
        };
        if !taken.iter().any(overlaps) {
            return (Ipv4Addr::from(net + 1), Ipv4Addr::from(net + 2));
        }
    }
    panic!("no /30 left in 10.77.0.0/16 for a test host");
}

/// Whether this sshd knows `PerSourcePenalties` (OpenSSH 9.8 on). It is on
/// by default there, and shuts out for a while an address whose connections
/// end without logging in, as the readiness probes here do, and those a
/// test cuts off.
fn knows_penalties(scratch: &Path) -> bool {
    static KNOWS: OnceLock<bool> = OnceLock::new();
    *KNOWS.get_or_init(|| {
        let probe = scratch.join("probe_config");
        fs::write(&probe, "PerSourcePenalties no\n").unwrap();
        let out = Command::new(SSHD)
            .arg("-t")
            .arg("-f")
            .arg(&probe)
            .output()
            .expect("running sshd -t");
        !String::from_utf8_lossy(&out.stderr).contains("PerSourcePenalties")
    })
}

/// A Docker Engine inside the namespace, its state under `root`. `nsenter`
/// rather than `ip netns exec`, which would remount /sys and hide the
/// cgroups the engine needs.
fn start_engine(netns: &str, root: &Path) -> Engine {
    fs::create_dir_all(root).unwrap();
    // Not /etc/docker/daemon.json, which is this machine's engine's.
    fs::write(root.join("daemon.json"), "{}").unwrap();
    let socket = root.join("docker.sock");
    let driver = Command::new("docker")
        .args(["info", "--format", "{{.Driver}}"])
        .output()
        .expect("running docker info");
    assert!(
        driver.status.success(),
        "test hosts with Docker need this machine's engine: {}",
        String::from_utf8_lossy(&driver.stderr)
    );
    let log = File::create(root.join("dockerd.log")).unwrap();
    let child = Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{netns}"))
        .arg("dockerd")
        .arg("--config-file")
        .arg(root.join("daemon.json"))
        .args([
            "--storage-driver",
            String::from_utf8_lossy(&driver.stdout).trim(),
        ])
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
    Engine { child, socket }
}

fn wait_engine(socket: &Path) {
    let deadline = Instant::now() + READY * 3;
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
            fs::read_to_string(socket.with_file_name("dockerd.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Engine {
    /// Removes its containers, then stops it; never panics.
    fn stop(mut self) {
        // The containers first, while the engine can remove them: they run
        // in namespaces of their own, which removing the host's would miss.
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "docker -H unix://{s} ps -aq | xargs -r docker -H unix://{s} rm -f",
                s = self.socket.display()
            ))
            .output();
        // SIGTERM, so that it unmounts what it mounted in the temp dir.
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + READY;
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn keygen(path: &Path) {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .expect("running ssh-keygen");
    assert!(
        out.status.success(),
        "ssh-keygen -f {} failed: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `ip` with these arguments: its stdout, or what went wrong.
fn ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running ip: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn must(result: Result<String, String>) -> String {
    result.unwrap_or_else(|e| panic!("{e}"))
}

/// The live (not zombie) processes in a namespace; none if it is gone.
fn ns_pids(netns: &str) -> Vec<u32> {
    let mut pids: Vec<u32> = ip(&["netns", "pids", netns])
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .filter(|&pid| alive(pid))
        .collect();
    pids.sort_unstable();
    pids
}

/// True while a process with this pid exists and is not a zombie.
fn alive(pid: u32) -> bool {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The state follows the command name, which is in parentheses.
    stat.rsplit_once(')')
        .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
}

//! A cluster of real `worknode serve` processes on loopback, for integration tests.

#![allow(dead_code, reason = "each test binary uses part of the harness")]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tonic::transport::Channel;
use worknode_server::adminpb::admin_client::AdminClient;
use worknode_server::adminpb::{DigestRequest, PartitionRequest};
use worknode_server::pb::kv_client::KvClient;
use worknode_server::pb::maintenance_client::MaintenanceClient;
use worknode_server::pb::StatusRequest;

/// One member's addresses (shared with `worknode demo`).
pub(crate) type MemberAddr = worknode_server::local_cluster::LoopbackMember;

/// Processes and their configuration.
pub(crate) struct ProcessCluster {
    pub(crate) root: PathBuf,
    pub(crate) members: Vec<MemberAddr>,
    children: Vec<Option<Child>>,
    /// `worknode certs init` output the members' `[tls]` uses: clients then speak TLS
    /// with its CA and the `admin` certificate.
    pub(crate) client_tls: Option<PathBuf>,
}

/// Runs Debian's `etcdctl` (v3 API) against `endpoints` with `stdin` as its input; whether
/// it succeeded, its output and its errors.
pub(crate) fn etcdctl_with_input(
    endpoints: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> (bool, String, String) {
    use std::io::Write;
    let mut child = Command::new("etcdctl")
        .arg(format!("--endpoints={endpoints}"))
        .args(args)
        .env("ETCDCTL_API", "3")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("etcdctl is installed (scripts/deps.sh installs Debian's etcd-client)");
    let input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        let mut input = input;
        input.write_all(text.as_bytes()).unwrap();
    }
    let output = child.wait_with_output().unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Whether a command succeeded, and what it printed (stdout, then stderr).
pub(crate) fn outcome(output: std::process::Output) -> (bool, String) {
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}

/// [`etcdctl_with_input`] with no input.
pub(crate) fn etcdctl(endpoints: &str, args: &[&str]) -> (bool, String, String) {
    etcdctl_with_input(endpoints, args, None)
}

/// `GET /metrics` from a member: the exposition text.
pub(crate) fn scrape(address: SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: worknode\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    response.split_once("\r\n\r\n").unwrap().1.to_owned()
}

/// Client TLS with `dir`'s CA and the `client` certificate (`worknode certs init` files).
pub(crate) fn client_tls(dir: &std::path::Path, client: &str) -> tonic::transport::ClientTlsConfig {
    let read = |name: String| std::fs::read(dir.join(name)).unwrap();
    tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(read("ca.pem".into())))
        .identity(tonic::transport::Identity::from_pem(
            read(format!("{client}.pem")),
            read(format!("{client}-key.pem")),
        ))
        .domain_name("localhost")
}

/// Runs `worknode certs init` for a cluster of `size` into a fresh `dir`.
pub(crate) fn certs_init(cluster: &str, size: u64, dir: &std::path::Path) {
    let _ = std::fs::remove_dir_all(dir);
    let members: Vec<String> = (1..=size).map(|id| format!("n{id}")).collect();
    let status = Command::new(env!("CARGO_BIN_EXE_worknode"))
        .args(["certs", "init", "--cluster", cluster, "--members", &members.join(",")])
        .arg("--out")
        .arg(dir)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "worknode certs init failed");
}

impl ProcessCluster {
    /// Starts `size` members with `tick_ms` ticks and 10-tick elections.
    pub(crate) fn start(name: &str, size: u64, tick_ms: u64) -> Self {
        Self::start_with(name, size, tick_ms, "")
    }

    /// Starts with extra top-level config tables (e.g. `[schedule]`).
    pub(crate) fn start_with(name: &str, size: u64, tick_ms: u64, extra: &str) -> Self {
        let mut cluster = Self::configure(name, size, tick_ms, extra);
        for index in 0..size as usize {
            cluster.spawn(index);
        }
        cluster
    }

    /// Writes the members' configs (`n{id}.toml` in `root`) without starting them.
    pub(crate) fn configure(name: &str, size: u64, tick_ms: u64, extra: &str) -> Self {
        let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let members = worknode_server::local_cluster::loopback_members(size).unwrap();
        let list = worknode_server::local_cluster::member_tables(&members);
        for m in &members {
            // `{name}` in the extra tables is each member's own name (n1, n2, ...).
            let extra = extra.replace("{name}", &format!("n{}", m.id));
            let config = format!(
                "cluster = \"{name}\"\nmember_id = {}\ndata_dir = \"{}\"\ntick_ms = {tick_ms}\nelection_ticks = 10\nsnapshot_entries = 2000\nallow_fault_injection = true\n\n{extra}\n[cores]\npin = \"off\"\n\n{list}",
                m.id,
                root.join(format!("data-{}", m.id)).display()
            );
            std::fs::write(root.join(format!("n{}.toml", m.id)), config).unwrap();
        }
        let children = (0..size).map(|_| None).collect();
        Self { root, members, children, client_tls: None }
    }

    /// Member `index`'s config file.
    pub(crate) fn config_path(&self, index: usize) -> PathBuf {
        self.root.join(format!("n{}.toml", self.members[index].id))
    }

    /// Starts (or restarts) member `index`.
    pub(crate) fn spawn(&mut self, index: usize) {
        self.spawn_with(index, &[]);
    }

    /// Starts (or restarts) member `index` with extra `serve` arguments.
    pub(crate) fn spawn_with(&mut self, index: usize, extra: &[&str]) {
        let id = self.members[index].id;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.join(format!("n{id}.log")))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_worknode"))
            .args(["serve", "--config"])
            .arg(self.root.join(format!("n{id}.toml")))
            .args(extra)
            .env("WORKNODE_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.children[index] = Some(child);
    }

    /// SIGKILL: no chance to flush or say goodbye.
    pub(crate) fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.children[index].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub(crate) fn terminate(&mut self, index: usize) -> std::process::ExitStatus {
        let mut child = self.children[index].take().unwrap();
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "member did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub(crate) fn is_running(&self, index: usize) -> bool {
        self.children[index].is_some()
    }

    /// Whether member `index`'s process is still alive (it has not exited by itself).
    pub(crate) fn is_alive(&mut self, index: usize) -> bool {
        self.children[index].as_mut().is_some_and(|child| child.try_wait().unwrap().is_none())
    }

    /// Waits up to `within` for member `index` to exit by itself: its status, or `None`.
    pub(crate) fn wait_exit(
        &mut self,
        index: usize,
        within: Duration,
    ) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            let child = self.children[index].as_mut()?;
            if let Some(status) = child.try_wait().unwrap() {
                self.children[index] = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The process id of member `index`.
    pub(crate) fn pid(&self, index: usize) -> u32 {
        self.children[index].as_ref().unwrap().id()
    }

    /// What member `index` has logged (warnings and errors) in every run so far.
    pub(crate) fn log(&self, index: usize) -> String {
        let id = self.members[index].id;
        std::fs::read_to_string(self.root.join(format!("n{id}.log"))).unwrap_or_default()
    }

    /// The cluster id every member's hello carries.
    pub(crate) fn cluster_id(&self) -> u64 {
        let path = self.root.join(format!("n{}.toml", self.members[0].id));
        worknode_server::config::ServerConfig::load(&path).unwrap().cluster_id()
    }

    pub(crate) fn endpoints(&self) -> String {
        self.members.iter().map(|m| m.client.to_string()).collect::<Vec<_>>().join(",")
    }

    pub(crate) async fn channel(&self, index: usize) -> Channel {
        let scheme = if self.client_tls.is_some() { "https" } else { "http" };
        let uri = format!("{scheme}://{}", self.members[index].client);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let mut endpoint =
                Channel::from_shared(uri.clone()).unwrap().connect_timeout(Duration::from_secs(1));
            if let Some(dir) = &self.client_tls {
                endpoint = endpoint.tls_config(client_tls(dir, "admin")).unwrap();
            }
            match endpoint.connect().await {
                Ok(channel) => return channel,
                Err(error) => {
                    assert!(Instant::now() < deadline, "cannot reach member {index}: {error}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    pub(crate) async fn kv(&self, index: usize) -> KvClient<Channel> {
        KvClient::new(self.channel(index).await)
    }

    /// The member index that leads, once some running member reports one.
    pub(crate) async fn leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            for index in (0..self.members.len()).filter(|&i| self.is_running(i)) {
                let mut client = MaintenanceClient::new(self.channel(index).await);
                if let Ok(status) = client.status(StatusRequest {}).await {
                    let leader = status.into_inner().leader;
                    if let Some(position) = self.members.iter().position(|m| m.id == leader) {
                        if self.is_running(position) {
                            return position;
                        }
                    }
                }
            }
            assert!(Instant::now() < deadline, "no leader");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until every running member reports the same applied index and digest.
    pub(crate) async fn assert_converged(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut digests = Vec::new();
            for index in (0..self.members.len()).filter(|&i| self.is_running(i)) {
                let mut admin = AdminClient::new(self.channel(index).await);
                if let Ok(reply) = admin.digest(DigestRequest {}).await {
                    let reply = reply.into_inner();
                    digests.push((reply.applied_index, reply.digest));
                }
            }
            let running = (0..self.members.len()).filter(|&i| self.is_running(i)).count();
            if digests.len() == running && digests.windows(2).all(|w| w[0] == w[1]) {
                return;
            }
            assert!(Instant::now() < deadline, "state machines differ: {digests:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Cuts member `index` off from every other member (both directions).
    pub(crate) async fn isolate(&self, index: usize) {
        let me = self.members[index].id;
        let others: Vec<u64> = self.members.iter().map(|m| m.id).filter(|id| *id != me).collect();
        AdminClient::new(self.channel(index).await)
            .partition(PartitionRequest { peers: others })
            .await
            .unwrap();
        for other in (0..self.members.len()).filter(|&i| i != index) {
            AdminClient::new(self.channel(other).await)
                .partition(PartitionRequest { peers: vec![me] })
                .await
                .unwrap();
        }
    }

    /// Heals every partition.
    pub(crate) async fn heal(&self) {
        for index in 0..self.members.len() {
            AdminClient::new(self.channel(index).await)
                .partition(PartitionRequest { peers: vec![] })
                .await
                .unwrap();
        }
    }
}

impl Drop for ProcessCluster {
    fn drop(&mut self) {
        for index in 0..self.children.len() {
            self.kill(index);
        }
    }
}

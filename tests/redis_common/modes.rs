//! Redis in the deployment modes the feed must handle, each made of real
//! `redis-server` processes on loopback ports:
//!
//! - [`TlsRedis`]: one server with a plain port and a TLS port, certificates made
//!   at test time (a CA, a server and a client certificate, and an unrelated CA);
//! - [`SentinelSet`]: a primary, a replica and three sentinels;
//! - [`RedisCluster`]: three primaries sharing the 16384 slots, with slot migration,
//!   plain or with TLS on the client ports, the cluster bus and replication.
//!
//! Every process writes its output to a log file in the set's temp dir. A wait that
//! times out prints those logs before failing, and so does a set dropped while the
//! test panics. Processes are killed and temp dirs removed on drop.

use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use redis::aio::MultiplexedConnection;
use redis::{FromRedisValue, RedisResult, Value};
use tempfile::TempDir;

use super::{Publisher, free_port, init_tracing, spawn_server, stream_key};

/// How long a harness wait may take: a process starting, a replica syncing, a
/// failover, the cluster agreeing on its slots. Generous, since a 2-core CI machine
/// shares its cores with the compiler.
pub const MODE_DEADLINE: Duration = Duration::from_secs(30);

/// How long one command to one node may take before it counts as unanswered.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// How many lines of each log a failure prints.
const LOG_TAIL: usize = 80;

// ---------------------------------------------------------------------------
// Talking to one node
// ---------------------------------------------------------------------------

/// A connection to the node on `127.0.0.1:port`.
pub async fn node_connection(port: u16) -> MultiplexedConnection {
    connect(port)
        .await
        .unwrap_or_else(|e| panic!("connect to 127.0.0.1:{port}: {e}"))
}

async fn connect(port: u16) -> RedisResult<MultiplexedConnection> {
    redis::Client::open(format!("redis://127.0.0.1:{port}"))?
        .get_multiplexed_async_connection()
        .await
}

/// `cmd` on a fresh connection to `127.0.0.1:port`, within [`QUERY_TIMEOUT`].
///
/// A fresh connection each time: Sentinel kills the clients of a node it
/// reconfigures, and a node may be down or restarted between two calls.
pub async fn query_node<T: FromRedisValue>(port: u16, cmd: &redis::Cmd) -> RedisResult<T> {
    let run = async {
        let mut conn = connect(port).await?;
        cmd.query_async(&mut conn).await
    };
    match tokio::time::timeout(QUERY_TIMEOUT, run).await {
        Ok(answer) => answer,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("127.0.0.1:{port} did not answer within {QUERY_TIMEOUT:?}"),
        )
        .into()),
    }
}

/// `total_connections_received` of the server on `port`: every connection it
/// accepted, whether or not its TLS handshake then succeeded.
pub async fn connections_received(port: u16) -> u64 {
    info(port, "stats")
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .lines()
        .find_map(|l| l.strip_prefix("total_connections_received:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("total_connections_received")
}

/// One section of `INFO` from the node on `port`.
async fn info(port: u16, section: &str) -> Result<String, String> {
    query_node(port, redis::cmd("INFO").arg(section))
        .await
        .map_err(|e| format!("INFO {section} on {port}: {e}"))
}

/// The value of `field` in an `INFO` reply.
fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines().find_map(|line| {
        line.strip_prefix(field)
            .and_then(|rest| rest.strip_prefix(':'))
            .map(str::trim)
    })
}

/// Poll `check` every 50 ms until it gives a value. After [`MODE_DEADLINE`], print
/// `logs` and fail the test with `what` and the last reason `check` gave.
async fn wait_for<T>(
    what: &str,
    logs: &[PathBuf],
    check: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    super::poll(
        MODE_DEADLINE,
        Duration::from_millis(50),
        what,
        check,
        || print_logs(logs),
    )
    .await
}

/// Print the last [`LOG_TAIL`] lines of each log to the test's output.
fn print_logs(logs: &[PathBuf]) {
    for log in logs {
        let text = fs::read_to_string(log).unwrap_or_else(|e| format!("(unreadable: {e})"));
        let lines: Vec<&str> = text.lines().collect();
        let tail = &lines[lines.len().saturating_sub(LOG_TAIL)..];
        eprintln!("----- {} (last {} lines) -----", log.display(), tail.len());
        for line in tail {
            eprintln!("{line}");
        }
    }
}

// ---------------------------------------------------------------------------
// One redis-server process
// ---------------------------------------------------------------------------

/// One `redis-server` process on loopback, with its output in a log file and its
/// own working directory (replicas write the received snapshot there). Killed on drop.
struct Node {
    name: String,
    /// `ports[0]` is the plain port it answers on; the others (TLS, cluster bus)
    /// depend on the mode.
    ports: Vec<u16>,
    args: Vec<OsString>,
    log: PathBuf,
    child: Option<Child>,
}

impl Node {
    /// Start `redis-server` with the arguments `args(dir, ports)` gives for `count`
    /// fresh loopback ports, on new ports when another process took one first.
    /// `dir` is the node's own directory inside `parent`.
    async fn start(
        parent: &Path,
        name: &str,
        count: usize,
        mut args: impl FnMut(&Path, &[u16]) -> Vec<OsString>,
    ) -> Node {
        init_tracing();
        let dir = parent.join(name);
        fs::create_dir_all(&dir).expect("create the node's directory");
        let log = parent.join(format!("{name}.log"));
        for _ in 0..10 {
            let ports = free_ports(count);
            let argv = args(&dir, &ports);
            if let Some(child) = spawn(&argv, ports[0], &log).await {
                return Node {
                    name: name.to_owned(),
                    ports,
                    args: argv,
                    log,
                    child: Some(child),
                };
            }
        }
        print_logs(&[log]);
        panic!("redis-server ({name}) failed to start on 10 different sets of ports");
    }

    fn port(&self) -> u16 {
        self.ports[0]
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn signal(&self, sig: &str) {
        let child = self.child.as_ref().expect("a running server");
        let status = Command::new("kill")
            .arg(sig)
            .arg(child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {sig} {} failed", self.name);
    }

    /// Start the same process again, on the same ports, with the same arguments.
    async fn restart(&mut self) {
        self.kill();
        if let Ok(mut log) = OpenOptions::new().append(true).open(&self.log) {
            let _ = writeln!(log, "----- restarted by the test harness -----");
        }
        let (args, port, log) = (&self.args, self.port(), &self.log);
        let what = format!(
            "redis-server ({}) restarts on ports {:?}",
            self.name, self.ports
        );
        let child = wait_for(&what, std::slice::from_ref(log), async || {
            spawn(args, port, log)
                .await
                .ok_or_else(|| format!("port {port} not served by the new process"))
        })
        .await;
        self.child = Some(child);
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `count` distinct free loopback ports.
fn free_ports(count: usize) -> Vec<u16> {
    let mut ports = Vec::with_capacity(count);
    while ports.len() < count {
        let port = free_port();
        if !ports.contains(&port) {
            ports.push(port);
        }
    }
    ports
}

/// The arguments every data node gets: loopback only, nothing persisted.
fn base_args(dir: &Path, port: u16) -> Vec<OsString> {
    let mut args: Vec<OsString> = [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "no",
        "--dir",
    ]
    .iter()
    .map(OsString::from)
    .collect();
    args.push(dir.into());
    args
}

fn os_args(args: &[&str]) -> impl Iterator<Item = OsString> {
    args.iter()
        .map(OsString::from)
        .collect::<Vec<_>>()
        .into_iter()
}

/// Spawn `redis-server args…` with its output appended to `log`, and wait until
/// that very process answers on `port` (see [`spawn_server`]).
async fn spawn(args: &[OsString], port: u16, log: &Path) -> Option<Child> {
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("open the server log");
    let err = out.try_clone().expect("clone the log handle");
    let mut cmd = Command::new("redis-server");
    cmd.args(args).stdout(out).stderr(err);
    spawn_server(cmd, port, Duration::from_secs(10)).await
}

fn new_dir() -> TempDir {
    tempfile::Builder::new()
        .prefix("caracal-redis-")
        .tempdir()
        .expect("create a temp dir")
}

fn publisher_on(conn: MultiplexedConnection) -> Publisher {
    Publisher {
        conn,
        key: stream_key(),
    }
}

// ---------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------

/// How [`TlsRedis`] treats clients on its TLS port.
#[derive(Debug, Clone, Copy, Default)]
pub struct TlsOptions {
    /// `tls-auth-clients yes`: a client must present a certificate signed by the CA.
    /// When false (`no`), clients are not asked for one.
    pub require_client_cert: bool,
}

/// The PEM files of a [`TlsRedis`], made at test time.
struct TlsFiles {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    other_ca: PathBuf,
    other_client_cert: PathBuf,
    other_client_key: PathBuf,
}

/// A `redis-server` with a plain port (for the test's publisher and inspection) and
/// a TLS port whose certificate is signed by a CA made for this server alone.
/// Killed on drop.
pub struct TlsRedis {
    node: Node,
    files: TlsFiles,
    dir: TempDir,
}

impl TlsRedis {
    /// Make the certificates and start the server.
    pub async fn start(options: TlsOptions) -> Self {
        let dir = new_dir();
        let files = write_certs(dir.path());
        let auth = if options.require_client_cert {
            "yes"
        } else {
            "no"
        };
        let node = Node::start(dir.path(), "redis-tls", 2, |node_dir, ports| {
            let mut args = base_args(node_dir, ports[0]);
            args.extend(tls_args(&files, ports[1], &[("tls-auth-clients", auth)]));
            args
        })
        .await;
        TlsRedis { node, files, dir }
    }

    pub fn tls_port(&self) -> u16 {
        self.node.ports[1]
    }

    pub fn plain_port(&self) -> u16 {
        self.node.port()
    }

    /// `rediss://127.0.0.1:PORT`. The server certificate names `127.0.0.1` and
    /// `localhost`.
    pub fn tls_url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.tls_port())
    }

    pub fn plain_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.plain_port())
    }

    /// The CA that signed the server and client certificates.
    pub fn ca_pem(&self) -> &Path {
        &self.files.ca
    }

    /// A client certificate the server accepts (signed by [`ca_pem`](Self::ca_pem)).
    pub fn client_cert_pem(&self) -> &Path {
        &self.files.client_cert
    }

    pub fn client_key_pem(&self) -> &Path {
        &self.files.client_key
    }

    /// An unrelated CA: a client trusting only this one must refuse the server.
    pub fn other_ca_pem(&self) -> &Path {
        &self.files.other_ca
    }

    /// A client certificate signed by [`other_ca_pem`](Self::other_ca_pem): a server
    /// that requires client certificates must refuse it.
    pub fn other_client_cert_pem(&self) -> &Path {
        &self.files.other_client_cert
    }

    pub fn other_client_key_pem(&self) -> &Path {
        &self.files.other_client_key
    }

    /// SIGKILL the server: every stream is lost.
    pub fn kill(&mut self) {
        self.node.kill();
    }

    /// Start a fresh, empty server on the same ports with the same certificates.
    pub async fn restart(&mut self) {
        self.node.restart().await;
    }

    /// SIGSTOP: the ports stay open but nothing is answered until [`resume`](Self::resume).
    pub fn pause(&self) {
        self.node.signal("-STOP");
    }

    pub fn resume(&self) {
        self.node.signal("-CONT");
    }

    /// A connection over the plain port.
    pub async fn connection(&self) -> MultiplexedConnection {
        node_connection(self.plain_port()).await
    }

    /// A publisher over the plain port.
    pub async fn publisher(&self) -> Publisher {
        publisher_on(self.connection().await)
    }

    /// Print the server's log to the test's output.
    pub fn print_logs(&self) {
        print_logs(std::slice::from_ref(&self.node.log));
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("TLS redis files in {}", self.dir.path().display());
            self.print_logs();
        }
    }
}

/// The certificate settings of every TLS server of the harness: its certificate
/// and key, and the CA it trusts for the clients and peers that present one.
fn tls_files(files: &TlsFiles) -> [(&'static str, &Path); 3] {
    [
        ("tls-cert-file", &files.server_cert),
        ("tls-key-file", &files.server_key),
        ("tls-ca-cert-file", &files.ca),
    ]
}

/// Clients (and, where the server has any, replicas and Sentinels) are not asked
/// for a certificate.
const PEERS_UNAUTHENTICATED: &[(&str, &str)] = &[("tls-auth-clients", "no")];

/// The command-line arguments of a server with TLS on `port`: [`tls_files`], then
/// `settings`.
fn tls_args(files: &TlsFiles, port: u16, settings: &[(&str, &str)]) -> Vec<OsString> {
    let mut args = os_args(&["--tls-port", &port.to_string()]).collect::<Vec<_>>();
    for (name, path) in tls_files(files) {
        args.push(format!("--{name}").into());
        args.push(path.into());
    }
    for (name, value) in settings {
        args.push(format!("--{name}").into());
        args.push((*value).into());
    }
    args
}

/// Write a CA, a server certificate for `127.0.0.1` and `localhost` and a client
/// certificate signed by it, and an unrelated CA with a client certificate of its
/// own, as PEM files in `dir`.
fn write_certs(dir: &Path) -> TlsFiles {
    let write = |name: &str, pem: &str| {
        let path = dir.join(name);
        fs::write(&path, pem).expect("write a PEM file");
        path
    };
    let (ca_pem, ca) = new_ca("caracal-verifier test CA");
    let (other_ca_pem, other_ca) = new_ca("unrelated test CA");
    // A Cluster node also presents it as a client on the cluster bus, which
    // always asks for a certificate.
    let (server_cert, server_key) = new_leaf(
        &ca,
        "redis test server",
        &["127.0.0.1", "localhost"],
        &[
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
    );
    let (client_cert, client_key) = new_leaf(
        &ca,
        "caracal-verifier test client",
        &[],
        &[ExtendedKeyUsagePurpose::ClientAuth],
    );
    let (other_client_cert, other_client_key) = new_leaf(
        &other_ca,
        "client of the unrelated CA",
        &[],
        &[ExtendedKeyUsagePurpose::ClientAuth],
    );
    TlsFiles {
        ca: write("ca.pem", &ca_pem),
        server_cert: write("server.pem", &server_cert),
        server_key: write("server.key", &server_key),
        client_cert: write("client.pem", &client_cert),
        client_key: write("client.key", &client_key),
        other_ca: write("other-ca.pem", &other_ca_pem),
        other_client_cert: write("other-client.pem", &other_client_cert),
        other_client_key: write("other-client.key", &other_client_key),
    }
}

/// A self-signed CA: its PEM certificate and the issuer that signs with it.
fn new_ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate().expect("generate a CA key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key).expect("self-sign the CA");
    (cert.pem(), Issuer::new(params, key))
}

/// A certificate for `names` signed by `ca`: its PEM certificate and PEM key.
fn new_leaf(
    ca: &Issuer<'static, KeyPair>,
    common_name: &str,
    names: &[&str],
    usage: &[ExtendedKeyUsagePurpose],
) -> (String, String) {
    let key = KeyPair::generate().expect("generate a key");
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let mut params = CertificateParams::new(names).expect("certificate parameters");
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = usage.to_vec();
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, ca).expect("sign the certificate");
    (cert.pem(), key.serialize_pem())
}

// ---------------------------------------------------------------------------
// Sentinel
// ---------------------------------------------------------------------------

/// The name the sentinels monitor the primary under.
pub const MASTER_NAME: &str = "caracal";

/// A primary, one replica and three sentinels (quorum 2) on loopback. Each process
/// is killed on drop.
///
/// The data nodes run from config files, as Sentinel expects: it rewrites them when
/// it reconfigures a node. The sentinels' timings are shortened for tests (see
/// [`start`](Self::start)). Sentinel closes the clients of every node it
/// reconfigures: take a new [`publisher`](Self::publisher) after a failover.
pub struct SentinelSet {
    nodes: Vec<Node>,
    sentinels: Vec<Node>,
    /// The certificates of a set started with [`start_tls`](SentinelSet::start_tls).
    tls: Option<TlsFiles>,
    /// The port each data node is known by to Sentinel and its replicas.
    known: PortMap,
    dir: TempDir,
}

/// Each data node's plain port and the port Sentinel and replication know it by:
/// the TLS port in a TLS set, the plain port otherwise. The harness talks to the
/// plain ports.
#[derive(Clone)]
struct PortMap(Vec<(u16, u16)>);

/// The port Sentinel and replicas know a data node of a [`SentinelSet`] by: its TLS
/// port (`ports[1]`) when it has one.
fn known_port(node: &Node) -> u16 {
    node.ports.get(1).copied().unwrap_or(node.port())
}

impl PortMap {
    fn of(nodes: &[Node]) -> Self {
        PortMap(nodes.iter().map(|n| (n.port(), known_port(n))).collect())
    }

    /// The plain port of the node Sentinel or a replica names by `known`.
    fn plain(&self, known: u16) -> u16 {
        self.0
            .iter()
            .find(|(_, k)| *k == known)
            .map_or(known, |(p, _)| *p)
    }

    /// The port Sentinel and replicas know the node on `plain` by.
    fn known(&self, plain: u16) -> u16 {
        self.0
            .iter()
            .find(|(p, _)| *p == plain)
            .map_or(plain, |(_, k)| *k)
    }
}

impl SentinelSet {
    /// Start the primary and the replica, wait until the replica is in sync, then
    /// start the sentinels and wait until each knows the replica (with its link up)
    /// and the two other sentinels.
    ///
    /// `down-after-milliseconds` is 1000 and `failover-timeout` 5000. Where the
    /// server has `SENTINEL DEBUG` (7.0 and later), INFO is asked every second
    /// instead of every 10 s and hellos go out every 500 ms, so a failed-over
    /// primary is turned into a replica within seconds rather than tens of them.
    pub async fn start() -> Self {
        Self::start_with(false).await
    }

    /// The same set with TLS everywhere a client or a peer connects: each data node
    /// and sentinel also listens on a TLS port, replication and the sentinels'
    /// links to the data nodes run over TLS (`tls-replication yes`), and the
    /// sentinels monitor the TLS ports, so they name the primary by its TLS port.
    /// Clients are not asked for a certificate. The harness keeps working on the
    /// plain ports.
    pub async fn start_tls() -> Self {
        Self::start_with(true).await
    }

    async fn start_with(tls: bool) -> Self {
        let dir = new_dir();
        let files = tls.then(|| write_certs(dir.path()));
        let primary = start_data_node(dir.path(), "redis-0", None, files.as_ref()).await;
        let known_primary = known_port(&primary);
        let replica =
            start_data_node(dir.path(), "redis-1", Some(known_primary), files.as_ref()).await;
        let nodes = vec![primary, replica];
        let mut set = SentinelSet {
            known: PortMap::of(&nodes),
            nodes,
            sentinels: Vec::new(),
            tls: files,
            dir,
        };
        let (primary, replica) = (set.nodes[0].port(), set.nodes[1].port());
        let (known_primary, known_replica) = (set.known.known(primary), set.known.known(replica));
        wait_for("the replica is in sync", &set.logs(), async || {
            replica_in_sync(replica, known_primary).await
        })
        .await;

        for i in 0..3 {
            let ports = if set.tls.is_some() { 2 } else { 1 };
            let tls_conf = set.tls.as_ref().map(tls_conf);
            let sentinel = Node::start(
                set.dir.path(),
                &format!("sentinel-{i}"),
                ports,
                |dir, ports| {
                    let conf = dir.join("sentinel.conf");
                    let mut text = format!(
                        "port {port}\nbind 127.0.0.1\ndir {dir:?}\n\
                     sentinel monitor {MASTER_NAME} 127.0.0.1 {known_primary} 2\n\
                     sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
                     sentinel failover-timeout {MASTER_NAME} 5000\n\
                     sentinel parallel-syncs {MASTER_NAME} 1\n",
                        port = ports[0],
                    );
                    if let Some(tls) = &tls_conf {
                        text.push_str(&format!("tls-port {}\n{tls}", ports[1]));
                    }
                    fs::write(&conf, text).expect("write sentinel.conf");
                    vec![conf.into(), "--sentinel".into()]
                },
            )
            .await;
            // Best effort: without SENTINEL DEBUG the waits are only longer.
            let _: RedisResult<Value> = query_node(
                sentinel.port(),
                redis::cmd("SENTINEL")
                    .arg("DEBUG")
                    .arg("info-period")
                    .arg(1000)
                    .arg("publish-period")
                    .arg(500),
            )
            .await;
            set.sentinels.push(sentinel);
        }

        let logs = set.logs();
        for port in set.sentinel_ports() {
            wait_for(
                "each sentinel knows the replica and the other sentinels",
                &logs,
                async || sentinel_sees_all(port, known_replica).await,
            )
            .await;
        }
        set
    }

    /// Where the sentinels listen, for a client's configuration.
    pub fn sentinel_addrs(&self) -> Vec<(String, u16)> {
        self.sentinel_ports()
            .into_iter()
            .map(|p| ("127.0.0.1".to_owned(), p))
            .collect()
    }

    pub fn sentinel_ports(&self) -> Vec<u16> {
        self.sentinels.iter().map(Node::port).collect()
    }

    /// The sentinels' TLS ports (a set from [`start_tls`](Self::start_tls) only).
    pub fn sentinel_tls_ports(&self) -> Vec<u16> {
        assert!(self.tls.is_some(), "a set without TLS has no TLS ports");
        self.sentinels.iter().map(|n| n.ports[1]).collect()
    }

    /// The CA that signed every certificate of a TLS set.
    pub fn ca_pem(&self) -> &Path {
        &self.tls.as_ref().expect("a TLS set").ca
    }

    /// An unrelated CA: a client trusting only this one must refuse every server.
    pub fn other_ca_pem(&self) -> &Path {
        &self.tls.as_ref().expect("a TLS set").other_ca
    }

    pub fn master_name(&self) -> &str {
        MASTER_NAME
    }

    /// The data nodes' ports, primary or replica, running or killed.
    pub fn node_ports(&self) -> Vec<u16> {
        self.nodes.iter().map(Node::port).collect()
    }

    /// The primary's port, once every sentinel reports it and it reports
    /// `role:master`.
    pub async fn primary_port(&self) -> u16 {
        self.settled_primary(None).await
    }

    /// A publisher connected to the current primary.
    pub async fn publisher(&self) -> Publisher {
        publisher_on(node_connection(self.primary_port().await).await)
    }

    /// Wait until the replica has acknowledged every write the primary holds now,
    /// whichever client made it: the replica's acknowledged offset (`slave0:…,
    /// offset=` in the primary's `INFO replication`) reaches the primary's
    /// `master_repl_offset` read at the call. Replicas acknowledge every second.
    ///
    /// Not `WAIT` on a connection of its own: `WAIT` counts only the writes of the
    /// connection that sends it, so on a fresh one it returns at once. To `WAIT` for
    /// one publisher's writes, see [`wait_replicated_by`](Self::wait_replicated_by).
    pub async fn wait_replicated(&self) {
        let primary = self.primary_port().await;
        let target: u64 = info(primary, "replication")
            .await
            .ok()
            .and_then(|i| info_field(&i, "master_repl_offset")?.parse().ok())
            .unwrap_or_else(|| panic!("master_repl_offset of the primary ({primary})"));
        wait_for(
            "the replica acknowledges the primary's writes",
            &self.logs(),
            async || {
                let replication = info(primary, "replication").await?;
                let acked = info_field(&replication, "slave0").and_then(|s| {
                    s.split(',')
                        .find_map(|kv| kv.strip_prefix("offset="))
                        .and_then(|o| o.parse::<u64>().ok())
                });
                match acked {
                    Some(acked) if acked >= target => Ok(()),
                    _ => Err(format!(
                        "primary {primary} at offset {target}, replica acknowledged {acked:?}"
                    )),
                }
            },
        )
        .await;
    }

    /// `WAIT 1 5000` on `publisher`'s connection: return once the replica has
    /// acknowledged that publisher's writes, and fail the test when `WAIT` does not
    /// answer 1.
    pub async fn wait_replicated_by(&self, publisher: &mut Publisher) {
        let acked: RedisResult<i64> = redis::cmd("WAIT")
            .arg(1)
            .arg(5000)
            .query_async(&mut publisher.conn)
            .await;
        if !matches!(acked, Ok(1)) {
            self.print_logs();
            panic!("WAIT 1 5000 on the publisher's connection answered {acked:?}, not 1");
        }
    }

    /// `SENTINEL FAILOVER`, then wait until every sentinel reports the new primary,
    /// that node reports `role:master`, and the old primary reports `role:slave` of
    /// it with its link up. Returns the new primary's port.
    ///
    /// A sentinel refuses while it has no replica it deems fit (`-NOGOODSLAVE`) or
    /// another failover runs (`-INPROG`), so the command is sent until accepted.
    pub async fn failover(&self) -> u16 {
        let old = self.primary_port().await;
        let logs = self.logs();
        let sentinel = self.sentinel_ports()[0];
        wait_for("a sentinel accepts SENTINEL FAILOVER", &logs, async || {
            query_node::<Value>(
                sentinel,
                redis::cmd("SENTINEL").arg("FAILOVER").arg(MASTER_NAME),
            )
            .await
            .map(drop)
            .map_err(|e| format!("SENTINEL FAILOVER: {e}"))
        })
        .await;
        let new = self.wait_new_primary(old).await;
        wait_for(
            "the old primary replicates from the new one",
            &logs,
            async || replica_in_sync(old, self.known.known(new)).await,
        )
        .await;
        new
    }

    /// SIGKILL the primary and wait until the sentinels agree on a new one (after
    /// `down-after-milliseconds` and an election) and it reports `role:master`.
    /// Returns the new primary's port; the old one stays down until
    /// [`restart_node`](Self::restart_node).
    pub async fn kill_primary(&mut self) -> u16 {
        let old = self.primary_port().await;
        self.node_mut(old).kill();
        self.wait_new_primary(old).await
    }

    /// Start the data node on `port` again, empty, and wait until the sentinels
    /// have made it a replica of the current primary, in sync.
    pub async fn restart_node(&mut self, port: u16) {
        self.node_mut(port).restart().await;
        let sentinels = self.sentinel_ports();
        // A restarted node comes up as an empty primary, and a sentinel that had
        // not caught up may still name it for a while: wait for one view shared by
        // every sentinel, with the restarted node replicating from that primary.
        wait_for(
            "the restarted node replicates from the primary",
            &self.logs(),
            async || {
                let primary = agreed_primary(&sentinels, None, &self.known).await?;
                replica_in_sync(port, self.known.known(primary)).await
            },
        )
        .await;
    }

    /// Print every process's log to the test's output.
    pub fn print_logs(&self) {
        print_logs(&self.logs());
    }

    fn logs(&self) -> Vec<PathBuf> {
        self.nodes
            .iter()
            .chain(&self.sentinels)
            .map(|n| n.log.clone())
            .collect()
    }

    fn node_mut(&mut self, port: u16) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|n| n.port() == port)
            .unwrap_or_else(|| panic!("no data node on port {port}"))
    }

    /// SIGSTOP the data node on `port`: it keeps its sockets but answers nothing
    /// (a replica stops replicating) until [`resume_node`](Self::resume_node).
    pub fn pause_node(&mut self, port: u16) {
        self.node_mut(port).signal("-STOP");
    }

    /// SIGCONT the data node on `port`.
    pub fn resume_node(&mut self, port: u16) {
        self.node_mut(port).signal("-CONT");
    }

    /// SIGKILL the data node on `port`, without waiting for the sentinels.
    pub fn kill_node(&mut self, port: u16) {
        self.node_mut(port).kill();
    }

    /// Wait until the sentinels agree on a primary other than `old` and it reports
    /// `role:master`; returns its port.
    pub async fn wait_new_primary(&self, old: u16) -> u16 {
        self.settled_primary(Some(old)).await
    }

    /// Wait until every sentinel reports the same primary (other than `not`) and
    /// that node reports `role:master`; returns its port.
    ///
    /// One sentinel's answer is not enough: after a failover or a restart a
    /// sentinel that has not caught up names the old node for seconds.
    async fn settled_primary(&self, not: Option<u16>) -> u16 {
        let sentinels = self.sentinel_ports();
        wait_for(
            "the sentinels agree on a primary",
            &self.logs(),
            async || agreed_primary(&sentinels, not, &self.known).await,
        )
        .await
    }
}

/// The primary every sentinel on `sentinels` reports, if they agree, it is not
/// `not`, and it reports `role:master`.
async fn agreed_primary(
    sentinels: &[u16],
    not: Option<u16>,
    known: &PortMap,
) -> Result<u16, String> {
    let mut seen = Vec::new();
    for &sentinel in sentinels {
        seen.push(known.plain(sentinel_primary(sentinel).await?));
    }
    let primary = seen[0];
    if seen.iter().any(|&p| p != primary) || Some(primary) == not {
        return Err(format!("sentinels report {seen:?} (not wanted: {not:?})"));
    }
    let replication = info(primary, "replication").await?;
    match info_field(&replication, "role") {
        Some("master") => Ok(primary),
        role => Err(format!("{primary} reports role {role:?}")),
    }
}

impl Drop for SentinelSet {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_logs();
        }
    }
}

/// A data node of a [`SentinelSet`], run from its own config file (which Sentinel
/// rewrites), a replica of `primary` when given. A full sync starts at once rather
/// than after the default 5 s wait for more replicas (`repl-diskless-sync-delay`).
async fn start_data_node(
    parent: &Path,
    name: &str,
    primary: Option<u16>,
    tls: Option<&TlsFiles>,
) -> Node {
    let tls_conf = tls.map(tls_conf);
    let ports = if tls.is_some() { 2 } else { 1 };
    Node::start(parent, name, ports, |dir, ports| {
        let conf = dir.join("redis.conf");
        let mut text = format!(
            "port {}\nbind 127.0.0.1\nsave \"\"\nappendonly no\ndir {dir:?}\n\
             repl-diskless-sync-delay 0\n",
            ports[0]
        );
        if let Some(primary) = primary {
            text.push_str(&format!("replicaof 127.0.0.1 {primary}\n"));
        }
        if let Some(tls) = &tls_conf {
            text.push_str(&format!("tls-port {}\n{tls}", ports[1]));
        }
        fs::write(&conf, text).expect("write redis.conf");
        vec![conf.into()]
    })
    .await
}

/// The config lines of a TLS data node or sentinel of a [`SentinelSet`], but its
/// `tls-port`: the certificates, replication and Sentinel's links over TLS, no
/// client certificate asked for.
fn tls_conf(files: &TlsFiles) -> String {
    let settings = [&[("tls-replication", "yes")][..], PEERS_UNAUTHENTICATED].concat();
    let mut conf = String::new();
    for (name, path) in tls_files(files) {
        conf.push_str(&format!("{name} {path:?}\n"));
    }
    for (name, value) in settings {
        conf.push_str(&format!("{name} {value}\n"));
    }
    conf
}

/// `Ok` when the node on `port` is a replica of the primary known by `primary`
/// (see [`PortMap`]) with its link up.
async fn replica_in_sync(port: u16, primary: u16) -> Result<(), String> {
    let replication = info(port, "replication").await?;
    let role = info_field(&replication, "role");
    let master = info_field(&replication, "master_port");
    let link = info_field(&replication, "master_link_status");
    let primary = primary.to_string();
    if role == Some("slave") && master == Some(primary.as_str()) && link == Some("up") {
        Ok(())
    } else {
        Err(format!(
            "{port} reports role {role:?}, master_port {master:?}, link {link:?}"
        ))
    }
}

/// The primary's port as the sentinel on `port` reports it.
async fn sentinel_primary(port: u16) -> Result<u16, String> {
    let addr: Vec<String> = query_node(
        port,
        redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(MASTER_NAME),
    )
    .await
    .map_err(|e| format!("sentinel {port}: {e}"))?;
    addr.get(1)
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| format!("sentinel {port} answered {addr:?}"))
}

/// `Ok` when the sentinel on `port` knows the replica known by `replica` (not down,
/// link ok) and two other sentinels.
async fn sentinel_sees_all(port: u16, replica: u16) -> Result<(), String> {
    let replicas: Vec<Vec<String>> = query_node(
        port,
        redis::cmd("SENTINEL").arg("replicas").arg(MASTER_NAME),
    )
    .await
    .map_err(|e| format!("sentinel {port}: {e}"))?;
    let fit = replicas.iter().any(|r| {
        field(r, "port") == Some(replica.to_string().as_str())
            && field(r, "flags") == Some("slave")
            && field(r, "master-link-status") == Some("ok")
    });
    if !fit {
        return Err(format!("sentinel {port} sees replicas {replicas:?}"));
    }
    let sentinels: Vec<Vec<String>> = query_node(
        port,
        redis::cmd("SENTINEL").arg("sentinels").arg(MASTER_NAME),
    )
    .await
    .map_err(|e| format!("sentinel {port}: {e}"))?;
    if sentinels.len() == 2 {
        Ok(())
    } else {
        Err(format!(
            "sentinel {port} knows {} other sentinels",
            sentinels.len()
        ))
    }
}

/// The value of `name` in a flat `[name, value, name, value, …]` reply.
fn field<'a>(flat: &'a [String], name: &str) -> Option<&'a str> {
    flat.chunks(2)
        .find(|pair| pair[0] == name)
        .and_then(|pair| pair.get(1))
        .map(String::as_str)
}

// ---------------------------------------------------------------------------
// Cluster
// ---------------------------------------------------------------------------

/// A slot range and the port of the primary that serves it, from `CLUSTER SLOTS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct SlotRange {
    pub first: u16,
    pub last: u16,
    pub port: u16,
}

/// A slot left half-moved by [`RedisCluster::start_migration_of`].
#[derive(Debug, Clone, Copy)]
struct Migration {
    slot: u16,
    from: u16,
    to: u16,
}

/// Three primaries (no replicas) sharing the 16384 slots, made with
/// `redis-cli --cluster create`. Each process is killed on drop.
///
/// Each node gets an explicit cluster bus port (`cluster-port`), so no port has to
/// stay below 55536 for the default bus port of port + 10000.
pub struct RedisCluster {
    nodes: Vec<Node>,
    migration: Option<Migration>,
    /// The certificates of a cluster started with [`start_tls`](RedisCluster::start_tls).
    tls: Option<TlsFiles>,
    dir: TempDir,
}

impl RedisCluster {
    /// Start three cluster-enabled nodes, join them with `redis-cli --cluster create`,
    /// and wait until every node reports `cluster_state:ok` and the same slot map.
    /// [`ports`](Self::ports) then lists the primaries in slot order: 0-5460,
    /// 5461-10922, 10923-16383.
    pub async fn start() -> Self {
        Self::start_with(false).await
    }

    /// The same cluster over TLS as well: each node also has a TLS port, the cluster
    /// bus and replication run over TLS (`tls-cluster yes`), and clients are not
    /// asked for a certificate. A node names the TLS ports of its peers to a client
    /// on TLS (in `CLUSTER SLOTS` and in `-MOVED`), and the plain ports to a client
    /// on the plain port, so the harness keeps working on the plain ports. `MIGRATE`
    /// goes over TLS too, so only slots without keys can be moved.
    pub async fn start_tls() -> Self {
        Self::start_with(true).await
    }

    async fn start_with(tls: bool) -> Self {
        let dir = new_dir();
        let files = tls.then(|| write_certs(dir.path()));
        let mut nodes = Vec::new();
        for i in 0..3 {
            let ports = if tls { 3 } else { 2 };
            let node = Node::start(dir.path(), &format!("cluster-{i}"), ports, |dir, ports| {
                let mut args = base_args(dir, ports[0]);
                args.extend(os_args(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-port",
                    &ports[1].to_string(),
                    "--cluster-node-timeout",
                    "5000",
                    // A dead primary leaves the others serving their own slots.
                    "--cluster-require-full-coverage",
                    "no",
                    "--cluster-config-file",
                ]));
                args.push(dir.join(format!("nodes-{}.conf", ports[0])).into());
                if let Some(files) = &files {
                    let bus = [("tls-cluster", "yes"), ("tls-replication", "yes")];
                    args.extend(tls_args(
                        files,
                        ports[2],
                        &[&bus[..], PEERS_UNAUTHENTICATED].concat(),
                    ));
                }
                args
            })
            .await;
            nodes.push(node);
        }
        let mut cluster = RedisCluster {
            nodes,
            migration: None,
            tls: files,
            dir,
        };

        // Over TLS when the bus is: the nodes meet on the ports they announce.
        let mut create = tokio::process::Command::new("redis-cli");
        let seeds = match &cluster.tls {
            Some(files) => {
                create.arg("--tls").arg("--cacert").arg(&files.ca);
                cluster.tls_ports()
            }
            None => cluster.ports(),
        };
        let out = create
            .arg("--cluster")
            .arg("create")
            .args(seeds.iter().map(|p| format!("127.0.0.1:{p}")))
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        // redis-cli waits for the nodes to join without a limit of its own.
        let Ok(out) = tokio::time::timeout(MODE_DEADLINE, out).await else {
            cluster.print_logs();
            panic!("redis-cli --cluster create did not finish within {MODE_DEADLINE:?}");
        };
        let out = out.expect("run redis-cli --cluster create");
        if !out.status.success() {
            cluster.print_logs();
            panic!(
                "redis-cli --cluster create failed:\n{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        cluster.wait_agreement(None).await;

        // Order the nodes as their slot ranges go, whatever order redis-cli chose.
        let map = slot_map(cluster.ports()[0])
            .await
            .expect("CLUSTER SLOTS after the cluster agreed");
        cluster.nodes.sort_by_key(|n| {
            map.iter()
                .find(|r| r.port == n.port())
                .map_or(u16::MAX, |r| r.first)
        });
        cluster
    }

    /// The primaries' ports, in slot order.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(Node::port).collect()
    }

    /// The primaries' TLS ports, in the order of [`ports`](Self::ports). Only for a
    /// cluster from [`start_tls`](Self::start_tls).
    pub fn tls_ports(&self) -> Vec<u16> {
        assert!(self.tls.is_some(), "a cluster without TLS has no TLS ports");
        self.nodes.iter().map(|n| n.ports[2]).collect()
    }

    /// The TLS port of the node whose plain port is `port`.
    pub fn tls_port_of(&self, port: u16) -> u16 {
        let i = self
            .ports()
            .iter()
            .position(|p| *p == port)
            .unwrap_or_else(|| panic!("no primary on port {port}"));
        self.tls_ports()[i]
    }

    /// The CA that signed the nodes' certificates (a TLS cluster only).
    pub fn ca_pem(&self) -> &Path {
        &self.tls.as_ref().expect("a TLS cluster").ca
    }

    /// An unrelated CA: a client trusting only this one must refuse every node.
    pub fn other_ca_pem(&self) -> &Path {
        &self.tls.as_ref().expect("a TLS cluster").other_ca
    }

    /// SIGKILL the primary on `port`. It has no replica, so its slots go unserved;
    /// the other primaries keep serving theirs.
    pub fn kill_node(&mut self, port: u16) {
        self.node_mut(port).kill();
    }

    /// SIGSTOP the primary on `port`: its sockets stay open, but it answers
    /// nothing until [`resume_node`](Self::resume_node).
    pub fn pause_node(&mut self, port: u16) {
        self.node_mut(port).signal("-STOP");
    }

    /// SIGCONT the primary on `port`.
    pub fn resume_node(&mut self, port: u16) {
        self.node_mut(port).signal("-CONT");
    }

    fn node_mut(&mut self, port: u16) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|n| n.port() == port)
            .unwrap_or_else(|| panic!("no primary on port {port}"))
    }

    /// `CLUSTER KEYSLOT key`.
    pub async fn slot_of(&self, key: &str) -> u16 {
        let port = self.ports()[0];
        query_node(port, redis::cmd("CLUSTER").arg("KEYSLOT").arg(key))
            .await
            .unwrap_or_else(|e| panic!("CLUSTER KEYSLOT {key} on {port}: {e}"))
    }

    /// The port of the primary that owns `key`'s slot, from `CLUSTER SLOTS`. During
    /// a half-done migration that is still the node the slot is migrating from.
    pub async fn node_for_key(&self, key: &str) -> u16 {
        let slot = self.slot_of(key).await;
        let port = self.ports()[0];
        let map = slot_map(port)
            .await
            .unwrap_or_else(|e| panic!("CLUSTER SLOTS on {port}: {e}"));
        owner(&map, slot).unwrap_or_else(|| panic!("no node serves slot {slot}: {map:?}"))
    }

    /// A publisher connected to the node that owns `stream`'s slot. Only writes to
    /// keys in that slot succeed on it (others answer `-MOVED`).
    pub async fn publisher_for(&self, stream: &str) -> Publisher {
        publisher_on(node_connection(self.node_for_key(stream).await).await)
    }

    /// `CLUSTER MYID` of the node on `port`.
    pub async fn node_id(&self, port: u16) -> String {
        query_node(port, redis::cmd("CLUSTER").arg("MYID"))
            .await
            .unwrap_or_else(|e| panic!("CLUSTER MYID on {port}: {e}"))
    }

    /// Move `key`'s slot, with every key in it, to the primary on `to`, and wait
    /// until every node agrees. See [`start_migration_of`](Self::start_migration_of)
    /// and [`finish_migration`](Self::finish_migration).
    pub async fn move_slot_of(&mut self, key: &str, to: u16) {
        self.start_migration_of(key, to).await;
        self.finish_migration().await;
    }

    /// Begin moving `key`'s slot to the primary on `to` the standard way, and stop
    /// half-way: `CLUSTER SETSLOT <slot> IMPORTING` on the target, `MIGRATING` on
    /// the source, and every key of the slot `MIGRATE`d. The source still owns the
    /// slot and answers `-ASK` for those keys; the target serves them only after
    /// `ASKING`. Returns the slot.
    pub async fn start_migration_of(&mut self, key: &str, to: u16) -> u16 {
        assert!(
            self.migration.is_none(),
            "a migration is already under way; finish it first"
        );
        assert!(self.ports().contains(&to), "no primary on port {to}");
        let slot = self.slot_of(key).await;
        let from = self.node_for_key(key).await;
        assert_ne!(from, to, "slot {slot} of {key} is already on {to}");
        let (from_id, to_id) = (self.node_id(from).await, self.node_id(to).await);

        self.setslot(to, slot, &["IMPORTING", &from_id]).await;
        self.setslot(from, slot, &["MIGRATING", &to_id]).await;
        loop {
            let keys: Vec<String> = query_node(
                from,
                redis::cmd("CLUSTER")
                    .arg("GETKEYSINSLOT")
                    .arg(slot)
                    .arg(1000),
            )
            .await
            .unwrap_or_else(|e| panic!("CLUSTER GETKEYSINSLOT {slot} on {from}: {e}"));
            if keys.is_empty() {
                break;
            }
            let migrated: RedisResult<Value> = query_node(
                from,
                redis::cmd("MIGRATE")
                    .arg("127.0.0.1")
                    .arg(to)
                    .arg("")
                    .arg(0)
                    .arg(5000)
                    .arg("KEYS")
                    .arg(&keys),
            )
            .await;
            if let Err(e) = migrated {
                self.print_logs();
                panic!("MIGRATE of {keys:?} from {from} to {to}: {e}");
            }
        }
        self.migration = Some(Migration { slot, from, to });
        slot
    }

    /// End the migration [`start_migration_of`](Self::start_migration_of) began:
    /// `CLUSTER SETSLOT <slot> NODE <target>` on the target, the source, then the
    /// other primaries, and wait until every node agrees on the new owner.
    pub async fn finish_migration(&mut self) {
        let Migration { slot, from, to } = self
            .migration
            .take()
            .expect("no migration under way: call start_migration_of first");
        let to_id = self.node_id(to).await;
        let others = self.ports().into_iter().filter(|p| *p != from && *p != to);
        for port in [to, from].into_iter().chain(others) {
            self.setslot(port, slot, &["NODE", &to_id]).await;
        }
        self.wait_agreement(Some((slot, to))).await;
    }

    /// Wait until every node reports `cluster_state:ok`, all slots assigned, every
    /// node known, and the same slot map (with `slot` on `port`, when given).
    pub async fn wait_agreement(&self, expect: Option<(u16, u16)>) {
        let ports = self.ports();
        let n = ports.len().to_string();
        wait_for("the cluster nodes agree", &self.logs(), async || {
            let mut maps = Vec::new();
            for &port in &ports {
                let info = info_of_cluster(port).await?;
                let state = info_field(&info, "cluster_state");
                let assigned = info_field(&info, "cluster_slots_assigned");
                let known = info_field(&info, "cluster_known_nodes");
                if state != Some("ok") || assigned != Some("16384") || known != Some(n.as_str()) {
                    return Err(format!(
                        "{port}: state {state:?}, slots assigned {assigned:?}, \
                         known nodes {known:?}"
                    ));
                }
                maps.push(slot_map(port).await.map_err(|e| format!("{port}: {e}"))?);
            }
            if maps.iter().any(|m| *m != maps[0]) {
                return Err(format!("the slot maps differ: {maps:?}"));
            }
            if let Some((slot, port)) = expect {
                let at = owner(&maps[0], slot);
                if at != Some(port) {
                    return Err(format!("slot {slot} is on {at:?}, not {port}"));
                }
            }
            Ok(())
        })
        .await;
    }

    /// Print every node's log to the test's output.
    pub fn print_logs(&self) {
        print_logs(&self.logs());
    }

    fn logs(&self) -> Vec<PathBuf> {
        self.nodes.iter().map(|n| n.log.clone()).collect()
    }

    async fn setslot(&self, port: u16, slot: u16, how: &[&str]) {
        let answer: RedisResult<Value> = query_node(
            port,
            redis::cmd("CLUSTER").arg("SETSLOT").arg(slot).arg(how),
        )
        .await;
        if let Err(e) = answer {
            self.print_logs();
            panic!("CLUSTER SETSLOT {slot} {how:?} on {port}: {e}");
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("cluster files in {}", self.dir.path().display());
            self.print_logs();
        }
    }
}

async fn info_of_cluster(port: u16) -> Result<String, String> {
    query_node(port, redis::cmd("CLUSTER").arg("INFO"))
        .await
        .map_err(|e| format!("CLUSTER INFO on {port}: {e}"))
}

/// The slot map as the node on `port` sees it, sorted.
async fn slot_map(port: u16) -> RedisResult<Vec<SlotRange>> {
    let reply: Value = query_node(port, redis::cmd("CLUSTER").arg("SLOTS")).await?;
    let mut map = parse_slots(&reply).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("unexpected CLUSTER SLOTS reply: {reply:?}"),
        )
    })?;
    map.sort();
    Ok(map)
}

/// `[[first, last, [ip, port, id, …], replicas…], …]`
fn parse_slots(reply: &Value) -> Option<Vec<SlotRange>> {
    let Value::Array(ranges) = reply else {
        return None;
    };
    ranges
        .iter()
        .map(|range| {
            let Value::Array(range) = range else {
                return None;
            };
            let (Value::Int(first), Value::Int(last), Value::Array(primary)) =
                (range.first()?, range.get(1)?, range.get(2)?)
            else {
                return None;
            };
            let Value::Int(port) = primary.get(1)? else {
                return None;
            };
            Some(SlotRange {
                first: u16::try_from(*first).ok()?,
                last: u16::try_from(*last).ok()?,
                port: u16::try_from(*port).ok()?,
            })
        })
        .collect()
}

fn owner(map: &[SlotRange], slot: u16) -> Option<u16> {
    map.iter()
        .find(|r| (r.first..=r.last).contains(&slot))
        .map(|r| r.port)
}

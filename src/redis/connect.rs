//! Opening connections to the right Redis node: plain TCP, TLS (rustls) or a Unix
//! socket; the primary that the Sentinels name; the Cluster node that owns a key.
//!
//! Every connection is made here, so the feed, the replay guard and the audit emitter
//! reach Redis the same way. Discovery replies (Sentinel, `CLUSTER SLOTS`, `ROLE`) are
//! read through a [`Capped`] connection with a small budget: a misbehaving node
//! cannot make this code buffer an unbounded reply.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use ::redis::aio::MultiplexedConnection;
use ::redis::{AsyncConnectionConfig, RedisConnectionInfo, RedisError, Value};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::capped::{Capped, ReplyBudget};
use super::endpoint::{Addr, Resolved, Topology};
use super::wire::{WireConn, WireError, command};

/// The budget of a discovery reply (`SENTINEL …`, `CLUSTER SLOTS`, `ROLE`).
const DISCOVERY_REPLY: usize = 256 * 1024;
/// Slots in a Redis Cluster.
pub(crate) const SLOTS: u16 = 16384;

/// Why no connection was made.
#[derive(Debug)]
pub(crate) enum ConnectError {
    Redis(RedisError),
    /// A step took longer than the connection timeout.
    Hung,
    /// Discovery found no node to talk to (no Sentinel answered for the service, no
    /// seed answered with a slot map, or the node is not a primary).
    Discovery(&'static str),
}

impl From<RedisError> for ConnectError {
    fn from(e: RedisError) -> Self {
        ConnectError::Redis(e)
    }
}

impl From<io::Error> for ConnectError {
    fn from(e: io::Error) -> Self {
        ConnectError::Redis(e.into())
    }
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectError::Redis(e) => fmt::Display::fmt(e, f),
            ConnectError::Hung => f.write_str("no answer within the connection timeout"),
            ConnectError::Discovery(why) => f.write_str(why),
        }
    }
}

/// The byte stream under a connection.
pub(crate) enum Transport {
    Tcp(tokio::net::TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>),
    #[cfg(unix)]
    Unix(tokio::net::UnixStream),
}

macro_rules! each {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Transport::Tcp($s) => {
                let $s = Pin::new($s);
                $e
            }
            Transport::Tls($s) => {
                let $s = Pin::new(&mut **$s);
                $e
            }
            #[cfg(unix)]
            Transport::Unix($s) => {
                let $s = Pin::new($s);
                $e
            }
        }
    };
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        each!(self, s => s.poll_read(cx, buf))
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        each!(self, s => s.poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, s => s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, s => s.poll_shutdown(cx))
    }
}

/// Opens connections for one endpoint and remembers where Cluster slots live.
/// Cheap to clone; clones share the slot map.
#[derive(Clone)]
pub(crate) struct Connector {
    resolved: Arc<Resolved>,
    /// Cluster: the owner of each slot, as last learned (`CLUSTER SLOTS` or `MOVED`).
    /// The slots of one node share its address.
    slots: Arc<Mutex<HashMap<u16, Owner>>>,
    /// Cluster: held while the slot map is read from the seeds, so that callers
    /// missing a slot at the same time wait for one answer instead of each asking.
    refreshing: Arc<tokio::sync::Mutex<()>>,
    /// Where the next discovery starts, so a dead first Sentinel or seed is not
    /// always asked first.
    rotate: Arc<AtomicUsize>,
    /// Sentinel: the connection to the Sentinel that answered last, kept for the
    /// feed's periodic "is this still the primary?" question.
    sentinel: Arc<Mutex<Option<Kept>>>,
    timeout: Duration,
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connector")
            .field("topology", &self.resolved.topology)
            .field("tls", &self.resolved.tls.is_some())
            .finish_non_exhaustive()
    }
}

/// A slot's primary: host and port, shared by the slots of one node.
type Owner = Arc<(String, u16)>;
/// A kept Sentinel connection and the budget of its replies.
type Kept = (MultiplexedConnection, Arc<ReplyBudget>);
/// A `CLUSTER SLOTS` range: first slot, last slot, primary's host and port.
type SlotRange = (u16, u16, (String, u16));

/// What discovery asks a Sentinel or a Cluster seed.
#[derive(Debug, Clone, Copy)]
enum Question<'a> {
    /// `SENTINEL GET-MASTER-ADDR-BY-NAME <service>`.
    Primary(&'a str),
    /// `CLUSTER SLOTS`.
    Slots,
}

/// A discovery answer.
enum Answer {
    Primary(String, u16),
    Slots(Vec<SlotRange>),
}

/// A connection and the node it reaches.
pub(crate) struct NodeConn {
    pub(crate) conn: MultiplexedConnection,
    pub(crate) addr: Addr,
}

impl Connector {
    /// A connector whose every step (TCP, TLS, `HELLO`, discovery) takes at most
    /// `timeout`.
    pub(crate) fn new(resolved: Resolved, timeout: Duration) -> Self {
        Self {
            resolved: Arc::new(resolved),
            slots: Arc::default(),
            refreshing: Arc::default(),
            rotate: Arc::default(),
            sentinel: Arc::default(),
            timeout,
        }
    }

    /// The same endpoint, each step bounded by `timeout`.
    pub(crate) fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub(crate) fn is_cluster(&self) -> bool {
        self.resolved.is_cluster()
    }

    /// The data node to send commands on `key` to: the standalone server, the
    /// primary the Sentinels name (checked with `ROLE`), or the Cluster node that
    /// owns the key's slot. `budget`, when given, counts the bytes of every reply on
    /// the returned connection.
    pub(crate) async fn primary_for(
        &self,
        key: &[u8],
        config: AsyncConnectionConfig,
        budget: Option<Arc<ReplyBudget>>,
    ) -> Result<NodeConn, ConnectError> {
        let addr = match &self.resolved.topology {
            Topology::Standalone(addr) => addr.clone(),
            Topology::Sentinel { nodes, service } => {
                let addr = self.ask_sentinels(nodes, service).await?;
                let node = self
                    .open(&addr, &self.resolved.node, config, budget)
                    .await?;
                return self.checked_primary(node).await;
            }
            Topology::Cluster { .. } => self
                .cluster_owner(key)
                .await?
                .ok_or(ConnectError::Discovery("no Cluster node serves the slot"))?,
        };
        self.open(&addr, &self.resolved.node, config, budget).await
    }

    /// The Cluster node that owns `key`'s slot, asking the seeds when the slot map
    /// does not say; `None` outside Cluster mode.
    pub(crate) async fn cluster_owner(&self, key: &[u8]) -> Result<Option<Addr>, ConnectError> {
        let Topology::Cluster { seeds } = &self.resolved.topology else {
            return Ok(None);
        };
        let slot = key_slot(key);
        if let Some((h, p)) = self.slot_owner(slot) {
            return Ok(Some(Addr::Tcp(h, p)));
        }
        let _refreshing = self.refreshing.lock().await;
        if let Some((h, p)) = self.slot_owner(slot) {
            return Ok(Some(Addr::Tcp(h, p)));
        }
        self.refresh_slots(seeds).await?;
        let (h, p) = self
            .slot_owner(slot)
            .ok_or(ConnectError::Discovery("no Cluster node serves the slot"))?;
        Ok(Some(Addr::Tcp(h, p)))
    }

    /// A connection to a node named by a redirection (`MOVED`/`ASK`).
    pub(crate) async fn node(
        &self,
        host: &str,
        port: u16,
        config: AsyncConnectionConfig,
        budget: Option<Arc<ReplyBudget>>,
    ) -> Result<NodeConn, ConnectError> {
        let addr = Addr::Tcp(host.to_owned(), port);
        self.open(&addr, &self.resolved.node, config, budget).await
    }

    /// A connection to the data node at `addr`.
    pub(crate) async fn node_at(
        &self,
        addr: &Addr,
        config: AsyncConnectionConfig,
    ) -> Result<NodeConn, ConnectError> {
        self.open(addr, &self.resolved.node, config, None).await
    }

    /// The Cluster node the slot map names for `key`, without asking anyone; `None`
    /// outside Cluster mode or when the slot map does not say.
    pub(crate) fn known_owner(&self, key: &[u8]) -> Option<Addr> {
        if !self.is_cluster() {
            return None;
        }
        self.slot_owner(key_slot(key)).map(|(h, p)| Addr::Tcp(h, p))
    }

    /// Record a `MOVED`: the slot of `key` now lives at `host:port`.
    pub(crate) fn moved(&self, key: &[u8], host: &str, port: u16) {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.insert(key_slot(key), Arc::new((host.to_owned(), port)));
    }

    /// Forget the slots the map gives to `node` (after it stopped answering), so
    /// that only its keys ask the seeds again.
    pub(crate) fn forget_slots_of(&self, node: &Addr) {
        let Addr::Tcp(host, port) = node else { return };
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.retain(|_, owner| owner.0 != *host || owner.1 != *port);
    }

    /// Forget the slot map (after a node stopped answering), so the next connection
    /// asks the seeds again.
    pub(crate) fn forget_slots(&self) {
        self.slots.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    fn slot_owner(&self, slot: u16) -> Option<(String, u16)> {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.get(&slot).map(|owner| (**owner).clone())
    }

    fn start_index(&self, n: usize) -> usize {
        self.rotate.fetch_add(1, Ordering::Relaxed) % n.max(1)
    }

    /// In Sentinel mode, the primary the Sentinels name now; `None` in other modes.
    pub(crate) async fn sentinel_primary(&self) -> Result<Option<Addr>, ConnectError> {
        match &self.resolved.topology {
            Topology::Sentinel { nodes, service } => {
                self.ask_sentinels(nodes, service).await.map(Some)
            }
            _ => Ok(None),
        }
    }

    async fn ask(
        &self,
        conn: &mut MultiplexedConnection,
        budget: &ReplyBudget,
        service: &str,
    ) -> Result<(String, u16), ConnectError> {
        budget.arm(DISCOVERY_REPLY);
        let mut cmd = ::redis::cmd("SENTINEL");
        cmd.arg("GET-MASTER-ADDR-BY-NAME").arg(service);
        let v = self.within(cmd.query_async::<Value>(conn)).await?;
        host_and_port(&v).ok_or(ConnectError::Discovery(
            "the Sentinel does not know the service",
        ))
    }

    /// Ask the Sentinel that answered last, then each Sentinel in turn, for the
    /// primary of `service`; the first answer wins.
    async fn ask_sentinels(
        &self,
        nodes: &[(String, u16)],
        service: &str,
    ) -> Result<Addr, ConnectError> {
        let kept = self
            .sentinel
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some((mut conn, budget)) = kept
            && let Ok((h, p)) = self.ask(&mut conn, &budget, service).await
        {
            *self.sentinel.lock().unwrap_or_else(|p| p.into_inner()) = Some((conn, budget));
            return Ok(Addr::Tcp(h, p));
        }
        let (answer, kept) = self.first_answer(nodes, Question::Primary(service)).await?;
        let Answer::Primary(host, port) = answer else {
            unreachable!("a Sentinel question has a primary for its answer")
        };
        *self.sentinel.lock().unwrap_or_else(|p| p.into_inner()) = Some(kept);
        Ok(Addr::Tcp(host, port))
    }

    /// The node must say it is a primary: a Sentinel that has not yet seen a failover
    /// may name a demoted node, whose streams stop receiving writes.
    async fn checked_primary(&self, mut node: NodeConn) -> Result<NodeConn, ConnectError> {
        let v = self
            .within(::redis::cmd("ROLE").query_async::<Value>(&mut node.conn))
            .await?;
        let role = match &v {
            Value::Array(items) => items.first().and_then(text),
            _ => None,
        };
        if role.as_deref() == Some("master") {
            Ok(node)
        } else {
            Err(ConnectError::Discovery(
                "the node the Sentinels named is not a primary (yet)",
            ))
        }
    }

    /// Ask the seeds for the slot map (`CLUSTER SLOTS`) and remember the primaries.
    async fn refresh_slots(&self, seeds: &[(String, u16)]) -> Result<(), ConnectError> {
        let (answer, _) = self.first_answer(seeds, Question::Slots).await?;
        let Answer::Slots(map) = answer else {
            unreachable!("a slot-map question has a slot map for its answer")
        };
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.clear();
        // `parse_slots` refused overlapping ranges: at most 16384 inserts.
        for (start, end, owner) in map {
            let owner = Arc::new(owner);
            for slot in start..=end {
                slots.insert(slot, Arc::clone(&owner));
            }
        }
        Ok(())
    }

    /// Ask each of `nodes` in turn, from a rotating start (so a dead first node is
    /// not always asked first), on a new connection whose replies are bounded; the
    /// first answer wins and comes with its connection.
    async fn first_answer(
        &self,
        nodes: &[(String, u16)],
        question: Question<'_>,
    ) -> Result<(Answer, Kept), ConnectError> {
        let (info, none) = match question {
            Question::Primary(_) => (
                &self.resolved.sentinel,
                "no Sentinel named a primary for the service",
            ),
            Question::Slots => (
                &self.resolved.node,
                "no Cluster seed answered with a slot map",
            ),
        };
        let first = self.start_index(nodes.len());
        let mut last = ConnectError::Discovery(none);
        for i in 0..nodes.len() {
            let (host, port) = &nodes[(first + i) % nodes.len()];
            let addr = Addr::Tcp(host.clone(), *port);
            let budget = Arc::new(ReplyBudget::default());
            let failed = match self
                .open(&addr, info, self.config(), Some(budget.clone()))
                .await
            {
                Ok(mut node) => match self.answer(&mut node.conn, &budget, host, question).await {
                    Ok(answer) => return Ok((answer, (node.conn, budget))),
                    Err(e) => e,
                },
                Err(e) => e,
            };
            tracing::debug!(node = %addr, error = %failed, "{none}: this node did not answer");
            last = failed;
        }
        Err(last)
    }

    /// One discovery question to the node behind `conn` (`host` is its address,
    /// which an empty host in `CLUSTER SLOTS` stands for).
    async fn answer(
        &self,
        conn: &mut MultiplexedConnection,
        budget: &ReplyBudget,
        host: &str,
        question: Question<'_>,
    ) -> Result<Answer, ConnectError> {
        match question {
            Question::Primary(service) => {
                let (h, p) = self.ask(conn, budget, service).await?;
                Ok(Answer::Primary(h, p))
            }
            Question::Slots => {
                budget.arm(DISCOVERY_REPLY);
                let v = self
                    .within(
                        ::redis::cmd("CLUSTER")
                            .arg("SLOTS")
                            .query_async::<Value>(conn),
                    )
                    .await?;
                parse_slots(&v, host)
                    .map(Answer::Slots)
                    .ok_or(ConnectError::Discovery(
                        "the Cluster seed answered CLUSTER SLOTS with no usable map",
                    ))
            }
        }
    }

    fn config(&self) -> AsyncConnectionConfig {
        AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
    }

    async fn within<T, E>(
        &self,
        step: impl Future<Output = Result<T, E>>,
    ) -> Result<T, ConnectError>
    where
        ConnectError: From<E>,
    {
        match tokio::time::timeout(self.timeout, step).await {
            Ok(r) => r.map_err(ConnectError::from),
            Err(_) => Err(ConnectError::Hung),
        }
    }

    /// TCP (then TLS when the endpoint uses it) or a Unix socket, then the `redis`
    /// crate's handshake (`HELLO`, `AUTH`, `SELECT`), driven on the current runtime.
    async fn open(
        &self,
        addr: &Addr,
        info: &RedisConnectionInfo,
        config: AsyncConnectionConfig,
        budget: Option<Arc<ReplyBudget>>,
    ) -> Result<NodeConn, ConnectError> {
        let transport = self.transport(addr).await?;
        let conn = match budget {
            Some(b) => {
                b.arm(DISCOVERY_REPLY);
                self.handshake(info, Capped::new(transport, b), config)
                    .await?
            }
            None => self.handshake(info, transport, config).await?,
        };
        Ok(NodeConn {
            conn,
            addr: addr.clone(),
        })
    }

    /// A second connection to the data node at `addr` for bulk reads, read with
    /// [`super::wire`]: authenticated and on the database the endpoint names, in
    /// RESP2. Each step takes at most this connector's timeout.
    pub(crate) async fn wire_at(&self, addr: &Addr) -> Result<WireConn, WireError> {
        let transport = self.transport(addr).await.map_err(|_| WireError::Io)?;
        let mut conn = WireConn::new(transport);
        let info = &self.resolved.node;
        let mut steps: Vec<Vec<u8>> = Vec::new();
        match (info.username(), info.password()) {
            (Some(user), Some(pass)) => {
                steps.push(command(&[b"AUTH", user.as_bytes(), pass.as_bytes()]));
            }
            (None, Some(pass)) => steps.push(command(&[b"AUTH", pass.as_bytes()])),
            _ => {}
        }
        if info.db() != 0 {
            steps.push(command(&[b"SELECT", info.db().to_string().as_bytes()]));
        }
        for step in &steps {
            tokio::time::timeout(self.timeout, conn.query(step, DISCOVERY_REPLY))
                .await
                .map_err(|_| WireError::Io)??;
        }
        Ok(conn)
    }

    /// TCP (then TLS when the endpoint uses it) or a Unix socket to `addr`.
    async fn transport(&self, addr: &Addr) -> Result<Transport, ConnectError> {
        Ok(match addr {
            Addr::Tcp(host, port) => {
                let tcp = self
                    .within(tokio::net::TcpStream::connect((host.as_str(), *port)))
                    .await?;
                let _ = tcp.set_nodelay(true);
                match &self.resolved.tls {
                    None => Transport::Tcp(tcp),
                    Some(tls) => {
                        let name =
                            rustls_pki_types::ServerName::try_from(host.clone()).map_err(|_| {
                                ConnectError::Discovery("the host is not a valid TLS name")
                            })?;
                        let connector = tokio_rustls::TlsConnector::from(tls.clone());
                        let stream = self.within(connector.connect(name, tcp)).await?;
                        Transport::Tls(Box::new(stream))
                    }
                }
            }
            #[cfg(unix)]
            Addr::Unix(path) => {
                Transport::Unix(self.within(tokio::net::UnixStream::connect(path)).await?)
            }
        })
    }

    async fn handshake<S>(
        &self,
        info: &RedisConnectionInfo,
        stream: S,
        config: AsyncConnectionConfig,
    ) -> Result<MultiplexedConnection, ConnectError>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (conn, driver) = self
            .within(MultiplexedConnection::new_with_config(info, stream, config))
            .await?;
        tokio::spawn(driver);
        Ok(conn)
    }
}

/// A Cluster redirection: `-MOVED <slot> <host>:<port>` or `-ASK …`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Redirect {
    pub(crate) ask: bool,
    /// The node's host; empty when the node did not say (then it is the host of
    /// the node that answered, as `CLUSTER SLOTS` means by an empty host).
    pub(crate) host: String,
    pub(crate) port: u16,
}

/// A pipeline's error as the error of the first command that failed. The `redis`
/// crate reports a failed pipeline as a list of errors without a detail, so a
/// redirection or a missing key after `ASKING` would not read as one.
pub(crate) fn first_server_error(e: RedisError) -> RedisError {
    match e.clone().into_server_errors() {
        Some(failed) => failed
            .first()
            .map_or(e, |(_, first)| RedisError::from(first.clone())),
        None => e,
    }
}

impl Redirect {
    /// The redirection `e` carries, if any.
    pub(crate) fn of(e: &RedisError) -> Option<Redirect> {
        let (addr, _slot) = e.redirect_node()?;
        let ask = matches!(
            e.kind(),
            ::redis::ErrorKind::Server(::redis::ServerErrorKind::Ask)
        );
        let (host, port) = addr.rsplit_once(':')?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = port.parse().ok().filter(|p: &u16| *p != 0)?;
        let host = if host == "?" { "" } else { host };
        if host.len() > MAX_HOST_LEN {
            return None;
        }
        Some(Redirect {
            ask,
            host: host.to_owned(),
            port,
        })
    }

    /// The address, with an unnamed host taken from `answered`.
    pub(crate) fn addr(&self, answered: &Addr) -> Addr {
        match (self.host.is_empty(), answered) {
            (true, Addr::Tcp(h, _)) => Addr::Tcp(h.clone(), self.port),
            _ => Addr::Tcp(self.host.clone(), self.port),
        }
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        _ => None,
    }
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        other => text(other)?.parse().ok(),
    }
}

/// `[host, port]` from `SENTINEL GET-MASTER-ADDR-BY-NAME`; `None` for nil (unknown
/// service) or anything else.
fn host_and_port(v: &Value) -> Option<(String, u16)> {
    let Value::Array(items) = v else { return None };
    let [h, p] = items.as_slice() else {
        return None;
    };
    let host = text(h).filter(|h| !h.is_empty() && h.len() <= 255)?;
    let port = u16::try_from(int(p)?).ok().filter(|p| *p != 0)?;
    Some((host, port))
}

/// The longest host name a slot map or a redirection may name (DNS's limit).
const MAX_HOST_LEN: usize = 255;

/// The primaries of a `CLUSTER SLOTS` reply: `(first slot, last slot, (host, port))`.
/// An empty host means the node we asked (`seed_host`). A reply whose ranges
/// overlap, or that names a host longer than a DNS name, is refused: building the
/// map costs at most one insert per slot.
fn parse_slots(v: &Value, seed_host: &str) -> Option<Vec<SlotRange>> {
    let Value::Array(ranges) = v else { return None };
    if ranges.len() > usize::from(SLOTS) {
        return None;
    }
    let mut covered = vec![false; usize::from(SLOTS)];
    let mut out = Vec::with_capacity(ranges.len());
    for range in ranges {
        let Value::Array(parts) = range else {
            return None;
        };
        let start = u16::try_from(int(parts.first()?)?).ok()?;
        let end = u16::try_from(int(parts.get(1)?)?).ok()?;
        if start > end || end >= SLOTS {
            return None;
        }
        let span = &mut covered[usize::from(start)..=usize::from(end)];
        if span.iter().any(|c| *c) {
            return None;
        }
        span.fill(true);
        let Value::Array(primary) = parts.get(2)? else {
            return None;
        };
        let host = text(primary.first()?).filter(|h| h.len() <= MAX_HOST_LEN)?;
        let host = if host.is_empty() || host == "?" {
            seed_host.to_owned()
        } else {
            host
        };
        let port = u16::try_from(int(primary.get(1)?)?)
            .ok()
            .filter(|p| *p != 0)?;
        out.push((start, end, (host, port)));
    }
    (!out.is_empty()).then_some(out)
}

/// The Cluster slot of `key`: CRC16 (XMODEM) of the key, or of its first non-empty
/// `{hash tag}`, modulo 16384.
pub(crate) fn key_slot(key: &[u8]) -> u16 {
    let hashed = match key.iter().position(|&b| b == b'{') {
        Some(open) => match key[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    };
    crc16(hashed) % SLOTS
}

fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_slots_match_redis() {
        // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"bar"), 5061);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(key_slot(b"foo{}{bar}"), key_slot(b"foo{}{bar}"));
        assert_eq!(key_slot(b"foo{}{bar}"), crc16(b"foo{}{bar}") % SLOTS);
        assert_eq!(key_slot(b"foo{{bar}}zap"), key_slot(b"{bar"));
    }

    fn server_error(reply: &[u8]) -> RedisError {
        ::redis::parse_redis_value(reply)
            .unwrap()
            .extract_error()
            .unwrap_err()
    }

    #[test]
    fn redirections_name_host_and_port() {
        let moved = Redirect::of(&server_error(b"-MOVED 3999 10.0.0.7:6381\r\n")).unwrap();
        assert_eq!(
            moved,
            Redirect {
                ask: false,
                host: "10.0.0.7".into(),
                port: 6381
            }
        );
        let ask = Redirect::of(&server_error(b"-ASK 3999 :7002\r\n")).unwrap();
        assert!(ask.ask);
        let answered = Addr::Tcp("node-b".into(), 7000);
        assert_eq!(ask.addr(&answered), Addr::Tcp("node-b".into(), 7002));
        let v6 = Redirect::of(&server_error(b"-MOVED 1 [::1]:7003\r\n")).unwrap();
        assert_eq!(v6.host, "::1");
        for not_one in [
            &b"-MOVED 1 nohostport\r\n"[..],
            b"-MOVED 1 h:0\r\n",
            b"-ERR MOVED 1 h:1\r\n",
            b"-READONLY You can't write against a read only replica.\r\n",
        ] {
            assert_eq!(Redirect::of(&server_error(not_one)), None);
        }
    }

    #[test]
    fn discovery_replies_are_checked() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        assert_eq!(
            host_and_port(&Value::Array(vec![bulk("10.0.0.5"), bulk("6380")])),
            Some(("10.0.0.5".into(), 6380))
        );
        assert_eq!(host_and_port(&Value::Nil), None);
        assert_eq!(
            host_and_port(&Value::Array(vec![bulk("h"), bulk("99999")])),
            None
        );
        let range = |a: i64, b: i64, host: &str, port: i64| {
            Value::Array(vec![
                Value::Int(a),
                Value::Int(b),
                Value::Array(vec![bulk(host), Value::Int(port), bulk("id")]),
            ])
        };
        let map = parse_slots(
            &Value::Array(vec![
                range(0, 5460, "", 7000),
                range(5461, 16383, "b", 7001),
            ]),
            "seed",
        )
        .unwrap();
        assert_eq!(map[0], (0, 5460, ("seed".into(), 7000)));
        assert_eq!(map[1], (5461, 16383, ("b".into(), 7001)));
        assert!(parse_slots(&Value::Array(vec![range(0, 16384, "a", 1)]), "s").is_none());
        assert!(parse_slots(&Value::Array(vec![range(9, 3, "a", 1)]), "s").is_none());
        assert!(parse_slots(&Value::Array(vec![]), "s").is_none());

        // Hostile maps: each would cost a copy of the host per slot, or one insert
        // per slot for every overlapping range.
        let long = "h".repeat(MAX_HOST_LEN + 1);
        assert!(parse_slots(&Value::Array(vec![range(0, 16383, &long, 1)]), "s").is_none());
        let fits = "h".repeat(MAX_HOST_LEN);
        assert!(parse_slots(&Value::Array(vec![range(0, 16383, &fits, 1)]), "s").is_some());
        let overlapping = vec![range(0, 16383, "a", 1); 7000];
        assert!(parse_slots(&Value::Array(overlapping), "s").is_none());
        let touching = vec![range(0, 100, "a", 1), range(100, 200, "b", 2)];
        assert!(parse_slots(&Value::Array(touching), "s").is_none());
    }

    #[test]
    fn the_slot_map_forgets_one_nodes_slots() {
        let endpoint = super::super::endpoint::RedisEndpoint::new("redis+cluster://a:1,b:2");
        let connector = Connector::new(endpoint.resolve().unwrap(), Duration::from_secs(1));
        connector.moved(b"x", "a", 1);
        connector.moved(b"y", "b", 2);
        assert_eq!(connector.known_owner(b"x"), Some(Addr::Tcp("a".into(), 1)));
        connector.forget_slots_of(&Addr::Tcp("a".into(), 1));
        assert_eq!(connector.known_owner(b"x"), None);
        assert_eq!(connector.known_owner(b"y"), Some(Addr::Tcp("b".into(), 2)));
    }
}

//! The node: wires identity, config, audit log, Lightning, tunnel, network and market together
//! and owns their tasks. [`Node::start`] returns a [`NodeHandle`]; [`NodeHandle::shutdown`]
//! stops everything and waits for it. Signals and the control API are the caller's business
//! (the `leasewire` binary), so tests can run several nodes in one process.
//!
//! Start-up, step by step:
//! 1. [`DaemonLock::acquire`]: one node per data dir (before anything in it is touched);
//! 2. [`Backends::from_config`] (or a test's own backends): LND and the tunnel backend;
//! 3. [`Node::start`]: node key, sled and the audit log, the market topic (slow KDF, off the
//!    runtime), the Lightning node's network check, the WireGuard key, the libp2p event loop,
//!    the provider and/or renter with their periodic tasks, and the inbound dispatcher
//!    ([`dispatch`]).
//!
//! Shutdown cancels every task, waits for them (and for inbound handlers still answering),
//! removes suspended leases' tunnels, logs `node_stopped` and flushes the log and database.

use std::fs::TryLockError;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use libp2p::{Multiaddr, PeerId};
use serde_json::json;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub mod config;
mod dispatch;
mod tasks;

use tasks::{announce_loop, discovery_loop, periodic, read_secret};

use crate::audit::{AuditKind, AuditLog};
use crate::config::{Config, ConfigError};
use crate::datadir::DataDir;
use crate::identity::{Identity, WgKeyPair};
use crate::lightning::LightningNode;
use crate::market::offers::{self, OfferCache};
use crate::market::provider::{Provider, ProviderParams};
use crate::market::renter::{Renter, RenterParams};
use crate::market::{MarketError, Peers};
use crate::net::{self, NetClient, NetConfig};
use crate::tunnel::Tunnel;
use crate::tunnel::config::TunnelBackendKind;
use crate::tunnel::file::FileTunnel;
use crate::tunnel::wireguard::WireGuardTunnel;
use crate::types::{Clock, SystemClock};
use crate::wire::Message;
use config::Role;

/// How long [`NodeHandle::shutdown`] waits for the node's tasks before it goes on without them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Errors that stop the node (at start-up, mostly). Each names what to fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// Another daemon holds this data dir.
    #[error("another leasewire daemon is running for {0}")]
    Locked(PathBuf),
    /// Configuration problem.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Identity problem.
    #[error(transparent)]
    Identity(#[from] crate::identity::IdentityError),
    /// Database problem.
    #[error("database {path}: {reason}")]
    Db {
        /// Database dir.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Audit log problem.
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
    /// Lightning node problem.
    #[error("lightning node: {0}")]
    Lightning(#[from] crate::lightning::LightningError),
    /// The LN node is on another network than configured.
    #[error("the Lightning node runs on {got}, but lightning.network is {expected}")]
    WrongNetwork {
        /// Configured.
        expected: String,
        /// Reported by the node.
        got: String,
    },
    /// Network layer problem.
    #[error("network: {0}")]
    Net(#[from] crate::net::NetError),
    /// Market problem.
    #[error(transparent)]
    Market(#[from] MarketError),
    /// Anything else, with context.
    #[error("{0}")]
    Other(String),
}

/// Exclusive ownership of a data dir: a lock on `D/daemon.lock` (the standard library's
/// `File::try_lock`, an advisory `flock` on Unix), held until this value is dropped.
///
/// Taken before anything in the data dir is opened, so a second daemon changes nothing.
#[derive(Debug)]
pub struct DaemonLock {
    data_dir: DataDir,
    // Never read: holding the open file is what holds the lock.
    _file: std::fs::File,
}

impl DaemonLock {
    /// Locks `data_dir`.
    ///
    /// Errors: [`NodeError::Locked`] if another process (or node) holds it,
    /// [`NodeError::Other`] if the lock file cannot be opened or locked.
    pub fn acquire(data_dir: &DataDir) -> Result<DaemonLock, NodeError> {
        let path = data_dir.lock_file();
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| NodeError::Other(format!("cannot open {}: {e}", path.display())))?;
        match file.try_lock() {
            Ok(()) => Ok(DaemonLock {
                data_dir: data_dir.clone(),
                _file: file,
            }),
            Err(TryLockError::WouldBlock) => Err(NodeError::Locked(data_dir.root().to_owned())),
            Err(TryLockError::Error(e)) => Err(NodeError::Other(format!(
                "cannot lock {}: {e}",
                path.display()
            ))),
        }
    }

    /// The locked data dir.
    pub fn data_dir(&self) -> &DataDir {
        &self.data_dir
    }
}

/// What the node talks to outside itself: built from the config by [`Backends::from_config`]
/// in the daemon, or by hand in tests (in-memory Lightning, file tunnels).
#[derive(Clone)]
pub struct Backends {
    /// The Lightning node the node pays from or is paid to.
    pub lightning: Arc<dyn LightningNode>,
    /// The tunnel backend.
    pub tunnel: Arc<dyn Tunnel>,
    /// Where market time comes from: [`SystemClock`] in the daemon, a
    /// [`ManualClock`](crate::types::ManualClock) in tests that move time on.
    pub clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Backends {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backends")
            .field("tunnel", &self.tunnel.kind())
            .finish_non_exhaustive()
    }
}

impl Backends {
    /// Connects to LND as `[lightning]` says and opens the `[tunnel]` backend (the file
    /// backend keeps its state in `D/tunnel`).
    ///
    /// Errors: [`NodeError::Lightning`] if LND cannot be reached or its credentials are bad,
    /// [`NodeError::Other`] if the tunnel backend cannot start.
    pub async fn from_config(cfg: &Config, data_dir: &DataDir) -> Result<Backends, NodeError> {
        let (ln, source) =
            crate::lightning::connect::connect_from_config(&cfg.lightning, data_dir.root()).await?;
        tracing::info!(%source, "connecting to Lightning node");
        let tunnel: Arc<dyn Tunnel> = match cfg.tunnel.backend {
            TunnelBackendKind::File => Arc::new(
                FileTunnel::new(data_dir.tunnel_dir())
                    .map_err(|e| NodeError::Other(format!("tunnel backend: {e}")))?,
            ),
            TunnelBackendKind::Wireguard => Arc::new(
                WireGuardTunnel::new()
                    .await
                    .map_err(|e| NodeError::Other(format!("tunnel backend: {e}")))?,
            ),
        };
        Ok(Backends {
            lightning: Arc::new(ln),
            tunnel,
            clock: Arc::new(SystemClock),
        })
    }
}

/// The network seen through the market's [`Peers`] trait.
struct NetPeers(NetClient);

#[async_trait::async_trait]
impl Peers for NetPeers {
    async fn find_providers(&self) -> Result<Vec<PeerId>, MarketError> {
        Ok(self
            .0
            .find_providers()
            .await
            .map_err(|e| MarketError::Net(e.to_string()))?
            .into_iter()
            .collect())
    }

    async fn find_providers_each(
        &self,
        progress: tokio::sync::mpsc::UnboundedSender<PeerId>,
    ) -> Result<Vec<PeerId>, MarketError> {
        Ok(self
            .0
            .find_providers_each(progress)
            .await
            .map_err(|e| MarketError::Net(e.to_string()))?
            .into_iter()
            .collect())
    }

    async fn request(
        &self,
        peer: PeerId,
        msg: Message,
    ) -> Result<(Message, Duration), MarketError> {
        self.0
            .request(peer, msg)
            .await
            .map_err(|e| MarketError::Net(e.to_string()))
    }
}

/// Where to link renter wg-quick files: /etc/wireguard when configured, running as root and
/// the directory is writable.
fn etc_wireguard(cfg: &Config) -> Option<PathBuf> {
    let dir = Path::new("/etc/wireguard");
    // SAFETY: geteuid and access have no preconditions; the path is a valid C string.
    let root = unsafe { libc::geteuid() } == 0;
    let writable = unsafe { libc::access(c"/etc/wireguard".as_ptr(), libc::W_OK) } == 0;
    (cfg.tunnel.link_etc_wireguard && root && dir.is_dir() && writable).then(|| dir.to_owned())
}

fn parse_addrs(v: &[String]) -> Result<Vec<Multiaddr>, NodeError> {
    v.iter()
        .map(|a| {
            a.parse()
                .map_err(|e| NodeError::Other(format!("bad multiaddr {a}: {e}")))
        })
        .collect()
}

/// Starts nodes; see [`Node::start`].
#[derive(Debug)]
pub struct Node;

impl Node {
    /// Starts a node on the locked data dir with `config` and `backends`, and returns once
    /// every task runs. The node runs until [`NodeHandle::shutdown`].
    ///
    /// Errors: whatever stops the start ([`NodeError`] names it); tasks already started are
    /// cancelled when the error is returned.
    pub async fn start(
        lock: DaemonLock,
        config: Config,
        backends: Backends,
    ) -> Result<NodeHandle, NodeError> {
        let cfg = config;
        let data_dir = lock.data_dir().clone();
        let identity = Identity::load(data_dir.root())?;
        tracing::info!(peer_id = %identity.peer_id, data_dir = %data_dir.root().display(), "starting leasewire daemon");

        let db_dir = data_dir.db();
        let db = crate::datadir::open_db(&db_dir).map_err(|e| NodeError::Db {
            path: db_dir.clone(),
            reason: e.to_string(),
        })?;
        // The latest signed tree head is kept beside the database, where deleting sled
        // entries cannot remove it (`audit verify` checks the log against it).
        let audit = AuditLog::open_keeping_head(
            &db,
            identity.signing_key.clone(),
            &data_dir
                .root()
                .join(crate::audit::head_file::HEAD_FILE_NAME),
        )?;

        let secret = read_secret(&data_dir, &cfg)?;
        let topic_dir = data_dir.clone();
        let topic = tokio::task::spawn_blocking(move || tasks::derive_topic(&topic_dir, &secret))
            .await
            .map_err(|e| NodeError::Other(format!("topic derivation panicked: {e}")))?
            .map_err(|e| NodeError::Other(format!("topic derivation: {e}")))?;
        if topic.is_public {
            tracing::info!(
                "no secret configured: joining the PUBLIC market (default secret {:?})",
                net::topic::DEFAULT_PUBLIC_SECRET
            );
        } else {
            tracing::info!("joining a private market (secret from config)");
        }
        let public_market = topic.is_public;
        if public_market && let Some(what) = cfg.unedited_provider_template() {
            return Err(NodeError::Config(ConfigError::Invalid(what)));
        }

        let Backends {
            lightning: ln,
            tunnel,
            clock,
        } = backends;
        let info = ln.get_info().await?;
        if info.network != cfg.lightning.network {
            return Err(NodeError::WrongNetwork {
                expected: cfg.lightning.network.clone(),
                got: info.network,
            });
        }
        tracing::info!(ln_pubkey = %info.pubkey, network = %info.network, "connected to Lightning node");
        tracing::info!(backend = tunnel.kind(), "tunnel backend ready");
        let wg = WgKeyPair::load_or_create(&data_dir.wireguard_key())?;

        let dht = cfg.node.dht_kind(public_market);
        let dht_role = cfg.dht_role(dht);
        let bootstrap = cfg.node.bootstrap_for(dht);
        tracing::info!(
            ?dht,
            ?dht_role,
            bootstrap_peers = bootstrap.len(),
            "joining the DHT"
        );
        if dht == net::DhtKind::Public && !public_market {
            // Allowed (the membership handshake still keeps outsiders out of the market), but
            // anyone on the public DHT can see which nodes announce the topic key.
            tracing::warn!(
                "a private market on the public DHT: set node.dht = \"private\" to hide its members"
            );
        }
        // The moment a Hyperswarm node would call join(): what the simnet's discovery figures
        // count from (wall clock, for measurement only).
        let joined_at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let (net_client, net_events, event_loop) = net::new(
            &identity.signing_key,
            NetConfig {
                listen: parse_addrs(&cfg.node.listen)?,
                bootstrap: parse_addrs(&bootstrap)?,
                external: parse_addrs(&cfg.node.external)?,
                topic,
                request_timeout: Duration::from_secs(cfg.node.request_timeout_secs),
                dht,
                dht_role,
                query_timeout: cfg
                    .node
                    .dht_query_timeout_secs
                    .map_or_else(|| net::default_query_timeout(dht), Duration::from_secs),
                bootstrap_backoff: net::backoff::Backoff::default(),
                limits: cfg.node.limits.clone(),
            },
        )?;
        let shutdown = CancellationToken::new();
        // Cancels whatever was started if start-up fails half-way.
        let guard = shutdown.clone().drop_guard();
        let mut tasks = JoinSet::new();
        tasks.spawn(event_loop.run(shutdown.clone()));

        audit
            .append_async(
                AuditKind::NodeStarted,
                &json!({"peer_id": identity.peer_id.to_string(), "roles": cfg.node.roles,
                        "ln_pubkey": info.pubkey, "public_market": public_market}),
            )
            .await?;

        // One offer cache per node: its renter learns into it, and every member is served
        // from it (`offersRequest`).
        let offer_cache = OfferCache::new(&cfg.lightning.network, offers::DEFAULT_CAPACITY);
        let net_peers: Arc<dyn Peers> = Arc::new(NetPeers(net_client.clone()));
        let provider = if cfg.has_role(Role::Provider) {
            let mut provider_cfg = cfg.provider.clone();
            // Refunds are offered only when our macaroon can pay them.
            crate::market::provider::refunds_payable(&mut provider_cfg, ln.as_ref()).await;
            let p = Provider::with_cache(
                ProviderParams {
                    key: identity.signing_key.clone(),
                    cfg: provider_cfg,
                    network: cfg.lightning.network.clone(),
                    ln_pubkey: info.pubkey.clone(),
                    wg_private: wg.private,
                    wg_public: wg.public,
                    iface: cfg.tunnel.interface.clone(),
                    listen_port: cfg.tunnel.listen_port,
                    ln: ln.clone(),
                    tunnel: tunnel.clone(),
                    audit: audit.clone(),
                    db: db.clone(),
                },
                clock.clone(),
                offer_cache.clone(),
            )?;
            p.watch_disk(db_dir.clone());
            p.start().await?;
            Some(p)
        } else {
            None
        };
        let renter = if cfg.has_role(Role::Renter) {
            let r = Renter::with_cache(
                RenterParams {
                    key: identity.signing_key.clone(),
                    cfg: cfg.renter.clone(),
                    network: cfg.lightning.network.clone(),
                    fee_limit_sat: cfg.lightning.fee_limit_sat,
                    fee_limit_ppm: cfg.lightning.fee_limit_ppm,
                    payment_timeout_secs: cfg.lightning.payment_timeout_secs,
                    wg_private: wg.private,
                    wg_public: wg.public,
                    iface: cfg.tunnel.interface.clone(),
                    keepalive: cfg.tunnel.persistent_keepalive_secs,
                    conf_dir: data_dir.wireguard_dir(),
                    etc_wireguard: etc_wireguard(&cfg),
                    ln: ln.clone(),
                    tunnel: tunnel.clone(),
                    audit: audit.clone(),
                    peers: net_peers.clone(),
                    db: db.clone(),
                },
                clock.clone(),
                offer_cache.clone(),
            )?;
            r.start().await?;
            Some(r)
        } else {
            None
        };

        let discovery = Duration::from_secs(cfg.node.discovery_interval_secs.max(1));
        if let Some(p) = provider.clone() {
            tasks.spawn(announce_loop(
                p.clone(),
                net_client.clone(),
                discovery,
                shutdown.clone(),
            ));
            let every = Duration::from_secs(cfg.provider.metering_interval_secs.max(1));
            tasks.spawn(periodic(every, shutdown.clone(), move || {
                let p = p.clone();
                async move {
                    if let Err(e) = p.tick().await {
                        tracing::warn!(error = %e, "provider tick failed");
                    }
                }
            }));
        }
        let discover_now = Arc::new(tokio::sync::Notify::new());
        if let Some(r) = renter.clone() {
            let autopay_renter = r.clone();
            tasks.spawn(discovery_loop(
                r.clone(),
                discovery,
                discover_now.clone(),
                shutdown.clone(),
            ));
            tasks.spawn(periodic(discovery, shutdown.clone(), move || {
                let r = r.clone();
                async move {
                    if let Err(e) = r.tick().await {
                        tracing::warn!(error = %e, "renter tick failed");
                    }
                    // Payments a crash or an unreachable provider left open.
                    if let Err(e) = r.recover_payments().await {
                        tracing::warn!(error = %e, "payment recovery pass failed");
                    }
                }
            }));
            let every = cfg.renter.autopay.check_interval;
            tasks.spawn(periodic(every, shutdown.clone(), move || {
                let r = autopay_renter.clone();
                async move {
                    if let Err(e) = r.autopay_tick().await {
                        tracing::warn!(error = %e, "autopay pass failed");
                    }
                }
            }));
        }

        tasks.spawn(
            dispatch::Dispatcher {
                provider: provider.clone(),
                net: net_client.clone(),
                audit: audit.clone(),
                network: cfg.lightning.network.clone(),
                is_renter: renter.is_some(),
                admission: dispatch::Admission::new(cfg.node.max_inbound_requests),
                rate: std::sync::Mutex::new(cfg.node.limits.rate_limiter()),
                renter: renter.clone(),
                offer_cache,
                peers: net_peers,
                clock: clock.clone(),
                discover_now: discover_now.clone(),
                refusals: offers::RefusalAudits::default(),
                peer_audit: dispatch::PeerAudit::default(),
                pull_backs: offers::PullBacks::default(),
            }
            .run(net_events, shutdown.clone()),
        );

        // Started: from here on shutdown() cancels.
        guard.disarm();
        Ok(NodeHandle {
            peer_id: identity.peer_id,
            ln_pubkey: info.pubkey,
            public_market,
            joined_at_ms,
            config: cfg,
            net: net_client,
            provider,
            renter,
            audit,
            db,
            shutdown,
            tasks,
            lock,
        })
    }
}

/// A running node: what it is, its parts for the control API, and [`NodeHandle::shutdown`].
///
/// Dropping the handle without calling `shutdown` aborts the node's tasks abruptly: nothing is
/// flushed and no `node_stopped` is logged. Call it.
pub struct NodeHandle {
    peer_id: PeerId,
    ln_pubkey: String,
    public_market: bool,
    joined_at_ms: u64,
    config: Config,
    net: NetClient,
    provider: Option<Provider>,
    renter: Option<Renter>,
    audit: AuditLog,
    db: sled::Db,
    shutdown: CancellationToken,
    tasks: JoinSet<()>,
    lock: DaemonLock,
}

impl std::fmt::Debug for NodeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeHandle")
            .field("peer_id", &self.peer_id)
            .field("data_dir", self.lock.data_dir())
            .field("roles", &self.config.node.roles)
            .finish_non_exhaustive()
    }
}

impl NodeHandle {
    /// The node's libp2p identity.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// The node's data dir.
    pub fn data_dir(&self) -> &DataDir {
        self.lock.data_dir()
    }

    /// The configuration the node runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The Lightning node's public key.
    pub fn ln_pubkey(&self) -> &str {
        &self.ln_pubkey
    }

    /// When the node started joining the network (its swarm was created and began dialing),
    /// unix milliseconds of the wall clock.
    pub fn joined_at_ms(&self) -> u64 {
        self.joined_at_ms
    }

    /// Whether the node joined the public market (no secret configured).
    pub fn public_market(&self) -> bool {
        self.public_market
    }

    /// The network layer (status, listen addresses).
    pub fn net(&self) -> &NetClient {
        &self.net
    }

    /// The provider role, if configured.
    pub fn provider(&self) -> Option<&Provider> {
        self.provider.as_ref()
    }

    /// The renter role, if configured.
    pub fn renter(&self) -> Option<&Renter> {
        self.renter.as_ref()
    }

    /// The node's audit log.
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// A token cancelled when [`NodeHandle::shutdown`] starts, for services the caller runs
    /// beside the node (the control API).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.child_token()
    }

    /// Stops the node: cancels every task, waits for them (and for inbound requests still
    /// being answered) up to 10 s, removes the tunnels of suspended leases, logs
    /// `node_stopped` and flushes the audit log and the database.
    ///
    /// Errors: [`NodeError::Audit`] / [`NodeError::Db`] if the final entry or flush fails.
    pub async fn shutdown(self) -> Result<(), NodeError> {
        let NodeHandle {
            peer_id,
            net,
            renter,
            provider,
            audit,
            db,
            shutdown,
            mut tasks,
            lock,
            ..
        } = self;
        tracing::info!("shutting down");
        shutdown.cancel();
        drop(net);
        let drain = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
            tracing::warn!("some tasks did not stop within 10 s");
        }
        drop(provider);
        if let Some(r) = &renter
            && let Err(e) = r.shutdown().await
        {
            tracing::warn!(error = %e, "could not remove the tunnels of suspended leases");
        }
        drop(renter);
        audit
            .append_async(
                AuditKind::NodeStopped,
                &json!({"peer_id": peer_id.to_string()}),
            )
            .await?;
        audit.flush_async().await?;
        // sled's flush is an fsync: off the runtime workers.
        let flushed = {
            let db = db.clone();
            tokio::task::spawn_blocking(move || db.flush()).await
        };
        match flushed {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                return Err(NodeError::Db {
                    path: lock.data_dir().db(),
                    reason: e.to_string(),
                });
            }
            Err(e) => return Err(NodeError::Other(format!("database flush task failed: {e}"))),
        }
        drop(audit);
        drop(db);
        tracing::info!("stopped");
        // The lock goes last: the data dir is free once everything above is on disk.
        drop(lock);
        Ok(())
    }
}

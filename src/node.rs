//! The daemon: wires identity, config, audit log, Lightning, tunnel, network and market
//! together, serves the control API and shuts everything down cleanly.
//!
//! Steps of [`run_daemon`]:
//! 1. take the data dir's lock (one daemon per data dir), load config and node key;
//! 2. open sled and the audit log; derive the topic from the secret (slow KDF, off the runtime);
//! 3. connect to LND and check its network; open the tunnel backend and WireGuard keys;
//! 4. start the libp2p event loop, the provider and/or renter, their periodic tasks, the
//!    request dispatcher and the control API;
//! 5. on SIGINT/SIGTERM cancel everything, wait for the tasks, log `node_stopped`, flush.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use libp2p::{Multiaddr, PeerId};
use serde_json::json;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::audit::{AuditKind, AuditLog};
use crate::config::{Config, Role, TunnelBackendKind};
use crate::control::{self, ControlError, ControlHandler, pb};
use crate::identity::{Identity, WgKeyPair};
use crate::lightning::LightningNode;
use crate::lightning::lnd::{LndClient, LndConfig};
use crate::market::provider::{Provider, ProviderLease, ProviderParams};
use crate::market::renter::{RentArgs, Rental, Renter, RenterParams};
use crate::market::{MarketError, Peers};
use crate::net::{self, NetClient, NetConfig, NetEvent};
use crate::tunnel::Tunnel;
use crate::tunnel::file::FileTunnel;
use crate::types::now_unix;
use crate::wire::{ErrorCode, ErrorMsg, Hello, Message};

/// Errors that stop the daemon (at start-up, mostly). Each names what to fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// Another daemon holds this data dir.
    #[error("another leasewire daemon is running for {0}")]
    Locked(PathBuf),
    /// Configuration problem.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
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
    /// Control API problem.
    #[error("control API: {0}")]
    Control(#[from] ControlError),
    /// Anything else, with context.
    #[error("{0}")]
    Other(String),
}

/// Path of the sled database inside a data dir.
pub fn db_path(data_dir: &Path) -> PathBuf {
    data_dir.join("db")
}

/// Path of the control socket inside a data dir.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("leasewire.sock")
}

/// Holds an exclusive `flock` on `D/daemon.lock` for the daemon's lifetime.
struct DirLock(#[allow(dead_code)] std::fs::File);

impl DirLock {
    fn take(data_dir: &Path) -> Result<DirLock, NodeError> {
        let path = data_dir.join("daemon.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| NodeError::Other(format!("cannot open {}: {e}", path.display())))?;
        // SAFETY: flock on a file descriptor we own; no memory is involved.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            return Err(NodeError::Locked(data_dir.to_owned()));
        }
        Ok(DirLock(file))
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

/// Runs the daemon for `data_dir` until SIGINT/SIGTERM.
pub async fn run_daemon(data_dir: &Path) -> Result<(), NodeError> {
    let _lock = DirLock::take(data_dir)?;
    let cfg = Config::load(&data_dir.join("config.toml"))?;
    let identity = Identity::load(data_dir)?;
    tracing::info!(peer_id = %identity.peer_id, data_dir = %data_dir.display(), "starting leasewire daemon");

    let db_dir = db_path(data_dir);
    let db = sled::open(&db_dir).map_err(|e| NodeError::Db {
        path: db_dir.clone(),
        reason: e.to_string(),
    })?;
    let audit = AuditLog::open(&db, identity.signing_key.clone())?;

    let secret = read_secret(data_dir, &cfg)?;
    let topic = tokio::task::spawn_blocking(move || net::topic::derive(&secret))
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

    let lnd_cfg = LndConfig {
        address: cfg.lightning.address.clone(),
        tls_cert_path: Config::resolve(data_dir, &cfg.lightning.tls_cert_path),
        macaroon_path: Config::resolve(data_dir, &cfg.lightning.macaroon_path),
    };
    let ln = LndClient::connect(&lnd_cfg).await?;
    let info = ln.get_info().await?;
    if info.network != cfg.lightning.network {
        return Err(NodeError::WrongNetwork {
            expected: cfg.lightning.network.clone(),
            got: info.network,
        });
    }
    tracing::info!(ln_pubkey = %info.pubkey, network = %info.network, "connected to Lightning node");
    let ln: Arc<dyn LightningNode> = Arc::new(ln);

    let tunnel: Arc<dyn Tunnel> = match cfg.tunnel.backend {
        TunnelBackendKind::File => Arc::new(
            FileTunnel::new(data_dir.join("tunnel"))
                .map_err(|e| NodeError::Other(format!("tunnel backend: {e}")))?,
        ),
    };
    tracing::info!(backend = tunnel.kind(), "tunnel backend ready");
    let wg = WgKeyPair::load_or_create(&data_dir.join("wireguard").join("private.key"))?;

    let parse_addrs = |v: &[String]| -> Result<Vec<Multiaddr>, NodeError> {
        v.iter()
            .map(|a| {
                a.parse()
                    .map_err(|e| NodeError::Other(format!("bad multiaddr {a}: {e}")))
            })
            .collect()
    };
    let (net_client, mut net_events, event_loop) = net::new(
        &identity.signing_key,
        NetConfig {
            listen: parse_addrs(&cfg.node.listen)?,
            bootstrap: parse_addrs(&cfg.node.bootstrap)?,
            external: parse_addrs(&cfg.node.external)?,
            topic,
            request_timeout: Duration::from_secs(cfg.node.request_timeout_secs),
        },
    )?;
    let shutdown = CancellationToken::new();
    let mut tasks = JoinSet::new();
    tasks.spawn(event_loop.run(shutdown.clone()));

    audit.append(
        AuditKind::NodeStarted,
        &json!({"peer_id": identity.peer_id.to_string(), "roles": cfg.node.roles,
                "ln_pubkey": info.pubkey, "public_market": public_market}),
    )?;

    let provider = if cfg.has_role(Role::Provider) {
        let p = Provider::new(ProviderParams {
            key: identity.signing_key.clone(),
            cfg: cfg.provider.clone(),
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
        })?;
        p.start().await?;
        Some(p)
    } else {
        None
    };
    let renter = if cfg.has_role(Role::Renter) {
        let r = Renter::new(RenterParams {
            key: identity.signing_key.clone(),
            cfg: cfg.renter.clone(),
            network: cfg.lightning.network.clone(),
            fee_limit_sat: cfg.lightning.fee_limit_sat,
            payment_timeout_secs: cfg.lightning.payment_timeout_secs,
            wg_private: wg.private,
            wg_public: wg.public,
            iface: cfg.tunnel.interface.clone(),
            keepalive: cfg.tunnel.persistent_keepalive_secs,
            conf_dir: data_dir.join("wireguard"),
            ln: ln.clone(),
            tunnel: tunnel.clone(),
            audit: audit.clone(),
            peers: Arc::new(NetPeers(net_client.clone())),
            db: db.clone(),
        })?;
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
    if let Some(r) = renter.clone() {
        tasks.spawn(periodic(discovery, shutdown.clone(), move || {
            let r = r.clone();
            async move {
                match r.discover().await {
                    Ok(n) => tracing::debug!(offers = n, "discovery pass"),
                    Err(e) => tracing::debug!(error = %e, "discovery pass failed"),
                }
                if let Err(e) = r.tick() {
                    tracing::warn!(error = %e, "renter tick failed");
                }
            }
        }));
    }

    // Inbound requests: each is answered in its own task, so a provider waiting for an
    // invoice to settle never holds up other peers.
    {
        let provider = provider.clone();
        let net_client = net_client.clone();
        let audit = audit.clone();
        let network = cfg.lightning.network.clone();
        let is_renter = renter.is_some();
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            loop {
                let ev = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    ev = net_events.recv() => match ev { Some(ev) => ev, None => break },
                };
                match ev {
                    NetEvent::InboundRequest {
                        peer,
                        message,
                        channel,
                    } => {
                        let provider = provider.clone();
                        let net_client = net_client.clone();
                        let network = network.clone();
                        tokio::spawn(async move {
                            let reply = match (&provider, message) {
                                (Some(p), m) => p.handle(peer, m).await,
                                (None, Message::Hello(_)) => {
                                    Message::Hello(Hello::ours(false, is_renter, &network))
                                }
                                (None, m) => Message::Error(ErrorMsg::new(
                                    ErrorCode::Unsupported,
                                    format!("this node is not a provider ({})", m.name()),
                                )),
                            };
                            if let Err(e) = net_client.respond(channel, reply).await {
                                tracing::debug!(%peer, error = %e, "could not answer");
                            }
                        });
                    }
                    NetEvent::MemberJoined { peer } => {
                        log_audit(
                            &audit,
                            AuditKind::MembershipOk,
                            json!({"peer": peer.to_string()}),
                        );
                    }
                    NetEvent::MembershipRefused {
                        peer,
                        by_us,
                        reason,
                    } => {
                        log_audit(
                            &audit,
                            AuditKind::MembershipRefused,
                            json!({"peer": peer.to_string(), "by_us": by_us, "reason": reason}),
                        );
                    }
                    NetEvent::BadMessage { peer, reason } => {
                        log_audit(
                            &audit,
                            AuditKind::PeerRefused,
                            json!({"peer": peer.to_string(), "reason": reason}),
                        );
                    }
                }
            }
        });
    }

    let handler = Arc::new(Control {
        peer_id: identity.peer_id,
        roles: cfg.node.roles.clone(),
        net: net_client.clone(),
        provider: provider.clone(),
        renter: renter.clone(),
        audit: audit.clone(),
        public_market,
        ln_pubkey: info.pubkey.clone(),
        network: cfg.lightning.network.clone(),
        default_credit_sat: cfg.renter.default_credit_sat,
    });
    let socket = socket_path(data_dir);
    let control_task = {
        let shutdown = shutdown.clone();
        let socket = socket.clone();
        tokio::spawn(async move { control::serve(&socket, handler, shutdown).await })
    };
    tracing::info!(socket = %socket.display(), "control API listening; daemon ready");

    let outcome = tokio::select! {
        r = wait_for_signal() => r,
        r = control_task => match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(NodeError::Control(e)),
            Err(e) => Err(NodeError::Other(format!("control API task failed: {e}"))),
        },
    };
    tracing::info!("shutting down");
    shutdown.cancel();
    drop(net_client);
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(10), drain)
        .await
        .is_err()
    {
        tracing::warn!("some tasks did not stop within 10 s");
    }
    let _ = std::fs::remove_file(&socket);
    audit.append(
        AuditKind::NodeStopped,
        &json!({"peer_id": identity.peer_id.to_string()}),
    )?;
    audit.flush()?;
    db.flush().map_err(|e| NodeError::Db {
        path: db_dir,
        reason: e.to_string(),
    })?;
    tracing::info!("stopped");
    outcome
}

fn log_audit(audit: &AuditLog, kind: AuditKind, payload: serde_json::Value) {
    if let Err(e) = audit.append(kind, &payload) {
        tracing::error!(error = %e, ?kind, "audit append failed");
    }
}

fn read_secret(data_dir: &Path, cfg: &Config) -> Result<String, NodeError> {
    if let Some(file) = &cfg.node.secret_file {
        let path = Config::resolve(data_dir, file);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            NodeError::Other(format!(
                "cannot read node.secret_file {}: {e}",
                path.display()
            ))
        })?;
        let line = text.lines().next().unwrap_or("").trim().to_owned();
        if line.is_empty() {
            return Err(NodeError::Other(format!("{} is empty", path.display())));
        }
        return Ok(line);
    }
    if cfg.node.secret.is_empty() {
        Ok(net::topic::DEFAULT_PUBLIC_SECRET.to_owned())
    } else {
        Ok(cfg.node.secret.clone())
    }
}

async fn wait_for_signal() -> Result<(), NodeError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())
        .map_err(|e| NodeError::Other(format!("cannot install SIGTERM handler: {e}")))?;
    let mut int = signal(SignalKind::interrupt())
        .map_err(|e| NodeError::Other(format!("cannot install SIGINT handler: {e}")))?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    Ok(())
}

/// Runs `f` every `every` until cancelled.
async fn periodic<F, Fut>(every: Duration, shutdown: CancellationToken, f: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut timer = tokio::time::interval(every);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = timer.tick() => f().await,
        }
    }
}

/// Announces the provider on the DHT at start, whenever its offer changes, and periodically
/// (records expire, and peers that joined later must be able to find it).
async fn announce_loop(p: Provider, net: NetClient, every: Duration, shutdown: CancellationToken) {
    let mut changes = p.subscribe_offer();
    let mut timer = tokio::time::interval(every.max(Duration::from_secs(5)) * 3);
    loop {
        match net.start_providing().await {
            Ok(()) => tracing::debug!(offer_id = %p.offer().id(), "announced on the DHT"),
            Err(e) => tracing::debug!(error = %e, "DHT announce incomplete; will retry"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = timer.tick() => {}
            r = changes.changed() => if r.is_err() { return },
        }
    }
}

/// The control API's view of the node.
struct Control {
    peer_id: PeerId,
    roles: Vec<Role>,
    net: NetClient,
    provider: Option<Provider>,
    renter: Option<Renter>,
    audit: AuditLog,
    public_market: bool,
    ln_pubkey: String,
    network: String,
    /// Credit a `rent` without `--credit` buys; offers are priced for it.
    default_credit_sat: u64,
}

fn market_err(e: MarketError) -> ControlError {
    match e {
        MarketError::NotFound(m) => ControlError::NotFound(m),
        MarketError::Invalid(m) => ControlError::InvalidArgument(m),
        e @ (MarketError::InvoiceRejected(_)
        | MarketError::Refused { .. }
        | MarketError::NoOffer(_)
        | MarketError::BadSigned { .. }
        | MarketError::Lightning(_)) => ControlError::FailedPrecondition(e.to_string()),
        e @ MarketError::Net(_) => ControlError::Unavailable(e.to_string()),
        e => ControlError::Internal(e.to_string()),
    }
}

fn rental_info(r: &Rental) -> pb::LeaseInfo {
    let l = &r.lease;
    pb::LeaseInfo {
        lease_id: l.lease_id.clone(),
        provider: l.provider.clone(),
        renter: l.renter.clone(),
        state: r.state.as_str().into(),
        ipv4: l.ipv4.clone().unwrap_or_default(),
        ipv6: l.ipv6.clone().unwrap_or_default(),
        paid_sat: r.paid_sat,
        credit_sat: l.credit_sat,
        remaining_credit_sat: r.remaining_credit(now_unix()),
        paid_until: l.paid_until,
        endpoint: l.endpoint.clone(),
        offer_id: l.offer_id.clone(),
        conf_path: r.conf_path.display().to_string(),
        activated_at: l.activated_at,
        rate_sat_per_day: l.terms.rate_sat_per_day,
    }
}

fn provider_lease_info(r: &ProviderLease) -> pb::LeaseInfo {
    let l = &r.lease;
    pb::LeaseInfo {
        lease_id: l.lease_id.clone(),
        provider: l.provider.clone(),
        renter: l.renter.clone(),
        state: r.state.as_str().into(),
        ipv4: l.ipv4.clone().unwrap_or_default(),
        ipv6: l.ipv6.clone().unwrap_or_default(),
        paid_sat: r.paid_sat,
        credit_sat: l.credit_sat,
        remaining_credit_sat: r.remaining_credit(now_unix()),
        paid_until: l.paid_until,
        endpoint: l.endpoint.clone(),
        offer_id: l.offer_id.clone(),
        conf_path: String::new(),
        activated_at: l.activated_at,
        rate_sat_per_day: l.terms.rate_sat_per_day,
    }
}

impl Control {
    fn renter(&self) -> Result<&Renter, ControlError> {
        self.renter.as_ref().ok_or_else(|| {
            ControlError::FailedPrecondition("this node does not have the renter role".into())
        })
    }
}

#[async_trait::async_trait]
impl ControlHandler for Control {
    async fn status(&self) -> Result<pb::StatusReply, ControlError> {
        let st = self
            .net
            .status()
            .await
            .map_err(|e| ControlError::Unavailable(e.to_string()))?;
        let s = |v: Vec<PeerId>| v.into_iter().map(|p| p.to_string()).collect::<Vec<_>>();
        let leases = match &self.renter {
            Some(r) => r
                .rentals()
                .map_err(market_err)?
                .iter()
                .map(rental_info)
                .collect(),
            None => Vec::new(),
        };
        Ok(pb::StatusReply {
            peer_id: self.peer_id.to_string(),
            roles: self
                .roles
                .iter()
                .map(|r| match r {
                    Role::Provider => "provider".to_owned(),
                    Role::Renter => "renter".to_owned(),
                })
                .collect(),
            listen_addrs: st.listen_addrs.iter().map(|a| a.to_string()).collect(),
            net: Some(pb::NetInfo {
                connected: st.connected as u32,
                members: s(st.members),
                refused_by: s(st.refused_by),
                refused: s(st.refused),
            }),
            offers_known: self
                .renter
                .as_ref()
                .map(|r| r.offers(None).len() as u32)
                .unwrap_or(0),
            leases,
            public_market: self.public_market,
            ln_pubkey: self.ln_pubkey.clone(),
            network: self.network.clone(),
        })
    }

    async fn offers(&self) -> Result<pb::OffersReply, ControlError> {
        let r = self.renter()?;
        let offers = r
            .offers(None)
            .into_iter()
            .map(|o| {
                let t = &o.offer.terms;
                let avail = |v: &[crate::wire::PrefixAvailability]| {
                    v.iter().map(|a| a.available).max().unwrap_or(0)
                };
                pb::OfferInfo {
                    offer_id: o.offer_id.clone(),
                    provider: o.peer.clone(),
                    seq: o.offer.seq,
                    endpoint: o.offer.endpoint.clone(),
                    ln_pubkey: o.offer.ln_pubkey.clone(),
                    wg_pubkey: o.offer.wg_pubkey.to_base64(),
                    activation_fee_sat: t.activation_fee_sat,
                    rate_sat_per_day: t.rate_sat_per_day,
                    min_initial_credit_sat: t.min_initial_credit_sat,
                    min_topup_sat: t.min_topup_sat,
                    max_credit_sat: t.max_credit_sat,
                    reserve_days: t.reserve_days,
                    ipv4_available: avail(&o.offer.ipv4),
                    ipv6_available: avail(&o.offer.ipv6),
                    expires_at: o.offer.expires_at,
                    rtt_ms: o.rtt.as_secs_f64() * 1000.0,
                    price_sat: crate::market::select::price(t, self.default_credit_sat)
                        .map(|(_, p)| p)
                        .unwrap_or(0),
                }
            })
            .collect();
        Ok(pb::OffersReply { offers })
    }

    async fn rent(&self, req: pb::RentRequest) -> Result<pb::LeaseInfo, ControlError> {
        let r = self.renter()?;
        if req.auto != req.offer_id.is_empty() {
            return Err(ControlError::InvalidArgument(
                "give exactly one of an offer id or auto".into(),
            ));
        }
        let args = RentArgs {
            offer_id: (!req.offer_id.is_empty()).then_some(req.offer_id),
            credit_sat: (req.credit_sat > 0).then_some(req.credit_sat),
            timeout: Duration::from_secs(if req.timeout_secs == 0 {
                60
            } else {
                u64::from(req.timeout_secs)
            }),
        };
        let rental = r.rent(args).await.map_err(market_err)?;
        Ok(rental_info(&rental))
    }

    async fn conf(&self, req: pb::ConfRequest) -> Result<pb::ConfReply, ControlError> {
        let (path, text) = self.renter()?.conf(&req.lease_id).map_err(market_err)?;
        Ok(pb::ConfReply {
            path: path.display().to_string(),
            text,
        })
    }

    async fn add_credit(&self, req: pb::AddCreditRequest) -> Result<pb::LeaseInfo, ControlError> {
        if req.amount_sat == 0 {
            return Err(ControlError::InvalidArgument(
                "amount must be positive".into(),
            ));
        }
        let rental = self
            .renter()?
            .add_credit(&req.lease_id, req.amount_sat)
            .await
            .map_err(market_err)?;
        Ok(rental_info(&rental))
    }

    async fn leases(&self) -> Result<pb::LeasesReply, ControlError> {
        let p = self.provider.as_ref().ok_or_else(|| {
            ControlError::FailedPrecondition("this node does not have the provider role".into())
        })?;
        Ok(pb::LeasesReply {
            leases: p
                .leases()
                .map_err(market_err)?
                .iter()
                .map(provider_lease_info)
                .collect(),
        })
    }

    async fn audit_verify(&self) -> Result<pb::AuditVerifyReply, ControlError> {
        let report = self.audit.verify();
        Ok(pb::AuditVerifyReply {
            ok: report.ok,
            entries: report.entries,
            first_bad_seq: report.first_bad.as_ref().map(|b| b.seq),
            reason: report.first_bad.map(|b| b.reason).unwrap_or_default(),
        })
    }
}

//! The in-process market world shared by the market and payment tests: real lnd-sim over TLS
//! gRPC, the real `LndClient`, file tunnels and sled audit logs; only the libp2p hop is replaced
//! by a direct call, which lets a test play a dishonest or unreachable provider.

// Each test binary uses a different part of this module.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use leasewire::audit::AuditLog;
use leasewire::config::{ProviderConfig, RenterConfig};
use leasewire::lightning::lnd::LndClient;
use leasewire::lightning::{InvoiceRequest, LightningNode};
use leasewire::market::provider::{Provider, ProviderParams};
use leasewire::market::renter::{Renter, RenterParams};
use leasewire::market::sizes::SizePrice;
use leasewire::market::{MarketError, Peers};
use leasewire::tunnel::Tunnel;
use leasewire::tunnel::file::FileTunnel;
use leasewire::types::{Clock, ManualClock, WgKey};
use leasewire::wire::signed::peer_id_of;
use leasewire::wire::{Lease, Message, Signed};
use leasewire_simnet::lndsim::{SimHandle, SimServer};
use libp2p::PeerId;
use tempfile::TempDir;

/// How the fake network changes the provider's invoice before the renter sees it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Tamper {
    None,
    /// Same invoice terms but one sat more.
    Amount,
    /// Issued by another Lightning node.
    Payee,
    /// Expires in one second (and the renter looks after it expired).
    Expired,
    /// Commits to other terms.
    DescriptionHash,
    /// A mainnet invoice (signed by some other key) on our regtest market.
    Network,
}

pub struct Direct {
    /// While set, every request fails as if the provider were unreachable.
    pub down: AtomicBool,
    /// When set, the provider becomes unreachable (`down`) right after it sends an invoice.
    pub cut_after_invoice: AtomicBool,
    /// When set, every `status` answer carries this lease instead of the provider's: a test
    /// plays a provider that sends a forged or illegal revision.
    pub status_lease: std::sync::Mutex<Option<Signed<Lease>>>,
    /// The provider answering; [`World::restart_provider`] replaces it.
    provider: std::sync::RwLock<Provider>,
    provider_peer: PeerId,
    renter_peer: PeerId,
    tamper: Tamper,
    provider_ln: LndClient,
    mallory_ln: LndClient,
    clock: Arc<ManualClock>,
    /// Further honest providers, reached without tampering.
    pub others: Vec<Arc<OtherProvider>>,
}

/// A second provider of the world (see [`Opts::second_provider`]).
pub struct OtherProvider {
    pub provider: Provider,
    pub peer: PeerId,
    /// While set, every request to it fails as if it were unreachable.
    pub down: AtomicBool,
    /// When set, it becomes unreachable (`down`) right after it sends an invoice.
    pub cut_after_invoice: AtomicBool,
    pub tunnel: Arc<FileTunnel>,
    pub audit: AuditLog,
    /// Its provider-side WireGuard public key (the renter's peer for its leases).
    pub wg_public: WgKey,
}

#[async_trait::async_trait]
impl Peers for Direct {
    async fn find_providers(&self) -> Result<Vec<PeerId>, MarketError> {
        let mut all = vec![self.provider_peer];
        all.extend(self.others.iter().map(|o| o.peer));
        Ok(all)
    }

    async fn request(
        &self,
        peer: PeerId,
        msg: Message,
    ) -> Result<(Message, Duration), MarketError> {
        if let Some(o) = self.others.iter().find(|o| o.peer == peer) {
            if o.down.load(Ordering::SeqCst) {
                return Err(MarketError::Net("provider unreachable (test)".into()));
            }
            let reply = o.provider.handle(self.renter_peer, msg).await;
            if matches!(reply, Message::PayInvoice(_)) && o.cut_after_invoice.load(Ordering::SeqCst)
            {
                o.down.store(true, Ordering::SeqCst);
            }
            return Ok((reply, Duration::from_millis(3)));
        }
        assert_eq!(peer, self.provider_peer);
        if self.down.load(Ordering::SeqCst) {
            return Err(MarketError::Net("provider unreachable (test)".into()));
        }
        let provider = self.provider.read().unwrap().clone();
        let mut reply = provider.handle(self.renter_peer, msg).await;
        if let Message::Status(s) = &mut reply
            && let Some(forged) = self.status_lease.lock().unwrap().clone()
        {
            s.lease = Some(forged);
        }
        let Message::PayInvoice(mut pay) = reply else {
            return Ok((reply, Duration::from_millis(3)));
        };
        if self.cut_after_invoice.load(Ordering::SeqCst) {
            self.down.store(true, Ordering::SeqCst);
        }
        let orig: lightning_invoice::Bolt11Invoice =
            pay.bolt11.parse().expect("provider invoice parses");
        let amount_msat = orig.amount_milli_satoshis().expect("amount");
        let hash = match orig.description() {
            lightning_invoice::Bolt11InvoiceDescriptionRef::Hash(h) => h.0.to_byte_array(),
            _ => panic!("provider invoices commit with a description hash"),
        };
        let forged = |ln: &LndClient, amount_msat, description_hash, expiry_secs| {
            let ln = ln.clone();
            async move {
                ln.add_invoice(InvoiceRequest {
                    amount_msat,
                    description_hash,
                    expiry_secs,
                })
                .await
                .expect("forged invoice")
                .bolt11
            }
        };
        pay.bolt11 = match self.tamper {
            Tamper::None => pay.bolt11,
            Tamper::Amount => forged(&self.provider_ln, amount_msat + 1000, hash, 600).await,
            Tamper::Payee => forged(&self.mallory_ln, amount_msat, hash, 600).await,
            Tamper::Expired => {
                let b = forged(&self.provider_ln, amount_msat, hash, 1).await;
                // Market time moves past the invoice's expiry; nobody sleeps for it.
                let inv: lightning_invoice::Bolt11Invoice = b.parse().expect("forged invoice");
                let expired_at = inv.duration_since_epoch().as_secs() + 2;
                let now = self.clock.now_unix();
                self.clock
                    .advance(Duration::from_secs(expired_at.saturating_sub(now)));
                b
            }
            Tamper::DescriptionHash => forged(&self.provider_ln, amount_msat, [7u8; 32], 600).await,
            Tamper::Network => mainnet_invoice(&orig),
        };
        Ok((Message::PayInvoice(pay), Duration::from_millis(3)))
    }
}

use bitcoin::hashes::Hash as _;

/// The same payment hash, amount and description hash, but for mainnet, signed by a throwaway
/// key: only the network check can tell.
fn mainnet_invoice(orig: &lightning_invoice::Bolt11Invoice) -> String {
    use bitcoin::secp256k1::{Secp256k1, SecretKey};
    use lightning_invoice::{Currency, InvoiceBuilder, PaymentSecret};
    let secp = Secp256k1::new();
    let key = SecretKey::from_slice(&[0x42; 32]).expect("valid key");
    let hash = match orig.description() {
        lightning_invoice::Bolt11InvoiceDescriptionRef::Hash(h) => h.0,
        _ => panic!("description hash"),
    };
    InvoiceBuilder::new(Currency::Bitcoin)
        .amount_milli_satoshis(orig.amount_milli_satoshis().expect("amount"))
        .payment_hash(*orig.payment_hash())
        .description_hash(hash)
        .payment_secret(PaymentSecret([9; 32]))
        .current_timestamp()
        .min_final_cltv_expiry_delta(18)
        .expiry_time(Duration::from_secs(600))
        .build_signed(|m| secp.sign_ecdsa_recoverable(m, &key))
        .expect("mainnet invoice")
        .to_string()
}

pub use leasewire::tunnel::testing::VerifyingTunnel;

pub struct World {
    pub _dir: TempDir,
    /// Market time of both provider and renter: tests advance it instead of sleeping.
    pub clock: Arc<ManualClock>,
    pub sim: SimHandle,
    pub provider: Provider,
    pub provider_audit: AuditLog,
    pub renter: Renter,
    pub renter_audit: AuditLog,
    pub renter_ln: LndClient,
    /// Another node's wallet, for paying manual invoices "from elsewhere".
    pub mallory_ln: LndClient,
    pub provider_tunnel: Arc<FileTunnel>,
    pub renter_tunnel: Arc<FileTunnel>,
    pub verifying: Option<Arc<VerifyingTunnel>>,
    /// The second provider, when [`Opts::second_provider`] asked for one.
    pub second: Option<Arc<OtherProvider>>,
    pub dir_path: std::path::PathBuf,
    pub provider_peer: PeerId,
    pub renter_peer: PeerId,
    pub peers: Arc<Direct>,
    renter_parts: RenterParts,
    provider_parts: ProviderParts,
}

/// What it takes to build the provider again on the same database, as a restarted daemon does.
struct ProviderParts {
    key: SigningKey,
    terms: leasewire::types::Terms,
    sizes: Option<Shape>,
    db: sled::Db,
    ln: LndClient,
    ln_pubkey: String,
    tunnel: Arc<FileTunnel>,
    audit: AuditLog,
    clock: Arc<ManualClock>,
}

impl ProviderParts {
    /// The provider of the world on this database, with this endpoint and WireGuard key pair.
    fn build(&self, endpoint: &str, wg: (WgKey, WgKey)) -> Provider {
        Provider::with_clock(
            ProviderParams {
                key: self.key.clone(),
                cfg: shaped(
                    ProviderConfig {
                        endpoint: endpoint.into(),
                        ipv4_pools: vec!["198.51.100.0/29".into()],
                        ipv6_pools: vec!["2001:db8:100::/61".into()],
                        terms: self.terms.clone(),
                        ..ProviderConfig::default()
                    },
                    &self.sizes,
                ),
                network: "regtest".into(),
                ln_pubkey: self.ln_pubkey.clone(),
                wg_private: wg.0,
                wg_public: wg.1,
                iface: "lwp0".into(),
                listen_port: 51820,
                ln: Arc::new(self.ln.clone()),
                tunnel: self.tunnel.clone(),
                audit: self.audit.clone(),
                db: self.db.clone(),
            },
            self.clock.clone(),
        )
        .unwrap()
    }
}

/// What it takes to build the renter again on the same database, as a restarted daemon does.
struct RenterParts {
    key: SigningKey,
    cfg: RenterConfig,
    db: sled::Db,
    tunnel: Arc<dyn Tunnel>,
    etc_wireguard: Option<std::path::PathBuf>,
    clock: Arc<ManualClock>,
}

/// The sizes a provider leases: (IPv4 sizes, IPv6 sizes), each with its daily price; an
/// empty list leaves that family out.
pub type Shape = (Vec<SizePrice>, Vec<SizePrice>);

/// `cfg` with the sizes of `shape`, if any (the defaults otherwise).
fn shaped(mut cfg: ProviderConfig, shape: &Option<Shape>) -> ProviderConfig {
    if let Some((v4, v6)) = shape {
        cfg.ipv4_sizes = v4.clone();
        cfg.ipv6_sizes = v6.clone();
    }
    cfg.validate().unwrap();
    cfg
}

/// How to build a [`World`].
pub struct Opts {
    pub tamper: Tamper,
    pub terms: leasewire::types::Terms,
    pub renter_cfg: RenterConfig,
    /// Give the renter a scratch directory to link wg-quick files into.
    pub link: bool,
    /// Give the renter a backend that can verify tunnels ([`VerifyingTunnel`]).
    pub verifying: bool,
    /// A second provider with these terms (its own Lightning node, pools, WireGuard keys and
    /// endpoint).
    pub second_provider: Option<leasewire::types::Terms>,
    /// The sizes the provider leases (default: /32 and /64 at no extra price).
    pub sizes: Option<Shape>,
    /// The sizes the second provider leases (default: /32 and /64 at no extra price).
    pub second_sizes: Option<Shape>,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            tamper: Tamper::None,
            terms: ProviderConfig::default().terms,
            renter_cfg: RenterConfig::default(),
            link: false,
            verifying: false,
            second_provider: None,
            sizes: None,
            second_sizes: None,
        }
    }
}

impl RenterParts {
    /// The renter of the world, on this database, keys and audit log.
    fn build(
        &self,
        dir: &std::path::Path,
        ln: &LndClient,
        audit: &AuditLog,
        peers: &Arc<Direct>,
    ) -> Renter {
        Renter::with_clock(
            RenterParams {
                key: self.key.clone(),
                cfg: self.cfg.clone(),
                network: "regtest".into(),
                fee_limit_sat: 10,
                fee_limit_ppm: 0,
                payment_timeout_secs: 30,
                wg_private: WgKey([3; 32]),
                wg_public: WgKey([4; 32]),
                iface: "lwr0".into(),
                keepalive: 25,
                conf_dir: dir.join("wireguard"),
                etc_wireguard: self.etc_wireguard.clone(),
                ln: Arc::new(ln.clone()),
                tunnel: self.tunnel.clone(),
                audit: audit.clone(),
                peers: peers.clone(),
                db: self.db.clone(),
            },
            self.clock.clone(),
        )
        .unwrap()
    }
}

impl World {
    /// The renter discovers the provider(s) and rents from the best offer with
    /// `credit_sat` of credit.
    pub async fn rent_with_credit(&self, credit_sat: u64) -> leasewire::market::renter::Rental {
        self.renter.discover().await.expect("discovery");
        self.renter
            .rent(leasewire::market::renter::RentArgs {
                offer_id: None,
                credit_sat: Some(credit_sat),
                timeout: std::time::Duration::from_secs(10),
                ..Default::default()
            })
            .await
            .expect("rent")
    }

    /// The provider daemon restarted on the same database with another endpoint and
    /// WireGuard key pair (private, public): it moved.
    pub async fn restart_provider(&mut self, endpoint: &str, wg: (WgKey, WgKey)) {
        let provider = self.provider_parts.build(endpoint, wg);
        provider.start().await.unwrap();
        *self.peers.provider.write().unwrap() = provider.clone();
        self.provider = provider;
    }

    /// A new renter on the same database, keys, audit log and network: the daemon restarted.
    pub fn restart_renter(&mut self) {
        self.renter = self.renter_parts.build(
            &self.dir_path,
            &self.renter_ln,
            &self.renter_audit,
            &self.peers,
        );
    }
}

pub async fn world(tamper: Tamper) -> World {
    world_with(tamper, ProviderConfig::default().terms).await
}

pub async fn world_with(tamper: Tamper, terms: leasewire::types::Terms) -> World {
    world_full(tamper, terms, RenterConfig::default(), false).await
}

pub async fn world_full(
    tamper: Tamper,
    terms: leasewire::types::Terms,
    renter_cfg: RenterConfig,
    link: bool,
) -> World {
    world_opts(Opts {
        tamper,
        terms,
        renter_cfg,
        link,
        verifying: false,
        ..Opts::default()
    })
    .await
}

pub async fn world_opts(opts: Opts) -> World {
    let Opts {
        tamper,
        terms,
        renter_cfg,
        link,
        verifying,
        second_provider,
        sizes,
        second_sizes,
    } = opts;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let sim = SimServer::start(
        &dir.path().join("lnd"),
        "127.0.0.1:0".parse().unwrap(),
        &[
            ("provider".into(), 0),
            ("renter".into(), 1_000_000),
            ("mallory".into(), 1_000_000),
            ("provider2".into(), 0),
        ],
    )
    .await
    .unwrap();
    let m = sim.manifest();
    let ln = |n: &str| {
        let cfg = m.lnd_config(n).unwrap();
        async move { LndClient::connect(&cfg).await.unwrap() }
    };
    let (provider_ln, renter_ln, mallory_ln) = (
        ln("provider").await,
        ln("renter").await,
        ln("mallory").await,
    );
    let provider_info = provider_ln.get_info().await.unwrap();

    let pkey = SigningKey::from_bytes(&[11; 32]);
    let rkey = SigningKey::from_bytes(&[22; 32]);
    let (provider_peer, renter_peer) = (
        peer_id_of(&pkey.verifying_key()),
        peer_id_of(&rkey.verifying_key()),
    );
    let pdb = sled::open(dir.path().join("pdb")).unwrap();
    let rdb = sled::open(dir.path().join("rdb")).unwrap();
    let provider_audit = AuditLog::open(&pdb, pkey.clone()).unwrap();
    let renter_audit = AuditLog::open(&rdb, rkey.clone()).unwrap();
    let provider_tunnel = Arc::new(FileTunnel::new(dir.path().join("ptunnel")).unwrap());
    let renter_tunnel = Arc::new(FileTunnel::new(dir.path().join("rtunnel")).unwrap());
    let verifying = verifying.then(|| Arc::new(VerifyingTunnel::new(renter_tunnel.clone())));
    let renter_backend: Arc<dyn Tunnel> = match &verifying {
        Some(v) => v.clone(),
        None => renter_tunnel.clone(),
    };

    let clock = Arc::new(ManualClock::starting_now());
    let provider_parts = ProviderParts {
        key: pkey,
        terms,
        sizes,
        db: pdb,
        ln: provider_ln.clone(),
        ln_pubkey: provider_info.pubkey,
        tunnel: provider_tunnel.clone(),
        audit: provider_audit.clone(),
        clock: clock.clone(),
    };
    let provider = provider_parts.build("127.0.0.1:51820", (WgKey([1; 32]), WgKey([2; 32])));
    provider.start().await.unwrap();
    let second = match second_provider {
        Some(terms) => {
            let ln2 = ln("provider2").await;
            let info2 = ln2.get_info().await.unwrap();
            let key2 = SigningKey::from_bytes(&[12; 32]);
            let peer2 = peer_id_of(&key2.verifying_key());
            let db2 = sled::open(dir.path().join("pdb2")).unwrap();
            let audit2 = AuditLog::open(&db2, key2.clone()).unwrap();
            let tunnel2 = Arc::new(FileTunnel::new(dir.path().join("ptunnel2")).unwrap());
            let p2 = Provider::with_clock(
                ProviderParams {
                    key: key2,
                    cfg: shaped(
                        ProviderConfig {
                            endpoint: "127.0.0.1:51830".into(),
                            ipv4_pools: vec!["203.0.113.0/29".into()],
                            ipv6_pools: vec!["2001:db8:200::/61".into()],
                            terms,
                            ..ProviderConfig::default()
                        },
                        &second_sizes,
                    ),
                    network: "regtest".into(),
                    ln_pubkey: info2.pubkey,
                    wg_private: WgKey([5; 32]),
                    wg_public: WgKey([6; 32]),
                    iface: "lwq0".into(),
                    listen_port: 51830,
                    ln: Arc::new(ln2),
                    tunnel: tunnel2.clone(),
                    audit: audit2.clone(),
                    db: db2,
                },
                clock.clone(),
            )
            .unwrap();
            p2.start().await.unwrap();
            Some(Arc::new(OtherProvider {
                provider: p2,
                peer: peer2,
                down: AtomicBool::new(false),
                cut_after_invoice: AtomicBool::new(false),
                tunnel: tunnel2,
                audit: audit2,
                wg_public: WgKey([6; 32]),
            }))
        }
        None => None,
    };
    let peers = Arc::new(Direct {
        others: second.iter().cloned().collect(),
        down: AtomicBool::new(false),
        cut_after_invoice: AtomicBool::new(false),
        status_lease: std::sync::Mutex::new(None),
        provider: std::sync::RwLock::new(provider.clone()),
        provider_peer,
        renter_peer,
        tamper,
        provider_ln,
        mallory_ln: mallory_ln.clone(),
        clock: clock.clone(),
    });
    let etc_wireguard = link.then(|| {
        let d = dir.path().join("etc-wireguard");
        std::fs::create_dir_all(&d).unwrap();
        d
    });
    let renter_parts = RenterParts {
        key: rkey,
        cfg: renter_cfg,
        db: rdb,
        tunnel: renter_backend,
        etc_wireguard,
        clock: clock.clone(),
    };
    World {
        renter: renter_parts.build(dir.path(), &renter_ln, &renter_audit, &peers),
        dir_path: dir.path().to_owned(),
        clock,
        renter_tunnel,
        verifying,
        second,
        _dir: dir,
        sim,
        provider,
        provider_audit,
        renter_audit,
        renter_ln,
        mallory_ln,
        provider_tunnel,
        provider_peer,
        renter_peer,
        peers,
        renter_parts,
        provider_parts,
    }
}

/// Terms where time is cheap to move through: 864 000 sat/day is 10 sat per second.
pub fn fast_terms() -> leasewire::types::Terms {
    leasewire::types::Terms {
        activation_fee_sat: 100,
        rate_sat_per_day: 864_000,
        min_initial_credit_sat: 100,
        min_topup_sat: 50,
        max_credit_sat: 1_000_000,
        reserve_days: 1,
        refund_unused: false,
        reservation_secs: 0,
    }
}

/// The kinds of every entry of an audit log, in order.
pub fn kinds(audit: &AuditLog) -> Vec<String> {
    audit.entries(0).map(|e| e.unwrap().kind).collect()
}

//! Two nodes in one process: a provider and a renter on loopback, with in-memory Lightning
//! nodes and file tunnels. The renter rents a lease; both nodes shut down cleanly and their
//! audit logs end with `node_stopped`.

// Tests may unwrap: a panic is the failure report (clippy.toml allows it in #[test]
// functions only, not in an integration test's helpers).
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use leasewire::audit::{AuditKind, TREE_NAME, entries_in};
use leasewire::config::{Config, Role, TunnelBackendKind};
use leasewire::datadir::DataDir;
use leasewire::identity::Identity;
use leasewire::lightning::testing::MemNetwork;
use leasewire::market::renter::RentArgs;
use leasewire::node::{Backends, DaemonLock, Node, NodeError, NodeHandle};
use leasewire::tunnel::FileTunnel;
use leasewire::types::SystemClock;
use leasewire::wire::LeaseState;

/// A config for one node of the test market: loopback only, file tunnels, short intervals so
/// discovery does not wait long (these are intervals, not assertions on time).
fn config(role: Role, bootstrap: Vec<String>) -> Config {
    let mut cfg = Config::default();
    cfg.node.roles = vec![role];
    cfg.node.listen = vec!["/ip4/127.0.0.1/tcp/0".into()];
    cfg.node.bootstrap = bootstrap;
    cfg.node.secret = "leasewire node test market".into();
    cfg.node.discovery_interval_secs = 1;
    cfg.tunnel.backend = TunnelBackendKind::File;
    cfg.tunnel.link_etc_wireguard = false;
    cfg.provider.endpoint = "127.0.0.1:51820".into();
    cfg.validate().unwrap();
    // The network rule: a test node never falls back to the public bootstrap peers.
    assert!(cfg.node.bootstrap_is_explicit());
    cfg
}

async fn start(dir: &Path, cfg: Config, ln: &MemNetwork, ln_name: &str) -> NodeHandle {
    let dir = DataDir::new(dir);
    Identity::create(dir.root(), false).unwrap();
    let backends = Backends {
        lightning: Arc::new(ln.node(ln_name).unwrap()),
        tunnel: Arc::new(FileTunnel::new(dir.tunnel_dir()).unwrap()),
        clock: Arc::new(SystemClock),
    };
    let lock = DaemonLock::acquire(&dir).unwrap();
    Node::start(lock, cfg, backends).await.unwrap()
}

/// The kinds of the audit entries stored in `dir`'s database, in order.
fn audit_kinds(dir: &Path) -> Vec<AuditKind> {
    let db = sled::open(DataDir::new(dir).db()).unwrap();
    let tree = db.open_tree(TREE_NAME).unwrap();
    entries_in(&tree, 0)
        .map(|e| e.unwrap().audit_kind().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_and_renter_rent_and_shut_down_in_process() {
    let tmp = tempfile::tempdir().unwrap();
    let (pdir, rdir) = (tmp.path().join("provider"), tmp.path().join("renter"));
    let ln = MemNetwork::new(&[("provider".into(), 0), ("renter".into(), 100_000)]).unwrap();

    let provider = start(&pdir, config(Role::Provider, vec![]), &ln, "provider").await;
    // A second node on the same data dir is refused before it touches anything.
    let second = DaemonLock::acquire(&DataDir::new(&pdir)).unwrap_err();
    assert!(matches!(second, NodeError::Locked(_)), "{second}");

    let addr = provider.net().listen_addrs().await.unwrap();
    let bootstrap = format!("{}/p2p/{}", addr[0], provider.peer_id());
    let renter = start(&rdir, config(Role::Renter, vec![bootstrap]), &ln, "renter").await;

    let rental = renter
        .renter()
        .unwrap()
        .rent(RentArgs {
            offer_id: None,
            credit_sat: Some(1_000),
            // How long rent may wait for discovery over loopback; it returns as soon as the
            // provider's offer is found.
            timeout: Duration::from_secs(60),
            ..RentArgs::default()
        })
        .await
        .unwrap();
    assert_eq!(rental.state, LeaseState::Active);
    assert_eq!(rental.lease.provider, provider.peer_id().to_string());
    assert_eq!(rental.lease.credit_sat, 1_000);
    let issued = provider.provider().unwrap().leases().unwrap();
    assert_eq!(issued.len(), 1);
    assert_eq!(issued[0].lease.lease_id, rental.lease.lease_id);
    assert_eq!(issued[0].state, LeaseState::Active);

    renter.shutdown().await.unwrap();
    provider.shutdown().await.unwrap();

    // Both data dirs are free again, and each log records the whole life of its node.
    for dir in [&pdir, &rdir] {
        drop(DaemonLock::acquire(&DataDir::new(dir)).unwrap());
        let kinds = audit_kinds(dir);
        assert_eq!(kinds.first(), Some(&AuditKind::NodeStarted), "{kinds:?}");
        assert_eq!(kinds.last(), Some(&AuditKind::NodeStopped), "{kinds:?}");
    }
    assert!(audit_kinds(&pdir).contains(&AuditKind::LeaseIssued));
    // Hellos and membership successes change nothing: they are not audited.
    for dir in [&pdir, &rdir] {
        let kinds = audit_kinds(dir);
        assert!(
            !kinds.contains(&AuditKind::Hello) && !kinds.contains(&AuditKind::MembershipOk),
            "{kinds:?}"
        );
    }
}

/// Polls `cond` every 100 ms, for at most a minute: these wait for real nodes talking over
/// loopback, not for market time.
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..600 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("never happened: {what}");
}

/// A renter whose discovery timer would not fire for an hour learns the market as soon as it
/// meets its first member, and learns it from that member: the offer of a provider it was never
/// told of comes through the member's offer cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renter_learns_the_market_from_the_first_member_it_meets() {
    let tmp = tempfile::tempdir().unwrap();
    let dirs = ["a", "b", "r"].map(|n| tmp.path().join(n));
    let ln = MemNetwork::new(&[("a".into(), 0), ("b".into(), 0), ("r".into(), 100_000)]).unwrap();
    let slow = |role, bootstrap| {
        let mut cfg = config(role, bootstrap);
        cfg.node.discovery_interval_secs = 3600;
        cfg
    };
    let a = start(&dirs[0], slow(Role::Provider, vec![]), &ln, "a").await;
    let addr = a.net().listen_addrs().await.unwrap();
    let boot = format!("{}/p2p/{}", addr[0], a.peer_id());
    let b = start(&dirs[1], slow(Role::Provider, vec![boot.clone()]), &ln, "b").await;
    // B meets A: A asks it for the offers it knows (its own among them).
    let b_id = b.peer_id().to_string();
    let a_cache = a.provider().unwrap().offer_cache().clone();
    eventually("A learns B's offer", || a_cache.get(&b_id).is_some()).await;

    let r = start(&dirs[2], slow(Role::Renter, vec![boot]), &ln, "r").await;
    let renter = r.renter().unwrap().clone();
    eventually("the renter lists both offers", || {
        renter.offers(None).len() == 2
    })
    .await;
    let peers: Vec<String> = renter.offers(None).into_iter().map(|o| o.peer).collect();
    assert!(peers.contains(&b_id), "{peers:?}");
    assert!(peers.contains(&a.peer_id().to_string()), "{peers:?}");
    for n in [r, b, a] {
        n.shutdown().await.unwrap();
    }
}

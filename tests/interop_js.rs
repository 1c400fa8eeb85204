//! Interop with another Kademlia implementation: js-libp2p's kad-dht (tests/interop/harness.mjs,
//! pinned npm packages installed by scripts/setup.sh), on loopback only. Every leasewire node here
//! is on the public DHT protocol (`/ipfs/kad/1.0.0`) and names the js node as its only bootstrap
//! peer (`public_bootstrap` off), so nothing dials off the machine.
//! - A js DHT client finds a leasewire provider under the market's DHT key, through a js DHT
//!   server the provider announced itself to.
//! - A leasewire renter finds a leasewire provider, and its signed offer, through a js DHT server,
//!   their only common peer.
//!
//! Without node or the installed packages the tests print `SKIPPED: node/npm packages missing`
//! and pass, except when the environment variable `CI` is set: then they fail.

// Tests may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use leasewire::config::{Config, DhtKind, DhtMode, Role, TunnelBackendKind};
use leasewire::datadir::DataDir;
use leasewire::identity::Identity;
use leasewire::lightning::testing::MemNetwork;
use leasewire::net::topic;
use leasewire::node::{Backends, DaemonLock, Node, NodeHandle};
use leasewire::tunnel::FileTunnel;
use leasewire::types::SystemClock;
use serde_json::Value;

/// The market of these tests (any secret: the DHT kind is set explicitly).
const SECRET: &str = "leasewire js interop test market";

/// The harness directory, if node runs and the harness's packages are installed. Otherwise
/// says so loudly and returns `None`, or panics when `CI` is set (CI must run this test).
fn harness_dir() -> Option<PathBuf> {
    // RUST_LOG shows what the leasewire nodes did when this test fails (DEBUG=libp2p:* does
    // the same for the js side).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop");
    let node_ok = Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let packages_ok = dir
        .join("node_modules/@libp2p/kad-dht/package.json")
        .is_file()
        && dir.join("node_modules/libp2p/package.json").is_file();
    if node_ok && packages_ok {
        return Some(dir);
    }
    let why = format!(
        "node runs: {node_ok}, packages installed in {}: {packages_ok} (run scripts/setup.sh)",
        dir.display()
    );
    if std::env::var_os("CI").is_some() {
        panic!("CI is set and the js interop harness is missing: {why}");
    }
    // Straight to the process's stderr: libtest captures `eprintln!` of a passing test, and a
    // skip must show in every run.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED: node/npm packages missing: {why}"
    );
    None
}

/// A running js DHT server; killed (and reaped) on drop, so no process is left behind.
struct JsNode {
    child: Child,
    /// Its dialable loopback address, with `/p2p/`.
    addr: String,
    peer: String,
}

impl JsNode {
    fn start(dir: &Path) -> JsNode {
        let mut child = Command::new("node")
            .arg("harness.mjs")
            .arg("server")
            .current_dir(dir)
            // The harness stops when its stdin closes, should this process die without Drop.
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let v: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("js server printed {line:?}: {e}"));
        let peer = v["peer"].as_str().unwrap().to_owned();
        let addr = v["addrs"][0].as_str().unwrap().to_owned();
        assert!(addr.starts_with("/ip4/127.0.0.1/tcp/"), "{addr}");
        assert!(addr.ends_with(&format!("/p2p/{peer}")), "{addr}");
        JsNode { child, addr, peer }
    }
}

impl Drop for JsNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the js DHT client found under `key_hex`: (peer id, addresses) per provider. It looks up
/// until it sees `want` (or 60 s pass: a bound on waiting for real processes, not an assertion
/// on time).
async fn js_find_providers(
    dir: &Path,
    bootstrap: &str,
    key_hex: &str,
    want: &str,
) -> Vec<(String, Vec<String>)> {
    let out = tokio::process::Command::new("node")
        .args([
            "harness.mjs",
            "find-providers",
            bootstrap,
            key_hex,
            "60000",
            want,
        ])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "js client: {:?}", out.status);
    let text = String::from_utf8(out.stdout).unwrap();
    let v: Value = serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("js client printed {text:?}: {e}"));
    v["providers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let addrs = p["addrs"].as_array().unwrap();
            (
                p["peer"].as_str().unwrap().to_owned(),
                addrs
                    .iter()
                    .map(|a| a.as_str().unwrap().to_owned())
                    .collect(),
            )
        })
        .collect()
}

/// A node of the test market on the public DHT protocol, loopback only, whose only bootstrap
/// peer is the js node.
fn config(role: Role, js: &JsNode) -> Config {
    let mut cfg = Config::default();
    cfg.node.roles = vec![role];
    cfg.node.listen = vec!["/ip4/127.0.0.1/tcp/0".into()];
    cfg.node.bootstrap = vec![js.addr.clone()];
    cfg.node.public_bootstrap = false;
    cfg.node.dht = Some(DhtKind::Public);
    // A provider serves the DHT too, as a public provider would: the js node admits it to its
    // routing table only then (after identify and ping).
    if role == Role::Provider {
        cfg.node.dht_mode = DhtMode::Server;
    }
    cfg.node.secret = SECRET.into();
    cfg.node.discovery_interval_secs = 1;
    cfg.tunnel.backend = TunnelBackendKind::File;
    cfg.tunnel.link_etc_wireguard = false;
    cfg.provider.endpoint = "127.0.0.1:51820".into();
    cfg.validate().unwrap();
    // The network rule: never the public bootstrap peers.
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

/// Polls `cond` every 100 ms for at most a minute: it waits for real nodes talking over
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_kad_client_finds_a_leasewire_provider() {
    let Some(harness) = harness_dir() else {
        return;
    };
    let js = JsNode::start(&harness);
    let tmp = tempfile::tempdir().unwrap();
    let ln = MemNetwork::new(&[("provider".into(), 0)]).unwrap();
    let provider = start(
        &tmp.path().join("provider"),
        config(Role::Provider, &js),
        &ln,
        "provider",
    )
    .await;
    let pid = provider.peer_id().to_string();
    let listen: Vec<String> = provider
        .net()
        .listen_addrs()
        .await
        .unwrap()
        .iter()
        .map(|a| a.to_string())
        .collect();

    // The js client knows only the js server, and asks it for the market key's providers.
    let key = topic::derive(SECRET).unwrap().dht_key_hex();
    let found = js_find_providers(&harness, &js.addr, &key, &pid).await;
    let (_, addrs) = found
        .iter()
        .find(|(p, _)| *p == pid)
        .unwrap_or_else(|| panic!("js did not find {pid} via {}: {found:?}", js.peer));
    // The record carries the provider's dialable loopback address, each address once.
    assert!(
        listen.iter().any(|l| addrs.contains(l)),
        "{addrs:?} vs {listen:?}"
    );
    let mut unique = addrs.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), addrs.len(), "duplicate addresses: {addrs:?}");
    assert!(
        addrs
            .iter()
            .all(|a| a.starts_with("/ip4/127.0.0.1/tcp/") && !a.contains("/p2p/")),
        "{addrs:?}"
    );

    provider.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leasewire_nodes_find_each_other_through_a_js_dht() {
    let Some(harness) = harness_dir() else {
        return;
    };
    let js = JsNode::start(&harness);
    let tmp = tempfile::tempdir().unwrap();
    let ln = MemNetwork::new(&[("provider".into(), 0), ("renter".into(), 100_000)]).unwrap();
    let provider = start(
        &tmp.path().join("provider"),
        config(Role::Provider, &js),
        &ln,
        "provider",
    )
    .await;
    let renter = start(
        &tmp.path().join("renter"),
        config(Role::Renter, &js),
        &ln,
        "renter",
    )
    .await;
    let pid = provider.peer_id().to_string();

    // The renter's only peer is the js node: the provider's record can only come from it.
    let r = renter.renter().unwrap().clone();
    eventually("the renter has the provider's offer", || {
        r.offers(None).iter().any(|o| o.peer == pid)
    })
    .await;
    let offer = r.offers(None).into_iter().find(|o| o.peer == pid).unwrap();
    assert_eq!(offer.offer.provider, pid);
    let found = renter.net().find_providers().await.unwrap();
    assert!(found.contains(&provider.peer_id()), "{found:?}");

    renter.shutdown().await.unwrap();
    provider.shutdown().await.unwrap();
}

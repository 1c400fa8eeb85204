//! In-process network test on 127.0.0.1: three members discover each other through a
//! bootstrap node and exchange signed requests; an outsider with another secret is refused.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use leasewire::net::{self, NetClient, NetConfig, NetError, NetEvent, NetStatus, Topic};
use leasewire::wire::messages::{Hello, Message};
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use tokio_util::sync::CancellationToken;

type Log = Arc<Mutex<Vec<String>>>;

struct Node {
    client: NetClient,
    id: PeerId,
    log: Log,
}

impl Node {
    /// The node's dialable address, with its `/p2p/` suffix.
    async fn addr(&self) -> Multiaddr {
        let addrs = self.client.listen_addrs().await.expect("listen addresses");
        addrs[0].clone().with(Protocol::P2p(self.id))
    }

    async fn status(&self) -> NetStatus {
        self.client.status().await.expect("status")
    }

    fn logged(&self, prefix: &str) -> Vec<String> {
        let log = self.log.lock().expect("log lock");
        log.iter()
            .filter(|l| l.starts_with(prefix))
            .cloned()
            .collect()
    }
}

fn hello(agent: &str, provider: bool) -> Message {
    Message::Hello(Hello {
        agent: agent.into(),
        provider,
        renter: !provider,
        network: "regtest".into(),
    })
}

/// Starts a node; it answers every inbound request with a `hello` naming `agent`, and logs
/// every event it sees.
async fn start(
    seed: u8,
    agent: &'static str,
    topic: &Topic,
    bootstrap: Vec<Multiaddr>,
    token: &CancellationToken,
) -> Node {
    let key = SigningKey::from_bytes(&[seed; 32]);
    let cfg = NetConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("multiaddr")],
        bootstrap,
        external: Vec::new(),
        topic: topic.clone(),
        request_timeout: Duration::from_secs(5),
    };
    let (client, mut events, event_loop) = net::new(&key, cfg).expect("net::new");
    tokio::spawn(event_loop.run(token.child_token()));
    let log: Log = Arc::default();
    let (responder, sink) = (client.clone(), log.clone());
    tokio::spawn(async move {
        while let Some(ev) = events.recv().await {
            let line = match ev {
                NetEvent::InboundRequest {
                    peer,
                    message,
                    channel,
                } => {
                    // Log before answering: the requester may check the log once answered.
                    let line = format!("request {peer} {}", message.name());
                    sink.lock().expect("log lock").push(line);
                    let _ = responder.respond(channel, hello(agent, true)).await;
                    continue;
                }
                NetEvent::MemberJoined { peer } => format!("joined {peer}"),
                NetEvent::MembershipRefused { peer, by_us, .. } => {
                    format!("refused {peer} by_us={by_us}")
                }
                NetEvent::BadMessage { peer, reason } => format!("bad {peer} {reason}"),
                other => format!("other {other:?}"),
            };
            sink.lock().expect("log lock").push(line);
        }
    });
    let id = client.local_peer_id();
    Node { client, id, log }
}

/// Polls `cond` on `node`'s status until it holds (10 s at most).
async fn wait_status(node: &Node, what: &str, cond: impl Fn(&NetStatus) -> bool) -> NetStatus {
    for _ in 0..200 {
        let st = node.status().await;
        if cond(&st) {
            return st;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}: {:?}", node.status().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_discover_and_talk_outsider_is_refused() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    // Argon2 is deliberately slow: derive each secret once.
    let (topic, other) = tokio::task::spawn_blocking(|| {
        (
            net::topic::derive("net-test-secret").expect("derive"),
            net::topic::derive("net-test-other-secret").expect("derive"),
        )
    })
    .await
    .expect("derive task");
    let token = CancellationToken::new();

    let boot = start(1, "boot", &topic, vec![], &token).await;
    let boot_addr = boot.addr().await;
    let provider = start(2, "provider", &topic, vec![boot_addr.clone()], &token).await;
    let renter = start(3, "renter", &topic, vec![boot_addr.clone()], &token).await;

    wait_status(&boot, "members at the bootstrap", |s| {
        s.members.contains(&provider.id) && s.members.contains(&renter.id)
    })
    .await;
    wait_status(&provider, "provider joined", |s| {
        s.members.contains(&boot.id)
    })
    .await;
    wait_status(&renter, "renter joined", |s| s.members.contains(&boot.id)).await;
    assert!(
        provider
            .logged("joined")
            .contains(&format!("joined {}", boot.id))
    );

    provider
        .client
        .start_providing()
        .await
        .expect("start providing");

    let mut found = HashSet::new();
    for _ in 0..50 {
        found = renter
            .client
            .find_providers()
            .await
            .expect("find providers");
        if found.contains(&provider.id) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        found.contains(&provider.id),
        "provider not found: {found:?}"
    );
    assert!(!found.contains(&renter.id), "self must be excluded");

    let (response, rtt) = renter
        .client
        .request(provider.id, hello("renter", false))
        .await
        .expect("request to the provider");
    assert_eq!(response, hello("provider", true));
    assert!(
        rtt > Duration::ZERO && rtt < Duration::from_secs(5),
        "rtt {rtt:?}"
    );
    assert!(
        provider
            .logged("request")
            .contains(&format!("request {} hello", renter.id)),
        "provider log: {:?}",
        provider.logged("")
    );
    let st = wait_status(&renter, "renter knows the provider", |s| {
        s.members.contains(&provider.id)
    })
    .await;
    assert!(st.members.contains(&boot.id));
    assert!(st.refused.is_empty() && st.refused_by.is_empty());
    assert!(st.connected >= 1);
    // The status serializes with text PeerIds.
    let json = serde_json::to_value(&st).expect("status json");
    assert_eq!(json["peer_id"], renter.id.to_string());

    // An outsider with another secret, pointed at the bootstrap node and the provider.
    let provider_addr = provider.addr().await;
    let outsider = start(
        4,
        "outsider",
        &other,
        vec![boot_addr, provider_addr],
        &token,
    )
    .await;
    let st = wait_status(&outsider, "outsider refused by both", |s| {
        s.refused_by.contains(&boot.id) && s.refused_by.contains(&provider.id)
    })
    .await;
    assert!(st.members.is_empty(), "outsider became a member: {st:?}");
    wait_status(&boot, "bootstrap refused the outsider", |s| {
        s.refused.contains(&outsider.id)
    })
    .await;
    let st = boot.status().await;
    assert!(!st.members.contains(&outsider.id));
    assert!(
        outsider
            .logged("refused")
            .contains(&format!("refused {} by_us=false", boot.id))
    );
    assert!(
        boot.logged("refused")
            .contains(&format!("refused {} by_us=true", outsider.id))
    );

    let found = outsider
        .client
        .find_providers()
        .await
        .expect("find providers");
    assert!(found.is_empty(), "outsider found providers: {found:?}");
    match outsider
        .client
        .request(provider.id, hello("outsider", false))
        .await
    {
        Err(NetError::NotMember { peer }) => assert_eq!(peer, provider.id),
        other => panic!("expected NotMember, got {other:?}"),
    }
    // The provider never saw a request from the outsider.
    assert!(
        !provider
            .logged("request")
            .iter()
            .any(|l| l.contains(&outsider.id.to_string()))
    );

    token.cancel();
}

#[tokio::test]
async fn loop_stops_when_clients_are_dropped() {
    let topic =
        tokio::task::spawn_blocking(|| net::topic::derive("net-test-drop").expect("derive"))
            .await
            .expect("derive task");
    let key = SigningKey::from_bytes(&[9; 32]);
    let mut cfg = NetConfig::new(topic);
    cfg.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().expect("multiaddr")];
    let (client, _events, event_loop) = net::new(&key, cfg).expect("net::new");
    let handle = tokio::spawn(event_loop.run(CancellationToken::new()));
    let addrs = client.listen_addrs().await.expect("listen addrs");
    assert!(!addrs.is_empty());
    assert!(matches!(
        client
            .request(client.local_peer_id(), hello("x", false))
            .await,
        Err(NetError::SelfRequest)
    ));
    drop(client);
    tokio::time::timeout(Duration::from_secs(5), handle)
        .await
        .expect("loop ends once every client is dropped")
        .expect("loop task");
}

#[tokio::test]
async fn bootstrap_address_without_peer_id_is_refused() {
    let topic = tokio::task::spawn_blocking(|| net::topic::derive("net-test-bad").expect("derive"))
        .await
        .expect("derive task");
    let key = SigningKey::from_bytes(&[8; 32]);
    let mut cfg = NetConfig::new(topic);
    cfg.bootstrap = vec!["/ip4/127.0.0.1/tcp/1".parse().expect("multiaddr")];
    assert!(matches!(
        net::new(&key, cfg),
        Err(NetError::BadAddress { .. })
    ));
}

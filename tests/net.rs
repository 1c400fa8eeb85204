//! In-process network tests on 127.0.0.1 (never anything else: every configuration names its
//! own loopback bootstrap peers):
//! - on the public DHT protocol, three members discover each other through a bootstrap node and
//!   exchange signed requests; an outsider with another secret is refused by the membership
//!   handshake;
//! - on a private network, members discover each other, and a raw libp2p client without the
//!   network key (plain Noise/Yamux/Kademlia) learns no member's address;
//! - a renter whose only bootstrap peer is down at its start finds it once it comes back;
//! - a provider whose first announce reached nobody announces again as soon as it meets a
//!   member, so its record is on that member even after the provider is gone.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use leasewire::net::backoff::Backoff;
use leasewire::net::{self, DhtKind, NetClient, NetConfig, NetError, NetEvent, NetStatus, Topic};
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

/// Starts a node on the public DHT protocol (loopback only: `bootstrap` is used as given);
/// see [`start_with`].
async fn start(
    seed: u8,
    agent: &'static str,
    topic: &Topic,
    bootstrap: Vec<Multiaddr>,
    token: &CancellationToken,
) -> Node {
    let cfg = NetConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("multiaddr")],
        bootstrap,
        dht: DhtKind::Public,
        ..test_config(topic)
    };
    start_with(seed, agent, cfg, token).await
}

/// Short timeouts and fast bootstrap redials, on `topic`'s default DHT kind.
fn test_config(topic: &Topic) -> NetConfig {
    NetConfig {
        request_timeout: Duration::from_secs(5),
        query_timeout: Duration::from_secs(5),
        bootstrap_backoff: Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(400),
        },
        ..NetConfig::new(topic.clone())
    }
}

/// Starts a node; it answers every inbound request with a `hello` naming `agent`, and logs
/// every event it sees.
async fn start_with(
    seed: u8,
    agent: &'static str,
    cfg: NetConfig,
    token: &CancellationToken,
) -> Node {
    let key = SigningKey::from_bytes(&[seed; 32]);
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
    assert_eq!(st.dht, DhtKind::Public);
    assert!(!st.isolated, "{st:?}");
    assert!(st.connected_members >= 1);
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

/// Starts a node on `topic`'s private network listening on `listen`.
async fn start_private(
    seed: u8,
    agent: &'static str,
    topic: &Topic,
    listen: &str,
    bootstrap: Vec<Multiaddr>,
    token: &CancellationToken,
) -> Node {
    let cfg = NetConfig {
        listen: vec![listen.parse().expect("multiaddr")],
        bootstrap,
        ..test_config(topic)
    };
    assert_eq!(
        cfg.dht,
        DhtKind::Private,
        "a cluster secret defaults to private"
    );
    start_with(seed, agent, cfg, token).await
}

/// Looks up `node`'s providers until `want` is among them.
async fn find_provider(node: &Node, want: PeerId) -> HashSet<PeerId> {
    let mut found = HashSet::new();
    for _ in 0..100 {
        if let Ok(f) = node.client.find_providers().await {
            found = f;
            if found.contains(&want) {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    found
}

/// What a raw libp2p client without the network key got out of a private member.
#[derive(Debug, Default)]
struct RawOutcome {
    connected: bool,
    dial_errors: usize,
    providers: HashSet<PeerId>,
    closest: Vec<PeerId>,
    /// Addresses of peers other than the dialed member that entered the routing table.
    addresses_learned: Vec<Multiaddr>,
}

/// A plain libp2p node (TCP, Noise, Yamux, Kademlia on both the leasewire and the IPFS
/// protocol; no private-network key, no membership handshake) that dials `member` and asks it
/// FIND_NODE and GET_PROVIDERS for `key`.
async fn raw_kad_client(member: PeerId, member_addr: Multiaddr, key: Vec<u8>) -> RawOutcome {
    use futures::StreamExt;
    use libp2p::kad::{self, GetClosestPeersOk, GetProvidersOk, QueryResult, RecordKey};
    use libp2p::swarm::SwarmEvent;
    use libp2p::{StreamProtocol, noise, tcp, yamux};

    let mut swarm = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )
        .expect("tcp")
        .with_behaviour(|key| {
            let local = key.public().to_peer_id();
            let mut cfg = kad::Config::new(StreamProtocol::new("/leasewire/kad/1.0.0"));
            cfg.set_query_timeout(Duration::from_secs(5));
            let mut k =
                kad::Behaviour::with_config(local, kad::store::MemoryStore::new(local), cfg);
            k.set_mode(Some(kad::Mode::Client));
            k
        })
        .expect("behaviour")
        .build();
    swarm.behaviour_mut().add_address(&member, member_addr);
    let q1 = swarm.behaviour_mut().get_providers(RecordKey::new(&key));
    let q2 = swarm.behaviour_mut().get_closest_peers(PeerId::random());
    let mut open = HashSet::from([q1, q2]);
    let mut out = RawOutcome::default();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !open.is_empty() {
        let ev = tokio::time::timeout_at(deadline, swarm.select_next_some())
            .await
            .expect("the raw client's queries end within their timeout");
        match ev {
            SwarmEvent::ConnectionEstablished { .. } => out.connected = true,
            SwarmEvent::OutgoingConnectionError { .. } => out.dial_errors += 1,
            // The member we added ourselves is reported too; anything else was learned.
            SwarmEvent::Behaviour(kad::Event::RoutingUpdated {
                peer, addresses, ..
            }) if peer != member => out.addresses_learned.extend(addresses.iter().cloned()),
            SwarmEvent::Behaviour(kad::Event::OutboundQueryProgressed {
                id, result, step, ..
            }) => {
                match result {
                    QueryResult::GetProviders(Ok(GetProvidersOk::FoundProviders {
                        providers,
                        ..
                    })) => out.providers.extend(providers),
                    QueryResult::GetClosestPeers(Ok(GetClosestPeersOk { peers, .. })) => {
                        out.closest.extend(peers.into_iter().map(|p| p.peer_id))
                    }
                    QueryResult::GetClosestPeers(Err(kad::GetClosestPeersError::Timeout {
                        peers,
                        ..
                    })) => out.closest.extend(peers.into_iter().map(|p| p.peer_id)),
                    _ => {}
                }
                if step.last {
                    open.remove(&id);
                }
            }
            _ => {}
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_network_hides_members_from_a_raw_dht_client() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let topic =
        tokio::task::spawn_blocking(|| net::topic::derive("net-test-private").expect("derive"))
            .await
            .expect("derive task");
    let token = CancellationToken::new();
    let any = "/ip4/127.0.0.1/tcp/0";
    let boot = start_private(31, "boot", &topic, any, vec![], &token).await;
    let boot_addr = boot.addr().await;
    let provider =
        start_private(32, "provider", &topic, any, vec![boot_addr.clone()], &token).await;
    let renter = start_private(33, "renter", &topic, any, vec![boot_addr.clone()], &token).await;
    wait_status(&provider, "provider joined", |s| {
        s.members.contains(&boot.id)
    })
    .await;
    wait_status(&renter, "renter joined", |s| s.members.contains(&boot.id)).await;
    provider
        .client
        .start_providing()
        .await
        .expect("start providing");

    // Members find each other through the private network.
    let found = find_provider(&renter, provider.id).await;
    assert!(
        found.contains(&provider.id),
        "provider not found: {found:?}"
    );
    let st = renter.status().await;
    assert_eq!(st.dht, DhtKind::Private);
    assert!(!st.isolated, "{st:?}");

    // A raw client that skips every handshake but the standard ones learns nothing.
    let before = boot.status().await.rejected_connections;
    let out = raw_kad_client(boot.id, boot_addr.clone(), topic.dht_key.clone()).await;
    assert!(
        !out.connected,
        "a non-member finished a transport handshake: {out:?}"
    );
    assert!(out.dial_errors >= 1, "{out:?}");
    assert!(out.providers.is_empty(), "{out:?}");
    for member in [boot.id, provider.id, renter.id] {
        assert!(
            !out.closest.contains(&member),
            "member {member} leaked: {out:?}"
        );
    }
    // No peer but the one it was given enters its routing table.
    assert!(out.addresses_learned.is_empty(), "{out:?}");
    // The member noticed (and counted) the failed attempts.
    wait_status(&boot, "rejected connection counted", |s| {
        s.rejected_connections > before
    })
    .await;
    // A leasewire node of another private network cannot connect either; its status says
    // the member refused it, and it stays isolated.
    let other = tokio::task::spawn_blocking(|| {
        net::topic::derive("net-test-private-other").expect("derive")
    })
    .await
    .expect("derive task");
    let outsider =
        start_private(34, "outsider", &other, any, vec![boot_addr.clone()], &token).await;
    // Usually at once; a handshake that both sides read garbage from can wait for bytes that
    // never come, ended by the handshake timeout (6 s), then the redial decides: so this poll
    // is longer than wait_status's.
    let mut st = outsider.status().await;
    for _ in 0..300 {
        if st.refused_by.contains(&boot.id) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        st = outsider.status().await;
    }
    assert!(st.refused_by.contains(&boot.id), "{st:?}");
    assert!(st.members.is_empty() && st.isolated, "{st:?}");
    assert!(
        outsider
            .client
            .find_providers()
            .await
            .unwrap_or_default()
            .is_empty()
    );
    assert!(!boot.status().await.members.contains(&outsider.id));

    // Members are unaffected.
    let st = boot.status().await;
    assert!(st.members.contains(&provider.id) && st.members.contains(&renter.id));

    token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renter_finds_its_bootstrap_peer_after_it_comes_back() {
    let topic =
        tokio::task::spawn_blocking(|| net::topic::derive("net-test-comeback").expect("derive"))
            .await
            .expect("derive task");
    let token = CancellationToken::new();
    // A port nobody listens on for now: the bootstrap peer will come up on it later.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("local addr").port()
    };
    let listen = format!("/ip4/127.0.0.1/tcp/{port}");
    let boot_key = SigningKey::from_bytes(&[41; 32]);
    let boot_id = net::keypair_of(&boot_key).public().to_peer_id();
    let boot_addr: Multiaddr = format!("{listen}/p2p/{boot_id}")
        .parse()
        .expect("multiaddr");

    let renter = start_private(
        42,
        "renter",
        &topic,
        "/ip4/127.0.0.1/tcp/0",
        vec![boot_addr],
        &token,
    )
    .await;
    // Alone: the only bootstrap peer is down.
    let st = renter.status().await;
    assert!(st.isolated, "{st:?}");
    assert!(st.members.is_empty());

    // The bootstrap peer (a provider) comes up at the address the renter knows.
    let boot = start_private(41, "boot", &topic, &listen, vec![], &token).await;
    assert_eq!(boot.id, boot_id);
    boot.client.start_providing().await.ok();
    // The renter's redials find it: a member, and the DHT routes to its provider record.
    let st = wait_status(&renter, "renter met its bootstrap peer", |s| {
        s.members.contains(&boot_id) && !s.isolated
    })
    .await;
    assert_eq!(st.connected_members, 1);
    boot.client
        .start_providing()
        .await
        .expect("start providing");
    let found = find_provider(&renter, boot_id).await;
    assert!(found.contains(&boot_id), "provider not found: {found:?}");

    token.cancel();
}

/// A provider announces while alone (its announce reaches nobody), then a member joins it: the
/// provider announces again at once, without waiting for a timed re-announce. The record is
/// then held by the member: once the provider is gone, a renter that only knows the member
/// still finds it there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_announces_again_when_it_meets_its_first_member() {
    let topic =
        tokio::task::spawn_blocking(|| net::topic::derive("net-test-reannounce").expect("derive"))
            .await
            .expect("derive task");
    let token = CancellationToken::new();
    let provider_token = CancellationToken::new();
    let any = "/ip4/127.0.0.1/tcp/0";
    let provider = start_private(51, "provider", &topic, any, vec![], &provider_token).await;
    let provider_addr = provider.addr().await;
    provider
        .client
        .start_providing()
        .await
        .expect("start providing");
    let st = provider.status().await;
    assert!(
        st.announce_pending,
        "alone, the announce reached nobody: {st:?}"
    );

    // A member dials the provider; nobody calls start_providing again.
    let member = start_private(52, "member", &topic, any, vec![provider_addr], &token).await;
    wait_status(&provider, "provider announced to its member", |s| {
        s.members.contains(&member.id) && !s.announce_pending
    })
    .await;

    // The provider leaves: only the member's copy of its record remains.
    provider_token.cancel();
    wait_status(&member, "member saw the provider leave", |s| {
        s.connected_members == 0
    })
    .await;
    let member_addr = member.addr().await;
    let renter = start_private(53, "renter", &topic, any, vec![member_addr], &token).await;
    wait_status(&renter, "renter joined the member", |s| {
        s.members.contains(&member.id)
    })
    .await;
    let found = find_provider(&renter, provider.id).await;
    assert!(
        found.contains(&provider.id),
        "record not on the member: {found:?}"
    );

    // The progressive lookup hands over each provider it returns, once.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let all = renter
        .client
        .find_providers_each(tx)
        .await
        .expect("find providers");
    let mut streamed = Vec::new();
    while let Some(peer) = rx.recv().await {
        streamed.push(peer);
    }
    assert!(all.contains(&provider.id), "{all:?}");
    assert_eq!(streamed.len(), all.len(), "{streamed:?} vs {all:?}");
    assert_eq!(streamed.into_iter().collect::<HashSet<_>>(), all);

    token.cancel();
}

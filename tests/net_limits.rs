//! The network's bounds and penalties, on 127.0.0.1 only (issue 11):
//! - a peer sending malformed frames is reported and disconnected each time, and banned once it
//!   did so `ban_after_offenses` times; a banned peer's further requests reach nobody;
//! - a member sending an oversized field is refused with an error naming the field, not its
//!   content;
//! - incoming connections per IP are capped (loopback counted here on purpose), from the first
//!   byte, and a slot is freed when its connection goes;
//! - a transport handshake that never finishes is dropped after the handshake timeout;
//! - with the memory limit below the process's size, no connection is accepted;
//! - handshakes in progress and established incoming connections are capped.
//!
//! Waits below poll real sockets and swarms (with an upper bound); nothing asserts a duration.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use futures::StreamExt;
use leasewire::net::codec::{Frame, FrameCodec, MEMBERSHIP_PROTOCOL};
use leasewire::net::limits::NetLimits;
use leasewire::net::{self, DhtKind, NetClient, NetConfig, NetEvent, NetStatus, Topic};
use leasewire::wire::framing::MAX_FRAME;
use leasewire::wire::messages::{Hello, Message};
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, noise, tcp, yamux};
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

type Log = Arc<Mutex<Vec<String>>>;

struct Node {
    client: NetClient,
    id: PeerId,
    log: Log,
}

impl Node {
    async fn addr(&self) -> Multiaddr {
        let addrs = self.client.listen_addrs().await.expect("listen addresses");
        addrs[0].clone().with(Protocol::P2p(self.id))
    }

    async fn tcp_port(&self) -> u16 {
        let addrs = self.client.listen_addrs().await.expect("listen addresses");
        addrs[0]
            .iter()
            .find_map(|p| match p {
                Protocol::Tcp(port) => Some(port),
                _ => None,
            })
            .expect("a tcp listen address")
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

fn hello(agent: &str) -> Message {
    Message::Hello(Hello {
        agent: agent.into(),
        provider: true,
        renter: false,
        network: "regtest".into(),
    })
}

async fn topic() -> Topic {
    tokio::task::spawn_blocking(|| net::topic::derive("net-limits-test"))
        .await
        .expect("join")
        .expect("topic")
}

fn config(topic: &Topic, bootstrap: Vec<Multiaddr>, limits: NetLimits) -> NetConfig {
    NetConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("multiaddr")],
        bootstrap,
        dht: DhtKind::Public,
        request_timeout: Duration::from_secs(5),
        query_timeout: Duration::from_secs(5),
        bootstrap_backoff: net::backoff::Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(400),
        },
        limits,
        ..NetConfig::new(topic.clone())
    }
}

/// Starts a node that answers every request with a `hello` and logs every event.
async fn start(seed: u8, cfg: NetConfig, token: &CancellationToken) -> Node {
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
                    let line = format!("request {peer} {}", message.name());
                    sink.lock().expect("log lock").push(line);
                    let _ = responder.respond(channel, hello("ok")).await;
                    continue;
                }
                NetEvent::MemberJoined { peer } => format!("joined {peer}"),
                NetEvent::BadMessage { peer, reason } => format!("bad {peer} {reason}"),
                NetEvent::PeerBanned { peer, secs, .. } => format!("banned {peer} {secs}"),
                other => format!("other {other:?}"),
            };
            sink.lock().expect("log lock").push(line);
        }
    });
    let id = client.local_peer_id();
    Node { client, id, log }
}

/// Polls `cond` (every 50 ms, 15 s at most).
async fn wait_for(what: &str, mut cond: impl AsyncFnMut() -> bool) {
    for _ in 0..300 {
        if cond().await {
            return;
        }
        // Waits for real sockets and swarms, not for market time.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: not reached");
}

/// A bare libp2p peer that speaks the membership protocol with 64 KiB frames: it can send a
/// frame a leasewire node must refuse (the membership protocol's limit is 1 KiB).
fn raw_peer() -> libp2p::Swarm<request_response::Behaviour<FrameCodec>> {
    libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )
        .expect("tcp")
        .with_behaviour(|_| {
            request_response::Behaviour::with_codec(
                FrameCodec::new(MAX_FRAME),
                [(MEMBERSHIP_PROTOCOL, ProtocolSupport::Full)],
                request_response::Config::default().with_request_timeout(Duration::from_secs(5)),
            )
        })
        .expect("behaviour")
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(30)))
        .build()
}

/// Sends one oversized membership frame to `target` and waits for its outcome (A drops the
/// stream and the connection, so the request fails one way or another).
async fn send_garbage(
    swarm: &mut libp2p::Swarm<request_response::Behaviour<FrameCodec>>,
    target: PeerId,
) -> request_response::OutboundFailure {
    let id = swarm
        .behaviour_mut()
        .send_request(&target, Frame::Data(vec![0xAB; 2000]));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let ev = tokio::time::timeout_at(deadline, swarm.select_next_some())
            .await
            .expect("the garbage request ends");
        match ev {
            SwarmEvent::Behaviour(request_response::Event::OutboundFailure {
                request_id,
                error,
                ..
            }) if request_id == id => return error,
            SwarmEvent::Behaviour(request_response::Event::Message { .. }) => {
                panic!("a malformed frame was answered")
            }
            _ => {}
        }
    }
}

/// Polls the raw peer's swarm until it has no connection with `peer`.
async fn drive_until_disconnected(
    swarm: &mut libp2p::Swarm<request_response::Behaviour<FrameCodec>>,
    peer: PeerId,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while swarm.is_connected(&peer) {
        tokio::time::timeout_at(deadline, swarm.select_next_some())
            .await
            .expect("the node drops the connection");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_are_penalised_and_repeat_offenders_banned() {
    let topic = topic().await;
    let token = CancellationToken::new();
    let limits = NetLimits {
        ban_after_offenses: 2,
        ..NetLimits::default()
    };
    let a = start(41, config(&topic, vec![], limits), &token).await;
    let a_addr = a.addr().await;
    let mut raw = raw_peer();
    let raw_id = *raw.local_peer_id();
    raw.add_peer_address(a.id, a_addr);

    // First offense: reported, the peer disconnected, not banned yet.
    send_garbage(&mut raw, a.id).await;
    wait_for("first offense reported", async || {
        !a.logged(&format!("bad {raw_id}")).is_empty()
    })
    .await;
    let bad = a.logged(&format!("bad {raw_id}"));
    assert!(
        bad[0].contains("malformed membership frame") && bad[0].contains("2000 bytes"),
        "{bad:?}"
    );
    assert!(
        !bad[0].contains("abab"),
        "the peer's bytes are not echoed: {bad:?}"
    );
    assert_eq!(a.status().await.banned, 0);

    // Second offense: banned.
    drive_until_disconnected(&mut raw, a.id).await;
    send_garbage(&mut raw, a.id).await;
    wait_for("the peer is banned", async || {
        !a.logged(&format!("banned {raw_id}")).is_empty()
    })
    .await;
    assert_eq!(a.status().await.banned, 1);

    // Banned: a third request is refused at the connection, so it reaches nothing.
    send_garbage(&mut raw, a.id).await;
    assert_eq!(a.logged(&format!("bad {raw_id}")).len(), 2);
    token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_fields_are_refused_without_echo() {
    let topic = topic().await;
    let token = CancellationToken::new();
    let a = start(42, config(&topic, vec![], NetLimits::default()), &token).await;
    let b = start(
        43,
        config(&topic, vec![a.addr().await], NetLimits::default()),
        &token,
    )
    .await;
    wait_for("B is a member of A", async || {
        a.status().await.members.contains(&b.id)
    })
    .await;
    let agent = "Z".repeat(60_000);
    assert!(b.client.request(a.id, hello(&agent)).await.is_err());
    wait_for("A reports B", async || {
        !a.logged(&format!("bad {}", b.id)).is_empty()
    })
    .await;
    let bad = a.logged(&format!("bad {}", b.id));
    assert!(bad[0].contains("hello.agent"), "{bad:?}");
    assert!(bad[0].contains("60000"), "{bad:?}");
    assert!(!bad[0].contains("ZZZZ"), "{bad:?}");
    assert!(
        a.logged("request").is_empty(),
        "the request reached the application"
    );
    token.cancel();
}

/// Reads until the socket ends (EOF or error): the node dropped it.
async fn wait_closed(sock: &mut tokio::net::TcpStream) {
    let mut buf = [0u8; 256];
    let closed = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match sock.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    closed.expect("the node drops the connection");
}

/// True while the socket is open with nothing to read (a pending handshake: the listener
/// waits for the dialer to speak first).
fn still_open(sock: &tokio::net::TcpStream) -> bool {
    let mut buf = [0u8; 1];
    matches!(sock.try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_ip_are_capped_from_the_first_byte() {
    let topic = topic().await;
    let token = CancellationToken::new();
    let limits = NetLimits {
        max_connections_per_ip: 2,
        limit_loopback: true,
        handshake_timeout_secs: 600,
        ..NetLimits::default()
    };
    let a = start(44, config(&topic, vec![], limits), &token).await;
    let port = a.tcp_port().await;
    let connect = || tokio::net::TcpStream::connect(("127.0.0.1", port));
    // Two half-open connections (never a byte of handshake) take both slots...
    let c1 = connect().await.expect("connect");
    let c2 = connect().await.expect("connect");
    wait_for("both are accepted", async || {
        // Accepted connections are pending in A's swarm; nothing is refused yet.
        a.status().await.rejected_connections == 0 && still_open(&c1) && still_open(&c2)
    })
    .await;
    // ...so the third is refused at once.
    let mut c3 = connect().await.expect("connect");
    wait_closed(&mut c3).await;
    assert!(still_open(&c1) && still_open(&c2));
    wait_for("the refusal is counted", async || {
        a.status().await.rejected_connections >= 1
    })
    .await;

    // A member from the same IP is refused while the slots are taken, and gets in once they
    // are freed.
    let b = start(
        45,
        config(&topic, vec![a.addr().await], NetLimits::default()),
        &token,
    )
    .await;
    drop((c1, c2));
    wait_for("B joins A once the slots are free", async || {
        a.status().await.members.contains(&b.id)
    })
    .await;
    token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_that_never_finishes_is_dropped() {
    let topic = topic().await;
    let token = CancellationToken::new();
    let limits = NetLimits {
        handshake_timeout_secs: 1,
        ..NetLimits::default()
    };
    let a = start(46, config(&topic, vec![], limits), &token).await;
    let port = a.tcp_port().await;
    let mut sock = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    wait_closed(&mut sock).await;
    wait_for("the failed handshake is counted", async || {
        a.status().await.rejected_connections >= 1
    })
    .await;
    token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_connection_is_accepted_over_the_memory_limit() {
    let topic = topic().await;
    let token = CancellationToken::new();
    // 1 MiB: far below any process, so the limit is always exceeded.
    let limits = NetLimits {
        max_memory_mb: 1,
        ..NetLimits::default()
    };
    let a = start(47, config(&topic, vec![], limits), &token).await;
    let port = a.tcp_port().await;
    let mut sock = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    wait_closed(&mut sock).await;
    wait_for("the refusal is counted", async || {
        a.status().await.rejected_connections >= 1
    })
    .await;
    assert_eq!(a.status().await.connected, 0);
    token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_handshakes_are_capped() {
    let topic = topic().await;
    let token = CancellationToken::new();
    let limits = NetLimits {
        max_pending_incoming: 1,
        handshake_timeout_secs: 600,
        ..NetLimits::default()
    };
    let a = start(48, config(&topic, vec![], limits), &token).await;
    let port = a.tcp_port().await;
    let c1 = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    // The second handshake in progress is one too many: refused at once.
    let mut c2 = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    wait_closed(&mut c2).await;
    assert!(still_open(&c1));
    wait_for("the refusal is counted", async || {
        a.status().await.rejected_connections >= 1
    })
    .await;
    token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incoming_connections_are_capped() {
    let topic = topic().await;
    let token = CancellationToken::new();
    let limits = NetLimits {
        max_incoming_connections: 1,
        ..NetLimits::default()
    };
    let a = start(49, config(&topic, vec![], limits), &token).await;
    let a_addr = a.addr().await;
    let b_token = token.child_token();
    let b = start(
        50,
        config(&topic, vec![a_addr.clone()], NetLimits::default()),
        &b_token,
    )
    .await;
    wait_for("B joins A", async || {
        a.status().await.members.contains(&b.id)
    })
    .await;
    // C is refused while B holds the only incoming slot (it keeps redialing A)...
    let c = start(
        51,
        config(&topic, vec![a_addr], NetLimits::default()),
        &token,
    )
    .await;
    wait_for("C is refused", async || {
        a.status().await.rejected_connections >= 1
    })
    .await;
    assert!(!a.status().await.members.contains(&c.id));
    // ...and gets in once B is gone.
    b_token.cancel();
    wait_for("C joins A", async || {
        a.status().await.members.contains(&c.id)
    })
    .await;
    token.cancel();
}

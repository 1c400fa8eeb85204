//! The siege scenario's attacker: `simnet attack` (a hidden subcommand, so it can run in a
//! network namespace with `--netns` and its load is its own process's) runs one attack against
//! the given daemons until its time is up and prints what it did as one JSON object.
//!
//! Every attack uses only what any member of a market holds: the market secret (public on the
//! public market), fresh identities, and the library's own envelope sealing and membership
//! handshake ([`swarm::Member`]). The attacks, after issue 11's measurements:
//!
//! - `replay-poison`: valid envelopes dated [`FUTURE_SECS`] ahead, from enough identities
//!   to fill a shared replay cache ([`IDS_PER_TARGET_POISON`] × 4096 entries);
//! - `oversized`: hellos with a 60 KB `agent` and rent requests with a 60 KB offer id;
//! - `floods`: hello floods from members and membership handshakes with a wrong key from
//!   ever new identities;
//! - `hold-open`: raw TCP connections that stop after the private-network nonce, extra
//!   connections per member, and request streams whose frame never finishes;
//! - `reservation-grab`: fresh identities ask for a lease (an address each) and never pay;
//! - `garbage`: oversized and truncated frame headers, bytes that are no envelope, envelopes
//!   with a broken signature, and garbage instead of a membership handshake.

pub mod swarm;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use leasewire::net::topic::{self, Topic};
use leasewire::types::WgKey;
use leasewire::wire::envelope;
use leasewire::wire::messages::{Hello, Message, RentRequest, StatusRequest};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt as _;

use swarm::{Member, Outgoing, Reply, Step, Target};

/// How far ahead replay-poisoning envelopes are dated: just inside the receivers' time window
/// (`envelope::TIME_WINDOW_SECS`), as far out as it goes, so the envelopes are valid and each
/// entry stays in the replay cache as long as possible.
pub const FUTURE_SECS: u64 = leasewire::wire::envelope::TIME_WINDOW_SECS - 5;
/// Identities per target in `replay-poison`: 17 × 4096 (the per-sender cap) exceeds the
/// 65 536-entry total of the shared cache.
pub const IDS_PER_TARGET_POISON: usize = 17;
/// Size of the oversized fields.
pub const OVERSIZED_BYTES: usize = 60_000;
/// Requests each flooding identity keeps in flight.
const INFLIGHT: usize = 32;
/// Raw TCP connections held per target in `hold-open`.
const RAW_CONNS_PER_TARGET: usize = 150;
/// Member identities per target in `hold-open`, each with extra connections and streams.
const HOLDERS_PER_TARGET: usize = 4;
/// Extra connections each holder opens.
const EXTRA_CONNS: usize = 10;
/// Never-finishing streams each holder keeps open.
const STALLED_STREAMS: usize = 100;
/// Concurrent loops per target for attacks that churn through identities.
const LOOPS_PER_TARGET: usize = 4;
/// How long one reply may take before the request is given up.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// Which attack to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttackKind {
    /// Future-dated valid envelopes from many identities.
    ReplayPoison,
    /// 60 KB fields in hellos and rent requests.
    Oversized,
    /// Hello floods and wrong-key membership handshakes from fresh identities.
    Floods,
    /// Connections and streams held open.
    HoldOpen,
    /// Reservations from fresh identities, never paid.
    ReservationGrab,
    /// Bad framing, non-envelopes, bad signatures, garbage handshakes.
    Garbage,
}

/// What an attack did, as `simnet attack` prints it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttackerStats {
    /// Identities created.
    pub identities: u64,
    /// Membership handshakes that succeeded.
    pub joined: u64,
    /// Membership handshakes (or dials) that failed; in `floods` these are the wrong-key ones.
    pub join_failed: u64,
    /// Requests (or raw payloads) sent.
    pub sent: u64,
    /// Responses that opened as envelopes from the target.
    pub answered: u64,
    /// Of which `error` messages (the target refused the request).
    pub refused: u64,
    /// Requests that failed (stream reset, connection closed, no reply) or garbled replies.
    pub failed: u64,
    /// Times the target closed our last connection.
    pub disconnects: u64,
    /// Most connections plus streams held open at once (`hold-open`).
    pub held_max: u64,
    /// Invoices received for rent requests never paid (`reservation-grab`).
    pub reservations: u64,
}

/// [`AttackerStats`] shared by the attack's tasks.
#[derive(Debug, Default)]
struct Counters {
    identities: AtomicU64,
    joined: AtomicU64,
    join_failed: AtomicU64,
    sent: AtomicU64,
    answered: AtomicU64,
    refused: AtomicU64,
    failed: AtomicU64,
    disconnects: AtomicU64,
    held: AtomicU64,
    held_max: AtomicU64,
    reservations: AtomicU64,
}

impl Counters {
    fn add(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    fn held(&self, delta: i64) {
        let now = if delta >= 0 {
            self.held.fetch_add(delta.unsigned_abs(), Ordering::Relaxed) + delta.unsigned_abs()
        } else {
            self.held
                .fetch_sub(delta.unsigned_abs(), Ordering::Relaxed)
                .saturating_sub(delta.unsigned_abs())
        };
        self.held_max.fetch_max(now, Ordering::Relaxed);
    }

    fn reply(&self, r: &Reply) {
        match r {
            Reply::Message(m) => {
                Counters::add(&self.answered);
                match m.as_ref() {
                    Message::Error(_) => Counters::add(&self.refused),
                    Message::PayInvoice(_) => Counters::add(&self.reservations),
                    _ => {}
                }
            }
            Reply::Garbled(why) | Reply::Failed(why) => {
                tracing::debug!("attacker request failed: {why}");
                Counters::add(&self.failed);
            }
        }
    }

    fn snapshot(&self) -> AttackerStats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        AttackerStats {
            identities: g(&self.identities),
            joined: g(&self.joined),
            join_failed: g(&self.join_failed),
            sent: g(&self.sent),
            answered: g(&self.answered),
            refused: g(&self.refused),
            failed: g(&self.failed),
            disconnects: g(&self.disconnects),
            held_max: g(&self.held_max),
            reservations: g(&self.reservations),
        }
    }
}

/// What every task of an attack shares.
#[derive(Clone)]
struct Ctx {
    topic: Topic,
    deadline: Instant,
    stats: Arc<Counters>,
}

impl Ctx {
    fn over(&self) -> bool {
        Instant::now() >= self.deadline
    }

    /// A new identity for `target` that has proven membership, or `None` (counted) when the
    /// join failed.
    async fn member(&self, target: &Target) -> Option<Member> {
        Counters::add(&self.stats.identities);
        let mut m = match Member::new(&self.topic, target.clone()) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!("attacker: {e:#}");
                return None;
            }
        };
        match m.join(&self.topic.membership_key).await {
            Ok(()) => {
                Counters::add(&self.stats.joined);
                Some(m)
            }
            Err(e) => {
                tracing::debug!("attacker join: {e:#}");
                Counters::add(&self.stats.join_failed);
                None
            }
        }
    }

    /// Rejoins with the same identity after a disconnect; `false` (counted) when refused.
    async fn rejoin(&self, m: &mut Member) -> bool {
        match m.join(&self.topic.membership_key).await {
            Ok(()) => {
                Counters::add(&self.stats.joined);
                true
            }
            Err(_) => {
                Counters::add(&self.stats.join_failed);
                false
            }
        }
    }
}

/// Runs `kind` against `targets` (`/ip4/…/tcp/…/p2p/<id>`) on the market of `secret` for
/// `secs` seconds and returns what it did.
///
/// Errors: the secret or a target is unusable. Everything the targets do to the attacker is
/// counted, not an error.
pub async fn run(
    kind: AttackKind,
    secret: &str,
    targets: &[String],
    secs: u64,
) -> Result<AttackerStats> {
    raise_fd_limit();
    let topic = topic::derive(secret).context("market secret")?;
    let targets: Vec<Target> = targets.iter().map(|t| t.parse()).collect::<Result<_>>()?;
    let ctx = Ctx {
        topic,
        deadline: Instant::now() + Duration::from_secs(secs),
        stats: Arc::new(Counters::default()),
    };
    let mut tasks = tokio::task::JoinSet::new();
    for t in &targets {
        match kind {
            AttackKind::ReplayPoison => {
                for _ in 0..IDS_PER_TARGET_POISON {
                    tasks.spawn(flood(ctx.clone(), t.clone(), Payload::FutureStatus));
                }
            }
            AttackKind::Oversized => {
                for _ in 0..2 {
                    tasks.spawn(flood(ctx.clone(), t.clone(), Payload::Oversized));
                }
            }
            AttackKind::Floods => {
                for _ in 0..LOOPS_PER_TARGET {
                    tasks.spawn(flood(ctx.clone(), t.clone(), Payload::Hello));
                    tasks.spawn(handshake_flood(ctx.clone(), t.clone()));
                }
            }
            AttackKind::HoldOpen => {
                for _ in 0..RAW_CONNS_PER_TARGET {
                    tasks.spawn(hold_raw(ctx.clone(), t.clone()));
                }
                for _ in 0..HOLDERS_PER_TARGET {
                    tasks.spawn(hold_streams(ctx.clone(), t.clone()));
                }
            }
            AttackKind::ReservationGrab => {
                for _ in 0..LOOPS_PER_TARGET {
                    tasks.spawn(grab(ctx.clone(), t.clone()));
                }
            }
            AttackKind::Garbage => {
                for _ in 0..LOOPS_PER_TARGET {
                    tasks.spawn(flood(ctx.clone(), t.clone(), Payload::Garbage));
                    tasks.spawn(garbage_handshakes(ctx.clone(), t.clone()));
                }
            }
        }
    }
    // Every task ends at the deadline; the margin covers one last reply timeout.
    let hard_stop = ctx.deadline + REPLY_TIMEOUT + Duration::from_secs(5);
    let _ = tokio::time::timeout_at(hard_stop.into(), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.abort_all();
    Ok(ctx.stats.snapshot())
}

/// Raises the soft open-file limit to the hard one: the attacker holds many sockets.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// What a flooding member sends.
#[derive(Clone, Copy, Debug)]
enum Payload {
    /// Ordinary hellos.
    Hello,
    /// Valid status requests dated [`FUTURE_SECS`] ahead.
    FutureStatus,
    /// 60 KB agent strings and offer ids.
    Oversized,
    /// One of the garbage kinds, in turn.
    Garbage,
}

fn hello(agent: Option<String>) -> Message {
    let mut h = Hello::ours(false, true, "regtest");
    if let Some(a) = agent {
        h.agent = a;
    }
    Message::Hello(h)
}

/// The `n`th request of `payload` from `key`.
fn make(payload: Payload, key: &ed25519_dalek::SigningKey, n: u64) -> Result<Outgoing> {
    let seal = |msg: &Message, ts: u64| -> Result<Vec<u8>> {
        let nonce = getrandom::u64().map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        envelope::seal_at(key, msg, ts, nonce).map_err(|e| anyhow::anyhow!("seal: {e}"))
    };
    let now = leasewire::types::now_unix();
    Ok(match payload {
        Payload::Hello => Outgoing::Frame(seal(&hello(None), now)?),
        // A request answered with a short error, so the target spends its time on the
        // envelope check (which records the nonce) rather than on the answer.
        Payload::FutureStatus => Outgoing::Frame(seal(
            &Message::StatusRequest(StatusRequest {
                lease_id: leasewire::types::random_id(),
            }),
            now + FUTURE_SECS,
        )?),
        Payload::Oversized => {
            let big = "A".repeat(OVERSIZED_BYTES);
            let msg = if n.is_multiple_of(2) {
                hello(Some(big))
            } else {
                Message::RentRequest(RentRequest {
                    request_id: leasewire::types::random_id(),
                    offer_id: big,
                    credit_sat: 1,
                    ipv4_prefix_len: Some(32),
                    ipv6_prefix_len: None,
                    wg_pubkey: WgKey([7; 32]),
                })
            };
            Outgoing::Frame(seal(&msg, now)?)
        }
        Payload::Garbage => match n % 4 {
            // A header announcing 4 GiB.
            0 => Outgoing::Raw([0xFF, 0xFF, 0xFF, 0xFF, 1, 2, 3].to_vec()),
            // A header announcing 1000 bytes, then 10 and the stream's end.
            1 => {
                let mut b = 1000u32.to_be_bytes().to_vec();
                b.extend_from_slice(&[0x5A; 10]);
                Outgoing::Raw(b)
            }
            // A well-framed payload that is no envelope.
            2 => {
                let mut b = vec![0u8; 200];
                getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
                Outgoing::Frame(b)
            }
            // A real envelope with its signature broken.
            _ => {
                let mut env = seal(&hello(None), now)?;
                if let Some(last) = env.last_mut() {
                    *last ^= 0x01;
                }
                Outgoing::Frame(env)
            }
        },
    })
}

/// A member sending `payload` requests with [`INFLIGHT`] in flight until the deadline;
/// rejoins after a disconnect, and takes a fresh identity when refused.
async fn flood(ctx: Ctx, target: Target, payload: Payload) {
    let mut n = 0u64;
    let mut m: Option<Member> = None;
    while !ctx.over() {
        let Some(member) = m.as_mut() else {
            m = ctx.member(&target).await;
            if m.is_none() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            continue;
        };
        let mut in_flight = 0usize;
        while member.member && !ctx.over() {
            while in_flight < INFLIGHT {
                match make(payload, &member.key, n) {
                    Ok(out) => {
                        member.send(out);
                        n += 1;
                        in_flight += 1;
                        Counters::add(&ctx.stats.sent);
                    }
                    Err(e) => {
                        tracing::warn!("attacker: {e:#}");
                        return;
                    }
                }
            }
            match tokio::time::timeout_at(ctx.deadline.into(), member.next()).await {
                Err(_) => return,
                Ok(Step::Reply(_, r)) => {
                    in_flight = in_flight.saturating_sub(1);
                    ctx.stats.reply(&r);
                }
                Ok(Step::Disconnected) => {
                    Counters::add(&ctx.stats.disconnects);
                    in_flight = 0;
                }
                Ok(_) => {}
            }
        }
        if ctx.over() {
            return;
        }
        if !ctx.rejoin(member).await {
            m = None;
        }
    }
}

/// Ever new identities that connect and send a membership handshake made with a wrong key.
async fn handshake_flood(ctx: Ctx, target: Target) {
    while !ctx.over() {
        Counters::add(&ctx.stats.identities);
        let mut m = match Member::new(&ctx.topic, target.clone()) {
            Ok(m) => m,
            Err(_) => return,
        };
        let mut wrong = [0u8; 32];
        if getrandom::fill(&mut wrong).is_err() {
            return;
        }
        Counters::add(&ctx.stats.sent);
        let joined = tokio::time::timeout_at(ctx.deadline.into(), m.join(&wrong)).await;
        match joined {
            Ok(Ok(())) => Counters::add(&ctx.stats.joined),
            Ok(Err(_)) => Counters::add(&ctx.stats.join_failed),
            Err(_) => return,
        }
    }
}

/// Fresh identities that connect and send garbage instead of a membership handshake.
async fn garbage_handshakes(ctx: Ctx, target: Target) {
    while !ctx.over() {
        Counters::add(&ctx.stats.identities);
        let Ok(mut m) = Member::new(&ctx.topic, target.clone()) else {
            return;
        };
        if m.dial().is_err() {
            return;
        }
        let until = (Instant::now() + REPLY_TIMEOUT).min(ctx.deadline);
        let mut sent = false;
        loop {
            match tokio::time::timeout_at(until.into(), m.next()).await {
                Err(_) => break,
                Ok(Step::Disconnected | Step::Joined(_)) => {
                    Counters::add(&ctx.stats.join_failed);
                    break;
                }
                Ok(_) => {}
            }
            if m.connected && !sent {
                let mut junk = vec![0u8; 48];
                let _ = getrandom::fill(&mut junk);
                m.send_membership(Outgoing::Frame(junk));
                Counters::add(&ctx.stats.sent);
                sent = true;
            }
        }
    }
}

/// One raw TCP connection at a time that sends the private network's 24-byte nonce and then
/// nothing, reconnecting whenever the target closes it.
async fn hold_raw(ctx: Ctx, target: Target) {
    let Some(addr) = socket_addr(&target.addr) else {
        return;
    };
    while !ctx.over() {
        let Ok(Ok(mut s)) =
            tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
                .await
        else {
            Counters::add(&ctx.stats.failed);
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        Counters::add(&ctx.stats.sent);
        let mut nonce = [0u8; 24];
        let _ = getrandom::fill(&mut nonce);
        let _ = s.write_all(&nonce).await;
        ctx.stats.held(1);
        let mut buf = [0u8; 512];
        let closed = async {
            use tokio::io::AsyncReadExt as _;
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        };
        let ended = tokio::time::timeout_at(ctx.deadline.into(), closed).await;
        ctx.stats.held(-1);
        if ended.is_ok() {
            Counters::add(&ctx.stats.disconnects);
        }
    }
}

/// A member that opens [`EXTRA_CONNS`] more connections and keeps [`STALLED_STREAMS`]
/// never-finishing request streams open, replacing each one the target ends.
async fn hold_streams(ctx: Ctx, target: Target) {
    let mut m: Option<Member> = None;
    while !ctx.over() {
        let Some(member) = m.as_mut() else {
            m = ctx.member(&target).await;
            if m.is_none() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            continue;
        };
        for _ in 0..EXTRA_CONNS {
            let _ = member.dial();
        }
        let mut open = 0usize;
        while member.member && !ctx.over() {
            while open < STALLED_STREAMS {
                member.send(Outgoing::Stall);
                open += 1;
                ctx.stats.held(1);
                Counters::add(&ctx.stats.sent);
            }
            match tokio::time::timeout_at(ctx.deadline.into(), member.next()).await {
                Err(_) => break,
                Ok(Step::Reply(_, r)) => {
                    open = open.saturating_sub(1);
                    ctx.stats.held(-1);
                    ctx.stats.reply(&r);
                }
                Ok(Step::Disconnected) => {
                    Counters::add(&ctx.stats.disconnects);
                    ctx.stats.held(-i64::try_from(open).unwrap_or(0));
                    open = 0;
                }
                Ok(_) => {}
            }
        }
        ctx.stats.held(-i64::try_from(open).unwrap_or(0));
        if ctx.over() {
            return;
        }
        if !ctx.rejoin(member).await {
            m = None;
        }
    }
}

/// Fresh identities, each asking for the target's offer and then for two leases under it,
/// paying for none.
async fn grab(ctx: Ctx, target: Target) {
    while !ctx.over() {
        let Some(mut m) = ctx.member(&target).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        Counters::add(&ctx.stats.sent);
        let offer = match m.ask(&hello(None), REPLY_TIMEOUT).await {
            Ok(r @ Reply::Message(_)) => {
                ctx.stats.reply(&r);
                match r {
                    Reply::Message(b) => match *b {
                        Message::Offer(signed) => signed.verify().ok().map(|o| (signed.id(), o)),
                        _ => None,
                    },
                    _ => None,
                }
            }
            Ok(r) => {
                ctx.stats.reply(&r);
                None
            }
            Err(_) => {
                Counters::add(&ctx.stats.failed);
                None
            }
        };
        let Some((offer_id, offer)) = offer else {
            continue;
        };
        for _ in 0..2 {
            if ctx.over() {
                return;
            }
            let mut wg = [0u8; 32];
            let _ = getrandom::fill(&mut wg);
            let req = Message::RentRequest(RentRequest {
                request_id: leasewire::types::random_id(),
                offer_id: offer_id.clone(),
                credit_sat: offer.terms.min_initial_credit_sat,
                ipv4_prefix_len: offer.ipv4.first().map(|p| p.prefix_len),
                ipv6_prefix_len: offer.ipv6.first().map(|p| p.prefix_len),
                wg_pubkey: WgKey(wg),
            });
            Counters::add(&ctx.stats.sent);
            match m.ask(&req, REPLY_TIMEOUT).await {
                Ok(r) => ctx.stats.reply(&r),
                Err(_) => Counters::add(&ctx.stats.failed),
            }
        }
    }
}

/// The TCP socket address of `/ip4/A/tcp/P` (or ip6).
fn socket_addr(addr: &libp2p::Multiaddr) -> Option<std::net::SocketAddr> {
    use libp2p::multiaddr::Protocol;
    let mut ip = None;
    let mut port = None;
    for p in addr.iter() {
        match p {
            Protocol::Ip4(a) => ip = Some(std::net::IpAddr::V4(a)),
            Protocol::Ip6(a) => ip = Some(std::net::IpAddr::V6(a)),
            Protocol::Tcp(p) => port = Some(p),
            _ => {}
        }
    }
    Some(std::net::SocketAddr::new(ip?, port?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_what_each_attack_claims() {
        let key = swarm::fresh_key().unwrap();
        let peer = leasewire::wire::signed::peer_id_of(&key.verifying_key());
        let guard = envelope::ReplayGuard::new(envelope::TIME_WINDOW_SECS);
        let now = leasewire::types::now_unix();
        // Future-dated requests are valid envelopes, inside the window.
        let Outgoing::Frame(f) = make(Payload::FutureStatus, &key, 0).unwrap() else {
            panic!("a frame");
        };
        let opened = envelope::open(&f, &peer, &guard, now).unwrap();
        assert_eq!(opened.ts, now + FUTURE_SECS);
        // Oversized: a 60 KB agent, then a 60 KB offer id, each still under one frame.
        for n in 0..2 {
            let Outgoing::Frame(f) = make(Payload::Oversized, &key, n).unwrap() else {
                panic!("a frame");
            };
            assert!(f.len() > OVERSIZED_BYTES && f.len() <= leasewire::wire::framing::MAX_FRAME);
            // A well-formed, well-signed envelope that the receiver's field limits refuse,
            // naming the field and its size.
            match envelope::open(&f, &peer, &guard, now) {
                Err(leasewire::wire::signed::WireError::FieldTooLong { field, len, .. }) => {
                    assert!(
                        ["hello.agent", "rentRequest.offer_id"].contains(&field),
                        "{field}"
                    );
                    assert_eq!(len, OVERSIZED_BYTES);
                }
                other => panic!("{other:?}"),
            }
        }
        // Garbage: none of the four opens.
        for n in 0..4 {
            match make(Payload::Garbage, &key, n).unwrap() {
                Outgoing::Raw(b) => {
                    let len = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
                    assert!(len > b.len() - 4, "header must promise more than is sent");
                }
                Outgoing::Frame(f) => assert!(envelope::open(&f, &peer, &guard, now).is_err()),
                Outgoing::Stall => panic!("no stall in garbage"),
            }
        }
    }

    #[test]
    fn targets_need_a_peer_id_and_give_a_socket() {
        let key = swarm::fresh_key().unwrap();
        let peer = leasewire::wire::signed::peer_id_of(&key.verifying_key());
        let t: Target = format!("/ip4/127.0.0.1/tcp/4001/p2p/{peer}")
            .parse()
            .unwrap();
        assert_eq!(t.peer, peer);
        assert_eq!(
            socket_addr(&t.addr),
            Some("127.0.0.1:4001".parse().unwrap())
        );
        assert!("/ip4/127.0.0.1/tcp/4001".parse::<Target>().is_err());
    }

    #[test]
    fn held_counter_keeps_its_peak() {
        let c = Counters::default();
        c.held(3);
        c.held(-2);
        c.held(1);
        let s = c.snapshot();
        assert_eq!(s.held_max, 3);
        assert_eq!(c.held.load(Ordering::Relaxed), 2);
    }
}

//! Bounds on what a remote peer can make the node spend, and the penalties for bad peers.
//!
//! - [`NetLimits`]: the `[node.limits]` configuration (connection counts, pending handshakes and
//!   their timeout, memory, streams, per-peer request rates, bans), with defaults sized for a
//!   provider serving hundreds of renters;
//! - [`IpLimit`]: a small swarm behaviour capping incoming connections (pending and established)
//!   per remote IP address, which libp2p's `connection_limits` does not do;
//! - [`Offenses`]: counts each peer's offenses (malformed frames, bad envelopes, oversized
//!   fields) and bans repeat offenders for a while;
//! - [`RateLimiter`]: token buckets per (peer, message kind), checked before a request is
//!   answered.
//!
//! Time comes in as an argument (`now`), so every rule is tested without waiting.

use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::net::IpAddr;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use libp2p::core::Endpoint;
use libp2p::core::transport::PortUse;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm, dummy,
};
use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};

/// `[node.limits]`: every bound a remote peer meets. Zero turns a limit off where the key's
/// documentation says so.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetLimits {
    /// Connections in total, both directions (incoming ones count from their first byte).
    pub max_connections: u32,
    /// Incoming connections, in handshake or established.
    pub max_incoming_connections: u32,
    /// Established connections with one peer (one is normal; two when both dial at once).
    /// Loose on purpose: it can only act once a connection is up, and a connection closed
    /// then looks like a membership refusal to a leasewire dialer.
    pub max_connections_per_peer: u32,
    /// Incoming connections (in handshake or established) from one IP address.
    pub max_connections_per_ip: u32,
    /// Count loopback addresses against `max_connections_per_ip` too. Off by default, so many
    /// nodes can share one machine (the simnet, tests); turn on to test the limit locally.
    pub limit_loopback: bool,
    /// Incoming connections still in their transport handshake (TCP accepted, Noise/Yamux
    /// not done).
    pub max_pending_incoming: u32,
    /// Outgoing dials in progress.
    pub max_pending_outgoing: u32,
    /// Seconds a transport handshake (private-network layer, Noise, Yamux) may take before
    /// the connection is dropped.
    pub handshake_timeout_secs: u64,
    /// New connections are refused while the process uses more memory than this, in MiB
    /// (resident set). 0: no memory limit.
    pub max_memory_mb: u64,
    /// Streams open at once on one connection (the multiplexer refuses more), and requests
    /// in flight at once per connection and protocol.
    pub max_streams_per_connection: u32,
    /// Requests of one kind one peer may send per minute (sustained), except those below.
    pub requests_per_minute: u32,
    /// Requests of one kind one peer may send at once before the per-minute rate applies.
    pub request_burst: u32,
    /// `rentRequest` and `topUpRequest` (each makes an invoice) one peer may send per minute.
    pub invoice_requests_per_minute: u32,
    /// `rentRequest` and `topUpRequest` one peer may send at once.
    pub invoice_request_burst: u32,
    /// Offenses (malformed frames, bad envelopes, oversized fields) within
    /// `offense_window_secs` after which a peer is banned. Every offense disconnects the peer.
    pub ban_after_offenses: u32,
    /// Seconds over which offenses are counted.
    pub offense_window_secs: u64,
    /// Seconds a ban lasts: the peer's connections are refused meanwhile.
    pub ban_secs: u64,
}

/// Default of [`NetLimits::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: u32 = 1024;
/// Default of [`NetLimits::max_connections_per_ip`].
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: u32 = 16;
/// Default of [`NetLimits::max_pending_incoming`].
pub const DEFAULT_MAX_PENDING_INCOMING: u32 = 64;
/// Default of [`NetLimits::handshake_timeout_secs`].
pub const DEFAULT_HANDSHAKE_TIMEOUT_SECS: u64 = 10;

impl Default for NetLimits {
    fn default() -> Self {
        NetLimits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_incoming_connections: 768,
            max_connections_per_peer: 8,
            max_connections_per_ip: DEFAULT_MAX_CONNECTIONS_PER_IP,
            limit_loopback: false,
            max_pending_incoming: DEFAULT_MAX_PENDING_INCOMING,
            max_pending_outgoing: 256,
            handshake_timeout_secs: DEFAULT_HANDSHAKE_TIMEOUT_SECS,
            max_memory_mb: 1024,
            max_streams_per_connection: 32,
            // Generous: a renter paging through a member's offers, or checking many leases
            // with one provider, stays far below; a flood (hundreds a second) does not.
            requests_per_minute: 600,
            request_burst: 200,
            invoice_requests_per_minute: 120,
            invoice_request_burst: 30,
            ban_after_offenses: 3,
            offense_window_secs: 600,
            ban_secs: 3600,
        }
    }
}

impl NetLimits {
    /// The handshake timeout (at least one second).
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_secs(self.handshake_timeout_secs.max(1))
    }

    /// Checks the values make sense.
    ///
    /// # Errors
    /// A message naming the first key whose value cannot work.
    pub fn validate(&self) -> Result<(), String> {
        let nonzero = [
            ("max_connections", u64::from(self.max_connections)),
            (
                "max_incoming_connections",
                u64::from(self.max_incoming_connections),
            ),
            (
                "max_connections_per_peer",
                u64::from(self.max_connections_per_peer),
            ),
            (
                "max_connections_per_ip",
                u64::from(self.max_connections_per_ip),
            ),
            ("max_pending_incoming", u64::from(self.max_pending_incoming)),
            ("max_pending_outgoing", u64::from(self.max_pending_outgoing)),
            ("handshake_timeout_secs", self.handshake_timeout_secs),
            (
                "max_streams_per_connection",
                u64::from(self.max_streams_per_connection),
            ),
            ("requests_per_minute", u64::from(self.requests_per_minute)),
            ("request_burst", u64::from(self.request_burst)),
            (
                "invoice_requests_per_minute",
                u64::from(self.invoice_requests_per_minute),
            ),
            (
                "invoice_request_burst",
                u64::from(self.invoice_request_burst),
            ),
            ("ban_after_offenses", u64::from(self.ban_after_offenses)),
        ];
        for (key, value) in nonzero {
            if value == 0 {
                return Err(format!("{key} must be at least 1"));
            }
        }
        Ok(())
    }

    /// The rate limiter these limits describe.
    pub fn rate_limiter(&self) -> RateLimiter {
        RateLimiter::new(
            Bucket::per_minute(self.requests_per_minute, self.request_burst),
            Bucket::per_minute(self.invoice_requests_per_minute, self.invoice_request_burst),
        )
    }

    /// The offense tracker these limits describe.
    pub fn offenses(&self) -> Offenses {
        Offenses::new(
            self.ban_after_offenses,
            Duration::from_secs(self.offense_window_secs),
            Duration::from_secs(self.ban_secs),
        )
    }
}

/// The IP address of a multiaddr (`/ip4/..` or `/ip6/..` first), if it has one.
fn ip_of(addr: &Multiaddr) -> Option<IpAddr> {
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    })
}

/// Why an incoming connection was refused by [`InboundLimit`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InboundRefused {
    /// Too many from one remote IP.
    #[error("too many connections from {ip} (limit {limit})")]
    PerIp {
        /// The remote address.
        ip: IpAddr,
        /// The limit.
        limit: u32,
    },
    /// Too many incoming connections.
    #[error("too many incoming connections (limit {limit})")]
    Incoming {
        /// The limit.
        limit: u32,
    },
    /// Too many connections in all.
    #[error("too many connections (limit {limit})")]
    Total {
        /// The limit.
        limit: u32,
    },
}

/// Admits incoming connections before their transport handshake: at most `max_per_ip` from one
/// remote IP, `max_incoming` incoming and `max_total` in all (handshakes in progress count).
///
/// Refusing here, rather than once the connection is established as libp2p's
/// `connection_limits` does for its established-connection bounds, matters: a dialer whose
/// connection is closed right after it came up sees its membership handshake fail, exactly as
/// when a responder refuses it, and would refuse that node for the rest of its run. A dialer
/// refused here only sees a failed dial, and tries again later.
pub struct InboundLimit {
    max_per_ip: u32,
    limit_loopback: bool,
    max_incoming: u32,
    max_total: u32,
    /// Incoming connections counted, with the IP they count against (None: loopback exempt).
    by_connection: HashMap<ConnectionId, Option<IpAddr>>,
    per_ip: HashMap<IpAddr, u32>,
    /// Established outgoing connections (they count against `max_total`).
    outgoing: HashSet<ConnectionId>,
}

impl InboundLimit {
    /// The bounds of `limits`.
    pub fn new(limits: &NetLimits) -> Self {
        InboundLimit {
            max_per_ip: limits.max_connections_per_ip.max(1),
            limit_loopback: limits.limit_loopback,
            max_incoming: limits.max_incoming_connections.max(1),
            max_total: limits.max_connections.max(1),
            by_connection: HashMap::new(),
            per_ip: HashMap::new(),
            outgoing: HashSet::new(),
        }
    }

    /// Incoming connections counted for `ip` now.
    pub fn count(&self, ip: &IpAddr) -> u32 {
        self.per_ip.get(ip).copied().unwrap_or(0)
    }

    /// Incoming connections counted now (in handshake or established).
    pub fn incoming(&self) -> usize {
        self.by_connection.len()
    }

    /// Admits or refuses a new incoming connection from `remote`.
    fn admit(&mut self, id: ConnectionId, remote: &Multiaddr) -> Result<(), InboundRefused> {
        let incoming = self.by_connection.len();
        if incoming >= self.max_incoming as usize {
            return Err(InboundRefused::Incoming {
                limit: self.max_incoming,
            });
        }
        if incoming + self.outgoing.len() >= self.max_total as usize {
            return Err(InboundRefused::Total {
                limit: self.max_total,
            });
        }
        let ip = ip_of(remote).filter(|ip| self.limit_loopback || !ip.is_loopback());
        if let Some(ip) = ip {
            let n = self.per_ip.entry(ip).or_insert(0);
            if *n >= self.max_per_ip {
                return Err(InboundRefused::PerIp {
                    ip,
                    limit: self.max_per_ip,
                });
            }
            *n += 1;
        }
        self.by_connection.insert(id, ip);
        Ok(())
    }

    /// A connection ended (or was refused after we admitted it).
    fn release(&mut self, id: ConnectionId) {
        self.outgoing.remove(&id);
        let Some(ip) = self.by_connection.remove(&id) else {
            return;
        };
        if let Some(ip) = ip
            && let Some(n) = self.per_ip.get_mut(&ip)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_ip.remove(&ip);
            }
        }
    }
}

impl NetworkBehaviour for InboundLimit {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_pending_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        _local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.admit(connection_id, remote_addr)
            .map_err(ConnectionDenied::new)
    }

    fn handle_established_inbound_connection(
        &mut self,
        _connection_id: ConnectionId,
        _peer: PeerId,
        _local_addr: &Multiaddr,
        _remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _connection_id: ConnectionId,
        _peer: PeerId,
        _addr: &Multiaddr,
        _role_override: Endpoint,
        _port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionEstablished(c) if c.endpoint.is_dialer() => {
                self.outgoing.insert(c.connection_id);
            }
            FromSwarm::ConnectionClosed(c) => self.release(c.connection_id),
            FromSwarm::ListenFailure(f) => self.release(f.connection_id),
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _peer: PeerId,
        _connection_id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

/// Most peers whose recent offenses are remembered; past it the one whose last offense is
/// oldest is forgotten (fresh identities are free, so this must be bounded).
const MAX_OFFENDERS: usize = 4096;

/// Most peers banned at once; past it the ban ending soonest is lifted early.
const MAX_BANNED: usize = 4096;

/// What an offense led to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Counted: the peer has this many offenses in the window (below the ban threshold).
    Counted(u32),
    /// The peer is banned until then.
    Banned(Instant),
}

/// Offense counts and bans (see the module documentation).
#[derive(Debug)]
pub struct Offenses {
    threshold: u32,
    window: Duration,
    ban: Duration,
    recent: HashMap<PeerId, VecDeque<Instant>>,
    bans: HashMap<PeerId, Instant>,
}

impl Offenses {
    /// Bans for `ban` a peer with `threshold` offenses within `window`.
    pub fn new(threshold: u32, window: Duration, ban: Duration) -> Self {
        Offenses {
            threshold: threshold.max(1),
            window,
            ban,
            recent: HashMap::new(),
            bans: HashMap::new(),
        }
    }

    /// Records an offense of `peer` at `now`. Returns the verdict, and a peer whose ban was
    /// lifted early to make room (to unblock), if any.
    pub fn offend(&mut self, peer: PeerId, now: Instant) -> (Verdict, Option<PeerId>) {
        if let Some(&until) = self.bans.get(&peer)
            && until > now
        {
            return (Verdict::Banned(until), None);
        }
        if !self.recent.contains_key(&peer) && self.recent.len() >= MAX_OFFENDERS {
            let window = self.window;
            self.recent.retain(|_, times| {
                times
                    .back()
                    .is_some_and(|&t| now.duration_since(t) < window)
            });
            if self.recent.len() >= MAX_OFFENDERS
                && let Some(oldest) = self
                    .recent
                    .iter()
                    .min_by_key(|(_, times)| times.back().copied())
                    .map(|(p, _)| *p)
            {
                self.recent.remove(&oldest);
            }
        }
        let times = self.recent.entry(peer).or_default();
        while times
            .front()
            .is_some_and(|&t| now.duration_since(t) >= self.window)
        {
            times.pop_front();
        }
        times.push_back(now);
        let count = u32::try_from(times.len()).unwrap_or(u32::MAX);
        if count < self.threshold {
            return (Verdict::Counted(count), None);
        }
        self.recent.remove(&peer);
        let mut lifted = None;
        if self.bans.len() >= MAX_BANNED
            && let Some(soonest) = self
                .bans
                .iter()
                .min_by_key(|(_, until)| **until)
                .map(|(p, _)| *p)
        {
            self.bans.remove(&soonest);
            lifted = Some(soonest);
        }
        let until = now + self.ban;
        self.bans.insert(peer, until);
        (Verdict::Banned(until), lifted)
    }

    /// True while `peer` is banned.
    pub fn is_banned(&self, peer: &PeerId, now: Instant) -> bool {
        self.bans.get(peer).is_some_and(|&until| until > now)
    }

    /// Number of bans in force or not yet swept.
    pub fn banned(&self) -> usize {
        self.bans.len()
    }

    /// Lifts the bans that ended by `now`; returns those peers.
    pub fn expire(&mut self, now: Instant) -> Vec<PeerId> {
        let mut ended = Vec::new();
        self.bans.retain(|p, until| {
            let keep = *until > now;
            if !keep {
                ended.push(*p);
            }
            keep
        });
        ended
    }
}

/// A token bucket's shape: `burst` tokens, refilled at `per_minute` a minute.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    burst: f64,
    per_sec: f64,
}

impl Bucket {
    /// `per_minute` requests a minute sustained, `burst` at once (each at least 1).
    pub fn per_minute(per_minute: u32, burst: u32) -> Bucket {
        Bucket {
            burst: f64::from(burst.max(1)),
            per_sec: f64::from(per_minute.max(1)) / 60.0,
        }
    }
}

/// Most (peer, kind) buckets kept; past it full buckets (idle peers) are dropped first.
const MAX_BUCKETS: usize = 16_384;

/// Per-peer, per-message-kind token buckets.
#[derive(Debug)]
pub struct RateLimiter {
    normal: Bucket,
    invoice: Bucket,
    /// (peer, kind) -> (tokens, last refill).
    buckets: HashMap<(PeerId, &'static str), (f64, Instant)>,
}

/// Request kinds that make the provider create a Lightning invoice.
const INVOICE_KINDS: &[&str] = &["rentRequest", "topUpRequest"];

impl RateLimiter {
    /// `normal` for most kinds, `invoice` for the kinds that create an invoice.
    pub fn new(normal: Bucket, invoice: Bucket) -> RateLimiter {
        RateLimiter {
            normal,
            invoice,
            buckets: HashMap::new(),
        }
    }

    /// Takes a token for one `kind` request of `peer` at `now`: `Ok`, or `Err(wait)` with how
    /// long until the next token.
    pub fn check(
        &mut self,
        peer: PeerId,
        kind: &'static str,
        now: Instant,
    ) -> Result<(), Duration> {
        let shape = if INVOICE_KINDS.contains(&kind) {
            self.invoice
        } else {
            self.normal
        };
        if self.buckets.len() >= MAX_BUCKETS && !self.buckets.contains_key(&(peer, kind)) {
            self.shrink(now);
        }
        let (tokens, last) = self
            .buckets
            .entry((peer, kind))
            .or_insert((shape.burst, now));
        let elapsed = now.saturating_duration_since(*last).as_secs_f64();
        *tokens = (*tokens + elapsed * shape.per_sec).min(shape.burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            return Ok(());
        }
        Err(Duration::from_secs_f64((1.0 - *tokens) / shape.per_sec))
    }

    /// Drops buckets that have refilled (their peers are idle: a new bucket starts full
    /// anyway); if none has, the least recently used half.
    fn shrink(&mut self, now: Instant) {
        let (normal, invoice) = (self.normal, self.invoice);
        self.buckets.retain(|(_, kind), (tokens, last)| {
            let shape = if INVOICE_KINDS.contains(kind) {
                invoice
            } else {
                normal
            };
            let refilled =
                *tokens + now.saturating_duration_since(*last).as_secs_f64() * shape.per_sec;
            refilled < shape.burst
        });
        if self.buckets.len() >= MAX_BUCKETS {
            let mut lasts: Vec<Instant> = self.buckets.values().map(|(_, l)| *l).collect();
            lasts.sort();
            let median = lasts[lasts.len() / 2];
            self.buckets.retain(|_, (_, last)| *last > median);
        }
    }

    /// Number of buckets kept.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// True when no bucket is kept.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    #[test]
    fn defaults_are_valid_and_parse_from_toml() {
        NetLimits::default().validate().unwrap();
        let l: NetLimits = toml::from_str("max_connections_per_ip = 4\nban_secs = 60\n").unwrap();
        assert_eq!(l.max_connections_per_ip, 4);
        assert_eq!(l.ban_secs, 60);
        assert_eq!(l.max_connections, DEFAULT_MAX_CONNECTIONS);
        assert!(toml::from_str::<NetLimits>("no_such_limit = 1\n").is_err());
        let zero = NetLimits {
            request_burst: 0,
            ..NetLimits::default()
        };
        assert!(zero.validate().unwrap_err().contains("request_burst"));
    }

    fn limit(per_ip: u32, loopback: bool, incoming: u32, total: u32) -> InboundLimit {
        InboundLimit::new(&NetLimits {
            max_connections_per_ip: per_ip,
            limit_loopback: loopback,
            max_incoming_connections: incoming,
            max_connections: total,
            ..NetLimits::default()
        })
    }

    fn cid(n: usize) -> ConnectionId {
        ConnectionId::new_unchecked(n)
    }

    #[test]
    fn ip_limit_counts_pending_and_established_and_releases() {
        let mut l = limit(2, false, 100, 100);
        let a = addr("/ip4/192.0.2.1/tcp/5000");
        l.admit(cid(1), &a).unwrap();
        l.admit(cid(2), &addr("/ip4/192.0.2.1/tcp/5001")).unwrap();
        let err = l.admit(cid(3), &a).unwrap_err();
        assert!(matches!(err, InboundRefused::PerIp { limit: 2, .. }));
        assert!(err.to_string().contains("192.0.2.1"), "{err}");
        // Another address is not affected.
        l.admit(cid(4), &addr("/ip4/192.0.2.2/tcp/5000")).unwrap();
        // A closed (or failed) connection frees its slot; an unknown id changes nothing.
        l.release(cid(1));
        l.release(cid(3));
        assert_eq!(l.count(&"192.0.2.1".parse().unwrap()), 1);
        l.admit(cid(3), &a).unwrap();
        assert!(l.admit(cid(5), &a).is_err());
    }

    #[test]
    fn ip_limit_leaves_loopback_alone_unless_asked() {
        let lo = addr("/ip4/127.0.0.1/tcp/5000");
        let mut l = limit(1, false, 100, 100);
        for i in 0..10 {
            l.admit(cid(i), &lo).unwrap();
        }
        // Exempt from the per-IP cap, but still counted as incoming.
        assert_eq!(l.incoming(), 10);
        let mut l = limit(1, true, 100, 100);
        l.admit(cid(1), &lo).unwrap();
        assert!(l.admit(cid(2), &lo).is_err());
    }

    #[test]
    fn incoming_and_total_caps_refuse_before_the_handshake() {
        let mut l = limit(100, true, 2, 3);
        l.admit(cid(1), &addr("/ip4/192.0.2.1/tcp/1")).unwrap();
        l.admit(cid(2), &addr("/ip4/192.0.2.2/tcp/1")).unwrap();
        assert!(matches!(
            l.admit(cid(3), &addr("/ip4/192.0.2.3/tcp/1")),
            Err(InboundRefused::Incoming { limit: 2 })
        ));
        l.release(cid(2));
        // One outgoing connection is up: with one incoming, one more fits under the total.
        l.outgoing.insert(cid(10));
        l.outgoing.insert(cid(11));
        assert!(matches!(
            l.admit(cid(3), &addr("/ip4/192.0.2.3/tcp/1")),
            Err(InboundRefused::Total { limit: 3 })
        ));
        l.release(cid(11));
        l.admit(cid(3), &addr("/ip4/192.0.2.3/tcp/1")).unwrap();
    }

    #[test]
    fn repeat_offenders_are_banned_and_bans_expire() {
        let t0 = Instant::now();
        let mut o = Offenses::new(3, Duration::from_secs(600), Duration::from_secs(3600));
        let (bad, other) = (PeerId::random(), PeerId::random());
        assert_eq!(o.offend(bad, t0).0, Verdict::Counted(1));
        assert_eq!(o.offend(other, t0).0, Verdict::Counted(1));
        assert_eq!(
            o.offend(bad, t0 + Duration::from_secs(1)).0,
            Verdict::Counted(2)
        );
        let until = t0 + Duration::from_secs(2) + Duration::from_secs(3600);
        assert_eq!(
            o.offend(bad, t0 + Duration::from_secs(2)).0,
            Verdict::Banned(until)
        );
        assert!(o.is_banned(&bad, t0 + Duration::from_secs(3)));
        assert!(!o.is_banned(&other, t0 + Duration::from_secs(3)));
        assert!(o.expire(until - Duration::from_secs(1)).is_empty());
        assert_eq!(o.expire(until), vec![bad]);
        assert!(!o.is_banned(&bad, until));
        // After the ban the count starts afresh.
        assert_eq!(o.offend(bad, until).0, Verdict::Counted(1));
    }

    #[test]
    fn offenses_outside_the_window_do_not_count() {
        let t0 = Instant::now();
        let mut o = Offenses::new(2, Duration::from_secs(60), Duration::from_secs(60));
        let p = PeerId::random();
        assert_eq!(o.offend(p, t0).0, Verdict::Counted(1));
        assert_eq!(
            o.offend(p, t0 + Duration::from_secs(61)).0,
            Verdict::Counted(1)
        );
        assert!(matches!(
            o.offend(p, t0 + Duration::from_secs(62)).0,
            Verdict::Banned(_)
        ));
    }

    #[test]
    fn offender_memory_is_bounded() {
        let t0 = Instant::now();
        let mut o = Offenses::new(2, Duration::from_secs(600), Duration::from_secs(60));
        for i in 0..(MAX_OFFENDERS as u64 + 10) {
            o.offend(PeerId::random(), t0 + Duration::from_millis(i));
        }
        assert!(o.recent.len() <= MAX_OFFENDERS);
        for i in 0..(MAX_BANNED as u64 + 10) {
            let p = PeerId::random();
            o.offend(p, t0 + Duration::from_millis(i));
            o.offend(p, t0 + Duration::from_millis(i));
        }
        assert!(o.banned() <= MAX_BANNED);
    }

    #[test]
    fn rate_limiter_allows_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(Bucket::per_minute(60, 3), Bucket::per_minute(6, 1));
        let (p, q) = (PeerId::random(), PeerId::random());
        for _ in 0..3 {
            r.check(p, "statusRequest", t0).unwrap();
        }
        let wait = r.check(p, "statusRequest", t0).unwrap_err();
        assert!(
            wait <= Duration::from_secs(1) && wait > Duration::ZERO,
            "{wait:?}"
        );
        // Another kind and another peer have their own buckets.
        r.check(p, "hello", t0).unwrap();
        r.check(q, "statusRequest", t0).unwrap();
        // One token a second comes back.
        r.check(p, "statusRequest", t0 + Duration::from_secs(1))
            .unwrap();
        assert!(
            r.check(p, "statusRequest", t0 + Duration::from_secs(1))
                .is_err()
        );
        // Invoice-making requests have the tighter bucket.
        r.check(p, "rentRequest", t0).unwrap();
        let wait = r.check(p, "rentRequest", t0).unwrap_err();
        assert!(wait > Duration::from_secs(9), "{wait:?}");
        r.check(p, "rentRequest", t0 + Duration::from_secs(10))
            .unwrap();
    }

    #[test]
    fn rate_limiter_memory_is_bounded() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(Bucket::per_minute(60, 2), Bucket::per_minute(6, 1));
        for i in 0..(MAX_BUCKETS as u64 + 100) {
            // Each peer spends a token, so its bucket is not full and is kept as long as
            // possible.
            r.check(PeerId::random(), "hello", t0 + Duration::from_micros(i))
                .unwrap();
        }
        assert!(r.len() <= MAX_BUCKETS);
    }
}

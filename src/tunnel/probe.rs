//! ICMP echo probes through a tunnel interface: the "probe through the tunnel" half of
//! [`Tunnel::verify`](super::Tunnel::verify).
//!
//! Steps of [`icmp_echo`]:
//! 1. open a raw ICMP (IPv4) or ICMPv6 socket (needs `CAP_NET_RAW`), bind it to the probe's
//!    source address and to the interface (`SO_BINDTODEVICE`), so the echo can only leave
//!    through the tunnel and only replies arriving through it are seen;
//! 2. pick a random identifier and payload token for this probe;
//! 3. send `attempts` echo requests spaced evenly across the timeout, and read replies in
//!    between, ignoring every ICMP message that is not an echo reply from the target carrying
//!    our identifier, one of our sequence numbers and our token (raw sockets see all ICMP
//!    traffic to the bound address, including other probes' replies);
//! 4. the first matching reply gives the round-trip time; none by the deadline is `Ok(None)`.
//!
//! Namespaces: the socket belongs to the network namespace of the thread that creates it,
//! which is the thread polling [`icmp_echo`]'s future. leasewire runs the whole process inside
//! the namespace it manages (see the [`wireguard`](super::wireguard) module docs), so any
//! runtime thread will do; the socket is non-blocking and driven by tokio's reactor, so no
//! thread is parked while waiting for replies.

use std::mem::MaybeUninit;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::time::Instant;

use super::{ProbeSpec, TunnelError, validate_iface_name};

/// ICMP (v4) echo request / reply types (RFC 792).
const ICMP4_ECHO_REQUEST: u8 = 8;
const ICMP4_ECHO_REPLY: u8 = 0;
/// ICMPv6 echo request / reply types (RFC 4443).
const ICMP6_ECHO_REQUEST: u8 = 128;
const ICMP6_ECHO_REPLY: u8 = 129;
/// ICMP header: type, code, checksum, identifier, sequence number.
const ICMP_HEADER_LEN: usize = 8;
/// Random bytes carried in every echo of one probe, so a reply to another prober that happens
/// to use the same identifier is not taken for ours.
pub const TOKEN_LEN: usize = 16;
/// Large enough for any reply we accept (IPv4 header with options + ICMP + token); longer
/// datagrams are truncated by the kernel and then fail to match.
const RECV_BUF_LEN: usize = 1500;
/// Shortest accepted timeout: below this no echo can be expected back even on a LAN.
const MIN_TIMEOUT: Duration = Duration::from_millis(10);
/// Most echoes one probe may send; more would be a flood, not a probe.
pub const MAX_ATTEMPTS: u32 = 100;

/// IP version of a probe; both addresses of a [`ProbeSpec`] must share it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

/// What identifies the replies to one probe.
#[derive(Clone, Debug, PartialEq, Eq)]
struct EchoId {
    family: Family,
    /// The probe target: replies must come from it.
    target: IpAddr,
    identifier: u16,
    token: [u8; TOKEN_LEN],
}

/// Sends ICMP echoes from `spec.source` to `spec.target` out of interface `iface` and returns
/// the round-trip time of the first matching reply, or `Ok(None)` when none arrives within
/// `spec.timeout`.
///
/// `spec.attempts` echoes (0 counts as 1) are sent at `timeout / attempts` intervals; the
/// first reply to any of them ends the probe. A send that the kernel refuses with a routing
/// error (unreachable network or host, no buffer space) counts as an unanswered attempt, since
/// a tunnel that cannot carry the echo is simply not verified.
///
/// Must be called from inside a tokio runtime, in the network namespace of `iface` (see the
/// module docs).
///
/// Errors: [`TunnelError::InvalidName`] for a bad interface name; [`TunnelError::InvalidSpec`]
/// when the addresses differ in family, either is unspecified or multicast, the timeout is
/// below 10 ms or there are more than [`MAX_ATTEMPTS`] attempts; [`TunnelError::Io`] when the
/// socket cannot be opened or bound (without `CAP_NET_RAW` the message says so; an absent
/// interface gives `ENODEV`, a source address not on this host `EADDRNOTAVAIL`) or receiving
/// fails.
pub async fn icmp_echo(spec: &ProbeSpec, iface: &str) -> Result<Option<Duration>, TunnelError> {
    validate_iface_name(iface)?;
    let family = check_spec(spec)?;
    let attempts = spec.attempts.max(1);
    let id = EchoId {
        family,
        target: spec.target,
        identifier: random_u16()?,
        token: random_token()?,
    };
    let sock = open_socket(spec, iface)?;
    // SAFETY: `Socket` owns its descriptor, which stays open and is the same on every
    // `as_raw_fd` call until the socket is dropped, which only happens with the `AsyncFd`.
    let sock =
        unsafe { AsyncFd::register_with_interest(sock, Interest::READABLE) }.map_err(|e| {
            let (_, e) = e.into_parts();
            TunnelError::io("registering the ICMP probe socket with tokio", e)
        })?;
    let dest = SockAddr::from(SocketAddr::new(spec.target, 0));

    let start = Instant::now();
    let deadline = start + spec.timeout;
    let interval = spec.timeout / attempts;
    // Send time of each sequence number, indexed by sequence number.
    let mut sent: Vec<Instant> = Vec::with_capacity(attempts as usize);
    let mut buf = [MaybeUninit::<u8>::uninit(); RECV_BUF_LEN];
    loop {
        let next_send =
            (sent.len() < attempts as usize).then(|| start + interval * sent.len() as u32);
        tokio::select! {
            // Sends come first so that a late reply does not delay the next echo.
            biased;
            _ = tokio::time::sleep_until(next_send.unwrap_or(deadline)), if next_send.is_some() => {
                let seq = u16::try_from(sent.len()).expect("attempts to be capped below 2^16");
                let packet = echo_request(&id, seq);
                sent.push(Instant::now());
                match sock.get_ref().send_to(&packet, &dest) {
                    Ok(_) => tracing::trace!(%iface, target = %spec.target, seq, "ICMP echo sent"),
                    Err(e) if is_unanswerable(&e) => {
                        tracing::debug!(%iface, target = %spec.target, seq, error = %e,
                            "ICMP echo not sent; counting it as unanswered");
                    }
                    Err(e) => {
                        return Err(TunnelError::io(
                            format!("sending an ICMP echo to {} on {iface}", spec.target),
                            e,
                        ));
                    }
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                tracing::debug!(%iface, target = %spec.target, attempts, "no ICMP echo reply");
                return Ok(None);
            }
            ready = sock.readable() => {
                let mut guard = ready
                    .map_err(|e| TunnelError::io("waiting for ICMP replies", e))?;
                // Drain everything queued before waiting again.
                loop {
                    let (n, from) = match guard.try_io(|s| s.get_ref().recv_from(&mut buf)) {
                        Ok(Ok(got)) => got,
                        Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Ok(Err(e)) => {
                            return Err(TunnelError::io(
                                format!("receiving ICMP replies on {iface}"),
                                e,
                            ));
                        }
                        // Drained: try_io cleared readiness, wait for the reactor again.
                        Err(_would_block) => break,
                    };
                    // SAFETY: recv_from wrote (initialized) the first `n` bytes of `buf`, and
                    // the kernel never reports more than the buffer's length.
                    let data = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), n) };
                    let from = from.as_socket().map(|a| a.ip());
                    if let Some(seq) = match_reply(&id, data, from)
                        && let Some(at) = sent.get(usize::from(seq))
                    {
                        let rtt = at.elapsed();
                        tracing::debug!(%iface, target = %spec.target, seq, ?rtt, "ICMP echo reply");
                        return Ok(Some(rtt));
                    }
                }
            }
        }
    }
}

/// Checks a probe spec and returns its address family.
fn check_spec(spec: &ProbeSpec) -> Result<Family, TunnelError> {
    let bad = |why: String| TunnelError::InvalidSpec(format!("probe: {why}"));
    let family = match (spec.source, spec.target) {
        (IpAddr::V4(_), IpAddr::V4(_)) => Family::V4,
        (IpAddr::V6(_), IpAddr::V6(_)) => Family::V6,
        (s, t) => {
            return Err(bad(format!(
                "source {s} and target {t} differ in IP version"
            )));
        }
    };
    for (what, a) in [("source", spec.source), ("target", spec.target)] {
        if a.is_unspecified() || a.is_multicast() {
            return Err(bad(format!("{what} {a} is not a unicast address")));
        }
    }
    if spec.timeout < MIN_TIMEOUT {
        return Err(bad(format!(
            "timeout {:?} is below {MIN_TIMEOUT:?}",
            spec.timeout
        )));
    }
    if spec.attempts > MAX_ATTEMPTS {
        return Err(bad(format!(
            "{} attempts is more than {MAX_ATTEMPTS}",
            spec.attempts
        )));
    }
    Ok(family)
}

/// Opens the raw socket, non-blocking, bound to the interface and the source address.
fn open_socket(spec: &ProbeSpec, iface: &str) -> Result<Socket, TunnelError> {
    let (domain, protocol) = match spec.source {
        IpAddr::V4(_) => (Domain::IPV4, Protocol::ICMPV4),
        IpAddr::V6(_) => (Domain::IPV6, Protocol::ICMPV6),
    };
    let sock = Socket::new(domain, Type::RAW, Some(protocol)).map_err(|e| {
        let hint = if e.raw_os_error() == Some(libc::EPERM) {
            " (raw ICMP sockets need CAP_NET_RAW: run as root)"
        } else {
            ""
        };
        TunnelError::io(format!("opening a raw ICMP socket{hint}"), e)
    })?;
    sock.set_nonblocking(true)
        .map_err(|e| TunnelError::io("making the ICMP socket non-blocking", e))?;
    // The device binding is what forces the echo into the tunnel even if the routing tables
    // would send it elsewhere, and what keeps replies from other interfaces out.
    sock.bind_device(Some(iface.as_bytes()))
        .map_err(|e| TunnelError::io(format!("binding the ICMP socket to interface {iface}"), e))?;
    sock.bind(&SockAddr::from(SocketAddr::new(spec.source, 0)))
        .map_err(|e| {
            TunnelError::io(
                format!("binding the ICMP socket to source address {}", spec.source),
                e,
            )
        })?;
    Ok(sock)
}

/// Send errors that mean "this echo cannot get through now" rather than a broken socket.
fn is_unanswerable(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENETUNREACH | libc::EHOSTUNREACH | libc::ENOBUFS | libc::EAGAIN | libc::ENOKEY)
    )
}

fn random_u16() -> Result<u16, TunnelError> {
    let mut b = [0u8; 2];
    getrandom::fill(&mut b)
        .map_err(|e| TunnelError::Backend(format!("no randomness for the ICMP identifier: {e}")))?;
    Ok(u16::from_be_bytes(b))
}

fn random_token() -> Result<[u8; TOKEN_LEN], TunnelError> {
    let mut t = [0u8; TOKEN_LEN];
    getrandom::fill(&mut t)
        .map_err(|e| TunnelError::Backend(format!("no randomness for the ICMP token: {e}")))?;
    Ok(t)
}

/// The Internet checksum (RFC 1071): one's complement of the one's complement sum of the
/// data as big-endian 16-bit words, an odd last byte padded with zero.
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut words = data.chunks_exact(2);
    for w in &mut words {
        sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Builds an echo request: ICMP header + token. For IPv4 the checksum is filled in; for
/// ICMPv6 it stays zero because it covers a pseudo-header with addresses only the kernel
/// knows for sure, and Linux always computes it on raw ICMPv6 sockets.
fn echo_request(id: &EchoId, seq: u16) -> Vec<u8> {
    let kind = match id.family {
        Family::V4 => ICMP4_ECHO_REQUEST,
        Family::V6 => ICMP6_ECHO_REQUEST,
    };
    let mut p = Vec::with_capacity(ICMP_HEADER_LEN + TOKEN_LEN);
    p.extend_from_slice(&[kind, 0, 0, 0]);
    p.extend_from_slice(&id.identifier.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&id.token);
    if id.family == Family::V4 {
        let c = checksum(&p);
        p[2..4].copy_from_slice(&c.to_be_bytes());
    }
    p
}

/// If `packet` (as read from the raw socket: with the IPv4 header for v4, the bare ICMPv6
/// message for v6) is an echo reply to `id` sent by its target, returns its sequence number.
///
/// `from` is the sender reported by the socket; for IPv4 the header's source must agree.
/// Anything else (other ICMP types, other identifiers or tokens, other senders, bad IPv4
/// checksums, truncated packets) is `None`.
fn match_reply(id: &EchoId, packet: &[u8], from: Option<IpAddr>) -> Option<u16> {
    if from != Some(id.target) {
        return None;
    }
    let icmp = match id.family {
        Family::V4 => {
            let first = *packet.first()?;
            let header_len = usize::from(first & 0x0f) * 4;
            if first >> 4 != 4 || header_len < 20 || packet.len() < header_len {
                return None;
            }
            // Protocol 1 = ICMP; the header's source is checked as well as recvfrom's.
            let src: [u8; 4] = packet[12..16].try_into().ok()?;
            if packet[9] != 1 || IpAddr::from(src) != id.target {
                return None;
            }
            let icmp = &packet[header_len..];
            // A correct checksum sums (with itself included) to zero.
            if icmp.len() < ICMP_HEADER_LEN || checksum(icmp) != 0 {
                return None;
            }
            if icmp[0] != ICMP4_ECHO_REPLY {
                return None;
            }
            icmp
        }
        Family::V6 => {
            // The kernel verified the ICMPv6 checksum before delivering the message.
            if packet.len() < ICMP_HEADER_LEN || packet[0] != ICMP6_ECHO_REPLY {
                return None;
            }
            packet
        }
    };
    if icmp[1] != 0 || icmp[4..6] != id.identifier.to_be_bytes() {
        return None;
    }
    // Echo replies carry the request's data back unchanged.
    if icmp.get(ICMP_HEADER_LEN..ICMP_HEADER_LEN + TOKEN_LEN)? != id.token {
        return None;
    }
    Some(u16::from_be_bytes([icmp[6], icmp[7]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id4() -> EchoId {
        EchoId {
            family: Family::V4,
            target: "192.0.2.1".parse().unwrap(),
            identifier: 0xbeef,
            token: [7; TOKEN_LEN],
        }
    }

    fn id6() -> EchoId {
        EchoId {
            family: Family::V6,
            target: "2001:db8::1".parse().unwrap(),
            identifier: 0x1234,
            token: [9; TOKEN_LEN],
        }
    }

    /// What a host answering `request` would send back, as the raw v4 socket delivers it: a
    /// 20-byte IPv4 header from `src`, then the ICMP reply with a fresh checksum.
    fn v4_reply(request: &[u8], src: [u8; 4]) -> Vec<u8> {
        let mut icmp = request.to_vec();
        icmp[0] = ICMP4_ECHO_REPLY;
        icmp[2..4].copy_from_slice(&[0, 0]);
        let c = checksum(&icmp);
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
        let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0];
        ip.extend_from_slice(&src);
        ip.extend_from_slice(&[198, 51, 100, 2]);
        ip.extend_from_slice(&icmp);
        ip
    }

    #[test]
    fn checksum_matches_rfc1071_example() {
        // RFC 1071 section 3: the words 0001 f203 f4f5 f6f7 sum to ddf2; checksum = !ddf2.
        assert_eq!(
            checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            !0xddf2
        );
        // Odd length: the last byte is the high half of a zero-padded word.
        assert_eq!(checksum(&[0x01]), !0x0100);
        assert_eq!(checksum(&[]), 0xffff);
    }

    #[test]
    fn v4_request_layout_and_checksum() {
        let p = echo_request(&id4(), 3);
        assert_eq!(p.len(), ICMP_HEADER_LEN + TOKEN_LEN);
        assert_eq!(&p[..2], &[ICMP4_ECHO_REQUEST, 0]);
        assert_eq!(&p[4..8], &[0xbe, 0xef, 0, 3]);
        assert_eq!(&p[8..], &[7; TOKEN_LEN]);
        assert_ne!(&p[2..4], &[0, 0]);
        // Summing a packet including its checksum yields zero.
        assert_eq!(checksum(&p), 0);
    }

    #[test]
    fn v6_request_leaves_checksum_to_kernel() {
        let p = echo_request(&id6(), 0x0102);
        assert_eq!(&p[..4], &[ICMP6_ECHO_REQUEST, 0, 0, 0]);
        assert_eq!(&p[4..8], &[0x12, 0x34, 0x01, 0x02]);
    }

    #[test]
    fn v4_reply_matches_by_id_seq_token_and_source() {
        let id = id4();
        let target = Some(id.target);
        let reply = v4_reply(&echo_request(&id, 5), [192, 0, 2, 1]);
        assert_eq!(match_reply(&id, &reply, target), Some(5));

        // Wrong sender as reported by the socket, or in the IP header.
        assert_eq!(
            match_reply(&id, &reply, Some("192.0.2.9".parse().unwrap())),
            None
        );
        assert_eq!(match_reply(&id, &reply, None), None);
        let spoofed = v4_reply(&echo_request(&id, 5), [192, 0, 2, 9]);
        assert_eq!(match_reply(&id, &spoofed, target), None);

        // Someone else's probe: other identifier, or same identifier and other token.
        let other = EchoId {
            identifier: 0xbeee,
            ..id4()
        };
        let r = v4_reply(&echo_request(&other, 5), [192, 0, 2, 1]);
        assert_eq!(match_reply(&id, &r, target), None);
        let other = EchoId {
            token: [8; TOKEN_LEN],
            ..id4()
        };
        let r = v4_reply(&echo_request(&other, 5), [192, 0, 2, 1]);
        assert_eq!(match_reply(&id, &r, target), None);
    }

    #[test]
    fn v4_ignores_other_icmp_and_damage() {
        let id = id4();
        let target = Some(id.target);
        let request = echo_request(&id, 1);
        // Our own request looped back (type 8) is not a reply.
        let mut looped = v4_reply(&request, [192, 0, 2, 1]);
        looped[20..].copy_from_slice(&request);
        assert_eq!(match_reply(&id, &looped, target), None);
        // A destination unreachable (type 3) quoting our request.
        let mut unreach = vec![3, 1, 0, 0, 0, 0, 0, 0];
        unreach.extend_from_slice(&request);
        let c = checksum(&unreach);
        unreach[2..4].copy_from_slice(&c.to_be_bytes());
        let mut pkt = v4_reply(&request, [192, 0, 2, 1])[..20].to_vec();
        pkt.extend_from_slice(&unreach);
        assert_eq!(match_reply(&id, &pkt, target), None);
        // A flipped bit breaks the checksum.
        let mut bad = v4_reply(&request, [192, 0, 2, 1]);
        bad[30] ^= 0x40;
        assert_eq!(match_reply(&id, &bad, target), None);
        // Truncations and junk never panic.
        let good = v4_reply(&request, [192, 0, 2, 1]);
        for n in 0..good.len() {
            assert_eq!(match_reply(&id, &good[..n], target), None, "len {n}");
        }
        assert_eq!(match_reply(&id, &[0x4f; 10], target), None);
        // IPv4 options (IHL 6) are skipped.
        let mut opts = good[..20].to_vec();
        opts[0] = 0x46;
        opts.extend_from_slice(&[1, 1, 1, 0]);
        opts.extend_from_slice(&good[20..]);
        assert_eq!(match_reply(&id, &opts, target), Some(1));
    }

    #[test]
    fn v6_reply_matching() {
        let id = id6();
        let target = Some(id.target);
        let mut reply = echo_request(&id, 42);
        reply[0] = ICMP6_ECHO_REPLY;
        assert_eq!(match_reply(&id, &reply, target), Some(42));
        assert_eq!(
            match_reply(&id, &reply, Some("2001:db8::2".parse().unwrap())),
            None
        );
        // Requests, neighbour discovery (135) and other identifiers are ignored.
        let request = echo_request(&id, 42);
        assert_eq!(match_reply(&id, &request, target), None);
        let mut nd = reply.clone();
        nd[0] = 135;
        assert_eq!(match_reply(&id, &nd, target), None);
        let mut other = reply.clone();
        other[5] ^= 1;
        assert_eq!(match_reply(&id, &other, target), None);
        assert_eq!(match_reply(&id, &reply[..ICMP_HEADER_LEN], target), None);
    }

    #[test]
    fn spec_checks() {
        let ok = ProbeSpec {
            source: "198.51.100.2".parse().unwrap(),
            target: "192.0.2.1".parse().unwrap(),
            timeout: Duration::from_secs(1),
            attempts: 3,
        };
        assert_eq!(check_spec(&ok).unwrap(), Family::V4);
        let mixed = ProbeSpec {
            target: "2001:db8::1".parse().unwrap(),
            ..ok.clone()
        };
        assert!(matches!(
            check_spec(&mixed),
            Err(TunnelError::InvalidSpec(_))
        ));
        let unspecified = ProbeSpec {
            target: "0.0.0.0".parse().unwrap(),
            ..ok.clone()
        };
        assert!(check_spec(&unspecified).is_err());
        let short = ProbeSpec {
            timeout: Duration::from_millis(1),
            ..ok.clone()
        };
        assert!(check_spec(&short).is_err());
        let flood = ProbeSpec {
            attempts: MAX_ATTEMPTS + 1,
            ..ok.clone()
        };
        assert!(check_spec(&flood).is_err());
    }

    /// Real echoes over loopback: needs CAP_NET_RAW, so it reports and returns without it.
    #[tokio::test]
    async fn echo_over_loopback_when_privileged() {
        let spec = ProbeSpec {
            source: "127.0.0.1".parse().unwrap(),
            target: "127.0.0.1".parse().unwrap(),
            timeout: Duration::from_secs(2),
            attempts: 2,
        };
        match icmp_echo(&spec, "lo").await {
            Ok(rtt) => {
                let rtt = rtt.expect("loopback answers echoes");
                assert!(rtt < Duration::from_secs(1), "{rtt:?}");
                // ICMPv6 too, where the kernel fills in the checksum.
                let v6 = ProbeSpec {
                    source: "::1".parse().unwrap(),
                    target: "::1".parse().unwrap(),
                    ..spec.clone()
                };
                match icmp_echo(&v6, "lo").await {
                    Ok(rtt) => assert!(rtt.expect("::1 answers echoes") < Duration::from_secs(1)),
                    // Hosts with IPv6 disabled have no ::1 to bind.
                    Err(TunnelError::Io { source, .. })
                        if source.raw_os_error() == Some(libc::EADDRNOTAVAIL)
                            || source.raw_os_error() == Some(libc::EAFNOSUPPORT) => {}
                    Err(e) => panic!("{e}"),
                }
            }
            Err(TunnelError::Io { source, context })
                if source.raw_os_error() == Some(libc::EPERM) =>
            {
                assert!(context.contains("CAP_NET_RAW"), "{context}");
                eprintln!("skipping the loopback echo: {context}: {source}");
            }
            Err(e) => panic!("{e}"),
        }
        // An interface that does not exist is an error, not "no reply".
        let err = icmp_echo(&spec, "lwnope0").await.unwrap_err();
        assert!(matches!(err, TunnelError::Io { .. }), "{err}");
    }
}

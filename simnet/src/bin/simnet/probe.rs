//! Real-packet probes for `simnet --netns`: a TCP listener that tells each client the address
//! it saw the connection come from, and a client that binds a chosen source address.
//!
//! Both run as hidden subcommands of the simnet binary itself (`simnet probe-listen`,
//! `simnet probe-connect`) under `ip netns exec`, because a process can only open sockets in
//! the network namespace it lives in, and simnet stays in the host's.
//!
//! Protocol: the listener accepts, writes the peer address as one line (`203.0.113.1:40000\n`)
//! and closes. The client prints that line on stdout, so the runner learns the source address
//! the far end really saw (a source address rewritten anywhere on the path would show here).

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

/// The line `probe-listen` prints once it accepts connections; the runner waits for it.
pub const LISTENING: &str = "listening";
/// Longest line a listener sends; anything longer is not our protocol.
const MAX_LINE: u64 = 128;

/// `simnet probe-listen --addr A:P`: serves until killed, printing `peer <addr>` per client.
///
/// Errors: the address cannot be bound (for instance it is not assigned in this namespace).
pub fn listen(addr: SocketAddr) -> Result<()> {
    let listener = TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener
        .local_addr()
        .context("cannot read the listen address")?;
    println!("{LISTENING} {local}");
    // Flushed per line: stdout goes to a log file the runner polls.
    std::io::stdout()
        .flush()
        .context("cannot write to stdout")?;
    for conn in listener.incoming() {
        // One failed accept or write (a client that went away) must not end the listener.
        let mut stream = match conn {
            Ok(s) => s,
            Err(e) => {
                eprintln!("accept failed: {e}");
                continue;
            }
        };
        let peer = match stream.peer_addr() {
            Ok(p) => p,
            Err(e) => {
                eprintln!("peer address unknown: {e}");
                continue;
            }
        };
        println!("peer {peer}");
        let _ = std::io::stdout().flush();
        if let Err(e) = stream.write_all(format!("{peer}\n").as_bytes()) {
            eprintln!("cannot answer {peer}: {e}");
        }
    }
    Ok(())
}

/// `simnet probe-connect --bind SRC --to A:P`: connects from `bind` (port 0) to `to` within
/// `timeout`, and returns the address the listener reported seeing.
///
/// Errors: the source cannot be bound, the connection fails or times out, or the listener's
/// answer is missing or malformed.
pub fn connect(bind: std::net::IpAddr, to: SocketAddr, timeout: Duration) -> Result<SocketAddr> {
    if bind.is_ipv4() != to.is_ipv4() {
        bail!("source {bind} and destination {to} are of different address families");
    }
    let std_stream = connect_from(bind, to, timeout)?;
    std_stream
        .set_read_timeout(Some(timeout))
        .context("cannot set a read timeout")?;
    let mut line = String::new();
    BufReader::new(std::io::Read::take(&std_stream, MAX_LINE))
        .read_line(&mut line)
        .with_context(|| format!("no answer from {to}"))?;
    line.trim()
        .parse()
        .map_err(|_| anyhow!("unexpected answer from {to}: {:?}", line.trim()))
}

/// A TCP stream from `bind` to `to`, using a raw socket so the source can be bound before
/// connecting (std's `TcpStream` cannot bind).
fn connect_from(bind: std::net::IpAddr, to: SocketAddr, timeout: Duration) -> Result<TcpStream> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start a runtime")?;
    rt.block_on(async {
        let socket = match to {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
        }
        .context("cannot create a socket")?;
        socket
            .bind(SocketAddr::new(bind, 0))
            .with_context(|| format!("cannot bind source address {bind}"))?;
        let stream = tokio::time::timeout(timeout, socket.connect(to))
            .await
            .map_err(|_| anyhow!("connecting {bind} -> {to} timed out after {timeout:?}"))?
            .with_context(|| format!("connecting {bind} -> {to} failed"))?;
        stream.into_std().context("cannot convert the stream")
    })
    .and_then(|s: TcpStream| {
        // into_std keeps the socket non-blocking; the reader below wants blocking reads.
        s.set_nonblocking(false)
            .context("cannot make the socket blocking")?;
        Ok(s)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    #[test]
    fn listener_reports_the_client_source() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, peer) = listener.accept().unwrap();
            s.write_all(format!("{peer}\n").as_bytes()).unwrap();
            peer
        });
        let seen = connect(
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            addr,
            Duration::from_secs(2),
        )
        .unwrap();
        assert_eq!(seen, server.join().unwrap());
        assert_eq!(seen.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
    }

    #[test]
    fn refused_and_mixed_families_fail() {
        // Bind then drop: the port is very likely closed right after.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let to = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
        assert!(connect(IpAddr::V4(Ipv4Addr::LOCALHOST), to, Duration::from_secs(2)).is_err());
        let e = connect(IpAddr::V6(Ipv6Addr::LOCALHOST), to, Duration::from_secs(2)).unwrap_err();
        assert!(e.to_string().contains("families"), "{e}");
    }

    #[test]
    fn garbage_answer_is_an_error() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.write_all(b"hello\n").unwrap();
        });
        let e = connect(
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            addr,
            Duration::from_secs(2),
        )
        .unwrap_err();
        server.join().unwrap();
        assert!(e.to_string().contains("unexpected answer"), "{e}");
    }
}

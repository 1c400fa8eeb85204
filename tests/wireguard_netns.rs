//! The real WireGuard backend between two network namespaces.
//!
//! Needs root, `ip` (iproute2) and `wireguard-go`. Without them the test prints a loud
//! `SKIPPED` line and passes, unless the `CI` environment variable is set, where it fails.
//!
//! Layout (nothing leaves the machine: the namespaces have no default route):
//!
//! ```text
//!  lwt-a-PID (provider)                          lwt-b-PID (renter)
//!  lwvaPID 192.0.2.1/24  <------ veth ------>    lwvbPID 192.0.2.2/24
//!  lwtaPID 203.0.113.1/32, :51820                lwtbPID 198.51.100.2/32, SourceOnly table 51820
//!  peer B: allowed 198.51.100.2/32               peer A: 192.0.2.1:51820, allowed 0.0.0.0/0
//! ```
//!
//! 203.0.113.1 exists only on A's WireGuard interface and B has no route to it except the
//! policy route for source 198.51.100.2, so a TCP reset coming back from 203.0.113.1 proves the
//! packets crossed the tunnel both ways.
//!
//! The backend must run with the whole process inside a namespace, so the test re-executes its
//! own binary under `ip netns exec` to run the ignored `wg_netns_child` test with a role in
//! `LWT_WG_ROLE`. A guard deletes the namespaces, their processes and sockets, also on panic.

// Tests may unwrap: a panic is the failure report (clippy.toml allows it in #[test]
// functions only, not in an integration test's helpers).
#![allow(clippy::unwrap_used)]

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use leasewire::tunnel::wireguard::{WgBackend, WireGuardTunnel};
use leasewire::tunnel::{
    InterfaceSpec, PeerSpec, ProbeSpec, RoutingPolicy, Tunnel, TunnelError, testing,
};
use leasewire::types::WgKey;

const ROLE_ENV: &str = "LWT_WG_ROLE";
const ID_ENV: &str = "LWT_WG_ID";
const PROVIDER_PORT: u16 = 51820;
const RENTER_TABLE: u32 = 51820;
const PROVIDER_KEY: WgKey = WgKey([0x41; 32]);
const RENTER_KEY: WgKey = WgKey([0x42; 32]);

/// Names derived from one id (the parent's pid), unique per run.
struct Names {
    ns_a: String,
    ns_b: String,
    veth_a: String,
    veth_b: String,
    wg_a: String,
    wg_b: String,
    wg_conf: String,
}

impl Names {
    fn new(id: &str) -> Self {
        Names {
            ns_a: format!("lwt-a-{id}"),
            ns_b: format!("lwt-b-{id}"),
            veth_a: format!("lwva{id}"),
            veth_b: format!("lwvb{id}"),
            wg_a: format!("lwta{id}"),
            wg_b: format!("lwtb{id}"),
            wg_conf: format!("lwtc{id}"),
        }
    }
}

fn public(k: WgKey) -> WgKey {
    WgKey(wireguard_control::Key(k.0).get_public().0)
}

fn net(s: &str) -> ipnet::IpNet {
    s.parse().expect("test prefix")
}

/// Runs a command, panicking with its output when it fails.
fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {cmd} {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

/// Why the test cannot run here, if it cannot.
fn missing_prerequisites() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (network namespaces, WireGuard interfaces)".into());
    }
    for tool in ["ip", "wireguard-go"] {
        if !on_path(tool) {
            return Some(format!(
                "`{tool}` is not on PATH (Debian: apt install iproute2 wireguard-go)"
            ));
        }
    }
    None
}

/// pids of processes whose command line names `iface` and runs wireguard-go.
fn wireguard_go_pids(iface: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            args.first().is_some_and(|a0| a0.ends_with(b"wireguard-go"))
                && args.contains(&iface.as_bytes())
        })
        .collect()
}

fn socket_path(iface: &str) -> String {
    format!("/var/run/wireguard/{iface}.sock")
}

/// Owns the namespaces: creates them with the veth pair, and on drop kills whatever runs in
/// them (only our own wireguard-go daemons can), deletes them and removes leftover sockets.
struct Lab {
    names: Names,
}

impl Lab {
    fn new(names: Names) -> Self {
        // Build the guard first, so a failure half-way through still cleans up.
        let lab = Lab { names };
        let n = &lab.names;
        run("ip", &["netns", "add", &n.ns_a]);
        run("ip", &["netns", "add", &n.ns_b]);
        run(
            "ip",
            &[
                "link", "add", &n.veth_a, "netns", &n.ns_a, "type", "veth", "peer", "name",
                &n.veth_b, "netns", &n.ns_b,
            ],
        );
        for (ns, veth, addr) in [
            (&n.ns_a, &n.veth_a, "192.0.2.1/24"),
            (&n.ns_b, &n.veth_b, "192.0.2.2/24"),
        ] {
            run("ip", &["-n", ns, "link", "set", "lo", "up"]);
            run("ip", &["-n", ns, "addr", "add", addr, "dev", veth]);
            run("ip", &["-n", ns, "link", "set", veth, "up"]);
        }
        lab
    }

    /// Runs the `wg_netns_child` test inside `ns` with `role`; panics with its output if it
    /// fails, else returns it.
    fn child(&self, ns: &str, role: &str, id: &str) -> String {
        let exe = std::env::current_exe().expect("current test binary");
        let exe = exe.to_str().expect("UTF-8 test binary path");
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                exe,
                "--exact",
                "wg_netns_child",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(ROLE_ENV, role)
            .env(ID_ENV, id)
            .output()
            .expect("spawning the child test");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && text.contains("1 passed"),
            "child {role} in {ns} failed ({}):\n{text}",
            out.status
        );
        text
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let n = &self.names;
        for ns in [&n.ns_a, &n.ns_b] {
            if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout)
                    .split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok())
                {
                    // SAFETY: plain syscall; the pid is a process inside our own namespace.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        for iface in [&n.wg_a, &n.wg_b, &n.wg_conf] {
            let _ = std::fs::remove_file(socket_path(iface));
            let _ = std::fs::remove_file(format!("/var/run/wireguard/{iface}.name"));
        }
    }
}

#[test]
fn wireguard_tunnel_between_namespaces() {
    if let Some(why) = missing_prerequisites() {
        if std::env::var_os("CI").is_some() {
            panic!("wireguard_netns cannot run in CI: {why}");
        }
        // Written to the stderr handle, not with eprintln!, so the test harness's output
        // capture does not swallow it.
        let _ = writeln!(
            std::io::stderr(),
            "\n***** SKIPPED wireguard_tunnel_between_namespaces: {why} *****\n"
        );
        return;
    }
    let id = std::process::id().to_string();
    let lab = Lab::new(Names::new(&id));
    let n = &lab.names;

    lab.child(&n.ns_a, "provider_up", &id);
    lab.child(&n.ns_b, "renter", &id);
    lab.child(&n.ns_a, "provider_check_and_down", &id);
    lab.child(&n.ns_b, "conformance", &id);

    // Every interface was removed, so no daemon may be left in either namespace (a daemon
    // exits shortly after its link and port are released: allow it a moment).
    for ns in [&n.ns_a, &n.ns_b] {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let pids = run("ip", &["netns", "pids", ns]);
            if pids.trim().is_empty() {
                break;
            }
            assert!(Instant::now() < deadline, "processes left in {ns}: {pids}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    for iface in [&n.wg_a, &n.wg_b, &n.wg_conf] {
        assert!(
            wireguard_go_pids(iface).is_empty(),
            "wireguard-go for {iface} still runs"
        );
        assert!(
            !Path::new(&socket_path(iface)).exists(),
            "{iface} socket left"
        );
    }
}

/// [`Tunnel::verify`] through the real backend: with the tunnel up it reports a fresh
/// handshake and an ICMP round trip from the renter's leased address to the provider's
/// endpoint address (192.0.2.1, on the provider's veth: only reachable from 198.51.100.2 back
/// through the tunnel, since the provider routes that /32 into its WireGuard interface); once
/// the provider drops the renter's peer, the probe gets no reply and the tunnel is not
/// verified. Runs in its own pair of namespaces, so in parallel with the test above.
#[test]
fn verify_between_namespaces() {
    if let Some(why) = missing_prerequisites() {
        if std::env::var_os("CI").is_some() {
            panic!("wireguard_netns cannot run in CI: {why}");
        }
        let _ = writeln!(
            std::io::stderr(),
            "\n***** SKIPPED verify_between_namespaces: {why} *****\n"
        );
        return;
    }
    // A suffix keeps these names apart from the other test's in the same process.
    let id = format!("{}v", std::process::id());
    let lab = Lab::new(Names::new(&id));
    let n = &lab.names;

    lab.child(&n.ns_a, "provider_up", &id);
    let up = lab.child(&n.ns_b, "verify_renter_up", &id);
    lab.child(&n.ns_a, "verify_provider_drop", &id);
    let down = lab.child(&n.ns_b, "verify_renter_unverified", &id);
    // The measured figures, for whoever runs this with --nocapture.
    for line in up
        .lines()
        .chain(down.lines())
        .filter(|l| l.starts_with("VERIFY "))
    {
        let _ = writeln!(std::io::stderr(), "{line}");
    }
}

/// The child half: does nothing unless started by the test above with a role.
#[test]
#[ignore = "run by wireguard_tunnel_between_namespaces inside a network namespace"]
fn wg_netns_child() {
    let Ok(role) = std::env::var(ROLE_ENV) else {
        return;
    };
    let id = std::env::var(ID_ENV).expect("LWT_WG_ID with the role");
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("leasewire=debug"))
        .with_writer(std::io::stderr)
        .try_init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let names = Names::new(&id);
    rt.block_on(async {
        match role.as_str() {
            "provider_up" => provider_up(&names).await,
            "renter" => renter(&names).await,
            "provider_check_and_down" => provider_check_and_down(&names).await,
            "verify_renter_up" => verify_renter_up(&names).await,
            "verify_provider_drop" => verify_provider_drop(&names).await,
            "verify_renter_unverified" => verify_renter_unverified(&names).await,
            "conformance" => {
                let t = WireGuardTunnel::new().await.expect("backend");
                testing::conformance_on(&t, &names.wg_conf).await;
            }
            other => panic!("unknown role {other}"),
        }
    });
}

fn provider_spec(n: &Names) -> InterfaceSpec {
    InterfaceSpec {
        name: n.wg_a.clone(),
        private_key: PROVIDER_KEY,
        listen_port: Some(PROVIDER_PORT),
        addresses: vec![net("203.0.113.1/32")],
        policy: RoutingPolicy::Provider,
    }
}

fn renter_peer_on_provider() -> PeerSpec {
    PeerSpec {
        public_key: public(RENTER_KEY),
        endpoint: None,
        allowed_ips: vec![net("198.51.100.2/32")],
        persistent_keepalive: None,
    }
}

/// Lines of `ip <args>` output containing `needle`.
fn count_lines(args: &[&str], needle: &str) -> usize {
    run("ip", args)
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

async fn provider_up(n: &Names) {
    let t = WireGuardTunnel::new().await.expect("backend");
    eprintln!("backend: {:?}", t.backend());
    let spec = provider_spec(n);
    t.ensure_interface(&spec).await.expect("ensure provider");
    t.ensure_interface(&spec)
        .await
        .expect("ensure provider again");
    t.add_peer(&n.wg_a, &renter_peer_on_provider())
        .await
        .expect("add renter peer");
    t.add_peer(&n.wg_a, &renter_peer_on_provider())
        .await
        .expect("add renter peer again");

    // The renter's address is routed into the tunnel, once, marked as ours.
    let dev = format!("dev {}", n.wg_a);
    let routes = run("ip", &["-4", "route", "show", "198.51.100.2/32"]);
    assert!(
        routes.contains(&dev) && routes.contains("proto 167"),
        "{routes}"
    );
    assert_eq!(routes.lines().count(), 1, "{routes}");
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
            .unwrap()
            .trim(),
        "1"
    );
    let addrs = run("ip", &["-4", "addr", "show", "dev", &n.wg_a]);
    assert!(
        addrs.contains("203.0.113.1/32") && addrs.contains("UP"),
        "{addrs}"
    );
    // Interface and peer outlive this process, as a daemon restart would see them.
}

/// TCP connect from `src` to 203.0.113.1:9, where nothing listens: a refusal means a reset came
/// back from the provider.
async fn probe(src: Option<SocketAddr>) -> std::io::Result<()> {
    let sock = tokio::net::TcpSocket::new_v4()?;
    if let Some(src) = src {
        sock.bind(src)?;
    }
    let dst: SocketAddr = "203.0.113.1:9".parse().expect("literal");
    match tokio::time::timeout(Duration::from_secs(3), sock.connect(dst)).await {
        Ok(res) => res.map(drop),
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

fn renter_spec(n: &Names) -> InterfaceSpec {
    InterfaceSpec {
        name: n.wg_b.clone(),
        private_key: RENTER_KEY,
        listen_port: None,
        addresses: vec![net("198.51.100.2/32")],
        policy: RoutingPolicy::SourceOnly {
            table: RENTER_TABLE,
        },
    }
}

fn provider_peer_on_renter() -> PeerSpec {
    PeerSpec {
        public_key: public(PROVIDER_KEY),
        endpoint: Some(format!("192.0.2.1:{PROVIDER_PORT}")),
        allowed_ips: vec![net("0.0.0.0/0")],
        persistent_keepalive: Some(25),
    }
}

async fn renter(n: &Names) {
    let t = WireGuardTunnel::new().await.expect("backend");
    let spec = renter_spec(n);
    let provider = provider_peer_on_renter();
    t.ensure_interface(&spec).await.expect("ensure renter");
    t.add_peer(&n.wg_b, &provider).await.expect("add provider");
    // Idempotence: everything again, then exactly one rule and one route must exist.
    t.ensure_interface(&spec)
        .await
        .expect("ensure renter again");
    t.add_peer(&n.wg_b, &provider)
        .await
        .expect("add provider again");
    let table = RENTER_TABLE.to_string();
    assert_eq!(
        count_lines(
            &["-4", "rule", "show"],
            &format!("from 198.51.100.2 lookup {table}")
        ),
        1
    );
    let table_routes = run("ip", &["-4", "route", "show", "table", &table]);
    assert_eq!(table_routes.lines().count(), 1, "{table_routes}");
    assert!(
        table_routes.starts_with(&format!("default dev {}", n.wg_b)),
        "{table_routes}"
    );

    // Leasing a second address adds its rule; giving it back removes it again.
    let rule_for = |a: &str| format!("from {a} lookup {table}");
    t.set_addresses(&n.wg_b, &[net("198.51.100.2/32"), net("198.51.100.3/32")])
        .await
        .expect("add an address");
    assert_eq!(
        count_lines(&["-4", "rule", "show"], &rule_for("198.51.100.3")),
        1
    );
    t.set_addresses(&n.wg_b, &spec.addresses)
        .await
        .expect("back to one address");
    assert_eq!(
        count_lines(&["-4", "rule", "show"], &rule_for("198.51.100.3")),
        0
    );
    assert_eq!(
        count_lines(&["-4", "rule", "show"], &rule_for("198.51.100.2")),
        1
    );
    let addrs = run("ip", &["-4", "addr", "show", "dev", &n.wg_b]);
    assert!(!addrs.contains("198.51.100.3"), "{addrs}");

    // Without the leased source address there is no route at all to the provider side.
    let err = probe(None)
        .await
        .expect_err("no route without the leased source");
    assert_eq!(err.raw_os_error(), Some(libc::ENETUNREACH), "{err}");

    // With it, the SYN goes through the tunnel and the provider's reset comes back. The first
    // attempt may time out while the handshake completes.
    let src: SocketAddr = "198.51.100.2:0".parse().expect("literal");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match probe(Some(src)).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
            other if Instant::now() > deadline => {
                panic!("no answer from 203.0.113.1 through the tunnel: {other:?}")
            }
            other => eprintln!("probe: {other:?}, retrying"),
        }
    }

    let stats = t.peer_stats(&n.wg_b).await.expect("stats");
    assert_eq!(stats.len(), 1, "{stats:?}");
    let s = &stats[0];
    assert_eq!(s.public_key, public(PROVIDER_KEY));
    assert!(s.last_handshake_unix.is_some(), "{s:?}");
    assert!(s.rx_bytes > 0 && s.tx_bytes > 0, "{s:?}");
    assert_eq!(s.endpoint.as_deref(), Some("192.0.2.1:51820"));
    assert_eq!(s.allowed_ips, vec![net("0.0.0.0/0")]);

    t.remove_interface(&n.wg_b).await.expect("remove renter");
    t.remove_interface(&n.wg_b)
        .await
        .expect("remove renter again");
    assert_eq!(
        count_lines(&["-4", "rule", "show"], "198.51.100.2"),
        0,
        "rules left behind"
    );
    assert!(
        run("ip", &["-4", "route", "show", "table", "all"])
            .lines()
            .all(|l| !l.contains(&n.wg_b)),
        "routes left behind"
    );
    assert_gone(&t, &n.wg_b).await;
}

async fn provider_check_and_down(n: &Names) {
    // A fresh process, like a restarted daemon: re-ensuring keeps the peer and its counters.
    let t = WireGuardTunnel::new().await.expect("backend");
    assert!(matches!(
        t.peer_stats(&n.wg_a).await,
        Err(TunnelError::NoSuchInterface(_))
    ));
    t.ensure_interface(&provider_spec(n))
        .await
        .expect("re-ensure provider");
    let stats = t.peer_stats(&n.wg_a).await.expect("stats");
    assert_eq!(stats.len(), 1, "{stats:?}");
    let s = &stats[0];
    assert_eq!(s.public_key, public(RENTER_KEY));
    assert!(s.last_handshake_unix.is_some(), "{s:?}");
    assert!(s.rx_bytes > 0 && s.tx_bytes > 0, "{s:?}");
    let ep = s
        .endpoint
        .as_deref()
        .expect("the renter's roamed-to endpoint");
    assert!(ep.starts_with("192.0.2.2:"), "{ep}");

    // Setting the peer again without an endpoint clears the one it roamed to (WireGuard can
    // only do that by re-creating the peer, which also resets its counters).
    t.add_peer(&n.wg_a, &renter_peer_on_provider())
        .await
        .expect("re-add renter peer without endpoint");
    let stats = t.peer_stats(&n.wg_a).await.expect("stats");
    assert_eq!(stats.len(), 1, "{stats:?}");
    assert_eq!(stats[0].endpoint, None, "{stats:?}");
    assert_eq!(stats[0].allowed_ips, vec![net("198.51.100.2/32")]);
    assert_eq!(count_lines(&["-4", "route", "show"], "198.51.100.2"), 1);

    // Removing the peer removes its route; the interface then goes entirely.
    t.remove_peer(&n.wg_a, &public(RENTER_KEY))
        .await
        .expect("remove renter peer");
    assert_eq!(
        count_lines(&["-4", "route", "show"], "198.51.100.2"),
        0,
        "peer route left behind"
    );
    t.remove_interface(&n.wg_a).await.expect("remove provider");
    assert_gone(&t, &n.wg_a).await;
}

/// The interface, its daemon and its socket are gone.
async fn assert_gone(t: &WireGuardTunnel, iface: &str) {
    assert!(matches!(
        t.peer_stats(iface).await,
        Err(TunnelError::NoSuchInterface(_))
    ));
    let links = run("ip", &["link", "show"]);
    assert!(!links.contains(iface), "link {iface} left: {links}");
    if t.backend() == WgBackend::Userspace {
        assert!(!Path::new(&socket_path(iface)).exists(), "socket left");
        // The daemon exits once its socket is gone; allow it a moment.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !wireguard_go_pids(iface).is_empty() {
            assert!(
                Instant::now() < deadline,
                "wireguard-go for {iface} still runs"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The renter's probe: from its leased address to the provider's endpoint address.
fn renter_probe() -> ProbeSpec {
    ProbeSpec {
        source: "198.51.100.2".parse().expect("literal"),
        target: "192.0.2.1".parse().expect("literal"),
        timeout: Duration::from_secs(3),
        attempts: 3,
    }
}

/// How old a handshake may be for the tunnel to count as verified (WireGuard re-keys every
/// 2 minutes while traffic flows).
const MAX_HANDSHAKE_AGE: Duration = Duration::from_secs(180);

/// Renter: brings its interface up and verifies the tunnel; leaves it up for the next roles.
async fn verify_renter_up(n: &Names) {
    let t = WireGuardTunnel::new().await.expect("backend");
    t.ensure_interface(&renter_spec(n))
        .await
        .expect("ensure renter");
    t.add_peer(&n.wg_b, &provider_peer_on_renter())
        .await
        .expect("add provider");

    // Without the provider's peer on the interface there is nothing to verify.
    let err = t
        .verify(&n.wg_b, &public(RENTER_KEY), &renter_probe())
        .await
        .expect_err("unknown peer");
    assert!(err.to_string().contains("not configured"), "{err}");

    // The first echo also triggers the handshake; allow a few rounds for it.
    let deadline = Instant::now() + Duration::from_secs(20);
    let check = loop {
        let check = t
            .verify(&n.wg_b, &public(PROVIDER_KEY), &renter_probe())
            .await
            .expect("verify");
        if check.verified(MAX_HANDSHAKE_AGE) {
            break check;
        }
        assert!(
            Instant::now() < deadline,
            "tunnel never verified: {check:?}: {:?}",
            check.reason(MAX_HANDSHAKE_AGE)
        );
        eprintln!("not verified yet: {check:?}");
    };
    let age = check.handshake_age_secs.expect("a handshake");
    assert!(age <= 5, "handshake {age} s old right after it happened");
    assert!(check.last_handshake.is_some(), "{check:?}");
    assert_eq!(check.reason(MAX_HANDSHAKE_AGE), None);
    eprintln!("VERIFY first verified check: {check:?}");

    // Once the session is up, a probe answers on the first echo, and the echoes travel inside
    // WireGuard: the peer's counters grow by at least one echo (20 + 8 + 16 bytes) each way per
    // probe.
    let counters = |stats: Vec<leasewire::tunnel::PeerStats>| {
        let s = &stats[0];
        (s.rx_bytes, s.tx_bytes)
    };
    let (rx0, tx0) = counters(t.peer_stats(&n.wg_b).await.expect("stats"));
    let mut rtts = Vec::new();
    for _ in 0..5 {
        let check = t
            .verify(&n.wg_b, &public(PROVIDER_KEY), &renter_probe())
            .await
            .expect("verify again");
        rtts.push(check.probe_rtt.expect("a reply on an established tunnel"));
    }
    eprintln!("VERIFY probe rtts through the tunnel: {rtts:?}");
    let (rx1, tx1) = counters(t.peer_stats(&n.wg_b).await.expect("stats"));
    assert!(
        rx1 - rx0 >= 5 * 44 && tx1 - tx0 >= 5 * 44,
        "echoes did not cross the tunnel: rx {rx0}->{rx1}, tx {tx0}->{tx1}"
    );
    assert!(rtts.iter().all(|r| *r < Duration::from_secs(1)), "{rtts:?}");
}

/// Provider, as a restarted daemon: drops the renter's peer (the lease ended).
async fn verify_provider_drop(n: &Names) {
    let t = WireGuardTunnel::new().await.expect("backend");
    t.ensure_interface(&provider_spec(n))
        .await
        .expect("re-ensure provider");
    t.remove_peer(&n.wg_a, &public(RENTER_KEY))
        .await
        .expect("remove renter peer");
    assert!(
        t.peer_stats(&n.wg_a).await.expect("stats").is_empty(),
        "renter peer still there"
    );
}

/// Renter, as a restarted daemon: its tunnel still has a recent handshake, but the provider no
/// longer answers through it, so verify() reports no probe reply within the timeout.
async fn verify_renter_unverified(n: &Names) {
    let t = WireGuardTunnel::new().await.expect("backend");
    t.ensure_interface(&renter_spec(n))
        .await
        .expect("re-ensure renter");
    t.add_peer(&n.wg_b, &provider_peer_on_renter())
        .await
        .expect("re-add provider");
    let probe = renter_probe();
    let started = Instant::now();
    let check = t
        .verify(&n.wg_b, &public(PROVIDER_KEY), &probe)
        .await
        .expect("verify");
    let took = started.elapsed();
    eprintln!("VERIFY after the provider dropped the peer: {check:?} in {took:?}");
    assert_eq!(check.probe_rtt, None, "{check:?}");
    assert!(!check.verified(MAX_HANDSHAKE_AGE), "{check:?}");
    let reason = check.reason(MAX_HANDSHAKE_AGE).expect("a reason");
    assert!(reason.contains("probe"), "{reason}");
    assert!(
        took >= probe.timeout && took < probe.timeout + Duration::from_secs(2),
        "verify took {took:?} for a {:?} timeout",
        probe.timeout
    );
    // The handshake made earlier is still on record: only the probe tells the tunnel is dead.
    assert!(check.last_handshake.is_some(), "{check:?}");

    t.remove_interface(&n.wg_b).await.expect("remove renter");
    assert_gone(&t, &n.wg_b).await;
}

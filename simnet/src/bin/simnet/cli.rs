//! Locating the `leasewire` and `lnd-sim` binaries, and typed calls to the `leasewire` CLI.
//!
//! Every call passes `--json` and parses the one object the CLI prints on stdout. The structs
//! below name only the fields simnet reads and ignore the rest, so the CLI may grow fields
//! without breaking the runner.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tokio::process::Command;

use crate::procs::{Captured, run_capture};

/// Paths of the two programs simnet drives.
#[derive(Clone, Debug)]
pub struct Bins {
    /// The `leasewire` CLI and daemon.
    pub leasewire: PathBuf,
    /// The LND-compatible simulator.
    pub lnd_sim: PathBuf,
}

impl Bins {
    /// Finds both programs: `$LEASEWIRE_BIN` / `$LND_SIM_BIN` when set, else next to the
    /// running executable (and one level up when that is cargo's `deps/` directory, as for test
    /// binaries).
    ///
    /// Errors: a program is missing; the message says how to build it.
    pub fn locate() -> Result<Bins> {
        let exe = std::env::current_exe().context("cannot find simnet's own executable")?;
        let dirs = search_dirs(&exe);
        Ok(Bins {
            leasewire: find_bin("leasewire", "LEASEWIRE_BIN", &dirs)?,
            lnd_sim: find_bin("lnd-sim", "LND_SIM_BIN", &dirs)?,
        })
    }
}

/// Directories to look in for sibling binaries of `exe`.
fn search_dirs(exe: &Path) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(dir) = exe.parent() {
        dirs.push(dir.to_owned());
        if dir.file_name().is_some_and(|n| n == "deps")
            && let Some(up) = dir.parent()
        {
            dirs.push(up.to_owned());
        }
    }
    dirs
}

fn find_bin(name: &str, env: &str, dirs: &[PathBuf]) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!("${env} is {}, which is not a file", p.display());
        }
        return Ok(p);
    }
    dirs.iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            anyhow!(
                "cannot find the `{name}` binary (looked in {}; or set ${env}); \
                 build with: cargo build --workspace",
                dirs.iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
}

/// `leasewire init --json`.
#[derive(Debug, Deserialize)]
pub struct InitOut {
    /// The new node's libp2p peer id.
    pub peer_id: String,
}

/// `leasewire status --json`, the parts simnet reads.
#[derive(Debug, Deserialize)]
pub struct StatusOut {
    /// The daemon's peer id.
    pub peer_id: String,
    /// Bound listen multiaddrs.
    #[serde(default)]
    pub listen_addrs: Vec<String>,
    /// Market membership.
    #[serde(default)]
    pub net: NetStatus,
    /// The node's renter leases.
    #[serde(default)]
    pub leases: Vec<LeaseOut>,
}

/// One lease as `status` (renter side) and `leases` (provider side) print it; the parts
/// simnet reads. Empty strings stand for "none", as in the control API.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct LeaseOut {
    /// Lease id.
    pub lease_id: String,
    /// Provider peer id.
    pub provider: String,
    /// Renter peer id.
    pub renter: String,
    /// `pending`, `active`, `suspended` or `released`.
    pub state: String,
    /// Leased IPv4 prefix, or empty.
    pub ipv4: String,
    /// Leased IPv6 prefix, or empty.
    pub ipv6: String,
    /// Total paid for the lease (activation fee and credit), sat.
    pub paid_sat: u64,
    /// Unix time the credit runs out.
    pub paid_until: u64,
    /// Renter side: whether AutoPay is on for the lease.
    pub autopay: bool,
    /// Renter side: payments this node made for the lease.
    pub payments: u32,
    /// Top-ups credited.
    pub topups: u32,
    /// Of which AutoPay paid.
    pub autopay_topups: u32,
    /// Times AutoPay refused to pay because the tunnel could not be verified.
    pub refused_unverified: u32,
    /// AutoPay's last decision, as a sentence.
    pub autopay_note: String,
    /// The provider's WireGuard endpoint the lease points at.
    pub endpoint: String,
    /// Unix time the provider's termination notice ends the lease; 0 without notice.
    pub terminates_at: u64,
    /// Renter side: what a failover of this lease did, or why one is not done; empty: none.
    pub failover: String,
    /// Renter side: the lease this one replaced by a failover; empty: none.
    pub failed_over_from: String,
}

impl LeaseOut {
    /// Whether the lease is active.
    pub fn is_active(&self) -> bool {
        self.state == "active"
    }
}

/// `leasewire leases --json` (provider side).
#[derive(Debug, Default, Deserialize)]
pub struct LeasesOut {
    /// Every lease the provider issued.
    #[serde(default)]
    pub leases: Vec<LeaseOut>,
}

/// The `net` object of [`StatusOut`].
#[derive(Debug, Default, Deserialize)]
pub struct NetStatus {
    /// Peers that refused our membership proof (a different market secret).
    #[serde(default)]
    pub refused_by: Vec<String>,
}

/// `leasewire offers --json`.
#[derive(Debug, Deserialize)]
pub struct OffersOut {
    /// Offers the renter knows.
    pub offers: Vec<OfferOut>,
}

/// One offer of [`OffersOut`].
#[derive(Debug, Deserialize)]
pub struct OfferOut {
    /// Provider peer id.
    pub provider: String,
    /// Offer id, for `rent --offer`.
    #[serde(default)]
    pub offer_id: String,
}

/// `leasewire rent --json`, the parts simnet reports.
#[derive(Clone, Debug, Deserialize)]
pub struct RentOut {
    /// Lease id.
    #[serde(default)]
    pub lease_id: String,
    /// Provider peer id.
    pub provider: String,
    /// Leased IPv4 prefix, if any.
    #[serde(default)]
    pub ipv4: Option<String>,
    /// Leased IPv6 prefix, if any.
    #[serde(default)]
    pub ipv6: Option<String>,
    /// Satoshis paid for the lease.
    pub paid_sat: u64,
    /// Unix time the credit runs out.
    #[serde(default)]
    pub paid_until: Option<u64>,
}

/// `leasewire add-credit --json`, the parts simnet reads.
#[derive(Clone, Debug, Deserialize)]
pub struct AddCreditOut {
    /// Leased IPv4 prefix; empty or null when none.
    #[serde(default)]
    pub ipv4: Option<String>,
    /// Leased IPv6 prefix; empty or null when none.
    #[serde(default)]
    pub ipv6: Option<String>,
    /// Unix time the credit now runs out.
    #[serde(default)]
    pub paid_until: Option<u64>,
}

/// `leasewire audit verify --json`.
#[derive(Clone, Debug, Deserialize)]
pub struct AuditOut {
    /// Whether the whole chain verified.
    pub ok: bool,
    /// Entries checked.
    #[serde(default)]
    pub entries: u64,
    /// The first entry that failed, if any.
    #[serde(default)]
    pub first_bad: Option<BadEntry>,
}

/// The first failing entry of an audit log.
#[derive(Clone, Debug, Deserialize)]
pub struct BadEntry {
    /// Sequence number.
    pub seq: u64,
    /// Why it failed.
    pub reason: String,
}

/// Runs `leasewire` subcommands against data dirs.
#[derive(Clone, Debug)]
pub struct Cli {
    bin: PathBuf,
}

impl Cli {
    /// A runner for the `leasewire` binary at `bin`.
    pub fn new(bin: PathBuf) -> Cli {
        Cli { bin }
    }

    /// A `leasewire` command with `args`, for callers that manage the process themselves.
    pub fn command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut c = Command::new(&self.bin);
        c.args(args);
        c
    }

    /// `leasewire init --data-dir D --role ROLE --json`.
    pub async fn init(&self, dir: &Path, role: &str) -> Result<InitOut> {
        let args = ["init".as_ref(), "--data-dir".as_ref(), dir.as_os_str()];
        self.json(
            args.into_iter().chain(["--role".as_ref(), role.as_ref()]),
            30,
        )
        .await
    }

    /// `leasewire status --data-dir D --json`; fails until the daemon answers.
    pub async fn status(&self, dir: &Path) -> Result<StatusOut> {
        self.json(data_dir_args("status", dir), 10).await
    }

    /// `leasewire offers --data-dir D --json`.
    pub async fn offers(&self, dir: &Path) -> Result<OffersOut> {
        self.json(data_dir_args("offers", dir), 10).await
    }

    /// `leasewire leases --data-dir D --json` (provider side).
    pub async fn leases(&self, dir: &Path) -> Result<LeasesOut> {
        self.json(data_dir_args("leases", dir), 10).await
    }

    /// `leasewire rent --data-dir D --auto --credit SAT --timeout-secs N --json`.
    ///
    /// The process gets 30 s beyond `timeout_secs` to report before it is killed.
    pub async fn rent(&self, dir: &Path, credit_sat: u64, timeout_secs: u64) -> Result<RentOut> {
        self.json(rent_args(dir, credit_sat, timeout_secs), timeout_secs + 30)
            .await
    }

    /// `leasewire rent --data-dir D --offer ID --credit SAT --timeout-secs N --yes [--ipv4 L]
    /// [--ipv6 L] --json`: rents under one offer (a further lease from a provider already
    /// leasing to us too), asking for `sizes` where given, else the renter's configured ones.
    ///
    /// The process gets 30 s beyond `timeout_secs` to report before it is killed.
    pub async fn rent_offer(
        &self,
        dir: &Path,
        offer_id: &str,
        credit_sat: u64,
        timeout_secs: u64,
        sizes: Sizes,
    ) -> Result<RentOut> {
        let mut args = offer_rent_args(dir, offer_id, credit_sat, timeout_secs);
        args.extend(sizes.args());
        self.json(args, timeout_secs + 30).await
    }

    /// `leasewire release --data-dir D --lease ID --yes --json`: gives the lease up and tells
    /// the provider.
    ///
    /// Errors: the CLI fails or prints no JSON.
    pub async fn release(&self, dir: &Path, lease_id: &str) -> Result<LeaseOut> {
        let args = data_dir_args("release", dir).into_iter().chain([
            "--lease".as_ref(),
            lease_id.as_ref(),
            "--yes".as_ref(),
        ]);
        self.json(args, 60).await
    }

    /// `leasewire terminate --data-dir D --lease ID --notice N s --json` (provider side).
    ///
    /// Errors: the CLI fails or prints no JSON.
    pub async fn terminate(
        &self,
        dir: &Path,
        lease_id: &str,
        notice_secs: u64,
    ) -> Result<LeaseOut> {
        let notice = format!("{notice_secs}s");
        let args = data_dir_args("terminate", dir).into_iter().chain([
            "--lease".as_ref(),
            lease_id.as_ref(),
            "--notice".as_ref(),
            notice.as_ref(),
        ]);
        self.json(args, 30).await
    }

    /// `leasewire add-credit --data-dir D --amount SAT --json` for the only lease.
    ///
    /// Errors: the CLI fails (no lease, payment refused, ...) or prints no JSON.
    pub async fn add_credit(&self, dir: &Path, amount_sat: u64) -> Result<AddCreditOut> {
        let amount = amount_sat.to_string();
        let args = data_dir_args("add-credit", dir)
            .into_iter()
            .chain(["--amount".as_ref(), amount.as_ref()]);
        self.json(args, 90).await
    }

    /// `leasewire audit verify --data-dir D --json`.
    ///
    /// A chain that fails to verify is an `Ok` with `ok: false`: the CLI exits non-zero but
    /// still prints its verdict. Errors only when no verdict can be read.
    pub async fn audit_verify(&self, dir: &Path) -> Result<AuditOut> {
        let args = [
            "audit".as_ref(),
            "verify".as_ref(),
            "--data-dir".as_ref(),
            dir.as_os_str(),
            "--json".as_ref(),
        ];
        let out = run_capture(self.command(args), Duration::from_secs(60)).await?;
        parse_json::<AuditOut>(&out.stdout).map_err(|e| failure("audit verify", &out, Some(e)))
    }

    /// Runs `leasewire ARGS --json` and parses stdout; non-zero exit is an error carrying the
    /// CLI's stderr.
    async fn json<T, I, S>(&self, args: I, timeout_secs: u64) -> Result<T>
    where
        T: DeserializeOwned,
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut cmd = self.command(args);
        cmd.arg("--json");
        let what = cmd
            .as_std()
            .get_args()
            .next()
            .map(|a| a.to_string_lossy().into_owned())
            .unwrap_or_default();
        let out = run_capture(cmd, Duration::from_secs(timeout_secs)).await?;
        if !out.status.success() {
            return Err(failure(&what, &out, None));
        }
        parse_json(&out.stdout).map_err(|e| failure(&what, &out, Some(e)))
    }
}

/// The arguments of `rent --auto` (without `--json`).
fn rent_args(dir: &Path, credit_sat: u64, timeout_secs: u64) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = data_dir_args("rent", dir)
        .into_iter()
        .map(ToOwned::to_owned)
        .collect();
    for a in [
        "--auto".to_owned(),
        "--credit".to_owned(),
        credit_sat.to_string(),
        "--timeout-secs".to_owned(),
        timeout_secs.to_string(),
        // Scenarios choose their offers themselves; no question to answer.
        "--yes".to_owned(),
    ] {
        args.push(a.into());
    }
    args
}

/// The prefix sizes a `rent` asks for: `None` keeps the renter's configured size of that
/// family, `Some("none")` asks for none, `Some("30")` for a /30.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sizes {
    /// `--ipv4`.
    pub ipv4: Option<&'static str>,
    /// `--ipv6`.
    pub ipv6: Option<&'static str>,
}

impl Sizes {
    /// The `rent` options that ask for these sizes.
    fn args(self) -> Vec<std::ffi::OsString> {
        [("--ipv4", self.ipv4), ("--ipv6", self.ipv6)]
            .into_iter()
            .filter_map(|(flag, v)| v.map(|v| [flag.into(), v.into()]))
            .flatten()
            .collect()
    }
}

/// The arguments of `rent --offer ID` (without `--json`): as [`rent_args`], with the offer
/// in place of `--auto`.
fn offer_rent_args(
    dir: &Path,
    offer_id: &str,
    credit_sat: u64,
    timeout_secs: u64,
) -> Vec<std::ffi::OsString> {
    let mut args = rent_args(dir, credit_sat, timeout_secs);
    if let Some(auto) = args.iter().position(|a| a == "--auto") {
        args[auto] = "--offer".into();
        args.insert(auto + 1, offer_id.into());
    }
    args
}

fn data_dir_args<'a>(sub: &'a str, dir: &'a Path) -> [&'a std::ffi::OsStr; 3] {
    [sub.as_ref(), "--data-dir".as_ref(), dir.as_os_str()]
}

/// Parses the single JSON object a `--json` command prints.
pub fn parse_json<T: DeserializeOwned>(stdout: &str) -> Result<T> {
    serde_json::from_str(stdout.trim()).with_context(|| {
        format!(
            "expected one JSON object on stdout, got {:?}",
            truncate(stdout.trim(), 300)
        )
    })
}

/// An error naming the subcommand, its exit status and what it wrote to stderr; `cause` is
/// kept as the source (a JSON parse error, say) when there is one.
fn failure(what: &str, out: &Captured, cause: Option<anyhow::Error>) -> anyhow::Error {
    let stderr = out.stderr.trim();
    let mut msg = format!("leasewire {what} failed ({})", out.status);
    if !stderr.is_empty() {
        msg.push_str(": ");
        msg.push_str(truncate(stderr, 2000));
    }
    match cause {
        Some(c) => c.context(msg),
        None => anyhow!(msg),
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deps_dir_also_searches_parent() {
        let d = search_dirs(Path::new("/x/target/debug/deps/simnet_run-abc"));
        assert_eq!(
            d,
            [
                PathBuf::from("/x/target/debug/deps"),
                PathBuf::from("/x/target/debug")
            ]
        );
        let d = search_dirs(Path::new("/x/target/debug/simnet"));
        assert_eq!(d, [PathBuf::from("/x/target/debug")]);
    }

    #[test]
    fn find_bin_names_the_build_command() {
        let dir = tempfile::tempdir().unwrap();
        let e = find_bin(
            "leasewire",
            "SIMNET_TEST_UNSET_VARIABLE",
            &[dir.path().into()],
        )
        .unwrap_err();
        assert!(e.to_string().contains("cargo build --workspace"), "{e}");
        std::fs::write(dir.path().join("leasewire"), b"").unwrap();
        let p = find_bin(
            "leasewire",
            "SIMNET_TEST_UNSET_VARIABLE",
            &[PathBuf::from("/nonexistent"), dir.path().into()],
        )
        .unwrap();
        assert_eq!(p, dir.path().join("leasewire"));
    }

    #[test]
    fn status_parses_contract_shape_and_ignores_extras() {
        let s: StatusOut = parse_json(
            r#"{"peer_id":"12D3KooWA","roles":["provider"],"listen_addrs":["/ip4/127.0.0.1/tcp/4001"],
                "net":{"connected":2,"members":["p"],"refused_by":["x","y"],"refused":[]},
                "offers_known":3,"leases":[],"future_field":true}"#,
        )
        .unwrap();
        assert_eq!(s.peer_id, "12D3KooWA");
        assert_eq!(s.listen_addrs, ["/ip4/127.0.0.1/tcp/4001"]);
        assert_eq!(s.net.refused_by.len(), 2);
    }

    #[test]
    fn rent_and_audit_parse_with_nulls() {
        let r: RentOut = parse_json(
            r#"{"lease_id":"l","provider":"P","offer_id":"o","ipv4":"198.51.100.3/32","ipv6":null,
                "paid_sat":3010,"credit_sat":3000,"paid_until":1,"conf_path":"/c"}"#,
        )
        .unwrap();
        assert_eq!(r.ipv4.as_deref(), Some("198.51.100.3/32"));
        assert_eq!(r.ipv6, None);
        assert_eq!(r.paid_sat, 3010);
        assert_eq!(r.paid_until, Some(1));
        let c: AddCreditOut =
            parse_json(r#"{"lease_id":"l","ipv4":"198.51.100.3/32","ipv6":"","paid_until":9}"#)
                .unwrap();
        assert_eq!(c.ipv6.as_deref(), Some(""));
        assert_eq!(c.paid_until, Some(9));
        let a: AuditOut =
            parse_json(r#"{"ok":false,"entries":7,"first_bad":{"seq":4,"reason":"bad sig"}}"#)
                .unwrap();
        assert!(!a.ok);
        assert_eq!(a.first_bad.unwrap().seq, 4);
    }

    #[test]
    fn leases_parse_from_status_and_leases() {
        let s: StatusOut = parse_json(
            r#"{"peer_id":"R","leases":[{"lease_id":"l1","provider":"P","state":"active",
                "ipv4":"198.51.100.1/32","ipv6":"","paid_sat":160,"payments":3,"topups":2,
                "autopay_topups":2,"refused_unverified":1,"autopay":true,
                "autopay_note":"tunnel not verified","new_field":7}]}"#,
        )
        .unwrap();
        let l = &s.leases[0];
        assert!(l.is_active() && l.autopay);
        assert_eq!((l.payments, l.topups, l.autopay_topups), (3, 2, 2));
        assert_eq!(l.refused_unverified, 1);
        assert_eq!(l.paid_sat, 160);
        assert_eq!(l.ipv6, "");
        let p: LeasesOut =
            parse_json(r#"{"leases":[{"lease_id":"l1","renter":"R","state":"suspended"}]}"#)
                .unwrap();
        assert_eq!(p.leases[0].renter, "R");
        assert!(!p.leases[0].is_active());
        let none: StatusOut = parse_json(r#"{"peer_id":"R"}"#).unwrap();
        assert!(none.leases.is_empty());
    }

    #[test]
    fn rent_args_name_the_credit_and_timeout() {
        let a = rent_args(Path::new("/d"), 150, 60);
        let a: Vec<&str> = a.iter().map(|s| s.to_str().unwrap()).collect();
        assert_eq!(
            a,
            [
                "rent",
                "--data-dir",
                "/d",
                "--auto",
                "--credit",
                "150",
                "--timeout-secs",
                "60",
                "--yes"
            ]
        );
    }

    #[test]
    fn rent_offer_args_name_the_offer_instead_of_auto() {
        let a = offer_rent_args(Path::new("/d"), "o1", 150, 60);
        let a: Vec<&str> = a.iter().map(|s| s.to_str().unwrap()).collect();
        assert_eq!(
            Sizes {
                ipv4: Some("30"),
                ipv6: Some("none")
            }
            .args(),
            ["--ipv4", "30", "--ipv6", "none"]
        );
        assert!(Sizes::default().args().is_empty());
        assert_eq!(&a[3..5], ["--offer", "o1"]);
        assert!(a.contains(&"--yes") && !a.contains(&"--auto"));
        let l: LeaseOut = parse_json(
            r#"{"lease_id":"l2","endpoint":"127.0.0.1:5","terminates_at":9,
                "failover":"failed over to l3","failed_over_from":"l1"}"#,
        )
        .unwrap();
        assert_eq!(l.endpoint, "127.0.0.1:5");
        assert_eq!(l.terminates_at, 9);
        assert_eq!(l.failed_over_from, "l1");
        let o: OffersOut = parse_json(r#"{"offers":[{"provider":"P","offer_id":"o"}]}"#).unwrap();
        assert_eq!(o.offers[0].offer_id, "o");
    }

    #[test]
    fn garbage_is_reported_with_a_sample() {
        let e = parse_json::<AuditOut>("not json at all").unwrap_err();
        assert!(format!("{e:#}").contains("not json at all"), "{e:#}");
    }

    #[tokio::test]
    async fn failing_cli_error_carries_stderr() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("leasewire");
        std::fs::write(&fake, "#!/bin/sh\necho 'no daemon running' >&2\nexit 2\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        // A child forked concurrently by another test may briefly hold our write fd; exec
        // would then fail with ETXTBSY. Let any such child reach its exec first.
        std::thread::sleep(std::time::Duration::from_millis(50));
        let e = Cli::new(fake).status(dir.path()).await.unwrap_err();
        let msg = format!("{e:#}");
        assert!(msg.contains("no daemon running"), "{msg}");
        assert!(
            msg.starts_with("leasewire status failed (exit status: 2)"),
            "{msg}"
        );
    }
}

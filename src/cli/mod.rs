//! The `leasewire` command line: argument parsing, dispatch and exit codes.
//!
//! `src/main.rs` only calls [`run`]; this module belongs to the binary, not the library. Every subcommand but `init`, `daemon` and `audit` is a thin
//! client of the daemon's control API ([`leasewire::control`]); `audit` reads the sled database
//! directly so it works while no daemon runs (and falls back to the API for `verify` when the
//! daemon holds the database).
//!
//! Output contract: human-readable text on stdout by default; with `--json`, exactly one line of
//! JSON on stdout. Errors go to stderr as `error: …`. Exit codes: 0 success, 1 operational
//! error (including a broken audit log), 2 usage error.

mod audit;
mod daemon;
mod init;
mod lease;
mod pay;
mod render;
mod rpc;

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};

/// Command-line options (clap derive).
#[derive(Debug, Parser)]
#[command(
    name = "leasewire",
    version,
    about = "Rent and lease public static IPs over WireGuard, paid with Lightning",
    propagate_version = true
)]
struct Opts {
    /// Data directory holding node.key, config.toml, the database and the control socket
    /// [default: $HOME/.leasewire]
    #[arg(long, global = true, env = "LEASEWIRE_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

/// `--json` switch shared by the subcommands that print a result.
#[derive(Debug, Clone, Copy, Args)]
struct Output {
    /// Print the result as one line of JSON on stdout
    #[arg(long)]
    json: bool,
}

/// Role chosen at `init`: selects the config template.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum RoleArg {
    /// Lease out addresses routed to this host
    Provider,
    /// Rent addresses from providers
    Renter,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the node key and a commented config.toml for a role
    Init {
        /// Which config template to write
        #[arg(long, value_enum)]
        role: RoleArg,
        /// Overwrite an existing node.key and config.toml (the node gets a new identity)
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        out: Output,
    },
    /// Run the node in the foreground until SIGINT/SIGTERM
    Daemon,
    /// List the offers the daemon has discovered, best first
    Offers {
        #[command(flatten)]
        out: Output,
    },
    /// Rent an address: pay the provider's invoice and set up the tunnel
    Rent(RentArgs),
    /// Show the node's identity, network and leases
    Status {
        #[command(flatten)]
        out: Output,
    },
    /// Print the wg-quick configuration of a lease
    Conf {
        /// Lease id [default: the only lease held]
        #[arg(long, value_name = "ID")]
        lease: Option<String>,
        #[command(flatten)]
        out: Output,
    },
    /// Give a lease up: remove its tunnel, routes, wg-quick file and link, and tell the
    /// provider (signed leaseEnd); the remaining credit is given up
    Release {
        /// Lease id [default: the only lease held]
        #[arg(long, value_name = "ID")]
        lease: Option<String>,
        /// Give up the remaining credit without asking
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        out: Output,
    },
    /// Buy more credit for a lease
    AddCredit {
        /// Amount of credit to buy, in satoshis
        #[arg(long, value_name = "SAT", value_parser = clap::value_parser!(u64).range(1..))]
        amount: u64,
        /// Lease id [default: the only lease held]
        #[arg(long, value_name = "ID")]
        lease: Option<String>,
        /// Do not pay from the daemon's node: print the invoice (text and QR code) to pay from
        /// any wallet, then wait for the provider to confirm the credit
        #[arg(long)]
        manual: bool,
        /// With --manual: seconds to wait for the payment
        #[arg(long, value_name = "SECS", default_value_t = 600, requires = "manual")]
        wait: u32,
        #[command(flatten)]
        out: Output,
    },
    /// Switch AutoPay on or off for a lease
    Autopay {
        /// on or off
        #[arg(value_parser = ["on", "off"])]
        state: String,
        /// Lease id [default: the only lease held]
        #[arg(long, value_name = "ID")]
        lease: Option<String>,
        #[command(flatten)]
        out: Output,
    },
    /// Provider view: every lease this node has issued
    Leases {
        #[command(flatten)]
        out: Output,
    },
    /// Provider: end a lease with notice; the renter sees a signed notice in its status, and
    /// the lease is released when the notice is over
    Terminate {
        /// Lease id (a unique prefix will do)
        #[arg(long, value_name = "ID")]
        lease: String,
        /// Notice before the lease ends: <N><s|m|h|d>, e.g. 7d [default: none, at once]
        #[arg(long, value_name = "D", value_parser = parse_notice)]
        notice: Option<u64>,
        #[command(flatten)]
        out: Output,
    },
    /// Inspect the signed, hash-chained audit log
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Lease certificates: export one (provider) or check one offline (anyone)
    Lease {
        #[command(subcommand)]
        command: LeaseCommand,
    },
    /// Renter: the providers' signed receipts of every settled payment
    Receipts {
        /// Only this lease's receipts
        #[arg(long, value_name = "ID")]
        lease: Option<String>,
        #[command(flatten)]
        out: Output,
    },
}

#[derive(Debug, Subcommand)]
enum LeaseCommand {
    /// Provider: write a lease certificate (the signed lease and offer, proven in this node's
    /// audit log under a signed head)
    Export {
        /// Lease id
        #[arg(long, value_name = "ID")]
        lease: String,
        /// Write it to this file [default: stdout]
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Check a lease certificate offline (no daemon, no network); exit 1 if it does not verify
    Verify {
        /// The certificate file
        file: PathBuf,
        #[command(flatten)]
        out: Output,
    },
}

/// `rent` arguments; exactly one of `--offer` and `--auto`.
#[derive(Debug, Args)]
#[group(id = "target", required = true, multiple = false, args = ["offer", "auto"])]
struct RentArgs {
    /// Rent under this offer id (see `leasewire offers`)
    #[arg(long, value_name = "ID")]
    offer: Option<String>,
    /// Rent under the best offer discovered
    #[arg(long)]
    auto: bool,
    /// Credit to buy on top of the activation fee, in satoshis [default: renter.default_credit_sat]
    #[arg(long, value_name = "SAT", value_parser = clap::value_parser!(u64).range(1..))]
    credit: Option<u64>,
    /// How long to wait for offers to be discovered [default: 60]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    timeout_secs: Option<u32>,
    /// Buy a second lease from a provider already leasing to us without asking
    #[arg(long)]
    yes: bool,
    /// IPv4 prefix length to rent (28-32), or "none" [default: renter.ipv4_prefix_len]
    #[arg(long, value_name = "LEN|none", value_parser = size_arg(28..=32))]
    ipv4: Option<String>,
    /// IPv6 prefix length to rent (56-64), or "none" [default: renter.ipv6_prefix_len]
    #[arg(long, value_name = "LEN|none", value_parser = size_arg(56..=64))]
    ipv6: Option<String>,
    /// Leave out offers costing more than this per day for the sizes asked [default:
    /// renter.max_price_sat_per_day]
    #[arg(long, value_name = "SAT")]
    max_price: Option<u64>,
    /// Rent only from this provider (PeerId; repeatable) [default: renter.allow_providers]
    #[arg(long, value_name = "PEER")]
    allow: Vec<String>,
    /// Never rent from this provider (PeerId; repeatable) [default: renter.deny_providers]
    #[arg(long, value_name = "PEER")]
    deny: Vec<String>,
    #[command(flatten)]
    out: Output,
}

/// Parses `--ipv4` / `--ipv6`: "none" or a prefix length within `range`, kept as text for the
/// control API.
fn size_arg(
    range: std::ops::RangeInclusive<u8>,
) -> impl Fn(&str) -> Result<String, String> + Clone + Send + Sync + 'static {
    move |s: &str| match leasewire::market::sizes::parse_len_or_none(s)? {
        None => Ok("none".to_owned()),
        Some(l) if range.contains(&l) => Ok(l.to_string()),
        Some(l) => Err(format!(
            "/{l} is outside /{}../{}",
            range.start(),
            range.end()
        )),
    }
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check every entry's hash chain and signature; exit 1 at the first bad entry
    Verify {
        #[command(flatten)]
        out: Output,
    },
    /// List entries (the daemon must be stopped)
    Show {
        /// First seq to list
        #[arg(long, value_name = "SEQ", default_value_t = 0)]
        from: u64,
        #[command(flatten)]
        out: Output,
    },
    /// The audit heads of peers this node has witnessed
    Peers {
        #[command(flatten)]
        out: Output,
    },
    /// Evidence of peers whose logs forked or rolled back (two signed heads that cannot both
    /// be true)
    Evidence {
        #[command(flatten)]
        out: Output,
    },
    /// Write every entry as JSON lines to stdout (the daemon must be stopped)
    Export {
        /// Output format
        #[arg(long, value_enum, default_value_t = ExportFormat::Jsonl)]
        format: ExportFormat,
    },
}

/// Formats of `audit export`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ExportFormat {
    /// One JSON object per line
    Jsonl,
}

/// Parses the process arguments, runs the subcommand and returns the process exit code:
/// 0 on success, 1 on an operational error (printed to stderr as `error: …`), 2 on a usage
/// error (printed by clap). `--help` and `--version` exit 0.
pub fn run() -> ExitCode {
    let opts = match Opts::try_parse() {
        Ok(o) => o,
        Err(e) => {
            // clap knows whether this is help/version (stdout, 0) or a usage error (stderr, 2).
            let code = e.exit_code();
            // Nothing useful can be done if printing the usage text itself fails.
            let _ = e.print();
            return ExitCode::from(u8::try_from(code).unwrap_or(2));
        }
    };
    match dispatch(opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_broken_pipe(&e) => {
            // `leasewire audit export | head` closing the pipe early is not a failure
            // (ripgrep does the same).
            ExitCode::SUCCESS
        }
        Err(e) => {
            let _ = writeln!(io::stderr(), "error: {}", error_text(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes joined with `: `, skipping a cause whose text the message already
/// contains: many error types both print their source and return it from `source()`, and
/// anyhow's `{:#}` would then repeat it.
fn error_text(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !text.contains(&c) {
            text.push_str(": ");
            text.push_str(&c);
        }
    }
    text
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    })
}

fn dispatch(opts: Opts) -> anyhow::Result<()> {
    // Offline: no data dir needed.
    if let Command::Lease {
        command: LeaseCommand::Verify { file, out },
    } = &opts.command
    {
        client_logging();
        return lease::verify(file, out.json);
    }
    let data_dir = resolve_data_dir(opts.data_dir)?;
    match opts.command {
        Command::Init { role, force, out } => init::run(&data_dir, role, force, out.json),
        Command::Daemon => daemon::run(&data_dir),
        Command::Audit { command } => {
            client_logging();
            match command {
                AuditCommand::Verify { out } => audit::verify(&data_dir, out.json),
                AuditCommand::Show { from, out } => audit::show(&data_dir, from, out.json),
                AuditCommand::Peers { out } => audit::witness(&data_dir, false, out.json),
                AuditCommand::Evidence { out } => audit::witness(&data_dir, true, out.json),
                AuditCommand::Export {
                    format: ExportFormat::Jsonl,
                } => audit::export(&data_dir),
            }
        }
        Command::Lease { command } => {
            client_logging();
            match command {
                LeaseCommand::Export { lease, output } => rpc::block_on(lease::export(
                    &data_dir,
                    lease::lease_arg(&lease)?,
                    output.as_deref(),
                )),
                LeaseCommand::Verify { file, out } => lease::verify(&file, out.json),
            }
        }
        Command::Receipts { lease, out } => {
            client_logging();
            rpc::block_on(lease::receipts(&data_dir, lease, out.json))
        }
        Command::Offers { out } => rpc::block_on(rpc::offers(&data_dir, out.json)),
        Command::Rent(args) => rpc::block_on(rpc::rent(
            &data_dir,
            leasewire::control::pb::RentRequest {
                offer_id: args.offer.unwrap_or_default(),
                auto: args.auto,
                credit_sat: args.credit.unwrap_or(0),
                timeout_secs: args.timeout_secs.unwrap_or(0),
                yes: args.yes,
                ipv4: args.ipv4.unwrap_or_default(),
                ipv6: args.ipv6.unwrap_or_default(),
                max_price_sat_per_day: args.max_price,
                allow: args.allow,
                deny: args.deny,
            },
            args.out.json,
        )),
        Command::Status { out } => rpc::block_on(rpc::status(&data_dir, out.json)),
        Command::Conf { lease, out } => {
            rpc::block_on(rpc::conf(&data_dir, lease.unwrap_or_default(), out.json))
        }
        Command::AddCredit {
            amount,
            lease,
            manual,
            wait,
            out,
        } => {
            let req = leasewire::control::pb::AddCreditRequest {
                lease_id: lease.unwrap_or_default(),
                amount_sat: amount,
            };
            if manual {
                rpc::block_on(pay::manual(&data_dir, req, wait, out.json))
            } else {
                rpc::block_on(rpc::add_credit(&data_dir, req, out.json))
            }
        }
        Command::Autopay { state, lease, out } => rpc::block_on(pay::set_autopay(
            &data_dir,
            leasewire::control::pb::SetAutopayRequest {
                lease_id: lease.unwrap_or_default(),
                on: state == "on",
            },
            out.json,
        )),
        Command::Release { lease, yes, out } => rpc::block_on(rpc::release(
            &data_dir,
            leasewire::control::pb::ReleaseRequest {
                lease_id: lease.unwrap_or_default(),
                yes,
            },
            out.json,
        )),
        Command::Leases { out } => rpc::block_on(rpc::leases(&data_dir, out.json)),
        Command::Terminate { lease, notice, out } => rpc::block_on(rpc::terminate(
            &data_dir,
            leasewire::control::pb::TerminateRequest {
                lease_id: lease,
                notice_secs: notice.unwrap_or(0),
            },
            out.json,
        )),
    }
}

/// `--notice`: `0`, or a duration as in the config (`<N><s|m|h|d>`), in seconds.
fn parse_notice(s: &str) -> Result<u64, String> {
    if s == "0" {
        return Ok(0);
    }
    leasewire::market::limits::parse_duration(s)
        .map(|d| d.as_secs())
        .map_err(|e| e.to_string())
}

/// `--data-dir`, else `$LEASEWIRE_DATA_DIR` (via clap), else `$HOME/.leasewire`; made
/// absolute so messages and the daemon's paths do not depend on the working directory.
fn resolve_data_dir(flag: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let dir = match flag {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => {
            let home = std::env::var_os("HOME")
                .filter(|h| !h.is_empty())
                .context("$HOME is not set; pass --data-dir or set LEASEWIRE_DATA_DIR")?;
            Path::new(&home).join(".leasewire")
        }
    };
    std::path::absolute(&dir).with_context(|| format!("cannot resolve data dir {}", dir.display()))
}

/// Client commands log nothing unless `RUST_LOG` asks for it: their output is the result.
fn client_logging() {
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_default_env() {
        // Fails only if a subscriber is already installed, which is then used instead.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(io::stderr)
            .try_init();
    }
}

/// Writes `value` as one line of JSON to `w`.
fn print_json<T: serde::Serialize + ?Sized>(w: &mut dyn Write, value: &T) -> anyhow::Result<()> {
    let line = serde_json::to_string(value).context("cannot encode JSON output")?;
    writeln!(w, "{line}")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Opts, clap::Error> {
        Opts::try_parse_from(std::iter::once("leasewire").chain(args.iter().copied()))
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Opts::command().debug_assert();
    }

    #[test]
    fn rent_needs_exactly_one_target() {
        assert!(parse(&["rent"]).is_err());
        let e = parse(&["rent", "--auto", "--offer", "x"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::ArgumentConflict);
        assert_eq!(e.exit_code(), 2);
        let opts = parse(&["rent", "--offer", "o1", "--credit", "500", "--json"]).unwrap();
        match opts.command {
            Command::Rent(a) => {
                assert_eq!(a.offer.as_deref(), Some("o1"));
                assert!(!a.auto);
                assert_eq!(a.credit, Some(500));
                assert!(a.out.json);
                assert_eq!((a.ipv4, a.ipv6), (None, None));
            }
            other => panic!("parsed {other:?}"),
        }
    }

    #[test]
    fn rent_takes_sizes_and_filters() {
        let opts = parse(&[
            "rent",
            "--auto",
            "--ipv4",
            "/30",
            "--ipv6",
            "none",
            "--max-price",
            "50",
            "--allow",
            "p1",
            "--allow",
            "p2",
            "--deny",
            "p3",
        ])
        .unwrap();
        match opts.command {
            Command::Rent(a) => {
                assert_eq!(a.ipv4.as_deref(), Some("30"));
                assert_eq!(a.ipv6.as_deref(), Some("none"));
                assert_eq!(a.max_price, Some(50));
                assert_eq!(a.allow, ["p1", "p2"]);
                assert_eq!(a.deny, ["p3"]);
            }
            other => panic!("parsed {other:?}"),
        }
        assert!(parse(&["rent", "--auto", "--ipv4", "27"]).is_err());
        assert!(parse(&["rent", "--auto", "--ipv6", "65"]).is_err());
        assert!(parse(&["rent", "--auto", "--ipv4", "all"]).is_err());
    }

    #[test]
    fn data_dir_is_global_and_amounts_are_checked() {
        let opts = parse(&["status", "--data-dir", "/tmp/x"]).unwrap();
        assert_eq!(opts.data_dir.as_deref(), Some(Path::new("/tmp/x")));
        assert!(parse(&["add-credit", "--amount", "0"]).is_err());
        assert!(parse(&["add-credit", "--amount", "-5"]).is_err());
        assert!(parse(&["init", "--role", "admin"]).is_err());
        let opts = parse(&["audit", "show", "--from", "7"]).unwrap();
        assert!(matches!(
            opts.command,
            Command::Audit {
                command: AuditCommand::Show { from: 7, .. }
            }
        ));
    }

    #[test]
    fn relative_data_dir_becomes_absolute() {
        let d = resolve_data_dir(Some(PathBuf::from("rel/dir"))).unwrap();
        assert!(d.is_absolute());
        assert!(d.ends_with("rel/dir"));
    }

    #[test]
    fn error_text_does_not_repeat_causes() {
        #[derive(Debug, thiserror::Error)]
        #[error("lightning node: {0}")]
        struct Wrapping(#[source] io::Error);
        let e = anyhow::Error::from(Wrapping(io::Error::other("no cert"))).context("starting");
        assert_eq!(error_text(&e), "starting: lightning node: no cert");
        let plain = anyhow::anyhow!("inner").context("outer");
        assert_eq!(error_text(&plain), "outer: inner");
    }

    #[test]
    fn broken_pipe_is_detected_through_context() {
        let e = anyhow::Error::from(io::Error::from(io::ErrorKind::BrokenPipe)).context("writing");
        assert!(is_broken_pipe(&e));
        assert!(!is_broken_pipe(&anyhow::anyhow!("other")));
    }
}

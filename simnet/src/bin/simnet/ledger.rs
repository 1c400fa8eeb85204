//! lnd-sim's own view of every payment, through its admin API: the independent record the
//! scenarios check the daemons against, and the fault injection they use to hold a payment in
//! flight.
//!
//! With `--netns`, lnd-sim listens inside the internet namespace, which simnet's own network
//! namespace cannot reach. [`Ledger::connect`] then relays a loopback port to it: each relayed
//! connection is opened by a short-lived thread that first enters the namespace (`setns`),
//! since a socket stays in the namespace it was created in.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use leasewire_simnet::lndsim::SimManifest;
use leasewire_simnet::lndsim::admin::{
    AdminClient, PaymentAudit, PaymentEntry, STATUS_IN_FLIGHT, STATUS_SUCCEEDED,
};
use leasewire_simnet::lndsim::ledger::FaultKind;

/// How often the ledger is polled while waiting for a payment's state.
const POLL: Duration = Duration::from_millis(200);

/// A connected admin client of the cluster's lnd-sim.
#[derive(Clone, Debug)]
pub struct Ledger {
    admin: AdminClient,
}

impl Ledger {
    /// Reads `DIR/lnd-sim.json` and connects with its admin macaroon; when lnd-sim runs in
    /// network namespace `ns`, through a loopback relay into it (see the module doc).
    ///
    /// Errors: the manifest is missing or invalid, the relay cannot listen, or lnd-sim
    /// cannot be reached.
    pub async fn connect(lnd_dir: &Path, ns: Option<&str>) -> Result<Ledger> {
        let path = lnd_dir.join("lnd-sim.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let mut manifest: SimManifest =
            serde_json::from_str(&text).with_context(|| format!("invalid {}", path.display()))?;
        if manifest.tls_cert_path.is_relative() {
            manifest.tls_cert_path = lnd_dir.join(&manifest.tls_cert_path);
        }
        if let Some(ns) = ns {
            let target: SocketAddr = manifest
                .address
                .parse()
                .with_context(|| format!("lnd-sim address {:?}", manifest.address))?;
            // The client pins lnd-sim's exact certificate and checks no name, so it accepts
            // the relay's address.
            manifest.address = relay_into(ns, target).await?.to_string();
        }
        let admin = AdminClient::connect(&manifest)
            .await
            .context("cannot connect to lnd-sim's admin API")?;
        Ok(Ledger { admin })
    }

    /// Every payment of the simulated network, oldest first.
    ///
    /// Errors: the call fails.
    pub async fn audit(&self) -> Result<PaymentAudit> {
        self.admin
            .list_all_payments()
            .await
            .context("lnd-sim ListAllPayments")
    }

    /// Holds the next payment made by `payer` IN_FLIGHT for `delay` before it proceeds.
    ///
    /// Errors: lnd-sim refuses (unknown node).
    pub async fn delay_next_payment(&self, payer: &str, delay: Duration) -> Result<()> {
        self.admin
            .set_fault(payer, FaultKind::Delay(delay), 1)
            .await
            .with_context(|| format!("lnd-sim SetFault delay for {payer}"))
    }

    /// Waits until a payment made by `payer` and matching `pred` shows up, polling every
    /// 200 ms for up to `timeout`; returns it.
    ///
    /// Errors: the time ran out (naming `what`) or the ledger cannot be read.
    pub async fn wait_for(
        &self,
        what: &str,
        payer: &str,
        timeout: Duration,
        pred: impl Fn(&PaymentEntry) -> bool,
    ) -> Result<PaymentEntry> {
        let deadline = Instant::now() + timeout;
        loop {
            let audit = self.audit().await?;
            if let Some(p) = audit
                .payments
                .into_iter()
                .find(|p| p.payer == payer && pred(p))
            {
                return Ok(p);
            }
            if Instant::now() >= deadline {
                bail!("no {what} payment by {payer} in lnd-sim's ledger within {timeout:?}");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits for `payer`'s first IN_FLIGHT payment.
    ///
    /// Errors: as [`Ledger::wait_for`].
    pub async fn wait_in_flight(&self, payer: &str, timeout: Duration) -> Result<PaymentEntry> {
        self.wait_for("in-flight", payer, timeout, |p| {
            p.status == STATUS_IN_FLIGHT
        })
        .await
    }

    /// Waits until the payment with `hash` made by `payer` has SUCCEEDED.
    ///
    /// Errors: as [`Ledger::wait_for`]; also a payment that FAILED instead (nothing to wait
    /// for any more).
    pub async fn wait_succeeded(
        &self,
        payer: &str,
        hash: &str,
        timeout: Duration,
    ) -> Result<PaymentEntry> {
        let p = self
            .wait_for("resolved", payer, timeout, |p| {
                p.payment_hash == hash && p.status != STATUS_IN_FLIGHT
            })
            .await?;
        if p.status != STATUS_SUCCEEDED {
            bail!(
                "payment {hash} by {payer} ended {} ({}: {})",
                p.status,
                p.failure_reason,
                p.note
            );
        }
        Ok(p)
    }
}

/// Listens on a loopback port and relays every connection to `target` inside network
/// namespace `ns`, for as long as the runtime runs; returns the loopback address.
///
/// Errors: the loopback listener cannot be bound.
async fn relay_into(ns: &str, target: SocketAddr) -> Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot listen for the lnd-sim relay")?;
    let local = listener.local_addr().context("relay address")?;
    let ns = ns.to_owned();
    tokio::spawn(async move {
        loop {
            let (mut inbound, _) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("lnd-sim relay accept: {e}");
                    continue;
                }
            };
            let ns = ns.clone();
            tokio::spawn(async move {
                let outbound = match connect_in_ns(ns.clone(), target).await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(%ns, %target, "lnd-sim relay connect: {e:#}");
                        return;
                    }
                };
                let mut outbound = outbound;
                // Ends when either side closes; errors just end this one relayed connection.
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            });
        }
    });
    tracing::debug!(%local, %target, "relaying lnd-sim's admin API out of its namespace");
    Ok(local)
}

/// Opens a TCP connection to `target` from inside network namespace `ns`.
///
/// Errors: the namespace cannot be entered or the connection fails.
async fn connect_in_ns(ns: String, target: SocketAddr) -> Result<tokio::net::TcpStream> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    // A fresh thread: setns changes the namespace of the calling thread for good, so it must
    // not be a runtime or blocking-pool thread that other work reuses.
    std::thread::spawn(move || {
        let r = (|| -> Result<std::net::TcpStream> {
            let path = format!("/var/run/netns/{ns}");
            let f = std::fs::File::open(&path).with_context(|| format!("cannot open {path}"))?;
            // SAFETY: setns(2) on a valid namespace fd, affecting only this thread.
            if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error())
                    .with_context(|| format!("cannot enter namespace {ns}"));
            }
            let s = std::net::TcpStream::connect_timeout(&target, Duration::from_secs(5))
                .with_context(|| format!("cannot connect to {target} in {ns}"))?;
            s.set_nonblocking(true).context("set_nonblocking")?;
            Ok(s)
        })();
        let _ = tx.send(r);
    });
    let s = rx.await.context("the relay's connect thread died")??;
    tokio::net::TcpStream::from_std(s).context("registering the relayed socket")
}

/// The SUCCEEDED payments from node `payer` to node `payee`, oldest first.
pub fn succeeded<'a>(
    payments: &'a [PaymentEntry],
    payer: &str,
    payee: &str,
) -> Vec<&'a PaymentEntry> {
    payments
        .iter()
        .filter(|p| p.payer == payer && p.payee == payee && p.status == STATUS_SUCCEEDED)
        .collect()
}

/// Payment hashes paid more than once, per lnd-sim's ledger (must be 0).
pub fn double_payments(audit: &PaymentAudit) -> u64 {
    leasewire_simnet::lndsim::admin::double_payments(&audit.payments)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(payer: &str, payee: &str, hash: &str, status: &str) -> PaymentEntry {
        PaymentEntry {
            payer: payer.into(),
            payee: payee.into(),
            payment_hash: hash.into(),
            amount_msat: 160_000,
            status: status.into(),
            ..PaymentEntry::default()
        }
    }

    #[test]
    fn succeeded_filters_by_pair_and_status_and_doubles_are_counted() {
        let ps = vec![
            entry("renter-0", "provider-0", "aa", STATUS_SUCCEEDED),
            entry("renter-0", "provider-0", "bb", "FAILED"),
            entry("renter-0", "provider-1", "cc", STATUS_SUCCEEDED),
            entry("renter-1", "provider-0", "dd", STATUS_SUCCEEDED),
            entry("renter-0", "provider-0", "ee", STATUS_IN_FLIGHT),
        ];
        let s = succeeded(&ps, "renter-0", "provider-0");
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].payment_hash, "aa");
        let mut audit = PaymentAudit {
            payments: ps,
            duplicate_attempts: 0,
        };
        assert_eq!(double_payments(&audit), 0);
        audit
            .payments
            .push(entry("renter-1", "provider-0", "aa", STATUS_SUCCEEDED));
        assert_eq!(double_payments(&audit), 1);
    }
}

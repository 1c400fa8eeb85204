//! Subcommands that are plain control API calls: `offers`, `rent`, `status`, `conf`,
//! `add-credit`, `leases`. Each connects, makes one call and prints the reply.

use std::future::Future;
use std::io::{self, Write};
use std::path::Path;

use anyhow::Context as _;

use super::{print_json, render};
use leasewire::control::{ControlClient, pb};
use leasewire::datadir::DataDir;
use leasewire::types::now_unix;

/// Runs a client command on a small single-threaded runtime (one request in flight).
pub(super) fn block_on(fut: impl Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(fut)
}

/// Connects to the daemon of `data_dir`. The error already says "no daemon is running for …"
/// when there is none, so no context is added.
pub(super) async fn connect(data_dir: &Path) -> anyhow::Result<ControlClient> {
    Ok(ControlClient::connect(&DataDir::new(data_dir).control_socket()).await?)
}

pub(super) async fn status(data_dir: &Path, json: bool) -> anyhow::Result<()> {
    let reply = connect(data_dir).await?.status().await?;
    let mut out = io::stdout().lock();
    if json {
        return print_json(&mut out, &reply);
    }
    render::status(&mut out, &reply, now_unix())?;
    Ok(())
}

pub(super) async fn offers(data_dir: &Path, json: bool) -> anyhow::Result<()> {
    let reply = connect(data_dir).await?.offers().await?;
    let mut out = io::stdout().lock();
    if json {
        return print_json(&mut out, &reply);
    }
    render::offers(&mut out, &reply)?;
    Ok(())
}

pub(super) async fn rent(data_dir: &Path, req: pb::RentRequest, json: bool) -> anyhow::Result<()> {
    let client = connect(data_dir).await?;
    if !json {
        // Renting waits for discovery and a Lightning payment; say so before going quiet.
        let what = if req.auto {
            "the best offer".to_owned()
        } else {
            format!("offer {}", req.offer_id)
        };
        writeln!(
            io::stderr(),
            "renting under {what}; this waits for the payment and the provider's lease..."
        )?;
    }
    let mut lease = client.rent(req.clone()).await?;
    if !lease.confirm.is_empty() {
        if json || !confirmed(&lease.confirm)? {
            if json {
                print_json(&mut io::stdout().lock(), &lease)?;
            }
            anyhow::bail!("nothing bought: {}", lease.confirm);
        }
        lease = client.rent(pb::RentRequest { yes: true, ..req }).await?;
    }
    let mut out = io::stdout().lock();
    if json {
        return print_json(&mut out, &lease);
    }
    render::lease_detail(&mut out, &lease, now_unix())?;
    writeln!(
        out,
        "\nbring the tunnel up with the wg-quick file above, or print it: leasewire conf --lease {}",
        lease.lease_id
    )?;
    Ok(())
}

pub(super) async fn conf(data_dir: &Path, lease_id: String, json: bool) -> anyhow::Result<()> {
    let reply = connect(data_dir)
        .await?
        .conf(pb::ConfRequest { lease_id })
        .await?;
    let mut out = io::stdout().lock();
    if json {
        return print_json(&mut out, &reply);
    }
    // The text itself, unchanged, so `leasewire conf > lw0.conf` works.
    out.write_all(reply.text.as_bytes())?;
    if !reply.text.ends_with('\n') {
        writeln!(out)?;
    }
    Ok(())
}

pub(super) async fn add_credit(
    data_dir: &Path,
    req: pb::AddCreditRequest,
    json: bool,
) -> anyhow::Result<()> {
    let lease = connect(data_dir).await?.add_credit(req).await?;
    print_lease(&lease, json)
}

pub(super) async fn release(
    data_dir: &Path,
    req: pb::ReleaseRequest,
    json: bool,
) -> anyhow::Result<()> {
    let client = connect(data_dir).await?;
    let mut lease = client.release(req.clone()).await?;
    if !lease.confirm.is_empty() {
        if json || !confirmed(&lease.confirm)? {
            if json {
                print_json(&mut io::stdout().lock(), &lease)?;
            }
            anyhow::bail!("nothing released: {}", lease.confirm);
        }
        lease = client
            .release(pb::ReleaseRequest {
                lease_id: lease.lease_id.clone(),
                yes: true,
            })
            .await?;
    }
    if !json && lease.end_unsent {
        writeln!(
            io::stderr(),
            "the provider could not be told yet; the daemon keeps telling it"
        )?;
    }
    print_lease(&lease, json)
}

/// Asks the user on the terminal whether to go ahead with what `question` describes; without
/// a terminal on stdin the answer is no (scripts pass `--yes`).
fn confirmed(question: &str) -> anyhow::Result<bool> {
    use std::io::IsTerminal as _;
    if !io::stdin().is_terminal() {
        writeln!(io::stderr(), "{question}; pass --yes to go ahead")?;
        return Ok(false);
    }
    write!(io::stderr(), "{question}. Go ahead? [y/N] ")?;
    io::stderr().flush()?;
    let mut answer = String::new();
    io::stdin().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

/// One lease on stdout: as JSON, or as `key: value` lines.
pub(super) fn print_lease(lease: &pb::LeaseInfo, json: bool) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    if json {
        return print_json(&mut out, lease);
    }
    render::lease_detail(&mut out, lease, now_unix())?;
    Ok(())
}

pub(super) async fn terminate(
    data_dir: &Path,
    req: pb::TerminateRequest,
    json: bool,
) -> anyhow::Result<()> {
    let lease = connect(data_dir).await?.terminate(req).await?;
    print_lease(&lease, json)
}

pub(super) async fn leases(data_dir: &Path, json: bool) -> anyhow::Result<()> {
    let reply = connect(data_dir).await?.leases().await?;
    let mut out = io::stdout().lock();
    if json {
        return print_json(&mut out, &reply);
    }
    render::provider_leases(&mut out, &reply, now_unix())?;
    Ok(())
}

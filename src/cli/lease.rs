//! `leasewire lease export|verify` (lease certificates) and `leasewire receipts`.
//!
//! `lease verify` is fully offline: it reads one file and needs no data dir, daemon or
//! network. `lease export` asks the provider's daemon (it appends a `lease_certified` entry to
//! its log and proves it under a signed head); `receipts` asks the renter's daemon.

use std::io::{self, Write};
use std::path::Path;

use anyhow::{Context as _, bail};

use super::{print_json, rpc};
use leasewire::audit::certificate::{parse_certificate, verify_certificate};
use leasewire::types::rfc3339;

/// `lease export --lease ID [--output FILE]`.
pub(super) async fn export(
    data_dir: &Path,
    lease_id: String,
    output: Option<&Path>,
) -> anyhow::Result<()> {
    let reply = rpc::connect(data_dir)
        .await?
        .lease_certificate(lease_id)
        .await?;
    match output {
        Some(path) => {
            let mut bytes = reply.certificate_json.into_bytes();
            bytes.push(b'\n');
            std::fs::write(path, bytes)
                .with_context(|| format!("cannot write {}", path.display()))?;
            writeln!(
                io::stderr(),
                "lease certificate written to {}",
                path.display()
            )?;
        }
        None => writeln!(io::stdout().lock(), "{}", reply.certificate_json)?,
    }
    Ok(())
}

/// `lease verify FILE [--json]`: exit 0 when the certificate verifies, 1 otherwise.
pub(super) fn verify(file: &Path, json: bool) -> anyhow::Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let cert = parse_certificate(&bytes)?;
    let s = verify_certificate(&cert)?;
    let mut out = io::stdout().lock();
    if json {
        return print_json(&mut out, &s);
    }
    let prefixes: Vec<&str> = s
        .ipv4
        .iter()
        .chain(s.ipv6.iter())
        .map(String::as_str)
        .collect();
    writeln!(out, "lease certificate valid")?;
    writeln!(out, "  lease      {} (revision {})", s.lease_id, s.revision)?;
    writeln!(out, "  holder     {} (renter)", s.renter)?;
    writeln!(out, "  prefixes   {}", prefixes.join(", "))?;
    writeln!(
        out,
        "  valid      {} until {}",
        rfc3339(s.activated_at),
        rfc3339(s.paid_until)
    )?;
    writeln!(
        out,
        "  signed by  {} (provider key {})",
        s.provider, s.provider_key
    )?;
    writeln!(
        out,
        "  offer      {}{}",
        s.offer_id,
        if s.offer_included {
            " (included, signed by the provider)"
        } else {
            " (not included)"
        }
    )?;
    writeln!(
        out,
        "  logged     entry {} of the provider's audit log, under its head of {} entries signed {}",
        s.log_seq,
        s.head_size,
        rfc3339(s.head_time_ms / 1000)
    )?;
    Ok(())
}

/// `receipts [--lease ID] [--json]`.
pub(super) async fn receipts(
    data_dir: &Path,
    lease_id: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    let lease_filter = lease_id.clone();
    let reply = rpc::connect(data_dir).await?.receipts(lease_id).await?;
    let mut out = io::stdout().lock();
    if json {
        let list: Vec<serde_json::Value> = reply
            .receipts
            .iter()
            .map(|r| {
                serde_json::json!({
                    "lease_id": r.lease_id, "provider": r.provider, "renter": r.renter,
                    "payment_hash": r.payment_hash, "amount_sat": r.amount_sat,
                    "paid_until": r.paid_until, "revision": r.revision, "log_seq": r.log_seq,
                    "settled_at": r.settled_at, "signed": hex::encode(&r.signed),
                })
            })
            .collect();
        return print_json(&mut out, &list);
    }
    if reply.receipts.is_empty() {
        match lease_filter {
            Some(id) => writeln!(out, "no receipts for lease {id}")?,
            None => writeln!(out, "no receipts")?,
        }
        return Ok(());
    }
    for r in &reply.receipts {
        writeln!(
            out,
            "{}  rev {:>3}  {:>9} sat  paid until {}  hash {}  provider log #{}",
            r.lease_id,
            r.revision,
            r.amount_sat,
            rfc3339(r.paid_until),
            r.payment_hash,
            r.log_seq
        )?;
    }
    Ok(())
}

/// Refuses an empty lease id early (the daemon would say "not found").
pub(super) fn lease_arg(id: &str) -> anyhow::Result<String> {
    if id.trim().is_empty() {
        bail!("--lease needs a lease id");
    }
    Ok(id.trim().to_owned())
}

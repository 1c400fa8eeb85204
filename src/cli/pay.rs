//! `add-credit --manual` (an invoice to pay from any wallet, as text and a terminal QR code,
//! then a wait for the provider's signed lease to show the credit) and `autopay on|off`.

use std::io::{self, Write};
use std::path::Path;

use qrcode::QrCode;
use qrcode::render::unicode::Dense1x2;

use super::print_json;
use super::rpc::{connect, print_lease};
use leasewire::control::pb;

/// Prints the invoice, then waits for the credit. With `--json` the invoice is printed as one
/// JSON line first and the confirmed lease as a second.
pub(super) async fn manual(
    data_dir: &Path,
    req: pb::AddCreditRequest,
    wait_secs: u32,
    json: bool,
) -> anyhow::Result<()> {
    let client = connect(data_dir).await?;
    let inv = client.manual_invoice(req).await?;
    {
        let mut out = io::stdout().lock();
        if json {
            print_json(&mut out, &inv)?;
        } else {
            write_invoice(&mut out, &inv)?;
        }
        out.flush()?;
    }
    let lease = client
        .await_credit(pb::AwaitCreditRequest {
            payment_hash: inv.payment_hash.clone(),
            timeout_secs: wait_secs,
        })
        .await?;
    if !json {
        println!("paid: the provider's signed lease shows the credit");
    }
    print_lease(&lease, json)
}

/// The invoice as a QR code (uppercase BOLT11 with the `lightning:` scheme, as wallets scan
/// it; uppercase fits the QR alphanumeric mode) and as text.
fn write_invoice(w: &mut dyn Write, inv: &pb::ManualInvoiceReply) -> io::Result<()> {
    writeln!(
        w,
        "Pay {} sat for lease {} from any Lightning wallet:\n",
        inv.amount_sat, inv.lease_id
    )?;
    match qr_text(&inv.bolt11) {
        Ok(qr) => writeln!(w, "{qr}")?,
        Err(e) => writeln!(w, "(no QR code: {e})")?,
    }
    writeln!(w, "{}\n", inv.bolt11)?;
    writeln!(w, "payment hash: {}", inv.payment_hash)?;
    writeln!(
        w,
        "expires: {} (unix {})",
        leasewire::market::limits::rfc3339(inv.expires_at),
        inv.expires_at
    )?;
    writeln!(w, "waiting for the provider to confirm the payment...")
}

/// Renders `bolt11` as a QR code of Unicode half blocks (two modules per character row).
fn qr_text(bolt11: &str) -> Result<String, qrcode::types::QrError> {
    let code = QrCode::new(format!("lightning:{}", bolt11.to_uppercase()).as_bytes())?;
    Ok(code
        .render::<Dense1x2>()
        .dark_color(Dense1x2::Light)
        .light_color(Dense1x2::Dark)
        .quiet_zone(true)
        .build())
}

/// `leasewire autopay on|off`.
pub(super) async fn set_autopay(
    data_dir: &Path,
    req: pb::SetAutopayRequest,
    json: bool,
) -> anyhow::Result<()> {
    let lease = connect(data_dir).await?.set_autopay(req).await?;
    print_lease(&lease, json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qr_code_encodes_the_invoice() {
        let bolt11 = "lnbcrt10u1pjexample";
        let qr = qr_text(bolt11).unwrap();
        let lines: Vec<&str> = qr.lines().collect();
        // A square symbol: rows are half as many as columns (two modules per character).
        let width = lines[0].chars().count();
        assert!(width >= 21 + 8, "{width}");
        assert!(lines.iter().all(|l| l.chars().count() == width));
        assert!((lines.len() as isize - width.div_ceil(2) as isize).abs() <= 1);
        // Only block characters and spaces.
        assert!(qr.chars().all(|c| " ▀▄█\n".contains(c)), "{qr}");
    }

    #[test]
    fn invoice_text_has_everything_to_pay() {
        let inv = pb::ManualInvoiceReply {
            lease_id: "L1".into(),
            payment_hash: "ab".repeat(32),
            bolt11: "lnbcrt10u1pjexample".into(),
            amount_sat: 1000,
            expires_at: 0,
        };
        let mut out = Vec::new();
        write_invoice(&mut out, &inv).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("Pay 1000 sat for lease L1"));
        assert!(text.contains("lnbcrt10u1pjexample"));
        assert!(text.contains(&"ab".repeat(32)));
        assert!(text.contains("1970-01-01T00:00:00Z"), "{text}");
    }
}

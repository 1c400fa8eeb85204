//! The renter keeps every receipt its providers sign: after each lease it receives for a
//! payment it asks the provider for that lease's receipts, verifies them (provider
//! signature, lease, renter), and stores the new ones. `leasewire receipts` lists them.

use super::*;
use crate::wire::{Receipt, ReceiptsRequest};

/// One kept receipt: as signed, and decoded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptReceipt {
    /// The receipt as the provider signed it.
    pub signed: Signed<Receipt>,
    /// Its verified content.
    pub receipt: Receipt,
}

impl Renter {
    /// Asks the provider `peer` for the receipts of `lease_id` and keeps every valid new one;
    /// returns how many were new. Invalid receipts are logged and skipped.
    ///
    /// # Errors
    /// Network errors, a refusal or an unexpected answer, store errors.
    pub async fn fetch_receipts(&self, peer: PeerId, lease_id: &str) -> Result<usize, MarketError> {
        let msg = Message::ReceiptsRequest(ReceiptsRequest {
            lease_id: lease_id.to_owned(),
        });
        let got = match self.ask(peer, msg).await? {
            (Message::Receipts(r), _) if r.lease_id == lease_id => r.receipts,
            (Message::Error(e), _) => {
                return Err(MarketError::Refused {
                    code: e.code,
                    message: e.message,
                });
            }
            (other, _) => {
                return Err(MarketError::Unexpected {
                    expected: "receipts",
                    got: other.name(),
                });
            }
        };
        let me = self.inner.peer_id.to_string();
        let provider = peer.to_string();
        let valid: Vec<KeptReceipt> = got
            .into_iter()
            .filter_map(|signed| {
                let checked = signed
                    .verify_from(&peer)
                    .ok()
                    .filter(|r| r.lease_id == lease_id && r.renter == me && r.provider == provider);
                if checked.is_none() {
                    tracing::warn!(%peer, lease_id, "provider sent an invalid receipt; skipped");
                }
                checked.map(|receipt| KeptReceipt { signed, receipt })
            })
            .collect();
        let mut new = 0;
        self.inner
            .receipts
            .update(lease_id, |old| {
                let mut all = old.cloned().unwrap_or_default();
                new = 0;
                for r in &valid {
                    if !all
                        .iter()
                        .any(|k: &KeptReceipt| k.receipt.payment_hash == r.receipt.payment_hash)
                    {
                        all.push(r.clone());
                        new += 1;
                    }
                }
                all.sort_by_key(|k| (k.receipt.revision, k.receipt.log_seq));
                Ok(Some(all))
            })
            .await?;
        if new > 0 {
            tracing::debug!(lease_id, new, "receipts kept");
        }
        Ok(new)
    }

    /// The kept receipts, of one lease or of all, by lease id then in payment order.
    ///
    /// # Errors
    /// Store errors.
    pub fn receipts(&self, lease_id: Option<&str>) -> Result<Vec<KeptReceipt>, MarketError> {
        let mut out = Vec::new();
        match lease_id {
            Some(id) => out.extend(self.inner.receipts.get(id)?.unwrap_or_default()),
            None => {
                for (_, all) in self.inner.receipts.all()? {
                    out.extend(all);
                }
            }
        }
        Ok(out)
    }
}

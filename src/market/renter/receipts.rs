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

    /// The witness of this renter's providers' audit logs.
    pub fn witness(&self) -> &crate::market::witness::Witness {
        &self.inner.witness
    }

    /// Asks every provider of a lease not released for its latest audit head with a
    /// consistency proof from the head seen last time, and checks it: a fork or a rollback
    /// is kept as evidence and audited. Unreachable providers are asked again next time.
    pub async fn witness_providers(&self) {
        let rentals = match self.inner.rentals.all() {
            Ok(all) => all,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read rentals to witness providers");
                return;
            }
        };
        let mut providers: Vec<String> = rentals
            .into_iter()
            .filter(|(_, r)| r.state != LeaseState::Released)
            .map(|(_, r)| r.lease.provider)
            .collect();
        providers.sort();
        providers.dedup();
        for p in providers {
            let Ok(peer) = p.parse::<PeerId>() else {
                continue;
            };
            if let Err(e) = self.witness_provider(peer).await {
                tracing::debug!(provider = %p, error = %e, "provider head not witnessed");
            }
        }
    }

    /// One `headRequest` to `peer`, checked by the witness.
    ///
    /// # Errors
    /// Network errors, refusals, a malformed or wrongly signed head, store errors.
    pub async fn witness_provider(
        &self,
        peer: PeerId,
    ) -> Result<crate::market::witness::Observation, MarketError> {
        let since_size = self.inner.witness.since_size(&peer)?;
        let msg = Message::HeadRequest(crate::wire::HeadRequest { since_size });
        // Straight to the network, not through `ask`: a witness probe must not count as a
        // delivery failure of the provider (the tick's status poll already does).
        match self.inner.peers.request(peer, msg).await? {
            (Message::Head(reply), _) => self.inner.witness.observe(&peer, &reply).await,
            (Message::Error(e), _) => Err(MarketError::Refused {
                code: e.code,
                message: e.message,
            }),
            (other, _) => Err(MarketError::Unexpected {
                expected: "head",
                got: other.name(),
            }),
        }
    }
}

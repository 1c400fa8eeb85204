//! The control API served for a running node ([`NodeControl`]): a thin mapping from RPCs to
//! the provider and renter roles of a [`NodeHandle`], and from their records to the API's
//! messages.

use libp2p::PeerId;

use super::{ControlError, ControlHandler, pb};
use crate::audit::AuditLog;
use crate::market::MarketError;
use crate::market::provider::{Provider, ProviderLease};
use crate::market::renter::{Filters, RentArgs, Rental, Renter, Sizes};
use crate::market::sizes::parse_len_or_none;
use crate::net::NetClient;
use crate::node::NodeHandle;
use crate::node::config::Role;
use crate::types::now_unix;
use crate::wire::RefundState;
use crate::wire::{Lease, LeaseState};
use std::time::Duration;

/// The control API's view of a running node: hand it to [`super::serve`].
pub struct NodeControl {
    peer_id: PeerId,
    roles: Vec<Role>,
    net: NetClient,
    provider: Option<Provider>,
    renter: Option<Renter>,
    audit: AuditLog,
    public_market: bool,
    joined_at_ms: u64,
    ln_pubkey: String,
    network: String,
    /// Credit a `rent` without `--credit` buys; offers are priced for it.
    default_credit_sat: u64,
}

impl NodeControl {
    /// The control API of `node` (it shares the node's roles, network and audit log).
    pub fn new(node: &NodeHandle) -> NodeControl {
        let cfg = node.config();
        NodeControl {
            peer_id: node.peer_id(),
            roles: cfg.node.roles.clone(),
            net: node.net().clone(),
            provider: node.provider().cloned(),
            renter: node.renter().cloned(),
            audit: node.audit().clone(),
            public_market: node.public_market(),
            joined_at_ms: node.joined_at_ms(),
            ln_pubkey: node.ln_pubkey().to_owned(),
            network: cfg.lightning.network.clone(),
            default_credit_sat: cfg.renter.default_credit_sat,
        }
    }
}

fn market_err(e: MarketError) -> ControlError {
    match e {
        MarketError::NotFound(m) => ControlError::NotFound(m),
        MarketError::Invalid(m) => ControlError::InvalidArgument(m),
        e @ (MarketError::InvoiceRejected(_)
        | MarketError::Refused { .. }
        | MarketError::NoOffer(_)
        | MarketError::BadSigned { .. }
        | MarketError::Lightning(_)
        | MarketError::LimitExceeded(_)
        | MarketError::AwaitingLease(_)
        | MarketError::UndeliveredPayment(_)
        | MarketError::NeedsConfirmation(_)) => ControlError::FailedPrecondition(e.to_string()),
        e @ MarketError::Net(_) => ControlError::Unavailable(e.to_string()),
        e => ControlError::Internal(e.to_string()),
    }
}

/// A renter's payment still waiting for its lease, as the control API shows it.
fn open_payment_info(p: crate::market::renter::OpenPayment) -> pb::OpenPaymentInfo {
    pb::OpenPaymentInfo {
        payment_hash: p.payment_hash,
        provider: p.provider,
        lease_id: p.lease_id,
        amount_sat: p.amount_sat,
        purpose: p.purpose,
        paid: p.paid,
        since: p.since,
        age_secs: p.age_secs,
        advice: p.advice,
    }
}

/// A lease as the control API shows it; `conf_path` is empty on the provider side.
fn lease_info(l: &Lease, state: LeaseState, paid_sat: u64, conf_path: String) -> pb::LeaseInfo {
    pb::LeaseInfo {
        lease_id: l.lease_id.clone(),
        provider: l.provider.clone(),
        renter: l.renter.clone(),
        state: state.as_str().into(),
        ipv4: l.ipv4.clone().unwrap_or_default(),
        ipv6: l.ipv6.clone().unwrap_or_default(),
        paid_sat,
        credit_sat: l.credit_sat,
        remaining_credit_sat: l.remaining_credit(now_unix()),
        paid_until: l.paid_until,
        endpoint: l.endpoint.clone(),
        offer_id: l.offer_id.clone(),
        conf_path,
        activated_at: l.activated_at,
        rate_sat_per_day: l.terms.rate_sat_per_day,
        refund_unused: l.terms.refund_unused,
        ..Default::default()
    }
}

/// The sizes a `rent` asks for: each family from the request when given ("none" or a
/// length), else from the renter's config.
fn rent_sizes(
    cfg: &crate::config::RenterConfig,
    ipv4: &str,
    ipv6: &str,
) -> Result<Option<Sizes>, ControlError> {
    if ipv4.is_empty() && ipv6.is_empty() {
        return Ok(None);
    }
    let pick = |given: &str, default: Option<u8>| {
        if given.is_empty() {
            Ok(default)
        } else {
            parse_len_or_none(given).map_err(ControlError::InvalidArgument)
        }
    };
    let sizes = Sizes {
        ipv4: pick(ipv4, cfg.ipv4_prefix_len)?,
        ipv6: pick(ipv6, cfg.ipv6_prefix_len)?,
    };
    sizes
        .validate()
        .map_err(|e| ControlError::InvalidArgument(e.to_string()))?;
    Ok(Some(sizes))
}

/// The offer filters of a `rent`: the renter's config, each overridden by the request's when
/// given.
fn rent_filters(
    cfg: &crate::config::RenterConfig,
    req: &pb::RentRequest,
) -> Result<Filters, ControlError> {
    let mut f = cfg.filters();
    if let Some(max) = req.max_price_sat_per_day {
        f.max_price_sat_per_day = Some(max);
    }
    for p in req.allow.iter().chain(&req.deny) {
        p.parse::<libp2p::PeerId>()
            .map_err(|_| ControlError::InvalidArgument(format!("{p:?} is not a PeerId")))?;
    }
    if !req.allow.is_empty() {
        f.allow = req.allow.clone();
    }
    if !req.deny.is_empty() {
        f.deny = req.deny.clone();
    }
    Ok(f)
}

/// "IPv4 /32 (5 left, +0/day) /30 (1 left, +40/day); IPv6 none": an offer's sizes.
fn describe_sizes(o: &crate::wire::Offer) -> String {
    let one = |l: &[crate::wire::PrefixAvailability]| {
        if l.is_empty() {
            return "none".to_owned();
        }
        l.iter()
            .map(|a| {
                format!(
                    "/{} ({} left, +{}/day)",
                    a.prefix_len, a.available, a.rate_sat_per_day
                )
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    format!("IPv4 {}; IPv6 {}", one(&o.ipv4), one(&o.ipv6))
}

fn rental_info(r: &Rental) -> pb::LeaseInfo {
    let note = r.stats.last_autopay.clone().unwrap_or_default();
    pb::LeaseInfo {
        autopay: r.autopay,
        payments: r.stats.payments,
        topups: r.stats.topups,
        autopay_topups: r.stats.autopay_topups,
        refused_unverified: r.stats.refused_unverified,
        autopay_note: note.message,
        autopay_note_at: note.at,
        autopay_note_paid: note.paid,
        end_unsent: r.end_unsent,
        terminates_at: r.terminates_at().unwrap_or(0),
        failover: r.failover_status().unwrap_or_default(),
        failed_over_from: r.failed_over_from.clone().unwrap_or_default(),
        dead_since: r.health.dead_since.unwrap_or(0),
        last_ok_at: r.health.last_ok_at.unwrap_or(0),
        refund_sat: r.refund.refund_sat,
        refund_state: if r.lease.terms.refund_unused && r.state == LeaseState::Released {
            r.refund.describe().into()
        } else {
            String::new()
        },
        refund_hash: r.refund.refund_hash.clone().unwrap_or_default(),
        ..lease_info(
            &r.lease,
            r.state,
            r.paid_sat,
            r.conf_path.display().to_string(),
        )
    }
}

fn provider_lease_info(r: &ProviderLease) -> pb::LeaseInfo {
    pb::LeaseInfo {
        tunnel_pending: r.tunnel_pending,
        terminates_at: r
            .termination
            .as_ref()
            .and_then(|n| n.verify().ok())
            .map(|n| n.ends_at)
            .unwrap_or(0),
        refund_sat: r.refund.as_ref().map_or(0, |f| f.due_sat),
        refund_state: r
            .refund
            .as_ref()
            .map(|f| f.state.as_str().to_owned())
            .unwrap_or_default(),
        refund_hash: match r.refund.as_ref().map(|f| &f.state) {
            Some(RefundState::Paid { payment_hash } | RefundState::Paying { payment_hash }) => {
                payment_hash.clone()
            }
            _ => String::new(),
        },
        ..lease_info(&r.lease, r.state, r.paid_sat, String::new())
    }
}

impl NodeControl {
    fn renter(&self) -> Result<&Renter, ControlError> {
        self.renter.as_ref().ok_or_else(|| {
            ControlError::FailedPrecondition("this node does not have the renter role".into())
        })
    }
}

#[async_trait::async_trait]
impl ControlHandler for NodeControl {
    async fn status(&self) -> Result<pb::StatusReply, ControlError> {
        let st = self
            .net
            .status()
            .await
            .map_err(|e| ControlError::Unavailable(e.to_string()))?;
        let s = |v: Vec<PeerId>| v.into_iter().map(|p| p.to_string()).collect::<Vec<_>>();
        let leases = match &self.renter {
            Some(r) => r
                .rentals()
                .map_err(market_err)?
                .iter()
                .map(rental_info)
                .collect(),
            None => Vec::new(),
        };
        let open_payments = match &self.renter {
            Some(r) => r
                .open_payments()
                .map_err(market_err)?
                .into_iter()
                .map(open_payment_info)
                .collect(),
            None => Vec::new(),
        };
        let (provider_disk, tunnel_pending) = match &self.provider {
            Some(p) => (
                p.disk_refusal().unwrap_or_default(),
                p.leases()
                    .map_err(market_err)?
                    .into_iter()
                    .filter(|l| l.tunnel_pending)
                    .map(|l| l.lease.lease_id)
                    .collect(),
            ),
            None => (String::new(), Vec::new()),
        };
        let head = self.audit.signed_head();
        let log_conflicts = match &self.renter {
            Some(r) => r
                .witness()
                .evidence()
                .map_err(market_err)?
                .into_iter()
                .map(|e| format!("{}: {}: {}", e.peer, e.kind, e.reason))
                .collect(),
            None => Vec::new(),
        };
        Ok(pb::StatusReply {
            audit_entries: head.head.size,
            audit_root: hex::encode(head.head.root),
            log_conflicts,
            provider_disk,
            tunnel_pending,
            open_payments,
            peer_id: self.peer_id.to_string(),
            roles: self
                .roles
                .iter()
                .map(|r| match r {
                    Role::Provider => "provider".to_owned(),
                    Role::Renter => "renter".to_owned(),
                })
                .collect(),
            listen_addrs: st.listen_addrs.iter().map(|a| a.to_string()).collect(),
            net: Some(pb::NetInfo {
                connected: st.connected as u32,
                members: s(st.members),
                refused_by: s(st.refused_by),
                refused: s(st.refused),
                isolated: st.isolated,
                connected_members: st.connected_members as u32,
                dht: match st.dht {
                    crate::net::DhtKind::Public => "public",
                    crate::net::DhtKind::Private => "private",
                }
                .to_owned(),
                dht_role: match st.dht_role {
                    crate::net::DhtRole::Server => "server",
                    crate::net::DhtRole::Client => "client",
                }
                .to_owned(),
                rejected_connections: st.rejected_connections,
                joined_at_unix_ms: self.joined_at_ms,
                banned: u32::try_from(st.banned).unwrap_or(u32::MAX),
            }),
            offers_known: self
                .renter
                .as_ref()
                .map(|r| r.offers(None).len() as u32)
                .unwrap_or(0),
            leases,
            public_market: self.public_market,
            ln_pubkey: self.ln_pubkey.clone(),
            network: self.network.clone(),
        })
    }

    async fn offers(&self) -> Result<pb::OffersReply, ControlError> {
        let r = self.renter()?;
        let offers = r
            .offers(None)
            .into_iter()
            .map(|o| {
                let t = &o.offer.terms;
                let avail = |v: &[crate::wire::PrefixAvailability]| {
                    v.iter().map(|a| a.available).max().unwrap_or(0)
                };
                pb::OfferInfo {
                    offer_id: o.offer_id.clone(),
                    provider: o.peer.clone(),
                    seq: o.offer.seq,
                    endpoint: o.offer.endpoint.clone(),
                    ln_pubkey: o.offer.ln_pubkey.clone(),
                    wg_pubkey: o.offer.wg_pubkey.to_base64(),
                    activation_fee_sat: t.activation_fee_sat,
                    rate_sat_per_day: t.rate_sat_per_day,
                    min_initial_credit_sat: t.min_initial_credit_sat,
                    min_topup_sat: t.min_topup_sat,
                    max_credit_sat: t.max_credit_sat,
                    reserve_days: t.reserve_days,
                    ipv4_available: avail(&o.offer.ipv4),
                    ipv6_available: avail(&o.offer.ipv6),
                    expires_at: o.offer.expires_at,
                    rtt_ms: o.rtt.as_secs_f64() * 1000.0,
                    first_verified_unix_ms: o.first_verified_ms,
                    sizes: describe_sizes(&o.offer),
                    // The price of the configured sizes (the base terms when it lacks them).
                    price_sat: crate::market::select::price(
                        &crate::market::sizes::effective_terms(&o.offer, r.config().sizes())
                            .unwrap_or_else(|_| t.clone()),
                        self.default_credit_sat,
                    )
                    .map(|(_, p)| p)
                    .unwrap_or(0),
                }
            })
            .collect();
        Ok(pb::OffersReply { offers })
    }

    async fn rent(&self, req: pb::RentRequest) -> Result<pb::LeaseInfo, ControlError> {
        let r = self.renter()?;
        if req.auto != req.offer_id.is_empty() {
            return Err(ControlError::InvalidArgument(
                "give exactly one of an offer id or auto".into(),
            ));
        }
        let args = RentArgs {
            offer_id: (!req.offer_id.is_empty()).then(|| req.offer_id.clone()),
            credit_sat: (req.credit_sat > 0).then_some(req.credit_sat),
            timeout: Duration::from_secs(if req.timeout_secs == 0 {
                60
            } else {
                u64::from(req.timeout_secs)
            }),
            sizes: rent_sizes(r.config(), &req.ipv4, &req.ipv6)?,
            filters: Some(rent_filters(r.config(), &req)?),
        };
        match r.rent_confirmed(args, req.yes).await {
            Ok(rental) => Ok(rental_info(&rental)),
            // Nothing bought: the caller asks its user and comes back with `yes`.
            Err(MarketError::NeedsConfirmation(why)) => Ok(pb::LeaseInfo {
                confirm: why,
                ..Default::default()
            }),
            Err(e) => Err(market_err(e)),
        }
    }

    async fn conf(&self, req: pb::ConfRequest) -> Result<pb::ConfReply, ControlError> {
        let (path, text) = self.renter()?.conf(&req.lease_id).map_err(market_err)?;
        Ok(pb::ConfReply {
            path: path.display().to_string(),
            text,
        })
    }

    async fn add_credit(&self, req: pb::AddCreditRequest) -> Result<pb::LeaseInfo, ControlError> {
        if req.amount_sat == 0 {
            return Err(ControlError::InvalidArgument(
                "amount must be positive".into(),
            ));
        }
        let rental = self
            .renter()?
            .add_credit(&req.lease_id, req.amount_sat)
            .await
            .map_err(market_err)?;
        Ok(rental_info(&rental))
    }

    async fn manual_invoice(
        &self,
        req: pb::AddCreditRequest,
    ) -> Result<pb::ManualInvoiceReply, ControlError> {
        if req.amount_sat == 0 {
            return Err(ControlError::InvalidArgument(
                "amount must be positive".into(),
            ));
        }
        let inv = self
            .renter()?
            .manual_invoice(&req.lease_id, req.amount_sat)
            .await
            .map_err(market_err)?;
        Ok(pb::ManualInvoiceReply {
            lease_id: inv.lease_id,
            payment_hash: inv.payment_hash,
            bolt11: inv.bolt11,
            amount_sat: inv.amount_sat,
            expires_at: inv.expires_at,
        })
    }

    async fn await_credit(
        &self,
        req: pb::AwaitCreditRequest,
    ) -> Result<pb::LeaseInfo, ControlError> {
        let secs = if req.timeout_secs == 0 {
            600
        } else {
            req.timeout_secs
        };
        let rental = self
            .renter()?
            .await_manual(&req.payment_hash, Duration::from_secs(u64::from(secs)))
            .await
            .map_err(market_err)?;
        Ok(rental_info(&rental))
    }

    async fn set_autopay(&self, req: pb::SetAutopayRequest) -> Result<pb::LeaseInfo, ControlError> {
        let rental = self
            .renter()?
            .set_autopay(&req.lease_id, req.on)
            .map_err(market_err)?;
        Ok(rental_info(&rental))
    }

    async fn release(&self, req: pb::ReleaseRequest) -> Result<pb::LeaseInfo, ControlError> {
        let r = self.renter()?;
        let (rental, forfeit) = r.release_preview(&req.lease_id).map_err(market_err)?;
        // Terms that promise a refund pay the unused credit back; otherwise it is lost.
        let refund = if rental.lease.terms.refund_unused {
            forfeit
        } else {
            0
        };
        if !req.yes {
            let confirm = if refund > 0 {
                format!(
                    "releasing lease {} ends its remaining {forfeit} sat of credit; its terms \
                     promise a refund, so about {refund} sat should come back",
                    rental.lease.lease_id
                )
            } else {
                format!(
                    "releasing lease {} gives up its remaining {forfeit} sat of credit",
                    rental.lease.lease_id
                )
            };
            return Ok(pb::LeaseInfo {
                forfeit_sat: forfeit,
                refund_sat: refund,
                confirm,
                ..rental_info(&rental)
            });
        }
        let released = r
            .release(&rental.lease.lease_id)
            .await
            .map_err(market_err)?;
        Ok(pb::LeaseInfo {
            forfeit_sat: forfeit,
            refund_sat: refund,
            ..rental_info(&released)
        })
    }

    async fn terminate(&self, req: pb::TerminateRequest) -> Result<pb::LeaseInfo, ControlError> {
        let p = self.provider.as_ref().ok_or_else(|| {
            ControlError::FailedPrecondition("this node does not have the provider role".into())
        })?;
        let matching: Vec<String> = p
            .leases()
            .map_err(market_err)?
            .into_iter()
            .map(|l| l.lease.lease_id)
            .filter(|id| !req.lease_id.is_empty() && id.starts_with(&req.lease_id))
            .collect();
        let id = match matching.as_slice() {
            [id] => id.clone(),
            [] => return Err(ControlError::NotFound(format!("lease {}", req.lease_id))),
            many => {
                return Err(ControlError::InvalidArgument(format!(
                    "{} leases match: {}",
                    many.len(),
                    many.join(", ")
                )));
            }
        };
        let rec = p
            .terminate(&id, Duration::from_secs(req.notice_secs))
            .await
            .map_err(market_err)?;
        Ok(provider_lease_info(&rec))
    }

    async fn leases(&self) -> Result<pb::LeasesReply, ControlError> {
        let p = self.provider.as_ref().ok_or_else(|| {
            ControlError::FailedPrecondition("this node does not have the provider role".into())
        })?;
        Ok(pb::LeasesReply {
            leases: p
                .leases()
                .map_err(market_err)?
                .iter()
                .map(provider_lease_info)
                .collect(),
        })
    }

    async fn audit_verify(&self) -> Result<pb::AuditVerifyReply, ControlError> {
        // Verification reads and checks the whole log on every core: not on a runtime worker.
        let audit = self.audit.clone();
        let report = tokio::task::spawn_blocking(move || audit.verify())
            .await
            .map_err(|e| ControlError::Internal(format!("audit verification failed: {e}")))?;
        Ok(pb::AuditVerifyReply {
            ok: report.ok,
            entries: report.entries,
            first_bad_seq: report.first_bad.as_ref().map(|b| b.seq),
            reason: report.first_bad.map(|b| b.reason).unwrap_or_default(),
        })
    }

    async fn receipts(&self, req: pb::ReceiptsRequest) -> Result<pb::ReceiptsReply, ControlError> {
        let r = self.renter.as_ref().ok_or_else(|| {
            ControlError::FailedPrecondition("this node does not have the renter role".into())
        })?;
        let kept = r.receipts(req.lease_id.as_deref()).map_err(market_err)?;
        let mut receipts = Vec::with_capacity(kept.len());
        for k in kept {
            let mut signed = Vec::new();
            ciborium::into_writer(&k.signed, &mut signed)
                .map_err(|e| ControlError::Internal(format!("cannot encode a receipt: {e}")))?;
            let x = k.receipt;
            receipts.push(pb::ReceiptInfo {
                lease_id: x.lease_id,
                provider: x.provider,
                renter: x.renter,
                payment_hash: x.payment_hash,
                amount_sat: x.amount_sat,
                paid_until: x.paid_until,
                revision: x.revision,
                log_seq: x.log_seq,
                settled_at: x.settled_at,
                signed,
            });
        }
        Ok(pb::ReceiptsReply { receipts })
    }

    async fn audit_witness(&self) -> Result<pb::AuditWitnessReply, ControlError> {
        let (peers, evidence) = match &self.renter {
            Some(r) => (
                r.witness().peers().map_err(market_err)?,
                r.witness().evidence().map_err(market_err)?,
            ),
            None => (Vec::new(), Vec::new()),
        };
        let json =
            serde_json::to_string(&serde_json::json!({"peers": peers, "evidence": evidence}))
                .map_err(|e| ControlError::Internal(format!("cannot encode: {e}")))?;
        Ok(pb::AuditWitnessReply { json })
    }

    async fn lease_certificate(
        &self,
        req: pb::LeaseCertificateRequest,
    ) -> Result<pb::LeaseCertificateReply, ControlError> {
        let p = self.provider.as_ref().ok_or_else(|| {
            ControlError::FailedPrecondition(
                "lease certificates are made by the lease's provider; this node is not one".into(),
            )
        })?;
        let cert = p
            .lease_certificate(&req.lease_id)
            .await
            .map_err(market_err)?;
        let certificate_json = serde_json::to_string_pretty(&cert)
            .map_err(|e| ControlError::Internal(format!("cannot encode the certificate: {e}")))?;
        Ok(pb::LeaseCertificateReply { certificate_json })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RenterConfig;

    #[test]
    fn rent_sizes_override_the_config_per_family() {
        let cfg = RenterConfig::default();
        assert_eq!(rent_sizes(&cfg, "", "").unwrap(), None, "the config's");
        assert_eq!(
            rent_sizes(&cfg, "30", "none").unwrap(),
            Some(Sizes {
                ipv4: Some(30),
                ipv6: None
            })
        );
        assert_eq!(
            rent_sizes(&cfg, "", "/56").unwrap(),
            Some(Sizes {
                ipv4: Some(32),
                ipv6: Some(56)
            }),
            "IPv4 from the config"
        );
        for (v4, v6) in [("none", "none"), ("27", ""), ("", "65"), ("x", "")] {
            assert!(
                matches!(
                    rent_sizes(&cfg, v4, v6),
                    Err(ControlError::InvalidArgument(_))
                ),
                "{v4:?} {v6:?}"
            );
        }
    }

    #[test]
    fn rent_filters_override_the_config_per_filter() {
        let (a, b) = (
            libp2p::PeerId::random().to_string(),
            libp2p::PeerId::random().to_string(),
        );
        let cfg = RenterConfig {
            max_price_sat_per_day: Some(100),
            deny_providers: vec![a.clone()],
            ..RenterConfig::default()
        };
        let f = rent_filters(&cfg, &pb::RentRequest::default()).unwrap();
        assert_eq!(f, cfg.filters());
        let f = rent_filters(
            &cfg,
            &pb::RentRequest {
                max_price_sat_per_day: Some(50),
                allow: vec![b.clone()],
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(f.max_price_sat_per_day, Some(50));
        assert_eq!(f.allow, [b]);
        assert_eq!(f.deny, [a], "not given: the config's");
        let bad = pb::RentRequest {
            deny: vec!["nope".into()],
            ..Default::default()
        };
        assert!(matches!(
            rent_filters(&cfg, &bad),
            Err(ControlError::InvalidArgument(_))
        ));
    }
}

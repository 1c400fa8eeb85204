//! Rent and top-up requests: validation, prefix reservation, invoices.

use super::*;
use crate::market::sizes::{self, Family, Sizes};

/// What an invoice's pending record holds besides the commitment: the prefixes reserved for
/// it and the address its request came from.
#[derive(Default)]
pub(super) struct Held {
    ipv4: Option<String>,
    ipv6: Option<String>,
    remote_ip: Option<String>,
}

impl Provider {
    /// The unreleased lease whose renter uses WireGuard key `key`, if any.
    fn lease_of_key(&self, key: &WgKey) -> Result<Option<String>, MarketError> {
        Ok(self
            .inner
            .leases
            .all()?
            .into_iter()
            .find(|(_, l)| l.state != LeaseState::Released && l.lease.renter_wg_pubkey == *key)
            .map(|(id, _)| id))
    }

    pub(super) async fn on_rent_request(
        &self,
        peer: PeerId,
        remote_ip: Option<std::net::IpAddr>,
        r: RentRequest,
    ) -> Message {
        let i = &self.inner;
        // A disk nearly full (or failing) takes no new work: what space is left is for the
        // settlements and suspensions already under way.
        if let Some(why) = self.disk_refusal() {
            return err(ErrorCode::Unavailable, why);
        }
        let offer = self.offer();
        if !self.accepts_offer(&r.offer_id) {
            return err(
                ErrorCode::OfferChanged,
                format!(
                    "offer {} is not current; current is {}",
                    r.offer_id,
                    offer.id()
                ),
            );
        }
        // The sizes asked must be ones the offer lists; the lease's terms carry the rate of
        // exactly those sizes.
        let asked = Sizes {
            ipv4: r.ipv4_prefix_len,
            ipv6: r.ipv6_prefix_len,
        };
        let (ipv4_list, ipv6_list) = self.availability();
        let terms = match sizes::effective_terms_of(&i.cfg.terms, &ipv4_list, &ipv6_list, asked) {
            Ok(t) => t,
            Err(e) => return err(ErrorCode::BadRequest, e.to_string()),
        };
        if r.credit_sat < terms.min_initial_credit_sat || r.credit_sat > terms.max_credit_sat {
            return err(
                ErrorCode::BadRequest,
                format!(
                    "credit {} sat outside {}..={} sat",
                    r.credit_sat, terms.min_initial_credit_sat, terms.max_credit_sat
                ),
            );
        }
        if i.pending.get(&r.request_id).ok().flatten().is_some() {
            return err(ErrorCode::BadRequest, "request id already used");
        }
        // The WireGuard peer is keyed by the renter's key: a second lease on a key in use would
        // take the first lease's peer over, and suspending either would cut both.
        match self.lease_of_key(&r.wg_pubkey) {
            Ok(Some(other)) => {
                return err(
                    ErrorCode::BadRequest,
                    format!("WireGuard key already used by lease {other}; use one key per lease"),
                );
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!(error = %e, "lease lookup failed");
                return err(ErrorCode::Unavailable, "provider storage error");
            }
        }
        // Each unpaid invoice holds prefixes until it expires: a cap per peer keeps one peer
        // from reserving the whole pool, and a cap on all reservations bounds what many fresh
        // identities can hold together. Counted before anything is allocated, in one step.
        let slot = match i.reservations.take(
            &r.request_id,
            &peer.to_string(),
            remote_ip.map(|a| a.to_string()).as_deref(),
            None,
        ) {
            Ok(slot) => slot,
            Err(e) => return refuse_cap(peer, &e),
        };
        let lease_id = random_id();
        let reserve = async || -> Result<(Option<String>, Option<String>), MarketError> {
            let v4 = match asked.ipv4 {
                Some(len) => match i.pool.allocate(Family::V4, len, &lease_id).await? {
                    Some(n) => Some(n.to_string()),
                    None => {
                        return Err(MarketError::NoOffer(format!("no IPv4 /{len} left")));
                    }
                },
                None => None,
            };
            let v6 = match asked.ipv6 {
                Some(len) => match i.pool.allocate(Family::V6, len, &lease_id).await? {
                    Some(n) => Some(n.to_string()),
                    None => {
                        if let Some(p) = &v4 {
                            i.pool.release(p, &lease_id).await?;
                        }
                        return Err(MarketError::NoOffer(format!("no IPv6 /{len} left")));
                    }
                },
                None => None,
            };
            Ok((v4, v6))
        };
        let (ipv4, ipv6) = match reserve().await {
            Ok(x) => x,
            Err(MarketError::NoOffer(m)) => return err(ErrorCode::PoolExhausted, m),
            Err(e) => {
                tracing::error!(error = %e, "pool allocation failed");
                i.disk.record_failure(&e.to_string());
                return err(ErrorCode::Unavailable, "provider storage error");
            }
        };
        let amount_sat = terms.activation_fee_sat + r.credit_sat;
        let commitment = InvoiceCommitment {
            purpose: PURPOSE_ACTIVATION.into(),
            request_id: r.request_id.clone(),
            provider: i.peer_id.to_string(),
            renter: peer.to_string(),
            offer_id: r.offer_id.clone(),
            lease_id: None,
            terms,
            credit_sat: r.credit_sat,
            amount_sat,
            ipv4_prefix_len: r.ipv4_prefix_len,
            ipv6_prefix_len: r.ipv6_prefix_len,
            renter_wg_pubkey: r.wg_pubkey,
        };
        let reply = self
            .create_invoice(
                peer,
                &r.request_id,
                &lease_id,
                commitment,
                Held {
                    ipv4: ipv4.clone(),
                    ipv6: ipv6.clone(),
                    remote_ip: remote_ip.map(|a| a.to_string()),
                },
                i.cfg.activation_expiry_secs(),
            )
            .await;
        if matches!(reply, Message::PayInvoice(_)) {
            // Stored unpaid: counted until it is settled or expires.
            slot.keep();
        }
        if matches!(reply, Message::Error(_)) {
            for p in ipv4.iter().chain(ipv6.iter()) {
                if let Err(e) = i.pool.release(p, &lease_id).await {
                    tracing::warn!(error = %e, prefix = %p, "cannot return a prefix to the pool");
                }
            }
        } else {
            self.audit(
                AuditKind::RentRequested,
                json!({"peer": peer.to_string(), "request_id": r.request_id, "lease_id": lease_id,
                       "credit_sat": r.credit_sat, "ipv4": ipv4, "ipv6": ipv6}),
            )
            .await;
            if let Err(e) = self.refresh_offer(false).await {
                tracing::warn!(error = %e, "offer refresh failed");
            }
        }
        reply
    }

    pub(super) async fn create_invoice(
        &self,
        peer: PeerId,
        request_id: &str,
        lease_id: &str,
        commitment: InvoiceCommitment,
        held: Held,
        expiry_secs: u64,
    ) -> Message {
        let i = &self.inner;
        let amount_sat = commitment.amount_sat;
        let created = match i
            .ln
            .add_invoice(InvoiceRequest {
                amount_msat: amount_sat * 1000,
                description_hash: commitment.description_hash(),
                expiry_secs,
            })
            .await
        {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot create invoice");
                return err(
                    ErrorCode::Unavailable,
                    "provider cannot create an invoice now",
                );
            }
        };
        let payment_hash = hex::encode(created.payment_hash);
        let pending = PendingInvoice {
            lease_id: lease_id.to_owned(),
            renter_peer: peer.to_string(),
            commitment,
            payment_hash: payment_hash.clone(),
            bolt11: created.bolt11.clone(),
            expires_at: self.now() + expiry_secs,
            ipv4: held.ipv4,
            ipv6: held.ipv6,
            remote_ip: held.remote_ip,
            add_index: created.add_index,
            issued: None,
        };
        // Created only if the request id is still unused: two requests racing with one id
        // cannot both get an invoice.
        match i
            .pending
            .compare_and_swap(request_id, None, Some(&pending))
            .await
        {
            Ok(true) => {}
            Ok(false) => return err(ErrorCode::BadRequest, "request id already used"),
            Err(e) => {
                tracing::error!(error = %e, "cannot persist pending invoice");
                i.disk.record_failure(&e.to_string());
                return err(ErrorCode::Unavailable, "provider storage error");
            }
        }
        self.audit(
            AuditKind::InvoiceCreated,
            json!({"request_id": request_id, "lease_id": lease_id, "payment_hash": payment_hash,
                   "amount_sat": amount_sat, "purpose": pending.commitment.purpose,
                   "peer": peer.to_string()}),
        )
        .await;
        Message::PayInvoice(PayInvoice {
            request_id: request_id.to_owned(),
            lease_id: lease_id.to_owned(),
            bolt11: created.bolt11,
            amount_sat,
        })
    }

    pub(super) async fn on_topup_request(&self, peer: PeerId, r: TopUpRequest) -> Message {
        let i = &self.inner;
        if let Some(why) = self.disk_refusal() {
            return err(ErrorCode::Unavailable, why);
        }
        let rec = match i.leases.get(&r.lease_id) {
            Ok(Some(rec)) if rec.renter_peer == peer.to_string() => rec,
            Ok(_) => {
                return err(
                    ErrorCode::NotFound,
                    format!("no lease {} of yours", r.lease_id),
                );
            }
            Err(e) => {
                tracing::error!(error = %e, "lease lookup failed");
                return err(ErrorCode::Unavailable, "provider storage error");
            }
        };
        if rec.state == LeaseState::Released {
            return err(ErrorCode::NotFound, "lease released; rent again");
        }
        if rec.termination.is_some() {
            // Credit past the end of the notice would only be lost.
            return err(
                ErrorCode::BadRequest,
                "the provider is ending this lease (termination notice); no more top-ups",
            );
        }
        let terms = &rec.lease.terms;
        let remaining = rec.remaining_credit(self.now());
        if r.amount_sat < terms.min_topup_sat || remaining + r.amount_sat > terms.max_credit_sat {
            return err(
                ErrorCode::BadRequest,
                format!(
                    "top-up must be at least {} sat and keep credit under {} sat (now {remaining} sat)",
                    terms.min_topup_sat, terms.max_credit_sat
                ),
            );
        }
        if i.pending.get(&r.request_id).ok().flatten().is_some() {
            return err(ErrorCode::BadRequest, "request id already used");
        }
        let commitment = InvoiceCommitment {
            purpose: PURPOSE_TOPUP.into(),
            request_id: r.request_id.clone(),
            provider: i.peer_id.to_string(),
            renter: peer.to_string(),
            offer_id: rec.lease.offer_id.clone(),
            lease_id: Some(r.lease_id.clone()),
            terms: terms.clone(),
            credit_sat: r.amount_sat,
            amount_sat: r.amount_sat,
            ipv4_prefix_len: None,
            ipv6_prefix_len: None,
            renter_wg_pubkey: rec.lease.renter_wg_pubkey,
        };
        let slot =
            match i
                .reservations
                .take(&r.request_id, &peer.to_string(), None, Some(&r.lease_id))
            {
                Ok(slot) => slot,
                Err(e) => return refuse_cap(peer, &e),
            };
        let reply = self
            .create_invoice(
                peer,
                &r.request_id,
                &r.lease_id,
                commitment,
                Held::default(),
                i.cfg.invoice_expiry_secs,
            )
            .await;
        if matches!(reply, Message::PayInvoice(_)) {
            slot.keep();
        }
        reply
    }
}

/// The refusal of a request over a cap on unpaid invoices.
fn refuse_cap(peer: PeerId, e: &reservations::CapReached) -> Message {
    tracing::warn!(%peer, reason = %e, "request refused: unpaid-invoice cap");
    let code = match e {
        reservations::CapReached::Peer(_)
        | reservations::CapReached::Ip(_)
        | reservations::CapReached::Lease(_)
        | reservations::CapReached::Duplicate => ErrorCode::BadRequest,
        // Not the asker's fault: it may try again once reservations expire.
        reservations::CapReached::Total(_) => ErrorCode::Unavailable,
    };
    err(code, e.to_string())
}

#[cfg(test)]
mod tests {
    use super::super::tests::{count, harness_with, renter_peer};
    use super::*;
    use crate::market::sizes::SizePrice;

    fn ask(provider: &Provider, id: u8, v4: Option<u8>, v6: Option<u8>) -> Message {
        Message::RentRequest(RentRequest {
            request_id: format!("{id:02}").repeat(16),
            offer_id: provider.offer().id(),
            credit_sat: 1_000,
            ipv4_prefix_len: v4,
            ipv6_prefix_len: v6,
            wg_pubkey: WgKey([id; 32]),
        })
    }

    #[tokio::test]
    async fn sizes_are_priced_allocated_as_asked_and_refused_when_not_listed() {
        let h = harness_with(ProviderConfig {
            ipv4_sizes: vec![
                SizePrice {
                    prefix_len: 32,
                    rate_sat_per_day: 0,
                },
                SizePrice {
                    prefix_len: 30,
                    rate_sat_per_day: 40,
                },
            ],
            ipv6_sizes: Vec::new(),
            ..ProviderConfig::default()
        })
        .await;
        let p = &h.provider;
        let offer = p.offer().verify().unwrap();
        let listed: Vec<(u8, u32, Sats)> = offer
            .ipv4
            .iter()
            .map(|a| (a.prefix_len, a.available, a.rate_sat_per_day))
            .collect();
        assert_eq!(listed, [(32, 16, 0), (30, 4, 40)]);
        assert!(offer.ipv6.is_empty(), "no IPv6 sizes: IPv6 not offered");

        // A /30: allocated as asked, the invoice commits to the effective rate.
        let Message::PayInvoice(pay) = p.handle(renter_peer(1), ask(p, 1, Some(30), None)).await
        else {
            panic!("a listed size was refused")
        };
        assert_eq!(
            pay.amount_sat,
            1_000 + 1_000,
            "fee + credit, whatever the size"
        );
        let pending = p.inner.pending.get(&pay.request_id).unwrap().unwrap();
        assert_eq!(pending.ipv4.as_deref(), Some("198.51.100.0/30"));
        assert_eq!(pending.commitment.terms.rate_sat_per_day, 140);
        assert_eq!(pending.commitment.ipv4_prefix_len, Some(30));
        let offer = p.offer().verify().unwrap();
        assert_eq!((offer.ipv4[0].available, offer.ipv4[1].available), (12, 3));

        // Sizes not listed, and a family not offered, are refused naming what is leased.
        for (n, v4, v6) in [
            (2, Some(29), None),
            (3, None, Some(64)),
            (4, Some(32), Some(64)),
        ] {
            match p.handle(renter_peer(n), ask(p, n, v4, v6)).await {
                Message::Error(e) => {
                    assert_eq!(e.code, ErrorCode::BadRequest);
                    assert!(
                        e.message
                            .starts_with("this provider leases IPv4 /32 /30, IPv6 none"),
                        "{}",
                        e.message
                    );
                }
                other => panic!("{v4:?}/{v6:?} answered with {other:?}"),
            }
        }
        // Nothing asked at all.
        match p.handle(renter_peer(5), ask(p, 5, None, None)).await {
            Message::Error(e) => assert_eq!(e.code, ErrorCode::BadRequest),
            other => panic!("an empty request answered with {other:?}"),
        }
        // A listed size with none left is exhausted, not refused.
        for n in 6..9 {
            assert!(matches!(
                p.handle(renter_peer(n), ask(p, n, Some(30), None)).await,
                Message::PayInvoice(_)
            ));
        }
        match p.handle(renter_peer(9), ask(p, 9, Some(30), None)).await {
            Message::Error(e) => assert_eq!(e.code, ErrorCode::PoolExhausted, "{}", e.message),
            other => panic!("an exhausted size answered with {other:?}"),
        }
    }

    fn ipv4_only(max_per_peer: usize, max_total: usize) -> ProviderConfig {
        ProviderConfig {
            ipv6_pools: Vec::new(),
            max_unpaid_per_peer: max_per_peer,
            max_unpaid_total: max_total,
            ..ProviderConfig::default()
        }
    }

    fn available(p: &Provider) -> u32 {
        p.offer().verify().unwrap().ipv4[0].available
    }

    #[tokio::test]
    async fn unpaid_reservations_are_capped_in_total_and_held_only_briefly() {
        let h = harness_with(ipv4_only(4, 3)).await;
        let p = &h.provider;
        let reservation = p.inner.cfg.terms.reservation_secs;
        assert_eq!(reservation, 120, "the default reservation time");
        // The offer states how long a reservation holds, and the invoice expires then.
        assert_eq!(p.offer().verify().unwrap().terms.reservation_secs, 120);
        let now = h.clock.now_unix();
        for n in 1..=3 {
            let reply = p.handle(renter_peer(n), ask(p, n, Some(32), None)).await;
            let Message::PayInvoice(pay) = reply else {
                panic!("{reply:?}")
            };
            let pending = p.inner.pending.get(&pay.request_id).unwrap().unwrap();
            assert_eq!(pending.expires_at, now + reservation);
            assert_eq!(pending.commitment.terms.reservation_secs, reservation);
            let inv: lightning_invoice::Bolt11Invoice = pay.bolt11.parse().unwrap();
            assert_eq!(inv.expiry_time().as_secs(), reservation);
        }
        assert_eq!(available(p), 13);
        // A fourth fresh identity is refused while three reservations are held, without any
        // prefix, invoice or audit entry made for it.
        let invoices = count(&h.audit, "invoice_created");
        match p.handle(renter_peer(4), ask(p, 4, Some(32), None)).await {
            Message::Error(e) => {
                assert_eq!(e.code, ErrorCode::Unavailable);
                assert!(e.message.contains("3 unpaid reservations"), "{}", e.message);
            }
            other => panic!("a reservation over the total cap was made: {other:?}"),
        }
        assert_eq!(available(p), 13);
        assert_eq!(count(&h.audit, "invoice_created"), invoices);

        // The reservations lapse after reservation_secs (plus a minute's grace): the
        // prefixes come back and the next identity is served.
        h.clock.advance(Duration::from_secs(reservation + 61));
        p.tick().await.unwrap();
        assert_eq!(available(p), 16);
        assert!(matches!(
            p.handle(renter_peer(4), ask(p, 4, Some(32), None)).await,
            Message::PayInvoice(_)
        ));
    }

    #[tokio::test]
    async fn one_peer_is_capped_and_a_paid_invoice_frees_its_slot() {
        let h = harness_with(ipv4_only(2, 32)).await;
        let p = &h.provider;
        let mut pays = Vec::new();
        for k in [1, 2] {
            let reply = p.handle(renter_peer(1), ask(p, k, Some(32), None)).await;
            let Message::PayInvoice(pay) = reply else {
                panic!("{reply:?}")
            };
            pays.push(pay);
        }
        match p.handle(renter_peer(1), ask(p, 3, Some(32), None)).await {
            Message::Error(e) => {
                assert_eq!(e.code, ErrorCode::BadRequest);
                assert!(e.message.contains("2 unpaid invoices"), "{}", e.message);
            }
            other => panic!("a peer over its cap was served: {other:?}"),
        }
        // Paid and settled (by the watcher's listing): the slot is free again.
        h.net
            .node("renter")
            .unwrap()
            .pay_invoice(crate::lightning::PayRequest {
                bolt11: pays[0].bolt11.clone(),
                fee_limit_msat: 10_000,
                timeout_secs: 30,
            })
            .await
            .unwrap();
        p.tick().await.unwrap();
        assert_eq!(p.leases().unwrap().len(), 1);
        assert!(matches!(
            p.handle(renter_peer(1), ask(p, 3, Some(32), None)).await,
            Message::PayInvoice(_)
        ));
        // The counts survive a restart: rebuilt from the stored unpaid invoices.
        let again = Provider::with_clock(
            ProviderParams {
                key: h.key.clone(),
                cfg: ipv4_only(2, 32),
                network: "regtest".into(),
                ln_pubkey: h.net.pubkey("provider").unwrap(),
                wg_private: WgKey([1; 32]),
                wg_public: WgKey([2; 32]),
                iface: "lwt0".into(),
                listen_port: 51820,
                ln: h.ln.clone(),
                tunnel: h.tunnel.clone(),
                audit: h.audit.clone(),
                db: h.db.clone(),
            },
            h.clock.clone(),
        )
        .unwrap();
        assert_eq!(
            again
                .inner
                .reservations
                .snapshot(&renter_peer(1).to_string()),
            (2, 2)
        );
    }

    #[tokio::test]
    async fn expiry_is_one_listing_for_many_invoices_never_a_lookup_each() {
        let h = harness_with(ipv4_only(4, 64)).await;
        let p = &h.provider;
        let mut n = 0u8;
        for peer in 1..=4 {
            for _ in 0..4 {
                n += 1;
                let reply = p.handle(renter_peer(peer), ask(p, n, Some(32), None)).await;
                assert!(matches!(reply, Message::PayInvoice(_)), "{reply:?}");
            }
        }
        assert_eq!(available(p), 0);
        let (lookups, lists) = (
            h.ln.lookups.load(std::sync::atomic::Ordering::SeqCst),
            h.ln.lists.load(std::sync::atomic::Ordering::SeqCst),
        );
        h.clock.advance(Duration::from_secs(120 + 61));
        p.tick().await.unwrap();
        assert_eq!(available(p), 16, "all 16 reservations lapsed in one pass");
        assert!(p.inner.pending.all().unwrap().is_empty());
        assert_eq!(count(&h.audit, "lease_released"), 16);
        assert_eq!(
            h.ln.lookups.load(std::sync::atomic::Ordering::SeqCst),
            lookups,
            "no lookup per invoice"
        );
        assert_eq!(
            h.ln.lists.load(std::sync::atomic::Ordering::SeqCst),
            lists + 1,
            "one page listed them all"
        );
        // Nothing unpaid: the next pass does not even ask the node.
        p.tick().await.unwrap();
        assert_eq!(
            h.ln.lists.load(std::sync::atomic::Ordering::SeqCst),
            lists + 1
        );
    }

    #[tokio::test]
    async fn top_ups_are_capped_per_lease_not_by_the_reservation_caps() {
        // One reservation per peer: a renter with a lease still tops it up.
        let h = harness_with(ipv4_only(1, 1)).await;
        let p = &h.provider;
        let Message::PayInvoice(pay) = p.handle(renter_peer(1), ask(p, 1, Some(32), None)).await
        else {
            panic!("refused")
        };
        h.net
            .node("renter")
            .unwrap()
            .pay_invoice(crate::lightning::PayRequest {
                bolt11: pay.bolt11.clone(),
                fee_limit_msat: 10_000,
                timeout_secs: 30,
            })
            .await
            .unwrap();
        p.tick().await.unwrap();
        assert_eq!(p.leases().unwrap().len(), 1);
        let topup = |n: u8| {
            Message::TopUpRequest(TopUpRequest {
                request_id: format!("{n:02x}").repeat(16),
                lease_id: pay.lease_id.clone(),
                amount_sat: 500,
            })
        };
        let max = reservations::MAX_UNPAID_TOPUPS_PER_LEASE as u8;
        for n in 0xa0..0xa0 + max {
            let reply = p.handle(renter_peer(1), topup(n)).await;
            assert!(matches!(reply, Message::PayInvoice(_)), "{reply:?}");
        }
        match p.handle(renter_peer(1), topup(0xa0 + max)).await {
            Message::Error(e) => {
                assert_eq!(e.code, ErrorCode::BadRequest);
                assert!(
                    e.message.contains(&format!("{max} unpaid top-up invoices")),
                    "{}",
                    e.message
                );
            }
            other => panic!("a third unpaid top-up was made: {other:?}"),
        }
        // The reservation caps are untouched: another peer still reserves.
        assert!(matches!(
            p.handle(renter_peer(2), ask(p, 2, Some(32), None)).await,
            Message::PayInvoice(_)
        ));
    }

    #[tokio::test]
    async fn identities_behind_one_address_share_the_per_ip_cap() {
        let h = harness_with(ProviderConfig {
            max_unpaid_per_ip: 2,
            ..ipv4_only(4, 32)
        })
        .await;
        let p = &h.provider;
        let ip: std::net::IpAddr = "192.0.2.77".parse().unwrap();
        for n in 1..=2 {
            let reply = p
                .handle_from(renter_peer(n), Some(ip), ask(p, n, Some(32), None))
                .await;
            assert!(matches!(reply, Message::PayInvoice(_)), "{reply:?}");
        }
        match p
            .handle_from(renter_peer(3), Some(ip), ask(p, 3, Some(32), None))
            .await
        {
            Message::Error(e) => {
                assert_eq!(e.code, ErrorCode::BadRequest);
                assert!(e.message.contains("from your address"), "{}", e.message);
            }
            other => panic!("a third identity from one address reserved: {other:?}"),
        }
        assert_eq!(available(p), 14);
        // The same identity from another address is served.
        let other: std::net::IpAddr = "192.0.2.78".parse().unwrap();
        assert!(matches!(
            p.handle_from(renter_peer(3), Some(other), ask(p, 3, Some(32), None))
                .await,
            Message::PayInvoice(_)
        ));
    }
}

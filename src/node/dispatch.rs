//! The inbound side of the network: every [`NetEvent`] goes through [`Dispatcher::run`].
//!
//! Requests are answered each in its own task, so a provider waiting for an invoice to settle
//! never holds up other peers. Those tasks are bounded by [`Admission`] (a semaphore): when all
//! permits are taken, the request is refused at once with [`ErrorCode::Unavailable`], which
//! peers treat as "try again later", instead of piling up tasks without bound. They are also
//! tracked, so the node's shutdown waits for the answers in flight.
//!
//! Before that, each request spends a token of its peer's bucket for its kind
//! ([`crate::net::limits::RateLimiter`]); a peer out of tokens gets [`ErrorCode::Unavailable`]
//! with the wait, and nothing else is done for it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libp2p::PeerId;
use serde_json::json;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::tasks::log_audit;
use crate::audit::{AuditKind, AuditLog};
use crate::market::Peers;
use crate::market::offers::{self, OfferCache, PullBacks, RefusalAudits};
use crate::market::provider::Provider;
use crate::market::renter::Renter;
use crate::net::backoff::RateLimit;
use crate::net::limits::RateLimiter;
use crate::net::{NetClient, NetEvent};
use crate::types::Clock;
use crate::wire::{ErrorCode, ErrorMsg, Hello, Message};

/// Limits how many inbound requests are answered at once.
#[derive(Clone, Debug)]
pub(super) struct Admission {
    permits: Arc<Semaphore>,
    limit: usize,
}

impl Admission {
    /// Room for `limit` requests at a time (at least one).
    pub(super) fn new(limit: usize) -> Admission {
        let limit = limit.max(1);
        Admission {
            permits: Arc::new(Semaphore::new(limit)),
            limit,
        }
    }

    /// A permit for one request, held until its answer is sent; or, when every permit is in
    /// use, the refusal to send instead.
    pub(super) fn try_admit(&self) -> Result<OwnedSemaphorePermit, ErrorMsg> {
        self.permits.clone().try_acquire_owned().map_err(|_| {
            ErrorMsg::new(
                ErrorCode::Unavailable,
                format!(
                    "busy: {} requests are being answered; try again later",
                    self.limit
                ),
            )
        })
    }
}

/// The refusal of a rate-limited request: `Unavailable` (peers retry), with the wait.
fn rate_refusal(kind: &str, wait: Duration) -> ErrorMsg {
    ErrorMsg::new(
        ErrorCode::Unavailable,
        format!(
            "rate limit: too many {kind} requests; try again in {} ms",
            wait.as_millis().max(1)
        ),
    )
}

/// Least time between two audited refusals; the ones in between are counted in the next.
const REFUSAL_AUDIT_EVERY: Duration = Duration::from_secs(1);

/// Refusals are audited at a bounded rate, decided without touching the disk. (Meeting a
/// member is not audited at all: it changes nothing worth an entry.)
#[derive(Debug)]
pub(super) struct PeerAudit {
    refusals: Mutex<RateLimit>,
}

impl Default for PeerAudit {
    fn default() -> Self {
        PeerAudit {
            refusals: Mutex::new(RateLimit::new(REFUSAL_AUDIT_EVERY)),
        }
    }
}

impl PeerAudit {
    /// `Some(n)` if a refusal may be audited now, `n` being how many were skipped before it.
    fn refusal(&self, now: Instant) -> Option<u64> {
        let mut r = self.refusals.lock().unwrap_or_else(|e| e.into_inner());
        r.check(now)
    }
}

/// What the dispatcher needs to answer requests and record network events.
pub(super) struct Dispatcher {
    /// The provider role, which answers market requests; `None` on a renter-only node.
    pub(super) provider: Option<Provider>,
    /// Sends the answers.
    pub(super) net: NetClient,
    /// Records membership and refused peers.
    pub(super) audit: AuditLog,
    /// Lightning network, announced in `Hello` by a node that is not a provider.
    pub(super) network: String,
    /// Whether this node rents (announced in `Hello`).
    pub(super) is_renter: bool,
    /// Bound on concurrent request handlers.
    pub(super) admission: Admission,
    /// The renter role, told of every member met; `None` on a provider-only node.
    pub(super) renter: Option<Renter>,
    /// The node's offer cache, served to members (`offersRequest`) and filled from those met.
    pub(super) offer_cache: OfferCache,
    /// Requests to members (the exchange of a provider-only node).
    pub(super) peers: Arc<dyn Peers>,
    /// Market time.
    pub(super) clock: Arc<dyn Clock>,
    /// Wakes the renter's discovery loop when a member is met.
    pub(super) discover_now: Arc<Notify>,
    /// Rate limit of refusal audits.
    pub(super) refusals: RefusalAudits,
    /// Global pacing of refusal audits (on top of the per-peer limit): a flood of fresh
    /// identities writes at most one entry a second.
    pub(super) peer_audit: PeerAudit,
    /// Askers that knew offers we lacked, pulled from in return.
    pub(super) pull_backs: PullBacks,
    /// Per-peer, per-kind request rates (`[node.limits]`).
    pub(super) rate: Mutex<RateLimiter>,
}

impl Dispatcher {
    /// Handles network events until `shutdown` fires or the network layer stops, then waits
    /// for the request handlers still running.
    pub(super) async fn run(
        self,
        mut events: mpsc::Receiver<NetEvent>,
        shutdown: CancellationToken,
    ) {
        let handlers = TaskTracker::new();
        let this = Arc::new(self);
        loop {
            let ev = tokio::select! {
                _ = shutdown.cancelled() => break,
                ev = events.recv() => match ev { Some(ev) => ev, None => break },
            };
            this.handle_event(ev, &handlers, &shutdown).await;
        }
        handlers.close();
        handlers.wait().await;
    }

    async fn handle_event(
        self: &Arc<Self>,
        ev: NetEvent,
        handlers: &TaskTracker,
        shutdown: &CancellationToken,
    ) {
        match ev {
            NetEvent::InboundRequest {
                peer,
                message,
                channel,
            } => {
                if let Err(refusal) = self.rate_check(peer, message.name(), Instant::now()) {
                    tracing::debug!(%peer, request = message.name(), "rate limited");
                    if let Err(e) = self.net.respond(channel, Message::Error(refusal)).await {
                        tracing::debug!(%peer, error = %e, "could not answer");
                    }
                    return;
                }
                let permit = match self.admission.try_admit() {
                    Ok(p) => p,
                    Err(busy) => {
                        tracing::debug!(%peer, request = message.name(), "busy: request refused");
                        if let Err(e) = self.net.respond(channel, Message::Error(busy)).await {
                            tracing::debug!(%peer, error = %e, "could not answer");
                        }
                        return;
                    }
                };
                // An asker that knows offers we lack is asked back once we have answered.
                let pull_back = match message.as_ref() {
                    Message::OffersRequest(r) => self.offer_cache.asker_knows_more(r),
                    _ => false,
                };
                let this = self.clone();
                let shutdown = shutdown.clone();
                handlers.spawn(async move {
                    let reply = this.answer(peer, *message).await;
                    if let Err(e) = this.net.respond(channel, reply).await {
                        tracing::debug!(%peer, error = %e, "could not answer");
                    }
                    drop(permit);
                    if pull_back {
                        tokio::select! {
                            _ = shutdown.cancelled() => {}
                            _ = this.pull_back(peer) => {}
                        }
                    }
                });
            }
            // Membership events are audited off the event path (the append is durable, so it
            // waits for a disk flush), in tracked tasks so shutdown still waits for them.
            NetEvent::MemberJoined { peer } => {
                // Not audited: a membership success changes nothing worth an fsync'd entry.
                tracing::debug!(%peer, "member joined");
                self.met(peer, handlers, shutdown);
            }
            NetEvent::MembershipRefused {
                peer,
                by_us,
                reason,
            } => {
                tracing::info!(%peer, by_us, %reason, "membership refused");
                if self.refusals.admit(peer, self.clock.now_unix())
                    && let Some(skipped) = self.peer_audit.refusal(Instant::now())
                {
                    self.audit_later(
                        handlers,
                        AuditKind::MembershipRefused,
                        json!({"peer": peer.to_string(), "by_us": by_us, "reason": reason,
                               "skipped": skipped}),
                    );
                }
            }
            NetEvent::PeerBanned { peer, secs, reason } => {
                tracing::warn!(%peer, secs, %reason, "peer banned");
                // Bans are few (each takes several offenses), but fresh identities are free:
                // the same global pacing as refusals applies.
                if let Some(skipped) = self.peer_audit.refusal(Instant::now()) {
                    self.audit_later(
                        handlers,
                        AuditKind::PeerRefused,
                        json!({"peer": peer.to_string(), "reason": reason, "banned_secs": secs,
                               "skipped": skipped}),
                    );
                }
            }
            NetEvent::BadMessage { peer, reason } => {
                tracing::info!(%peer, %reason, "bad message; peer dropped");
                if self.refusals.admit(peer, self.clock.now_unix())
                    && let Some(skipped) = self.peer_audit.refusal(Instant::now())
                {
                    self.audit_later(
                        handlers,
                        AuditKind::PeerRefused,
                        json!({"peer": peer.to_string(), "reason": reason, "skipped": skipped}),
                    );
                }
            }
        }
    }

    /// Spends a token of `peer`'s bucket for `kind`, or says how long to wait.
    fn rate_check(&self, peer: PeerId, kind: &'static str, now: Instant) -> Result<(), ErrorMsg> {
        let mut rate = self.rate.lock().unwrap_or_else(|e| e.into_inner());
        rate.check(peer, kind, now)
            .map_err(|wait| rate_refusal(kind, wait))
    }

    /// A member was met: a renter learns its offers (from the first members it meets, see
    /// [`OfferCache::should_pull_on_meeting`]) and runs a discovery pass at once if that
    /// taught it nothing; a
    /// provider-only node fills its cache from it. Both ask only the first members met in a
    /// while ([`OfferCache::should_pull_on_meeting`]), in the background.
    fn met(self: &Arc<Self>, peer: PeerId, handlers: &TaskTracker, shutdown: &CancellationToken) {
        if let Some(r) = self.renter.clone() {
            let notify = self.discover_now.clone();
            let shutdown = shutdown.clone();
            handlers.spawn(async move {
                // A pass follows at once only when the member could not tell us the market
                // (see `Renter::met`); otherwise the next timed pass walks the DHT.
                let pass_now = tokio::select! {
                    _ = shutdown.cancelled() => false,
                    pass_now = r.met(peer) => pass_now,
                };
                if pass_now {
                    notify.notify_one();
                }
            });
            return;
        }
        if !self
            .offer_cache
            .should_pull_on_meeting(self.clock.now_unix())
        {
            return;
        }
        let this = self.clone();
        let shutdown = shutdown.clone();
        handlers.spawn(async move {
            let clock = this.clock.clone();
            let now = move || clock.now_unix();
            let pull = offers::pull(this.peers.as_ref(), &this.offer_cache, peer, &now);
            tokio::select! {
                _ = shutdown.cancelled() => {}
                r = pull => match r {
                    Ok(rep) => tracing::debug!(%peer, new = rep.new, updated = rep.updated,
                        rejected = rep.rejected.len(), "offers exchanged"),
                    Err(e) => tracing::debug!(%peer, error = %e, "member did not share its offers"),
                },
            }
        });
    }

    /// Pulls the offers `peer` knows and we lack (its `offersRequest` listed them), unless
    /// [`PullBacks`] says not now. A renter lists what it learned at once.
    async fn pull_back(&self, peer: PeerId) {
        let Some(_turn) = self.pull_backs.admit(peer, self.clock.now_unix()).await else {
            return;
        };
        let clock = self.clock.clone();
        let now = move || clock.now_unix();
        match offers::pull(self.peers.as_ref(), &self.offer_cache, peer, &now).await {
            Ok(rep) => tracing::debug!(%peer, new = rep.new, updated = rep.updated,
                rejected = rep.rejected.len(), "offers pulled back from an asker"),
            Err(e) => tracing::debug!(%peer, error = %e, "asker did not share its offers"),
        }
        if let Some(r) = &self.renter {
            r.learn_offers().await;
        }
    }

    /// Appends an audit entry in a tracked task, without waiting for it.
    fn audit_later(&self, handlers: &TaskTracker, kind: AuditKind, payload: serde_json::Value) {
        let audit = self.audit.clone();
        handlers.spawn(async move { log_audit(&audit, kind, payload).await });
    }

    /// The answer to one request.
    async fn answer(&self, peer: libp2p::PeerId, message: Message) -> Message {
        match (&self.provider, message) {
            (Some(p), m) => p.handle(peer, m).await,
            (None, Message::Hello(_)) => {
                Message::Hello(Hello::ours(false, self.is_renter, &self.network))
            }
            // Every member serves the offers it knows, provider or not.
            (None, Message::OffersRequest(r)) => {
                Message::Offers(self.offer_cache.answer(&r, self.clock.now_unix()))
            }
            (None, m) => Message::Error(ErrorMsg::new(
                ErrorCode::Unsupported,
                format!("this node is not a provider ({})", m.name()),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::market::offers::REFUSAL_AUDIT_EVERY_SECS;

    #[test]
    fn admission_refuses_beyond_the_limit_with_unavailable() {
        let a = Admission::new(2);
        let first = a.try_admit().unwrap();
        let _second = a.try_admit().unwrap();
        let busy = a.try_admit().unwrap_err();
        assert_eq!(busy.code, ErrorCode::Unavailable);
        assert!(busy.message.contains("busy"), "{}", busy.message);
        // A finished request frees its permit for the next one.
        drop(first);
        assert!(a.try_admit().is_ok());
    }

    #[test]
    fn refusals_of_one_peer_are_audited_at_most_once_a_minute() {
        let r = RefusalAudits::default();
        let (a, b) = (PeerId::random(), PeerId::random());
        assert!(r.admit(a, 1_000));
        assert!(!r.admit(a, 1_001));
        assert!(r.admit(b, 1_001), "another peer is audited");
        assert!(!r.admit(a, 1_000 + REFUSAL_AUDIT_EVERY_SECS - 1));
        assert!(r.admit(a, 1_000 + REFUSAL_AUDIT_EVERY_SECS));
    }

    #[test]
    fn peer_audit_paces_refusals() {
        let a = PeerAudit::default();
        let t0 = Instant::now();
        assert_eq!(a.refusal(t0), Some(0));
        assert_eq!(a.refusal(t0), None);
        assert_eq!(a.refusal(t0 + REFUSAL_AUDIT_EVERY), Some(1));
    }

    #[test]
    fn rate_limited_requests_are_refused_with_unavailable_and_the_wait() {
        let limits = crate::net::limits::NetLimits {
            requests_per_minute: 60,
            request_burst: 2,
            ..Default::default()
        };
        let rate = Mutex::new(limits.rate_limiter());
        let check = |peer, kind, now| {
            let mut r = rate.lock().unwrap();
            r.check(peer, kind, now).map_err(|w| rate_refusal(kind, w))
        };
        let (p, t0) = (PeerId::random(), Instant::now());
        check(p, "statusRequest", t0).unwrap();
        check(p, "statusRequest", t0).unwrap();
        let refusal = check(p, "statusRequest", t0).unwrap_err();
        assert_eq!(refusal.code, ErrorCode::Unavailable);
        assert!(
            refusal.message.contains("statusRequest"),
            "{}",
            refusal.message
        );
        assert!(refusal.message.contains("1000 ms"), "{}", refusal.message);
        check(p, "statusRequest", t0 + Duration::from_secs(1)).unwrap();
    }

    #[test]
    fn a_zero_limit_still_admits_one() {
        let a = Admission::new(0);
        let _p = a.try_admit().unwrap();
        assert!(a.try_admit().is_err());
    }
}

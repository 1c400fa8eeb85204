//! Signed envelopes: every [`Message`] travels inside one.
//!
//! An envelope binds a message to its sender's ed25519 node key, a timestamp and a random
//! nonce, so a receiver can check who sent it (and that this is the peer at the other end of
//! the authenticated connection), that it is fresh, and that it is not a replay.
//!
//! Wire form: a CBOR map `{v, from, ts, nonce, body, sig}` (see [`Envelope`]). The signature
//! covers [`Envelope::signed_bytes`]:
//!
//! ```text
//! "leasewire/envelope/v1" || 0x00 || v (1 byte) || from (32) || ts (u64 BE) || nonce (u64 BE) || body
//! ```
//!
//! The signed bytes are built from the decoded fields, never from the CBOR map itself, so two
//! implementations need only agree on the field values, not on CBOR encoding details. The body
//! is decoded only after every other check passed: an unauthenticated peer never reaches the
//! message decoder.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use libp2p::PeerId;
use serde::{Deserialize, Serialize};

use super::limits;
use super::messages::Message;
use super::signed::{WireError, peer_id_of};

/// Envelope format version carried in `v`; anything else is refused.
pub const PROTOCOL_VERSION: u8 = 1;

/// Largest accepted difference, in seconds, between an envelope's `ts` and the local clock,
/// both ways: an envelope dated further in the past is stale, one dated further in the future is
/// refused too (it would otherwise sit in the replay cache for longer). Tight, so the replay
/// cache only has to remember a minute of traffic; keep clocks NTP-synced. Use it as the window
/// of the [`ReplayGuard`] passed to [`open`].
pub const TIME_WINDOW_SECS: u64 = 30;

/// Domain-separation prefix of the envelope's signed bytes (followed by a 0x00 byte).
pub const ENVELOPE_DOMAIN: &str = "leasewire/envelope/v1";

/// Most nonces remembered per sender within the window (an honest peer sends a few a
/// minute). A sender that exceeds it loses its oldest entries, and its envelopes no newer than
/// the evicted ones are refused from then on (fail closed: an evicted nonce could otherwise be
/// replayed). Only that sender is affected.
pub const REPLAY_MAX_PER_SENDER: usize = 1024;

/// Most nonces remembered in total (all senders). Past it the sender holding the most entries
/// loses the older half of its own, with the same fail-closed rule for that sender only. At
/// roughly 100 bytes an entry this bounds the cache to a few megabytes.
pub const REPLAY_MAX_TOTAL: usize = 65_536;

/// Most senders tracked at once; past it the sender seen least recently is forgotten.
pub const REPLAY_MAX_SENDERS: usize = 16_384;

/// Envelope on the wire (a CBOR map with these text keys, in this order).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Format version, [`PROTOCOL_VERSION`].
    pub v: u8,
    /// Sender's ed25519 public key (32 bytes); its libp2p PeerId names the sender.
    #[serde(with = "serde_bytes")]
    pub from: Vec<u8>,
    /// Sender's clock when sealing, Unix seconds.
    pub ts: u64,
    /// Random per-message value; (sender, nonce) is never accepted twice within the window.
    pub nonce: u64,
    /// CBOR encoding of the [`Message`].
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
    /// ed25519 signature (64 bytes) over [`Envelope::signed_bytes`].
    #[serde(with = "serde_bytes")]
    pub sig: Vec<u8>,
}

impl Envelope {
    /// The bytes the signature covers:
    /// `ENVELOPE_DOMAIN || 0x00 || v || from || ts (u64 BE) || nonce (u64 BE) || body`.
    ///
    /// `from` is copied as received; [`open`] refuses envelopes whose `from` is not 32 bytes
    /// before it gets here, so the layout is unambiguous.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            ENVELOPE_DOMAIN.len() + 1 + 1 + self.from.len() + 16 + self.body.len(),
        );
        out.extend_from_slice(ENVELOPE_DOMAIN.as_bytes());
        out.push(0);
        out.push(self.v);
        out.extend_from_slice(&self.from);
        out.extend_from_slice(&self.ts.to_be_bytes());
        out.extend_from_slice(&self.nonce.to_be_bytes());
        out.extend_from_slice(&self.body);
        out
    }

    /// Encodes the envelope as CBOR.
    ///
    /// # Errors
    /// [`WireError::Encode`] if the encoder fails (it does not for in-memory buffers).
    pub fn to_cbor(&self) -> Result<Vec<u8>, WireError> {
        let mut out = Vec::with_capacity(self.body.len() + 160);
        ciborium::into_writer(self, &mut out).map_err(|e| WireError::Encode {
            what: "envelope",
            reason: e.to_string(),
        })?;
        Ok(out)
    }

    /// Decodes a CBOR envelope. Does not check anything but the structure: use [`open`].
    ///
    /// # Errors
    /// [`WireError::Decode`] if `bytes` is not exactly one envelope map (trailing bytes are
    /// refused, so one frame carries one envelope and nothing else).
    pub fn from_cbor(bytes: &[u8]) -> Result<Self, WireError> {
        let mut cursor = std::io::Cursor::new(bytes);
        let env: Envelope = ciborium::from_reader(&mut cursor).map_err(|e| WireError::Decode {
            what: "envelope",
            reason: short_reason(&e.to_string()),
        })?;
        let used = cursor.position();
        if used != bytes.len() as u64 {
            return Err(WireError::Decode {
                what: "envelope",
                reason: format!("{} trailing bytes", bytes.len() as u64 - used),
            });
        }
        Ok(env)
    }

    /// The sender's public key.
    ///
    /// # Errors
    /// [`WireError::BadKey`] if `from` is not a valid 32-byte ed25519 public key.
    pub fn sender_key(&self) -> Result<VerifyingKey, WireError> {
        let bytes: [u8; 32] = self
            .from
            .as_slice()
            .try_into()
            .map_err(|_| WireError::BadKey)?;
        VerifyingKey::from_bytes(&bytes).map_err(|_| WireError::BadKey)
    }
}

/// A checked envelope's content.
#[derive(Clone, Debug, PartialEq)]
pub struct Opened {
    /// The message.
    pub message: Message,
    /// Its sender (equal to the `expected_sender` given to [`open`]).
    pub sender: PeerId,
    /// The sender's timestamp.
    pub ts: u64,
    /// The envelope nonce.
    pub nonce: u64,
}

/// Signs `msg` with `key`, the current time and a fresh random nonce; returns the CBOR-encoded
/// envelope, ready for [`super::framing::write_frame`].
///
/// # Errors
/// [`WireError::Encode`] if the message cannot be encoded.
pub fn seal(key: &SigningKey, msg: &Message) -> Result<Vec<u8>, WireError> {
    // A nonce only needs to be unpredictable and unique per sender within the window; 64
    // random bits make a collision across even millions of messages negligible.
    let nonce = getrandom::u64().expect("the OS random number generator to work");
    seal_at(key, msg, crate::types::now_unix(), nonce)
}

/// Like [`seal`] with a caller-chosen timestamp and nonce: deterministic, for test vectors and
/// tests. Never reuse a nonce in production; use [`seal`].
///
/// # Errors
/// [`WireError::Encode`] if the message cannot be encoded.
pub fn seal_at(key: &SigningKey, msg: &Message, ts: u64, nonce: u64) -> Result<Vec<u8>, WireError> {
    let mut body = Vec::new();
    ciborium::into_writer(msg, &mut body).map_err(|e| WireError::Encode {
        what: "message",
        reason: e.to_string(),
    })?;
    let mut env = Envelope {
        v: PROTOCOL_VERSION,
        from: key.verifying_key().to_bytes().to_vec(),
        ts,
        nonce,
        body,
        sig: Vec::new(),
    };
    env.sig = key.sign(&env.signed_bytes()).to_bytes().to_vec();
    env.to_cbor()
}

/// Decodes and checks an envelope received from `expected_sender` (the PeerId the transport
/// authenticated for this connection), in this order, stopping at the first failure:
///
/// 1. structure ([`WireError::Decode`]), 2. version ([`WireError::Version`]),
/// 3. `from` is a valid key ([`WireError::BadKey`]) whose PeerId is `expected_sender`
///    ([`WireError::WrongSigner`]), 4. signature ([`WireError::BadSignature`]),
/// 5. `|now_secs - ts| <= guard window` ([`WireError::Stale`]),
/// 6. (sender, nonce) not seen before ([`WireError::Replay`], or
///    [`WireError::ReplayUndecidable`] when the bounded cache had to forget that far back),
/// 7. the body decodes as a [`Message`] ([`WireError::Decode`]),
/// 8. every field is within its size limit ([`super::limits::check`]:
///    [`WireError::FieldTooLong`], [`WireError::TooManyItems`]).
///
/// The nonce is recorded only once steps 1–5 passed, so forged or stale envelopes cannot fill
/// the cache. A body that fails step 7 still consumes its nonce: it was genuinely sent.
pub fn open(
    bytes: &[u8],
    expected_sender: &PeerId,
    guard: &ReplayGuard,
    now_secs: u64,
) -> Result<Opened, WireError> {
    let env = Envelope::from_cbor(bytes)?;
    if env.v != PROTOCOL_VERSION {
        return Err(WireError::Version(env.v));
    }
    let key = env.sender_key()?;
    let sender = peer_id_of(&key);
    if &sender != expected_sender {
        return Err(WireError::WrongSigner {
            expected: expected_sender.to_string(),
            got: sender.to_string(),
        });
    }
    let sig = Signature::from_slice(&env.sig).map_err(|_| WireError::BadSignature)?;
    // verify_strict also refuses small-order keys and malleable signatures: an envelope has
    // exactly one valid signature, which keeps (sender, nonce) a meaningful replay key.
    key.verify_strict(&env.signed_bytes(), &sig)
        .map_err(|_| WireError::BadSignature)?;
    guard.check_and_record(sender, env.ts, env.nonce, now_secs)?;
    let message: Message =
        ciborium::from_reader(env.body.as_slice()).map_err(|e| WireError::Decode {
            what: "message",
            reason: short_reason(&e.to_string()),
        })?;
    limits::check(&message)?;
    Ok(Opened {
        message,
        sender,
        ts: env.ts,
        nonce: env.nonce,
    })
}

/// Longest decoder message kept in a [`WireError::Decode`]: decoders quote the input they
/// choke on, and a peer's input must not travel on into logs and audit entries at any size.
const MAX_REASON: usize = 160;

/// `reason` cut to [`MAX_REASON`] bytes (on a character boundary), marked when cut.
fn short_reason(reason: &str) -> String {
    if reason.len() <= MAX_REASON {
        return reason.to_owned();
    }
    let mut end = MAX_REASON;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &reason[..end], reason.len())
}

/// Thread-safe replay cache shared by every connection of a node (cheap to clone: the clones
/// share one cache).
///
/// State is kept per sender, so what one peer sends can only ever get that peer's own
/// envelopes refused:
/// - each sender's `(nonce, ts)` pairs are remembered until `ts` leaves the window (older
///   envelopes are refused as stale anyway);
/// - a sender over [`REPLAY_MAX_PER_SENDER`] loses its own oldest entries, and a floor is
///   raised *for that sender only*: its envelopes no newer than an evicted one are refused
///   ([`WireError::ReplayUndecidable`]) rather than risk a replay;
/// - when the whole cache holds [`REPLAY_MAX_TOTAL`] entries, the sender holding the most
///   (a flooder) loses the older half of its entries, with the same per-sender floor. An
///   honest peer sends a few envelopes a minute and is never the largest, so its envelopes
///   keep passing while a flood goes on;
/// - at most [`REPLAY_MAX_SENDERS`] senders are tracked; past it the sender seen least
///   recently is forgotten whole. Only that sender could replay its envelopes (an envelope is
///   accepted only from the peer whose key signed it), so this can only help it re-send its
///   own old messages, which it can as well send anew.
///
/// There is no global floor: nothing one sender does raises the bar for another.
#[derive(Clone, Debug)]
pub struct ReplayGuard {
    inner: Arc<Mutex<ReplayInner>>,
}

#[derive(Debug)]
struct ReplayInner {
    window: u64,
    per_sender_cap: usize,
    total_cap: usize,
    sender_cap: usize,
    /// Largest `now` seen: pruning follows it, so the stale check must too (see `check`).
    high_water: u64,
    senders: HashMap<PeerId, SenderLog>,
    /// Every entry ordered by timestamp, for pruning.
    order: BTreeSet<(u64, PeerId, u64)>,
    /// Counter stamping each sender's latest acceptance, for least-recently-seen eviction.
    tick: u64,
}

#[derive(Debug, Default)]
struct SenderLog {
    /// (ts, nonce), ordered by time.
    entries: BTreeSet<(u64, u64)>,
    /// nonce -> ts, for the lookup.
    nonces: HashMap<u64, u64>,
    /// Envelopes with `ts <= floor` are refused (this sender's entries that old were evicted).
    floor: Option<u64>,
    /// `tick` of this sender's latest accepted envelope.
    last_seen: u64,
}

impl ReplayGuard {
    /// A cache whose entries live `window_secs` past their timestamp; [`open`] also accepts
    /// only timestamps within `window_secs` of the local clock. Use [`TIME_WINDOW_SECS`].
    pub fn new(window_secs: u64) -> Self {
        Self::with_caps(
            window_secs,
            REPLAY_MAX_PER_SENDER,
            REPLAY_MAX_TOTAL,
            REPLAY_MAX_SENDERS,
        )
    }

    /// Like [`ReplayGuard::new`] with explicit bounds (each at least 1): most entries per
    /// sender, in total, and most senders tracked.
    pub fn with_caps(
        window_secs: u64,
        per_sender_cap: usize,
        total_cap: usize,
        sender_cap: usize,
    ) -> Self {
        ReplayGuard {
            inner: Arc::new(Mutex::new(ReplayInner {
                window: window_secs,
                per_sender_cap: per_sender_cap.max(1),
                total_cap: total_cap.max(1),
                sender_cap: sender_cap.max(1),
                high_water: 0,
                senders: HashMap::new(),
                order: BTreeSet::new(),
                tick: 0,
            })),
        }
    }

    /// The accepted clock difference, in seconds.
    pub fn window_secs(&self) -> u64 {
        self.lock().window
    }

    /// Number of remembered nonces (all senders).
    pub fn len(&self) -> usize {
        self.lock().order.len()
    }

    /// Number of remembered nonces of one sender.
    pub fn len_of(&self, sender: &PeerId) -> usize {
        self.lock()
            .senders
            .get(sender)
            .map_or(0, |l| l.entries.len())
    }

    /// Number of senders tracked (with entries or a floor).
    pub fn senders(&self) -> usize {
        self.lock().senders.len()
    }

    /// True when no nonce is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ReplayInner> {
        // The cache's invariants hold between statements that can panic (none do), so a
        // poisoned lock still guards consistent data.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Checks the time window and the nonce, and records the nonce if both pass.
    fn check_and_record(
        &self,
        sender: PeerId,
        ts: u64,
        nonce: u64,
        now: u64,
    ) -> Result<(), WireError> {
        self.lock().check_and_record(sender, ts, nonce, now)
    }
}

impl ReplayInner {
    fn check_and_record(
        &mut self,
        sender: PeerId,
        ts: u64,
        nonce: u64,
        now: u64,
    ) -> Result<(), WireError> {
        let stale = WireError::Stale {
            ts,
            now,
            window: self.window,
        };
        if ts.abs_diff(now) > self.window {
            return Err(stale);
        }
        // Callers may pass slightly different clocks; entries were pruned against the largest
        // one, so anything older than that cutoff can no longer be checked for replay.
        self.high_water = self.high_water.max(now);
        let cutoff = self.high_water.saturating_sub(self.window);
        if ts < cutoff {
            return Err(stale);
        }
        self.prune(cutoff);

        if let Some(log) = self.senders.get(&sender) {
            if log.nonces.contains_key(&nonce) {
                return Err(WireError::Replay(nonce));
            }
            if log.floor.is_some_and(|f| ts <= f) {
                return Err(WireError::ReplayUndecidable(nonce));
            }
            if log.entries.len() >= self.per_sender_cap {
                let &(old_ts, _) = log
                    .entries
                    .first()
                    .expect("a sender at its cap to have entries");
                if ts <= old_ts {
                    // The new envelope would be the oldest entry: refusing it keeps the floor
                    // rule.
                    return Err(WireError::ReplayUndecidable(nonce));
                }
                self.evict_oldest(sender, 1);
            }
        } else if self.senders.len() >= self.sender_cap {
            self.forget_least_recent_sender();
        }
        if self.order.len() >= self.total_cap {
            self.evict_from_largest(sender, ts, nonce)?;
        }
        self.tick += 1;
        let tick = self.tick;
        let log = self.senders.entry(sender).or_default();
        log.entries.insert((ts, nonce));
        log.nonces.insert(nonce, ts);
        log.last_seen = tick;
        self.order.insert((ts, sender, nonce));
        Ok(())
    }

    /// Makes room when the cache is full: the sender with the most entries loses the older
    /// half of them (at least one). If that is the sender of the envelope being checked and
    /// the envelope would fall under its new floor, the envelope is refused instead.
    fn evict_from_largest(&mut self, sender: PeerId, ts: u64, nonce: u64) -> Result<(), WireError> {
        let Some((&largest, count)) = self
            .senders
            .iter()
            .map(|(p, l)| (p, l.entries.len()))
            .max_by_key(|&(_, n)| n)
        else {
            return Ok(());
        };
        let n = (count / 2).max(1);
        if largest == sender
            && let Some(log) = self.senders.get(&sender)
            && let Some(&(nth_ts, _)) = log.entries.iter().nth(n - 1)
            && ts <= nth_ts
        {
            return Err(WireError::ReplayUndecidable(nonce));
        }
        self.evict_oldest(largest, n);
        Ok(())
    }

    /// Evicts `sender`'s `n` oldest entries, raising its floor to the newest evicted `ts`.
    fn evict_oldest(&mut self, sender: PeerId, n: usize) {
        let Some(log) = self.senders.get_mut(&sender) else {
            return;
        };
        for _ in 0..n {
            let Some((ts, nonce)) = log.entries.pop_first() else {
                break;
            };
            log.nonces.remove(&nonce);
            log.floor = Some(log.floor.map_or(ts, |f| f.max(ts)));
            self.order.remove(&(ts, sender, nonce));
        }
    }

    /// Forgets the sender seen least recently, entries, floor and all.
    fn forget_least_recent_sender(&mut self) {
        let Some((&oldest, _)) = self.senders.iter().min_by_key(|(_, l)| l.last_seen) else {
            return;
        };
        if let Some(log) = self.senders.remove(&oldest) {
            for (ts, nonce) in log.entries {
                self.order.remove(&(ts, oldest, nonce));
            }
        }
    }

    /// Drops every entry with a timestamp below `cutoff` (such envelopes are refused as
    /// stale), and floors below it, which no longer refuse anything the window lets through.
    fn prune(&mut self, cutoff: u64) {
        while let Some(&(ts, sender, nonce)) = self.order.first() {
            if ts >= cutoff {
                break;
            }
            self.order.pop_first();
            if let Some(log) = self.senders.get_mut(&sender) {
                log.entries.remove(&(ts, nonce));
                log.nonces.remove(&nonce);
                if log.floor.is_some_and(|f| f < cutoff) {
                    log.floor = None;
                }
                if log.entries.is_empty() && log.floor.is_none() {
                    self.senders.remove(&sender);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::messages::Hello;

    const NOW: u64 = 1_700_000_000;

    fn key(b: u8) -> SigningKey {
        SigningKey::from_bytes(&[b; 32])
    }

    fn pid(b: u8) -> PeerId {
        peer_id_of(&key(b).verifying_key())
    }

    fn hello() -> Message {
        Message::Hello(Hello {
            agent: "leasewire/0.1.0".into(),
            provider: true,
            renter: false,
            network: "regtest".into(),
        })
    }

    fn guard() -> ReplayGuard {
        ReplayGuard::new(TIME_WINDOW_SECS)
    }

    #[test]
    fn round_trip() {
        let bytes = seal_at(&key(1), &hello(), NOW, 42).unwrap();
        let opened = open(&bytes, &pid(1), &guard(), NOW).unwrap();
        assert_eq!(opened.message, hello());
        assert_eq!(opened.sender, pid(1));
        assert_eq!(opened.ts, NOW);
        assert_eq!(opened.nonce, 42);
    }

    /// One message of every kind, with every optional field set somewhere.
    fn every_message() -> Vec<Message> {
        use crate::types::{Terms, WgKey};
        use crate::wire::messages::*;
        use crate::wire::signed::Signed;
        let terms = Terms {
            activation_fee_sat: 1000,
            rate_sat_per_day: 100,
            min_initial_credit_sat: 700,
            min_topup_sat: 100,
            max_credit_sat: 100_000,
            reserve_days: 7,
            refund_unused: false,
            reservation_secs: 0,
        };
        let offer = Offer {
            provider: pid(1).to_string(),
            seq: 3,
            created_at: NOW,
            expires_at: NOW + 3600,
            network: "regtest".into(),
            ln_pubkey: "02".repeat(33),
            wg_pubkey: WgKey([8; 32]),
            endpoint: "203.0.113.7:51820".into(),
            ipv4: vec![PrefixAvailability {
                prefix_len: 32,
                available: 3,
                rate_sat_per_day: 0,
            }],
            ipv6: vec![],
            terms: terms.clone(),
        };
        let lease = Lease {
            lease_id: "ab".repeat(16),
            provider: pid(1).to_string(),
            renter: pid(2).to_string(),
            offer_id: "cd".repeat(16),
            renter_wg_pubkey: WgKey([7; 32]),
            provider_wg_pubkey: WgKey([8; 32]),
            endpoint: "[2001:db8::1]:51820".into(),
            ipv4: Some("198.51.100.3/32".into()),
            ipv6: Some("2001:db8:100::/64".into()),
            allowed_ips: vec!["198.51.100.3/32".into(), "2001:db8:100::/64".into()],
            terms,
            credit_sat: 3000,
            activated_at: NOW,
            paid_until: NOW + 30 * 86_400,
            payment_hash: "ef".repeat(32),
            revision: 2,
        };
        let signed_lease = Signed::sign(&key(1), &lease).unwrap();
        vec![
            hello(),
            Message::Offer(Signed::sign(&key(1), &offer).unwrap()),
            Message::RentRequest(RentRequest {
                request_id: "01".repeat(16),
                offer_id: "cd".repeat(16),
                credit_sat: 3000,
                ipv4_prefix_len: Some(32),
                ipv6_prefix_len: None,
                wg_pubkey: WgKey([7; 32]),
            }),
            Message::PayInvoice(PayInvoice {
                request_id: "01".repeat(16),
                lease_id: "ab".repeat(16),
                bolt11: "lnbcrt40u1...".into(),
                amount_sat: 4000,
            }),
            Message::PaymentResult(PaymentResult {
                request_id: "01".repeat(16),
                payment_hash: "ef".repeat(32),
                preimage: "12".repeat(32),
            }),
            Message::Lease(signed_lease.clone()),
            Message::StatusRequest(StatusRequest {
                lease_id: "ab".repeat(16),
            }),
            Message::Status(Status {
                lease_id: "ab".repeat(16),
                state: LeaseState::Suspended,
                remaining_credit_sat: 0,
                paid_until: NOW,
                now: NOW + 5,
                lease: Some(signed_lease),
                termination: None,
                refund_due_sat: 0,
                refund: RefundState::None,
            }),
            Message::Status(Status {
                lease_id: "ab".repeat(16),
                state: LeaseState::Released,
                remaining_credit_sat: 0,
                paid_until: NOW,
                now: NOW + 5,
                lease: None,
                termination: None,
                refund_due_sat: 700,
                refund: RefundState::Paid {
                    payment_hash: "cd".repeat(32),
                },
            }),
            Message::RefundRequest(
                Signed::sign(
                    &key(2),
                    &RefundRequest {
                        lease_id: "ab".repeat(16),
                        provider: pid(1).to_string(),
                        renter: pid(2).to_string(),
                        bolt11: "lnbcrt7u1p".into(),
                        requested_at: NOW,
                    },
                )
                .unwrap(),
            ),
            Message::TopUpRequest(TopUpRequest {
                request_id: "02".repeat(16),
                lease_id: "ab".repeat(16),
                amount_sat: 500,
            }),
            Message::Error(ErrorMsg::new(ErrorCode::NotSettled, "not yet")),
        ]
    }

    #[test]
    fn every_message_kind_round_trips_under_its_wire_name() {
        let g = guard();
        for (n, msg) in every_message().into_iter().enumerate() {
            let bytes = seal_at(&key(1), &msg, NOW, n as u64).unwrap();
            let env = Envelope::from_cbor(&bytes).unwrap();
            // Externally tagged: a one-entry map keyed by the camelCase name (PROTOCOL.md §9).
            let value: ciborium::Value = ciborium::from_reader(env.body.as_slice()).unwrap();
            let map = value.as_map().expect("a message to be a CBOR map");
            assert_eq!(map.len(), 1);
            assert_eq!(map[0].0.as_text(), Some(msg.name()));
            let opened = open(&bytes, &pid(1), &g, NOW).unwrap();
            assert_eq!(opened.message, msg);
        }
    }

    #[test]
    fn garbage_is_refused_without_panicking() {
        // Deterministic pseudo-random inputs (xorshift): arbitrary bytes, and real envelopes
        // with random splices, must all come back as errors.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let real = seal_at(&key(1), &hello(), NOW, 42).unwrap();
        for _ in 0..2000 {
            let len = (next() % 300) as usize;
            let junk: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            assert!(open(&junk, &pid(1), &guard(), NOW).is_err());
            let mut spliced = real.clone();
            let at = (next() as usize) % spliced.len();
            let n = 1 + (next() as usize) % 8;
            for i in at..(at + n).min(spliced.len()) {
                spliced[i] = next() as u8;
            }
            if spliced != real {
                assert!(open(&spliced, &pid(1), &guard(), NOW).is_err());
            }
        }
    }

    #[test]
    fn seal_uses_now_and_random_nonces() {
        let g = guard();
        let a = seal(&key(1), &hello()).unwrap();
        let b = seal(&key(1), &hello()).unwrap();
        let now = crate::types::now_unix();
        let a = open(&a, &pid(1), &g, now).unwrap();
        let b = open(&b, &pid(1), &g, now).unwrap();
        assert_ne!(a.nonce, b.nonce);
        assert!(a.ts.abs_diff(now) <= 1);
    }

    #[test]
    fn seal_at_is_deterministic() {
        assert_eq!(
            seal_at(&key(1), &hello(), NOW, 42).unwrap(),
            seal_at(&key(1), &hello(), NOW, 42).unwrap()
        );
    }

    #[test]
    fn every_changed_byte_is_refused() {
        let bytes = seal_at(&key(1), &hello(), NOW, 42).unwrap();
        for i in 0..bytes.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut t = bytes.clone();
                t[i] ^= flip;
                // A fresh guard each time: only the tampering may cause the refusal.
                assert!(
                    open(&t, &pid(1), &guard(), NOW).is_err(),
                    "byte {i} ^ {flip:#04x} accepted"
                );
            }
        }
    }

    #[test]
    fn truncated_or_extended_envelope_is_refused() {
        let bytes = seal_at(&key(1), &hello(), NOW, 42).unwrap();
        for n in 0..bytes.len() {
            assert!(open(&bytes[..n], &pid(1), &guard(), NOW).is_err());
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(
            open(&longer, &pid(1), &guard(), NOW),
            Err(WireError::Decode { .. })
        ));
    }

    #[test]
    fn wrong_signer_is_refused() {
        let bytes = seal_at(&key(1), &hello(), NOW, 42).unwrap();
        assert!(matches!(
            open(&bytes, &pid(2), &guard(), NOW),
            Err(WireError::WrongSigner { .. })
        ));
        // A valid signature by key 1 relabelled as coming from key 2.
        let mut env = Envelope::from_cbor(&bytes).unwrap();
        env.from = key(2).verifying_key().to_bytes().to_vec();
        let relabelled = env.to_cbor().unwrap();
        assert!(matches!(
            open(&relabelled, &pid(2), &guard(), NOW),
            Err(WireError::BadSignature)
        ));
    }

    #[test]
    fn replay_is_refused() {
        let g = guard();
        let bytes = seal_at(&key(1), &hello(), NOW, 42).unwrap();
        open(&bytes, &pid(1), &g, NOW).unwrap();
        assert!(matches!(
            open(&bytes, &pid(1), &g, NOW + 5),
            Err(WireError::Replay(42))
        ));
        // The same nonce from another sender is a different message.
        let other = seal_at(&key(2), &hello(), NOW, 42).unwrap();
        open(&other, &pid(2), &g, NOW).unwrap();
        // Clones share the cache.
        assert!(matches!(
            open(&bytes, &pid(1), &g.clone(), NOW),
            Err(WireError::Replay(42))
        ));
    }

    #[test]
    fn stale_and_future_timestamps_are_refused() {
        let g = guard();
        let old = seal_at(&key(1), &hello(), NOW - TIME_WINDOW_SECS - 1, 1).unwrap();
        assert!(matches!(
            open(&old, &pid(1), &g, NOW),
            Err(WireError::Stale { .. })
        ));
        let future = seal_at(&key(1), &hello(), NOW + TIME_WINDOW_SECS + 1, 2).unwrap();
        assert!(matches!(
            open(&future, &pid(1), &g, NOW),
            Err(WireError::Stale { .. })
        ));
        // The window's edges are inside.
        let edge_old = seal_at(&key(1), &hello(), NOW - TIME_WINDOW_SECS, 3).unwrap();
        let edge_new = seal_at(&key(1), &hello(), NOW + TIME_WINDOW_SECS, 4).unwrap();
        open(&edge_old, &pid(1), &g, NOW).unwrap();
        open(&edge_new, &pid(1), &g, NOW).unwrap();
        assert_eq!(g.len(), 2);
    }

    #[test]
    fn wrong_version_is_refused() {
        let bytes = seal_at(&key(1), &hello(), NOW, 42).unwrap();
        let mut env = Envelope::from_cbor(&bytes).unwrap();
        env.v = 2;
        // Re-sign so only the version is wrong.
        env.sig = key(1).sign(&env.signed_bytes()).to_bytes().to_vec();
        assert!(matches!(
            open(&env.to_cbor().unwrap(), &pid(1), &guard(), NOW),
            Err(WireError::Version(2))
        ));
    }

    #[test]
    fn undecodable_body_is_refused_after_authentication() {
        let mut env = Envelope {
            v: PROTOCOL_VERSION,
            from: key(1).verifying_key().to_bytes().to_vec(),
            ts: NOW,
            nonce: 9,
            body: vec![0xa1, 0x63, b'f', b'o', b'o', 0x00],
            sig: Vec::new(),
        };
        env.sig = key(1).sign(&env.signed_bytes()).to_bytes().to_vec();
        let g = guard();
        assert!(matches!(
            open(&env.to_cbor().unwrap(), &pid(1), &g, NOW),
            Err(WireError::Decode {
                what: "message",
                ..
            })
        ));
        assert_eq!(g.len(), 1);
    }

    #[test]
    fn oversized_fields_are_refused_without_echoing_them() {
        let mut h = Hello::ours(true, false, "regtest");
        h.agent = "A".repeat(60_000);
        let bytes = seal_at(&key(1), &Message::Hello(h), NOW, 5).unwrap();
        let err = open(&bytes, &pid(1), &guard(), NOW).unwrap_err();
        assert!(matches!(
            err,
            WireError::FieldTooLong {
                field: "hello.agent",
                len: 60_000,
                ..
            }
        ));
        assert!(!err.to_string().contains("AAAA"), "{err}");
    }

    #[test]
    fn decode_errors_do_not_carry_the_input_at_length() {
        // A WireGuard key field holding 10 KB of text: the decoder quotes it.
        let mut env = Envelope {
            v: PROTOCOL_VERSION,
            from: key(1).verifying_key().to_bytes().to_vec(),
            ts: NOW,
            nonce: 9,
            body: Vec::new(),
            sig: Vec::new(),
        };
        let rr = ciborium::Value::Map(vec![(
            "rentRequest".into(),
            ciborium::Value::Map(vec![("wg_pubkey".into(), "B".repeat(10_000).into())]),
        )]);
        ciborium::into_writer(&rr, &mut env.body).unwrap();
        env.sig = key(1).sign(&env.signed_bytes()).to_bytes().to_vec();
        let err = open(&env.to_cbor().unwrap(), &pid(1), &guard(), NOW).unwrap_err();
        assert!(matches!(err, WireError::Decode { .. }));
        assert!(err.to_string().len() < 400, "{err}");
    }

    #[test]
    fn forged_envelopes_do_not_fill_the_cache() {
        let g = guard();
        let bytes = seal_at(&key(1), &hello(), NOW, 42).unwrap();
        let mut env = Envelope::from_cbor(&bytes).unwrap();
        env.nonce = 43;
        assert!(open(&env.to_cbor().unwrap(), &pid(1), &g, NOW).is_err());
        assert!(g.is_empty());
    }

    #[test]
    fn old_entries_are_pruned() {
        let g = guard();
        for n in 0..10 {
            let b = seal_at(&key(1), &hello(), NOW, n).unwrap();
            open(&b, &pid(1), &g, NOW).unwrap();
        }
        assert_eq!(g.len(), 10);
        let later = NOW + TIME_WINDOW_SECS + 1;
        let b = seal_at(&key(1), &hello(), later, 100).unwrap();
        open(&b, &pid(1), &g, later).unwrap();
        assert_eq!(g.len(), 1);
        // A caller with a lagging clock cannot slip past the pruned entries.
        let replay = seal_at(&key(1), &hello(), NOW, 0).unwrap();
        assert!(matches!(
            open(&replay, &pid(1), &g, NOW),
            Err(WireError::Stale { .. })
        ));
    }

    #[test]
    fn per_sender_cap_evicts_oldest_and_fails_closed() {
        let g = ReplayGuard::with_caps(TIME_WINDOW_SECS, 3, 100, 100);
        for n in 0..3 {
            let b = seal_at(&key(1), &hello(), NOW + n, n).unwrap();
            open(&b, &pid(1), &g, NOW).unwrap();
        }
        // A fourth, newer envelope evicts nonce 0 (ts NOW) and raises the floor to NOW.
        let b = seal_at(&key(1), &hello(), NOW + 3, 3).unwrap();
        open(&b, &pid(1), &g, NOW).unwrap();
        assert_eq!(g.len(), 3);
        // Replaying the evicted envelope is still refused.
        let replay = seal_at(&key(1), &hello(), NOW, 0).unwrap();
        assert!(matches!(
            open(&replay, &pid(1), &g, NOW),
            Err(WireError::ReplayUndecidable(0))
        ));
        // Other senders are unaffected.
        let other = seal_at(&key(2), &hello(), NOW, 0).unwrap();
        open(&other, &pid(2), &g, NOW).unwrap();
    }

    #[test]
    fn total_cap_evicts_the_largest_sender_and_fails_closed_for_it_only() {
        let g = ReplayGuard::with_caps(TIME_WINDOW_SECS, 100, 4, 100);
        // Key 1 holds three entries, key 2 one: the cache is full.
        for n in 0..3u64 {
            let m = seal_at(&key(1), &hello(), NOW + n, n).unwrap();
            open(&m, &pid(1), &g, NOW).unwrap();
        }
        let m = seal_at(&key(2), &hello(), NOW, 7).unwrap();
        open(&m, &pid(2), &g, NOW).unwrap();
        assert_eq!(g.len(), 4);
        // Key 3 arrives: key 1, the largest, loses its oldest entry (ts NOW).
        let m = seal_at(&key(3), &hello(), NOW, 7).unwrap();
        open(&m, &pid(3), &g, NOW).unwrap();
        assert_eq!(g.len(), 4);
        assert_eq!(g.len_of(&pid(1)), 2);
        assert_eq!(g.len_of(&pid(2)), 1);
        // Key 1's evicted envelope cannot be replayed.
        let replay = seal_at(&key(1), &hello(), NOW, 0).unwrap();
        assert!(matches!(
            open(&replay, &pid(1), &g, NOW),
            Err(WireError::ReplayUndecidable(0))
        ));
        // Key 2's entry was kept: its replay is a plain replay, and its fresh traffic passes
        // (at the same timestamp as the evicted entry of key 1: no floor is shared).
        assert!(matches!(
            open(&m, &pid(3), &g, NOW),
            Err(WireError::Replay(7))
        ));
        let fresh = seal_at(&key(2), &hello(), NOW, 8).unwrap();
        open(&fresh, &pid(2), &g, NOW).unwrap();
    }

    /// The attack of issue 11: a member floods valid envelopes dated as far in the future as
    /// the window allows, at a high rate. Honest peers' envelopes must keep passing.
    #[test]
    fn a_future_dated_flood_does_not_shut_out_an_honest_peer() {
        let g = ReplayGuard::with_caps(TIME_WINDOW_SECS, 1_000_000, 256, 100);
        let flooder = key(9);
        let mut nonce = 0u64;
        for second in 0..20u64 {
            let now = NOW + second;
            // 500 envelopes a second from the flooder, all dated now + window.
            for _ in 0..500 {
                nonce += 1;
                let m = seal_at(&flooder, &hello(), now + TIME_WINDOW_SECS, nonce).unwrap();
                // Some are refused once the flooder's own floor rises: that is its problem.
                let _ = open(&m, &pid(9), &g, now);
            }
            assert!(g.len() <= 256, "the cache stays bounded");
            // An honest envelope, dated now, passes every second of the flood.
            for b in 1..=3u8 {
                let m = seal_at(&key(b), &hello(), now, second).unwrap();
                open(&m, &pid(b), &g, now)
                    .unwrap_or_else(|e| panic!("honest peer {b} refused at second {second}: {e}"));
            }
        }
        // The honest entries are all still there, so honest replays are still caught.
        let replay = seal_at(&key(1), &hello(), NOW + 19, 19).unwrap();
        assert!(matches!(
            open(&replay, &pid(1), &g, NOW + 19),
            Err(WireError::Replay(19))
        ));
    }

    #[test]
    fn sender_cap_forgets_the_least_recently_seen_sender() {
        let g = ReplayGuard::with_caps(TIME_WINDOW_SECS, 100, 100, 2);
        let m1 = seal_at(&key(1), &hello(), NOW, 1).unwrap();
        open(&m1, &pid(1), &g, NOW).unwrap();
        let m2 = seal_at(&key(2), &hello(), NOW, 1).unwrap();
        open(&m2, &pid(2), &g, NOW).unwrap();
        // Key 1 is seen again, so key 2 is the least recent when key 3 arrives.
        let m1b = seal_at(&key(1), &hello(), NOW, 2).unwrap();
        open(&m1b, &pid(1), &g, NOW).unwrap();
        let m3 = seal_at(&key(3), &hello(), NOW, 1).unwrap();
        open(&m3, &pid(3), &g, NOW).unwrap();
        assert_eq!(g.senders(), 2);
        assert_eq!(g.len_of(&pid(2)), 0);
        assert_eq!(g.len_of(&pid(1)), 2);
        assert!(matches!(
            open(&m1, &pid(1), &g, NOW),
            Err(WireError::Replay(1))
        ));
    }

    #[test]
    fn floors_expire_with_the_window() {
        let g = ReplayGuard::with_caps(TIME_WINDOW_SECS, 1, 100, 100);
        let a = seal_at(&key(1), &hello(), NOW, 1).unwrap();
        open(&a, &pid(1), &g, NOW).unwrap();
        let b = seal_at(&key(1), &hello(), NOW + 1, 2).unwrap();
        open(&b, &pid(1), &g, NOW).unwrap();
        // Nonce 1 was evicted: the floor is NOW.
        let c = seal_at(&key(1), &hello(), NOW, 3).unwrap();
        assert!(matches!(
            open(&c, &pid(1), &g, NOW),
            Err(WireError::ReplayUndecidable(3))
        ));
        // Once NOW + 1 is out of the window, everything about key 1 is gone.
        let later = NOW + TIME_WINDOW_SECS + 2;
        let d = seal_at(&key(2), &hello(), later, 1).unwrap();
        open(&d, &pid(2), &g, later).unwrap();
        assert_eq!(g.senders(), 1);
    }
}

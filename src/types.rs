//! Plain data shared by every layer: amounts, terms of sale, WireGuard keys, time.

use std::fmt;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use serde::{Deserialize, Serialize};

/// An amount in satoshis.
pub type Sats = u64;

/// Seconds in a day: rates are quoted per day.
pub const DAY_SECS: u64 = 86_400;

/// Current Unix time in seconds.
pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Current Unix time in milliseconds.
pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Where the market reads the time. Production uses [`SystemClock`]; tests use a
/// [`ManualClock`] they advance, so no test sleeps on the wall clock to wait for market time.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// Current Unix time in milliseconds.
    fn now_ms(&self) -> u64;
    /// Current Unix time in seconds.
    fn now_unix(&self) -> u64 {
        self.now_ms() / 1000
    }
}

/// The operating system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        now_unix_ms()
    }
    fn now_unix(&self) -> u64 {
        now_unix()
    }
}

/// A clock that moves only when told to: tests share one between provider and renter and
/// advance it instead of sleeping.
#[derive(Debug)]
pub struct ManualClock {
    ms: std::sync::atomic::AtomicU64,
}

impl ManualClock {
    /// A clock showing `unix_ms`.
    pub fn at_ms(unix_ms: u64) -> ManualClock {
        ManualClock {
            ms: std::sync::atomic::AtomicU64::new(unix_ms),
        }
    }

    /// A clock starting at the current wall-clock time (invoices made by a real Lightning node
    /// carry wall-clock timestamps, so tests that check them start here).
    pub fn starting_now() -> ManualClock {
        ManualClock::at_ms(now_unix_ms())
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: std::time::Duration) {
        let by = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        self.ms.fetch_add(by, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.ms.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A provider's terms of sale, as published in its offer and committed to by every invoice.
///
/// Field order is part of the protocol: it fixes the CBOR encoding hashed into invoice
/// description hashes (docs/PROTOCOL.md).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Terms {
    /// One-off fee paid with the first invoice of a lease.
    pub activation_fee_sat: Sats,
    /// Credit consumed per day of service.
    pub rate_sat_per_day: Sats,
    /// Smallest credit accepted with a new lease.
    pub min_initial_credit_sat: Sats,
    /// Smallest credit accepted for a top-up.
    pub min_topup_sat: Sats,
    /// Largest credit a lease may hold at once.
    pub max_credit_sat: Sats,
    /// Days a suspended lease keeps its addresses before they return to the pool.
    pub reserve_days: u32,
    /// The provider refunds the credit left unused when a lease ends early (the renter's
    /// `leaseEnd` or the provider's termination): the renter sends an invoice for exactly that
    /// amount (`refundRequest`). Left out of the encoding when false, so terms without
    /// refunds encode (and hash, and sign) exactly as before the field existed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub refund_unused: bool,
    /// Seconds an unpaid activation invoice holds its prefixes: the provider's activation
    /// invoices expire after this long, and the prefixes go back to the pool then. 0 means not
    /// stated (the invoice's own expiry applies). Left out of the encoding when 0, so terms
    /// that do not state it encode, hash and sign exactly as before the field existed.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub reservation_secs: u64,
}

/// For `skip_serializing_if`: a zero that is left out of the encoding.
fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// Errors from validating [`Terms`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum TermsError {
    /// A rate of zero would make credit last forever.
    #[error("rate_sat_per_day must be greater than zero")]
    ZeroRate,
    /// The minimum initial credit exceeds the maximum credit.
    #[error("min_initial_credit_sat ({min}) exceeds max_credit_sat ({max})")]
    MinAboveMax {
        /// Minimum initial credit.
        min: Sats,
        /// Maximum credit.
        max: Sats,
    },
}

impl Terms {
    /// Checks the terms are internally consistent.
    pub fn validate(&self) -> Result<(), TermsError> {
        if self.rate_sat_per_day == 0 {
            return Err(TermsError::ZeroRate);
        }
        if self.min_initial_credit_sat > self.max_credit_sat {
            return Err(TermsError::MinAboveMax {
                min: self.min_initial_credit_sat,
                max: self.max_credit_sat,
            });
        }
        Ok(())
    }

    /// Seconds of service that `credit` buys at these terms (rounded down).
    pub fn credit_secs(&self, credit: Sats) -> u64 {
        if self.rate_sat_per_day == 0 {
            return 0;
        }
        ((credit as u128 * DAY_SECS as u128) / self.rate_sat_per_day as u128) as u64
    }
}

/// A WireGuard (Curve25519) public or private key: 32 bytes, shown in WireGuard's base64 form.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct WgKey(pub [u8; 32]);

/// A string that is not a base64-encoded 32-byte WireGuard key.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a WireGuard key (want 32 bytes in base64): {0}")]
pub struct WgKeyError(String);

impl WgKey {
    /// The key in WireGuard's base64 text form.
    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.0)
    }
}

impl FromStr for WgKey {
    type Err = WgKeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(s.trim())
            .map_err(|e| WgKeyError(e.to_string()))?;
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|b: Vec<u8>| WgKeyError(format!("{} bytes", b.len())))?;
        Ok(WgKey(arr))
    }
}

impl TryFrom<String> for WgKey {
    type Error = WgKeyError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<WgKey> for String {
    fn from(k: WgKey) -> String {
        k.to_base64()
    }
}

impl fmt::Display for WgKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for WgKey {
    // Private keys share this type, so Debug never prints the key material.
    // Shows a SHA-256 fingerprint, which reveals nothing about the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use sha2::Digest;
        let fp = sha2::Sha256::digest(self.0);
        write!(f, "WgKey(sha256:{})", hex::encode(&fp[..6]))
    }
}

/// 16 random bytes as lowercase hex: ids for leases and requests.
pub fn random_id() -> String {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).expect("the OS random number generator to work");
    hex::encode(b)
}

/// Converts days since 1970-01-01 into a proleptic Gregorian (year, month, day), using
/// Howard Hinnant's era-based algorithm (exact for every `u64` day count we can see).
pub fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // Shift the epoch to 0000-03-01 so leap days fall at the end of each year.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// Formats unix seconds as RFC 3339 UTC (`2024-02-29T12:00:00Z`).
pub fn rfc3339(unix: u64) -> String {
    let (days, secs) = (unix / 86_400, unix % 86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3_600,
        secs % 3_600 / 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terms() -> Terms {
        Terms {
            activation_fee_sat: 1000,
            rate_sat_per_day: 100,
            min_initial_credit_sat: 700,
            min_topup_sat: 100,
            max_credit_sat: 10_000,
            reserve_days: 7,
            refund_unused: false,
            reservation_secs: 0,
        }
    }

    #[test]
    fn credit_buys_time_at_the_rate() {
        assert_eq!(terms().credit_secs(100), DAY_SECS);
        assert_eq!(terms().credit_secs(50), DAY_SECS / 2);
    }

    #[test]
    fn terms_validation() {
        assert_eq!(terms().validate(), Ok(()));
        let mut t = terms();
        t.rate_sat_per_day = 0;
        assert_eq!(t.validate(), Err(TermsError::ZeroRate));
        let mut t = terms();
        t.min_initial_credit_sat = 20_000;
        assert!(matches!(t.validate(), Err(TermsError::MinAboveMax { .. })));
    }

    #[test]
    fn wg_key_round_trips_and_rejects_garbage() {
        let k = WgKey([7u8; 32]);
        let s = k.to_base64();
        assert_eq!(s.parse::<WgKey>(), Ok(k));
        assert!("abc".parse::<WgKey>().is_err());
        assert!("!!!!".parse::<WgKey>().is_err());
        assert!(!format!("{k:?}").contains(&s));
    }

    #[test]
    fn manual_clock_moves_only_when_advanced() {
        let c = ManualClock::at_ms(1_500);
        assert_eq!((c.now_ms(), c.now_unix()), (1_500, 1));
        c.advance(std::time::Duration::from_millis(2_600));
        assert_eq!((c.now_ms(), c.now_unix()), (4_100, 4));
        assert!(SystemClock.now_unix() > 1_600_000_000);
    }
}

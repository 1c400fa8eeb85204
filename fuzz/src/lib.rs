//! Shared pieces of the leasewire fuzz targets (see docs/FUZZING.md).
//!
//! - An allocation cap: a global allocator that aborts (a crash libFuzzer records) when one
//!   allocation exceeds [`ALLOCATION_FLOOR`] plus [`ALLOCATION_PER_INPUT_BYTE`] times the input
//!   length, so a decoder that trusts a length field from the input is caught even when the
//!   machine has the memory to satisfy it.
//! - The fixed keys of the docs/PROTOCOL.md test vectors, and helpers that sign fuzzer bytes
//!   with them, so a target reaches the decoders that only run behind a valid signature.
//! - A CBOR round-trip check used as a property by the wire targets.

use std::alloc::{GlobalAlloc, Layout, System};
use std::fmt::Debug;
use std::io::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};

use ed25519_dalek::{Signer as _, SigningKey};
use leasewire::wire::envelope::{Envelope, PROTOCOL_VERSION};
use leasewire::wire::signed::{Signed, SignedKind, peer_id_of};
use libp2p::PeerId;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Any single allocation up to this size is allowed whatever the input: it covers the fixed
/// buffers of the code under test (a 64 KiB frame, the 1 KiB handshake buffers, an async
/// runtime's set-up).
pub const ALLOCATION_FLOOR: usize = 1 << 20;

/// On top of [`ALLOCATION_FLOOR`], this many bytes per input byte: decoders may copy, grow a
/// vector by doubling or expand escapes, but nothing in the protocol justifies more.
pub const ALLOCATION_PER_INPUT_BYTE: usize = 64;

/// Timestamp of the test vectors (docs/PROTOCOL.md), used as "now" by the targets.
pub const TS: u64 = 1_700_000_000;

static LIMIT: AtomicUsize = AtomicUsize::new(usize::MAX);

/// The global allocator of every target: the system allocator with the cap above.
pub struct CappedAlloc;

impl CappedAlloc {
    fn check(size: usize) {
        // A panic's report (the backtrace is symbolised from debug info) allocates freely;
        // the panic is the finding then, not the report.
        if size > LIMIT.load(Ordering::Relaxed) && !std::thread::panicking() {
            oversized(size);
        }
    }
}

/// Reports an oversized allocation and aborts. Writes without allocating: the allocator is
/// the caller.
#[cold]
fn oversized(size: usize) -> ! {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = size;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let mut err = std::io::stderr();
    let _ = err.write_all(b"\n==leasewire-fuzz== oversized allocation of ");
    let _ = err.write_all(&digits[i..]);
    let _ = err.write_all(b" bytes\n");
    std::process::abort();
}

// SAFETY: every call is forwarded to `System` unchanged; the cap only inspects sizes.
unsafe impl GlobalAlloc for CappedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        Self::check(layout.size());
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        Self::check(layout.size());
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        Self::check(new_size);
        // SAFETY: forwarded with the caller's arguments.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's arguments.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: CappedAlloc = CappedAlloc;

/// Sets the allocation cap for one input of `input_len` bytes. Call it first in every target.
pub fn cap_allocations(input_len: usize) {
    let limit =
        ALLOCATION_FLOOR.saturating_add(input_len.saturating_mul(ALLOCATION_PER_INPUT_BYTE));
    LIMIT.store(limit, Ordering::Relaxed);
}

/// The node key of the test vectors (`0x01` × 32): the provider, and the envelope sender.
pub fn provider_key() -> SigningKey {
    SigningKey::from_bytes(&[1; 32])
}

/// The renter key of the test vectors (`0x02` × 32).
pub fn renter_key() -> SigningKey {
    SigningKey::from_bytes(&[2; 32])
}

/// The PeerId of `key`.
pub fn peer(key: &SigningKey) -> PeerId {
    peer_id_of(&key.verifying_key())
}

/// A genuine envelope from `key` whose body is `body` (any bytes): what a member sends, so
/// `open` gets past every check and reaches the message decoder.
pub fn seal_body(key: &SigningKey, body: &[u8], ts: u64, nonce: u64) -> Vec<u8> {
    let mut env = Envelope {
        v: PROTOCOL_VERSION,
        from: key.verifying_key().to_bytes().to_vec(),
        ts,
        nonce,
        body: body.to_vec(),
        sig: Vec::new(),
    };
    env.sig = key.sign(&env.signed_bytes()).to_bytes().to_vec();
    env.to_cbor().expect("an in-memory envelope to encode")
}

/// A `Signed<T>` by `key` whose body is `body` (any bytes), signed as docs/PROTOCOL.md says:
/// over `T::DOMAIN || 0x00 || body`.
pub fn sign_body<T: SignedKind>(key: &SigningKey, body: &[u8]) -> Signed<T> {
    let mut signed_bytes = Vec::with_capacity(T::DOMAIN.len() + 1 + body.len());
    signed_bytes.extend_from_slice(T::DOMAIN.as_bytes());
    signed_bytes.push(0);
    signed_bytes.extend_from_slice(body);
    let sig = key.sign(&signed_bytes);
    // `Signed` keeps a private marker field, so it is built through its own decoder.
    let value = ciborium::Value::Map(vec![
        (
            ciborium::Value::Text("signer".into()),
            ciborium::Value::Bytes(key.verifying_key().to_bytes().to_vec()),
        ),
        (
            ciborium::Value::Text("body".into()),
            ciborium::Value::Bytes(body.to_vec()),
        ),
        (
            ciborium::Value::Text("sig".into()),
            ciborium::Value::Bytes(sig.to_bytes().to_vec()),
        ),
    ]);
    value
        .deserialized()
        .expect("a signer/body/sig map to decode as Signed")
}

/// CBOR-encodes `v` the way the library does.
pub fn to_cbor<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(v, &mut out).expect("a decoded value to encode again");
    out
}

/// Decodes CBOR the way the library does (`ciborium::from_reader` over a slice).
pub fn from_cbor<T: DeserializeOwned>(bytes: &[u8]) -> Option<T> {
    ciborium::from_reader(bytes).ok()
}

/// Property of every decoded wire value: encoding it and decoding the result gives it back,
/// and encoding is stable (the second encoding equals the first).
pub fn assert_round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug>(v: &T) {
    let bytes = to_cbor(v);
    let back: T = ciborium::from_reader(bytes.as_slice())
        .unwrap_or_else(|e| panic!("re-encoded value does not decode: {e}; value {v:?}"));
    assert_eq!(&back, v, "decode(encode(v)) != v");
    assert_eq!(to_cbor(&back), bytes, "encoding is not stable");
}

/// The fuzz logic shared by the `Signed<T>` targets (offers and leases).
///
/// 1. `data` as a peer's `Signed<T>` CBOR: decodes or is refused; a decoded one round-trips,
///    and `verify`/`id` never panic.
/// 2. `data` as the body of a genuine signature by `key`: `verify` must not refuse the
///    signature, and a value it decodes round-trips and re-signs to the same value.
///
/// Returns the value decoded in step 2, for target-specific checks.
pub fn fuzz_signed<T>(data: &[u8], key: &SigningKey) -> Option<T>
where
    T: SignedKind + PartialEq + Debug,
{
    if let Some(s) = from_cbor::<Signed<T>>(data) {
        assert_round_trip(&s);
        let _ = s.id();
        if let Ok(v) = s.verify() {
            assert_round_trip(&v);
            let signer = s
                .signer_peer_id()
                .expect("a verified signer key to be valid");
            assert!(s.verify_from(&signer).is_ok());
        }
    }

    let s = sign_body::<T>(key, data);
    assert_round_trip(&s);
    match s.verify() {
        Ok(v) => {
            assert_round_trip(&v);
            assert!(s.verify_from(&peer(key)).is_ok());
            let again = Signed::sign(key, &v).expect("a decoded value to sign");
            assert_eq!(again.verify().expect("our own signature to verify"), v);
            Some(v)
        }
        Err(leasewire::wire::signed::WireError::Decode { .. }) => None,
        Err(e) => panic!("a genuine signature was refused: {e}"),
    }
}

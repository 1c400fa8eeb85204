//! The wire protocol: messages, signed objects, signed envelopes and length-prefixed frames.
//! Pure data and codecs, no I/O beyond generic async readers and writers.

pub mod envelope;
pub mod framing;
pub mod limits;
pub mod messages;
pub mod signed;

pub use messages::*;
pub use signed::{Signed, SignedKind};

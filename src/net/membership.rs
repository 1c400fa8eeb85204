//! The membership handshake: proof that both ends of a connection know the topic secret.
//!
//! Two Noise messages, pattern `Noise_NNpsk0_25519_ChaChaPoly_SHA256`, with the topic's
//! membership key as the PSK and both PeerIds in the prologue (docs/PROTOCOL.md):
//!
//! 1. the initiator (the dialer of the connection) sends message 1 (`psk, e`, empty payload);
//! 2. the responder reads it, which fails unless both sides hold the same PSK and agree on the
//!    prologue, and answers with message 2 (`e, ee`, empty payload);
//! 3. the initiator reads message 2, which proves the responder holds the PSK too.
//!
//! The prologue binds the run to the two PeerIds the transport authenticated, so a message 1
//! captured on one connection is useless on any other pair of peers. Only the handshake's
//! success matters: no transport keys are used afterwards.
//!
//! Pure functions over byte slices; the event loop moves the bytes.

use libp2p::PeerId;

/// Noise protocol name of the handshake.
pub const NOISE_PARAMS: &str = "Noise_NNpsk0_25519_ChaChaPoly_SHA256";

/// First part of the prologue, followed by a 0x00 byte and the two PeerIds.
pub const PROLOGUE_DOMAIN: &[u8] = b"leasewire/membership/v1";

/// Largest handshake message accepted; real ones are 48 bytes (message 1: ephemeral key plus
/// the tag of the empty payload) and 48 bytes (message 2).
pub const MAX_HANDSHAKE_MESSAGE: usize = 1024;

/// Why a handshake failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MembershipError {
    /// The handshake message is larger than [`MAX_HANDSHAKE_MESSAGE`].
    #[error("handshake message of {0} bytes is too large")]
    TooLarge(usize),
    /// The peer's message did not decrypt: it holds another PSK, or is not the peer it claims.
    #[error("handshake message rejected: {0}")]
    Rejected(snow::Error),
    /// The Noise state machine could not be set up or advanced (a local error).
    #[error("noise handshake error: {0}")]
    Noise(snow::Error),
}

/// The prologue both sides mix into the handshake:
/// `PROLOGUE_DOMAIN || 0x00 || initiator.to_bytes() || responder.to_bytes()`.
pub fn prologue(initiator: &PeerId, responder: &PeerId) -> Vec<u8> {
    let (i, r) = (initiator.to_bytes(), responder.to_bytes());
    let mut p = Vec::with_capacity(PROLOGUE_DOMAIN.len() + 1 + i.len() + r.len());
    p.extend_from_slice(PROLOGUE_DOMAIN);
    p.push(0);
    p.extend_from_slice(&i);
    p.extend_from_slice(&r);
    p
}

fn builder_state(
    psk: &[u8; 32],
    initiator: &PeerId,
    responder: &PeerId,
    as_initiator: bool,
) -> Result<snow::HandshakeState, MembershipError> {
    let params = NOISE_PARAMS
        .parse()
        .expect("NOISE_PARAMS to be a valid Noise protocol name");
    let prologue = prologue(initiator, responder);
    let builder = snow::Builder::new(params)
        .psk(0, psk)
        .and_then(|b| b.prologue(&prologue))
        .map_err(MembershipError::Noise)?;
    if as_initiator {
        builder.build_initiator()
    } else {
        builder.build_responder()
    }
    .map_err(MembershipError::Noise)
}

/// The initiator's side of a handshake in flight, between sending message 1 and reading
/// message 2.
pub struct Initiator {
    state: snow::HandshakeState,
}

impl std::fmt::Debug for Initiator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The state holds key material: never print it.
        f.debug_struct("Initiator").finish_non_exhaustive()
    }
}

impl Initiator {
    /// Starts a handshake from `local` to `remote` and returns the state to keep together with
    /// message 1, to send to `remote`.
    ///
    /// # Errors
    /// [`MembershipError::Noise`] if the Noise state cannot be built (a local fault).
    pub fn start(
        psk: &[u8; 32],
        local: &PeerId,
        remote: &PeerId,
    ) -> Result<(Self, Vec<u8>), MembershipError> {
        let mut state = builder_state(psk, local, remote, true)?;
        let mut buf = vec![0u8; MAX_HANDSHAKE_MESSAGE];
        let n = state
            .write_message(&[], &mut buf)
            .map_err(MembershipError::Noise)?;
        buf.truncate(n);
        Ok((Initiator { state }, buf))
    }

    /// Reads message 2. `Ok` means the responder proved it holds the same PSK.
    ///
    /// # Errors
    /// [`MembershipError::TooLarge`] or [`MembershipError::Rejected`] if message 2 is not a
    /// valid answer (the responder holds another PSK, or the message was tampered with).
    pub fn finish(mut self, message2: &[u8]) -> Result<(), MembershipError> {
        if message2.len() > MAX_HANDSHAKE_MESSAGE {
            return Err(MembershipError::TooLarge(message2.len()));
        }
        let mut payload = vec![0u8; MAX_HANDSHAKE_MESSAGE];
        self.state
            .read_message(message2, &mut payload)
            .map_err(MembershipError::Rejected)?;
        if !self.state.is_handshake_finished() {
            // Cannot happen with a two-message pattern; refuse rather than assume.
            return Err(MembershipError::Rejected(snow::Error::State(
                snow::error::StateProblem::HandshakeNotFinished,
            )));
        }
        Ok(())
    }
}

/// The responder's side: reads message 1 from `initiator` (the remote) to `responder` (us)
/// and returns message 2 to send back.
///
/// # Errors
/// [`MembershipError::TooLarge`] or [`MembershipError::Rejected`] if message 1 does not
/// decrypt: the initiator holds another PSK, or the PeerIds do not match its view.
/// [`MembershipError::Noise`] for local faults.
pub fn respond(
    psk: &[u8; 32],
    initiator: &PeerId,
    responder: &PeerId,
    message1: &[u8],
) -> Result<Vec<u8>, MembershipError> {
    if message1.len() > MAX_HANDSHAKE_MESSAGE {
        return Err(MembershipError::TooLarge(message1.len()));
    }
    let mut state = builder_state(psk, initiator, responder, false)?;
    let mut payload = vec![0u8; MAX_HANDSHAKE_MESSAGE];
    state
        .read_message(message1, &mut payload)
        .map_err(MembershipError::Rejected)?;
    let mut buf = vec![0u8; MAX_HANDSHAKE_MESSAGE];
    let n = state
        .write_message(&[], &mut buf)
        .map_err(MembershipError::Noise)?;
    buf.truncate(n);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers() -> (PeerId, PeerId, PeerId) {
        (PeerId::random(), PeerId::random(), PeerId::random())
    }

    #[test]
    fn same_psk_completes() {
        let (a, b, _) = peers();
        let psk = [7u8; 32];
        let (init, m1) = Initiator::start(&psk, &a, &b).unwrap();
        // NNpsk0 message 1: 32-byte ephemeral key + 16-byte tag of the empty payload.
        assert_eq!(m1.len(), 48);
        let m2 = respond(&psk, &a, &b, &m1).unwrap();
        assert_eq!(m2.len(), 48);
        init.finish(&m2).unwrap();
    }

    #[test]
    fn different_psk_is_refused_by_the_responder() {
        let (a, b, _) = peers();
        let (_init, m1) = Initiator::start(&[1u8; 32], &a, &b).unwrap();
        assert!(matches!(
            respond(&[2u8; 32], &a, &b, &m1),
            Err(MembershipError::Rejected(_))
        ));
    }

    #[test]
    fn forged_message2_is_refused_by_the_initiator() {
        let (a, b, _) = peers();
        let (init, m1) = Initiator::start(&[1u8; 32], &a, &b).unwrap();
        // A responder that does not hold the PSK can only answer with bytes of its own making.
        let other_psk = [2u8; 32];
        let (_, fake_m1) = Initiator::start(&other_psk, &a, &b).unwrap();
        let fake_m2 = respond(&other_psk, &a, &b, &fake_m1).unwrap();
        assert!(matches!(
            init.finish(&fake_m2),
            Err(MembershipError::Rejected(_))
        ));
        // Garbage and truncated messages too.
        let (init, _) = Initiator::start(&[1u8; 32], &a, &b).unwrap();
        assert!(init.finish(&m1[..10]).is_err());
        let (init, _) = Initiator::start(&[1u8; 32], &a, &b).unwrap();
        assert!(matches!(
            init.finish(&vec![0u8; MAX_HANDSHAKE_MESSAGE + 1]),
            Err(MembershipError::TooLarge(_))
        ));
    }

    #[test]
    fn prologue_binds_both_peer_ids() {
        let (a, b, c) = peers();
        let psk = [9u8; 32];
        let (_, m1) = Initiator::start(&psk, &a, &b).unwrap();
        // Replayed towards another responder, or claimed by another initiator: refused.
        assert!(respond(&psk, &a, &c, &m1).is_err());
        assert!(respond(&psk, &c, &b, &m1).is_err());
        // Roles swapped: refused as well.
        assert!(respond(&psk, &b, &a, &m1).is_err());
        // The genuine pair still works.
        assert!(respond(&psk, &a, &b, &m1).is_ok());
    }

    #[test]
    fn prologue_layout() {
        let (a, b, _) = peers();
        let p = prologue(&a, &b);
        let mut want = b"leasewire/membership/v1\0".to_vec();
        want.extend_from_slice(&a.to_bytes());
        want.extend_from_slice(&b.to_bytes());
        assert_eq!(p, want);
        assert_ne!(prologue(&a, &b), prologue(&b, &a));
    }

    #[test]
    fn oversized_message1_is_refused() {
        let (a, b, _) = peers();
        assert!(matches!(
            respond(&[0u8; 32], &a, &b, &vec![0u8; MAX_HANDSHAKE_MESSAGE + 1]),
            Err(MembershipError::TooLarge(_))
        ));
    }
}

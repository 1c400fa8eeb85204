//! Provider and renter logic. Sees only traits: [`Peers`] for the network,
//! [`crate::lightning::LightningNode`], [`crate::tunnel::Tunnel`], and the audit log.

pub mod lease;
pub mod limits;
mod locks;
pub mod offers;
pub mod pool;
pub mod provider;
pub mod renter;
pub mod select;
pub mod sizes;
pub mod store;
pub mod witness;

use std::time::Duration;

use libp2p::PeerId;

use crate::wire::{ErrorCode, Message};

/// How the market reaches other nodes. Implemented over libp2p by the node, and in memory by
/// tests.
#[async_trait::async_trait]
pub trait Peers: Send + Sync + 'static {
    /// Peers announcing themselves as providers on our topic.
    async fn find_providers(&self) -> Result<Vec<PeerId>, MarketError>;
    /// Like [`Peers::find_providers`], and also sends each provider to `progress` as soon as
    /// the lookup meets it, so the caller can talk to the first ones while it still runs.
    /// `progress` is dropped when the lookup ends. By default, every provider is sent once the
    /// whole lookup is over.
    async fn find_providers_each(
        &self,
        progress: tokio::sync::mpsc::UnboundedSender<PeerId>,
    ) -> Result<Vec<PeerId>, MarketError> {
        let found = self.find_providers().await?;
        for peer in &found {
            let _ = progress.send(*peer);
        }
        Ok(found)
    }
    /// Sends a request and returns the verified response and the round-trip time.
    async fn request(&self, peer: PeerId, msg: Message)
    -> Result<(Message, Duration), MarketError>;
}

/// Errors of the market layer. Every variant's message is fit for a user.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MarketError {
    /// The network failed to deliver a request.
    #[error("network: {0}")]
    Net(String),
    /// The peer answered with an error.
    #[error("peer refused ({code:?}): {message}")]
    Refused {
        /// Reason code.
        code: ErrorCode,
        /// Peer's explanation.
        message: String,
    },
    /// The peer answered with the wrong message.
    #[error("unexpected answer: wanted {expected}, got {got}")]
    Unexpected {
        /// Message wanted.
        expected: &'static str,
        /// Message received.
        got: &'static str,
    },
    /// An invoice failed the payer's checks; nothing was paid.
    #[error("invoice refused before paying: {0}")]
    InvoiceRejected(String),
    /// The Lightning node failed.
    #[error("lightning: {0}")]
    Lightning(#[from] crate::lightning::LightningError),
    /// The tunnel backend failed.
    #[error("tunnel: {0}")]
    Tunnel(#[from] crate::tunnel::TunnelError),
    /// The audit log failed.
    #[error("audit log: {0}")]
    Audit(#[from] crate::audit::AuditError),
    /// Local storage failed.
    #[error("storage: {0}")]
    Store(String),
    /// No offer matches.
    #[error("{0}")]
    NoOffer(String),
    /// A lease or request is unknown.
    #[error("not found: {0}")]
    NotFound(String),
    /// A signed object failed verification or does not match what was asked.
    #[error("bad {what} from provider: {reason}")]
    BadSigned {
        /// Object.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// The request is invalid.
    #[error("{0}")]
    Invalid(String),
    /// A spending limit refused the payment; nothing was paid.
    #[error("payment refused by spending limit: {0}")]
    LimitExceeded(String),
    /// The payment went through (or may still be in flight) but the lease is not in hand yet.
    /// The daemon keeps working on it: it tracks the payment with its node and asks the
    /// provider for the lease until it gets it. Nothing should be paid again.
    #[error("paid, lease not received yet (the daemon keeps asking the provider): {0}")]
    AwaitingLease(String),
    /// A payment to this provider has not delivered its lease yet: no further payment goes
    /// to it until that one is resolved (lease received, or the payment proven failed).
    /// Nothing was paid.
    #[error("payment refused: {0}")]
    UndeliveredPayment(String),
    /// Nothing was done: the request needs the user's confirmation (`--yes`); says why.
    #[error("needs confirmation: {0}")]
    NeedsConfirmation(String),
}

impl MarketError {
    /// A peer's answer that is not the `expected` message: its refusal (`error`), or an
    /// unexpected message.
    pub fn wrong_answer(answer: crate::wire::Message, expected: &'static str) -> MarketError {
        match answer {
            crate::wire::Message::Error(e) => MarketError::Refused {
                code: e.code,
                message: e.message,
            },
            other => MarketError::Unexpected {
                expected,
                got: other.name(),
            },
        }
    }
}

impl From<lease::IllegalTransition> for MarketError {
    fn from(e: lease::IllegalTransition) -> Self {
        MarketError::Invalid(e.to_string())
    }
}

impl From<sled::Error> for MarketError {
    fn from(e: sled::Error) -> Self {
        MarketError::Store(e.to_string())
    }
}

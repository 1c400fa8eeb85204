//! [`NetClient`]: the cheap-clone handle to the network event loop.
//!
//! Each call sends one command to the loop and awaits its answer on a oneshot channel.
//! Envelopes are sealed here, in the caller's task, so signing never stalls the swarm.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use libp2p::{Multiaddr, PeerId};
use tokio::sync::{mpsc, oneshot};

use super::event_loop::Command;
use super::{InboundChannel, NetError, NetStatus};
use crate::wire::envelope;
use crate::wire::messages::Message;

/// Handle to a running [`super::EventLoop`]. Clone freely; the loop stops once every clone is
/// dropped (or its cancellation token fires). Every method fails with [`NetError::Closed`]
/// when the loop is gone.
#[derive(Clone)]
pub struct NetClient {
    commands: mpsc::Sender<Command>,
    key: Arc<SigningKey>,
    local: PeerId,
}

impl std::fmt::Debug for NetClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the signing key.
        f.debug_struct("NetClient")
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

impl NetClient {
    pub(crate) fn new(commands: mpsc::Sender<Command>, key: SigningKey, local: PeerId) -> Self {
        NetClient {
            commands,
            key: Arc::new(key),
            local,
        }
    }

    /// Our PeerId.
    pub fn local_peer_id(&self) -> PeerId {
        self.local
    }

    /// Sends a command built around a fresh oneshot and waits for its answer.
    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, NetError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| NetError::Closed)?;
        rx.await.map_err(|_| NetError::Closed)
    }

    /// The addresses we actually listen on, waiting until at least one is bound (empty at
    /// once if the configuration has no listen address).
    ///
    /// # Errors
    /// [`NetError::Transport`] if every listener failed; [`NetError::Closed`].
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, NetError> {
        self.call(|reply| Command::ListenAddrs { reply }).await?
    }

    /// Publishes (or re-publishes) our provider record under the topic's DHT key. Call again
    /// periodically to re-announce; Kademlia also republishes on its own.
    ///
    /// # Errors
    /// [`NetError::Dht`] if the record cannot be stored locally; [`NetError::Timeout`] if the
    /// query did not complete (the record may still have reached some peers).
    pub async fn start_providing(&self) -> Result<(), NetError> {
        self.call(|reply| Command::StartProviding { reply }).await?
    }

    /// Looks up the providers of the topic's DHT key, excluding ourselves and refused peers.
    /// Empty if there are none or if we know no member to ask.
    ///
    /// # Errors
    /// [`NetError::Timeout`] if the query timed out before finding any provider.
    pub async fn find_providers(&self) -> Result<HashSet<PeerId>, NetError> {
        self.call(|reply| Command::FindProviders { reply }).await?
    }

    /// Signs `msg` into an envelope, dials `peer` if needed, waits until the membership
    /// handshake with it succeeded, sends the request and returns the verified response
    /// (signed by `peer`, fresh, not replayed) with the round-trip time of the exchange.
    ///
    /// # Errors
    /// [`NetError::NotMember`] if the handshake was refused or did not complete within the
    /// request timeout; [`NetError::Dial`] if `peer` cannot be reached; [`NetError::Timeout`]
    /// if no response came in time; [`NetError::Outbound`] if the stream failed;
    /// [`NetError::Wire`] if the response failed verification; [`NetError::SelfRequest`].
    pub async fn request(
        &self,
        peer: PeerId,
        msg: Message,
    ) -> Result<(Message, Duration), NetError> {
        if peer == self.local {
            return Err(NetError::SelfRequest);
        }
        let envelope = envelope::seal(&self.key, &msg)?;
        self.call(|reply| Command::Request {
            peer,
            envelope,
            reply,
        })
        .await?
    }

    /// Answers an inbound request with `msg`, signed by us.
    ///
    /// # Errors
    /// [`NetError::ResponseChannelClosed`] if the requester is gone or its request timed out;
    /// [`NetError::Wire`] if `msg` cannot be encoded.
    pub async fn respond(&self, channel: InboundChannel, msg: Message) -> Result<(), NetError> {
        let envelope = envelope::seal(&self.key, &msg)?;
        self.call(|reply| Command::Respond {
            channel,
            envelope,
            reply,
        })
        .await?
    }

    /// A snapshot of peers, members and refusals.
    ///
    /// # Errors
    /// [`NetError::Closed`].
    pub async fn status(&self) -> Result<NetStatus, NetError> {
        self.call(|reply| Command::Status { reply }).await
    }
}

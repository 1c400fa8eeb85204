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
        self.call(|reply| Command::FindProviders {
            progress: None,
            reply,
        })
        .await?
    }

    /// Like [`NetClient::find_providers`], and also sends each provider to `progress` as soon
    /// as the lookup meets it (once per provider), so the caller can start talking to the
    /// first providers while the query still runs. `progress` is dropped when the lookup ends.
    ///
    /// # Errors
    /// As [`NetClient::find_providers`].
    pub async fn find_providers_each(
        &self,
        progress: mpsc::UnboundedSender<PeerId>,
    ) -> Result<HashSet<PeerId>, NetError> {
        self.call(|reply| Command::FindProviders {
            progress: Some(progress),
            reply,
        })
        .await?
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::{NetConfig, NetEvent, NetStatus};
    use crate::wire::messages::Hello;
    use libp2p::multiaddr::Protocol;
    use tokio_util::sync::CancellationToken;

    fn hello(agent: &str) -> Message {
        Message::Hello(Hello {
            agent: agent.into(),
            provider: true,
            renter: true,
            network: "regtest".into(),
        })
    }

    async fn wait(client: &NetClient, cond: impl Fn(&NetStatus) -> bool) {
        for _ in 0..200 {
            if cond(&client.status().await.unwrap()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("condition not reached: {:?}", client.status().await);
    }

    /// A member that sends a forged or replayed envelope is disconnected and reported, and
    /// the receiving loop keeps serving.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn forged_and_replayed_envelopes_are_dropped() {
        let topic = tokio::task::spawn_blocking(|| crate::net::topic::derive("client-test"))
            .await
            .unwrap()
            .unwrap();
        let token = CancellationToken::new();
        let cfg = |bootstrap| NetConfig {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
            bootstrap,
            request_timeout: Duration::from_secs(5),
            ..NetConfig::new(topic.clone())
        };
        let key_a = SigningKey::from_bytes(&[21; 32]);
        let (a, _a_events, a_loop) = crate::net::new(&key_a, cfg(vec![])).unwrap();
        tokio::spawn(a_loop.run(token.clone()));
        let a_addr = a.listen_addrs().await.unwrap()[0]
            .clone()
            .with(Protocol::P2p(a.local_peer_id()));
        let key_b = SigningKey::from_bytes(&[22; 32]);
        let (b, mut b_events, b_loop) = crate::net::new(&key_b, cfg(vec![a_addr])).unwrap();
        tokio::spawn(b_loop.run(token.clone()));
        let (bad_tx, mut bad_rx) = tokio::sync::mpsc::unbounded_channel();
        let responder = b.clone();
        tokio::spawn(async move {
            while let Some(ev) = b_events.recv().await {
                match ev {
                    NetEvent::InboundRequest { channel, .. } => {
                        let _ = responder.respond(channel, hello("b")).await;
                    }
                    NetEvent::BadMessage { peer, reason } => {
                        let _ = bad_tx.send((peer, reason));
                    }
                    _ => {}
                }
            }
        });
        let (a_id, b_id) = (a.local_peer_id(), b.local_peer_id());
        wait(&a, |s| s.members.contains(&b_id)).await;
        wait(&b, |s| s.members.contains(&a_id)).await;

        // Signed by a third key: the signer is not the connection's peer.
        let forged = envelope::seal(&SigningKey::from_bytes(&[23; 32]), &hello("a")).unwrap();
        let res = a
            .call(|reply| Command::Request {
                peer: b_id,
                envelope: forged,
                reply,
            })
            .await
            .unwrap();
        assert!(res.is_err(), "forged envelope answered: {res:?}");
        let (peer, reason) = bad_rx.recv().await.unwrap();
        assert_eq!(peer, a_id);
        assert!(reason.contains("signed by"), "reason: {reason}");

        // B still serves A. B dropped the connection, so they must meet again first (A redials
        // once it knows B's address, B redials its bootstrap peer while isolated); on a loaded
        // machine that takes a moment, so a fresh envelope is tried until one is answered.
        let send = |envelope: Vec<u8>| {
            a.call(move |reply| Command::Request {
                peer: b_id,
                envelope,
                reply,
            })
        };
        let mut tries = 0;
        let genuine = loop {
            wait(&a, |s| s.members.contains(&b_id)).await;
            let env = envelope::seal(&key_a, &hello("a")).unwrap();
            match send(env.clone()).await.unwrap() {
                Ok((resp, _)) => {
                    assert_eq!(resp, hello("b"));
                    break env;
                }
                Err(e) => {
                    tries += 1;
                    assert!(tries < 50, "B never served A again: {e}");
                    // Waits for the real connection to come back, not for market time.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };

        // The same envelope again is a replay.
        assert!(send(genuine).await.unwrap().is_err());
        let (peer, reason) = bad_rx.recv().await.unwrap();
        assert_eq!(peer, a_id);
        assert!(reason.contains("replayed"), "reason: {reason}");

        // And A can still talk to B with fresh envelopes.
        let (resp, _) = a.request(b_id, hello("a")).await.unwrap();
        assert_eq!(resp, hello("b"));
        token.cancel();
    }
}

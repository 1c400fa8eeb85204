//! Signed-envelope traffic of the event loop (`/leasewire/msg/1.0.0`).
//!
//! Inbound requests are accepted from members only and surface as
//! [`NetEvent::InboundRequest`] after [`envelope::open`] checked signer, freshness and replay;
//! responses get the same check before they reach the caller. Anything else disconnects the
//! peer and is reported as [`NetEvent::BadMessage`].

use std::time::{Duration, Instant};

use libp2p::PeerId;
use libp2p::request_response::{self, OutboundFailure};

use super::event_loop::{EventLoop, PendingRequest, Reply};
use super::{InboundChannel, NetError, NetEvent};
use crate::wire::envelope;
use crate::wire::messages::Message;

impl EventLoop {
    /// Sends an envelope to a member (dialing it through the known addresses if needed).
    pub(crate) fn send_msg_request(
        &mut self,
        peer: PeerId,
        envelope: Vec<u8>,
        reply: Reply<(Message, Duration)>,
    ) {
        let addrs = self.book.get(&peer);
        let id = self
            .swarm
            .behaviour_mut()
            .msg
            .send_request_with_addresses(&peer, envelope, addrs);
        let sent_at = Instant::now();
        self.pending_requests.insert(
            id,
            PendingRequest {
                peer,
                sent_at,
                reply,
            },
        );
    }

    /// Drops a misbehaving peer's envelope and connection.
    fn bad_message(&mut self, peer: PeerId, reason: String) {
        tracing::warn!(%peer, "dropping bad message, disconnecting: {reason}");
        let _ = self.swarm.disconnect_peer_id(peer);
        self.emit(NetEvent::BadMessage { peer, reason });
    }

    /// Handles `/leasewire/msg/1.0.0` traffic: inbound requests, responses, failures.
    pub(crate) fn on_msg(&mut self, event: request_response::Event<Vec<u8>, Vec<u8>>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => {
                    if !self.members.contains(&peer) {
                        tracing::warn!(%peer, "request from a non-member; disconnecting");
                        drop(channel);
                        let _ = self.swarm.disconnect_peer_id(peer);
                        return;
                    }
                    match envelope::open(&request, &peer, &self.replay, crate::types::now_unix()) {
                        Ok(opened) => {
                            tracing::debug!(%peer, msg = opened.message.name(), "inbound request");
                            self.emit(NetEvent::InboundRequest {
                                peer,
                                message: Box::new(opened.message),
                                channel: InboundChannel(channel),
                            });
                        }
                        Err(e) => self.bad_message(peer, e.to_string()),
                    }
                }
                request_response::Message::Response {
                    request_id,
                    response,
                } => {
                    let Some(p) = self.pending_requests.remove(&request_id) else {
                        return;
                    };
                    let rtt = p.sent_at.elapsed();
                    let opened =
                        envelope::open(&response, &p.peer, &self.replay, crate::types::now_unix());
                    match opened {
                        Ok(opened) => {
                            let _ = p.reply.send(Ok((opened.message, rtt)));
                        }
                        Err(e) => {
                            self.bad_message(p.peer, e.to_string());
                            let _ = p.reply.send(Err(NetError::Wire(e)));
                        }
                    }
                }
            },
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                let Some(p) = self.pending_requests.remove(&request_id) else {
                    return;
                };
                let err = match error {
                    OutboundFailure::Timeout => NetError::Timeout,
                    OutboundFailure::DialFailure => NetError::Dial {
                        peer,
                        reason: "no reachable address".into(),
                    },
                    other => NetError::Outbound {
                        peer,
                        reason: other.to_string(),
                    },
                };
                let _ = p.reply.send(Err(err));
            }
            request_response::Event::InboundFailure { peer, error, .. } => match error {
                // Oversized or truncated frames: the peer broke the framing rules.
                request_response::InboundFailure::Io(e)
                    if e.kind() == std::io::ErrorKind::InvalidData =>
                {
                    self.bad_message(peer, e.to_string())
                }
                other => tracing::debug!(%peer, "inbound request failed: {other}"),
            },
            request_response::Event::ResponseSent { peer, .. } => {
                tracing::debug!(%peer, "response sent")
            }
        }
    }
}

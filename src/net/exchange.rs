//! Signed-envelope traffic of the event loop (`/leasewire/msg/1.0.0`).
//!
//! Inbound requests are accepted from members only and surface as
//! [`NetEvent::InboundRequest`] after [`envelope::open`] checked signer, freshness and replay;
//! responses get the same check before they reach the caller. Anything else disconnects the
//! peer and is reported as [`NetEvent::BadMessage`].

use std::time::{Duration, Instant};

use libp2p::PeerId;
use libp2p::request_response::{self, OutboundFailure};

use super::codec::Frame;
use super::event_loop::{EventLoop, PendingRequest, Reply};
use super::{InboundChannel, NetError, NetEvent};
use crate::wire::envelope;
use crate::wire::messages::Message;
use crate::wire::signed::WireError;

/// Whether a refused envelope counts towards a ban: everything but a timestamp out of the
/// window or an envelope the replay cache cannot decide on, which an honest peer with a bad
/// clock, or one that sent a burst, can cause.
fn is_offense(e: &WireError) -> bool {
    !matches!(e, WireError::Stale { .. } | WireError::ReplayUndecidable(_))
}

impl EventLoop {
    /// Sends an envelope to a member (dialing it through the known addresses if needed).
    pub(crate) fn send_msg_request(
        &mut self,
        peer: PeerId,
        envelope: Vec<u8>,
        reply: Reply<(Message, Duration)>,
    ) {
        let addrs = self.book.get(&peer);
        let id = self.swarm.behaviour_mut().msg.send_request_with_addresses(
            &peer,
            Frame::Data(envelope),
            addrs,
        );
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

    /// Handles `/leasewire/msg/1.0.0` traffic: inbound requests, responses, failures.
    pub(crate) fn on_msg(&mut self, event: request_response::Event<Frame, Vec<u8>>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request: Frame::Malformed(reason),
                    channel,
                    ..
                } => {
                    drop(channel);
                    self.bad_message(peer, format!("malformed frame: {reason}"), true);
                }
                request_response::Message::Request {
                    request: Frame::Truncated,
                    channel,
                    ..
                } => {
                    drop(channel);
                    self.bad_message(peer, "request frame cut short".into(), false);
                }
                request_response::Message::Request {
                    request: Frame::Data(request),
                    channel,
                    ..
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
                        Err(e) => self.bad_message(peer, e.to_string(), is_offense(&e)),
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
                            self.bad_message(p.peer, e.to_string(), is_offense(&e));
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
                    // A malformed response frame: as bad as a malformed request. One cut short
                    // is dropped too, but (like a truncated request) not counted as an offense.
                    OutboundFailure::Io(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
                        ) =>
                    {
                        let offense = e.kind() == std::io::ErrorKind::InvalidData;
                        let reason = format!("malformed response frame: {e}");
                        self.bad_message(peer, reason.clone(), offense);
                        NetError::Outbound { peer, reason }
                    }
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
                    self.bad_message(peer, e.to_string(), true)
                }
                other => tracing::debug!(%peer, "inbound request failed: {other}"),
            },
            request_response::Event::ResponseSent { peer, .. } => {
                tracing::debug!(%peer, "response sent")
            }
        }
    }
}

//! Request-response codec shared by both leasewire protocols: a request and a response are
//! each exactly one length-prefixed frame ([`crate::wire::framing`]) of opaque bytes.
//!
//! The codec does not interpret the bytes: the membership protocol carries Noise messages and
//! the message protocol carries signed envelopes, both checked by the event loop, which knows
//! the remote PeerId. Keeping the codec dumb means a malformed payload is reported with the
//! peer that sent it instead of vanishing as an I/O error deep inside libp2p.
//!
//! The same goes for a malformed *frame* (an announced length over the limit, or a stream that
//! ends mid-frame): libp2p's request-response reports a failed `read_request` only as a debug
//! line about an unknown request id, so the codec does not fail there. It returns
//! [`Frame::Malformed`] (or [`Frame::Truncated`]) as the request instead, which reaches the event
//! loop with the peer that sent it, to be penalised ([`super::limits::Offenses`]). A malformed *response* fails the
//! outbound request with an `InvalidData` or `UnexpectedEof` I/O error, which libp2p does
//! report with the peer.

use std::io;

use futures::{AsyncRead, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use libp2p::request_response;

use crate::wire::framing::{self, MAX_FRAME};
use crate::wire::signed::WireError;

/// Protocol of the membership handshake (one Noise message each way).
pub const MEMBERSHIP_PROTOCOL: StreamProtocol = StreamProtocol::new("/leasewire/membership/1.0.0");

/// Protocol of signed-envelope requests and responses.
pub const MSG_PROTOCOL: StreamProtocol = StreamProtocol::new("/leasewire/msg/1.0.0");

/// An inbound request as read off a stream (outbound requests are always [`Frame::Data`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// A well-formed frame's payload.
    Data(Vec<u8>),
    /// The peer broke the framing rules (an announced length over the limit): what was
    /// wrong, for logs (never the peer's bytes).
    Malformed(String),
    /// The stream ended before a whole frame arrived. Also what a connection lost mid-request
    /// can look like, so it is not held against the peer as hard as [`Frame::Malformed`].
    Truncated,
}

/// One-frame-each-way codec; frames above `max_frame` bytes are refused in both directions.
#[derive(Clone, Debug)]
pub struct FrameCodec {
    max_frame: usize,
}

impl FrameCodec {
    /// A codec accepting frames up to `max_frame` bytes.
    pub fn new(max_frame: usize) -> Self {
        FrameCodec { max_frame }
    }
}

impl Default for FrameCodec {
    /// A codec with the protocol's [`MAX_FRAME`] limit.
    fn default() -> Self {
        FrameCodec::new(MAX_FRAME)
    }
}

/// Maps framing errors to the `io::Error` request_response expects, keeping the real I/O
/// error when there is one and `InvalidData` (with the reason) otherwise.
fn to_io(e: WireError) -> io::Error {
    match e {
        WireError::Io(e) => e,
        other => io::Error::new(io::ErrorKind::InvalidData, other),
    }
}

impl FrameCodec {
    async fn read<T: AsyncRead + Unpin + Send>(&self, io: &mut T) -> io::Result<Vec<u8>> {
        framing::read_frame(io, self.max_frame).await.map_err(to_io)
    }

    /// Reads a request frame; a framing violation is a [`Frame::Malformed`] request, not an
    /// error (see the module documentation). Other I/O errors (a reset connection) stay errors.
    async fn read_inbound<T: AsyncRead + Unpin + Send>(&self, io: &mut T) -> io::Result<Frame> {
        match framing::read_frame(io, self.max_frame).await {
            Ok(payload) => Ok(Frame::Data(payload)),
            Err(e @ WireError::FrameTooLarge { .. }) => Ok(Frame::Malformed(e.to_string())),
            Err(WireError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                Ok(Frame::Truncated)
            }
            Err(e) => Err(to_io(e)),
        }
    }

    async fn write<T: AsyncWrite + Unpin + Send>(&self, io: &mut T, data: &[u8]) -> io::Result<()> {
        if data.len() > self.max_frame {
            // Refuse locally: the peer would drop it anyway.
            return Err(to_io(WireError::FrameTooLarge {
                len: data.len(),
                max: self.max_frame,
            }));
        }
        framing::write_frame(io, data).await.map_err(to_io)?;
        // Half-close so the remote sees the end of this direction of the stream.
        io.close().await
    }
}

impl request_response::Codec for FrameCodec {
    type Protocol = StreamProtocol;
    type Request = Frame;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Frame>
    where
        T: AsyncRead + Unpin + Send,
    {
        self.read_inbound(io).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        self.read(io).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Frame,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        match req {
            Frame::Data(data) => self.write(io, &data).await,
            Frame::Malformed(_) | Frame::Truncated => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a malformed frame is never sent",
            )),
        }
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        self.write(io, &res).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::io::Cursor;
    use request_response::Codec;

    #[tokio::test]
    async fn request_and_response_round_trip() {
        let mut codec = FrameCodec::default();
        let mut buf = Cursor::new(Vec::new());
        codec
            .write_request(&MSG_PROTOCOL, &mut buf, Frame::Data(b"hello".to_vec()))
            .await
            .unwrap();
        let mut rd = Cursor::new(buf.into_inner());
        let got = codec.read_request(&MSG_PROTOCOL, &mut rd).await.unwrap();
        assert_eq!(got, Frame::Data(b"hello".to_vec()));

        let mut buf = Cursor::new(Vec::new());
        codec
            .write_response(&MEMBERSHIP_PROTOCOL, &mut buf, vec![1, 2, 3])
            .await
            .unwrap();
        let mut rd = Cursor::new(buf.into_inner());
        let got = codec
            .read_response(&MEMBERSHIP_PROTOCOL, &mut rd)
            .await
            .unwrap();
        assert_eq!(got, vec![1, 2, 3]);
    }

    #[tokio::test]
    async fn oversized_frames_are_refused_both_ways() {
        let mut small = FrameCodec::new(8);
        let mut buf = Cursor::new(Vec::new());
        let err = small
            .write_request(&MSG_PROTOCOL, &mut buf, Frame::Data(vec![0; 9]))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(buf.get_ref().is_empty(), "nothing may be written");

        // A frame written by a more permissive sender is refused by the reader.
        let mut big = FrameCodec::new(64);
        let mut buf = Cursor::new(Vec::new());
        big.write_request(&MSG_PROTOCOL, &mut buf, Frame::Data(vec![0; 9]))
            .await
            .unwrap();
        let bytes = buf.into_inner();
        // As a request: reported as malformed, with the sizes and none of the bytes.
        let got = small
            .read_request(&MSG_PROTOCOL, &mut Cursor::new(bytes.clone()))
            .await
            .unwrap();
        let Frame::Malformed(reason) = got else {
            panic!("an oversized request must be reported as malformed: {got:?}")
        };
        assert!(reason.contains("9 bytes"), "{reason}");
        // As a response: an InvalidData error, which fails the outbound request.
        let err = small
            .read_response(&MSG_PROTOCOL, &mut Cursor::new(bytes))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn truncated_frame_is_an_error() {
        let mut codec = FrameCodec::default();
        let mut buf = Cursor::new(Vec::new());
        codec
            .write_request(
                &MSG_PROTOCOL,
                &mut buf,
                Frame::Data(b"hello world".to_vec()),
            )
            .await
            .unwrap();
        let mut bytes = buf.into_inner();
        bytes.truncate(bytes.len() - 3);
        let got = codec
            .read_request(&MSG_PROTOCOL, &mut Cursor::new(bytes.clone()))
            .await
            .unwrap();
        assert_eq!(got, Frame::Truncated);
        let err = codec
            .read_response(&MSG_PROTOCOL, &mut Cursor::new(bytes))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        // A stream closed before any byte is malformed too (requests are never empty streams).
        let got = codec
            .read_request(&MSG_PROTOCOL, &mut Cursor::new(Vec::new()))
            .await
            .unwrap();
        assert_eq!(got, Frame::Truncated);
    }

    #[tokio::test]
    async fn malformed_frames_are_never_written() {
        let mut codec = FrameCodec::default();
        let mut buf = Cursor::new(Vec::new());
        assert!(
            codec
                .write_request(&MSG_PROTOCOL, &mut buf, Frame::Malformed("x".into()))
                .await
                .is_err()
        );
        assert!(buf.get_ref().is_empty());
    }
}

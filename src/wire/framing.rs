//! Length-prefixed frames over any `futures::io` byte stream (libp2p substreams implement the
//! traits; tokio streams do through `tokio_util::compat`).
//!
//! A frame is a `u32` big-endian payload length followed by the payload. The length is checked
//! against the limit before any payload byte is read, so a peer cannot make us allocate more
//! than the limit; and the payload buffer grows with the bytes that actually arrive, so
//! announcing a large frame allocates nothing by itself.

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::signed::WireError;

/// Largest payload a frame may carry, in bytes (64 KiB): far above any protocol message (an
/// offer or lease is well under 2 KiB) while keeping per-stream memory small.
pub const MAX_FRAME: usize = 64 * 1024;

/// Writes one frame: the payload length as `u32` big-endian, then the payload, then flushes.
///
/// # Errors
/// [`WireError::FrameTooLarge`] if `payload` exceeds [`MAX_FRAME`] (nothing is written);
/// [`WireError::Io`] if the writer fails.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    payload: &[u8],
) -> Result<(), WireError> {
    if payload.len() > MAX_FRAME {
        return Err(WireError::FrameTooLarge {
            len: payload.len(),
            max: MAX_FRAME,
        });
    }
    let len = u32::try_from(payload.len()).expect("MAX_FRAME to fit in a u32");
    // One buffer, one write: avoids a tiny header packet on transports without coalescing.
    let mut buf = Vec::with_capacity(4 + payload.len());
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(payload);
    w.write_all(&buf).await?;
    w.flush().await?;
    Ok(())
}

/// Reads one frame and returns its payload.
///
/// # Errors
/// [`WireError::FrameTooLarge`] if the header announces more than `max` bytes (checked before
/// allocating or reading the payload); [`WireError::Io`] if the stream fails or ends before the
/// whole frame arrived (`ErrorKind::UnexpectedEof`).
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R, max: usize) -> Result<Vec<u8>, WireError> {
    let mut header = [0u8; 4];
    r.read_exact(&mut header).await?;
    // u32 always fits in usize on the 32- and 64-bit targets we build for; saturate otherwise
    // so the limit check below still refuses it.
    let len = usize::try_from(u32::from_be_bytes(header)).unwrap_or(usize::MAX);
    if len > max {
        return Err(WireError::FrameTooLarge { len, max });
    }
    // Grow the buffer as bytes arrive rather than allocating `len` up front: a peer that
    // announces a 64 KiB frame and sends nothing more costs us nothing, and one that trickles
    // bytes costs what it sent.
    let mut payload = Vec::with_capacity(len.min(READ_CHUNK));
    let mut chunk = [0u8; READ_CHUNK];
    while payload.len() < len {
        let want = (len - payload.len()).min(READ_CHUNK);
        let n = r.read(&mut chunk[..want]).await?;
        if n == 0 {
            return Err(WireError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        payload.extend_from_slice(&chunk[..n]);
    }
    Ok(payload)
}

/// Bytes read at a time by [`read_frame`]; the payload buffer grows by at most this much
/// beyond what the peer actually sent.
const READ_CHUNK: usize = 4096;

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;
    use futures::io::Cursor;

    #[test]
    fn round_trip() {
        block_on(async {
            let mut buf = Cursor::new(Vec::new());
            write_frame(&mut buf, b"hello").await.unwrap();
            write_frame(&mut buf, b"").await.unwrap();
            let big = vec![0xabu8; MAX_FRAME];
            write_frame(&mut buf, &big).await.unwrap();
            let bytes = buf.into_inner();
            assert_eq!(&bytes[..9], &[0, 0, 0, 5, b'h', b'e', b'l', b'l', b'o']);

            let mut r = Cursor::new(bytes);
            assert_eq!(read_frame(&mut r, MAX_FRAME).await.unwrap(), b"hello");
            assert_eq!(read_frame(&mut r, MAX_FRAME).await.unwrap(), b"");
            assert_eq!(read_frame(&mut r, MAX_FRAME).await.unwrap(), big);
            // The stream is exhausted: a clean end is an EOF error, not an empty frame.
            assert!(matches!(
                read_frame(&mut r, MAX_FRAME).await,
                Err(WireError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof
            ));
        });
    }

    #[test]
    fn oversized_write_is_refused_and_writes_nothing() {
        block_on(async {
            let mut buf = Cursor::new(Vec::new());
            let too_big = vec![0u8; MAX_FRAME + 1];
            assert!(matches!(
                write_frame(&mut buf, &too_big).await,
                Err(WireError::FrameTooLarge { len, max }) if len == MAX_FRAME + 1 && max == MAX_FRAME
            ));
            assert!(buf.into_inner().is_empty());
        });
    }

    #[test]
    fn oversized_header_is_refused_before_reading_the_body() {
        block_on(async {
            let announced = u32::try_from(MAX_FRAME + 1).unwrap();
            // Only the header: the body is never there, and must not be waited for.
            let mut r = Cursor::new(announced.to_be_bytes().to_vec());
            assert!(matches!(
                read_frame(&mut r, MAX_FRAME).await,
                Err(WireError::FrameTooLarge { len, max }) if len == MAX_FRAME + 1 && max == MAX_FRAME
            ));
            assert_eq!(r.position(), 4);
            // A smaller caller-chosen limit applies too.
            let mut r = Cursor::new([0u8, 0, 0, 11].to_vec());
            assert!(matches!(
                read_frame(&mut r, 10).await,
                Err(WireError::FrameTooLarge { len: 11, max: 10 })
            ));
            let mut r = Cursor::new(u32::MAX.to_be_bytes().to_vec());
            assert!(matches!(
                read_frame(&mut r, MAX_FRAME).await,
                Err(WireError::FrameTooLarge { .. })
            ));
        });
    }

    #[test]
    fn truncated_frame_is_an_io_error() {
        block_on(async {
            let mut r = Cursor::new(vec![0u8, 0, 0, 10, 1, 2, 3]);
            assert!(matches!(
                read_frame(&mut r, MAX_FRAME).await,
                Err(WireError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof
            ));
            let mut r = Cursor::new(vec![0u8, 0]);
            assert!(matches!(
                read_frame(&mut r, MAX_FRAME).await,
                Err(WireError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof
            ));
        });
    }
}

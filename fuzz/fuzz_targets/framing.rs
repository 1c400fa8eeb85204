//! The frame reader (`wire::framing::read_frame`): every byte a peer sends on a stream goes
//! through it first.
//!
//! Input: one byte choosing the reader's limit, then the stream. Properties: no panic; no
//! payload above the limit; an oversized header is refused without reading on; the frames
//! read, written again with `write_frame`, give back exactly the bytes they were read from.

#![no_main]

use futures::executor::block_on;
use futures::io::Cursor;
use leasewire::wire::framing::{MAX_FRAME, read_frame, write_frame};
use leasewire::wire::signed::WireError;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    leasewire_fuzz::cap_allocations(data.len());
    let Some((&sel, stream)) = data.split_first() else {
        return;
    };
    // Even: the protocol's limit. Odd: a small one, so short inputs reach the limit check.
    let max = if sel & 1 == 0 {
        MAX_FRAME
    } else {
        usize::from(sel) * 4
    };
    block_on(async {
        let mut r = Cursor::new(stream);
        let mut frames = Vec::new();
        loop {
            let before = r.position();
            match read_frame(&mut r, max).await {
                Ok(p) => {
                    assert!(
                        p.len() <= max,
                        "frame of {} bytes above the limit {max}",
                        p.len()
                    );
                    frames.push(p);
                }
                Err(WireError::FrameTooLarge { len, max: m }) => {
                    assert_eq!(m, max);
                    assert!(len > max);
                    // Refused on the header alone: the body is not read.
                    assert_eq!(r.position(), before + 4);
                    break;
                }
                Err(WireError::Io(e)) => {
                    assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
                    break;
                }
                Err(e) => panic!("unexpected frame error: {e}"),
            }
        }
        let mut out = Cursor::new(Vec::new());
        for f in &frames {
            write_frame(&mut out, f)
                .await
                .expect("a frame we read to be writable");
        }
        let out = out.into_inner();
        assert_eq!(
            out.as_slice(),
            &stream[..out.len()],
            "re-encoded frames differ"
        );
        let mut again = Cursor::new(out.as_slice());
        for f in &frames {
            assert_eq!(&read_frame(&mut again, max).await.expect("re-read"), f);
        }
    });
});

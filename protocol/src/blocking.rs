//! Blocking frame I/O over `std::io`, for fakes and tests without tokio.

use std::io::{ErrorKind, Read, Write};

use crate::codec::{check_len, decode_body, encode_frame, HEADER_LEN};
use crate::{Message, ProtocolError};

/// Reads one frame body. `Ok(None)` on a clean end of stream before any
/// header byte; [`ProtocolError::TruncatedFrame`] if it ends inside a frame.
pub fn read_frame<R: Read>(reader: &mut R, max_frame: usize) -> Result<Option<Vec<u8>>, ProtocolError> {
    let mut header = [0u8; HEADER_LEN];
    let got = read_full(reader, &mut header)?;
    if got == 0 {
        return Ok(None);
    }
    if got < HEADER_LEN {
        return Err(ProtocolError::TruncatedFrame { buffered: got });
    }
    let len = u32::from_be_bytes(header) as u64;
    check_len(len, max_frame)?;
    let mut body = vec![0u8; len as usize];
    let got = read_full(reader, &mut body)?;
    if got < body.len() {
        return Err(ProtocolError::TruncatedFrame {
            buffered: HEADER_LEN + got,
        });
    }
    Ok(Some(body))
}

/// Reads and decodes one message; `Ok(None)` on a clean end of stream.
pub fn read_message<R: Read>(reader: &mut R, max_frame: usize) -> Result<Option<Message>, ProtocolError> {
    match read_frame(reader, max_frame)? {
        Some(body) => decode_body(&body).map(Some),
        None => Ok(None),
    }
}

/// Encodes and writes one message as a frame, then flushes.
pub fn write_message<W: Write>(
    writer: &mut W,
    message: &Message,
    max_frame: usize,
) -> Result<(), ProtocolError> {
    let frame = encode_frame(message, max_frame)?;
    writer.write_all(&frame)?;
    writer.flush()?;
    Ok(())
}

/// Fills `buf` unless the stream ends first; returns how many bytes were read.
fn read_full<R: Read>(reader: &mut R, buf: &mut [u8]) -> Result<usize, ProtocolError> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(filled)
}

//! A bound on MessagePack nesting, checked before any recursive decoding.
//!
//! serde decoders recurse once per nested array or map, so a body nested
//! deep enough overflows the decoding thread's stack and aborts the whole
//! process (a debug build needs a few KiB of stack per level). Every body is
//! therefore scanned first by [`nesting_depth`], an iterative pass over the
//! bytes (O(n), no allocation, a fixed 8 KiB table on the stack), and
//! refused with [`ProtocolError::TooDeep`] past [`MAX_DEPTH`]. Bodies deeper
//! than [`INLINE_DEPTH`] (and within the limit) are then decoded on a helper
//! thread with a [`DEEP_STACK`]-byte stack, so decoding never depends on the
//! stack of the calling thread (a 2 MiB tokio worker, for instance).

use crate::ProtocolError;

/// The deepest nesting of arrays and maps a frame body may have, counting
/// the message's own map as level 1 (so a reply's `result` may nest
/// `MAX_DEPTH - 1` deep). Scalars, strings, binaries and extension values
/// add no level.
///
/// 1024 is as deep as msgpack-python packs and unpacks (its packer and
/// unpacker stop past 1024 levels; the pure-Python fallback stops at 511),
/// and as deep as rmp-serde decodes by default: nothing the Python runtime
/// can send is refused.
pub const MAX_DEPTH: usize = 1024;

/// Bodies nested at most this deep are decoded on the calling thread; deeper
/// ones (up to [`MAX_DEPTH`]) on a helper thread with [`DEEP_STACK`] bytes of
/// stack. At this depth a debug build uses well under 512 KiB of stack.
pub const INLINE_DEPTH: usize = 64;

/// The stack size of the helper thread that decodes bodies nested deeper
/// than [`INLINE_DEPTH`]: room for [`MAX_DEPTH`] levels in a debug build,
/// many times over. Reserved address space; only the pages used are touched.
pub const DEEP_STACK: usize = 64 * 1024 * 1024;

/// How deeply arrays and maps nest in the first MessagePack value of
/// `bytes` (0 for a scalar, 1 for `[]` or `[1, 2]`, 2 for `[[1]]`, ...).
///
/// Errors: [`ProtocolError::TooDeep`] as soon as the value goes past
/// [`MAX_DEPTH`] (the rest is not read), [`ProtocolError::Malformed`] for a
/// value that ends early or uses the never-valid marker `0xc1`. Bytes after
/// the first value are ignored. Runs in O(`bytes.len()`): every item takes
/// at least one byte.
pub fn nesting_depth(bytes: &[u8]) -> Result<usize, ProtocolError> {
    // open[i]: items still to read in the container at depth i + 1.
    let mut open = [0u64; MAX_DEPTH];
    let mut depth = 0usize;
    let mut deepest = 0usize;
    let mut top_left = 1u64;
    let mut pos = 0usize;
    loop {
        while depth > 0 && open[depth - 1] == 0 {
            depth -= 1;
        }
        if depth == 0 {
            if top_left == 0 {
                return Ok(deepest);
            }
            top_left -= 1;
        } else {
            open[depth - 1] -= 1;
        }
        let marker = *bytes.get(pos).ok_or_else(|| ends_early(pos))?;
        pos += 1;
        let item = match marker {
            0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => Item::Skip(0),
            0x80..=0x8f => Item::Container(2 * u64::from(marker & 0x0f)),
            0x90..=0x9f => Item::Container(u64::from(marker & 0x0f)),
            0xa0..=0xbf => Item::Skip(u64::from(marker & 0x1f)),
            0xc1 => {
                return Err(ProtocolError::Malformed {
                    reason: format!("invalid MessagePack marker 0xc1 at byte {}", pos - 1),
                })
            }
            // bin 8/16/32, str 8/16/32: a length, then that many bytes.
            0xc4 | 0xd9 => Item::Skip(read_len(bytes, &mut pos, 1)?),
            0xc5 | 0xda => Item::Skip(read_len(bytes, &mut pos, 2)?),
            0xc6 | 0xdb => Item::Skip(read_len(bytes, &mut pos, 4)?),
            // ext 8/16/32: a length, a type byte, then the data.
            0xc7 => Item::Skip(read_len(bytes, &mut pos, 1)? + 1),
            0xc8 => Item::Skip(read_len(bytes, &mut pos, 2)? + 1),
            0xc9 => Item::Skip(read_len(bytes, &mut pos, 4)? + 1),
            0xca => Item::Skip(4),
            0xcb => Item::Skip(8),
            0xcc | 0xd0 => Item::Skip(1),
            0xcd | 0xd1 => Item::Skip(2),
            0xce | 0xd2 => Item::Skip(4),
            0xcf | 0xd3 => Item::Skip(8),
            // fixext 1/2/4/8/16: a type byte, then the data.
            0xd4 => Item::Skip(2),
            0xd5 => Item::Skip(3),
            0xd6 => Item::Skip(5),
            0xd7 => Item::Skip(9),
            0xd8 => Item::Skip(17),
            0xdc => Item::Container(read_len(bytes, &mut pos, 2)?),
            0xdd => Item::Container(read_len(bytes, &mut pos, 4)?),
            0xde => Item::Container(2 * read_len(bytes, &mut pos, 2)?),
            0xdf => Item::Container(2 * read_len(bytes, &mut pos, 4)?),
        };
        match item {
            Item::Skip(n) => {
                let end = usize::try_from(n)
                    .ok()
                    .and_then(|n| pos.checked_add(n))
                    .filter(|&end| end <= bytes.len())
                    .ok_or_else(|| ends_early(bytes.len()))?;
                pos = end;
            }
            Item::Container(items) => {
                if depth == MAX_DEPTH {
                    return Err(ProtocolError::TooDeep { limit: MAX_DEPTH });
                }
                open[depth] = items;
                depth += 1;
                deepest = deepest.max(depth);
            }
        }
    }
}

enum Item {
    /// A leaf followed by this many payload bytes.
    Skip(u64),
    /// An array or map holding this many items (a map's keys and values).
    Container(u64),
}

/// Reads a big-endian length of `width` bytes at `pos`.
fn read_len(bytes: &[u8], pos: &mut usize, width: usize) -> Result<u64, ProtocolError> {
    let raw = bytes
        .get(*pos..*pos + width)
        .ok_or_else(|| ends_early(bytes.len()))?;
    *pos += width;
    Ok(raw.iter().fold(0u64, |n, b| (n << 8) | u64::from(*b)))
}

fn ends_early(at: usize) -> ProtocolError {
    ProtocolError::Malformed {
        reason: format!("MessagePack value ends early at byte {at}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested_arrays(levels: usize) -> Vec<u8> {
        let mut bytes = vec![0x91; levels];
        bytes.push(0x01);
        bytes
    }

    #[test]
    fn scalars_and_flat_containers() {
        assert_eq!(nesting_depth(&[0x01]).unwrap(), 0);
        assert_eq!(nesting_depth(&[0x90]).unwrap(), 1);
        assert_eq!(nesting_depth(&[0x80]).unwrap(), 1);
        assert_eq!(nesting_depth(&[0x92, 0x01, 0x02]).unwrap(), 1);
        assert_eq!(nesting_depth(&[0x92, 0x90, 0x91, 0x90]).unwrap(), 3);
        assert_eq!(nesting_depth(&[0x92, 0x90, 0x90]).unwrap(), 2);
        assert_eq!(nesting_depth(&nested_arrays(3)).unwrap(), 3);
    }

    #[test]
    fn the_limit_is_inclusive() {
        assert_eq!(nesting_depth(&nested_arrays(MAX_DEPTH)).unwrap(), MAX_DEPTH);
        assert!(matches!(
            nesting_depth(&nested_arrays(MAX_DEPTH + 1)),
            Err(ProtocolError::TooDeep { limit: MAX_DEPTH })
        ));
    }

    #[test]
    fn payload_bytes_are_skipped_not_read_as_markers() {
        // bin 8 of three 0x91 bytes, then nothing nested.
        assert_eq!(nesting_depth(&[0x91, 0xc4, 3, 0x91, 0x91, 0x91]).unwrap(), 1);
        // fixext 4 whose data looks like arrays.
        assert_eq!(nesting_depth(&[0xd6, 1, 0x91, 0x91, 0x91, 0x91]).unwrap(), 0);
        // ext 8 of length 2.
        assert_eq!(nesting_depth(&[0x91, 0xc7, 2, 5, 0x91, 0x91]).unwrap(), 1);
    }

    #[test]
    fn bad_bytes_are_malformed() {
        for bytes in [
            &[][..],
            &[0xc1],
            &[0x92, 0x01],
            &[0xc4, 5, 1],
            &[0xdd, 0xff, 0xff, 0xff, 0xff],
            &[0xdf, 0xff],
        ] {
            assert!(
                matches!(nesting_depth(bytes), Err(ProtocolError::Malformed { .. })),
                "{bytes:?}"
            );
        }
    }
}

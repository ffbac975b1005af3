//! Byte-level vocabulary of the trace format: frame magics, event op codes, value tags,
//! and the varint / zigzag integer encodings. ARCHITECTURE.md ("Trace format") is the
//! normative description; the constants here must match it exactly.

// ---- frames ----

/// Magic (u32 LE) of the zstd skippable frame that carries the header and the trailer.
pub const SKIPPABLE_MAGIC: u32 = 0x184D_2A5E;
/// Any magic with these upper 28 bits is a zstd skippable frame (the low nibble is free).
pub const SKIPPABLE_MAGIC_MASK: u32 = 0xFFFF_FFF0;
/// Magic (u32 LE) of a standard zstd frame: one chunk of events.
pub const ZSTD_MAGIC: u32 = 0xFD2F_B528;
/// Bit of a zstd frame header descriptor (the byte after the magic) that says the frame
/// ends with a content checksum.
pub const ZSTD_CHECKSUM_FLAG: u8 = 0x04;
/// First bytes of our skippable-frame payload, so a foreign skippable frame is not mistaken
/// for ours.
pub const RECORD_MAGIC: &[u8; 4] = b"RTRC";
/// Record kind byte after the format version: the header JSON follows.
pub const RECORD_KIND_HEADER: u8 = 0;
/// Record kind byte after the format version: the trailer JSON follows.
pub const RECORD_KIND_TRAILER: u8 = 1;
/// Length of `RECORD_MAGIC` + u16 format version + u8 record kind.
pub const RECORD_PREFIX_LEN: usize = 7;

// ---- events (op codes) ----

pub const OP_CALL: u8 = 0x01;
pub const OP_RAISE: u8 = 0x02;
pub const OP_FN_DEF: u8 = 0x03;
pub const OP_THREAD: u8 = 0x04;
pub const OP_THREAD_START: u8 = 0x05;
pub const OP_THREAD_EXIT: u8 = 0x06;
pub const OP_SIGNAL: u8 = 0x07;
pub const OP_CALLBACK_ENTER: u8 = 0x08;
pub const OP_CALLBACK_RETURN: u8 = 0x09;
pub const OP_PROCESS: u8 = 0x0A;
pub const OP_EXCEPTION: u8 = 0x0B;
pub const OP_END: u8 = 0x0C;
pub const OP_COLLECT: u8 = 0x0D;

/// FN_DEF flag: CALL and RAISE events of this fn carry a u32 LE argument digest.
pub const FN_HAS_DIGEST: u8 = 0x01;
/// FN_DEF flag: calls of this fn are points of the thread schedule: a replay takes them in
/// the recorded order across threads. Calls without it (clock reads, entropy...) are
/// replayed in their thread's own order only, without waiting for other threads.
pub const FN_SYNC: u8 = 0x02;

// ---- values (tags) ----

pub const TAG_NONE: u8 = 0x00;
pub const TAG_FALSE: u8 = 0x01;
pub const TAG_TRUE: u8 = 0x02;
pub const TAG_INT: u8 = 0x03;
pub const TAG_BIG_INT: u8 = 0x04;
pub const TAG_FLOAT: u8 = 0x05;
/// Only legal as the top-level result of a CALL: zigzag varint of `bits - slot`.
pub const TAG_FLOAT_DELTA: u8 = 0x06;
/// Only legal as the top-level result of a CALL: zigzag varint of `value - slot`.
pub const TAG_INT_DELTA: u8 = 0x07;
pub const TAG_STR: u8 = 0x08;
pub const TAG_BYTES: u8 = 0x09;
pub const TAG_TUPLE: u8 = 0x0A;
pub const TAG_LIST: u8 = 0x0B;
pub const TAG_DICT: u8 = 0x0C;
pub const TAG_HANDLE: u8 = 0x0D;
pub const TAG_STR_SURROGATES: u8 = 0x0E;
pub const TAG_REDACTED: u8 = 0x0F;
/// An instance of a named type rebuilt from its state: `type(*state)` (struct sequences
/// such as `os.stat_result`, `time.struct_time`).
pub const TAG_OBJECT: u8 = 0x10;

// ---- integers ----

/// The longest LEB128 encoding of a u64.
pub const MAX_VARINT_LEN: usize = 10;

/// Maps signed to unsigned so that small magnitudes of either sign encode short.
#[inline]
pub fn zigzag_encode(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

#[inline]
pub fn zigzag_decode(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// Appends `v` as an unsigned LEB128 varint. Never allocates unless `buf` must grow.
/// Always inlined: it runs two or three times per recorded event, mostly for one byte.
#[inline(always)]
pub fn write_varint(buf: &mut Vec<u8>, mut v: u64) {
    // One bounds/capacity check for the common one-byte case, a stack scratch otherwise,
    // so the hot path is a single `extend_from_slice`.
    if v < 0x80 {
        buf.push(v as u8);
        return;
    }
    let mut scratch = [0u8; MAX_VARINT_LEN];
    let mut len = 0;
    while v >= 0x80 {
        scratch[len] = (v as u8) | 0x80;
        v >>= 7;
        len += 1;
    }
    scratch[len] = v as u8;
    buf.extend_from_slice(&scratch[..=len]);
}

/// Appends `v` zigzag-encoded as a varint.
#[inline]
pub fn write_zigzag(buf: &mut Vec<u8>, v: i64) {
    write_varint(buf, zigzag_encode(v));
}

/// Why a varint could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VarintError {
    /// The input ended inside the varint.
    Truncated,
    /// More than 64 bits of payload (an 11th byte, or a 10th byte above 1).
    Overflow,
}

/// Reads an unsigned LEB128 varint from `bytes` at `*pos`, advancing `*pos` past it.
/// Never panics; on error `*pos` is unchanged.
#[inline]
pub fn read_varint(bytes: &[u8], pos: &mut usize) -> Result<u64, VarintError> {
    let mut value: u64 = 0;
    let mut at = *pos;
    for i in 0..MAX_VARINT_LEN {
        let byte = *bytes.get(at).ok_or(VarintError::Truncated)?;
        at += 1;
        let payload = u64::from(byte & 0x7F);
        // The 10th byte holds only bit 63; anything more would silently drop bits.
        if i == MAX_VARINT_LEN - 1 && payload > 1 {
            return Err(VarintError::Overflow);
        }
        value |= payload << (7 * i);
        if byte & 0x80 == 0 {
            *pos = at;
            return Ok(value);
        }
    }
    Err(VarintError::Overflow)
}

/// Reads a zigzag varint (see [`read_varint`]).
#[inline]
pub fn read_zigzag(bytes: &[u8], pos: &mut usize) -> Result<i64, VarintError> {
    read_varint(bytes, pos).map(zigzag_decode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_round_trips_edges() {
        for v in [
            0,
            1,
            127,
            128,
            255,
            300,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut buf = Vec::new();
            write_varint(&mut buf, v);
            assert!(buf.len() <= MAX_VARINT_LEN);
            let mut pos = 0;
            assert_eq!(read_varint(&buf, &mut pos), Ok(v));
            assert_eq!(pos, buf.len());
        }
    }

    #[test]
    fn zigzag_round_trips_edges() {
        for v in [0, 1, -1, 63, -64, 64, i64::MAX, i64::MIN] {
            assert_eq!(zigzag_decode(zigzag_encode(v)), v);
        }
        assert_eq!(zigzag_encode(-1), 1);
        assert_eq!(zigzag_encode(1), 2);
    }

    #[test]
    fn varint_rejects_bad_input() {
        let mut pos = 0;
        assert_eq!(read_varint(&[], &mut pos), Err(VarintError::Truncated));
        assert_eq!(
            read_varint(&[0x80, 0x80], &mut pos),
            Err(VarintError::Truncated)
        );
        assert_eq!(
            read_varint(&[0xFF; 10], &mut pos),
            Err(VarintError::Overflow)
        );
        let mut ten = [0xFF; 10];
        ten[9] = 0x02;
        assert_eq!(read_varint(&ten, &mut pos), Err(VarintError::Overflow));
        assert_eq!(pos, 0);
        ten[9] = 0x01;
        assert_eq!(read_varint(&ten, &mut pos), Ok(u64::MAX));
    }
}

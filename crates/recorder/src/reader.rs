//! Reading a trace: map the file, check the header, walk the frames, decompress each chunk
//! and decode its events.
//!
//! Every byte sequence is handled without panicking: a damaged or cut-short trace yields the
//! events before the damage, then one [`TraceError`] naming the byte offset of the frame at
//! fault, then nothing. Reading never executes code; exception types stay names.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::iter::FusedIterator;
use std::path::{Path, PathBuf};

use crate::event::{Event, EventRecord, FnDef, ProcessKind, RecordedError, Value};
use crate::header::{TraceHeader, TraceTrailer};
use crate::wire::*;
use crate::FORMAT_VERSION;

/// Largest decompressed chunk we accept. The writer's chunks are ~64 KiB; a frame claiming
/// more than this is corrupt, and trusting it could exhaust memory.
pub const MAX_CHUNK_SIZE: u64 = 256 * 1024 * 1024;

/// Deepest nesting of tuples, lists and dicts the reader decodes; deeper is a bad event.
/// Bounds the decoder's recursion, so a hostile trace cannot overflow the stack.
pub const MAX_VALUE_DEPTH: usize = 256;

/// A trace that cannot be read (further).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceError {
    /// The trace file, or `None` for a trace read from memory.
    pub path: Option<PathBuf>,
    /// Byte offset in the file: of the frame at fault, or where the data ends.
    pub offset: u64,
    pub kind: TraceErrorKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TraceErrorKind {
    /// The file could not be opened or mapped.
    Io(String),
    /// The file does not start with a retrace header frame.
    NotATrace,
    /// A retrace trace, but of a format version this reader does not know.
    UnsupportedVersion(u16),
    /// The data ends inside a frame, or without a trailer: the recording was cut short.
    Truncated,
    /// A frame is damaged (bad checksum, bad zstd data, unreadable JSON record).
    CorruptFrame(String),
    /// A chunk decompressed fine but its events do not decode.
    BadEvent(String),
}

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match &self.path {
            Some(path) => path.display().to_string(),
            None => "(in memory)".to_owned(),
        };
        let offset = self.offset;
        match &self.kind {
            TraceErrorKind::Io(message) => write!(f, "cannot read trace {name}: {message}"),
            TraceErrorKind::NotATrace => write!(f, "{name} is not a retrace trace (no trace header at byte offset {offset})"),
            TraceErrorKind::UnsupportedVersion(version) => write!(
                f,
                "trace {name} has format version {version}, but this retrace reads format version {FORMAT_VERSION}"
            ),
            TraceErrorKind::Truncated => {
                write!(f, "trace {name} is truncated at byte offset {offset} (the recording was cut short)")
            }
            TraceErrorKind::CorruptFrame(message) => {
                write!(f, "trace {name} is corrupt at byte offset {offset}: {message}")
            }
            TraceErrorKind::BadEvent(message) => {
                write!(f, "trace {name} has a bad event in the chunk at byte offset {offset}: {message}")
            }
        }
    }
}

impl std::error::Error for TraceError {}

/// The trace bytes: mapped from a file, or owned.
enum TraceBytes {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl TraceBytes {
    fn as_slice(&self) -> &[u8] {
        match self {
            TraceBytes::Mapped(map) => map,
            TraceBytes::Owned(bytes) => bytes,
        }
    }
}

/// A defined fn and its delta slot (see [`crate::ChunkEncoder::float_delta`]), which is
/// stale, reading as 0, unless its generation is the reader's current chunk generation.
struct FnEntry {
    def: FnDef,
    slot_generation: u32,
    slot_bits: u64,
}

pub struct TraceReader {
    bytes: TraceBytes,
    path: Option<PathBuf>,
    header: TraceHeader,
    /// Offset of the first frame after the header.
    body_offset: u64,
    fns: HashMap<u32, FnEntry>,
    trailer: Option<TraceTrailer>,
    /// Bumped at every chunk so all delta slots go stale at once; never 0.
    slot_generation: u32,
}

impl TraceReader {
    /// Maps the file and reads and validates its header frame.
    pub fn open(path: &Path) -> Result<TraceReader, TraceError> {
        let io_error = |error: std::io::Error| TraceError {
            path: Some(path.to_path_buf()),
            offset: 0,
            kind: TraceErrorKind::Io(error.to_string()),
        };
        let file = File::open(path).map_err(io_error)?;
        let len = file.metadata().map_err(io_error)?.len();
        let bytes = if len == 0 {
            TraceBytes::Owned(Vec::new())
        } else {
            // SAFETY: the map is read-only and we never hand out references that outlive the
            // reader. Mapping is unsound only if another process truncates or rewrites the
            // file while it is mapped; trace files are append-only, written once by the
            // recorder and never modified after, so a reader sees at worst a shorter file
            // than the writer will produce, which the frame walk reports as truncation.
            let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io_error)?;
            TraceBytes::Mapped(map)
        };
        Self::from_source(bytes, Some(path.to_path_buf()))
    }

    /// Reads a trace held in memory.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<TraceReader, TraceError> {
        Self::from_source(TraceBytes::Owned(bytes), None)
    }

    fn from_source(bytes: TraceBytes, path: Option<PathBuf>) -> Result<TraceReader, TraceError> {
        let (header, body_offset) =
            parse_header(bytes.as_slice()).map_err(|(offset, kind)| TraceError {
                path: path.clone(),
                offset,
                kind,
            })?;
        Ok(TraceReader {
            bytes,
            path,
            header,
            body_offset,
            fns: HashMap::new(),
            trailer: None,
            slot_generation: 1,
        })
    }

    pub fn header(&self) -> &TraceHeader {
        &self.header
    }

    pub fn file_len(&self) -> u64 {
        self.bytes.as_slice().len() as u64
    }

    /// Iterates over the events from the first chunk. After an error it yields `None`.
    /// Calling it again starts over.
    pub fn events(&mut self) -> Events<'_> {
        Events {
            next_frame: self.body_offset,
            reader: self,
            chunk: Vec::new(),
            chunk_pos: 0,
            events_end: 0,
            payload_pos: 0,
            chunk_offset: 0,
            chunk_elapsed_ns: 0,
            thread: 0,
            next_index: 0,
            trailer_seen: false,
            done: false,
            decompressor: None,
        }
    }

    /// The fn defined with `id` by an FN_DEF read so far.
    pub fn fn_def(&self, id: u32) -> Option<&FnDef> {
        self.fns.get(&id).map(|entry| &entry.def)
    }

    /// The trailer, once iteration has reached it (the recording was closed cleanly).
    pub fn trailer(&self) -> Option<&TraceTrailer> {
        self.trailer.as_ref()
    }
}

/// Reads the header frame at the start of `bytes`: returns the header and the offset after
/// the frame, or the error offset and kind. A prefix of a valid header (including the empty
/// file) is `Truncated`: the recording was cut short before the header was complete.
fn parse_header(bytes: &[u8]) -> Result<(TraceHeader, u64), (u64, TraceErrorKind)> {
    let magic = SKIPPABLE_MAGIC.to_le_bytes();
    let available_magic = &bytes[..bytes.len().min(4)];
    if available_magic != &magic[..available_magic.len()] {
        return Err((0, TraceErrorKind::NotATrace));
    }
    if bytes.len() < 8 {
        return Err((0, TraceErrorKind::Truncated));
    }
    let payload_len = u64::from(read_u32_le(bytes, 4));
    let payload = &bytes[8..];
    // Check what is there of our own prefix first: a foreign file cut short is still foreign.
    let available_prefix = &payload[..payload.len().min(RECORD_MAGIC.len())];
    if payload_len < RECORD_PREFIX_LEN as u64
        || available_prefix != &RECORD_MAGIC[..available_prefix.len()]
    {
        return Err((0, TraceErrorKind::NotATrace));
    }
    if (payload.len() as u64) < payload_len {
        return Err((0, TraceErrorKind::Truncated));
    }
    let payload = &payload[..payload_len as usize];
    let version = u16::from_le_bytes([payload[4], payload[5]]);
    if version != FORMAT_VERSION {
        return Err((0, TraceErrorKind::UnsupportedVersion(version)));
    }
    if payload[6] != RECORD_KIND_HEADER {
        return Err((
            0,
            TraceErrorKind::CorruptFrame(format!(
                "the first record has kind {}, not a header",
                payload[6]
            )),
        ));
    }
    let header: TraceHeader =
        serde_json::from_slice(&payload[RECORD_PREFIX_LEN..]).map_err(|e| {
            (
                0,
                TraceErrorKind::CorruptFrame(format!("unreadable header JSON: {e}")),
            )
        })?;
    Ok((header, 8 + payload_len))
}

/// `bytes[at..at + 4]` as u32 LE; the caller has checked the length.
fn read_u32_le(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// Iterator over a trace's events; see [`TraceReader::events`].
pub struct Events<'r> {
    reader: &'r mut TraceReader,
    /// File offset of the next frame to read.
    next_frame: u64,
    /// The current chunk, decompressed; the buffer is reused from chunk to chunk.
    chunk: Vec<u8>,
    /// Where the next event starts, and where the events section ends (the payload
    /// section of value contents follows it).
    chunk_pos: usize,
    events_end: usize,
    /// Where the next value's contents start, within the chunk's payload section.
    payload_pos: usize,
    chunk_offset: u64,
    chunk_elapsed_ns: u64,
    thread: u32,
    next_index: u64,
    trailer_seen: bool,
    done: bool,
    decompressor: Option<zstd::bulk::Decompressor<'static>>,
}

/// What went wrong, before the offset and path are attached.
type Failure = (u64, TraceErrorKind);

impl Events<'_> {
    /// The fn defined with `id` so far (the reader's table, usable during iteration).
    pub fn fn_def(&self, id: u32) -> Option<&FnDef> {
        self.reader.fn_def(id)
    }

    /// The trailer, once iteration has reached it.
    pub fn trailer(&self) -> Option<&TraceTrailer> {
        self.reader.trailer()
    }

    fn fail(&mut self, (offset, kind): Failure) -> TraceError {
        self.done = true;
        TraceError {
            path: self.reader.path.clone(),
            offset,
            kind,
        }
    }

    /// Walks frames from `next_frame` until a chunk is loaded (`Ok(true)`) or the trace
    /// ends cleanly after its trailer (`Ok(false)`).
    fn load_next_chunk(&mut self) -> Result<bool, Failure> {
        loop {
            let bytes = self.reader.bytes.as_slice();
            let offset = self.next_frame;
            // `next_frame` only ever advances within the file.
            let rest = &bytes[offset as usize..];
            if self.trailer_seen {
                if rest.is_empty() {
                    return Ok(false);
                }
                return Err((
                    offset,
                    TraceErrorKind::CorruptFrame("data after the trailer".to_owned()),
                ));
            }
            if rest.len() < 4 {
                // Includes the end of the file without a trailer.
                return Err((offset, TraceErrorKind::Truncated));
            }
            let magic = read_u32_le(rest, 0);
            if magic & SKIPPABLE_MAGIC_MASK == SKIPPABLE_MAGIC & SKIPPABLE_MAGIC_MASK {
                if rest.len() < 8 {
                    return Err((offset, TraceErrorKind::Truncated));
                }
                let frame_len = 8 + u64::from(read_u32_le(rest, 4));
                if (rest.len() as u64) < frame_len {
                    return Err((offset, TraceErrorKind::Truncated));
                }
                let payload = &rest[8..frame_len as usize];
                self.next_frame = offset + frame_len;
                if magic == SKIPPABLE_MAGIC
                    && payload.len() >= RECORD_PREFIX_LEN
                    && payload.starts_with(RECORD_MAGIC)
                {
                    if let Some(trailer) = parse_record(offset, payload, self.next_index)? {
                        self.reader.trailer = Some(trailer);
                        self.trailer_seen = true;
                    }
                }
                // Anyone else's skippable frame is skipped, as zstd itself does.
                continue;
            }
            if magic == ZSTD_MAGIC {
                self.load_chunk(offset)?;
                return Ok(true);
            }
            return Err((
                offset,
                TraceErrorKind::CorruptFrame(format!("unknown frame magic {magic:#010x}")),
            ));
        }
    }

    /// Decompresses the zstd frame at `offset` into `self.chunk` and reads its chunk header.
    fn load_chunk(&mut self, offset: u64) -> Result<(), Failure> {
        let corrupt = |message: String| (offset, TraceErrorKind::CorruptFrame(message));
        let rest = &self.reader.bytes.as_slice()[offset as usize..];
        let frame_len = zstd::zstd_safe::find_frame_compressed_size(rest).map_err(|code| {
            // zstd reports a frame that runs past the end of its input as "wrong source size".
            let src_size_wrong = 0usize.wrapping_sub(
                zstd::zstd_safe::zstd_sys::ZSTD_ErrorCode::ZSTD_error_srcSize_wrong as usize,
            );
            if code == src_size_wrong {
                (offset, TraceErrorKind::Truncated)
            } else {
                corrupt(format!(
                    "bad zstd frame: {}",
                    zstd::zstd_safe::get_error_name(code)
                ))
            }
        })?;
        // Defensive: zstd never reports a frame longer than its input.
        let frame = rest
            .get(..frame_len)
            .ok_or((offset, TraceErrorKind::Truncated))?;
        // Our chunks always carry a checksum (see the writer). Insisting on it catches damage
        // to the flag itself, which would otherwise turn the checksum into a bogus next frame.
        if frame
            .get(4)
            .is_some_and(|descriptor| descriptor & ZSTD_CHECKSUM_FLAG == 0)
        {
            return Err(corrupt("chunk frame without a checksum".to_owned()));
        }
        let content_size = match zstd::zstd_safe::get_frame_content_size(frame) {
            Ok(Some(size)) if size <= MAX_CHUNK_SIZE => size as usize,
            Ok(Some(size)) => {
                return Err(corrupt(format!(
                    "frame claims {size} bytes, over the {MAX_CHUNK_SIZE} limit"
                )))
            }
            Ok(None) => return Err(corrupt("zstd frame without a content size".to_owned())),
            Err(_) => return Err(corrupt("bad zstd frame header".to_owned())),
        };
        let decompressor = match &mut self.decompressor {
            Some(decompressor) => decompressor,
            slot @ None => slot.insert(zstd::bulk::Decompressor::new().map_err(|e| {
                (
                    offset,
                    TraceErrorKind::Io(format!("cannot start zstd: {e}")),
                )
            })?),
        };
        self.chunk.clear();
        self.chunk.reserve(content_size);
        let written = decompressor
            .decompress_to_buffer(frame, &mut self.chunk)
            .map_err(|e| corrupt(format!("zstd: {e}")))?;
        if written != content_size {
            return Err(corrupt(format!(
                "frame holds {written} bytes but its header says {content_size}"
            )));
        }
        self.next_frame = offset + frame_len as u64;

        let bad = |message: String| (offset, TraceErrorKind::BadEvent(message));
        // The chunk ends with its payload section and that section's length (u32 LE).
        let payload_len_at = self
            .chunk
            .len()
            .checked_sub(4)
            .ok_or_else(|| bad("the chunk is too short to hold its payload length".to_owned()))?;
        let payload_len = read_u32_le(&self.chunk, payload_len_at) as usize;
        let events_end = payload_len_at.checked_sub(payload_len).ok_or_else(|| {
            bad(format!(
                "the chunk's payload length {payload_len} runs past its start"
            ))
        })?;
        let mut cursor = Cursor {
            bytes: &self.chunk[..events_end],
            pos: 0,
            payload: &[],
            payload_pos: 0,
        };
        let first_event = cursor.varint().map_err(bad)?;
        let elapsed_ns = cursor.varint().map_err(bad)?;
        let thread = cursor.u32_varint().map_err(bad)?;
        if first_event != self.next_index {
            return Err(bad(format!(
                "the chunk starts at event {first_event}, but {} events precede it",
                self.next_index
            )));
        }
        self.chunk_pos = cursor.pos;
        self.events_end = events_end;
        self.payload_pos = 0;
        self.chunk_offset = offset;
        self.chunk_elapsed_ns = elapsed_ns;
        self.thread = thread;

        // A new chunk: every delta slot goes back to 0.
        self.reader.slot_generation = self.reader.slot_generation.wrapping_add(1);
        if self.reader.slot_generation == 0 {
            self.reader
                .fns
                .values_mut()
                .for_each(|entry| entry.slot_generation = 0);
            self.reader.slot_generation = 1;
        }
        Ok(())
    }

    /// Decodes the event at `chunk_pos`.
    fn decode_event(&mut self) -> Result<EventRecord, Failure> {
        let index = self.next_index;
        let chunk_offset = self.chunk_offset;
        let start = self.chunk_pos;
        let mut cursor = Cursor {
            bytes: &self.chunk[..self.events_end],
            pos: start,
            payload: payload_section(&self.chunk, self.events_end),
            payload_pos: self.payload_pos,
        };
        let event = decode_event_body(&mut cursor, self.reader).map_err(|message| {
            (
                chunk_offset,
                TraceErrorKind::BadEvent(format!("event {index} (chunk byte {start}): {message}")),
            )
        })?;
        self.chunk_pos = cursor.pos;
        self.payload_pos = cursor.payload_pos;
        if let Event::Thread { thread } = event {
            self.thread = thread;
        }
        self.next_index += 1;
        Ok(EventRecord {
            index,
            thread: self.thread,
            chunk_offset,
            chunk_elapsed_ns: self.chunk_elapsed_ns,
            event,
        })
    }
}

impl Iterator for Events<'_> {
    type Item = Result<EventRecord, TraceError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        while self.chunk_pos >= self.events_end {
            let unused_payload = payload_section(&self.chunk, self.events_end).len() - self.payload_pos;
            if unused_payload > 0 {
                let failure = (
                    self.chunk_offset,
                    TraceErrorKind::BadEvent(format!(
                        "{unused_payload} payload bytes at the chunk's end belong to no event"
                    )),
                );
                return Some(Err(self.fail(failure)));
            }
            match self.load_next_chunk() {
                Ok(true) => {}
                Ok(false) => {
                    self.done = true;
                    return None;
                }
                Err(failure) => return Some(Err(self.fail(failure))),
            }
        }
        Some(self.decode_event().map_err(|failure| self.fail(failure)))
    }
}

impl FusedIterator for Events<'_> {}

/// A decompressed chunk's payload section: after its events (which end at `events_end`),
/// before the section's length; empty before the first chunk.
fn payload_section(chunk: &[u8], events_end: usize) -> &[u8] {
    chunk.get(events_end..chunk.len().saturating_sub(4)).unwrap_or(&[])
}

/// One of our records after the header: the trailer (returned, after checking it against
/// the `events_read` so far), or a kind from a later version (skipped).
fn parse_record(
    offset: u64,
    payload: &[u8],
    events_read: u64,
) -> Result<Option<TraceTrailer>, Failure> {
    let corrupt = |message: String| (offset, TraceErrorKind::CorruptFrame(message));
    let version = u16::from_le_bytes([payload[4], payload[5]]);
    if version != FORMAT_VERSION {
        return Err(corrupt(format!(
            "a record of format version {version} inside a version {FORMAT_VERSION} trace"
        )));
    }
    match payload[6] {
        RECORD_KIND_HEADER => Err(corrupt("a second header".to_owned())),
        RECORD_KIND_TRAILER => {
            let trailer: TraceTrailer = serde_json::from_slice(&payload[RECORD_PREFIX_LEN..])
                .map_err(|e| corrupt(format!("unreadable trailer JSON: {e}")))?;
            if trailer.events != events_read {
                return Err(corrupt(format!(
                    "the trailer counts {} events but the chunks hold {events_read}",
                    trailer.events
                )));
            }
            Ok(Some(trailer))
        }
        _ => Ok(None),
    }
}

/// Reads one event (op and payload) at the cursor; errors are messages for `BadEvent`.
fn decode_event_body(cursor: &mut Cursor<'_>, reader: &mut TraceReader) -> Result<Event, String> {
    let op = cursor.u8()?;
    Ok(match op {
        OP_CALL => {
            let fn_id = cursor.u32_varint()?;
            let generation = reader.slot_generation;
            let entry = reader
                .fns
                .get_mut(&fn_id)
                .ok_or_else(|| format!("CALL of undefined fn {fn_id}"))?;
            let digest = read_digest(cursor, &entry.def)?;
            let result = decode_call_result(cursor, entry, generation)?;
            Event::Call {
                fn_id,
                digest,
                result,
            }
        }
        OP_RAISE => {
            let fn_id = cursor.u32_varint()?;
            let def = reader
                .fn_def(fn_id)
                .ok_or_else(|| format!("RAISE of undefined fn {fn_id}"))?;
            let digest = read_digest(cursor, def)?;
            let type_name = cursor.str()?;
            let args = decode_value(cursor, 0)?;
            let attrs = decode_value(cursor, 0)?;
            Event::Raise {
                fn_id,
                digest,
                error: RecordedError {
                    type_name,
                    args,
                    attrs,
                },
            }
        }
        OP_FN_DEF => {
            let def = FnDef {
                id: cursor.u32_varint()?,
                flags: cursor.u8()?,
                name: cursor.str()?,
            };
            match reader.fns.get(&def.id) {
                // The same definition twice is harmless (e.g. a second pass over the trace).
                Some(existing) if existing.def == def => {}
                Some(existing) => {
                    return Err(format!(
                        "fn {} redefined as {:?} (flags {}), was {:?} (flags {})",
                        def.id, def.name, def.flags, existing.def.name, existing.def.flags
                    ))
                }
                None => {
                    reader.fns.insert(
                        def.id,
                        FnEntry {
                            def: def.clone(),
                            slot_generation: 0,
                            slot_bits: 0,
                        },
                    );
                }
            }
            Event::FnDef(def)
        }
        OP_THREAD => Event::Thread {
            thread: cursor.u32_varint()?,
        },
        OP_THREAD_START => Event::ThreadStart {
            thread: cursor.u32_varint()?,
            parent: cursor.u32_varint()?,
            name: cursor.str()?,
        },
        OP_THREAD_EXIT => Event::ThreadExit {
            thread: cursor.u32_varint()?,
        },
        OP_SIGNAL => {
            let signum = cursor.zigzag()?;
            let signum = i32::try_from(signum)
                .map_err(|_| format!("signal number {signum} out of range"))?;
            let during_call = match cursor.u8()? {
                0 => false,
                1 => true,
                other => return Err(format!("bad signal flags {other:#04x}")),
            };
            Event::Signal { signum, during_call }
        }
        OP_CALLBACK_ENTER => Event::CallbackEnter {
            handle: cursor.u32_varint()?,
            args: decode_value(cursor, 0)?,
        },
        OP_CALLBACK_RETURN => Event::CallbackReturn {
            result: decode_value(cursor, 0)?,
        },
        OP_PROCESS => {
            let byte = cursor.u8()?;
            let kind =
                ProcessKind::from_u8(byte).ok_or_else(|| format!("unknown process kind {byte}"))?;
            Event::Process {
                kind,
                child: cursor.str()?,
            }
        }
        OP_EXCEPTION => Event::Exception {
            type_name: cursor.str()?,
            message: cursor.str()?,
            traceback: cursor.str()?,
        },
        OP_END => Event::End,
        OP_COLLECT => {
            let generation = cursor.u8()?;
            if generation > 2 {
                return Err(format!("bad collection generation {generation}"));
            }
            let nested = match cursor.u8()? {
                0 => false,
                1 => true,
                other => return Err(format!("bad collection flags {other:#04x}")),
            };
            let after = cursor.zigzag()?;
            let after = i32::try_from(after).map_err(|_| format!("collection offset {after} out of range"))?;
            Event::Collect { generation, nested, after }
        }
        _ => return Err(format!("unknown op {op:#04x}")),
    })
}

fn read_digest(cursor: &mut Cursor<'_>, def: &FnDef) -> Result<Option<u32>, String> {
    if def.has_digest() {
        Ok(Some(cursor.u32_le()?))
    } else {
        Ok(None)
    }
}

/// The top-level result of a CALL: a value, or a delta against the fn's slot.
fn decode_call_result(
    cursor: &mut Cursor<'_>,
    entry: &mut FnEntry,
    generation: u32,
) -> Result<Value, String> {
    let tag = cursor.u8()?;
    if tag != TAG_FLOAT_DELTA && tag != TAG_INT_DELTA {
        return decode_tagged(cursor, tag, 0);
    }
    let delta = cursor.zigzag()?;
    let previous = if entry.slot_generation == generation {
        entry.slot_bits
    } else {
        0
    };
    let bits = (previous as i64).wrapping_add(delta) as u64;
    entry.slot_generation = generation;
    entry.slot_bits = bits;
    Ok(if tag == TAG_FLOAT_DELTA {
        Value::Float(f64::from_bits(bits))
    } else {
        Value::Int(bits as i64)
    })
}

fn decode_value(cursor: &mut Cursor<'_>, depth: usize) -> Result<Value, String> {
    let tag = cursor.u8()?;
    decode_tagged(cursor, tag, depth)
}

fn decode_tagged(cursor: &mut Cursor<'_>, tag: u8, depth: usize) -> Result<Value, String> {
    Ok(match tag {
        TAG_NONE => Value::None,
        TAG_FALSE => Value::Bool(false),
        TAG_TRUE => Value::Bool(true),
        TAG_INT => Value::Int(cursor.zigzag()?),
        TAG_BIG_INT => Value::BigInt(cursor.byte_string()?.to_vec()),
        TAG_FLOAT => Value::Float(f64::from_le_bytes(cursor.array::<8>()?)),
        TAG_FLOAT_DELTA | TAG_INT_DELTA => {
            return Err(format!(
                "delta value (tag {tag:#04x}) outside the top-level result of a CALL"
            ))
        }
        TAG_STR => Value::Str(cursor.payload_str()?),
        TAG_BYTES => Value::Bytes(cursor.payload_bytes()?.to_vec()),
        TAG_TUPLE | TAG_LIST => {
            if depth >= MAX_VALUE_DEPTH {
                return Err(format!("values nested deeper than {MAX_VALUE_DEPTH}"));
            }
            let count = cursor.varint()?;
            // Every item takes at least one byte: never reserve more than the chunk can hold.
            let mut items = Vec::with_capacity(clamp_count(count, cursor.remaining()));
            for _ in 0..count {
                items.push(decode_value(cursor, depth + 1)?);
            }
            if tag == TAG_TUPLE {
                Value::Tuple(items)
            } else {
                Value::List(items)
            }
        }
        TAG_DICT => {
            if depth >= MAX_VALUE_DEPTH {
                return Err(format!("values nested deeper than {MAX_VALUE_DEPTH}"));
            }
            let count = cursor.varint()?;
            let mut pairs = Vec::with_capacity(clamp_count(count, cursor.remaining() / 2));
            for _ in 0..count {
                let key = decode_value(cursor, depth + 1)?;
                let value = decode_value(cursor, depth + 1)?;
                pairs.push((key, value));
            }
            Value::Dict(pairs)
        }
        TAG_HANDLE => Value::Handle(cursor.u32_varint()?),
        TAG_STR_SURROGATES => Value::StrSurrogates(cursor.payload_bytes()?.to_vec()),
        TAG_REDACTED => Value::Redacted(cursor.varint()?),
        TAG_OBJECT => {
            if depth >= MAX_VALUE_DEPTH {
                return Err(format!("values nested deeper than {MAX_VALUE_DEPTH}"));
            }
            let type_name = cursor.str()?;
            let state = Box::new(decode_value(cursor, depth + 1)?);
            Value::Object { type_name, state }
        }
        _ => return Err(format!("unknown value tag {tag:#04x}")),
    })
}

fn clamp_count(count: u64, limit: usize) -> usize {
    usize::try_from(count).unwrap_or(usize::MAX).min(limit)
}

/// Bounds-checked reads from a decompressed chunk; errors are `BadEvent` messages.
struct Cursor<'a> {
    /// The events section.
    bytes: &'a [u8],
    pos: usize,
    /// The payload section: str and bytes values' contents, in the order they are read.
    payload: &'a [u8],
    payload_pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn u8(&mut self) -> Result<u8, String> {
        let byte = *self
            .bytes
            .get(self.pos)
            .ok_or("the chunk ends inside an event")?;
        self.pos += 1;
        Ok(byte)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let bytes = self.take(N)?;
        let mut array = [0u8; N];
        array.copy_from_slice(bytes);
        Ok(array)
    }

    fn u32_le(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array::<4>()?))
    }

    fn varint(&mut self) -> Result<u64, String> {
        read_varint(self.bytes, &mut self.pos).map_err(|error| match error {
            VarintError::Truncated => "the chunk ends inside an event".to_owned(),
            VarintError::Overflow => "varint longer than 64 bits".to_owned(),
        })
    }

    fn u32_varint(&mut self) -> Result<u32, String> {
        let value = self.varint()?;
        u32::try_from(value).map_err(|_| format!("{value} does not fit 32 bits"))
    }

    fn zigzag(&mut self) -> Result<i64, String> {
        self.varint().map(zigzag_decode)
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], String> {
        if len > self.remaining() {
            return Err(format!("a length of {len} runs past the end of the chunk"));
        }
        let bytes = &self.bytes[self.pos..self.pos + len];
        self.pos += len;
        Ok(bytes)
    }

    /// Varint length, then that many bytes.
    fn byte_string(&mut self) -> Result<&'a [u8], String> {
        let len = self.varint()?;
        self.take(usize::try_from(len).unwrap_or(usize::MAX))
    }

    fn str(&mut self) -> Result<String, String> {
        utf8(self.byte_string()?)
    }

    /// A value's contents: varint length here, the bytes from the payload section.
    fn payload_bytes(&mut self) -> Result<&'a [u8], String> {
        let len = self.varint()?;
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        if len > self.payload.len() - self.payload_pos {
            return Err(format!(
                "a length of {len} runs past the end of the chunk's payload"
            ));
        }
        let bytes = &self.payload[self.payload_pos..self.payload_pos + len];
        self.payload_pos += len;
        Ok(bytes)
    }

    fn payload_str(&mut self) -> Result<String, String> {
        utf8(self.payload_bytes()?)
    }
}

fn utf8(bytes: &[u8]) -> Result<String, String> {
    String::from_utf8(bytes.to_vec()).map_err(|e| format!("invalid UTF-8 in a str: {e}"))
}

//! The hot-path encoder: appends events to an in-memory chunk, with the GIL held, on the
//! thread that made the boundary call.
//!
//! It never allocates unless the chunk buffer has to grow past its capacity (spare buffers
//! come with [`CHUNK_SLACK`] bytes beyond the chunk capacity, so an event that crosses the
//! fill mark does not reallocate either) or a fn id is seen for the first time (its delta
//! slot table grows), and it never fails: it only appends bytes.
//!
//! A chunk has two sections: the events (ops, fixed fields, value tags and lengths) and,
//! after them, the contents of str and bytes values, in the order the events refer to them.
//! zstd's matcher then meets the repetitive event structure in one run and the payload
//! bytes in another: random bytes interleaved with short repeats cost it a match attempt
//! at every byte (~750 writer-thread instructions per `os.urandom(16)` event at level 1),
//! while a run of them lets it skip ahead (~100).
//!
//! The encoder writes an event's op and fixed fields; the caller then writes the values the
//! op calls for (see each method) with the value methods. The encoder does not check that
//! the caller writes the right number of values: the reader does.

use std::time::Instant;

use crate::event::{ProcessKind, Value};
use crate::wire::*;

/// Extra capacity a chunk buffer gets beyond the chunk capacity, so the event that makes a
/// chunk full usually fits without a reallocation.
pub const CHUNK_SLACK: usize = 4096;

/// The payload buffer is shrunk back after a chunk when one value grew it past this many
/// times its normal size.
const PAYLOAD_KEEP_LIMIT: usize = 4;

/// The per-fn delta slot: the last top-level delta-encoded result of the fn in this chunk.
/// A slot whose generation is not the encoder's current one is stale and reads as 0, which
/// resets every slot at a chunk boundary in O(1).
#[derive(Debug, Clone, Copy, Default)]
struct DeltaSlot {
    generation: u32,
    bits: u64,
}

/// What this encoder knows of a fn's digest flag, to catch a caller passing a digest the
/// reader will not expect (or omitting one it will), in debug builds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum DigestExpectation {
    #[default]
    Unknown,
    Absent,
    Present,
}

#[derive(Debug)]
pub struct ChunkEncoder {
    /// The chunk header and the events.
    buf: Vec<u8>,
    /// The contents of the chunk's str and bytes values; appended to `buf`, with its length,
    /// when the chunk is taken.
    payload: Vec<u8>,
    /// `is_full` threshold.
    chunk_capacity: usize,
    /// The chunk header has been written for the current chunk.
    chunk_open: bool,
    events_written: u64,
    current_thread: u32,
    /// Indexed by fn id, grown on demand (fn ids are assigned densely from 0).
    delta_slots: Vec<DeltaSlot>,
    /// Current slot generation; never 0, so default (stale) slots read as 0.
    generation: u32,
    /// Indexed by fn id, filled by `fn_def`.
    digest_expectations: Vec<DigestExpectation>,
    started: Instant,
}

impl ChunkEncoder {
    pub fn new(chunk_capacity: usize) -> Self {
        ChunkEncoder {
            buf: Vec::with_capacity(chunk_capacity + CHUNK_SLACK),
            payload: Vec::with_capacity(chunk_capacity + CHUNK_SLACK),
            chunk_capacity,
            chunk_open: false,
            events_written: 0,
            current_thread: 0,
            delta_slots: Vec::new(),
            generation: 1,
            digest_expectations: Vec::new(),
            started: Instant::now(),
        }
    }

    /// The chunk has reached its capacity and should be taken and submitted.
    #[inline]
    pub fn is_full(&self) -> bool {
        self.buf.len() + self.payload.len() >= self.chunk_capacity
    }

    /// No event has been written since the last `take_chunk`.
    #[inline]
    pub fn is_empty(&self) -> bool {
        !self.chunk_open
    }

    /// The index the next event will get.
    #[inline]
    pub fn events_written(&self) -> u64 {
        self.events_written
    }

    #[inline]
    pub fn current_thread(&self) -> u32 {
        self.current_thread
    }

    /// Takes the finished chunk bytes out (events, payload, payload length as u32 LE) and
    /// continues with `replacement` (cleared first) as the buffer. Resets the per-chunk
    /// state (delta slots); the next event starts a new chunk header, which carries the
    /// current thread over.
    pub fn take_chunk(&mut self, mut replacement: Vec<u8>) -> Vec<u8> {
        replacement.clear();
        let mut chunk = Vec::new();
        self.drain_chunk(|parts| {
            chunk = replacement;
            chunk.clear();
            for part in parts {
                chunk.extend_from_slice(part);
            }
        });
        chunk
    }

    /// Hands the finished chunk to `write` as its three parts (events, payload, payload
    /// length as u32 LE; all empty when no event was written), then clears the chunk as
    /// [`Self::take_chunk`] does, keeping both buffers: the writer copies the parts into its
    /// stream, so the chunk is never assembled.
    pub fn drain_chunk<R>(&mut self, write: impl FnOnce([&[u8]; 3]) -> R) -> R {
        // A chunk is capped far below 4 GiB (the reader refuses more than 256 MiB).
        let payload_len = u32::try_from(self.payload.len()).unwrap_or(u32::MAX).to_le_bytes();
        let result = if self.chunk_open {
            write([&self.buf, &self.payload, &payload_len])
        } else {
            write([&[], &[], &[]])
        };
        self.buf.clear();
        self.payload.clear();
        if self.payload.capacity() > PAYLOAD_KEEP_LIMIT * (self.chunk_capacity + CHUNK_SLACK) {
            // One huge value grew it: give the memory back rather than pin it.
            self.payload.shrink_to(self.chunk_capacity + CHUNK_SLACK);
        }
        if self.buf.capacity() > PAYLOAD_KEEP_LIMIT * (self.chunk_capacity + CHUNK_SLACK) {
            self.buf.shrink_to(self.chunk_capacity + CHUNK_SLACK);
        }
        self.chunk_open = false;
        self.generation = self.generation.wrapping_add(1);
        if self.generation == 0 {
            // After 2^32 chunks the generations would repeat: clear for real, once.
            self.delta_slots.fill(DeltaSlot::default());
            self.generation = 1;
        }
        result
    }

    // ---- events ----

    /// Writes the chunk header if needed, then the op; counts the event. Inlined into every
    /// event writer, with the rare chunk header out of line: an intercepted call's event is
    /// then written by straight-line code in the hook (see `ARCHITECTURE.md`, hot path).
    #[inline(always)]
    fn begin_event(&mut self, op: u8) {
        if !self.chunk_open {
            self.open_chunk();
        }
        self.buf.push(op);
        self.events_written += 1;
    }

    #[cold]
    #[inline(never)]
    fn open_chunk(&mut self) {
        self.chunk_open = true;
        let elapsed_ns = u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        write_varint(&mut self.buf, self.events_written);
        write_varint(&mut self.buf, elapsed_ns);
        write_varint(&mut self.buf, u64::from(self.current_thread));
    }

    /// A name in the events section: varint length, then the bytes.
    #[inline]
    fn raw_str(&mut self, bytes: &[u8]) {
        write_varint(&mut self.buf, bytes.len() as u64);
        self.buf.extend_from_slice(bytes);
    }

    /// A value's contents: varint length in the events section, the bytes in the payload.
    #[inline(always)]
    fn payload_str(&mut self, bytes: &[u8]) {
        write_varint(&mut self.buf, bytes.len() as u64);
        self.payload.extend_from_slice(bytes);
    }

    #[inline(always)]
    fn fn_and_digest(&mut self, fn_id: u32, digest: Option<u32>) {
        debug_assert!(
            match self.digest_expectations.get(fn_id as usize) {
                Some(DigestExpectation::Present) => digest.is_some(),
                Some(DigestExpectation::Absent) => digest.is_none(),
                _ => true,
            },
            "fn {fn_id}: digest presence must match the FN_HAS_DIGEST flag of its FN_DEF"
        );
        write_varint(&mut self.buf, u64::from(fn_id));
        if let Some(digest) = digest {
            self.buf.extend_from_slice(&digest.to_le_bytes());
        }
    }

    /// CALL. `digest` must be `Some` exactly when the fn was defined with
    /// [`FN_HAS_DIGEST`]. The caller then writes exactly one value: the result (which may be
    /// [`float_delta`](Self::float_delta) / [`int_delta`](Self::int_delta)).
    #[inline(always)]
    pub fn call(&mut self, fn_id: u32, digest: Option<u32>) {
        self.begin_event(OP_CALL);
        self.fn_and_digest(fn_id, digest);
    }

    /// RAISE. The caller then writes the exception's args value, then its attrs value.
    pub fn raise(&mut self, fn_id: u32, digest: Option<u32>, type_name: &str) {
        self.begin_event(OP_RAISE);
        self.fn_and_digest(fn_id, digest);
        self.raw_str(type_name.as_bytes());
    }

    /// FN_DEF: must precede the first CALL or RAISE of `fn_id` in the trace.
    pub fn fn_def(&mut self, fn_id: u32, flags: u8, name: &str) {
        self.begin_event(OP_FN_DEF);
        write_varint(&mut self.buf, u64::from(fn_id));
        self.buf.push(flags);
        self.raw_str(name.as_bytes());
        let index = fn_id as usize;
        if index >= self.digest_expectations.len() {
            self.digest_expectations
                .resize(index + 1, DigestExpectation::Unknown);
        }
        self.digest_expectations[index] = if flags & FN_HAS_DIGEST != 0 {
            DigestExpectation::Present
        } else {
            DigestExpectation::Absent
        };
    }

    /// THREAD: the following events belong to `thread` (also sets the current thread).
    #[inline]
    pub fn thread(&mut self, thread: u32) {
        self.begin_event(OP_THREAD);
        write_varint(&mut self.buf, u64::from(thread));
        self.current_thread = thread;
    }

    pub fn thread_start(&mut self, thread: u32, parent: u32, name: &str) {
        self.begin_event(OP_THREAD_START);
        write_varint(&mut self.buf, u64::from(thread));
        write_varint(&mut self.buf, u64::from(parent));
        self.raw_str(name.as_bytes());
    }

    pub fn thread_exit(&mut self, thread: u32) {
        self.begin_event(OP_THREAD_EXIT);
        write_varint(&mut self.buf, u64::from(thread));
    }

    /// A Python-level handler for `signum` ran; `during_call` when it ran inside a boundary
    /// call (a blocking read or sleep that the signal interrupted) rather than between two.
    pub fn signal(&mut self, signum: i32, during_call: bool) {
        self.begin_event(OP_SIGNAL);
        write_zigzag(&mut self.buf, i64::from(signum));
        self.buf.push(u8::from(during_call));
    }

    /// The cyclic garbage collector started an automatic collection of `generation` on the
    /// current thread; `nested` when it ran inside a boundary call; `after`: the collector's
    /// threshold minus its allocation count when the program last left a hook.
    pub fn collect(&mut self, generation: u8, nested: bool, after: i32) {
        self.begin_event(OP_COLLECT);
        self.buf.push(generation);
        self.buf.push(u8::from(nested));
        write_zigzag(&mut self.buf, i64::from(after));
    }

    /// CALLBACK_ENTER. The caller then writes one value: the callback's args.
    pub fn callback_enter(&mut self, handle: u32) {
        self.begin_event(OP_CALLBACK_ENTER);
        write_varint(&mut self.buf, u64::from(handle));
    }

    /// CALLBACK_RETURN. The caller then writes one value: the callback's result.
    pub fn callback_return(&mut self) {
        self.begin_event(OP_CALLBACK_RETURN);
    }

    pub fn process(&mut self, kind: ProcessKind, child: &str) {
        self.begin_event(OP_PROCESS);
        self.buf.push(kind as u8);
        self.raw_str(child.as_bytes());
    }

    pub fn exception(&mut self, type_name: &str, message: &str, traceback: &str) {
        self.begin_event(OP_EXCEPTION);
        self.raw_str(type_name.as_bytes());
        self.raw_str(message.as_bytes());
        self.raw_str(traceback.as_bytes());
    }

    pub fn end(&mut self) {
        self.begin_event(OP_END);
    }

    // ---- values ----

    #[inline]
    pub fn none(&mut self) {
        self.buf.push(TAG_NONE);
    }

    #[inline]
    pub fn bool(&mut self, v: bool) {
        self.buf.push(if v { TAG_TRUE } else { TAG_FALSE });
    }

    #[inline]
    pub fn int(&mut self, v: i64) {
        self.buf.push(TAG_INT);
        write_zigzag(&mut self.buf, v);
    }

    /// An int outside i64, as two's-complement little-endian bytes.
    pub fn big_int(&mut self, le_twos_complement: &[u8]) {
        self.buf.push(TAG_BIG_INT);
        self.raw_str(le_twos_complement);
    }

    #[inline]
    pub fn float(&mut self, v: f64) {
        self.buf.push(TAG_FLOAT);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    /// Returns the slot of `fn_id` (grown on demand), reset to 0 if stale.
    #[inline(always)]
    fn delta_slot(&mut self, fn_id: u32) -> &mut DeltaSlot {
        let index = fn_id as usize;
        if index >= self.delta_slots.len() {
            self.grow_delta_slots(index + 1);
        }
        let generation = self.generation;
        let slot = &mut self.delta_slots[index];
        if slot.generation != generation {
            *slot = DeltaSlot {
                generation,
                bits: 0,
            };
        }
        slot
    }

    #[cold]
    #[inline(never)]
    fn grow_delta_slots(&mut self, len: usize) {
        self.delta_slots.resize(len, DeltaSlot::default());
    }

    /// A float as the top-level result of a CALL of `fn_id`: the difference of its bits from
    /// the fn's previous delta result in this chunk. Consecutive clock readings share sign,
    /// exponent and most mantissa bits, so the difference is a short varint.
    #[inline(always)]
    pub fn float_delta(&mut self, fn_id: u32, v: f64) {
        let bits = v.to_bits();
        let slot = self.delta_slot(fn_id);
        let delta = (bits as i64).wrapping_sub(slot.bits as i64);
        slot.bits = bits;
        self.buf.push(TAG_FLOAT_DELTA);
        write_zigzag(&mut self.buf, delta);
    }

    /// An int as the top-level result of a CALL of `fn_id`, relative to the fn's previous
    /// delta result in this chunk.
    #[inline(always)]
    pub fn int_delta(&mut self, fn_id: u32, v: i64) {
        let slot = self.delta_slot(fn_id);
        let delta = v.wrapping_sub(slot.bits as i64);
        slot.bits = v as u64;
        self.buf.push(TAG_INT_DELTA);
        write_zigzag(&mut self.buf, delta);
    }

    #[inline]
    pub fn str(&mut self, v: &str) {
        self.buf.push(TAG_STR);
        self.payload_str(v.as_bytes());
    }

    /// A str with lone surrogates, as UTF-8 with the surrogates passed through.
    pub fn str_surrogates(&mut self, wtf8: &[u8]) {
        self.buf.push(TAG_STR_SURROGATES);
        self.payload_str(wtf8);
    }

    #[inline(always)]
    pub fn bytes(&mut self, v: &[u8]) {
        self.buf.push(TAG_BYTES);
        self.payload_str(v);
    }

    /// Followed by `len` values.
    pub fn tuple(&mut self, len: usize) {
        self.buf.push(TAG_TUPLE);
        write_varint(&mut self.buf, len as u64);
    }

    /// Followed by `len` values.
    pub fn list(&mut self, len: usize) {
        self.buf.push(TAG_LIST);
        write_varint(&mut self.buf, len as u64);
    }

    /// Followed by `len` key, value pairs (key, value, key, value, ...).
    pub fn dict(&mut self, len: usize) {
        self.buf.push(TAG_DICT);
        write_varint(&mut self.buf, len as u64);
    }

    pub fn handle(&mut self, id: u32) {
        self.buf.push(TAG_HANDLE);
        write_varint(&mut self.buf, u64::from(id));
    }

    pub fn redacted(&mut self, original_len: u64) {
        self.buf.push(TAG_REDACTED);
        write_varint(&mut self.buf, original_len);
    }

    /// Followed by one value: the state the object is rebuilt from.
    pub fn object(&mut self, type_name: &str) {
        self.buf.push(TAG_OBJECT);
        self.raw_str(type_name.as_bytes());
    }

    /// Writes a whole decoded [`Value`] (never as a delta). A convenience for tools and tests;
    /// the hot path writes values piece by piece from Python objects instead.
    pub fn value(&mut self, v: &Value) {
        match v {
            Value::None => self.none(),
            Value::Bool(b) => self.bool(*b),
            Value::Int(i) => self.int(*i),
            Value::BigInt(bytes) => self.big_int(bytes),
            Value::Float(f) => self.float(*f),
            Value::Str(s) => self.str(s),
            Value::StrSurrogates(bytes) => self.str_surrogates(bytes),
            Value::Bytes(bytes) => self.bytes(bytes),
            Value::Tuple(items) => {
                self.tuple(items.len());
                items.iter().for_each(|item| self.value(item));
            }
            Value::List(items) => {
                self.list(items.len());
                items.iter().for_each(|item| self.value(item));
            }
            Value::Dict(pairs) => {
                self.dict(pairs.len());
                for (key, value) in pairs {
                    self.value(key);
                    self.value(value);
                }
            }
            Value::Handle(id) => self.handle(*id),
            Value::Redacted(len) => self.redacted(*len),
            Value::Object { type_name, state } => {
                self.object(type_name);
                self.value(state);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_header_precedes_first_event_only() {
        let mut enc = ChunkEncoder::new(1024);
        assert!(enc.is_empty());
        enc.thread(3);
        enc.end();
        assert!(!enc.is_empty());
        assert_eq!(enc.events_written(), 2);
        let chunk = enc.take_chunk(Vec::new());
        assert!(enc.is_empty());
        let mut pos = 0;
        assert_eq!(read_varint(&chunk, &mut pos), Ok(0)); // first event index
        read_varint(&chunk, &mut pos).unwrap(); // elapsed
        assert_eq!(read_varint(&chunk, &mut pos), Ok(0)); // thread at chunk start
        // Events, then an empty payload and its length.
        assert_eq!(&chunk[pos..], &[OP_THREAD, 3, OP_END, 0, 0, 0, 0]);

        enc.end();
        let chunk = enc.take_chunk(Vec::new());
        let mut pos = 0;
        assert_eq!(read_varint(&chunk, &mut pos), Ok(2));
        read_varint(&chunk, &mut pos).unwrap();
        assert_eq!(read_varint(&chunk, &mut pos), Ok(3)); // thread carried over
        assert_eq!(&chunk[pos..], &[OP_END, 0, 0, 0, 0]);
    }

    #[test]
    fn value_contents_follow_the_events() {
        let mut enc = ChunkEncoder::new(1024);
        enc.call(0, None);
        enc.bytes(b"abc");
        enc.call(0, None);
        enc.str("de");
        enc.raise(0, None, "E");
        let chunk = enc.take_chunk(Vec::new());
        let mut pos = 0;
        for _ in 0..3 {
            read_varint(&chunk, &mut pos).unwrap();
        }
        assert_eq!(
            &chunk[pos..],
            &[
                OP_CALL, 0, TAG_BYTES, 3, OP_CALL, 0, TAG_STR, 2, OP_RAISE, 0, 1, b'E', // events
                b'a', b'b', b'c', b'd', b'e', // payload: value contents only, in order
                5, 0, 0, 0, // payload length
            ]
        );
    }

    #[test]
    fn delta_slots_reset_at_chunk_boundary() {
        let mut enc = ChunkEncoder::new(1024);
        enc.call(0, None);
        enc.int_delta(0, 100);
        enc.call(0, None);
        enc.int_delta(0, 103);
        let first = enc.take_chunk(Vec::new());
        enc.call(0, None);
        enc.int_delta(0, 104);
        let second = enc.take_chunk(Vec::new());
        // Chunk 1: 100 from 0, then +3; chunk 2: 104 from 0 again, not +1.
        assert!(first.ends_with(&[
            OP_CALL,
            0,
            TAG_INT_DELTA,
            200,
            1,
            OP_CALL,
            0,
            TAG_INT_DELTA,
            6,
            0,
            0,
            0,
            0
        ]));
        assert!(second.ends_with(&[OP_CALL, 0, TAG_INT_DELTA, 208, 1, 0, 0, 0, 0]));
    }

    #[test]
    fn call_and_float_delta_do_not_allocate_within_capacity() {
        let mut enc = ChunkEncoder::new(64 * 1024);
        // Touch the slot once so its on-demand growth happens before the measurement.
        enc.call(0, None);
        enc.float_delta(0, 1.7e9);
        let (ptr, capacity) = (enc.buf.as_ptr(), enc.buf.capacity());
        let mut t = 1.7e9;
        for _ in 0..1000 {
            t += 1e-6;
            enc.call(0, None);
            enc.float_delta(0, t);
        }
        assert!(!enc.is_full());
        assert_eq!(enc.buf.as_ptr(), ptr, "the chunk buffer was reallocated");
        assert_eq!(enc.buf.capacity(), capacity);
        assert_eq!(enc.delta_slots.len(), 1);
    }
}

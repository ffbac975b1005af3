//! Node.js binding over [`retrace_recorder::TraceReader`]: thin types, no logic.
//!
//! Events cross into JavaScript in columnar batches (see [`EventBatch`]): one typed array per
//! field instead of one JS object per event, one byte array for main values that are bytes
//! (what `os.urandom`, `recv`, `read` return), and one JSON string for the payloads that fit
//! neither (strings, containers, exceptions, ...). `ts/trace.ts` turns a batch into event
//! objects lazily.

#![deny(clippy::all)]

pub mod launch;
pub mod signals;

use std::fmt::Write as _;
use std::path::Path;
use std::ptr::NonNull;

use napi::bindgen_prelude::{Float64Array, Uint32Array, Uint8Array};
use napi_derive::napi;
use retrace_recorder::{Event, Events, TraceError, TraceErrorKind, Value};

/// `vtag` of an event whose main value is in the batch's `extra` JSON.
const VTAG_EXTRA: u8 = 0xFE;
/// `vtag` of an event with no main value and no payload.
const VTAG_NONE: u8 = 0xFF;
/// Value tags (the wire tags) of values carried in the `num` column.
const TAG_NONE: u8 = 0x00;
const TAG_FALSE: u8 = 0x01;
const TAG_TRUE: u8 = 0x02;
const TAG_INT: u8 = 0x03;
const TAG_FLOAT: u8 = 0x05;
/// Value tag of bytes, carried in the `bytes` column.
const TAG_BYTES: u8 = 0x09;
/// `flags` bit: the event carries an argument digest.
const FLAG_DIGEST: u8 = 0x01;
/// Largest integer a JS number holds exactly.
const MAX_SAFE_INT: i64 = (1 << 53) - 1;

/// The machine-readable code of a trace error, set as the JS error's `code`.
fn error_code(err: &TraceError) -> &'static str {
    match err.kind {
        TraceErrorKind::Io(_) => "ERR_TRACE_IO",
        TraceErrorKind::NotATrace => "ERR_TRACE_NOT_A_TRACE",
        TraceErrorKind::UnsupportedVersion(_) => "ERR_TRACE_UNSUPPORTED_VERSION",
        TraceErrorKind::Truncated => "ERR_TRACE_TRUNCATED",
        TraceErrorKind::CorruptFrame(_) => "ERR_TRACE_CORRUPT",
        TraceErrorKind::BadEvent(_) => "ERR_TRACE_BAD_EVENT",
    }
}

/// A JS error whose `code` is the trace error's code and whose message is its one line.
fn js_error(err: &TraceError) -> napi::Error<String> {
    napi::Error::new(error_code(err).to_owned(), err.to_string())
}

/// One batch of decoded events, as columns. Column `i` of every array describes event `i`.
#[napi(object)]
pub struct EventBatch {
    /// Number of events in the batch (0 once the trace is exhausted).
    pub count: u32,
    /// Event index (exact up to 2^53).
    pub index: Float64Array,
    /// The thread the event belongs to (for a THREAD event, the thread it switches to).
    pub thread: Uint32Array,
    /// The event's op code (ARCHITECTURE.md, "Events"): 1 CALL ... 12 END.
    pub kind: Uint8Array,
    /// The fn id of CALL, RAISE and FN_DEF events; 0 otherwise.
    pub fn_id: Uint32Array,
    /// The argument digest, when `flags & 1`.
    pub digest: Uint32Array,
    /// Bit 0: the event has a digest.
    pub flags: Uint8Array,
    /// Byte offset of the chunk holding the event.
    pub chunk_offset: Float64Array,
    /// Nanoseconds since trace start at which the event's chunk began.
    pub elapsed_ns: Float64Array,
    /// Where the main value is: a wire value tag (0 None, 1 False, 2 True, 3 int in `num`,
    /// 5 float in `num`, 9 bytes in `bytes`), 0xFE (the next entry of `extra`), or 0xFF (no
    /// value).
    pub vtag: Uint8Array,
    /// Numeric main value for `vtag` 3 and 5; for `vtag` 9, the end offset of the event's
    /// bytes in `bytes` (they start where the previous `vtag` 9 event's end, or at 0).
    pub num: Float64Array,
    /// The main values of `vtag` 9 events, back to back in event order.
    pub bytes: Uint8Array,
    /// JSON array with one entry per event whose `vtag` is 0xFE, in event order; null when
    /// there is none. Encoding: see `write_value` and `write_payload` in crates/node.
    pub extra: Option<String>,
    /// True when no events follow (end of trace, or `error` is set).
    pub done: bool,
    /// The reader's one-line message, when reading stopped on a damaged or cut-short trace
    /// after the events of this batch.
    pub error: Option<String>,
    /// `ERR_TRACE_TRUNCATED`, `ERR_TRACE_CORRUPT`, ... when `error` is set.
    pub error_code: Option<String>,
}

/// Column buffers reused between batches only as far as capacity hints go.
#[derive(Default)]
struct Columns {
    index: Vec<f64>,
    thread: Vec<u32>,
    kind: Vec<u8>,
    fn_id: Vec<u32>,
    digest: Vec<u32>,
    flags: Vec<u8>,
    chunk_offset: Vec<f64>,
    elapsed_ns: Vec<f64>,
    vtag: Vec<u8>,
    num: Vec<f64>,
    bytes: Vec<u8>,
    extra: String,
    extra_count: usize,
}

impl Columns {
    fn with_capacity(n: usize) -> Self {
        Columns {
            index: Vec::with_capacity(n),
            thread: Vec::with_capacity(n),
            kind: Vec::with_capacity(n),
            fn_id: Vec::with_capacity(n),
            digest: Vec::with_capacity(n),
            flags: Vec::with_capacity(n),
            chunk_offset: Vec::with_capacity(n),
            elapsed_ns: Vec::with_capacity(n),
            vtag: Vec::with_capacity(n),
            num: Vec::with_capacity(n),
            bytes: Vec::new(),
            extra: String::new(),
            extra_count: 0,
        }
    }

    /// Starts the next `extra` entry.
    fn begin_extra(&mut self) {
        self.extra
            .push(if self.extra_count == 0 { '[' } else { ',' });
        self.extra_count += 1;
    }

    /// Sets the main value: in `num` when it is a scalar, else as an `extra` entry.
    fn push_value(&mut self, value: &Value) {
        match value {
            Value::None => self.push_scalar(TAG_NONE, 0.0),
            Value::Bool(false) => self.push_scalar(TAG_FALSE, 0.0),
            Value::Bool(true) => self.push_scalar(TAG_TRUE, 0.0),
            Value::Int(v) if (-MAX_SAFE_INT..=MAX_SAFE_INT).contains(v) => {
                self.push_scalar(TAG_INT, *v as f64)
            }
            Value::Float(v) => self.push_scalar(TAG_FLOAT, *v),
            Value::Bytes(b) => {
                self.bytes.extend_from_slice(b);
                self.push_scalar(TAG_BYTES, self.bytes.len() as f64)
            }
            other => {
                self.push_scalar(VTAG_EXTRA, 0.0);
                self.begin_extra();
                write_value(&mut self.extra, other);
            }
        }
    }

    fn push_scalar(&mut self, vtag: u8, num: f64) {
        self.vtag.push(vtag);
        self.num.push(num);
    }

    fn push(&mut self, record: &retrace_recorder::EventRecord) {
        self.index.push(record.index as f64);
        self.thread.push(record.thread);
        self.chunk_offset.push(record.chunk_offset as f64);
        self.elapsed_ns.push(record.chunk_elapsed_ns as f64);
        let (kind, fn_id, digest) = match &record.event {
            Event::Call { fn_id, digest, .. } | Event::Raise { fn_id, digest, .. } => (
                if matches!(record.event, Event::Call { .. }) {
                    0x01
                } else {
                    0x02
                },
                *fn_id,
                *digest,
            ),
            Event::FnDef(def) => (0x03, def.id, None),
            Event::Thread { .. } => (0x04, 0, None),
            Event::ThreadStart { .. } => (0x05, 0, None),
            Event::ThreadExit { .. } => (0x06, 0, None),
            Event::Signal { .. } => (0x07, 0, None),
            Event::CallbackEnter { .. } => (0x08, 0, None),
            Event::CallbackReturn { .. } => (0x09, 0, None),
            Event::Process { .. } => (0x0A, 0, None),
            Event::Exception { .. } => (0x0B, 0, None),
            Event::End => (0x0C, 0, None),
            Event::Collect { .. } => (0x0D, 0, None),
        };
        self.kind.push(kind);
        self.fn_id.push(fn_id);
        self.digest.push(digest.unwrap_or(0));
        self.flags
            .push(if digest.is_some() { FLAG_DIGEST } else { 0 });
        match &record.event {
            Event::Call { result, .. } | Event::CallbackReturn { result } => {
                self.push_value(result)
            }
            Event::End => self.push_scalar(VTAG_NONE, 0.0),
            event => {
                self.push_scalar(VTAG_EXTRA, 0.0);
                self.begin_extra();
                write_payload(&mut self.extra, event);
            }
        }
    }

    fn into_batch(mut self, done: bool, error: Option<&TraceError>) -> EventBatch {
        let extra = if self.extra_count == 0 {
            None
        } else {
            self.extra.push(']');
            Some(self.extra)
        };
        EventBatch {
            count: self.kind.len() as u32,
            index: Float64Array::new(self.index),
            thread: Uint32Array::new(self.thread),
            kind: Uint8Array::new(self.kind),
            fn_id: Uint32Array::new(self.fn_id),
            digest: Uint32Array::new(self.digest),
            flags: Uint8Array::new(self.flags),
            chunk_offset: Float64Array::new(self.chunk_offset),
            elapsed_ns: Float64Array::new(self.elapsed_ns),
            vtag: Uint8Array::new(self.vtag),
            num: Float64Array::new(self.num),
            bytes: Uint8Array::new(self.bytes),
            extra,
            done,
            error: error.map(|e| e.to_string()),
            error_code: error.map(|e| error_code(e).to_owned()),
        }
    }
}

/// Writes a JSON string.
fn write_str(out: &mut String, s: &str) {
    out.reserve(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Writes bytes as a JSON string of standard, padded base64.
fn write_base64(out: &mut String, bytes: &[u8]) {
    out.reserve(bytes.len().div_ceil(3) * 4 + 2);
    out.push('"');
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(BASE64[(n >> 18) as usize & 63] as char);
        out.push(BASE64[(n >> 12) as usize & 63] as char);
        out.push(if chunk.len() > 1 {
            BASE64[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if chunk.len() > 2 {
            BASE64[n as usize & 63] as char
        } else {
            '='
        });
    }
    out.push('"');
}

/// Writes a two's-complement little-endian integer as a JSON string of signed hex
/// (`"-1f"`, `"ff00"`): the magnitude in big-endian hex, `-` first when negative.
fn write_bigint_hex(out: &mut String, le: &[u8]) {
    let negative = le.last().is_some_and(|b| b & 0x80 != 0);
    let mut magnitude: Vec<u8> = le.to_vec();
    if negative {
        // Two's complement negation: invert, add one.
        let mut carry = true;
        for byte in magnitude.iter_mut() {
            let inverted = !*byte;
            let (sum, overflow) = inverted.overflowing_add(u8::from(carry));
            *byte = sum;
            carry = carry && overflow;
        }
    }
    while magnitude.len() > 1 && magnitude.last() == Some(&0) {
        magnitude.pop();
    }
    out.push('"');
    if negative {
        out.push('-');
    }
    if magnitude.is_empty() {
        out.push('0');
    }
    for (i, byte) in magnitude.iter().rev().enumerate() {
        if i == 0 {
            let _ = write!(out, "{byte:x}");
        } else {
            let _ = write!(out, "{byte:02x}");
        }
    }
    out.push('"');
}

/// Writes a float as a JSON number, or a string for the values JSON has no number for.
fn write_float(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("\"nan\"");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "\"inf\"" } else { "\"-inf\"" });
    } else {
        // `{:?}` prints the shortest representation that reads back as the same f64
        // ("1.0", "1e-7", "-0.0"), which JSON.parse accepts.
        let _ = write!(out, "{v:?}");
    }
}

/// Writes a value. The encoding, decoded by `ts/values.ts`:
///
/// * `null`, `true`, `false`: None, False, True
/// * a JSON integer: an int within ±(2^53 - 1); a JSON string: a str
/// * `["x", "-1f"]`: any other int, as signed hex
/// * `["f", 1.5]`, `["f", "nan" | "inf" | "-inf"]`: a float
/// * `["b", base64]`: bytes; `["s", base64]`: a str with lone surrogates (its WTF-8 bytes)
/// * `["t", [...]]`, `["l", [...]]`: tuple, list; `["d", [k0, v0, k1, v1, ...]]`: dict
/// * `["h", id]`: a handle; `["r", length]`: a redacted value
fn write_value(out: &mut String, value: &Value) {
    match value {
        Value::None => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Int(v) if (-MAX_SAFE_INT..=MAX_SAFE_INT).contains(v) => {
            let _ = write!(out, "{v}");
        }
        Value::Int(v) => {
            out.push_str("[\"x\",");
            write_bigint_hex(out, &v.to_le_bytes());
            out.push(']');
        }
        Value::BigInt(le) => {
            out.push_str("[\"x\",");
            write_bigint_hex(out, le);
            out.push(']');
        }
        Value::Float(v) => {
            out.push_str("[\"f\",");
            write_float(out, *v);
            out.push(']');
        }
        Value::Str(s) => write_str(out, s),
        Value::StrSurrogates(bytes) => {
            out.push_str("[\"s\",");
            write_base64(out, bytes);
            out.push(']');
        }
        Value::Bytes(bytes) => {
            out.push_str("[\"b\",");
            write_base64(out, bytes);
            out.push(']');
        }
        Value::Tuple(items) | Value::List(items) => {
            out.push_str(if matches!(value, Value::Tuple(_)) {
                "[\"t\",["
            } else {
                "[\"l\",["
            });
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, item);
            }
            out.push_str("]]");
        }
        Value::Dict(pairs) => {
            out.push_str("[\"d\",[");
            for (i, (k, v)) in pairs.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, k);
                out.push(',');
                write_value(out, v);
            }
            out.push_str("]]");
        }
        Value::Handle(id) => {
            let _ = write!(out, "[\"h\",{id}]");
        }
        Value::Redacted(len) => {
            let _ = write!(out, "[\"r\",{len}]");
        }
        Value::Object { type_name, state } => {
            out.push_str("[\"o\",[");
            write_str(out, type_name);
            out.push(',');
            write_value(out, state);
            out.push_str("]]");
        }
    }
}

/// Writes the payload of an event that is not a CALL, CALLBACK_RETURN or END, as a JSON
/// array whose shape depends on the kind:
///
/// RAISE `[type_name, args, attrs]`; FN_DEF `[flags, name]`; THREAD `[thread]`;
/// THREAD_START `[thread, parent, name]`; THREAD_EXIT `[thread]`; SIGNAL `[signum]`;
/// CALLBACK_ENTER `[handle, args]`; PROCESS `[kind, child]` (kind: "fork" | "spawn" |
/// "exec"); EXCEPTION `[type_name, message, traceback]`; COLLECT `[generation, nested,
/// after]`.
fn write_payload(out: &mut String, event: &Event) {
    out.push('[');
    match event {
        Event::Raise { error, .. } => {
            write_str(out, &error.type_name);
            out.push(',');
            write_value(out, &error.args);
            out.push(',');
            write_value(out, &error.attrs);
        }
        Event::FnDef(def) => {
            let _ = write!(out, "{},", def.flags);
            write_str(out, &def.name);
        }
        Event::Thread { thread } | Event::ThreadExit { thread } => {
            let _ = write!(out, "{thread}");
        }
        Event::ThreadStart {
            thread,
            parent,
            name,
        } => {
            let _ = write!(out, "{thread},{parent},");
            write_str(out, name);
        }
        Event::Signal { signum, during_call } => {
            let _ = write!(out, "{signum},{during_call}");
        }
        Event::Collect { generation, nested, after } => {
            let _ = write!(out, "{generation},{nested},{after}");
        }
        Event::CallbackEnter { handle, args } => {
            let _ = write!(out, "{handle},");
            write_value(out, args);
        }
        Event::Process { kind, child } => {
            write_str(out, kind.name());
            out.push(',');
            write_str(out, child);
        }
        Event::Exception {
            type_name,
            message,
            traceback,
        } => {
            write_str(out, type_name);
            out.push(',');
            write_str(out, message);
            out.push(',');
            write_str(out, traceback);
        }
        Event::Call { .. } | Event::CallbackReturn { .. } | Event::End => {}
    }
    out.push(']');
}

/// A trace file opened for reading, iterated in batches.
#[napi]
pub struct TraceReader {
    /// The iteration state. It borrows `*reader`, so it is declared (and dropped) first, and
    /// nothing touches `reader` while it exists.
    events: Option<Events<'static>>,
    /// The reader, owned through a raw pointer (from `Box::into_raw`, freed in `Drop`) so
    /// that `events` can borrow it for as long as this object lives.
    reader: NonNull<retrace_recorder::TraceReader>,
    header_json: String,
    file_len: u64,
    /// Set once iteration has ended (cleanly or on an error).
    finished: bool,
    error: Option<TraceError>,
}

impl Drop for TraceReader {
    fn drop(&mut self) {
        self.events = None;
        // SAFETY: `reader` came from `Box::into_raw` in `open` and is freed only here, after
        // the only borrow of it (`events`) has been dropped.
        drop(unsafe { Box::from_raw(self.reader.as_ptr()) });
    }
}

impl TraceReader {
    /// The events iterator, created on first use.
    fn events(&mut self) -> &mut Events<'static> {
        let reader = self.reader;
        self.events.get_or_insert_with(|| {
            // SAFETY: the pointee lives until `drop`, which drops `events` first; while `events`
            // exists, this struct never reads or writes `*reader` except through it.
            let reader: &'static mut retrace_recorder::TraceReader =
                unsafe { &mut *reader.as_ptr() };
            reader.events()
        })
    }

    fn with_reader<T>(&self, f: impl FnOnce(&retrace_recorder::TraceReader) -> T) -> T {
        match &self.events {
            // SAFETY: no `Events` borrows the reader, so a shared reference is the only one.
            None => f(unsafe { self.reader.as_ref() }),
            Some(_) => unreachable!("with_reader while iterating"),
        }
    }
}

#[napi]
impl TraceReader {
    /// Opens a trace file and reads its header. Throws an Error with the reader's one-line
    /// message and a `code` (`ERR_TRACE_IO`, `ERR_TRACE_NOT_A_TRACE`,
    /// `ERR_TRACE_UNSUPPORTED_VERSION`, `ERR_TRACE_TRUNCATED`, `ERR_TRACE_CORRUPT`).
    #[napi(factory)]
    pub fn open(path: String) -> Result<TraceReader, napi::Error<String>> {
        let reader =
            retrace_recorder::TraceReader::open(Path::new(&path)).map_err(|e| js_error(&e))?;
        let header_json = serde_json::to_string(reader.header()).map_err(|e| {
            napi::Error::new(
                "ERR_TRACE_CORRUPT".to_owned(),
                format!("cannot encode trace header: {e}"),
            )
        })?;
        let file_len = reader.file_len();
        Ok(TraceReader {
            events: None,
            reader: NonNull::from(Box::leak(Box::new(reader))),
            header_json,
            file_len,
            finished: false,
            error: None,
        })
    }

    /// The trace header, as JSON.
    #[napi]
    pub fn header(&self) -> String {
        self.header_json.clone()
    }

    /// Size of the trace file in bytes.
    #[napi(getter)]
    pub fn file_length(&self) -> f64 {
        self.file_len as f64
    }

    /// Decodes up to `max` events (at least 1). A batch with `done` set is the last one; its
    /// `error` says why reading stopped early, if it did.
    #[napi]
    pub fn next_batch(&mut self, max: u32) -> EventBatch {
        let max = max.clamp(1, 1 << 20) as usize;
        if self.finished {
            return Columns::default().into_batch(true, self.error.as_ref());
        }
        let mut columns = Columns::with_capacity(max);
        let events = self.events();
        let mut error = None;
        let mut done = false;
        while columns.kind.len() < max {
            match events.next() {
                Some(Ok(record)) => columns.push(&record),
                Some(Err(e)) => {
                    error = Some(e);
                    done = true;
                    break;
                }
                None => {
                    done = true;
                    break;
                }
            }
        }
        if done {
            self.finished = true;
            self.error = error;
        }
        columns.into_batch(done, self.error.as_ref())
    }

    /// The name of the fn defined with `id` so far, or null.
    #[napi]
    pub fn fn_name(&self, id: u32) -> Option<String> {
        match &self.events {
            Some(events) => events.fn_def(id).map(|d| d.name.clone()),
            None => self.with_reader(|r| r.fn_def(id).map(|d| d.name.clone())),
        }
    }

    /// The trailer as JSON, once iteration has reached it (the trace was closed cleanly).
    #[napi]
    pub fn trailer(&self) -> Option<String> {
        let trailer = match &self.events {
            Some(events) => events.trailer().cloned(),
            None => self.with_reader(|r| r.trailer().cloned()),
        };
        trailer.and_then(|t| serde_json::to_string(&t).ok())
    }

    /// True once iteration has read the whole trace, trailer included, without error.
    #[napi]
    pub fn is_complete(&self) -> bool {
        self.finished && self.error.is_none() && self.trailer().is_some()
    }

    /// The error that stopped iteration, if any: `{ message, code }` as JSON.
    #[napi]
    pub fn error(&self) -> Option<String> {
        self.error.as_ref().map(|e| {
            let mut out = String::from("{\"message\":");
            write_str(&mut out, &e.to_string());
            out.push_str(",\"code\":");
            write_str(&mut out, error_code(e));
            out.push('}');
            out
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(value: &Value) -> String {
        let mut out = String::new();
        write_value(&mut out, value);
        out
    }

    #[test]
    fn base64_matches_the_standard_alphabet_and_padding() {
        for (input, expected) in [
            (&b""[..], "\"\""),
            (b"f", "\"Zg==\""),
            (b"fo", "\"Zm8=\""),
            (b"foo", "\"Zm9v\""),
            (b"\xff\xfe\x00", "\"//4A\""),
        ] {
            let mut out = String::new();
            write_base64(&mut out, input);
            assert_eq!(out, expected);
        }
    }

    #[test]
    fn big_ints_are_signed_hex() {
        let hex = |le: &[u8]| {
            let mut out = String::new();
            write_bigint_hex(&mut out, le);
            out
        };
        assert_eq!(
            hex(&[0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01]),
            "\"10000000000000000\""
        );
        assert_eq!(
            hex(&[0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xFF]),
            "\"-10000000000000000\""
        );
        assert_eq!(hex(&[0xFF]), "\"-1\"");
        assert_eq!(hex(&[0x80]), "\"-80\"");
        assert_eq!(hex(&[0x00]), "\"0\"");
        assert_eq!(hex(&[]), "\"0\"");
        assert_eq!(hex(&i64::MIN.to_le_bytes()), "\"-8000000000000000\"");
    }

    #[test]
    fn values_encode_as_documented() {
        assert_eq!(json(&Value::Int(-5)), "-5");
        assert_eq!(json(&Value::Int(1 << 60)), "[\"x\",\"1000000000000000\"]");
        assert_eq!(json(&Value::Float(1.0)), "[\"f\",1.0]");
        assert_eq!(json(&Value::Float(-0.0)), "[\"f\",-0.0]");
        assert_eq!(json(&Value::Float(f64::NAN)), "[\"f\",\"nan\"]");
        assert_eq!(json(&Value::Float(1e300)), "[\"f\",1e300]");
        assert_eq!(
            json(&Value::Str("a\"\\\n\u{1}".to_owned())),
            "\"a\\\"\\\\\\n\\u0001\""
        );
        assert_eq!(
            json(&Value::Dict(vec![(
                Value::Str("k".to_owned()),
                Value::List(vec![Value::None, Value::Bool(true)])
            )])),
            "[\"d\",[\"k\",[\"l\",[null,true]]]]"
        );
        assert_eq!(json(&Value::Tuple(vec![])), "[\"t\",[]]");
        assert_eq!(json(&Value::Handle(3)), "[\"h\",3]");
        assert_eq!(json(&Value::Redacted(9)), "[\"r\",9]");
        assert_eq!(json(&Value::Bytes(b"hi".to_vec())), "[\"b\",\"aGk=\"]");
        assert_eq!(
            json(&Value::StrSurrogates(vec![0xED, 0xA0, 0x80])),
            "[\"s\",\"7aCA\"]"
        );
    }

    #[test]
    fn scalar_results_go_to_the_number_column() {
        let mut columns = Columns::with_capacity(4);
        columns.push_value(&Value::Float(2.5));
        columns.push_value(&Value::Int(-7));
        columns.push_value(&Value::Int(i64::MAX));
        columns.push_value(&Value::Str("s".to_owned()));
        columns.push_value(&Value::Bytes(b"ab".to_vec()));
        columns.push_value(&Value::Bytes(b"cde".to_vec()));
        assert_eq!(
            columns.vtag,
            vec![TAG_FLOAT, TAG_INT, VTAG_EXTRA, VTAG_EXTRA, TAG_BYTES, TAG_BYTES]
        );
        assert_eq!(columns.num[..2], [2.5, -7.0]);
        assert_eq!(columns.num[4..], [2.0, 5.0]);
        assert_eq!(columns.bytes, b"abcde");
        assert_eq!(columns.extra, "[[\"x\",\"7fffffffffffffff\"],\"s\"");
    }
}

/// Waits, up to `timeout_ms`, until no trace writer holds any `trace/*.rtrace` under the
/// recording directory `dir`: the writer process of a program that was killed may still be
/// writing what the program submitted. Returns false on timeout. A missing directory
/// counts as written.
#[napi]
pub fn wait_for_trace_writers(dir: String, timeout_ms: u32) -> napi::Result<bool> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(u64::from(timeout_ms));
    let traces = match std::fs::read_dir(Path::new(&dir).join("trace")) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(true),
        Err(e) => return Err(napi::Error::from_reason(format!("cannot list {dir}/trace: {e}"))),
    };
    for entry in traces.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "rtrace") {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let written = retrace_recorder::wait_until_written(&path, left)
                .map_err(|e| napi::Error::from_reason(format!("cannot read {}: {e}", path.display())))?;
            if !written {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

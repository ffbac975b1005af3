//! Decoded events and values: what [`crate::TraceReader`] yields. The encoder side does not
//! build these (it writes bytes directly); they exist for readers, tools and tests.

use crate::wire::{FN_HAS_DIGEST, FN_SYNC};

/// How a child process came to be (payload of a PROCESS event).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ProcessKind {
    Fork = 0,
    Spawn = 1,
    Exec = 2,
}

impl ProcessKind {
    /// The kind for a wire byte, or `None` for an unknown byte.
    pub fn from_u8(byte: u8) -> Option<ProcessKind> {
        match byte {
            0 => Some(ProcessKind::Fork),
            1 => Some(ProcessKind::Spawn),
            2 => Some(ProcessKind::Exec),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ProcessKind::Fork => "fork",
            ProcessKind::Spawn => "spawn",
            ProcessKind::Exec => "exec",
        }
    }
}

/// A hooked function, declared by an FN_DEF event before its first CALL or RAISE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FnDef {
    pub id: u32,
    pub flags: u8,
    /// Qualified name, e.g. `time.time`.
    pub name: String,
}

impl FnDef {
    /// True when CALL and RAISE events of this fn carry an argument digest.
    pub fn has_digest(&self) -> bool {
        self.flags & FN_HAS_DIGEST != 0
    }

    /// True when calls of this fn are ordered across threads at replay (see `FN_SYNC`).
    pub fn is_sync(&self) -> bool {
        self.flags & FN_SYNC != 0
    }
}

/// An exception a hooked call raised at record time, to be raised again at replay.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedError {
    /// Qualified type name (`"FileNotFoundError"`, `"socket.timeout"`); resolved at replay
    /// only among already-imported modules, never imported or evaluated by the reader.
    pub type_name: String,
    /// The exception's `args`.
    pub args: Value,
    /// Extra attributes (conventionally a dict: `errno`, `filename`, ...).
    pub attrs: Value,
}

/// A recorded Python value.
///
/// Equality is bitwise for floats (`NaN == NaN` with the same payload, `0.0 != -0.0`):
/// a replay must reproduce exactly the recorded bits.
#[derive(Debug, Clone)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An int outside i64: two's-complement little-endian bytes.
    BigInt(Vec<u8>),
    Float(f64),
    Str(String),
    /// A str containing lone surrogates: UTF-8 with the surrogates encoded as is
    /// (Python's `surrogatepass`), which is not valid UTF-8 and so not a Rust `String`.
    StrSurrogates(Vec<u8>),
    Bytes(Vec<u8>),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    /// An object that will not exist at replay (fd, socket, connection), by recorder id.
    Handle(u32),
    /// A secret we refused to store; only its original length is kept.
    Redacted(u64),
    /// An instance of `type_name` (`module:qualname`), rebuilt at replay as
    /// `type(*state)` where `state` is a tuple; the reader never resolves the type.
    Object { type_name: String, state: Box<Value> },
}

impl PartialEq for Value {
    fn eq(&self, other: &Value) -> bool {
        match (self, other) {
            (Value::None, Value::None) => true,
            (Value::Bool(a), Value::Bool(b)) => a == b,
            (Value::Int(a), Value::Int(b)) => a == b,
            (Value::BigInt(a), Value::BigInt(b)) => a == b,
            (Value::Float(a), Value::Float(b)) => a.to_bits() == b.to_bits(),
            (Value::Str(a), Value::Str(b)) => a == b,
            (Value::StrSurrogates(a), Value::StrSurrogates(b)) => a == b,
            (Value::Bytes(a), Value::Bytes(b)) => a == b,
            (Value::Tuple(a), Value::Tuple(b)) => a == b,
            (Value::List(a), Value::List(b)) => a == b,
            (Value::Dict(a), Value::Dict(b)) => a == b,
            (Value::Handle(a), Value::Handle(b)) => a == b,
            (Value::Redacted(a), Value::Redacted(b)) => a == b,
            (
                Value::Object { type_name: a, state: sa },
                Value::Object { type_name: b, state: sb },
            ) => a == b && sa == sb,
            _ => false,
        }
    }
}

/// One decoded event (see ARCHITECTURE.md, "Events").
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A hooked call returned `result`. Delta-encoded results come back as `Int` / `Float`.
    Call {
        fn_id: u32,
        digest: Option<u32>,
        result: Value,
    },
    /// A hooked call raised `error`.
    Raise {
        fn_id: u32,
        digest: Option<u32>,
        error: RecordedError,
    },
    FnDef(FnDef),
    /// The following events belong to `thread`.
    Thread {
        thread: u32,
    },
    ThreadStart {
        thread: u32,
        parent: u32,
        name: String,
    },
    ThreadExit {
        thread: u32,
    },
    /// A Python-level signal handler ran here: inside the boundary call whose event
    /// follows (`during_call`), or between two boundary calls.
    Signal {
        signum: i32,
        during_call: bool,
    },
    /// C called back into Python during a boundary call.
    CallbackEnter {
        handle: u32,
        args: Value,
    },
    CallbackReturn {
        result: Value,
    },
    Process {
        kind: ProcessKind,
        child: String,
    },
    /// The process ended with an uncaught exception.
    Exception {
        type_name: String,
        message: String,
        traceback: String,
    },
    /// Clean end of the process's recording.
    End,
    /// An automatic collection of the cyclic garbage collector started here (its
    /// finalizers and weakref callbacks ran next), inside a boundary call when `nested`.
    /// `after` is the collector's young-generation threshold minus its allocation count
    /// when the program last left a hook: the collection came with the allocation that
    /// took the count past the threshold.
    Collect {
        generation: u8,
        nested: bool,
        after: i32,
    },
}

impl Event {
    /// Short snake_case name of the event kind, for reports and tools.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Event::Call { .. } => "call",
            Event::Raise { .. } => "raise",
            Event::FnDef(_) => "fn_def",
            Event::Thread { .. } => "thread",
            Event::ThreadStart { .. } => "thread_start",
            Event::ThreadExit { .. } => "thread_exit",
            Event::Signal { .. } => "signal",
            Event::CallbackEnter { .. } => "callback_enter",
            Event::CallbackReturn { .. } => "callback_return",
            Event::Process { .. } => "process",
            Event::Exception { .. } => "exception",
            Event::End => "end",
            Event::Collect { .. } => "collect",
        }
    }
}

/// An event with its position in the trace.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRecord {
    /// 0-based index over all events of the trace.
    pub index: u64,
    /// The thread the event belongs to. For a THREAD event, the thread it switches to.
    pub thread: u32,
    /// Byte offset in the file of the zstd frame (chunk) holding the event.
    pub chunk_offset: u64,
    /// Nanoseconds since trace start at which the chunk's first event was encoded.
    pub chunk_elapsed_ns: u64,
    pub event: Event,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_equality_is_bitwise() {
        assert_eq!(Value::Float(f64::NAN), Value::Float(f64::NAN));
        assert_ne!(Value::Float(0.0), Value::Float(-0.0));
        assert_ne!(Value::Float(1.0), Value::Int(1));
    }

    #[test]
    fn process_kind_bytes() {
        for kind in [ProcessKind::Fork, ProcessKind::Spawn, ProcessKind::Exec] {
            assert_eq!(ProcessKind::from_u8(kind as u8), Some(kind));
        }
        assert_eq!(ProcessKind::from_u8(3), None);
    }
}

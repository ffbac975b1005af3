//! retrace's trace format: everything between "a hooked call returned this value" and the
//! bytes of `trace/<process>.rtrace`, and back.
//!
//! * [`ChunkEncoder`] appends events to an in-memory chunk on the recording thread (GIL held,
//!   no allocation in the steady state).
//! * [`TraceWriter`] hands each finished chunk, through shared memory, to a writer (a helper
//!   process, or a thread) that compresses it into its own zstd frame and appends it,
//!   between a header and (on a clean close) a trailer.
//! * [`TraceReader`] maps a trace, walks its frames and decodes [`EventRecord`]s, reporting
//!   a cut-short or damaged trace as a [`TraceError`] with the byte offset, never a panic.
//!
//! ARCHITECTURE.md ("Trace format", "Events", "Values") is the normative wire format. This
//! crate knows nothing of Python or Node: `crates/pyhook` and `crates/node` build on it.

pub mod encode;
pub mod event;
pub mod header;
pub mod reader;
mod ring;
pub mod stream;
pub mod wire;
pub mod writer;

/// The trace format version this crate writes and reads.
pub const FORMAT_VERSION: u16 = 2;

pub use encode::ChunkEncoder;
pub use event::{Event, EventRecord, FnDef, ProcessKind, RecordedError, Value};
pub use header::{ChunkInfo, PythonInfo, TraceHeader, TraceTrailer};
pub use reader::{Events, TraceError, TraceErrorKind, TraceReader};
pub use stream::{read_stream, RecordedStream, Segment, StreamError, StreamWriter};
pub use writer::{wait_until_written, TraceWriter, WriterFailed, WriterOptions, WriterPlacement};

#[cfg(test)]
mod tests {
    use super::*;

    /// The recorder keeps the writer and encoder in process-wide state shared by Python
    /// threads, and the napi binding moves readers between threads.
    #[test]
    fn handles_can_cross_threads() {
        fn send_and_sync<T: Send + Sync>() {}
        fn send<T: Send>() {}
        send_and_sync::<TraceWriter>();
        send_and_sync::<ChunkEncoder>();
        send_and_sync::<TraceReader>();
        send::<Events<'static>>();
        send_and_sync::<TraceError>();
    }
}

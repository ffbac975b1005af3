//! The JSON records carried in the trace's skippable frames: the header (first frame) and
//! the trailer (last frame, written only on a clean close).

use serde::{Deserialize, Serialize};

use crate::wire::{RECORD_MAGIC, RECORD_PREFIX_LEN, SKIPPABLE_MAGIC};
use crate::FORMAT_VERSION;

/// Who recorded this trace, and where. Written once, synchronously, when the trace is created.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceHeader {
    /// Must equal [`FORMAT_VERSION`]; the binary version in the frame is the one readers check.
    pub format_version: u16,
    pub retrace_version: String,
    /// Trace name within the recording: `"0"` for the root process, `"0-1"` for its first child.
    pub process: String,
    /// The parent process's trace name, for a child process.
    pub parent: Option<String>,
    pub pid: u32,
    pub start_unix_ns: u64,
    pub python: PythonInfo,
    pub argv: Vec<String>,
    pub orig_argv: Vec<String>,
    pub cwd: String,
    pub hash_seed: Option<u64>,
    /// Room for fields later versions add without a format bump.
    #[serde(default)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// The recording interpreter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PythonInfo {
    /// `sys.version`.
    pub version: String,
    /// `sys.version_info[:3]`.
    pub version_info: (u32, u32, u32),
    /// `sys.implementation.name`.
    pub implementation: String,
    /// `sys.implementation.cache_tag`.
    pub cache_tag: String,
    /// `sys.executable`.
    pub executable: String,
}

/// Summary written on a clean close. Its absence means the recording was cut short.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceTrailer {
    /// Total number of events in the trace.
    pub events: u64,
    pub chunks: Vec<ChunkInfo>,
    /// Nanoseconds from the writer's creation to its clean close.
    pub end_elapsed_ns: u64,
}

/// Where one chunk (zstd frame) is and which events it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkInfo {
    /// Byte offset of the frame in the file.
    pub offset: u64,
    pub first_event: u64,
    pub events: u64,
}

/// Builds a complete skippable frame: magic, u32 LE length, `RTRC`, u16 LE format version,
/// record kind, JSON.
pub(crate) fn record_frame(kind: u8, json: &[u8]) -> std::io::Result<Vec<u8>> {
    let payload_len = u32::try_from(RECORD_PREFIX_LEN + json.len()).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "trace record larger than 4 GiB",
        )
    })?;
    let mut frame = Vec::with_capacity(8 + payload_len as usize);
    frame.extend_from_slice(&SKIPPABLE_MAGIC.to_le_bytes());
    frame.extend_from_slice(&payload_len.to_le_bytes());
    frame.extend_from_slice(RECORD_MAGIC);
    frame.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    frame.push(kind);
    frame.extend_from_slice(json);
    Ok(frame)
}

//! Byte streams recorded beside a trace: the traffic of a connection whose I/O happens
//! below any Python hook (libpq's socket to a PostgreSQL server), as the ordered segments
//! each side sent.
//!
//! A stream file (`trace/<process>.pg<N>.rtstream`) is one zstd frame, flushed after every
//! segment so that a process killed mid-run loses nothing it had relayed. Decompressed it is
//! [`STREAM_MAGIC`], a version byte, then records of `kind: u8, len: u32 LE, len bytes`:
//!
//! | kind | meaning |
//! | --- | --- |
//! | 1 | bytes the client (the program's library) sent |
//! | 2 | bytes the server sent |
//! | 3 | the server closed its side |
//! | 4 | the client closed its side |
//!
//! The order of the records is the order in which the relay saw them, which respects
//! causality: the client bytes a server reply answers come before that reply. A file whose
//! last record is not a close ends where the process stopped relaying (it exited with the
//! connection open, or was killed).

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// First bytes of a decompressed stream.
pub const STREAM_MAGIC: &[u8; 8] = b"RTSTREAM";
/// The stream format version this crate writes and reads.
pub const STREAM_VERSION: u8 = 1;
/// Largest segment a reader accepts; a longer length is corruption, not data.
pub const MAX_SEGMENT: u32 = 1 << 30;

const CLIENT_DATA: u8 = 1;
const SERVER_DATA: u8 = 2;
const SERVER_CLOSED: u8 = 3;
const CLIENT_CLOSED: u8 = 4;

/// One recorded step of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Client(Vec<u8>),
    Server(Vec<u8>),
    ServerClosed,
    ClientClosed,
}

/// Appends segments to a stream file. Consecutive sends of the same side are merged into one
/// segment by the caller or not at all: a reader treats them alike.
pub struct StreamWriter {
    encoder: zstd::stream::write::Encoder<'static, File>,
}

impl StreamWriter {
    /// Creates `path` (which must not exist yet).
    pub fn create(path: &Path) -> io::Result<StreamWriter> {
        let file = File::options().write(true).create_new(true).open(path)?;
        let mut encoder = zstd::stream::write::Encoder::new(file, 3)?;
        encoder.include_checksum(true)?;
        encoder.write_all(STREAM_MAGIC)?;
        encoder.write_all(&[STREAM_VERSION])?;
        encoder.flush()?;
        Ok(StreamWriter { encoder })
    }

    /// Records `bytes` sent by the client.
    pub fn client(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.record(CLIENT_DATA, bytes)
    }

    /// Records `bytes` sent by the server.
    pub fn server(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.record(SERVER_DATA, bytes)
    }

    pub fn server_closed(&mut self) -> io::Result<()> {
        self.record(SERVER_CLOSED, &[])
    }

    pub fn client_closed(&mut self) -> io::Result<()> {
        self.record(CLIENT_CLOSED, &[])
    }

    fn record(&mut self, kind: u8, bytes: &[u8]) -> io::Result<()> {
        let len = u32::try_from(bytes.len()).ok().filter(|&n| n <= MAX_SEGMENT).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "segment larger than the stream format allows")
        })?;
        self.encoder.write_all(&[kind])?;
        self.encoder.write_all(&len.to_le_bytes())?;
        self.encoder.write_all(bytes)?;
        // Durable per segment: what the program saw is on disk before it acts on it.
        self.encoder.flush()
    }

    /// Completes the zstd frame (its checksum included).
    pub fn finish(self) -> io::Result<()> {
        self.encoder.finish()?.sync_data()
    }
}

/// What reading a stream file found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedStream {
    pub segments: Vec<Segment>,
    /// False when the file ends without a completed frame: the recording process stopped
    /// relaying while the connection was open. Every segment in `segments` is complete.
    pub complete: bool,
}

/// A stream file that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamError {
    pub path: PathBuf,
    pub message: String,
}

impl std::fmt::Display for StreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "connection recording {} {}", self.path.display(), self.message)
    }
}

impl std::error::Error for StreamError {}

/// Reads a whole stream file.
pub fn read_stream(path: &Path) -> Result<RecordedStream, StreamError> {
    let fail = |message: String| StreamError { path: path.to_path_buf(), message };
    let file = File::open(path).map_err(|e| fail(format!("cannot be read: {e}")))?;
    let mut decoder = zstd::stream::read::Decoder::new(file).map_err(|e| fail(format!("cannot be read: {e}")))?;
    let mut data = Vec::new();
    // A frame cut short still yields every block flushed before the cut; the error that
    // follows is where the file ends. A damaged block fails the same way, so the segments
    // decoded before it are all that is trusted.
    let mut buf = [0u8; 64 * 1024];
    let complete = loop {
        match decoder.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => data.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break false,
        }
    };
    let header_len = STREAM_MAGIC.len() + 1;
    if data.len() < header_len || &data[..STREAM_MAGIC.len()] != STREAM_MAGIC {
        return Err(fail("is not a retrace connection recording (damaged or cut short at its start)".into()));
    }
    if data[STREAM_MAGIC.len()] != STREAM_VERSION {
        return Err(fail(format!(
            "has stream format version {}, but this retrace reads version {STREAM_VERSION}",
            data[STREAM_MAGIC.len()]
        )));
    }
    let mut segments = Vec::new();
    let mut at = header_len;
    while at < data.len() {
        let Some(head) = data.get(at..at + 5) else {
            return partial(segments, complete, at, &fail);
        };
        let kind = head[0];
        let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]);
        if len > MAX_SEGMENT {
            return Err(fail(format!("is corrupt at decompressed offset {at}: a segment of {len} bytes")));
        }
        let Some(bytes) = data.get(at + 5..at + 5 + len as usize) else {
            return partial(segments, complete, at, &fail);
        };
        segments.push(match kind {
            CLIENT_DATA => Segment::Client(bytes.to_vec()),
            SERVER_DATA => Segment::Server(bytes.to_vec()),
            SERVER_CLOSED => Segment::ServerClosed,
            CLIENT_CLOSED => Segment::ClientClosed,
            other => return Err(fail(format!("is corrupt at decompressed offset {at}: unknown segment kind {other}"))),
        });
        at += 5 + len as usize;
    }
    Ok(RecordedStream { segments, complete })
}

/// A segment cut in two: fine where the frame itself was cut short (the writer flushes
/// whole segments, so this is the last one being written when the process died), corrupt
/// inside a completed frame.
fn partial(
    segments: Vec<Segment>,
    complete: bool,
    at: usize,
    fail: &dyn Fn(String) -> StreamError,
) -> Result<RecordedStream, StreamError> {
    if complete {
        Err(fail(format!("is corrupt at decompressed offset {at}: a segment runs past the end")))
    } else {
        Ok(RecordedStream { segments, complete: false })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(dir: &Path) -> PathBuf {
        let path = dir.join("s.rtstream");
        let mut w = StreamWriter::create(&path).unwrap();
        w.client(b"Q\0\0\0\x0dSELECT 1\0").unwrap();
        w.server(&[b'Z'; 100_000]).unwrap();
        w.server(b"more").unwrap();
        w.client_closed().unwrap();
        w.server_closed().unwrap();
        w.finish().unwrap();
        path
    }

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let stream = read_stream(&sample(dir.path())).unwrap();
        assert!(stream.complete);
        assert_eq!(
            stream.segments,
            vec![
                Segment::Client(b"Q\0\0\0\x0dSELECT 1\0".to_vec()),
                Segment::Server(vec![b'Z'; 100_000]),
                Segment::Server(b"more".to_vec()),
                Segment::ClientClosed,
                Segment::ServerClosed,
            ]
        );
    }

    #[test]
    fn unfinished_frame_keeps_flushed_segments() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("open.rtstream");
        let mut w = StreamWriter::create(&path).unwrap();
        w.client(b"hello").unwrap();
        w.server(b"world").unwrap();
        // Dropped without finish(): the process exited with the connection open.
        std::mem::forget(w);
        let stream = read_stream(&path).unwrap();
        assert!(!stream.complete);
        assert_eq!(stream.segments, vec![Segment::Client(b"hello".to_vec()), Segment::Server(b"world".to_vec())]);
    }

    #[test]
    fn truncated_and_damaged_files_are_errors_or_partial_never_panics() {
        let dir = tempfile::tempdir().unwrap();
        let full = std::fs::read(sample(dir.path())).unwrap();
        for cut in 0..full.len() {
            let path = dir.path().join(format!("cut{cut}"));
            std::fs::write(&path, &full[..cut]).unwrap();
            if let Ok(stream) = read_stream(&path) {
                assert!(!stream.complete, "a file cut at {cut} read as complete");
            }
        }
        for at in (0..full.len()).step_by(7) {
            let mut bad = full.clone();
            bad[at] ^= 0x5a;
            let path = dir.path().join(format!("bad{at}"));
            std::fs::write(&path, &bad).unwrap();
            let _ = read_stream(&path);
        }
        let missing = read_stream(&dir.path().join("none")).unwrap_err();
        assert!(missing.to_string().contains("cannot be read"), "{missing}");
    }
}

//! The writer thread: receives finished chunks from the recording threads, compresses each
//! into an independent zstd frame, and appends it to the trace file, so compression and I/O
//! never run with the GIL held.
//!
//! API note: [`TraceWriter::finish`] takes the total event count
//! (`finish(self, total_events: u64)`, from [`crate::ChunkEncoder::events_written`]). The
//! writer thread learns each chunk's first event index from its chunk header, so it can
//! derive every chunk's event count but the last one's; the total supplies that, and the
//! trailer's event count, without widening `submit`.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::encode::CHUNK_SLACK;
use crate::header::{record_frame, ChunkInfo, TraceHeader, TraceTrailer};
use crate::wire::{read_varint, RECORD_KIND_HEADER, RECORD_KIND_TRAILER};
use crate::FORMAT_VERSION;

/// A recycled buffer that grew past this many times the normal buffer size (one huge value)
/// is dropped instead of reused, so one large event does not pin its memory forever.
const RECYCLE_GROWTH_LIMIT: usize = 4;

#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// Uncompressed bytes after which the encoder's chunk counts as full.
    pub chunk_capacity: usize,
    /// How many finished chunks may wait for the writer thread before `submit` blocks.
    pub channel_chunks: usize,
    /// zstd's level. 1 (its "fast" strategy): the writer runs beside the program on a core it
    /// may need, and a trace's bulk is random bytes (entropy, payloads) that no level shrinks,
    /// where level 3 cost ~1,150 instructions per `os.urandom(16)` event against ~750.
    pub zstd_level: i32,
    /// After this long without a submitted chunk, `flush_due` asks for a partial one, so a
    /// quiet program still gets its events to disk (and survives a kill).
    pub flush_interval: Duration,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            chunk_capacity: 64 * 1024,
            channel_chunks: 8,
            zstd_level: 1,
            flush_interval: Duration::from_millis(100),
        }
    }
}

/// The writer thread has failed (see [`TraceWriter::failure`]); the chunk was dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriterFailed(pub String);

impl std::fmt::Display for WriterFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for WriterFailed {}

/// Where the frames go: a file, or in unit tests a sink that fails on demand.
trait TraceSink: Write + Send {
    fn sync_all(&mut self) -> io::Result<()>;
}

impl TraceSink for File {
    fn sync_all(&mut self) -> io::Result<()> {
        File::sync_all(self)
    }
}

/// State the producer side and the writer thread both see.
#[derive(Debug, Default)]
struct Shared {
    flush_due: AtomicBool,
    /// Set once, with `failure`, when the writer thread stops on an error.
    failed: AtomicBool,
    failure: Mutex<Option<String>>,
}

/// What the writer thread hands back when it stops: the sink, for the trailer, and where
/// each chunk went.
struct WriterThreadResult {
    sink: Box<dyn TraceSink>,
    /// (frame offset, first event index) of each chunk written.
    chunks: Vec<(u64, u64)>,
    error: Option<io::Error>,
}

pub struct TraceWriter {
    /// `None` once closed; dropping it is what tells the writer thread to stop.
    chunks: Option<Sender<Vec<u8>>>,
    recycled: Receiver<Vec<u8>>,
    thread: Option<JoinHandle<WriterThreadResult>>,
    shared: Arc<Shared>,
    buffer_capacity: usize,
    started: Instant,
}

/// Descriptors below this are left to the program being recorded.
const FIRST_PRIVATE_FD: i32 = 1000;

/// Moves the trace file's descriptor to [`FIRST_PRIVATE_FD`] or above (close-on-exec), so
/// the program's own descriptors get the same numbers while recording as while replaying,
/// where no trace file is open. Keeps the original when that is not possible.
#[cfg(unix)]
fn high_numbered(file: File) -> File {
    use std::os::fd::{AsRawFd, FromRawFd};
    // SAFETY: F_DUPFD_CLOEXEC on a descriptor we own returns a new descriptor (or -1) that
    // nothing else owns; the original is closed when `file` drops.
    let moved = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_DUPFD_CLOEXEC, FIRST_PRIVATE_FD) };
    if moved < 0 {
        return file;
    }
    // SAFETY: `moved` is a fresh descriptor owned by nobody else.
    unsafe { File::from_raw_fd(moved) }
}

#[cfg(not(unix))]
fn high_numbered(file: File) -> File {
    file
}

impl TraceWriter {
    /// Creates the file with `create_new` (an existing file is an error, never overwritten),
    /// writes the header frame synchronously, and spawns the "retrace-writer" thread.
    ///
    /// `header.format_version` must be [`FORMAT_VERSION`].
    pub fn create(
        path: &Path,
        header: &TraceHeader,
        options: WriterOptions,
    ) -> io::Result<TraceWriter> {
        // Validate before creating anything, so a bad header leaves no empty file behind.
        let header_frame = header_frame(header)?;
        let file = high_numbered(OpenOptions::new().write(true).create_new(true).open(path)?);
        let description = path.display().to_string();
        Self::start(Box::new(file), description, &header_frame, options)
    }

    fn start(
        mut sink: Box<dyn TraceSink>,
        description: String,
        header_frame: &[u8],
        options: WriterOptions,
    ) -> io::Result<TraceWriter> {
        sink.write_all(header_frame)?;

        // Created here rather than on the thread so a bad level fails `create`.
        let mut compressor = zstd::bulk::Compressor::new(options.zstd_level)?;
        compressor.set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(true))?;
        compressor.set_parameter(zstd::zstd_safe::CParameter::ContentSizeFlag(true))?;

        let (chunk_tx, chunk_rx) = crossbeam_channel::bounded(options.channel_chunks);
        // Room for every buffer that can be in flight, so the writer never blocks on recycling.
        let (recycle_tx, recycle_rx) = crossbeam_channel::bounded(options.channel_chunks + 2);
        let shared = Arc::new(Shared::default());
        let buffer_capacity = options.chunk_capacity + CHUNK_SLACK;

        let writer = ChunkWriterLoop {
            sink,
            description,
            offset: header_frame.len() as u64,
            chunks_written: Vec::new(),
            compressor,
            compressed: Vec::new(),
            incoming: chunk_rx,
            recycle: recycle_tx,
            recycle_limit: buffer_capacity.saturating_mul(RECYCLE_GROWTH_LIMIT),
            shared: Arc::clone(&shared),
            flush_interval: options.flush_interval,
        };
        let thread = std::thread::Builder::new()
            .name("retrace-writer".to_owned())
            .spawn(move || writer.run())?;

        Ok(TraceWriter {
            chunks: Some(chunk_tx),
            recycled: recycle_rx,
            thread: Some(thread),
            shared,
            buffer_capacity,
            started: Instant::now(),
        })
    }

    /// Sends a finished chunk (blocks while the channel is full). After a writer failure the
    /// chunk is dropped and the failure returned.
    pub fn submit(&self, chunk: Vec<u8>) -> Result<(), WriterFailed> {
        if self.shared.failed.load(Ordering::Acquire) {
            return Err(self.failed_error());
        }
        self.shared.flush_due.store(false, Ordering::Relaxed);
        let Some(sender) = &self.chunks else {
            return Err(WriterFailed("the trace writer is closed".to_owned()));
        };
        // A send fails only when the writer thread has stopped, i.e. after a failure.
        sender.send(chunk).map_err(|_| self.failed_error())
    }

    fn failed_error(&self) -> WriterFailed {
        WriterFailed(
            self.failure()
                .unwrap_or_else(|| "the trace writer thread has stopped".to_owned()),
        )
    }

    /// A cleared buffer for the encoder: a recycled one if available, else a new one with
    /// room for a chunk plus [`CHUNK_SLACK`].
    pub fn spare_buffer(&self) -> Vec<u8> {
        self.recycled
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(self.buffer_capacity))
    }

    /// True when `flush_interval` has passed since the last submit: the producer should then
    /// submit its partial chunk. One relaxed atomic load, cheap enough to check per event.
    #[inline]
    pub fn flush_due(&self) -> bool {
        self.shared.flush_due.load(Ordering::Relaxed)
    }

    /// The writer thread's I/O error (disk full, unwritable), if it has stopped on one.
    pub fn failure(&self) -> Option<String> {
        self.shared
            .failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Closes the channel, waits for the writer thread to write every submitted chunk, then
    /// appends the trailer frame and fsyncs. `total_events` is the encoder's
    /// `events_written()` (see the module doc). Returns the trailer.
    pub fn finish(mut self, total_events: u64) -> io::Result<TraceTrailer> {
        drop(self.chunks.take());
        let Some(thread) = self.thread.take() else {
            return Err(io::Error::other("the trace writer was already closed"));
        };
        let mut result = thread
            .join()
            .map_err(|_| io::Error::other("the trace writer thread panicked"))?;
        if let Some(error) = result.error.take() {
            return Err(error);
        }

        let mut chunks: Vec<ChunkInfo> = Vec::with_capacity(result.chunks.len());
        for (i, &(offset, first_event)) in result.chunks.iter().enumerate() {
            let next_first = result.chunks.get(i + 1).map_or(total_events, |next| next.1);
            chunks.push(ChunkInfo {
                offset,
                first_event,
                events: next_first.saturating_sub(first_event),
            });
        }
        let trailer = TraceTrailer {
            events: total_events,
            chunks,
            end_elapsed_ns: u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX),
        };
        let json = serde_json::to_vec(&trailer).map_err(io::Error::other)?;
        result
            .sink
            .write_all(&record_frame(RECORD_KIND_TRAILER, &json)?)?;
        result.sink.sync_all()?;
        Ok(trailer)
    }

    /// For a forked child, where the writer thread does not exist: forgets the writer without
    /// joining, writing or even touching the channel (a lock the parent's writer thread held
    /// at fork time would never be released in the child). The few handles leak on purpose;
    /// the inherited file descriptor is close-on-exec.
    pub fn abandon_in_forked_child(self) {
        std::mem::forget(self);
    }
}

impl Drop for TraceWriter {
    /// Without `finish`: writes what was submitted but no trailer, so the trace reads as cut
    /// short, which it is.
    fn drop(&mut self) {
        drop(self.chunks.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn header_frame(header: &TraceHeader) -> io::Result<Vec<u8>> {
    if header.format_version != FORMAT_VERSION {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "trace header says format version {}, this writer writes version {FORMAT_VERSION}",
                header.format_version
            ),
        ));
    }
    let json = serde_json::to_vec(header).map_err(io::Error::other)?;
    record_frame(RECORD_KIND_HEADER, &json)
}

/// The writer thread's state and loop.
struct ChunkWriterLoop {
    sink: Box<dyn TraceSink>,
    /// The trace path, for error messages.
    description: String,
    /// File offset the next frame is written at.
    offset: u64,
    chunks_written: Vec<(u64, u64)>,
    compressor: zstd::bulk::Compressor<'static>,
    /// Reused output buffer for compressed frames.
    compressed: Vec<u8>,
    incoming: Receiver<Vec<u8>>,
    recycle: Sender<Vec<u8>>,
    recycle_limit: usize,
    shared: Arc<Shared>,
    flush_interval: Duration,
}

impl ChunkWriterLoop {
    fn run(mut self) -> WriterThreadResult {
        let mut flush_deadline = Instant::now() + self.flush_interval;
        let error = loop {
            // Once a flush is due there is nothing more to time: wait for the next chunk
            // without waking up, so an idle program costs nothing.
            let received = if self.shared.flush_due.load(Ordering::Relaxed) {
                self.incoming
                    .recv()
                    .map_err(|_| RecvTimeoutError::Disconnected)
            } else {
                self.incoming.recv_deadline(flush_deadline)
            };
            match received {
                Ok(chunk) => {
                    flush_deadline = Instant::now() + self.flush_interval;
                    if !chunk.is_empty() {
                        if let Err(error) = self.write_chunk(&chunk) {
                            let message =
                                format!("cannot write the trace {}: {error}", self.description);
                            *self
                                .shared
                                .failure
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(message);
                            self.shared.failed.store(true, Ordering::Release);
                            break Some(error);
                        }
                    }
                    self.recycle(chunk);
                }
                Err(RecvTimeoutError::Timeout) => {
                    self.shared.flush_due.store(true, Ordering::Relaxed)
                }
                Err(RecvTimeoutError::Disconnected) => break None,
            }
        };
        // Returning drops `incoming`: a producer blocked in `submit` wakes up with an error.
        WriterThreadResult {
            sink: self.sink,
            chunks: self.chunks_written,
            error,
        }
    }

    fn write_chunk(&mut self, chunk: &[u8]) -> io::Result<()> {
        self.compressed.clear();
        self.compressed
            .reserve(zstd::zstd_safe::compress_bound(chunk.len()));
        self.compressor
            .compress_to_buffer(chunk, &mut self.compressed)?;
        self.sink.write_all(&self.compressed)?;
        // The chunk header starts with the first event index; the encoder always writes it.
        let first_event = read_varint(chunk, &mut 0).unwrap_or(0);
        self.chunks_written.push((self.offset, first_event));
        self.offset += self.compressed.len() as u64;
        Ok(())
    }

    fn recycle(&self, mut chunk: Vec<u8>) {
        if chunk.capacity() <= self.recycle_limit {
            chunk.clear();
            // Full means the producer has spares enough; dropping the buffer is fine.
            let _ = self.recycle.try_send(chunk);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::header::PythonInfo;
    use crate::ChunkEncoder;

    fn sample_header() -> TraceHeader {
        TraceHeader {
            format_version: FORMAT_VERSION,
            retrace_version: "0.1.0".to_owned(),
            process: "0".to_owned(),
            parent: None,
            pid: 1,
            start_unix_ns: 0,
            python: PythonInfo {
                version: "3.12.0".to_owned(),
                version_info: (3, 12, 0),
                implementation: "cpython".to_owned(),
                cache_tag: "cpython-312".to_owned(),
                executable: "/usr/bin/python3".to_owned(),
            },
            argv: vec![],
            orig_argv: vec![],
            cwd: "/".to_owned(),
            hash_seed: None,
            extra: Default::default(),
        }
    }

    /// Accepts the header (the first write) and sends everything after it to /dev/full,
    /// where every write fails with ENOSPC, like a disk that fills up mid-recording.
    struct FillsUpAfterHeader {
        header_written: bool,
        dev_full: File,
    }

    impl Write for FillsUpAfterHeader {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if !self.header_written {
                self.header_written = true;
                return Ok(buf.len());
            }
            self.dev_full.write(buf)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl TraceSink for FillsUpAfterHeader {
        fn sync_all(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn failure_reports_a_full_disk_and_submit_fails_after_it() {
        let Ok(dev_full) = OpenOptions::new().write(true).open("/dev/full") else {
            eprintln!("no /dev/full here; skipping");
            return;
        };
        let sink = FillsUpAfterHeader {
            header_written: false,
            dev_full,
        };
        let writer = TraceWriter::start(
            Box::new(sink),
            "/x/trace/0.rtrace".to_owned(),
            &header_frame(&sample_header()).unwrap(),
            WriterOptions::default(),
        )
        .unwrap();
        assert_eq!(writer.failure(), None);

        let mut enc = ChunkEncoder::new(1024);
        enc.end();
        writer
            .submit(enc.take_chunk(writer.spare_buffer()))
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while writer.failure().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let failure = writer
            .failure()
            .expect("the writer thread should report the failure");
        assert!(failure.contains("/x/trace/0.rtrace"), "{failure}");
        assert!(failure.to_lowercase().contains("space"), "{failure}");

        enc.end();
        let err = writer
            .submit(enc.take_chunk(writer.spare_buffer()))
            .unwrap_err();
        assert_eq!(err.0, failure);
        let finish_error = writer.finish(2).unwrap_err();
        assert_eq!(finish_error.kind(), io::ErrorKind::StorageFull);
    }

    #[test]
    fn header_with_another_format_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut header = sample_header();
        header.format_version = FORMAT_VERSION + 1;
        let path = dir.path().join("t.rtrace");
        let err = TraceWriter::create(&path, &header, WriterOptions::default())
            .err()
            .unwrap();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(!path.exists());
    }
}

//! The trace writer: receives finished chunks from the recording threads, compresses each
//! into an independent zstd frame, and appends it to the trace file, so compression and I/O
//! never run with the GIL held.
//!
//! Where it runs. On Linux, given the path of the `retrace-writer` program (built with this
//! crate, shipped next to the CPython extension), the writer is a process of its own, and
//! chunks reach it through shared memory (`ring.rs`). The program then keeps the threads it
//! has: once a process has a second thread, glibc brackets every blocking call (`send`,
//! `recv`, `read` ...) with its asynchronous-cancellation switch, ~40 ns a call that a
//! writer thread would add to every socket call of a single-threaded program. A writer
//! process also outlives the program: what was submitted before a `kill -9` or a crash
//! still reaches the disk. Elsewhere, or without the program, the writer is a thread, with
//! the same stream and the same loop.
//!
//! The writer process is started with `posix_spawn` (no copy of the program's memory), in a
//! session of its own (Ctrl-C and hang-ups reach the program, not its writer), with an empty
//! environment and only the trace, the stream's memory and its end of the socket. It forks
//! once at start and the first copy exits at once, reaped by `create`: the program's
//! `os.wait()` and `SIGCHLD` never see its writer, which init adopts. It ignores the
//! signals a supervisor sends a process group, and ends when it has written the trailer,
//! or when the program's end of the socket closes (the program has ended, however).
//!
//! The trace file is locked (`flock`, exclusive) by whoever writes it, for as long as it
//! does: [`wait_until_written`] is how a reader (the CLI, after the program exits) knows
//! that a writer finishing a killed program's trace is done.
//!
//! API note: [`TraceWriter::finish`] takes the total event count
//! (`finish(self, total_events: u64)`, from [`crate::ChunkEncoder::events_written`]). The
//! writer learns each chunk's first event index from its chunk header, so it can derive
//! every chunk's event count but the last one's; the total supplies that, and the trailer's
//! event count, without widening `submit`.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::encode::{ChunkEncoder, CHUNK_SLACK};
use crate::header::{record_frame, ChunkInfo, TraceHeader, TraceTrailer};
use crate::ring::{self, Consumer, Producer, Stopped};
use crate::wire::{read_varint, RECORD_KIND_HEADER, RECORD_KIND_TRAILER};
use crate::FORMAT_VERSION;

/// A chunk buffer that grew past this many times the normal buffer size (one huge value)
/// is dropped instead of reused, so one large event does not pin its memory forever.
const RECYCLE_GROWTH_LIMIT: usize = 4;

/// Messages on the stream: a kind byte, then its body.
/// `CHUNK`: length (u32 LE), then the chunk's bytes.
const MESSAGE_CHUNK: u8 = 1;
/// `FINISH`: the total event count and the elapsed nanoseconds (u64 LE each); the writer
/// appends the trailer, syncs and reports that it is done.
const MESSAGE_FINISH: u8 = 2;
/// `CLOSE`: no trailer (the trace reads as cut short); the writer syncs and reports done.
const MESSAGE_CLOSE: u8 = 3;
/// `COPY`: length (u32 LE) of the rest, the target path's length (u32 LE), the path, then
/// the file's bytes; the writer creates the file (and its directories). See
/// [`TraceWriter::copy_file`].
const MESSAGE_COPY: u8 = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriterPlacement {
    /// A process where possible (Linux, with [`WriterOptions::helper`]), else a thread.
    Auto,
    /// Always a thread of this process.
    Thread,
}

#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// Uncompressed bytes after which the encoder's chunk counts as full.
    pub chunk_capacity: usize,
    /// How many finished chunks may wait for the writer before `submit` blocks (the shared
    /// stream holds this many full chunks, rounded up to a power of two bytes).
    pub channel_chunks: usize,
    /// zstd's level. 1 (its "fast" strategy): the writer runs beside the program on a core it
    /// may need, and a trace's bulk is random bytes (entropy, payloads) that no level shrinks,
    /// where level 3 cost ~1,150 instructions per `os.urandom(16)` event against ~750.
    pub zstd_level: i32,
    /// After this long without a submitted chunk, `flush_due` asks for a partial one, so a
    /// quiet program still gets its events to disk (and survives a kill).
    pub flush_interval: Duration,
    pub placement: WriterPlacement,
    /// The `retrace-writer` program, for [`WriterPlacement::Auto`].
    pub helper: Option<std::path::PathBuf>,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            chunk_capacity: 64 * 1024,
            channel_chunks: 8,
            zstd_level: 1,
            flush_interval: Duration::from_millis(100),
            placement: WriterPlacement::Auto,
            helper: None,
        }
    }
}

/// The writer has failed (see [`TraceWriter::failure`]); the chunk was dropped.
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
    /// The descriptor a forked helper must keep open.
    fn raw_fd(&self) -> Option<RawFd>;
}

impl TraceSink for File {
    fn sync_all(&mut self) -> io::Result<()> {
        File::sync_all(self)
    }
    fn raw_fd(&self) -> Option<RawFd> {
        Some(self.as_raw_fd())
    }
}

pub struct TraceWriter {
    producer: Producer,
    /// The writer thread, in thread mode; `None` for a helper process, or once joined.
    thread: Option<JoinHandle<()>>,
    /// The last submitted chunk's buffer, handed back by `spare_buffer`.
    spare: Option<Vec<u8>>,
    buffer_capacity: usize,
    recycle_limit: usize,
    /// This process's descriptor of the trace file (thread mode only).
    trace_fd: Option<RawFd>,
    /// False once a finish or close message was sent.
    open: bool,
    started: Instant,
}

/// Descriptors below this are left to the program being recorded.
const FIRST_PRIVATE_FD: i32 = 1000;

/// Moves `fd` to [`FIRST_PRIVATE_FD`] or above (close-on-exec), so the program's own
/// descriptors get the same numbers while recording as while replaying, where no trace
/// file is open. Keeps the original when that is not possible.
pub(crate) fn high_numbered(fd: OwnedFd) -> OwnedFd {
    // SAFETY: F_DUPFD_CLOEXEC on a descriptor we own returns a new descriptor (or -1) that
    // nothing else owns; the original is closed when `fd` drops.
    let moved = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, FIRST_PRIVATE_FD) };
    if moved < 0 {
        return fd;
    }
    // SAFETY: `moved` is a fresh descriptor owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(moved) }
}

/// Waits, up to `timeout`, until no writer holds the trace at `path` (see the module doc).
/// Returns false on timeout; a missing file counts as written.
pub fn wait_until_written(path: &Path, timeout: Duration) -> io::Result<bool> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(true),
        Err(e) => return Err(e),
    };
    let deadline = Instant::now() + timeout;
    loop {
        // SAFETY: a non-blocking shared lock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } == 0 {
            return Ok(true);
        }
        let error = io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::EWOULDBLOCK) && error.raw_os_error() != Some(libc::EINTR) {
            return Err(error);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

impl TraceWriter {
    /// Creates the file with `create_new` (an existing file is an error, never overwritten),
    /// writes the header frame synchronously, and starts the writer (a "retrace-writer"
    /// process or thread).
    ///
    /// `header.format_version` must be [`FORMAT_VERSION`].
    pub fn create(
        path: &Path,
        header: &TraceHeader,
        options: WriterOptions,
    ) -> io::Result<TraceWriter> {
        // Validate before creating anything, so a bad header leaves no empty file behind.
        let header_frame = header_frame(header)?;
        let file = OpenOptions::new().write(true).create_new(true).open(path)?;
        let file = File::from(high_numbered(OwnedFd::from(file)));
        // SAFETY: an exclusive lock on a descriptor we own; it stays with the open file,
        // which a helper process inherits.
        unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
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

        // Checked here, whoever compresses, so that a bad level fails `create`.
        if !zstd::compression_level_range().contains(&options.zstd_level) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("zstd has no compression level {}", options.zstd_level),
            ));
        }

        let buffer_capacity = options.chunk_capacity + CHUNK_SLACK;
        let helper = match options.placement {
            WriterPlacement::Auto if cfg!(target_os = "linux") => options.helper.as_deref(),
            _ => None,
        };
        let (producer, consumer) = ring::stream(
            buffer_capacity.saturating_mul(options.channel_chunks.max(1)),
            helper.is_some(),
        )?;
        let trace_fd = sink.raw_fd();
        let mut trace_writer = TraceWriter {
            producer,
            thread: None,
            spare: None,
            buffer_capacity,
            recycle_limit: buffer_capacity.saturating_mul(RECYCLE_GROWTH_LIMIT),
            trace_fd: None,
            open: true,
            started: Instant::now(),
        };
        if let (Some(helper), Some((memory, wake)), Some(trace)) = (helper, consumer.handover(), trace_fd) {
            let settings = HelperSettings {
                zstd_level: options.zstd_level,
                flush_interval: options.flush_interval,
                chunk_capacity: options.chunk_capacity,
                description: &description,
            };
            if spawn_helper(helper, &settings, [memory, wake, trace]).is_ok() {
                // The writer process has its own copies of the trace, the memory and the
                // socket end; ours close here, and the trace's lock stays with its copy.
                drop(consumer);
                drop(sink);
                return Ok(trace_writer);
            }
        }
        let writer = Box::new(ChunkWriterLoop::new(
            sink,
            description,
            header_frame.len() as u64,
            options.zstd_level,
            options.chunk_capacity,
            consumer,
            options.flush_interval,
        )?);
        trace_writer.thread = Some(
            std::thread::Builder::new()
                .name("retrace-writer".to_owned())
                .spawn(move || writer.run())?,
        );
        trace_writer.trace_fd = trace_fd;
        Ok(trace_writer)
    }

    /// Sends a finished chunk (blocks while the writer is `channel_chunks` behind). After a
    /// writer failure the chunk is dropped and the failure returned. Its buffer comes back
    /// from [`Self::spare_buffer`].
    pub fn submit(&mut self, chunk: Vec<u8>) -> Result<(), WriterFailed> {
        let sent = self.send_chunk([&chunk, &[], &[]]);
        if chunk.capacity() <= self.recycle_limit {
            self.spare = Some(chunk);
        }
        sent
    }

    /// Sends the encoder's chunk and clears it, as `submit(encoder.take_chunk(..))` would,
    /// without assembling the chunk: its parts are copied into the stream as they are.
    pub fn submit_encoded(&mut self, encoder: &mut ChunkEncoder) -> Result<(), WriterFailed> {
        encoder.drain_chunk(|parts| self.send_chunk(parts))
    }

    /// Sends a chunk given as its parts (see [`ChunkEncoder::drain_chunk`]), in order.
    fn send_chunk(&mut self, [events, payload, payload_len]: [&[u8]; 3]) -> Result<(), WriterFailed> {
        if !self.open {
            return Err(WriterFailed("the trace writer is closed".to_owned()));
        }
        if self.producer.has_failed() {
            return Err(self.failed_error(Stopped::Failed));
        }
        self.producer.clear_flush_due();
        let len = events.len() + payload.len() + payload_len.len();
        // A chunk is capped far below 4 GiB (the reader refuses more than 256 MiB).
        let len = u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes();
        self.producer
            .write(&[&[MESSAGE_CHUNK], &len, events, payload, payload_len])
            .map_err(|stopped| self.failed_error(stopped))
    }

    /// Has the writer create `target` (and its parent directories) holding `bytes`, in
    /// order with the chunks: the recording's copies of the program's sources are written
    /// off the importing thread this way. A copy that cannot be written leaves no file; the
    /// caller checks for the copies it needs once the writer has finished.
    pub fn copy_file(&mut self, target: &Path, bytes: &[u8]) -> Result<(), WriterFailed> {
        use std::os::unix::ffi::OsStrExt;
        if !self.open {
            return Err(WriterFailed("the trace writer is closed".to_owned()));
        }
        let path = target.as_os_str().as_bytes();
        let (Ok(path_len), Ok(len)) = (u32::try_from(path.len()), u32::try_from(4 + path.len() + bytes.len())) else {
            return Ok(()); // Not a source file anyone would import: no copy, as for a failure.
        };
        self.producer
            .write(&[&[MESSAGE_COPY], &len.to_le_bytes(), &path_len.to_le_bytes(), path, bytes])
            .map_err(|stopped| self.failed_error(stopped))
    }

    /// The first [`Self::copy_file`] the writer could not write, as "TARGET: ERROR". Final
    /// once `finish` has returned.
    pub fn copy_problem(&self) -> Option<String> {
        self.producer.note()
    }

    fn failed_error(&self, stopped: Stopped) -> WriterFailed {
        WriterFailed(self.failure().unwrap_or_else(|| match stopped {
            Stopped::Gone => "the trace writer process has stopped (was it killed?)".to_owned(),
            Stopped::Failed => "the trace writer has stopped".to_owned(),
        }))
    }

    /// A cleared buffer for the encoder: the last submitted chunk's, or a new one with room
    /// for a chunk plus [`CHUNK_SLACK`].
    pub fn spare_buffer(&mut self) -> Vec<u8> {
        match self.spare.take() {
            Some(mut buffer) => {
                buffer.clear();
                buffer
            }
            None => Vec::with_capacity(self.buffer_capacity),
        }
    }

    /// True when `flush_interval` has passed since the last submit: the producer should then
    /// submit its partial chunk. One relaxed atomic load, cheap enough to check per event.
    #[inline]
    pub fn flush_due(&self) -> bool {
        self.producer.flush_due()
    }

    /// The writer's I/O error (disk full, unwritable), if it has stopped on one.
    pub fn failure(&self) -> Option<String> {
        self.producer.failure().map(|(text, _)| text)
    }

    /// Sends the finish message and waits for the writer to write every submitted chunk,
    /// append the trailer frame and fsync. `total_events` is the encoder's
    /// `events_written()` (see the module doc).
    pub fn finish(&mut self, total_events: u64) -> io::Result<()> {
        let elapsed = u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.end(&[&[MESSAGE_FINISH], &total_events.to_le_bytes(), &elapsed.to_le_bytes()])
    }

    fn end(&mut self, message: &[&[u8]]) -> io::Result<()> {
        if !self.open {
            return Err(io::Error::other("the trace writer was already closed"));
        }
        self.open = false;
        let ended = self
            .producer
            .write(message)
            .and_then(|()| self.producer.wait_finished());
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                return Err(io::Error::other("the trace writer thread panicked"));
            }
        }
        ended.map_err(|stopped| {
            let errno = self.producer.failure().map_or(0, |(_, errno)| errno);
            let kind = if errno != 0 {
                io::Error::from_raw_os_error(errno).kind()
            } else {
                io::ErrorKind::Other
            };
            io::Error::new(kind, self.failed_error(stopped).0)
        })
    }

    /// The descriptors a forked child must close, so that the writer sees the program end
    /// when the program does (its end of the stream) and the trace's lock goes with the
    /// writer (thread mode's trace file). Plain numbers, for an `atfork` handler.
    pub fn descriptors_for_forked_child(&self) -> [RawFd; 2] {
        [self.producer.raw_fd(), self.trace_fd.unwrap_or(-1)]
    }

    /// For a forked child, where a writer thread does not exist: forgets the writer without
    /// joining, writing or even touching the stream. The few handles leak on purpose; close
    /// [`Self::descriptors_for_forked_child`] as well.
    pub fn abandon_in_forked_child(self) {
        std::mem::forget(self);
    }
}

impl Drop for TraceWriter {
    /// Without `finish`: writes what was submitted but no trailer, so the trace reads as cut
    /// short, which it is.
    fn drop(&mut self) {
        if self.open {
            let _ = self.end(&[&[MESSAGE_CLOSE]]);
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

/// What the writer process is told on its command line.
struct HelperSettings<'a> {
    zstd_level: i32,
    flush_interval: Duration,
    chunk_capacity: usize,
    /// The trace's path, for its error messages.
    description: &'a str,
}

/// Where the writer process finds what `create` hands it: the stream's memory file, its
/// end of the socket, and the trace (opened, locked, its header written).
const HELPER_FDS: [RawFd; 3] = [3, 4, 5];

/// Starts the `retrace-writer` program and reaps its first copy (see the module doc).
/// `fds` are the stream's memory, the consumer's socket end and the trace, in that order.
#[cfg(target_os = "linux")]
fn spawn_helper(helper: &Path, settings: &HelperSettings<'_>, fds: [RawFd; 3]) -> io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;

    let text = |s: &str| CString::new(s).map_err(io::Error::other);
    let program = CString::new(helper.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let args = [
        program.clone(),
        text(&settings.zstd_level.to_string())?,
        text(&settings.flush_interval.as_millis().to_string())?,
        text(&settings.chunk_capacity.to_string())?,
        text(settings.description)?,
    ];
    let mut argv: Vec<*mut libc::c_char> = args.iter().map(|a| a.as_ptr().cast_mut()).collect();
    argv.push(std::ptr::null_mut());
    let envp: [*mut libc::c_char; 1] = [std::ptr::null_mut()];

    let mut pid: libc::pid_t = 0;
    // SAFETY: the file actions and attributes are initialised before use and destroyed
    // after; every pointer passed is to a live local or a NUL-terminated string that
    // outlives the call; the descriptors are ours.
    let spawned = unsafe {
        let mut actions: libc::posix_spawn_file_actions_t = std::mem::zeroed();
        let mut attributes: libc::posix_spawnattr_t = std::mem::zeroed();
        libc::posix_spawn_file_actions_init(&mut actions);
        libc::posix_spawnattr_init(&mut attributes);
        for (from, to) in fds.iter().zip(HELPER_FDS) {
            libc::posix_spawn_file_actions_adddup2(&mut actions, *from, to);
        }
        libc::posix_spawn_file_actions_addopen(&mut actions, 0, c"/dev/null".as_ptr(), libc::O_RDWR, 0);
        libc::posix_spawn_file_actions_adddup2(&mut actions, 0, 1);
        libc::posix_spawn_file_actions_adddup2(&mut actions, 0, 2);
        let mut no_signals: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut no_signals);
        libc::posix_spawnattr_setsigmask(&mut attributes, &no_signals);
        libc::posix_spawnattr_setflags(
            &mut attributes,
            libc::POSIX_SPAWN_SETSID | libc::POSIX_SPAWN_SETSIGMASK as libc::c_short,
        );
        let result = libc::posix_spawn(&mut pid, program.as_ptr(), &actions, &attributes, argv.as_ptr(), envp.as_ptr());
        libc::posix_spawn_file_actions_destroy(&mut actions);
        libc::posix_spawnattr_destroy(&mut attributes);
        result
    };
    if spawned != 0 {
        return Err(io::Error::from_raw_os_error(spawned));
    }
    let mut status = 0;
    loop {
        // SAFETY: waits for the child just spawned, through a live local.
        if unsafe { libc::waitpid(pid, &mut status, 0) } == pid {
            break;
        }
        let error = io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::EINTR) {
            return Err(error);
        }
    }
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
        Ok(())
    } else {
        Err(io::Error::other(format!("{} did not start (status {status})", helper.display())))
    }
}

#[cfg(not(target_os = "linux"))]
fn spawn_helper(_helper: &Path, _settings: &HelperSettings<'_>, _fds: [RawFd; 3]) -> io::Result<()> {
    Err(io::Error::new(io::ErrorKind::Unsupported, "a writer process needs Linux"))
}

/// The `retrace-writer` program: `retrace-writer LEVEL FLUSH_MS CHUNK_CAPACITY TRACE_PATH`,
/// started by [`TraceWriter::create`] with the descriptors of [`HELPER_FDS`]. Returns the
/// exit status: 0 after its work, 2 for a bad start (it has no one to tell why).
#[doc(hidden)]
pub fn writer_process_main(args: &[String]) -> i32 {
    #[cfg(target_os = "linux")]
    {
        let [_, level, flush_ms, chunk_capacity, description] = args else { return 2 };
        let (Ok(level), Ok(flush_ms), Ok(chunk_capacity)) =
            (level.parse::<i32>(), flush_ms.parse::<u64>(), chunk_capacity.parse::<usize>())
        else {
            return 2;
        };
        // SAFETY: fork in this single-threaded process; the parent copy leaves at once with
        // `_exit`, and `create` reaps it.
        match unsafe { libc::fork() } {
            0 => {}
            -1 => return 2,
            // SAFETY: leaves at once, as above.
            _ => unsafe { libc::_exit(0) },
        }
        ignore_group_signals();
        // SAFETY: in our own process: moves out of the program's directory, so that a
        // recording never keeps a file system busy.
        unsafe { libc::chdir(c"/".as_ptr()) };
        close_other_descriptors();
        // SAFETY: the descriptors of HELPER_FDS were set up by `spawn_helper` for us alone.
        let (memory, wake, trace) = unsafe {
            (
                OwnedFd::from_raw_fd(HELPER_FDS[0]),
                OwnedFd::from_raw_fd(HELPER_FDS[1]),
                File::from_raw_fd(HELPER_FDS[2]),
            )
        };
        let Ok(consumer) = ring::consumer_from(memory, wake) else { return 2 };
        let mut trace = trace;
        // The header is written: frames go after it.
        let writer = io::Seek::stream_position(&mut trace).and_then(|offset| {
            ChunkWriterLoop::new(
                Box::new(trace),
                description.clone(),
                offset,
                level,
                chunk_capacity,
                consumer,
                Duration::from_millis(flush_ms),
            )
        });
        match writer {
            Ok(writer) => {
                writer.run();
                0
            }
            Err(_) => 2,
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = args;
        2
    }
}

/// What a terminal or a supervisor sends a whole process group must not stop the writer
/// before the program has ended; faults keep their default action.
#[cfg(target_os = "linux")]
fn ignore_group_signals() {
    for signal in [
        libc::SIGHUP,
        libc::SIGINT,
        libc::SIGQUIT,
        libc::SIGTERM,
        libc::SIGUSR1,
        libc::SIGUSR2,
        libc::SIGPIPE,
        libc::SIGALRM,
        libc::SIGTSTP,
        libc::SIGTTIN,
        libc::SIGTTOU,
        libc::SIGVTALRM,
        libc::SIGPROF,
        libc::SIGXFSZ,
        libc::SIGWINCH,
    ] {
        // SAFETY: sets this process's own disposition to "ignore".
        unsafe { libc::signal(signal, libc::SIG_IGN) };
    }
}

/// Closes every descriptor above [`HELPER_FDS`]: anything the program's own parent left
/// open without close-on-exec must not be held open by the writer.
#[cfg(target_os = "linux")]
fn close_other_descriptors() {
    let first = HELPER_FDS[2] + 1;
    // SAFETY: closes descriptors of this process that it does not use.
    let closed = unsafe { libc::syscall(libc::SYS_close_range, first as libc::c_uint, libc::c_uint::MAX, 0) };
    if closed == 0 {
        return;
    }
    let open: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")
        .map(|entries| entries.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default();
    for fd in open.into_iter().filter(|&fd| fd >= first) {
        // SAFETY: as above (the listing's own descriptor is already closed).
        unsafe { libc::close(fd) };
    }
}

/// Writes the file a `COPY` message carries. A failure leaves no file, and is described as
/// "PATH: ERROR" for [`TraceWriter::copy_problem`].
fn write_copy(body: &[u8]) -> Result<(), String> {
    use std::os::unix::ffi::OsStrExt;
    let malformed = || "a copy message without its path".to_owned();
    let (path_len, rest) = body.split_first_chunk::<4>().ok_or_else(malformed)?;
    let path_len = u32::from_le_bytes(*path_len) as usize;
    let (path, bytes) = rest.split_at_checked(path_len).ok_or_else(malformed)?;
    let target = Path::new(std::ffi::OsStr::from_bytes(path));
    let written = target
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| std::fs::write(target, bytes));
    written.map_err(|error| {
        let _ = std::fs::remove_file(target);
        format!("{}: {error}", target.display())
    })
}

/// How the writer loop ended.
enum Ending {
    /// Finish or close: everything sent is written, and the producer waits to hear it.
    Closed,
    /// The producer's end closed without a word: the program was killed or crashed.
    ProducerGone,
}

/// The writer's state and loop, on its thread or in the helper process.
struct ChunkWriterLoop {
    sink: Box<dyn TraceSink>,
    /// The trace path, for error messages.
    description: String,
    /// File offset the next frame is written at.
    offset: u64,
    /// (frame offset, first event index) of each chunk written.
    chunks_written: Vec<(u64, u64)>,
    compressor: zstd::bulk::Compressor<'static>,
    /// Reused output buffer for compressed frames.
    compressed: Vec<u8>,
    /// Reused buffer the message being read is assembled in.
    message: Vec<u8>,
    message_limit: usize,
    consumer: Consumer,
    flush_interval: Duration,
}

impl ChunkWriterLoop {
    /// The writer of a trace whose first `offset` bytes (the header) are written.
    fn new(
        sink: Box<dyn TraceSink>,
        description: String,
        offset: u64,
        zstd_level: i32,
        chunk_capacity: usize,
        consumer: Consumer,
        flush_interval: Duration,
    ) -> io::Result<ChunkWriterLoop> {
        let mut compressor = zstd::bulk::Compressor::new(zstd_level)?;
        compressor.set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(true))?;
        compressor.set_parameter(zstd::zstd_safe::CParameter::ContentSizeFlag(true))?;
        Ok(ChunkWriterLoop {
            sink,
            description,
            offset,
            chunks_written: Vec::new(),
            compressor,
            compressed: Vec::new(),
            message: Vec::new(),
            message_limit: (chunk_capacity + CHUNK_SLACK).saturating_mul(RECYCLE_GROWTH_LIMIT),
            consumer,
            flush_interval,
        })
    }

    fn run(mut self) {
        let ending = self.serve();
        let ChunkWriterLoop { sink, consumer, description, .. } = self;
        // Closed before the recording hears that we are done, so the trace's lock is gone
        // by the time the program exits (see `wait_until_written`).
        drop(sink);
        match ending {
            Ok(Ending::Closed) => consumer.finished(),
            Ok(Ending::ProducerGone) => {}
            Err(error) => {
                let message = format!("cannot write the trace {description}: {error}");
                consumer.fail(&message, error.raw_os_error().unwrap_or(0));
            }
        }
    }

    fn serve(&mut self) -> io::Result<Ending> {
        let mut flush_deadline = Some(Instant::now() + self.flush_interval);
        loop {
            let mut kind = [0u8; 1];
            if !self.consumer.read_exact(&mut kind, &mut flush_deadline) {
                return Ok(Ending::ProducerGone);
            }
            match kind[0] {
                MESSAGE_CHUNK => {
                    let Some(len) = self.read_body(&mut flush_deadline) else {
                        return Ok(Ending::ProducerGone);
                    };
                    flush_deadline = Some(Instant::now() + self.flush_interval);
                    if len > 0 {
                        let message = std::mem::take(&mut self.message);
                        let written = self.write_chunk(&message[..len]);
                        self.message = message;
                        written?;
                    }
                }
                MESSAGE_COPY => {
                    let Some(len) = self.read_body(&mut flush_deadline) else {
                        return Ok(Ending::ProducerGone);
                    };
                    if let Err(problem) = write_copy(&self.message[..len]) {
                        self.consumer.note(&problem);
                    }
                }
                MESSAGE_FINISH => {
                    let mut body = [0u8; 16];
                    if !self.consumer.read_exact(&mut body, &mut flush_deadline) {
                        return Ok(Ending::ProducerGone);
                    }
                    let (total, elapsed) = body.split_at(8);
                    let total = u64::from_le_bytes(total.try_into().unwrap_or_default());
                    let elapsed = u64::from_le_bytes(elapsed.try_into().unwrap_or_default());
                    self.write_trailer(total, elapsed)?;
                    self.sink.sync_all()?;
                    return Ok(Ending::Closed);
                }
                MESSAGE_CLOSE => {
                    self.sink.sync_all()?;
                    return Ok(Ending::Closed);
                }
                other => {
                    return Err(io::Error::other(format!(
                        "the recording sent a message of unknown kind {other}"
                    )))
                }
            }
        }
    }

    /// Reads a message's length (u32 LE) and body into `self.message`: its length, or None
    /// when the producer went away first. The buffer keeps its length between messages, so
    /// it is zeroed only when it grows; one that grew past `message_limit` is let go.
    fn read_body(&mut self, flush_deadline: &mut Option<Instant>) -> Option<usize> {
        let mut len = [0u8; 4];
        if !self.consumer.read_exact(&mut len, flush_deadline) {
            return None;
        }
        let len = u32::from_le_bytes(len) as usize;
        if self.message.len() > self.message_limit.max(len) {
            self.message = Vec::new();
        }
        if self.message.len() < len {
            self.message.resize(len, 0);
        }
        self.consumer
            .read_exact(&mut self.message[..len], flush_deadline)
            .then_some(len)
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

    fn write_trailer(&mut self, total_events: u64, end_elapsed_ns: u64) -> io::Result<()> {
        let chunks: Vec<ChunkInfo> = self
            .chunks_written
            .iter()
            .enumerate()
            .map(|(i, &(offset, first_event))| {
                let next_first = self
                    .chunks_written
                    .get(i + 1)
                    .map_or(total_events, |next| next.1);
                ChunkInfo {
                    offset,
                    first_event,
                    events: next_first.saturating_sub(first_event),
                }
            })
            .collect();
        let trailer = TraceTrailer {
            events: total_events,
            chunks,
            end_elapsed_ns,
        };
        let json = serde_json::to_vec(&trailer).map_err(io::Error::other)?;
        self.sink
            .write_all(&record_frame(RECORD_KIND_TRAILER, &json)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::header::PythonInfo;

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
        fn raw_fd(&self) -> Option<RawFd> {
            None
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
        let mut writer = TraceWriter::start(
            Box::new(sink),
            "/x/trace/0.rtrace".to_owned(),
            &header_frame(&sample_header()).unwrap(),
            WriterOptions::default(),
        )
        .unwrap();
        assert_eq!(writer.failure(), None);

        let mut enc = ChunkEncoder::new(1024);
        enc.end();
        let spare = writer.spare_buffer();
        writer.submit(enc.take_chunk(spare)).unwrap();
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
        let spare = writer.spare_buffer();
        let err = writer.submit(enc.take_chunk(spare)).unwrap_err();
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

//! A single-producer, single-consumer byte stream in shared memory: how finished chunks go
//! from the recording thread to the trace writer, which is a helper process forked before
//! the program started or, where that is not possible, a thread (see `writer.rs`).
//!
//! Shared memory rather than a pipe or a channel so that the producer's side costs a copy
//! and an atomic store per chunk, with no system call while the writer keeps up, and so
//! that it works the same whether the writer shares the address space or only this mapping.
//! Each side sleeps on its end of a Unix socket pair: the other side sends a byte when it
//! sees the sleeper's `waiting` flag (the flag and the position are stored and read in
//! sequentially consistent order on both sides, so a wake-up cannot be lost). A closed
//! socket is also how each side learns that the other is gone: a killed program, or a
//! killed writer.

use std::cell::UnsafeCell;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Longest failure message the consumer can hand back; longer ones are cut.
const FAILURE_TEXT_MAX: usize = 1024;

/// The start of the mapping. Each position has its own cache line, so the two sides do not
/// invalidate each other's line on every store.
#[repr(C)]
struct Control {
    /// Bytes the producer has written since the start. Stored only by the producer.
    head: AtomicU64,
    _head_line: [u8; 56],
    /// Bytes the consumer has taken since the start. Stored only by the consumer.
    tail: AtomicU64,
    _tail_line: [u8; 56],
    consumer_waiting: AtomicBool,
    producer_waiting: AtomicBool,
    /// Set by the consumer when no chunk came for the flush interval; see
    /// `TraceWriter::flush_due`.
    flush_due: AtomicBool,
    /// Set once, after `failure_*`, when the consumer stops on an error.
    failed: AtomicBool,
    /// Set once the consumer has written everything it was sent and closed the trace.
    finished: AtomicBool,
    failure_errno: AtomicI32,
    failure_len: AtomicU32,
    /// Written by the consumer before it sets `failed`, read by the producer after.
    failure_text: UnsafeCell<[u8; FAILURE_TEXT_MAX]>,
    /// Set once, after `note_*`, by the consumer's first problem that is not a failure.
    noted: AtomicBool,
    note_len: AtomicU32,
    /// Written by the consumer before it sets `noted`, read by the producer after.
    note_text: UnsafeCell<[u8; FAILURE_TEXT_MAX]>,
}

/// The mapping: a [`Control`] page, then `capacity` bytes of stream.
struct Region {
    base: *mut u8,
    map_len: usize,
    capacity: u64,
    /// The memory file behind the mapping, for a helper process to map (Linux).
    file: Option<OwnedFd>,
}

// SAFETY: the region is plain memory; every access to it goes through `Control`'s atomics,
// or to the byte ranges those atomics hand to one side at a time (see `Producer::write` and
// `Consumer::read_exact`).
unsafe impl Send for Region {}
// SAFETY: as above.
unsafe impl Sync for Region {}

const CONTROL_BYTES: usize = 4096;
const _: () = assert!(std::mem::size_of::<Control>() <= CONTROL_BYTES);

impl Region {
    /// A shared mapping of at least `capacity` stream bytes. `for_process`: backed by a
    /// memory file that another program can map (see [`Region::file`]); else anonymous.
    fn new(capacity: usize, for_process: bool) -> io::Result<Region> {
        let capacity = capacity.next_power_of_two();
        let map_len = CONTROL_BYTES + capacity;
        let file = if for_process { Some(memory_file(map_len)?) } else { None };
        // Zeroed memory is a valid `Control`: every atomic at 0/false, an empty message.
        Region::map(map_len, file)
    }

    /// Maps the memory file a recording handed to its writer process.
    fn from_file(file: OwnedFd) -> io::Result<Region> {
        // SAFETY: fstat into a zeroed local on a descriptor we own.
        let len = unsafe {
            let mut stat: libc::stat = std::mem::zeroed();
            if libc::fstat(file.as_raw_fd(), &mut stat) != 0 {
                return Err(io::Error::last_os_error());
            }
            stat.st_size as usize
        };
        if len <= CONTROL_BYTES || !(len - CONTROL_BYTES).is_power_of_two() {
            return Err(io::Error::other(format!("the stream's memory file has an odd size ({len})")));
        }
        Region::map(len, Some(file))
    }

    /// Maps `file` (or anonymous memory), `map_len` bytes, shared.
    fn map(map_len: usize, file: Option<OwnedFd>) -> io::Result<Region> {
        #[cfg(target_os = "linux")]
        let populate = libc::MAP_POPULATE;
        #[cfg(not(target_os = "linux"))]
        let populate = 0;
        let (flags, fd) = match &file {
            Some(file) => (libc::MAP_SHARED | populate, file.as_raw_fd()),
            None => (libc::MAP_SHARED | libc::MAP_ANON | populate, -1),
        };
        // SAFETY: a new mapping at an address of the kernel's choosing touches no existing
        // memory; the result is checked before use.
        let base = unsafe {
            libc::mmap(std::ptr::null_mut(), map_len, libc::PROT_READ | libc::PROT_WRITE, flags, fd, 0)
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Region {
            base: base.cast(),
            map_len,
            capacity: (map_len - CONTROL_BYTES) as u64,
            file,
        })
    }

    fn control(&self) -> &Control {
        // SAFETY: the mapping starts with a zero-initialised, page-aligned `Control` and lives
        // as long as `self`.
        unsafe { &*self.base.cast::<Control>() }
    }

    /// The stream's bytes, `capacity` of them.
    fn data(&self) -> *mut u8 {
        // SAFETY: `CONTROL_BYTES` is inside the mapping.
        unsafe { self.base.add(CONTROL_BYTES) }
    }
}

/// A zero-filled memory file of `len` bytes (close-on-exec).
#[cfg(target_os = "linux")]
fn memory_file(len: usize) -> io::Result<OwnedFd> {
    // SAFETY: memfd_create with a literal name returns a new descriptor we own, or -1.
    let fd = unsafe { libc::memfd_create(c"retrace-stream".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is fresh and owned by nobody else.
    let file = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sizes a descriptor we own.
    if unsafe { libc::ftruncate(file.as_raw_fd(), len as libc::off_t) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(crate::writer::high_numbered(file))
}

#[cfg(not(target_os = "linux"))]
fn memory_file(_len: usize) -> io::Result<OwnedFd> {
    Err(io::Error::new(io::ErrorKind::Unsupported, "no memory files here"))
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: `base`/`map_len` are the mapping made in `new`, unmapped once; nothing
        // refers to it after the last `Arc` is gone.
        unsafe { libc::munmap(self.base.cast(), self.map_len) };
    }
}

/// Why the producer cannot go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stopped {
    /// The consumer reported an error (see [`Producer::failure`]).
    Failed,
    /// The consumer is gone without a word: the writer process was killed.
    Gone,
}

/// The recording side.
pub(crate) struct Producer {
    region: Arc<Region>,
    wake: OwnedFd,
}

/// The writer side.
pub(crate) struct Consumer {
    region: Arc<Region>,
    wake: OwnedFd,
    /// Set when the producer's end of the socket closed: nothing more will come.
    producer_gone: bool,
}

/// A stream of at least `capacity` bytes (rounded up to a power of two). `for_process`:
/// its memory can be handed to another program (see [`Producer::handover`]).
pub(crate) fn stream(capacity: usize, for_process: bool) -> io::Result<(Producer, Consumer)> {
    let region = Arc::new(Region::new(capacity, for_process)?);
    let (producer_end, consumer_end) = UnixStream::pair()?;
    let producer_end = crate::writer::high_numbered(OwnedFd::from(producer_end));
    let consumer_end = crate::writer::high_numbered(OwnedFd::from(consumer_end));
    for end in [&producer_end, &consumer_end] {
        no_sigpipe(end.as_raw_fd());
    }
    Ok((
        Producer {
            region: Arc::clone(&region),
            wake: producer_end,
        },
        Consumer {
            region,
            wake: consumer_end,
            producer_gone: false,
        },
    ))
}

/// The consumer side in the writer process, from the memory file and socket end a recording
/// handed over (see [`Consumer::handover`]).
pub(crate) fn consumer_from(memory: OwnedFd, wake: OwnedFd) -> io::Result<Consumer> {
    Ok(Consumer {
        region: Arc::new(Region::from_file(memory)?),
        wake,
        producer_gone: false,
    })
}

/// Where `send` has no `MSG_NOSIGNAL`, the socket itself is told not to raise SIGPIPE: a
/// program that restored SIGPIPE's default must not be killed by a dead writer.
#[cfg(any(target_os = "macos", target_os = "ios"))]
fn no_sigpipe(fd: RawFd) {
    let one: libc::c_int = 1;
    // SAFETY: setting an int option on a socket we own, from a live local.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_NOSIGPIPE,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
}

#[cfg(not(any(target_os = "macos", target_os = "ios")))]
fn no_sigpipe(_fd: RawFd) {}

#[cfg(any(target_os = "macos", target_os = "ios"))]
const SEND_FLAGS: libc::c_int = libc::MSG_DONTWAIT;
#[cfg(not(any(target_os = "macos", target_os = "ios")))]
const SEND_FLAGS: libc::c_int = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;

/// Wakes the other side. A full socket buffer means a wake-up is already pending, and a
/// closed peer is noticed by the waiting side, so the result is not needed.
fn poke(fd: RawFd) {
    let byte = 1u8;
    // SAFETY: sends one byte from a live local on a socket we own; never blocks.
    unsafe { libc::send(fd, (&byte as *const u8).cast(), 1, SEND_FLAGS) };
}

/// Blocks until the other side sends or closes. Returns false once it has closed.
fn sleep_on(fd: RawFd) -> bool {
    let mut buf = [0u8; 64];
    loop {
        // SAFETY: receives into a live local buffer of the length given.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n > 0 {
            return true;
        }
        if n == 0 {
            return false;
        }
        match io::Error::last_os_error().raw_os_error() {
            Some(libc::EINTR) => continue,
            // Anything else (a reset connection) means the peer is gone too.
            _ => return false,
        }
    }
}

impl Producer {
    fn control(&self) -> &Control {
        self.region.control()
    }

    /// The raw descriptor of this end, for a forked child to close (see
    /// `TraceWriter::descriptors_for_forked_child`).
    pub(crate) fn raw_fd(&self) -> RawFd {
        self.wake.as_raw_fd()
    }

    #[inline]
    pub(crate) fn flush_due(&self) -> bool {
        self.control().flush_due.load(Ordering::Relaxed)
    }

    pub(crate) fn clear_flush_due(&self) {
        self.control().flush_due.store(false, Ordering::Relaxed);
    }

    pub(crate) fn has_failed(&self) -> bool {
        self.control().failed.load(Ordering::Acquire)
    }

    /// The consumer's failure: its message and OS error number (0 when it had none).
    pub(crate) fn failure(&self) -> Option<(String, i32)> {
        let control = self.control();
        if !control.failed.load(Ordering::Acquire) {
            return None;
        }
        let len = (control.failure_len.load(Ordering::Relaxed) as usize).min(FAILURE_TEXT_MAX);
        // SAFETY: the consumer wrote the text before its release store of `failed`, which
        // the acquire load above saw, and never writes it again.
        let text = unsafe { &(&*control.failure_text.get())[..len] };
        Some((
            String::from_utf8_lossy(text).into_owned(),
            control.failure_errno.load(Ordering::Relaxed),
        ))
    }

    /// The consumer's first problem that was not a failure (see [`Consumer::note`]).
    pub(crate) fn note(&self) -> Option<String> {
        let control = self.control();
        if !control.noted.load(Ordering::Acquire) {
            return None;
        }
        let len = (control.note_len.load(Ordering::Relaxed) as usize).min(FAILURE_TEXT_MAX);
        // SAFETY: the consumer wrote the text before its release store of `noted`, which
        // the acquire load above saw, and never writes it again.
        let text = unsafe { &(&*control.note_text.get())[..len] };
        Some(String::from_utf8_lossy(text).into_owned())
    }

    /// Appends `parts` to the stream as one run of bytes, waiting for room as needed; the
    /// consumer sees them when this returns, or earlier in pieces if the stream filled up.
    pub(crate) fn write(&mut self, parts: &[&[u8]]) -> Result<(), Stopped> {
        let control = self.region.control();
        let capacity = self.region.capacity;
        let data = self.region.data();
        let mut head = control.head.load(Ordering::Relaxed);
        for part in parts {
            let mut rest: &[u8] = part;
            while !rest.is_empty() {
                let free = capacity - (head - control.tail.load(Ordering::Acquire));
                if free == 0 {
                    // Publish what is written, so the consumer can make room.
                    self.publish(head);
                    self.wait(|c| c.tail.load(Ordering::SeqCst) != head - capacity)?;
                    continue;
                }
                let at = (head % capacity) as usize;
                let n = rest.len().min(free as usize).min(capacity as usize - at);
                // SAFETY: bytes [head, head + n) of the stream are free (the consumer's tail
                // is at most `capacity` behind, and it reads only below `head`), and `at + n`
                // stays inside the data area; `rest` is a separate allocation.
                unsafe { std::ptr::copy_nonoverlapping(rest.as_ptr(), data.add(at), n) };
                head += n as u64;
                rest = &rest[n..];
            }
        }
        self.publish(head);
        Ok(())
    }

    fn publish(&self, head: u64) {
        let control = self.control();
        control.head.store(head, Ordering::SeqCst);
        if control.consumer_waiting.load(Ordering::SeqCst) {
            poke(self.wake.as_raw_fd());
        }
    }

    /// Blocks until the consumer has closed the trace (after a finish or close message).
    pub(crate) fn wait_finished(&self) -> Result<(), Stopped> {
        self.wait(|c| c.finished.load(Ordering::SeqCst))
    }

    /// Sleeps until `ready`, or until the consumer fails or goes away.
    fn wait(&self, ready: impl Fn(&Control) -> bool) -> Result<(), Stopped> {
        let control = self.control();
        loop {
            if ready(control) {
                return Ok(());
            }
            if control.failed.load(Ordering::Acquire) {
                return Err(Stopped::Failed);
            }
            control.producer_waiting.store(true, Ordering::SeqCst);
            if ready(control) || control.failed.load(Ordering::SeqCst) {
                control.producer_waiting.store(false, Ordering::Relaxed);
                continue;
            }
            let alive = sleep_on(self.wake.as_raw_fd());
            control.producer_waiting.store(false, Ordering::Relaxed);
            if !alive {
                return if ready(control) {
                    Ok(())
                } else if control.failed.load(Ordering::Acquire) {
                    Err(Stopped::Failed)
                } else {
                    Err(Stopped::Gone)
                };
            }
        }
    }
}

impl Consumer {
    /// What a writer process needs to take this side over: the memory file and this end of
    /// the socket. None for an anonymous stream.
    pub(crate) fn handover(&self) -> Option<(RawFd, RawFd)> {
        let memory = self.region.file.as_ref()?;
        Some((memory.as_raw_fd(), self.wake.as_raw_fd()))
    }

    /// Fills `out` from the stream. While it waits, `flush_deadline` (when set) is when to
    /// raise `flush_due`; it is cleared then. Returns false when the producer went away
    /// before `out` could be filled (what was read is then incomplete and dropped).
    pub(crate) fn read_exact(&mut self, out: &mut [u8], flush_deadline: &mut Option<Instant>) -> bool {
        let region = Arc::clone(&self.region);
        let control = region.control();
        let capacity = region.capacity;
        let data = region.data();
        let mut tail = control.tail.load(Ordering::Relaxed);
        let mut filled = 0;
        while filled < out.len() {
            let head = control.head.load(Ordering::Acquire);
            if head == tail {
                if self.producer_gone {
                    return false;
                }
                self.wait_for_data(tail, flush_deadline);
                continue;
            }
            let at = (tail % capacity) as usize;
            let n = ((head - tail) as usize)
                .min(out.len() - filled)
                .min(capacity as usize - at);
            // SAFETY: bytes [tail, head) were written and published by the producer (the
            // acquire load of `head`), which does not touch them again until `tail` passes
            // them; `at + n` stays inside the data area.
            unsafe { std::ptr::copy_nonoverlapping(data.add(at), out[filled..].as_mut_ptr(), n) };
            filled += n;
            tail += n as u64;
            control.tail.store(tail, Ordering::SeqCst);
            if control.producer_waiting.load(Ordering::SeqCst) {
                poke(self.wake.as_raw_fd());
            }
        }
        true
    }

    fn wait_for_data(&mut self, tail: u64, flush_deadline: &mut Option<Instant>) {
        let control = self.region.control();
        control.consumer_waiting.store(true, Ordering::SeqCst);
        if control.head.load(Ordering::SeqCst) != tail {
            control.consumer_waiting.store(false, Ordering::Relaxed);
            return;
        }
        let timeout_ms = match *flush_deadline {
            None => -1,
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                // Rounded up, so waking before the deadline cannot loop without sleeping.
                left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32
            }
        };
        let mut poll = libc::pollfd {
            fd: self.wake.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: polls one descriptor we own through a live local.
        let ready = unsafe { libc::poll(&mut poll, 1, timeout_ms) };
        control.consumer_waiting.store(false, Ordering::Relaxed);
        if ready == 0 {
            if flush_deadline.is_some_and(|d| Instant::now() >= d) {
                control.flush_due.store(true, Ordering::Relaxed);
                *flush_deadline = None;
            }
            return;
        }
        if ready > 0 {
            self.drain_wake_ups();
        }
    }

    /// Reads the pending wake-up bytes; a closed end means the producer is gone.
    fn drain_wake_ups(&mut self) {
        let mut buf = [0u8; 256];
        loop {
            // SAFETY: receives into a live local buffer of the length given; never blocks.
            let n = unsafe {
                libc::recv(
                    self.wake.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n > 0 {
                continue;
            }
            if n == 0 {
                self.producer_gone = true;
                return;
            }
            match io::Error::last_os_error().raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) => return,
                _ => {
                    self.producer_gone = true;
                    return;
                }
            }
        }
    }

    /// Reports a failure to the producer; the consumer stops after it.
    pub(crate) fn fail(&self, text: &str, errno: i32) {
        let control = self.region.control();
        let bytes = text.as_bytes();
        let len = bytes.len().min(FAILURE_TEXT_MAX);
        // SAFETY: only the consumer writes the text, once, before the release store of
        // `failed`; the producer reads it only after an acquire load sees `failed`.
        unsafe { (&mut *control.failure_text.get())[..len].copy_from_slice(&bytes[..len]) };
        control.failure_len.store(len as u32, Ordering::Relaxed);
        control.failure_errno.store(errno, Ordering::Relaxed);
        control.failed.store(true, Ordering::Release);
        poke(self.wake.as_raw_fd());
    }

    /// Keeps `text` for the producer when it is the first problem noted; the consumer goes
    /// on.
    pub(crate) fn note(&self, text: &str) {
        let control = self.region.control();
        if control.noted.load(Ordering::Relaxed) {
            return;
        }
        let bytes = text.as_bytes();
        let len = bytes.len().min(FAILURE_TEXT_MAX);
        // SAFETY: only the consumer writes the text, once (`noted` is still false), before
        // the release store of `noted`; the producer reads it only after an acquire load
        // sees `noted`.
        unsafe { (&mut *control.note_text.get())[..len].copy_from_slice(&bytes[..len]) };
        control.note_len.store(len as u32, Ordering::Relaxed);
        control.noted.store(true, Ordering::Release);
    }

    /// Tells the producer that the trace is closed.
    pub(crate) fn finished(&self) {
        self.region.control().finished.store(true, Ordering::SeqCst);
        poke(self.wake.as_raw_fd());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Many messages of odd sizes through a small stream: every byte arrives, in order,
    /// with the producer waiting for room most of the time.
    #[test]
    fn bytes_arrive_in_order_through_a_small_stream() {
        let (mut producer, mut consumer) = stream(64, false).unwrap();
        let total: usize = (1..300).sum();
        let reader = std::thread::spawn(move || {
            let mut got = vec![0u8; total];
            let mut deadline = None;
            assert!(consumer.read_exact(&mut got, &mut deadline));
            got
        });
        let mut sent = Vec::new();
        for len in 1..300usize {
            let message: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
            producer.write(&[&message]).unwrap();
            sent.extend_from_slice(&message);
        }
        assert_eq!(reader.join().unwrap(), sent);
    }

    /// The writer process's side: the same stream, mapped again from its memory file.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_consumer_rebuilt_from_the_memory_file_reads_the_stream() {
        let (mut producer, consumer) = stream(64, true).unwrap();
        let (memory, wake) = consumer.handover().unwrap();
        // SAFETY: duplicates of descriptors the consumer owns, owned by the new consumer.
        let (memory, wake) = unsafe {
            (OwnedFd::from_raw_fd(libc::dup(memory)), OwnedFd::from_raw_fd(libc::dup(wake)))
        };
        let mut rebuilt = consumer_from(memory, wake).unwrap();
        drop(consumer);
        producer.write(&[b"through the file"]).unwrap();
        let mut out = [0u8; 16];
        assert!(rebuilt.read_exact(&mut out, &mut None));
        assert_eq!(&out, b"through the file");
    }

    #[test]
    fn a_closed_producer_ends_the_read() {
        let (mut producer, mut consumer) = stream(64, false).unwrap();
        producer.write(&[b"abc"]).unwrap();
        drop(producer);
        let mut out = [0u8; 3];
        let mut deadline = None;
        assert!(consumer.read_exact(&mut out, &mut deadline));
        assert_eq!(&out, b"abc");
        assert!(!consumer.read_exact(&mut out, &mut deadline));
    }

    #[test]
    fn a_failure_reaches_a_waiting_producer() {
        let (mut producer, consumer) = stream(64, false).unwrap();
        let failing = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            consumer.fail("cannot write the trace: no space", libc::ENOSPC);
            consumer
        });
        // 64 bytes fit; the rest waits for room that never comes.
        assert_eq!(producer.write(&[&[0u8; 200]]), Err(Stopped::Failed));
        let (text, errno) = producer.failure().unwrap();
        assert_eq!(text, "cannot write the trace: no space");
        assert_eq!(errno, libc::ENOSPC);
        drop(failing.join().unwrap());
    }

    #[test]
    fn a_vanished_consumer_is_reported() {
        let (mut producer, consumer) = stream(64, false).unwrap();
        drop(consumer);
        assert_eq!(producer.write(&[&[0u8; 200]]), Err(Stopped::Gone));
    }

    #[test]
    fn an_idle_stream_raises_flush_due() {
        let (producer, mut consumer) = stream(64, false).unwrap();
        let mut deadline = Some(Instant::now() + Duration::from_millis(10));
        let waiter = std::thread::spawn(move || {
            let mut out = [0u8; 1];
            let read = consumer.read_exact(&mut out, &mut deadline);
            (read, deadline)
        });
        let started = Instant::now();
        while !producer.flush_due() && started.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(producer.flush_due());
        drop(producer);
        let (read, deadline) = waiter.join().unwrap();
        assert!(!read);
        assert!(deadline.is_none());
    }
}

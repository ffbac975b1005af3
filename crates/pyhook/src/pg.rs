//! PostgreSQL through `psycopg2`: libpq talks to the server over its own socket, in C,
//! below any Python hook, so the boundary is the connection's socket itself.
//!
//! * Record: `connection.__init__` connects as usual (libpq authenticates with the real
//!   server, so no password or authentication exchange ever reaches us). Then the
//!   connection's descriptor is swapped, at the same number, for one end of a socket pair;
//!   a relay thread of ours (Rust, invisible to Python) passes the bytes between that pair
//!   and the real server socket and writes each side's bytes to a stream file beside the
//!   trace (`trace/0.pg<N>.rtstream`, see `retrace_recorder::stream`). The connect event
//!   records what libpq learnt while connecting: the server's reported parameters, the
//!   backend pid, the connection's `dsn` (psycopg2 masks its password).
//! * Replay: `connection.__init__` connects libpq to a Unix socket of ours in a private
//!   temporary directory. A thread answers the start-up with "authenticated" and the
//!   recorded parameters, then plays the recorded server bytes, each after the client bytes
//!   that preceded it, checking that the client sends what it sent when recorded. psycopg2
//!   and libpq run unchanged: the same cursors, type casters, errors and notices, with the
//!   server stopped and no network.
//!
//! Connections that cannot be recorded this way (TLS: libpq keeps the plaintext to itself;
//! asynchronous connections) run live while recording, with a warning, and a replay stops
//! at their connect, naming it.

use crate::calls::InitCall;
use crate::dispatch::{diverge, is_active, record_outcome, record_with, replay_take, stop_recording, write_stderr};
use crate::exceptions::raise_recorded;
use crate::hooks::Hook;
use crate::session::{mode, py, Divergence, Replayed, MODE_RECORD, MODE_REPLAY};
use pyo3::ffi;
use pyo3::prelude::*;
use retrace_recorder::{read_stream, RecordedStream, Segment, StreamWriter, Value};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::raw::c_int;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Where stream files go: the recording's `trace/` directory.
static TRACE_DIR: OnceLock<PathBuf> = OnceLock::new();
/// The last connection number handed out (stream files count from 1).
static LAST_STREAM: AtomicU32 = AtomicU32::new(0);
/// Relay threads still running, to let them write what a closing program sent last.
static RUNNING_RELAYS: (Mutex<u32>, Condvar) = (Mutex::new(0), Condvar::new());

/// The parameters a server reports at start-up (`GUC_REPORT`), which libpq keeps and
/// psycopg2 reads: server version, encodings, DateStyle, ...
const REPORTED_PARAMETERS: [&str; 16] = [
    "application_name",
    "client_encoding",
    "DateStyle",
    "default_transaction_read_only",
    "in_hot_standby",
    "integer_datetimes",
    "IntervalStyle",
    "is_superuser",
    "server_encoding",
    "server_version",
    "session_authorization",
    "standard_conforming_strings",
    "TimeZone",
    "search_path",
    "scram_iana_name",
    "role",
];

/// Descriptors below this are left to the program (as for the trace writer's).
const FIRST_PRIVATE_FD: c_int = 1000;

pub fn set_trace_dir(dir: PathBuf) {
    let _ = TRACE_DIR.set(dir);
}

fn stream_path(stream: u32) -> Option<PathBuf> {
    TRACE_DIR.get().map(|dir| dir.join(format!("0.pg{stream}.rtstream")))
}

/// What a replay needs to stand in for the server at connect time.
struct Startup {
    stream: u32,
    parameters: Vec<(String, String)>,
    backend_pid: i64,
    dsn: String,
    user: String,
    dbname: String,
    port: i64,
}

impl Startup {
    fn to_value(&self) -> Value {
        let text = |s: &str| Value::Str(s.to_owned());
        Value::Dict(vec![
            (text("stream"), Value::Int(self.stream.into())),
            (
                text("parameters"),
                Value::List(self.parameters.iter().map(|(k, v)| Value::Tuple(vec![text(k), text(v)])).collect()),
            ),
            (text("backend_pid"), Value::Int(self.backend_pid)),
            (text("dsn"), text(&self.dsn)),
            (text("user"), text(&self.user)),
            (text("dbname"), text(&self.dbname)),
            (text("port"), Value::Int(self.port)),
        ])
    }

    fn from_value(value: &Value) -> Option<Startup> {
        let Value::Dict(items) = value else { return None };
        let get = |key: &str| items.iter().find(|(k, _)| matches!(k, Value::Str(s) if s == key)).map(|(_, v)| v);
        let text = |key: &str| match get(key) {
            Some(Value::Str(s)) => Some(s.clone()),
            _ => None,
        };
        let int = |key: &str| match get(key) {
            Some(Value::Int(i)) => Some(*i),
            _ => None,
        };
        let Some(Value::List(params)) = get("parameters") else { return None };
        let parameters = params
            .iter()
            .map(|p| match p {
                Value::Tuple(kv) => match kv.as_slice() {
                    [Value::Str(k), Value::Str(v)] => Some((k.clone(), v.clone())),
                    _ => None,
                },
                _ => None,
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Startup {
            stream: u32::try_from(int("stream")?).ok()?,
            parameters,
            backend_pid: int("backend_pid")?,
            dsn: text("dsn")?,
            user: text("user")?,
            dbname: text("dbname")?,
            port: int("port")?,
        })
    }
}

/// `psycopg2._psycopg.connection.__init__(dsn, async=0)`.
///
/// # Safety
/// Called through the tp_init proxy with the GIL held.
pub unsafe fn connect(hook: &'static Hook, call: InitCall) -> c_int {
    // SAFETY: see the function's contract.
    unsafe {
        let original = hook.original();
        if !(matches!(mode(), MODE_RECORD | MODE_REPLAY) && is_active()) {
            return call.call_original(original);
        }
        let digest = hook.digest(|| call.digest());
        if mode() == MODE_RECORD {
            record_connect(hook, call, digest)
        } else {
            replay_connect(hook, call, digest)
        }
    }
}

/// # Safety
/// As for [`connect`], while recording.
unsafe fn record_connect(hook: &'static Hook, call: InitCall, digest: Option<u32>) -> c_int {
    // SAFETY: see the function's contract.
    unsafe {
        let asynchronous = is_async(&call);
        let status = crate::signals::in_call(|| call.call_original(hook.original()));
        if status < 0 {
            record_outcome(hook, digest, std::ptr::null_mut());
            return status;
        }
        let py = py();
        let conn = Bound::from_borrowed_ptr(py, call.slf);
        let outcome = if asynchronous {
            Err("it is asynchronous (async=True), which is not recorded yet".to_owned())
        } else {
            capture(&conn).and_then(|startup| start_relay(&conn, startup))
        };
        let value = match outcome {
            Ok(startup) => startup.to_value(),
            Err(reason) => {
                eprintln!(
                    "retrace: warning: a psycopg2 connection is not recorded: {reason}; it runs live, and a replay will stop at its connect"
                );
                Value::Str(reason)
            }
        };
        record_with(hook, |rec| {
            rec.enc.call(hook.id, digest);
            rec.enc.value(&value);
        });
        status
    }
}

/// `async` / `async_` given and true (positionally: the second and third arguments).
///
/// # Safety
/// GIL held; `call` live.
unsafe fn is_async(call: &InitCall) -> bool {
    // SAFETY: truth tests of live argument objects; errors count as false.
    unsafe {
        let truthy = |obj: *mut ffi::PyObject| {
            let r = ffi::PyObject_IsTrue(obj);
            if r < 0 {
                ffi::PyErr_Clear();
            }
            r > 0
        };
        call.positional().iter().skip(1).any(|&a| truthy(a))
            || [c"async", c"async_"].iter().any(|name| {
                !call.kwargs.is_null() && {
                    let v = ffi::PyDict_GetItemString(call.kwargs, name.as_ptr());
                    !v.is_null() && truthy(v)
                }
            })
    }
}

/// What libpq learnt while connecting, read through psycopg2's own accessors.
fn capture(conn: &Bound<'_, PyAny>) -> Result<Startup, String> {
    let read = || -> PyResult<Result<Startup, String>> {
        let info = conn.getattr("info")?;
        if info.getattr("ssl_in_use")?.is_truthy()? {
            return Ok(Err(
                "it uses SSL, whose plaintext libpq keeps to itself (sslmode=disable records a connection over loopback or a Unix socket)"
                    .to_owned(),
            ));
        }
        let mut parameters = Vec::new();
        for name in REPORTED_PARAMETERS {
            let value = conn.call_method1("get_parameter_status", (name,))?;
            if !value.is_none() {
                parameters.push((name.to_owned(), value.extract::<String>()?));
            }
        }
        let text = |obj: Bound<'_, PyAny>| -> PyResult<String> {
            Ok(if obj.is_none() { String::new() } else { obj.extract::<String>()? })
        };
        Ok(Ok(Startup {
            stream: 0,
            parameters,
            backend_pid: conn.call_method0("get_backend_pid")?.extract()?,
            dsn: text(conn.getattr("dsn")?)?,
            user: text(info.getattr("user")?)?,
            dbname: text(info.getattr("dbname")?)?,
            port: info.getattr("port")?.extract()?,
        }))
    };
    read().unwrap_or_else(|e| Err(format!("psycopg2 did not describe it ({e})")))
}

/// Puts the relay between libpq and the server (see the module comment).
fn start_relay(conn: &Bound<'_, PyAny>, mut startup: Startup) -> Result<Startup, String> {
    let fd: RawFd = conn
        .call_method0("fileno")
        .and_then(|f| f.extract())
        .map_err(|e| format!("its socket is not available ({e})"))?;
    let stream = LAST_STREAM.fetch_add(1, Ordering::Relaxed) + 1;
    let path = stream_path(stream).ok_or("no recording directory")?;
    let log = StreamWriter::create(&path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    let swapped = swap_in_relay(fd).map_err(|e| format!("cannot put a relay on its socket: {e}"));
    let (server, relay_end) = match swapped {
        Ok(pair) => pair,
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
    };
    running_relays_add(1);
    let spawned = std::thread::Builder::new().name(format!("retrace-pg{stream}")).spawn(move || {
        relay(server, relay_end, log, &path);
        running_relays_add(-1);
    });
    if let Err(e) = spawned {
        // The libpq side is already swapped: without a relay the connection is dead, which
        // would change the program. Nothing to do but say so loudly.
        running_relays_add(-1);
        stop_recording(&format!("cannot start the relay of a PostgreSQL connection: {e}"));
    }
    startup.stream = stream;
    Ok(startup)
}

fn running_relays_add(delta: i32) {
    let (count, changed) = &RUNNING_RELAYS;
    let mut n = count.lock().unwrap_or_else(|e| e.into_inner());
    *n = n.saturating_add_signed(delta);
    changed.notify_all();
}

/// At the end of a recording: a program that closed its connections just before exiting
/// had its last bytes (the Terminate message) relayed but perhaps not yet written down.
/// Waits a little for relays whose program side is closed to finish.
pub fn finish_recording() {
    let (count, changed) = &RUNNING_RELAYS;
    let deadline = Instant::now() + Duration::from_millis(300);
    let mut n = count.lock().unwrap_or_else(|e| e.into_inner());
    while *n > 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        n = changed.wait_timeout(n, left).map(|(g, _)| g).unwrap_or_else(|e| e.into_inner().0);
    }
}

fn last_os_error<T>() -> std::io::Result<T> {
    Err(std::io::Error::last_os_error())
}

/// A new descriptor for `fd`'s open file at [`FIRST_PRIVATE_FD`] or above, close-on-exec.
fn private_dup(fd: RawFd) -> std::io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC returns a new descriptor (or -1) that nothing else owns.
    let moved = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, FIRST_PRIVATE_FD) };
    if moved < 0 {
        return last_os_error();
    }
    // SAFETY: `moved` is fresh and ours.
    Ok(unsafe { OwnedFd::from_raw_fd(moved) })
}

/// Moves an owned descriptor to [`FIRST_PRIVATE_FD`] or above, so that the program's own
/// descriptors get the same numbers when recorded and replayed.
fn high(fd: OwnedFd) -> std::io::Result<OwnedFd> {
    private_dup(fd.as_raw_fd())
}

/// Swaps libpq's socket `fd` for one end of a new socket pair, at the same number and with
/// the same flags. Returns the server socket and the relay's end of the pair, both private.
fn swap_in_relay(fd: RawFd) -> std::io::Result<(OwnedFd, OwnedFd)> {
    // SAFETY: fcntl reads of a descriptor libpq owns, which stays open throughout.
    let (status_flags, fd_flags) = unsafe { (libc::fcntl(fd, libc::F_GETFL), libc::fcntl(fd, libc::F_GETFD)) };
    if status_flags < 0 || fd_flags < 0 {
        return last_os_error();
    }
    let server = private_dup(fd)?;
    let (libpq_end, relay_end) = UnixStream::pair()?;
    let relay_end = high(relay_end.into())?;
    let libpq_end = OwnedFd::from(libpq_end);
    let cloexec = if fd_flags & libc::FD_CLOEXEC != 0 { libc::O_CLOEXEC } else { 0 };
    // SAFETY: fcntl/dup3 on descriptors we own (`libpq_end`) and on libpq's `fd`, which dup3
    // atomically re-points at our socket: libpq keeps its number, now reaching the relay.
    unsafe {
        if libc::fcntl(libpq_end.as_raw_fd(), libc::F_SETFL, status_flags) < 0 {
            return last_os_error();
        }
        if libc::dup3(libpq_end.as_raw_fd(), fd, cloexec) < 0 {
            return last_os_error();
        }
    }
    Ok((server, relay_end))
}

/// Relays bytes both ways until both sides have closed, writing them to `log`. Never
/// affects the connection when writing the log fails: it then stops the recording.
fn relay(server: OwnedFd, client: OwnedFd, log: StreamWriter, path: &Path) {
    let mut log = Some(log);
    let mut note = |write: &mut dyn FnMut(&mut StreamWriter) -> std::io::Result<()>| {
        if let Some(w) = log.as_mut() {
            if let Err(e) = write(w) {
                log = None;
                stop_recording(&format!("cannot write {}: {e}", path.display()));
            }
        }
    };
    // Each direction: (source, destination, bytes read and not yet written, source open).
    let mut to_server: Vec<u8> = Vec::new();
    let mut to_client: Vec<u8> = Vec::new();
    let (mut client_open, mut server_open) = (true, true);
    let (mut server_shut, mut client_shut) = (false, false);
    let mut buf = vec![0u8; 64 * 1024];
    set_nonblocking(&server);
    set_nonblocking(&client);
    loop {
        // Read a side only when what it sent last is delivered: back-pressure, no unbounded
        // buffering, and each side's bytes logged before the other side can answer them.
        let client_events = (if client_open && to_server.is_empty() { libc::POLLIN } else { 0 })
            | (if !to_client.is_empty() { libc::POLLOUT } else { 0 });
        let server_events = (if server_open && to_client.is_empty() { libc::POLLIN } else { 0 })
            | (if !to_server.is_empty() { libc::POLLOUT } else { 0 });
        if client_events == 0 && server_events == 0 {
            break;
        }
        let mut fds = [
            libc::pollfd { fd: if client_events == 0 { -1 } else { client.as_raw_fd() }, events: client_events, revents: 0 },
            libc::pollfd { fd: if server_events == 0 { -1 } else { server.as_raw_fd() }, events: server_events, revents: 0 },
        ];
        // SAFETY: `fds` is a valid array of two pollfd for the duration of the call.
        if unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) } < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            break;
        }
        let ready = |i: usize| fds[i].revents != 0;
        if ready(0) && client_open && to_server.is_empty() {
            match receive(&client, &mut buf) {
                Received::Data(n) => {
                    note(&mut |w| w.client(&buf[..n]));
                    to_server.extend_from_slice(&buf[..n]);
                }
                Received::Closed => {
                    client_open = false;
                    note(&mut |w| w.client_closed());
                }
                Received::WouldBlock => {}
            }
        }
        if ready(1) && server_open && to_client.is_empty() {
            match receive(&server, &mut buf) {
                Received::Data(n) => {
                    note(&mut |w| w.server(&buf[..n]));
                    to_client.extend_from_slice(&buf[..n]);
                }
                Received::Closed => {
                    server_open = false;
                    note(&mut |w| w.server_closed());
                }
                Received::WouldBlock => {}
            }
        }
        if !to_server.is_empty() && !deliver(&server, &mut to_server) {
            to_server.clear();
        }
        if !to_client.is_empty() && !deliver(&client, &mut to_client) {
            to_client.clear();
        }
        // A side that closed is passed on once its last bytes are delivered.
        if !client_open && to_server.is_empty() && !server_shut {
            server_shut = true;
            // SAFETY: shutdown of our own socket.
            unsafe { libc::shutdown(server.as_raw_fd(), libc::SHUT_WR) };
        }
        if !server_open && to_client.is_empty() && !client_shut {
            client_shut = true;
            // SAFETY: shutdown of our own socket.
            unsafe { libc::shutdown(client.as_raw_fd(), libc::SHUT_WR) };
        }
    }
    if let Some(w) = log {
        if let Err(e) = w.finish() {
            stop_recording(&format!("cannot complete {}: {e}", path.display()));
        }
    }
}

enum Received {
    Data(usize),
    Closed,
    WouldBlock,
}

fn receive(fd: &OwnedFd, buf: &mut [u8]) -> Received {
    loop {
        // SAFETY: recv into a buffer we own, of its length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n > 0 {
            return Received::Data(n as usize);
        }
        if n == 0 {
            return Received::Closed;
        }
        match std::io::Error::last_os_error().kind() {
            std::io::ErrorKind::Interrupted => continue,
            std::io::ErrorKind::WouldBlock => return Received::WouldBlock,
            // A reset connection is a closed one, as libpq will also find.
            _ => return Received::Closed,
        }
    }
}

/// Writes as much of `pending` as the socket takes; false when the peer is gone.
fn deliver(fd: &OwnedFd, pending: &mut Vec<u8>) -> bool {
    loop {
        // SAFETY: send from a buffer we own; MSG_NOSIGNAL, so a gone peer is an error here
        // and never a SIGPIPE to the program.
        let n = unsafe { libc::send(fd.as_raw_fd(), pending.as_ptr().cast(), pending.len(), libc::MSG_NOSIGNAL) };
        if n >= 0 {
            pending.drain(..n as usize);
            return true;
        }
        match std::io::Error::last_os_error().kind() {
            std::io::ErrorKind::Interrupted => continue,
            std::io::ErrorKind::WouldBlock => return true,
            _ => return false,
        }
    }
}

fn set_nonblocking(fd: &OwnedFd) {
    // SAFETY: fcntl flag update of a descriptor we own.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
    }
}

/// # Safety
/// As for [`connect`], while replaying.
unsafe fn replay_connect(hook: &'static Hook, call: InitCall, digest: Option<u32>) -> c_int {
    // SAFETY: see the function's contract.
    unsafe {
        let stop = |actual: String, hint: &'static str| -> ! {
            diverge(
                Divergence {
                    index: None,
                    thread: 0,
                    expected: format!("a replay of {}", hook.name),
                    actual,
                    hint,
                    bad_recording: true,
                    thread_name: None,
                },
                true,
            )
        };
        let value = match replay_take(hook, digest) {
            Replayed::Raise(e) => {
                raise_recorded(&e);
                return -1;
            }
            Replayed::Value(value) => value,
        };
        if let Value::Str(reason) = &value {
            stop(
                format!("this connection was not recorded ({reason}); the replay stops here rather than reach the server"),
                "see the README's list of what is recorded",
            );
        }
        let Some(startup) = Startup::from_value(&value) else {
            stop("the recorded connection is not readable".into(), "the recording is damaged; record again");
        };
        let Some(path) = stream_path(startup.stream) else {
            stop("no recording directory".into(), "internal: please report this");
        };
        let stream = match read_stream(&path) {
            Ok(stream) => stream,
            Err(e) => stop(e.to_string(), "the recording is damaged or incomplete; record again"),
        };
        let endpoint = match ReplayServer::start(&startup, stream) {
            Ok(endpoint) => endpoint,
            Err(e) => stop(
                format!("cannot stand in for the PostgreSQL server: {e}"),
                "a private Unix socket is needed in the temporary directory (TMPDIR)",
            ),
        };
        let dsn = replay_dsn(&endpoint.dir, &startup);
        let args = ffi::Py_BuildValue(c"(s)".as_ptr(), dsn.as_ptr());
        if args.is_null() {
            return -1;
        }
        let status = InitCall { slf: call.slf, args, kwargs: std::ptr::null_mut() }.call_original(hook.original());
        ffi::Py_DECREF(args);
        endpoint.remove();
        if status < 0 {
            let why = current_error_text();
            stop(
                format!("the replayed connection could not be opened: {why}"),
                "internal: please report this with the recording",
            );
        }
        set_dsn_member(call.slf, &startup.dsn);
        status
    }
}

/// The text of the pending Python exception, which is cleared.
///
/// # Safety
/// GIL held.
unsafe fn current_error_text() -> String {
    // SAFETY: fetches and drops the pending exception.
    unsafe {
        let py = py();
        PyErr::take(py).map(|e| e.to_string()).unwrap_or_default()
    }
}

/// A libpq connection string reaching only our stand-in: every option that could make
/// libpq go elsewhere, negotiate or check more is set explicitly.
fn replay_dsn(dir: &Path, startup: &Startup) -> std::ffi::CString {
    fn quoted(value: &str) -> String {
        format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
    }
    let mut dsn = format!(
        "host={} port={} user={} dbname={} sslmode=disable target_session_attrs=any connect_timeout=30",
        quoted(&dir.to_string_lossy()),
        startup.port,
        quoted(&startup.user),
        quoted(&startup.dbname),
    );
    dsn.retain(|c| c != '\0');
    std::ffi::CString::new(dsn).unwrap_or_default()
}

/// Gives the connection's `dsn` attribute the recorded text (it shows the stand-in's
/// otherwise). The attribute is a `T_STRING` member that psycopg2 frees with `PyMem_Free`.
///
/// # Safety
/// GIL held; `conn` an initialised psycopg2 connection.
unsafe fn set_dsn_member(conn: *mut ffi::PyObject, dsn: &str) {
    // SAFETY: the member descriptor describes the object's own layout; the old string is
    // psycopg2's PyMem allocation, replaced by one of ours made the same way.
    unsafe {
        // On the type, a member descriptor's attribute is the descriptor itself.
        let descr = ffi::PyObject_GetAttrString(ffi::Py_TYPE(conn).cast(), c"dsn".as_ptr());
        if descr.is_null() {
            ffi::PyErr_Clear();
            return;
        }
        let is_member = ffi::Py_TYPE(descr) == std::ptr::addr_of_mut!(ffi::PyMemberDescr_Type);
        let member = if is_member { (*descr.cast::<ffi::PyMemberDescrObject>()).d_member.cast::<ffi::PyMemberDef>() } else { std::ptr::null_mut() };
        ffi::Py_DECREF(descr);
        if member.is_null() || (*member).type_code != ffi::Py_T_STRING {
            return;
        }
        let slot = conn.cast::<u8>().add((*member).offset as usize).cast::<*mut std::os::raw::c_char>();
        let copy = ffi::PyMem_Malloc(dsn.len() + 1).cast::<u8>();
        if copy.is_null() {
            return;
        }
        std::ptr::copy_nonoverlapping(dsn.as_ptr(), copy, dsn.len());
        *copy.add(dsn.len()) = 0;
        ffi::PyMem_Free((*slot).cast());
        *slot = copy.cast();
    }
}

/// The stand-in server of one replayed connection: a Unix socket in a private directory,
/// served by a thread.
struct ReplayServer {
    dir: PathBuf,
    socket: PathBuf,
}

impl ReplayServer {
    fn start(startup: &Startup, stream: RecordedStream) -> std::io::Result<ReplayServer> {
        let base = std::env::temp_dir();
        // sun_path holds 108 bytes; a long TMPDIR falls back to /tmp.
        let base = if base.as_os_str().len() > 60 { PathBuf::from("/tmp") } else { base };
        let dir = base.join(format!("retrace-pg-{}-{}", std::process::id(), startup.stream));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        let socket = dir.join(format!(".s.PGSQL.{}", startup.port));
        let listener = UnixListener::bind(&socket)?;
        let listener = UnixListener::from(high(listener.into())?);
        let hello = startup_reply(startup);
        let id = startup.stream;
        std::thread::Builder::new().name(format!("retrace-pg{id}")).spawn(move || {
            let accepted = listener.accept().and_then(|(s, _)| Ok(UnixStream::from(high(s.into())?)));
            drop(listener);
            match accepted {
                Ok(client) => serve(id, client, &hello, stream),
                Err(e) => write_stderr(&format!("retrace: the stand-in for PostgreSQL connection {id} failed: {e}\n")),
            }
        })?;
        Ok(ReplayServer { dir, socket })
    }

    fn remove(&self) {
        let _ = std::fs::remove_file(&self.socket);
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// The server's answer to a start-up message: authenticated, the recorded parameters, the
/// recorded backend pid (with a cancel key of zero: cancelling is itself replayed), idle.
fn startup_reply(startup: &Startup) -> Vec<u8> {
    let mut out = Vec::new();
    message(&mut out, b'R', &0i32.to_be_bytes());
    for (name, value) in &startup.parameters {
        let mut body = Vec::with_capacity(name.len() + value.len() + 2);
        body.extend_from_slice(name.as_bytes());
        body.push(0);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
        message(&mut out, b'S', &body);
    }
    let mut key = (startup.backend_pid as i32).to_be_bytes().to_vec();
    key.extend_from_slice(&0i32.to_be_bytes());
    message(&mut out, b'K', &key);
    message(&mut out, b'Z', b"I");
    out
}

fn message(out: &mut Vec<u8>, kind: u8, body: &[u8]) {
    out.push(kind);
    out.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    out.extend_from_slice(body);
}

/// Start-up packets that are answered with a single `N` (not supported) before the real one.
const SSL_REQUEST: u32 = 80877103;
const GSSENC_REQUEST: u32 = 80877104;

/// Plays one recorded connection to the replayed libpq.
fn serve(id: u32, mut client: UnixStream, hello: &[u8], stream: RecordedStream) {
    let result = (|| -> Result<(), Mismatch> {
        loop {
            let mut head = [0u8; 8];
            client.read_exact(&mut head).map_err(Mismatch::Io)?;
            let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
            let code = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
            let mut rest = vec![0u8; len.saturating_sub(8).min(1 << 20)];
            client.read_exact(&mut rest).map_err(Mismatch::Io)?;
            if code == SSL_REQUEST || code == GSSENC_REQUEST {
                client.write_all(b"N").map_err(Mismatch::Io)?;
                continue;
            }
            break;
        }
        client.write_all(hello).map_err(Mismatch::Io)?;
        let mut buf = vec![0u8; 64 * 1024];
        for segment in &stream.segments {
            match segment {
                Segment::Client(expected) => expect_from_client(&mut client, expected, &mut buf)?,
                Segment::Server(bytes) => client.write_all(bytes).map_err(Mismatch::Io)?,
                Segment::ServerClosed => {
                    let _ = client.shutdown(std::net::Shutdown::Write);
                }
                Segment::ClientClosed => expect_client_close(&mut client, &mut buf)?,
            }
        }
        // A recording cut short right after the client spoke: the program now waits for an
        // answer that was never recorded.
        if let (false, Some(Segment::Client(last))) = (stream.complete, stream.segments.last()) {
            return Err(Mismatch::RecordingEnds(last.clone()));
        }
        // Past the recording: a connection closed when recorded must stay quiet; one still
        // open when the recorded process ended may only be closed.
        let mut extra = Vec::new();
        loop {
            match client.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => extra.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return Ok(()),
            }
            if !only_terminate(&extra) {
                return Err(if stream.complete { Mismatch::Extra(extra) } else { Mismatch::RecordingEnds(extra) });
            }
        }
    })();
    if let Err(mismatch) = result {
        report_mismatch(id, mismatch);
    }
}

/// Why the replayed client and the recording part ways.
enum Mismatch {
    Io(std::io::Error),
    /// The client sent `actual` where the recording has `expected` (both from the first
    /// message that differs).
    Sent { expected: Vec<u8>, actual: Vec<u8> },
    /// The client closed the connection where the recording has it send `expected`.
    Closed { expected: Vec<u8> },
    /// The client sent more after the recorded close.
    Extra(Vec<u8>),
    /// The recording of the connection ends (the recorded process stopped) but the client
    /// sent more.
    RecordingEnds(Vec<u8>),
}

fn expect_from_client(client: &mut UnixStream, expected: &[u8], buf: &mut [u8]) -> Result<(), Mismatch> {
    let mut got = 0;
    while got < expected.len() {
        let want = (expected.len() - got).min(buf.len());
        let n = match client.read(&mut buf[..want]) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Mismatch::Io(e)),
        };
        if n == 0 {
            return Err(Mismatch::Closed { expected: expected[message_start(expected, got)..].to_vec() });
        }
        // Checked as the bytes come: a client that sends something shorter and then waits
        // for an answer is caught here, not left waiting forever.
        if buf[..n] != expected[got..got + n] {
            let start = message_start(expected, got + first_difference(&buf[..n], &expected[got..got + n]));
            let mut actual = expected[start..got].to_vec();
            actual.extend_from_slice(&buf[..n]);
            return Err(Mismatch::Sent { expected: expected[start..].to_vec(), actual });
        }
        got += n;
    }
    Ok(())
}

fn expect_client_close(client: &mut UnixStream, buf: &mut [u8]) -> Result<(), Mismatch> {
    loop {
        match client.read(buf) {
            Ok(0) => return Ok(()),
            Ok(n) => return Err(Mismatch::Extra(buf[..n].to_vec())),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return Ok(()),
        }
    }
}

fn first_difference(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).position(|(x, y)| x != y).unwrap_or(a.len().min(b.len()))
}

/// The offset of the frontend message containing byte `at` of a segment that starts at a
/// message boundary (every recorded client segment does in practice; otherwise 0).
fn message_start(bytes: &[u8], at: usize) -> usize {
    let mut start = 0;
    while let Some(len) = bytes.get(start + 1..start + 5).map(|l| i32::from_be_bytes([l[0], l[1], l[2], l[3]])) {
        let next = start + 1 + len.max(4) as usize;
        if next > at {
            return start;
        }
        start = next;
    }
    if start > at {
        0
    } else {
        start
    }
}

/// True when `bytes` is (a prefix of) a single Terminate message.
fn only_terminate(bytes: &[u8]) -> bool {
    let terminate = [b'X', 0, 0, 0, 4];
    bytes.len() <= terminate.len() && terminate.starts_with(bytes)
}

/// A frontend message, for people: `Query "SELECT 1"`, `Parse "..."`, `Terminate`...
fn describe(bytes: &[u8]) -> String {
    let Some(&kind) = bytes.first() else { return "nothing".into() };
    let body = bytes.get(5..).unwrap_or(&[]);
    let text_until_nul = |b: &[u8]| {
        let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
        let text = String::from_utf8_lossy(&b[..end]).into_owned();
        if text.chars().count() > 300 {
            format!("{}...", text.chars().take(300).collect::<String>())
        } else {
            text
        }
    };
    match kind {
        b'Q' => format!("Query {:?}", text_until_nul(body)),
        b'P' => {
            let name_end = body.iter().position(|&c| c == 0).map(|i| i + 1).unwrap_or(body.len());
            format!("Parse {:?}", text_until_nul(&body[name_end..]))
        }
        b'X' => "Terminate".into(),
        b'B' => "Bind".into(),
        b'E' => "Execute".into(),
        b'S' => "Sync".into(),
        b'd' => format!("CopyData ({} bytes)", body.len()),
        b'c' => "CopyDone".into(),
        b'f' => "CopyFail".into(),
        b'F' => "FunctionCall".into(),
        other => format!("a message of type {:?}", other as char),
    }
}

/// Ends the replay from the stand-in's thread: the program is blocked in libpq, waiting.
fn report_mismatch(id: u32, mismatch: Mismatch) {
    let (actual, bad_recording, hint) = match mismatch {
        Mismatch::Io(e) => {
            // The program closed its end in a way we cannot read: nothing to compare.
            write_stderr(&format!("retrace: warning: the stand-in for PostgreSQL connection {id} stopped: {e}\n"));
            return;
        }
        Mismatch::Sent { expected, actual } => (
            format!("sent {} where the recording has {}", describe(&actual), describe(&expected)),
            false,
            "the program sent the database something else than when recorded: find what differs before this query",
        ),
        Mismatch::Closed { expected } => (
            format!("closed the connection where the recording has it send {}", describe(&expected)),
            false,
            "the program closed its database connection earlier than when recorded",
        ),
        Mismatch::Extra(bytes) => (
            format!("sent {} after the connection was closed when recorded", describe(&bytes)),
            false,
            "the program used its database connection longer than when recorded",
        ),
        Mismatch::RecordingEnds(bytes) => (
            format!("sent {}, but the recording of this connection ends before it", describe(&bytes)),
            true,
            "the recorded process stopped here (killed?); the replay cannot go further",
        ),
    };
    crate::dispatch::diverge_from_helper(Divergence {
        index: None,
        thread: 0,
        expected: format!("PostgreSQL connection {id} to go on as recorded"),
        actual: format!("the program {actual}"),
        hint,
        bad_recording,
        thread_name: None,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(text: &str) -> Vec<u8> {
        let mut out = Vec::new();
        let mut body = text.as_bytes().to_vec();
        body.push(0);
        message(&mut out, b'Q', &body);
        out
    }

    #[test]
    fn describes_messages_where_they_differ() {
        let mut recorded = query("SELECT 1");
        recorded.extend(query("SELECT 2"));
        let at = recorded.len() - 3;
        let start = message_start(&recorded, at);
        assert_eq!(describe(&recorded[start..]), "Query \"SELECT 2\"");
        assert_eq!(message_start(&recorded, 0), 0);
        assert!(only_terminate(&[b'X', 0, 0, 0, 4]));
        assert!(!only_terminate(&query("x")));
    }

    #[test]
    fn startup_round_trips_through_a_value() {
        let s = Startup {
            stream: 3,
            parameters: vec![("server_version".into(), "15.1".into())],
            backend_pid: 42,
            dsn: "user=a password=xxx".into(),
            user: "a".into(),
            dbname: "b".into(),
            port: 5432,
        };
        let back = Startup::from_value(&s.to_value()).unwrap();
        assert_eq!((back.stream, back.backend_pid, back.dsn.as_str(), back.port), (3, 42, "user=a password=xxx", 5432));
        assert_eq!(back.parameters, s.parameters);
        let reply = startup_reply(&s);
        assert_eq!(&reply[..9], &[b'R', 0, 0, 0, 8, 0, 0, 0, 0]);
        assert_eq!(&reply[reply.len() - 6..], &[b'Z', 0, 0, 0, 5, b'I']);
    }

    #[test]
    fn replay_dsn_quotes_values() {
        let s = Startup {
            stream: 1,
            parameters: vec![],
            backend_pid: 1,
            dsn: String::new(),
            user: "o'brien".into(),
            dbname: "d b".into(),
            port: 5433,
        };
        let dsn = replay_dsn(Path::new("/tmp/x"), &s);
        assert_eq!(
            dsn.to_str().unwrap(),
            "host='/tmp/x' port=5433 user='o\\'brien' dbname='d b' sslmode=disable target_session_attrs=any connect_timeout=30"
        );
    }
}

//! Sockets: `_socket.socket`, under `socket.socket`, `http.client`, `requests`...
//!
//! A socket created while the program runs is a tracked descriptor (see `fds.rs`); its
//! methods that reach the network (connect, accept, send*, recv*, bind, listen,
//! shutdown, get/setsockopt, getpeername/getsockname) are boundary calls. At replay the
//! socket object is initialised on a stand-in: an unconnected socket of the recorded
//! family and type, at the recorded descriptor number. Timeouts and blocking mode stay
//! live (they only set flags on the stand-in). Name resolution (`getaddrinfo`...) is
//! recorded as plain calls.

use crate::calls::{InitCall, RawCall};
use crate::codec::decode_value;
use crate::dispatch::{boundary, is_active, record_outcome, record_with, replay_take, Original};
use crate::exceptions::raise_recorded;
use crate::fileio::keyword;
use crate::fds::{fd_field, is_tracked, materialize, track, untrack, FdKind};
use crate::hooks::{Hook, HookId};
use crate::osfd::stand_in_failed;
use crate::session::{mode, Replayed, MODE_RECORD, MODE_REPLAY};
use pyo3::ffi;
use retrace_recorder::Value;
use std::os::raw::c_int;

/// What a socket method hook does.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SockOp {
    /// The result is the effect.
    Plain,
    /// `recv_into`, `recvfrom_into`: bytes placed in the caller's buffer.
    ReadInto,
    /// `_accept`: a new connected socket's descriptor and the peer's address.
    Accept,
    /// `close`: replayed, and the stand-in really closed.
    Close,
}

/// Family, type and protocol, which a socket object keeps after its descriptor.
///
/// # Safety
/// `obj` is a `_socket.socket` instance.
unsafe fn socket_kind(obj: *mut ffi::PyObject) -> FdKind {
    // SAFETY: the socket struct holds `int sock_fd, sock_family, sock_type, sock_proto` in
    // that order after the object header, on every version we build for.
    unsafe {
        let base = obj.cast::<u8>().add(std::mem::size_of::<ffi::PyObject>()) as *const c_int;
        FdKind::Socket { family: *base.add(1), kind: *base.add(2), proto: *base.add(3) }
    }
}

/// TLS (`_ssl._SSLSocket`) records the plaintext: the handshake, `read` and `write` are
/// boundary calls, so a replay needs neither the peer, nor certificates, nor a handshake.
/// The SSL object itself is created live at replay (on the stand-in socket: no I/O).
///
/// Inlined into the proxy, which calls the original from its own frame (see
/// `dispatch::boundary_where`).
///
/// # Safety
/// Called through a method proxy with the GIL held.
#[inline(always)]
pub unsafe fn ssl_method(hook: &'static Hook, call: RawCall) -> *mut ffi::PyObject {
    // SAFETY: see the function's contract.
    unsafe {
        // read(n, buffer) fills the caller's buffer; read(n) returns bytes.
        if hook.id == HookId::ssl_read as u32 && call.positional().len() >= 2 {
            return crate::fileio::read_into(hook, call, 1, |_| true);
        }
        boundary(hook, || hook.digest(|| call.digest()), Original(call, hook.original()))
    }
}

/// `_socket.socket.__init__(family=-1, type=-1, proto=-1, fileno=None)`.
///
/// # Safety
/// Called through the tp_init proxy (or the `__init__` wrapper) with the GIL held.
pub unsafe fn init(hook: &'static Hook, call: InitCall) -> c_int {
    // SAFETY: see the function's contract.
    unsafe {
        let original = hook.original();
        let args = call.positional();
        let fileno = args.get(3).copied().or_else(|| keyword(call.kwargs, c"fileno"));
        let wraps_existing = fileno.is_some_and(|f| f != ffi::Py_None());
        let active = matches!(mode(), MODE_RECORD | MODE_REPLAY) && is_active();
        if !active || wraps_existing {
            // socket(fileno=fd) adopts a descriptor: it stays tracked if it was.
            return call.call_original(original);
        }
        let digest = hook.digest(|| call.digest());
        if mode() == MODE_RECORD {
            let status = call.call_original(original);
            if status < 0 {
                record_outcome(hook, digest, std::ptr::null_mut());
                return status;
            }
            let fd = fd_field(call.slf);
            let kind = socket_kind(call.slf);
            track(fd, kind);
            let FdKind::Socket { family, kind, proto } = kind else { return status };
            record_with(hook, |rec| {
                rec.enc.call(hook.id, digest);
                rec.enc.tuple(4);
                for v in [fd, family, kind, proto] {
                    rec.enc.int(i64::from(v));
                }
            });
            return status;
        }
        match replay_take(hook, digest) {
            Replayed::Raise(e) => {
                raise_recorded(&e);
                -1
            }
            Replayed::Value(Value::Tuple(items)) if items.len() == 4 => {
                let ints: Vec<c_int> = items.iter().map(|v| if let Value::Int(i) = v { *i as c_int } else { -1 }).collect();
                let (fd, family, kind, proto) = (ints[0], ints[1], ints[2], ints[3]);
                if let Err(why) = materialize(fd, FdKind::Socket { family, kind, proto }) {
                    stand_in_failed(hook, &why);
                }
                let values = [family, kind, proto, fd].map(|v| ffi::PyLong_FromLong(v.into()));
                let args = ffi::PyTuple_New(4);
                for (i, v) in values.into_iter().enumerate() {
                    ffi::PyTuple_SET_ITEM(args, i as ffi::Py_ssize_t, v);
                }
                let status = InitCall { slf: call.slf, args, kwargs: std::ptr::null_mut() }.call_original(original);
                ffi::Py_DECREF(args);
                status
            }
            Replayed::Value(_) => crate::handlers::bad_value(hook),
        }
    }
}

/// `_socket.socketpair(family, type, proto)`: two connected sockets made in C, so not
/// through `__init__`. Both become tracked descriptors (their traffic is recorded, and at
/// replay they are stand-ins at the recorded numbers). An event loop's self-pipe is one:
/// a thread's wake-up write is then a schedule point the loop's `poll` comes after.
///
/// # Safety
/// Called through a method proxy with the GIL held.
pub unsafe fn socketpair(hook: &'static Hook, call: RawCall) -> *mut ffi::PyObject {
    // SAFETY: see the function's contract.
    unsafe {
        let original = hook.original();
        if !(matches!(mode(), MODE_RECORD | MODE_REPLAY) && is_active()) {
            return call.call_original(original);
        }
        let digest = hook.digest(|| call.digest());
        if mode() == MODE_RECORD {
            let result = crate::signals::in_call(|| call.call_original(original));
            if result.is_null() || ffi::PyTuple_Check(result) == 0 || ffi::PyTuple_GET_SIZE(result) != 2 {
                record_outcome(hook, digest, result);
                return result;
            }
            let (a, b) = (ffi::PyTuple_GET_ITEM(result, 0), ffi::PyTuple_GET_ITEM(result, 1));
            let kind = socket_kind(a);
            let (fd_a, fd_b) = (fd_field(a), fd_field(b));
            track(fd_a, kind);
            track(fd_b, kind);
            let FdKind::Socket { family, kind, proto } = kind else { return result };
            record_with(hook, |rec| {
                rec.enc.call(hook.id, digest);
                rec.enc.tuple(5);
                for v in [fd_a, fd_b, family, kind, proto] {
                    rec.enc.int(i64::from(v));
                }
            });
            return result;
        }
        match replay_take(hook, digest) {
            Replayed::Raise(e) => {
                raise_recorded(&e);
                std::ptr::null_mut()
            }
            Replayed::Value(Value::Tuple(items)) if items.len() == 5 => {
                let ints: Vec<c_int> = items.iter().map(|v| if let Value::Int(i) = v { *i as c_int } else { -1 }).collect();
                let (family, kind, proto) = (ints[2], ints[3], ints[4]);
                let socket_type = ffi::PyObject_GetAttrString(call.slf(), c"socket".as_ptr());
                if socket_type.is_null() {
                    return socket_type;
                }
                let pair = ffi::PyTuple_New(2);
                for (i, &fd) in ints[..2].iter().enumerate() {
                    if let Err(why) = materialize(fd, FdKind::Socket { family, kind, proto }) {
                        stand_in_failed(hook, &why);
                    }
                    // socket(family, type, proto, fileno): adopts the stand-in, still tracked.
                    let sock = ffi::PyObject_CallFunction(socket_type, c"iiii".as_ptr(), family, kind, proto, fd);
                    if sock.is_null() {
                        ffi::Py_DECREF(pair);
                        ffi::Py_DECREF(socket_type);
                        return sock;
                    }
                    ffi::PyTuple_SET_ITEM(pair, i as ffi::Py_ssize_t, sock);
                }
                ffi::Py_DECREF(socket_type);
                pair
            }
            Replayed::Value(_) => crate::handlers::bad_value(hook),
        }
    }
}

/// A method of a socket object. Inlined into the proxy: the frequent operations (`send`,
/// `recv` and the like, `recv_into`, `recvfrom_into`) call the original from the proxy's
/// frame, as a file's do (`fileio::plain`, `fileio::tracked_read_into`); the others are out
/// of line.
///
/// # Safety
/// Called through a method proxy with the GIL held; `call.slf()` is a socket.
#[inline(always)]
pub unsafe fn method(hook: &'static Hook, op: SockOp, call: RawCall) -> *mut ffi::PyObject {
    // SAFETY: see the function's contract.
    unsafe {
        match op {
            SockOp::Plain => crate::fileio::plain(hook, call),
            SockOp::ReadInto => crate::fileio::tracked_read_into(hook, call),
            SockOp::Close => close(hook, call),
            SockOp::Accept => tracked_accept(hook, call),
        }
    }
}

/// `close()`: the descriptor is released, and the release's start recorded first.
///
/// # Safety
/// As for [`method`].
#[inline(never)]
unsafe fn close(hook: &'static Hook, call: RawCall) -> *mut ffi::PyObject {
    // SAFETY: see the function's contract.
    unsafe {
        let original = hook.original();
        let fd = fd_field(call.slf());
        if !is_tracked(fd) {
            return call.call_original(original);
        }
        let digest = || hook.digest(|| call.digest());
        untrack(fd);
        match mode() {
            MODE_REPLAY if is_active() => {
                crate::dispatch::replay_releasing(hook, digest(), Some(fd), || crate::dispatch::discard(call.call_original(original)))
            }
            _ => {
                crate::dispatch::record_release_start(fd);
                boundary(hook, digest, || call.call_original(original))
            }
        }
    }
}

/// `_accept()` on a tracked listener (see [`accept`]).
///
/// # Safety
/// As for [`method`].
#[inline(never)]
unsafe fn tracked_accept(hook: &'static Hook, call: RawCall) -> *mut ffi::PyObject {
    // SAFETY: see the function's contract.
    unsafe {
        if !is_tracked(fd_field(call.slf())) {
            return call.call_original(hook.original());
        }
        accept(hook, call, hook.digest(|| call.digest()))
    }
}

/// `_accept()` returns `(fd, address)`; the new descriptor is a socket like the listener.
///
/// # Safety
/// As for [`method`].
unsafe fn accept(hook: &'static Hook, call: RawCall, digest: Option<u32>) -> *mut ffi::PyObject {
    // SAFETY: see the function's contract.
    unsafe {
        let kind = socket_kind(call.slf());
        match mode() {
            MODE_RECORD if is_active() => {
                let result = crate::signals::in_call(|| call.call_original(hook.original()));
                if !result.is_null() && ffi::PyTuple_Check(result) != 0 && ffi::PyTuple_GET_SIZE(result) == 2 {
                    let fd = ffi::PyLong_AsLong(ffi::PyTuple_GET_ITEM(result, 0));
                    if fd >= 0 {
                        track(fd as c_int, kind);
                    }
                    ffi::PyErr_Clear();
                }
                record_outcome(hook, digest, result);
                result
            }
            MODE_REPLAY if is_active() => match replay_take(hook, digest) {
                Replayed::Raise(e) => {
                    raise_recorded(&e);
                    std::ptr::null_mut()
                }
                Replayed::Value(value) => {
                    if let Value::Tuple(items) = &value {
                        if let Some(Value::Int(fd)) = items.first() {
                            if let Err(why) = materialize(*fd as c_int, kind) {
                                stand_in_failed(hook, &why);
                            }
                        }
                    }
                    decode_value(&value)
                }
            },
            _ => call.call_original(hook.original()),
        }
    }
}

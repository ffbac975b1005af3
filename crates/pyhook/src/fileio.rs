//! Data files: `_io.FileIO`, under every `open()`.
//!
//! Opening a FileIO by path while the program runs is a boundary call that yields a
//! tracked descriptor (see `fds.rs`); every FileIO method on a tracked descriptor is a
//! boundary call too. At replay the file is not opened: a stand-in takes the recorded
//! descriptor number, the FileIO is initialised on it, and gets back the name the program
//! opened and the block size the file had (it decides buffer sizes, so the sizes of later
//! reads). Reads return the recorded bytes; writes are not performed again.
//!
//! Imports are code, not data: a FileIO opened directly by the import system (its top
//! Python frame is `<frozen importlib...>` or `<frozen zipimport>`) is never tracked, so
//! reading sources and writing `__pycache__` happen live, at record and replay alike.

use crate::calls::{InitCall, RawCall};
use crate::dispatch::{
    active_caller_where, boundary, boundary_where, is_active, record_outcome, record_outcome_on, record_with, record_with_on,
    replay_take, Caller, Original,
};
use crate::exceptions::raise_recorded;
use crate::hooks::Hook;
use crate::fds::{fd_field, is_tracked, materialize, track, untrack, FdKind};
use crate::session::{mode, Replayed, State, MODE_RECORD, MODE_REPLAY};
use pyo3::ffi;
use retrace_recorder::Value;
use std::os::raw::c_int;

/// Which tracked-file behaviour a FileIO hook has.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum FileOp {
    /// read, readall, write, seek, tell, truncate, isatty, seekable: the result is the effect.
    Plain,
    /// readinto: the bytes placed in the caller's buffer are the effect.
    ReadInto,
    /// close: replayed, and the stand-in descriptor really closed.
    Close,
}

/// True when the innermost Python frame belongs to the import system.
///
/// # Safety
/// GIL held.
pub unsafe fn called_by_import_system() -> bool {
    // SAFETY: borrowed frame of the current thread; the code object is a new reference.
    unsafe {
        let frame = ffi::PyEval_GetFrame();
        if frame.is_null() {
            return false;
        }
        let code = ffi::PyFrame_GetCode(frame);
        let filename = ffi::PyObject_GetAttrString(code as *mut ffi::PyObject, c"co_filename".as_ptr());
        ffi::Py_DECREF(code as *mut ffi::PyObject);
        if filename.is_null() {
            ffi::PyErr_Clear();
            return false;
        }
        let is_import = crate::codec::utf8_of(filename)
            .is_some_and(|f| f.starts_with(b"<frozen importlib") || f.starts_with(b"<frozen zipimport"));
        ffi::Py_DECREF(filename);
        is_import
    }
}

/// `FileIO.__init__(file, mode='r', closefd=True, opener=None)`.
///
/// # Safety
/// Called through the tp_init proxy with the GIL held.
pub unsafe fn open(hook: &'static Hook, call: InitCall) -> c_int {
    // SAFETY: see the function's contract.
    unsafe {
        let original = hook.original();
        let args = call.positional();
        let file = args.first().copied().or_else(|| keyword(call.kwargs, c"file"));
        let opener = args.get(3).copied().or_else(|| keyword(call.kwargs, c"opener"));
        let in_session = matches!(mode(), MODE_RECORD | MODE_REPLAY) && is_active();
        let by_path = file.is_some_and(|f| ffi::PyLong_Check(f) == 0) && opener.is_none_or(|o| o == ffi::Py_None());
        if in_session && by_path && called_by_import_system() {
            return open_for_import(original, call, file);
        }
        if !in_session || called_by_import_system() {
            return call.call_original(original);
        }
        let digest = hook.digest(|| open_digest(&call));
        if !by_path {
            // FileIO(fd) or an opener: the descriptor comes from elsewhere (and is tracked
            // if a recorded call made it); only the block size read from it is recorded.
            let status = call.call_original(original);
            if status == 0 && is_tracked(fd_field(call.slf)) {
                return block_size(hook, call.slf, digest);
            }
            return status;
        }
        if mode() == MODE_RECORD {
            let status = call.call_original(original);
            if status < 0 {
                record_outcome(hook, digest, std::ptr::null_mut());
            } else {
                let fd = fd_field(call.slf);
                track(fd, FdKind::File);
                let blksize = int_attr(call.slf, c"_blksize");
                record_with(hook, |rec| {
                    rec.enc.call(hook.id, digest);
                    rec.enc.tuple(2);
                    rec.enc.int(i64::from(fd));
                    rec.enc.int(blksize);
                });
            }
            return status;
        }
        match replay_take(hook, digest) {
            Replayed::Raise(e) => {
                raise_recorded(&e);
                -1
            }
            Replayed::Value(Value::Tuple(items)) if items.len() == 2 => {
                let (Value::Int(fd), Value::Int(blksize)) = (&items[0], &items[1]) else {
                    crate::handlers::bad_value(hook);
                };
                let fd = *fd as c_int;
                if let Err(why) = materialize(fd, FdKind::File) {
                    crate::osfd::stand_in_failed(hook, &why);
                }
                let mode = args.get(1).copied().or_else(|| keyword(call.kwargs, c"mode"));
                let status = init_on_fd(original, call.slf, fd, mode);
                if status < 0 {
                    return status;
                }
                // The program sees the name it opened and the block size the file had.
                if let Some(name) = file {
                    ffi::PyObject_SetAttrString(call.slf, c"name".as_ptr(), name);
                }
                set_blksize(call.slf, *blksize);
                0
            }
            Replayed::Value(_) => crate::handlers::bad_value(hook),
        }
    }
}

/// The import system opening a source or bytecode file: live, but through the import view
/// (see `imports.rs`): a recorded source is read from its copy at replay, under its
/// recorded name.
///
/// # Safety
/// GIL held; `original` is FileIO's tp_init.
unsafe fn open_for_import(original: *mut std::os::raw::c_void, call: InitCall, file: Option<*mut ffi::PyObject>) -> c_int {
    // SAFETY: see the function's contract.
    unsafe {
        let Some(path) = file.and_then(|f| crate::codec::utf8_of(f)).map(|b| String::from_utf8_lossy(b).into_owned()) else {
            return call.call_original(original);
        };
        match crate::imports::source_open(&path) {
            crate::imports::SourceOpen::AsIs => call.call_original(original),
            crate::imports::SourceOpen::Missing => {
                let args = (libc::ENOENT, "No such file or directory (a recorded source supersedes it)", path.clone());
                let py = pyo3::Python::assume_attached();
                pyo3::PyErr::new::<pyo3::exceptions::PyFileNotFoundError, _>(args).restore(py);
                -1
            }
            crate::imports::SourceOpen::Redirect(copy) => {
                let Some(copy) = copy.to_str() else { return call.call_original(original) };
                let copy_obj = ffi::PyUnicode_FromStringAndSize(copy.as_ptr().cast(), copy.len() as ffi::Py_ssize_t);
                if copy_obj.is_null() {
                    return -1;
                }
                // The import system passes the path positionally: swap it for the copy.
                let positional = call.positional();
                if positional.is_empty() {
                    ffi::Py_DECREF(copy_obj);
                    return call.call_original(original);
                }
                let args = ffi::PyTuple_New(positional.len() as ffi::Py_ssize_t);
                for (i, &arg) in positional.iter().enumerate() {
                    let item = if i == 0 { copy_obj } else { arg };
                    ffi::Py_INCREF(item);
                    ffi::PyTuple_SET_ITEM(args, i as ffi::Py_ssize_t, item);
                }
                ffi::Py_DECREF(copy_obj);
                let status = InitCall { slf: call.slf, args, kwargs: call.kwargs }.call_original(original);
                ffi::Py_DECREF(args);
                if status == 0 {
                    if let Some(name) = file {
                        ffi::PyObject_SetAttrString(call.slf, c"name".as_ptr(), name);
                        ffi::PyErr_Clear();
                    }
                }
                status
            }
        }
    }
}

/// The block size of a FileIO initialised on an already tracked descriptor.
///
/// # Safety
/// GIL held; `slf` an initialised FileIO.
unsafe fn block_size(hook: &'static Hook, slf: *mut ffi::PyObject, digest: Option<u32>) -> c_int {
    // SAFETY: see the function's contract.
    unsafe {
        if mode() == MODE_RECORD {
            let blksize = int_attr(slf, c"_blksize");
            record_with(hook, |rec| {
                rec.enc.call(hook.id, digest);
                rec.enc.int(blksize);
            });
            return 0;
        }
        match replay_take(hook, digest) {
            Replayed::Value(Value::Int(blksize)) => {
                set_blksize(slf, blksize);
                0
            }
            Replayed::Raise(e) => {
                raise_recorded(&e);
                -1
            }
            Replayed::Value(_) => crate::handlers::bad_value(hook),
        }
    }
}

/// # Safety
/// GIL held.
unsafe fn set_blksize(slf: *mut ffi::PyObject, blksize: i64) {
    // SAFETY: `_blksize` is a writable int member of FileIO.
    unsafe {
        let b = ffi::PyLong_FromLongLong(blksize);
        if !b.is_null() {
            ffi::PyObject_SetAttrString(slf, c"_blksize".as_ptr(), b);
            ffi::Py_DECREF(b);
        }
        ffi::PyErr_Clear();
    }
}


/// # Safety
/// GIL held; `kwargs` a dict or NULL.
pub(crate) unsafe fn keyword(kwargs: *mut ffi::PyObject, name: &std::ffi::CStr) -> Option<*mut ffi::PyObject> {
    // SAFETY: borrowed dict lookup.
    unsafe {
        if kwargs.is_null() {
            return None;
        }
        let v = ffi::PyDict_GetItemString(kwargs, name.as_ptr());
        (!v.is_null()).then_some(v)
    }
}

/// The digest of an open: the path (as `os.fspath` gives it) and the other arguments.
///
/// # Safety
/// GIL held.
unsafe fn open_digest(call: &InitCall) -> u32 {
    // SAFETY: PyOS_FSPath on the path argument; new references released.
    unsafe {
        let mut hasher = xxhash_rust::xxh3::Xxh3Default::new();
        for (i, &arg) in call.positional().iter().enumerate() {
            if i == 0 && ffi::PyUnicode_Check(arg) == 0 && ffi::PyBytes_Check(arg) == 0 {
                let path = ffi::PyOS_FSPath(arg);
                if path.is_null() {
                    ffi::PyErr_Clear();
                    crate::codec::digest_object(&mut hasher, arg, 0);
                } else {
                    crate::codec::digest_object(&mut hasher, path, 0);
                    ffi::Py_DECREF(path);
                }
            } else {
                crate::codec::digest_object(&mut hasher, arg, 0);
            }
        }
        if !call.kwargs.is_null() {
            crate::codec::digest_object(&mut hasher, call.kwargs, 0);
        }
        hasher.digest() as u32
    }
}

/// Initialises a FileIO on descriptor `fd` with the program's mode.
///
/// # Safety
/// GIL held; `original` is FileIO's tp_init; `mode` live or None.
unsafe fn init_on_fd(original: *mut std::os::raw::c_void, slf: *mut ffi::PyObject, fd: c_int, mode: Option<*mut ffi::PyObject>) -> c_int {
    // SAFETY: calls FileIO.__init__(fd, mode) with new references released.
    unsafe {
        let fd_obj = ffi::PyLong_FromLong(fd.into());
        let args = match mode {
            Some(m) if !fd_obj.is_null() => ffi::PyTuple_Pack(2, fd_obj, m),
            _ if !fd_obj.is_null() => ffi::PyTuple_Pack(1, fd_obj),
            _ => std::ptr::null_mut(),
        };
        ffi::Py_XDECREF(fd_obj);
        if args.is_null() {
            return -1;
        }
        let status = InitCall { slf, args, kwargs: std::ptr::null_mut() }.call_original(original);
        ffi::Py_DECREF(args);
        status
    }
}

/// # Safety
/// GIL held; `obj` live.
unsafe fn int_attr(obj: *mut ffi::PyObject, name: &std::ffi::CStr) -> i64 {
    // SAFETY: attribute read of a FileIO member.
    unsafe {
        let v = ffi::PyObject_GetAttrString(obj, name.as_ptr());
        if v.is_null() {
            ffi::PyErr_Clear();
            return 0;
        }
        let n = ffi::PyLong_AsLongLong(v);
        ffi::Py_DECREF(v);
        if n == -1 {
            ffi::PyErr_Clear();
        }
        n
    }
}

/// A FileIO method, recorded on a tracked file. Inlined into the proxy: reads and writes
/// (see [`plain`], [`tracked_read_into`]) call the original from the proxy's frame.
///
/// # Safety
/// Called through a method proxy with the GIL held.
#[inline(always)]
pub unsafe fn method(hook: &'static Hook, op: FileOp, call: RawCall) -> *mut ffi::PyObject {
    // SAFETY: see the function's contract.
    unsafe {
        match op {
            FileOp::Plain => plain(hook, call),
            FileOp::Close => close(hook, call),
            FileOp::ReadInto => tracked_read_into(hook, call),
        }
    }
}

/// `readinto` of a file, `recv_into` and `recvfrom_into` of a socket: a boundary when the
/// object's descriptor (`fds::fd_field`) is tracked (see [`read_into`]).
///
/// # Safety
/// As for [`method`]; `call.slf()` is a FileIO or a socket.
#[inline(always)]
pub unsafe fn tracked_read_into(hook: &'static Hook, call: RawCall) -> *mut ffi::PyObject {
    // SAFETY: per the function's contract.
    unsafe {
        let fd = fd_field(call.slf());
        read_into(hook, call, 0, |s| s.fds.contains(fd))
    }
}

/// `read`, `write` and the other plain methods of a file, `send`, `recv` and the like of a
/// socket: a boundary when the object's descriptor (`fds::fd_field`) is tracked, looked up
/// in the same borrow of our state as the thread's gate. Inlined into the proxy, which then
/// calls the original from its own frame (see `dispatch::boundary_where`).
///
/// # Safety
/// As for [`method`]; `call.slf()` is a FileIO or a socket.
#[inline(always)]
pub unsafe fn plain(hook: &'static Hook, call: RawCall) -> *mut ffi::PyObject {
    // SAFETY: per the function's contract.
    unsafe {
        let fd = fd_field(call.slf());
        boundary_where(hook, |s| s.fds.contains(fd), || hook.digest(|| call.digest()), Original(call, hook.original()))
    }
}

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
        untrack(fd);
        match mode() {
            MODE_REPLAY if is_active() => {
                let digest = hook.digest(|| call.digest());
                crate::dispatch::replay_releasing(hook, digest, Some(fd), || crate::dispatch::discard(call.call_original(original)))
            }
            _ => {
                crate::dispatch::record_release_start(fd);
                boundary(hook, || hook.digest(|| call.digest()), || call.call_original(original))
            }
        }
    }
}

/// `readinto(buffer)`, `recv_into(buffer)`, `recvfrom_into(buffer)`, SSL `read(n, buffer)`:
/// records the bytes the call placed in the caller's buffer (argument `buffer_at`) along
/// with its result (a count, or a tuple starting with the count), and at replay puts the
/// same bytes in the buffer. A boundary when `applies` holds of our state (the descriptor
/// is tracked), looked up in the same borrow as the thread's gate.
///
/// Inlined into the proxy, which calls the original from its own frame (see
/// `dispatch::boundary_where`); recording and replaying are out of line.
///
/// # Safety
/// Called through a method proxy with the GIL held.
#[inline(always)]
pub unsafe fn read_into(
    hook: &'static Hook,
    call: RawCall,
    buffer_at: usize,
    applies: impl FnOnce(&State) -> bool,
) -> *mut ffi::PyObject {
    // SAFETY: per the function's contract.
    unsafe {
        let original = hook.original();
        let Some(&target) = call.positional().get(buffer_at) else {
            return call.call_original(original);
        };
        match mode() {
            MODE_RECORD => match active_caller_where(applies) {
                Some(caller) => {
                    let digest = hook.digest(|| read_into_digest(call, buffer_at));
                    let inside = crate::signals::InCall::enter(caller.thread);
                    let result = call.call_original(original);
                    drop(inside);
                    record_read_into(hook, caller, digest, target, result);
                    result
                }
                None => call.call_original(original),
            },
            MODE_REPLAY => match active_caller_where(applies) {
                Some(_) => replay_read_into(hook, hook.digest(|| read_into_digest(call, buffer_at)), target),
                None => call.call_original(original),
            },
            _ => call.call_original(original),
        }
    }
}

/// The digest of a [`read_into`] call's arguments: those of SSL `read(n, buffer)` (the
/// buffer second) computed in the proxy too.
///
/// # Safety
/// As for [`read_into`].
#[inline(always)]
unsafe fn read_into_digest(call: RawCall, buffer_at: usize) -> u32 {
    // SAFETY: per the function's contract.
    let size_first = if buffer_at == 1 { unsafe { call.size_and_buffer_digest() } } else { None };
    size_first.unwrap_or_else(|| call.digest())
}

/// Records a `read_into` call that returned `result`, with the bytes it placed in `target`.
///
/// # Safety
/// GIL held; `target` is the caller's buffer and `result` the call's (NULL: it raised).
#[inline(never)]
unsafe fn record_read_into(hook: &'static Hook, caller: Caller, digest: Option<u32>, target: *mut ffi::PyObject, result: *mut ffi::PyObject) {
    // SAFETY: reads of the call's result and of the caller's buffer, which no Python code
    // touches while we hold the GIL.
    unsafe {
        let count = if result.is_null() {
            None
        } else if ffi::PyLong_Check(result) != 0 {
            Some(ffi::PyLong_AsSsize_t(result))
        } else if ffi::PyTuple_Check(result) != 0 && ffi::PyTuple_GET_SIZE(result) > 0 {
            Some(ffi::PyLong_AsSsize_t(ffi::PyTuple_GET_ITEM(result, 0)))
        } else {
            None // None from a non-blocking read: nothing was read
        };
        if let Some(n) = count.filter(|&n| n >= 0 && crate::codec::is_encodable(result, 0)) {
            let recorded = crate::buffers::with_memory(target, false, |start, len| {
                let data = std::slice::from_raw_parts(start, (n as usize).min(len));
                record_with_on(hook, Some(caller), |rec| {
                    rec.enc.call(hook.id, digest);
                    rec.enc.tuple(2);
                    rec.enc.bytes(data);
                    crate::codec::encode_object(&mut rec.enc, result, None);
                });
            });
            if recorded.is_some() {
                return;
            }
            ffi::PyErr_Clear(); // the call succeeded; only our look at its buffer failed
        }
        record_outcome_on(hook, Some(caller), digest, result);
    }
}

/// Replays a `read_into` call: puts the recorded bytes in `target` and returns the recorded
/// result.
///
/// # Safety
/// GIL held; `target` is the caller's buffer.
#[inline(never)]
unsafe fn replay_read_into(hook: &'static Hook, digest: Option<u32>, target: *mut ffi::PyObject) -> *mut ffi::PyObject {
    // SAFETY: writes the recorded bytes into the caller's writable buffer, within its length.
    unsafe {
        match replay_take(hook, digest) {
            Replayed::Value(Value::Tuple(parts)) if parts.len() == 2 => {
                let (Value::Bytes(data), result) = (&parts[0], &parts[1]) else {
                    return crate::codec::decode_value(&parts[1]);
                };
                let filled = crate::buffers::with_memory(target, true, |start, len| {
                    std::ptr::copy_nonoverlapping(data.as_ptr(), start, data.len().min(len));
                });
                if filled.is_none() {
                    return std::ptr::null_mut();
                }
                crate::codec::decode_value(result)
            }
            Replayed::Value(v) => crate::codec::decode_value(&v),
            Replayed::Raise(e) => {
                raise_recorded(&e);
                std::ptr::null_mut()
            }
        }
    }
}

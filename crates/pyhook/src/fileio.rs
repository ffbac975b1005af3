//! Data files: `_io.FileIO`, under every `open()`.
//!
//! A FileIO opened by path while the program runs is *tracked*: its opening and every
//! method that touches the file descriptor are boundary calls. At replay the file is not
//! opened; the FileIO is initialised on `/dev/null` instead (so it has a real, harmless fd,
//! and `closed`, `readable()` and friends behave), then given the recorded name and block
//! size, and its reads return the recorded bytes. Writes are not performed again.
//!
//! Imports are code, not data: a FileIO opened directly by the import system (its top
//! Python frame is `<frozen importlib...>` or `<frozen zipimport>`) is never tracked, so
//! reading sources and writing `__pycache__` happen live, at record and replay alike.
//! FileIO objects created before the session (stdin, stdout, stderr) and FileIO on a raw
//! fd are not tracked either: output to the terminal really happens at replay.

use crate::calls::{InitCall, RawCall};
use crate::dispatch::{boundary, is_active, record_outcome, record_with, replay_take};
use crate::exceptions::raise_recorded;
use crate::hooks::Hook;
use crate::session::{mode, py, Replayed, MODE_RECORD, MODE_REPLAY, STATE};
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

/// Addresses of tracked FileIO objects. An address leaves the set when its object is
/// closed, and is reset on every `__init__`, so a reused address is never mistaken.
fn set_tracked(obj: *mut ffi::PyObject, tracked: bool) {
    // SAFETY: only called from hooks, with the GIL held.
    let py = unsafe { py() };
    STATE.with(py, |s| {
        if tracked {
            s.files.insert(obj as usize);
        } else {
            s.files.remove(&(obj as usize));
        }
    });
}

fn is_tracked(obj: *mut ffi::PyObject) -> bool {
    // SAFETY: only called from hooks, with the GIL held.
    let py = unsafe { py() };
    STATE.with(py, |s| s.files.contains(&(obj as usize))).unwrap_or(false)
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
        let opened_by_path = file.is_some_and(|f| ffi::PyLong_Check(f) == 0);
        let ours = opened_by_path
            && matches!(mode(), MODE_RECORD | MODE_REPLAY)
            && is_active()
            && !called_by_import_system();
        if !ours {
            set_tracked(call.slf, false);
            return call.call_original(original);
        }
        let digest = Some(open_digest(&call));
        if mode() == MODE_RECORD {
            let status = call.call_original(original);
            if status < 0 {
                record_outcome(hook, digest, std::ptr::null_mut());
            } else {
                let blksize = int_attr(call.slf, c"_blksize");
                record_with(hook, |rec| {
                    rec.enc.call(hook.id, digest);
                    rec.enc.int(blksize);
                });
                set_tracked(call.slf, true);
            }
            return status;
        }
        match replay_take(hook, digest) {
            Replayed::Raise(e) => {
                raise_recorded(&e);
                -1
            }
            Replayed::Value(value) => {
                let blksize = if let Value::Int(b) = value { b } else { 0 };
                let mode = args.get(1).copied().or_else(|| keyword(call.kwargs, c"mode"));
                let status = open_stand_in(original, call.slf, stand_in_mode(mode));
                if status < 0 {
                    return status;
                }
                // The program sees the name it opened and the block size it had, which
                // decides the buffer size and so the sizes of later reads.
                if let Some(name) = file {
                    ffi::PyObject_SetAttrString(call.slf, c"name".as_ptr(), name);
                }
                let b = ffi::PyLong_FromLongLong(blksize);
                if !b.is_null() {
                    ffi::PyObject_SetAttrString(call.slf, c"_blksize".as_ptr(), b);
                    ffi::Py_DECREF(b);
                }
                ffi::PyErr_Clear();
                set_tracked(call.slf, true);
                0
            }
        }
    }
}

/// # Safety
/// GIL held; `kwargs` a dict or NULL.
unsafe fn keyword(kwargs: *mut ffi::PyObject, name: &std::ffi::CStr) -> Option<*mut ffi::PyObject> {
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

/// The `/dev/null` mode that allows what the program's mode allows.
///
/// # Safety
/// GIL held; `mode` a live object or None.
unsafe fn stand_in_mode(mode: Option<*mut ffi::PyObject>) -> &'static std::ffi::CStr {
    // SAFETY: reads the mode string.
    let text = mode.and_then(|m| unsafe { crate::codec::utf8_of(m) }).unwrap_or(b"r");
    if text.contains(&b'+') {
        c"r+"
    } else if text.contains(&b'a') {
        c"a"
    } else if text.contains(&b'w') || text.contains(&b'x') {
        c"w"
    } else {
        c"r"
    }
}

/// # Safety
/// GIL held; `original` is FileIO's tp_init.
unsafe fn open_stand_in(original: *mut std::os::raw::c_void, slf: *mut ffi::PyObject, mode: &std::ffi::CStr) -> c_int {
    // SAFETY: calls FileIO.__init__ with ("/dev/null", mode).
    unsafe {
        let path = ffi::PyUnicode_FromString(c"/dev/null".as_ptr());
        let mode = ffi::PyUnicode_FromString(mode.as_ptr());
        let args = if path.is_null() || mode.is_null() { std::ptr::null_mut() } else { ffi::PyTuple_Pack(2, path, mode) };
        ffi::Py_XDECREF(path);
        ffi::Py_XDECREF(mode);
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

/// A FileIO method on a tracked file.
///
/// # Safety
/// Called through a method proxy with the GIL held.
pub unsafe fn method(hook: &'static Hook, op: FileOp, call: RawCall) -> *mut ffi::PyObject {
    // SAFETY: see the function's contract.
    unsafe {
        let original = hook.original();
        if !is_tracked(call.slf()) {
            return call.call_original(original);
        }
        match op {
            FileOp::Plain => boundary(hook, || hook.digest(|| call.digest()), || call.call_original(original)),
            FileOp::Close => close(hook, call),
            FileOp::ReadInto => read_into(hook, call),
        }
    }
}

/// # Safety
/// As for [`method`].
unsafe fn close(hook: &'static Hook, call: RawCall) -> *mut ffi::PyObject {
    // SAFETY: see the function's contract.
    unsafe {
        let original = hook.original();
        set_tracked(call.slf(), false);
        match mode() {
            MODE_REPLAY if is_active() => {
                let replayed = replay_take(hook, hook.digest(|| call.digest()));
                // Close the stand-in descriptor whatever was recorded.
                let r = call.call_original(original);
                ffi::Py_XDECREF(r);
                ffi::PyErr_Clear();
                match replayed {
                    Replayed::Value(v) => crate::codec::decode_value(&v),
                    Replayed::Raise(e) => {
                        raise_recorded(&e);
                        std::ptr::null_mut()
                    }
                }
            }
            _ => boundary(hook, || hook.digest(|| call.digest()), || call.call_original(original)),
        }
    }
}

/// `readinto(buffer)`: records the bytes the call placed in the buffer.
///
/// # Safety
/// As for [`method`].
unsafe fn read_into(hook: &'static Hook, call: RawCall) -> *mut ffi::PyObject {
    // SAFETY: buffer protocol on the caller's writable buffer, released on every path.
    unsafe {
        let original = hook.original();
        let Some(&target) = call.positional().first() else {
            return call.call_original(original);
        };
        let digest = hook.digest(|| call.digest());
        match mode() {
            MODE_RECORD if is_active() => {
                let result = call.call_original(original);
                if result.is_null() {
                    record_outcome(hook, digest, result);
                    return result;
                }
                let n = ffi::PyLong_AsSsize_t(result);
                let mut view: ffi::Py_buffer = std::mem::zeroed();
                if n < 0 || ffi::PyObject_GetBuffer(target, &mut view, ffi::PyBUF_SIMPLE) < 0 {
                    ffi::PyErr_Clear();
                    record_outcome(hook, digest, result);
                    return result;
                }
                let len = (n as usize).min(view.len as usize);
                let data = std::slice::from_raw_parts(view.buf as *const u8, len);
                record_with(hook, |rec| {
                    rec.enc.call(hook.id, digest);
                    rec.enc.bytes(data);
                });
                ffi::PyBuffer_Release(&mut view);
                result
            }
            MODE_REPLAY if is_active() => match replay_take(hook, digest) {
                Replayed::Value(Value::Bytes(data)) => {
                    let mut view: ffi::Py_buffer = std::mem::zeroed();
                    if ffi::PyObject_GetBuffer(target, &mut view, ffi::PyBUF_WRITABLE) < 0 {
                        return std::ptr::null_mut();
                    }
                    let len = data.len().min(view.len as usize);
                    std::ptr::copy_nonoverlapping(data.as_ptr(), view.buf as *mut u8, len);
                    ffi::PyBuffer_Release(&mut view);
                    ffi::PyLong_FromSsize_t(len as ffi::Py_ssize_t)
                }
                Replayed::Value(v) => crate::codec::decode_value(&v),
                Replayed::Raise(e) => {
                    raise_recorded(&e);
                    std::ptr::null_mut()
                }
            },
            _ => call.call_original(original),
        }
    }
}

//! `os`-level descriptor calls (`os.open`, `os.read`, `os.close`, `os.dup2`, `os.pipe`...)
//! and readiness (`select.select`). See `fds.rs` for what tracking means.

use crate::calls::RawCall;
use crate::codec::decode_value;
use crate::dispatch::{boundary, boundary_where, diverge, is_active, record_outcome, record_with, replay_take, Original};
use crate::exceptions::raise_recorded;
use crate::fds::{is_tracked, kind_of, materialize, track, untrack, FdKind};
use crate::fileio::called_by_import_system;
use crate::hooks::Hook;
use crate::session::{mode, Divergence, Replayed, MODE_RECORD, MODE_REPLAY};
use pyo3::ffi;
use retrace_recorder::Value;
use std::os::raw::c_int;

/// What an `os` descriptor hook does.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum FdOp {
    /// A call on the descriptor in its first argument (`read`, `write`, `lseek`, `fstat`...):
    /// a boundary when that descriptor is tracked, live otherwise.
    Use,
    /// A call taking a path or a descriptor (`stat`, `listdir`, `access`...): a boundary
    /// for a path (unless the import system makes it) or a tracked descriptor.
    PathOrFd,
    /// `os.open`: yields a new tracked file descriptor.
    Open,
    /// `os.dup`: a copy of a tracked descriptor is tracked too.
    Dup,
    /// `os.dup2(fd, fd2)`: performed for real (on stand-ins at replay); `fd2` takes over
    /// `fd`'s tracking.
    Dup2,
    /// `os.close`.
    Close,
    /// `os.pipe`, `os.pipe2`: two new tracked descriptors.
    Pipe,
    /// `select.select`: which of the given objects were ready, by position.
    Select,
}

/// Inlined into the proxy: calls on a descriptor (see [`use_fd`]) call the original from
/// the proxy's frame; the others are out of line.
///
/// # Safety
/// Called from a proxy with the GIL held.
#[inline(always)]
pub unsafe fn dispatch(hook: &'static Hook, op: FdOp, call: RawCall) -> *mut ffi::PyObject {
    // SAFETY: see the function's contract.
    unsafe {
        match op {
            FdOp::Use => use_fd(hook, call),
            _ => dispatch_rest(hook, op, call),
        }
    }
}

/// [`dispatch`] for everything but [`FdOp::Use`].
///
/// # Safety
/// As for [`dispatch`].
#[inline(never)]
unsafe fn dispatch_rest(hook: &'static Hook, op: FdOp, call: RawCall) -> *mut ffi::PyObject {
    // SAFETY: see the function's contract.
    unsafe {
        let original = hook.original();
        let live = || call.call_original(original);
        let digest = || hook.digest(|| call.digest());
        let active = matches!(mode(), MODE_RECORD | MODE_REPLAY) && is_active();
        if !active {
            return live();
        }
        let first_fd = call.positional().first().and_then(|&a| int_arg(a));
        match op {
            FdOp::Use => unreachable!("routed by dispatch"),
            FdOp::PathOrFd => match first_fd {
                Some(fd) if is_tracked(fd) => boundary(hook, digest, live),
                Some(_) => live(),
                None if called_by_import_system() => crate::imports::path_call(hook, call, live),
                None => boundary(hook, digest, live),
            },
            FdOp::Open if called_by_import_system() => live(),
            FdOp::Open => new_descriptors(hook, digest(), live, |_| FdKind::File),
            FdOp::Dup => match first_fd.and_then(kind_of) {
                Some(kind) => new_descriptors(hook, digest(), live, |_| kind),
                None => live(),
            },
            FdOp::Dup2 => {
                let result = live();
                if !result.is_null() {
                    let target = call.positional().get(1).and_then(|&a| int_arg(a));
                    if let Some(target) = target {
                        match first_fd.and_then(kind_of) {
                            Some(kind) => track(target, kind),
                            None => untrack(target),
                        }
                    }
                }
                result
            }
            FdOp::Close => match first_fd {
                Some(fd) if is_tracked(fd) => close(hook, digest(), fd, live),
                _ => live(),
            },
            FdOp::Pipe => new_descriptors(hook, digest(), live, |index| FdKind::Pipe { write: index == 1 }),
            // The timeout is left out of the digest: an event loop computes it from what is
            // ready, which another thread may change just before (a race between boundary
            // calls that does not change what the call returns at replay).
            FdOp::Select => select(hook, call, hook.digest(|| digest_of_first(&call, 3)), live),
        }
    }
}

/// `os.read`, `os.write` and the other calls on a descriptor given first: a boundary when
/// the descriptor is tracked, looked up in the same borrow of our state as the thread's
/// gate. Inlined into the proxy, which then calls the original from its own frame (see
/// `dispatch::boundary_where`).
///
/// # Safety
/// As for [`dispatch`].
#[inline(always)]
unsafe fn use_fd(hook: &'static Hook, call: RawCall) -> *mut ffi::PyObject {
    // SAFETY: per the function's contract.
    unsafe {
        let original = hook.original();
        match call.positional().first().and_then(|&a| int_arg(a)) {
            Some(fd) => boundary_where(hook, |s| s.fds.contains(fd), || hook.digest(|| call.digest()), Original(call, original)),
            None => call.call_original(original),
        }
    }
}

/// A digest of the first `n` positional arguments only.
///
/// # Safety
/// GIL held; `call` live.
pub unsafe fn digest_of_first(call: &RawCall, n: usize) -> u32 {
    let mut hasher = xxhash_rust::xxh3::Xxh3Default::new();
    // SAFETY: per the caller's guarantee.
    unsafe {
        for &arg in call.positional().iter().take(n) {
            crate::codec::digest_object(&mut hasher, arg, 0);
        }
    }
    hasher.digest() as u32
}

/// The value of an exact int argument, as a descriptor.
///
/// # Safety
/// GIL held, `obj` live.
unsafe fn int_arg(obj: *mut ffi::PyObject) -> Option<c_int> {
    // SAFETY: reads an exact int without running code.
    unsafe {
        if ffi::PyLong_CheckExact(obj) == 0 {
            return None;
        }
        let v = ffi::PyLong_AsLong(obj);
        if v == -1 && !ffi::PyErr_Occurred().is_null() {
            ffi::PyErr_Clear();
            return None;
        }
        c_int::try_from(v).ok()
    }
}

/// A call whose result is a descriptor, or a tuple of them (`pipe`): recorded and tracked;
/// at replay each one is materialised at its recorded number.
///
/// # Safety
/// GIL held.
unsafe fn new_descriptors(
    hook: &'static Hook,
    digest: Option<u32>,
    live: impl FnOnce() -> *mut ffi::PyObject,
    kind: impl Fn(usize) -> FdKind,
) -> *mut ffi::PyObject {
    // SAFETY: see the function's contract.
    unsafe {
        if mode() == MODE_RECORD {
            let result = crate::signals::in_call(live);
            if !result.is_null() {
                for (i, fd) in descriptors_in(result).into_iter().enumerate() {
                    track(fd, kind(i));
                }
            }
            record_outcome(hook, digest, result);
            return result;
        }
        match replay_take(hook, digest) {
            Replayed::Raise(e) => {
                raise_recorded(&e);
                std::ptr::null_mut()
            }
            Replayed::Value(value) => {
                let fds: Vec<c_int> = match &value {
                    Value::Int(fd) => vec![*fd as c_int],
                    Value::Tuple(items) => items.iter().filter_map(|v| if let Value::Int(fd) = v { Some(*fd as c_int) } else { None }).collect(),
                    _ => Vec::new(),
                };
                for (i, fd) in fds.into_iter().enumerate() {
                    if let Err(why) = materialize(fd, kind(i)) {
                        stand_in_failed(hook, &why);
                    }
                }
                decode_value(&value)
            }
        }
    }
}

/// # Safety
/// GIL held; `result` live.
unsafe fn descriptors_in(result: *mut ffi::PyObject) -> Vec<c_int> {
    // SAFETY: reads ints or a tuple of ints.
    unsafe {
        if let Some(fd) = int_arg(result) {
            return vec![fd];
        }
        if ffi::PyTuple_Check(result) != 0 {
            return crate::calls::tuple_items(result).iter().filter_map(|&o| int_arg(o)).collect();
        }
        Vec::new()
    }
}

/// # Safety
/// GIL held.
unsafe fn close(hook: &'static Hook, digest: Option<u32>, fd: c_int, live: impl FnOnce() -> *mut ffi::PyObject) -> *mut ffi::PyObject {
    // SAFETY: see the function's contract.
    unsafe {
        untrack(fd);
        if mode() == MODE_RECORD {
            crate::dispatch::record_release_start(fd);
            let result = live();
            record_outcome(hook, digest, result);
            return result;
        }
        crate::dispatch::replay_releasing(hook, digest, Some(fd), || libc::close(fd))
    }
}

/// `select.select(rlist, wlist, xlist[, timeout])`: the result is recorded as the
/// positions of the ready objects in the lists passed in, and rebuilt from the same lists
/// at replay (the objects themselves, sockets or files, have no stable identity).
///
/// # Safety
/// GIL held.
unsafe fn select(hook: &'static Hook, call: RawCall, digest: Option<u32>, live: impl FnOnce() -> *mut ffi::PyObject) -> *mut ffi::PyObject {
    // SAFETY: sequence access with new references released.
    unsafe {
        let inputs: Vec<*mut ffi::PyObject> = call.positional().iter().take(3).copied().collect();
        if inputs.len() < 3 {
            return live();
        }
        if mode() == MODE_RECORD {
            let result = crate::signals::in_call(live);
            if result.is_null() || ffi::PyTuple_Check(result) == 0 || ffi::PyTuple_GET_SIZE(result) != 3 {
                record_outcome(hook, digest, result);
                return result;
            }
            let mut positions: Vec<Vec<i64>> = Vec::with_capacity(3);
            for (i, &input) in inputs.iter().enumerate() {
                let ready = ffi::PyTuple_GET_ITEM(result, i as ffi::Py_ssize_t);
                positions.push(positions_in(input, ready));
            }
            record_with(hook, |rec| {
                rec.enc.call(hook.id, digest);
                rec.enc.tuple(3);
                for list in &positions {
                    rec.enc.list(list.len());
                    for &p in list {
                        rec.enc.int(p);
                    }
                }
            });
            return result;
        }
        match replay_take(hook, digest) {
            Replayed::Raise(e) => {
                raise_recorded(&e);
                std::ptr::null_mut()
            }
            Replayed::Value(Value::Tuple(lists)) if lists.len() == 3 => {
                let out = ffi::PyTuple_New(3);
                for (i, (list, &input)) in lists.iter().zip(&inputs).enumerate() {
                    let picked = pick(input, list);
                    if picked.is_null() {
                        ffi::Py_DECREF(out);
                        return picked;
                    }
                    ffi::PyTuple_SET_ITEM(out, i as ffi::Py_ssize_t, picked);
                }
                out
            }
            Replayed::Value(_) => crate::handlers::bad_value(hook),
        }
    }
}

/// Positions in `input` (a sequence) of the objects in `ready` (a list), by identity.
///
/// # Safety
/// GIL held.
unsafe fn positions_in(input: *mut ffi::PyObject, ready: *mut ffi::PyObject) -> Vec<i64> {
    // SAFETY: PySequence_Fast gives a list or tuple whose items we only compare.
    unsafe {
        let seq = ffi::PySequence_Fast(input, c"select() arguments must be sequences".as_ptr());
        if seq.is_null() {
            ffi::PyErr_Clear();
            return Vec::new();
        }
        let n = ffi::PySequence_Fast_GET_SIZE(seq);
        let mut out = Vec::new();
        for j in 0..ffi::PyList_Size(ready).max(0) {
            let item = ffi::PyList_GetItem(ready, j);
            if let Some(p) = (0..n).find(|&k| ffi::PySequence_Fast_GET_ITEM(seq, k) == item) {
                out.push(p as i64);
            }
        }
        ffi::Py_DECREF(seq);
        out
    }
}

/// A new list of the objects of `input` at the recorded positions.
///
/// # Safety
/// GIL held.
unsafe fn pick(input: *mut ffi::PyObject, positions: &Value) -> *mut ffi::PyObject {
    // SAFETY: PySequence_Fast and list building with reference counting.
    unsafe {
        let seq = ffi::PySequence_Fast(input, c"select() arguments must be sequences".as_ptr());
        if seq.is_null() {
            return seq;
        }
        let n = ffi::PySequence_Fast_GET_SIZE(seq);
        let out = ffi::PyList_New(0);
        if let Value::List(items) = positions {
            for item in items {
                if let Value::Int(p) = item {
                    if (0..n as i64).contains(p) {
                        ffi::PyList_Append(out, ffi::PySequence_Fast_GET_ITEM(seq, *p as ffi::Py_ssize_t));
                    }
                }
            }
        }
        ffi::Py_DECREF(seq);
        out
    }
}

pub fn stand_in_failed(hook: &'static Hook, why: &str) -> ! {
    diverge(
        Divergence {
            index: None,
            thread: 0,
            expected: format!("a stand-in descriptor for {}", hook.name),
            actual: why.to_owned(),
            hint: "the replay's descriptors differ from the recording's; please report this",
            bad_recording: false,
            thread_name: None,
        },
        true,
    )
}

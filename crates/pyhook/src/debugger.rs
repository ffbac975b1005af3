//! A debugger inside a replay (debugpy, VS Code's Python debugger): its calls are not the
//! program's.
//!
//! `python -m retrace --recording DIR` started by debugpy replays in the debugger's own
//! process (`python/retrace/_debugger.py`), so the debugger's threads, its socket to VS
//! Code, its clock reads and locks, and the expressions it evaluates for the Debug Console
//! all run next to the program, through our hooks. None of them may take a recorded event.
//!
//! A call is the debugger's when a frame of the debugger's code (files under the prefixes
//! given to [`debugger_attached`]) is on the calling thread's stack, inside our own runner's
//! frame (frames outside it are the debugger's launcher, which runs the program), or when the
//! thread was started by the debugger. Its threads, its trace function, a breakpoint's
//! suspension and everything evaluated while the program is stopped (an expression, a
//! `__repr__` of a variable shown) have such a frame; the program's code never does, except
//! for pydevd's thread-start wrappers ([`STARTERS`]), which only hand the program's threads
//! on. Such a call behaves as
//! with the pass-through gate open: it is neither replayed nor counted.
//!
//! Only a replay with a debugger attached walks stacks; recording never does.

use crate::session::{mode, MODE_REPLAY};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use std::cell::Cell;
use std::os::raw::c_int;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

static ATTACHED: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// Set in a thread the debugger started during the replay (see [`start_thread`]).
    static DEBUGGER_THREAD: Cell<bool> = const { Cell::new(false) };
}

/// Directories of the debugger's code, each ending with `/`.
static PREFIXES: OnceLock<Vec<Vec<u8>>> = OnceLock::new();

/// pydevd's wrappers around the program's thread starts (`pydev_monkey.py`): the starter,
/// which calls `_thread.start_new_thread` for the program, and the `__call__` that runs in the
/// new thread, which calls the thread's function (`threading`'s `Thread._bootstrap`, or the
/// function given to `_thread`). Neither makes a call the debugger's by being on the stack;
/// what `__call__` does for the debugger goes through pydevd frames or `threading` helpers
/// (`current_thread()`), which it calls itself: those calls are the debugger's.
const STARTERS: &[&[u8]] = &[b"pydev_start_new_thread", b"pydev_start_joinable_thread"];
const TRANSPARENT_FILE: &[u8] = b"/pydev_monkey.py";

/// Tells the replay that a debugger runs in this process, its code under `prefixes`.
#[pyfunction]
pub fn debugger_attached(prefixes: Vec<String>) -> PyResult<()> {
    let prefixes: Vec<Vec<u8>> = prefixes
        .into_iter()
        .filter(|p| p.starts_with('/'))
        .map(|p| format!("{}/", p.trim_end_matches('/')).into_bytes())
        .collect();
    if prefixes.is_empty() {
        return Err(PyValueError::new_err("no debugger directory given"));
    }
    PREFIXES.set(prefixes).map_err(|_| PyValueError::new_err("the debugger is already known"))?;
    ATTACHED.store(true, Ordering::Relaxed);
    Ok(())
}

/// What a frame says about the call being made.
enum FrameKind {
    Debugger,
    Ours,
    Other,
}

/// The frame a frame called (the next one inward), as far as [`classify`] cares.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Callee {
    /// None: the hooked call is made from the frame itself.
    Hook,
    /// A `threading` function other than `Thread._bootstrap` (a new thread's start).
    ThreadingHelper,
    Other,
}

fn callee_of(file: &[u8], name: &[u8]) -> Callee {
    if file.ends_with(b"/threading.py") && name != b"_bootstrap" {
        Callee::ThreadingHelper
    } else {
        Callee::Other
    }
}

fn classify(file: &[u8], name: &[u8], callee: Callee) -> FrameKind {
    let own = crate::dispatch::OWN_SOURCE_PREFIX.get().map(|p| p.as_bytes());
    if own.is_some_and(|p| !p.is_empty() && file.starts_with(p)) {
        return FrameKind::Ours;
    }
    if !PREFIXES.get().is_some_and(|ps| ps.iter().any(|p| file.starts_with(p))) {
        return FrameKind::Other;
    }
    if file.ends_with(TRANSPARENT_FILE) && (STARTERS.contains(&name) || (name == b"__call__" && callee == Callee::Other)) {
        return FrameKind::Other;
    }
    FrameKind::Debugger
}

/// True when the call being made on this thread is the debugger's (see the module docs):
/// it must pass through. Always false when recording or with no debugger attached.
///
/// # Safety
/// The GIL must be held.
// PyErr_Fetch/PyErr_Restore are deprecated from 3.12 on, but they are the pair every
// version we build for has (PyErr_GetRaisedException is 3.12+).
#[inline(always)]
pub unsafe fn foreign_call() -> bool {
    if !ATTACHED.load(Ordering::Relaxed) || mode() != MODE_REPLAY {
        return false;
    }
    // SAFETY: per the function's contract.
    unsafe { foreign_call_under_debugger() }
}

/// [`foreign_call`] while a debugger is attached to a replay: out of line, so that every
/// other call pays one load and no call.
///
/// # Safety
/// As for [`foreign_call`].
#[inline(never)]
#[allow(deprecated)]
unsafe fn foreign_call_under_debugger() -> bool {
    if DEBUGGER_THREAD.with(Cell::get) {
        return true;
    }
    // SAFETY: the current thread's frames, walked with new references released as we go;
    // an exception pending (a hook returning NULL) is set aside meanwhile.
    unsafe {
        let mut frame = ffi::PyEval_GetFrame();
        if frame.is_null() {
            return false;
        }
        let (mut kind, mut value, mut traceback) = (std::ptr::null_mut(), std::ptr::null_mut(), std::ptr::null_mut());
        ffi::PyErr_Fetch(&mut kind, &mut value, &mut traceback);
        ffi::Py_INCREF(frame.cast());
        let mut foreign = false;
        let mut callee = Callee::Hook;
        while !frame.is_null() {
            let code = ffi::PyFrame_GetCode(frame);
            let (file, name) = crate::internals::code_names(code);
            let frame_kind = classify(file, name, callee);
            callee = callee_of(file, name);
            ffi::Py_DECREF(code.cast());
            match frame_kind {
                FrameKind::Debugger => foreign = true,
                FrameKind::Ours => {}
                FrameKind::Other => {
                    let back = ffi::PyFrame_GetBack(frame);
                    ffi::Py_DECREF(frame.cast());
                    frame = back;
                    continue;
                }
            }
            break;
        }
        ffi::Py_XDECREF(frame.cast());
        ffi::PyErr_Restore(kind, value, traceback);
        foreign
    }
}

/// Moves the descriptor of a socket or `FileIO` object (the debugger's connection to VS
/// Code, opened before the replay started) to the lowest free number at or above `floor`,
/// so that the numbers the recorded program used are free for its stand-ins. Returns the
/// new number.
#[pyfunction]
pub fn move_descriptor(obj: &Bound<'_, PyAny>, floor: c_int) -> PyResult<c_int> {
    let py = obj.py();
    let socket_type = py.import("_socket")?.getattr("socket")?;
    let fileio_type = py.import("_io")?.getattr("FileIO")?;
    if !obj.is_instance(&socket_type)? && !obj.is_instance(&fileio_type)? {
        return Err(PyTypeError::new_err("move_descriptor takes a socket or an io.FileIO"));
    }
    // SAFETY: `obj` is a live socket or FileIO (checked above), whose descriptor field
    // `fd_field` reads and which is written here with the GIL held; the descriptor system
    // calls only touch the descriptor the object owns and the copy made of it.
    unsafe {
        let field = obj.as_ptr().cast::<u8>().add(std::mem::size_of::<ffi::PyObject>()).cast::<c_int>();
        let fd = crate::fds::fd_field(obj.as_ptr());
        if fd < 0 {
            return Err(PyValueError::new_err("the object has no open descriptor"));
        }
        if fd >= floor {
            return Ok(fd);
        }
        let flags = libc::fcntl(fd, libc::F_GETFD);
        if flags < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        let command = if flags & libc::FD_CLOEXEC != 0 { libc::F_DUPFD_CLOEXEC } else { libc::F_DUPFD };
        let moved = libc::fcntl(fd, command, floor);
        if moved < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        field.write(moved);
        libc::close(fd);
        Ok(moved)
    }
}

/// The function of a thread the debugger starts, wrapped: a builtin function whose `self` is
/// the function; it marks the thread as the debugger's, then calls the function. A raw C
/// function, as `threads.rs`'s entry is, for the same reasons (CPython's `pthread_exit` of
/// daemon threads unwinds through it).
unsafe extern "C-unwind" fn debugger_thread_entry(slf: *mut ffi::PyObject, args: *mut ffi::PyObject, kwargs: *mut ffi::PyObject) -> *mut ffi::PyObject {
    DEBUGGER_THREAD.with(|d| d.set(true));
    // SAFETY: CPython calls this with the GIL held, `slf` the function given to
    // `start_thread`, `args` a tuple and `kwargs` a dict or NULL.
    unsafe { ffi::PyObject_Call(slf, args, kwargs) }
}

static ENTRY_DEF: crate::threads::EntryDef = crate::threads::EntryDef::new(c"debugger_thread_entry", debugger_thread_entry);

/// `_thread.start_new_thread(function, ...)` called by the debugger (see [`foreign_call`]):
/// the new thread is the debugger's for its whole life, whatever code it runs (a thread's
/// stack does not show who started it). Not recorded, not replayed.
///
/// # Safety
/// Called from the thread-start hook with the GIL held; `original` is the hooked function.
pub unsafe fn start_thread(call: &crate::calls::RawCall, original: *mut std::ffi::c_void) -> *mut ffi::PyObject {
    // SAFETY: per the function's contract; the method definition is static and immutable.
    unsafe {
        let positional = call.positional();
        let Some(&function) = positional.first() else {
            return call.call_original(original);
        };
        let entry = ffi::PyCFunction_NewEx(ENTRY_DEF.get(), function, std::ptr::null_mut());
        crate::threads::start_with_entry(call, original, entry)
    }
}

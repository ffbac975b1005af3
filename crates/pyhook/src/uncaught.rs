//! The program's uncaught exception: recorded as an EXCEPTION event (type name, message,
//! formatted traceback), and checked at replay, where another exception, or one where the
//! recording went on, is a divergence naming both.
//!
//! The interpreter raises the audit event `sys.excepthook` when an uncaught exception ends
//! the program (`PyErr_Print`), whatever hook the program installed; a C audit hook sees it
//! without adding anything the program can see. A replay in a debugger's process, which
//! prints the exception itself, raises the same audit event (`_debugger.py`).

use crate::dispatch::{diverge, stop_recording};
use crate::session::{mode, Session, MODE_OFF, MODE_RECORD, STATE};
use crate::signals::MAIN_THREAD;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyTuple;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::atomic::Ordering;
use std::sync::OnceLock;

/// `_bootstrap._describe_uncaught(value, tb)`: (type name, message, traceback text).
static DESCRIBE: OnceLock<Py<PyAny>> = OnceLock::new();

extern "C" {
    // CPython's public API since 3.8; pyo3-ffi does not declare it.
    fn PySys_AddAuditHook(
        hook: Option<unsafe extern "C" fn(*const c_char, *mut ffi::PyObject, *mut c_void) -> c_int>,
        user_data: *mut c_void,
    ) -> c_int;
}

/// Installs the audit hook; `describe` formats an exception without boundary calls of the
/// program's (see `_bootstrap.py`).
#[pyfunction]
pub fn watch_uncaught(py: Python<'_>, describe: Py<PyAny>) -> PyResult<()> {
    if DESCRIBE.set(describe).is_ok() {
        // SAFETY: registering a plain C function that checks its arguments; the GIL is held.
        if unsafe { PySys_AddAuditHook(Some(audit), std::ptr::null_mut()) } != 0 {
            return Err(PyErr::fetch(py));
        }
    }
    Ok(())
}

unsafe extern "C" fn audit(event: *const c_char, args: *mut ffi::PyObject, _data: *mut c_void) -> c_int {
    // SAFETY: CPython passes a NUL-terminated event name.
    if mode() == MODE_OFF || unsafe { CStr::from_ptr(event) } != c"sys.excepthook" {
        return 0;
    }
    // SAFETY: audit hooks run with the GIL held; the uncaught exception ending the program is
    // raised in the main thread.
    if unsafe { ffi::PyThreadState_Get() } != MAIN_THREAD.load(Ordering::Relaxed) || args.is_null() {
        return 0;
    }
    // SAFETY: the GIL is held (see above).
    let py = unsafe { Python::assume_attached() };
    // SAFETY: `args` is the event's tuple, a live borrowed reference (checked non-NULL).
    let args = unsafe { Bound::from_borrowed_ptr(py, args) };
    if let Ok(args) = args.cast_into::<PyTuple>() {
        if let (Ok(value), Ok(tb)) = (args.get_item(2), args.get_item(3)) {
            uncaught(py, &value, &tb);
        }
    }
    0
}

fn uncaught(py: Python<'_>, value: &Bound<'_, PyAny>, tb: &Bound<'_, PyAny>) {
    let Some(describe) = DESCRIBE.get() else { return };
    let replaying = mode() != MODE_RECORD;
    STATE.with(py, |s| s.threads.enter_gate());
    let described = describe.bind(py).call1((value, tb, replaying)).and_then(|d| d.extract::<(String, String, String)>());
    STATE.with(py, |s| s.threads.exit_gate());
    let Ok((type_name, message, traceback)) = described else { return };
    let outcome = STATE.with(py, |s| {
        let thread = s.threads.current();
        match &mut s.session {
            Session::Recording(rec) => {
                if rec.enc.current_thread() != thread {
                    rec.enc.thread(thread);
                }
                rec.enc.exception(&type_name, &message, &traceback);
                rec.after_event().err().map(Err)
            }
            Session::Replaying(rep) => rep.take_exception(thread, &type_name, &message, &traceback).err().map(Ok),
            _ => None,
        }
    });
    match outcome.flatten() {
        Some(Err(reason)) => stop_recording(&reason),
        Some(Ok(divergence)) => diverge(divergence, true),
        None => {}
    }
}

/// The lines of a traceback that say where it went (`  File "...", line N, in name`),
/// which the replay's must repeat; source lines are left out (a replay may not have them).
pub fn frames(traceback: &str) -> Vec<&str> {
    traceback.lines().filter(|l| l.starts_with("  File ")).collect()
}

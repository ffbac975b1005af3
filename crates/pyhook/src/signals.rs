//! Signals: where a signal's Python-level handler ran, and its replay at the same point.
//!
//! CPython runs a Python handler in the main thread at a bytecode boundary, or inside a
//! blocking call the signal interrupted (`time.sleep`, `select`, `recv`...). While a
//! session runs, every Python handler is wrapped in a [`SignalHandler`] that first records
//! a SIGNAL event (with whether a boundary call was in progress), and the terminating
//! default action of SIGTERM, SIGHUP, SIGUSR1 and SIGUSR2 becomes a [`DefaultAction`] that
//! records the signal, closes the trace and then dies from the same signal. `getsignal` and
//! the value `signal()` returns still show the program's own handlers.
//!
//! At replay no signal comes from outside: when the replay reaches a SIGNAL event, the
//! handler is triggered at that point (inside the call it interrupted, or right after the
//! call it followed), and a DefaultAction kills the replay with the same signal.

use crate::calls::RawCall;
use crate::session::{mode, py, Session, MODE_RECORD, MODE_REPLAY, STATE};
use pyo3::ffi;
use pyo3::prelude::*;
use std::os::raw::c_int;
use std::sync::atomic::{AtomicPtr, AtomicU32, Ordering};

/// Signals whose default action (terminate) is recorded.
const RECORDED_DEFAULTS: [c_int; 4] = [libc::SIGTERM, libc::SIGHUP, libc::SIGUSR1, libc::SIGUSR2];

/// The main thread's state: CPython runs signal handlers on the main thread only, so only
/// its calls need counting (a pointer compare, cheaper than a thread-local in a loaded
/// extension).
pub static MAIN_THREAD: AtomicPtr<ffi::PyThreadState> = AtomicPtr::new(std::ptr::null_mut());

/// How many boundary calls each thread is inside (their originals are running), by thread
/// index; index 0 is the main thread, whose count a signal handler reads. Only the thread
/// itself writes its entry, with the GIL held, so no read-modify-write is needed: a locked
/// add was a measurable part of an intercepted call, and a thread-local two calls into the
/// dynamic loader per call on every thread but the main one.
static IN_CALL: [AtomicU32; COUNTED_THREADS] = [const { AtomicU32::new(0) }; COUNTED_THREADS];

/// Threads with an index below this are counted in [`IN_CALL`].
const COUNTED_THREADS: usize = 256;

thread_local! {
    /// [`IN_CALL`] for the calls of [`in_call`] on threads other than the main one, and
    /// for threads past [`COUNTED_THREADS`].
    static UNINDEXED_IN_CALL: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Runs a boundary call's original while counting it as in progress, so a signal handler
/// that runs inside it is recorded as such.
pub fn in_call<R>(original: impl FnOnce() -> R) -> R {
    // SAFETY: called from hooks, with the GIL held: the thread state is this thread's.
    let on_main = unsafe { ffi::PyThreadState_Get() } == MAIN_THREAD.load(Ordering::Relaxed);
    let _inside = if on_main { InCall::enter(0) } else { InCall::unindexed() };
    original()
}

/// A boundary call in progress on this thread, from [`InCall::enter`] until dropped. Where
/// the original is called right after (`dispatch::boundary_where`), this keeps it in the
/// caller's frame: a closure handed to [`in_call`] was not always inlined there.
pub struct InCall(Option<&'static AtomicU32>);

impl InCall {
    /// Enters a call on the calling thread, whose index is `thread` (0: the main thread).
    #[inline(always)]
    pub fn enter(thread: u32) -> InCall {
        match IN_CALL.get(thread as usize) {
            Some(depth) => {
                depth.store(depth.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
                InCall(Some(depth))
            }
            None => InCall::unindexed(),
        }
    }

    fn unindexed() -> InCall {
        UNINDEXED_IN_CALL.with(|d| d.set(d.get() + 1));
        InCall(None)
    }
}

impl Drop for InCall {
    #[inline(always)]
    fn drop(&mut self) {
        match self.0 {
            Some(depth) => depth.store(depth.load(Ordering::Relaxed).saturating_sub(1), Ordering::Relaxed),
            None => UNINDEXED_IN_CALL.with(|d| d.set(d.get().saturating_sub(1))),
        }
    }
}

/// True while the calling thread is inside a boundary call: what runs then (an import the
/// C function triggers, a signal handler) is part of that call, not a schedule point of
/// its own.
pub fn nested() -> bool {
    // SAFETY: called from hooks, with the GIL held: the thread state is this thread's.
    let on_main = unsafe { ffi::PyThreadState_Get() } == MAIN_THREAD.load(Ordering::Relaxed);
    if on_main {
        return IN_CALL[0].load(Ordering::Relaxed) > 0;
    }
    // A thread's own index is set on it when it first reaches a hook, before any call of
    // its is counted by index.
    let indexed = crate::session::THREAD_INDEX.with(|t| t.get());
    UNINDEXED_IN_CALL.with(|d| d.get() > 0)
        || IN_CALL.get(indexed as usize).is_some_and(|depth| depth.load(Ordering::Relaxed) > 0)
}

fn record_signal(py: Python<'_>, signum: c_int) {
    let during_call = IN_CALL[0].load(Ordering::Relaxed) > 0;
    let failure = STATE
        .with(py, |s| {
            let thread = s.threads.current();
            let Session::Recording(rec) = &mut s.session else {
                return None;
            };
            if rec.enc.current_thread() != thread {
                rec.enc.thread(thread);
            }
            rec.enc.signal(signum, during_call);
            rec.after_event().err()
        })
        .flatten();
    if let Some(reason) = failure {
        crate::dispatch::stop_recording(&reason);
    }
}

/// The program's Python handler, wrapped so that its runs are recorded.
#[pyclass(module = "retrace._pyhook", frozen)]
pub struct SignalHandler {
    inner: Py<PyAny>,
}

#[pymethods]
impl SignalHandler {
    fn __call__<'py>(&self, py: Python<'py>, signum: c_int, frame: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        if mode() == MODE_RECORD {
            record_signal(py, signum);
        }
        self.inner.bind(py).call1((signum, frame))
    }
}

/// The default action of a terminating signal: recorded, then carried out.
#[pyclass(module = "retrace._pyhook", frozen)]
pub struct DefaultAction;

#[pymethods]
impl DefaultAction {
    fn __call__(&self, py: Python<'_>, signum: c_int, _frame: &Bound<'_, PyAny>) {
        if mode() == MODE_RECORD {
            record_signal(py, signum);
            crate::finish_session();
        }
        // SAFETY: restoring the default disposition and raising the signal ends the process
        // the way the signal would have without us.
        unsafe {
            libc::signal(signum, libc::SIG_DFL);
            libc::raise(signum);
        }
    }
}

/// `_signal.signal(signalnum, handler)`: installs our wrapper in place of the program's
/// handler, and gives back the program's previous handler.
///
/// # Safety
/// Called from the proxy with the GIL held.
pub unsafe fn set(hook: &'static crate::hooks::Hook, call: RawCall) -> *mut ffi::PyObject {
    // SAFETY: see the function's contract; objects are handled through PyO3.
    unsafe {
        let original = hook.original();
        let args = call.positional();
        if !matches!(mode(), MODE_RECORD | MODE_REPLAY) || args.len() != 2 {
            return call.call_original(original);
        }
        let py = py();
        let signum = ffi::PyLong_AsLong(args[0]) as c_int;
        if signum == -1 && !ffi::PyErr_Occurred().is_null() {
            ffi::PyErr_Clear();
            return call.call_original(original);
        }
        let handler = Bound::from_borrowed_ptr(py, args[1]);
        let wrapped = match wrap(py, signum, &handler) {
            Ok(w) => w,
            Err(e) => {
                e.restore(py);
                return std::ptr::null_mut();
            }
        };
        let new_args = [args[0], wrapped.as_ptr()];
        let previous = match call {
            RawCall::Fast { slf, .. } => RawCall::Fast { slf, args: new_args.as_ptr(), nargs: 2 }.call_original(original),
            other => other.call_original(original),
        };
        drop(wrapped);
        if previous.is_null() {
            return previous;
        }
        unwrap(py, Bound::from_owned_ptr(py, previous)).into_ptr()
    }
}

/// `_signal.getsignal(signalnum)`: the program's handler, not our wrapper.
///
/// # Safety
/// Called from the proxy with the GIL held.
pub unsafe fn get(hook: &'static crate::hooks::Hook, call: RawCall) -> *mut ffi::PyObject {
    // SAFETY: see the function's contract.
    unsafe {
        let result = call.call_original(hook.original());
        if result.is_null() {
            return result;
        }
        let py = py();
        unwrap(py, Bound::from_owned_ptr(py, result)).into_ptr()
    }
}

fn wrap<'py>(py: Python<'py>, signum: c_int, handler: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    if handler.is_instance_of::<SignalHandler>() || handler.is_instance_of::<DefaultAction>() {
        return Ok(handler.clone());
    }
    let is_default = handler.extract::<i64>().ok() == Some(libc::SIG_DFL as i64);
    if is_default && RECORDED_DEFAULTS.contains(&signum) {
        return Ok(Bound::new(py, DefaultAction)?.into_any());
    }
    if handler.is_callable() {
        return Ok(Bound::new(py, SignalHandler { inner: handler.clone().unbind() })?.into_any());
    }
    Ok(handler.clone())
}

fn unwrap<'py>(py: Python<'py>, handler: Bound<'py, PyAny>) -> Bound<'py, PyAny> {
    if let Ok(wrapper) = handler.cast::<SignalHandler>() {
        return wrapper.get().inner.bind(py).clone();
    }
    if handler.is_instance_of::<DefaultAction>() {
        return (libc::SIG_DFL as i64).into_pyobject(py).map(Bound::into_any).unwrap_or(handler);
    }
    handler
}

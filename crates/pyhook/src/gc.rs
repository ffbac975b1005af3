//! The cyclic garbage collector: its collections happen at the same points at replay.
//!
//! CPython starts an automatic collection when enough container objects have been
//! allocated. What a collection runs (`__del__` methods, weakref callbacks, the finalizers
//! of generators and sockets) is the program's code, and it may reach boundaries: a
//! finalizer that reads the clock or closes a socket. At replay our own allocations differ
//! from the recording's, so a collection left to CPython would come at another moment,
//! maybe on another thread, and its finalizers would take other calls' events.
//!
//! So while recording, a `gc.callbacks` entry writes a COLLECT event on the thread that
//! collects, with the generation and `after`: the collector's young-generation threshold
//! minus its allocation count at the last *point*, the last time the program left one of
//! our hooks or a collection ended. The program's allocations from a point on are its own
//! and the same at replay, so at replay, at each point where the thread's next event is a
//! COLLECT, the real threshold is set to the count plus `after`: CPython then starts the
//! collection itself, at the same allocation as when recorded, and our callback takes the
//! event. Between recorded collections the threshold is raised a hundredfold. The
//! counters are read and set through the interpreter's internal state (`csrc/internals.c`,
//! compiled against the headers of the exact Python version), a load and a store per hook.
//!
//! Should the count not get there (other threads allocating in another interleaving), the
//! thread's next boundary call collects before it is made. The program's own `gc.collect()`
//! calls are not recorded (they run again by themselves), and `gc.get_threshold()` still
//! shows the program's threshold. The raised threshold is a safety valve rather than an off
//! switch: a thread that allocates for a long time without reaching a boundary still has
//! its garbage collected, a hundred times less often.

use crate::calls::RawCall;
use crate::hooks::Hook;
use crate::internals::{retrace_gc_schedule, retrace_gc_young_count, retrace_gc_young_threshold};
use crate::session::{mode, py, Session, MODE_OFF, MODE_RECORD, MODE_REPLAY, STATE};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple};
use std::cell::Cell;
use std::os::raw::c_int;
use std::sync::atomic::{AtomicI32, AtomicPtr, Ordering};

/// How much the automatic collection threshold is raised at replay between recorded
/// collections.
const REPLAY_THRESHOLD_FACTOR: c_int = 100;

/// The young generation's allocation count and threshold in the interpreter's state (NULL
/// until [`start`]).
static YOUNG_COUNT: AtomicPtr<c_int> = AtomicPtr::new(std::ptr::null_mut());
static YOUNG_THRESHOLD: AtomicPtr<c_int> = AtomicPtr::new(std::ptr::null_mut());

/// The allocation count at the last point (see the module docs).
static COUNT_AT_POINT: AtomicI32 = AtomicI32::new(0);

/// The young threshold as the program set it (shown by `gc.get_threshold()` at replay,
/// while the real one is raised or armed); `-1` when not known.
static PROGRAM_THRESHOLD: AtomicI32 = AtomicI32::new(-1);

thread_local! {
    /// True while this thread is inside the program's own `gc.collect()`: that collection
    /// is not recorded, since the replay makes the same call.
    static EXPLICIT: Cell<bool> = const { Cell::new(false) };
}

/// Reads one of the collector's counters. The GIL must be held.
fn read(counter: &AtomicPtr<c_int>) -> Option<c_int> {
    let p = counter.load(Ordering::Relaxed);
    // SAFETY: the pointer is into the main interpreter's state, which lives as long as the
    // process; CPython changes the counter only with the GIL held, which the caller holds.
    (!p.is_null()).then(|| unsafe { p.read() })
}

/// Sets the young threshold. The GIL must be held.
fn set_threshold_raw(value: c_int) {
    let p = YOUNG_THRESHOLD.load(Ordering::Relaxed);
    if !p.is_null() {
        // SAFETY: as in `read`; `gc.set_threshold` makes the same plain store.
        unsafe { p.write(value) };
    }
}

/// Starts watching collections (record) or takes over their timing (replay).
pub fn start(py: Python<'_>, record: bool) -> PyResult<()> {
    // SAFETY: the GIL is held (we have a token); the interpreter is the running one.
    unsafe {
        let interp = ffi::PyInterpreterState_Get();
        YOUNG_COUNT.store(retrace_gc_young_count(interp), Ordering::Relaxed);
        YOUNG_THRESHOLD.store(retrace_gc_young_threshold(interp), Ordering::Relaxed);
    }
    py.import("gc")?.getattr("callbacks")?.call_method1("append", (Bound::new(py, CollectionWatch)?,))?;
    if !record {
        adopt_program_threshold();
    }
    mark_point();
    Ok(())
}

/// At replay: takes the real threshold as the program's, and raises the real one.
fn adopt_program_threshold() {
    if let Some(threshold) = read(&YOUNG_THRESHOLD) {
        PROGRAM_THRESHOLD.store(threshold, Ordering::Relaxed);
        // Zero disables automatic collection; it stays zero.
        set_threshold_raw(threshold.saturating_mul(REPLAY_THRESHOLD_FACTOR));
    }
}

fn mark_point() {
    if let Some(count) = read(&YOUNG_COUNT) {
        COUNT_AT_POINT.store(count, Ordering::Relaxed);
    }
}

/// Called as every hook returns to the program: a point (see the module docs). At replay,
/// arms the threshold when the thread's next event is a recorded collection.
///
/// # Safety
/// The GIL must be held.
#[inline]
pub unsafe fn after_hook() {
    match mode() {
        MODE_OFF => {}
        MODE_RECORD => mark_point(),
        _ => arm(),
    }
}

fn arm() {
    // SAFETY: the GIL is held, per `after_hook`'s contract.
    let py = unsafe { py() };
    // SAFETY: as above.
    if unsafe { crate::debugger::foreign_call() } {
        return;
    }
    let pending = STATE
        .with(py, |s| {
            let thread = s.threads.current();
            match &mut s.session {
                Session::Replaying(rep) => rep.next_collection(thread),
                _ => None,
            }
        })
        .flatten();
    if let (Some(after), Some(count)) = (pending, read(&YOUNG_COUNT)) {
        // A threshold of zero would disable collection instead of starting it at once.
        set_threshold_raw(count.saturating_add(after).max(1));
        if after < 0 {
            // The count had passed the threshold before this point when recorded: the
            // collection was already scheduled (from 3.12 on, it runs at the next check of
            // the eval breaker, which may come before the next allocation).
            // SAFETY: the GIL is held; the thread state is this thread's.
            unsafe { retrace_gc_schedule(ffi::PyThreadState_Get()) };
        }
    }
}

/// A `gc.callbacks` entry: records the start of each automatic collection, or at replay
/// takes the recorded collection that this one is.
#[pyclass(module = "retrace._pyhook", frozen)]
pub struct CollectionWatch;

#[pymethods]
impl CollectionWatch {
    fn __call__(&self, py: Python<'_>, phase: &Bound<'_, PyString>, info: &Bound<'_, PyDict>) {
        let starting = match phase.to_str() {
            Ok("start") => true,
            Ok("stop") => false,
            _ => return,
        };
        if !starting {
            // The end of a collection is a point; at replay the next recorded collection
            // may follow before the program reaches a hook.
            // SAFETY: CPython calls gc callbacks with the GIL held.
            unsafe { after_hook() };
            return;
        }
        match mode() {
            MODE_RECORD if !EXPLICIT.with(Cell::get) => record_collection(py, info),
            // A collection the debugger's allocations set off is not the program's: the
            // recorded one comes at the program's next boundary call instead.
            // SAFETY: CPython calls gc callbacks with the GIL held.
            MODE_REPLAY if !EXPLICIT.with(Cell::get) && !unsafe { crate::debugger::foreign_call() } => {
                STATE.with(py, |s| {
                    let thread = s.threads.current();
                    if let Session::Replaying(rep) = &mut s.session {
                        rep.take_collection(thread);
                    }
                });
                disarm();
            }
            _ => {}
        }
    }
}

fn record_collection(py: Python<'_>, info: &Bound<'_, PyDict>) {
    let Some(generation) = info
        .get_item("generation")
        .ok()
        .flatten()
        .and_then(|g| g.extract::<u8>().ok())
        .filter(|&g| g <= 2)
    else {
        return;
    };
    let after = read(&YOUNG_THRESHOLD).unwrap_or(0).saturating_sub(COUNT_AT_POINT.load(Ordering::Relaxed));
    let nested = crate::signals::nested();
    let failure = STATE
        .with(py, |s| {
            // A collection our own code set off (its finalizers pass through) is not the
            // program's.
            if s.threads.gate_open() {
                return None;
            }
            let thread = s.threads.current();
            let Session::Recording(rec) = &mut s.session else {
                return None;
            };
            if rec.enc.current_thread() != thread {
                rec.enc.thread(thread);
            }
            rec.enc.collect(generation, nested, after);
            rec.after_event().err()
        })
        .flatten();
    if let Some(reason) = failure {
        crate::dispatch::stop_recording(&reason);
    }
}

/// Back to the raised threshold once the recorded collection has come.
fn disarm() {
    let program = PROGRAM_THRESHOLD.load(Ordering::Relaxed);
    if program >= 0 {
        set_threshold_raw(program.saturating_mul(REPLAY_THRESHOLD_FACTOR));
    }
}

/// Carries out a recorded collection at replay that CPython did not start by itself before
/// the thread's next boundary call: inside that call when it ran inside one when recorded
/// (its finalizers' calls then pass through, as they did).
pub fn replay_collection(py: Python<'_>, generation: u8, nested: bool) {
    disarm();
    let collect = || {
        let was = EXPLICIT.with(|e| e.replace(true));
        if let Err(e) = py.import("gc").and_then(|gc| gc.call_method1("collect", (generation,))) {
            // A finalizer's exception is printed by CPython itself; this is ours.
            eprintln!("retrace: warning: a recorded garbage collection failed at replay: {e}");
        }
        EXPLICIT.with(|e| e.set(was));
    };
    if nested {
        crate::signals::in_call(collect);
    } else {
        collect();
    }
}

/// `gc.collect()`: the program's own collection, not recorded (see [`EXPLICIT`]).
///
/// # Safety
/// Called from the proxy with the GIL held.
pub unsafe fn collect(hook: &'static Hook, call: RawCall) -> *mut ffi::PyObject {
    let was = EXPLICIT.with(|e| e.replace(true));
    // SAFETY: per the function's contract; the original has the proxy's convention.
    let result = unsafe { call.call_original(hook.original()) };
    EXPLICIT.with(|e| e.set(was));
    result
}

/// `gc.get_threshold()`: at replay, the threshold the program set, not the real one.
///
/// # Safety
/// Called from the proxy with the GIL held.
pub unsafe fn get_threshold(hook: &'static Hook, call: RawCall) -> *mut ffi::PyObject {
    // SAFETY: per the function's contract.
    unsafe {
        let result = call.call_original(hook.original());
        let program = PROGRAM_THRESHOLD.load(Ordering::Relaxed);
        if result.is_null() || mode() != MODE_REPLAY || program < 0 {
            return result;
        }
        let py = py();
        let real = Bound::from_owned_ptr(py, result);
        let shown = real
            .extract::<(i64, i64, i64)>()
            .and_then(|(_, t1, t2)| PyTuple::new(py, [i64::from(program), t1, t2]).map(Bound::into_any));
        match shown {
            Ok(t) => t.into_ptr(),
            Err(_) => real.into_ptr(),
        }
    }
}

/// `gc.set_threshold(...)`: at replay, what the program sets is what `get_threshold` shows;
/// the real threshold is raised again (and armed again as the hook returns).
///
/// # Safety
/// Called from the proxy with the GIL held.
pub unsafe fn set_threshold(hook: &'static Hook, call: RawCall) -> *mut ffi::PyObject {
    // SAFETY: per the function's contract.
    let result = unsafe { call.call_original(hook.original()) };
    if !result.is_null() && mode() == MODE_REPLAY {
        adopt_program_threshold();
    }
    result
}

//! What every hook does with a call: pass it through, record it, or replay it.

use crate::codec::{decode_value, encode_call_result, type_name_bytes};
use crate::exceptions::{raise_recorded, record_raise};
use crate::calls::RawCall;
use crate::hooks::Hook;
use crate::session::{
    mode, py, Divergence, Recorder, Replayed, Session, State, Taken, MODE, MODE_OFF,
    MODE_RECORD, MODE_REPLAY, STATE,
};
use pyo3::ffi;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

/// Exit status of a replay that diverged from its recording.
pub const EXIT_DIVERGED: i32 = 86;
/// Exit status of a replay that could not go on because the recording is unusable.
pub const EXIT_BAD_RECORDING: i32 = 87;

/// Source files whose frames are ours and stay out of the stacks we print.
pub static OWN_SOURCE_PREFIX: OnceLock<String> = OnceLock::new();

/// The common case: a call whose whole effect on the program is its result (or the
/// exception it raises).
///
/// # Safety
/// Called from a proxy with the GIL held; `invoke` performs the original call.
#[inline(always)]
pub unsafe fn boundary(
    hook: &'static Hook,
    digest: impl FnOnce() -> Option<u32>,
    invoke: impl Invoke,
) -> *mut ffi::PyObject {
    // SAFETY: per the function's contract.
    unsafe { boundary_where(hook, |_| true, digest, invoke) }
}

/// [`boundary`] for a call that is a boundary only when `applies` says so of our state (a
/// call on a descriptor, which must be tracked): answered in the same borrow of the state
/// as the thread's gate, which a separate lookup would take again.
///
/// Inlined into the proxy, with everything on the way to `invoke`, so that the original is
/// called from the proxy's own frame. An original that enters the kernel (`send`, `recv`,
/// `read`) comes back with the CPU's return-address predictions overwritten by the
/// kernel's calls: every frame of ours still open then costs a mispredicted return,
/// ~11-13 ns each on the benchmark machine (`bench/programs/in_process.py`; a socket call
/// went through three). Work before and after the call (the digest, the event) is in calls
/// of its own, which start after the kernel is left and return as predicted.
///
/// # Safety
/// As for [`boundary`].
#[inline(always)]
pub unsafe fn boundary_where(
    hook: &'static Hook,
    applies: impl FnOnce(&State) -> bool,
    digest: impl FnOnce() -> Option<u32>,
    invoke: impl Invoke,
) -> *mut ffi::PyObject {
    // SAFETY: the GIL is held, per the caller's guarantee.
    unsafe {
        match mode() {
            MODE_RECORD => match active_caller_where(applies) {
                // The thread found here is the one recording: looked up once per call.
                Some(caller) => {
                    let d = digest();
                    let inside = crate::signals::InCall::enter(caller.thread);
                    let result = invoke.invoke();
                    drop(inside);
                    record_outcome_on(hook, Some(caller), d, result);
                    result
                }
                None => invoke.invoke(),
            },
            MODE_REPLAY => match active_caller_where(applies) {
                Some(_) => outcome_object(replay_take(hook, digest())),
                None => invoke.invoke(),
            },
            _ => invoke.invoke(),
        }
    }
}

/// How a boundary makes its call: a closure, or [`Original`].
pub trait Invoke {
    /// # Safety
    /// As for the call it makes.
    unsafe fn invoke(self) -> *mut ffi::PyObject;
}

impl<F: FnOnce() -> *mut ffi::PyObject> Invoke for F {
    #[inline(always)]
    unsafe fn invoke(self) -> *mut ffi::PyObject {
        self()
    }
}

/// The original C function called with the proxy's own arguments. Not a closure: one
/// holding this call was compiled out of line on the recording path, a frame of its own
/// across the call (see [`boundary_where`]).
pub struct Original(pub RawCall, pub *mut std::os::raw::c_void);

impl Invoke for Original {
    #[inline(always)]
    unsafe fn invoke(self) -> *mut ffi::PyObject {
        // SAFETY: `Original` is only made by proxies, from the hook's original function and
        // the arguments they were called with.
        unsafe { self.0.call_original(self.1) }
    }
}

/// Records that a call giving descriptor `fd` back to the kernel starts (a `close`, which
/// releases the GIL while it closes). The call's own event is written when it returns, and
/// by then another thread may have been given the same descriptor number: this event,
/// written first, keeps the release before that reuse in the recorded schedule.
///
/// # Safety
/// GIL held.
pub unsafe fn record_release_start(fd: std::os::raw::c_int) {
    // SAFETY: per the function's contract.
    unsafe {
        if mode() != MODE_RECORD || !is_active() {
            return;
        }
        let marker = crate::hooks::hook(crate::hooks::HookId::descriptor_release);
        record_with(marker, |rec| {
            rec.enc.call(marker.id, marker.digest(|| fd as u32));
            rec.enc.none();
        });
    }
}

/// Replays a call that releases a stand-in (a `close`): takes the recorded outcome, then
/// really releases the stand-in whatever was recorded (so later use fails as it did), then
/// returns the recorded outcome. With `fd`, the recording has the release's start first
/// (see [`record_release_start`]): the release happens at its turn, and the outcome is
/// taken at its own.
///
/// # Safety
/// GIL held; `release` performs the original call on the stand-in.
pub unsafe fn replay_releasing<R>(
    hook: &'static Hook,
    digest: Option<u32>,
    fd: Option<std::os::raw::c_int>,
    release: impl FnOnce() -> R,
) -> *mut ffi::PyObject {
    // SAFETY: per the caller's guarantee.
    unsafe {
        let py = py();
        let with_replayer = |f: &dyn Fn(&mut crate::session::Replayer, u32)| {
            STATE.with(py, |s| {
                let thread = s.threads.current();
                if let Session::Replaying(rep) = &mut s.session {
                    f(rep, thread);
                }
            })
        };
        // The turn taken first (the release's start, or else the call itself) is handed on
        // only once the stand-in is really released.
        with_replayer(&|rep, thread| rep.defer_turn(thread));
        let taken_first = match fd {
            Some(fd) => {
                let marker = crate::hooks::hook(crate::hooks::HookId::descriptor_release);
                drop(replay_take(marker, marker.digest(|| fd as u32)));
                None
            }
            None => Some(replay_take(hook, digest)),
        };
        drop(release());
        with_replayer(&|rep, thread| rep.hand_on(thread));
        outcome_object(taken_first.unwrap_or_else(|| replay_take(hook, digest)))
    }
}

/// The object a replayed outcome stands for, or NULL with its exception set.
///
/// # Safety
/// GIL held.
pub unsafe fn outcome_object(replayed: Replayed) -> *mut ffi::PyObject {
    // SAFETY: per the caller's guarantee.
    unsafe {
        match replayed {
            Replayed::Value(v) => decode_value(&v),
            Replayed::Raise(e) => {
                raise_recorded(&e);
                std::ptr::null_mut()
            }
        }
    }
}

/// A Python result we drop, its error included: a stand-in's close is not the program's.
///
/// # Safety
/// GIL held; `result` a new reference or NULL.
pub unsafe fn discard(result: *mut ffi::PyObject) {
    // SAFETY: per the caller's guarantee.
    unsafe {
        ffi::Py_XDECREF(result);
        ffi::PyErr_Clear();
    }
}

/// Whether the calling thread's boundary calls are recorded or replayed (its gate is
/// closed, and we are not re-entering our own code).
///
/// # Safety
/// The GIL must be held.
pub unsafe fn is_active() -> bool {
    // SAFETY: per the caller's guarantee.
    unsafe { active_thread() }.is_some()
}

/// The calling thread's index when its boundary calls are recorded or replayed.
///
/// # Safety
/// The GIL must be held.
pub unsafe fn active_thread() -> Option<u32> {
    // SAFETY: per the caller's guarantee.
    unsafe { active_caller_where(|_| true) }.map(|caller| caller.thread)
}

/// The thread making a call, as found when the call starts, for the recording of its end.
#[derive(Clone, Copy)]
pub struct Caller {
    /// Its index.
    pub thread: u32,
    /// Its thread state.
    tstate: *mut ffi::PyThreadState,
}

/// [`active_thread`], when `applies` holds of our state.
///
/// # Safety
/// The GIL must be held.
#[inline(always)]
pub unsafe fn active_caller_where(applies: impl FnOnce(&State) -> bool) -> Option<Caller> {
    // SAFETY: per the caller's guarantee.
    if unsafe { crate::debugger::foreign_call() } {
        return None;
    }
    // SAFETY: per the caller's guarantee.
    let py = unsafe { py() };
    STATE
        .with(py, |s| {
            if !applies(s) {
                return None;
            }
            let thread = s.threads.current();
            (!s.threads.gate_open_for(thread)).then_some(Caller { thread, tstate: STATE.owner() })
        })
        .flatten()
}

/// Records the result of a call that already happened (`result` NULL: it raised).
///
/// # Safety
/// The GIL must be held; `result` is the call's return value (not consumed).
pub unsafe fn record_outcome(hook: &'static Hook, digest: Option<u32>, result: *mut ffi::PyObject) {
    // SAFETY: per the caller's guarantee.
    unsafe { record_outcome_on(hook, None, digest, result) }
}

/// [`record_outcome`] for a caller that already knows the calling thread (see
/// [`record_with_on`]).
///
/// # Safety
/// As for [`record_outcome`].
#[inline(always)]
pub unsafe fn record_outcome_on(hook: &'static Hook, caller: Option<Caller>, digest: Option<u32>, result: *mut ffi::PyObject) {
    // SAFETY: the GIL is held; encoding reads exact builtin objects only.
    unsafe {
        record_with_on(hook, caller, |rec| {
            if result.is_null() {
                record_raise(&mut rec.enc, hook.id, digest);
            } else if !encode_call_result(&mut rec.enc, hook.id, digest, result) {
                record_unrecordable(rec, hook, digest, result);
            }
        });
    }
}

/// A result we cannot store (an object of a type the codec does not know): recorded as a
/// marker exception naming the type, with a warning the first time.
///
/// # Safety
/// The GIL must be held; `result` is live.
#[cold]
#[inline(never)]
unsafe fn record_unrecordable(rec: &mut Recorder, hook: &'static Hook, digest: Option<u32>, result: *mut ffi::PyObject) {
    // SAFETY: per the function's contract.
    let type_name = String::from_utf8_lossy(unsafe { type_name_bytes(result) }).into_owned();
    if rec.warn_unrecordable_once() {
        eprintln!(
            "retrace: warning: {} returned a {type_name}, which cannot be recorded yet; a replay will stop there",
            hook.name
        );
    }
    rec.enc.raise(hook.id, digest, "retrace:UnrecordableResult");
    rec.enc.tuple(1);
    rec.enc.str(&type_name);
    rec.enc.dict(0);
}

/// Writes one event for `hook` through `write`, then flushes as needed.
///
/// # Safety
/// The GIL must be held.
pub unsafe fn record_with(hook: &'static Hook, write: impl FnOnce(&mut Recorder)) {
    // SAFETY: per the caller's guarantee.
    unsafe { record_with_on(hook, None, write) }
}

/// [`record_with`] for a caller that knows the calling thread: from [`active_caller_where`]
/// when its call started, what would be looked up again once the call has left our state
/// cold.
///
/// # Safety
/// The GIL must be held; `caller`, when given, is the calling thread.
#[inline(always)]
pub unsafe fn record_with_on(hook: &'static Hook, caller: Option<Caller>, write: impl FnOnce(&mut Recorder)) {
    // SAFETY: per the caller's guarantee.
    let py = unsafe { py() };
    let record = |s: &mut State| {
        let thread = caller.map_or_else(|| s.threads.current(), |c| c.thread);
        let Session::Recording(rec) = &mut s.session else {
            return None;
        };
        rec.begin(thread, hook);
        write(rec);
        if YIELD_GIL_WHILE_RECORDING.load(Ordering::Relaxed) {
            yield_gil_while_recording();
        }
        rec.after_event().err()
    };
    let failure = match caller {
        // SAFETY: the caller's state, read when its call started on this thread.
        Some(c) => unsafe { STATE.with_as(py, c.tstate, record) },
        None => STATE.with(py, record),
    }
    .flatten();
    if let Some(reason) = failure {
        stop_recording(&reason);
    }
}

/// For the test of [`crate::gil::GilCell`]'s waiting (`RETRACE_TEST_YIELD_GIL=1`): every
/// recorded event gives up the GIL for a moment while our state is borrowed, as pyo3 did
/// when it first filled a once-cell, so the other threads' calls meet the borrowed state.
pub static YIELD_GIL_WHILE_RECORDING: AtomicBool = AtomicBool::new(false);

#[cold]
#[inline(never)]
fn yield_gil_while_recording() {
    // SAFETY: called inside a hook, with the GIL held; it is taken back for this thread.
    unsafe {
        let state = ffi::PyEval_SaveThread();
        std::thread::sleep(std::time::Duration::from_micros(50));
        ffi::PyEval_RestoreThread(state);
    }
}

/// Recording failed (the disk is full, the directory went away): the program goes on
/// unrecorded, and we say so once.
pub fn stop_recording(reason: &str) {
    if MODE.swap(MODE_OFF, Ordering::Relaxed) == MODE_RECORD {
        eprintln!("retrace: recording stopped: {reason}; the program goes on unrecorded");
    }
}

/// The recorded outcome for this call, or the end of the replay.
///
/// # Safety
/// The GIL must be held.
pub unsafe fn replay_take(hook: &'static Hook, digest: Option<u32>) -> Replayed {
    // SAFETY: per the caller's guarantee.
    let py = unsafe { py() };
    let mut handler_raised = false;
    loop {
        let taken = STATE.with(py, |s| {
            let thread = s.threads.current();
            match &mut s.session {
                Session::Replaying(rep) => Some(rep.take(hook, digest, thread)),
                _ => None,
            }
        });
        let replayed = match taken.flatten() {
            Some(Ok(Taken::SignalDuringCall(signum))) => {
                // The signal interrupted this call when recorded: its handler runs now, inside
                // the call, outside our state (it is the program's code).
                // SAFETY: the GIL is held; CPython runs the pending handler here.
                // It ran inside the call, as when recorded (see `signals::nested`).
                handler_raised |= crate::signals::in_call(|| unsafe { ffi::PyErr_SetInterruptEx(signum) == 0 && ffi::PyErr_CheckSignals() < 0 });
                continue;
            }
            Some(Ok(Taken::Unfinished)) => {
                // SAFETY: the GIL is held here, per this function's contract.
                unsafe { unfinished_call(hook) }
            }
            Some(Ok(Taken::NotYourTurn(turn))) => {
                // SAFETY: the GIL is held here, per this function's contract.
                unsafe { wait_for_turn(hook, turn) };
                continue;
            }
            Some(Ok(Taken::Callback { handle, args })) => {
                // C called the program back inside this call when recorded: the program's
                // callable runs now, with the recorded arguments (see `sqlite.rs`).
                // SAFETY: the GIL is held; our state is not borrowed while it runs.
                // It runs inside the call, as when recorded (see `signals::nested`).
                let end = crate::signals::in_call(|| unsafe { crate::sqlite::replay_callback(handle, &args) });
                let returned = STATE.with(py, |s| {
                    let thread = s.threads.current();
                    match &mut s.session {
                        Session::Replaying(rep) => Some(rep.take_callback_return(thread)),
                        _ => None,
                    }
                });
                if let Some(Err(divergence)) = returned.flatten() {
                    diverge(divergence, true);
                }
                end.finish(py);
                continue;
            }
            Some(Ok(Taken::Collect { generation, nested })) => {
                // Our state is not borrowed while the finalizers run (they are the program's
                // code, and may reach boundaries of their own).
                crate::gc::replay_collection(py, generation, nested);
                continue;
            }
            Some(Ok(Taken::Outcome(replayed))) => replayed,
            Some(Err(divergence)) => diverge(divergence, true),
            None => diverge(
                Divergence {
                    index: None,
                    thread: 0,
                    expected: "a replay session".into(),
                    actual: format!("call {}", hook.name),
                    hint: "internal: the replay state was busy; please report this",
                    bad_recording: false,
                    thread_name: None,
                },
                true,
            ),
        };
        // A handler that raised inside the call ended it, as when recorded: the exception it
        // raised is the call's outcome.
        return if handler_raised { Replayed::Raise(None) } else { replayed };
    }
}

/// A call that had not returned when the recorded process ended: a daemon thread's (still
/// sleeping, still waiting) never returns at replay either; the thread waits, without the
/// GIL, for the process to end as it did. Any other thread making a call its recording
/// does not have is a divergence.
///
/// # Safety
/// The GIL must be held.
unsafe fn unfinished_call(hook: &'static Hook) -> ! {
    // SAFETY: the GIL is held, per the caller's guarantee; after the daemon check this
    // thread gives it up for good.
    unsafe {
        use pyo3::prelude::PyAnyMethods;
        let daemon = known_thread(pyo3::Python::assume_attached())
            .and_then(|t| t.getattr("daemon").ok())
            .and_then(|d| d.is_truthy().ok())
            .unwrap_or(false);
        if !daemon {
            let thread = STATE.with(py(), |s| s.threads.current()).unwrap_or(0);
            diverge(
                Divergence {
                    index: None,
                    thread,
                    expected: "the end of this thread's recording".into(),
                    actual: format!("call {}", hook.name),
                    hint: "the thread made more boundary calls than when it was recorded: was its code or an unrecorded input changed?",
                    bad_recording: false,
                    thread_name: None,
                },
                true,
            );
        }
        ffi::PyEval_SaveThread();
        loop {
            std::thread::park();
        }
    }
}

/// How long a thread waits for its turn with no other thread taking any, before saying so.
const TURN_PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);

/// Waits, without the GIL, until the schedule reaches `turn` (the other threads run
/// meanwhile and take the turns before it). A long wait is reported once, then waited out:
/// a thread computing for a long time between two schedule points is legitimate.
///
/// # Safety
/// The GIL must be held; it is released during the wait and held again on return.
unsafe fn wait_for_turn(hook: &'static Hook, turn: u64) {
    // SAFETY: the GIL is held on entry, per the caller's guarantee; PyEval_SaveThread
    // releases it and PyEval_RestoreThread takes it back for this same thread state.
    unsafe {
        let mut state = ffi::PyEval_SaveThread();
        let mut warned = false;
        while !crate::session::TURN.wait_for(turn, TURN_PATIENCE) {
            if !warned {
                warned = true;
                ffi::PyEval_RestoreThread(state);
                let stacks = all_stacks(std::ptr::null_mut());
                state = ffi::PyEval_SaveThread();
                write_stderr(&format!(
                    "retrace: replay: a thread waits at {} for schedule turn {turn}; no thread has reached its turn for {} s (turn {} is next)\nPython stacks:\n{stacks}\n",
                    hook.name,
                    TURN_PATIENCE.as_secs(),
                    crate::session::TURN.current()
                ));
            }
        }
        ffi::PyEval_RestoreThread(state);
    }
}

/// Reports a divergence on stderr and ends the process with [`EXIT_DIVERGED`] (or
/// [`EXIT_BAD_RECORDING`]). Never returns a live call to the program.
///
/// `python_alive` is false at exit, after the interpreter was finalized: then no stack is
/// printed and no Python object is touched.
pub fn diverge(mut d: Divergence, python_alive: bool) -> ! {
    MODE.store(MODE_OFF, Ordering::Relaxed);
    let stack = if python_alive {
        // SAFETY: with Python alive we are inside a hook, where the GIL is held. Flushing the
        // program's own output first keeps its stdout identical up to this point.
        unsafe {
            flush_python_stdio();
            if d.thread_name.is_none() {
                d.thread_name = current_thread_name();
            }
            let mut stack = python_stack();
            // Under threads, where the others stood tells what this thread raced with.
            let others = all_stacks(ffi::PyThreadState_Get());
            if !others.is_empty() {
                stack.push_str("Other threads (most recent call last):\n");
                stack.push_str(&others);
            }
            stack
        }
    } else {
        String::new()
    };
    report_and_exit(d, &stack)
}

/// The calling thread's `threading` name, when `threading` is loaded and knows the thread.
///
/// # Safety
/// The GIL must be held.
unsafe fn current_thread_name() -> Option<String> {
    use pyo3::prelude::PyAnyMethods;
    // SAFETY: per the caller's guarantee; only reads, errors dropped.
    let py = unsafe { pyo3::Python::assume_attached() };
    known_thread(py)?.getattr("name").ok()?.extract::<String>().ok()
}

/// The calling thread's `threading.Thread`, if `threading` is loaded and has one for it.
///
/// Not `threading.current_thread()`: for a thread `threading` does not know (one ending, or
/// one started in C) that makes a `_DummyThread`, whose start takes locks, which come back
/// through our hooks, from the very report being made.
fn known_thread(py: pyo3::Python<'_>) -> Option<pyo3::Bound<'_, pyo3::PyAny>> {
    use pyo3::prelude::PyAnyMethods;
    let threading = py.import("sys").ok()?.getattr("modules").ok()?.get_item("threading").ok()?;
    let ident = threading.call_method0("get_ident").ok()?;
    let thread = threading.getattr("_active").ok()?.call_method1("get", (ident,)).ok()?;
    (!thread.is_none()).then_some(thread)
}

/// [`diverge`] from a thread of ours (a database stand-in) that found the divergence while
/// the program waits, blocked in C without the GIL: takes the GIL, then reports with the
/// stacks of every Python thread, as the one at fault is among them.
pub fn diverge_from_helper(d: Divergence) -> ! {
    MODE.store(MODE_OFF, Ordering::Relaxed);
    // SAFETY: the program is running (it is blocked waiting for us), so the interpreter is
    // alive; PyGILState_Ensure gives this thread a thread state and the GIL, which we keep:
    // the process ends below.
    let stack = unsafe {
        ffi::PyGILState_Ensure();
        flush_python_stdio();
        all_stacks(std::ptr::null_mut())
    };
    report_and_exit(d, &stack)
}

/// The Python stacks of every thread but `except` (may be NULL), separated by `--` lines.
///
/// # Safety
/// The GIL must be held.
unsafe fn all_stacks(except: *mut ffi::PyThreadState) -> String {
    // SAFETY: walking the interpreter's thread states with the GIL held.
    unsafe {
        let mut stacks = String::new();
        let mut tstate = ffi::PyInterpreterState_ThreadHead(ffi::PyInterpreterState_Get());
        while !tstate.is_null() {
            let stack = if tstate == except { String::new() } else { stack_of(tstate) };
            if !stack.is_empty() {
                stacks.push_str(&stack);
                stacks.push_str("  --\n");
            }
            tstate = ffi::PyThreadState_Next(tstate);
        }
        stacks.trim_end_matches("  --\n").to_owned()
    }
}

fn report_and_exit(d: Divergence, stack: &str) -> ! {
    let index = d.index.map(|i| format!(" at event #{i}")).unwrap_or_default();
    let title = if d.bad_recording { "replay cannot continue" } else { "replay diverged" };
    let mut report = format!(
        "retrace: {title}{index} (thread {}{})\n  expected: {}\n  actual:   {}\n",
        d.thread,
        d.thread_name.as_deref().map(|n| format!(", {n:?}")).unwrap_or_default(),
        d.expected,
        d.actual
    );
    if !stack.is_empty() {
        report.push_str("Python stack (most recent call last):\n");
        report.push_str(stack);
    }
    report.push_str(&format!("hint: {}\n", d.hint));
    write_stderr(&report);
    let status = if d.bad_recording { EXIT_BAD_RECORDING } else { EXIT_DIVERGED };
    // SAFETY: _exit ends the process at once; nothing of the program runs after a divergence.
    unsafe { libc::_exit(status) }
}

pub fn write_stderr(text: &str) {
    let mut rest = text.as_bytes();
    while !rest.is_empty() {
        // SAFETY: writing a valid buffer to fd 2.
        let n = unsafe { libc::write(2, rest.as_ptr().cast(), rest.len()) };
        if n <= 0 {
            break;
        }
        rest = &rest[n as usize..];
    }
}

/// # Safety
/// The GIL must be held.
unsafe fn flush_python_stdio() {
    // SAFETY: calling flush() on sys.stdout/sys.stderr; errors are cleared.
    unsafe {
        for name in [c"stdout", c"stderr"] {
            let stream = ffi::PySys_GetObject(name.as_ptr());
            if !stream.is_null() {
                let r = ffi::PyObject_CallMethod(stream, c"flush".as_ptr(), std::ptr::null());
                if r.is_null() {
                    ffi::PyErr_Clear();
                } else {
                    ffi::Py_DECREF(r);
                }
            }
        }
    }
}

/// The calling thread's Python stack, outermost first, without our own frames.
///
/// # Safety
/// The GIL must be held.
unsafe fn python_stack() -> String {
    // SAFETY: per the caller's guarantee.
    unsafe { stack_of(ffi::PyThreadState_Get()) }
}

/// The Python stack of the thread `tstate`, outermost first, without our own frames.
///
/// # Safety
/// The GIL must be held; `tstate` a live thread state of this interpreter.
unsafe fn stack_of(tstate: *mut ffi::PyThreadState) -> String {
    // SAFETY: frame and code accessors of the public C API, with reference counting.
    unsafe {
        let own = OWN_SOURCE_PREFIX.get().map(String::as_str).unwrap_or("\0");
        let mut lines = Vec::new();
        let mut frame = ffi::PyThreadState_GetFrame(tstate);
        while !frame.is_null() {
            let code = ffi::PyFrame_GetCode(frame);
            let file = attr_text(code as *mut ffi::PyObject, c"co_filename");
            let name = attr_text(code as *mut ffi::PyObject, c"co_name");
            let line = ffi::PyFrame_GetLineNumber(frame);
            ffi::Py_DECREF(code as *mut ffi::PyObject);
            if !file.starts_with(own) {
                lines.push(format!("  File \"{file}\", line {line}, in {name}\n"));
            }
            let back = ffi::PyFrame_GetBack(frame);
            ffi::Py_DECREF(frame as *mut ffi::PyObject);
            frame = back;
        }
        lines.reverse();
        lines.concat()
    }
}

/// # Safety
/// `obj` live, GIL held.
unsafe fn attr_text(obj: *mut ffi::PyObject, name: &std::ffi::CStr) -> String {
    // SAFETY: attribute read of a code object.
    unsafe {
        let v = ffi::PyObject_GetAttrString(obj, name.as_ptr());
        if v.is_null() {
            ffi::PyErr_Clear();
            return "?".into();
        }
        let s = crate::codec::utf8_of(v).map(|b| String::from_utf8_lossy(b).into_owned());
        ffi::Py_DECREF(v);
        s.unwrap_or_else(|| "?".into())
    }
}

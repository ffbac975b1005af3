//! Threads: who is who, and the order in which they pass their schedule points.
//!
//! * **Identity.** A thread started through `_thread.start_new_thread` (and 3.13's
//!   `start_joinable_thread`), which is how `threading.Thread` starts every thread, gets
//!   its index from its starter: the start is recorded with the index it gave, and the
//!   thread's function is wrapped in a [`ThreadEntry`] that binds the index in the new
//!   thread before anything else runs. A replay binds the recorded index, so each thread
//!   takes its own recorded events whatever order threads come up in.
//! * **Locks.** `_thread.lock` and `_thread.RLock` (under every `threading` primitive:
//!   Lock, RLock, Condition, Semaphore, Event, Barrier, `queue.Queue`, Thread.join before
//!   3.13) are schedule points, except those of the import system and those used inside
//!   another boundary call. A replay takes them in the recorded order across threads
//!   and then really performs them, so the program's own synchronisation holds. An acquire
//!   that failed when recorded (non-blocking, or timed out) fails again without trying.

use crate::calls::RawCall;
use crate::dispatch::{active_thread, record_with, replay_take};
use crate::exceptions::raise_recorded;
use crate::hooks::Hook;
use crate::session::{mode, py, Replayed, MODE_RECORD, MODE_REPLAY, STATE};
use pyo3::ffi;
use retrace_recorder::Value;
use std::cell::Cell;

thread_local! {
    /// Set once the thread's function has returned: what runs after it is the thread
    /// state's teardown (its thread-local values' finalizers, such as 3.13's
    /// `_DeleteDummyThreadOnDel`), which follows from what the thread did, not from the
    /// schedule. Its lock operations are not schedule points; at replay the recording of the
    /// thread has already been checked to be used up (see [`thread_function_returned`]).
    static FUNCTION_RETURNED: Cell<bool> = const { Cell::new(false) };
}

/// The locks `_thread._set_sentinel` made (3.11, 3.12): each is held by its thread's
/// state and released by CPython, in C, when the thread ends; `Thread.join` waits on it.
/// A blocking acquire (and the release after it) on such a lock is not a schedule point:
/// its real counterpart, the thread's end, is not a recorded event, and the order in which a
/// program joins its threads may follow a set of `Thread` objects, whose order depends on
/// addresses. It just waits for the thread, at replay as when recorded. A non-blocking
/// acquire (`is_alive()`) is a schedule point: its answer depends on timing.
/// Read on every lock operation: the GIL guards it (every access is from a hook or a weak
/// reference callback), where a mutex cost two locked instructions per lock operation.
static SENTINELS: crate::gil::LeafCell<Option<rustc_hash::FxHashSet<usize>>> = crate::gil::LeafCell::new(None);

/// Runs `f` on the sentinel set. The GIL must be held.
fn with_sentinels<R>(f: impl FnOnce(&mut Option<rustc_hash::FxHashSet<usize>>) -> R) -> Option<R> {
    // SAFETY: every caller holds the GIL (hooks and a weak reference callback).
    SENTINELS.with(unsafe { crate::session::py() }, f)
}

fn is_sentinel(lock: *mut ffi::PyObject) -> bool {
    with_sentinels(|set| set.as_ref().is_some_and(|s| s.contains(&(lock as usize)))).unwrap_or(false)
}

/// Called when a sentinel lock dies: its address may be reused by another lock.
unsafe extern "C-unwind" fn forget_sentinel(address: *mut ffi::PyObject, _weakref: *mut ffi::PyObject) -> *mut ffi::PyObject {
    // SAFETY: `address` is the int `DeathCallback::watch` bound the callback to.
    unsafe {
        let key = crate::deaths::address_of(address);
        with_sentinels(|set| set.as_mut().map(|s| s.remove(&key)));
        crate::codec::new_ref(ffi::Py_None())
    }
}

static FORGET_SENTINEL: crate::deaths::DeathCallback = crate::deaths::DeathCallback::new(c"forget_sentinel", forget_sentinel);

/// `_thread._set_sentinel()`: not a boundary (it makes a lock); the lock is remembered.
///
/// # Safety
/// Called through a method proxy with the GIL held.
pub unsafe fn sentinel(hook: &'static Hook, call: RawCall) -> *mut ffi::PyObject {
    // SAFETY: see the function's contract; the weak reference's callback is a builtin
    // function bound to the lock's address as an int.
    unsafe {
        let lock = call.call_original(hook.original());
        if lock.is_null() || !matches!(mode(), MODE_RECORD | MODE_REPLAY) {
            return lock;
        }
        if !FORGET_SENTINEL.watch(lock) {
            // Without a way to forget it, the lock stays an ordinary one.
            return lock;
        }
        with_sentinels(|set| set.get_or_insert_with(Default::default).insert(lock as usize));
        lock
    }
}

/// `threading`'s own bookkeeping of thread ends (`_delete`, `_stop`...): a thread's end is
/// not a recorded event (CPython ends it in C), so ordering this bookkeeping against the
/// other threads' schedule points could deadlock a replay whose threads are joined in
/// another order (`ThreadPoolExecutor` joins a `set` of threads, ordered by address).
const THREADING_INTERNALS: &[&[u8]] = &[b"_delete", b"_stop", b"_set_tstate_lock", b"_maintain_shutdown_locks", b"_bootstrap_inner", b"_shutdown"];

/// Lock operations that are not schedule points, by their caller: the import system's
/// module locks (imports happen where modules are first needed, which a replay may shift: a
/// C call that imported a codec when recorded is not run again) and `threading`'s thread-end
/// bookkeeping ([`THREADING_INTERNALS`]).
///
/// # Safety
/// GIL held.
unsafe fn unscheduled_caller() -> bool {
    // SAFETY: the current thread's frame (borrowed) and its code object's attributes.
    unsafe {
        let mut frame = ffi::PyEval_GetFrame();
        if frame.is_null() {
            return false;
        }
        // A comprehension (`[... for lock in locks if not lock.locked()]`, its own frame
        // before 3.12) is judged by the function it is in.
        let mut code = ffi::PyFrame_GetCode(frame);
        let first_code = code as usize;
        if let Some(verdict) = LAST_CALLER.with(crate::session::py(), |last| last.filter(|&(c, _)| c == first_code).map(|(_, v)| v)).flatten() {
            ffi::Py_DECREF(code.cast());
            return verdict;
        }
        let mut owned_frame: *mut ffi::PyFrameObject = std::ptr::null_mut();
        for _ in 0..2 {
            let (_, name) = crate::internals::code_names(code);
            let comprehension = name.starts_with(b"<") && name != b"<module>";
            if !comprehension {
                break;
            }
            let back = ffi::PyFrame_GetBack(frame);
            if back.is_null() {
                break;
            }
            ffi::Py_XDECREF(owned_frame.cast());
            owned_frame = back;
            frame = back;
            ffi::Py_DECREF(code.cast());
            code = ffi::PyFrame_GetCode(frame);
        }
        ffi::Py_XDECREF(owned_frame.cast());
        let (file, name) = crate::internals::code_names(code);
        let unscheduled = file.starts_with(b"<frozen importlib")
            || file.starts_with(b"<frozen zipimport")
            || (file.ends_with(b"/threading.py") && THREADING_INTERNALS.contains(&name));
        if code as usize == first_code {
            // Not a comprehension: the verdict is the code's own. The cache keeps the
            // reference, so the address cannot be reused by another code object meanwhile.
            match LAST_CALLER.with(crate::session::py(), |last| last.replace((first_code, unscheduled))) {
                // Outside the cell: a code object's deallocation may run a weak reference
                // callback, which may reach a hook.
                Some(Some((old, _))) => ffi::Py_DECREF(old as *mut ffi::PyObject),
                Some(None) => {}
                None => ffi::Py_DECREF(code.cast()),
            }
        } else {
            ffi::Py_DECREF(code.cast());
        }
        unscheduled
    }
}

/// The code object [`unscheduled_caller`] judged last (a strong reference) and its verdict:
/// a loop's lock operations come from one function, whose names need reading only once
/// (that reading was ~220 of a lock operation's ~840 instructions).
static LAST_CALLER: crate::gil::LeafCell<Option<(usize, bool)>> = crate::gil::LeafCell::new(None);

/// `acquire(blocking=True, timeout=-1)` called so that it waits.
///
/// # Safety
/// GIL held; `call` live.
unsafe fn waits(call: &RawCall) -> bool {
    // SAFETY: reads of live argument objects; conversion errors are cleared.
    unsafe {
        let positional = call.positional();
        let blocking = positional.first().copied().or_else(|| call.keyword("blocking"));
        let timeout = positional.get(1).copied().or_else(|| call.keyword("timeout"));
        let blocking = blocking.is_none_or(|b| {
            let r = ffi::PyObject_IsTrue(b);
            ffi::PyErr_Clear();
            r != 0
        });
        let timeout = timeout.map_or(-1.0, |t| {
            let v = ffi::PyFloat_AsDouble(t);
            ffi::PyErr_Clear();
            v
        });
        blocking && timeout != 0.0
    }
}

/// What a lock hook does.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum LockOp {
    /// `acquire`, `__enter__`: recorded as whether it got the lock.
    Acquire,
    /// `release`, `__exit__`, and RLock's `_release_save` / `_acquire_restore` (Condition's
    /// helpers): performed at replay too, their real result returned.
    Other,
    /// `locked()`: a read of timing-dependent state, replayed from the recording.
    Locked,
    /// `SimpleQueue.get`: when it got an item (recorded as such, not the item), a replay
    /// takes one for real, blocking: the recorded order makes one available. When it
    /// raised `Empty`, it raises again without trying.
    Take,
}

/// The function a started thread runs, wrapped: a builtin function whose `self` is
/// `(index, function)`; it binds the thread's index, then calls the function.
///
/// It is a raw C function, not a PyO3 method: it stays on the thread's stack for the
/// thread's whole life, and CPython ends daemon threads at exit with `pthread_exit`, whose
/// unwinding must pass through it (PyO3's trampolines would abort the process). Nor is it
/// Python code, which would show in the program's tracebacks.
unsafe extern "C-unwind" fn thread_entry(slf: *mut ffi::PyObject, args: *mut ffi::PyObject, kwargs: *mut ffi::PyObject) -> *mut ffi::PyObject {
    // SAFETY: CPython calls this with the GIL held, `slf` the `(index, function)` tuple made
    // in `wrap_entry`, `args` a tuple and `kwargs` a dict or NULL.
    unsafe {
        let index = ffi::PyLong_AsUnsignedLong(ffi::PyTuple_GET_ITEM(slf, 0));
        let index = u32::try_from(index).ok();
        if let Some(index) = index {
            STATE.with(py(), |s| s.threads.bind_current(index));
        }
        ffi::PyErr_Clear();
        let result = ffi::PyObject_Call(ffi::PyTuple_GET_ITEM(slf, 1), args, kwargs);
        if let Some(index) = index {
            thread_function_returned(index, slf);
        }
        result
    }
}

/// Marks the thread's function as returned (see [`FUNCTION_RETURNED`]); at replay, a thread
/// whose function returned with recorded events left diverges (their turns would otherwise
/// stop every other thread).
///
/// Kept out of [`thread_entry`], whose frame must hold nothing to drop: CPython's
/// `pthread_exit` of a daemon thread unwinds through it, and a cleanup pad there aborts.
///
/// # Safety
/// GIL held; `slf` the entry's `(index, function)` tuple.
#[inline(never)]
unsafe fn thread_function_returned(index: u32, slf: *mut ffi::PyObject) {
    FUNCTION_RETURNED.with(|returned| returned.set(true));
    if mode() != MODE_REPLAY {
        return;
    }
    // SAFETY: per the function's contract.
    unsafe {
        let leftover = STATE
            .with(py(), |s| match &mut s.session {
                crate::session::Session::Replaying(rep) => rep.leftover(index),
                _ => None,
            })
            .flatten();
        if let Some(mut divergence) = leftover {
            use pyo3::types::PyAnyMethods;
            // `threading` has forgotten the thread by now; its function is a bound method of
            // the Thread object (`Thread._bootstrap`), which still has the name.
            divergence.thread_name = pyo3::Bound::<pyo3::PyAny>::from_borrowed_ptr(py(), ffi::PyTuple_GET_ITEM(slf, 1))
                .getattr("__self__")
                .and_then(|thread| thread.getattr("name"))
                .and_then(|name| name.extract::<String>())
                .ok();
            crate::dispatch::diverge(divergence, true);
        }
    }
}

/// The signature of a thread's entry function (a builtin taking `*args, **kwargs`).
pub type EntryFn = unsafe extern "C-unwind" fn(*mut ffi::PyObject, *mut ffi::PyObject, *mut ffi::PyObject) -> *mut ffi::PyObject;

/// The method definition of a builtin that wraps a thread's function (here, and in
/// `debugger.rs`).
pub struct EntryDef(std::cell::UnsafeCell<ffi::PyMethodDef>);
// SAFETY: never written after its static initialisation; CPython only reads it.
unsafe impl Sync for EntryDef {}

impl EntryDef {
    pub const fn new(name: &'static std::ffi::CStr, entry: EntryFn) -> Self {
        EntryDef(std::cell::UnsafeCell::new(ffi::PyMethodDef {
            ml_name: name.as_ptr(),
            ml_meth: ffi::PyMethodDefPointer {
                // SAFETY: the same C calling convention; "C-unwind" only lets a forced unwind through.
                PyCFunctionWithKeywords: unsafe { std::mem::transmute::<EntryFn, ffi::PyCFunctionWithKeywords>(entry) },
            },
            ml_flags: ffi::METH_VARARGS | ffi::METH_KEYWORDS,
            ml_doc: std::ptr::null(),
        }))
    }

    pub fn get(&self) -> *mut ffi::PyMethodDef {
        self.0.get()
    }
}

static ENTRY_DEF: EntryDef = EntryDef::new(c"thread_entry", thread_entry);

/// `function` wrapped for the thread of index `index` (a new reference, or NULL with an
/// exception set).
///
/// # Safety
/// GIL held; `function` live.
unsafe fn wrap_entry(index: u32, function: *mut ffi::PyObject) -> *mut ffi::PyObject {
    // SAFETY: per the caller's guarantee; the method definition is static and immutable.
    unsafe {
        let def = ENTRY_DEF.get();
        let state = ffi::Py_BuildValue(c"(IO)".as_ptr(), index as std::os::raw::c_uint, function);
        if state.is_null() {
            return state;
        }
        let entry = ffi::PyCFunction_NewEx(def, state, std::ptr::null_mut());
        ffi::Py_DECREF(state);
        entry
    }
}

/// `_thread.start_new_thread(function, ...)`, `_thread.start_joinable_thread(function, ...)`.
///
/// # Safety
/// Called through a method proxy with the GIL held.
pub unsafe fn start(hook: &'static Hook, call: RawCall) -> *mut ffi::PyObject {
    // SAFETY: see the function's contract.
    unsafe {
        let original = hook.original();
        if crate::debugger::foreign_call() {
            return crate::debugger::start_thread(&call, original);
        }
        let positional = call.positional();
        if positional.is_empty() || active_thread().is_none() || !matches!(mode(), MODE_RECORD | MODE_REPLAY) || crate::signals::nested() {
            return call.call_original(original);
        }
        let py = py();
        let digest = hook.digest(|| 0);
        let index = if mode() == MODE_RECORD {
            let Some(index) = STATE.with(py, |s| s.threads.allocate()) else {
                return call.call_original(original);
            };
            // Recorded before the thread exists: the new thread's own events come after.
            record_with(hook, |rec| {
                rec.enc.call(hook.id, digest);
                rec.enc.int(index.into());
            });
            index
        } else {
            match replay_take(hook, digest) {
                Replayed::Value(Value::Int(index)) if (0..=u32::MAX.into()).contains(&index) => {
                    let index = index as u32;
                    STATE.with(py, |s| s.threads.reserve(index));
                    index
                }
                Replayed::Raise(e) => {
                    raise_recorded(&e);
                    return std::ptr::null_mut();
                }
                Replayed::Value(_) => crate::handlers::bad_value(hook),
            }
        };
        start_with_entry(&call, original, wrap_entry(index, positional[0]))
    }
}

/// Starts the thread with `entry` (a new reference, or NULL with an exception set) in place
/// of the function given.
///
/// # Safety
/// GIL held; `original` is the thread-start function `call` was made to.
pub unsafe fn start_with_entry(call: &RawCall, original: *mut std::ffi::c_void, entry: *mut ffi::PyObject) -> *mut ffi::PyObject {
    // SAFETY: per the function's contract; `entry` is released after the call.
    unsafe {
        if entry.is_null() {
            return entry;
        }
        let mut args = call.positional().to_vec();
        args[0] = entry;
        let result = call.call_with_positional(&args, original);
        ffi::Py_DECREF(entry);
        result
    }
}

/// `retrace record --chaos`: schedule points sometimes pause the recording thread (without
/// the GIL) for a random moment, so that other threads get in first and the interleavings a
/// program allows, its races included, show up in recordings (as rr's chaos mode does).
static CHAOS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static CHAOS_STATE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

pub fn enable_chaos() {
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1);
    CHAOS_STATE.store(seed | 1, std::sync::atomic::Ordering::Relaxed);
    CHAOS.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// One in four schedule points pauses 0 to 2 ms, the GIL released.
///
/// # Safety
/// The GIL must be held.
unsafe fn chaos_pause() {
    use std::sync::atomic::Ordering::Relaxed;
    if !CHAOS.load(Relaxed) {
        return;
    }
    // xorshift64: cheap, and any sequence will do (it is not part of the recording).
    let mut x = CHAOS_STATE.load(Relaxed);
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    CHAOS_STATE.store(x, Relaxed);
    if x % 4 != 0 {
        return;
    }
    let pause = std::time::Duration::from_micros((x >> 8) % 2000);
    // SAFETY: the GIL is held on entry and taken back for this thread state.
    unsafe {
        let state = ffi::PyEval_SaveThread();
        std::thread::sleep(pause);
        ffi::PyEval_RestoreThread(state);
    }
}

/// A method of `_thread.lock` or `_thread.RLock`.
///
/// # Safety
/// Called through a method proxy with the GIL held.
pub unsafe fn lock(hook: &'static Hook, op: LockOp, call: RawCall) -> *mut ffi::PyObject {
    // SAFETY: see the function's contract.
    unsafe {
        let original = hook.original();
        if FUNCTION_RETURNED.with(Cell::get) || active_thread().is_none() || crate::signals::nested() || unscheduled_caller() {
            return call.call_original(original);
        }
        if is_sentinel(call.slf()) && (op != LockOp::Acquire || waits(&call)) {
            return call.call_original(original);
        }
        // Releases are compared by name only: RLock's saved state holds a thread ident.
        let digest = hook.digest(|| if matches!(op, LockOp::Acquire | LockOp::Take) { call.digest() } else { 0 });
        match mode() {
            MODE_RECORD => {
                chaos_pause();
                let result = crate::signals::in_call(|| call.call_original(original));
                if result.is_null() {
                    crate::dispatch::record_outcome(hook, digest, result);
                } else {
                    // Only whether an acquire got the lock matters; RLock's saved state holds
                    // a thread ident, which is not the replay's.
                    let answer = result == ffi::Py_True();
                    // A SimpleQueue get records which put's item it returned (see
                    // `simplequeue.rs`); the puts are numbered for that.
                    let put_number = if op == LockOp::Take && crate::simplequeue::is_get(hook) {
                        crate::simplequeue::put_number(call.slf(), result)
                    } else {
                        None
                    };
                    if op == LockOp::Other && crate::simplequeue::is_put(hook) {
                        if let Some(item) = call.positional().first().copied().or_else(|| call.keyword("item")) {
                            crate::simplequeue::note_put(call.slf(), item);
                        }
                    }
                    record_with(hook, |rec| {
                        rec.enc.call(hook.id, digest);
                        match (op, put_number) {
                            (LockOp::Take, Some(number)) => rec.enc.int(number as i64),
                            (LockOp::Other | LockOp::Take, _) => rec.enc.none(),
                            _ => rec.enc.bool(answer),
                        }
                    });
                }
                result
            }
            MODE_REPLAY => match replay_take(hook, digest) {
                Replayed::Raise(e) => {
                    raise_recorded(&e);
                    std::ptr::null_mut()
                }
                Replayed::Value(Value::Bool(answer)) if op == LockOp::Locked => crate::codec::new_ref(if answer { ffi::Py_True() } else { ffi::Py_False() }),
                Replayed::Value(Value::Bool(false)) if op == LockOp::Acquire => crate::codec::new_ref(ffi::Py_False()),
                Replayed::Value(Value::Int(number)) if op == LockOp::Take && crate::simplequeue::is_get(hook) => {
                    crate::simplequeue::take_numbered(&call, original, number as u64)
                }
                // Our turn: the recorded order makes the lock free now, so a blocking
                // acquire (whatever timeout the program gave) gets it at once.
                Replayed::Value(_) if matches!(op, LockOp::Acquire | LockOp::Take) => call.call_bare(original),
                Replayed::Value(_) => call.call_original(original),
            },
            _ => call.call_original(original),
        }
    }
}

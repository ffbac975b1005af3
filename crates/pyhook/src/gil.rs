//! State shared by every hook, protected by the GIL instead of a lock.
//!
//! Every proxy runs with the GIL held, so the GIL already serialises access to the
//! recorder's state; a mutex on top would only cost time on the hot path. The cell knows
//! which thread state is using it:
//!
//! * the same thread again (our own code calling back into a hook while the state is
//!   borrowed) is answered with `None`, treated as pass-through;
//! * another thread means the user gave up the GIL while using the value. Our code never
//!   does so on purpose, but a library may do it for us: pyo3 detaches from the interpreter
//!   while it first fills a once-cell (`intern!`, a class's type object). Passing that
//!   thread's calls through would silently drop them from the recording (a lost lock
//!   release made replays of `ThreadPoolExecutor` diverge), so it waits, without the GIL,
//!   for the user to finish.

use pyo3::{ffi, Python};
use std::cell::{Cell, UnsafeCell};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The owner recorded by [`GilCell::with_unchecked`], which runs where there may be no
/// thread state (at exit, or in a forked child before its first call).
const UNCHECKED_OWNER: *mut ffi::PyThreadState = std::ptr::dangling_mut();

/// How long a thread waits for another thread's use of a cell to end before passing its
/// call through (and saying so). A use ends within microseconds of that thread getting
/// the GIL back; the bound only matters if the user runs code (a finalizer) that waits
/// on the waiting thread, which would otherwise deadlock.
const OTHER_THREAD_PATIENCE: Duration = Duration::from_secs(1);

static WARNED_OTHER_THREAD: AtomicBool = AtomicBool::new(false);

/// Sets a cell back to its free value when a use ends, even on unwinding.
struct ResetOnDrop<'a, V: Copy>(&'a Cell<V>, V);

impl<V: Copy> Drop for ResetOnDrop<'_, V> {
    fn drop(&mut self) {
        self.0.set(self.1);
    }
}

pub struct GilCell<T> {
    /// The thread state using the value, or null.
    owner: Cell<*mut ffi::PyThreadState>,
    value: UnsafeCell<T>,
}

// SAFETY: every access goes through `with`, which requires a `Python` token (proof that the
// GIL is held), and the GIL lets only one thread run our code at a time; a thread that finds
// the value in use by another waits until that use ends.
unsafe impl<T> Sync for GilCell<T> {}

impl<T> GilCell<T> {
    pub const fn new(value: T) -> Self {
        GilCell { owner: Cell::new(std::ptr::null_mut()), value: UnsafeCell::new(value) }
    }

    /// Runs `f` with exclusive access, or returns `None` if the value is already in use
    /// further up this thread's stack. Always inlined: it is a test around `f`, on every
    /// intercepted call, where a call's entry and exit cost more than the test.
    #[inline(always)]
    pub fn with<R>(&self, py: Python<'_>, f: impl FnOnce(&mut T) -> R) -> Option<R> {
        // SAFETY: the token proves the GIL is held, so this thread has a thread state.
        let me = unsafe { ffi::PyThreadState_Get() };
        // SAFETY: `me` is the calling thread's state, just read.
        unsafe { self.with_as(py, me, f) }
    }

    /// [`with`](Self::with) for a caller that knows its thread state (from [`owner`](Self::owner)
    /// in an earlier use during the same call), which saves reading it again.
    ///
    /// # Safety
    /// `me` must be the calling thread's state.
    #[inline(always)]
    pub unsafe fn with_as<R>(&self, _py: Python<'_>, me: *mut ffi::PyThreadState, f: impl FnOnce(&mut T) -> R) -> Option<R> {
        let owner = self.owner.get();
        if !owner.is_null() && (owner == me || !self.wait_for_other_thread()) {
            return None;
        }
        // SAFETY: the value is free and the GIL is held, per the checks above.
        Some(unsafe { self.use_as(me, f) })
    }

    /// The thread state of the thread inside [`with`](Self::with): the caller's own when
    /// called from inside `f`, read without another call into the interpreter.
    #[inline(always)]
    pub fn owner(&self) -> *mut ffi::PyThreadState {
        self.owner.get()
    }

    /// Runs `f` on the value as `owner`, and frees it afterwards, even on unwinding.
    ///
    /// # Safety
    /// The value must be free, and no other thread may run our code meanwhile (the GIL is
    /// held, or no other thread exists).
    #[inline(always)]
    unsafe fn use_as<R>(&self, owner: *mut ffi::PyThreadState, f: impl FnOnce(&mut T) -> R) -> R {
        self.owner.set(owner);
        let _release = ResetOnDrop(&self.owner, std::ptr::null_mut());
        // SAFETY: per the function's contract, no other reference to the value exists: this
        // thread has just claimed it, and no other thread can run here.
        let value = unsafe { &mut *self.value.get() };
        f(value)
    }

    /// Another thread is using the value, and has given up the GIL meanwhile: gives it up
    /// too until that use ends. True when it has; false (said once) when it did not end
    /// in time.
    #[cold]
    #[inline(never)]
    fn wait_for_other_thread(&self) -> bool {
        let started = Instant::now();
        loop {
            // SAFETY: the GIL is held on entry (the caller has a token); it is released and
            // taken back for this thread's own state.
            unsafe {
                let state = ffi::PyEval_SaveThread();
                std::thread::yield_now();
                ffi::PyEval_RestoreThread(state);
            }
            if self.owner.get().is_null() {
                return true;
            }
            if started.elapsed() > OTHER_THREAD_PATIENCE {
                if !WARNED_OTHER_THREAD.swap(true, Ordering::Relaxed) {
                    eprintln!(
                        "retrace: warning: a thread held the recorder's state for over {} s without the GIL; calls of other threads made meanwhile were not recorded",
                        OTHER_THREAD_PATIENCE.as_secs()
                    );
                }
                return false;
            }
        }
    }

    /// In a forked child, frees the value if a thread that the fork left behind was using it
    /// (the child has only the forking thread, and that use will never end).
    ///
    /// # Safety
    /// Called in the child right after `fork`, before it runs any other code of ours.
    pub unsafe fn free_after_fork(&self) {
        // SAFETY: a plain read of this thread's state pointer: NULL, never a fatal error,
        // when the forking thread has none.
        let me = unsafe { ffi::PyGILState_GetThisThreadState() };
        if self.owner.get() != me {
            self.owner.set(std::ptr::null_mut());
        }
    }

    /// Access when the interpreter is finalized and no other thread can run Python code
    /// (the `Py_AtExit` callback), or in a freshly forked child.
    ///
    /// # Safety
    /// No other thread may access the cell concurrently.
    pub unsafe fn with_unchecked<R>(&self, f: impl FnOnce(&mut T) -> R) -> Option<R> {
        if !self.owner.get().is_null() {
            return None;
        }
        // SAFETY: the value is free, and the caller guarantees exclusive access.
        Some(unsafe { self.use_as(UNCHECKED_OWNER, f) })
    }
}

/// A [`GilCell`] for a value whose users run nothing that could give up the GIL (plain
/// Rust on plain data: no Python calls, no reference released), so that no other thread can
/// find it in use: a busy flag, answering re-entrance with `None`, is all it needs. Cheaper
/// on the hot path, which reads two of these on every lock operation.
pub struct LeafCell<T> {
    busy: Cell<bool>,
    value: UnsafeCell<T>,
}

// SAFETY: as for `GilCell`: every access holds the GIL, and no user gives it up.
unsafe impl<T> Sync for LeafCell<T> {}

impl<T> LeafCell<T> {
    pub const fn new(value: T) -> Self {
        LeafCell { busy: Cell::new(false), value: UnsafeCell::new(value) }
    }

    /// Runs `f` with exclusive access, or returns `None` if the value is already in use
    /// further up this thread's stack. `f` must not give up the GIL.
    #[inline(always)]
    pub fn with<R>(&self, _py: Python<'_>, f: impl FnOnce(&mut T) -> R) -> Option<R> {
        if self.busy.replace(true) {
            return None;
        }
        let _release = ResetOnDrop(&self.busy, false);
        // SAFETY: the GIL is held (the token proves it), `busy` guarantees no other reference
        // on this thread, and no user gives the GIL up, so no other thread runs here.
        let value = unsafe { &mut *self.value.get() };
        Some(f(value))
    }
}

/// A Python string made on first use and kept for good: what `pyo3::intern!` gives,
/// without pyo3's once-cell, which detaches from the interpreter (gives up the GIL) while
/// it first fills the cell. Our hooks use names while our state is borrowed, where giving
/// up the GIL lets another thread in (see [`GilCell`]). Filling this one needs no detaching:
/// every user holds the GIL, so no two threads run the filling at once.
pub struct Interned {
    text: &'static str,
    object: std::sync::OnceLock<pyo3::Py<pyo3::types::PyString>>,
}

impl Interned {
    pub const fn new(text: &'static str) -> Self {
        Interned { text, object: std::sync::OnceLock::new() }
    }

    pub fn get<'py>(&'static self, py: Python<'py>) -> &'py pyo3::Bound<'py, pyo3::types::PyString> {
        self.object.get_or_init(|| pyo3::types::PyString::intern(py, self.text).unbind()).bind(py)
    }
}

/// `pyo3::intern!`, by way of [`Interned`].
#[macro_export]
macro_rules! interned {
    ($py:expr, $text:literal) => {{
        static INTERNED: $crate::gil::Interned = $crate::gil::Interned::new($text);
        INTERNED.get($py)
    }};
}

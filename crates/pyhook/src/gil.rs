//! State shared by every hook, protected by the GIL instead of a lock.
//!
//! Every proxy runs with the GIL held, so the GIL already serialises access to the
//! recorder's state; a mutex on top would only cost time on the hot path. The `busy` flag
//! catches re-entrance (our own code calling back into a hook while the state is
//! borrowed), which is answered with `None` and treated as pass-through.

use pyo3::Python;
use std::cell::{Cell, UnsafeCell};

pub struct GilCell<T> {
    busy: Cell<bool>,
    value: UnsafeCell<T>,
}

// SAFETY: every access goes through `with`, which requires a `Python` token (proof that the
// GIL is held), and the GIL lets only one thread run our code at a time.
unsafe impl<T> Sync for GilCell<T> {}

impl<T> GilCell<T> {
    pub const fn new(value: T) -> Self {
        GilCell { busy: Cell::new(false), value: UnsafeCell::new(value) }
    }

    /// Runs `f` with exclusive access, or returns `None` if the state is already borrowed
    /// further up this thread's stack. Always inlined: it is a flag test around `f`, on
    /// every intercepted call, where a call's entry and exit cost more than the test.
    #[inline(always)]
    pub fn with<R>(&self, _py: Python<'_>, f: impl FnOnce(&mut T) -> R) -> Option<R> {
        if self.busy.replace(true) {
            return None;
        }
        struct Release<'a>(&'a Cell<bool>);
        impl Drop for Release<'_> {
            fn drop(&mut self) {
                self.0.set(false);
            }
        }
        let _release = Release(&self.busy);
        // SAFETY: the GIL is held (the token proves it) and `busy` guarantees no other
        // reference to the value exists on this thread; no other thread can run here.
        let value = unsafe { &mut *self.value.get() };
        Some(f(value))
    }

    /// Access when the interpreter is finalized and no other thread can run Python code
    /// (the `Py_AtExit` callback), or in a freshly forked child.
    ///
    /// # Safety
    /// No other thread may access the cell concurrently.
    pub unsafe fn with_unchecked<R>(&self, f: impl FnOnce(&mut T) -> R) -> Option<R> {
        // SAFETY: the caller guarantees exclusive access.
        let py = unsafe { Python::assume_attached() };
        self.with(py, f)
    }
}

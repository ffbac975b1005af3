//! Calling back into our state when a Python object dies: a weak reference whose callback is
//! a builtin function bound to the object's address (as an int), so the state kept by
//! address is dropped before another object can take the address.

use pyo3::ffi;
use std::cell::UnsafeCell;
use std::ffi::CStr;

/// The callback: receives the address it was bound to (an int) and the dead weak reference.
pub type Forget = unsafe extern "C-unwind" fn(*mut ffi::PyObject, *mut ffi::PyObject) -> *mut ffi::PyObject;

/// A builtin function definition for [`DeathCallback::watch`].
pub struct DeathCallback(UnsafeCell<ffi::PyMethodDef>);

// SAFETY: never written after its static initialisation; CPython only reads it.
unsafe impl Sync for DeathCallback {}

impl DeathCallback {
    pub const fn new(name: &'static CStr, forget: Forget) -> Self {
        DeathCallback(UnsafeCell::new(ffi::PyMethodDef {
            ml_name: name.as_ptr(),
            ml_meth: ffi::PyMethodDefPointer {
                // SAFETY: the same C calling convention; "C-unwind" only lets a forced unwind
                // through.
                PyCFunction: unsafe { std::mem::transmute::<Forget, ffi::PyCFunction>(forget) },
            },
            ml_flags: ffi::METH_O,
            ml_doc: std::ptr::null(),
        }))
    }

    /// Arranges for the callback to run, with `obj`'s address, when `obj` dies. The weak
    /// reference must live as long as `obj`: it is kept (leaked) on purpose, one small object
    /// per watched object. False (the error cleared) when that cannot be arranged.
    ///
    /// # Safety
    /// GIL held; `obj` live and weakly referenceable.
    pub unsafe fn watch(&'static self, obj: *mut ffi::PyObject) -> bool {
        // SAFETY: per the function's contract; the definition lives forever.
        unsafe {
            let address = ffi::PyLong_FromSize_t(obj as usize);
            let callback = if address.is_null() { address } else { ffi::PyCFunction_NewEx(self.0.get(), address, std::ptr::null_mut()) };
            ffi::Py_XDECREF(address);
            let weak = if callback.is_null() { callback } else { ffi::PyWeakref_NewRef(obj, callback) };
            ffi::Py_XDECREF(callback);
            if weak.is_null() {
                ffi::PyErr_Clear();
                return false;
            }
            true
        }
    }
}

/// The address a callback was bound to by [`DeathCallback::watch`].
///
/// # Safety
/// GIL held; `bound` the int the callback received.
pub unsafe fn address_of(bound: *mut ffi::PyObject) -> usize {
    // SAFETY: per the function's contract.
    unsafe {
        let address = ffi::PyLong_AsSize_t(bound);
        ffi::PyErr_Clear();
        address
    }
}

//! Exceptions raised by boundary calls: stored by type name, arguments and a few
//! attributes (errno comes along in `args`, as CPython's OSError keeps it), and rebuilt at
//! replay only from types found in modules that are already imported.

use crate::codec::{decode_value, encode_object, is_encodable, qualified_name, resolve_qualified};
use pyo3::ffi;
use retrace_recorder::{ChunkEncoder, RecordedError, Value};
use std::ffi::CString;

/// Attributes of OSError that its `args` do not carry.
const OS_ERROR_ATTRS: [&std::ffi::CStr; 2] = [c"filename", c"filename2"];

/// Records the exception currently set (it stays set) as a RAISE event.
///
/// # Safety
/// An exception must be set and the GIL held.
// PyErr_Fetch/Restore are deprecated from 3.12 on but present through 3.13, and they are
// the one pair that exists on every version we build for.
#[allow(deprecated)]
pub unsafe fn record_raise(enc: &mut ChunkEncoder, fn_id: u32, digest: Option<u32>) {
    // SAFETY: fetch/normalize/restore keep the exception intact for the caller; attribute
    // reads on exception instances run no user code for builtin exception types.
    unsafe {
        let mut ty = std::ptr::null_mut();
        let mut val = std::ptr::null_mut();
        let mut tb = std::ptr::null_mut();
        ffi::PyErr_Fetch(&mut ty, &mut val, &mut tb);
        ffi::PyErr_NormalizeException(&mut ty, &mut val, &mut tb);
        let name = if ty.is_null() { "builtins:RuntimeError".to_owned() } else { qualified_name(ty) };
        enc.raise(fn_id, digest, &name);
        let args = if val.is_null() {
            std::ptr::null_mut()
        } else {
            ffi::PyObject_GetAttrString(val, c"args".as_ptr())
        };
        if !args.is_null() && is_encodable(args, 0) {
            encode_object(enc, args, None);
        } else {
            ffi::PyErr_Clear();
            enc.tuple(0);
        }
        ffi::Py_XDECREF(args);
        let is_os_error = !val.is_null() && ffi::PyObject_TypeCheck(val, ffi::PyExc_OSError as _) != 0;
        let mut attrs: Vec<(&str, *mut ffi::PyObject)> = Vec::new();
        if is_os_error {
            for attr in OS_ERROR_ATTRS {
                let v = ffi::PyObject_GetAttrString(val, attr.as_ptr());
                if v.is_null() {
                    ffi::PyErr_Clear();
                } else if v != ffi::Py_None() && is_encodable(v, 0) {
                    attrs.push((attr.to_str().unwrap_or("filename"), v));
                    continue;
                }
                ffi::Py_XDECREF(v);
            }
        }
        enc.dict(attrs.len());
        for (k, v) in attrs {
            enc.str(k);
            encode_object(enc, v, None);
            ffi::Py_DECREF(v);
        }
        ffi::PyErr_Restore(ty, val, tb);
    }
}

/// Sets the recorded exception as the current exception. Returns nothing: the caller
/// returns NULL (or -1) to raise it.
///
/// # Safety
/// The GIL must be held.
pub unsafe fn raise_recorded(error: &Option<RecordedError>) {
    // None: the exception is already set (a signal handler raised it, as when recorded).
    let Some(error) = error else { return };
    // SAFETY: lookups in sys.modules and calls of exception constructors.
    unsafe {
        let ty = resolve_exception_type(&error.type_name);
        let args = match &error.args {
            Value::Tuple(_) => decode_value(&error.args),
            _ => ffi::PyTuple_New(0),
        };
        let instance = if ty.is_null() || args.is_null() {
            std::ptr::null_mut()
        } else {
            ffi::PyObject_Call(ty, args, std::ptr::null_mut())
        };
        ffi::Py_XDECREF(args);
        if instance.is_null() {
            ffi::PyErr_Clear();
            let msg = CString::new(format!(
                "retrace: the recorded exception {} could not be rebuilt at replay",
                error.type_name
            ))
            .unwrap_or_default();
            ffi::PyErr_SetString(ffi::PyExc_RuntimeError, msg.as_ptr());
            ffi::Py_XDECREF(ty);
            return;
        }
        if let Value::Dict(pairs) = &error.attrs {
            for (k, v) in pairs {
                if let Value::Str(name) = k {
                    if let Ok(cname) = CString::new(name.as_str()) {
                        let o = decode_value(v);
                        if !o.is_null() && ffi::PyObject_SetAttrString(instance, cname.as_ptr(), o) < 0 {
                            ffi::PyErr_Clear();
                        }
                        ffi::Py_XDECREF(o);
                    }
                }
            }
        }
        ffi::PyErr_SetObject(ffi::Py_TYPE(instance) as *mut ffi::PyObject, instance);
        ffi::Py_DECREF(instance);
        ffi::Py_XDECREF(ty);
    }
}

/// The recorded exception's type, if it is an exception type of an imported module.
/// Returns a new reference, or NULL.
///
/// # Safety
/// The GIL must be held.
unsafe fn resolve_exception_type(name: &str) -> *mut ffi::PyObject {
    // SAFETY: lookups through resolve_qualified, then a type check.
    unsafe {
        let obj = resolve_qualified(name);
        if obj.is_null() {
            return obj;
        }
        if ffi::PyType_Check(obj) != 0
            && ffi::PyType_IsSubtype(obj as *mut ffi::PyTypeObject, ffi::PyExc_BaseException as _) != 0
        {
            obj
        } else {
            ffi::Py_DECREF(obj);
            std::ptr::null_mut()
        }
    }
}

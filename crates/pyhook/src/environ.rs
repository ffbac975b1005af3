//! Environment variables, recorded per read.
//!
//! `os.environ` keeps its data in a plain dict, `os.environ._data` (bytes to bytes on
//! POSIX), and every read goes through it: `environ[k]`, `get`, `in`, iteration, `len`,
//! `copy()`. We replace that dict with an [`EnvData`], a dict subclass written in C, whose
//! reads are boundary calls. `os._Environ`'s own Python code still runs, so tracebacks
//! (a `KeyError` from `os.environ['MISSING']`) look exactly as without us, and nothing is
//! recorded about variables the program never reads.
//!
//! Values of variables whose names look secret are stored as their length only.

use crate::codec::{decode_value, digest_object};
use crate::dispatch::{boundary, is_active, record_outcome, record_with, replay_take};
use crate::exceptions::raise_recorded;
use crate::hooks::{hook, HookId};
use crate::session::{mode, Replayed, MODE_RECORD, MODE_REPLAY};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use retrace_recorder::Value;
use xxhash_rust::xxh3::Xxh3Default;

#[pyclass(extends = PyDict, module = "retrace._pyhook")]
pub struct EnvData;

#[pymethods]
impl EnvData {
    #[new]
    #[pyo3(signature = (*_args, **_kwargs))]
    fn new(_args: &Bound<'_, PyAny>, _kwargs: Option<&Bound<'_, PyAny>>) -> Self {
        // dict.__init__ (inherited) fills the data from the constructor's arguments.
        EnvData
    }

    fn __getitem__<'py>(slf: &Bound<'py, Self>, key: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        // SAFETY: the GIL is held; the result is a new reference or NULL with an exception.
        unsafe { Bound::from_owned_ptr_or_err(py, env_get(slf.as_ptr(), key.as_ptr())) }
    }

    fn __iter__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let dict = slf.as_ptr();
        // SAFETY: the GIL is held; PyDict_Keys returns a new list of the base dict's keys.
        let keys = unsafe {
            Bound::from_owned_ptr_or_err(
                py,
                boundary(hook(HookId::environ_keys), || hook(HookId::environ_keys).digest(|| 0), || ffi::PyDict_Keys(dict)),
            )?
        };
        keys.try_iter().map(Bound::into_any)
    }

    fn __len__(slf: &Bound<'_, Self>) -> PyResult<usize> {
        let py = slf.py();
        let dict = slf.as_ptr();
        // SAFETY: the GIL is held; PyDict_Size reads the base dict.
        let len = unsafe {
            Bound::from_owned_ptr_or_err(
                py,
                boundary(hook(HookId::environ_len), || hook(HookId::environ_len).digest(|| 0), || ffi::PyLong_FromSsize_t(ffi::PyDict_Size(dict))),
            )?
        };
        len.extract()
    }
}

/// # Safety
/// GIL held; `dict` is an EnvData, `key` live.
unsafe fn env_get(dict: *mut ffi::PyObject, key: *mut ffi::PyObject) -> *mut ffi::PyObject {
    // SAFETY: see the function's contract.
    unsafe {
        let hook = hook(HookId::environ_get);
        let lookup = || {
            let v = ffi::PyDict_GetItemWithError(dict, key);
            if v.is_null() {
                if ffi::PyErr_Occurred().is_null() {
                    ffi::PyErr_SetObject(ffi::PyExc_KeyError, key);
                }
                return std::ptr::null_mut();
            }
            ffi::Py_INCREF(v);
            v
        };
        let digest = hook.digest(|| {
            let mut hasher = Xxh3Default::new();
            digest_object(&mut hasher, key, 0);
            hasher.digest() as u32
        });
        match mode() {
            MODE_RECORD if is_active() => {
                let value = lookup();
                match secret_len(key, value) {
                    Some(len) => record_with(hook, |rec| {
                        rec.enc.call(hook.id, digest);
                        rec.enc.redacted(len);
                    }),
                    None => record_outcome(hook, digest, value),
                }
                value
            }
            MODE_REPLAY if is_active() => match replay_take(hook, digest) {
                Replayed::Value(Value::Redacted(len)) => {
                    let stars = vec![b'*'; len as usize];
                    ffi::PyBytes_FromStringAndSize(stars.as_ptr().cast(), stars.len() as ffi::Py_ssize_t)
                }
                Replayed::Value(v) => decode_value(&v),
                Replayed::Raise(e) => {
                    raise_recorded(&e);
                    std::ptr::null_mut()
                }
            },
            _ => lookup(),
        }
    }
}

/// The length of the value when the variable's name looks like it holds a secret.
///
/// # Safety
/// GIL held; `key` live, `value` live or NULL.
unsafe fn secret_len(key: *mut ffi::PyObject, value: *mut ffi::PyObject) -> Option<u64> {
    // SAFETY: reads of exact bytes/str objects.
    unsafe {
        if value.is_null() || ffi::PyBytes_Check(value) == 0 {
            return None;
        }
        let name = if ffi::PyBytes_Check(key) != 0 {
            let len = ffi::PyBytes_Size(key);
            std::slice::from_raw_parts(ffi::PyBytes_AsString(key) as *const u8, len as usize)
        } else {
            crate::codec::utf8_of(key)?
        };
        is_secret_name(name).then(|| ffi::PyBytes_Size(value) as u64)
    }
}

/// Names that usually hold credentials. Matching is deliberately broad: a false positive
/// only costs the replay a placeholder value, a false negative leaks a secret.
pub fn is_secret_name(name: &[u8]) -> bool {
    let upper = String::from_utf8_lossy(name).to_ascii_uppercase();
    const MARKERS: [&str; 10] = [
        "SECRET", "PASSWORD", "PASSWD", "TOKEN", "CREDENTIAL", "PRIVATE", "API_KEY", "APIKEY", "AUTH", "COOKIE",
    ];
    MARKERS.iter().any(|m| upper.contains(m))
        || upper.ends_with("_KEY")
        || upper.ends_with("_DSN")
        || upper.ends_with("DATABASE_URL")
}

#[cfg(test)]
mod tests {
    use super::is_secret_name;

    #[test]
    fn secret_names() {
        for name in ["AWS_SECRET_ACCESS_KEY", "GITHUB_TOKEN", "db_password", "STRIPE_API_KEY", "SENTRY_DSN", "DATABASE_URL"] {
            assert!(is_secret_name(name.as_bytes()), "{name}");
        }
        for name in ["HOME", "PATH", "LANG", "PWD", "ORDER_FILE"] {
            assert!(!is_secret_name(name.as_bytes()), "{name}");
        }
    }
}

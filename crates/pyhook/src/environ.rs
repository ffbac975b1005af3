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

use std::sync::atomic::{AtomicBool, Ordering};
use crate::codec::{decode_value, digest_object};
use crate::dispatch::{boundary, is_active, record_outcome, record_with, replay_take};
use crate::gil::GilCell;
use crate::exceptions::raise_recorded;
use crate::hooks::{hook, HookId};
use crate::session::{mode, Replayed, MODE_RECORD, MODE_REPLAY};
use memchr::memmem::Finder;
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
                match secret_of(key, value) {
                    Some(Secret::Whole(text)) => {
                        remember_secret(text);
                        record_with(hook, |rec| {
                            rec.enc.call(hook.id, digest);
                            rec.enc.redacted(text.len() as u64);
                        });
                    }
                    Some(Secret::Password(text, span)) => {
                        // The URL keeps its shape (drivers parse it); only the password goes.
                        remember_secret(&text[span.clone()]);
                        let mut masked = text.to_vec();
                        masked[span].fill(b'*');
                        record_with(hook, |rec| {
                            rec.enc.call(hook.id, digest);
                            rec.enc.bytes(&masked);
                        });
                    }
                    None => record_outcome(hook, digest, value),
                }
                value
            }
            MODE_REPLAY if is_active() => match replay_take(hook, digest) {
                Replayed::Value(Value::Redacted(len)) => {
                    let stars = vec![b'*'; len.min(crate::codec::MAX_REDACTED_LEN) as usize];
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

/// What of a variable's value must not be stored.
enum Secret<'a> {
    /// The whole value (a secret-looking name).
    Whole(&'a [u8]),
    /// The password inside a URL.
    Password(&'a [u8], std::ops::Range<usize>),
}

/// # Safety
/// GIL held; `key` live, `value` live or NULL; the result borrows `value`.
unsafe fn secret_of<'a>(key: *mut ffi::PyObject, value: *mut ffi::PyObject) -> Option<Secret<'a>> {
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
        let len = ffi::PyBytes_Size(value);
        let text = std::slice::from_raw_parts(ffi::PyBytes_AsString(value) as *const u8, len as usize);
        if is_secret_name(name) {
            Some(Secret::Whole(text))
        } else {
            password_span(text).map(|span| Secret::Password(text, span))
        }
    }
}

/// The secret values redacted so far in this recording, as searchers: every str and bytes
/// argument of a recorded call is searched for each (see [`as_replay_sees`]), so the search
/// must cost little next to the call.
static SECRETS: GilCell<Vec<Finder<'static>>> = GilCell::new(Vec::new());

/// Whether [`SECRETS`] holds any: most programs have none, and their digests then skip the
/// borrow (a call into the interpreter for the thread state, after a socket call's system
/// call has left little of ours in cache).
static ANY_SECRETS: AtomicBool = AtomicBool::new(false);

/// Placeholders only make sense for values long enough not to occur by chance.
const MIN_SECRET_LEN: usize = 4;

fn remember_secret(value: &[u8]) {
    if value.len() < MIN_SECRET_LEN {
        return;
    }
    // SAFETY: only called from hooks, with the GIL held.
    let py = unsafe { crate::session::py() };
    SECRETS.with(py, |secrets| {
        if !secrets.iter().any(|s| s.needle() == value) {
            secrets.push(Finder::new(value).into_owned());
            ANY_SECRETS.store(true, Ordering::Relaxed);
        }
    });
}

/// Whether any secret is masked in digests (see [`as_replay_sees`]).
#[inline(always)]
pub fn any_secrets() -> bool {
    ANY_SECRETS.load(Ordering::Relaxed)
}

/// Feeds `text` to `feed` as a replay will see it: at replay a redacted secret is `*`s of
/// the same length, and the program builds its arguments from that (a connection string,
/// a header). Digesting the recorded arguments with the secrets replaced the same way keeps
/// those calls matching, and keeps secrets out of the digests too.
pub fn as_replay_sees(text: &[u8], feed: impl FnOnce(&[u8])) {
    if !any_secrets() {
        return feed(text);
    }
    // SAFETY: digests are computed in hooks, with the GIL held.
    let py = unsafe { crate::session::py() };
    let replaced = SECRETS.with(py, |secrets| masked(text, secrets)).flatten();
    match replaced {
        Some(bytes) => feed(&bytes),
        None => feed(text),
    }
}

/// `text` with every occurrence of each secret replaced by as many `*`s, secrets taken in
/// order; None when none occurs (the common case, which allocates nothing).
fn masked(text: &[u8], secrets: &[Finder<'_>]) -> Option<Vec<u8>> {
    let mut out: Option<Vec<u8>> = None;
    for secret in secrets {
        let current = out.as_deref().unwrap_or(text);
        let Some(first) = secret.find(current) else {
            continue;
        };
        let len = secret.needle().len();
        let mut next = Vec::with_capacity(current.len());
        let mut rest = current;
        let mut found = Some(first);
        while let Some(at) = found {
            next.extend_from_slice(&rest[..at]);
            next.extend(std::iter::repeat_n(b'*', len));
            rest = &rest[at + len..];
            found = secret.find(rest);
        }
        next.extend_from_slice(rest);
        out = Some(next);
    }
    out
}

/// Where the password is in a URL that carries one (`scheme://user:password@host...`),
/// whatever the variable's name: connection strings are where passwords hide.
pub fn password_span(value: &[u8]) -> Option<std::ops::Range<usize>> {
    // libpq's keyword form: `host=db user=app password=s3cret`.
    if let Some(at) = value.windows(9).position(|w| w.eq_ignore_ascii_case(b"password=")) {
        let start = at + 9;
        let len = value[start..].iter().position(|b| b.is_ascii_whitespace()).unwrap_or(value.len() - start);
        return (len > 0).then(|| start..start + len);
    }
    let start = value.windows(3).position(|w| w == b"://")? + 3;
    let authority_len = value[start..].iter().position(|&b| b == b'/').unwrap_or(value.len() - start);
    let authority = &value[start..start + authority_len];
    let at = authority.iter().rposition(|&b| b == b'@')?;
    let colon = authority[..at].iter().position(|&b| b == b':')?;
    (colon + 1 < at).then(|| start + colon + 1..start + at)
}

/// Names that usually hold credentials (connection strings are handled by their password instead, see `password_span`). Matching is deliberately broad: a false positive
/// only costs the replay a placeholder value, a false negative leaks a secret.
pub fn is_secret_name(name: &[u8]) -> bool {
    let upper = String::from_utf8_lossy(name).to_ascii_uppercase();
    const MARKERS: [&str; 10] = [
        "SECRET", "PASSWORD", "PASSWD", "TOKEN", "CREDENTIAL", "PRIVATE", "API_KEY", "APIKEY", "AUTH", "COOKIE",
    ];
    MARKERS.iter().any(|m| upper.contains(m)) || upper.ends_with("_KEY")
}

#[cfg(test)]
mod tests {
    use super::is_secret_name;

    #[test]
    fn secret_names() {
        for name in ["AWS_SECRET_ACCESS_KEY", "GITHUB_TOKEN", "db_password", "STRIPE_API_KEY"] {
            assert!(is_secret_name(name.as_bytes()), "{name}");
        }
        for name in ["HOME", "PATH", "LANG", "PWD", "ORDER_FILE"] {
            assert!(!is_secret_name(name.as_bytes()), "{name}");
        }
    }

    #[test]
    fn masking_replaces_every_occurrence_of_each_secret() {
        use super::masked;
        use memchr::memmem::Finder;
        let secrets = [Finder::new(b"s3cret"), Finder::new(b"tok")];
        assert_eq!(masked(b"nothing here", &secrets), None);
        assert_eq!(masked(b"s3cret", &secrets).unwrap(), b"******");
        assert_eq!(
            masked(b"a=s3cret&b=s3crets3cret;tok", &secrets).unwrap(),
            b"a=******&b=************;***"
        );
        // Occurrences do not overlap: the leftmost wins, as a scan from the start finds them.
        assert_eq!(masked(b"aaaa", &[Finder::new(b"aaa")]).unwrap(), b"***a");
        assert_eq!(masked(b"", &secrets), None);
    }

    #[test]
    fn urls_with_passwords() {
        use super::password_span;
        let url = b"postgresql://app:s3cret@db:5432/app";
        assert_eq!(&url[password_span(url).unwrap()], b"s3cret");
        let url = b"redis://:pw@cache/0";
        assert_eq!(&url[password_span(url).unwrap()], b"pw");
        assert_eq!(password_span(b"https://example.com/a@b"), None);
        assert_eq!(password_span(b"postgresql://app@db/app"), None);
        assert_eq!(password_span(b"/usr/bin:/bin"), None);
        let dsn = b"host=db user=app password=s3cret dbname=app";
        assert_eq!(&dsn[password_span(dsn).unwrap()], b"s3cret");
    }
}

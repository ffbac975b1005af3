//! One intercepted call, whatever C calling convention the patched function uses.
//!
//! CPython changes conventions between versions (`_io.FileIO.read` is `METH_FASTCALL` on
//! 3.11 and `METH_METHOD | METH_FASTCALL | METH_KEYWORDS` on 3.12), so every hook gets a
//! proxy per convention and the one matching the live `ml_flags` is installed. The proxy
//! wraps its raw arguments in a [`RawCall`], which can forward them unchanged to the
//! original and gives the hook a uniform view of the arguments.

use pyo3::ffi;
use std::os::raw::{c_int, c_void};
use xxhash_rust::xxh3::Xxh3Default;

/// C signatures of the conventions, spelled out here so that every proxy and its original
/// agree exactly (pyo3-ffi's aliases differ in pointer mutability between conventions).
pub type NoArgsFn = unsafe extern "C-unwind" fn(*mut ffi::PyObject, *mut ffi::PyObject) -> *mut ffi::PyObject;
pub type VarArgsKwFn =
    unsafe extern "C-unwind" fn(*mut ffi::PyObject, *mut ffi::PyObject, *mut ffi::PyObject) -> *mut ffi::PyObject;
pub type FastFn =
    unsafe extern "C-unwind" fn(*mut ffi::PyObject, *const *mut ffi::PyObject, ffi::Py_ssize_t) -> *mut ffi::PyObject;
pub type FastKwFn = unsafe extern "C-unwind" fn(
    *mut ffi::PyObject,
    *const *mut ffi::PyObject,
    ffi::Py_ssize_t,
    *mut ffi::PyObject,
) -> *mut ffi::PyObject;
pub type MethodFastKwFn = unsafe extern "C-unwind" fn(
    *mut ffi::PyObject,
    *mut ffi::PyTypeObject,
    *const *mut ffi::PyObject,
    ffi::Py_ssize_t,
    *mut ffi::PyObject,
) -> *mut ffi::PyObject;
pub type IterNextFn = unsafe extern "C-unwind" fn(*mut ffi::PyObject) -> *mut ffi::PyObject;
pub type InitFn = unsafe extern "C-unwind" fn(*mut ffi::PyObject, *mut ffi::PyObject, *mut ffi::PyObject) -> c_int;

/// The calling conventions we can proxy (the `ml_flags` bits that decide a C signature),
/// plus the `tp_init` slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Convention {
    NoArgs,
    O,
    VarArgs,
    VarArgsKw,
    Fast,
    FastKw,
    MethodFastKw,
    InitSlot,
    IterNextSlot,
}

impl Convention {
    /// The convention a method definition uses, ignoring the binding flags
    /// (`METH_CLASS`, `METH_STATIC`, `METH_COEXIST`) that do not change the C signature.
    pub fn from_flags(flags: c_int) -> Option<Convention> {
        let call_bits = flags & !(ffi::METH_CLASS | ffi::METH_STATIC | ffi::METH_COEXIST);
        Some(match call_bits {
            ffi::METH_NOARGS => Convention::NoArgs,
            ffi::METH_O => Convention::O,
            ffi::METH_VARARGS => Convention::VarArgs,
            x if x == ffi::METH_VARARGS | ffi::METH_KEYWORDS => Convention::VarArgsKw,
            ffi::METH_FASTCALL => Convention::Fast,
            x if x == ffi::METH_FASTCALL | ffi::METH_KEYWORDS => Convention::FastKw,
            x if x == ffi::METH_METHOD | ffi::METH_FASTCALL | ffi::METH_KEYWORDS => {
                Convention::MethodFastKw
            }
            _ => return None,
        })
    }
}

/// The raw arguments of one call, exactly as CPython passed them to the proxy.
#[derive(Clone, Copy)]
pub enum RawCall {
    NoArgs {
        slf: *mut ffi::PyObject,
        unused: *mut ffi::PyObject,
    },
    O {
        slf: *mut ffi::PyObject,
        arg: *mut ffi::PyObject,
    },
    VarArgs {
        slf: *mut ffi::PyObject,
        args: *mut ffi::PyObject,
    },
    VarArgsKw {
        slf: *mut ffi::PyObject,
        args: *mut ffi::PyObject,
        kwargs: *mut ffi::PyObject,
    },
    Fast {
        slf: *mut ffi::PyObject,
        args: *const *mut ffi::PyObject,
        nargs: ffi::Py_ssize_t,
    },
    FastKw {
        slf: *mut ffi::PyObject,
        args: *const *mut ffi::PyObject,
        nargs: ffi::Py_ssize_t,
        kwnames: *mut ffi::PyObject,
    },
    MethodFastKw {
        slf: *mut ffi::PyObject,
        cls: *mut ffi::PyTypeObject,
        args: *const *mut ffi::PyObject,
        nargs: ffi::Py_ssize_t,
        kwnames: *mut ffi::PyObject,
    },
}

/// What an `__init__` slot receives: `self`, the positional tuple and the keyword dict.
#[derive(Clone, Copy)]
pub struct InitCall {
    pub slf: *mut ffi::PyObject,
    pub args: *mut ffi::PyObject,
    pub kwargs: *mut ffi::PyObject,
}

impl RawCall {
    pub fn slf(&self) -> *mut ffi::PyObject {
        match *self {
            RawCall::NoArgs { slf, .. }
            | RawCall::O { slf, .. }
            | RawCall::VarArgs { slf, .. }
            | RawCall::VarArgsKw { slf, .. }
            | RawCall::Fast { slf, .. }
            | RawCall::FastKw { slf, .. }
            | RawCall::MethodFastKw { slf, .. } => slf,
        }
    }

    /// Forwards the call, unchanged, to the original C function.
    ///
    /// # Safety
    /// `original` must be the function this proxy replaced, of the same convention, and
    /// the GIL must be held.
    #[inline(always)]
    pub unsafe fn call_original(&self, original: *mut c_void) -> *mut ffi::PyObject {
        // SAFETY: the caller guarantees `original` has the signature matching this variant,
        // which is the convention the installed proxy was chosen for.
        unsafe {
            match *self {
                RawCall::NoArgs { slf, unused } | RawCall::O { slf, arg: unused } => {
                    let f: NoArgsFn = std::mem::transmute(original);
                    f(slf, unused)
                }
                RawCall::VarArgs { slf, args } => {
                    let f: NoArgsFn = std::mem::transmute(original);
                    f(slf, args)
                }
                RawCall::VarArgsKw { slf, args, kwargs } => {
                    let f: VarArgsKwFn = std::mem::transmute(original);
                    f(slf, args, kwargs)
                }
                RawCall::Fast { slf, args, nargs } => {
                    let f: FastFn = std::mem::transmute(original);
                    f(slf, args, nargs)
                }
                RawCall::FastKw { slf, args, nargs, kwnames } => {
                    let f: FastKwFn = std::mem::transmute(original);
                    f(slf, args, nargs, kwnames)
                }
                RawCall::MethodFastKw { slf, cls, args, nargs, kwnames } => {
                    let f: MethodFastKwFn = std::mem::transmute(original);
                    f(slf, cls, args, nargs, kwnames)
                }
            }
        }
    }

    /// Forwards the call to the original C function with other positional arguments
    /// (borrowed), the keywords unchanged.
    ///
    /// # Safety
    /// As for [`RawCall::call_original`]; `positional` live for the call.
    pub unsafe fn call_with_positional(&self, positional: &[*mut ffi::PyObject], original: *mut c_void) -> *mut ffi::PyObject {
        // SAFETY: per the caller's guarantee; the argument arrays and tuples built here live
        // until the original returns.
        unsafe {
            let nargs = positional.len() as ffi::Py_ssize_t;
            let with_keywords = |kwnames: *mut ffi::PyObject, args: *const *mut ffi::PyObject, old_nargs: ffi::Py_ssize_t| {
                let mut all = positional.to_vec();
                if !kwnames.is_null() {
                    all.extend_from_slice(raw_slice(args.offset(old_nargs), ffi::PyTuple_GET_SIZE(kwnames)));
                }
                all
            };
            match *self {
                RawCall::NoArgs { .. } => self.call_original(original),
                RawCall::O { slf, .. } => match positional.first() {
                    Some(&arg) => RawCall::O { slf, arg }.call_original(original),
                    None => self.call_original(original),
                },
                RawCall::VarArgs { slf, .. } | RawCall::VarArgsKw { slf, .. } => {
                    let tuple = ffi::PyTuple_New(nargs);
                    if tuple.is_null() {
                        return std::ptr::null_mut();
                    }
                    for (i, &a) in positional.iter().enumerate() {
                        ffi::Py_INCREF(a);
                        ffi::PyTuple_SET_ITEM(tuple, i as ffi::Py_ssize_t, a);
                    }
                    let result = match *self {
                        RawCall::VarArgsKw { kwargs, .. } => RawCall::VarArgsKw { slf, args: tuple, kwargs },
                        _ => RawCall::VarArgs { slf, args: tuple },
                    }
                    .call_original(original);
                    ffi::Py_DECREF(tuple);
                    result
                }
                RawCall::Fast { slf, .. } => RawCall::Fast { slf, args: positional.as_ptr(), nargs }.call_original(original),
                RawCall::FastKw { slf, args, nargs: old, kwnames } => {
                    let all = with_keywords(kwnames, args, old);
                    RawCall::FastKw { slf, args: all.as_ptr(), nargs, kwnames }.call_original(original)
                }
                RawCall::MethodFastKw { slf, cls, args, nargs: old, kwnames } => {
                    let all = with_keywords(kwnames, args, old);
                    RawCall::MethodFastKw { slf, cls, args: all.as_ptr(), nargs, kwnames }.call_original(original)
                }
            }
        }
    }

    /// Forwards the call with no arguments at all (neither positional nor keywords).
    ///
    /// # Safety
    /// As for [`RawCall::call_original`].
    pub unsafe fn call_bare(&self, original: *mut c_void) -> *mut ffi::PyObject {
        // SAFETY: per the caller's guarantee.
        unsafe {
            match *self {
                RawCall::VarArgsKw { slf, .. } | RawCall::VarArgs { slf, .. } => {
                    let empty = ffi::PyTuple_New(0);
                    if empty.is_null() {
                        return std::ptr::null_mut();
                    }
                    let result = match *self {
                        RawCall::VarArgsKw { .. } => RawCall::VarArgsKw { slf, args: empty, kwargs: std::ptr::null_mut() },
                        _ => RawCall::VarArgs { slf, args: empty },
                    }
                    .call_original(original);
                    ffi::Py_DECREF(empty);
                    result
                }
                RawCall::FastKw { slf, args, .. } => RawCall::FastKw { slf, args, nargs: 0, kwnames: std::ptr::null_mut() }.call_original(original),
                RawCall::MethodFastKw { slf, cls, args, .. } => {
                    RawCall::MethodFastKw { slf, cls, args, nargs: 0, kwnames: std::ptr::null_mut() }.call_original(original)
                }
                RawCall::Fast { slf, args, .. } => RawCall::Fast { slf, args, nargs: 0 }.call_original(original),
                RawCall::NoArgs { .. } | RawCall::O { .. } => self.call_original(original),
            }
        }
    }

    /// The positional arguments (borrowed references).
    pub fn positional(&self) -> &[*mut ffi::PyObject] {
        // SAFETY: CPython passes `nargs` valid pointers at `args`, and a tuple's item array
        // lives as long as the tuple, which outlives this call.
        unsafe {
            match *self {
                RawCall::NoArgs { .. } => &[],
                RawCall::O { ref arg, .. } => std::slice::from_ref(arg),
                RawCall::VarArgs { args, .. } | RawCall::VarArgsKw { args, .. } => tuple_items(args),
                RawCall::Fast { args, nargs, .. }
                | RawCall::FastKw { args, nargs, .. }
                | RawCall::MethodFastKw { args, nargs, .. } => raw_slice(args, nargs),
            }
        }
    }

    /// Looks up a keyword argument by name (borrowed), for conventions that take keywords.
    pub fn keyword(&self, name: &str) -> Option<*mut ffi::PyObject> {
        // SAFETY: kwnames is a tuple of str whose values follow the positionals in `args`;
        // kwargs is a dict or NULL. All are alive for the duration of the call.
        unsafe {
            match *self {
                RawCall::FastKw { args, nargs, kwnames, .. }
                | RawCall::MethodFastKw { args, nargs, kwnames, .. } => {
                    if kwnames.is_null() {
                        return None;
                    }
                    let names = tuple_items(kwnames);
                    let values = raw_slice(args.offset(nargs), names.len() as ffi::Py_ssize_t);
                    names
                        .iter()
                        .position(|&n| crate::codec::str_eq(n, name))
                        .map(|i| values[i])
                }
                RawCall::VarArgsKw { kwargs, .. } if !kwargs.is_null() => {
                    let key = std::ffi::CString::new(name).ok()?;
                    let v = ffi::PyDict_GetItemString(kwargs, key.as_ptr());
                    (!v.is_null()).then_some(v)
                }
                _ => None,
            }
        }
    }

    /// A cheap, deterministic digest of the arguments (not of `self`), used to notice a
    /// replay that calls the same function with other arguments.
    ///
    /// Inlined into the proxies for the most frequent argument, one short bytes object or
    /// the buffer a `recv_into` fills (see [`RawCall::one_frequent_argument_digest`]); the
    /// rest is out of line.
    #[inline(always)]
    pub fn digest(&self) -> u32 {
        // SAFETY: a RawCall only exists during the proxied call, with the GIL held and its
        // arguments alive.
        match unsafe { self.one_frequent_argument_digest() } {
            Some(digest) => digest,
            None => self.any_digest(),
        }
    }

    /// [`RawCall::digest`] of any arguments.
    #[inline(never)]
    fn any_digest(&self) -> u32 {
        // SAFETY: a RawCall only exists during the proxied call, with the GIL held and its
        // arguments alive.
        if let Some(digest) = unsafe { self.small_digest() } {
            return digest;
        }
        let mut hasher = Xxh3Default::new();
        // SAFETY: a RawCall only exists during the proxied call, with the GIL held and its
        // arguments alive; for keywords, as in `keyword`.
        unsafe {
            for &arg in self.positional() {
                crate::codec::digest_object(&mut hasher, arg, 0);
            }
            match *self {
                RawCall::FastKw { args, nargs, kwnames, .. }
                | RawCall::MethodFastKw { args, nargs, kwnames, .. }
                    if !kwnames.is_null() =>
                {
                    let names = tuple_items(kwnames);
                    let values = raw_slice(args.offset(nargs), names.len() as ffi::Py_ssize_t);
                    for (&n, &v) in names.iter().zip(values) {
                        crate::codec::digest_object(&mut hasher, n, 0);
                        crate::codec::digest_object(&mut hasher, v, 0);
                    }
                }
                RawCall::VarArgsKw { kwargs, .. } if !kwargs.is_null() => {
                    crate::codec::digest_object(&mut hasher, kwargs, 0);
                }
                _ => {}
            }
        }
        hasher.digest() as u32
    }
}

impl RawCall {
    /// The digest of a call whose one argument is the data of `send`, `sendall`, `write`
    /// (bytes of at most [`FREQUENT_BYTES_MAX`]) or the buffer of `recv_into`, `readinto` (a
    /// bytearray or memoryview), computed in the proxy: going out to the general digest,
    /// after the kernel has evicted its code, cost more than hashing. The bytes hashed are
    /// those of [`RawCall::small_digest`], so the digest is the same. None for anything else,
    /// and while secrets are masked (see `environ::as_replay_sees`).
    ///
    /// # Safety
    /// The GIL is held and the arguments are alive.
    #[inline(always)]
    unsafe fn one_frequent_argument_digest(&self) -> Option<u32> {
        // SAFETY: per this function's contract: type checks and reads of the exact builtin
        // objects the call was given.
        unsafe {
            let arg = match *self {
                RawCall::O { arg, .. } => arg,
                RawCall::VarArgs { args, .. } | RawCall::VarArgsKw { args, .. }
                    if ffi::PyTuple_GET_SIZE(args) == 1 && !self.has_keywords() =>
                {
                    ffi::PyTuple_GET_ITEM(args, 0)
                }
                RawCall::Fast { args, nargs: 1, .. } => *args,
                RawCall::FastKw { args, nargs: 1, kwnames, .. } | RawCall::MethodFastKw { args, nargs: 1, kwnames, .. }
                    if kwnames.is_null() =>
                {
                    *args
                }
                _ => return None,
            };
            if ffi::PyBytes_CheckExact(arg) != 0 {
                let data = crate::codec::bytes_of(arg);
                if data.len() > FREQUENT_BYTES_MAX || crate::environ::any_secrets() {
                    return None;
                }
                let mut buffer = [0u8; FREQUENT_BYTES_MAX + 1];
                buffer[0] = b'b';
                buffer[1..=data.len()].copy_from_slice(data);
                Some(xxhash_rust::xxh3::xxh3_64(&buffer[..=data.len()]) as u32)
            } else {
                crate::codec::buffer_kind(arg).map(|kind| BUFFER_DIGESTS[kind])
            }
        }
    }

    /// The digest of SSL `read(n, buffer)`'s arguments, a size and the buffer to fill,
    /// computed in the proxy as [`RawCall::one_frequent_argument_digest`] is: the bytes
    /// [`RawCall::small_digest`] hashes, so the same digest. None for other arguments.
    ///
    /// # Safety
    /// The GIL is held and the arguments are alive.
    #[inline(always)]
    pub unsafe fn size_and_buffer_digest(&self) -> Option<u32> {
        // SAFETY: per this function's contract: type checks and reads of the exact builtin
        // objects the call was given.
        unsafe {
            let RawCall::VarArgs { args, .. } = *self else {
                return None;
            };
            if ffi::PyTuple_GET_SIZE(args) != 2 {
                return None;
            }
            let name = crate::codec::BUFFER_DIGEST_BYTES[crate::codec::buffer_kind(ffi::PyTuple_GET_ITEM(args, 1))?];
            let mut buffer = [0u8; crate::codec::SCALAR_DIGEST_MAX + crate::codec::BUFFER_DIGEST_MAX];
            let at = crate::codec::scalar_digest_bytes(ffi::PyTuple_GET_ITEM(args, 0), &mut buffer)?;
            buffer[at..at + name.len()].copy_from_slice(name);
            Some(xxhash_rust::xxh3::xxh3_64(&buffer[..at + name.len()]) as u32)
        }
    }

    /// Whether the call was given keyword arguments.
    fn has_keywords(&self) -> bool {
        match *self {
            RawCall::FastKw { kwnames, .. } | RawCall::MethodFastKw { kwnames, .. } => !kwnames.is_null(),
            RawCall::VarArgsKw { kwargs, .. } => !kwargs.is_null(),
            _ => false,
        }
    }

    /// The digest of a call with no keywords and a few positionals that are scalars or short
    /// str or bytes (`os.urandom(16)`, `os.read(fd, n)`, `time.sleep(x)`, `sock.send(b"...")`,
    /// no arguments at all), hashed in one go from a stack buffer. The bytes are those the
    /// streaming hasher would get, so the digest is the same; the streaming hasher's set-up
    /// and finish are most of a small digest's cost.
    ///
    /// # Safety
    /// The GIL is held and the arguments are alive.
    unsafe fn small_digest(&self) -> Option<u32> {
        const MAX_ARGS: usize = 4;
        let args = self.positional();
        if self.has_keywords() || args.len() > MAX_ARGS {
            return None;
        }
        if let [arg] = args {
            // SAFETY: per this function's contract.
            if let Some(digest) = unsafe { one_argument_digest(*arg) } {
                return Some(digest);
            }
        }
        let mut buffer = [0u8; 128];
        let mut len = 0;
        for &arg in args {
            // SAFETY: per this function's contract.
            len += unsafe { argument_digest_bytes(arg, &mut buffer[len..]) }?;
        }
        Some(xxhash_rust::xxh3::xxh3_64(&buffer[..len]) as u32)
    }
}

/// The longest bytes argument [`RawCall::one_frequent_argument_digest`] hashes in the proxy.
const FREQUENT_BYTES_MAX: usize = 47;
/// The digests of a bytearray or memoryview as the only argument (see
/// `codec::BUFFER_DIGEST_BYTES`), computed at compile time.
const BUFFER_DIGESTS: [u32; 2] = [
    xxhash_rust::const_xxh3::xxh3_64(crate::codec::BUFFER_DIGEST_BYTES[0]) as u32,
    xxhash_rust::const_xxh3::xxh3_64(crate::codec::BUFFER_DIGEST_BYTES[1]) as u32,
];

/// The digest of a call's one argument (`sock.send(data)`, `sock.recv(n)`, `os.urandom(n)`,
/// the most frequent calls), from a buffer just large enough for a scalar or a short str or
/// bytes: the same bytes, so the same digest, as [`RawCall::small_digest`]'s loop and the
/// streaming hasher; None for anything longer or else, which they hash.
///
/// # Safety
/// The GIL is held and `arg` is alive.
#[inline(always)]
unsafe fn one_argument_digest(arg: *mut ffi::PyObject) -> Option<u32> {
    let mut buffer = [0u8; 48];
    // SAFETY: per this function's contract.
    let len = unsafe { argument_digest_bytes(arg, &mut buffer) }?;
    Some(xxhash_rust::xxh3::xxh3_64(&buffer[..len]) as u32)
}

/// The digest encoding of a scalar, str or bytes argument, or of one whose type the digest
/// does not look into, written to the start of `out` (see `codec::scalar_digest_bytes`,
/// `codec::text_digest_bytes`, `codec::opaque_digest_bytes`); its length, or None when it
/// is a container or a big int, or does not fit.
///
/// # Safety
/// The GIL is held and `arg` is alive.
#[inline(always)]
unsafe fn argument_digest_bytes(arg: *mut ffi::PyObject, out: &mut [u8]) -> Option<usize> {
    // SAFETY: per this function's contract.
    unsafe {
        crate::codec::scalar_digest_bytes(arg, out)
            .or_else(|| crate::codec::text_digest_bytes(arg, out))
            .or_else(|| crate::codec::opaque_digest_bytes(arg, out))
    }
}

impl InitCall {
    /// # Safety
    /// `original` must be the `tp_init` this proxy replaced; the GIL must be held.
    pub unsafe fn call_original(&self, original: *mut c_void) -> c_int {
        // SAFETY: `original` is an initproc, per the caller's guarantee.
        unsafe {
            let f: InitFn = std::mem::transmute(original);
            f(self.slf, self.args, self.kwargs)
        }
    }

    pub fn positional(&self) -> &[*mut ffi::PyObject] {
        // SAFETY: `args` is the positional tuple type_call passed to tp_init.
        unsafe { tuple_items(self.args) }
    }

    pub fn digest(&self) -> u32 {
        let mut hasher = Xxh3Default::new();
        // SAFETY: an InitCall only exists during the proxied tp_init call, with the GIL held.
        unsafe {
            for &arg in self.positional() {
                crate::codec::digest_object(&mut hasher, arg, 0);
            }
            if !self.kwargs.is_null() {
                crate::codec::digest_object(&mut hasher, self.kwargs, 0);
            }
        }
        hasher.digest() as u32
    }
}

/// # Safety
/// `tuple` must be a live tuple (or NULL, giving an empty slice).
pub unsafe fn tuple_items<'a>(tuple: *mut ffi::PyObject) -> &'a [*mut ffi::PyObject] {
    if tuple.is_null() {
        return &[];
    }
    // SAFETY: a tuple's items are stored inline after its header, `ob_size` of them.
    unsafe {
        let len = ffi::PyTuple_GET_SIZE(tuple);
        let items = (*(tuple as *mut ffi::PyTupleObject)).ob_item.as_ptr();
        raw_slice(items, len)
    }
}

/// # Safety
/// `ptr` must point to `len` valid pointers, or `len` must be 0.
unsafe fn raw_slice<'a>(
    ptr: *const *mut ffi::PyObject,
    len: ffi::Py_ssize_t,
) -> &'a [*mut ffi::PyObject] {
    if len <= 0 || ptr.is_null() {
        return &[];
    }
    // SAFETY: per the caller's guarantee.
    unsafe { std::slice::from_raw_parts(ptr, len as usize) }
}

#[cfg(test)]
mod tests {
    use xxhash_rust::xxh3::{xxh3_64, Xxh3Default};

    /// The one-shot digest of scalar arguments relies on xxh3's streaming and one-shot forms
    /// agreeing on the same bytes, however they are split.
    #[test]
    fn streaming_and_one_shot_digests_agree() {
        let pieces: [&[u8]; 4] = [b"i", &16i64.to_le_bytes(), b"N", b"f\x00\x00\x00\x00\x00\x00\xf0\x3f"];
        for count in 0..=pieces.len() {
            let mut hasher = Xxh3Default::new();
            pieces[..count].iter().for_each(|piece| hasher.update(piece));
            assert_eq!(hasher.digest(), xxh3_64(&pieces[..count].concat()));
        }
    }

    /// The digests of a bytearray or memoryview argument, computed at compile time, are
    /// those the general digest gives them at run time (`t` and the type's name).
    #[test]
    fn buffer_digests_are_those_of_their_type_names() {
        for (name, digest) in [&b"bytearray"[..], b"memoryview"].into_iter().zip(super::BUFFER_DIGESTS) {
            assert_eq!(digest, xxh3_64(&[&b"t"[..], name].concat()) as u32);
        }
    }
}

//! Python objects to trace values and back, without running Python code.
//!
//! Only exact builtin types are encoded (None, bool, int, float, str, bytes, tuple, list,
//! dict): a subclass could run arbitrary `__index__`/`__float__` code, and replay must
//! rebuild the value from the trace alone. Decoding never imports or evaluates anything.

use pyo3::ffi;
use retrace_recorder::{ChunkEncoder, Value};
use std::os::raw::c_char;
use xxhash_rust::xxh3::Xxh3Default;

const MAX_DEPTH: u32 = 32;

/// The longest placeholder a redacted value is replayed as.
pub const MAX_REDACTED_LEN: u64 = 1 << 20;

/// # Safety
/// `obj` must be a live object and the GIL held.
pub unsafe fn str_eq(obj: *mut ffi::PyObject, expected: &str) -> bool {
    // SAFETY: per the caller's guarantee; utf8_of only reads the object.
    unsafe { utf8_of(obj) == Some(expected.as_bytes()) }
}

/// The UTF-8 bytes of an exact `str` (cached inside the object by CPython), or None for
/// other types and for strings with lone surrogates.
///
/// # Safety
/// `obj` must be a live object and the GIL held.
pub unsafe fn utf8_of<'a>(obj: *mut ffi::PyObject) -> Option<&'a [u8]> {
    // SAFETY: PyUnicode_AsUTF8AndSize returns a buffer owned by the str object.
    unsafe {
        if ffi::PyUnicode_Check(obj) == 0 {
            return None;
        }
        let mut len: ffi::Py_ssize_t = 0;
        let data = ffi::PyUnicode_AsUTF8AndSize(obj, &mut len);
        if data.is_null() {
            ffi::PyErr_Clear();
            return None;
        }
        Some(std::slice::from_raw_parts(data as *const u8, len as usize))
    }
}

/// The most bytes [`scalar_digest_bytes`] writes.
pub const SCALAR_DIGEST_MAX: usize = 9;

/// The canonical digest encoding of a scalar (None, a bool, an int within i64, a float),
/// written to the start of `out`; its length, or None for any other object or when `out`
/// is too short. Shared by [`digest_object`] and the one-shot digest of small arguments
/// (`RawCall::digest`), so both hash the same bytes.
///
/// # Safety
/// `obj` must be a live object and the GIL held.
#[inline]
pub unsafe fn scalar_digest_bytes(obj: *mut ffi::PyObject, out: &mut [u8]) -> Option<usize> {
    // SAFETY: type checks and reads of exact builtin objects; no Python code runs.
    unsafe {
        if obj == ffi::Py_None() {
            *out.first_mut()? = b'N';
            Some(1)
        } else if ffi::PyBool_Check(obj) != 0 {
            *out.first_mut()? = if obj == ffi::Py_True() { b'T' } else { b'F' };
            Some(1)
        } else if ffi::PyLong_CheckExact(obj) != 0 {
            let mut overflow = 0;
            let v = ffi::PyLong_AsLongLongAndOverflow(obj, &mut overflow);
            if v == -1 {
                ffi::PyErr_Clear();
            }
            if overflow != 0 {
                return None;
            }
            let out = out.get_mut(..SCALAR_DIGEST_MAX)?;
            out[0] = b'i';
            out[1..].copy_from_slice(&v.to_le_bytes());
            Some(SCALAR_DIGEST_MAX)
        } else if ffi::PyFloat_CheckExact(obj) != 0 {
            let out = out.get_mut(..SCALAR_DIGEST_MAX)?;
            out[0] = b'f';
            out[1..].copy_from_slice(&ffi::PyFloat_AS_DOUBLE(obj).to_bits().to_le_bytes());
            Some(SCALAR_DIGEST_MAX)
        } else {
            None
        }
    }
}

/// The canonical digest encoding of an exact str (as UTF-8) or bytes object, as a replay sees
/// it (see `environ::as_replay_sees`), written to the start of `out`; its length, or None
/// when it does not fit or `obj` is something else (a str with lone surrogates included).
/// The same bytes [`digest_object`] feeds the streaming hasher.
///
/// # Safety
/// `obj` must be a live object and the GIL held.
pub unsafe fn text_digest_bytes(obj: *mut ffi::PyObject, out: &mut [u8]) -> Option<usize> {
    // SAFETY: type checks and reads of exact builtin objects; no Python code runs.
    unsafe {
        let (tag, content) = if ffi::PyBytes_CheckExact(obj) != 0 {
            (b'b', bytes_of(obj))
        } else if ffi::PyUnicode_CheckExact(obj) != 0 {
            (b's', utf8_of(obj)?)
        } else {
            return None;
        };
        // What a replay sees has the same length (a secret becomes as many `*`s): a long
        // argument is left to the streaming hasher before any scan.
        if content.len() + 1 > out.len() {
            return None;
        }
        let mut written = None;
        crate::environ::as_replay_sees(content, |seen| {
            if let Some(slot) = out.get_mut(..seen.len() + 1) {
                slot[0] = tag;
                slot[1..].copy_from_slice(seen);
                written = Some(seen.len() + 1);
            }
        });
        written
    }
}

/// The digest encoding [`digest_object`] gives an object of a type it does not look into
/// (`t` and the type's name: a `bytearray` or `memoryview` that `recv_into` fills), written
/// to the start of `out`; its length, or None for the types it does look into, or when the
/// name does not fit.
///
/// # Safety
/// `obj` must be a live object and the GIL held.
pub unsafe fn opaque_digest_bytes(obj: *mut ffi::PyObject, out: &mut [u8]) -> Option<usize> {
    // SAFETY: type checks of a live object, and its type's name.
    unsafe {
        let looked_into = ffi::PyLong_CheckExact(obj) != 0
            || ffi::PyUnicode_CheckExact(obj) != 0
            || ffi::PyBytes_CheckExact(obj) != 0
            || ffi::PyTuple_CheckExact(obj) != 0
            || ffi::PyList_CheckExact(obj) != 0
            || ffi::PyDict_CheckExact(obj) != 0
            || obj == ffi::Py_None()
            || ffi::PyBool_Check(obj) != 0
            || ffi::PyFloat_CheckExact(obj) != 0;
        if looked_into {
            return None;
        }
        if let Some(kind) = buffer_kind(obj) {
            let encoding = BUFFER_DIGEST_BYTES[kind];
            out.get_mut(..encoding.len())?.copy_from_slice(encoding);
            return Some(encoding.len());
        }
        let name = type_name_bytes(obj);
        let slot = out.get_mut(..name.len() + 1)?;
        slot[0] = b't';
        slot[1..].copy_from_slice(name);
        Some(name.len() + 1)
    }
}

/// The digest encodings of the buffers `recv_into` and `readinto` are given, by
/// [`buffer_kind`]: `t` and the type's name, as [`opaque_digest_bytes`] gives any type the
/// digest does not look into.
pub const BUFFER_DIGEST_BYTES: [&[u8]; 2] = [b"tbytearray", b"tmemoryview"];

/// The longest of [`BUFFER_DIGEST_BYTES`].
pub const BUFFER_DIGEST_MAX: usize = BUFFER_DIGEST_BYTES[1].len();

/// Which of the buffers of [`BUFFER_DIGEST_BYTES`] `obj` is (a `bytearray`, a `memoryview`),
/// told without measuring its type's name.
///
/// # Safety
/// `obj` must be a live object and the GIL held.
#[inline(always)]
pub unsafe fn buffer_kind(obj: *mut ffi::PyObject) -> Option<usize> {
    // SAFETY: type checks of a live object.
    unsafe {
        if ffi::PyByteArray_CheckExact(obj) != 0 {
            Some(0)
        } else if ffi::PyMemoryView_Check(obj) != 0 {
            Some(1)
        } else {
            None
        }
    }
}

/// Feeds a canonical encoding of `obj` into the digest. Unknown types contribute their
/// type name only: their contents may not be stable between runs (addresses).
///
/// # Safety
/// `obj` must be a live object and the GIL held.
pub unsafe fn digest_object(hasher: &mut Xxh3Default, obj: *mut ffi::PyObject, depth: u32) {
    // SAFETY: only type checks and reads of exact builtin objects; no Python code runs.
    unsafe {
        if obj.is_null() || depth > MAX_DEPTH {
            hasher.update(b"?");
            return;
        }
        let mut scalar = [0u8; SCALAR_DIGEST_MAX];
        if let Some(len) = scalar_digest_bytes(obj, &mut scalar) {
            hasher.update(&scalar[..len]);
        } else if ffi::PyLong_CheckExact(obj) != 0 {
            // Past i64 (the ints that fit are scalars above).
            hasher.update(b"ibig");
        } else if ffi::PyUnicode_CheckExact(obj) != 0 {
            hasher.update(b"s");
            match utf8_of(obj) {
                Some(bytes) => crate::environ::as_replay_sees(bytes, |b| hasher.update(b)),
                None => hasher.update(b"<surrogates>"),
            }
        } else if ffi::PyBytes_CheckExact(obj) != 0 {
            hasher.update(b"b");
            crate::environ::as_replay_sees(bytes_of(obj), |b| hasher.update(b));
        } else if ffi::PyTuple_CheckExact(obj) != 0 || ffi::PyList_CheckExact(obj) != 0 {
            hasher.update(b"(");
            let n = ffi::PySequence_Fast_GET_SIZE(obj);
            for i in 0..n {
                digest_object(hasher, ffi::PySequence_Fast_GET_ITEM(obj, i), depth + 1);
            }
            hasher.update(b")");
        } else if ffi::PyDict_CheckExact(obj) != 0 {
            hasher.update(b"{");
            let mut pos: ffi::Py_ssize_t = 0;
            let mut k = std::ptr::null_mut();
            let mut v = std::ptr::null_mut();
            while ffi::PyDict_Next(obj, &mut pos, &mut k, &mut v) != 0 {
                digest_object(hasher, k, depth + 1);
                digest_object(hasher, v, depth + 1);
            }
            hasher.update(b"}");
        } else {
            // The bytes of `opaque_digest_bytes`, which the one-shot digests use.
            hasher.update(b"t");
            hasher.update(type_name_bytes(obj));
        }
    }
}

/// # Safety
/// `obj` must be an exact bytes object.
pub unsafe fn bytes_of<'a>(obj: *mut ffi::PyObject) -> &'a [u8] {
    // SAFETY: an exact bytes object stores `ob_size` bytes inline in `ob_sval` for its
    // lifetime (read directly: the checked accessors are two calls per intercepted call).
    unsafe {
        let bytes = obj as *mut ffi::PyBytesObject;
        let len = ffi::Py_SIZE(obj);
        std::slice::from_raw_parts((*bytes).ob_sval.as_ptr() as *const u8, len as usize)
    }
}

/// # Safety
/// `obj` must be a live object.
pub unsafe fn type_name_bytes<'a>(obj: *mut ffi::PyObject) -> &'a [u8] {
    // SAFETY: tp_name is a NUL-terminated string that lives as long as the type.
    unsafe { std::ffi::CStr::from_ptr((*ffi::Py_TYPE(obj)).tp_name).to_bytes() }
}

/// Whether `encode_object` can store `obj` completely. Checked before writing anything,
/// so a chunk never holds half a value.
///
/// # Safety
/// `obj` must be a live object and the GIL held.
#[inline]
pub unsafe fn is_encodable(obj: *mut ffi::PyObject, depth: u32) -> bool {
    // SAFETY: type checks only; containers are left to `is_encodable_container`.
    unsafe {
        (obj == ffi::Py_None()
            || ffi::PyBool_Check(obj) != 0
            || ffi::PyLong_CheckExact(obj) != 0
            || ffi::PyFloat_CheckExact(obj) != 0
            || ffi::PyUnicode_CheckExact(obj) != 0
            || ffi::PyBytes_CheckExact(obj) != 0)
            || is_encodable_container(obj, depth)
    }
}

/// [`is_encodable`] for what is not a scalar: out of line, so the common scalar result is
/// decided without a call.
///
/// # Safety
/// As for [`is_encodable`].
unsafe fn is_encodable_container(obj: *mut ffi::PyObject, depth: u32) -> bool {
    // SAFETY: type checks and item reads only.
    unsafe {
        if depth > MAX_DEPTH {
            return false;
        }
        if ffi::PyTuple_CheckExact(obj) != 0 || ffi::PyList_CheckExact(obj) != 0 {
            let n = ffi::PySequence_Fast_GET_SIZE(obj);
            return (0..n).all(|i| is_encodable(ffi::PySequence_Fast_GET_ITEM(obj, i), depth + 1));
        }
        if ffi::PyDict_CheckExact(obj) != 0 {
            let mut pos: ffi::Py_ssize_t = 0;
            let mut k = std::ptr::null_mut();
            let mut v = std::ptr::null_mut();
            while ffi::PyDict_Next(obj, &mut pos, &mut k, &mut v) != 0 {
                if !is_encodable(k, depth + 1) || !is_encodable(v, depth + 1) {
                    return false;
                }
            }
            return true;
        }
        // A struct sequence holds all its fields, the hidden ones after the visible ones,
        // in the tuple's item array: checked in place, at the depth they take in the
        // `(visible, {hidden})` state that `encode_object` writes. Its `__reduce__`, which
        // builds that state, was most of the cost of recording a `time.localtime()`.
        match StructSeq::of(obj) {
            Some(_) if depth + 2 > MAX_DEPTH => false,
            Some(seq) => (0..seq.fields).all(|i| is_encodable(StructSeq::field(obj, i), depth + 3)),
            None => false,
        }
    }
}

/// A struct sequence (`os.stat_result`, `time.struct_time`, `os.times_result`...), which
/// is stored as its type's name and the arguments its `__reduce__` gives to rebuild it:
/// `((visible fields...), {hidden field name: value})`. Read from the object directly:
/// calling `__reduce__` (which builds that tuple and dict) was most of the cost of recording
/// a `time.localtime()`.
struct StructSeq {
    /// All fields, visible and hidden: the tuple's item array holds this many.
    fields: usize,
    /// `ob_size`: the fields the tuple shows.
    visible: usize,
    /// Fields without a name (and without a member); hidden field i is named by member
    /// `i - unnamed`, as in CPython's `structseq_reduce`.
    unnamed: usize,
}

impl StructSeq {
    /// `obj`'s layout when it is a struct sequence whose hidden fields all have names, so
    /// that its state can be written in full.
    ///
    /// # Safety
    /// GIL held, `obj` live.
    unsafe fn of(obj: *mut ffi::PyObject) -> Option<StructSeq> {
        // SAFETY: a struct sequence type is a direct tuple subclass with `n_fields` and
        // `n_unnamed_fields` in its dict, and allocates `n_fields` items (`ob_size` counts the
        // visible ones); its members are static definitions of the type.
        unsafe {
            let ty = ffi::Py_TYPE(obj);
            if (*ty).tp_base != std::ptr::addr_of_mut!(ffi::PyTuple_Type) || (*ty).tp_dict.is_null() {
                return None;
            }
            let py = pyo3::Python::assume_attached();
            let fields = Self::type_count(ty, crate::interned!(py, "n_fields"))?;
            let unnamed = Self::type_count(ty, crate::interned!(py, "n_unnamed_fields")).unwrap_or(0);
            let visible = ffi::PyTuple_GET_SIZE(obj) as usize;
            let members = (*ty).tp_members;
            let named = |i: usize| i.checked_sub(unnamed).is_some_and(|m| !(*members.add(m)).name.is_null());
            (fields >= visible && (visible == fields || (!members.is_null() && (visible..fields).all(named))))
                .then_some(StructSeq { fields, visible, unnamed })
        }
    }

    /// An int its type keeps in its dict (`n_fields`, `n_unnamed_fields`).
    ///
    /// # Safety
    /// GIL held, `ty` a live type with a dict.
    unsafe fn type_count(ty: *mut ffi::PyTypeObject, key: &pyo3::Bound<'_, pyo3::types::PyString>) -> Option<usize> {
        // SAFETY: per the function's contract; the value is borrowed from the dict.
        unsafe {
            let n = ffi::PyDict_GetItemWithError((*ty).tp_dict, key.as_ptr());
            let n = if n.is_null() { -1 } else { ffi::PyLong_AsSsize_t(n) };
            if n < 0 {
                ffi::PyErr_Clear();
                return None;
            }
            Some(n as usize)
        }
    }

    /// The field at `i` (visible or hidden).
    ///
    /// # Safety
    /// `obj` is the struct sequence this layout was read from, and `i < self.fields`.
    unsafe fn field(obj: *mut ffi::PyObject, i: usize) -> *mut ffi::PyObject {
        // SAFETY: per the function's contract.
        unsafe { *(*(obj as *mut ffi::PyTupleObject)).ob_item.as_ptr().add(i) }
    }

    /// Writes `obj`'s rebuilding state, as `__reduce__` gives it.
    ///
    /// # Safety
    /// GIL held; `obj` the struct sequence this layout was read from ([`StructSeq::of`]).
    unsafe fn encode_state(&self, enc: &mut ChunkEncoder, obj: *mut ffi::PyObject) {
        // SAFETY: the items are the object's own; member names are static C strings of its
        // type, checked present by `of`.
        unsafe {
            let members = (*ffi::Py_TYPE(obj)).tp_members;
            enc.tuple(2);
            enc.tuple(self.visible);
            for i in 0..self.visible {
                encode_object(enc, Self::field(obj, i), None);
            }
            enc.dict(self.fields - self.visible);
            for i in self.visible..self.fields {
                enc.str(&std::ffi::CStr::from_ptr((*members.add(i - self.unnamed)).name).to_string_lossy());
                encode_object(enc, Self::field(obj, i), None);
            }
        }
    }
}

/// `module:qualname` of an object's type.
///
/// # Safety
/// GIL held, `ty` a live type.
pub unsafe fn qualified_name(ty: *mut ffi::PyObject) -> String {
    // SAFETY: __module__/__qualname__ of a type object.
    unsafe {
        let py = pyo3::Python::assume_attached();
        let part = |name: &pyo3::Bound<'_, pyo3::types::PyString>| {
            let v = ffi::PyObject_GetAttr(ty, name.as_ptr());
            if v.is_null() {
                ffi::PyErr_Clear();
                return None;
            }
            let s = utf8_of(v).map(|b| String::from_utf8_lossy(b).into_owned());
            ffi::Py_DECREF(v);
            s
        };
        let module = part(crate::interned!(py, "__module__")).unwrap_or_else(|| "builtins".to_owned());
        let qualname = part(crate::interned!(py, "__qualname__")).unwrap_or_else(|| "object".to_owned());
        format!("{module}:{qualname}")
    }
}

/// Finds `module:qualname` among already-imported modules, never importing anything.
/// Returns a new reference, or NULL (no exception set).
///
/// # Safety
/// GIL held.
pub unsafe fn resolve_qualified(name: &str) -> *mut ffi::PyObject {
    // SAFETY: dictionary and attribute lookups with error handling.
    unsafe {
        let (module, qualname) = name.split_once(':').unwrap_or(("builtins", name));
        let Ok(cmodule) = std::ffi::CString::new(module) else {
            return std::ptr::null_mut();
        };
        let mut obj = ffi::PyDict_GetItemString(ffi::PyImport_GetModuleDict(), cmodule.as_ptr());
        if obj.is_null() {
            return std::ptr::null_mut();
        }
        ffi::Py_INCREF(obj);
        for part in qualname.split('.') {
            let Ok(cpart) = std::ffi::CString::new(part) else {
                ffi::Py_DECREF(obj);
                return std::ptr::null_mut();
            };
            let next = ffi::PyObject_GetAttrString(obj, cpart.as_ptr());
            ffi::Py_DECREF(obj);
            if next.is_null() {
                ffi::PyErr_Clear();
                return std::ptr::null_mut();
            }
            obj = next;
        }
        obj
    }
}

/// Writes a CALL of `fn_id` returning `obj`, when `obj` can be stored completely, and
/// returns whether it did (nothing is written otherwise). The results most calls return
/// (an int, bytes) take one type test each, instead of [`is_encodable`]'s tests and then
/// [`encode_object`]'s again.
///
/// # Safety
/// `obj` must be a live object and the GIL held.
pub unsafe fn encode_call_result(enc: &mut ChunkEncoder, fn_id: u32, digest: Option<u32>, obj: *mut ffi::PyObject) -> bool {
    // SAFETY: as for is_encodable and encode_object.
    unsafe {
        let ty = ffi::Py_TYPE(obj);
        if ty == std::ptr::addr_of_mut!(ffi::PyLong_Type) {
            enc.call(fn_id, digest);
            encode_int(enc, obj, Some(fn_id));
        } else if ty == std::ptr::addr_of_mut!(ffi::PyBytes_Type) {
            enc.call(fn_id, digest);
            enc.bytes(bytes_of(obj));
        } else if is_encodable(obj, 0) {
            enc.call(fn_id, digest);
            encode_object(enc, obj, Some(fn_id));
        } else {
            return false;
        }
        true
    }
}

/// An exact int, delta-encoded against the previous result of `delta_fn` when given.
///
/// # Safety
/// `obj` must be an exact int and the GIL held.
#[inline]
unsafe fn encode_int(enc: &mut ChunkEncoder, obj: *mut ffi::PyObject, delta_fn: Option<u32>) {
    // SAFETY: converting an exact int runs no Python code.
    unsafe {
        let mut overflow = 0;
        let v = ffi::PyLong_AsLongLongAndOverflow(obj, &mut overflow);
        if overflow == 0 {
            match delta_fn {
                Some(f) => enc.int_delta(f, v),
                None => enc.int(v),
            }
        } else {
            enc.big_int(&long_to_le_bytes(obj));
        }
    }
}

/// Writes `obj` as one value. A top-level float or int of a call result is delta-encoded
/// against the previous result of the same function (`delta_fn`), which turns clock reads
/// into a byte or two.
///
/// # Safety
/// `obj` must satisfy [`is_encodable`] and the GIL must be held.
pub unsafe fn encode_object(enc: &mut ChunkEncoder, obj: *mut ffi::PyObject, delta_fn: Option<u32>) {
    // SAFETY: as for is_encodable; the conversions below cannot run Python code on exact types.
    unsafe {
        if obj == ffi::Py_None() {
            enc.none();
        } else if ffi::PyBool_Check(obj) != 0 {
            enc.bool(obj == ffi::Py_True());
        } else if ffi::PyLong_CheckExact(obj) != 0 {
            encode_int(enc, obj, delta_fn);
        } else if ffi::PyFloat_CheckExact(obj) != 0 {
            let v = ffi::PyFloat_AS_DOUBLE(obj);
            match delta_fn {
                Some(f) => enc.float_delta(f, v),
                None => enc.float(v),
            }
        } else if ffi::PyUnicode_CheckExact(obj) != 0 {
            match utf8_of(obj) {
                Some(bytes) => enc.str(std::str::from_utf8_unchecked(bytes)),
                None => {
                    let encoded = ffi::PyUnicode_AsEncodedString(
                        obj,
                        c"utf-8".as_ptr(),
                        c"surrogatepass".as_ptr(),
                    );
                    if encoded.is_null() {
                        ffi::PyErr_Clear();
                        enc.str("");
                    } else {
                        enc.str_surrogates(bytes_of(encoded));
                        ffi::Py_DECREF(encoded);
                    }
                }
            }
        } else if ffi::PyBytes_CheckExact(obj) != 0 {
            enc.bytes(bytes_of(obj));
        } else if ffi::PyTuple_CheckExact(obj) != 0 || ffi::PyList_CheckExact(obj) != 0 {
            let n = ffi::PySequence_Fast_GET_SIZE(obj);
            if ffi::PyTuple_CheckExact(obj) != 0 {
                enc.tuple(n as usize);
            } else {
                enc.list(n as usize);
            }
            for i in 0..n {
                encode_object(enc, ffi::PySequence_Fast_GET_ITEM(obj, i), None);
            }
        } else if ffi::PyDict_CheckExact(obj) != 0 {
            enc.dict(ffi::PyDict_Size(obj) as usize);
            let mut pos: ffi::Py_ssize_t = 0;
            let mut k = std::ptr::null_mut();
            let mut v = std::ptr::null_mut();
            while ffi::PyDict_Next(obj, &mut pos, &mut k, &mut v) != 0 {
                encode_object(enc, k, None);
                encode_object(enc, v, None);
            }
        } else if let Some(seq) = StructSeq::of(obj) {
            enc.object(&qualified_name(ffi::Py_TYPE(obj) as *mut ffi::PyObject));
            seq.encode_state(enc, obj);
        } else {
            enc.none();
        }
    }
}

/// Two's-complement little-endian bytes of an int too large for i64, through
/// `int.to_bytes` (the private `_PyLong_AsByteArray` changed signature in 3.13).
///
/// # Safety
/// `obj` must be an exact int; the GIL must be held.
unsafe fn long_to_le_bytes(obj: *mut ffi::PyObject) -> Vec<u8> {
    // SAFETY: the GIL is held and `obj` is a live int, per the contract; int.bit_length and
    // int.to_bytes are C methods of the exact int type and run no user code.
    let int = unsafe { pyo3::Bound::from_borrowed_ptr(pyo3::Python::assume_attached(), obj) };
    let py = int.py();
    let bytes = (|| -> pyo3::PyResult<Vec<u8>> {
        use pyo3::types::PyAnyMethods;
        let bits: usize = int.call_method0("bit_length")?.extract()?;
        let kwargs = pyo3::types::PyDict::new(py);
        pyo3::types::PyDictMethods::set_item(&kwargs, "signed", true)?;
        int.call_method("to_bytes", (bits / 8 + 1, "little"), Some(&kwargs))?.extract()
    })();
    bytes.unwrap_or_else(|e| {
        drop(e);
        vec![0]
    })
}

/// A new int from little-endian bytes, through `int.from_bytes`.
///
/// # Safety
/// The GIL must be held.
pub unsafe fn long_from_le_bytes(bytes: &[u8], signed: bool) -> *mut ffi::PyObject {
    // SAFETY: int.from_bytes is a C classmethod of int; the result is a new reference.
    let py = unsafe { pyo3::Python::assume_attached() };
    let result = (|| -> pyo3::PyResult<pyo3::Bound<'_, pyo3::PyAny>> {
        use pyo3::types::PyAnyMethods;
        let kwargs = pyo3::types::PyDict::new(py);
        pyo3::types::PyDictMethods::set_item(&kwargs, "signed", signed)?;
        py.get_type::<pyo3::types::PyInt>()
            .call_method("from_bytes", (pyo3::types::PyBytes::new(py, bytes), "little"), Some(&kwargs))
    })();
    match result {
        Ok(obj) => obj.into_ptr(),
        Err(e) => {
            e.restore(py);
            std::ptr::null_mut()
        }
    }
}

/// Builds a new reference to the Python object a trace value stands for. Handles and
/// redacted values are not objects by themselves; callers handle them first.
///
/// # Safety
/// The GIL must be held.
pub unsafe fn decode_value(value: &Value) -> *mut ffi::PyObject {
    // SAFETY: object constructors with valid inputs; each returns a new reference or NULL
    // with an exception set, which the caller propagates.
    unsafe {
        match value {
            Value::None | Value::Handle(_) => new_ref(ffi::Py_None()),
            Value::Bool(b) => new_ref(if *b { ffi::Py_True() } else { ffi::Py_False() }),
            Value::Int(v) => ffi::PyLong_FromLongLong(*v),
            Value::BigInt(bytes) => long_from_le_bytes(bytes, true),
            Value::Float(v) => ffi::PyFloat_FromDouble(*v),
            Value::Str(s) => {
                ffi::PyUnicode_FromStringAndSize(s.as_ptr() as *const c_char, s.len() as _)
            }
            Value::StrSurrogates(b) => ffi::PyUnicode_DecodeUTF8(
                b.as_ptr() as *const c_char,
                b.len() as _,
                c"surrogatepass".as_ptr(),
            ),
            Value::Redacted(len) => {
                // A damaged or crafted trace must not make us allocate without bound.
                let text = "*".repeat((*len).min(MAX_REDACTED_LEN) as usize);
                ffi::PyUnicode_FromStringAndSize(text.as_ptr() as *const c_char, text.len() as _)
            }
            Value::Bytes(b) => {
                ffi::PyBytes_FromStringAndSize(b.as_ptr() as *const c_char, b.len() as _)
            }
            Value::Tuple(items) => {
                let t = ffi::PyTuple_New(items.len() as _);
                if t.is_null() {
                    return t;
                }
                for (i, item) in items.iter().enumerate() {
                    let o = decode_value(item);
                    if o.is_null() {
                        ffi::Py_DECREF(t);
                        return o;
                    }
                    ffi::PyTuple_SET_ITEM(t, i as _, o);
                }
                t
            }
            Value::List(items) => {
                let l = ffi::PyList_New(items.len() as _);
                if l.is_null() {
                    return l;
                }
                for (i, item) in items.iter().enumerate() {
                    let o = decode_value(item);
                    if o.is_null() {
                        ffi::Py_DECREF(l);
                        return o;
                    }
                    ffi::PyList_SET_ITEM(l, i as _, o);
                }
                l
            }
            Value::Object { type_name, state } => {
                let ty = resolve_qualified(type_name);
                let args = decode_value(state);
                let result = if ty.is_null() || args.is_null() || ffi::PyTuple_Check(args) == 0 {
                    if ffi::PyErr_Occurred().is_null() {
                        let msg = std::ffi::CString::new(format!("retrace: cannot rebuild a recorded {type_name} at replay")).unwrap_or_default();
                        ffi::PyErr_SetString(ffi::PyExc_RuntimeError, msg.as_ptr());
                    }
                    std::ptr::null_mut()
                } else {
                    ffi::PyObject_Call(ty, args, std::ptr::null_mut())
                };
                ffi::Py_XDECREF(ty);
                ffi::Py_XDECREF(args);
                result
            }
            Value::Dict(pairs) => {
                let d = ffi::PyDict_New();
                if d.is_null() {
                    return d;
                }
                for (k, v) in pairs {
                    let ko = decode_value(k);
                    let vo = decode_value(v);
                    let failed = ko.is_null() || vo.is_null() || ffi::PyDict_SetItem(d, ko, vo) < 0;
                    ffi::Py_XDECREF(ko);
                    ffi::Py_XDECREF(vo);
                    if failed {
                        ffi::Py_DECREF(d);
                        return std::ptr::null_mut();
                    }
                }
                d
            }
        }
    }
}

/// # Safety
/// `obj` must be a live object and the GIL held.
pub unsafe fn new_ref(obj: *mut ffi::PyObject) -> *mut ffi::PyObject {
    // SAFETY: per the caller's guarantee.
    unsafe { ffi::Py_INCREF(obj) };
    obj
}

//! `sqlite3`: the database library does its I/O below any Python hook, so the boundary is
//! the `_sqlite3` module's own C API.
//!
//! * `Connection.__init__` (under `sqlite3.connect`) is recorded; at replay the connection
//!   is opened on `:memory:` instead, a stand-in that never sees a statement.
//! * `execute`, `executemany`, `executescript` (of Connection and Cursor) are recorded with
//!   the cursor state they leave (`description`, `rowcount`, `lastrowid`); at replay the
//!   statement is not run, and that state is written back into the cursor.
//! * `fetchone`, `fetchmany`, `fetchall` and iteration are recorded as the raw rows (tuples).
//!   A `row_factory` (such as `sqlite3.Row`) is applied by us, at record and at replay
//!   alike, so it is the program's code that turns rows into objects both times.
//! * `commit`, `rollback` and `close` are plain recorded calls.

use crate::calls::{InitCall, RawCall};
use crate::codec::{decode_value, encode_object, is_encodable};
use crate::dispatch::{is_active, record_outcome, record_with, replay_take};
use crate::exceptions::raise_recorded;
use crate::hooks::Hook;
use crate::session::{mode, Replayed, MODE_RECORD, MODE_REPLAY};
use pyo3::ffi;
use retrace_recorder::Value;
use std::os::raw::c_int;

/// What a sqlite3 hook does.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SqliteOp {
    /// `Connection.execute*`: returns a new cursor.
    ConnectionExecute,
    /// `Cursor.execute*`: returns the cursor itself.
    CursorExecute,
    /// `fetchone`, `fetchmany`, `fetchall`.
    Fetch,
    /// `Connection.close`, `Cursor.close`: replayed, and the stand-in really closed, so
    /// that later use fails as it did.
    Close,
}

/// The cursor state a statement leaves behind, read after the real call and written back
/// at replay: (`description`, `rowcount`, `lastrowid`).
const CURSOR_STATE: [&std::ffi::CStr; 3] = [c"description", c"rowcount", c"lastrowid"];

/// `Connection.__init__(database, ...)`.
///
/// # Safety
/// Called through the tp_init proxy with the GIL held.
pub unsafe fn connect(hook: &'static Hook, call: InitCall) -> c_int {
    // SAFETY: see the function's contract.
    unsafe {
        let original = hook.original();
        if !(matches!(mode(), MODE_RECORD | MODE_REPLAY) && is_active()) {
            return call.call_original(original);
        }
        let digest = hook.digest(|| call.digest());
        if mode() == MODE_RECORD {
            let status = crate::signals::in_call(|| call.call_original(original));
            record_outcome(hook, digest, if status < 0 { std::ptr::null_mut() } else { ffi::Py_None() });
            return status;
        }
        match replay_take(hook, digest) {
            Replayed::Raise(e) => {
                raise_recorded(&e);
                -1
            }
            Replayed::Value(_) => {
                // The same arguments, on a database that exists nowhere.
                let memory = ffi::PyUnicode_FromString(c":memory:".as_ptr());
                let args = ffi::PyTuple_New(ffi::PyTuple_GET_SIZE(call.args).max(1));
                let kwargs = if call.kwargs.is_null() { ffi::PyDict_New() } else { ffi::PyDict_Copy(call.kwargs) };
                if memory.is_null() || args.is_null() || kwargs.is_null() {
                    return -1;
                }
                let positional = call.positional();
                for i in 0..ffi::PyTuple_GET_SIZE(args) {
                    let item = if i == 0 { memory } else { positional[i as usize] };
                    ffi::Py_INCREF(item);
                    ffi::PyTuple_SET_ITEM(args, i, item);
                }
                if positional.is_empty() {
                    // `database` came as a keyword: the stand-in takes its place there.
                    ffi::PyDict_DelItemString(kwargs, c"database".as_ptr());
                    ffi::PyErr_Clear();
                }
                let status = InitCall { slf: call.slf, args, kwargs }.call_original(original);
                ffi::Py_DECREF(args);
                ffi::Py_DECREF(kwargs);
                ffi::Py_DECREF(memory);
                status
            }
        }
    }
}

/// # Safety
/// Called through a method proxy with the GIL held.
pub unsafe fn method(hook: &'static Hook, op: SqliteOp, call: RawCall) -> *mut ffi::PyObject {
    // SAFETY: see the function's contract.
    unsafe {
        let original = hook.original();
        if !(matches!(mode(), MODE_RECORD | MODE_REPLAY) && is_active()) {
            return call.call_original(original);
        }
        let digest = hook.digest(|| call.digest());
        match op {
            SqliteOp::ConnectionExecute | SqliteOp::CursorExecute => execute(hook, op, call, digest),
            SqliteOp::Fetch => fetch(hook, call.slf(), digest, || call.call_original(original)),
            SqliteOp::Close if mode() == MODE_REPLAY => {
                crate::dispatch::replay_releasing(hook, digest, || crate::dispatch::discard(call.call_original(original)))
            }
            SqliteOp::Close => crate::dispatch::boundary(hook, || digest, || call.call_original(original)),
        }
    }
}

/// # Safety
/// As for [`method`].
unsafe fn execute(hook: &'static Hook, op: SqliteOp, call: RawCall, digest: Option<u32>) -> *mut ffi::PyObject {
    // SAFETY: see the function's contract.
    unsafe {
        if mode() == MODE_RECORD {
            let cursor = crate::signals::in_call(|| call.call_original(hook.original()));
            if cursor.is_null() {
                record_outcome(hook, digest, cursor);
                return cursor;
            }
            let state = read_state(cursor);
            record_outcome(hook, digest, state);
            ffi::Py_XDECREF(state);
            return cursor;
        }
        match replay_take(hook, digest) {
            Replayed::Raise(e) => {
                raise_recorded(&e);
                std::ptr::null_mut()
            }
            Replayed::Value(state) => {
                let cursor = if op == SqliteOp::ConnectionExecute {
                    ffi::PyObject_CallMethod(call.slf(), c"cursor".as_ptr(), std::ptr::null())
                } else {
                    crate::codec::new_ref(call.slf())
                };
                if !cursor.is_null() {
                    write_state(cursor, &state);
                }
                cursor
            }
        }
    }
}

/// A tuple of the cursor's state attributes (new reference), or NULL if unreadable.
///
/// # Safety
/// GIL held; `cursor` a sqlite3 cursor.
unsafe fn read_state(cursor: *mut ffi::PyObject) -> *mut ffi::PyObject {
    // SAFETY: attribute reads of a cursor's members.
    unsafe {
        let state = ffi::PyTuple_New(CURSOR_STATE.len() as ffi::Py_ssize_t);
        for (i, name) in CURSOR_STATE.iter().enumerate() {
            let mut v = ffi::PyObject_GetAttrString(cursor, name.as_ptr());
            if v.is_null() {
                ffi::PyErr_Clear();
                v = crate::codec::new_ref(ffi::Py_None());
            }
            ffi::PyTuple_SET_ITEM(state, i as ffi::Py_ssize_t, v);
        }
        if is_encodable(state, 0) {
            state
        } else {
            ffi::Py_DECREF(state);
            std::ptr::null_mut()
        }
    }
}

/// Writes recorded cursor state into the stand-in cursor's read-only members.
///
/// # Safety
/// GIL held; `cursor` a sqlite3 cursor.
unsafe fn write_state(cursor: *mut ffi::PyObject, state: &Value) {
    // SAFETY: each member is located through its member descriptor (offset and C type),
    // and written with the reference counting its type needs.
    unsafe {
        let Value::Tuple(values) = state else { return };
        let ty = ffi::Py_TYPE(cursor) as *mut ffi::PyObject;
        for (name, value) in CURSOR_STATE.iter().zip(values) {
            // Looked up on the type (through its bases, for subclasses): a member
            // descriptor read from its class is the descriptor itself.
            let descr = ffi::PyObject_GetAttrString(ty, name.as_ptr());
            if descr.is_null() {
                ffi::PyErr_Clear();
                continue;
            }
            let is_member = ffi::Py_TYPE(descr) == std::ptr::addr_of_mut!(ffi::PyMemberDescr_Type);
            let member = if is_member { (*(descr as *mut ffi::PyMemberDescrObject)).d_member } else { std::ptr::null_mut() };
            ffi::Py_DECREF(descr); // the type keeps it alive
            if member.is_null() {
                continue;
            }
            let field = cursor.cast::<u8>().offset((*member).offset);
            // T_OBJECT (6): `_sqlite3` still declares its object members with it.
            const T_OBJECT: c_int = 6;
            match (*member).type_code {
                T_OBJECT | ffi::Py_T_OBJECT_EX => {
                    let slot = field as *mut *mut ffi::PyObject;
                    let new = decode_value(value);
                    if new.is_null() {
                        ffi::PyErr_Clear();
                        continue;
                    }
                    let old = std::mem::replace(&mut *slot, new);
                    ffi::Py_XDECREF(old);
                }
                ffi::Py_T_LONG => {
                    if let Value::Int(v) = value {
                        *(field as *mut std::os::raw::c_long) = *v as std::os::raw::c_long;
                    }
                }
                ffi::Py_T_PYSSIZET => {
                    if let Value::Int(v) = value {
                        *(field as *mut ffi::Py_ssize_t) = *v as ffi::Py_ssize_t;
                    }
                }
                _ => {}
            }
        }
    }
}

/// Rows: recorded raw (tuples), then passed through the cursor's `row_factory` by us.
///
/// # Safety
/// GIL held; `cursor` a sqlite3 cursor; `live` performs the original call.
unsafe fn fetch(hook: &'static Hook, cursor: *mut ffi::PyObject, digest: Option<u32>, live: impl FnOnce() -> *mut ffi::PyObject) -> *mut ffi::PyObject {
    // SAFETY: see the function's contract.
    unsafe {
        let factory = ffi::PyObject_GetAttrString(cursor, c"row_factory".as_ptr());
        if factory.is_null() {
            ffi::PyErr_Clear();
        }
        let has_factory = !factory.is_null() && factory != ffi::Py_None();
        let raw = if mode() == MODE_RECORD {
            if has_factory {
                ffi::PyObject_SetAttrString(cursor, c"row_factory".as_ptr(), ffi::Py_None());
            }
            let raw = crate::signals::in_call(live);
            if has_factory {
                // Put the factory back whatever happened, keeping the call's own exception.
                let mut ty = std::ptr::null_mut();
                let mut val = std::ptr::null_mut();
                let mut tb = std::ptr::null_mut();
                #[allow(deprecated)]
                ffi::PyErr_Fetch(&mut ty, &mut val, &mut tb);
                ffi::PyObject_SetAttrString(cursor, c"row_factory".as_ptr(), factory);
                #[allow(deprecated)]
                ffi::PyErr_Restore(ty, val, tb);
            }
            if raw.is_null() {
                record_outcome(hook, digest, raw);
                ffi::Py_XDECREF(factory);
                return raw;
            }
            record_with(hook, |rec| {
                rec.enc.call(hook.id, digest);
                if is_encodable(raw, 0) {
                    encode_object(&mut rec.enc, raw, None);
                } else {
                    rec.enc.none();
                }
            });
            raw
        } else {
            match replay_take(hook, digest) {
                Replayed::Raise(e) => {
                    raise_recorded(&e);
                    ffi::Py_XDECREF(factory);
                    return std::ptr::null_mut();
                }
                Replayed::Value(v) => decode_value(&v),
            }
        };
        let result = if has_factory && !raw.is_null() { apply_factory(cursor, factory, raw) } else { raw };
        ffi::Py_XDECREF(factory);
        result
    }
}

/// `factory(cursor, row)` for a row, or for each row of a list. Consumes `raw`.
///
/// # Safety
/// GIL held.
unsafe fn apply_factory(cursor: *mut ffi::PyObject, factory: *mut ffi::PyObject, raw: *mut ffi::PyObject) -> *mut ffi::PyObject {
    // SAFETY: calls of the program's factory with new references handled.
    unsafe {
        let one = |row: *mut ffi::PyObject| ffi::PyObject_CallFunctionObjArgs(factory, cursor, row, std::ptr::null_mut::<ffi::PyObject>());
        let result = if ffi::PyTuple_Check(raw) != 0 {
            one(raw)
        } else if ffi::PyList_Check(raw) != 0 {
            let n = ffi::PyList_GET_SIZE(raw);
            let out = ffi::PyList_New(n);
            for i in 0..n {
                let made = one(ffi::PyList_GET_ITEM(raw, i));
                if made.is_null() {
                    ffi::Py_DECREF(out);
                    ffi::Py_DECREF(raw);
                    return made;
                }
                ffi::PyList_SET_ITEM(out, i, made);
            }
            out
        } else {
            crate::codec::new_ref(raw) // None: no row
        };
        ffi::Py_DECREF(raw);
        result
    }
}

/// `Cursor.__next__` (the `tp_iternext` slot): one raw row, or the end (NULL, no error).
///
/// # Safety
/// Called through the tp_iternext proxy with the GIL held.
pub unsafe fn next(hook: &'static Hook, cursor: *mut ffi::PyObject) -> *mut ffi::PyObject {
    // SAFETY: see the function's contract.
    unsafe {
        let original = hook.original();
        let call_original = || {
            let f: crate::calls::IterNextFn = std::mem::transmute(original);
            f(cursor)
        };
        if !(matches!(mode(), MODE_RECORD | MODE_REPLAY) && is_active()) {
            return call_original();
        }
        let digest = hook.digest(|| 0);
        let result = fetch(hook, cursor, digest, || {
            let row = call_original();
            // The end of the rows is NULL without an exception: record it as None.
            if row.is_null() && ffi::PyErr_Occurred().is_null() {
                crate::codec::new_ref(ffi::Py_None())
            } else {
                row
            }
        });
        if result == ffi::Py_None() {
            ffi::Py_DECREF(result);
            return std::ptr::null_mut();
        }
        result
    }
}

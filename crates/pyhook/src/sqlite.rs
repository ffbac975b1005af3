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
//!   Converters (`detect_types`) and a `text_factory` other than `str`/`bytes` are applied
//!   by us too: while recording, the C code hands each such column to a mark of ours,
//!   which keeps the column's bytes; the bytes are recorded, and the program's converter
//!   runs on them at record and at replay alike. A statement with `RETURNING` changes the
//!   cursor's `rowcount` while rows are fetched: the new state is recorded with the rows.
//! * `commit`, `rollback`, `close`, `__exit__` (which commits or rolls back in C), `backup`,
//!   `serialize`, `deserialize`, `interrupt` are recorded calls; the `in_transaction` and
//!   `total_changes` properties are recorded reads, and setting `isolation_level` or
//!   `autocommit` (which may COMMIT or BEGIN) is a recorded call. `blobopen` and
//!   `load_extension` cannot be replayed yet: a replay stops there, naming them.
//! * Callbacks: a Python callable that SQLite calls (`create_function`, `create_aggregate`,
//!   `create_window_function`, `create_collation`, `set_authorizer`,
//!   `set_progress_handler`, `set_trace_callback`, `backup(progress=)`) is registered
//!   wrapped in a [`SqliteCallback`] with a handle (its registration number). When SQLite
//!   calls it during a recorded call, the wrapper records CALLBACK_ENTER (handle, and the
//!   arguments) and CALLBACK_RETURN around the program's callable, whose own boundary calls
//!   are recorded in between. At replay no statement runs, so SQLite calls nothing: the
//!   replay finds the CALLBACK_ENTER inside the call and calls the program's callable with
//!   the recorded arguments, at the same point (see `dispatch::replay_take`). An aggregate
//!   class is wrapped likewise, and each instance's `step`/`inverse`/`value`/`finalize`.

use crate::calls::{InitCall, RawCall};
use crate::codec::{decode_value, encode_object, is_encodable};
use crate::dispatch::{diverge, is_active, record_outcome, record_with, replay_take, stop_recording};
use crate::exceptions::raise_recorded;
use crate::gil::GilCell;
use crate::hooks::Hook;
use crate::session::{mode, py, Divergence, Recorder, Replayed, Session, MODE_RECORD, MODE_REPLAY, STATE};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple, PyWeakrefReference};
use retrace_recorder::Value;
use std::cell::Cell;
use std::collections::BTreeMap;
use std::os::raw::c_int;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

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
    /// Registers a callable that SQLite calls back: the callable (positional index, or
    /// keyword name) is wrapped in a [`SqliteCallback`]. Not a boundary itself: the
    /// stand-in registers the wrapper at replay.
    Register(CallbackKind, usize, &'static str),
    /// `sqlite3.enable_callback_tracebacks`: whether an exception in a callback is printed.
    CallbackTracebacks,
    /// `Connection.backup`: a recorded call whose `progress` callable is wrapped.
    Backup,
    /// A property setter that may run a statement (`isolation_level`, `autocommit`).
    Setter,
}

/// What SQLite calls a wrapped callable for: decides what a live call at replay returns and
/// what an exception raised by the callable does.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum CallbackKind {
    Function,
    /// The class given to `create_aggregate` / `create_window_function`.
    Aggregate,
    /// Its exception leaves through the statement (`_sqlite3` does not swallow it).
    Collation,
    Authorizer,
    Progress,
    Trace,
    /// `backup(progress=)`: its exception ends the backup and leaves through it.
    BackupProgress,
}

/// The cursor state a statement leaves behind, read after the real call and written back
/// at replay: (`description`, `rowcount`, `lastrowid`). Interned once: a name made from a C
/// string on every read was most of the read's cost.
fn cursor_state_names(py: Python<'_>) -> [&Bound<'_, pyo3::types::PyString>; 3] {
    [crate::interned!(py, "description"), crate::interned!(py, "rowcount"), crate::interned!(py, "lastrowid")]
}

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
        if let SqliteOp::Register(kind, pos, kw) = op {
            return register(original, call, kind, pos, kw);
        }
        let digest = hook.digest(|| call.digest());
        match op {
            SqliteOp::Register(..) | SqliteOp::Setter => call.call_original(original),
            SqliteOp::CallbackTracebacks => {
                let result = call.call_original(original);
                if !result.is_null() {
                    if let Some(&flag) = call.positional().first() {
                        let on = ffi::PyObject_IsTrue(flag);
                        ffi::PyErr_Clear();
                        CALLBACK_TRACEBACKS.store(on > 0, Ordering::Relaxed);
                    }
                }
                result
            }
            SqliteOp::Backup => {
                let py = py();
                let progress = call.keyword("progress").filter(|&p| p != ffi::Py_None() && ffi::PyCallable_Check(p) != 0);
                let wrapper = match progress.map(|p| wrap(py, CallbackKind::BackupProgress, Bound::from_borrowed_ptr(py, p))) {
                    Some(Err(e)) => {
                        e.restore(py);
                        return std::ptr::null_mut();
                    }
                    Some(Ok(w)) => Some(w),
                    None => None,
                };
                // The wrapper stays alive (registered) while the recorded callbacks replay.
                let live = || match &wrapper {
                    Some(w) => call_replacing(call, original, usize::MAX, "progress", w.as_ptr()),
                    None => call.call_original(original),
                };
                crate::dispatch::boundary(hook, || digest, live)
            }
            SqliteOp::ConnectionExecute | SqliteOp::CursorExecute => execute(hook, op, call, digest),
            SqliteOp::Fetch => fetch(hook, call.slf(), digest, || call.call_original(original)),
            SqliteOp::Close if mode() == MODE_REPLAY => {
                crate::dispatch::replay_releasing(hook, digest, None, || crate::dispatch::discard(call.call_original(original)))
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
        let py = py();
        let many = hook.name.ends_with("executemany");
        let params = if hook.name.ends_with("executescript") { None } else { call.positional().get(1).copied() };
        let params = params.map(|p| Bound::from_borrowed_ptr(py, p));
        if mode() == MODE_RECORD {
            // The cursor picks its converters while the statement runs, and the parameters
            // are adapted then: both get marks, and the parameter sets are followed.
            let swapped = swap_marks(true, None);
            // One parameter set: only the adapters of its values' types can run. Many sets
            // (an iterator, consumed by the statement): any of them.
            let types = if many { None } else { params.as_ref().and_then(param_types) };
            let swapped_adapters = match (&params, types.as_deref()) {
                (None, _) | (_, Some([])) => Vec::new(),
                (Some(_), types) => swap_marks(false, types),
            };
            let param_iter = if many { params.as_ref().and_then(|p| p.try_iter().ok()) } else { None };
            let saved = PARAMS.with(|p| p.replace(Params { set: if many { None } else { params.as_ref().map(|p| p.clone().unbind()) }, iter: None }));
            let cursor = match param_iter.map(|it| Bound::new(py, ParamIter { it: it.into_any().unbind() })) {
                Some(Ok(wrapped)) => crate::signals::in_call(|| call_replacing(call, hook.original(), 1, "", wrapped.as_ptr())),
                _ => {
                    PyErr::take(py);
                    crate::signals::in_call(|| call.call_original(hook.original()))
                }
            };
            PARAMS.with(|p| p.replace(saved));
            restore_marks(true, swapped);
            restore_marks(false, swapped_adapters);
            if cursor.is_null() {
                record_outcome(hook, digest, cursor);
                return cursor;
            }
            let state = read_state(cursor);
            record_outcome(hook, digest, state);
            ffi::Py_XDECREF(state);
            return cursor;
        }
        // The parameter sets, for the adapters and iterations replayed inside the call.
        let replay_params = Params {
            set: if many { None } else { params.as_ref().map(|p| p.clone().unbind()) },
            iter: if many { params.as_ref().and_then(|p| p.try_iter().ok()).map(|i| i.into_any().unbind()) } else { None },
        };
        PyErr::take(py);
        let saved = PARAMS.with(|p| p.replace(replay_params));
        let replayed = replay_take(hook, digest);
        PARAMS.with(|p| p.replace(saved));
        match replayed {
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
        let names = cursor_state_names(py());
        let state = ffi::PyTuple_New(names.len() as ffi::Py_ssize_t);
        for (i, name) in names.iter().enumerate() {
            let mut v = ffi::PyObject_GetAttr(cursor, name.as_ptr());
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
        for (name, value) in cursor_state_names(py()).iter().zip(values) {
            // Looked up on the type (through its bases, for subclasses): a member
            // descriptor read from its class is the descriptor itself.
            let descr = ffi::PyObject_GetAttr(ty, name.as_ptr());
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

/// Rows: recorded raw (tuples), then converted and passed through the cursor's
/// `row_factory` by us.
///
/// # Safety
/// GIL held; `cursor` a sqlite3 cursor; `live` performs the original call.
unsafe fn fetch(hook: &'static Hook, cursor: *mut ffi::PyObject, digest: Option<u32>, live: impl FnOnce() -> *mut ffi::PyObject) -> *mut ffi::PyObject {
    // SAFETY: see the function's contract.
    unsafe {
        let py = py();
        let cursor_obj = Bound::from_borrowed_ptr(py, cursor);
        let factory = cursor_obj.getattr(crate::interned!(py, "row_factory")).ok().filter(|f| !f.is_none());
        let (raw, plan) = if mode() == MODE_RECORD {
            match fetch_recorded(hook, &cursor_obj, factory.is_some(), digest, live) {
                Some(fetched) => fetched,
                None => return std::ptr::null_mut(),
            }
        } else {
            match replay_take(hook, digest) {
                Replayed::Raise(e) => {
                    raise_recorded(&e);
                    return std::ptr::null_mut();
                }
                Replayed::Value(v) => match replayed_rows(hook, &cursor_obj, &v) {
                    Ok(fetched) => fetched,
                    Err(e) => {
                        e.restore(py);
                        return std::ptr::null_mut();
                    }
                },
            }
        };
        match finish_rows(&cursor_obj, factory.as_ref(), raw, &plan) {
            Ok(rows) => rows.into_ptr(),
            Err(e) => {
                e.restore(py);
                std::ptr::null_mut()
            }
        }
    }
}

/// One conversion the C code left to us: row (within the fetched rows), column, and the
/// callable (a converter, or the connection's `text_factory`).
struct Conversion<'py> {
    row: usize,
    column: usize,
    func: Bound<'py, PyAny>,
}

/// The real fetch, with the row factory unset and marks in place of converters and a custom
/// `text_factory`; records the raw rows (and the conversions, and the cursor's new state).
/// None when the fetch raised (recorded, and the exception set).
///
/// # Safety
/// GIL held; `live` performs the original call.
unsafe fn fetch_recorded<'py>(
    hook: &'static Hook,
    cursor: &Bound<'py, PyAny>,
    has_factory: bool,
    digest: Option<u32>,
    live: impl FnOnce() -> *mut ffi::PyObject,
) -> Option<(Bound<'py, PyAny>, Vec<Conversion<'py>>)> {
    // SAFETY: see the function's contract.
    unsafe {
        let py = cursor.py();
        let factory = if has_factory { cursor.getattr(crate::interned!(py, "row_factory")).ok() } else { None };
        if factory.is_some() {
            let _ = cursor.setattr(crate::interned!(py, "row_factory"), py.None());
        }
        // `str` and `bytes` are decoded by the C code itself; anything else is a callable.
        let connection = cursor.getattr(crate::interned!(py, "connection")).ok();
        let text_factory = connection.as_ref().and_then(|c| c.getattr(crate::interned!(py, "text_factory")).ok()).filter(|tf| {
            !(tf.is(py.get_type::<pyo3::types::PyString>()) || tf.is(py.get_type::<pyo3::types::PyBytes>()))
        });
        if let (Some(conn), Some(tf)) = (&connection, &text_factory) {
            if let Ok(mark) = Bound::new(py, ConverterMark { name: None, func: tf.clone().unbind() }) {
                let _ = conn.setattr(crate::interned!(py, "text_factory"), mark);
            }
        }
        let before = read_state(cursor.as_ptr());
        IN_RECORDED_FETCH.with(|f| f.set(true));
        let raw = crate::signals::in_call(live);
        IN_RECORDED_FETCH.with(|f| f.set(false));
        // Put the factories back whatever happened, keeping the call's own exception.
        let pending = pyo3::PyErr::take(py);
        if let Some(f) = &factory {
            let _ = cursor.setattr(crate::interned!(py, "row_factory"), f);
        }
        if let (Some(conn), Some(tf)) = (&connection, &text_factory) {
            let _ = conn.setattr(crate::interned!(py, "text_factory"), tf);
        }
        if let Some(e) = pending {
            e.restore(py);
        }
        if raw.is_null() {
            ffi::Py_XDECREF(before);
            record_outcome(hook, digest, raw);
            return None;
        }
        let raw = Bound::from_owned_ptr(py, raw);
        let (plain, plan, names) = take_marks(&raw);
        let after = read_state(cursor.as_ptr());
        let state_changed = !before.is_null()
            && !after.is_null()
            && ffi::PyObject_RichCompareBool(before, after, ffi::Py_EQ) == 0;
        ffi::PyErr_Clear();
        let recorded = if plan.is_empty() && !state_changed {
            plain.clone()
        } else {
            // {"rows": raw rows, "conv": [(row, column, converter name or None)], "state": ...}
            let extended = PyDict::new(py);
            let conv = PyList::empty(py);
            for (c, name) in plan.iter().zip(&names) {
                let _ = conv.append((c.row, c.column, name));
            }
            let _ = extended.set_item("rows", &plain);
            let _ = extended.set_item("conv", conv);
            if state_changed {
                let _ = extended.set_item("state", Bound::from_borrowed_ptr(py, after));
            }
            extended.into_any()
        };
        ffi::Py_XDECREF(before);
        ffi::Py_XDECREF(after);
        record_with(hook, |rec| {
            rec.enc.call(hook.id, digest);
            if is_encodable(recorded.as_ptr(), 0) {
                encode_object(&mut rec.enc, recorded.as_ptr(), None);
            } else {
                rec.enc.none();
            }
        });
        Some((plain, plan))
    }
}

/// Replaces the [`Converted`] cells of fetched rows by their raw bytes. Returns the plain
/// rows, the conversions to make, and each conversion's converter name (None: the
/// `text_factory`).
fn take_marks<'py>(raw: &Bound<'py, PyAny>) -> (Bound<'py, PyAny>, Vec<Conversion<'py>>, Vec<Option<Py<PyAny>>>) {
    let py = raw.py();
    let mut plan = Vec::new();
    let mut names = Vec::new();
    let mut plain_row = |index: usize, row: &Bound<'py, PyAny>| -> Bound<'py, PyAny> {
        let Ok(cells) = row.cast::<PyTuple>() else { return row.clone() };
        if !cells.iter().any(|c| c.is_instance_of::<Converted>()) {
            return row.clone();
        }
        let replaced: Vec<Bound<'py, PyAny>> = cells
            .iter()
            .enumerate()
            .map(|(column, cell)| match cell.cast::<Converted>() {
                Ok(mark) => {
                    let mark = mark.get();
                    plan.push(Conversion { row: index, column, func: mark.func.bind(py).clone() });
                    names.push(mark.name.as_ref().map(|n| n.clone_ref(py)));
                    mark.data.bind(py).clone()
                }
                Err(_) => cell,
            })
            .collect();
        PyTuple::new(py, replaced).map(Bound::into_any).unwrap_or_else(|_| row.clone())
    };
    let plain = if let Ok(rows) = raw.cast::<PyList>() {
        let out: Vec<Bound<'py, PyAny>> = rows.iter().enumerate().map(|(i, row)| plain_row(i, &row)).collect();
        PyList::new(py, out).map(Bound::into_any).unwrap_or_else(|_| raw.clone())
    } else if raw.is_instance_of::<PyTuple>() {
        plain_row(0, raw)
    } else {
        raw.clone()
    };
    (plain, plan, names)
}

/// The rows of a replayed fetch, and the conversions to make on them with the program's
/// converters (found by name, as the C code finds them) and `text_factory`.
///
/// # Safety
/// GIL held.
unsafe fn replayed_rows<'py>(hook: &'static Hook, cursor: &Bound<'py, PyAny>, value: &Value) -> PyResult<(Bound<'py, PyAny>, Vec<Conversion<'py>>)> {
    // SAFETY: per the caller's guarantee.
    unsafe {
        let py = cursor.py();
        let decode = |v: &Value| -> PyResult<Bound<'py, PyAny>> {
            let o = decode_value(v);
            if o.is_null() {
                Err(PyErr::fetch(py))
            } else {
                Ok(Bound::from_owned_ptr(py, o))
            }
        };
        let Value::Dict(parts) = value else {
            return Ok((decode(value)?, Vec::new()));
        };
        let field = |key: &str| parts.iter().find(|(k, _)| matches!(k, Value::Str(s) if s == key)).map(|(_, v)| v);
        let rows = decode(field("rows").unwrap_or(&Value::None))?;
        if let Some(state) = field("state") {
            write_state(cursor.as_ptr(), state);
        }
        let mut plan = Vec::new();
        if let Some(Value::List(conv)) = field("conv") {
            for entry in conv {
                let Value::Tuple(t) = entry else { crate::handlers::bad_value(hook) };
                let [Value::Int(row), Value::Int(column), name] = t.as_slice() else { crate::handlers::bad_value(hook) };
                let func = match name {
                    Value::Str(name) => match converters(py).and_then(|c| c.get_item(name).ok().flatten()) {
                        Some(func) => func,
                        None => diverge(
                            Divergence {
                                index: None,
                                thread: 0,
                                expected: format!("the sqlite3 converter {name:?}, which converted these rows when recorded"),
                                actual: "no such converter is registered now".into(),
                                hint: "the program registered other converters than when it was recorded: was its code or an unrecorded input changed?",
                                bad_recording: false,
                                thread_name: None,
                            },
                            true,
                        ),
                    },
                    _ => cursor.getattr("connection")?.getattr("text_factory")?,
                };
                plan.push(Conversion { row: *row as usize, column: *column as usize, func });
            }
        }
        Ok((rows, plan))
    }
}

/// Converts the cells of `plan`, row by row, each row then passed through `factory`: the
/// order in which the C code calls them.
fn finish_rows<'py>(cursor: &Bound<'py, PyAny>, factory: Option<&Bound<'py, PyAny>>, raw: Bound<'py, PyAny>, plan: &[Conversion<'py>]) -> PyResult<Bound<'py, PyAny>> {
    let py = cursor.py();
    let one = |index: usize, row: Bound<'py, PyAny>| -> PyResult<Bound<'py, PyAny>> {
        let mut row = row;
        if plan.iter().any(|c| c.row == index) {
            let mut cells: Vec<Bound<'py, PyAny>> = row.cast::<PyTuple>()?.iter().collect();
            for c in plan.iter().filter(|c| c.row == index) {
                if let Some(cell) = cells.get_mut(c.column) {
                    *cell = c.func.call1((cell.clone(),))?;
                }
            }
            row = PyTuple::new(py, cells)?.into_any();
        }
        match factory {
            Some(f) => f.call1((cursor, row)),
            None => Ok(row),
        }
    };
    if let Ok(rows) = raw.cast::<PyList>() {
        if factory.is_none() && plan.is_empty() {
            return Ok(raw);
        }
        let out = rows.iter().enumerate().map(|(i, row)| one(i, row)).collect::<PyResult<Vec<_>>>()?;
        Ok(PyList::new(py, out)?.into_any())
    } else if raw.is_instance_of::<PyTuple>() {
        one(0, raw)
    } else {
        Ok(raw) // None: no row
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

/// A property setter (`isolation_level`, `autocommit`), installed through the `tp_init`
/// proxy: `call.args` is the value being set. Setting may COMMIT or BEGIN, so it is a
/// recorded call; at replay the stand-in takes the value too (it keeps it for later reads).
///
/// # Safety
/// Called through the setter proxy with the GIL held.
pub unsafe fn setter(hook: &'static Hook, call: InitCall) -> c_int {
    // SAFETY: see the function's contract; `call` carries (object, value, closure), which
    // the original setter takes back unchanged.
    unsafe {
        let original = hook.original();
        if !(matches!(mode(), MODE_RECORD | MODE_REPLAY) && is_active()) {
            return call.call_original(original);
        }
        let digest = hook.digest(|| {
            let mut hasher = xxhash_rust::xxh3::Xxh3Default::new();
            crate::codec::digest_object(&mut hasher, call.args, 0);
            hasher.digest() as u32
        });
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
                if call.call_original(original) < 0 {
                    ffi::PyErr_Clear();
                }
                0
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Callbacks: Python callables that SQLite calls.

/// Whether `sqlite3.enable_callback_tracebacks(True)` is in force: then `_sqlite3` prints an
/// exception raised in a callback (through `sys.unraisablehook`), and so does the replay.
static CALLBACK_TRACEBACKS: AtomicBool = AtomicBool::new(false);

/// Aggregate instances are numbered in the order SQLite creates them.
static NEXT_INSTANCE: AtomicI64 = AtomicI64::new(0);

/// What a CALLBACK_ENTER's arguments say to do: `(op, instance, args)`.
const OP_CALL: i64 = 0;
const OP_NEW: i64 = 1;
const AGGREGATE_METHODS: [(&str, i64); 4] = [("step", 2), ("inverse", 3), ("value", 4), ("finalize", 5)];

struct Registry {
    next_handle: u32,
    /// At replay: each wrapper by handle (weak: the connection owns it).
    wrappers: BTreeMap<u32, Py<PyAny>>,
    /// At replay: the live aggregate instances by number.
    instances: BTreeMap<i64, Py<PyAny>>,
}

static REGISTRY: GilCell<Registry> =
    GilCell::new(Registry { next_handle: 0, wrappers: BTreeMap::new(), instances: BTreeMap::new() });

thread_local! {
    /// Set while this thread runs a recorded fetch: converter marks then keep the bytes.
    static IN_RECORDED_FETCH: Cell<bool> = const { Cell::new(false) };
}

/// A callable the program gave to `_sqlite3`, as `_sqlite3` holds it while a session runs.
#[pyclass(module = "retrace._pyhook", frozen, weakref)]
pub struct SqliteCallback {
    inner: Py<PyAny>,
    handle: u32,
    kind: CallbackKind,
}

#[pymethods]
impl SqliteCallback {
    #[pyo3(signature = (*args))]
    fn __call__<'py>(slf: &Bound<'py, Self>, args: &Bound<'py, PyTuple>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let this = slf.get();
        let inner = this.inner.bind(py);
        if this.kind != CallbackKind::Aggregate {
            return run(py, this.handle, this.kind, (OP_CALL, 0), args, || inner.call1(args));
        }
        // A new aggregate instance: SQLite calls its methods through our proxy.
        let number = NEXT_INSTANCE.fetch_add(1, Ordering::Relaxed);
        let instance = run(py, this.handle, this.kind, (OP_NEW, number), args, || inner.call0())?;
        if instance.is_none() && mode() == MODE_REPLAY {
            return Ok(instance); // a stand-in's own call at replay
        }
        Ok(Bound::new(py, AggregateProxy { instance: instance.unbind(), handle: this.handle, number })?.into_any())
    }

    /// The program's callable's: `_sqlite3` prints it when a callback raises.
    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        self.inner.bind(py).repr()?.extract()
    }
}

/// An aggregate instance as SQLite sees it: its methods are recorded callbacks.
#[pyclass(module = "retrace._pyhook", frozen)]
pub struct AggregateProxy {
    instance: Py<PyAny>,
    handle: u32,
    number: i64,
}

#[pymethods]
impl AggregateProxy {
    fn __getattr__<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
        // The instance's own lookup, so a missing method fails as it would.
        let method = self.instance.bind(py).getattr(name)?;
        match AGGREGATE_METHODS.iter().find(|(n, _)| *n == name) {
            Some(&(_, op)) => Ok(Bound::new(py, AggregateMethod { method: method.unbind(), handle: self.handle, op, number: self.number })?.into_any()),
            None => Ok(method),
        }
    }
}

#[pyclass(module = "retrace._pyhook", frozen)]
pub struct AggregateMethod {
    method: Py<PyAny>,
    handle: u32,
    op: i64,
    number: i64,
}

#[pymethods]
impl AggregateMethod {
    #[pyo3(signature = (*args))]
    fn __call__<'py>(&self, py: Python<'py>, args: &Bound<'py, PyTuple>) -> PyResult<Bound<'py, PyAny>> {
        let method = self.method.bind(py);
        run(py, self.handle, CallbackKind::Aggregate, (self.op, self.number), args, || method.call1(args))
    }
}

/// One call of a wrapped callable by SQLite. Recording: CALLBACK_ENTER, the call, then
/// CALLBACK_RETURN. Replaying: SQLite only calls it for the stand-in's own statements,
/// which are not the program's: the callable does not run, a neutral value is returned.
fn run<'py>(
    py: Python<'py>,
    handle: u32,
    kind: CallbackKind,
    (op, number): (i64, i64),
    args: &Bound<'py, PyTuple>,
    call: impl FnOnce() -> PyResult<Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    // SAFETY: we hold the GIL (a token is in hand).
    let active = unsafe { is_active() };
    match mode() {
        MODE_RECORD if active => {
            write_event(py, |rec| {
                rec.enc.callback_enter(handle);
                rec.enc.tuple(3);
                rec.enc.int(op);
                rec.enc.int(number);
                // SAFETY: the GIL is held; `args` is a live tuple.
                unsafe {
                    if is_encodable(args.as_ptr(), 0) {
                        encode_object(&mut rec.enc, args.as_ptr(), None);
                    } else {
                        rec.enc.none();
                    }
                }
            });
            let result = call();
            write_event(py, |rec| {
                rec.enc.callback_return();
                match &result {
                    // SAFETY: as above.
                    Ok(v) if unsafe { is_encodable(v.as_ptr(), 0) } => unsafe { encode_object(&mut rec.enc, v.as_ptr(), None) },
                    _ => rec.enc.none(),
                }
            });
            result
        }
        MODE_REPLAY if active => Ok(match kind {
            CallbackKind::Authorizer | CallbackKind::Progress | CallbackKind::Collation => 0i64.into_pyobject(py)?.into_any(),
            _ => py.None().into_bound(py),
        }),
        _ => call(),
    }
}

/// Writes one event that belongs to no hook (a callback's enter or return).
fn write_event(py: Python<'_>, write: impl FnOnce(&mut Recorder)) {
    let failure = STATE
        .with(py, |s| {
            let thread = s.threads.current();
            let Session::Recording(rec) = &mut s.session else {
                return None;
            };
            if rec.enc.current_thread() != thread {
                rec.enc.thread(thread);
            }
            write(rec);
            rec.after_event().err()
        })
        .flatten();
    if let Some(reason) = failure {
        stop_recording(&reason);
    }
}

/// Wraps a callable the program registers, giving it the next handle (registrations happen
/// in the same order at record and at replay, so the handles agree).
fn wrap<'py>(py: Python<'py>, kind: CallbackKind, inner: Bound<'py, PyAny>) -> PyResult<Bound<'py, SqliteCallback>> {
    let handle = REGISTRY
        .with(py, |r| {
            r.next_handle += 1;
            r.next_handle - 1
        })
        .unwrap_or(u32::MAX);
    let wrapper = Bound::new(py, SqliteCallback { inner: inner.unbind(), handle, kind })?;
    if mode() == MODE_REPLAY {
        let weak = PyWeakrefReference::new(wrapper.as_any())?.into_any().unbind();
        let old = REGISTRY.with(py, |r| r.wrappers.insert(handle, weak));
        drop(old);
    }
    Ok(wrapper)
}

/// `create_function(name, narg, func)` and the like: the stand-in (or the real connection)
/// gets the program's callable wrapped.
///
/// # Safety
/// GIL held; `original` is the method the proxy replaced.
unsafe fn register(original: *mut std::os::raw::c_void, call: RawCall, kind: CallbackKind, pos: usize, kw: &str) -> *mut ffi::PyObject {
    // SAFETY: see the function's contract.
    unsafe {
        let py = py();
        let given = call.positional().get(pos).copied().or_else(|| call.keyword(kw));
        let Some(given) = given.filter(|&f| f != ffi::Py_None() && ffi::PyCallable_Check(f) != 0) else {
            return call.call_original(original);
        };
        match wrap(py, kind, Bound::from_borrowed_ptr(py, given)) {
            Ok(wrapper) => call_replacing(call, original, pos, kw, wrapper.as_ptr()),
            Err(e) => {
                e.restore(py);
                std::ptr::null_mut()
            }
        }
    }
}

/// Calls the original with one argument (at position `pos`, or keyword `kw`) replaced.
///
/// # Safety
/// GIL held; `original` matches the call's convention; `new` is live.
unsafe fn call_replacing(call: RawCall, original: *mut std::os::raw::c_void, pos: usize, kw: &str, new: *mut ffi::PyObject) -> *mut ffi::PyObject {
    // SAFETY: the replaced argument arrays and tuples hold borrowed or new references that
    // outlive the call; the original gets the same convention it was given.
    unsafe {
        let with_vector = |args: *const *mut ffi::PyObject, nargs: ffi::Py_ssize_t, kwnames: *mut ffi::PyObject| -> Vec<*mut ffi::PyObject> {
            let names = crate::calls::tuple_items(kwnames);
            let total = nargs as usize + names.len();
            let mut v: Vec<*mut ffi::PyObject> = if total == 0 { Vec::new() } else { std::slice::from_raw_parts(args, total).to_vec() };
            if pos < nargs as usize {
                v[pos] = new;
            } else if let Some(i) = names.iter().position(|&n| crate::codec::str_eq(n, kw)) {
                v[nargs as usize + i] = new;
            }
            v
        };
        match call {
            RawCall::Fast { slf, args, nargs } => {
                let v = with_vector(args, nargs, std::ptr::null_mut());
                RawCall::Fast { slf, args: v.as_ptr(), nargs }.call_original(original)
            }
            RawCall::FastKw { slf, args, nargs, kwnames } => {
                let v = with_vector(args, nargs, kwnames);
                RawCall::FastKw { slf, args: v.as_ptr(), nargs, kwnames }.call_original(original)
            }
            RawCall::MethodFastKw { slf, cls, args, nargs, kwnames } => {
                let v = with_vector(args, nargs, kwnames);
                RawCall::MethodFastKw { slf, cls, args: v.as_ptr(), nargs, kwnames }.call_original(original)
            }
            RawCall::O { slf, .. } if pos == 0 => RawCall::O { slf, arg: new }.call_original(original),
            RawCall::VarArgs { slf, args } | RawCall::VarArgsKw { slf, args, .. } => {
                let kwargs = if let RawCall::VarArgsKw { kwargs, .. } = call { kwargs } else { std::ptr::null_mut() };
                let n = ffi::PyTuple_GET_SIZE(args);
                let new_args = ffi::PyTuple_GetSlice(args, 0, n);
                let new_kwargs = if kwargs.is_null() { std::ptr::null_mut() } else { ffi::PyDict_Copy(kwargs) };
                if new_args.is_null() || (!kwargs.is_null() && new_kwargs.is_null()) {
                    ffi::Py_XDECREF(new_args);
                    return std::ptr::null_mut();
                }
                if (pos as ffi::Py_ssize_t) < n {
                    ffi::Py_INCREF(new);
                    let old = ffi::PyTuple_GET_ITEM(new_args, pos as ffi::Py_ssize_t);
                    ffi::PyTuple_SET_ITEM(new_args, pos as ffi::Py_ssize_t, new);
                    ffi::Py_DECREF(old);
                } else if !new_kwargs.is_null() {
                    if let Ok(key) = std::ffi::CString::new(kw) {
                        if !ffi::PyDict_GetItemString(new_kwargs, key.as_ptr()).is_null() {
                            ffi::PyDict_SetItemString(new_kwargs, key.as_ptr(), new);
                        }
                    }
                }
                let r = match call {
                    RawCall::VarArgs { slf, .. } => RawCall::VarArgs { slf, args: new_args }.call_original(original),
                    _ => RawCall::VarArgsKw { slf, args: new_args, kwargs: new_kwargs }.call_original(original),
                };
                ffi::Py_DECREF(new_args);
                ffi::Py_XDECREF(new_kwargs);
                r
            }
            other => other.call_original(original),
        }
    }
}

/// What remains to do once a replayed callback's return is taken: print its exception as
/// `_sqlite3` did after the callback returned (reading the traceback's source lines is
/// itself a recorded boundary, which came after the CALLBACK_RETURN).
pub struct CallbackEnd(Option<(PyErr, Py<PyAny>)>);

impl CallbackEnd {
    pub fn finish(self, py: Python<'_>) {
        if let Some((e, callable)) = self.0 {
            e.restore(py);
            // SAFETY: the GIL is held (a token is in hand); `callable` is live.
            unsafe { ffi::PyErr_WriteUnraisable(callable.as_ptr()) };
        }
    }
}

/// Replays one recorded callback: calls the program's callable registered under `handle`
/// with the recorded arguments. Its exception is handled as `_sqlite3` handled it: printed
/// when callback tracebacks are on, else dropped (for a collation or a backup's progress
/// it left through the call, whose recorded outcome already says so).
///
/// # Safety
/// GIL held; our state is not borrowed.
pub unsafe fn replay_callback(handle: u32, args: &Value) -> CallbackEnd {
    // SAFETY: see the function's contract.
    unsafe {
        let py = py();
        let bad = |what: &str| -> ! {
            diverge(
                Divergence {
                    index: None,
                    thread: 0,
                    expected: format!("a call back into Python (sqlite3 callback #{handle})"),
                    actual: what.to_owned(),
                    hint: "the program registered other sqlite3 callbacks than when it was recorded: was its code or an unrecorded input changed?",
                    bad_recording: false,
                    thread_name: None,
                },
                true,
            )
        };
        if handle == NEXT_PARAMS_HANDLE || handle == ADAPT_HANDLE {
            // Its exception, if any, ended the statement: the call's recorded outcome says so.
            let args = match args {
                Value::Tuple(parts) if parts.len() == 3 => decode_value(&parts[2]),
                _ => std::ptr::null_mut(),
            };
            if !args.is_null() && ffi::PyTuple_Check(args) != 0 {
                let args = Bound::from_owned_ptr(py, args).cast_into::<PyTuple>().expect("checked: a tuple");
                drop(replay_params_callback(py, handle, &args));
            } else {
                ffi::Py_XDECREF(args);
                ffi::PyErr_Clear();
            }
            return CallbackEnd(None);
        }
        let wrapper = REGISTRY.with(py, |r| r.wrappers.get(&handle).map(|w| w.clone_ref(py))).flatten();
        let wrapper = wrapper.and_then(|w| w.bind(py).cast::<PyWeakrefReference>().ok().and_then(|w| w.upgrade()));
        let Some(wrapper) = wrapper else { bad("no such callback is registered now") };
        let Ok(wrapper) = wrapper.cast::<SqliteCallback>() else { bad("no such callback is registered now") };
        let this = wrapper.get();
        let inner = this.inner.bind(py);
        let Value::Tuple(parts) = args else { bad("a callback recorded in another shape") };
        let [Value::Int(op), Value::Int(number), call_args] = parts.as_slice() else { bad("a callback recorded in another shape") };
        let decoded = decode_value(call_args);
        if decoded.is_null() || ffi::PyTuple_Check(decoded) == 0 {
            ffi::Py_XDECREF(decoded);
            ffi::PyErr_Clear();
            bad("arguments that could not be recorded");
        }
        let call_args = Bound::from_owned_ptr(py, decoded).cast_into::<PyTuple>().expect("checked: a tuple");
        let result = match *op {
            OP_CALL => inner.call1(&call_args),
            OP_NEW => inner.call0().inspect(|instance| {
                let old = REGISTRY.with(py, |r| r.instances.insert(*number, instance.clone().unbind()));
                drop(old);
            }),
            op => {
                let Some(&(name, _)) = AGGREGATE_METHODS.iter().find(|(_, o)| *o == op) else { bad("an unknown callback operation") };
                let instance = REGISTRY.with(py, |r| r.instances.get(number).map(|i| i.clone_ref(py))).flatten();
                let Some(instance) = instance else { bad("no such aggregate instance") };
                let result = instance.bind(py).getattr(name).and_then(|m| m.call1(&call_args));
                if name == "finalize" {
                    let old = REGISTRY.with(py, |r| r.instances.remove(number));
                    drop(old);
                }
                result
            }
        };
        match result {
            Err(e) if CALLBACK_TRACEBACKS.load(Ordering::Relaxed)
                && !matches!(this.kind, CallbackKind::Collation | CallbackKind::BackupProgress) =>
            {
                CallbackEnd(Some((e, inner.clone().unbind())))
            }
            _ => CallbackEnd(None),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Converters and `text_factory`.

/// `_sqlite3.converters`, the dict the C code looks converters up in.
fn converters(py: Python<'_>) -> Option<Bound<'_, PyDict>> {
    module_dict(py, marks_dict_name(py, true))
}

/// The `_sqlite3` module, from `sys.modules` (already imported: we are in one of its
/// hooks). Looked up directly: `import sys` through the import system, on every statement,
/// was a large part of what recording one cost.
fn sqlite_module(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    let name = crate::interned!(py, "_sqlite3");
    // SAFETY: the GIL is held (we have a token); PyImport_GetModule returns a new reference
    // or NULL, with an exception set only on a lookup error.
    unsafe { Bound::from_owned_ptr_or_err(py, ffi::PyImport_GetModule(name.as_ptr())) }
}

/// A dict of the `_sqlite3` module: `converters` or `adapters`.
fn module_dict<'py>(py: Python<'py>, name: &Bound<'py, pyo3::types::PyString>) -> Option<Bound<'py, PyDict>> {
    let dict = sqlite_module(py).and_then(|m| m.getattr(name)).ok()?.cast_into::<PyDict>().ok();
    PyErr::take(py);
    dict
}

/// Replaces every value of `_sqlite3.converters` (or `.adapters`) by a [`ConverterMark`]
/// (or [`AdapterMark`]) while a recorded statement runs: the cursor takes its converters,
/// and adapts its parameters, then. Returns what to put back.
fn swap_marks(converters: bool, only_types: Option<&[*mut ffi::PyTypeObject]>) -> Vec<(Py<PyAny>, Py<PyAny>, Py<PyAny>)> {
    // SAFETY: called from a hook, with the GIL held.
    let py = unsafe { py() };
    let Some(dict) = module_dict(py, marks_dict_name(py, converters)) else { return Vec::new() };
    if dict.is_empty() {
        return Vec::new();
    }
    let mut swapped = Vec::new();
    for (name, func) in dict.iter().collect::<Vec<_>>() {
        if func.is_instance_of::<ConverterMark>() || func.is_instance_of::<AdapterMark>() {
            continue;
        }
        if let Some(types) = only_types {
            // An adapter's key is (type, protocol), looked up with the exact type of the
            // value being bound.
            let key_type = name.cast::<PyTuple>().ok().and_then(|k| k.get_item(0).ok());
            if !key_type.is_some_and(|t| types.contains(&t.as_ptr().cast())) {
                continue;
            }
        }
        let mark = if converters {
            Bound::new(py, ConverterMark { name: Some(name.clone().unbind()), func: func.clone().unbind() }).map(Bound::into_any)
        } else {
            Bound::new(py, AdapterMark { func: func.clone().unbind() }).map(Bound::into_any)
        };
        let Ok(mark) = mark else { continue };
        if dict.set_item(&name, &mark).is_ok() {
            swapped.push((name.unbind(), func.unbind(), mark.unbind()));
        }
    }
    swapped
}

fn restore_marks(converters: bool, swapped: Vec<(Py<PyAny>, Py<PyAny>, Py<PyAny>)>) {
    if swapped.is_empty() {
        return;
    }
    // SAFETY: called from a hook, with the GIL held.
    let py = unsafe { py() };
    // The statement's own exception waits while we look the dict up.
    let pending = PyErr::take(py);
    if let Some(dict) = module_dict(py, marks_dict_name(py, converters)) {
        restore_into(py, &dict, swapped);
    }
    if let Some(e) = pending {
        e.restore(py);
    }
}

fn marks_dict_name(py: Python<'_>, converters: bool) -> &Bound<'_, pyo3::types::PyString> {
    if converters {
        crate::interned!(py, "converters")
    } else {
        crate::interned!(py, "adapters")
    }
}

/// The exact types of the values of one parameter set (a sequence or a mapping), the only
/// types whose adapters the statement can call; None when they cannot be listed.
fn param_types(set: &Bound<'_, PyAny>) -> Option<Vec<*mut ffi::PyTypeObject>> {
    let values = match set.cast::<PyDict>() {
        Ok(d) => d.values().into_any(),
        Err(_) => set.clone(),
    };
    let types = if let Ok(t) = values.cast::<PyTuple>() {
        t.iter().map(|v| v.get_type().as_type_ptr()).collect()
    } else if let Ok(l) = values.cast::<PyList>() {
        l.iter().map(|v| v.get_type().as_type_ptr()).collect()
    } else {
        return None;
    };
    Some(types)
}

fn restore_into(py: Python<'_>, dict: &Bound<'_, PyDict>, swapped: Vec<(Py<PyAny>, Py<PyAny>, Py<PyAny>)>) {
    for (name, func, mark) in swapped {
        // Unless the program registered another one meanwhile.
        if dict.get_item(&name).ok().flatten().is_some_and(|now| now.is(mark.bind(py))) {
            let _ = dict.set_item(name, func);
        }
    }
    PyErr::take(py);
}

/// The parameters of the statement this thread is recording or replaying: the set being
/// bound (a sequence or a mapping) and, for `executemany`, the iterator of sets.
#[derive(Default)]
struct Params {
    set: Option<Py<PyAny>>,
    iter: Option<Py<PyAny>>,
}

thread_local! {
    static PARAMS: std::cell::RefCell<Params> = std::cell::RefCell::new(Params::default());
}

/// Handles of the callbacks that are not registered callables: `executemany` taking its
/// next parameter set, and an adapter adapting a parameter.
const NEXT_PARAMS_HANDLE: u32 = u32::MAX;
const ADAPT_HANDLE: u32 = u32::MAX - 1;

/// The iterator of `executemany`'s parameter sets while recording: each set taken is a
/// callback (the program's iterator may be a generator, which runs its code then).
#[pyclass(module = "retrace._pyhook", frozen)]
pub struct ParamIter {
    it: Py<PyAny>,
}

#[pymethods]
impl ParamIter {
    fn __iter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let mut item = None;
        run(py, NEXT_PARAMS_HANDLE, CallbackKind::Function, (OP_CALL, 0), &PyTuple::empty(py), || {
            item = next_params(py, self.it.bind(py))?;
            Ok(py.None().into_bound(py))
        })?;
        Ok(item)
    }
}

/// The next parameter set of `it` (None at the end), which becomes the current one.
fn next_params<'py>(py: Python<'py>, it: &Bound<'py, PyAny>) -> PyResult<Option<Bound<'py, PyAny>>> {
    // SAFETY: `it` is a live iterator; PyIter_Next returns a new reference or NULL.
    let next = unsafe { ffi::PyIter_Next(it.as_ptr()) };
    if next.is_null() {
        return match PyErr::take(py) {
            Some(e) => Err(e),
            None => Ok(None),
        };
    }
    // SAFETY: a new reference, owned from here.
    let set = unsafe { Bound::from_owned_ptr(py, next) };
    PARAMS.with(|p| p.borrow_mut().set = Some(set.clone().unbind()));
    Ok(Some(set))
}

/// Where `obj` is in the current parameter set: its index, or its name.
fn locate_param<'py>(py: Python<'py>, obj: &Bound<'py, PyAny>) -> Option<Bound<'py, PyAny>> {
    let set = PARAMS.with(|p| p.borrow().set.as_ref().map(|s| s.clone_ref(py)))?;
    let set = set.bind(py);
    if let Ok(seq) = set.cast::<PyTuple>() {
        return seq.iter().position(|item| item.is(obj)).and_then(|i| i.into_pyobject(py).ok()).map(Bound::into_any);
    }
    if let Ok(seq) = set.cast::<PyList>() {
        return seq.iter().position(|item| item.is(obj)).and_then(|i| i.into_pyobject(py).ok()).map(Bound::into_any);
    }
    if let Ok(map) = set.cast::<PyDict>() {
        return map.iter().find(|(_, v)| v.is(obj)).map(|(k, _)| k);
    }
    None
}

/// Stands in for an adapter while a recorded statement binds its parameters: the adapter's
/// run is a callback naming the parameter it adapts, so that the replay runs it again.
#[pyclass(module = "retrace._pyhook", frozen)]
pub struct AdapterMark {
    func: Py<PyAny>,
}

#[pymethods]
impl AdapterMark {
    fn __call__<'py>(&self, py: Python<'py>, obj: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let func = self.func.bind(py);
        match locate_param(py, obj) {
            Some(key) => {
                let args = PyTuple::new(py, [key])?;
                let result = run(py, ADAPT_HANDLE, CallbackKind::Function, (OP_CALL, 0), &args, || func.call1((obj,)))?;
                Ok(result)
            }
            None => func.call1((obj,)),
        }
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        self.func.bind(py).repr()?.extract()
    }
}

/// Replays the callbacks that are not registered callables (see [`NEXT_PARAMS_HANDLE`]).
fn replay_params_callback(py: Python<'_>, handle: u32, call_args: &Bound<'_, PyTuple>) -> PyResult<()> {
    if handle == NEXT_PARAMS_HANDLE {
        let it = PARAMS.with(|p| p.borrow().iter.as_ref().map(|i| i.clone_ref(py)));
        if let Some(it) = it {
            next_params(py, it.bind(py))?;
        }
        return Ok(());
    }
    let set = PARAMS.with(|p| p.borrow().set.as_ref().map(|s| s.clone_ref(py)));
    let (Some(set), Ok(key)) = (set, call_args.get_item(0)) else { return Ok(()) };
    let obj = set.bind(py).get_item(key)?;
    let module = sqlite_module(py)?;
    let key = (obj.get_type(), module.getattr(crate::interned!(py, "PrepareProtocol"))?);
    if let Some(adapter) = module.getattr(crate::interned!(py, "adapters"))?.cast_into::<PyDict>()?.get_item(key)? {
        adapter.call1((obj,))?;
    }
    Ok(())
}

/// Stands in for a converter (or, `name` None, a `text_factory`) while recording: in a
/// recorded fetch it keeps the column's bytes, to be converted after the fetch by us.
#[pyclass(module = "retrace._pyhook", frozen)]
pub struct ConverterMark {
    name: Option<Py<PyAny>>,
    func: Py<PyAny>,
}

#[pymethods]
impl ConverterMark {
    fn __call__<'py>(&self, py: Python<'py>, data: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        if IN_RECORDED_FETCH.with(Cell::get) {
            let name = self.name.as_ref().map(|n| n.clone_ref(py));
            return Ok(Bound::new(py, Converted { name, func: self.func.clone_ref(py), data: data.clone().unbind() })?.into_any());
        }
        self.func.bind(py).call1((data,))
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        self.func.bind(py).repr()?.extract()
    }
}

/// A cell of a fetched row that is still to be converted.
#[pyclass(module = "retrace._pyhook", frozen)]
pub struct Converted {
    name: Option<Py<PyAny>>,
    func: Py<PyAny>,
    data: Py<PyAny>,
}

//! Record and replay behaviour of each kind of hook.

use crate::calls::{InitCall, RawCall};
use crate::dispatch::{boundary, diverge, is_active, record_with, replay_take, Original};
use crate::exceptions::raise_recorded;
use crate::hooks::{Handler, Hook};
use crate::session::{mode, Divergence, Replayed, MODE_RECORD, MODE_REPLAY};
use pyo3::ffi;
use retrace_recorder::Value;
use std::os::raw::{c_int, c_void};
use std::sync::atomic::{AtomicPtr, Ordering};

/// Entry point of every C-level proxy. `handler` is the hook's own (`hook.handler`), passed
/// as the proxy's constant: inlined into the proxy, the match below folds to the one arm,
/// so a call goes straight to its handler. One shared function holding every arm grew to
/// tens of kilobytes with a 1.6 KB stack frame, and a call jumped across it (a measurable
/// part of a socket call, which runs cache-cold between two system calls).
///
/// # Safety
/// Called by CPython through a proxy, with the GIL held.
#[inline(always)]
pub unsafe fn dispatch(hook: &'static Hook, handler: Handler, call: RawCall) -> *mut ffi::PyObject {
    // SAFETY: per the function's contract.
    unsafe {
        let result = dispatch_call(hook, handler, call);
        crate::gc::after_hook();
        result
    }
}

/// # Safety
/// As for [`dispatch`].
#[inline(always)]
unsafe fn dispatch_call(hook: &'static Hook, handler: Handler, call: RawCall) -> *mut ffi::PyObject {
    let original = hook.original();
    // SAFETY: `original` is the function the proxy replaced, with the same convention.
    unsafe {
        match handler {
            Handler::Generic => boundary(
                hook,
                || hook.digest(|| call.digest()),
                Original(call, original),
            ),
            Handler::GenericExceptImports if crate::fileio::called_by_import_system() => {
                if hook.name == "os.getcwd" && is_active() {
                    crate::imports::getcwd(|| call.call_original(original))
                } else {
                    call.call_original(original)
                }
            }
            Handler::GenericExceptImports => boundary(
                hook,
                || hook.digest(|| call.digest()),
                Original(call, original),
            ),
            Handler::Readiness => boundary(hook, || hook.digest(|| 0), Original(call, original)),
            Handler::DatetimeNow | Handler::DatetimeUtcNow => datetime_now(hook, call),
            Handler::RandomSeed => random_seed(hook, call),
            Handler::ProcessExit => process_exit(hook, call),
            Handler::ProcessExec => process_exec(hook, call),
            Handler::File(op) => crate::fileio::method(hook, op, call),
            Handler::Fd(op) => crate::osfd::dispatch(hook, op, call),
            Handler::Sock(op) => crate::sockets::method(hook, op, call),
            Handler::SocketPair => crate::sockets::socketpair(hook, call),
            Handler::Scandir => crate::dirs::scandir(hook, call),
            Handler::SignalSet => crate::signals::set(hook, call),
            Handler::Sqlite(op) => crate::sqlite::method(hook, op, call),
            Handler::Ssl => crate::sockets::ssl_method(hook, call),
            Handler::ForkExec => crate::children::fork_exec(hook, call),
            Handler::Spawn => crate::children::posix_spawn(hook, call),
            Handler::ThreadStart => crate::threads::start(hook, call),
            Handler::ThreadSentinel => crate::threads::sentinel(hook, call),
            Handler::Lock(op) => crate::threads::lock(hook, op, call),
            Handler::Wait => crate::children::wait(hook, call),
            Handler::System => crate::children::system(hook, call),
            Handler::Unsupported => unsupported(hook, call.digest(), || call.call_original(original)),
            Handler::SqliteConnect | Handler::SqliteNext => call.call_original(original),
            Handler::SignalGet => crate::signals::get(hook, call),
            Handler::Gc(crate::hooks::GcOp::Collect) => crate::gc::collect(hook, call),
            Handler::Gc(crate::hooks::GcOp::GetThreshold) => crate::gc::get_threshold(hook, call),
            Handler::Gc(crate::hooks::GcOp::SetThreshold) => crate::gc::set_threshold(hook, call),
            Handler::FileOpen | Handler::SockInit | Handler::PgConnect => call.call_original(original),
        }
    }
}

/// Entry point of `tp_init` proxies.
///
/// # Safety
/// Called by CPython through `type_call`, with the GIL held.
pub unsafe fn dispatch_init(hook: &'static Hook, call: InitCall) -> c_int {
    // SAFETY: per the function's contract.
    unsafe {
        let result = dispatch_init_call(hook, call);
        crate::gc::after_hook();
        result
    }
}

/// # Safety
/// As for [`dispatch_init`].
unsafe fn dispatch_init_call(hook: &'static Hook, call: InitCall) -> c_int {
    let original = hook.original();
    // SAFETY: `original` is the tp_init the proxy replaced.
    unsafe {
        match hook.handler {
            Handler::RandomSeed
                if call.positional().is_empty()
                    && (call.kwargs.is_null() || ffi::PyDict_Size(call.kwargs) == 0) =>
            {
                let Some(seed) = recorded_seed(hook, call.digest()) else {
                    return call.call_original(original);
                };
                if seed.is_null() {
                    return -1;
                }
                let args = ffi::PyTuple_New(1);
                if args.is_null() {
                    ffi::Py_DECREF(seed);
                    return -1;
                }
                ffi::PyTuple_SET_ITEM(args, 0, seed);
                let seeded = InitCall { args, ..call };
                let r = seeded.call_original(original);
                ffi::Py_DECREF(args);
                r
            }
            Handler::FileOpen => crate::fileio::open(hook, call),
            Handler::SockInit => crate::sockets::init(hook, call),
            Handler::SqliteConnect => crate::sqlite::connect(hook, call),
            Handler::PgConnect => crate::pg::connect(hook, call),
            // A property setter installed through this proxy: `args` is the value.
            Handler::Sqlite(crate::sqlite::SqliteOp::Setter) => crate::sqlite::setter(hook, call),
            Handler::Unsupported => unsupported(hook, call.digest(), || call.call_original(original)),
            _ => call.call_original(original),
        }
    }
}

/// A boundary that cannot be replayed yet (see [`Handler::Unsupported`]).
///
/// # Safety
/// GIL held; `live` performs the original call.
unsafe fn unsupported<R>(hook: &'static Hook, digest: u32, live: impl FnOnce() -> R) -> R {
    // SAFETY: see the function's contract.
    unsafe {
        let digest = hook.digest(|| digest);
        match mode() {
            MODE_RECORD if is_active() => {
                record_with(hook, |rec| {
                    if rec.warn_unrecordable_once() {
                        eprintln!("retrace: warning: {} is not recorded yet; a replay will stop at this call", hook.name);
                    }
                    rec.enc.call(hook.id, digest);
                    rec.enc.none();
                });
                live()
            }
            MODE_REPLAY if is_active() => {
                let _ = replay_take(hook, digest);
                diverge(
                    Divergence {
                        index: None,
                        thread: 0,
                        expected: format!("a replay of {}", hook.name),
                        actual: format!("{} cannot be replayed yet; the replay stops here rather than reach the real world", hook.name),
                        hint: "see the README's list of what is recorded",
                        bad_recording: true,
                        thread_name: None,
                    },
                    true,
                )
            }
            _ => live(),
        }
    }
}

/// Entry point of `tp_iternext` proxies.
///
/// # Safety
/// Called by CPython's iteration protocol with the GIL held.
pub unsafe fn dispatch_iternext(hook: &'static Hook, slf: *mut ffi::PyObject) -> *mut ffi::PyObject {
    // SAFETY: `original` is the tp_iternext the proxy replaced.
    unsafe {
        let result = match hook.handler {
            Handler::SqliteNext => crate::sqlite::next(hook, slf),
            _ => {
                let f: crate::calls::IterNextFn = std::mem::transmute(hook.original());
                f(slf)
            }
        };
        crate::gc::after_hook();
        result
    }
}

/// `datetime.now(tz)` / `datetime.utcnow()`: the system clock is the boundary. Record and
/// replay both build the result from the clock reading with CPython's own
/// `fromtimestamp`/`utcfromtimestamp`, which is exactly what `now` does internally, so the
/// program sees the same value and the same `tzinfo.fromutc` calls in both runs.
///
/// # Safety
/// GIL held; `call.slf()` is the class `now` was called on.
unsafe fn datetime_now(hook: &'static Hook, call: RawCall) -> *mut ffi::PyObject {
    // SAFETY: see the function's contract.
    unsafe {
        let original = hook.original();
        let digest = hook.digest(|| call.digest());
        let ns = match mode() {
            MODE_RECORD if is_active() => {
                let ns = system_clock_ns();
                record_with(hook, |rec| {
                    rec.enc.call(hook.id, digest);
                    rec.enc.int_delta(hook.id, ns);
                });
                ns
            }
            MODE_REPLAY if is_active() => match replay_take(hook, digest) {
                Replayed::Value(Value::Int(ns)) => ns,
                Replayed::Raise(e) => {
                    raise_recorded(&e);
                    return std::ptr::null_mut();
                }
                Replayed::Value(_) => bad_value(hook),
            },
            _ => return call.call_original(original),
        };
        let utc = hook.handler == Handler::DatetimeUtcNow;
        let tz = if utc { None } else { call.positional().first().copied().or_else(|| call.keyword("tz")) };
        from_timestamp(call.slf(), ns, tz, utc)
    }
}

/// The `fromtimestamp` / `utcfromtimestamp` C functions, captured from the same type as
/// `now`, so a subclass overriding them does not change what `now` returns.
static FROM_TIMESTAMP: AtomicPtr<ffi::PyMethodDef> = AtomicPtr::new(std::ptr::null_mut());
static UTC_FROM_TIMESTAMP: AtomicPtr<ffi::PyMethodDef> = AtomicPtr::new(std::ptr::null_mut());

/// Remembers `datetime.fromtimestamp`/`utcfromtimestamp` of the `_datetime` module.
///
/// # Safety
/// GIL held, `module` is `_datetime`.
pub unsafe fn capture_datetime_constructors(module: *mut ffi::PyObject) {
    // SAFETY: dictionary lookups on the datetime type; the PyMethodDefs are static data.
    unsafe {
        let ty = ffi::PyObject_GetAttrString(module, c"datetime".as_ptr());
        if ty.is_null() {
            ffi::PyErr_Clear();
            return;
        }
        let dict = (*(ty as *mut ffi::PyTypeObject)).tp_dict;
        for (name, slot) in [(c"fromtimestamp", &FROM_TIMESTAMP), (c"utcfromtimestamp", &UTC_FROM_TIMESTAMP)] {
            let descr = if dict.is_null() { std::ptr::null_mut() } else { ffi::PyDict_GetItemString(dict, name.as_ptr()) };
            if !descr.is_null() && ffi::Py_TYPE(descr) == std::ptr::addr_of_mut!(ffi::PyClassMethodDescr_Type) {
                slot.store((*(descr as *mut ffi::PyMethodDescrObject)).d_method, Ordering::Relaxed);
            }
        }
        ffi::Py_DECREF(ty);
    }
}

/// # Safety
/// GIL held; `cls` a datetime class.
unsafe fn from_timestamp(cls: *mut ffi::PyObject, ns: i64, tz: Option<*mut ffi::PyObject>, utc: bool) -> *mut ffi::PyObject {
    // SAFETY: calls the captured C constructor with its own convention
    // (METH_VARARGS | METH_KEYWORDS | METH_CLASS, or METH_VARARGS | METH_CLASS).
    unsafe {
        // The floor split mirrors how CPython turns the clock into seconds and microseconds;
        // the float is within 0.12 µs of the exact value, and fromtimestamp rounds to µs.
        let secs = ns.div_euclid(1_000_000_000);
        let micros = ns.rem_euclid(1_000_000_000) / 1_000;
        let timestamp = secs as f64 + micros as f64 * 1e-6;
        let def = if utc { &UTC_FROM_TIMESTAMP } else { &FROM_TIMESTAMP }.load(Ordering::Relaxed);
        let ts = ffi::PyFloat_FromDouble(timestamp);
        if ts.is_null() {
            return ts;
        }
        let args = match tz {
            Some(tz) if !tz.is_null() => ffi::PyTuple_Pack(2, ts, tz),
            _ => ffi::PyTuple_Pack(1, ts),
        };
        ffi::Py_DECREF(ts);
        if args.is_null() {
            return args;
        }
        let result = if def.is_null() {
            let name = if utc { c"utcfromtimestamp" } else { c"fromtimestamp" };
            let method = ffi::PyObject_GetAttrString(cls, name.as_ptr());
            let r = if method.is_null() { method } else { ffi::PyObject_Call(method, args, std::ptr::null_mut()) };
            ffi::Py_XDECREF(method);
            r
        } else if utc {
            let f: crate::calls::NoArgsFn = std::mem::transmute((*def).ml_meth.PyCFunction);
            f(cls, args)
        } else {
            let f: crate::calls::VarArgsKwFn = std::mem::transmute((*def).ml_meth.PyCFunction);
            f(cls, args, std::ptr::null_mut())
        };
        ffi::Py_DECREF(args);
        result
    }
}

fn system_clock_ns() -> i64 {
    match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i64,
        Err(e) => -(e.duration().as_nanos() as i64),
    }
}

/// `_random.Random.seed(None)`: CPython would seed from urandom inside C, out of reach
/// of `os.urandom`'s hook. We seed with 32 random bytes instead (recorded), which gives the
/// same kind of state, and replay feeds the same bytes back.
///
/// # Safety
/// GIL held; FASTCALL-style call on a Random instance.
unsafe fn random_seed(hook: &'static Hook, call: RawCall) -> *mut ffi::PyObject {
    // SAFETY: see the function's contract.
    unsafe {
        let original = hook.original();
        let args = call.positional();
        let seeds_from_os = args.is_empty() || args[0] == ffi::Py_None();
        if !seeds_from_os {
            return call.call_original(original);
        }
        let Some(seed) = recorded_seed(hook, call.digest()) else {
            return call.call_original(original);
        };
        if seed.is_null() {
            return seed;
        }
        let seeded = match call {
            RawCall::Fast { slf, .. } => RawCall::Fast { slf, args: &seed, nargs: 1 },
            RawCall::FastKw { slf, .. } => RawCall::FastKw { slf, args: &seed, nargs: 1, kwnames: std::ptr::null_mut() },
            other => {
                ffi::Py_DECREF(seed);
                return other.call_original(original);
            }
        };
        let r = seeded.call_original(original);
        ffi::Py_DECREF(seed);
        r
    }
}

/// The seed for a `seed(None)`: fresh random bytes when recording (stored), the stored
/// bytes when replaying, None when this call is not ours to record.
///
/// # Safety
/// GIL held.
unsafe fn recorded_seed(hook: &'static Hook, digest: u32) -> Option<*mut ffi::PyObject> {
    // SAFETY: see the function's contract.
    unsafe {
        let digest = hook.digest(|| digest);
        let bytes: Vec<u8> = match mode() {
            MODE_RECORD if is_active() => {
                let mut bytes = [0u8; 32];
                fill_random(&mut bytes);
                record_with(hook, |rec| {
                    rec.enc.call(hook.id, digest);
                    rec.enc.bytes(&bytes);
                });
                bytes.to_vec()
            }
            MODE_REPLAY if is_active() => match replay_take(hook, digest) {
                Replayed::Value(Value::Bytes(b)) => b,
                Replayed::Raise(e) => {
                    raise_recorded(&e);
                    return Some(std::ptr::null_mut());
                }
                Replayed::Value(_) => bad_value(hook),
            },
            _ => return None,
        };
        Some(crate::codec::long_from_le_bytes(&bytes, false))
    }
}

fn fill_random(buf: &mut [u8]) {
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: getrandom writes at most the given length into a valid buffer.
        let n = unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast::<c_void>(), buf.len() - filled, 0) };
        if n <= 0 {
            // No entropy source: fall back to the clock, as CPython's own seeding does.
            let t = system_clock_ns().to_le_bytes();
            for (i, b) in buf[filled..].iter_mut().enumerate() {
                *b = t[i % t.len()] ^ (i as u8);
            }
            return;
        }
        filled += n as usize;
    }
}

/// `os._exit(n)`: neither atexit nor finalization will run, so the trace is closed here.
///
/// # Safety
/// GIL held.
unsafe fn process_exit(hook: &'static Hook, call: RawCall) -> *mut ffi::PyObject {
    // SAFETY: see the function's contract.
    unsafe {
        let original = hook.original();
        match mode() {
            MODE_RECORD if is_active() => {
                let digest = hook.digest(|| call.digest());
                record_with(hook, |rec| {
                    rec.enc.call(hook.id, digest);
                    rec.enc.none();
                });
                crate::finish_session();
            }
            MODE_REPLAY if is_active() => {
                let digest = hook.digest(|| call.digest());
                if let Replayed::Raise(e) = replay_take(hook, digest) {
                    raise_recorded(&e);
                    return std::ptr::null_mut();
                }
                crate::finish_session();
            }
            _ => {}
        }
        call.call_original(original)
    }
}

/// `os.execv(path, args)`, `os.execve(path, args, env)`: the process image is replaced.
/// The trace is closed before (the new program is not recorded). At replay the program
/// would have become that other program here: the replay ends, with the exit status the
/// recording ended with.
///
/// # Safety
/// GIL held.
unsafe fn process_exec(hook: &'static Hook, call: RawCall) -> *mut ffi::PyObject {
    // SAFETY: see the function's contract.
    unsafe {
        let original = hook.original();
        let digest = hook.digest(|| call.digest());
        match mode() {
            MODE_RECORD if is_active() => {
                record_with(hook, |rec| {
                    rec.enc.call(hook.id, digest);
                    rec.enc.none();
                });
                crate::finish_session();
                call.call_original(original)
            }
            MODE_REPLAY if is_active() => {
                if let Replayed::Raise(e) = replay_take(hook, digest) {
                    raise_recorded(&e);
                    return std::ptr::null_mut();
                }
                crate::dispatch::write_stderr(&format!(
                    "retrace: the recorded program called {} here and became another program, which was not recorded; the replay ends\n",
                    hook.name
                ));
                let status = crate::RECORDED_EXIT_CODE.load(std::sync::atomic::Ordering::Relaxed);
                let r = ffi::PyObject_CallMethod(ffi::PySys_GetObject(c"stdout".as_ptr()), c"flush".as_ptr(), std::ptr::null());
                ffi::Py_XDECREF(r);
                ffi::PyErr_Clear();
                libc::_exit(status)
            }
            _ => call.call_original(original),
        }
    }
}

/// A recorded value of the wrong shape for its function: the trace and this build disagree.
pub fn bad_value(hook: &'static Hook) -> ! {
    diverge(
        Divergence {
            index: None,
            thread: 0,
            expected: format!("a result of {} in this build's encoding", hook.name),
            actual: "a value of another shape".into(),
            hint: "the recording was made by another version of retrace",
            bad_recording: true,
            thread_name: None,
        },
        true,
    )
}

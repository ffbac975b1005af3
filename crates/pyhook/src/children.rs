//! A child process's output to the terminal (or whatever the program's own stdout and
//! stderr are) that it inherited: `subprocess.run(["git", "status"])`, `os.system("ls")`.
//!
//! At replay no child runs, so what it printed would be missing. While recording, a child
//! that would inherit the program's descriptor 1 or 2 gets instead the write end of a pipe
//! (a pseudo-terminal when the program's descriptor is a terminal, so the child still sees
//! one and formats its output the same), whose read end a thread of ours copies, as it
//! comes, to the program's real descriptor, keeping a copy. When the program reaps the child
//! (`waitpid`, or `os.system` returning), that copy is recorded with the call's result, and a
//! replay writes it to the same descriptor at that point.
//!
//! Only descriptors the recording does not track are captured (a terminal, the pipe to
//! `retrace record`): output the program redirected into a file is the file's business.

use crate::calls::RawCall;
use crate::codec::{decode_value, encode_object, is_encodable};
use crate::dispatch::{active_thread, record_outcome, record_with, replay_take, write_stderr};
use crate::exceptions::raise_recorded;
use crate::hooks::Hook;
use crate::session::{mode, Replayed, MODE_RECORD, MODE_REPLAY};
use pyo3::ffi;
use retrace_recorder::Value;
use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::raw::c_int;
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Most output kept per captured descriptor; the rest still reaches the terminal live.
const MAX_CAPTURED: usize = 64 << 20;
/// How long reaping waits for a capture to reach the end of its pipe, which a grandchild
/// that lives on may hold open.
const DRAIN_WAIT: Duration = Duration::from_millis(200);
/// Positions of `c2pwrite` and `errwrite` in `_posixsubprocess.fork_exec`'s arguments
/// (3.11 to 3.13).
const FORK_EXEC_STDOUT: usize = 9;
const FORK_EXEC_STDERR: usize = 11;

/// One descriptor's output being copied.
struct Capture {
    target: c_int,
    bytes: Arc<Mutex<Vec<u8>>>,
    finished: Receiver<()>,
}

impl Capture {
    /// What was captured, after waiting (a little) for the end of the output.
    fn collect(self) -> (c_int, Vec<u8>) {
        let _ = self.finished.recv_timeout(DRAIN_WAIT);
        let bytes = std::mem::take(&mut *self.bytes.lock().unwrap_or_else(|e| e.into_inner()));
        (self.target, bytes)
    }
}

/// Captures by child pid, from spawn to reaping.
static BY_PID: Mutex<Option<HashMap<i64, Vec<Capture>>>> = Mutex::new(None);

/// A descriptor a child would inherit and that we capture: 1 or 2, open, not tracked.
fn capturable(target: c_int) -> bool {
    // SAFETY: F_GETFD only reads the descriptor's flags.
    !crate::fds::is_tracked(target) && unsafe { libc::fcntl(target, libc::F_GETFD) } >= 0
}

fn private(fd: RawFd) -> std::io::Result<OwnedFd> {
    // SAFETY: `fd` is a fresh descriptor of ours; it is moved above the program's range
    // (F_DUPFD_CLOEXEC) and the original closed.
    unsafe {
        let moved = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 1000);
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if moved < 0 {
            return Err(err);
        }
        Ok(OwnedFd::from_raw_fd(moved))
    }
}

/// A (child end, our end) pair for output bound for `target`: a pseudo-terminal with the
/// same window size when `target` is a terminal, a pipe otherwise.
fn channel_for(target: c_int) -> std::io::Result<(OwnedFd, OwnedFd)> {
    let (mut ours, mut child) = (-1, -1);
    // SAFETY: isatty/openpty/pipe2/ioctl/tcgetattr/tcsetattr with valid out-pointers; the new
    // descriptors are ours and wrapped right away.
    unsafe {
        if libc::isatty(target) == 1 {
            let mut size: libc::winsize = std::mem::zeroed();
            let has_size = libc::ioctl(target, libc::TIOCGWINSZ, &mut size) == 0;
            if libc::openpty(&mut ours, &mut child, std::ptr::null_mut(), std::ptr::null(), if has_size { &size } else { std::ptr::null() }) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Bytes pass through as the child wrote them: the real terminal does the output
            // processing (newline translation) once.
            let mut mode: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(child, &mut mode) == 0 {
                mode.c_oflag &= !libc::OPOST;
                libc::tcsetattr(child, libc::TCSANOW, &mode);
            }
        } else {
            let mut fds = [-1; 2];
            if libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            (ours, child) = (fds[0], fds[1]);
        }
    }
    Ok((private(child)?, private(ours)?))
}

/// Starts copying `ours` to the program's descriptor `target`, or, when given, to `via`: a
/// copy of it the thread owns (while the program's own descriptor points elsewhere).
fn start(ours: OwnedFd, target: c_int, via: Option<OwnedFd>) -> std::io::Result<Capture> {
    let bytes = Arc::new(Mutex::new(Vec::new()));
    let (done, finished) = channel();
    let kept = Arc::clone(&bytes);
    std::thread::Builder::new().name("retrace-child-output".into()).spawn(move || {
        let destination = via.as_ref().map_or(target, |fd| fd.as_raw_fd());
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // SAFETY: read into our own buffer from our own descriptor.
            let n = unsafe { libc::read(ours.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            // End of the pipe, or EIO from a pseudo-terminal whose child side is all closed.
            if n <= 0 {
                break;
            }
            let chunk = &buf[..n as usize];
            write_all(destination, chunk);
            let mut kept = kept.lock().unwrap_or_else(|e| e.into_inner());
            let room = MAX_CAPTURED.saturating_sub(kept.len());
            kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
        }
        let _ = done.send(());
    })?;
    Ok(Capture { target, bytes, finished })
}

fn write_all(fd: c_int, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: writing a valid buffer to a descriptor.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        if n <= 0 {
            return;
        }
        bytes = &bytes[n as usize..];
    }
}

/// `_posixsubprocess.fork_exec`: recorded as a plain call (its result is the pid); while
/// recording, inherited stdout/stderr are captured for the child.
///
/// # Safety
/// Called through a method proxy with the GIL held.
pub unsafe fn fork_exec(hook: &'static Hook, call: RawCall) -> *mut ffi::PyObject {
    // SAFETY: see the function's contract.
    unsafe {
        let original = hook.original();
        if mode() != MODE_RECORD || active_thread().is_none() {
            return crate::dispatch::boundary(hook, || hook.digest(|| call.digest()), || call.call_original(original));
        }
        // The digest is of the program's own arguments, which a replay passes again.
        let digest = hook.digest(|| call.digest());
        let mut args = call.positional().to_vec();
        let mut pending = Vec::new();
        for (index, target) in [(FORK_EXEC_STDOUT, 1), (FORK_EXEC_STDERR, 2)] {
            let Some(&arg) = args.get(index) else { continue };
            if ffi::PyLong_AsLong(arg) != -1 || !capturable(target) {
                ffi::PyErr_Clear();
                continue;
            }
            match channel_for(target) {
                Ok((child_end, ours)) => {
                    let number = ffi::PyLong_FromLong(child_end.as_raw_fd().into());
                    if number.is_null() {
                        ffi::PyErr_Clear();
                        continue;
                    }
                    args[index] = number;
                    pending.push((child_end, ours, target, number));
                }
                Err(e) => write_stderr(&format!(
                    "retrace: warning: a child's output to descriptor {target} is not recorded ({e}); a replay will not show it\n"
                )),
            }
        }
        let result = crate::signals::in_call(|| call.call_with_positional(&args, original));
        let mut captures = Vec::new();
        for (child_end, ours, target, number) in pending {
            ffi::Py_DECREF(number);
            // Only the child holds its end now: the pipe ends when the child (and any
            // descendant it passed it to) is done.
            drop(child_end);
            if result.is_null() {
                continue;
            }
            match start(ours, target, None) {
                Ok(capture) => captures.push(capture),
                Err(e) => write_stderr(&format!("retrace: warning: cannot copy a child's output ({e})\n")),
            }
        }
        record_outcome(hook, digest, result);
        remember(result, captures);
        result
    }
}

/// Keeps a spawned child's captures until it is reaped; `result` is the spawn's result
/// (the pid, or NULL).
///
/// # Safety
/// GIL held.
unsafe fn remember(result: *mut ffi::PyObject, captures: Vec<Capture>) {
    if result.is_null() || captures.is_empty() {
        return;
    }
    // SAFETY: `result` is a live object; a conversion error is cleared.
    let pid = unsafe { ffi::PyLong_AsLongLong(result) };
    if pid > 0 {
        BY_PID.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert_with(HashMap::new).insert(pid, captures);
    } else {
        // SAFETY: GIL held.
        unsafe { ffi::PyErr_Clear() };
    }
}

/// `os.posix_spawn`, `os.posix_spawnp` (which `subprocess` uses when it can): as
/// [`fork_exec`], the captures being added to the child's `file_actions` as `dup2`s.
///
/// # Safety
/// Called through a method proxy with the GIL held.
pub unsafe fn posix_spawn(hook: &'static Hook, call: RawCall) -> *mut ffi::PyObject {
    // SAFETY: see the function's contract.
    unsafe {
        let original = hook.original();
        let RawCall::FastKw { slf, args, nargs, kwnames } = call else {
            return crate::dispatch::boundary(hook, || hook.digest(|| call.digest()), || call.call_original(original));
        };
        if mode() != MODE_RECORD || active_thread().is_none() {
            return crate::dispatch::boundary(hook, || hook.digest(|| call.digest()), || call.call_original(original));
        }
        let digest = hook.digest(|| call.digest());
        // posix's own constant (CPython's numbering, not the C library's).
        let dup2_constant = ffi::PyObject_GetAttrString(slf, c"POSIX_SPAWN_DUP2".as_ptr());
        let dup2 = if dup2_constant.is_null() { -1 } else { ffi::PyLong_AsLongLong(dup2_constant) };
        ffi::Py_XDECREF(dup2_constant);
        ffi::PyErr_Clear();
        if dup2 < 0 {
            return crate::dispatch::boundary(hook, || digest, || call.call_original(original));
        }
        let existing = call.keyword("file_actions");
        let redirected = |target: c_int| -> bool {
            // A program's own dup2 to 1 or 2 (subprocess's stdout=PIPE) is left alone.
            let Some(actions) = existing else { return false };
            let list = ffi::PySequence_List(actions);
            if list.is_null() {
                ffi::PyErr_Clear();
                return true;
            }
            let found = (0..ffi::PyList_GET_SIZE(list)).any(|i| {
                let action = ffi::PyList_GET_ITEM(list, i);
                ffi::PyTuple_Check(action) != 0
                    && ffi::PyTuple_GET_SIZE(action) == 3
                    && ffi::PyLong_AsLongLong(ffi::PyTuple_GET_ITEM(action, 0)) == dup2
                    && ffi::PyLong_AsLongLong(ffi::PyTuple_GET_ITEM(action, 2)) == i64::from(target)
            });
            ffi::PyErr_Clear();
            ffi::Py_DECREF(list);
            found
        };
        let mut pending = Vec::new();
        let mut added = Vec::new();
        for target in [1, 2] {
            if redirected(target) || !capturable(target) {
                continue;
            }
            match channel_for(target) {
                Ok((child_end, ours)) => {
                    let action = ffi::Py_BuildValue(c"(Lii)".as_ptr(), dup2, child_end.as_raw_fd(), target);
                    if action.is_null() {
                        ffi::PyErr_Clear();
                        continue;
                    }
                    added.push(action);
                    pending.push((child_end, ours, target));
                }
                Err(e) => write_stderr(&format!(
                    "retrace: warning: a child's output to descriptor {target} is not recorded ({e}); a replay will not show it\n"
                )),
            }
        }
        if pending.is_empty() {
            return crate::dispatch::boundary(hook, || digest, || call.call_original(original));
        }
        // file_actions = our dup2s first, then the program's own (a CLOSEFROM among them
        // closes our descriptors in the child after they were duplicated).
        let actions = ffi::PyList_New(0);
        for &a in &added {
            ffi::PyList_Append(actions, a);
            ffi::Py_DECREF(a);
        }
        if let Some(existing) = existing {
            let rest = ffi::PySequence_List(existing);
            if !rest.is_null() {
                for i in 0..ffi::PyList_GET_SIZE(rest) {
                    ffi::PyList_Append(actions, ffi::PyList_GET_ITEM(rest, i));
                }
                ffi::Py_DECREF(rest);
            }
            ffi::PyErr_Clear();
        }
        // The same call with `file_actions` replaced or added.
        let positional = call.positional();
        let mut names: Vec<*mut ffi::PyObject> = if kwnames.is_null() { Vec::new() } else { crate::calls::tuple_items(kwnames).to_vec() };
        let mut values: Vec<*mut ffi::PyObject> = if kwnames.is_null() {
            Vec::new()
        } else {
            std::slice::from_raw_parts(args.offset(nargs), names.len()).to_vec()
        };
        let key = ffi::PyUnicode_FromString(c"file_actions".as_ptr());
        match names.iter().position(|&n| crate::codec::str_eq(n, "file_actions")) {
            Some(i) => values[i] = actions,
            None => {
                names.push(key);
                values.push(actions);
            }
        }
        let new_names = ffi::PyTuple_New(names.len() as ffi::Py_ssize_t);
        for (i, &n) in names.iter().enumerate() {
            ffi::Py_INCREF(n);
            ffi::PyTuple_SET_ITEM(new_names, i as ffi::Py_ssize_t, n);
        }
        let mut all = positional.to_vec();
        all.extend_from_slice(&values);
        let result = crate::signals::in_call(|| RawCall::FastKw { slf, args: all.as_ptr(), nargs, kwnames: new_names }.call_original(original));
        ffi::Py_DECREF(new_names);
        ffi::Py_DECREF(key);
        ffi::Py_DECREF(actions);
        let mut captures = Vec::new();
        for (child_end, ours, target) in pending {
            drop(child_end);
            if result.is_null() {
                continue;
            }
            if let Ok(capture) = start(ours, target, None) {
                captures.push(capture);
            }
        }
        record_outcome(hook, digest, result);
        remember(result, captures);
        result
    }
}

/// `os.waitpid`, `os.wait`, `os.wait4`: recorded with the output of the child they reaped
/// (see the module comment).
///
/// # Safety
/// Called through a method proxy with the GIL held.
pub unsafe fn wait(hook: &'static Hook, call: RawCall) -> *mut ffi::PyObject {
    // SAFETY: see the function's contract.
    unsafe {
        let original = hook.original();
        with_output(hook, call, |result| {
            let (pid, status) = reaped(result)?;
            let terminated = libc::WIFEXITED(status) || libc::WIFSIGNALED(status);
            if !terminated {
                return None;
            }
            BY_PID.lock().unwrap_or_else(|e| e.into_inner()).as_mut()?.remove(&pid)
        }, || call.call_original(original))
    }
}

/// `os.system`: the command's inherited output is captured by pointing the program's
/// descriptors 1 and 2 at our pipes for the duration of the call (output other threads
/// write meanwhile is captured too: it is shown live, and again at replay).
///
/// # Safety
/// Called through a method proxy with the GIL held.
pub unsafe fn system(hook: &'static Hook, call: RawCall) -> *mut ffi::PyObject {
    // SAFETY: see the function's contract.
    unsafe {
        let original = hook.original();
        if active_thread().is_none() {
            return call.call_original(original);
        }
        match mode() {
            MODE_REPLAY => replay_with_output(hook, call),
            MODE_RECORD => {
                let mut captures = Vec::new();
                let mut swapped = Vec::new();
                for target in [1, 2] {
                    if !capturable(target) {
                        continue;
                    }
                    let Ok((child_end, ours)) = channel_for(target) else { continue };
                    let Ok(saved) = private(libc::fcntl(target, libc::F_DUPFD_CLOEXEC, 0)) else { continue };
                    let Ok(original_target) = private(libc::fcntl(saved.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0)) else { continue };
                    if libc::dup2(child_end.as_raw_fd(), target) < 0 {
                        continue;
                    }
                    match start(ours, target, Some(original_target)) {
                        Ok(capture) => captures.push(capture),
                        Err(_) => {
                            libc::dup2(saved.as_raw_fd(), target);
                            continue;
                        }
                    }
                    swapped.push((target, saved));
                }
                let result = crate::signals::in_call(|| call.call_original(original));
                for (target, saved) in swapped {
                    libc::dup2(saved.as_raw_fd(), target);
                }
                with_recorded_output(hook, call, result, |_| Some(captures))
            }
            _ => call.call_original(original),
        }
    }
}

/// `(pid, status, ...)` with a child reaped.
///
/// # Safety
/// GIL held; `result` live or NULL.
unsafe fn reaped(result: *mut ffi::PyObject) -> Option<(i64, c_int)> {
    // SAFETY: reads of a live tuple's items.
    unsafe {
        if result.is_null() || ffi::PyTuple_Check(result) == 0 || ffi::PyTuple_GET_SIZE(result) < 2 {
            return None;
        }
        let pid = ffi::PyLong_AsLongLong(ffi::PyTuple_GET_ITEM(result, 0));
        let status = ffi::PyLong_AsLong(ffi::PyTuple_GET_ITEM(result, 1));
        if !ffi::PyErr_Occurred().is_null() {
            ffi::PyErr_Clear();
            return None;
        }
        (pid > 0).then_some((pid, status as c_int))
    }
}

/// Records or replays a call whose outcome carries children's output: recorded as
/// `(result, [(descriptor, bytes), ...])`.
///
/// # Safety
/// GIL held.
unsafe fn with_output(
    hook: &'static Hook,
    call: RawCall,
    captured: impl FnOnce(*mut ffi::PyObject) -> Option<Vec<Capture>>,
    invoke: impl FnOnce() -> *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: per the caller's guarantee.
    unsafe {
        if mode() == MODE_RECORD && active_thread().is_some() {
            let result = crate::signals::in_call(invoke);
            return with_recorded_output(hook, call, result, captured);
        }
        if mode() == MODE_REPLAY && active_thread().is_some() {
            return replay_with_output(hook, call);
        }
        invoke()
    }
}

/// # Safety
/// GIL held; `result` the call's result (returned, not consumed).
unsafe fn with_recorded_output(
    hook: &'static Hook,
    call: RawCall,
    result: *mut ffi::PyObject,
    captured: impl FnOnce(*mut ffi::PyObject) -> Option<Vec<Capture>>,
) -> *mut ffi::PyObject {
    // SAFETY: per the caller's guarantee.
    unsafe {
        if mode() != MODE_RECORD || active_thread().is_none() {
            return result;
        }
        let digest = hook.digest(|| call.digest());
        if result.is_null() || !is_encodable(result, 0) {
            record_outcome(hook, digest, result);
            return result;
        }
        let outputs: Vec<(c_int, Vec<u8>)> = captured(result)
            .unwrap_or_default()
            .into_iter()
            .map(Capture::collect)
            .filter(|(_, bytes)| !bytes.is_empty())
            .collect();
        record_with(hook, |rec| {
            rec.enc.call(hook.id, digest);
            rec.enc.tuple(2);
            encode_object(&mut rec.enc, result, None);
            rec.enc.list(outputs.len());
            for (fd, bytes) in &outputs {
                rec.enc.tuple(2);
                rec.enc.int((*fd).into());
                rec.enc.bytes(bytes);
            }
        });
        result
    }
}

/// # Safety
/// GIL held.
unsafe fn replay_with_output(hook: &'static Hook, call: RawCall) -> *mut ffi::PyObject {
    // SAFETY: per the caller's guarantee.
    unsafe {
        match replay_take(hook, hook.digest(|| call.digest())) {
            Replayed::Raise(e) => {
                raise_recorded(&e);
                std::ptr::null_mut()
            }
            Replayed::Value(Value::Tuple(parts)) if parts.len() == 2 => {
                if let Value::List(outputs) = &parts[1] {
                    for output in outputs {
                        if let Value::Tuple(pair) = output {
                            if let [Value::Int(fd), Value::Bytes(bytes)] = pair.as_slice() {
                                write_all(*fd as c_int, bytes);
                            }
                        }
                    }
                }
                decode_value(&parts[0])
            }
            Replayed::Value(_) => crate::handlers::bad_value(hook),
        }
    }
}

//! File descriptors the recording owns.
//!
//! A descriptor opened by a recorded call (a data file, a socket, a pipe to a child) is
//! *tracked*: every call that uses it is a boundary call, identified by the descriptor's
//! number. At replay the outside world behind it does not exist, so the descriptor is
//! *materialised* as a harmless stand-in of the same kind at exactly the recorded number
//! (`/dev/null` for files, an unconnected socket of the same family for sockets, a fresh
//! pipe for pipes). Code we do not intercept can then use the number without harm, and the
//! program sees the same numbers it saw when recorded (the trace writer keeps its own
//! descriptor above 1000, out of the way).
//!
//! Descriptors the program did not open through a recorded call are not tracked: the
//! terminal on 1 and 2 (its output really appears at replay), descriptors of the import
//! system, of our own code and of a debugger. Standard input (0) is tracked from the
//! start: what the program read is input, and the replay feeds it back.
//! `dup2` carries tracking along, so redirecting stdout into a recorded file (as pytest's
//! capture does) records what goes there, and restoring it makes output live again.

use crate::session::{py, STATE};
use std::collections::BTreeMap;
use std::os::raw::c_int;

/// Numbers below this are also kept in a bit set.
const LOW_FDS: usize = 1024;

/// The tracked descriptors. Every socket, file and descriptor call asks whether its
/// descriptor is tracked first: a bit test answers that for the usual numbers, where a
/// search of the map was a measurable part of a loopback `send`.
pub struct Descriptors {
    kinds: BTreeMap<c_int, FdKind>,
    low: [u64; LOW_FDS / 64],
}

impl Descriptors {
    pub const fn new() -> Self {
        Descriptors { kinds: BTreeMap::new(), low: [0; LOW_FDS / 64] }
    }

    #[inline]
    pub fn contains(&self, fd: c_int) -> bool {
        match usize::try_from(fd) {
            Ok(n) if n < LOW_FDS => self.low[n / 64] & (1 << (n % 64)) != 0,
            _ => self.kinds.contains_key(&fd),
        }
    }

    pub fn get(&self, fd: c_int) -> Option<FdKind> {
        self.kinds.get(&fd).copied()
    }

    pub fn insert(&mut self, fd: c_int, kind: FdKind) {
        self.set_low(fd, true);
        self.kinds.insert(fd, kind);
    }

    pub fn remove(&mut self, fd: c_int) {
        self.set_low(fd, false);
        self.kinds.remove(&fd);
    }

    fn set_low(&mut self, fd: c_int, tracked: bool) {
        if let Ok(n) = usize::try_from(fd) {
            if n < LOW_FDS {
                let bit = 1 << (n % 64);
                if tracked {
                    self.low[n / 64] |= bit;
                } else {
                    self.low[n / 64] &= !bit;
                }
            }
        }
    }
}

/// What a tracked descriptor is, which decides its stand-in at replay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FdKind {
    File,
    Socket { family: c_int, kind: c_int, proto: c_int },
    /// One end of a pipe (to or from a child process).
    Pipe { write: bool },
}

pub fn is_tracked(fd: c_int) -> bool {
    // SAFETY: only called from hooks, with the GIL held.
    let py = unsafe { py() };
    STATE.with(py, |s| s.fds.contains(fd)).unwrap_or(false)
}

pub fn kind_of(fd: c_int) -> Option<FdKind> {
    // SAFETY: only called from hooks, with the GIL held.
    let py = unsafe { py() };
    STATE.with(py, |s| s.fds.get(fd)).flatten()
}

pub fn track(fd: c_int, kind: FdKind) {
    // SAFETY: only called from hooks, with the GIL held.
    let py = unsafe { py() };
    STATE.with(py, |s| s.fds.insert(fd, kind));
}

pub fn untrack(fd: c_int) {
    // SAFETY: only called from hooks, with the GIL held.
    let py = unsafe { py() };
    STATE.with(py, |s| s.fds.remove(fd));
}

/// How long a replay waits for a descriptor number another thread holds for a moment.
const FREE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(2);

/// Waits, without the GIL, while `fd` is open with something that is not one of our
/// stand-ins. Such a descriptor is opened live at replay, usually for a moment: the import
/// system reading a module on another thread. When recorded, that thread had not opened
/// it yet, or had closed it already, when this descriptor number was given out.
fn wait_until_free(fd: c_int) -> Result<(), String> {
    let in_use = || {
        // SAFETY: F_GETFD only asks whether the descriptor is open.
        unsafe { libc::fcntl(fd, libc::F_GETFD) != -1 }
    };
    let started = std::time::Instant::now();
    while in_use() && !is_tracked(fd) {
        if started.elapsed() > FREE_PATIENCE {
            let what = std::fs::read_link(format!("/proc/self/fd/{fd}")).map(|p| format!(" (by {})", p.display())).unwrap_or_default();
            return Err(format!("descriptor {fd}, which the recorded program opened, is already in use at replay{what}"));
        }
        // SAFETY: called from hooks with the GIL held; it is given up for the sleep, so the
        // thread holding the descriptor can go on, and taken back.
        unsafe {
            let saved = pyo3::ffi::PyEval_SaveThread();
            std::thread::sleep(std::time::Duration::from_millis(1));
            pyo3::ffi::PyEval_RestoreThread(saved);
        }
    }
    Ok(())
}

/// At replay: creates a stand-in of `kind` at descriptor number `fd` and tracks it.
/// Fails when `fd` is already open with something that is not ours to replace.
pub fn materialize(fd: c_int, kind: FdKind) -> Result<(), String> {
    if fd < 0 {
        return Err(format!("the recording holds an invalid descriptor {fd}"));
    }
    wait_until_free(fd)?;
    // SAFETY: plain descriptor system calls on descriptors we create; a descriptor that is
    // open already is only replaced when it is one of our own stand-ins (tracked).
    unsafe {
        let standin = match kind {
            FdKind::File => libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC),
            FdKind::Socket { family, kind, proto } => {
                let s = libc::socket(family, kind | libc::SOCK_CLOEXEC, proto);
                if s >= 0 {
                    s
                } else {
                    libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0)
                }
            }
            FdKind::Pipe { write } => {
                let mut ends = [0 as c_int; 2];
                if libc::pipe2(ends.as_mut_ptr(), libc::O_CLOEXEC) < 0 {
                    -1
                } else {
                    let (keep, drop) = if write { (ends[1], ends[0]) } else { (ends[0], ends[1]) };
                    libc::close(drop);
                    keep
                }
            }
        };
        if standin < 0 {
            return Err(format!("cannot create a stand-in descriptor: {}", std::io::Error::last_os_error()));
        }
        if standin != fd {
            if libc::dup3(standin, fd, libc::O_CLOEXEC) < 0 {
                let err = std::io::Error::last_os_error();
                libc::close(standin);
                return Err(format!("cannot place a stand-in at descriptor {fd}: {err}"));
            }
            libc::close(standin);
        }
    }
    track(fd, kind);
    Ok(())
}

/// The descriptor stored in a FileIO or socket object: both C structs keep it, as a C
/// `int`, right after the object header, on every CPython version we build for.
///
/// # Safety
/// `obj` must be an instance (or subclass instance) of `_io.FileIO` or `_socket.socket`.
pub unsafe fn fd_field(obj: *mut pyo3::ffi::PyObject) -> c_int {
    // SAFETY: per the contract, the int follows the PyObject header.
    unsafe { *(obj.cast::<u8>().add(std::mem::size_of::<pyo3::ffi::PyObject>()) as *const c_int) }
}

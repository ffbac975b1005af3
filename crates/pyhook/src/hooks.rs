//! The hooks table: every boundary we intercept, in one declarative list.
//!
//! Each row names the callable (module and attribute path), where the patch goes (the
//! function's `PyMethodDef`, a type's `tp_init` slot, or nowhere for boundaries that our
//! Python package routes through [`crate::handlers::call_boundary`]) and the handler that
//! gives the call its record and replay behaviour. A row's position is its function id in
//! the trace, so rows are only ever appended.

use crate::calls::{Convention, FastFn, FastKwFn, InitFn, IterNextFn, MethodFastKwFn, NoArgsFn, VarArgsKwFn};
use pyo3::ffi;
use retrace_recorder::wire::{FN_HAS_DIGEST, FN_SYNC};
use crate::fileio::FileOp;
use crate::osfd::FdOp;
use crate::sockets::SockOp;
use crate::sqlite::{CallbackKind, SqliteOp};
use crate::threads::LockOp;
use std::ffi::CString;
use std::os::raw::c_void;
use std::sync::atomic::{AtomicPtr, AtomicU8, Ordering};

/// Where a hook is installed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Target {
    /// Swap `ml_meth` in the `PyMethodDef` of the function or method at the path.
    Method,
    /// Swap `tp_init` of the type at the path.
    Init,
    /// Swap `tp_iternext` of the type at the path.
    IterNext,
    /// Swap the getter of the property (a `PyGetSetDef`) at the path; the proxy is the
    /// METH_NOARGS one, whose C signature a getter shares (`self`, then a pointer).
    Getter,
    /// Swap the setter of the property at the path; the proxy is the `tp_init` one, whose
    /// C signature a setter shares (`self`, the value, a pointer; returns an int).
    Setter,
    /// Not patched in C: our Python package calls the boundary through `call_boundary`.
    Python,
}

/// How a call is recorded and replayed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Handler {
    /// The result (or exception) is the call's whole effect.
    Generic,
    /// As Generic, but live when the import system makes the call (it resolves `''` on
    /// `sys.path` with `os.getcwd()`, and must find modules where they are at replay).
    GenericExceptImports,
    /// `poll.poll(timeout)`, `epoll.poll(timeout, maxevents)`: as Generic, but the
    /// arguments (a timeout an event loop computes from what is ready, which another thread
    /// may change just before) are not compared at replay.
    Readiness,
    /// `datetime.now`: read the clock once, build with `fromtimestamp`.
    DatetimeNow,
    /// `datetime.utcnow`: read the clock once, build with `utcfromtimestamp`.
    DatetimeUtcNow,
    /// `_random.Random.seed(None)` and `_random.Random()`: seed from recorded bytes.
    RandomSeed,
    /// `os._exit`: record it and close the trace, because atexit will not run.
    ProcessExit,
    /// `os.execv`, `os.execve`: the recorded process becomes another program, which is
    /// not recorded; the trace is closed first, and the replay ends there.
    ProcessExec,
    /// `_io.FileIO.__init__`: opening a data file (see `fileio.rs`).
    FileOpen,
    /// A method of a tracked `_io.FileIO`.
    File(FileOp),
    /// An `os`-level descriptor or path call, or `select.select` (see `osfd.rs`).
    Fd(FdOp),
    /// `_socket.socket.__init__`.
    SockInit,
    /// `_socket.socketpair` (see `sockets.rs`).
    SocketPair,
    /// A method of a tracked socket.
    Sock(SockOp),
    /// `os.scandir` (see `dirs.rs`).
    Scandir,
    /// `_signal.signal`: installs our recording wrapper (see `signals.rs`).
    SignalSet,
    /// `_signal.getsignal`: shows the program's handler, not our wrapper.
    SignalGet,
    /// `sqlite3.Connection.__init__` (see `sqlite.rs`).
    SqliteConnect,
    /// A method of a sqlite3 connection or cursor.
    Sqlite(SqliteOp),
    /// `sqlite3.Cursor.__next__`.
    SqliteNext,
    /// `_posixsubprocess.fork_exec`: a child's inherited stdout/stderr is captured (see
    /// `children.rs`).
    ForkExec,
    /// `os.posix_spawn(p)`: as ForkExec.
    Spawn,
    /// `os.waitpid`, `wait`, `wait4`: recorded with the output of the child reaped.
    Wait,
    /// `os.system`: recorded with the command's output to the inherited stdout/stderr.
    System,
    /// `_thread.start_new_thread` / `start_joinable_thread` (see `threads.rs`).
    ThreadStart,
    /// `_thread._set_sentinel`: not recorded; the lock it makes is remembered (see
    /// `threads.rs`).
    ThreadSentinel,
    /// A method of `_thread.lock` or `_thread.RLock`: a point of the thread schedule.
    Lock(LockOp),
    /// `psycopg2`'s `connection.__init__`: libpq's socket is relayed and recorded (see `pg.rs`).
    PgConnect,
    /// A method of an SSL socket: the plaintext is recorded (see `sockets.rs`).
    Ssl,
    /// A function of the `gc` module: never recorded; keeps collections where they were
    /// (see `gc.rs`).
    Gc(GcOp),
    /// A boundary we cannot replay yet: recorded as a marker (with a warning), and a
    /// replay that reaches it stops there, naming it, instead of reaching the real world.
    Unsupported,
}

/// The `gc` functions we watch.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum GcOp {
    Collect,
    GetThreshold,
    SetThreshold,
}

/// Proxies for every convention; the one matching the live function is installed.
pub struct Proxies {
    pub noargs: NoArgsFn,
    pub varargs: NoArgsFn,
    pub varargs_kw: VarArgsKwFn,
    pub fast: FastFn,
    pub fast_kw: FastKwFn,
    pub method_fast_kw: MethodFastKwFn,
    pub init: InitFn,
    pub iternext: IterNextFn,
}

pub struct Hook {
    pub id: u32,
    /// The qualified name shown in traces and reports, e.g. `time.time`.
    pub name: &'static str,
    pub module: &'static str,
    pub path: &'static [&'static str],
    pub target: Target,
    pub handler: Handler,
    pub proxies: Proxies,
    original: AtomicPtr<c_void>,
    /// The installed convention, as `Convention as u8 + 1` (0: not installed).
    convention: AtomicU8,
}

impl Hook {
    /// The original C function (NULL until installed).
    pub fn original(&self) -> *mut c_void {
        self.original.load(Ordering::Relaxed)
    }

    /// The proxy that replaces a C function of this calling convention.
    fn method_proxy(&self, convention: Convention) -> Option<*mut c_void> {
        let p = &self.proxies;
        Some(match convention {
            Convention::NoArgs | Convention::O => p.noargs as *mut c_void,
            Convention::VarArgs => p.varargs as *mut c_void,
            Convention::VarArgsKw => p.varargs_kw as *mut c_void,
            Convention::Fast => p.fast as *mut c_void,
            Convention::FastKw => p.fast_kw as *mut c_void,
            Convention::MethodFastKw => p.method_fast_kw as *mut c_void,
            Convention::InitSlot | Convention::IterNextSlot => return None,
        })
    }

    /// Whether calls are points of the thread schedule (see `FN_SYNC`): everything but
    /// reads of the process's own state, which must not cost a hand-off between threads.
    pub fn is_sync(&self) -> bool {
        !NOT_SCHEDULE_POINTS.contains(&self.name)
    }

    /// Flags stored with the function's definition in the trace.
    pub fn fn_flags(&self) -> u8 {
        self.digest_flag() | if self.is_sync() { FN_SYNC } else { 0 }
    }

    fn digest_flag(&self) -> u8 {
        let takes_args = match self.target {
            Target::Python | Target::Init | Target::Setter => true,
            Target::IterNext | Target::Getter => false,
            Target::Method => {
                let c = self.convention.load(Ordering::Relaxed);
                c != 0 && c - 1 != Convention::NoArgs as u8
            }
        };
        if takes_args {
            FN_HAS_DIGEST
        } else {
            0
        }
    }

    /// The digest stored with this function's events: present exactly when its
    /// definition in the trace says so, which is what the reader relies on.
    pub fn digest(&self, compute: impl FnOnce() -> u32) -> Option<u32> {
        (self.digest_flag() != 0).then(compute)
    }
}

/// Boundaries that read the process's own state (clocks, entropy, ids, the environment):
/// replayed in their thread's order only.
const NOT_SCHEDULE_POINTS: &[&str] = &[
    "time.time", "time.time_ns", "time.monotonic", "time.monotonic_ns", "time.perf_counter",
    "time.perf_counter_ns", "time.process_time", "time.process_time_ns", "time.thread_time",
    "time.thread_time_ns", "time.clock_gettime", "time.clock_gettime_ns",
    "datetime.datetime.now", "datetime.datetime.utcnow", "os.urandom", "os.getrandom",
    "os.getpid", "os.getppid", "os.getcwd", "os.getcwdb", "random.Random.seed",
    "random.Random.__init__", "os.environ[]", "os.environ.keys", "os.environ.__len__",
    "os.getuid", "os.geteuid", "os.getgid", "os.getegid", "os.uname", "os.times",
    "os.cpu_count", "os.getloadavg", "os.get_terminal_size", "time.localtime", "time.gmtime",
    "time.ctime", "time.asctime", "time.strftime", "signal.getsignal",
    "psycopg2.connection.get_dsn_parameters",
];

macro_rules! hook_table {
    ($( $id:ident => $name:literal, $module:literal, [$($attr:literal),+], $target:ident, $handler:expr; )*) => {
        #[allow(non_camel_case_types, clippy::upper_case_acronyms)]
        #[derive(Clone, Copy, Debug)]
        #[repr(u32)]
        pub enum HookId { $($id,)* }

        const HOOK_COUNT: usize = [$(stringify!($id)),*].len();

        pub static HOOKS: [Hook; HOOK_COUNT] = [ $(
            Hook {
                id: HookId::$id as u32,
                name: $name,
                module: $module,
                path: &[$($attr),+],
                target: Target::$target,
                handler: $handler,
                proxies: Proxies {
                    noargs: proxies::$id::noargs,
                    varargs: proxies::$id::varargs,
                    varargs_kw: proxies::$id::varargs_kw,
                    fast: proxies::$id::fast,
                    fast_kw: proxies::$id::fast_kw,
                    method_fast_kw: proxies::$id::method_fast_kw,
                    init: proxies::$id::init,
                    iternext: proxies::$id::iternext,
                },
                original: AtomicPtr::new(std::ptr::null_mut()),
                convention: AtomicU8::new(0),
            },
        )* ];

        /// One module of proxies per hook: each forwards its raw arguments to the handler.
        #[allow(non_snake_case)]
        mod proxies { $(
            pub mod $id {
                use crate::calls::{InitCall, RawCall};
                // The handler expressions of the table name items imported there.
                use crate::hooks::*;
                use pyo3::ffi::{PyObject, PyTypeObject, Py_ssize_t};
                use std::os::raw::c_int;
                const ID: usize = HookId::$id as usize;
                const HANDLER: Handler = $handler;

                // SAFETY (all proxies): CPython calls these with the GIL held and the
                // arguments of the convention the proxy was installed for.
                pub unsafe extern "C-unwind" fn noargs(slf: *mut PyObject, arg: *mut PyObject) -> *mut PyObject {
                    // METH_NOARGS and METH_O share this signature; the installed
                    // convention tells them apart.
                    let call = if HOOKS[ID].is_o() { RawCall::O { slf, arg } } else { RawCall::NoArgs { slf, unused: arg } };
                    // SAFETY: see above.
                    unsafe { crate::handlers::dispatch(&HOOKS[ID], HANDLER, call) }
                }
                pub unsafe extern "C-unwind" fn varargs(slf: *mut PyObject, args: *mut PyObject) -> *mut PyObject {
                    // SAFETY: see above.
                    unsafe { crate::handlers::dispatch(&HOOKS[ID], HANDLER, RawCall::VarArgs { slf, args }) }
                }
                pub unsafe extern "C-unwind" fn varargs_kw(slf: *mut PyObject, args: *mut PyObject, kwargs: *mut PyObject) -> *mut PyObject {
                    // SAFETY: see above.
                    unsafe { crate::handlers::dispatch(&HOOKS[ID], HANDLER, RawCall::VarArgsKw { slf, args, kwargs }) }
                }
                pub unsafe extern "C-unwind" fn fast(slf: *mut PyObject, args: *const *mut PyObject, nargs: Py_ssize_t) -> *mut PyObject {
                    // SAFETY: see above.
                    unsafe { crate::handlers::dispatch(&HOOKS[ID], HANDLER, RawCall::Fast { slf, args, nargs }) }
                }
                pub unsafe extern "C-unwind" fn fast_kw(slf: *mut PyObject, args: *const *mut PyObject, nargs: Py_ssize_t, kwnames: *mut PyObject) -> *mut PyObject {
                    // SAFETY: see above.
                    unsafe { crate::handlers::dispatch(&HOOKS[ID], HANDLER, RawCall::FastKw { slf, args, nargs, kwnames }) }
                }
                pub unsafe extern "C-unwind" fn method_fast_kw(slf: *mut PyObject, cls: *mut PyTypeObject, args: *const *mut PyObject, nargs: Py_ssize_t, kwnames: *mut PyObject) -> *mut PyObject {
                    // SAFETY: see above.
                    unsafe { crate::handlers::dispatch(&HOOKS[ID], HANDLER, RawCall::MethodFastKw { slf, cls, args, nargs, kwnames }) }
                }
                pub unsafe extern "C-unwind" fn init(slf: *mut PyObject, args: *mut PyObject, kwargs: *mut PyObject) -> c_int {
                    // SAFETY: see above.
                    unsafe { crate::handlers::dispatch_init(&HOOKS[ID], InitCall { slf, args, kwargs }) }
                }
                pub unsafe extern "C-unwind" fn iternext(slf: *mut PyObject) -> *mut PyObject {
                    // SAFETY: see above.
                    unsafe { crate::handlers::dispatch_iternext(&HOOKS[ID], slf) }
                }
            }
        )* }
    };
}

hook_table! {
    time_time => "time.time", "time", ["time"], Method, Handler::Generic;
    time_time_ns => "time.time_ns", "time", ["time_ns"], Method, Handler::Generic;
    time_monotonic => "time.monotonic", "time", ["monotonic"], Method, Handler::Generic;
    time_monotonic_ns => "time.monotonic_ns", "time", ["monotonic_ns"], Method, Handler::Generic;
    time_perf_counter => "time.perf_counter", "time", ["perf_counter"], Method, Handler::Generic;
    time_perf_counter_ns => "time.perf_counter_ns", "time", ["perf_counter_ns"], Method, Handler::Generic;
    time_process_time => "time.process_time", "time", ["process_time"], Method, Handler::Generic;
    time_process_time_ns => "time.process_time_ns", "time", ["process_time_ns"], Method, Handler::Generic;
    time_thread_time => "time.thread_time", "time", ["thread_time"], Method, Handler::Generic;
    time_thread_time_ns => "time.thread_time_ns", "time", ["thread_time_ns"], Method, Handler::Generic;
    time_clock_gettime => "time.clock_gettime", "time", ["clock_gettime"], Method, Handler::Generic;
    time_clock_gettime_ns => "time.clock_gettime_ns", "time", ["clock_gettime_ns"], Method, Handler::Generic;
    time_sleep => "time.sleep", "time", ["sleep"], Method, Handler::Generic;
    datetime_now => "datetime.datetime.now", "_datetime", ["datetime", "now"], Method, Handler::DatetimeNow;
    datetime_utcnow => "datetime.datetime.utcnow", "_datetime", ["datetime", "utcnow"], Method, Handler::DatetimeUtcNow;
    os_urandom => "os.urandom", "posix", ["urandom"], Method, Handler::Generic;
    os_getrandom => "os.getrandom", "posix", ["getrandom"], Method, Handler::Generic;
    os_getpid => "os.getpid", "posix", ["getpid"], Method, Handler::Generic;
    os_getppid => "os.getppid", "posix", ["getppid"], Method, Handler::Generic;
    os_getcwd => "os.getcwd", "posix", ["getcwd"], Method, Handler::GenericExceptImports;
    os_getcwdb => "os.getcwdb", "posix", ["getcwdb"], Method, Handler::GenericExceptImports;
    os_exit => "os._exit", "posix", ["_exit"], Method, Handler::ProcessExit;
    random_seed => "random.Random.seed", "_random", ["Random", "seed"], Method, Handler::RandomSeed;
    random_init => "random.Random.__init__", "_random", ["Random"], Init, Handler::RandomSeed;
    environ_get => "os.environ[]", "os", ["environ"], Python, Handler::Generic;
    environ_keys => "os.environ.keys", "os", ["environ"], Python, Handler::Generic;
    environ_len => "os.environ.__len__", "os", ["environ"], Python, Handler::Generic;
    fileio_open => "io.FileIO.__init__", "_io", ["FileIO"], Init, Handler::FileOpen;
    fileio_read => "io.FileIO.read", "_io", ["FileIO", "read"], Method, Handler::File(FileOp::Plain);
    fileio_readall => "io.FileIO.readall", "_io", ["FileIO", "readall"], Method, Handler::File(FileOp::Plain);
    fileio_readinto => "io.FileIO.readinto", "_io", ["FileIO", "readinto"], Method, Handler::File(FileOp::ReadInto);
    fileio_write => "io.FileIO.write", "_io", ["FileIO", "write"], Method, Handler::File(FileOp::Plain);
    fileio_seek => "io.FileIO.seek", "_io", ["FileIO", "seek"], Method, Handler::File(FileOp::Plain);
    fileio_tell => "io.FileIO.tell", "_io", ["FileIO", "tell"], Method, Handler::File(FileOp::Plain);
    fileio_truncate => "io.FileIO.truncate", "_io", ["FileIO", "truncate"], Method, Handler::File(FileOp::Plain);
    fileio_isatty => "io.FileIO.isatty", "_io", ["FileIO", "isatty"], Method, Handler::File(FileOp::Plain);
    fileio_seekable => "io.FileIO.seekable", "_io", ["FileIO", "seekable"], Method, Handler::File(FileOp::Plain);
    fileio_close => "io.FileIO.close", "_io", ["FileIO", "close"], Method, Handler::File(FileOp::Close);
    os_open => "os.open", "posix", ["open"], Method, Handler::Fd(FdOp::Open);
    os_close => "os.close", "posix", ["close"], Method, Handler::Fd(FdOp::Close);
    os_dup => "os.dup", "posix", ["dup"], Method, Handler::Fd(FdOp::Dup);
    os_dup2 => "os.dup2", "posix", ["dup2"], Method, Handler::Fd(FdOp::Dup2);
    os_pipe => "os.pipe", "posix", ["pipe"], Method, Handler::Fd(FdOp::Pipe);
    os_pipe2 => "os.pipe2", "posix", ["pipe2"], Method, Handler::Fd(FdOp::Pipe);
    os_read => "os.read", "posix", ["read"], Method, Handler::Fd(FdOp::Use);
    os_write => "os.write", "posix", ["write"], Method, Handler::Fd(FdOp::Use);
    os_pread => "os.pread", "posix", ["pread"], Method, Handler::Fd(FdOp::Use);
    os_pwrite => "os.pwrite", "posix", ["pwrite"], Method, Handler::Fd(FdOp::Use);
    os_readv => "os.readv", "posix", ["readv"], Method, Handler::Fd(FdOp::Use);
    os_writev => "os.writev", "posix", ["writev"], Method, Handler::Fd(FdOp::Use);
    os_lseek => "os.lseek", "posix", ["lseek"], Method, Handler::Fd(FdOp::Use);
    os_fstat => "os.fstat", "posix", ["fstat"], Method, Handler::Fd(FdOp::Use);
    os_fsync => "os.fsync", "posix", ["fsync"], Method, Handler::Fd(FdOp::Use);
    os_fdatasync => "os.fdatasync", "posix", ["fdatasync"], Method, Handler::Fd(FdOp::Use);
    os_ftruncate => "os.ftruncate", "posix", ["ftruncate"], Method, Handler::Fd(FdOp::Use);
    os_isatty => "os.isatty", "posix", ["isatty"], Method, Handler::Fd(FdOp::Use);
    os_stat => "os.stat", "posix", ["stat"], Method, Handler::Fd(FdOp::PathOrFd);
    os_lstat => "os.lstat", "posix", ["lstat"], Method, Handler::Fd(FdOp::PathOrFd);
    os_listdir => "os.listdir", "posix", ["listdir"], Method, Handler::Fd(FdOp::PathOrFd);
    os_access => "os.access", "posix", ["access"], Method, Handler::Fd(FdOp::PathOrFd);
    os_readlink => "os.readlink", "posix", ["readlink"], Method, Handler::Fd(FdOp::PathOrFd);
    os_statvfs => "os.statvfs", "posix", ["statvfs"], Method, Handler::Fd(FdOp::PathOrFd);
    os_chdir => "os.chdir", "posix", ["chdir"], Method, Handler::Fd(FdOp::PathOrFd);
    os_mkdir => "os.mkdir", "posix", ["mkdir"], Method, Handler::Fd(FdOp::PathOrFd);
    os_rmdir => "os.rmdir", "posix", ["rmdir"], Method, Handler::Fd(FdOp::PathOrFd);
    os_unlink => "os.unlink", "posix", ["unlink"], Method, Handler::Fd(FdOp::PathOrFd);
    os_remove => "os.remove", "posix", ["remove"], Method, Handler::Fd(FdOp::PathOrFd);
    os_rename => "os.rename", "posix", ["rename"], Method, Handler::Fd(FdOp::PathOrFd);
    os_replace => "os.replace", "posix", ["replace"], Method, Handler::Fd(FdOp::PathOrFd);
    os_chmod => "os.chmod", "posix", ["chmod"], Method, Handler::Fd(FdOp::PathOrFd);
    os_utime => "os.utime", "posix", ["utime"], Method, Handler::Fd(FdOp::PathOrFd);
    os_symlink => "os.symlink", "posix", ["symlink"], Method, Handler::Fd(FdOp::PathOrFd);
    os_link => "os.link", "posix", ["link"], Method, Handler::Fd(FdOp::PathOrFd);
    os_truncate => "os.truncate", "posix", ["truncate"], Method, Handler::Fd(FdOp::PathOrFd);
    os_scandir => "os.scandir", "posix", ["scandir"], Method, Handler::Scandir;
    os_system => "os.system", "posix", ["system"], Method, Handler::System;
    os_execv => "os.execv", "posix", ["execv"], Method, Handler::ProcessExec;
    os_execve => "os.execve", "posix", ["execve"], Method, Handler::ProcessExec;
    os_sendfile => "os.sendfile", "posix", ["sendfile"], Method, Handler::Fd(FdOp::Use);
    os_fork => "os.fork", "posix", ["fork"], Method, Handler::Generic;
    os_waitpid => "os.waitpid", "posix", ["waitpid"], Method, Handler::Wait;
    os_wait => "os.wait", "posix", ["wait"], Method, Handler::Wait;
    os_wait4 => "os.wait4", "posix", ["wait4"], Method, Handler::Wait;
    os_kill => "os.kill", "posix", ["kill"], Method, Handler::Generic;
    os_posix_spawn => "os.posix_spawn", "posix", ["posix_spawn"], Method, Handler::Spawn;
    os_posix_spawnp => "os.posix_spawnp", "posix", ["posix_spawnp"], Method, Handler::Spawn;
    os_getuid => "os.getuid", "posix", ["getuid"], Method, Handler::Generic;
    os_geteuid => "os.geteuid", "posix", ["geteuid"], Method, Handler::Generic;
    os_getgid => "os.getgid", "posix", ["getgid"], Method, Handler::Generic;
    os_getegid => "os.getegid", "posix", ["getegid"], Method, Handler::Generic;
    os_uname => "os.uname", "posix", ["uname"], Method, Handler::Generic;
    os_times => "os.times", "posix", ["times"], Method, Handler::Generic;
    os_cpu_count => "os.cpu_count", "posix", ["cpu_count"], Method, Handler::Generic;
    os_getloadavg => "os.getloadavg", "posix", ["getloadavg"], Method, Handler::Generic;
    os_get_terminal_size => "os.get_terminal_size", "posix", ["get_terminal_size"], Method, Handler::Generic;
    time_localtime => "time.localtime", "time", ["localtime"], Method, Handler::Generic;
    time_gmtime => "time.gmtime", "time", ["gmtime"], Method, Handler::Generic;
    time_ctime => "time.ctime", "time", ["ctime"], Method, Handler::Generic;
    time_asctime => "time.asctime", "time", ["asctime"], Method, Handler::Generic;
    time_strftime => "time.strftime", "time", ["strftime"], Method, Handler::Generic;
    subprocess_fork_exec => "_posixsubprocess.fork_exec", "_posixsubprocess", ["fork_exec"], Method, Handler::ForkExec;
    select_select => "select.select", "select", ["select"], Method, Handler::Fd(FdOp::Select);
    select_poll_poll => "select.poll.poll", "select", ["poll", "()", "poll"], Method, Handler::Readiness;
    select_epoll_poll => "select.epoll.poll", "select", ["epoll", "poll"], Method, Handler::Readiness;
    socket_init => "socket.socket.__init__", "_socket", ["socket"], Init, Handler::SockInit;
    socket_accept => "socket.socket._accept", "_socket", ["socket", "_accept"], Method, Handler::Sock(SockOp::Accept);
    socket_bind => "socket.socket.bind", "_socket", ["socket", "bind"], Method, Handler::Sock(SockOp::Plain);
    socket_connect => "socket.socket.connect", "_socket", ["socket", "connect"], Method, Handler::Sock(SockOp::Plain);
    socket_connect_ex => "socket.socket.connect_ex", "_socket", ["socket", "connect_ex"], Method, Handler::Sock(SockOp::Plain);
    socket_listen => "socket.socket.listen", "_socket", ["socket", "listen"], Method, Handler::Sock(SockOp::Plain);
    socket_send => "socket.socket.send", "_socket", ["socket", "send"], Method, Handler::Sock(SockOp::Plain);
    socket_sendall => "socket.socket.sendall", "_socket", ["socket", "sendall"], Method, Handler::Sock(SockOp::Plain);
    socket_sendto => "socket.socket.sendto", "_socket", ["socket", "sendto"], Method, Handler::Sock(SockOp::Plain);
    socket_sendmsg => "socket.socket.sendmsg", "_socket", ["socket", "sendmsg"], Method, Handler::Sock(SockOp::Plain);
    socket_recv => "socket.socket.recv", "_socket", ["socket", "recv"], Method, Handler::Sock(SockOp::Plain);
    socket_recvfrom => "socket.socket.recvfrom", "_socket", ["socket", "recvfrom"], Method, Handler::Sock(SockOp::Plain);
    socket_recvmsg => "socket.socket.recvmsg", "_socket", ["socket", "recvmsg"], Method, Handler::Sock(SockOp::Plain);
    socket_recv_into => "socket.socket.recv_into", "_socket", ["socket", "recv_into"], Method, Handler::Sock(SockOp::ReadInto);
    socket_recvfrom_into => "socket.socket.recvfrom_into", "_socket", ["socket", "recvfrom_into"], Method, Handler::Sock(SockOp::ReadInto);
    socket_shutdown => "socket.socket.shutdown", "_socket", ["socket", "shutdown"], Method, Handler::Sock(SockOp::Plain);
    socket_getpeername => "socket.socket.getpeername", "_socket", ["socket", "getpeername"], Method, Handler::Sock(SockOp::Plain);
    socket_getsockname => "socket.socket.getsockname", "_socket", ["socket", "getsockname"], Method, Handler::Sock(SockOp::Plain);
    socket_getsockopt => "socket.socket.getsockopt", "_socket", ["socket", "getsockopt"], Method, Handler::Sock(SockOp::Plain);
    socket_setsockopt => "socket.socket.setsockopt", "_socket", ["socket", "setsockopt"], Method, Handler::Sock(SockOp::Plain);
    socket_close => "socket.socket.close", "_socket", ["socket", "close"], Method, Handler::Sock(SockOp::Close);
    socket_getaddrinfo => "socket.getaddrinfo", "_socket", ["getaddrinfo"], Method, Handler::Generic;
    socket_getnameinfo => "socket.getnameinfo", "_socket", ["getnameinfo"], Method, Handler::Generic;
    socket_gethostbyname => "socket.gethostbyname", "_socket", ["gethostbyname"], Method, Handler::Generic;
    socket_gethostbyname_ex => "socket.gethostbyname_ex", "_socket", ["gethostbyname_ex"], Method, Handler::Generic;
    socket_gethostbyaddr => "socket.gethostbyaddr", "_socket", ["gethostbyaddr"], Method, Handler::Generic;
    socket_gethostname => "socket.gethostname", "_socket", ["gethostname"], Method, Handler::Generic;
    socket_getservbyname => "socket.getservbyname", "_socket", ["getservbyname"], Method, Handler::Generic;
    socket_getservbyport => "socket.getservbyport", "_socket", ["getservbyport"], Method, Handler::Generic;
    signal_signal => "signal.signal", "_signal", ["signal"], Method, Handler::SignalSet;
    signal_getsignal => "signal.getsignal", "_signal", ["getsignal"], Method, Handler::SignalGet;
    sqlite_connect => "sqlite3.connect", "_sqlite3", ["Connection"], Init, Handler::SqliteConnect;
    sqlite_connection_execute => "sqlite3.Connection.execute", "_sqlite3", ["Connection", "execute"], Method, Handler::Sqlite(SqliteOp::ConnectionExecute);
    sqlite_connection_executemany => "sqlite3.Connection.executemany", "_sqlite3", ["Connection", "executemany"], Method, Handler::Sqlite(SqliteOp::ConnectionExecute);
    sqlite_connection_executescript => "sqlite3.Connection.executescript", "_sqlite3", ["Connection", "executescript"], Method, Handler::Sqlite(SqliteOp::ConnectionExecute);
    sqlite_connection_commit => "sqlite3.Connection.commit", "_sqlite3", ["Connection", "commit"], Method, Handler::Generic;
    sqlite_connection_rollback => "sqlite3.Connection.rollback", "_sqlite3", ["Connection", "rollback"], Method, Handler::Generic;
    sqlite_connection_close => "sqlite3.Connection.close", "_sqlite3", ["Connection", "close"], Method, Handler::Sqlite(SqliteOp::Close);
    sqlite_cursor_execute => "sqlite3.Cursor.execute", "_sqlite3", ["Cursor", "execute"], Method, Handler::Sqlite(SqliteOp::CursorExecute);
    sqlite_cursor_executemany => "sqlite3.Cursor.executemany", "_sqlite3", ["Cursor", "executemany"], Method, Handler::Sqlite(SqliteOp::CursorExecute);
    sqlite_cursor_executescript => "sqlite3.Cursor.executescript", "_sqlite3", ["Cursor", "executescript"], Method, Handler::Sqlite(SqliteOp::CursorExecute);
    sqlite_cursor_fetchone => "sqlite3.Cursor.fetchone", "_sqlite3", ["Cursor", "fetchone"], Method, Handler::Sqlite(SqliteOp::Fetch);
    sqlite_cursor_fetchmany => "sqlite3.Cursor.fetchmany", "_sqlite3", ["Cursor", "fetchmany"], Method, Handler::Sqlite(SqliteOp::Fetch);
    sqlite_cursor_fetchall => "sqlite3.Cursor.fetchall", "_sqlite3", ["Cursor", "fetchall"], Method, Handler::Sqlite(SqliteOp::Fetch);
    sqlite_cursor_next => "sqlite3.Cursor.__next__", "_sqlite3", ["Cursor"], IterNext, Handler::SqliteNext;
    sqlite_cursor_close => "sqlite3.Cursor.close", "_sqlite3", ["Cursor", "close"], Method, Handler::Sqlite(SqliteOp::Close);
    ssl_do_handshake => "ssl.SSLSocket.do_handshake", "_ssl", ["_SSLSocket", "do_handshake"], Method, Handler::Ssl;
    ssl_read => "ssl.SSLSocket.read", "_ssl", ["_SSLSocket", "read"], Method, Handler::Ssl;
    ssl_write => "ssl.SSLSocket.write", "_ssl", ["_SSLSocket", "write"], Method, Handler::Ssl;
    ssl_pending => "ssl.SSLSocket.pending", "_ssl", ["_SSLSocket", "pending"], Method, Handler::Ssl;
    ssl_getpeercert => "ssl.SSLSocket.getpeercert", "_ssl", ["_SSLSocket", "getpeercert"], Method, Handler::Ssl;
    ssl_cipher => "ssl.SSLSocket.cipher", "_ssl", ["_SSLSocket", "cipher"], Method, Handler::Ssl;
    ssl_shared_ciphers => "ssl.SSLSocket.shared_ciphers", "_ssl", ["_SSLSocket", "shared_ciphers"], Method, Handler::Ssl;
    ssl_version => "ssl.SSLSocket.version", "_ssl", ["_SSLSocket", "version"], Method, Handler::Ssl;
    ssl_selected_alpn_protocol => "ssl.SSLSocket.selected_alpn_protocol", "_ssl", ["_SSLSocket", "selected_alpn_protocol"], Method, Handler::Ssl;
    ssl_compression => "ssl.SSLSocket.compression", "_ssl", ["_SSLSocket", "compression"], Method, Handler::Ssl;
    ssl_shutdown => "ssl.SSLSocket.shutdown", "_ssl", ["_SSLSocket", "shutdown"], Method, Handler::Ssl;
    ssl_get_channel_binding => "ssl.SSLSocket.get_channel_binding", "_ssl", ["_SSLSocket", "get_channel_binding"], Method, Handler::Ssl;
    ssl_verify_client_post_handshake => "ssl.SSLSocket.verify_client_post_handshake", "_ssl", ["_SSLSocket", "verify_client_post_handshake"], Method, Handler::Ssl;
    ssl_context_load_verify_locations => "ssl.SSLContext.load_verify_locations", "_ssl", ["_SSLContext", "load_verify_locations"], Method, Handler::Generic;
    ssl_context_load_cert_chain => "ssl.SSLContext.load_cert_chain", "_ssl", ["_SSLContext", "load_cert_chain"], Method, Handler::Generic;
    ssl_context_set_default_verify_paths => "ssl.SSLContext.set_default_verify_paths", "_ssl", ["_SSLContext", "set_default_verify_paths"], Method, Handler::Generic;
    ssl_context_load_dh_params => "ssl.SSLContext.load_dh_params", "_ssl", ["_SSLContext", "load_dh_params"], Method, Handler::Generic;
    psycopg2_connect => "psycopg2.connect", "psycopg2._psycopg", ["connection"], Init, Handler::PgConnect;
    psycopg2_cancel => "psycopg2.connection.cancel", "psycopg2._psycopg", ["connection", "cancel"], Method, Handler::Generic;
    psycopg2_reset => "psycopg2.connection.reset", "psycopg2._psycopg", ["connection", "reset"], Method, Handler::Unsupported;
    psycopg2_get_dsn_parameters => "psycopg2.connection.get_dsn_parameters", "psycopg2._psycopg", ["connection", "get_dsn_parameters"], Method, Handler::Generic;
    thread_start_new_thread => "_thread.start_new_thread", "_thread", ["start_new_thread"], Method, Handler::ThreadStart;
    thread_start_joinable_thread => "_thread.start_joinable_thread", "_thread", ["?start_joinable_thread"], Method, Handler::ThreadStart;
    lock_acquire => "_thread.lock.acquire", "_thread", ["LockType", "acquire"], Method, Handler::Lock(LockOp::Acquire);
    lock_acquire_lock => "_thread.lock.acquire_lock", "_thread", ["LockType", "?acquire_lock"], Method, Handler::Lock(LockOp::Acquire);
    lock_enter => "_thread.lock.__enter__", "_thread", ["LockType", "__enter__"], Method, Handler::Lock(LockOp::Acquire);
    lock_release => "_thread.lock.release", "_thread", ["LockType", "release"], Method, Handler::Lock(LockOp::Other);
    lock_release_lock => "_thread.lock.release_lock", "_thread", ["LockType", "?release_lock"], Method, Handler::Lock(LockOp::Other);
    lock_exit => "_thread.lock.__exit__", "_thread", ["LockType", "__exit__"], Method, Handler::Lock(LockOp::Other);
    rlock_acquire => "_thread.RLock.acquire", "_thread", ["RLock", "acquire"], Method, Handler::Lock(LockOp::Acquire);
    rlock_enter => "_thread.RLock.__enter__", "_thread", ["RLock", "__enter__"], Method, Handler::Lock(LockOp::Acquire);
    rlock_release => "_thread.RLock.release", "_thread", ["RLock", "release"], Method, Handler::Lock(LockOp::Other);
    rlock_exit => "_thread.RLock.__exit__", "_thread", ["RLock", "__exit__"], Method, Handler::Lock(LockOp::Other);
    rlock_release_save => "_thread.RLock._release_save", "_thread", ["RLock", "_release_save"], Method, Handler::Lock(LockOp::Other);
    rlock_acquire_restore => "_thread.RLock._acquire_restore", "_thread", ["RLock", "_acquire_restore"], Method, Handler::Lock(LockOp::Other);
    thread_set_sentinel => "_thread._set_sentinel", "_thread", ["?_set_sentinel"], Method, Handler::ThreadSentinel;
    lock_locked => "_thread.lock.locked", "_thread", ["LockType", "locked"], Method, Handler::Lock(LockOp::Locked);
    socket_socketpair => "socket.socketpair", "_socket", ["socketpair"], Method, Handler::SocketPair;
    simplequeue_get => "queue.SimpleQueue.get", "_queue", ["SimpleQueue", "get"], Method, Handler::Lock(LockOp::Take);
    simplequeue_get_nowait => "queue.SimpleQueue.get_nowait", "_queue", ["SimpleQueue", "get_nowait"], Method, Handler::Lock(LockOp::Take);
    simplequeue_put => "queue.SimpleQueue.put", "_queue", ["SimpleQueue", "put"], Method, Handler::Lock(LockOp::Other);
    simplequeue_put_nowait => "queue.SimpleQueue.put_nowait", "_queue", ["SimpleQueue", "put_nowait"], Method, Handler::Lock(LockOp::Other);
    sqlite_create_function => "sqlite3.Connection.create_function", "_sqlite3", ["Connection", "create_function"], Method, Handler::Sqlite(SqliteOp::Register(CallbackKind::Function, 2, "func"));
    sqlite_create_aggregate => "sqlite3.Connection.create_aggregate", "_sqlite3", ["Connection", "create_aggregate"], Method, Handler::Sqlite(SqliteOp::Register(CallbackKind::Aggregate, 2, "aggregate_class"));
    sqlite_create_window_function => "sqlite3.Connection.create_window_function", "_sqlite3", ["Connection", "create_window_function"], Method, Handler::Sqlite(SqliteOp::Register(CallbackKind::Aggregate, 2, "aggregate_class"));
    sqlite_create_collation => "sqlite3.Connection.create_collation", "_sqlite3", ["Connection", "create_collation"], Method, Handler::Sqlite(SqliteOp::Register(CallbackKind::Collation, 1, "callback"));
    sqlite_set_authorizer => "sqlite3.Connection.set_authorizer", "_sqlite3", ["Connection", "set_authorizer"], Method, Handler::Sqlite(SqliteOp::Register(CallbackKind::Authorizer, 0, "authorizer_callback"));
    sqlite_set_progress_handler => "sqlite3.Connection.set_progress_handler", "_sqlite3", ["Connection", "set_progress_handler"], Method, Handler::Sqlite(SqliteOp::Register(CallbackKind::Progress, 0, "progress_handler"));
    sqlite_set_trace_callback => "sqlite3.Connection.set_trace_callback", "_sqlite3", ["Connection", "set_trace_callback"], Method, Handler::Sqlite(SqliteOp::Register(CallbackKind::Trace, 0, "trace_callback"));
    sqlite_enable_callback_tracebacks => "sqlite3.enable_callback_tracebacks", "_sqlite3", ["enable_callback_tracebacks"], Method, Handler::Sqlite(SqliteOp::CallbackTracebacks);
    sqlite_connection_exit => "sqlite3.Connection.__exit__", "_sqlite3", ["Connection", "__exit__"], Method, Handler::Generic;
    sqlite_connection_backup => "sqlite3.Connection.backup", "_sqlite3", ["Connection", "backup"], Method, Handler::Sqlite(SqliteOp::Backup);
    sqlite_connection_serialize => "sqlite3.Connection.serialize", "_sqlite3", ["Connection", "?serialize"], Method, Handler::Generic;
    sqlite_connection_deserialize => "sqlite3.Connection.deserialize", "_sqlite3", ["Connection", "?deserialize"], Method, Handler::Generic;
    sqlite_connection_interrupt => "sqlite3.Connection.interrupt", "_sqlite3", ["Connection", "interrupt"], Method, Handler::Generic;
    sqlite_connection_blobopen => "sqlite3.Connection.blobopen", "_sqlite3", ["Connection", "blobopen"], Method, Handler::Unsupported;
    sqlite_connection_load_extension => "sqlite3.Connection.load_extension", "_sqlite3", ["Connection", "?load_extension"], Method, Handler::Unsupported;
    sqlite_in_transaction => "sqlite3.Connection.in_transaction", "_sqlite3", ["Connection", "in_transaction"], Getter, Handler::Generic;
    sqlite_total_changes => "sqlite3.Connection.total_changes", "_sqlite3", ["Connection", "total_changes"], Getter, Handler::Generic;
    sqlite_set_isolation_level => "sqlite3.Connection.isolation_level (set)", "_sqlite3", ["Connection", "isolation_level"], Setter, Handler::Sqlite(SqliteOp::Setter);
    sqlite_set_autocommit => "sqlite3.Connection.autocommit (set)", "_sqlite3", ["Connection", "?autocommit"], Setter, Handler::Sqlite(SqliteOp::Setter);
    gc_collect => "gc.collect", "gc", ["collect"], Method, Handler::Gc(GcOp::Collect);
    gc_get_threshold => "gc.get_threshold", "gc", ["get_threshold"], Method, Handler::Gc(GcOp::GetThreshold);
    gc_set_threshold => "gc.set_threshold", "gc", ["set_threshold"], Method, Handler::Gc(GcOp::SetThreshold);
    descriptor_release => "retrace.descriptor_release", "retrace", ["descriptor_release"], Python, Handler::Generic;
}

impl Hook {
    /// True when the installed convention is METH_O (which shares METH_NOARGS's signature).
    #[inline]
    pub fn is_o(&self) -> bool {
        self.convention.load(Ordering::Relaxed) == Convention::O as u8 + 1
    }
}

pub fn hook(id: HookId) -> &'static Hook {
    &HOOKS[id as usize]
}

/// Installs every hook of the module `name` (already imported as `module`). Returns a
/// warning per hook that could not be installed; installing never fails the program.
///
/// # Safety
/// The GIL must be held and `module` must be a live module object.
pub unsafe fn install_module(name: &str, module: *mut ffi::PyObject) -> Vec<String> {
    let mut warnings = Vec::new();
    for hook in HOOKS.iter().filter(|h| h.module == name && h.target != Target::Python) {
        // SAFETY: per the caller's guarantee.
        // An empty reason: an attribute this Python does not have, marked optional (`?`).
        if let Err(why) = unsafe { install(hook, module) }.or_else(|why| if why.is_empty() { Ok(()) } else { Err(why) }) {
            warnings.push(format!("{} is not intercepted: {why}", hook.name));
        }
    }
    warnings
}

/// # Safety
/// The GIL must be held and `module` must be a live module object.
unsafe fn install(hook: &'static Hook, module: *mut ffi::PyObject) -> Result<(), String> {
    // SAFETY: attribute lookups with error handling, then pointer swaps in live
    // PyMethodDef/PyTypeObject structures, which CPython reads on every call.
    unsafe {
        let target = resolve(module, hook.path)?;
        let result = match hook.target {
            Target::Method => install_method(hook, target),
            Target::Init => install_slot(hook, target, Slot::Init),
            Target::IterNext => install_slot(hook, target, Slot::IterNext),
            Target::Getter | Target::Setter => install_getset(hook, target),
            Target::Python => Ok(()),
        };
        ffi::Py_DECREF(target);
        result
    }
}

/// # Safety
/// GIL held, `module` live. Returns a new reference.
unsafe fn resolve(module: *mut ffi::PyObject, path: &[&str]) -> Result<*mut ffi::PyObject, String> {
    // SAFETY: getattr chain with reference counting.
    unsafe {
        let mut obj = module;
        ffi::Py_INCREF(obj);
        for part in path {
            // "()" calls what the path reached so far: the only way to a method of a type
            // that is not exposed by name (`select.poll()` objects).
            // "?name": an attribute that only newer Pythons have; its absence is no warning.
            let (part, optional) = match part.strip_prefix('?') {
                Some(rest) => (rest, true),
                None => (*part, false),
            };
            let next = if part == "()" {
                ffi::PyObject_CallNoArgs(obj)
            } else {
                let cpart = CString::new(part).map_err(|e| e.to_string())?;
                ffi::PyObject_GetAttrString(obj, cpart.as_ptr())
            };
            ffi::Py_DECREF(obj);
            if next.is_null() {
                ffi::PyErr_Clear();
                return Err(if optional { String::new() } else { format!("cannot resolve {part}") });
            }
            obj = next;
        }
        Ok(obj)
    }
}

/// # Safety
/// GIL held, `obj` live.
unsafe fn method_def(obj: *mut ffi::PyObject) -> Option<*mut ffi::PyMethodDef> {
    // SAFETY: the casts match the checked types' layouts.
    unsafe {
        let ty = ffi::Py_TYPE(obj);
        if ffi::PyCFunction_Check(obj) != 0 {
            Some((*(obj as *mut ffi::PyCFunctionObject)).m_ml)
        } else if ty == std::ptr::addr_of_mut!(ffi::PyMethodDescr_Type)
            || ty == std::ptr::addr_of_mut!(ffi::PyClassMethodDescr_Type)
        {
            Some((*(obj as *mut ffi::PyMethodDescrObject)).d_method)
        } else {
            None
        }
    }
}

/// # Safety
/// GIL held, `obj` live.
unsafe fn install_method(hook: &'static Hook, obj: *mut ffi::PyObject) -> Result<(), String> {
    // SAFETY: `def` points into a live, writable PyMethodDef table (static data of the
    // extension module); swapping ml_meth redirects every alias of the function.
    unsafe {
        let def = method_def(obj).ok_or("not a C function")?;
        let flags = (*def).ml_flags;
        let convention = Convention::from_flags(flags)
            .ok_or_else(|| format!("unsupported calling convention {flags:#x}"))?;
        let proxy = hook.method_proxy(convention).ok_or("not a method")?;
        let current = (*def).ml_meth.PyCFunction as *mut c_void;
        if current == proxy {
            return Ok(()); // already installed: patching is idempotent
        }
        hook.convention.store(convention as u8 + 1, Ordering::Relaxed);
        hook.original.store(current, Ordering::Relaxed);
        // The union's declared ABI is "C"; the proxy is "C-unwind" (see `install_slot`).
        (*def).ml_meth = ffi::PyMethodDefPointer { PyCFunction: std::mem::transmute::<*mut c_void, ffi::PyCFunction>(proxy) };
        Ok(())
    }
}

/// Points a hooked C function or method (`obj`, as found by the program: `time.time`,
/// `socket.socket.send`) back at its original C function (`patched` false), or at its proxy
/// again (true). For benchmarks only: inside one recorded process, a loop of unpatched calls
/// measures what the whole interception costs, without the speed differences between
/// processes. Calls made meanwhile are neither recorded nor replayed.
///
/// # Safety
/// GIL held, `obj` live, and no other thread calling the function meanwhile.
pub unsafe fn set_method_patched(obj: *mut ffi::PyObject, patched: bool) -> Result<(), String> {
    // SAFETY: as in `install_method`: `def` points into a live, writable PyMethodDef table.
    unsafe {
        let def = method_def(obj).ok_or("not a C function or method")?;
        let convention = Convention::from_flags((*def).ml_flags).ok_or("not a hooked function")?;
        let current = (*def).ml_meth.PyCFunction as *mut c_void;
        let hook = HOOKS
            .iter()
            .find(|h| !h.original().is_null() && (h.original() == current || h.method_proxy(convention) == Some(current)))
            .ok_or("not a hooked function")?;
        let target = if patched { hook.method_proxy(convention).ok_or("not a method")? } else { hook.original() };
        (*def).ml_meth = ffi::PyMethodDefPointer { PyCFunction: std::mem::transmute::<*mut c_void, ffi::PyCFunction>(target) };
        Ok(())
    }
}

/// # Safety
/// GIL held, `obj` live.
unsafe fn install_getset(hook: &'static Hook, obj: *mut ffi::PyObject) -> Result<(), String> {
    // SAFETY: `d_getset` points into a live, writable PyGetSetDef table (static data of the
    // extension module), which CPython reads on every attribute access; the proxies have
    // the getter's and setter's C signatures (pointer arguments, same return types).
    unsafe {
        if ffi::Py_TYPE(obj) != std::ptr::addr_of_mut!(ffi::PyGetSetDescr_Type) {
            return Err("not a property".into());
        }
        let def = (*(obj as *mut ffi::PyGetSetDescrObject)).d_getset;
        let (current, proxy, convention) = match hook.target {
            Target::Getter => ((*def).get.map(|f| f as *mut c_void), hook.proxies.noargs as *mut c_void, Convention::NoArgs),
            _ => ((*def).set.map(|f| f as *mut c_void), hook.proxies.init as *mut c_void, Convention::InitSlot),
        };
        let Some(current) = current else {
            return Err("the property has no such accessor".into());
        };
        if current == proxy {
            return Ok(());
        }
        hook.convention.store(convention as u8 + 1, Ordering::Relaxed);
        hook.original.store(current, Ordering::Relaxed);
        match hook.target {
            Target::Getter => (*def).get = Some(std::mem::transmute::<*mut c_void, ffi::getter>(proxy)),
            _ => (*def).set = Some(std::mem::transmute::<*mut c_void, ffi::setter>(proxy)),
        }
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum Slot {
    Init,
    IterNext,
}

/// # Safety
/// GIL held, `obj` live.
unsafe fn install_slot(hook: &'static Hook, obj: *mut ffi::PyObject, slot: Slot) -> Result<(), String> {
    // SAFETY: a slot of a live type object, which CPython reads on every use.
    unsafe {
        if ffi::PyType_Check(obj) == 0 {
            return Err("not a type".into());
        }
        let ty = obj as *mut ffi::PyTypeObject;
        let (current, proxy, wrapper_name, convention) = match slot {
            Slot::Init => ((*ty).tp_init.map(|f| f as *mut c_void), hook.proxies.init as *mut c_void, c"__init__", Convention::InitSlot),
            Slot::IterNext => ((*ty).tp_iternext.map(|f| f as *mut c_void), hook.proxies.iternext as *mut c_void, c"__next__", Convention::IterNextSlot),
        };
        let Some(current) = current else {
            return Err("the type has no such slot on this Python".into());
        };
        if current == proxy {
            return Ok(());
        }
        hook.convention.store(convention as u8 + 1, Ordering::Relaxed);
        hook.original.store(current, Ordering::Relaxed);
        // The slots' declared ABI is "C"; our proxies are "C-unwind" (same calling
        // convention) so that a thread ended by pthread_exit inside an original call (CPython
        // does that to daemon threads at exit) unwinds through them instead of aborting.
        match slot {
            Slot::Init => (*ty).tp_init = Some(std::mem::transmute::<crate::calls::InitFn, ffi::initproc>(hook.proxies.init)),
            Slot::IterNext => (*ty).tp_iternext = Some(std::mem::transmute::<crate::calls::IterNextFn, ffi::iternextfunc>(hook.proxies.iternext)),
        }
        // Python subclasses call `Base.__init__(self, ...)` explicitly (socket.socket does),
        // which goes through the type's wrapper descriptor: it holds its own copy of the
        // function pointer, so it is redirected too.
        let dict = (*ty).tp_dict;
        let descr = if dict.is_null() { std::ptr::null_mut() } else { ffi::PyDict_GetItemString(dict, wrapper_name.as_ptr()) };
        if !descr.is_null() && ffi::Py_TYPE(descr) == std::ptr::addr_of_mut!(ffi::PyWrapperDescr_Type) {
            let wrapper = descr as *mut ffi::PyWrapperDescrObject;
            if (*wrapper).d_wrapped == current {
                (*wrapper).d_wrapped = proxy;
            }
        }
        Ok(())
    }
}

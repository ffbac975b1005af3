//! Starting the program for `record` and `replay`, without Node's `child_process`.
//!
//! That module, with `net` and the stream machinery it loads, and libuv's fork-based spawn
//! were ~10 ms of the CLI's start-up (`node --cpu-prof`), on a budget of 100 ms of which
//! Node's own start takes most. Here the program is started with `posix_spawn` (which glibc
//! and macOS run without copying the parent's page tables), it inherits the CLI's stdio,
//! and its wait runs on libuv's thread pool. What libuv does for a child is kept: every
//! signal's action back to the default and an empty signal mask in the program, and stdio
//! in blocking mode.

use crate::signals::forward_signals_to;
use napi::bindgen_prelude::AsyncTask;
use napi::{Env, Task};
use napi_derive::napi;
use std::ffi::CString;
use std::time::Instant;

/// How the program ended.
#[napi(object)]
pub struct ProgramExit {
    /// Its exit code, or null when a signal ended it.
    pub code: Option<i32>,
    /// The number of the signal that ended it, or null.
    pub signal: Option<i32>,
    /// Wall-clock time from the start to the end, in milliseconds.
    pub duration_ms: f64,
}

/// The wait for a started program, on libuv's thread pool.
pub struct ProgramWait {
    pid: libc::pid_t,
    started: Instant,
}

impl Task for ProgramWait {
    type Output = ProgramExit;
    type JsValue = ProgramExit;

    fn compute(&mut self) -> napi::Result<ProgramExit> {
        let mut status: libc::c_int = 0;
        loop {
            // SAFETY: waiting for our own child; `status` is a valid out-pointer.
            let waited = unsafe { libc::waitpid(self.pid, &mut status, 0) };
            if waited == self.pid {
                break;
            }
            let error = std::io::Error::last_os_error();
            if error.kind() != std::io::ErrorKind::Interrupted {
                return Err(napi::Error::from_reason(format!("cannot wait for the program (pid {}): {error}", self.pid)));
            }
        }
        let duration_ms = self.started.elapsed().as_secs_f64() * 1000.0;
        Ok(if libc::WIFSIGNALED(status) {
            ProgramExit { code: None, signal: Some(libc::WTERMSIG(status)), duration_ms }
        } else {
            ProgramExit { code: Some(libc::WEXITSTATUS(status)), signal: None, duration_ms }
        })
    }

    fn resolve(&mut self, _env: Env, output: ProgramExit) -> napi::Result<ProgramExit> {
        Ok(output)
    }
}

fn c_string(what: &str, text: String) -> napi::Result<CString> {
    CString::new(text).map_err(|_| napi::Error::from_reason(format!("the {what} contains a NUL byte")))
}

/// Owns a `posix_spawn` attribute and file-action set, destroyed on drop.
struct SpawnSetup {
    attr: libc::posix_spawnattr_t,
    actions: libc::posix_spawn_file_actions_t,
}

impl SpawnSetup {
    fn new(cwd: &CString) -> std::io::Result<Box<SpawnSetup>> {
        let check = |rc: libc::c_int| if rc == 0 { Ok(()) } else { Err(std::io::Error::from_raw_os_error(rc)) };
        // SAFETY: zeroed storage is initialised by the init calls before any other use; the
        // box keeps the structures in place, as glibc's may not be moved once initialised.
        unsafe {
            let mut setup: Box<SpawnSetup> = Box::new(std::mem::zeroed());
            check(libc::posix_spawnattr_init(&mut setup.attr))?;
            if let Err(e) = check(libc::posix_spawn_file_actions_init(&mut setup.actions)) {
                libc::posix_spawnattr_destroy(&mut setup.attr);
                // Not dropped as a whole: the file actions were never initialised.
                std::mem::forget(setup);
                return Err(e);
            }
            let mut all: libc::sigset_t = std::mem::zeroed();
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::sigemptyset(&mut none);
            check(libc::posix_spawnattr_setsigdefault(&mut setup.attr, &all))?;
            check(libc::posix_spawnattr_setsigmask(&mut setup.attr, &none))?;
            check(libc::posix_spawnattr_setflags(&mut setup.attr, (libc::POSIX_SPAWN_SETSIGDEF | libc::POSIX_SPAWN_SETSIGMASK) as _))?;
            check(libc::posix_spawn_file_actions_addchdir_np(&mut setup.actions, cwd.as_ptr()))?;
            Ok(setup)
        }
    }
}

impl Drop for SpawnSetup {
    fn drop(&mut self) {
        // SAFETY: both were initialised in `new` (which forgets a half-made setup).
        unsafe {
            libc::posix_spawn_file_actions_destroy(&mut self.actions);
            libc::posix_spawnattr_destroy(&mut self.attr);
        }
    }
}

/// Prepares the CLI's stdio for the program to inherit. Node marks descriptors 0-2
/// close-on-exec, and leaves a pipe or terminal among them in non-blocking mode, which the
/// program would share (it is the same open file): its writes could then fail with EAGAIN.
/// libuv clears both in the children it starts. Here close-on-exec is cleared for the start
/// and set back on drop; non-blocking mode stays cleared, as after libuv's start (the flag
/// belongs to the open file the two processes share).
struct InheritedStdio {
    close_on_exec: [bool; 3],
}

impl InheritedStdio {
    fn prepare() -> Self {
        let mut close_on_exec = [false; 3];
        for (fd, was) in close_on_exec.iter_mut().enumerate() {
            let fd = fd as libc::c_int;
            // SAFETY: reading and setting a descriptor's flags; a closed one fails harmlessly.
            unsafe {
                let status = libc::fcntl(fd, libc::F_GETFL);
                if status != -1 && status & libc::O_NONBLOCK != 0 {
                    libc::fcntl(fd, libc::F_SETFL, status & !libc::O_NONBLOCK);
                }
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags != -1 && flags & libc::FD_CLOEXEC != 0 {
                    *was = libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) == 0;
                }
            }
        }
        InheritedStdio { close_on_exec }
    }
}

impl Drop for InheritedStdio {
    fn drop(&mut self) {
        for (fd, &was) in self.close_on_exec.iter().enumerate() {
            if was {
                // SAFETY: setting back the flag this descriptor had.
                unsafe { libc::fcntl(fd as libc::c_int, libc::F_SETFD, libc::FD_CLOEXEC) };
            }
        }
    }
}

/// Starts `executable` (a path; `argv[0]` is that path) with `args`, exactly the
/// environment `env` (`NAME=value` strings) and the working directory `cwd`; forwards
/// `signals` to it (see `signals.rs`). The promise resolves when it ends. Throws with the
/// reason (`No such file or directory`, ...) when it cannot be started.
#[napi(ts_return_type = "Promise<ProgramExit>")]
pub fn launch_program(executable: String, args: Vec<String>, env: Vec<String>, cwd: String, signals: Vec<i32>) -> napi::Result<AsyncTask<ProgramWait>> {
    let program = c_string("program path", executable)?;
    let cwd = c_string("working directory", cwd)?;
    let mut argv = vec![program.clone()];
    for arg in args {
        argv.push(c_string("argument", arg)?);
    }
    let envp = env.into_iter().map(|entry| c_string("environment", entry)).collect::<napi::Result<Vec<_>>>()?;
    let mut argv_ptrs: Vec<*mut libc::c_char> = argv.iter().map(|a| a.as_ptr().cast_mut()).collect();
    argv_ptrs.push(std::ptr::null_mut());
    let mut envp_ptrs: Vec<*mut libc::c_char> = envp.iter().map(|e| e.as_ptr().cast_mut()).collect();
    envp_ptrs.push(std::ptr::null_mut());
    let setup = SpawnSetup::new(&cwd).map_err(|e| napi::Error::from_reason(format!("cannot prepare the start: {e}")))?;
    let stdio = InheritedStdio::prepare();
    let started = Instant::now();
    let mut pid: libc::pid_t = 0;
    // SAFETY: every pointer is valid for the call: the strings live in `argv`/`envp`, both
    // arrays end with NULL, and `setup` holds initialised attributes and file actions.
    let rc = unsafe { libc::posix_spawn(&mut pid, program.as_ptr(), &setup.actions, &setup.attr, argv_ptrs.as_ptr(), envp_ptrs.as_ptr()) };
    drop(stdio);
    drop(setup);
    if rc != 0 {
        return Err(napi::Error::from_reason(std::io::Error::from_raw_os_error(rc).to_string()));
    }
    forward_signals_to(pid, &signals)?;
    Ok(AsyncTask::new(ProgramWait { pid, started }))
}

/// Ends the CLI at once with `code`, skipping Node's teardown (its platform threads and
/// heap, ~5 ms after every `record` and `replay`). Only for when nothing is left to write:
/// on Linux, Node writes stdout and stderr synchronously, whatever they are.
#[napi]
pub fn exit_now(code: i32) {
    // SAFETY: _exit ends the process; nothing of ours needs running first.
    unsafe { libc::_exit(code) }
}

//! Forwarding signals from `retrace record|replay` to the program, exactly once.
//!
//! A terminal sends Ctrl-C (and Ctrl-\, and a hang-up) to its whole foreground process
//! group, which holds both the CLI and the program: forwarding those would deliver them
//! twice. A signal sent to the CLI alone (`kill`, a supervisor) must be forwarded, or the
//! program never sees it. Node cannot tell them apart; `siginfo_t.si_code` can: the kernel
//! marks what a terminal sends `SI_KERNEL`, what a process sends with `kill` `SI_USER`
//! (and `sigqueue`/`tgkill` other values at or below zero). So the handler forwards only
//! what a process sent.

use napi_derive::napi;
use std::os::raw::{c_int, c_void};
use std::sync::atomic::{AtomicI32, Ordering};

static CHILD: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward(signum: c_int, info: *mut libc::siginfo_t, _context: *mut c_void) {
    let child = CHILD.load(Ordering::Relaxed);
    // SAFETY: the kernel passes a valid siginfo_t to an SA_SIGINFO handler.
    let sent_by_a_process = !info.is_null() && unsafe { (*info).si_code } <= 0;
    if child > 0 && sent_by_a_process {
        // SAFETY: kill is async-signal-safe.
        unsafe { libc::kill(child, signum) };
    }
}

/// Forwards `signals` received from other processes to `pid` (see the module comment).
/// Replaces Node's own handling of those signals until `restoreDefaultSignal`.
pub fn forward_signals_to(pid: libc::pid_t, signals: &[i32]) -> napi::Result<()> {
    CHILD.store(pid, Ordering::Relaxed);
    for &signum in signals {
        // SAFETY: installing a handler that only reads an atomic and calls kill(2).
        let failed = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = forward as *const () as usize;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signum, &action, std::ptr::null_mut()) != 0
        };
        if failed {
            return Err(napi::Error::from_reason(format!(
                "cannot handle signal {signum}: {}",
                std::io::Error::last_os_error()
            )));
        }
    }
    Ok(())
}

/// Puts back the default action of `signum` (before the CLI dies from it, as its child did).
#[napi]
pub fn restore_default_signal(signum: i32) {
    CHILD.store(0, Ordering::Relaxed);
    // SAFETY: resetting a disposition to SIG_DFL.
    unsafe { libc::signal(signum, libc::SIG_DFL) };
}

//! Ctrl-C during `dlc train`: the first SIGINT asks the training loop to stop after the
//! step it is running (the loop checks [`requested`] before each step; on an environment,
//! at the end of the running episode); `dlc train` then writes its `--save` checkpoint,
//! says where it stopped and exits with status 130, and `--resume` continues from there. A
//! second SIGINT ends the process at once.

use std::sync::atomic::{AtomicBool, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    REQUESTED.store(true, Ordering::SeqCst);
    // The next Ctrl-C takes the default action (async-signal-safe).
    // SAFETY: `signal` with SIG_DFL is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_DFL);
    }
}

/// Catch SIGINT from now on (for the rest of the process).
pub fn install() {
    let handler = on_sigint as extern "C" fn(libc::c_int);
    // SAFETY: the handler only stores to an atomic and calls `signal`, both
    // async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, handler as libc::sighandler_t);
    }
}

/// Whether a SIGINT has arrived since [`install`].
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}

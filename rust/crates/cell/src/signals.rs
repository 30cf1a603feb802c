//! Signal handling shared by the commands that start things (`jail`, `cell`
//! itself): Ctrl-C at any moment ends in the command's own clean-up.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};

/// Signal handling for the whole run. The signals are blocked in this process
/// before any thread or child exists and received by one waiter thread, so a
/// Ctrl-C at any moment — during set-up too — ends in the normal clean-up.
/// Children get them unblocked again (see [`unblocked`]).
pub struct Signals {
    /// The last signal received (0: none).
    pub got: Arc<AtomicI32>,
    /// The command's pid once it runs (0: not yet). Only `cell jail` runs one
    /// (the VM commands exec ssh), so off Linux nothing sets it.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    pub child: Arc<AtomicI32>,
}

impl Signals {
    pub fn install() -> anyhow::Result<Signals> {
        use nix::sys::signal::{SigSet, Signal};
        let mut set = SigSet::empty();
        for sig in [
            Signal::SIGINT,
            Signal::SIGQUIT,
            Signal::SIGTERM,
            Signal::SIGHUP,
        ] {
            set.add(sig);
        }
        set.thread_block()?;
        let (got, child) = (Arc::new(AtomicI32::new(0)), Arc::new(AtomicI32::new(0)));
        let (g, c) = (got.clone(), child.clone());
        std::thread::spawn(move || {
            while let Ok(sig) = set.wait() {
                g.store(sig as i32, Ordering::SeqCst);
                // SIGINT and SIGQUIT reach the command from the terminal itself;
                // SIGTERM and SIGHUP sent to us are passed on.
                let pid = c.load(Ordering::SeqCst);
                if pid > 0 && matches!(sig, Signal::SIGTERM | Signal::SIGHUP) {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
                }
            }
        });
        Ok(Signals { got, child })
    }

    /// `Err` with the exit status to use when a signal arrived during set-up.
    pub fn check(&self) -> Result<(), u8> {
        match self.got.load(Ordering::SeqCst) {
            0 => Ok(()),
            sig => Err((128 + sig).clamp(0, 255) as u8),
        }
    }
}

/// Makes `cmd` start with the signals unblocked (the mask survives exec).
pub fn unblocked(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: only pthread_sigmask runs between fork and exec, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::signal::SigSet::all()
                .thread_unblock()
                .map_err(std::io::Error::from)
        })
    }
}

//! SIGTERM/SIGINT handling for the watcher: a flag, plus a self-pipe so a sleeping watcher
//! wakes at once instead of at its next poll (docs/watcher-service.md: stop within one second). An idle
//! watcher makes no wake-ups between polls.

use atvm_common::error::{Error, Result};
use signal_hook::consts::{SIGINT, SIGTERM};
use std::io::{ErrorKind, Read};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Shutdown {
    flag: Arc<AtomicBool>,
    wake: UnixStream,
}

impl Shutdown {
    pub fn install() -> Result<Shutdown> {
        let fail =
            |e: std::io::Error| Error::failed(format!("cannot install signal handlers: {e}"));
        let flag = Arc::new(AtomicBool::new(false));
        let (wake, notify) = UnixStream::pair().map_err(fail)?;
        for sig in [SIGTERM, SIGINT] {
            signal_hook::flag::register(sig, Arc::clone(&flag)).map_err(fail)?;
            signal_hook::low_level::pipe::register(sig, notify.try_clone().map_err(fail)?)
                .map_err(fail)?;
        }
        Ok(Shutdown { flag, wake })
    }

    pub fn requested(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    /// The self-pipe's reading end, readable once a signal came: for a wait on several
    /// descriptors at once (see [`crate::wake`]).
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
    }

    /// Empty the self-pipe after a wait saw it readable.
    pub fn drain(&self) {
        if self.wake.set_nonblocking(true).is_ok() {
            let mut buf = [0u8; 64];
            while matches!((&self.wake).read(&mut buf), Ok(n) if n > 0) {}
            let _ = self.wake.set_nonblocking(false);
        }
    }

    /// Sleep for `d` unless a stop is requested first. Returns `false` when interrupted.
    pub fn sleep(&self, d: Duration) -> bool {
        let deadline = Instant::now() + d;
        let mut buf = [0u8; 16];
        loop {
            if self.requested() {
                return false;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            if self.wake.set_read_timeout(Some(left)).is_err() {
                std::thread::sleep(left.min(Duration::from_millis(100)));
                continue;
            }
            match (&self.wake).read(&mut buf) {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                    ) => {}
                Err(_) => std::thread::sleep(left.min(Duration::from_millis(100))),
            }
        }
    }
}

//! The delivery loop: attempts with backoff and jitter inside the retry window, the cancel
//! check before each attempt, and a stop request honoured while a request is in flight.

use super::client::{Attempt, Poster};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// What the delivery loop needs from its caller.
pub trait Hooks {
    /// Is the run cancelled now? Checked right before each attempt.
    fn cancelled(&mut self) -> bool;
    /// Called before attempt `n` (1-based) goes out: record it.
    fn attempting(&mut self, n: u32);
    /// Called with each attempt's result.
    fn attempted(&mut self, n: u32, outcome: &Attempt);
    /// Wait `d`; `false` if the wait was interrupted (stop requested).
    fn sleep(&mut self, d: Duration) -> bool;
    /// Has a stop been requested (polled while an attempt is in flight)?
    fn stop_requested(&mut self) -> bool;
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivery {
    Delivered {
        attempts: u32,
    },
    /// Permanent error, or the retry window ran out.
    Failed {
        attempts: u32,
        error: String,
    },
    /// The cancel marker appeared: nothing (more) was sent.
    Cancelled {
        attempts: u32,
    },
    /// A stop was requested; the result stays pending for the next start.
    Interrupted {
        attempts: u32,
    },
}

/// Backoff before retry `n` (1-based): exponential from a base that scales with the window,
/// capped, with ±20% jitter.
pub fn backoff(n: u32, window: Duration, jitter_seed: u64) -> Duration {
    let base = (window / 20).clamp(Duration::from_millis(50), Duration::from_secs(1));
    let cap = (window / 4).clamp(base, Duration::from_secs(60));
    let exp = base
        .saturating_mul(1u32 << n.saturating_sub(1).min(16))
        .min(cap);
    // xorshift: good enough to spread retries of many watchers apart.
    let mut x = jitter_seed ^ u64::from(n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    let factor = 0.8 + (x % 1000) as f64 / 2500.0; // 0.8 ..= 1.2
    exp.mul_f64(factor)
}

fn jitter_seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    t ^ u64::from(std::process::id()).rotate_left(32)
}

/// Deliver `body` within `window`, starting after `attempts_so_far` earlier attempts.
pub fn deliver(
    poster: &std::sync::Arc<dyn Poster>,
    body: &str,
    window: Duration,
    attempts_so_far: u32,
    hooks: &mut dyn Hooks,
) -> Delivery {
    let started = Instant::now();
    let seed = jitter_seed();
    let mut attempts = attempts_so_far;
    let mut retries = 0u32;
    loop {
        if hooks.cancelled() {
            return Delivery::Cancelled { attempts };
        }
        attempts += 1;
        hooks.attempting(attempts);
        let Some(outcome) = attempt_interruptibly(poster, body, hooks) else {
            return Delivery::Interrupted { attempts };
        };
        hooks.attempted(attempts, &outcome);
        let (error, after) = match outcome {
            Attempt::Delivered => return Delivery::Delivered { attempts },
            Attempt::Permanent { error } => return Delivery::Failed { attempts, error },
            Attempt::Retry { error, after } => (error, after),
        };
        retries += 1;
        let wait = after.unwrap_or_else(|| backoff(retries, window, seed));
        if started.elapsed() + wait > window {
            let why = if after.is_some() {
                "the server's Retry-After reaches past"
            } else {
                "retries used up"
            };
            return Delivery::Failed {
                attempts,
                error: format!("{error}; {why} the {}s retry window", window.as_secs()),
            };
        }
        if !hooks.sleep(wait) {
            return Delivery::Interrupted { attempts };
        }
    }
}

/// Run one attempt on a helper thread so a stop request is honoured within a second even
/// while a slow server holds the connection. `None` when interrupted.
fn attempt_interruptibly(
    poster: &std::sync::Arc<dyn Poster>,
    body: &str,
    hooks: &mut dyn Hooks,
) -> Option<Attempt> {
    let (tx, rx) = mpsc::channel();
    let worker = std::sync::Arc::clone(poster);
    let body = body.to_string();
    std::thread::spawn(move || {
        let _ = tx.send(worker.attempt(&body));
    });
    let mut stop_seen: Option<Instant> = None;
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(outcome) => return Some(outcome),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Some(Attempt::Retry {
                    error: "delivery thread failed".to_string(),
                    after: None,
                });
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if hooks.stop_requested() {
            // Give an almost-finished request a moment, then leave it behind.
            let since = *stop_seen.get_or_insert_with(Instant::now);
            if since.elapsed() >= Duration::from_millis(500) {
                return None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn backoff_grows_and_stays_in_bounds() {
        let w = Duration::from_secs(1800);
        let b1 = backoff(1, w, 42);
        let b5 = backoff(5, w, 42);
        assert!(
            b1 >= Duration::from_millis(800) && b1 <= Duration::from_millis(1200),
            "{b1:?}"
        );
        assert!(b5 > b1);
        assert!(backoff(30, w, 42) <= Duration::from_secs(72));
    }

    #[derive(Debug)]
    struct Scripted(Mutex<Vec<Attempt>>);
    impl Poster for Scripted {
        fn attempt(&self, _: &str) -> Attempt {
            let mut v = self.0.lock().unwrap_or_else(|e| e.into_inner());
            if v.is_empty() {
                Attempt::Delivered
            } else {
                v.remove(0)
            }
        }
    }

    #[derive(Default)]
    struct Recorder {
        cancel_after: Option<u32>,
        attempts: u32,
        slept: Vec<Duration>,
    }
    impl Hooks for Recorder {
        fn cancelled(&mut self) -> bool {
            self.cancel_after.is_some_and(|n| self.attempts >= n)
        }
        fn attempting(&mut self, n: u32) {
            self.attempts = n;
        }
        fn attempted(&mut self, _: u32, _: &Attempt) {}
        fn sleep(&mut self, d: Duration) -> bool {
            self.slept.push(d);
            true
        }
        fn stop_requested(&mut self) -> bool {
            false
        }
    }

    fn retry(after: Option<u64>) -> Attempt {
        Attempt::Retry {
            error: "HTTP 500".into(),
            after: after.map(Duration::from_secs),
        }
    }

    #[test]
    fn retries_until_delivered_and_honours_retry_after() {
        let p: Arc<dyn Poster> = Arc::new(Scripted(Mutex::new(vec![retry(None), retry(Some(3))])));
        let mut hooks = Recorder::default();
        let d = deliver(&p, "{}", Duration::from_secs(60), 0, &mut hooks);
        assert_eq!(d, Delivery::Delivered { attempts: 3 });
        assert_eq!(hooks.slept[1], Duration::from_secs(3));
    }

    #[test]
    fn permanent_errors_and_cancel_stop_the_loop() {
        let p: Arc<dyn Poster> = Arc::new(Scripted(Mutex::new(vec![Attempt::Permanent {
            error: "HTTP 400".into(),
        }])));
        let d = deliver(
            &p,
            "{}",
            Duration::from_secs(60),
            0,
            &mut Recorder::default(),
        );
        assert_eq!(
            d,
            Delivery::Failed {
                attempts: 1,
                error: "HTTP 400".into()
            }
        );
        let p: Arc<dyn Poster> = Arc::new(Scripted(Mutex::new(vec![retry(None); 5])));
        let mut hooks = Recorder {
            cancel_after: Some(2),
            ..Recorder::default()
        };
        assert_eq!(
            deliver(&p, "{}", Duration::from_secs(60), 0, &mut hooks),
            Delivery::Cancelled { attempts: 2 }
        );
    }

    #[test]
    fn a_retry_after_beyond_the_window_gives_up() {
        let p: Arc<dyn Poster> = Arc::new(Scripted(Mutex::new(vec![retry(Some(120))])));
        let d = deliver(
            &p,
            "{}",
            Duration::from_secs(60),
            0,
            &mut Recorder::default(),
        );
        assert!(
            matches!(d, Delivery::Failed { attempts: 1, ref error } if error.contains("Retry-After")),
            "{d:?}"
        );
    }
}

//! The delivery loop (docs/watcher-service.md): attempts with backoff and jitter inside the retry window,
//! the cancel check before each attempt is recorded and again right before it is sent, and
//! three rules that keep a post from being sent twice:
//!
//! - an attempt is sent only once the caller has durably recorded it ([`Hooks::attempting`]
//!   returns `true`); a full disk delays the post (the loop waits and asks again) and does
//!   not consume the retry window, which starts with the first attempt actually sent;
//! - a request on the wire is allowed to finish even when a stop is requested (the client's
//!   overall timeout bounds it), so its outcome is known and recorded first;
//! - after a stop request no new attempt starts: the post stays owed for the next start.

use super::client::{Attempt, Poster};
use std::time::{Duration, Instant};

/// What the delivery loop needs from its caller.
pub trait Hooks {
    /// Is the run cancelled now? Checked right before each attempt.
    fn cancelled(&mut self) -> bool;
    /// Attempt `n` (1-based) is about to go out: record it durably. `false` when that
    /// could not be done: the attempt is not sent (the loop waits and asks again).
    fn attempting(&mut self, n: u32) -> bool;
    /// Called with each attempt's result.
    fn attempted(&mut self, n: u32, outcome: &Attempt);
    /// Wait `d`; `false` if the wait was interrupted (stop requested).
    fn sleep(&mut self, d: Duration) -> bool;
    /// Has a stop been requested?
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

/// Deliver `body` within `window` (counted from the first attempt sent), after
/// `attempts_so_far` earlier attempts.
pub fn deliver(
    poster: &std::sync::Arc<dyn Poster>,
    body: &str,
    window: Duration,
    attempts_so_far: u32,
    hooks: &mut dyn Hooks,
) -> Delivery {
    let seed = jitter_seed();
    let mut attempts = attempts_so_far;
    let mut first_sent: Option<Instant> = None;
    let mut retries = 0u32;
    let mut unrecorded = 0u32;
    loop {
        if hooks.stop_requested() {
            return Delivery::Interrupted { attempts };
        }
        if hooks.cancelled() {
            return Delivery::Cancelled { attempts };
        }
        if !hooks.attempting(attempts + 1) {
            // Nothing was sent. Wait for the record to become possible (a full disk).
            unrecorded += 1;
            if !hooks.sleep(backoff(unrecorded, window, seed)) {
                return Delivery::Interrupted { attempts };
            }
            continue;
        }
        unrecorded = 0;
        // Right before the send: a cancel that landed while the attempt was recorded wins.
        if hooks.cancelled() {
            return Delivery::Cancelled { attempts };
        }
        attempts += 1;
        let started = *first_sent.get_or_insert_with(Instant::now);
        // On the wire: it runs to its answer or the client's timeout, stop or not.
        let outcome = poster.attempt(body);
        hooks.attempted(attempts, &outcome);
        let (error, after) = match outcome {
            Attempt::Delivered => return Delivery::Delivered { attempts },
            Attempt::Permanent { error } => return Delivery::Failed { attempts, error },
            Attempt::Retry { error, after, .. } => (error, after),
        };
        retries += 1;
        // `Retry-After` is a minimum: never sooner than the backoff (a `0` must not turn
        // the loop into a flood).
        let pause = backoff(retries, window, seed);
        let wait = after.map_or(pause, |a| a.max(pause));
        if started.elapsed().saturating_add(wait) > window {
            let why = if after.is_some_and(|a| a >= pause) {
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
        /// How many times recording an attempt fails (a full disk) before it works.
        unrecordable: u32,
        /// A stop is requested once this many attempts were made.
        stop_after: Option<u32>,
        attempts: u32,
        slept: Vec<Duration>,
    }
    impl Hooks for Recorder {
        fn cancelled(&mut self) -> bool {
            self.cancel_after.is_some_and(|n| self.attempts >= n)
        }
        fn attempting(&mut self, n: u32) -> bool {
            if self.unrecordable > 0 {
                self.unrecordable -= 1;
                return false;
            }
            self.attempts = n;
            true
        }
        fn attempted(&mut self, _: u32, _: &Attempt) {}
        fn sleep(&mut self, d: Duration) -> bool {
            self.slept.push(d);
            true
        }
        fn stop_requested(&mut self) -> bool {
            self.stop_after.is_some_and(|n| self.attempts >= n)
        }
    }

    /// Counts what was sent.
    #[derive(Debug, Default)]
    struct Counting(Mutex<u32>);
    impl Poster for Counting {
        fn attempt(&self, _: &str) -> Attempt {
            *self.0.lock().unwrap_or_else(|e| e.into_inner()) += 1;
            retry(None)
        }
    }

    #[test]
    fn retry_after_is_a_minimum_and_never_overflows() {
        let p: Arc<dyn Poster> = Arc::new(Scripted(Mutex::new(vec![retry(Some(0)); 3])));
        let mut hooks = Recorder::default();
        let window = Duration::from_secs(60);
        assert_eq!(
            deliver(&p, "{}", window, 0, &mut hooks),
            Delivery::Delivered { attempts: 4 }
        );
        assert!(
            hooks.slept.iter().all(|d| *d >= Duration::from_millis(800)),
            "a Retry-After of 0 waits the backoff: {:?}",
            hooks.slept
        );
        let huge = Attempt::Retry {
            error: "HTTP 429".into(),
            after: Some(Duration::MAX),
            maybe_delivered: false,
        };
        let p: Arc<dyn Poster> = Arc::new(Scripted(Mutex::new(vec![huge])));
        let d = deliver(&p, "{}", window, 0, &mut Recorder::default());
        assert!(
            matches!(d, Delivery::Failed { ref error, .. } if error.contains("Retry-After reaches past")),
            "{d:?}"
        );
    }

    #[test]
    fn nothing_is_sent_until_the_attempt_is_recorded() {
        let p: Arc<dyn Poster> = Arc::new(Scripted(Mutex::new(vec![])));
        let mut hooks = Recorder {
            unrecordable: 3,
            ..Recorder::default()
        };
        // A short window: a full disk must not use it up, nothing was sent yet.
        let d = deliver(&p, "{}", Duration::from_millis(100), 0, &mut hooks);
        assert_eq!(d, Delivery::Delivered { attempts: 1 });
        assert_eq!(hooks.slept.len(), 3, "waited three times to record");
    }

    #[test]
    fn a_stop_lets_the_attempt_on_the_wire_finish_and_starts_no_other() {
        let counting = Arc::new(Counting::default());
        let p: Arc<dyn Poster> = counting.clone();
        let mut hooks = Recorder {
            stop_after: Some(1),
            ..Recorder::default()
        };
        let d = deliver(&p, "{}", Duration::from_secs(60), 0, &mut hooks);
        assert_eq!(d, Delivery::Interrupted { attempts: 1 });
        assert_eq!(
            *counting.0.lock().unwrap(),
            1,
            "one attempt, answered, then none"
        );
        // Already stopped: nothing at all goes out.
        let d = deliver(&p, "{}", Duration::from_secs(60), 1, &mut hooks);
        assert_eq!(d, Delivery::Interrupted { attempts: 1 });
        assert_eq!(*counting.0.lock().unwrap(), 1);
    }

    fn retry(after: Option<u64>) -> Attempt {
        Attempt::Retry {
            error: "HTTP 500".into(),
            after: after.map(Duration::from_secs),
            maybe_delivered: false,
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
        // The cancel is there once attempt 2 is recorded: found right before sending it,
        // so only the first was sent.
        assert_eq!(
            deliver(&p, "{}", Duration::from_secs(60), 0, &mut hooks),
            Delivery::Cancelled { attempts: 1 }
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

//! Mattermost (SPEC §7): the message text, one verified POST, and the retry loop.
//!
//! Delivered means HTTP 200 with body `ok`. Connection errors, timeouts, 408, 429 (after its
//! `Retry-After`) and 5xx are retried with exponential backoff and jitter inside the retry
//! window; anything else is permanent. The cancel marker is re-checked before every attempt.
//! The webhook URL never appears in errors: they name the host, and any text that came back
//! from the server is scrubbed of the URL before it is kept.

use crate::config::Webhook;
use crate::inventory::Vm;
use crate::reporter::FailedTest;
use crate::state::{Counts, Request, RunState};
use serde::Serialize;
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const USERNAME: &str = "atvm-watcher";
/// Mattermost refuses posts over 16,383 characters; stay below 16,000.
pub const MAX_TEXT: usize = 15_900;
/// Failed tests listed in a message.
pub const MAX_FAILURES_SHOWN: usize = 10;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Payload {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    pub username: String,
    pub text: String,
}

impl Payload {
    pub fn new(channel: Option<&str>, text: String) -> Payload {
        Payload {
            channel: channel.map(str::to_string),
            username: USERNAME.to_string(),
            text,
        }
    }

    pub fn to_json(&self) -> String {
        // Serialising three strings cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Everything a result message shows.
#[derive(Clone, Debug)]
pub struct Message<'a> {
    pub state: RunState,
    pub build: &'a str,
    /// Set for a categorized sub-run.
    pub group: Option<&'a str>,
    pub reason: &'a str,
    pub request: &'a Request,
    pub counts: Option<Counts>,
    pub duration: Option<String>,
    pub vms: Vec<&'a Vm>,
    pub run_url: Option<&'a str>,
    pub failures: &'a [FailedTest],
    /// All failed tests known, including those not in `failures`.
    pub failures_total: usize,
}

fn emoji(state: RunState) -> &'static str {
    match state {
        RunState::Completed => ":white_check_mark:",
        RunState::Failed => ":x:",
        _ => ":warning:",
    }
}

/// Make text from logs, reports and options inert: one line, bounded, Markdown escaped,
/// and `@channel`/`@all`/`@here`/`@user` mentions broken with a zero-width space.
pub fn inert(text: &str, max_chars: usize) -> String {
    let mut out = String::new();
    let mut count = 0;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if count >= max_chars {
            out.push('…');
            break;
        }
        count += 1;
        match c {
            c if c.is_control() => out.push(' '),
            '\\' | '`' | '*' | '_' | '~' | '[' | ']' | '(' | ')' | '<' | '>' | '|' | '#' | '!'
            | '{' | '}' => {
                out.push('\\');
                out.push(c);
            }
            '@' => {
                out.push('@');
                if chars
                    .peek()
                    .is_some_and(|n| n.is_alphanumeric() || matches!(n, '_' | '-' | '.'))
                {
                    out.push('\u{200B}');
                }
            }
            ':' => {
                // `:smile:`-style shortcodes stay literal.
                out.push(':');
                if chars.peek().is_some_and(|n| n.is_alphanumeric()) {
                    out.push('\u{200B}');
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// A link only for plain http(s) URLs; anything else is shown as inert text.
fn link(url: &str) -> String {
    let clean = url.trim();
    let safe = (clean.starts_with("https://") || clean.starts_with("http://"))
        && clean.len() < 600
        && !clean.chars().any(|c| {
            c.is_whitespace()
                || c.is_control()
                || matches!(c, '(' | ')' | '<' | '>' | '[' | ']' | '`' | '"')
        });
    if safe {
        let shown = clean.split_once("://").map_or(clean, |(_, rest)| rest);
        format!("[{}]({clean})", inert(shown, 120))
    } else {
        inert(clean, 300)
    }
}

/// The Markdown text of a result message.
pub fn render(m: &Message) -> String {
    let mut lines = Vec::new();
    let mut status = format!(
        "{} **{}** · build {}",
        emoji(m.state),
        m.state,
        inert(m.build, 128)
    );
    if let Some(group) = m.group {
        status.push_str(&format!(" · group {}", inert(group, 80)));
    }
    lines.push(status);
    if !m.reason.is_empty() && m.state != RunState::Completed {
        lines.push(inert(m.reason, 300));
    }
    let r = m.request;
    let mut field = |label: &str, value: &Option<String>| {
        if let Some(v) = value.as_deref().filter(|v| !v.trim().is_empty()) {
            lines.push(format!("**{label}:** {}", inert(v, 300)));
        }
    };
    field("Template", &r.template);
    field("Config family", &r.config_family);
    field("Config file", &r.config_file);
    field("Migration style", &r.migration_style);
    field("Integration plugin", &r.integration_plugin);
    field("Scope", &r.scope_description);
    if let Some(c) = m.counts {
        lines.push(format!(
            "**Tests:** {} · passed {} · failed {} · pending {} · skipped {}",
            c.tests, c.passed, c.failed, c.pending, c.skipped
        ));
    }
    if let Some(d) = &m.duration {
        lines.push(format!("**Duration:** {}", inert(d, 40)));
    }
    if !m.vms.is_empty() {
        let vms: Vec<String> = m
            .vms
            .iter()
            .map(|vm| {
                let detail: Vec<&str> = [vm.os.as_deref(), vm.address.as_deref()]
                    .into_iter()
                    .flatten()
                    .collect();
                if detail.is_empty() {
                    inert(&vm.name, 80)
                } else {
                    format!(
                        "{} ({})",
                        inert(&vm.name, 80),
                        inert(&detail.join(", "), 120)
                    )
                }
            })
            .collect();
        lines.push(format!("**VMs:** {}", vms.join(", ")));
    }
    if let Some(url) = m.run_url {
        lines.push(format!("**Run:** {}", link(url)));
    }
    if !m.failures.is_empty() {
        lines.push("**Failed tests:**".to_string());
        for f in m.failures.iter().take(MAX_FAILURES_SHOWN) {
            let mut item = format!("- {} › {}", inert(&f.spec, 200), inert(&f.full_title, 300));
            if !f.error.is_empty() {
                item.push_str(&format!(" — {}", inert(&f.error, 300)));
            }
            lines.push(item);
        }
        let shown = m.failures.len().min(MAX_FAILURES_SHOWN);
        let more = m.failures_total.max(m.failures.len()) - shown;
        if more > 0 {
            lines.push(format!("and {more} more"));
        }
    }
    cap(lines.join("\n"))
}

/// The labelled message `atvm-run-watcher --test-post` sends.
pub fn test_message(host: &str) -> String {
    cap(format!(
        ":test_tube: **ATVM watcher test message** from {} — the webhook configuration works. No run was watched.",
        inert(host, 100)
    ))
}

fn cap(text: String) -> String {
    if text.chars().count() <= MAX_TEXT {
        return text;
    }
    let mut cut: String = text.chars().take(MAX_TEXT - 20).collect();
    cut.push_str("\n…(truncated)");
    cut
}

/// The outcome of one POST.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attempt {
    Delivered,
    Retry {
        error: String,
        after: Option<Duration>,
    },
    Permanent {
        error: String,
    },
}

/// Something that can make one delivery attempt (the real client, or a test double).
pub trait Poster: Send + Sync + std::fmt::Debug + 'static {
    fn attempt(&self, body: &str) -> Attempt;
}

/// The ureq client for one webhook.
#[derive(Debug, Clone)]
pub struct Client {
    agent: ureq::Agent,
    webhook: Webhook,
}

/// Connect and overall timeouts for one attempt, scaled down for short retry windows so a
/// silent server cannot hold the watcher for long.
pub fn timeouts(window: Duration) -> (Duration, Duration) {
    let connect = (window / 4).clamp(Duration::from_millis(200), Duration::from_secs(10));
    let total = (window / 2).clamp(Duration::from_millis(500), Duration::from_secs(30));
    (connect, total)
}

impl Client {
    pub fn new(webhook: Webhook, window: Duration) -> Client {
        let (connect, total) = timeouts(window);
        let config = ureq::Agent::config_builder()
            .timeout_connect(Some(connect))
            .timeout_global(Some(total))
            // Error statuses come back as responses so their bodies can be reported.
            .http_status_as_error(false)
            .tls_config(
                ureq::tls::TlsConfig::builder()
                    .root_certs(ureq::tls::RootCerts::PlatformVerifier)
                    .build(),
            )
            .build();
        Client {
            agent: config.into(),
            webhook,
        }
    }
}

impl Poster for Client {
    fn attempt(&self, body: &str) -> Attempt {
        let host = self.webhook.host();
        let scrub = |text: &str| self.webhook.redact(text);
        let response = self
            .agent
            .post(self.webhook.expose_url())
            .header("Content-Type", "application/json")
            .send(body);
        let mut response = match response {
            Ok(r) => r,
            Err(e) => {
                let error = format!("{} ({host})", scrub(&e.to_string()));
                return match e {
                    ureq::Error::BadUri(_)
                    | ureq::Error::Http(_)
                    | ureq::Error::InvalidProxyUrl => Attempt::Permanent { error },
                    _ => Attempt::Retry { error, after: None },
                };
            }
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let text = response
            .body_mut()
            .with_config()
            .limit(64 * 1024)
            .read_to_string()
            .unwrap_or_default();
        let excerpt: String = scrub(text.trim()).chars().take(200).collect();
        match status {
            200 if text.trim() == "ok" => Attempt::Delivered,
            200 => Attempt::Permanent {
                error: format!("HTTP 200 without `ok` (not delivered): {excerpt:?} ({host})"),
            },
            408 | 429 | 500..=599 => Attempt::Retry {
                error: format!("HTTP {status}: {excerpt:?} ({host})"),
                after: retry_after,
            },
            _ => Attempt::Permanent {
                error: format!("HTTP {status}: {excerpt:?} ({host})"),
            },
        }
    }
}

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
    fn mentions_and_markdown_are_neutralised() {
        let t = inert(
            "@channel look at *this* [link](http://x) @here_team @all",
            1000,
        );
        assert!(
            !t.contains("@channel") && !t.contains("@here") && !t.contains("@all"),
            "{t}"
        );
        assert!(t.contains("\\*this\\*") && t.contains("\\[link\\]"), "{t}");
        assert_eq!(inert("a\nb\tc", 100), "a b c");
        assert_eq!(inert("abcdef", 3), "abc…");
        assert_eq!(inert("user@ example", 100), "user@ example");
    }

    #[test]
    fn the_text_is_capped_below_mattermosts_limit() {
        let capped = cap("x".repeat(40_000));
        assert!(capped.chars().count() <= MAX_TEXT && capped.ends_with("…(truncated)"));
        assert_eq!(cap("short".into()), "short");
    }

    #[test]
    fn ten_failures_then_and_n_more() {
        let failures: Vec<FailedTest> = (0..14)
            .map(|i| FailedTest {
                spec: "a.cy.js".into(),
                full_title: format!("test {i}"),
                error: "boom".into(),
            })
            .collect();
        let request = Request::default();
        let text = render(&Message {
            state: RunState::Failed,
            build: "b",
            group: None,
            reason: "",
            request: &request,
            counts: None,
            duration: None,
            vms: vec![],
            run_url: None,
            failures: &failures,
            failures_total: 20,
        });
        assert!(
            text.contains("test 9") && !text.contains("test 10"),
            "{text}"
        );
        assert!(text.ends_with("and 10 more"), "{text}");
    }

    #[test]
    fn only_plain_http_urls_become_links() {
        assert_eq!(
            link("https://cloud.cypress.io/runs/1"),
            "[cloud.cypress.io/runs/1](https://cloud.cypress.io/runs/1)"
        );
        assert!(!link("javascript:alert(1)").contains("]("));
        assert!(!link("https://x/a)(b").contains("]("));
    }

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

//! One POST to the webhook and what its answer means: delivered, worth retrying, or
//! permanent. The [`Poster`] trait lets tests replace the HTTP client.
//!
//! - Delivered means HTTP 200 with the body `ok`; a 200 with anything else is not delivered
//!   (a captive portal or a proxy answered) and is permanent.
//! - Connection errors, timeouts (a 200 whose body breaks off included: it may have been
//!   `ok`), 408, 429 (after its `Retry-After` seconds) and 5xx are worth retrying; every
//!   other status is permanent.
//! - Redirects are never followed (the body would go to a host nobody configured): a 3xx is
//!   permanent and its error names the status and the host of `Location`, nothing more.
//! - Nothing a server says is kept except the HTTP status and the `id`, `message` and
//!   `status_code` of a Mattermost JSON error, each scrubbed of the webhook key and cut to
//!   [`MAX_SERVER_TEXT`] characters; any other body is not quoted at all. Errors name the
//!   webhook's host, never its URL.

use crate::config::Webhook;
use std::time::Duration;

/// Longest piece of a server's answer kept in an error.
pub const MAX_SERVER_TEXT: usize = 200;
/// Upper bound of the connect timeout, whatever the retry window.
pub const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Upper bound of one whole request (connect, send, answer): a POST already on the wire is
/// allowed to finish after a stop request, so this must stay below the watcher unit's
/// `TimeoutStopSec`.
pub const MAX_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Most of an answer's body read (only `ok` or a Mattermost JSON error matter).
const MAX_BODY: u64 = 64 * 1024;

/// The outcome of one POST.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attempt {
    Delivered,
    Retry {
        error: String,
        after: Option<Duration>,
        /// The request may have reached the server (a timeout or a dropped connection
        /// after it was sent), as opposed to an answer saying it was not taken (5xx, 429)
        /// or a connection never made.
        maybe_delivered: bool,
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

/// Connect and overall timeouts for one attempt: a quarter and a half of the retry window, so
/// a silent server cannot hold a short window, within 200 ms ..= [`MAX_CONNECT_TIMEOUT`] and
/// 500 ms ..= [`MAX_REQUEST_TIMEOUT`].
pub fn timeouts(window: Duration) -> (Duration, Duration) {
    let connect = (window / 4).clamp(Duration::from_millis(200), MAX_CONNECT_TIMEOUT);
    let total = (window / 2).clamp(Duration::from_millis(500), MAX_REQUEST_TIMEOUT);
    (connect, total)
}

impl Client {
    pub fn new(webhook: Webhook, window: Duration) -> Client {
        let (connect, total) = timeouts(window);
        let config = ureq::Agent::config_builder()
            .timeout_connect(Some(connect))
            .timeout_global(Some(total))
            // A 3xx comes back as the response itself (max_redirects 0 never errors).
            .max_redirects(0)
            // Error statuses come back as responses so they can be classified.
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
        let response = self
            .agent
            .post(self.webhook.expose_url())
            .header("Content-Type", "application/json")
            .send(body);
        let mut response = match response {
            Ok(r) => r,
            Err(e) => return transport_error(&e, &self.webhook),
        };
        let status = response.status().as_u16();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let location = header("location");
        let retry_after = header("retry-after");
        // A redirect's body is never looked at; other bodies only up to MAX_BODY.
        let text = if (300..400).contains(&status) {
            String::new()
        } else {
            match response
                .body_mut()
                .with_config()
                .limit(MAX_BODY)
                .read_to_string()
            {
                Ok(text) => text,
                // Too long to be `ok` or a Mattermost error: judged as a body like any other.
                Err(ureq::Error::BodyExceedsLimit(_)) => String::new(),
                // A 200 whose body broke off (the connection dropped, the timeout struck)
                // may or may not have been `ok`: that is a transport error, worth a retry,
                // not an answer that the post was refused.
                Err(e) if status == 200 => {
                    return Attempt::Retry {
                        error: format!(
                            "HTTP 200, but the answer broke off before its end: {} ({})",
                            cut(&self.webhook.redact(&e.to_string()), MAX_SERVER_TEXT),
                            self.webhook.host()
                        ),
                        after: None,
                        maybe_delivered: true,
                    };
                }
                Err(_) => String::new(),
            }
        };
        let answer = Answer {
            status,
            location: location.as_deref(),
            retry_after: retry_after.as_deref(),
            body: &text,
        };
        classify(&answer, &self.webhook)
    }
}

/// What came back from the server, before it is judged.
#[derive(Clone, Copy, Debug)]
pub struct Answer<'a> {
    pub status: u16,
    pub location: Option<&'a str>,
    pub retry_after: Option<&'a str>,
    pub body: &'a str,
}

/// What an answer means (see the module doc). Pure, so every rule has a unit test.
pub fn classify(answer: &Answer, webhook: &Webhook) -> Attempt {
    let host = webhook.host();
    let status = answer.status;
    let said = || {
        mattermost_error(answer.body, webhook)
            .map(|e| format!(": {e}"))
            .unwrap_or_default()
    };
    match status {
        200 if answer.body.trim() == "ok" => Attempt::Delivered,
        200 => Attempt::Permanent {
            error: format!("HTTP 200 without `ok` (not delivered){} ({host})", said()),
        },
        300..=399 => {
            let target = match answer.location {
                Some(l) => format!("to {}", location_host(l, webhook)),
                None => "without a Location".to_string(),
            };
            Attempt::Permanent {
                error: format!("HTTP {status} redirect {target} not followed ({host})"),
            }
        }
        408 | 429 | 500..=599 => Attempt::Retry {
            error: format!("HTTP {status}{} ({host})", said()),
            // Seconds, capped at a day: a longer wait is past any retry window anyway, and
            // a server's number must not overflow a time computation.
            after: answer
                .retry_after
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(|s| Duration::from_secs(s.min(MAX_RETRY_AFTER_SECS))),
            maybe_delivered: false,
        },
        _ => Attempt::Permanent {
            error: format!("HTTP {status}{} ({host})", said()),
        },
    }
}

/// The longest `Retry-After` taken as given (a day).
const MAX_RETRY_AFTER_SECS: u64 = 24 * 3600;

/// A failure before any answer: connection, timeout, TLS, a URL ureq refuses.
fn transport_error(e: &ureq::Error, webhook: &Webhook) -> Attempt {
    let error = format!(
        "{} ({})",
        cut(&webhook.redact(&e.to_string()), 2 * MAX_SERVER_TEXT),
        webhook.host()
    );
    match e {
        ureq::Error::BadUri(_)
        | ureq::Error::Http(_)
        | ureq::Error::InvalidProxyUrl
        | ureq::Error::RequireHttpsOnly(_) => Attempt::Permanent { error },
        _ => Attempt::Retry {
            error,
            after: None,
            maybe_delivered: !never_connected(e),
        },
    }
}

/// Did the failure happen before a connection was made (so nothing was sent)?
fn never_connected(e: &ureq::Error) -> bool {
    use std::io::ErrorKind;
    match e {
        ureq::Error::HostNotFound | ureq::Error::ConnectionFailed => true,
        ureq::Error::Timeout(t) => matches!(t, ureq::Timeout::Resolve | ureq::Timeout::Connect),
        ureq::Error::Io(io) => matches!(
            io.kind(),
            ErrorKind::ConnectionRefused
                | ErrorKind::HostUnreachable
                | ErrorKind::NetworkUnreachable
                | ErrorKind::AddrNotAvailable
        ),
        _ => false,
    }
}

/// `id`, `message` and `status_code` of a Mattermost JSON error, scrubbed and cut; `None`
/// for any other body (which is never quoted).
fn mattermost_error(body: &str, webhook: &Webhook) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(body.trim()).ok()?;
    let object = value.as_object()?;
    // Redact before cutting: a cut could leave the start of the key behind.
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => {
            Some(format!("{:?}", cut(&webhook.redact(s), MAX_SERVER_TEXT)))
        }
        serde_json::Value::Number(n) => Some(cut(&n.to_string(), MAX_SERVER_TEXT)),
        _ => None,
    };
    let parts: Vec<String> = ["id", "message", "status_code"]
        .into_iter()
        .filter_map(|k| Some(format!("{k} {}", text(object.get(k)?)?)))
        .collect();
    (!parts.is_empty()).then(|| parts.join(", "))
}

/// The host named by a redirect's `Location`, scrubbed and cut; a relative location points
/// back at the webhook's own host.
fn location_host(location: &str, webhook: &Webhook) -> String {
    let l = location.trim();
    let rest = match l.split_once("://") {
        Some((_, rest)) => rest,
        None => match l.strip_prefix("//") {
            Some(rest) => rest,
            None => return format!("{} (relative)", webhook.host()),
        },
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit('@').next().unwrap_or(authority);
    if host.is_empty() {
        "an unparsable location".to_string()
    } else {
        cut(&webhook.redact(host), MAX_SERVER_TEXT)
    }
}

/// At most `max` characters of `text`, as one line.
fn cut(text: &str, max: usize) -> String {
    text.chars()
        .take(max)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;
    use std::sync::mpsc;

    const KEY: &str = "Xk3p9qWmZ7rT1bYc5dF8gH2jLa";

    fn hook() -> Webhook {
        Webhook::new(&format!("https://chat.example.com/hooks/{KEY}"))
    }

    fn answer(status: u16, body: &str) -> Attempt {
        classify(
            &Answer {
                status,
                location: None,
                retry_after: None,
                body,
            },
            &hook(),
        )
    }

    fn error_of(a: &Attempt) -> &str {
        match a {
            Attempt::Retry { error, .. } | Attempt::Permanent { error } => error,
            Attempt::Delivered => "",
        }
    }

    #[test]
    fn delivered_means_200_and_ok() {
        assert_eq!(answer(200, "ok"), Attempt::Delivered);
        assert_eq!(answer(200, "ok\n"), Attempt::Delivered);
        for body in ["", "OK!", "<html>captive portal</html>", "{\"ok\":true}"] {
            let a = answer(200, body);
            assert!(matches!(a, Attempt::Permanent { .. }), "{body:?}: {a:?}");
            assert!(error_of(&a).contains("without `ok`"), "{a:?}");
        }
        assert!(matches!(answer(201, "ok"), Attempt::Permanent { .. }));
        assert!(matches!(answer(204, ""), Attempt::Permanent { .. }));
    }

    #[test]
    fn transient_statuses_are_retried_and_others_are_permanent() {
        for status in [408, 429, 500, 502, 503, 504, 599] {
            assert!(
                matches!(answer(status, ""), Attempt::Retry { after: None, .. }),
                "{status}"
            );
        }
        for status in [400, 401, 403, 404, 410, 413, 422, 100, 600] {
            assert!(
                matches!(answer(status, ""), Attempt::Permanent { .. }),
                "{status}"
            );
        }
        let e = answer(503, "");
        assert_eq!(error_of(&e), "HTTP 503 (chat.example.com)");
        assert!(
            matches!(
                e,
                Attempt::Retry {
                    maybe_delivered: false,
                    ..
                }
            ),
            "an answer: not taken"
        );
    }

    #[test]
    fn retry_after_seconds_are_honoured() {
        let with = |v: &str| {
            classify(
                &Answer {
                    status: 429,
                    location: None,
                    retry_after: Some(v),
                    body: "",
                },
                &hook(),
            )
        };
        assert!(
            matches!(with(" 7 "), Attempt::Retry { after: Some(d), .. } if d == Duration::from_secs(7))
        );
        // A hostile number is capped, not overflowed.
        assert!(matches!(
            with("18446744073709551615"),
            Attempt::Retry { after: Some(d), .. } if d == Duration::from_secs(24 * 3600)
        ));
        // An HTTP date is not seconds: the loop's own backoff applies.
        assert!(matches!(
            with("Wed, 21 Oct 2026 07:28:00 GMT"),
            Attempt::Retry { after: None, .. }
        ));
    }

    #[test]
    fn a_redirect_is_permanent_and_names_only_status_and_target_host() {
        for status in [301, 302, 303, 307, 308] {
            let a = classify(
                &Answer {
                    status,
                    location: Some("https://user:pw@other.example.net:8443/hooks/elsewhere?k=v"),
                    retry_after: None,
                    body: "",
                },
                &hook(),
            );
            assert_eq!(
                a,
                Attempt::Permanent {
                    error: format!(
                        "HTTP {status} redirect to other.example.net:8443 not followed (chat.example.com)"
                    )
                }
            );
        }
        let relative = |l: Option<&str>| {
            error_of(&classify(
                &Answer {
                    status: 302,
                    location: l,
                    retry_after: None,
                    body: "",
                },
                &hook(),
            ))
            .to_string()
        };
        assert!(
            relative(Some(&format!("/hooks/{KEY}/v2"))).contains("to chat.example.com (relative)")
        );
        assert!(relative(Some("//cdn.example.org/x")).contains("to cdn.example.org "));
        assert!(relative(None).contains("HTTP 302 redirect without a Location"));
        assert!(!relative(Some(&format!("/hooks/{KEY}"))).contains(KEY));
    }

    #[test]
    fn only_a_mattermost_errors_id_message_and_status_code_are_kept() {
        let body = format!(
            r#"{{"id":"web.incoming_webhook.invalid.app_error","message":"Invalid webhook /HOOKS/{}","detailed_error":"secret detail","request_id":"r1","status_code":400}}"#,
            KEY.to_uppercase()
        );
        let e = error_of(&answer(400, &body)).to_string();
        assert_eq!(
            e,
            "HTTP 400: id \"web.incoming_webhook.invalid.app_error\", \
             message \"Invalid webhook [redacted]\", status_code 400 (chat.example.com)"
        );
        // Each piece is cut to 200 characters, after the key is gone.
        let long = format!(
            r#"{{"message":"{}{KEY}{}"}}"#,
            "m".repeat(190),
            "z".repeat(500)
        );
        let e = error_of(&answer(500, &long)).to_string();
        assert!(!e.contains(&KEY[..6]) && !e.contains("zzzz"), "{e}");
        assert!(e.contains(&format!("{}[", "m".repeat(190))), "{e}");
    }

    #[test]
    fn any_other_body_is_not_quoted() {
        for body in [
            "<html>Bad gateway at /hooks/abc</html>",
            "plain words",
            "[1,2]",
            "\"str\"",
            "{\"error\":\"x\"}",
        ] {
            let e = error_of(&answer(502, body)).to_string();
            assert_eq!(e, "HTTP 502 (chat.example.com)", "{body}");
        }
    }

    #[test]
    fn timeouts_are_bounded_and_scale_down_for_short_windows() {
        for secs in [0.0, 0.5, 2.0, 20.0, 1800.0, 1e6] {
            let (connect, total) = timeouts(Duration::from_secs_f64(secs));
            assert!(connect <= MAX_CONNECT_TIMEOUT && total <= MAX_REQUEST_TIMEOUT);
            assert!(connect <= total, "{secs}: {connect:?} {total:?}");
        }
        assert_eq!(
            timeouts(Duration::from_secs(1800)),
            (Duration::from_secs(5), Duration::from_secs(10))
        );
        assert_eq!(
            timeouts(Duration::from_secs(2)),
            (Duration::from_millis(500), Duration::from_secs(1))
        );
    }

    /// A one-request HTTP server on 127.0.0.1 answering `response`; sends the request's
    /// first line when one arrives.
    fn one_shot(response: String) -> (String, mpsc::Receiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let Ok((stream, _)) = listener.accept() else {
                return;
            };
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut first = String::new();
            let _ = reader.read_line(&mut first);
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            let _ = tx.send(first);
            let mut stream = stream;
            let _ = stream.write_all(response.as_bytes());
        });
        (format!("http://{addr}"), rx)
    }

    fn reply(status: &str, headers: &str, body: &str) -> String {
        format!(
            "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    }

    #[test]
    fn the_client_posts_and_reads_ok() {
        let (base, seen) = one_shot(reply("200 OK", "", "ok"));
        let client = Client::new(
            Webhook::new(&format!("{base}/hooks/{KEY}")),
            Duration::from_secs(5),
        );
        assert_eq!(client.attempt("{}"), Attempt::Delivered);
        assert_eq!(
            seen.recv().expect("request").trim(),
            format!("POST /hooks/{KEY} HTTP/1.1")
        );
    }

    #[test]
    fn the_client_never_follows_a_redirect() {
        let (target, target_seen) = one_shot(reply("200 OK", "", "ok"));
        let target_host = target.trim_start_matches("http://").to_string();
        for status in [
            "301 Moved Permanently",
            "302 Found",
            "307 Temporary Redirect",
        ] {
            let (base, seen) = one_shot(reply(
                status,
                &format!("Location: {target}/hooks/{KEY}\r\n"),
                "",
            ));
            let client = Client::new(
                Webhook::new(&format!("{base}/hooks/{KEY}")),
                Duration::from_secs(5),
            );
            let a = client.attempt("{}");
            let code = &status[..3];
            assert!(
                matches!(&a, Attempt::Permanent { error }
                    if error.contains(&format!("HTTP {code}")) && error.contains(&target_host) && !error.contains(KEY)),
                "{a:?}"
            );
            assert!(seen.recv().is_ok());
        }
        assert!(
            target_seen
                .recv_timeout(Duration::from_millis(200))
                .is_err(),
            "the redirect target got a request"
        );
    }

    #[test]
    fn a_200_whose_body_breaks_off_is_retried_not_failed_for_good() {
        // The server may well have posted the message: the answer was cut, not a refusal.
        for cut_off in [
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\no",
        ] {
            let (base, seen) = one_shot(cut_off.to_string());
            let client = Client::new(
                Webhook::new(&format!("{base}/hooks/{KEY}")),
                Duration::from_secs(5),
            );
            let a = client.attempt("{}");
            assert!(
                matches!(&a, Attempt::Retry { error, maybe_delivered: true, .. } if error.contains("HTTP 200, but the answer broke off")),
                "{cut_off:?}: {a:?}"
            );
            assert!(!error_of(&a).contains(KEY));
            assert!(seen.recv().is_ok());
        }
    }

    #[test]
    fn connection_failures_and_timeouts_are_retried_without_the_key() {
        // A port nobody listens on.
        let free = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = free.local_addr().expect("addr");
        drop(free);
        let client = Client::new(
            Webhook::new(&format!("http://{addr}/hooks/{KEY}")),
            Duration::from_secs(2),
        );
        let a = client.attempt("{}");
        assert!(
            matches!(&a, Attempt::Retry { error, maybe_delivered: false, .. } if error.ends_with(&format!("({addr})"))),
            "refused: never sent: {a:?}"
        );
        assert!(!error_of(&a).contains(KEY));
        // A server that accepts and never answers: the overall timeout (1 s for a 2 s window).
        let silent = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = silent.local_addr().expect("addr");
        let client = Client::new(
            Webhook::new(&format!("http://{addr}/hooks/{KEY}")),
            Duration::from_secs(2),
        );
        let started = std::time::Instant::now();
        let a = client.attempt("{}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        assert!(
            matches!(&a, Attempt::Retry { error, maybe_delivered: true, .. } if error.to_lowercase().contains("timeout")),
            "no answer: it may have been taken: {a:?}"
        );
        drop(silent);
    }
}

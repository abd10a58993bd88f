//! One POST to the webhook and what its answer means: delivered, worth retrying, or
//! permanent. The [`Poster`] trait lets tests replace the HTTP client.

use crate::config::Webhook;
use std::time::Duration;

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

//! Mattermost (docs/watcher-service.md): what a message says ([`message`]), one verified POST
//! ([`client`]), and the retry loop that delivers a result ([`deliver`]).
//!
//! Delivered means HTTP 200 with body `ok`. Connection errors, timeouts, 408, 429 (after its
//! `Retry-After`) and 5xx are retried with exponential backoff and jitter inside the retry
//! window; anything else is permanent, redirects included (never followed). The cancel marker
//! is re-checked before every attempt. The webhook URL never appears in errors: they name the
//! host, and any text that came back from the server is scrubbed of the key
//! ([`crate::config::Webhook::redact`]) before it is kept.

pub mod client;
pub mod deliver;
pub mod message;

pub use crate::config::Format;
pub use client::{
    Answer, Attempt, Client, MAX_CONNECT_TIMEOUT, MAX_REQUEST_TIMEOUT, Poster, classify, timeouts,
};
pub use deliver::{Delivery, Hooks, backoff, deliver};
pub use message::{
    Attachment, Field, MAX_FAILURES_SHOWN, MAX_PAYLOAD, MAX_VMS_SHOWN, Message, Payload, USERNAME,
    host_name,
};

//! A fake Mattermost incoming webhook on 127.0.0.1: records every request and answers from a
//! script (then `ok`), so delivery can be tested without the network. It answers the way
//! Mattermost's server does (server/channels/web/webhook.go and app/webhook.go): delivered
//! is `200`, `Content-Type: text/plain`, body `ok`; an error is an application error as
//! JSON, `{"id","message","detailed_error","request_id","status_code"}`, with its status —
//! 400 for a hook that does not exist (any path but its own), 404 for a channel that does
//! not ([`Reply::missing_channel`]); a rate limit is 429 in plain text
//! ([`Reply::rate_limited`]). And like the server it splits a text longer than its post size
//! into several posts while answering one `ok` ([`FakeWebhook::with_post_size`],
//! [`FakeWebhook::posts`]), so a test can see a split. Besides that the script can answer
//! any status, redirect (to a second fake that would answer `ok`, so a test can prove it
//! was never reached), answer late, or echo the request's key back in the ways a real
//! server or proxy might ([`Echo`]), for the tests that the key never leaks.

use serde_json::Value;
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub enum Reply {
    /// HTTP 200 with body `ok`: delivered.
    Ok,
    Status {
        code: u16,
        body: String,
        retry_after: Option<u32>,
    },
    /// Accept the connection and never answer.
    Silent,
    /// A redirect (301, 302, 307, 308, …) to `location`.
    Redirect { code: u16, location: String },
    /// `reply`, sent `delay` after the request was received and recorded.
    Delayed { delay: Duration, reply: Box<Reply> },
    /// `code` with a body that echoes the request's path in the form `echo`.
    Echo { code: u16, echo: Echo },
    /// A Mattermost application error: `status` with the JSON body the server writes.
    AppError {
        status: u16,
        id: &'static str,
        message: &'static str,
    },
    /// The server's rate limit: 429, `limit exceeded` in plain text, `Retry-After`.
    RateLimited { retry_after: u32 },
}

impl Reply {
    pub fn status(code: u16, body: &str) -> Reply {
        Reply::Status {
            code,
            body: body.to_string(),
            retry_after: None,
        }
    }

    pub fn redirect(code: u16, location: &str) -> Reply {
        Reply::Redirect {
            code,
            location: location.to_string(),
        }
    }

    pub fn delayed(delay: Duration, reply: Reply) -> Reply {
        Reply::Delayed {
            delay,
            reply: Box::new(reply),
        }
    }

    pub fn echo(code: u16, echo: Echo) -> Reply {
        Reply::Echo { code, echo }
    }

    /// What the server answers for a hook id it does not know (deleted, mistyped): 400.
    pub fn unknown_hook() -> Reply {
        Reply::AppError {
            status: 400,
            id: "web.incoming_webhook.invalid.app_error",
            message: "Invalid webhook.",
        }
    }

    /// What the server answers when the payload's `channel` does not exist: 404.
    pub fn missing_channel() -> Reply {
        Reply::AppError {
            status: 404,
            id: "web.incoming_webhook.channel.app_error",
            message: "Couldn't find the channel.",
        }
    }

    pub fn rate_limited(retry_after: u32) -> Reply {
        Reply::RateLimited { retry_after }
    }
}

/// The JSON body of a Mattermost application error.
fn app_error(status: u16, id: &str, message: &str) -> String {
    serde_json::json!({
        "id": id,
        "message": message,
        "detailed_error": "",
        "request_id": "fakerequestid0000000000000a",
        "status_code": status,
    })
    .to_string()
}

/// How a server may echo the webhook's key (the request path `/hooks/<key>`) back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Echo {
    /// `/hooks/<key>` as sent.
    Raw,
    /// `/HOOKS/<KEY>`.
    Upper,
    /// `//hooks/<key>`.
    DoubleSlash,
    /// Every other character as `%XX`, hex case alternating: `%2fh%6Fo…`.
    PercentEncoded,
    /// The key alone, without `/hooks/`.
    Bare,
    /// Inside the `message` (and `detailed_error`) of a Mattermost JSON error.
    MattermostJson,
    /// Only the key's first 12 characters, then `…`, in a Mattermost JSON error (which is
    /// quoted, so a fragment that survived redaction would show).
    Truncated,
}

impl Echo {
    pub const ALL: [Echo; 7] = [
        Echo::Raw,
        Echo::Upper,
        Echo::DoubleSlash,
        Echo::PercentEncoded,
        Echo::Bare,
        Echo::MattermostJson,
        Echo::Truncated,
    ];

    /// The key-bearing text this form puts in a body, for a request to `path`.
    pub fn fragment(self, path: &str) -> String {
        match self {
            Echo::Raw | Echo::MattermostJson => path.to_string(),
            Echo::Upper => path.to_uppercase(),
            Echo::DoubleSlash => format!("/{path}"),
            Echo::PercentEncoded => path
                .bytes()
                .enumerate()
                .map(|(i, b)| match i % 4 {
                    0 => format!("%{b:02x}"),
                    2 => format!("%{b:02X}"),
                    _ => char::from(b).to_string(),
                })
                .collect(),
            Echo::Bare => path.rsplit('/').next().unwrap_or(path).to_string(),
            Echo::Truncated => {
                let key = path.rsplit('/').next().unwrap_or(path);
                format!("{}…", key.get(..12).unwrap_or(key))
            }
        }
    }

    /// The whole body of the answer.
    pub fn body(self, path: &str) -> String {
        let fragment = self.fragment(path);
        match self {
            Echo::MattermostJson | Echo::Truncated => serde_json::json!({
                "id": "web.incoming_webhook.invalid.app_error",
                "message": format!("Invalid webhook: {fragment}"),
                "detailed_error": format!("no hook at {fragment}"),
                "request_id": "fake-request-id",
                "status_code": 400,
            })
            .to_string(),
            _ => format!("no such webhook: {fragment}"),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Recorded {
    pub path: String,
    pub body: String,
    pub at: Instant,
    /// The wall clock when the request was read (the benchmark compares it with the time a
    /// runner's command wrote as it exited).
    pub received: std::time::SystemTime,
}

impl Recorded {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// The first attachment of a payload (`Null` in the text format).
pub fn attachment(payload: &Value) -> &Value {
    &payload["attachments"][0]
}

/// The value of the attachment field titled `title`, if the payload has one.
pub fn field(payload: &Value, title: &str) -> Option<String> {
    attachment(payload)["fields"]
        .as_array()?
        .iter()
        .find(|f| f["title"] == title)
        .and_then(|f| f["value"].as_str())
        .map(str::to_string)
}

#[derive(Debug)]
struct Inner {
    script: VecDeque<Reply>,
    requests: Vec<Recorded>,
    /// What the channel shows: one entry per post, a long text split as the server would.
    posts: Vec<Value>,
    /// The server's maximum post size in characters (`MaxPostSize`).
    post_size: usize,
}

/// Mattermost's post size today (16,383 characters); the oldest servers took 4,000.
pub const POST_SIZE: usize = 16_383;

#[derive(Debug)]
pub struct FakeWebhook {
    addr: SocketAddr,
    secret: String,
    inner: Arc<Mutex<Inner>>,
}

impl FakeWebhook {
    /// Answers with `script` in order, then `ok` forever.
    pub fn start(script: Vec<Reply>) -> FakeWebhook {
        FakeWebhook::with_post_size(script, POST_SIZE)
    }

    /// The same, as a server whose posts hold at most `post_size` characters (4,000 on the
    /// oldest servers): a longer text becomes several posts, and still one `ok`.
    pub fn with_post_size(script: Vec<Reply>, post_size: usize) -> FakeWebhook {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let inner = Arc::new(Mutex::new(Inner {
            script: script.into(),
            requests: Vec::new(),
            posts: Vec::new(),
            post_size,
        }));
        let shared = Arc::clone(&inner);
        // Shaped like a Mattermost key: 26 lower-case letters and digits.
        let mut seed = u64::from(std::process::id()) * 7919 + u64::from(addr.port());
        let secret = (0..26)
            .map(|_| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                char::from(b"abcdefghijklmnopqrstuvwxyz0123456789"[(seed >> 33) as usize % 36])
            })
            .collect();
        let hook = format!("/hooks/{secret}");
        std::thread::spawn(move || {
            for stream in listener.incoming().filter_map(|s| s.ok()) {
                let shared = Arc::clone(&shared);
                let hook = hook.clone();
                std::thread::spawn(move || serve(stream, &shared, &hook));
            }
        });
        FakeWebhook {
            addr,
            secret,
            inner,
        }
    }

    /// From now on answer `ok` to everything (the rest of the script is dropped): the
    /// end of an outage.
    pub fn recover(&self) {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .script
            .clear();
    }

    /// The posts the channel shows, in order: one per delivered request, or several where
    /// the server split a long text (the attachments go with the last part).
    pub fn posts(&self) -> Vec<Value> {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .posts
            .clone()
    }

    /// The webhook URL; its path is the secret.
    pub fn url(&self) -> String {
        format!("http://{}/hooks/{}", self.addr, self.secret)
    }

    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// How many requests arrived so far.
    pub fn count(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .requests
            .len()
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .requests
            .clone()
    }

    /// Top-level `text` of every recorded post (the one-line summary of an attachment
    /// post, the whole message in the text format), in order.
    pub fn texts(&self) -> Vec<String> {
        self.requests()
            .iter()
            .map(|r| r.json()["text"].as_str().unwrap_or_default().to_string())
            .collect()
    }
}

fn serve(stream: TcpStream, inner: &Mutex<Inner>, hook: &str) {
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("")
        .to_string();
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" || line == "\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0u8; length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let reply = {
        let mut g = inner.lock().unwrap_or_else(|e| e.into_inner());
        let body = String::from_utf8_lossy(&body).into_owned();
        g.requests.push(Recorded {
            path: path.clone(),
            body: body.clone(),
            at: Instant::now(),
            received: std::time::SystemTime::now(),
        });
        let reply = match path == hook {
            true => g.script.pop_front().unwrap_or(Reply::Ok),
            // The router knows the hook by its id: any other is not a webhook.
            false => Reply::unknown_hook(),
        };
        if matches!(reply, Reply::Ok) {
            let size = g.post_size;
            let posts = split(serde_json::from_str(&body).unwrap_or(Value::Null), size);
            g.posts.extend(posts);
        }
        reply
    };
    answer(stream, reply, &path);
}

/// One delivered payload as the channel shows it: a text over `size` characters becomes
/// several posts, cut on line breaks where it can (as the server's SplitWebhookPost).
fn split(payload: Value, size: usize) -> Vec<Value> {
    let chars: Vec<char> = payload["text"]
        .as_str()
        .unwrap_or_default()
        .chars()
        .collect();
    let mut parts: Vec<String> = Vec::new();
    let mut start = 0;
    while chars.len() - start > size {
        let window = &chars[start..start + size];
        let cut = match window.iter().rposition(|&c| c == '\n') {
            Some(i) if i > 0 => i + 1,
            _ => size,
        };
        parts.push(chars[start..start + cut].iter().collect());
        start += cut;
    }
    parts.push(chars[start..].iter().collect());
    let last = parts.len() - 1;
    parts
        .into_iter()
        .enumerate()
        .map(|(i, part)| {
            let mut post = payload.clone();
            post["text"] = Value::String(part);
            if i != last
                && let Some(o) = post.as_object_mut()
            {
                o.remove("attachments");
            }
            post
        })
        .collect()
}

fn answer(mut stream: TcpStream, reply: Reply, path: &str) {
    let mut headers = String::new();
    let mut kind = "text/plain";
    let (code, text) = match reply {
        Reply::Ok => (200, "ok".to_string()),
        Reply::Status {
            code,
            body,
            retry_after,
        } => {
            if let Some(s) = retry_after {
                headers.push_str(&format!("Retry-After: {s}\r\n"));
            }
            (code, body)
        }
        Reply::Silent => {
            std::thread::sleep(Duration::from_secs(120));
            return;
        }
        Reply::Redirect { code, location } => {
            headers.push_str(&format!("Location: {location}\r\n"));
            (code, String::new())
        }
        Reply::Delayed { delay, reply } => {
            std::thread::sleep(delay);
            return answer(stream, *reply, path);
        }
        Reply::Echo { code, echo } => {
            if matches!(echo, Echo::MattermostJson | Echo::Truncated) {
                kind = "application/json";
            }
            (code, echo.body(path))
        }
        Reply::AppError {
            status,
            id,
            message,
        } => {
            kind = "application/json";
            (status, app_error(status, id, message))
        }
        Reply::RateLimited { retry_after } => {
            headers.push_str(&format!("Retry-After: {retry_after}\r\n"));
            kind = "text/plain; charset=utf-8";
            (429, "limit exceeded\n".to_string())
        }
    };
    let response = format!(
        "HTTP/1.1 {code} X\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n{headers}\r\n{text}",
        text.len()
    );
    let _ = stream.write_all(response.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// POST `body` to `path` on `hook`; the status line, headers and body as text.
    fn post(hook: &FakeWebhook, path: &str, body: &str) -> String {
        let mut s = TcpStream::connect(hook.host()).expect("connect");
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).expect("send");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read");
        out
    }

    #[test]
    fn answers_as_mattermost_does() {
        let hook =
            FakeWebhook::with_post_size(vec![Reply::missing_channel(), Reply::rate_limited(3)], 10);
        let path = format!("/hooks/{}", hook.secret());
        let unknown = post(&hook, "/hooks/somebodyelse", r#"{"text":"x"}"#);
        assert!(unknown.starts_with("HTTP/1.1 400 ") && unknown.contains("application/json"));
        let v: Value =
            serde_json::from_str(unknown.split("\r\n\r\n").nth(1).unwrap_or("")).expect("json");
        let keys: Vec<&String> = v.as_object().expect("object").keys().collect();
        assert_eq!(
            keys,
            [
                "detailed_error",
                "id",
                "message",
                "request_id",
                "status_code"
            ]
        );
        assert_eq!(v["status_code"], 400);
        let missing = post(&hook, &path, r#"{"text":"x","channel":"nope"}"#);
        assert!(
            missing.starts_with("HTTP/1.1 404 ")
                && missing.contains("web.incoming_webhook.channel.app_error")
        );
        let limited = post(&hook, &path, r#"{"text":"x"}"#);
        assert!(
            limited.starts_with("HTTP/1.1 429 ")
                && limited.contains("Retry-After: 3")
                && limited.ends_with("limit exceeded\n")
        );
        let ok = post(
            &hook,
            &path,
            r#"{"text":"first line\nsecond line","attachments":[{"title":"t"}]}"#,
        );
        assert!(
            ok.starts_with("HTTP/1.1 200 ")
                && ok.contains("Content-Type: text/plain\r\n")
                && ok.ends_with("\r\n\r\nok")
        );
        let posts = hook.posts();
        assert_eq!(
            posts.len(),
            3,
            "a 22-character text on a 10-character server: {posts:?}"
        );
        assert_eq!(posts[0]["text"], "first line");
        assert!(
            posts[0].get("attachments").is_none() && posts[2]["attachments"][0]["title"] == "t"
        );
        assert_eq!(
            hook.count(),
            4,
            "every request is recorded, delivered or not"
        );
    }
}

//! A fake Mattermost incoming webhook on 127.0.0.1: records every request and answers from a
//! script (then `ok`), so delivery can be tested without the network. Besides plain statuses
//! the script can redirect (to a second fake that would answer `ok`, so a test can prove it
//! was never reached), answer late, or echo the request's key back in the ways a real server
//! or proxy might ([`Echo`]), for the tests that the key never leaks.

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
}

#[derive(Debug)]
pub struct FakeWebhook {
    addr: SocketAddr,
    secret: String,
    inner: Arc<Mutex<Inner>>,
}

impl FakeWebhook {
    /// Answers with `script` in order, then `ok` forever.
    pub fn start(script: Vec<Reply>) -> FakeWebhook {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let inner = Arc::new(Mutex::new(Inner {
            script: script.into(),
            requests: Vec::new(),
        }));
        let shared = Arc::clone(&inner);
        std::thread::spawn(move || {
            for stream in listener.incoming().filter_map(|s| s.ok()) {
                let shared = Arc::clone(&shared);
                std::thread::spawn(move || serve(stream, &shared));
            }
        });
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

fn serve(stream: TcpStream, inner: &Mutex<Inner>) {
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
        g.requests.push(Recorded {
            path: path.clone(),
            body: String::from_utf8_lossy(&body).into_owned(),
            at: Instant::now(),
        });
        g.script.pop_front().unwrap_or(Reply::Ok)
    };
    answer(stream, reply, &path);
}

fn answer(mut stream: TcpStream, reply: Reply, path: &str) {
    let mut headers = String::new();
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
        Reply::Echo { code, echo } => (code, echo.body(path)),
    };
    let response = format!(
        "HTTP/1.1 {code} X\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n{headers}\r\n{text}",
        text.len()
    );
    let _ = stream.write_all(response.as_bytes());
}

//! A fake Mattermost incoming webhook on 127.0.0.1: records every request and answers from a
//! script (then `ok`), so delivery can be tested without the network.

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
}

impl Reply {
    pub fn status(code: u16, body: &str) -> Reply {
        Reply::Status {
            code,
            body: body.to_string(),
            retry_after: None,
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
        let secret = format!(
            "s3cr3t-{:x}",
            std::process::id() as u64 * 7919 + addr.port() as u64
        );
        FakeWebhook {
            addr,
            secret,
            inner,
        }
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

    pub fn requests(&self) -> Vec<Recorded> {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .requests
            .clone()
    }

    /// Text of every recorded post, in order.
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
            path,
            body: String::from_utf8_lossy(&body).into_owned(),
            at: Instant::now(),
        });
        g.script.pop_front().unwrap_or(Reply::Ok)
    };
    let mut stream = stream;
    let (code, text, retry_after) = match reply {
        Reply::Ok => (200, "ok".to_string(), None),
        Reply::Status {
            code,
            body,
            retry_after,
        } => (code, body, retry_after),
        Reply::Silent => {
            std::thread::sleep(Duration::from_secs(120));
            return;
        }
    };
    let mut response = format!(
        "HTTP/1.1 {code} X\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n",
        text.len()
    );
    if let Some(s) = retry_after {
        response.push_str(&format!("Retry-After: {s}\r\n"));
    }
    response.push_str("\r\n");
    response.push_str(&text);
    let _ = stream.write_all(response.as_bytes());
}

//! A tiny HTTP/1.1 server on 127.0.0.1 for answers a real registry will not give. One response
//! per connection (`Connection: close`); every request is recorded, and every body byte sent
//! counted.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A request as the fake server saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

/// What to answer.
#[derive(Clone, Debug, Default)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Announce this Content-Length instead of the body's.
    pub content_length: Option<usize>,
    /// Close the connection after this many body bytes.
    pub cut_after: Option<usize>,
    /// How the body goes out, when not whole and at once.
    pub pace: Pace,
}

/// How a reply's body is sent.
#[derive(Clone, Debug, Default)]
pub enum Pace {
    /// All at once.
    #[default]
    Whole,
    /// No answer at all: the request is read and the connection held open, silent.
    Silent,
    /// The headers and this many body bytes, then silence with the connection open.
    StallAfter(usize),
    /// The body a byte at a time, one every interval, for ever (the connection held open).
    Trickle(Duration),
    /// `x` for ever (a body without Content-Length, ended by closing), up to this many bytes
    /// as a safety net.
    Endless(u64),
}

impl Reply {
    pub fn new(status: u16) -> Self {
        Reply {
            status,
            ..Reply::default()
        }
    }
    pub fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.to_owned(), v.to_owned()));
        self
    }
    pub fn body(mut self, b: impl Into<Vec<u8>>) -> Self {
        self.body = b.into();
        self
    }
    pub fn pace(mut self, p: Pace) -> Self {
        self.pace = p;
        self
    }
}

type Handler = Arc<dyn Fn(&Seen) -> Reply + Send + Sync>;

/// A running fake server.
pub struct Fake {
    pub host: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// Body bytes written so far, over all connections.
    pub sent: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Fake {
    pub async fn start(handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let host = listener.local_addr().expect("addr").to_string();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let handler: Handler = Arc::new(handler);
        let log = Arc::clone(&seen);
        let sent = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&sent);
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let handler = Arc::clone(&handler);
                let log = Arc::clone(&log);
                let counter = Arc::clone(&counter);
                tokio::spawn(async move {
                    let Some(req) = read_request(&mut sock).await else {
                        return;
                    };
                    log.lock().expect("log").push(req.clone());
                    let reply = handler(&req);
                    let _ = write_reply(&mut sock, &req, &reply, &counter).await;
                });
            }
        });
        Fake {
            host,
            seen,
            sent,
            task,
        }
    }

    /// Body bytes sent so far.
    pub fn bytes_sent(&self) -> u64 {
        self.sent.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().expect("log").clone()
    }
}

async fn read_request(sock: &mut tokio::net::TcpStream) -> Option<Seen> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    let head_end = loop {
        let n = sock.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > 1 << 20 {
            return None;
        }
    };
    let head = std::str::from_utf8(&buf[..head_end]).ok()?.to_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_owned();
    let path = first.next()?.to_owned();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        let n = sock.read(&mut tmp).await.ok()?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&tmp[..n]);
    }
    Some(Seen {
        method,
        path,
        headers,
        body,
    })
}

async fn write_reply(
    sock: &mut tokio::net::TcpStream,
    req: &Seen,
    r: &Reply,
    counter: &AtomicU64,
) -> std::io::Result<()> {
    if let Pace::Silent = r.pace {
        return hold(sock).await;
    }
    let len = r.content_length.unwrap_or(r.body.len());
    let mut head = format!("HTTP/1.1 {} X\r\nConnection: close\r\n", r.status);
    if !matches!(r.pace, Pace::Endless(_)) {
        head.push_str(&format!("Content-Length: {len}\r\n"));
    }
    for (k, v) in &r.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    sock.write_all(head.as_bytes()).await?;
    match r.pace {
        Pace::Whole | Pace::Silent => {}
        Pace::StallAfter(n) => {
            let part = &r.body[..n.min(r.body.len())];
            sock.write_all(part).await?;
            counter.fetch_add(part.len() as u64, Ordering::SeqCst);
            return hold(sock).await;
        }
        Pace::Trickle(every) => {
            for b in &r.body {
                sock.write_all(std::slice::from_ref(b)).await?;
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(every).await;
            }
            return hold(sock).await;
        }
        Pace::Endless(max) => {
            let chunk = vec![b'x'; 64 * 1024];
            let mut n = 0u64;
            while n < max {
                sock.write_all(&chunk).await?;
                n += chunk.len() as u64;
                counter.fetch_add(chunk.len() as u64, Ordering::SeqCst);
            }
            return sock.shutdown().await;
        }
    }
    if req.method != "HEAD" {
        let body = match r.cut_after {
            Some(n) => &r.body[..n.min(r.body.len())],
            None => &r.body[..],
        };
        sock.write_all(body).await?;
    }
    sock.flush().await?;
    sock.shutdown().await
}

/// Keeps a connection open and silent until the client goes away (or the test ends).
async fn hold(sock: &mut tokio::net::TcpStream) -> std::io::Result<()> {
    sock.flush().await?;
    let mut buf = [0u8; 1024];
    loop {
        if sock.read(&mut buf).await? == 0 {
            return Ok(());
        }
    }
}

//! A minimal bearer-token endpoint (the `realm` of Distribution's `auth: token:` set-up) on a
//! free loopback port, served by plain std threads so that it works under any (or no) async
//! runtime.
//!
//! It answers `GET /token?service=S&scope=T:NAME:ACTIONS&scope=...` over HTTP/1.1 (one request
//! per connection, `Connection: close`) with
//! `{"token": JWT, "access_token": JWT, "expires_in": 300, "issued_at": RFC 3339}`. With
//! `Authorization: Basic` of the harness user and password, the token grants every action
//! asked for; without `Authorization`, it grants only `pull`; with wrong credentials the answer
//! is 401. Every request is counted, and every scope asked for is recorded, so that tests can
//! check that a client reuses its tokens.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// Lifetime of the tokens, in seconds (`expires_in`).
const EXPIRES_IN: u64 = 300;

/// What the token endpoint signs with and puts in its tokens.
#[derive(Debug, Clone)]
pub struct TokenConfig {
    /// `iss` of the tokens: the registry's `auth.token.issuer`.
    pub issuer: String,
    /// `aud` of the tokens: the registry's `auth.token.service`.
    pub service: String,
    /// The one user that may authenticate, and its password.
    pub user: String,
    /// Password of `user`.
    pub password: String,
    /// PEM file of the RSA signing key.
    pub key_path: PathBuf,
    /// libtrust key ID of the signing key (the JWT header's `kid`).
    pub kid: String,
}

/// What the request-handling threads share with the test.
#[derive(Debug)]
struct Shared {
    config: TokenConfig,
    requests: AtomicUsize,
    scopes: Mutex<Vec<String>>,
}

/// Serial number of the tokens issued by this test process (for unique `jti` claims).
static TOKENS_ISSUED: AtomicUsize = AtomicUsize::new(0);

/// A running token endpoint; stopped by [`TokenServer::stop`] or on drop.
#[derive(Debug)]
pub struct TokenServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Arc<AtomicBool>,
    accept_thread: Option<JoinHandle<()>>,
}

impl TokenServer {
    /// Binds a free port of 127.0.0.1 and serves token requests on it until stopped.
    pub fn start(config: TokenConfig) -> TokenServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .expect("cannot bind the token endpoint to 127.0.0.1:0");
        let addr = listener
            .local_addr()
            .expect("the token endpoint's listener has an address");
        let shared = Arc::new(Shared {
            config,
            requests: AtomicUsize::new(0),
            scopes: Mutex::new(Vec::new()),
        });
        let shutdown = Arc::new(AtomicBool::new(false));
        let accept_thread = {
            let (shared, shutdown) = (Arc::clone(&shared), Arc::clone(&shutdown));
            std::thread::Builder::new()
                .name(format!("token-endpoint-{}", addr.port()))
                .spawn(move || accept_loop(&listener, &shared, &shutdown))
                .expect("cannot spawn the token endpoint's thread")
        };
        TokenServer {
            addr,
            shared,
            shutdown,
            accept_thread: Some(accept_thread),
        }
    }

    /// The URL of the endpoint: the registry's `auth.token.realm`.
    pub fn realm(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// How many HTTP requests the endpoint has received (whatever their outcome).
    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Every `scope` value asked for so far, one entry per scope, in order of arrival.
    pub fn scopes(&self) -> Vec<String> {
        self.shared
            .scopes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Stops accepting connections and waits for the accepting thread. Idempotent.
    pub fn stop(&mut self) {
        if let Some(thread) = self.accept_thread.take() {
            self.shutdown.store(true, Ordering::SeqCst);
            // Wake the blocking accept(); it sees the flag and returns.
            let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
            if thread.join().is_err() {
                eprintln!("the token endpoint's thread panicked");
            }
        }
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>, shutdown: &AtomicBool) {
    for stream in listener.incoming() {
        if shutdown.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else { continue };
        let shared = Arc::clone(shared);
        // One thread per connection: a client holding a connection open must not block others.
        let spawned = std::thread::Builder::new()
            .name("token-request".into())
            .spawn(move || {
                if let Err(e) = serve(stream, &shared) {
                    eprintln!("token endpoint: {e}");
                }
            });
        if let Err(e) = spawned {
            eprintln!("token endpoint: cannot spawn a thread: {e}");
        }
    }
}

/// Reads one request from `stream` and answers it.
fn serve(mut stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let Some(head) = read_head(&mut stream)? else {
        return Ok(());
    };
    shared.requests.fetch_add(1, Ordering::SeqCst);
    let (status, body) = answer(&head, shared);
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes())?;
    stream.flush()
}

/// The request line and headers, or `None` if the peer closed without sending any (as the
/// wake-up connection of [`TokenServer::stop`] does).
fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<String>> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(None);
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > 64 * 1024 {
            return Err(std::io::Error::other("request head over 64 KiB"));
        }
    }
    Ok(Some(String::from_utf8_lossy(&head).into_owned()))
}

/// Status line and JSON body for the request whose head is `head`.
fn answer(head: &str, shared: &Shared) -> (&'static str, String) {
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (method, target) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let error =
        |status, message: &str| (status, serde_json::json!({"details": message}).to_string());
    if method != "GET" {
        return error("405 Method Not Allowed", "only GET is served here");
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if path != "/token" {
        return error("404 Not Found", "the token endpoint is /token");
    }

    let mut service = None;
    let mut scopes = Vec::new();
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        match &*key {
            "service" => service = Some(value.into_owned()),
            // Some clients put several space-separated scopes in one parameter.
            "scope" => scopes.extend(
                value
                    .split(' ')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned),
            ),
            _ => {}
        }
    }
    shared
        .scopes
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .extend(scopes.iter().cloned());

    let config = &shared.config;
    if service.as_deref().is_some_and(|s| s != config.service) {
        return error("400 Bad Request", "unknown service");
    }
    let authorization = lines
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("authorization"))
        .map(|(_, value)| value.trim().to_owned());
    let subject = match authorization {
        None => None,
        Some(value) => {
            let expected = STANDARD.encode(format!("{}:{}", config.user, config.password));
            match value.split_once(' ') {
                Some((scheme, creds))
                    if scheme.eq_ignore_ascii_case("basic") && creds.trim() == expected =>
                {
                    Some(config.user.clone())
                }
                _ => return error("401 Unauthorized", "incorrect username or password"),
            }
        }
    };

    let access: Vec<serde_json::Value> = scopes
        .iter()
        .filter_map(|scope| grant(scope, subject.is_some()))
        .collect();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs();
    let serial = TOKENS_ISSUED.fetch_add(1, Ordering::SeqCst);
    let claims = serde_json::json!({
        "iss": config.issuer,
        "sub": subject.unwrap_or_default(),
        "aud": config.service,
        "exp": now + EXPIRES_IN,
        "nbf": now.saturating_sub(10),
        "iat": now,
        "jti": format!("ociup-test-{}-{serial}", std::process::id()),
        "access": access,
    });
    let token = super::pki::sign_jwt(&config.key_path, &config.kid, &claims);
    let body = serde_json::json!({
        "token": token,
        "access_token": token,
        "expires_in": EXPIRES_IN,
        "issued_at": rfc3339(now),
    });
    ("200 OK", body.to_string())
}

/// The `access` entry granted for `scope` (`TYPE:NAME:ACTION,ACTION`): every action asked for
/// when authenticated, only `pull` otherwise. `None` for a malformed scope or nothing granted.
fn grant(scope: &str, authenticated: bool) -> Option<serde_json::Value> {
    let (kind, rest) = scope.split_once(':')?;
    // The name may hold a colon (a registry host with a port), the actions never do.
    let (name, actions) = rest.rsplit_once(':')?;
    let actions: Vec<&str> = actions
        .split(',')
        .filter(|a| !a.is_empty() && (authenticated || *a == "pull"))
        .collect();
    if actions.is_empty() {
        return None;
    }
    Some(serde_json::json!({"type": kind, "name": name, "actions": actions}))
}

/// `secs` since the Unix epoch as an RFC 3339 UTC timestamp, e.g. `2024-05-01T12:00:00Z`.
fn rfc3339(secs: u64) -> String {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days, for days since 1970-01-01 (never negative here).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_of_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_714_564_800), "2024-05-01T12:00:00Z");
    }

    #[test]
    fn anonymous_gets_only_pull() {
        let granted = grant("repository:a/b:pull,push", false).expect("pull is granted");
        assert_eq!(granted["actions"], serde_json::json!(["pull"]));
        assert!(grant("repository:a/b:push", false).is_none());
        let granted = grant("repository:localhost:5000/a:pull,push", true).expect("all is granted");
        assert_eq!(granted["name"], "localhost:5000/a");
        assert_eq!(granted["actions"], serde_json::json!(["pull", "push"]));
    }
}

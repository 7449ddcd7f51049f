//! A minimal bearer-token endpoint (the `realm` of Distribution's `auth: token:` set-up) on a
//! free loopback port, served by plain std threads so that it works under any (or no) async
//! runtime.
//!
//! It answers over HTTP/1.1 (one request per connection, `Connection: close`) the two flows of
//! Docker's token specification:
//!
//! * `GET /token?service=S&scope=T:NAME:ACTIONS&scope=...` with
//!   `{"token": JWT, "access_token": JWT, "expires_in": 300, "issued_at": RFC 3339}`. With
//!   `Authorization: Basic` of the harness user and password, the token grants every action
//!   asked for; without `Authorization`, it grants only `pull`; with wrong credentials the
//!   answer is 401.
//! * `POST /token` with an `application/x-www-form-urlencoded` body of
//!   `grant_type=refresh_token`, `refresh_token`, `client_id`, `service` and `scope`
//!   (space-separated scopes; the parameter may also be repeated): the OAuth2 refresh-token
//!   flow of clients holding a Docker `identitytoken`. The one refresh token the endpoint
//!   accepts ([`TokenServer::refresh_token`]) stands for the harness user, so its tokens grant
//!   every action asked for. The answer is what the spec's POST flow returns,
//!   `{"access_token": JWT, "scope": GRANTED, "expires_in": 300, "issued_at": RFC 3339}`
//!   (no `token` field; with `access_type=offline` also `refresh_token`). A wrong refresh token
//!   gets 400 `{"error": "invalid_grant", ...}` (RFC 6749 section 5.2), any other grant type
//!   400 `unsupported_grant_type`, a missing parameter 400 `invalid_request`.
//!
//! Every request is counted and recorded ([`TokenServer::log`]: method, grant type, whether it
//! carried basic credentials, scopes, status), and every scope asked for is recorded, so that
//! tests can check how a client authenticates and that it reuses its tokens.

use std::hash::{BuildHasher, Hasher};
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

/// One request the endpoint answered, as [`TokenServer::log`] records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    /// The request method: `GET` (Docker's flow) or `POST` (OAuth2's).
    pub method: String,
    /// The form's `grant_type` (`refresh_token`, ...) of a POST; `None` for a GET, or a POST
    /// without one.
    pub grant_type: Option<String>,
    /// Whether the request carried an `Authorization: Basic` header (right or wrong).
    pub basic_auth: bool,
    /// The form's `client_id` of a POST; `None` for a GET, or a POST without one.
    pub client_id: Option<String>,
    /// The scopes asked for, one entry per scope.
    pub scopes: Vec<String>,
    /// The status code of the answer.
    pub status: u16,
}

/// What the request-handling threads share with the test.
#[derive(Debug)]
struct Shared {
    config: TokenConfig,
    /// The one refresh token the POST flow accepts.
    refresh_token: String,
    requests: AtomicUsize,
    scopes: Mutex<Vec<String>>,
    log: Mutex<Vec<TokenRequest>>,
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
            refresh_token: random_refresh_token(addr.port()),
            requests: AtomicUsize::new(0),
            scopes: Mutex::new(Vec::new()),
            log: Mutex::new(Vec::new()),
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
        lock(&self.shared.scopes).clone()
    }

    /// The one refresh token (a Docker `identitytoken`) that the POST flow exchanges for
    /// access tokens; it stands for [`TokenConfig::user`]. Unique to this endpoint.
    pub fn refresh_token(&self) -> String {
        self.shared.refresh_token.clone()
    }

    /// Every request answered so far, in order of arrival (the wake-up connection of
    /// [`TokenServer::stop`] excepted).
    pub fn log(&self) -> Vec<TokenRequest> {
        lock(&self.shared.log).clone()
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

/// Locks `mutex`, whether or not a thread panicked while holding it.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Reads one request from `stream` and answers it.
fn serve(mut stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let Some((head, body)) = read_request(&mut stream)? else {
        return Ok(());
    };
    shared.requests.fetch_add(1, Ordering::SeqCst);
    let (status, body) = answer(&head, &body, shared);
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes())?;
    stream.flush()
}

/// Most a request's head, or its body, may hold.
const MAX_REQUEST_PART: usize = 64 * 1024;

/// The request line and headers, and the body (`Content-Length` bytes, none without the
/// header), or `None` if the peer closed without sending any (as the wake-up connection of
/// [`TokenServer::stop`] does).
fn read_request(stream: &mut TcpStream) -> std::io::Result<Option<(String, Vec<u8>)>> {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(None);
        }
        data.extend_from_slice(&buf[..n]);
        if data.len() > MAX_REQUEST_PART {
            return Err(std::io::Error::other("request head over 64 KiB"));
        }
    };
    let head = String::from_utf8_lossy(&data[..head_end]).into_owned();
    let length = header(&head, "content-length")
        .map(|v| {
            v.parse::<usize>()
                .map_err(|_| std::io::Error::other(format!("bad Content-Length {v:?}")))
        })
        .transpose()?
        .unwrap_or(0);
    if length > MAX_REQUEST_PART {
        return Err(std::io::Error::other("request body over 64 KiB"));
    }
    let mut body = data.split_off(head_end + 4);
    while body.len() < length {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Err(std::io::Error::other("the request body broke off"));
        }
        body.extend_from_slice(&buf[..n]);
    }
    body.truncate(length);
    Ok(Some((head, body)))
}

/// The value of the first header `name` (case-insensitive) of the request head `head`.
fn header<'h>(head: &'h str, name: &str) -> Option<&'h str> {
    head.split("\r\n")
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .find(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        .map(|(_, value)| value.trim())
}

/// Status line and JSON body for the request of head `head` and body `body`; records it.
fn answer(head: &str, body: &[u8], shared: &Shared) -> (&'static str, String) {
    let request_line = head.split("\r\n").next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (method, target) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let authorization = header(head, "authorization");
    let mut record = TokenRequest {
        method: method.to_owned(),
        grant_type: None,
        basic_auth: authorization.is_some_and(|v| {
            v.split_once(' ')
                .is_some_and(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
        }),
        client_id: None,
        scopes: Vec::new(),
        status: 0,
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let (status, json) = if path != "/token" {
        error("404 Not Found", "the token endpoint is /token")
    } else {
        match method {
            "GET" => docker_flow(query, authorization, shared, &mut record),
            "POST" => oauth2_flow(head, body, shared, &mut record),
            _ => error(
                "405 Method Not Allowed",
                "only GET and POST are served here",
            ),
        }
    };
    record.status = status
        .split(' ')
        .next()
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    lock(&shared.scopes).extend(record.scopes.iter().cloned());
    lock(&shared.log).push(record);
    (status, json)
}

/// An error answer of the GET flow (Docker's token server puts its message in `details`).
fn error(status: &'static str, message: &str) -> (&'static str, String) {
    (status, serde_json::json!({"details": message}).to_string())
}

/// An error answer of the POST flow: RFC 6749's error JSON.
fn oauth2_error(status: &'static str, code: &str, description: &str) -> (&'static str, String) {
    let body = serde_json::json!({"error": code, "error_description": description});
    (status, body.to_string())
}

/// Splits `value` into scopes: some clients put several space-separated scopes in one
/// parameter.
fn push_scopes(scopes: &mut Vec<String>, value: &str) {
    scopes.extend(
        value
            .split(' ')
            .filter(|s| !s.is_empty())
            .map(str::to_owned),
    );
}

/// `GET /token?...`: Docker's flow, with basic credentials or anonymously.
fn docker_flow(
    query: &str,
    authorization: Option<&str>,
    shared: &Shared,
    record: &mut TokenRequest,
) -> (&'static str, String) {
    let mut service = None;
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        match &*key {
            "service" => service = Some(value.into_owned()),
            "scope" => push_scopes(&mut record.scopes, &value),
            _ => {}
        }
    }

    let config = &shared.config;
    if service.as_deref().is_some_and(|s| s != config.service) {
        return error("400 Bad Request", "unknown service");
    }
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

    let issued = issue(config, subject.as_deref(), &record.scopes);
    let body = serde_json::json!({
        "token": issued.token,
        "access_token": issued.token,
        "expires_in": EXPIRES_IN,
        "issued_at": rfc3339(issued.at),
    });
    ("200 OK", body.to_string())
}

/// `POST /token` with a form: the OAuth2 refresh-token flow of Docker's token specification.
fn oauth2_flow(
    head: &str,
    body: &[u8],
    shared: &Shared,
    record: &mut TokenRequest,
) -> (&'static str, String) {
    let mut fields = std::collections::HashMap::new();
    for (key, value) in url::form_urlencoded::parse(body) {
        if key == "scope" {
            push_scopes(&mut record.scopes, &value);
        } else {
            fields.insert(key.into_owned(), value.into_owned());
        }
    }
    record.grant_type = fields.get("grant_type").cloned();
    record.client_id = fields.get("client_id").cloned();

    let form = header(head, "content-type").is_some_and(|v| {
        v.split(';')
            .next()
            .is_some_and(|t| t.trim() == "application/x-www-form-urlencoded")
    });
    if !form {
        return oauth2_error(
            "400 Bad Request",
            "invalid_request",
            "the body must be application/x-www-form-urlencoded",
        );
    }
    let config = &shared.config;
    match fields.get("grant_type").map(String::as_str) {
        Some("refresh_token") => {}
        Some(_) => {
            return oauth2_error(
                "400 Bad Request",
                "unsupported_grant_type",
                "only grant_type=refresh_token is served here",
            );
        }
        None => return oauth2_error("400 Bad Request", "invalid_request", "no grant_type"),
    }
    for required in ["client_id", "service", "refresh_token"] {
        if fields.get(required).is_none_or(String::is_empty) {
            return oauth2_error(
                "400 Bad Request",
                "invalid_request",
                &format!("no {required}"),
            );
        }
    }
    if fields["service"] != config.service {
        return oauth2_error("400 Bad Request", "invalid_request", "unknown service");
    }
    if fields["refresh_token"] != shared.refresh_token {
        return oauth2_error(
            "400 Bad Request",
            "invalid_grant",
            "the refresh token is invalid or expired",
        );
    }

    let issued = issue(config, Some(&config.user), &record.scopes);
    let granted: Vec<String> = issued
        .access
        .iter()
        .map(|a| {
            let actions: Vec<&str> = a["actions"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(serde_json::Value::as_str)
                .collect();
            format!(
                "{}:{}:{}",
                a["type"].as_str().unwrap_or_default(),
                a["name"].as_str().unwrap_or_default(),
                actions.join(",")
            )
        })
        .collect();
    let mut body = serde_json::json!({
        "access_token": issued.token,
        "scope": granted.join(" "),
        "expires_in": EXPIRES_IN,
        "issued_at": rfc3339(issued.at),
    });
    if fields.get("access_type").is_some_and(|t| t == "offline") {
        body["refresh_token"] = serde_json::Value::from(shared.refresh_token.as_str());
    }
    ("200 OK", body.to_string())
}

/// A signed token and what went into it.
struct Issued {
    token: String,
    /// Seconds since the Unix epoch at issue.
    at: u64,
    /// The `access` claim's entries.
    access: Vec<serde_json::Value>,
}

/// Signs a token for `subject` (anonymous: `None`) granting what [`grant`] allows of `scopes`.
fn issue(config: &TokenConfig, subject: Option<&str>, scopes: &[String]) -> Issued {
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
    Issued {
        token: super::pki::sign_jwt(&config.key_path, &config.kid, &claims),
        at: now,
        access,
    }
}

/// A refresh token unlikely to appear anywhere by chance (so tests can check it is never
/// printed), different for each endpoint.
fn random_refresh_token(port: u16) -> String {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.write_u16(port);
    format!("refresh-{:016x}", hasher.finish())
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

    /// A token endpoint signing with the harness's key, kept in `dir`.
    fn endpoint(dir: &std::path::Path) -> TokenServer {
        let key = super::super::pki::token_key();
        let key_path = dir.join("token-key.pem");
        std::fs::write(&key_path, &key.key_pem).expect("the key is written");
        TokenServer::start(TokenConfig {
            issuer: "issuer".into(),
            service: "service".into(),
            user: "user".into(),
            password: "password".into(),
            key_path,
            kid: key.kid.clone(),
        })
    }

    /// Sends `request` (a whole HTTP/1.1 request) to `server`; the status code and JSON body.
    fn exchange(server: &TokenServer, request: &str) -> (u16, serde_json::Value) {
        let mut stream = TcpStream::connect(server.addr).expect("the endpoint accepts");
        stream
            .write_all(request.as_bytes())
            .expect("the request is sent");
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .expect("the answer is read");
        let (head, body) = response.split_once("\r\n\r\n").expect("a head and a body");
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .expect("a status line");
        (status, serde_json::from_str(body).expect("a JSON body"))
    }

    fn post(server: &TokenServer, form: &str) -> (u16, serde_json::Value) {
        exchange(
            server,
            &format!(
                "POST /token HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n\
                 Content-Length: {}\r\n\r\n{form}",
                form.len()
            ),
        )
    }

    #[test]
    fn the_refresh_token_flow_answers_as_oauth2_says() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let server = endpoint(dir.path());
        let refresh = server.refresh_token();
        assert!(refresh.starts_with("refresh-"), "{refresh}");

        let form = |token: &str| {
            url::form_urlencoded::Serializer::new(String::new())
                .append_pair("grant_type", "refresh_token")
                .append_pair("refresh_token", token)
                .append_pair("client_id", "test")
                .append_pair("service", "service")
                .append_pair("scope", "repository:a/b:pull,push repository:c:pull")
                .finish()
        };
        let (status, body) = post(&server, &form(&refresh));
        assert_eq!(status, 200, "{body}");
        assert!(
            body["access_token"]
                .as_str()
                .is_some_and(|t| t.split('.').count() == 3)
        );
        assert!(
            body.get("token").is_none(),
            "the POST flow answers access_token: {body}"
        );
        assert_eq!(body["scope"], "repository:a/b:pull,push repository:c:pull");
        assert_eq!(body["expires_in"], EXPIRES_IN);

        let (status, body) = post(&server, &form("refresh-wrong"));
        assert_eq!(
            (status, &body["error"]),
            (400, &serde_json::json!("invalid_grant"))
        );
        let (status, body) = post(
            &server,
            "grant_type=password&username=user&password=password&client_id=t&service=service",
        );
        assert_eq!(
            (status, &body["error"]),
            (400, &serde_json::json!("unsupported_grant_type"))
        );
        let (status, body) = post(&server, "grant_type=refresh_token&service=service");
        assert_eq!(
            (status, &body["error"]),
            (400, &serde_json::json!("invalid_request"))
        );
        let (status, _) = exchange(
            &server,
            "GET /token?service=service&scope=repository:a/b:pull HTTP/1.1\r\nHost: x\r\n\r\n",
        );
        assert_eq!(status, 200);

        let log = server.log();
        let summary: Vec<(&str, Option<&str>, u16)> = log
            .iter()
            .map(|r| (r.method.as_str(), r.grant_type.as_deref(), r.status))
            .collect();
        assert_eq!(
            summary,
            [
                ("POST", Some("refresh_token"), 200),
                ("POST", Some("refresh_token"), 400),
                ("POST", Some("password"), 400),
                ("POST", Some("refresh_token"), 400),
                ("GET", None, 200),
            ]
        );
        assert_eq!(log[0].client_id.as_deref(), Some("test"));
        assert_eq!(
            log[0].scopes,
            ["repository:a/b:pull,push", "repository:c:pull"]
        );
        assert!(log.iter().all(|r| !r.basic_auth));
        assert_eq!(server.requests(), 5);
    }
}

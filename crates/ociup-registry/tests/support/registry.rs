//! [`TestRegistry`]: the real CNCF Distribution server (`docker-registry serve`, 2.8.2 from
//! Debian) on a free port of 127.0.0.1, with a configuration, storage and log of its own in a
//! temporary directory.
//!
//! # The log
//!
//! The registry's stdout and stderr both go to `registry.log` in that directory
//! ([`TestRegistry::log`]). Distribution 2.8.2 logs each HTTP request there (the readiness
//! probe of [`TestRegistry::start`] included: one `GET /v2/` by curl) as:
//!
//! * always, an Apache combined-format access-log line on stdout (what
//!   [`TestRegistry::requests`] counts), e.g.
//!
//!   ```text
//!   127.0.0.1 - - [23/Nov/2026:10:15:11 +0000] "POST /v2/a/b/blobs/uploads/ HTTP/1.1" 202 0 "" "curl/7.88.1"
//!   ```
//!
//! * for a request that passed authentication, a logrus line on stderr with
//!   `msg="response completed"` (level `info`), or `msg="response completed with error"`
//!   (level `error`, for answers carrying an error body such as a 404 `NAME_UNKNOWN`; its
//!   `err.code=...` fields come first). Keys are in alphabetical order and values are quoted
//!   only when they hold characters such as `?`, `=`, `:` or spaces, so a URI with a query or
//!   a digest is quoted and a plain one is not:
//!
//!   ```text
//!   time="2026-11-23T10:15:11.382179393Z" level=info msg="response completed" go.version=go1.19.8 http.request.host="127.0.0.1:45123" http.request.id=49064c6a-7678-439f-ba39-9fbc5ad797d6 http.request.method=POST http.request.remoteaddr="127.0.0.1:51386" http.request.uri=/v2/a/b/blobs/uploads/ http.request.useragent=curl/7.88.1 http.response.duration=32.438877ms http.response.status=202 http.response.written=0
//!   ```
//!
//!   With auth, an authenticated request is preceded by a `msg="authorized request"` line with
//!   the same `http.request.*` fields; a request refused with 401 gets
//!   `level=warning msg="error authorizing context: ..."` (also with those fields) instead of a
//!   `response completed` line.
//!
//! These lines are written before the registry finishes sending a small answer, so they are
//! in the log once a client has read such an answer.

use std::fs::{File, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::pki;
use super::token::TokenRequest;
use super::token::{TokenConfig, TokenServer};

/// How long [`TestRegistry::start`] waits for the registry to answer.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// How many ports [`TestRegistry::start`] tries when another process takes the free port first.
const PORT_ATTEMPTS: usize = 3;

/// `auth.token.service` of the registry and `aud` of its tokens.
pub const TOKEN_SERVICE: &str = "ociup-test-registry";

/// `auth.token.issuer` of the registry and `iss` of its tokens.
pub const TOKEN_ISSUER: &str = "ociup-test-token-issuer";

/// The user name of [`TestRegistry::credentials`].
pub const USER: &str = "ociup-tester";

/// How clients must authenticate to the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthMode {
    /// No authentication at all.
    #[default]
    None,
    /// HTTP basic authentication against an htpasswd file (realm `ociup-test`).
    Basic,
    /// Bearer tokens from the harness's own token endpoint (see [`super::token`]).
    Token,
}

/// How to set a [`TestRegistry`] up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RegistryOptions {
    /// Authentication the registry asks for.
    pub auth: AuthMode,
    /// Serve HTTPS with a certificate for `127.0.0.1` signed by the harness's CA
    /// ([`TestRegistry::ca_pem`]) instead of plain HTTP.
    pub tls: bool,
}

/// A running registry; killed (and waited for) by [`TestRegistry::stop`] or on drop, so also
/// when a test panics. [`TestRegistry::kill`] and [`TestRegistry::restart`] stop it and start it
/// again on the same port and storage, as a crashed registry would be.
#[derive(Debug)]
pub struct TestRegistry {
    /// Holds the configuration, storage, key material and log; removed on drop.
    dir: tempfile::TempDir,
    child: Option<Child>,
    pid: u32,
    port: u16,
    tls: bool,
    credentials: Option<(String, String)>,
    ca_pem: Option<PathBuf>,
    log_path: PathBuf,
    token: Option<TokenServer>,
}

impl TestRegistry {
    /// Starts a registry set up as `opts` asks and waits until it answers `GET /v2/`.
    ///
    /// Blocking, and runtime-agnostic: it may be called from sync tests and from inside
    /// `#[tokio::test]` alike.
    ///
    /// # Panics
    ///
    /// If anything cannot be set up, or if the registry does not answer within 15 seconds; the
    /// message then holds the registry's log.
    pub fn start(opts: RegistryOptions) -> TestRegistry {
        let dir = tempfile::Builder::new()
            .prefix("ociup-registry-")
            .tempdir()
            .expect("cannot create the registry's temporary directory");
        let root = dir.path();
        let credentials =
            (opts.auth != AuthMode::None).then(|| (USER.to_owned(), random_password()));
        let (auth_yaml, token) = set_up_auth(opts.auth, root, credentials.as_ref());
        let (tls_yaml, ca_pem) = if opts.tls {
            let (yaml, ca) = set_up_tls(root);
            (yaml, Some(ca))
        } else {
            (String::new(), None)
        };
        let file = |name: &str| root.join(name);

        let log_path = file("registry.log");
        let scheme = if opts.tls { "https" } else { "http" };
        for attempt in 1..=PORT_ATTEMPTS {
            let port = free_port();
            let config = format!(
                "version: 0.1\n\
                 log:\n  level: info\n  formatter: text\n  accesslog:\n    disabled: false\n\
                 storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n  \
                 maintenance:\n    uploadpurging:\n      enabled: false\n\
                 http:\n  addr: 127.0.0.1:{port}\n  secret: ociup-test-secret\n  \
                 headers:\n    X-Content-Type-Options: [nosniff]\n{tls_yaml}\
                 {auth_yaml}",
                storage = yaml(&file("storage")),
            );
            write_file(&file("config.yml"), config.as_bytes());
            let from = log_len(&log_path);
            let mut child = spawn(&file("config.yml"), &log_path);
            let base_url = format!("{scheme}://127.0.0.1:{port}");
            match wait_ready(
                &mut child,
                port,
                &base_url,
                ca_pem.as_deref(),
                &log_path,
                from,
            ) {
                Ok(()) => {
                    return TestRegistry {
                        pid: child.id(),
                        child: Some(child),
                        dir,
                        port,
                        tls: opts.tls,
                        credentials,
                        ca_pem,
                        log_path,
                        token,
                    };
                }
                Err(failure) => {
                    kill(&mut child);
                    let log = read_log(&log_path);
                    if matches!(failure, Failure::Exited)
                        && log.contains("address already in use")
                        && attempt < PORT_ATTEMPTS
                    {
                        continue;
                    }
                    panic!(
                        "the registry ({scheme}, {:?} auth) did not come up on port {port}: {failure}\n\
                         --- config.yml ---\n{config}--- registry.log ---\n{log}",
                        opts.auth
                    );
                }
            }
        }
        unreachable!("the last attempt either returns or panics")
    }

    /// `127.0.0.1:PORT`: the registry host of image references.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:PORT`, or `https://...` with TLS.
    pub fn base_url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.host())
    }

    /// The port the registry listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The process ID of the registry (still reported after [`TestRegistry::stop`]).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// User and password accepted by the registry (basic auth) or by its token endpoint
    /// (token auth, where anonymous requests get pull-only tokens); `None` without auth.
    pub fn credentials(&self) -> Option<(String, String)> {
        self.credentials.clone()
    }

    /// The PEM file of the CA that signed the registry's certificate; `None` without TLS.
    pub fn ca_pem(&self) -> Option<PathBuf> {
        self.ca_pem.clone()
    }

    /// The token endpoint's URL (the `realm` of the registry's challenges); `None` unless
    /// token auth.
    pub fn token_realm(&self) -> Option<String> {
        self.token.as_ref().map(TokenServer::realm)
    }

    /// Everything the registry printed so far (see the module documentation for the format).
    pub fn log(&self) -> String {
        read_log(&self.log_path)
    }

    /// The registry's temporary directory (configuration, `storage/`, `registry.log`, ...).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// How many requests the registry has answered (its access-log lines) with method `method`
    /// and a request URI containing `uri_part`, whatever their status; the readiness probe is
    /// one `GET /v2/`.
    pub fn requests(&self, method: &str, uri_part: &str) -> usize {
        self.log()
            .lines()
            .filter_map(access_log_request)
            .filter(|(m, uri)| *m == method && uri.contains(uri_part))
            .count()
    }

    /// How many requests the registry has answered past authentication so far: its
    /// `msg="response completed"` lines, with an error or not (see the module documentation).
    /// A mark to give [`TestRegistry::completed_since`].
    pub fn completed(&self) -> usize {
        self.log()
            .lines()
            .filter(|l| l.contains("response completed"))
            .count()
    }

    /// The requests answered past authentication after the first `from` of them (a count of
    /// [`TestRegistry::completed`]), in the order logged.
    pub fn completed_since(&self, from: usize) -> Vec<Completed> {
        self.log()
            .lines()
            .filter(|l| l.contains("response completed"))
            .skip(from)
            .map(Completed::of)
            .collect()
    }

    /// How many requests the token endpoint received; 0 unless token auth.
    pub fn token_requests(&self) -> usize {
        self.token.as_ref().map_or(0, TokenServer::requests)
    }

    /// Every scope asked of the token endpoint, one entry per scope in order of arrival
    /// (e.g. `repository:team/app:pull,push`); empty unless token auth.
    pub fn token_scopes(&self) -> Vec<String> {
        self.token
            .as_ref()
            .map_or_else(Vec::new, TokenServer::scopes)
    }

    /// The refresh token (a Docker `identitytoken`) that the token endpoint exchanges, by the
    /// OAuth2 POST flow, for tokens granting [`TestRegistry::credentials`]'s user every action
    /// asked for; `None` unless token auth. Unique to this registry.
    pub fn refresh_token(&self) -> Option<String> {
        self.token.as_ref().map(TokenServer::refresh_token)
    }

    /// Every request the token endpoint answered, in order of arrival: method, grant type,
    /// whether it carried basic credentials, scopes and status; empty unless token auth.
    pub fn token_log(&self) -> Vec<TokenRequest> {
        self.token.as_ref().map_or_else(Vec::new, TokenServer::log)
    }

    /// Kills the registry (SIGKILL, by pid) and waits for it, and stops the token endpoint.
    /// The log stays readable. Idempotent; also done on drop.
    pub fn stop(&mut self) {
        self.kill();
        if let Some(token) = self.token.as_mut() {
            token.stop();
        }
    }

    /// Kills the registry process alone (SIGKILL, by pid) and waits for it: when this returns,
    /// the process is gone and answers nothing more. The token endpoint keeps running, so that
    /// [`TestRegistry::restart`] brings the whole set-up back. Idempotent.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill(&mut child);
        }
    }

    /// Whether the registry process was started and not killed since (it is not probed).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Starts the registry again with the same configuration: the same port, storage,
    /// authentication and certificate; its output is appended to the same log (so
    /// [`TestRegistry::requests`] counts the requests of both runs, and the readiness probe of
    /// each). Kills the running process first, if any. Waits until the new process answers
    /// `GET /v2/`, as [`TestRegistry::start`] does. Restarting after [`TestRegistry::stop`] with
    /// token auth gives a registry whose token endpoint is stopped: use
    /// [`TestRegistry::kill`] there.
    ///
    /// # Panics
    ///
    /// If the registry does not come up within 15 seconds, for instance because another
    /// process took the port meanwhile; the message then holds the registry's log.
    pub fn restart(&mut self) {
        self.kill();
        let config = self.dir.path().join("config.yml");
        let from = log_len(&self.log_path);
        let mut child = spawn(&config, &self.log_path);
        let base_url = self.base_url();
        if let Err(failure) = wait_ready(
            &mut child,
            self.port,
            &base_url,
            self.ca_pem.as_deref(),
            &self.log_path,
            from,
        ) {
            kill(&mut child);
            panic!(
                "the registry did not come back on port {}: {failure}\n--- registry.log ---\n{}",
                self.port,
                self.log()
            );
        }
        self.pid = child.id();
        self.child = Some(child);
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Writes what `mode` needs into `root`: the htpasswd file, or the token endpoint's key and
/// certificate (and starts the endpoint). Returns the configuration's `auth:` section.
fn set_up_auth(
    mode: AuthMode,
    root: &Path,
    credentials: Option<&(String, String)>,
) -> (String, Option<TokenServer>) {
    let (user, password) = match (mode, credentials) {
        (AuthMode::None, _) => return (String::new(), None),
        (_, Some(credentials)) => credentials.clone(),
        (_, None) => panic!("{mode:?} auth needs credentials"),
    };
    if mode == AuthMode::Basic {
        // Cost 4, the minimum: the registry checks the hash on every request.
        let hash = bcrypt::hash(&password, 4).expect("bcrypt hashes the password");
        write_file(
            &root.join("htpasswd"),
            format!("{user}:{hash}\n").as_bytes(),
        );
        let yaml = format!(
            "auth:\n  htpasswd:\n    realm: ociup-test\n    path: {}\n",
            yaml(&root.join("htpasswd"))
        );
        return (yaml, None);
    }
    let key = pki::token_key();
    write_file(&root.join("token-key.pem"), &key.key_pem);
    write_file(&root.join("token-cert.pem"), &key.cert_pem);
    let server = TokenServer::start(TokenConfig {
        issuer: TOKEN_ISSUER.to_owned(),
        service: TOKEN_SERVICE.to_owned(),
        user,
        password,
        key_path: root.join("token-key.pem"),
        kid: key.kid.clone(),
    });
    let yaml = format!(
        "auth:\n  token:\n    realm: {}\n    service: {TOKEN_SERVICE}\n    issuer: {TOKEN_ISSUER}\n    \
         rootcertbundle: {}\n",
        yaml_str(&server.realm()),
        yaml(&root.join("token-cert.pem")),
    );
    (yaml, Some(server))
}

/// Writes the CA and the server's certificate and key into `root`. Returns the `http.tls:`
/// section of the configuration and the CA's path.
fn set_up_tls(root: &Path) -> (String, PathBuf) {
    let tls = pki::tls_files();
    write_file(&root.join("ca.pem"), &tls.ca);
    write_file(&root.join("server.pem"), &tls.cert);
    write_file(&root.join("server.key"), &tls.key);
    let yaml = format!(
        "  tls:\n    certificate: {}\n    key: {}\n",
        yaml(&root.join("server.pem")),
        yaml(&root.join("server.key"))
    );
    (yaml, root.join("ca.pem"))
}

fn write_file(path: &Path, contents: &[u8]) {
    std::fs::write(path, contents)
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

/// Why a registry did not come up.
#[derive(Debug)]
enum Failure {
    /// The process ended (for instance because the port was taken).
    Exited,
    /// It did not answer in time; the last probe's outcome.
    Timeout(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Exited => f.write_str("the process exited"),
            Failure::Timeout(last) => {
                write!(f, "no answer within {START_TIMEOUT:?} (last probe: {last})")
            }
        }
    }
}

/// A port of 127.0.0.1 that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("cannot bind 127.0.0.1:0 to find a free port")
        .port()
}

/// Starts `docker-registry serve CONFIG` with stdout and stderr appended to `log_path`.
fn spawn(config: &Path, log_path: &Path) -> Child {
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", log_path.display()));
    let log_err: File = log
        .try_clone()
        .expect("cannot duplicate the log file's handle");
    Command::new("docker-registry")
        .arg("serve")
        .arg(config)
        // Only the file configures the registry.
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run `docker-registry serve` (is the docker-registry package installed?): {e}"))
}

/// Waits until the registry logs (past the first `from` bytes of the log, which earlier runs
/// wrote) that it listens on `port`, and answers `GET {base_url}/v2/` with any HTTP status
/// (200, or 401 with auth).
fn wait_ready(
    child: &mut Child,
    port: u16,
    base_url: &str,
    ca: Option<&Path>,
    log_path: &Path,
    from: u64,
) -> Result<(), Failure> {
    let deadline = Instant::now() + START_TIMEOUT;
    let listening = format!("listening on 127.0.0.1:{port}");
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut last = String::from("none yet");
    while Instant::now() < deadline {
        if child.try_wait().ok().flatten().is_some() {
            return Err(Failure::Exited);
        }
        // The log line tells our registry from another process that may have taken the port;
        // the connection avoids a curl per poll while it is not yet accepting.
        if log_since(log_path, from).contains(&listening)
            && TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
        {
            match probe(base_url, ca) {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(Failure::Timeout(last))
}

/// `GET {base_url}/v2/` with curl (trusting only `ca` for HTTPS); `Ok` on any HTTP status.
fn probe(base_url: &str, ca: Option<&Path>) -> Result<(), String> {
    let mut curl = Command::new("curl");
    curl.args([
        "--silent",
        "--show-error",
        "--noproxy",
        "*",
        "--max-time",
        "2",
        "--output",
        "/dev/null",
    ])
    .args(["--write-out", "%{http_code}"]);
    if let Some(ca) = ca {
        curl.arg("--cacert").arg(ca);
    }
    let out = curl
        .arg(format!("{base_url}/v2/"))
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run curl: {e}"))?;
    let code = String::from_utf8_lossy(&out.stdout);
    if out.status.success() && code != "000" {
        Ok(())
    } else {
        Err(format!(
            "curl {}, HTTP {code}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// SIGKILLs `child` and reaps it; reports (does not panic on) failures, as this runs in drop.
fn kill(child: &mut Child) {
    if let Err(e) = child.kill() {
        eprintln!("cannot kill the registry (pid {}): {e}", child.id());
    }
    if let Err(e) = child.wait() {
        eprintln!("cannot wait for the registry (pid {}): {e}", child.id());
    }
}

/// Method and URI of an access-log line (`... "PUT /v2/... HTTP/1.1" 201 ...`); `None` for
/// other lines.
fn access_log_request(line: &str) -> Option<(&str, &str)> {
    let (_, request) = line.split_once("] \"")?;
    let (request, _) = request.split_once('"')?;
    let mut parts = request.split(' ');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(method), Some(uri), Some(version)) if version.starts_with("HTTP/") => {
            Some((method, uri))
        }
        _ => None,
    }
}

/// A request the registry answered past authentication, from its `response completed` line:
/// each field as logged (a value holding `?`, `=`, `:` or spaces keeps its quotes), empty when
/// the line lacks it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completed {
    /// `http.request.method`.
    pub method: String,
    /// `http.request.uri`.
    pub uri: String,
    /// `http.response.status`.
    pub status: String,
}

impl Completed {
    fn of(line: &str) -> Completed {
        let field = |k: &str| {
            line.split(&format!("{k}="))
                .nth(1)
                .and_then(|r| r.split(' ').next())
                .unwrap_or("")
                .to_owned()
        };
        Completed {
            method: field("http.request.method"),
            uri: field("http.request.uri"),
            status: field("http.response.status"),
        }
    }
}

/// The log's length in bytes; 0 when it does not exist yet.
fn log_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// What the log holds past its first `from` bytes.
fn log_since(path: &Path, from: u64) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    let start = usize::try_from(from).unwrap_or(usize::MAX).min(bytes.len());
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

fn read_log(path: &Path) -> String {
    match std::fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

/// A password unlikely to appear anywhere by chance (so tests can check it is never printed).
fn random_password() -> String {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    format!("pw-{:016x}", hasher.finish())
}

/// `path` as a YAML scalar.
fn yaml(path: &Path) -> String {
    yaml_str(
        path.to_str()
            .expect("the temporary directory's path is UTF-8"),
    )
}

/// `s` as a double-quoted YAML scalar (a JSON string is one).
fn yaml_str(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

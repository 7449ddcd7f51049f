//! `ociup serve` (the real binary on a loopback port) and `ociup token`, and the CLI as its
//! client (`--server`): roles, tokens read again, the allowlist, limits, metrics, the OpenAPI
//! document, and the same output through the service as locally.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::registry_support::{AuthMode, RegistryOptions, TestRegistry};
use crate::support::{fixtures, json, ociup_at, ok_at, repo};

/// The base fixture by its real path: the service refuses a layout path with `..` in it.
fn base_dir() -> std::path::PathBuf {
    fixtures().join("base").canonicalize().unwrap()
}

/// A running `ociup serve`; killed on drop (a test that stops it checks how it ended).
struct Served {
    child: Child,
    addr: String,
    stderr: PathBuf,
}

impl Served {
    /// Starts `ociup serve --listen 127.0.0.1:0 ARGS` in `dir` with `env`, and reads the
    /// address it prints.
    fn start(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Served {
        let stderr = dir.join(format!("serve-{}.log", next_number()));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ociup"));
        cmd.arg("serve")
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .current_dir(dir)
            .env_remove("OCIUP_SERVER")
            .env_remove("OCIUP_SIGNING_KEY")
            .env_remove("OCIUP_USERNAME")
            .env_remove("OCIUP_PASSWORD")
            // No cluster unless a test names one (--kubeconfig): runs answer no_cluster.
            .env_remove("KUBECONFIG")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .env("XDG_CACHE_HOME", dir.join("cache"))
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("ociup serve starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("ociup serve: listening on http://")
            .unwrap_or_else(|| {
                panic!(
                    "no address printed ({line:?}): {}",
                    std::fs::read_to_string(&stderr).unwrap_or_default()
                )
            })
            .to_owned();
        Served {
            child,
            addr,
            stderr,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// One HTTP/1.1 request: status, headers (lowercase names), body.
    fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<(&str, &[u8])>,
    ) -> Reply {
        http(&self.addr, method, path, token, body)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        // A failing test shows what the service said (its log goes with the test's directory).
        if std::thread::panicking() {
            eprintln!("--- ociup serve {} ---\n{}", self.addr, self.log());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn next_number() -> usize {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    /// An error answer: its status and code.
    fn error(&self) -> (u16, String) {
        let v = self.json();
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        (
            self.status,
            v["code"].as_str().unwrap_or_default().to_owned(),
        )
    }
}

/// A plain HTTP/1.1 client over a TcpStream (`Connection: close`, body read to the end).
fn http(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<(&str, &[u8])>,
) -> Reply {
    let mut s = TcpStream::connect(addr).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    let (ctype, bytes) = body.unwrap_or(("application/json", b""));
    if body.is_some() {
        req.push_str(&format!("Content-Type: {ctype}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n", bytes.len()));
    s.write_all(req.as_bytes()).unwrap();
    // The server may answer (413) before the whole body is read: a broken pipe is fine.
    let _ = s.write_all(bytes);
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v == "chunked")
    {
        body = dechunk(&body);
    }
    Reply {
        status,
        headers,
        body,
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let end = b.windows(2).position(|w| w == b"\r\n").unwrap();
        let size =
            usize::from_str_radix(std::str::from_utf8(&b[..end]).unwrap().trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[end + 2..end + 2 + size]);
        b = &b[end + 4 + size..];
    }
}

/// `ociup token create NAME --role ROLE --file tokens.json` in `dir`: the token printed.
fn token(dir: &Path, name: &str, role: &str) -> String {
    ok_at(
        dir,
        &[
            "token",
            "create",
            name,
            "--role",
            role,
            "--file",
            "tokens.json",
        ],
    )
    .trim()
    .to_owned()
}

/// ociup as a client of `url` with `token`, in an empty home (its working directory) with no
/// registry credentials, no catalog and no cluster configuration.
fn client_command(dir: &Path, url: &str, token: &str, args: &[&str]) -> Command {
    let home = dir.join("client-home");
    std::fs::create_dir_all(&home).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ociup"));
    cmd.args(args)
        .current_dir(&home)
        .env_clear()
        .env("HOME", &home)
        .env("OCIUP_SERVER", url)
        .env("OCIUP_TOKEN", token);
    cmd
}

/// Runs [`client_command`]: exit code, stdout, stderr.
fn client(dir: &Path, url: &str, token: &str, args: &[&str]) -> (i32, String, String) {
    let out = client_command(dir, url, token, args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The count of `ociup_http_requests_total` in `/metrics` for `route`, summed over its series
/// of method `method` and status `status` (`None`: any); 0 when there is none.
fn requests_counted(s: &Served, route: &str, method: Option<&str>, status: Option<u16>) -> u64 {
    let text = String::from_utf8(s.call("GET", "/metrics", None, None).body).unwrap();
    let prefix = format!("ociup_http_requests_total{{route=\"{route}\",method=\"");
    text.lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|rest| {
            let (m, rest) = rest.split_once("\",status=\"")?;
            let (st, n) = rest.split_once("\"} ")?;
            let wanted =
                method.is_none_or(|w| w == m) && status.is_none_or(|w| w.to_string() == st);
            wanted.then(|| n.parse::<u64>().unwrap())
        })
        .sum()
}

/// A tar of `entries` (name, bytes), as a client would upload.
fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in entries {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        let field = &mut h.as_old_mut().name;
        field[..name.len()].copy_from_slice(name.as_bytes());
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    b.into_inner().unwrap()
}

#[test]
fn token_create_list_revoke() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let a = token(d, "alice", "requester");
    assert!(a.starts_with("ociup_") && a.len() == 70, "{a}");
    let b = token(d, "root", "admin");
    assert_ne!(a, b);
    let text = std::fs::read_to_string(d.join("tokens.json")).unwrap();
    assert!(
        !text.contains(&a[6..]) && !text.contains(&b[6..]),
        "only hashes are stored"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(d.join("tokens.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let list = json(&ok_at(
        d,
        &["token", "list", "--file", "tokens.json", "--json"],
    ));
    let names: Vec<_> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["name"].as_str().unwrap(), t["role"].as_str().unwrap()))
        .collect();
    assert_eq!(names, [("alice", "requester"), ("root", "admin")]);
    // Keys as every --json output has them: snake_case, listed in docs/json.md.
    let doc = std::fs::read_to_string(repo().join("docs/json.md")).unwrap();
    for key in list[0].as_object().unwrap().keys() {
        assert!(
            key.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
            "{key}"
        );
        assert!(
            doc.contains(&format!("`{key}`")),
            "{key} is not in docs/json.md"
        );
    }
    let (code, _, err) = ociup_at(
        d,
        &[
            "token",
            "create",
            "alice",
            "--role",
            "admin",
            "--file",
            "tokens.json",
        ],
    );
    assert_eq!(code, 1);
    assert!(err.contains("exists"), "{err}");
    let (code, _, err) = ociup_at(
        d,
        &[
            "token",
            "create",
            "a/b",
            "--role",
            "admin",
            "--file",
            "tokens.json",
        ],
    );
    assert!(code == 1 && err.contains("token name"), "{err}");
    assert!(
        ok_at(d, &["token", "revoke", "alice", "--file", "tokens.json"]).contains("revoked alice")
    );
    let list = ok_at(d, &["token", "list", "--file", "tokens.json"]);
    assert!(!list.contains("alice") && list.contains("root"), "{list}");
}

/// Everything over a layout catalog: roles, tokens read again, the allowlist, bad input,
/// limits, metrics, the document, registration by upload, an upgrade caused by a requester,
/// and the CLI printing the same through the service as locally.
#[test]
fn serve_over_a_layout_catalog() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    // A base of our own whose tag can move, and a nick on it; another nick on a base outside
    // what the service may read.
    ok_at(
        d,
        &[
            "copy",
            &format!("oci:{}:v1", base_dir().display()),
            "oci:base:latest",
        ],
    );
    std::fs::write(d.join("app.conf"), "mode = test\n").unwrap();
    ok_at(d, &["keygen", "--out", "k"]);
    let dir = d.display().to_string();
    ok_at(
        d,
        &[
            "register",
            "app",
            "--base",
            &format!("oci:{dir}/base:latest"),
            "--to",
            &format!("oci:{dir}/images"),
            "--add",
            "app.conf:/etc/app.conf",
            "--sign-key",
            "k.key",
        ],
    );
    ok_at(
        d,
        &[
            "register",
            "outside",
            "--base",
            &format!("oci:{}:v1", base_dir().display()),
            "--to",
            &format!("oci:{dir}/images"),
        ],
    );
    // A nick on a multi-platform base: an index version, one manifest per platform.
    let multi = fixtures().join("multi").canonicalize().unwrap();
    ok_at(
        d,
        &[
            "register",
            "multi",
            "--base",
            &format!("oci:{}:v1", multi.display()),
            "--to",
            &format!("oci:{dir}/images"),
            "--add",
            "app.conf:/etc/app.conf",
            "--sign-key",
            "k.key",
        ],
    );
    let multi_read = format!("oci:{}", multi.display());
    let alice = token(d, "alice", "requester");
    let root = token(d, "root", "admin");
    let allow = [
        "--tokens",
        "tokens.json",
        "--catalog",
        "oci:catalog",
        "--allow-read",
        &multi_read,
        "--allow-read",
        "oci:base",
        "--allow-write",
        "oci:images",
        "--allow-write",
        "oci:catalog",
        "--sign-key",
        "k.key",
    ];
    // Plain HTTP on an address other machines reach: refused unless asked for.
    let mut wide = vec!["serve", "--listen", "0.0.0.0:0"];
    wide.extend_from_slice(&allow);
    let (code, _, err) = ociup_at(d, &wide);
    assert!(code == 1 && err.contains("--insecure-listen"), "{err}");
    let s = Served::start(d, &allow, &[]);

    // The document served is the one in the repository, and lists every route.
    let doc = s.call("GET", "/v1/openapi.json", None, None);
    assert_eq!(doc.status, 200);
    assert_eq!(
        doc.body,
        std::fs::read(repo().join("docs/openapi.json")).unwrap()
    );
    let doc = doc.json();
    for (method, path) in ociup_serve::Service::routes() {
        assert!(
            doc["paths"][path][method.to_ascii_lowercase()].is_object(),
            "{method} {path} is not in docs/openapi.json"
        );
    }
    assert_eq!(s.call("GET", "/healthz", None, None).status, 200);
    assert_eq!(
        s.call("GET", "/readyz", None, None).json()["status"],
        "ready"
    );

    // No token, an unknown one: 401, JSON, with a challenge.
    let r = s.call("POST", "/v1/nicks/app/resolve", None, None);
    assert_eq!(r.error(), (401, "unauthorized".into()));
    assert!(
        r.header("www-authenticate")
            .is_some_and(|h| h.starts_with("Bearer"))
    );
    let r = s.call("POST", "/v1/nicks/app/resolve", Some("ociup_00"), None);
    assert_eq!(r.error(), (401, "unauthorized".into()));

    // The requester resolves; the same output through the service as locally.
    let r = s.call(
        "POST",
        "/v1/nicks/app/resolve",
        Some(&alice),
        Some(("application/json", b"{}")),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let local_json = ok_at(d, &["resolve", "app", "--json"]);
    assert_eq!(r.json(), json(&local_json));
    for args in [
        &["resolve", "app"][..],
        &["resolve", "app", "--json"],
        &["resolve", "app", "--offline"],
        &["status", "app"],
        &["status", "app", "--json"],
        &["history", "app"],
        &["history", "app", "--json"],
        &["resolve", "multi"],
        &["resolve", "multi", "--json"],
        &["status", "multi"],
        &["history", "multi"],
        &["history", "multi", "--json"],
    ] {
        let (code, out, err) = client(d, &s.url(), &alice, args);
        assert_eq!(code, 0, "{args:?} through the service: {err}");
        assert_eq!(out, ok_at(d, args), "{args:?}: the same output both ways");
        if args[1] == "multi" && args.len() == 2 && args[0] != "resolve" {
            assert!(
                out.contains("linux/"),
                "{args:?}: a line per platform: {out}"
            );
        }
    }
    let key = d.join("k.pub").display().to_string();
    let (code, out, err) = client(d, &s.url(), &alice, &["verify", "app", "--key", &key]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, ok_at(d, &["verify", "app", "--key", &key]));
    let (code, out, err) = client(d, &s.url(), &alice, &["verify", "multi", "--key", &key]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("verified (version 1)"), "{out}");
    assert_eq!(out, ok_at(d, &["verify", "multi", "--key", &key]));
    let (code, out, _) = client(d, &s.url(), &alice, &["resolve", "app", "--check"]);
    assert_eq!((code, out.as_str()), (3, "current\n"));

    // A requester may not register or unregister: 403; nothing changes.
    let upload = tar_of(&[("recipe.json", b"{}")]);
    let r = s.call(
        "POST",
        "/v1/register",
        Some(&alice),
        Some(("application/x-tar", &upload)),
    );
    assert_eq!(r.error(), (403, "forbidden".into()));
    assert_eq!(
        s.call("DELETE", "/v1/nicks/app", Some(&alice), None)
            .error(),
        (403, "forbidden".into())
    );
    assert_eq!(
        s.call("POST", "/v1/upgrade-all", Some(&alice), None)
            .error(),
        (403, "forbidden".into())
    );

    // A nick whose base is outside --allow-read is refused, by the API and through the CLI.
    let r = s.call("POST", "/v1/nicks/outside/resolve", Some(&alice), None);
    assert_eq!(r.error(), (403, "outside_allowlist".into()));
    // A nick that is not one is refused by the client, before any request.
    let (code, _, err) = client(d, &s.url(), &alice, &["resolve", ".."]);
    assert!(
        code == 1 && err.contains("the nick \"..\"") && !err.contains("no such route"),
        "{err}"
    );
    // Plain http:// to another machine is refused before anything is sent.
    let (code, _, err) = client(d, "http://192.0.2.1:9", &alice, &["resolve", "app"]);
    assert!(code == 1 && err.contains("--insecure-server"), "{err}");
    // Commands that do not go through the service, and flags that only mean something here,
    // are refused rather than run locally or ignored (run with 125, its status for its own
    // failures, so they cannot pass for a container's exit 1).
    for (args, says, status) in [
        (&["gc"][..], "does not go through a service", 1),
        (
            &["run", "--image", "oci:elsewhere"],
            "--image reads the image with your own",
            125,
        ),
        (&["job", "app"], "give --apply", 1),
        (
            &["job", "app", "--apply", "--kubeconfig", "/tmp/k"],
            "--kubeconfig: through a service",
            1,
        ),
    ] {
        let (code, _, err) = client(d, &s.url(), &alice, args);
        assert!(
            code == status && err.contains(says),
            "{args:?}: {code} {err}"
        );
    }
    for flag in [
        &["--catalog", "oci:/tmp/elsewhere"][..],
        &["--sign-key", "/tmp/k.pem"],
        &["--actor", "mallory"],
        &["--unsigned"],
    ] {
        let mut args = vec!["resolve", "app"];
        args.extend_from_slice(flag);
        let (code, _, err) = client(d, &s.url(), &alice, &args);
        assert!(
            code == 1 && err.contains(&format!("{}: through a service", flag[0])),
            "{args:?}: {err}"
        );
    }
    let (code, _, err) = client(d, &s.url(), &alice, &["resolve", "outside"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("outside --allow-read") && err.contains("outside_allowlist"),
        "{err}"
    );

    // Bad input: a clear 4xx in JSON.
    let bad = |path: &str, body: &[u8]| {
        s.call("POST", path, Some(&alice), Some(("application/json", body)))
            .error()
    };
    assert_eq!(
        bad("/v1/nicks/app/resolve", b"{not json"),
        (400, "invalid_request".into())
    );
    assert_eq!(
        bad("/v1/nicks/app/resolve", br#"{"chek": true}"#),
        (400, "invalid_request".into())
    );
    assert_eq!(
        bad(
            "/v1/nicks/app/resolve",
            br#"{"check": true, "offline": true}"#
        ),
        (400, "invalid_request".into())
    );
    assert_eq!(
        bad("/v1/nicks/..%2Fetc/resolve", b"{}"),
        (400, "invalid_request".into())
    );
    assert_eq!(
        bad("/v1/nicks/Nope/resolve", b"{}"),
        (400, "invalid_request".into())
    );
    assert_eq!(
        bad("/v1/nicks/nope/resolve", b"{}"),
        (404, "unknown_nick".into())
    );
    let big = format!(
        "{{\"check\": false, \"pad\": \"{}\"}}",
        "x".repeat(100 * 1024)
    );
    assert_eq!(
        bad("/v1/nicks/app/resolve", big.as_bytes()),
        (413, "payload_too_large".into())
    );
    assert_eq!(
        s.call("GET", "/v1/nope", Some(&alice), None).error(),
        (404, "not_found".into())
    );
    assert_eq!(
        s.call("GET", "/v1/nicks/app/resolve", Some(&alice), None)
            .error(),
        (405, "method_not_allowed".into())
    );

    // Tokens are read again when the file changes: a new one works at once, a revoked one no
    // longer does.
    let bob = token(d, "bob", "requester");
    assert_eq!(s.call("GET", "/v1/status", Some(&bob), None).status, 200);
    ok_at(d, &["token", "revoke", "bob", "--file", "tokens.json"]);
    assert_eq!(
        s.call("GET", "/v1/status", Some(&bob), None).error(),
        (401, "unauthorized".into())
    );

    // The admin registers by upload: a recipe and the files it names; a hostile upload is
    // refused and registers nothing.
    let recipe = format!(
        r#"{{"nick": "uploaded", "base": "oci:{dir}/base:latest", "target": "oci:{dir}/images", "steps": [{{"add": {{"src": "files/motd", "dest": "/etc/motd"}}}}]}}"#
    );
    let hostile = tar_of(&[("recipe.json", recipe.as_bytes()), ("../motd", b"x")]);
    let r = s.call(
        "POST",
        "/v1/register",
        Some(&root),
        Some(("application/x-tar", &hostile)),
    );
    assert_eq!(r.error(), (422, "invalid_recipe".into()));
    let missing = tar_of(&[("recipe.json", recipe.as_bytes())]);
    let r = s.call(
        "POST",
        "/v1/register",
        Some(&root),
        Some(("application/x-tar", &missing)),
    );
    assert_eq!(r.error(), (422, "invalid_recipe".into()));
    assert!(!ok_at(d, &["status"]).contains("uploaded"));
    let outside = recipe.replace(
        &format!("oci:{dir}/base:latest"),
        &format!("oci:{}:v1", base_dir().display()),
    );
    let upload = tar_of(&[
        ("recipe.json", outside.as_bytes()),
        ("files/motd", b"hello\n"),
    ]);
    let r = s.call(
        "POST",
        "/v1/register",
        Some(&root),
        Some(("application/x-tar", &upload)),
    );
    assert_eq!(r.error(), (403, "outside_allowlist".into()));
    let good = tar_of(&[
        ("recipe.json", recipe.as_bytes()),
        ("files/motd", b"hello\n"),
    ]);
    let r = s.call(
        "POST",
        "/v1/register",
        Some(&root),
        Some(("application/x-tar", &good)),
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        (r.json()["nick"].as_str(), r.json()["actor"].as_str()),
        (Some("uploaded"), Some("root"))
    );
    let hist = json(&ok_at(d, &["history", "uploaded", "--json"]));
    assert_eq!(hist[0]["digest"], r.json()["digest"]);

    // The base moves. A service that allows no regeneration answers 503 with Retry-After; the
    // other one upgrades on the requester's behalf, recorded with the requester as actor.
    ok_at(
        d,
        &[
            "copy",
            &format!("oci:{}:v2", base_dir().display()),
            "oci:base:latest",
        ],
    );
    let none = Served::start(
        d,
        &[
            &allow[..],
            &["--max-regenerations", "0", "--retry-after", "7"],
        ]
        .concat(),
        &[],
    );
    let r = none.call("POST", "/v1/nicks/app/resolve", Some(&alice), None);
    assert_eq!(r.error(), (503, "busy".into()));
    assert_eq!(r.header("retry-after"), Some("7"));
    let r = none.call(
        "POST",
        "/v1/nicks/app/resolve",
        Some(&alice),
        Some(("application/json", br#"{"check": true}"#)),
    );
    assert_eq!(
        r.json()["upgrade_due"],
        true,
        "a check needs no regeneration"
    );
    drop(none);
    // Requesters asking at once for a nick whose base moved, with different tokens: one
    // regeneration, one new version, every answer the same.
    let answers: Vec<serde_json::Value> = std::thread::scope(|scope| {
        let calls: Vec<_> = (0..8)
            .map(|i| {
                let (s, tok) = (&s, if i % 2 == 0 { &alice } else { &root });
                scope.spawn(move || {
                    let r = s.call("POST", "/v1/nicks/uploaded/resolve", Some(tok), None);
                    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
                    r.json()
                })
            })
            .collect();
        calls.into_iter().map(|c| c.join().unwrap()).collect()
    });
    assert!(
        answers
            .iter()
            .all(|a| a["digest"] == answers[0]["digest"] && a["version"] == 2),
        "{answers:?}"
    );
    assert_eq!(
        answers.iter().filter(|a| a["upgraded"] == true).count(),
        1,
        "{answers:?}"
    );
    assert_eq!(
        json(&ok_at(d, &["history", "uploaded", "--json"]))
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let (code, out, err) = client(d, &s.url(), &alice, &["resolve", "app"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("app upgraded to version 2"), "{err}");
    assert_eq!(out, ok_at(d, &["resolve", "app"]));
    let hist = json(&ok_at(d, &["history", "app", "--json"]));
    assert_eq!(
        (hist[0]["number"].as_u64(), hist[0]["actor"].as_str()),
        (Some(2), Some("alice"))
    );
    assert_eq!(hist[0]["reason"], "base moved");

    // An admin upgrades all and unregisters through the CLI, printing what it prints locally
    // (nothing is due now; the nick outside the allowlist fails there, as it cannot be read).
    let (code, out, err) = client(d, &s.url(), &root, &["upgrade", "--all"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("ociup: outside:") && err.contains("outside --allow-read"),
        "{err}"
    );
    let local = ociup_at(d, &["upgrade", "--all"]).1;
    let without_outside = |t: &str| {
        t.lines()
            .filter(|l| !l.starts_with("outside "))
            .map(|l| format!("{l}\n"))
            .collect::<String>()
    };
    assert_eq!(out, without_outside(&local));
    assert!(
        out.contains("app ") && out.contains("current (v2)"),
        "{out}"
    );
    // The admin edits through the CLI: the steps and the files the recipe reads (stored and
    // new) are uploaded from the working directory; the output is what `edit` prints here.
    let home = d.join("client-home");
    std::fs::copy(d.join("app.conf"), home.join("app.conf")).unwrap();
    for dir in [&home, &d.to_path_buf()] {
        std::fs::write(dir.join("extra.txt"), "extra\n").unwrap();
    }
    let (code, _, err) = client(d, &s.url(), &alice, &["edit", "app", "--env", "A=1"]);
    assert!(code == 1 && err.contains("forbidden"), "{err}");
    let (code, out, err) = client(
        d,
        &s.url(),
        &root,
        &[
            "edit",
            "app",
            "--env",
            "MODE=served",
            "--add",
            "extra.txt:/etc/extra.txt",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let newest = |d: &Path| json(&ok_at(d, &["history", "app", "--json"]))[0].clone();
    let edited = newest(d);
    assert_eq!(
        (edited["number"].as_u64(), edited["actor"].as_str()),
        (Some(3), Some("root"))
    );
    assert_eq!(
        out,
        format!(
            "app version 3 (recipe edited): {}\n",
            edited["image"].as_str().unwrap()
        )
    );
    // Locally, the same edit prints the same line (and --json the record history shows).
    assert!(
        edited["via"]
            .as_str()
            .is_some_and(|v| v.starts_with("ociup-serve@")),
        "the service's own identity beside the actor: {edited}"
    );
    let local = ok_at(
        d,
        &[
            "edit",
            "app",
            "--env",
            "MODE=local",
            "--json",
            "--sign-key",
            "k.key",
        ],
    );
    assert_eq!(json(&local), newest(d));
    assert!(json(&local).get("via").is_none(), "no service, no via");
    let (code, out, err) = client(
        d,
        &s.url(),
        &root,
        &["edit", "app", "--env", "B=2", "--json"],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out), newest(d), "edit --json is the version record");
    assert_eq!(newest(d)["number"], 5);
    // A step that names a file outside the upload is refused, and nothing is made.
    let r = s.call(
        "POST",
        "/v1/nicks/app/edit",
        Some(&root),
        Some((
            "application/json",
            br#"{"steps": [{"add": {"src": "/etc/passwd", "dest": "/etc/x"}}]}"#,
        )),
    );
    assert_eq!(r.error(), (422, "invalid_recipe".into()));
    let r = s.call(
        "POST",
        "/v1/nicks/app/edit",
        Some(&root),
        Some(("application/json", br#"{"steps": [{"env": {"key": "C"}}]}"#)),
    );
    assert_eq!(r.error().0, 400);
    assert_eq!(newest(d)["number"], 5);

    let (code, _, err) = client(d, &s.url(), &alice, &["unregister", "uploaded"]);
    assert!(code == 1 && err.contains("forbidden"), "{err}");
    let (code, out, err) = client(d, &s.url(), &root, &["unregister", "uploaded"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "unregistered uploaded (its images, history and audit trail stay)\n"
    );
    let st = json(&ok_at(d, &["status", "uploaded", "--json"]));
    assert_eq!(st[0]["status"], "removed");

    // Metrics count the requests by route and status.
    let before = requests_counted(&s, "/v1/status", Some("GET"), Some(200));
    for _ in 0..3 {
        assert_eq!(s.call("GET", "/v1/status", Some(&alice), None).status, 200);
    }
    assert_eq!(
        requests_counted(&s, "/v1/status", Some("GET"), Some(200)),
        before + 3
    );
    assert!(requests_counted(&s, "/v1/nicks/{nick}/resolve", Some("POST"), Some(401)) >= 2);
    // Invented methods and paths share one label each: the label set stays bounded.
    let other_before = requests_counted(&s, "unmatched", Some("other"), Some(404));
    for i in 0..3 {
        let r = s.call(&format!("XYZ{i}"), &format!("/nope{i}"), None, None);
        assert_eq!(r.status, 404);
        s.call(&format!("XYZ{i}"), "/healthz", None, None);
    }
    assert_eq!(
        requests_counted(&s, "unmatched", Some("other"), Some(404)),
        other_before + 3
    );
    let text = String::from_utf8(s.call("GET", "/metrics", None, None).body).unwrap();
    assert!(!text.contains("XYZ") && !text.contains("/nope"), "{text}");
    // Upgrades are counted a few seconds after they are recorded (by then the catalog says
    // which replica's record it holds).
    let end = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut text = String::new();
    while !text.contains("ociup_upgrades_total 2\n") {
        assert!(std::time::Instant::now() < end, "{text}");
        std::thread::sleep(std::time::Duration::from_millis(100));
        text = String::from_utf8(s.call("GET", "/metrics", None, None).body).unwrap();
    }
    assert!(
        text.contains("ociup_http_requests_in_flight 1"),
        "the /metrics request itself: {text}"
    );

    // SIGTERM: the service stops cleanly.
    let mut s = s;
    let killed = Command::new("kill")
        .args(["-TERM", &s.child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = s.child.wait().unwrap();
    assert!(status.success(), "{status:?}: {}", s.log());
    assert!(s.log().contains("stopped"), "{}", s.log());
}

/// On a registry that hands out bearer tokens: the service holds the credentials; a requester
/// with none at all causes the upgrade. What the service asks the token server for is listed.
#[test]
fn serve_holds_the_credentials_on_a_token_registry() {
    let reg = TestRegistry::start(RegistryOptions {
        auth: AuthMode::Token,
        tls: false,
    });
    let host = reg.host();
    let (user, password) = reg.credentials().unwrap();
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let creds = [
        ("OCIUP_USERNAME", user.as_str()),
        ("OCIUP_PASSWORD", password.as_str()),
    ];
    let with_creds = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_ociup"))
            .args(args)
            .current_dir(d)
            .env("OCIUP_CATALOG", format!("{host}/ociup/catalog"))
            .env("OCIUP_ACTOR", "tester")
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .env("XDG_CACHE_HOME", d.join("cache"))
            .envs(creds)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let base = format!("{host}/base/img:latest");
    with_creds(&["copy", &format!("oci:{}:v1", base_dir().display()), &base]);
    std::fs::write(d.join("app.conf"), "mode = test\n").unwrap();
    with_creds(&[
        "register",
        "app",
        "--base",
        &base,
        "--to",
        &format!("{host}/apps/app"),
        "--add",
        "app.conf:/etc/app.conf",
    ]);
    let carol = token(d, "carol", "requester");
    let s = Served::start(
        d,
        &[
            "--tokens",
            "tokens.json",
            "--catalog",
            &format!("{host}/ociup/catalog"),
            "--allow-read",
            &format!("{host}/base/*"),
            "--allow-write",
            &format!("{host}/apps/*"),
            "--allow-write",
            &format!("{host}/ociup/catalog"),
        ],
        &creds,
    );
    with_creds(&["copy", &format!("oci:{}:v2", base_dir().display()), &base]);
    let asked_before = reg.token_log().len();
    let (code, out, err) = client(d, &s.url(), &carol, &["resolve", "app", "--json"]);
    // What the token server was asked up to here was asked by the service alone: the local
    // commands below ask it too, and must not be what satisfies the checks of scopes.
    let asked_by_service = reg.token_log()[asked_before..].to_vec();
    assert_eq!(code, 0, "{err}\n{}", s.log());
    let r = json(&out);
    assert_eq!(
        (r["upgraded"].as_bool(), r["version"].as_u64()),
        (Some(true), Some(2))
    );
    assert!(
        r["reference"]
            .as_str()
            .unwrap()
            .trim_start_matches("docker://")
            .starts_with(&format!("{host}/apps/app@sha256:")),
        "{r}"
    );
    // The same answer locally now, with the registry's credentials.
    assert_eq!(
        json(&with_creds(&["resolve", "app", "--json"]))["digest"],
        r["digest"]
    );
    let hist = json(&with_creds(&["history", "app", "--json"]));
    assert_eq!(hist[0]["actor"], "carol");

    // Scopes the service asked for during the upgrade: pull on the base, pull and push on the
    // target and the catalog, nothing else.
    let asked: Vec<String> = asked_by_service
        .iter()
        .flat_map(|t| t.scopes.clone())
        .collect();
    for needed in [
        "repository:base/img:pull",
        "repository:apps/app:pull,push",
        "repository:ociup/catalog:pull,push",
    ] {
        assert!(
            asked.iter().any(|a| a == needed),
            "{needed} not asked: {asked:?}"
        );
    }
    for scope in &asked {
        let ok = scope == "repository:base/img:pull"
            || ["apps/app", "ociup/catalog"].iter().any(|repo| {
                scope == &format!("repository:{repo}:pull")
                    || scope == &format!("repository:{repo}:pull,push")
                    || scope == &format!("repository:{repo}:push,pull")
            });
        assert!(
            ok,
            "the service asked for {scope:?}; all it asked: {asked:?}"
        );
    }
}

/// SIGTERM while a request is in flight (its body half sent): the service stops taking
/// connections, answers that request, then exits 0.
#[test]
fn sigterm_lets_the_request_in_flight_finish() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let base = format!("oci:{}", base_dir().display());
    ok_at(
        d,
        &[
            "register",
            "app",
            "--base",
            &format!("{base}:v1"),
            "--to",
            "oci:images",
        ],
    );
    let alice = token(d, "alice", "requester");
    std::fs::write(d.join("alice.token"), format!("{alice}\n")).unwrap();
    let mut s = Served::start(
        d,
        &[
            "--tokens",
            "tokens.json",
            "--catalog",
            "oci:catalog",
            "--allow-read",
            &base,
            "--allow-write",
            "oci:images",
            "--allow-write",
            "oci:catalog",
            "--header-timeout",
            "1",
        ],
        &[],
    );
    // --token-file instead of OCIUP_TOKEN.
    let out = Command::new(env!("CARGO_BIN_EXE_ociup"))
        .args([
            "--server",
            &s.url(),
            "--token-file",
            "alice.token",
            "resolve",
            "app",
            "--offline",
        ])
        .current_dir(d)
        .env_remove("OCIUP_TOKEN")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        ok_at(d, &["resolve", "app", "--offline"])
    );

    // A client that trickles its request head is cut off; the service goes on serving.
    let mut slow = TcpStream::connect(&s.addr).unwrap();
    slow.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    slow.write_all(b"GET /v1/status HTTP/1.1\r\nHo").unwrap();
    assert_eq!(s.call("GET", "/healthz", None, None).status, 200);
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let ended = slow.read_to_end(&mut rest);
    assert!(
        ended.is_ok() && started.elapsed() < std::time::Duration::from_secs(20),
        "the slow connection was not closed: {ended:?}"
    );
    assert!(!String::from_utf8_lossy(&rest).contains("200 OK"));

    let body = br#"{"offline": true}"#;
    let mut conn = TcpStream::connect(&s.addr).unwrap();
    write!(
        conn,
        "POST /v1/nicks/app/resolve HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {alice}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    conn.write_all(&body[..5]).unwrap();
    conn.flush().unwrap();
    let killed = Command::new("kill")
        .args(["-TERM", &s.child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    // Once it says it is shutting down, it takes no new connection.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !s.log().contains("shutting down") {
        assert!(
            std::time::Instant::now() < deadline,
            "no shutdown logged: {}",
            s.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let refused = (0..100).any(|_| {
        let gone = TcpStream::connect(&s.addr).is_err();
        if !gone {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        gone
    });
    assert!(refused, "still taking connections after SIGTERM");
    assert!(
        s.child.try_wait().unwrap().is_none(),
        "exited with a request in flight"
    );
    conn.write_all(&body[5..]).unwrap();
    let mut raw = String::new();
    conn.read_to_string(&mut raw).unwrap();
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    assert!(raw.contains("\"version\":1"), "{raw}");
    let status = s.child.wait().unwrap();
    assert!(status.success(), "{status:?}: {}", s.log());
}

/// Per-token rate limits (a burst, then 429 with Retry-After, counted), and runs refused by a
/// service that has no cluster.
#[test]
fn rate_limits_and_runs_without_a_cluster() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let alice = token(d, "alice", "requester");
    let bob = token(d, "bob", "requester");
    // HOME without ~/.kube, no KUBECONFIG: no cluster configuration at all.
    let s = Served::start(
        d,
        &[
            "--tokens",
            "tokens.json",
            "--catalog",
            "oci:catalog",
            "--allow-write",
            "oci:catalog",
            "--allow-namespace",
            "*",
            "--rate-limit",
            "3/m",
        ],
        &[("HOME", d.to_str().unwrap())],
    );
    let r = s.call(
        "POST",
        "/v1/nicks/app/runs",
        Some(&bob),
        Some(("application/json", br#"{"namespace": "ml"}"#)),
    );
    assert_eq!(r.error(), (503, "no_cluster".into()));
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap()
            .contains("no Kubernetes cluster"),
        "{:?}",
        r.json()
    );
    // A field the run does not take is refused before anything else.
    let r = s.call(
        "POST",
        "/v1/nicks/app/runs",
        Some(&bob),
        Some(("application/json", br#"{"namespace": "ml", "nodes": 3}"#)),
    );
    assert_eq!(r.error(), (400, "invalid_request".into()));
    // The CLI says the same through the service.
    let (code, _, err) = client(d, &s.url(), &bob, &["job", "app", "--apply", "-n", "ml"]);
    assert!(code == 1 && err.contains("no_cluster"), "{err}");

    // 3/m: a burst of 3, then one request every 20 s. Bob's bucket is his own.
    for _ in 0..3 {
        assert_eq!(s.call("GET", "/v1/status", Some(&alice), None).status, 200);
    }
    let r = s.call("GET", "/v1/status", Some(&alice), None);
    assert_eq!(r.error(), (429, "rate_limited".into()));
    let wait: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=20).contains(&wait), "{wait}");
    let r = s.call("GET", "/v1/status", Some(&bob), None);
    assert_eq!(
        r.error(),
        (429, "rate_limited".into()),
        "bob made 3 already"
    );
    assert_eq!(
        requests_counted(&s, "/v1/status", Some("GET"), Some(429)),
        2
    );
    let text = String::from_utf8(s.call("GET", "/metrics", None, None).body).unwrap();
    assert!(text.contains("ociup_rate_limited_total 2"), "{text}");
}

/// The API server `scripts/test.sh` started (KUBECONFIG, KUBE_STATE_DIR), as its admin; `None`
/// (the test says it was skipped) without one.
struct Kube {
    rt: tokio::runtime::Runtime,
    client: ociup_kube::kube::Client,
    kubeconfig: String,
}

impl Kube {
    fn new(test: &str) -> Option<Kube> {
        let (Some(kubeconfig), Some(_)) = (
            std::env::var("KUBECONFIG").ok().filter(|k| !k.is_empty()),
            std::env::var_os("KUBE_STATE_DIR").filter(|k| !k.is_empty()),
        ) else {
            eprintln!(
                "{test}: skipped: no Kubernetes API server (KUBECONFIG and KUBE_STATE_DIR \
                 unset: scripts/test.sh starts one from ../shared/k8s, absent here or not \
                 started)"
            );
            return None;
        };
        // Never a developer's real cluster: only ../shared/k8s/start.sh's, on loopback.
        let text = std::fs::read_to_string(&kubeconfig).unwrap_or_default();
        if !text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("server: "))
            .all(|s| s.trim_matches('"').starts_with("https://127.0.0.1:"))
        {
            eprintln!("{test}: skipped: KUBECONFIG names a server that is not on 127.0.0.1");
            return None;
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let cluster = rt
            .block_on(ociup_kube::Cluster::connect(&ociup_kube::ConnectOptions {
                kubeconfig: Some(kubeconfig.clone().into()),
                context: None,
            }))
            .unwrap();
        Some(Kube {
            client: cluster.client().clone(),
            rt,
            kubeconfig,
        })
    }

    fn jobs(
        &self,
        ns: &str,
    ) -> ociup_kube::kube::Api<ociup_kube::k8s_openapi::api::batch::v1::Job> {
        ociup_kube::kube::Api::namespaced(self.client.clone(), ns)
    }

    /// A namespace of the test's own, with its `default` ServiceAccount (pods need it);
    /// deleted at the end.
    fn namespace(&self, prefix: &str) -> Namespace<'_> {
        use ociup_kube::k8s_openapi::api::core::v1::{Namespace as Ns, ServiceAccount};
        use ociup_kube::kube::api::{Api, PostParams};
        let name = format!("{prefix}-{}-{}", std::process::id(), next_number());
        let ns: Ns =
            serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
        let all: Api<Ns> = Api::all(self.client.clone());
        self.rt
            .block_on(all.create(&PostParams::default(), &ns))
            .unwrap();
        let sa: Api<ServiceAccount> = Api::namespaced(self.client.clone(), &name);
        self.until("the default ServiceAccount", || {
            self.rt.block_on(sa.get_opt("default")).unwrap().is_some()
        });
        Namespace { kube: self, name }
    }

    fn until(&self, what: &str, mut f: impl FnMut() -> bool) {
        let end = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !f() {
            assert!(std::time::Instant::now() < end, "no {what} after 60 s");
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }

    /// Every Job of a namespace (by name), with the nick label `nick`.
    fn jobs_of(&self, ns: &str, nick: &str) -> Vec<ociup_kube::k8s_openapi::api::batch::v1::Job> {
        let params =
            ociup_kube::kube::api::ListParams::default().labels(&format!("ociup.dev/nick={nick}"));
        self.rt.block_on(self.jobs(ns).list(&params)).unwrap().items
    }
}

struct Namespace<'a> {
    kube: &'a Kube,
    name: String,
}

impl Drop for Namespace<'_> {
    fn drop(&mut self) {
        use ociup_kube::k8s_openapi::api::core::v1::Namespace as Ns;
        let all: ociup_kube::kube::Api<Ns> = ociup_kube::kube::Api::all(self.kube.client.clone());
        let _ = self.kube.rt.block_on(all.delete(
            &self.name,
            &ociup_kube::kube::api::DeleteParams::background(),
        ));
    }
}

/// A balancer in front of `backends` (`host:port`): each connection goes to the next backend
/// in turn and carries one request (`Connection: close` is added to it), so that a client's
/// requests alternate between them. Its address; it serves until the test process ends.
fn balancer(backends: Vec<String>) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for (i, conn) in listener.incoming().enumerate() {
            let Ok(mut client) = conn else { continue };
            let backend = backends[i % backends.len()].clone();
            std::thread::spawn(move || {
                let _ = relay(&mut client, &backend);
            });
        }
    });
    addr
}

/// One request of `client` to `backend`, and its answer back.
fn relay(client: &mut TcpStream, backend: &str) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if client.read(&mut byte)? == 0 {
            return Ok(());
        }
        head.push(byte[0]);
    }
    let mut server = TcpStream::connect(backend)?;
    server.write_all(&head[..head.len() - 2])?;
    server.write_all(b"Connection: close\r\n\r\n")?;
    let (mut up, mut to_server) = (client.try_clone()?, server.try_clone()?);
    // The body, if any.
    std::thread::spawn(move || std::io::copy(&mut up, &mut to_server));
    std::io::copy(&mut server, client)?;
    client.shutdown(std::net::Shutdown::Both)
}

/// A run through the service on the real API server and controller manager: answered
/// `pending`, then `submitted` with the Job held until the new version was recorded; the pod
/// the controller makes runs that version; a namespace outside the allowlist is refused with
/// nothing made; the CLI as a client prints what `ociup job --apply` prints. A second replica
/// over the same catalog and cluster answers the run from its Job (the same state and Job, to
/// its requester only), and `ociup job --apply --wait` through a balancer alternating between
/// the two follows a run made on either.
#[test]
fn runs_through_the_service_on_a_cluster() {
    let Some(k) = Kube::new("runs_through_the_service_on_a_cluster") else {
        return;
    };
    let reg = TestRegistry::start(RegistryOptions::default());
    let host = reg.host();
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let dir = d.display().to_string();
    ok_at(
        d,
        &[
            "copy",
            &format!("oci:{}:v1", base_dir().display()),
            "oci:base:latest",
        ],
    );
    std::fs::write(d.join("app.txt"), "app\n").unwrap();
    ok_at(
        d,
        &[
            "register",
            "runner",
            "--base",
            &format!("oci:{dir}/base:latest"),
            "--to",
            &format!("{host}/team/runner"),
            "--add",
            "app.txt:/opt/app.txt",
        ],
    );
    let versions = || -> Vec<String> {
        let h = json(&ok_at(d, &["history", "runner", "--json"]));
        let mut v: Vec<(u64, String)> = h
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["number"].as_u64().unwrap(),
                    r["digest"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        v.sort();
        v.into_iter().map(|(_, d)| d).collect()
    };
    // The base moves: the run is due an upgrade.
    ok_at(
        d,
        &[
            "copy",
            &format!("oci:{}:v2", base_dir().display()),
            "oci:base:latest",
        ],
    );
    let alice = token(d, "alice", "requester");
    let bob = token(d, "bob", "requester");
    let ns = k.namespace("ociup-serve-runs");
    let write = format!("{host}/team/*");
    let replica_args = [
        "--tokens",
        "tokens.json",
        "--catalog",
        "oci:catalog",
        "--allow-read",
        "oci:base",
        "--allow-write",
        &write,
        "--allow-write",
        "oci:catalog",
        "--kubeconfig",
        &k.kubeconfig,
        "--allow-namespace",
        "ociup-serve-runs-*",
        "--identity",
        "ociup-serve@test",
    ];
    let s = Served::start(d, &replica_args, &[]);
    // Another replica: the same catalog and cluster, none of the first one's runs in memory.
    let b = Served::start(d, &replica_args, &[]);
    let run = |body: &str| {
        s.call(
            "POST",
            "/v1/nicks/runner/runs",
            Some(&alice),
            Some(("application/json", body.as_bytes())),
        )
    };

    // Outside --allow-namespace: refused, nothing regenerated, no Job.
    let r = run(r#"{"namespace": "default"}"#);
    assert_eq!(r.error(), (403, "outside_allowlist".into()));
    assert!(k.jobs_of("default", "runner").is_empty());
    assert_eq!(versions().len(), 1);

    let r = run(&format!(
        r#"{{"namespace": "{}", "env": [{{"name": "MODE", "value": "run"}}], "labels": {{"team": "ml"}}, "args": ["--epochs", "3"]}}"#,
        ns.name
    ));
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let accepted = r.json();
    assert_eq!(accepted["state"], "pending");
    let id = accepted["id"].as_str().unwrap().to_owned();
    assert_eq!(
        r.header("location"),
        Some(format!("/v1/runs/{id}").as_str())
    );
    let path = format!("/v1/runs/{id}");
    let mut seen = vec![accepted["state"].as_str().unwrap().to_owned()];
    let mut got = accepted;
    // What the other replica says meanwhile: nothing of it before its Job exists (404
    // run_unknown), then pending while the Job is held, then submitted; never an end of its own.
    let mut on_b = Vec::new();
    k.until("the run's end", || {
        got = s.call("GET", &path, Some(&alice), None).json();
        seen.push(got["state"].as_str().unwrap().to_owned());
        let r = b.call("GET", &path, Some(&alice), None);
        on_b.push(if r.status == 404 {
            r.error().1
        } else {
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
            r.json()["state"].as_str().unwrap().to_owned()
        });
        got["state"] != "pending"
    });
    assert!(
        on_b.iter()
            .all(|x| ["run_unknown", "pending", "submitted"].contains(&x.as_str())),
        "{on_b:?}"
    );
    assert_eq!(got["state"], "submitted", "{got}");
    assert_eq!(seen.last().unwrap(), "submitted");
    let v = versions();
    assert_eq!(v.len(), 2, "the new version is recorded");
    let image = format!("{host}/team/runner@{}", v[1]);
    assert_eq!(
        (
            got["upgraded"].as_bool(),
            got["held"].as_bool(),
            got["version"].as_u64()
        ),
        (Some(true), Some(true), Some(2)),
        "{got}"
    );
    assert_eq!(got["digest"], v[1].as_str());
    assert_eq!(got["image"], image.as_str());
    assert_eq!(got["requester"], "alice");
    assert_eq!(got["job"]["suspended"], false, "{got}");
    assert!(got["job_error"].is_null());
    // Submitted: no Job said to be left (the key is there, null).
    assert_eq!(got.get("job_left"), Some(&serde_json::Value::Null), "{got}");
    // The other replica answers it from its Job as this one does.
    let from_b = b.call("GET", &path, Some(&alice), None).json();
    for key in [
        "id",
        "nick",
        "requester",
        "created",
        "state",
        "error",
        "job_left",
        "namespace",
        "name",
        "uid",
        "version",
        "image",
        "digest",
        "base_digest",
        "upgraded",
        "held",
        "stale",
        "job_error",
    ] {
        assert_eq!(from_b[key], got[key], "{key}: {from_b} {got}");
    }
    assert_eq!(from_b["job"]["suspended"], false, "{from_b}");
    // Another requester sees it on neither replica: the same answer as a run that is not there.
    for replica in [&s, &b] {
        assert_eq!(
            replica.call("GET", &path, Some(&bob), None).error(),
            (404, "run_unknown".into())
        );
    }
    let mark = id.rsplit_once('-').unwrap().1;
    let absent = format!("/v1/runs/run-{}-{}", ns.name, "0".repeat(mark.len()));
    assert_eq!(
        b.call("GET", &absent, Some(&alice), None).error(),
        (404, "run_unknown".into())
    );
    // Not an id a service makes (an older service's, say): not looked for.
    let old = format!("/v1/runs/run-{mark}");
    assert_eq!(
        b.call("GET", &old, Some(&alice), None).error(),
        (404, "not_found".into())
    );
    // The Job as the API server has it, and the pod the controller made: the new version.
    let name = got["name"].as_str().unwrap().to_owned();
    let job = k.rt.block_on(k.jobs(&ns.name).get(&name)).unwrap();
    let job = serde_json::to_value(&job).unwrap();
    assert_eq!(
        job["metadata"]["annotations"]["ociup.dev/digest"],
        v[1].as_str()
    );
    assert_eq!(job["metadata"]["labels"]["team"], "ml");
    let c = &job["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["image"], image.as_str());
    assert_eq!(c["args"], serde_json::json!(["--epochs", "3"]));
    assert_eq!(
        c["env"],
        serde_json::json!([{"name": "MODE", "value": "run"}])
    );
    let pods: ociup_kube::kube::Api<ociup_kube::k8s_openapi::api::core::v1::Pod> =
        ociup_kube::kube::Api::namespaced(k.client.clone(), &ns.name);
    let mut pod_images = Vec::new();
    k.until("the Job's pod", || {
        let params =
            ociup_kube::kube::api::ListParams::default().labels(&format!("job-name={name}"));
        pod_images =
            k.rt.block_on(pods.list(&params))
                .unwrap()
                .items
                .into_iter()
                .map(|p| p.spec.unwrap().containers[0].image.clone().unwrap())
                .collect();
        !pod_images.is_empty()
    });
    assert_eq!(pod_images.as_slice(), std::slice::from_ref(&image));
    // The requester is the actor; the service is recorded beside it.
    let newest = json(&ok_at(d, &["history", "runner", "--json"]))[0].clone();
    assert_eq!(newest["actor"], "alice");
    assert_eq!(newest["via"], "ociup-serve@test");

    // The CLI through the service prints what `ociup job --apply` prints here.
    let (code, out, err) = client(
        d,
        &s.url(),
        &alice,
        &["job", "runner", "--apply", "-n", &ns.name],
    );
    assert_eq!(code, 0, "{err}");
    let kubeconfig = ["--kubeconfig", k.kubeconfig.as_str()];
    let local = ok_at(
        d,
        &[
            &["job", "runner", "--apply", "-n", &ns.name][..],
            &kubeconfig,
        ]
        .concat(),
    );
    let shape = |out: &str| {
        let (job, rest) = out.split_once(" created (").unwrap();
        assert!(job.starts_with("job.batch/runner-v2-"), "{out}");
        rest.to_owned()
    };
    assert_eq!(shape(&out), format!("{image})\n"));
    assert_eq!(shape(&out), shape(&local));
    let (code, out, err) = client(
        d,
        &s.url(),
        &alice,
        &["job", "runner", "--apply", "-n", &ns.name, "--json"],
    );
    assert_eq!(code, 0, "{err}");
    let local = ok_at(
        d,
        &[
            &["job", "runner", "--apply", "-n", &ns.name, "--json"][..],
            &kubeconfig,
        ]
        .concat(),
    );
    let (mut remote, mut local) = (json(&out), json(&local));
    for v in [&mut remote, &mut local] {
        assert!(v["name"].as_str().unwrap().starts_with("runner-v2-"), "{v}");
        v["name"] = serde_json::Value::Null;
        v["uid"] = serde_json::Value::Null;
    }
    assert_eq!(remote, local);

    // --wait follows the Job until it ends (the test sets its condition: there is no kubelet),
    // through a balancer: the run is made on one replica and followed on both in turn.
    let balanced = format!("http://{}", balancer(vec![s.addr.clone(), b.addr.clone()]));
    let before: Vec<String> = k
        .jobs_of(&ns.name, "runner")
        .into_iter()
        .map(|j| j.metadata.name.unwrap())
        .collect();
    let mut waiting = client_command(
        d,
        &balanced,
        &alice,
        &[
            "job",
            "runner",
            "--apply",
            "-n",
            &ns.name,
            "--wait",
            "--wait-timeout",
            "60",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut new = String::new();
    k.until("the waited Job", || {
        if let Some(j) = k
            .jobs_of(&ns.name, "runner")
            .into_iter()
            .find(|j| !before.contains(j.metadata.name.as_ref().unwrap()))
        {
            new = j.metadata.name.unwrap();
        }
        !new.is_empty()
    });
    let now = "2026-01-01T00:00:00Z";
    let patch = serde_json::json!({"status": {"conditions": [{
        "type": "Complete", "status": "True", "reason": "SetByTheTest",
        "message": "done", "lastProbeTime": now, "lastTransitionTime": now,
    }]}});
    k.rt.block_on(k.jobs(&ns.name).patch_status(
        &new,
        &ociup_kube::kube::api::PatchParams::default(),
        &ociup_kube::kube::api::Patch::Merge(&patch),
    ))
    .unwrap();
    let end = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while waiting.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > end {
            let _ = waiting.kill();
            panic!("ociup job --wait through the service did not end");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let out = waiting.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!(
            "job.batch/{new} created ({image})\n  Complete=True (SetByTheTest): done\njob.batch/{new} completed\n"
        )
    );

    // A Job held for good by a replica that stopped before recording its version, made here as
    // that replica would have made it (its run's mark, requester and deadline; held; pinning a
    // version 3 never recorded): any replica answers its run `pending` until the deadline has
    // passed, `failed` after, naming the Job, so that a client following it stops.
    let held_for_good = |mark: &str, deadline: &str| {
        let pinned = ociup_kube::Pinned {
            nick: "runner".into(),
            version: 3,
            reference: format!("docker://{host}/team/runner@sha256:{}", "e".repeat(64)),
            digest: format!("sha256:{}", "e".repeat(64)),
            base_digest: format!("sha256:{}", "b".repeat(64)),
        };
        let options = ociup_kube::JobOptions {
            namespace: Some(ns.name.clone()),
            ..ociup_kube::JobOptions::default()
        };
        let mut job = ociup_kube::build_job(&pinned, &options, true).unwrap();
        let meta = &mut job.metadata;
        meta.name = Some(format!("runner-v3-{}", &mark[..5]));
        meta.labels
            .get_or_insert_with(Default::default)
            .insert("ociup.dev/request".into(), mark.into());
        meta.annotations
            .get_or_insert_with(Default::default)
            .extend([
                ("ociup.dev/request".into(), mark.into()),
                ("ociup.dev/requester".into(), "alice".into()),
                ("ociup.dev/requested".into(), "2026-01-01T00:00:00Z".into()),
                ("ociup.dev/deadline".into(), deadline.into()),
                ("ociup.dev/resolution".into(), "upgraded held".into()),
            ]);
        k.rt.block_on(
            k.jobs(&ns.name)
                .create(&ociup_kube::kube::api::PostParams::default(), &job),
        )
        .unwrap();
        format!("/v1/runs/run-{}-{mark}", ns.name)
    };
    let past = held_for_good("0123456789abcdef0123456789abcdef", "2026-01-01T00:15:00Z");
    let ahead = held_for_good("fedcba9876543210fedcba9876543210", "2999-01-01T00:15:00Z");
    for replica in [&s, &b] {
        let r = replica.call("GET", &past, Some(&alice), None);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let r = r.json();
        assert_eq!(r["state"], "failed", "{r}");
        assert_eq!(
            r["job_left"].as_str(),
            Some(format!("{}/runner-v3-01234", ns.name).as_str()),
            "{r}"
        );
        let error = r["error"].as_str().unwrap();
        assert!(
            error.contains("version 3 of runner was not recorded by 2026-01-01T00:15:00Z")
                && error.contains(&format!(
                    "kubectl delete job -n {} runner-v3-01234",
                    ns.name
                )),
            "{error}"
        );
        let r = replica.call("GET", &ahead, Some(&alice), None).json();
        assert_eq!(r["state"], "pending", "{r}");
    }
}

/// `--work-limit`: a value out of its bounds is refused at start; a run whose regeneration is
/// still writing when its limit passes (the registry's answer to the new image's manifest held
/// by a proxy) is stopped: its held Job, created with the deadline the limit gives, is deleted
/// and the run ends `failed`, saying why, with nothing recorded.
#[test]
fn a_run_past_its_work_limit_is_stopped_and_its_held_job_deleted() {
    for bad in ["0", "86401"] {
        let out = Command::new(env!("CARGO_BIN_EXE_ociup"))
            .args(["serve", "--listen", "127.0.0.1:0", "--tokens", "t.json"])
            .args(["--catalog", "oci:/nonexistent/catalog", "--work-limit", bad])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success()
                && err.contains(&format!(
                    "invalid value '{bad}' for '--work-limit <SECS>': {bad} is not in 1..=86400"
                )),
            "{err}"
        );
    }
    let Some(k) = Kube::new("a_run_past_its_work_limit_is_stopped_and_its_held_job_deleted") else {
        return;
    };
    let reg = TestRegistry::start(RegistryOptions::default());
    let proxy = crate::serve_replicas::Proxy::start(reg.port());
    let host = proxy.host();
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let dir = d.display().to_string();
    let base = |v: &str| {
        ok_at(
            d,
            &[
                "copy",
                &format!("oci:{}:{v}", base_dir().display()),
                "oci:base:latest",
            ],
        )
    };
    base("v1");
    std::fs::write(d.join("app.txt"), "app\n").unwrap();
    ok_at(
        d,
        &[
            "register",
            "slow",
            "--base",
            &format!("oci:{dir}/base:latest"),
            "--to",
            &format!("{host}/team/slow"),
            "--add",
            "app.txt:/opt/app.txt",
        ],
    );
    base("v2");
    let alice = token(d, "alice", "requester");
    let ns = k.namespace("ociup-serve-limit");
    let write = format!("{host}/team/*");
    let limit = 5;
    let s = Served::start(
        d,
        &[
            "--tokens",
            "tokens.json",
            "--catalog",
            "oci:catalog",
            "--allow-read",
            "oci:base",
            "--allow-write",
            &write,
            "--allow-write",
            "oci:catalog",
            "--kubeconfig",
            &k.kubeconfig,
            "--allow-namespace",
            "ociup-serve-limit-*",
            "--work-limit",
            &limit.to_string(),
        ],
        &[],
    );
    // The new image's manifest is never answered: the regeneration stalls once its Job is held.
    proxy.arm("PUT /v2/team/slow/manifests/");
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    let asked = now();
    let r = s.call(
        "POST",
        "/v1/nicks/slow/runs",
        Some(&alice),
        Some((
            "application/json",
            format!(r#"{{"namespace": "{}"}}"#, ns.name).as_bytes(),
        )),
    );
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let path = format!("/v1/runs/{}", r.json()["id"].as_str().unwrap());
    proxy.wait_held(std::time::Duration::from_secs(30), || s.log());
    // Held, carrying the deadline its limit gives (from the moment the work began).
    let mut held = Vec::new();
    k.until("the run's held Job", || {
        held = k.jobs_of(&ns.name, "slow");
        !held.is_empty()
    });
    let seen = now();
    let job = serde_json::to_value(&held[0]).unwrap();
    assert_eq!(job["spec"]["suspend"], true, "{job}");
    let deadline = job["metadata"]["annotations"]["ociup.dev/deadline"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        ociup_core::time::rfc3339(asked + limit) <= deadline
            && deadline <= ociup_core::time::rfc3339(seen + limit),
        "{deadline}: {limit} s after the work began, between {asked} and {seen}"
    );
    assert_eq!(
        s.call("GET", &path, Some(&alice), None).json()["state"],
        "pending"
    );
    let mut got = serde_json::Value::Null;
    k.until("the run's end", || {
        got = s.call("GET", &path, Some(&alice), None).json();
        got["state"] != "pending"
    });
    let ended = now();
    assert_eq!(got["state"], "failed", "{got}");
    assert!(ended >= asked + limit, "ended after {} s", ended - asked);
    let error = got["error"].as_str().unwrap();
    assert!(
        error.starts_with(&format!(
            "running slow: not done by {deadline} ({limit} s after its work began, the \
             service's bound of a run's work, --work-limit): "
        )),
        "{error}"
    );
    assert!(got["job_left"].is_null(), "{got}");
    // The held Job is gone; nothing was recorded.
    assert!(k.jobs_of(&ns.name, "slow").is_empty());
    let history = json(&ok_at(d, &["history", "slow", "--json"]));
    assert_eq!(history.as_array().unwrap().len(), 1, "{history}");
}

/// `register` and `run` through the service: its own file, sharing these helpers.
#[path = "serve_run.rs"]
mod through;

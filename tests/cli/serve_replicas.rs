//! Two `ociup serve` replicas (the real binary) over one catalog in the real registry: concurrent
//! resolves on both record one version per nick; a replica SIGKILLed in the middle of an upgrade
//! is finished by the next request on the other one.
//!
//! The replicas reach the registry through a loopback TCP proxy of this test that forwards bytes
//! as they come and, once armed with a request line, holds the registry's answer to the first
//! request that starts with it: the upgrade is then observably in progress (the image written,
//! the registry's log showing the catalog's upload begun, nothing recorded) when the replica is
//! killed. Every reference names the proxy's address, so both replicas and the local commands
//! see one registry.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use crate::registry_support::{RegistryOptions, TestRegistry};
use crate::support::{fixtures, json};

/// A forwarding proxy to `127.0.0.1:upstream`; see the module documentation. Also used by
/// `serve.rs` to hold a run's regeneration past its work limit.
pub(crate) struct Proxy {
    port: u16,
    /// The request line (its start) whose answer to hold, once; `None`: forward everything.
    armed: Arc<Mutex<Option<String>>>,
    /// Connections whose answers are held.
    held: Arc<AtomicUsize>,
}

impl Proxy {
    pub(crate) fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let armed: Arc<Mutex<Option<String>>> = Arc::default();
        let held = Arc::new(AtomicUsize::new(0));
        let (a, h) = (Arc::clone(&armed), Arc::clone(&held));
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let hold = Arc::new(AtomicBool::new(false));
                let (mut c_in, mut s_out) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (a, h, hold_in) = (Arc::clone(&a), Arc::clone(&h), Arc::clone(&hold));
                // Client to registry: every byte forwarded; the armed request line marks the
                // connection held (its request still goes to the registry).
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match c_in.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        {
                            let mut armed = a.lock().unwrap();
                            if armed
                                .as_deref()
                                .is_some_and(|line| buf[..n].starts_with(line.as_bytes()))
                            {
                                *armed = None;
                                hold_in.store(true, Ordering::SeqCst);
                                h.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                        if s_out.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = s_out.shutdown(std::net::Shutdown::Write);
                });
                // Registry to client: forwarded unless the connection is held (then dropped).
                let (mut s_in, mut c_out) = (server, client);
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match s_in.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if hold.load(Ordering::SeqCst) {
                            continue;
                        }
                        if c_out.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    if !hold.load(Ordering::SeqCst) {
                        let _ = c_out.shutdown(std::net::Shutdown::Write);
                    }
                });
            }
        });
        Proxy { port, armed, held }
    }

    pub(crate) fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Holds the answer to the next request whose request line starts with `line`.
    pub(crate) fn arm(&self, line: &str) {
        *self.armed.lock().unwrap() = Some(line.to_owned());
    }

    /// Waits until an armed request was seen; panics after `limit`.
    pub(crate) fn wait_held(&self, limit: Duration, what: impl Fn() -> String) {
        let deadline = Instant::now() + limit;
        while self.held.load(Ordering::SeqCst) == 0 {
            assert!(Instant::now() < deadline, "nothing held: {}", what());
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// A running `ociup serve` replica; killed on drop.
struct Replica {
    child: Child,
    addr: String,
    log: PathBuf,
}

impl Replica {
    fn start(dir: &Path, name: &str, host: &str) -> Replica {
        let log = dir.join(format!("{name}.log"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_ociup"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--tokens",
                "tokens.json",
            ])
            .args(["--catalog", &format!("{host}/ociup/catalog")])
            .args(["--allow-read", &format!("{host}/base/*")])
            .args(["--allow-write", &format!("{host}/apps/*")])
            .args(["--allow-write", &format!("{host}/ociup/catalog")])
            .args(["--sign-key", "signer.key"])
            .args(["--identity", &format!("ociup-serve@{name}")])
            .current_dir(dir)
            .env_remove("OCIUP_SERVER")
            .env_remove("OCIUP_SIGNING_KEY")
            .env("SOURCE_DATE_EPOCH", "1700000000")
            // A cache of its own, as on another machine.
            .env("XDG_CACHE_HOME", dir.join(format!("{name}-cache")))
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("ociup serve starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("ociup serve: listening on http://")
            .unwrap_or_else(|| {
                panic!(
                    "{name}: no address printed ({line:?}): {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            })
            .to_owned();
        Replica { child, addr, log }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `POST /v1/nicks/NICK/resolve` (`Connection: close`): the status and body, or `None` when the
/// connection broke before an answer.
fn resolve(addr: &str, token: &str, nick: &str) -> Option<(u16, serde_json::Value)> {
    let mut s = TcpStream::connect(addr).ok()?;
    write!(
        s,
        "POST /v1/nicks/{nick}/resolve HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Authorization: Bearer {token}\r\nContent-Length: 0\r\n\r\n"
    )
    .ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    // axum answers JSON with Content-Length (no chunks).
    Some((status, json(body)))
}

/// ociup locally in `dir`, with the registry catalog and the signing key: stdout.
fn local(dir: &Path, host: &str, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_ociup"))
        .args(args)
        .current_dir(dir)
        .env("OCIUP_CATALOG", format!("{host}/ociup/catalog"))
        .env("OCIUP_ACTOR", "tester")
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .env("XDG_CACHE_HOME", dir.join("local-cache"))
        .env("OCIUP_SIGNING_KEY", dir.join("signer.key"))
        .env_remove("OCIUP_SERVER")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ociup {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The digest an undisturbed regeneration of `nick` reaches now, computed by the library and
/// nothing written: its `before_write` hook refuses the write after learning the plan.
fn planned_digest(dir: &Path, host: &str, nick: &str) -> String {
    use futures_util::FutureExt;
    use ociup_core::managed::manager::{Manager, ManagerOptions, Planned, ResolveOptions};
    let client = ociup_registry::Client::new(ociup_registry::ClientOptions::default()).unwrap();
    let opener = ociup_registry::Opener::new(client);
    let (catalog, _) = opener
        .open(&format!("{host}/ociup/catalog"), false)
        .unwrap();
    let key = ociup_core::managed::build_manifest::Key::load(&dir.join("signer.key")).unwrap();
    let manager = Manager::new(
        opener,
        catalog,
        ManagerOptions {
            actor: "dry-run".into(),
            key: Some(key),
            epoch: 1_700_000_000,
            ..ManagerOptions::default()
        },
    );
    let seen: Arc<Mutex<Option<Planned>>> = Arc::default();
    let keep = Arc::clone(&seen);
    let opts = ResolveOptions {
        before_write: Some(Arc::new(move |p: &Planned| {
            *keep.lock().unwrap() = Some(p.clone());
            async {
                Err(ociup_core::Error::InvalidChange {
                    reason: "dry run".into(),
                })
            }
            .boxed()
        })),
        ..ResolveOptions::default()
    };
    let refused = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(manager.resolve(nick, opts));
    assert!(refused.is_err(), "the dry run wrote: {refused:?}");
    let planned = seen
        .lock()
        .unwrap()
        .clone()
        .expect("a regeneration planned");
    assert!(planned.new_image, "{planned:?}");
    planned.digest
}

fn history(dir: &Path, host: &str, nick: &str) -> Vec<serde_json::Value> {
    json(&local(dir, host, &["history", nick, "--json"]))
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn two_replicas_record_one_version_and_finish_a_killed_upgrade() {
    let reg = TestRegistry::start(RegistryOptions::default());
    let proxy = Proxy::start(reg.port());
    let host = proxy.host();
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let base = fixtures().join("base").canonicalize().unwrap();
    local(d, &host, &["keygen", "--out", "signer"]);
    // Two bases, two nicks on each; the nicks differ by an environment variable.
    let nicks = ["n0", "n1", "n2", "n3"];
    let base_of = |i: usize| format!("{host}/base/b{}:latest", i / 2);
    for b in ["b0", "b1"] {
        local(
            d,
            &host,
            &[
                "copy",
                &format!("oci:{}:v1", base.display()),
                &format!("{host}/base/{b}:latest"),
            ],
        );
    }
    std::fs::write(d.join("app.conf"), "mode = test\n").unwrap();
    for (i, nick) in nicks.iter().enumerate() {
        local(
            d,
            &host,
            &[
                "register",
                nick,
                "--base",
                &base_of(i),
                "--to",
                &format!("{host}/apps/{nick}"),
                "--add",
                "app.conf:/etc/app.conf",
                "--env",
                &format!("NICK={nick}"),
            ],
        );
    }
    let carol = local(
        d,
        &host,
        &[
            "token",
            "create",
            "carol",
            "--role",
            "requester",
            "--file",
            "tokens.json",
        ],
    )
    .trim()
    .to_owned();
    let mut a = Replica::start(d, "a", &host);
    let b = Replica::start(d, "b", &host);
    let (log_a, log_b) = (a.log.clone(), b.log.clone());
    let logs = || {
        let read = |p: &PathBuf| std::fs::read_to_string(p).unwrap_or_default();
        format!("--- a ---\n{}\n--- b ---\n{}", read(&log_a), read(&log_b))
    };

    // Both bases move; 16 resolves at once, each nick asked twice on each replica.
    for b in ["b0", "b1"] {
        local(
            d,
            &host,
            &[
                "copy",
                &format!("oci:{}:v2", base.display()),
                &format!("{host}/base/{b}:latest"),
            ],
        );
    }
    let barrier = Arc::new(Barrier::new(16));
    type Answer = (usize, String, Option<(u16, serde_json::Value)>);
    let answers: Vec<Answer> = (0..16)
        .map(|i| {
            let addr = if i % 2 == 0 { &a.addr } else { &b.addr }.clone();
            let (token, barrier) = (carol.clone(), Arc::clone(&barrier));
            let nick = nicks[(i / 2) % 4].to_owned();
            std::thread::spawn(move || {
                barrier.wait();
                (i, nick.clone(), resolve(&addr, &token, &nick))
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect();
    for nick in nicks {
        let mine: Vec<&serde_json::Value> = answers
            .iter()
            .filter(|(_, n, _)| n == nick)
            .map(|(i, _, r)| {
                let (status, body) = r
                    .as_ref()
                    .unwrap_or_else(|| panic!("request {i} broke\n{}", logs()));
                assert_eq!(*status, 200, "request {i}: {body}\n{}", logs());
                body
            })
            .collect();
        assert_eq!(mine.len(), 4);
        let hist = history(d, &host, nick);
        assert_eq!(
            hist.len(),
            2,
            "{nick}: one new version\n{hist:?}\n{}",
            logs()
        );
        for r in &mine {
            assert_eq!(r["version"], 2, "{nick}: {r}");
            assert_eq!(r["digest"], hist[0]["digest"], "{nick}: {r}");
            assert!(r["upgraded"].is_boolean(), "{nick}: {r}");
        }
        // Someone upgraded it; the answers that did not, adopted or found it.
        assert!(
            mine.iter().any(|r| r["upgraded"] == true),
            "{nick}: {mine:?}"
        );
    }

    // Each replica counts in ociup_upgrades_total the versions whose record the history holds
    // as its own (by its identity), once it has looked (a few seconds after recording them);
    // both answered `upgraded` for a nick they regenerated at once.
    let upgrades = |addr: &str| -> u64 {
        let mut s = TcpStream::connect(addr).unwrap();
        write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).unwrap();
        let line = raw.lines().find(|l| l.starts_with("ociup_upgrades_total "));
        line.unwrap().rsplit(' ').next().unwrap().parse().unwrap()
    };
    let recorded_by = |replica: &str| {
        nicks
            .iter()
            .filter(|n| history(d, &host, n)[0]["via"] == format!("ociup-serve@{replica}"))
            .count() as u64
    };
    let (by_a, by_b) = (recorded_by("a"), recorded_by("b"));
    assert_eq!(
        by_a + by_b,
        4,
        "each nick's version 2 recorded by a replica"
    );
    let end = Instant::now() + ociup_serve::COUNT_AFTER + Duration::from_secs(20);
    while upgrades(&a.addr) + upgrades(&b.addr) < 4 {
        assert!(Instant::now() < end, "not counted\n{}", logs());
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(ociup_serve::COUNT_AFTER);
    let answered = answers
        .iter()
        .filter(|(_, _, r)| r.as_ref().is_some_and(|(_, b)| b["upgraded"] == true))
        .count();
    assert_eq!(
        (upgrades(&a.addr), upgrades(&b.addr)),
        (by_a, by_b),
        "{answered} answers said upgraded\n{}",
        logs()
    );

    // Each replica answers each nick as current now (and keeps what it read). Then b1 moves
    // back: a upgrades n2; b, which answered n2's version 2 a moment ago, answers a's version
    // 3 (the catalog tag moved), and finds n3 due by itself (the base tag moved).
    for nick in nicks {
        for r in [&a, &b] {
            let (status, body) = resolve(&r.addr, &carol, nick).unwrap();
            assert_eq!(status, 200, "{body}");
            assert_eq!(
                (&body["version"], &body["upgraded"]),
                (&2.into(), &false.into())
            );
        }
    }
    local(
        d,
        &host,
        &[
            "copy",
            &format!("oci:{}:v1", base.display()),
            &format!("{host}/base/b1:latest"),
        ],
    );
    let (_, up) = resolve(&a.addr, &carol, "n2").unwrap();
    assert_eq!(
        (&up["version"], &up["upgraded"]),
        (&3.into(), &true.into()),
        "{up}"
    );
    let (_, seen) = resolve(&b.addr, &carol, "n2").unwrap();
    assert_eq!(
        (&seen["version"], &seen["upgraded"]),
        (&3.into(), &false.into()),
        "{seen}"
    );
    assert_eq!(seen["digest"], up["digest"]);
    let (_, up3) = resolve(&b.addr, &carol, "n3").unwrap();
    assert_eq!(
        (&up3["version"], &up3["upgraded"]),
        (&3.into(), &true.into()),
        "{up3}"
    );
    assert_eq!(history(d, &host, "n2").len(), 3);

    // n0's base moves to an image neither replica has seen; replica a starts the upgrade and
    // is killed once it has written the image and begun the catalog's upload.
    local(
        d,
        &host,
        &[
            "append",
            "--base",
            &format!("oci:{}:v2", base.display()),
            "--add",
            "app.conf:/etc/extra.conf",
            "--to",
            &format!("{host}/base/b0:latest"),
        ],
    );
    let before = history(d, &host, "n0");
    let expected = planned_digest(d, &host, "n0");
    let put_before = reg.requests("PUT", "/v2/apps/n0/manifests/");
    proxy.arm("POST /v2/ociup/catalog/blobs/uploads/");
    let in_flight = {
        let (addr, token) = (a.addr.clone(), carol.clone());
        std::thread::spawn(move || resolve(&addr, &token, "n0"))
    };
    proxy.wait_held(Duration::from_secs(60), logs);
    // In progress: the image is written; the catalog's upload began (in the registry's log).
    let deadline = Instant::now() + Duration::from_secs(10);
    while reg.requests("POST", "/v2/ociup/catalog/blobs/uploads/") == 0
        || reg.requests("PUT", "/v2/apps/n0/manifests/") == put_before
    {
        assert!(Instant::now() < deadline, "{}", reg.log());
        std::thread::sleep(Duration::from_millis(10));
    }
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    let cut = in_flight.join().unwrap();
    assert!(
        cut.as_ref().is_none_or(|(s, _)| *s != 200),
        "the killed replica answered: {cut:?}"
    );
    assert_eq!(
        history(d, &host, "n0").len(),
        before.len(),
        "nothing recorded by the killed replica"
    );

    // The next request, on b, finishes it: one version, the undisturbed regeneration's digest.
    let (status, r) = resolve(&b.addr, &carol, "n0").expect("b answers");
    assert_eq!(status, 200, "{r}\n{}", logs());
    assert_eq!(r["digest"], expected.as_str(), "{r}");
    assert_eq!(r["version"], 3, "{r}");
    assert_eq!(r["upgraded"], true, "{r}");
    let after = history(d, &host, "n0");
    assert_eq!(after.len(), before.len() + 1, "{after:?}");
    assert_eq!(after[0]["digest"], expected.as_str());
    assert_eq!(after[0]["actor"], "carol");
    assert_eq!(after[1], before[0]);
    let verified = json(&local(
        d,
        &host,
        &["verify", "n0", "--key", "signer.pub", "--json"],
    ));
    assert_eq!(verified["digest"], expected.as_str(), "{verified}");
    assert_eq!(verified["version"], 3, "{verified}");
    // And b answers it again as current.
    let (status, again) = resolve(&b.addr, &carol, "n0").unwrap();
    assert_eq!(
        (status, &again["upgraded"]),
        (200, &serde_json::json!(false))
    );
    assert_eq!(again["digest"], expected.as_str());
}

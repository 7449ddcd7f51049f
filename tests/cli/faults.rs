//! Faults, against the real registry: the registry killed in the middle of a regeneration
//! (between the image and the version record) and started again; a base tag deleted.
//!
//! To kill the registry at an exact point, ociup talks to it through a forwarding proxy of the
//! test's own ([`Proxy`], on 127.0.0.1): the proxy passes bytes through, and once the registry
//! has answered a chosen request with a success, it kills the registry (SIGKILL, waited for)
//! and closes its own port before it passes that answer on. So ociup learns that the write
//! succeeded, and every request after it finds nobody listening, as after a crash.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::Value;

use crate::registry_support::{AuthMode, RegistryOptions, TestRegistry};
use crate::support::{fixtures, json, tool};

/// Locks, whether or not another thread panicked holding the lock.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the proxy does once: after the registry answers the request whose request line starts
/// with `request` with a 2xx, `action` runs, before the answer is passed on.
struct Trip {
    request: String,
    action: Box<dyn FnOnce() + Send>,
}

/// What the proxy saw when its trip fired.
#[derive(Clone, Debug)]
struct Tripped {
    /// The request line (as much of it as had arrived).
    request: String,
    /// The registry's status line.
    status: String,
    /// The registry's `Docker-Content-Digest` header, if any.
    digest: Option<String>,
}

struct Shared {
    upstream: SocketAddr,
    port: u16,
    trip: Mutex<Option<Trip>>,
    tripped: Mutex<Option<Tripped>>,
    /// Set when the trip fired: nothing passes any more until [`Proxy::resume`].
    down: AtomicBool,
    /// The accepting thread runs while this is set.
    accepting: AtomicBool,
    acceptor: Mutex<Option<JoinHandle<()>>>,
    /// The client side of every open connection, to cut them all when the trip fires.
    clients: Mutex<HashMap<u64, TcpStream>>,
    next_id: AtomicU64,
}

/// A forwarding TCP proxy on a free port of 127.0.0.1 to a registry of 127.0.0.1, that reads
/// just enough of HTTP/1.1 to fire a [`Trip`]. Its threads are detached; they end with their
/// connections.
struct Proxy {
    shared: Arc<Shared>,
}

impl Proxy {
    fn start(upstream_port: u16) -> Proxy {
        let listener =
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("the proxy binds 127.0.0.1:0");
        let port = listener.local_addr().expect("the proxy's address").port();
        let shared = Arc::new(Shared {
            upstream: SocketAddr::from((Ipv4Addr::LOCALHOST, upstream_port)),
            port,
            trip: Mutex::new(None),
            tripped: Mutex::new(None),
            down: AtomicBool::new(false),
            accepting: AtomicBool::new(false),
            acceptor: Mutex::new(None),
            clients: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
        });
        start_accepting(&shared, listener);
        Proxy { shared }
    }

    /// `127.0.0.1:PORT`: the registry host ociup is given.
    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.shared.port)
    }

    /// Arms the trip: see [`Trip`].
    fn trip_after(&self, request: &str, action: Box<dyn FnOnce() + Send>) {
        *lock(&self.shared.trip) = Some(Trip {
            request: request.to_owned(),
            action,
        });
    }

    /// What the trip saw, if it fired.
    fn tripped(&self) -> Option<Tripped> {
        lock(&self.shared.tripped).clone()
    }

    /// Listens on the same port again and passes everything through (after the registry is back).
    fn resume(&self) {
        assert!(
            !self.shared.accepting.load(Ordering::SeqCst),
            "the proxy is listening already"
        );
        // std sets SO_REUSEADDR: the connections of before, in TIME_WAIT, do not hold the port.
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, self.shared.port))
            .unwrap_or_else(|e| panic!("the proxy cannot listen again on {}: {e}", self.host()));
        self.shared.down.store(false, Ordering::SeqCst);
        start_accepting(&self.shared, listener);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        stop_accepting(&self.shared);
        for (_, c) in lock(&self.shared.clients).drain() {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

fn start_accepting(shared: &Arc<Shared>, listener: TcpListener) {
    listener
        .set_nonblocking(true)
        .expect("the proxy's listener goes non-blocking");
    shared.accepting.store(true, Ordering::SeqCst);
    let s = Arc::clone(shared);
    let handle = std::thread::spawn(move || {
        while s.accepting.load(Ordering::SeqCst) {
            match listener.accept() {
                Ok((client, _)) => {
                    let s = Arc::clone(&s);
                    std::thread::spawn(move || serve(client, &s));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        // The listener is dropped here: the port refuses connections from now on.
    });
    *lock(&shared.acceptor) = Some(handle);
}

/// Stops accepting and closes the port; returns once it is closed.
fn stop_accepting(shared: &Shared) {
    shared.accepting.store(false, Ordering::SeqCst);
    let handle = lock(&shared.acceptor).take();
    if let Some(h) = handle {
        let _ = h.join();
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// One client connection: its own connection to the registry, bytes copied both ways.
fn serve(client: TcpStream, shared: &Arc<Shared>) {
    if shared.down.load(Ordering::SeqCst) {
        return;
    }
    let Ok(upstream) = TcpStream::connect_timeout(&shared.upstream, Duration::from_secs(5)) else {
        return;
    };
    let _ = client.set_nonblocking(false);
    let id = shared.next_id.fetch_add(1, Ordering::SeqCst);
    if let Ok(c) = client.try_clone() {
        lock(&shared.clients).insert(id, c);
    }
    // The request line of the trip's request, once this connection has forwarded it.
    let armed: Arc<Mutex<Option<String>>> = Arc::default();
    {
        let (Ok(mut from), Ok(mut to)) = (client.try_clone(), upstream.try_clone()) else {
            return;
        };
        let (shared, armed) = (Arc::clone(shared), Arc::clone(&armed));
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            // The tail of what came before, so that a request line split between reads is found.
            let mut window: Vec<u8> = Vec::new();
            while let Ok(n) = from.read(&mut buf) {
                if n == 0 || shared.down.load(Ordering::SeqCst) {
                    break;
                }
                if let Some(trip) = lock(&shared.trip).as_ref() {
                    let pattern = trip.request.as_bytes();
                    window.extend_from_slice(&buf[..n]);
                    if let Some(at) = find(&window, pattern) {
                        let rest = &window[at..];
                        let end = find(rest, b"\r\n").unwrap_or(rest.len());
                        *lock(&armed) = Some(String::from_utf8_lossy(&rest[..end]).into_owned());
                        window.clear();
                    } else {
                        let keep = window.len().min(pattern.len());
                        window.drain(..window.len() - keep);
                    }
                }
                // Armed before the request goes on, so its answer cannot come first.
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            let _ = to.shutdown(Shutdown::Write);
        });
    }
    let (mut from, mut to) = (upstream, client);
    let mut buf = vec![0u8; 64 * 1024];
    let mut head: Vec<u8> = Vec::new();
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 {
            break;
        }
        if lock(&armed).is_none() {
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
            continue;
        }
        // The answer to the trip's request: its head is read whole before anything passes.
        head.extend_from_slice(&buf[..n]);
        let Some(end) = find(&head, b"\r\n\r\n") else {
            continue;
        };
        let request = lock(&armed).take().unwrap_or_default();
        let text = String::from_utf8_lossy(&head[..end]).into_owned();
        let status = text.lines().next().unwrap_or("").to_owned();
        let success = status.split(' ').nth(1).is_some_and(|c| c.starts_with('2'));
        let trip = if success {
            lock(&shared.trip).take()
        } else {
            None
        };
        if let Some(trip) = trip {
            shared.down.store(true, Ordering::SeqCst);
            (trip.action)();
            stop_accepting(shared);
            let digest = text.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("docker-content-digest")
                    .then(|| v.trim().to_owned())
            });
            *lock(&shared.tripped) = Some(Tripped {
                request,
                status,
                digest,
            });
            // This answer reaches the client; then every connection is cut.
            let _ = to.write_all(&head);
            let _ = to.flush();
            let _ = to.shutdown(Shutdown::Write);
            for (other, c) in lock(&shared.clients).drain() {
                if other != id {
                    let _ = c.shutdown(Shutdown::Both);
                }
            }
            // Let the client read the answer and close; what it still sends goes nowhere.
            let _ = to.set_read_timeout(Some(Duration::from_secs(30)));
            while matches!(to.read(&mut buf), Ok(n) if n > 0) {}
            return;
        }
        if to.write_all(&head).is_err() {
            break;
        }
        head.clear();
    }
    let _ = to.shutdown(Shutdown::Write);
    lock(&shared.clients).remove(&id);
}

/// Runs ociup in a directory with a catalog in a registry, a fixed actor and epoch.
struct Ociup {
    dir: PathBuf,
    catalog: String,
}

impl Ociup {
    fn run(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_ociup"))
            .args(args)
            .current_dir(&self.dir)
            .env("OCIUP_CATALOG", &self.catalog)
            .env("OCIUP_ACTOR", "tester")
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .env_remove("OCIUP_SIGNING_KEY")
            .env("NO_PROXY", "*")
            .env("no_proxy", "*")
            .output()
            .expect("ociup runs");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn ok(&self, args: &[&str]) -> String {
        let (code, out, err) = self.run(args);
        assert_eq!(code, 0, "ociup {args:?}: {out}{err}");
        out
    }

    fn json(&self, args: &[&str]) -> Value {
        json(&self.ok(args))
    }
}

fn base(tag: &str) -> String {
    format!("oci:{}:{tag}", fixtures().join("base").display())
}

/// The access-log request lines of a registry log (`PUT /v2/... HTTP/1.1`), in order.
fn requests(log: &str) -> Vec<String> {
    log.lines()
        .filter_map(|l| {
            let (_, r) = l.split_once("] \"")?;
            let (r, _) = r.split_once('"')?;
            r.contains(" HTTP/").then(|| r.to_owned())
        })
        .collect()
}

/// Registers `trainer` on base v1 (through the proxy, with the catalog in the same registry),
/// moves the base to v2, and resolves with the registry killed right after it stored the
/// request that starts with `kill_after`; then checks the nick, restarts the registry, and
/// checks that the next resolve completes the upgrade with the image the killed run pushed.
fn a_regeneration_killed_after(kill_after: &str, sign: bool) {
    let reg = Arc::new(Mutex::new(TestRegistry::start(RegistryOptions {
        auth: AuthMode::None,
        tls: false,
    })));
    let direct = lock(&reg).host();
    let proxy = Proxy::start(lock(&reg).port());
    let host = proxy.host();
    let t = tempfile::tempdir().unwrap();
    let o = Ociup {
        dir: t.path().to_owned(),
        catalog: format!("docker://{host}/ociup/catalog"),
    };
    let base_ref = format!("{host}/lib/base:latest");
    let target = format!("{host}/team/trainer");
    o.ok(&["copy", &base("v1"), &base_ref]);
    std::fs::create_dir(t.path().join("app")).unwrap();
    std::fs::write(t.path().join("app/run.sh"), b"#!/bin/sh\necho run\n").unwrap();
    let signing: &[&str] = if sign {
        o.ok(&["keygen", "--out", "k"]);
        &["--sign-key", "k.key"]
    } else {
        &[]
    };
    let mut register = vec![
        "register",
        "trainer",
        "--base",
        &base_ref,
        "--to",
        &target,
        "--add",
        "app:/opt/app",
        "--env",
        "MODE=train",
        "--json",
    ];
    register.extend_from_slice(signing);
    let v1 = o.json(&register);
    assert_eq!(v1["number"], 1, "{v1}");

    // The base moves, pushed by skopeo straight to the registry (the same storage).
    tool(
        "skopeo",
        &[
            "copy",
            "--dest-tls-verify=false",
            &base("v2"),
            &format!("docker://{direct}/lib/base:latest"),
        ],
    );

    // The regeneration, with the registry killed once it has stored `kill_after`.
    let killer = Arc::clone(&reg);
    proxy.trip_after(kill_after, Box::new(move || lock(&killer).kill()));
    let mut resolve = vec!["resolve", "trainer", "--json"];
    resolve.extend_from_slice(signing);
    let (code, out, err) = o.run(&resolve);
    let tripped = proxy.tripped().unwrap_or_else(|| {
        panic!("the registry never answered {kill_after:?} with success: exit {code}\n{out}{err}")
    });
    assert!(!lock(&reg).is_running());
    assert!(tripped.status.contains(" 201 "), "{tripped:?}");
    // What the registry answered, the last thing it answered: nothing after it was written.
    let answered = requests(&lock(&reg).log());
    assert!(
        answered
            .last()
            .is_some_and(|r| r.starts_with(kill_after) && tripped.request.starts_with(r)),
        "the last request the registry answered is the one the proxy saw, {tripped:?}: {answered:#?}"
    );
    assert_ne!(code, 0, "the interrupted resolve fails: {out}{err}");
    assert!(out.trim().is_empty(), "nothing claims success: {out}");
    assert!(
        err.contains("cannot connect") && err.contains(&host),
        "the error names the registry that went away: {err}"
    );

    lock(&reg).restart();
    proxy.resume();

    // The image the killed run pushed is there, tagged as version 2, but not recorded.
    let pushed = o.json(&["inspect", &format!("docker://{target}:trainer-2"), "--json"]);
    let pushed = pushed["digest"].as_str().unwrap().to_owned();
    assert_ne!(pushed, v1["digest"].as_str().unwrap());
    if kill_after.ends_with("/manifests/trainer ") {
        assert_eq!(
            tripped.digest.as_deref(),
            Some(pushed.as_str()),
            "{tripped:?}"
        );
    }
    // The nick still resolves to version 1, whose image exists.
    let offline = o.json(&["resolve", "trainer", "--offline", "--json"]);
    assert_eq!(
        (
            &offline["version"],
            &offline["digest"],
            &offline["upgraded"]
        ),
        (&v1["number"], &v1["digest"], &Value::Bool(false)),
        "{offline}"
    );
    let seen = json(&tool(
        "skopeo",
        &[
            "inspect",
            "--tls-verify=false",
            offline["reference"].as_str().unwrap(),
        ],
    ));
    assert_eq!(seen["Digest"], v1["digest"], "version 1's image is there");
    let history = o.json(&["history", "trainer", "--json"]);
    assert_eq!(history.as_array().unwrap().len(), 1, "{history}");
    assert_eq!(history[0]["reason"], "registered");
    let status = o.json(&["status", "--json"]);
    assert_eq!(
        (&status[0]["status"], &status[0]["version"]),
        (&Value::from("stale"), &Value::from(1)),
        "{status}"
    );

    // The next resolve completes the upgrade, with the same image (builds are deterministic).
    let up = o.json(&resolve);
    assert_eq!(up["upgraded"], true, "{up}");
    assert_eq!(up["version"], 2, "{up}");
    assert_eq!(up["digest"].as_str(), Some(pushed.as_str()), "{up}");
    assert_eq!(up["previous_base_digest"], v1["base_digest"], "{up}");
    let history = o.json(&["history", "trainer", "--json"]);
    let versions: Vec<(u64, &str, &str)> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["number"].as_u64().unwrap(),
                v["reason"].as_str().unwrap(),
                v["digest"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        versions,
        [
            (2, "base moved", pushed.as_str()),
            (1, "registered", v1["digest"].as_str().unwrap())
        ]
    );
    let again = o.json(&resolve);
    assert_eq!(
        (&again["upgraded"], &again["digest"]),
        (&Value::Bool(false), &up["digest"]),
        "{again}"
    );
    let tagged = o.json(&["inspect", &format!("docker://{target}:trainer"), "--json"]);
    assert_eq!(tagged["digest"], up["digest"]);

    if sign {
        o.ok(&["verify", "trainer", "--key", "k.pub"]);
        // The build manifest written before the kill and the one written again are the same
        // bytes: one referrer is listed.
        let hex = pushed.trim_start_matches("sha256:");
        let index = json(&tool(
            "skopeo",
            &[
                "inspect",
                "--raw",
                "--tls-verify=false",
                &format!("docker://{target}:sha256-{hex}"),
            ],
        ));
        assert_eq!(index["manifests"].as_array().unwrap().len(), 1, "{index}");
    }
}

#[test]
fn a_registry_killed_after_the_image_tag_keeps_the_nick_and_the_next_resolve_upgrades() {
    // The image is stored and tagged `trainer-2` and `trainer`; the version record is not.
    a_regeneration_killed_after("PUT /v2/team/trainer/manifests/trainer ", false);
}

#[test]
fn a_registry_killed_after_the_build_manifest_keeps_the_nick_and_the_next_resolve_upgrades() {
    // Everything but the record: the image, its tags, and the signed build manifest's referrer
    // with its tag index (the last write before the record).
    a_regeneration_killed_after("PUT /v2/team/trainer/manifests/sha256-", true);
}

#[test]
fn a_deleted_base_tag_fails_clearly_or_answers_the_last_good_version_as_stale() {
    // The layout form (the base's directory removed) is in managed.rs; this is the registry's:
    // the base's tag deleted, the registry answering 404.
    let reg = TestRegistry::start(RegistryOptions {
        auth: AuthMode::None,
        tls: false,
    });
    let host = reg.host();
    let t = tempfile::tempdir().unwrap();
    let o = Ociup {
        dir: t.path().to_owned(),
        catalog: format!("docker://{host}/ociup/catalog"),
    };
    let base_ref = format!("{host}/lib/base:latest");
    o.ok(&["copy", &base("v1"), &base_ref]);
    o.ok(&[
        "register",
        "svc",
        "--base",
        &base_ref,
        "--to",
        &format!("{host}/team/svc"),
        "--env",
        "A=1",
    ]);
    let good = o.json(&["resolve", "svc", "--json"]);
    tool(
        "skopeo",
        &[
            "delete",
            "--tls-verify=false",
            &format!("docker://{base_ref}"),
        ],
    );
    let writes = |reg: &TestRegistry| -> usize {
        ["PUT", "POST", "PATCH", "DELETE"]
            .iter()
            .map(|m| reg.requests(m, "/v2/"))
            .sum()
    };
    let before = writes(&reg);
    let (code, out, err) = o.run(&["resolve", "svc"]);
    assert_ne!(code, 0, "{out}{err}");
    assert!(out.trim().is_empty(), "{out}");
    assert!(
        err.contains("lib/base") && err.contains("latest"),
        "the error names the base: {err}"
    );
    let stale = o.json(&["resolve", "svc", "--if-unreachable", "stale", "--json"]);
    assert_eq!(
        (&stale["stale"], &stale["digest"], &stale["version"]),
        (&Value::Bool(true), &good["digest"], &good["version"]),
        "{stale}"
    );
    let status = o.json(&["status", "--json"]);
    assert_eq!(status[0]["status"], "unknown", "{status}");
    assert_eq!(writes(&reg), before, "no write: {}", reg.log());
    assert_eq!(
        o.json(&["history", "svc", "--json"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // The last good version's image is still there to run.
    let seen = json(&tool(
        "skopeo",
        &[
            "inspect",
            "--tls-verify=false",
            stale["reference"].as_str().unwrap(),
        ],
    ));
    assert_eq!(seen["Digest"], good["digest"]);
}

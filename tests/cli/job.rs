//! `ociup job`: a nick's version as a Kubernetes Job, printed, and submitted to a real
//! kube-apiserver and kube-controller-manager (v1.26, from `../shared/k8s`, started by
//! `scripts/test.sh`, which exports KUBECONFIG, KUBE_URL and KUBE_TOKEN). Without them the
//! cluster tests say they were skipped. Each cluster test works in a namespace of its own. There
//! is no kubelet: pods stay Pending, so a Job's end is the test patching its status (as an admin
//! would), which is what the API server then serves to a client.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use ociup_kube::k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use ociup_kube::k8s_openapi::api::authentication::v1::TokenRequest;
use ociup_kube::k8s_openapi::api::authorization::v1::SubjectAccessReview;
use ociup_kube::k8s_openapi::api::batch::v1::Job;
use ociup_kube::k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use ociup_kube::k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use ociup_kube::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use ociup_kube::kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use ociup_kube::{Cluster, ConnectOptions, keys};
use serde_json::Value;

use crate::registry_support::{RegistryOptions, TestRegistry};
use crate::support::{copy_tree, fixtures, json, ociup_at, ok_at};

/// A nick registered on a base in a layout (`base:latest`, the fixture's v1), its versions
/// pushed to a real registry.
struct App {
    t: tempfile::TempDir,
    reg: TestRegistry,
    nick: &'static str,
}

impl App {
    fn new(nick: &'static str) -> App {
        let reg = TestRegistry::start(RegistryOptions::default());
        let t = tempfile::tempdir().unwrap();
        copy_tree(&fixtures().join("base"), &t.path().join("base"));
        std::fs::write(t.path().join("app.txt"), b"app\n").unwrap();
        let app = App { t, reg, nick };
        let target = format!("{}/team/{nick}", app.reg.host());
        app.ok(&[
            "register",
            nick,
            "--base",
            &app.base("latest"),
            "--to",
            &target,
            "--add",
            "app.txt:/opt/app.txt",
        ]);
        app
    }

    fn dir(&self) -> &Path {
        self.t.path()
    }

    fn base(&self, tag: &str) -> String {
        format!("oci:{}:{tag}", self.dir().join("base").display())
    }

    fn ok(&self, args: &[&str]) -> String {
        ok_at(self.dir(), args)
    }

    fn run(&self, args: &[&str]) -> (i32, String, String) {
        ociup_at(self.dir(), args)
    }

    /// The base's tag moves to the fixture's v2: an upgrade is due.
    fn move_base(&self) {
        self.ok(&["copy", &self.base("v2"), &self.base("latest")]);
        let (code, out, err) = self.run(&["resolve", self.nick, "--check"]);
        assert_eq!((code, out.trim()), (0, "upgrade due"), "{err}");
    }

    /// The digests of the nick's versions, oldest first.
    fn versions(&self) -> Vec<String> {
        let history = json(&self.ok(&["history", self.nick, "--json"]));
        let mut v: Vec<(u64, String)> = history
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
    }

    /// `ociup ARGS` started in the background, with the environment of [`ociup_at`]
    /// (catalog, actor, SOURCE_DATE_EPOCH, no signing key), its output piped.
    fn spawn(&self, args: &[&str]) -> Ociup {
        let child = Command::new(env!("CARGO_BIN_EXE_ociup"))
            .args(args)
            .current_dir(self.dir())
            .env(
                "OCIUP_CATALOG",
                format!("oci:{}", self.dir().join("catalog").display()),
            )
            .env("OCIUP_ACTOR", "tester")
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .env_remove("OCIUP_SIGNING_KEY")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Ociup(child)
    }

    /// What a cluster pulls for `digest`.
    fn image(&self, digest: &str) -> String {
        format!("{}/team/{}@{digest}", self.reg.host(), self.nick)
    }
}

/// An ociup started by [`App::spawn`].
struct Ociup(std::process::Child);

impl Ociup {
    fn id(&self) -> u32 {
        self.0.id()
    }

    /// Its output once it has exited; killed, and the test failed, after 60 s.
    fn wait_limited(mut self) -> std::process::Output {
        let end = Instant::now() + Duration::from_secs(60);
        while self.0.try_wait().unwrap().is_none() {
            if Instant::now() >= end {
                let _ = self.0.kill();
                let out = self.0.wait_with_output().unwrap();
                panic!(
                    "ociup still running after 60 s, killed: {}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.0.wait_with_output().unwrap()
    }
}

#[test]
fn a_job_is_printed_with_the_version_pinned_by_digest() {
    let app = App::new("printer");
    let v1 = app.versions()[0].clone();
    let job = json(&app.ok(&[
        "job",
        "printer",
        "--json",
        "--namespace",
        "ml",
        "--env",
        "MODE=train",
        "--label",
        "team=ml",
        "--request",
        "cpu=100m",
        "--limit",
        "memory=64Mi",
        "--backoff-limit",
        "0",
        "--ttl-seconds-after-finished",
        "600",
        "--service-account",
        "trainer",
        "--image-pull-secret",
        "pull",
        "--arg",
        "--epochs",
        "--",
        "3",
    ]));
    assert_eq!(job["apiVersion"], "batch/v1");
    assert_eq!(job["kind"], "Job");
    assert_eq!(job["metadata"]["namespace"], "ml");
    assert_eq!(job["metadata"]["generateName"], "printer-v1-");
    for meta in [&job["metadata"], &job["spec"]["template"]["metadata"]] {
        assert_eq!(meta["labels"][keys::NICK], "printer");
        assert_eq!(meta["labels"][keys::VERSION], "1");
        assert_eq!(meta["labels"]["team"], "ml");
        assert_eq!(meta["annotations"][keys::DIGEST], v1.as_str());
        let base_v1 = json(&app.ok(&["inspect", &app.base("v1"), "--json"]));
        assert_eq!(meta["annotations"][keys::BASE_DIGEST], base_v1["digest"]);
    }
    let spec = &job["spec"];
    assert_eq!(spec["backoffLimit"], 0);
    assert_eq!(spec["ttlSecondsAfterFinished"], 600);
    assert_eq!(spec["suspend"], Value::Null);
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["restartPolicy"], "Never");
    assert_eq!(pod["serviceAccountName"], "trainer");
    assert_eq!(pod["imagePullSecrets"][0]["name"], "pull");
    let c = &pod["containers"][0];
    assert_eq!(c["image"], app.image(&v1).as_str());
    assert_eq!(c["args"], serde_json::json!(["--epochs", "3"]));
    assert_eq!(
        c["env"],
        serde_json::json!([{"name": "MODE", "value": "train"}])
    );
    assert_eq!(c["resources"]["requests"]["cpu"], "100m");
    assert_eq!(c["resources"]["limits"]["memory"], "64Mi");

    // A nick kept in a layout: no cluster can pull it.
    let (code, _, err) = app.run(&[
        "register",
        "local",
        "--base",
        &app.base("latest"),
        "--to",
        &format!("oci:{}", app.dir().join("images").display()),
        "--add",
        "app.txt:/opt/app.txt",
    ]);
    assert_eq!(code, 0, "{err}");

    // The base moves. Bad input is refused before the nick is resolved: nothing is written.
    app.move_base();
    for (args, expected) in [
        (vec!["--label", "bad key=x"], "--label \"bad key\""),
        (vec!["--limit", "memory=1GB"], "--limit memory="),
        (
            vec!["--env", "NO_VALUE"],
            "--env \"NO_VALUE\": expected KEY=VALUE",
        ),
        (vec!["--name", "Upper"], "--name \"Upper\""),
    ] {
        let mut all = vec!["job", "printer"];
        all.extend(args);
        let (code, _, err) = app.run(&all);
        assert_eq!(code, 1, "{err}");
        assert!(err.contains(expected), "{expected:?} not in {err}");
    }
    // Cluster flags without --apply: a usage error (2), not silently ignored.
    for (flag, value) in [
        ("--context", "nowhere"),
        ("--kubeconfig", "nowhere"),
        ("--request-timeout", "5s"),
    ] {
        let (code, _, err) = app.run(&["job", "printer", flag, value]);
        assert_eq!(code, 2, "{err}");
        assert!(err.contains("--apply"), "{err}");
    }
    for bad in ["5x", "1d", "s", "1.2.3"] {
        let (code, _, err) = app.run(&["job", "printer", "--apply", "--request-timeout", bad]);
        assert_eq!(code, 2, "{err}");
        assert!(
            err.contains(&format!("{bad:?}: expected a duration: 30s, 1m, 500ms, 0")),
            "{err}"
        );
    }
    assert_eq!(app.versions(), std::slice::from_ref(&v1));
    let (code, out, err) = app.run(&["job", "local"]);
    assert_eq!(code, 1, "{out}");
    assert!(err.contains("kept in an OCI layout"), "{err}");
    assert!(err.contains("--to a registry repository"), "{err}");
    let history = json(&app.ok(&["history", "local", "--json"]));
    assert_eq!(
        history.as_array().unwrap().len(),
        1,
        "nothing written: {history}"
    );

    // --offline runs the current version without asking the base, as resolve does.
    let offline = json(&app.ok(&["job", "printer", "--offline", "--json"]));
    assert_eq!(
        offline["spec"]["template"]["spec"]["containers"][0]["image"],
        app.image(&v1).as_str()
    );
    assert_eq!(app.versions().len(), 1);

    // A Job of the upgrade: written, recorded, printed as YAML with the new digest.
    let (code, yaml, err) = app.run(&["job", "printer"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("printer upgraded to version 2"), "{err}");
    let versions = app.versions();
    assert_eq!(versions.len(), 2);
    assert!(yaml.starts_with("apiVersion: batch/v1\n"), "{yaml}");
    assert!(yaml.contains("kind: Job\n"), "{yaml}");
    assert!(
        yaml.contains(&format!("image: {}\n", app.image(&versions[1]))),
        "{yaml}"
    );
    assert!(
        yaml.contains(&format!("{}: '2'", keys::VERSION))
            || yaml.contains(&format!("{}: \"2\"", keys::VERSION)),
        "the version label stays a string: {yaml}"
    );
    assert!(!yaml.contains(":latest"), "never a tag: {yaml}");
}

/// The API server `scripts/test.sh` started, as an admin; `None` (the test says it was skipped)
/// when there is none.
struct Kube {
    rt: tokio::runtime::Runtime,
    cluster: Cluster,
    kubeconfig: PathBuf,
    token: String,
}

fn kube(test: &str) -> Option<Kube> {
    let (Some(kubeconfig), Ok(token), Some(_)) = (
        std::env::var_os("KUBECONFIG").filter(|k| !k.is_empty()),
        std::env::var("KUBE_TOKEN"),
        std::env::var_os("KUBE_STATE_DIR").filter(|k| !k.is_empty()),
    ) else {
        eprintln!(
            "{test}: skipped: no Kubernetes API server (KUBECONFIG, KUBE_TOKEN and \
             KUBE_STATE_DIR unset: scripts/test.sh starts one from ../shared/k8s, absent here \
             or not started)"
        );
        return None;
    };
    // Never a developer's real cluster: only the loopback one ../shared/k8s/start.sh made.
    let url = std::env::var("KUBE_URL").unwrap_or_default();
    let text = std::fs::read_to_string(&kubeconfig).unwrap_or_default();
    let servers: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("server: "))
        .collect();
    if servers.is_empty()
        || !servers
            .iter()
            .all(|s| s.trim_matches('"').starts_with("https://127.0.0.1:"))
        || !url.starts_with("https://127.0.0.1:")
    {
        eprintln!(
            "{test}: skipped: KUBECONFIG's servers {servers:?} (KUBE_URL {url:?}) are not all \
             on 127.0.0.1: the cluster tests run only against ../shared/k8s/start.sh's server"
        );
        return None;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let kubeconfig = PathBuf::from(kubeconfig);
    let cluster = rt
        .block_on(Cluster::connect(&ConnectOptions {
            kubeconfig: Some(kubeconfig.clone()),
            context: None,
        }))
        .unwrap();
    Some(Kube {
        rt,
        cluster,
        kubeconfig,
        token,
    })
}

impl Kube {
    fn api<K>(&self, ns: &str) -> Api<K>
    where
        K: ociup_kube::kube::Resource<Scope = ociup_kube::k8s_openapi::NamespaceResourceScope>,
        <K as ociup_kube::kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.cluster.client().clone(), ns)
    }

    /// A namespace of the test's own (removed at the end), with its `default` ServiceAccount
    /// (which the controller manager makes, and pods need).
    fn namespace(&self, test: &str) -> NamespaceGuard<'_> {
        let name = format!(
            "{test}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_micros()
        );
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        let all: Api<Namespace> = Api::all(self.cluster.client().clone());
        self.rt
            .block_on(all.create(&PostParams::default(), &ns))
            .unwrap();
        let sa: Api<ServiceAccount> = self.api(&name);
        self.until(
            Duration::from_secs(60),
            "the default ServiceAccount",
            || self.rt.block_on(sa.get_opt("default")).unwrap().is_some(),
        );
        NamespaceGuard { kube: self, name }
    }

    fn until(&self, limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
        let end = Instant::now() + limit;
        while !f() {
            assert!(Instant::now() < end, "no {what} after {limit:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn jobs(&self, ns: &str) -> Vec<Job> {
        self.rt
            .block_on(self.api::<Job>(ns).list(&ListParams::default()))
            .unwrap()
            .items
    }

    fn job(&self, ns: &str, name: &str) -> Option<Job> {
        self.rt.block_on(self.api::<Job>(ns).get_opt(name)).unwrap()
    }

    /// The pods the Job controller made for a Job, waited for.
    fn pods_of(&self, ns: &str, job: &str) -> Vec<Pod> {
        let pods: Api<Pod> = self.api(ns);
        let mut found = Vec::new();
        self.until(Duration::from_secs(60), "pod of the Job", || {
            found = self
                .rt
                .block_on(pods.list(&ListParams::default().labels(&format!("job-name={job}"))))
                .unwrap()
                .items;
            !found.is_empty()
        });
        found
    }

    /// Sets a Job's status condition through the status subresource, as the Job controller
    /// would on a node's report.
    fn finish(&self, ns: &str, name: &str, kind: &str) {
        let now = "2026-01-01T00:00:00Z";
        let patch = serde_json::json!({"status": {
            "conditions": [{
                "type": kind, "status": "True", "reason": "SetByTheTest",
                "message": format!("{kind} set by the test"),
                "lastProbeTime": now, "lastTransitionTime": now,
            }],
        }});
        self.rt
            .block_on(self.api::<Job>(ns).patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(&patch),
            ))
            .unwrap();
    }

    /// Every event of the namespace's Jobs from now on, collected in the background.
    fn watch_jobs(&self, ns: &str) -> Arc<Mutex<Vec<(&'static str, Job)>>> {
        self.watch::<Job>(ns)
    }

    /// Every event of the namespace's objects of one kind from now on, collected in the
    /// background.
    fn watch<K>(&self, ns: &str) -> Arc<Mutex<Vec<(&'static str, K)>>>
    where
        K: ociup_kube::kube::Resource<Scope = ociup_kube::k8s_openapi::NamespaceResourceScope>
            + Clone
            + ociup_kube::k8s_openapi::serde::de::DeserializeOwned
            + std::fmt::Debug
            + Send
            + 'static,
        <K as ociup_kube::kube::Resource>::DynamicType: Default,
    {
        let api = self.api::<K>(ns);
        let events = Arc::new(Mutex::new(Vec::new()));
        let version = self
            .rt
            .block_on(api.list(&ListParams::default()))
            .unwrap()
            .metadata
            .resource_version
            .unwrap();
        let mut stream = self
            .rt
            .block_on(api.watch(&WatchParams::default().timeout(120), &version))
            .unwrap()
            .boxed();
        let out = Arc::clone(&events);
        self.rt.spawn(async move {
            while let Some(Ok(e)) = stream.next().await {
                let e = match e {
                    WatchEvent::Added(j) => ("added", j),
                    WatchEvent::Modified(j) => ("modified", j),
                    WatchEvent::Deleted(j) => ("deleted", j),
                    _ => continue,
                };
                out.lock().unwrap().push(e);
            }
        });
        events
    }

    /// A kubeconfig for the same server, as another identity (a bearer token) or at another
    /// URL.
    fn kubeconfig_with(&self, dir: &Path, token: Option<&str>, url: Option<&str>) -> PathBuf {
        let mut text = std::fs::read_to_string(&self.kubeconfig).unwrap();
        if let Some(t) = token {
            text = text.replace(&self.token, t);
        }
        if let Some(u) = url {
            let server = text
                .lines()
                .find_map(|l| l.trim().strip_prefix("server: "))
                .unwrap()
                .to_owned();
            text = text.replace(&server, u);
        }
        let path = dir.join(format!("kubeconfig-{}", text.len()));
        std::fs::write(&path, text).unwrap();
        path
    }
}

/// The webhook's program: answers every AdmissionReview "allowed", and first appends to a log
/// what it was asked (operation, suspend, the digest annotation) and the nick's versions in the
/// catalog at that moment (`ociup history`).
const WEBHOOK: &str = r#"
import http.server, json, os, ssl, subprocess, sys
port_file, cert, key, log, ociup, nick, stop = sys.argv[1:8]
class Hook(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        req = review["request"]
        job = req.get("object") or {}
        history = subprocess.run([ociup, "history", nick, "--json"], capture_output=True, text=True)
        entry = {
            "operation": req["operation"],
            "dry_run": req.get("dryRun", False),
            "suspend": (job.get("spec") or {}).get("suspend"),
            "digest": ((job.get("metadata") or {}).get("annotations") or {}).get("ociup.dev/digest"),
            "versions": sorted(r["digest"] for r in json.loads(history.stdout)) if history.returncode == 0 else None,
        }
        with open(log, "a") as f:
            f.write(json.dumps(entry) + "\n")
        # Stops (SIGSTOP) a process the moment a held Job is created: the registry, say.
        if stop and req["operation"] == "CREATE" and entry["suspend"] and not entry["dry_run"]:
            import signal
            os.kill(int(stop), signal.SIGSTOP)
        body = json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                           "response": {"uid": req["uid"], "allowed": True}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", 0), Hook)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
server.socket = context.wrap_socket(server.socket, server_side=True)
with open(port_file + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
os.rename(port_file + ".tmp", port_file)
server.serve_forever()
"#;

/// A validating admission webhook on the Jobs of one namespace, run by python3 on loopback
/// over TLS, recording each Job create and update with the catalog's state at that moment,
/// and stopping (SIGSTOP) the process `stop` when a held Job is created.
struct Webhook<'a> {
    kube: &'a Kube,
    child: std::process::Child,
    log: PathBuf,
    name: String,
}

impl Webhook<'_> {
    fn start<'a>(kube: &'a Kube, ns: &str, app: &App, stop: Option<u32>) -> Webhook<'a> {
        assert!(
            Command::new("python3").arg("--version").output().is_ok(),
            "the admission webhook needs python3 (scripts/test.sh installs it)"
        );
        let dir = app.dir().join("webhook");
        std::fs::create_dir(&dir).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        self_signed(&cert, &key, false);
        std::fs::write(dir.join("hook.py"), WEBHOOK).unwrap();
        let (port_file, log) = (dir.join("port"), dir.join("log"));
        let child = Command::new("python3")
            .arg(dir.join("hook.py"))
            .args([&port_file, &cert, &key, &log])
            .arg(env!("CARGO_BIN_EXE_ociup"))
            .arg(app.nick)
            .arg(stop.map(|p| p.to_string()).unwrap_or_default())
            .env(
                "OCIUP_CATALOG",
                format!("oci:{}", app.dir().join("catalog").display()),
            )
            .spawn()
            .unwrap();
        let mut port = String::new();
        kube.until(Duration::from_secs(20), "webhook port", || {
            port = std::fs::read_to_string(&port_file).unwrap_or_default();
            !port.is_empty()
        });
        let name = format!("{ns}.ociup.dev");
        let config = serde_json::json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": name},
            "webhooks": [{
                "name": name,
                "clientConfig": {
                    "url": format!("https://127.0.0.1:{port}/"),
                    "caBundle": base64::Engine::encode(
                        &base64::engine::general_purpose::STANDARD,
                        std::fs::read(&cert).unwrap(),
                    ),
                },
                "rules": [{
                    "apiGroups": ["batch"], "apiVersions": ["v1"],
                    "operations": ["CREATE", "UPDATE"], "resources": ["jobs"],
                }],
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
                "failurePolicy": "Fail",
                "timeoutSeconds": 10,
            }],
        });
        let hook = Webhook {
            kube,
            child,
            log,
            name,
        };
        let api = hook.api();
        kube.rt
            .block_on(api.create(
                &PostParams::default(),
                &serde_json::from_value(config).unwrap(),
            ))
            .unwrap();
        // The API server takes the configuration up after a moment: a dry-run create tells.
        let probe: Job = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "probe"},
            "spec": {"template": {"spec": {"restartPolicy": "Never",
                "containers": [{"name": "probe", "image": "probe"}]}}},
        }))
        .unwrap();
        let dry = PostParams {
            dry_run: true,
            ..PostParams::default()
        };
        kube.until(Duration::from_secs(30), "webhook called", || {
            let _ = kube.rt.block_on(kube.api::<Job>(ns).create(&dry, &probe));
            !hook.calls().is_empty()
        });
        hook
    }

    fn api(&self) -> Api<ValidatingWebhookConfiguration> {
        Api::all(self.kube.cluster.client().clone())
    }

    /// Every call but the dry-run probes, in order.
    fn calls(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(json)
            .collect()
    }
}

impl Drop for Webhook<'_> {
    fn drop(&mut self) {
        let _ = self
            .kube
            .rt
            .block_on(self.api().delete(&self.name, &DeleteParams::default()));
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The fault-injecting proxy's program: a TLS proxy on loopback in front of the API server
/// (python3, asyncio), which logs every request line it sees (method, path, what it did) and
/// follows a control file (JSON, re-read when its `serial` changes): `stall` forwards nothing
/// either way (the server accepts and never answers); `lose` forwards the next `count` requests
/// of `method` whose path holds `path` (-1: all), then drops the connection (`how: drop`) or
/// keeps it open silent (`how: stall`) once the server's answer starts, so the request takes
/// effect and its answer is lost (`then_stall`: the proxy then stalls everything), or drops
/// the connection without forwarding them (`how: unsent`: they never take effect); `gone`
/// answers the next N watch requests itself with a 410 Gone event; `cut` aborts every open
/// connection.
const PROXY: &str = r#"import asyncio, json, os, re, ssl, sys
port_file, cert, key, up_port, ca, control, log = sys.argv[1:8]
REQ = re.compile(rb"(GET|POST|PUT|PATCH|DELETE) (/[^ ]*) HTTP/1\.1\r\n")
state = {"serial": None, "rules": {}, "stall": False}
conns = set()

def load():
    try:
        with open(control) as f:
            c = json.load(f)
    except (OSError, ValueError):
        return
    if c.get("serial") == state["serial"]:
        return
    state["serial"] = c.get("serial")
    state["rules"] = c
    state["stall"] = bool(c.get("stall"))
    state["lose"] = dict(c["lose"]) if c.get("lose") else None
    state["gone"] = int(c.get("gone", 0))
    if c.get("cut"):
        for t in list(conns):
            t.abort()

def record(method, path, action):
    with open(log, "a") as f:
        f.write(f"{method} {path} {action}\n")

async def poll():
    while True:
        load()
        await asyncio.sleep(0.05)

GONE = json.dumps({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1",
    "metadata": {}, "status": "Failure", "message": "too old resource version (injected)",
    "reason": "Expired", "code": 410}}).encode() + b"\n"

async def handle(cr, cw):
    up = ssl.create_default_context(cafile=ca)
    ur, uw = await asyncio.open_connection("127.0.0.1", int(up_port), ssl=up, server_hostname="127.0.0.1")
    conns.add(cw.transport); conns.add(uw.transport)
    lost = {"how": None}
    async def c2s():
        while True:
            data = await cr.read(65536)
            if not data:
                break
            load()
            for m in REQ.finditer(data):
                method, path = m.group(1).decode(), m.group(2).decode()
                action = "stalled" if state["stall"] else "passed"
                lose = state.get("lose")
                if not state["stall"] and lose and lose["count"] != 0 and method == lose["method"] and lose["path"] in path:
                    lose["count"] -= 1
                    lost["how"] = lose["how"]
                    action = "lost-" + lose["how"]
                elif not state["stall"] and state["gone"] > 0 and method == "GET" and "watch=" in path:
                    state["gone"] -= 1
                    record(method, path, "gone")
                    cw.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n" + GONE)
                    await cw.drain()
                    cw.close(); uw.close()
                    return
                record(method, path, action)
            if lost["how"] == "unsent":
                cw.transport.abort(); uw.transport.abort()
                return
            if state["stall"]:
                continue
            uw.write(data)
            await uw.drain()
    async def s2c():
        while True:
            data = await ur.read(65536)
            if not data:
                break
            if lost["how"] == "drop":
                cw.transport.abort(); uw.transport.abort()
                if state["rules"].get("then_stall"):
                    state["stall"] = True
                return
            if lost["how"] == "stall":
                if state["rules"].get("then_stall"):
                    state["stall"] = True
                continue
            if state["stall"]:
                continue
            cw.write(data)
            await cw.drain()
        cw.close()
    try:
        await asyncio.gather(c2s(), s2c())
    except Exception:
        pass
    finally:
        for t in (cw.transport, uw.transport):
            conns.discard(t)
            t.abort()

async def main():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["http/1.1"])
    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
    with open(port_file + ".tmp", "w") as f:
        f.write(str(server.sockets[0].getsockname()[1]))
    os.rename(port_file + ".tmp", port_file)
    asyncio.get_running_loop().create_task(poll())
    await server.serve_forever()

asyncio.run(main())
"#;

/// The fault-injecting proxy ([`PROXY`]) in front of the test's API server, and a kubeconfig
/// that goes through it.
struct Proxy {
    child: std::process::Child,
    dir: PathBuf,
    port: u16,
    serial: std::cell::Cell<u64>,
}

impl Proxy {
    fn start(kube: &Kube, dir: &Path) -> Proxy {
        let dir = dir.join("proxy");
        std::fs::create_dir(&dir).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        self_signed(&cert, &key, true);
        std::fs::write(dir.join("proxy.py"), PROXY).unwrap();
        let config = std::fs::read_to_string(&kube.kubeconfig).unwrap();
        let field = |name: &str| {
            config
                .lines()
                .find_map(|l| l.trim().strip_prefix(name))
                .unwrap()
                .trim_matches('"')
                .to_owned()
        };
        let server = field("server: ");
        let port = server.rsplit(':').next().unwrap().to_owned();
        let control = dir.join("control");
        std::fs::write(&control, "{}").unwrap();
        let port_file = dir.join("port");
        let child = Command::new("python3")
            .arg(dir.join("proxy.py"))
            .arg(&port_file)
            .args([&cert, &key])
            .arg(port)
            .arg(field("certificate-authority: "))
            .arg(&control)
            .arg(dir.join("log"))
            .spawn()
            .unwrap();
        let mut port = String::new();
        kube.until(Duration::from_secs(20), "proxy port", || {
            port = std::fs::read_to_string(&port_file).unwrap_or_default();
            !port.is_empty()
        });
        let port = port.trim().parse().unwrap();
        // Through the proxy, trusting its certificate, as the same user.
        let text = config
            .replace(&server, &format!("https://127.0.0.1:{port}"))
            .replace(&field("certificate-authority: "), cert.to_str().unwrap());
        std::fs::write(dir.join("kubeconfig"), text).unwrap();
        Proxy {
            child,
            dir,
            port,
            serial: std::cell::Cell::new(0),
        }
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    fn kubeconfig(&self) -> String {
        self.dir.join("kubeconfig").to_str().unwrap().to_owned()
    }

    /// What the proxy does from now on (see [`PROXY`]).
    fn set(&self, mut control: Value) {
        self.serial.set(self.serial.get() + 1);
        control["serial"] = self.serial.get().into();
        let tmp = self.dir.join("control.tmp");
        std::fs::write(&tmp, control.to_string()).unwrap();
        std::fs::rename(&tmp, self.dir.join("control")).unwrap();
        // The proxy reads it every 50 ms.
        std::thread::sleep(Duration::from_millis(200));
    }

    /// Every request line it saw: method, path and query, what it did.
    fn requests(&self) -> Vec<(String, String, String)> {
        std::fs::read_to_string(self.dir.join("log"))
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let mut parts = l.splitn(3, ' ').map(str::to_owned);
                let mut next = || parts.next().unwrap_or_default();
                (next(), next(), next())
            })
            .collect()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A self-signed certificate for 127.0.0.1; `leaf`: not a CA (rustls refuses a CA certificate
/// as the server's own).
fn self_signed(cert: &Path, key: &Path, leaf: bool) {
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .args(if leaf {
            &["-addext", "basicConstraints=critical,CA:FALSE"][..]
        } else {
            &[]
        })
        .arg("-keyout")
        .arg(key)
        .arg("-out")
        .arg(cert)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
}

struct NamespaceGuard<'a> {
    kube: &'a Kube,
    name: String,
}

impl Drop for NamespaceGuard<'_> {
    fn drop(&mut self) {
        let all: Api<Namespace> = Api::all(self.kube.cluster.client().clone());
        let _ = self
            .kube
            .rt
            .block_on(all.delete(&self.name, &DeleteParams::background()));
    }
}

fn suspended(job: &Job) -> bool {
    job.spec.as_ref().unwrap().suspend == Some(true)
}

fn annotation<'a>(job: &'a Job, key: &str) -> Option<&'a str> {
    job.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

fn label<'a>(job: &'a Job, key: &str) -> Option<&'a str> {
    job.metadata
        .labels
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

fn container_image(job: &Job) -> String {
    job.spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0]
        .image
        .clone()
        .unwrap()
}

#[test]
fn apply_runs_the_current_version_and_wait_reports_how_it_ended() {
    let Some(k) = kube("apply_runs_the_current_version") else {
        return;
    };
    let ns = k.namespace("ociup-job-current");
    let app = App::new("current");
    let v1 = app.versions()[0].clone();
    let applied = json(&app.ok(&[
        "job", "current", "--apply", "--json", "-n", &ns.name, "--name", "run-1", "--label",
        "team=ml", "--", "--epochs", "3",
    ]));
    assert_eq!(applied["name"], "run-1");
    assert_eq!(applied["namespace"], ns.name.as_str());
    assert_eq!(applied["held"], false);
    assert_eq!(applied["upgraded"], false);
    assert_eq!(applied["digest"], v1.as_str());
    assert_eq!(applied["image"], app.image(&v1).as_str());
    assert_eq!(applied["succeeded"], Value::Null);
    let job = k.job(&ns.name, "run-1").unwrap();
    assert!(!suspended(&job));
    assert_eq!(applied["uid"].as_str(), job.metadata.uid.as_deref());
    assert_eq!(container_image(&job), app.image(&v1));
    assert_eq!(annotation(&job, keys::DIGEST), Some(v1.as_str()));
    assert_eq!(job.metadata.labels.as_ref().unwrap()["team"], "ml");
    // The controller made its pod, with that image and those arguments.
    let pods = k.pods_of(&ns.name, "run-1");
    let c = &pods[0].spec.as_ref().unwrap().containers[0];
    assert_eq!(c.image.as_deref(), Some(app.image(&v1).as_str()));
    assert_eq!(
        c.args.as_deref(),
        Some(&["--epochs".to_owned(), "3".to_owned()][..])
    );

    // --wait follows the Job until its status says how it ended: completed (exit 0) ...
    for (name, condition, code, said) in [
        ("run-2", "Complete", 0, "completed"),
        ("run-3", "Failed", 4, "failed"),
    ] {
        let child = app.spawn(&[
            "job", "current", "--apply", "--wait", "-n", &ns.name, "--name", name,
        ]);
        k.until(Duration::from_secs(30), "Job created by --wait", || {
            k.job(&ns.name, name).is_some()
        });
        std::thread::sleep(Duration::from_millis(500));
        k.finish(&ns.name, name, condition);
        let out = child.wait_limited();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{stdout}{stderr}");
        assert!(
            stdout.contains(&format!("{condition}=True (SetByTheTest)")),
            "{stdout}"
        );
        assert!(
            stdout.contains(&format!("job.batch/{name} {said}")),
            "{stdout}"
        );
    }
    // ... and as JSON.
    let child = app.spawn(&[
        "job", "current", "--apply", "--wait", "--json", "-n", &ns.name, "--name", "run-4",
    ]);
    k.until(Duration::from_secs(30), "Job created by --wait", || {
        k.job(&ns.name, "run-4").is_some()
    });
    k.finish(&ns.name, "run-4", "Complete");
    let out = child.wait_limited();
    assert!(out.status.success());
    let v = json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(v["succeeded"], true);
    assert_eq!(v["conditions"][0]["type"], "Complete");
    assert_eq!(v["conditions"][0]["status"], "True");
    assert_eq!(v["conditions"][0]["reason"], "SetByTheTest");
    // ociup's own keys: snake_case, and exactly those listed in docs/json.md's section.
    let doc = std::fs::read_to_string(crate::support::repo().join("docs/json.md")).unwrap();
    let section = doc
        .split("\n## ")
        .find(|s| s.starts_with("`ociup job --json`"))
        .expect("a `ociup job --json` section in docs/json.md");
    let mut documented = std::collections::BTreeSet::new();
    for row in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = row.split('|').collect();
        documented.extend(cells[1].split('`').skip(1).step_by(2).map(str::to_owned));
        if let Some(inner) = cells[2]
            .split_once("`{")
            .and_then(|(_, r)| r.split_once("}`"))
        {
            documented.extend(inner.0.split(", ").map(|k| format!("conditions.{k}")));
        }
    }
    let condition = v["conditions"][0].as_object().unwrap();
    let given: std::collections::BTreeSet<String> = v
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .chain(condition.keys().map(|k| format!("conditions.{k}")))
        .collect();
    for key in &given {
        assert!(
            key.chars()
                .all(|c| c.is_ascii_lowercase() || c == '_' || c == '.'),
            "{key}"
        );
    }
    assert_eq!(
        given, documented,
        "ociup job --json's keys against docs/json.md"
    );

    // A Job deleted while followed: a clear error.
    let child = app.spawn(&[
        "job", "current", "--apply", "--wait", "-n", &ns.name, "--name", "run-5",
    ]);
    k.until(Duration::from_secs(30), "Job created by --wait", || {
        k.job(&ns.name, "run-5").is_some()
    });
    k.rt.block_on(
        k.api::<Job>(&ns.name)
            .delete("run-5", &DeleteParams::background()),
    )
    .unwrap();
    let out = child.wait_limited();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("was deleted before it finished"),
        "{stderr}"
    );
}

#[test]
fn an_upgrade_holds_the_job_suspended_until_the_new_version_is_recorded() {
    let Some(k) = kube("an_upgrade_holds_the_job_suspended") else {
        return;
    };
    let ns = k.namespace("ociup-job-held");
    let app = App::new("held");
    app.move_base();
    let hook = Webhook::start(&k, &ns.name, &app, None);
    let events = k.watch_jobs(&ns.name);
    let pod_events = k.watch::<Pod>(&ns.name);
    let (code, out, err) = app.run(&["job", "held", "--apply", "--json", "-n", &ns.name]);
    assert_eq!(code, 0, "{err}");
    let applied = json(&out);
    let versions = app.versions();
    assert_eq!(versions.len(), 2, "the new version is recorded");
    let v2 = &versions[1];
    assert_eq!(applied["held"], true);
    assert_eq!(applied["upgraded"], true);
    assert_eq!(applied["version"], 2);
    assert_eq!(applied["digest"], v2.as_str());
    assert_eq!(applied["image"], app.image(v2).as_str());
    let name = applied["name"].as_str().unwrap().to_owned();
    assert!(name.starts_with("held-v2-"), "{name}");
    assert!(err.contains("created suspended"), "{err}");

    // The server saw it created suspended, with the digest the regeneration then wrote, and
    // then released.
    k.until(Duration::from_secs(10), "release seen by the watch", || {
        events
            .lock()
            .unwrap()
            .iter()
            .any(|(e, j)| *e == "modified" && !suspended(j))
    });
    let seen = events.lock().unwrap().clone();
    let (first, created) = &seen[0];
    assert_eq!(*first, "added");
    assert!(suspended(created), "created suspended");
    assert_eq!(annotation(created, keys::DIGEST), Some(v2.as_str()));
    assert!(annotation(created, keys::HELD).is_some());
    assert_eq!(label(created, keys::HELD), Some("true"), "listed as held");
    assert_eq!(container_image(created), app.image(v2));
    let released = seen
        .iter()
        .find(|(e, j)| *e == "modified" && !suspended(j))
        .map(|(_, j)| j)
        .unwrap();
    assert_eq!(annotation(released, keys::HELD), None);
    assert_eq!(label(released, keys::HELD), None);
    assert_eq!(
        seen.iter().filter(|(e, _)| *e == "added").count(),
        1,
        "one Job"
    );
    // What the API server's admission webhook saw, with the catalog at that moment: created
    // suspended before the new version was recorded, released once it was.
    {
        let calls: Vec<Value> = hook
            .calls()
            .into_iter()
            .filter(|c| c["dry_run"] == false)
            .collect();
        let v1 = &versions[0];
        assert_eq!(calls[0]["operation"], "CREATE", "{calls:?}");
        assert_eq!(calls[0]["suspend"], true, "{calls:?}");
        assert_eq!(calls[0]["digest"], v2.as_str());
        assert_eq!(
            calls[0]["versions"],
            serde_json::json!([v1]),
            "not yet recorded"
        );
        let release = calls
            .iter()
            .find(|c| c["operation"] == "UPDATE" && c["suspend"] == false)
            .unwrap_or_else(|| panic!("no release: {calls:?}"));
        let mut both = vec![v1.clone(), v2.clone()];
        both.sort();
        assert_eq!(
            release["versions"],
            serde_json::json!(both),
            "recorded before"
        );
    }
    // The controller makes its pod only once it is released, with the new image: the pod's
    // creation (its ADDED event's resourceVersion, etcd's revision) comes after the release.
    let pods = k.pods_of(&ns.name, &name);
    assert_eq!(
        pods[0].spec.as_ref().unwrap().containers[0]
            .image
            .as_deref(),
        Some(app.image(v2).as_str())
    );
    k.until(Duration::from_secs(10), "the pod's ADDED event", || {
        pod_events
            .lock()
            .unwrap()
            .iter()
            .any(|(e, _)| *e == "added")
    });
    let revision =
        |meta: &ObjectMeta| -> u64 { meta.resource_version.as_deref().unwrap().parse().unwrap() };
    let release = revision(&released.metadata);
    for (event, pod) in pod_events.lock().unwrap().iter() {
        if *event == "added" {
            assert!(
                revision(&pod.metadata) > release,
                "pod {:?} added at {} before the release at {release}",
                pod.metadata.name,
                revision(&pod.metadata)
            );
        }
    }
}

#[test]
fn a_failed_regeneration_deletes_its_suspended_job() {
    let Some(k) = kube("a_failed_regeneration_deletes_its_suspended_job") else {
        return;
    };
    let ns = k.namespace("ociup-job-failed");
    let mut app = App::new("doomed");
    app.move_base();
    // The registry goes read-only (Distribution's maintenance mode): the new version is
    // planned from what can be read, then cannot be pushed.
    let config = app.reg.dir().join("config.yml");
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text.replace(
        "  maintenance:\n",
        "  maintenance:\n    readonly:\n      enabled: true\n",
    );
    std::fs::write(&config, text).unwrap();
    app.reg.restart();
    let events = k.watch_jobs(&ns.name);
    let (code, out, err) = app.run(&["job", "doomed", "--apply", "-n", &ns.name]);
    assert_eq!(code, 1, "{out}");
    assert!(
        err.contains("regenerating doomed failed, so its suspended Job"),
        "{err}"
    );
    assert!(err.contains("was deleted"), "{err}");
    // Why: the registry refused the new version's first upload (405, read-only).
    assert!(
        err.contains(&format!(
            "was deleted: POST http://{}/v2/team/doomed/blobs/uploads/: 405",
            app.reg.host()
        )),
        "{err}"
    );
    assert!(k.jobs(&ns.name).is_empty(), "no Job left");
    assert_eq!(app.versions().len(), 1, "no version recorded");
    k.until(
        Duration::from_secs(10),
        "deletion seen by the watch",
        || events.lock().unwrap().iter().any(|(e, _)| *e == "deleted"),
    );
    let seen = events.lock().unwrap().clone();
    assert_eq!(seen[0].0, "added");
    assert!(suspended(&seen[0].1), "it was created suspended");
    assert!(seen.iter().all(|(_, j)| suspended(j)), "never released");
}

#[test]
fn refused_requests_write_nothing_and_leave_no_job() {
    let Some(k) = kube("refused_requests_write_nothing_and_leave_no_job") else {
        return;
    };
    let ns = k.namespace("ociup-job-refused");
    let app = App::new("refused");
    // A Job of the current version takes the name first.
    app.ok(&[
        "job", "refused", "--apply", "-n", &ns.name, "--name", "taken",
    ]);
    let taken = k.job(&ns.name, "taken").unwrap().metadata.uid;
    app.move_base();

    // A name already taken.
    let (code, _, err) = app.run(&[
        "job", "refused", "--apply", "-n", &ns.name, "--name", "taken",
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!("creating Job {}/taken", ns.name)),
        "{err}"
    );
    assert!(err.contains("409 AlreadyExists"), "{err}");
    assert_eq!(k.job(&ns.name, "taken").unwrap().metadata.uid, taken);

    // A user with no rights: a ServiceAccount's token from the TokenRequest API.
    let sas: Api<ServiceAccount> = k.api(&ns.name);
    let nobody = ServiceAccount {
        metadata: ObjectMeta {
            name: Some("nobody".into()),
            ..ObjectMeta::default()
        },
        ..ServiceAccount::default()
    };
    k.rt.block_on(sas.create(&PostParams::default(), &nobody))
        .unwrap();
    let token =
        k.rt.block_on(sas.create_token_request(
            "nobody",
            &PostParams::default(),
            &TokenRequest::default(),
        ))
        .unwrap()
        .status
        .unwrap()
        .token;
    let forbidden = k.kubeconfig_with(app.dir(), Some(&token), None);
    let (code, _, err) = app.run(&[
        "job",
        "refused",
        "--apply",
        "-n",
        &ns.name,
        "--kubeconfig",
        forbidden.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("403 Forbidden"), "{err}");
    assert!(
        err.contains(&format!(
            "may not create, get, patch, delete jobs.batch in namespace {}",
            ns.name
        )),
        "{err}"
    );

    // An API server that is down: a loopback port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("https://127.0.0.1:{port}");
    let down = k.kubeconfig_with(app.dir(), None, Some(&url));
    let (code, _, err) = app.run(&[
        "job",
        "refused",
        "--apply",
        "-n",
        &ns.name,
        "--kubeconfig",
        down.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!("cannot reach the Kubernetes API server at {url}")),
        "{err}"
    );
    assert!(err.to_lowercase().contains("connection refused"), "{err}");

    // A context the kubeconfig does not have.
    let (code, _, err) = app.run(&["job", "refused", "--apply", "--context", "nowhere"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("loading context \"nowhere\" from the kubeconfig"),
        "{err}"
    );

    // None of them wrote the new version or left a Job.
    assert_eq!(app.versions().len(), 1);
    let names: Vec<_> = k
        .jobs(&ns.name)
        .into_iter()
        .filter_map(|j| j.metadata.name)
        .collect();
    assert_eq!(names, ["taken"]);

    // A user who may create and delete Jobs but not change them: asked first, refused before
    // anything is written, so no version and no Job.
    let rbac = |kind: &str, body: Value| -> Value {
        let mut v = body;
        v["apiVersion"] = "rbac.authorization.k8s.io/v1".into();
        v["kind"] = kind.into();
        v["metadata"] = serde_json::json!({"name": "create-only", "namespace": ns.name});
        v
    };
    let role = rbac(
        "Role",
        serde_json::json!({"rules": [{"apiGroups": ["batch"], "resources": ["jobs"],
            "verbs": ["create", "get", "delete"]}]}),
    );
    let binding = rbac(
        "RoleBinding",
        serde_json::json!({
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "create-only"},
            "subjects": [{"kind": "ServiceAccount", "name": "nobody", "namespace": ns.name}],
        }),
    );
    let roles: Api<Role> = k.api(&ns.name);
    let bindings: Api<RoleBinding> = k.api(&ns.name);
    k.rt.block_on(roles.create(
        &PostParams::default(),
        &serde_json::from_value(role).unwrap(),
    ))
    .unwrap();
    k.rt.block_on(bindings.create(
        &PostParams::default(),
        &serde_json::from_value(binding).unwrap(),
    ))
    .unwrap();
    // The authorizer takes the binding up after a moment: ask it until it allows.
    let reviews: Api<SubjectAccessReview> = Api::all(k.cluster.client().clone());
    let review: SubjectAccessReview = serde_json::from_value(serde_json::json!({
        "spec": {
            "user": format!("system:serviceaccount:{}:nobody", ns.name),
            "resourceAttributes": {"namespace": ns.name, "verb": "create",
                "group": "batch", "resource": "jobs"},
        },
    }))
    .unwrap();
    k.until(Duration::from_secs(30), "the binding in effect", || {
        let answer =
            k.rt.block_on(reviews.create(&PostParams::default(), &review))
                .unwrap();
        answer.status.is_some_and(|s| s.allowed)
    });
    // With --wait, following the Job (list, watch) is asked for too.
    let (code, _, err) = app.run(&[
        "job",
        "refused",
        "--apply",
        "--wait",
        "-n",
        &ns.name,
        "--kubeconfig",
        forbidden.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!(
            "may not list, watch jobs.batch in namespace {}",
            ns.name
        )),
        "{err}"
    );
    let (code, _, err) = app.run(&[
        "job",
        "refused",
        "--apply",
        "-n",
        &ns.name,
        "--kubeconfig",
        forbidden.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("403 Forbidden"), "{err}");
    assert!(
        err.contains(&format!(
            "may not patch jobs.batch in namespace {}",
            ns.name
        )),
        "{err}"
    );
    assert_eq!(app.versions().len(), 1, "nothing written");
    let names: Vec<_> = k
        .jobs(&ns.name)
        .into_iter()
        .filter_map(|j| j.metadata.name)
        .collect();
    assert_eq!(names, ["taken"], "no Job created");
}

#[test]
fn a_stopped_apply_deletes_its_suspended_job() {
    let Some(k) = kube("a_stopped_apply_deletes_its_suspended_job") else {
        return;
    };
    let ns = k.namespace("ociup-job-stopped");
    let app = App::new("stopped");
    app.move_base();
    // The webhook stops the registry (SIGSTOP) the moment the held Job is created: the
    // regeneration then blocks on its push, and stays blocked, until SIGCONT.
    let registry = app.reg.pid().to_string();
    struct Resume(String);
    impl Drop for Resume {
        fn drop(&mut self) {
            let _ = Command::new("kill").args(["-CONT", &self.0]).status();
        }
    }
    let resume = Resume(registry);
    let _hook = Webhook::start(&k, &ns.name, &app, Some(app.reg.pid()));
    let child = app.spawn(&["job", "stopped", "--apply", "-n", &ns.name]);
    let mut held = None;
    k.until(Duration::from_secs(30), "the held Job", || {
        held = k.jobs(&ns.name).into_iter().find(suspended);
        held.is_some()
    });
    let held = held.unwrap();
    assert_eq!(label(&held, keys::HELD), Some("true"));
    let name = held.metadata.name.unwrap();
    let sent = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let out = child.wait_limited();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "stopped before the Job was released, so its suspended Job {}/{name} was deleted",
            ns.name
        )),
        "{stderr}"
    );
    assert!(k.jobs(&ns.name).is_empty(), "no Job left");
    drop(resume);
    assert_eq!(app.versions().len(), 1, "no version recorded");
}

#[test]
fn a_silent_api_server_times_out_and_a_held_job_is_cleaned_up() {
    let Some(k) = kube("a_silent_api_server_times_out") else {
        return;
    };
    let ns = k.namespace("ociup-job-silent");
    let app = App::new("silent");
    app.move_base();
    let proxy = Proxy::start(&k, app.dir());
    let config = proxy.kubeconfig();
    let apply_within = |timeout: &str| {
        app.run(&[
            "job",
            "silent",
            "--apply",
            "-n",
            &ns.name,
            "--kubeconfig",
            &config,
            "--request-timeout",
            timeout,
        ])
    };
    let apply = || apply_within("2s");
    let silent_within = |action: &str, timeout: &str| {
        format!(
            "{action}: the Kubernetes API server at {} did not answer within {timeout}",
            proxy.url()
        )
    };
    let silent = |action: &str| silent_within(action, "2s");

    // A server that accepts and never answers: a clear error after the request timeout, naming
    // the server and what was asked; nothing written, no Job.
    proxy.set(serde_json::json!({"stall": true}));
    let start = Instant::now();
    let (code, _, err) = apply();
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&silent(&format!(
            "checking access to Jobs in namespace {}",
            ns.name
        ))),
        "{err}"
    );
    assert!(start.elapsed() < Duration::from_secs(30), "{err}");
    assert_eq!(app.versions().len(), 1);
    assert!(k.jobs(&ns.name).is_empty());

    // The held Job's creation reaches the server, its answer never comes back: the Job, which
    // the server did create, is looked for and deleted; no version is written. (A longer
    // timeout: the server must have answered the proxy by then, even on a loaded machine.)
    let events = k.watch_jobs(&ns.name);
    proxy.set(serde_json::json!({
        "lose": {"method": "POST", "path": "/jobs", "count": 1, "how": "stall"},
    }));
    let (code, _, err) = apply_within("6s");
    assert_eq!(code, 1, "{err}");
    k.until(Duration::from_secs(10), "the deletion", || {
        events.lock().unwrap().iter().any(|(e, _)| *e == "deleted")
    });
    let seen = events.lock().unwrap().clone();
    assert_eq!(seen[0].0, "added", "the server created it");
    assert!(suspended(&seen[0].1));
    let name = seen[0].1.metadata.name.clone().unwrap();
    assert!(name.starts_with("silent-v2-"), "{name}");
    assert_eq!(
        label(&seen[0].1, keys::REQUEST),
        annotation(&seen[0].1, keys::REQUEST),
        "the mark is a label too"
    );
    assert!(
        err.contains(&silent_within(
            &format!("creating Job {}/{name}", ns.name),
            "6s"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "the server had created the Job {}/{name} all the same: it was found and deleted",
            ns.name
        )),
        "{err}"
    );
    assert!(k.jobs(&ns.name).is_empty(), "no Job left");
    assert_eq!(app.versions().len(), 1, "no version written");

    // The creation never reaches the server (the connection cut before it is sent): the Job
    // is looked for twice, the request timeout apart, not found; the error says it may still
    // appear and how to find it by its mark.
    proxy.set(serde_json::json!({
        "lose": {"method": "POST", "path": "/jobs", "count": 1, "how": "unsent"},
    }));
    let (code, _, err) = apply();
    assert_eq!(code, 1, "{err}");
    let mark = err
        .split("it carries the label ociup.dev/request=")
        .nth(1)
        .and_then(|r| r.split(';').next())
        .unwrap_or_else(|| panic!("{err}"));
    assert_eq!(mark.len(), 16, "{err}");
    assert!(
        err.contains("was not found (looked for 2 times, 2s apart) but may still appear"),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "find it with kubectl get jobs -n {ns} -l ociup.dev/request={mark} and delete it \
             with kubectl delete jobs -n {ns} -l ociup.dev/request={mark}",
            ns = ns.name
        )),
        "{err}"
    );
    assert!(k.jobs(&ns.name).is_empty(), "no Job: {err}");
    assert_eq!(app.versions().len(), 1, "no version written");

    // The creation's answer lost again, and then the server goes silent altogether: the
    // cleanup gives up after its
    // own bound, and the error names the Job that may be left and how to delete it.
    proxy.set(serde_json::json!({
        "lose": {"method": "POST", "path": "/jobs", "count": 1, "how": "stall"},
        "then_stall": true,
    }));
    let start = Instant::now();
    let (code, _, err) = apply();
    assert_eq!(code, 1, "{err}");
    assert!(start.elapsed() < Duration::from_secs(30), "{err}");
    let left = k.jobs(&ns.name);
    assert_eq!(left.len(), 1, "{err}");
    assert!(suspended(&left[0]));
    let name = left[0].metadata.name.clone().unwrap();
    assert!(
        err.contains(&silent(&format!("creating Job {}/{name}", ns.name))),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "the Job {ns}/{name} may have been created and may be left: looking for it to \
             delete it failed ({}); delete it with kubectl delete job -n {ns} {name}",
            silent(&format!("looking for Job {}/{name}", ns.name)),
            ns = ns.name
        )),
        "{err}"
    );
    assert_eq!(app.versions().len(), 1, "no version written");
}

#[test]
fn a_lost_release_is_sent_again_and_wait_resumes_its_watch() {
    let Some(k) = kube("a_lost_release_is_sent_again") else {
        return;
    };
    let ns = k.namespace("ociup-job-lost");
    let app = App::new("lost");
    app.move_base();
    let proxy = Proxy::start(&k, app.dir());
    let config = proxy.kubeconfig();
    let patches = || -> Vec<(String, String)> {
        proxy
            .requests()
            .into_iter()
            .filter(|(m, _, _)| m == "PATCH")
            .map(|(_, path, action)| (path, action))
            .collect()
    };

    // The first release's answer is lost (the connection dropped once the server answered):
    // it is sent again, and the request succeeds.
    proxy.set(serde_json::json!({
        "lose": {"method": "PATCH", "path": "/jobs/", "count": 1, "how": "drop"},
    }));
    let (code, out, err) = app.run(&[
        "job",
        "lost",
        "--apply",
        "--json",
        "-n",
        &ns.name,
        "--kubeconfig",
        &config,
    ]);
    assert_eq!(code, 0, "{err}");
    let applied = json(&out);
    assert_eq!(applied["held"], true);
    assert_eq!(applied["version"], 2);
    let name = applied["name"].as_str().unwrap().to_owned();
    let sent = patches();
    let actions: Vec<&str> = sent.iter().map(|(_, a)| a.as_str()).collect();
    assert_eq!(actions, ["lost-drop", "passed"], "{sent:?}");
    assert!(
        sent.iter()
            .all(|(p, _)| p.contains(&format!("/jobs/{name}"))),
        "{sent:?}"
    );
    let job = k.job(&ns.name, &name).unwrap();
    assert!(!suspended(&job));
    assert_eq!(label(&job, keys::HELD), None);

    // --wait through the proxy: its watch is cut, then resumed from the last resourceVersion
    // (no list in between); the resumed watch is answered 410 Gone, so the Job is listed
    // again and watched from there; the Job's end is still seen.
    proxy.set(serde_json::json!({}));
    let child = app.spawn(&[
        "job",
        "lost",
        "--apply",
        "--wait",
        "-n",
        &ns.name,
        "--name",
        "waited",
        "--kubeconfig",
        &config,
    ]);
    let follows = || -> Vec<(String, String, String)> {
        proxy
            .requests()
            .into_iter()
            .filter(|(m, p, _)| m == "GET" && p.contains("metadata.name%3Dwaited"))
            .collect()
    };
    k.until(Duration::from_secs(30), "the first watch", || {
        follows().iter().any(|(_, p, _)| p.contains("watch="))
    });
    k.pods_of(&ns.name, "waited");
    proxy.set(serde_json::json!({"cut": true, "gone": 1}));
    k.until(Duration::from_secs(30), "a watch after the 410", || {
        follows()
            .iter()
            .filter(|(_, p, a)| p.contains("watch=") && a == "passed")
            .count()
            == 2
    });
    k.finish(&ns.name, "waited", "Complete");
    let out = child.wait_limited();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("job.batch/waited completed"), "{stdout}");
    let seen = follows();
    let kinds: Vec<&str> = seen
        .iter()
        .map(|(_, p, a)| match (p.contains("watch="), a.as_str()) {
            (false, _) => "list",
            (true, "gone") => "watch-gone",
            (true, _) => "watch",
        })
        .collect();
    assert_eq!(
        kinds,
        ["list", "watch", "watch-gone", "list", "watch"],
        "{seen:?}"
    );
    let from = |i: usize| -> u64 {
        seen[i]
            .1
            .split(['?', '&'])
            .find_map(|q| q.strip_prefix("resourceVersion="))
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(from(2) >= from(1), "resumed, not older: {seen:?}");

    let apply = || {
        app.run(&[
            "job",
            "lost",
            "--apply",
            "-n",
            &ns.name,
            "--kubeconfig",
            &config,
        ])
    };
    let of_version = |v: &str| -> Vec<Job> {
        k.jobs(&ns.name)
            .into_iter()
            .filter(|j| label(j, keys::VERSION) == Some(v))
            .collect()
    };

    // Every release's answer is lost, each release taking effect: the Job is looked at once
    // more, seen released, and the request succeeds.
    app.ok(&["copy", &app.base("v1"), &app.base("latest")]);
    proxy.set(serde_json::json!({
        "lose": {"method": "PATCH", "path": "/jobs/", "count": -1, "how": "drop"},
    }));
    let before = patches().len();
    let (code, _, err) = apply();
    assert_eq!(code, 0, "{err}");
    assert_eq!(app.versions().len(), 3, "the version is recorded");
    let released = of_version("3");
    assert_eq!(released.len(), 1, "{err}");
    assert!(!suspended(&released[0]), "{err}");
    let sent = patches().split_off(before);
    assert_eq!(sent.len(), 4, "sent 4 times: {sent:?}");
    assert!(sent.iter().all(|(_, a)| a == "lost-drop"), "{sent:?}");

    // Every release is cut off before it reaches the server: the version stays recorded, the
    // Job is left (not deleted: it pins that version), seen still suspended, and the error
    // names it and the command to release it.
    app.ok(&["copy", &app.base("v2"), &app.base("latest")]);
    proxy.set(serde_json::json!({
        "lose": {"method": "PATCH", "path": "/jobs/", "count": -1, "how": "unsent"},
    }));
    let before = patches().len();
    let (code, _, err) = apply();
    assert_eq!(code, 1, "{err}");
    assert_eq!(app.versions().len(), 4, "the version is recorded");
    let held = of_version("4");
    assert_eq!(held.len(), 1, "the Job is left: {err}");
    assert!(suspended(&held[0]), "{err}");
    let name = held[0].metadata.name.clone().unwrap();
    let sent = patches().split_off(before);
    assert_eq!(sent.len(), 4, "sent 4 times: {sent:?}");
    assert!(sent.iter().all(|(_, a)| a == "lost-unsent"), "{sent:?}");
    let job = format!("{}/{name}", ns.name);
    assert!(
        err.contains(&format!(
            "lost version 4 is recorded, but releasing its Job {job} failed 4 times"
        )),
        "{err}"
    );
    let release = format!(
        "the Job is still suspended: release it with kubectl patch job -n {} {name} \
         --type merge -p '",
        ns.name
    );
    assert!(err.contains(&release), "{err}");
    assert!(
        err.contains(&format!(
            "or delete it with kubectl delete job -n {} {name}",
            ns.name
        )),
        "{err}"
    );
    // The patch it gives is ociup's release: suspend false, the held label and annotation
    // removed.
    let payload = err
        .split(&release)
        .nth(1)
        .unwrap()
        .split('\'')
        .next()
        .unwrap();
    assert_eq!(
        json(payload),
        serde_json::json!({
            "spec": {"suspend": false},
            "metadata": {"labels": {keys::HELD: null}, "annotations": {keys::HELD: null}},
        })
    );
}

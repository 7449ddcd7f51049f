//! `ociup serve --admission`: the mutating admission webhook. AdmissionReviews sent straight to
//! the service (its authentication, what names a nick, the patch), and the webhook called by a
//! real kube-apiserver (v1.26, from `../shared/k8s`, started by `scripts/test.sh`; without it
//! that test says it was skipped): Pods naming a nick come back from the API pinned to its
//! version, regenerated when the base moved, one version for many Pods at once, and the
//! refuse / stale policies when the registry is gone.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use ociup_kube::k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use ociup_kube::k8s_openapi::api::apps::v1::Deployment;
use ociup_kube::k8s_openapi::api::batch::v1::{CronJob, Job};
use ociup_kube::k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use ociup_kube::kube::api::{Api, DeleteParams, PostParams};
use ociup_kube::{Cluster, ConnectOptions};
use serde_json::{Value, json};

use crate::registry_support::{RegistryOptions, TestRegistry};
use crate::serve_tls::{Https, ca, curl, leaf};
use crate::support::{copy_tree, fixtures, json as parse, ociup_at, ok_at};

/// A nick `app` on a base in a layout (`base:latest`), its versions pushed to a real registry,
/// a layout catalog; a CA and the service's certificate for 127.0.0.1; a requester token.
struct Setup {
    t: tempfile::TempDir,
    reg: TestRegistry,
    ca: PathBuf,
    token: String,
    /// How many times the base has moved (each move is a new base image).
    moves: usize,
}

impl Setup {
    fn new() -> Setup {
        let reg = TestRegistry::start(RegistryOptions::default());
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        copy_tree(&fixtures().join("base"), &d.join("base"));
        std::fs::write(d.join("app.txt"), b"app\n").unwrap();
        let base = format!("oci:{}/base:latest", d.display());
        ok_at(
            d,
            &[
                "register",
                "app",
                "--base",
                &base,
                "--to",
                &format!("{}/team/app", reg.host()),
                "--add",
                "app.txt:/opt/app.txt",
            ],
        );
        let ca = ca(d, "ca");
        leaf(d, "ca", "server", "127.0.0.1", true);
        let token = ok_at(
            d,
            &[
                "token",
                "create",
                "apiserver",
                "--role",
                "requester",
                "--file",
                "tokens.json",
            ],
        )
        .trim()
        .to_owned();
        Setup {
            t,
            reg,
            ca,
            token,
            moves: 0,
        }
    }

    fn dir(&self) -> &Path {
        self.t.path()
    }

    /// `ociup serve --admission` with TLS, on loopback, and `extra` flags.
    fn serve(&self, extra: &[&str]) -> Https {
        let write = format!("{}/team/*", self.reg.host());
        let mut args = vec![
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
            "--tls-cert",
            "server.pem",
            "--tls-key",
            "server.key",
            "--admission",
            "--admission-caller",
            "apiserver",
            "--admission-caller",
            "kube-apiserver",
        ];
        args.extend_from_slice(extra);
        Https::start(self.dir(), "127.0.0.1:0", &args)
    }

    /// The base's tag moves to an image it never pointed to: an upgrade is due.
    fn move_base(&mut self) {
        self.moves += 1;
        let d = self.dir();
        let file = d.join(format!("move-{}.txt", self.moves));
        std::fs::write(&file, format!("move {}\n", self.moves)).unwrap();
        let base = format!("oci:{}/base", d.display());
        ok_at(
            d,
            &[
                "append",
                "--base",
                &format!("{base}:latest"),
                "--add",
                &format!("{}:/etc/move", file.display()),
                "--to",
                &format!("{base}:latest"),
            ],
        );
        let (code, out, err) = ociup_at(d, &["resolve", "app", "--check"]);
        assert_eq!((code, out.trim()), (0, "upgrade due"), "{err}");
    }

    /// The digest-pinned references of the nick's versions, oldest first.
    fn versions(&self) -> Vec<String> {
        let history = parse(&ok_at(self.dir(), &["history", "app", "--json"]));
        let mut v: Vec<(u64, String)> = history
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["number"].as_u64().unwrap(),
                    format!(
                        "{}/team/app@{}",
                        self.reg.host(),
                        r["digest"].as_str().unwrap()
                    ),
                )
            })
            .collect();
        v.sort();
        v.into_iter().map(|(_, d)| d).collect()
    }

    /// The actor of the nick's newest version.
    fn last_actor(&self) -> String {
        let history = parse(&ok_at(self.dir(), &["history", "app", "--json"]));
        history
            .as_array()
            .unwrap()
            .iter()
            .max_by_key(|r| r["number"].as_u64())
            .unwrap()["actor"]
            .as_str()
            .unwrap()
            .to_owned()
    }
}

/// An AdmissionReview of a CREATE of `object` (of `kind`) by Kubernetes user `user`.
fn review(kind: &str, object: &Value, user: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "0b9a6f8e-1111-2222-3333-444455556666",
            "kind": {"group": "", "version": "v1", "kind": kind},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "default",
            "operation": "CREATE",
            "userInfo": {"username": user},
            "object": object,
            "dryRun": false,
        },
    }))
    .unwrap()
}

fn pod(image: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "main", "image": image}]},
    })
}

/// The service's answer to a review: `response`, and its JSONPatch decoded (empty when none).
fn admit(s: &Https, setup: &Setup, token: Option<&str>, body: &[u8]) -> (Value, Vec<Value>) {
    admit_as(s, setup, None, token, body)
}

/// [`admit`] presenting a client certificate too.
fn admit_as(
    s: &Https,
    setup: &Setup,
    cert: Option<(&Path, &Path)>,
    token: Option<&str>,
    body: &[u8],
) -> (Value, Vec<Value>) {
    let (code, status, out) = curl(
        &format!("{}/v1/admission", s.url()),
        &setup.ca,
        cert,
        token,
        "POST",
        Some(body),
    );
    assert_eq!(
        (code, status),
        (0, 200),
        "{}\n{}",
        String::from_utf8_lossy(&out),
        s.log()
    );
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["kind"], "AdmissionReview");
    assert_eq!(v["response"]["uid"], "0b9a6f8e-1111-2222-3333-444455556666");
    let patch = v["response"]["patch"].as_str().map_or_else(Vec::new, |p| {
        serde_json::from_slice(&base64::engine::general_purpose::STANDARD.decode(p).unwrap())
            .unwrap()
    });
    (v["response"].clone(), patch)
}

#[test]
fn admission_reviews_pin_nicks_and_authenticate_their_caller() {
    let mut setup = Setup::new();
    let d = setup.dir().to_owned();
    // The webhook needs TLS; unauthenticated reviews only on loopback.
    let (code, _, err) = ociup_at(
        &d,
        &[
            "serve",
            "--tokens",
            "tokens.json",
            "--catalog",
            "oci:catalog",
            "--admission",
        ],
    );
    assert!(code == 2 && err.contains("--tls-cert"), "{err}");
    let (code, _, err) = ociup_at(
        &d,
        &[
            "serve",
            "--listen",
            "0.0.0.0:0",
            "--tokens",
            "tokens.json",
            "--catalog",
            "oci:catalog",
            "--allow-write",
            "oci:catalog",
            "--tls-cert",
            "server.pem",
            "--tls-key",
            "server.key",
            "--admission",
            "--admission-unauthenticated",
        ],
    );
    assert!(
        code == 1 && err.contains("--admission-unauthenticated"),
        "{err}"
    );
    // No caller named; a timeout of 0; a certificate name that cannot be one: refused, saying so.
    let tls = [
        "serve",
        "--tokens",
        "tokens.json",
        "--catalog",
        "oci:catalog",
        "--allow-write",
        "oci:catalog",
        "--tls-cert",
        "server.pem",
        "--tls-key",
        "server.key",
    ];
    for (extra, exit, says) in [
        (&["--admission"][..], 1, "--admission-caller NAME"),
        (
            &["--admission", "--admission-timeout", "0"][..],
            2,
            "--admission-timeout",
        ),
        (
            &["--client-ca", "ca.pem", "--cert-role", "a:b=admin"][..],
            1,
            "the certificate name \"a:b\"",
        ),
    ] {
        let args: Vec<&str> = tls.iter().chain(extra).copied().collect();
        let (code, _, err) = ociup_at(&d, &args);
        assert!(code == exit && err.contains(says), "{extra:?}: {err}");
    }

    // The API server may authenticate with a client certificate (its kubeConfigFile) too.
    let (client, client_key) = leaf(&d, "ca", "apiserver", "kube-apiserver", false);
    let (stranger, stranger_key) = leaf(&d, "ca", "stranger", "someone-else", false);
    // A nick whose versions go to a layout: a cluster cannot pull it.
    let base = format!("oci:{}/base:latest", d.display());
    ok_at(
        &d,
        &[
            "register",
            "local",
            "--base",
            &base,
            "--to",
            &format!("oci:{}/out", d.display()),
            "--add",
            "app.txt:/opt/app.txt",
        ],
    );
    let s = setup.serve(&[
        "--client-ca",
        "ca.pem",
        "--cert-role",
        "kube-apiserver=requester",
        "--allow-write",
        "oci:out",
        "--rate-limit",
        "1/m",
    ]);
    let token = setup.token.clone();
    // A token of another name, even an admin's, is not a webhook caller: 403.
    let admin = ok_at(
        &d,
        &[
            "token",
            "create",
            "ops",
            "--role",
            "admin",
            "--file",
            "tokens.json",
        ],
    );
    let (_, status, body) = curl(
        &format!("{}/v1/admission", s.url()),
        &setup.ca,
        None,
        Some(admin.trim()),
        "POST",
        Some(&review("Pod", &pod("ociup.dev/app"), "jane")),
    );
    let body = String::from_utf8_lossy(&body);
    assert!(
        status == 403 && body.contains("--admission-caller ops"),
        "{status} {body}"
    );
    // A client certificate's caller is rate limited as a token's is (1/m: the second is 429).
    let statuses: Vec<u16> = (0..2)
        .map(|_| {
            curl(
                &format!("{}/v1/status", s.url()),
                &setup.ca,
                Some((&client, &client_key)),
                None,
                "GET",
                None,
            )
            .1
        })
        .collect();
    assert_eq!(statuses, [200, 429]);
    // No credentials: 401 (the API server then applies the webhook's failurePolicy).
    let (_, status, body) = curl(
        &format!("{}/v1/admission", s.url()),
        &setup.ca,
        None,
        None,
        "POST",
        Some(&review("Pod", &pod("ociup.dev/app"), "jane")),
    );
    assert_eq!(status, 401, "{}", String::from_utf8_lossy(&body));

    // A Pod naming no nick: admitted untouched, without a registry request.
    let registry_requests = |r: &TestRegistry| {
        ["GET", "HEAD", "PUT", "POST"]
            .iter()
            .map(|m| r.requests(m, "/v2/"))
            .sum::<usize>()
    };
    let before = registry_requests(&setup.reg);
    let (r, patch) = admit(
        &s,
        &setup,
        Some(&token),
        &review("Pod", &pod("busybox:1"), "jane"),
    );
    assert_eq!(
        (r["allowed"].as_bool(), patch.len()),
        (Some(true), 0),
        "{r}"
    );
    assert!(r.get("patchType").is_none());
    assert_eq!(registry_requests(&setup.reg), before, "no registry access");

    // `ociup.dev/app`: rewritten to the current version, by digest.
    let v1 = setup.versions();
    assert_eq!(v1.len(), 1);
    let (r, patch) = admit(
        &s,
        &setup,
        Some(&token),
        &review("Pod", &pod("ociup.dev/app"), "jane"),
    );
    assert_eq!(r["allowed"], true, "{r}");
    assert_eq!(r["patchType"], "JSONPatch");
    assert_eq!(
        patch,
        [json!({"op": "replace", "path": "/spec/containers/0/image", "value": v1[0]})]
    );

    // Names meant for ociup but wrong, and unknown nicks: denied, saying why.
    for (image, says) in [
        ("ociup.dev/app:v1", "no tag or digest"),
        ("ociup.dev/nope", "no managed image is registered"),
    ] {
        let (r, patch) = admit(
            &s,
            &setup,
            Some(&token),
            &review("Pod", &pod(image), "jane"),
        );
        assert_eq!(r["allowed"], false, "{image}: {r}");
        assert!(patch.is_empty());
        let message = r["status"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{image}: {message}");
    }

    // The base moved. A dry run pins the current version and writes nothing; a nick whose
    // versions go to a layout is denied before anything is resolved (nothing written either).
    setup.move_base();
    let mut dry: Value =
        serde_json::from_slice(&review("Pod", &pod("ociup.dev/app"), "jane")).unwrap();
    dry["request"]["dryRun"] = json!(true);
    let (r, patch) = admit(&s, &setup, Some(&token), &serde_json::to_vec(&dry).unwrap());
    assert_eq!(
        (&r["allowed"], &patch[0]["value"]),
        (&json!(true), &json!(v1[0])),
        "{r}"
    );
    assert_eq!(setup.versions(), v1, "a dry run writes nothing");
    let local_versions = || {
        parse(&ok_at(&d, &["history", "local", "--json"]))
            .as_array()
            .unwrap()
            .len()
    };
    let before = local_versions();
    let (r, _) = admit(
        &s,
        &setup,
        Some(&token),
        &review("Pod", &pod("ociup.dev/local"), "jane"),
    );
    let message = r["status"]["message"].as_str().unwrap_or_default();
    assert!(
        r["allowed"] == false && message.contains("a cluster cannot pull"),
        "{r}"
    );
    assert_eq!(
        local_versions(),
        before,
        "no version written for a layout nick"
    );

    // A Deployment by user jane regenerates; jane is the actor recorded, the service for the
    // webhook caller (the token apiserver) its via.
    let deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "annotations": {"ociup.dev/nick.side": "app"}},
        "spec": {"template": {"spec": {"containers": [
            {"name": "main", "image": "ociup.dev/app"},
            {"name": "side", "image": "registry.example/side:1"},
            {"name": "other", "image": "busybox"},
        ]}}},
    });
    let (r, patch) = admit(
        &s,
        &setup,
        Some(&token),
        &review("Deployment", &deployment, "jane"),
    );
    assert_eq!(r["allowed"], true, "{r}");
    let versions = setup.versions();
    assert_eq!(versions.len(), 2, "one new version");
    assert_eq!(
        patch,
        [
            json!({"op": "replace", "path": "/spec/template/spec/containers/0/image", "value": versions[1]}),
            json!({"op": "replace", "path": "/spec/template/spec/containers/1/image", "value": versions[1]}),
        ]
    );
    assert_eq!(setup.last_actor(), "k8s:jane");
    let history = parse(&ok_at(&d, &["history", "app", "--json"]));
    let newest = history
        .as_array()
        .unwrap()
        .iter()
        .max_by_key(|r| r["number"].as_u64())
        .unwrap();
    let via = newest["via"].as_str().unwrap_or_default();
    assert!(
        via.starts_with("ociup-serve@") && via.ends_with(" for apiserver"),
        "{newest}"
    );

    // A client certificate with a role is a caller; one without is refused (403).
    let (r, patch) = admit_as(
        &s,
        &setup,
        Some((&client, &client_key)),
        None,
        &review("Pod", &pod("ociup.dev/app"), "jane"),
    );
    assert_eq!(r["allowed"], true, "{r}");
    assert_eq!(patch[0]["value"], versions[1].as_str());
    let (_, status, body) = curl(
        &format!("{}/v1/admission", s.url()),
        &setup.ca,
        Some((&stranger, &stranger_key)),
        None,
        "POST",
        Some(&review("Pod", &pod("ociup.dev/app"), "jane")),
    );
    assert_eq!(status, 403, "{}", String::from_utf8_lossy(&body));

    // The registry stops answering (SIGSTOP) while the base has moved: with a 1 s timeout and
    // the stale policy, the Pod is admitted within about that with the last version, marked;
    // the regeneration it started goes on and records the version once the registry is back.
    let quick = setup.serve(&["--admission-timeout", "1", "--admission-failure", "stale"]);
    setup.move_base();
    let signal = |sig: &str| {
        let pid = setup.reg.pid().to_string();
        assert!(
            std::process::Command::new("kill")
                .args([sig, &pid])
                .status()
                .unwrap()
                .success()
        );
    };
    signal("-STOP");
    let started = Instant::now();
    let (r, patch) = admit(
        &quick,
        &setup,
        Some(&token),
        &review("Pod", &pod("ociup.dev/app"), "jane"),
    );
    let took = started.elapsed();
    signal("-CONT");
    assert_eq!(r["allowed"], true, "{r}");
    assert!(took < Duration::from_secs(4), "answered after {took:?}");
    assert_eq!(patch[0]["value"], versions[1].as_str(), "the last version");
    assert_eq!(patch[1]["path"], "/metadata/annotations");
    let note = patch[1]["value"]["ociup.dev/stale"].as_str().unwrap();
    assert!(
        note.contains("admission timeout") && note.contains("version 2"),
        "{note}"
    );
    assert!(
        r["warnings"][0].as_str().unwrap().contains("version 2"),
        "{r}"
    );
    until(
        Duration::from_secs(60),
        "the version the regeneration records",
        || setup.versions().len() == 3,
    );
}

/// The API server `scripts/test.sh` started, as its admin; `None` (the test says it was
/// skipped) when there is none. As in job.rs: never a cluster other than the loopback one
/// `../shared/k8s/start.sh` made.
fn cluster(test: &str) -> Option<(tokio::runtime::Runtime, Cluster)> {
    let (Some(kubeconfig), Some(_)) = (
        std::env::var_os("KUBECONFIG").filter(|k| !k.is_empty()),
        std::env::var_os("KUBE_STATE_DIR").filter(|k| !k.is_empty()),
    ) else {
        eprintln!(
            "{test}: skipped: no Kubernetes API server (KUBECONFIG and KUBE_STATE_DIR unset: \
             scripts/test.sh starts one from ../shared/k8s, absent here or not started)"
        );
        return None;
    };
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
    let cluster = rt
        .block_on(Cluster::connect(&ConnectOptions {
            kubeconfig: Some(PathBuf::from(kubeconfig)),
            context: None,
        }))
        .unwrap();
    Some((rt, cluster))
}

/// A namespace of the test's own with a mutating webhook configuration that sends its Pods and
/// Deployments to `service`; both removed on drop.
struct Scoped<'a> {
    rt: &'a tokio::runtime::Runtime,
    cluster: &'a Cluster,
    ns: String,
}

impl<'a> Scoped<'a> {
    fn new(
        rt: &'a tokio::runtime::Runtime,
        cluster: &'a Cluster,
        name: &str,
        service: &Https,
        ca: &Path,
    ) -> Scoped<'a> {
        let ns = format!(
            "{name}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_micros()
        );
        let scoped = Scoped { rt, cluster, ns };
        let all: Api<Namespace> = Api::all(cluster.client().clone());
        rt.block_on(all.create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": scoped.ns}})).unwrap(),
        ))
        .unwrap();
        // Pods need the namespace's default ServiceAccount (the controller manager makes it).
        let sa: Api<ServiceAccount> = Api::namespaced(cluster.client().clone(), &scoped.ns);
        until(
            Duration::from_secs(60),
            "the default ServiceAccount",
            || rt.block_on(sa.get_opt("default")).unwrap().is_some(),
        );
        let config = json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": scoped.ns},
            "webhooks": [{
                "name": "pin.ociup.dev",
                "clientConfig": {
                    "url": format!("{}/v1/admission", service.url()),
                    "caBundle": base64::engine::general_purpose::STANDARD
                        .encode(std::fs::read(ca).unwrap()),
                },
                "rules": [
                    {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                     "resources": ["pods"]},
                    {"apiGroups": ["apps"], "apiVersions": ["v1"], "operations": ["CREATE"],
                     "resources": ["deployments"]},
                    {"apiGroups": ["batch"], "apiVersions": ["v1"], "operations": ["CREATE"],
                     "resources": ["jobs", "cronjobs"]},
                ],
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": scoped.ns}},
                "sideEffects": "NoneOnDryRun",
                "admissionReviewVersions": ["v1"],
                "failurePolicy": "Fail",
                "timeoutSeconds": 10,
            }],
        });
        rt.block_on(scoped.webhooks().create(
            &PostParams::default(),
            &serde_json::from_value(config).unwrap(),
        ))
        .unwrap();
        // The API server takes the configuration up after a moment: a dry-run create of a Pod
        // naming the nick comes back pinned once it has.
        let dry = PostParams {
            dry_run: true,
            ..PostParams::default()
        };
        until(Duration::from_secs(30), "the webhook called", || {
            scoped
                .rt
                .block_on(
                    scoped
                        .pods()
                        .create(&dry, &pod_named("probe", "ociup.dev/app")),
                )
                .is_ok_and(|p| !image(&p).starts_with("ociup.dev/"))
        });
        scoped
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.cluster.client().clone(), &self.ns)
    }

    fn webhooks(&self) -> Api<MutatingWebhookConfiguration> {
        Api::all(self.cluster.client().clone())
    }

    /// Creates a Pod: as the API server stored it, or its refusal.
    fn create(&self, name: &str, image: &str) -> Result<Pod, String> {
        self.rt
            .block_on(
                self.pods()
                    .create(&PostParams::default(), &pod_named(name, image)),
            )
            .map_err(|e| e.to_string())
    }
}

impl Drop for Scoped<'_> {
    fn drop(&mut self) {
        let _ = self
            .rt
            .block_on(self.webhooks().delete(&self.ns, &DeleteParams::default()));
        let all: Api<Namespace> = Api::all(self.cluster.client().clone());
        let _ = self
            .rt
            .block_on(all.delete(&self.ns, &DeleteParams::background()));
    }
}

fn until(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < end, "no {what} after {limit:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn pod_named(name: &str, image: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "main", "image": image}]},
    }))
    .unwrap()
}

fn image(pod: &Pod) -> String {
    pod.spec.as_ref().unwrap().containers[0]
        .image
        .clone()
        .unwrap_or_default()
}

#[test]
fn the_webhook_pins_pods_of_a_real_api_server() {
    let Some((rt, cluster)) = cluster("the_webhook_pins_pods_of_a_real_api_server") else {
        return;
    };
    let mut setup = Setup::new();
    // The API server of ../shared/k8s presents no credentials to webhooks: loopback only.
    let refuse = setup.serve(&["--admission-unauthenticated"]);
    let stale = setup.serve(&[
        "--admission-unauthenticated",
        "--admission-failure",
        "stale",
    ]);
    let a = Scoped::new(&rt, &cluster, "admit-refuse", &refuse, &setup.ca);
    let b = Scoped::new(&rt, &cluster, "admit-stale", &stale, &setup.ca);

    // A Pod naming the nick comes back from the API pinned to its version; one naming none is
    // untouched; a Deployment's pod template is pinned.
    let v = setup.versions();
    assert_eq!(v.len(), 1);
    let p = a.create("first", "ociup.dev/app").unwrap();
    assert_eq!(image(&p), v[0]);
    let p = a.create("plain", "busybox:1").unwrap();
    assert_eq!(image(&p), "busybox:1");
    let deployments: Api<Deployment> = Api::namespaced(cluster.client().clone(), &a.ns);
    let made = rt
        .block_on(
            deployments.create(
                &PostParams::default(),
                &serde_json::from_value(json!({
                    "metadata": {"name": "web"},
                    "spec": {
                        "selector": {"matchLabels": {"app": "web"}},
                        "template": {
                            "metadata": {"labels": {"app": "web"}},
                            "spec": {"containers": [{"name": "main", "image": "ociup.dev/app"}]},
                        },
                    },
                }))
                .unwrap(),
            ),
        )
        .unwrap();
    let template = made.spec.unwrap().template.spec.unwrap();
    assert_eq!(template.containers[0].image.as_deref(), Some(v[0].as_str()));
    // A Job is pinned; a CronJob is not (each Job it creates is, when created).
    let job_spec = json!({"template": {"spec": {
        "restartPolicy": "Never",
        "containers": [{"name": "main", "image": "ociup.dev/app"}],
    }}});
    let jobs: Api<Job> = Api::namespaced(cluster.client().clone(), &a.ns);
    let job = rt
        .block_on(
            jobs.create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": "once"}, "spec": job_spec}))
                    .unwrap(),
            ),
        )
        .unwrap();
    let template = job.spec.unwrap().template.spec.unwrap();
    assert_eq!(template.containers[0].image.as_deref(), Some(v[0].as_str()));
    let cron_jobs: Api<CronJob> = Api::namespaced(cluster.client().clone(), &a.ns);
    let cron = rt
        .block_on(
            cron_jobs.create(
                &PostParams::default(),
                &serde_json::from_value(json!({
                    "metadata": {"name": "nightly"},
                    "spec": {"schedule": "0 0 1 1 *", "jobTemplate": {"spec": job_spec}},
                }))
                .unwrap(),
            ),
        )
        .unwrap();
    let template = cron
        .spec
        .unwrap()
        .job_template
        .spec
        .unwrap()
        .template
        .spec
        .unwrap();
    assert_eq!(
        template.containers[0].image.as_deref(),
        Some("ociup.dev/app")
    );

    // The base moved: the next Pod gets a new version.
    setup.move_base();
    let p = a.create("second", "ociup.dev/app").unwrap();
    let v = setup.versions();
    assert_eq!(v.len(), 2);
    assert_eq!(image(&p), v[1]);
    assert_eq!(
        setup.last_actor(),
        "k8s:admin",
        "the API server's user is recorded"
    );

    // Moved again, then 8 Pods at once: one new version, which every Pod gets.
    setup.move_base();
    let images: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let a = &a;
                scope.spawn(move || a.create(&format!("burst-{i}"), "ociup.dev/app"))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| image(&h.join().unwrap().unwrap()))
            .collect()
    });
    let v = setup.versions();
    assert_eq!(v.len(), 3, "exactly one version for 8 Pods at once");
    assert!(images.iter().all(|i| *i == v[2]), "{images:?} vs {v:?}");

    // The base moved and the registry gone: refuse denies, saying why; stale admits the last
    // version, annotated.
    setup.move_base();
    setup.reg.kill();
    let e = a.create("refused", "ociup.dev/app").unwrap_err();
    assert!(
        e.contains("denied the request") && e.contains("ociup: nick app"),
        "{e}"
    );
    let p = b.create("stale", "ociup.dev/app").unwrap();
    assert_eq!(image(&p), v[2]);
    let note = p
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("ociup.dev/stale"))
        .cloned()
        .unwrap_or_default();
    assert!(
        note.contains("app:") && note.contains("version 3"),
        "{note:?}"
    );
    assert_eq!(setup.versions().len(), 3, "nothing recorded");
    drop((a, b));
    drop((refuse, stale));
}

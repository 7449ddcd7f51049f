//! `ociup register --server` and `ociup run NICK --server` (a module of `serve.rs`, sharing its
//! helpers): a requester with an empty home and no registry environment registers (admin
//! token) and runs a nick whose image it can read only through the service, on a registry
//! that hands out bearer tokens; and the service's blob route serves only what the nick's
//! versions reach.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use super::{Served, client, client_command, http, requests_counted, token};
use crate::registry_support::{AuthMode, RegistryOptions, TestRegistry};
use crate::support::{busybox, can_run, json, sha256, write};

/// A tree holding busybox (a shell and a few tools) and /etc/base-version.
fn busybox_tree(dir: &Path, version: &str) {
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    if !dir.join("bin/busybox").exists() {
        std::fs::copy(busybox().unwrap(), dir.join("bin/busybox")).unwrap();
        for a in ["sh", "cat", "echo"] {
            std::os::unix::fs::symlink("busybox", dir.join("bin").join(a)).unwrap();
        }
    }
    write(
        &dir.join("etc/base-version"),
        format!("{version}\n").as_bytes(),
        0o644,
    );
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// A GET over a plain TcpStream: the raw answer, as much of it as arrives before the
/// connection ends (cut or closed).
fn raw_get(addr: &str, path: &str, token: &str) -> Vec<u8> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    let mut buf = [0; 4096];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
    }
    raw
}

#[test]
fn register_and_run_through_the_service() {
    if busybox().is_none() {
        eprintln!("SKIPPED: needs a static busybox (scripts/test.sh installs busybox-static)");
        return;
    }
    let reg = TestRegistry::start(RegistryOptions {
        auth: AuthMode::Token,
        tls: false,
    });
    let host = reg.host();
    let (user, password) = reg.credentials().unwrap();
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let home = d.join("client-home");
    let catalog = format!("{host}/ociup/catalog");
    // ociup here with the registry's credentials: the operator's side, and the local
    // commands whose output the client's must equal.
    let local = |cwd: &Path, data: &Path, args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_ociup"))
            .args(args)
            .current_dir(cwd)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", data)
            .env("OCIUP_CATALOG", &catalog)
            .env("OCIUP_USERNAME", &user)
            .env("OCIUP_PASSWORD", &password)
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let ops = d.join("ops");
    std::fs::create_dir_all(&ops).unwrap();
    let ok = |args: &[&str]| {
        let (code, out, err) = local(d, &ops, args);
        assert_eq!(code, 0, "{args:?}: {err}");
        out
    };
    // The base: busybox and /etc/base-version, BASE=v1, in the registry.
    let base = format!("{host}/base/bb:latest");
    let push_base = |version: &str| {
        busybox_tree(&d.join("bb"), version);
        ok(&[
            "append",
            "--base",
            "scratch",
            "--add",
            &format!("{}:/", d.join("bb").display()),
            "--env",
            &format!("BASE={version}"),
            "--to",
            &base,
        ]);
    };
    push_base("v1");
    let root = token(d, "root", "admin");
    let carol = token(d, "carol", "requester");
    let s = Served::start(
        d,
        &[
            "--tokens",
            "tokens.json",
            "--catalog",
            &catalog,
            "--allow-read",
            &format!("{host}/base/*"),
            "--allow-write",
            &format!("{host}/apps/*"),
            "--allow-write",
            &catalog,
        ],
        &[
            ("OCIUP_USERNAME", user.as_str()),
            ("OCIUP_PASSWORD", password.as_str()),
        ],
    );
    let url = s.url();
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(home.join("app.conf"), "mode = served\n").unwrap();
    let target = format!("{host}/apps/app");
    let register = |nick: &str, extra: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = vec![
            "register".into(),
            nick.into(),
            "--base".into(),
            base.clone(),
            "--to".into(),
            target.clone(),
            "--env".into(),
            "MODE=served".into(),
        ];
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        args
    };

    // A file the recipe names is missing: the error `register` gives here, from the client,
    // before anything is sent.
    let sent = requests_counted(&s, "/v1/register", None, None);
    let missing = register("app", &["--add", "missing.txt:/etc/missing"]);
    let (code, _, err) = client(d, &url, &root, &strs(&missing));
    let (local_code, _, local_err) = local(&home, &ops, &strs(&missing));
    assert_eq!((code, &err), (local_code, &local_err));
    assert!(code == 1 && err.contains("missing.txt"), "{err}");
    assert_eq!(
        requests_counted(&s, "/v1/register", None, None),
        sent,
        "nothing was sent"
    );
    // Local-only flags are refused, as for the other commands.
    let mut keyed = register("app", &["--add", "app.conf:/etc/app.conf"]);
    keyed.extend(["--sign-key".to_owned(), "/tmp/k.pem".to_owned()]);
    let (code, _, err) = client(d, &url, &root, &strs(&keyed));
    assert!(
        code == 1 && err.contains("--sign-key: through a service"),
        "{err}"
    );

    // A requester may not register: 403, nothing registered.
    let app = register("app", &["--add", "app.conf:/etc/app.conf"]);
    let (code, _, err) = client(d, &url, &carol, &strs(&app));
    assert!(code == 1 && err.contains("forbidden"), "{err}");
    assert_eq!(requests_counted(&s, "/v1/register", None, None), sent + 1);
    // The admin registers from an empty home: what `register` prints, for the version the
    // catalog records (with the requester as actor, the service beside it).
    let (code, out, err) = client(d, &url, &root, &strs(&app));
    assert_eq!(code, 0, "{err}\n{}", s.log());
    let v1 = json(&ok(&["history", "app", "--json"]))[0].clone();
    assert_eq!(
        (v1["actor"].as_str(), v1["number"].as_u64()),
        (Some("root"), Some(1))
    );
    assert!(
        v1["via"]
            .as_str()
            .is_some_and(|v| v.starts_with("ociup-serve@"))
    );
    assert_eq!(
        out,
        format!(
            "registered app version 1\n  {}\n  base {} ({})\n",
            v1["image"].as_str().unwrap(),
            v1["base"].as_str().unwrap(),
            v1["base_digest"].as_str().unwrap()
        )
    );
    // Another nick in the same repository, from a recipe file (its files named relative to
    // its folder), --json: the version record, as `register --json` prints it.
    write(&home.join("sub/other.txt"), b"other\n", 0o644);
    let recipe = serde_json::json!({
        "nick": "other", "base": base, "target": target,
        "steps": [{"add": {"src": "other.txt", "dest": "/etc/other.txt"}}],
    });
    std::fs::write(home.join("sub/recipe.json"), recipe.to_string()).unwrap();
    let (code, out, err) = client(
        d,
        &url,
        &root,
        &["register", "--recipe", "sub/recipe.json", "--json"],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out), json(&ok(&["history", "other", "--json"]))[0]);

    // Modes (setuid on a file, a directory's own mode) and a file named recipe.json, as the
    // upload's recipe is: the same recipe registered here and through the service, at the same
    // SOURCE_DATE_EPOCH, makes the same image.
    let here = d.join("here");
    for root in [&home, &here] {
        write(
            &root.join("recipe.json"),
            b"{\"not\": \"the recipe\"}\n",
            0o644,
        );
        write(&root.join("tool"), b"#!/bin/sh\n", 0o4755);
        write(&root.join("d/inner.txt"), b"inner\n", 0o640);
        std::fs::set_permissions(root.join("d"), std::fs::Permissions::from_mode(0o750)).unwrap();
    }
    let modes = |nick: &str| {
        let mut args = register(nick, &[]);
        args.extend(
            [
                "--add",
                "recipe.json:/etc/recipe.json",
                "--add",
                "tool:/usr/local/bin/tool",
                "--add",
                "d:/opt/d",
                "--json",
            ]
            .map(str::to_owned),
        );
        args
    };
    let (code, out, err) = client(d, &url, &root, &strs(&modes("modes")));
    assert_eq!(code, 0, "{err}\n{}", s.log());
    // Here: the same nick (it names the config's history) in a catalog and repository of its own.
    let mut here_args = modes("modes");
    let to = here_args.iter().position(|a| a == "--to").unwrap() + 1;
    here_args[to] = format!("{host}/apps/modes-here");
    here_args.extend([
        "--catalog".to_owned(),
        format!("oci:{}", d.join("here-catalog").display()),
    ]);
    let (code, out_here, err) = local(&here, &ops, &strs(&here_args));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        json(&out)["digest"],
        json(&out_here)["digest"],
        "the same image through the service as here"
    );
    // Refused before anything is sent: files that are one (hard links), and a layout named
    // relative to this machine's folder.
    std::fs::hard_link(home.join("tool"), home.join("tool-again")).unwrap();
    let sent = requests_counted(&s, "/v1/register", None, None);
    let linked = register(
        "linked",
        &["--add", "tool:/bin/a", "--add", "tool-again:/bin/b"],
    );
    let (code, _, err) = client(d, &url, &root, &strs(&linked));
    assert!(code == 1 && err.contains("hard links"), "{err}");
    let relative = [
        "register",
        "rel",
        "--base",
        &base,
        "--to",
        "oci:images",
        "--add",
        "tool:/bin/a",
    ];
    let (code, _, err) = client(d, &url, &root, &relative);
    assert!(
        code == 1 && err.contains("oci:images is a layout relative to this machine"),
        "{err}"
    );
    assert_eq!(
        requests_counted(&s, "/v1/register", None, None),
        sent,
        "nothing was sent"
    );

    // The blob route: what the nick's versions reach, nothing else.
    let manifest = |nick: &str, digest: &str, tok: Option<&str>| {
        http(
            &s.addr,
            "GET",
            &format!("/v1/nicks/{nick}/blobs/{digest}"),
            tok,
            None,
        )
    };
    let v1_digest = v1["digest"].as_str().unwrap();
    let r = manifest("app", v1_digest, Some(&carol));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(sha256(&r.body), v1_digest);
    assert_eq!(
        r.header("content-type"),
        json(&String::from_utf8_lossy(&r.body))["mediaType"].as_str()
    );
    let layers = |body: &[u8]| -> Vec<String> {
        json(&String::from_utf8_lossy(body))["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["digest"].as_str().unwrap().to_owned())
            .collect()
    };
    let app_layers = layers(&r.body);
    let own = app_layers.last().unwrap();
    let r = manifest("app", own, Some(&carol));
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    assert_eq!(&sha256(&r.body), own, "the layer, whole and checked");
    // HEAD: the size from the descriptor, no body.
    let head = http(
        &s.addr,
        "HEAD",
        &format!("/v1/nicks/app/blobs/{own}"),
        Some(&carol),
        None,
    );
    let size = r.body.len().to_string();
    assert_eq!(
        (head.status, head.header("content-length"), head.body.len()),
        (200, Some(size.as_str()), 0)
    );
    // Without a token: 401.
    assert_eq!(
        manifest("app", own, None).error(),
        (401, "unauthorized".into())
    );
    // The other nick's own layer is in the same repository, but no version of app reaches
    // it: 404 through app, 200 through other.
    let other = json(&ok(&["history", "other", "--json"]))[0]["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    let other_layer = layers(&manifest("other", &other, Some(&carol)).body)
        .last()
        .unwrap()
        .clone();
    assert!(!app_layers.contains(&other_layer));
    assert_eq!(
        manifest("app", &other_layer, Some(&carol)).error(),
        (404, "not_found".into())
    );
    assert_eq!(manifest("other", &other_layer, Some(&carol)).status, 200);
    assert_eq!(
        manifest("app", &other, Some(&carol)).error(),
        (404, "not_found".into()),
        "another nick's manifest"
    );
    assert_eq!(
        manifest("app", "sha256:nothex", Some(&carol)).error(),
        (400, "invalid_request".into())
    );

    // A dry run through the service (it needs neither root nor runc): the JSON of a dry run
    // here, the layers unpacked from the service into the requester's cache, then cached.
    let dry_args = ["run", "app", "--dry-run", "--", "cat", "/etc/app.conf"];
    let out = client_command(d, &url, &carol, &dry_args)
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}\n{}", s.log());
    let mut dry = json(&String::from_utf8_lossy(&out.stdout));
    let (code, dry_here, err) = local(&home, &home, &dry_args);
    assert_eq!(code, 0, "{err}");
    let mut dry_here = json(&dry_here);
    assert_eq!(dry["digest"].as_str(), Some(v1_digest));
    assert_eq!(
        dry["unpacked"].as_array().map(Vec::len),
        Some(app_layers.len()),
        "every layer, read through the service: {dry}"
    );
    assert_eq!(dry_here["unpacked"], serde_json::json!([]), "cached");
    assert_eq!(
        (dry["assembled"].as_bool(), dry_here["assembled"].as_bool()),
        (Some(true), Some(false))
    );
    for key in ["unpacked", "assembled"] {
        dry[key].take();
        dry_here[key].take();
    }
    assert_eq!(dry, dry_here);
    // ociup's own failures before the run exit 125, as `run` does here: no token, a bad
    // nick, --image (read with one's own credentials), a local-only flag.
    let out = client_command(d, &url, &carol, &dry_args)
        .env_remove("OCIUP_TOKEN")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code() == Some(125) && err.contains("needs a token"),
        "{err}"
    );
    for (args, says) in [
        (&["run", "Bad/Nick", "--", "true"][..], "the nick"),
        (&["run", "--image", &base, "--", "true"][..], "--image"),
        (
            &["run", "app", "--catalog", "oci:/x", "--", "true"][..],
            "--catalog",
        ),
    ] {
        let (code, _, err) = client(d, &url, &carol, args);
        assert!(code == 125 && err.contains(says), "{args:?}: {err}");
    }

    // The base moves: a new busybox layer (another /etc/base-version) and BASE=v2. Before a
    // version holds it, the route refuses it.
    push_base("v2");
    let base_v2 = json(&ok(&["inspect", &base, "--json"]));
    let new_base_layer = base_v2["manifest"]["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(!app_layers.contains(&new_base_layer));
    assert_eq!(
        manifest("app", &new_base_layer, Some(&carol)).error(),
        (404, "not_found".into())
    );

    if !can_run("the `ociup run --server` part") {
        return;
    }
    // The requester runs app: the service upgrades it (the requester has no credentials), the
    // image of version 2 is read through the service and run here; the exit status is the
    // container's.
    let script = "cat /etc/base-version /etc/app.conf; echo $BASE $MODE; exit 3";
    let run_args = ["run", "app", "--", "sh", "-c", script];
    let with_path = |mut c: Command| {
        c.env("PATH", std::env::var_os("PATH").unwrap_or_default());
        let out = c.output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = with_path(client_command(d, &url, &carol, &run_args));
    assert_eq!(code, 3, "{err}\n{}", s.log());
    assert_eq!(out, "v2\nmode = served\nv2 served\n");
    assert!(
        err.contains("ociup: app upgraded to version 2 (base sha256:"),
        "{err}"
    );
    let v2 = json(&ok(&["history", "app", "--json"]))[0].clone();
    assert_eq!(
        (v2["number"].as_u64(), v2["actor"].as_str()),
        (Some(2), Some("carol"))
    );
    // Now a version reaches the new base layer: served.
    assert_eq!(manifest("app", &new_base_layer, Some(&carol)).status, 200);
    // The same run here, with the credentials: the same output and status.
    let (code_here, out_here, err_here) = local(d, &ops, &run_args);
    assert_eq!((code_here, &out_here), (3, &out), "{err_here}");
    // --dry-run --json: the same JSON both ways (the same data directory, so the same cached
    // root file system; nothing is due now).
    let (code, dry, err) = with_path(client_command(
        d,
        &url,
        &carol,
        &["run", "app", "--dry-run", "--", "cat", "/etc/app.conf"],
    ));
    assert_eq!(code, 0, "{err}");
    let (code, dry_here, err) = local(
        &home,
        &home,
        &["run", "app", "--dry-run", "--", "cat", "/etc/app.conf"],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&dry), json(&dry_here));
    assert_eq!(json(&dry)["digest"], v2["digest"]);
    assert_eq!(
        json(&dry)["unpacked"],
        serde_json::json!([]),
        "cached by the run"
    );
}

/// A layer whose bytes no longer match its digest (a layout target changed on disk) is never
/// relayed whole: the answer stops short of its Content-Length, and the service goes on.
#[test]
fn a_blob_that_does_not_match_its_digest_is_cut_short() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let dir = d.display().to_string();
    std::fs::write(d.join("app.conf"), "mode = test\n".repeat(100)).unwrap();
    crate::support::ok_at(
        d,
        &[
            "register",
            "app",
            "--base",
            &format!("oci:{}:v1", super::base_dir().display()),
            "--to",
            &format!("oci:{dir}/images"),
            "--add",
            "app.conf:/etc/app.conf",
        ],
    );
    let alice = token(d, "alice", "requester");
    let s = Served::start(
        d,
        &[
            "--tokens",
            "tokens.json",
            "--catalog",
            "oci:catalog",
            "--allow-read",
            &format!("oci:{}", super::base_dir().display()),
            "--allow-write",
            "oci:images",
            "--allow-write",
            "oci:catalog",
        ],
        &[],
    );
    let digest = json(&crate::support::ok_at(d, &["history", "app", "--json"]))[0]["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    let get = |digest: &str| {
        http(
            &s.addr,
            "GET",
            &format!("/v1/nicks/app/blobs/{digest}"),
            Some(&alice),
            None,
        )
    };
    let manifest = json(&String::from_utf8_lossy(&get(&digest).body));
    let layer = manifest["layers"].as_array().unwrap().last().unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    let whole = get(&layer);
    assert_eq!((whole.status, sha256(&whole.body)), (200, layer.clone()));
    let config = json(&String::from_utf8_lossy(
        &get(manifest["config"]["digest"].as_str().unwrap()).body,
    ));
    let diff_id = config["rootfs"]["diff_ids"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .as_str()
        .unwrap()
        .replace(':', "-");
    // The same number of bytes, one of them changed.
    let file = d
        .join("images/blobs/sha256")
        .join(layer.trim_start_matches("sha256:"));
    let mut bytes = std::fs::read(&file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&file, &bytes).unwrap();
    // Whatever arrives (the head and part of the body, or nothing when the service gives up
    // before its first write goes out), the changed bytes never do, whole.
    let raw = raw_get(&s.addr, &format!("/v1/nicks/app/blobs/{layer}"), &alice);
    assert!(
        !raw.windows(bytes.len()).any(|w| w == &bytes[..]),
        "the changed blob was relayed whole"
    );
    if let Some(head) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
        let text = String::from_utf8_lossy(&raw[..head]).to_ascii_lowercase();
        assert!(
            text.starts_with("http/1.1 200")
                && text.contains(&format!("content-length: {}", bytes.len())),
            "{text}"
        );
        assert!(raw.len() - head - 4 < bytes.len());
    }
    assert_eq!(s.call("GET", "/healthz", None, None).status, 200);
    // A dry run through the service reads the layer to unpack it: it fails as ociup's own
    // failure (125), and nothing of that layer is in the requester's cache.
    let out = client_command(
        d,
        &s.url(),
        &alice,
        &["run", "app", "--dry-run", "--", "true"],
    )
    .env("PATH", std::env::var_os("PATH").unwrap_or_default())
    .output()
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}\n{}", s.log());
    let layers = d.join("client-home/.local/share/ociup/rootfs-cache/layers");
    let cached: Vec<String> = std::fs::read_dir(&layers)
        .map(|r| {
            r.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        !cached
            .iter()
            .any(|n| *n == diff_id || *n == format!("{diff_id}.caller")),
        "{diff_id} in {cached:?}"
    );
}

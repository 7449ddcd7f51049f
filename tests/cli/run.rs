//! `ociup run` against the real runc: exit status, arguments, environment, working directory,
//! user, bind mounts, a read-only root file system whose files are the layer cache's, a
//! writable copy, the cache reused across runs and images, `prune`, a nick upgraded at run
//! time, hostile layers, signals. The image is busybox (static) with a few files.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::support::{self, busybox, json, repo, write};
use crate::unpack::{entry, layout_with, tar_of};

/// Whether runc can run containers here; says why not.
fn can_run() -> bool {
    support::can_run("`ociup run` tests")
}

/// A scratch area: the data directory (layer cache, bundles), the catalog and a layout `lay`
/// holding `app`: busybox with /etc/passwd (root, app 1000:1001 in group wheel too),
/// /etc/motd, FOO=image, Cmd `echo default`, WorkingDir /srv.
struct Scene {
    t: tempfile::TempDir,
}

impl Scene {
    fn new() -> Scene {
        let s = Scene {
            t: tempfile::tempdir().unwrap(),
        };
        let bb = s.path("bb");
        std::fs::create_dir_all(bb.join("bin")).unwrap();
        std::fs::create_dir_all(bb.join("srv")).unwrap();
        std::fs::copy(busybox().unwrap(), bb.join("bin/busybox")).unwrap();
        for a in [
            "sh", "echo", "cat", "id", "pwd", "env", "sleep", "true", "ls", "touch", "stat",
            "unshare", "mkdir",
        ] {
            std::os::unix::fs::symlink("busybox", bb.join("bin").join(a)).unwrap();
        }
        write(
            &bb.join("etc/passwd"),
            b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001:app:/home/app:/bin/sh\n",
            0o644,
        );
        write(
            &bb.join("etc/group"),
            b"root:x:0:\napp:x:1001:\nwheel:x:10:app\n",
            0o644,
        );
        write(&bb.join("etc/motd"), b"from the image\n", 0o644);
        // A relative symlink climbing out of its directory, to a path the image lacks.
        std::os::unix::fs::symlink("../nowhere", bb.join("etc/link")).unwrap();
        s.ok(&[
            "append",
            "--base",
            "scratch",
            "--add",
            &format!("{}:/", bb.display()),
            "--env",
            "FOO=image",
            "--cmd",
            r#"["echo","default"]"#,
            "--workdir",
            "/srv",
            "--to",
            &s.image("app"),
        ]);
        s
    }

    fn path(&self, p: &str) -> PathBuf {
        self.t.path().join(p)
    }

    fn image(&self, tag: &str) -> String {
        format!("oci:{}:{tag}", self.path("lay").display())
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_ociup"));
        c.args(args)
            .env_remove("SOURCE_DATE_EPOCH")
            .env_remove("OCIUP_RUNTIME")
            .env("XDG_DATA_HOME", self.path("data"))
            .env("XDG_CACHE_HOME", self.path("cache"))
            .env(
                "OCIUP_CATALOG",
                format!("oci:{}", self.path("catalog").display()),
            )
            .stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "ociup {args:?} failed ({:?}): {}{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `ociup run --image lay:app [flags] -- args`: (exit code, stdout, stderr).
    fn run_app(&self, flags: &[&str], args: &[&str]) -> (i32, String, String) {
        let image = self.image("app");
        let mut all = vec!["run", "--image", &image];
        all.extend_from_slice(flags);
        all.push("--");
        all.extend_from_slice(args);
        let out = self.run(&all);
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn cache(&self) -> PathBuf {
        self.path("data/ociup/rootfs-cache")
    }

    /// The cache's layer directories (by name) with the inode of each.
    fn cached_layers(&self) -> Vec<(String, u64)> {
        let mut out: Vec<(String, u64)> = std::fs::read_dir(self.cache().join("layers"))
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| e.file_type().unwrap().is_dir())
            .map(|e| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    e.metadata().unwrap().ino(),
                )
            })
            .collect();
        out.sort();
        out
    }
}

#[test]
fn run_passes_exit_status_args_env_workdir_user_and_mounts() {
    if !can_run() {
        return;
    }
    let s = Scene::new();
    // The image's Cmd; then arguments replacing it; the exit status is the container's.
    let (code, out, _) = s.run_app(&[], &[]);
    assert_eq!((code, out.as_str()), (0, "default\n"));
    let (code, out, err) = s.run_app(&[], &["sh", "-c", "echo out; echo err >&2; exit 7"]);
    assert_eq!((code, out.as_str(), err.as_str()), (7, "out\n", "err\n"));
    let (code, out, _) = s.run_app(&[], &["echo", "two words", "x"]);
    assert_eq!((code, out.as_str()), (0, "two words x\n"));
    // --entrypoint drops the Cmd.
    let (code, out, _) = s.run_app(&["--entrypoint", r#"["echo","from-entrypoint"]"#], &[]);
    assert_eq!((code, out.as_str()), (0, "from-entrypoint\n"));
    // Env and --env over it; PATH and HOME defaults.
    let (_, out, _) = s.run_app(
        &["--env", "BAR=given", "-e", "FOO=over"],
        &["sh", "-c", "echo $FOO $BAR $PATH $HOME"],
    );
    assert_eq!(
        out,
        "over given /usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin /root\n"
    );
    // WorkingDir, --workdir (an existing one, and one the image lacks).
    assert_eq!(s.run_app(&[], &["pwd"]).1, "/srv\n");
    assert_eq!(s.run_app(&["--workdir", "/etc"], &["pwd"]).1, "/etc\n");
    assert_eq!(
        s.run_app(&["--workdir", "/made/here"], &["pwd"]).1,
        "/made/here\n"
    );
    // --user by name (groups from the image's /etc/group), by numbers.
    let (_, out, _) = s.run_app(
        &["--user", "app"],
        &["sh", "-c", "id -u; id -g; id -G; echo $HOME"],
    );
    assert_eq!(out, "1000\n1001\n1001 10\n/home/app\n");
    let (_, out, _) = s.run_app(&["--user", "4242:77"], &["sh", "-c", "id -u; id -g"]);
    assert_eq!(out, "4242\n77\n");
    let (code, _, err) = s.run_app(&["--user", "nobody"], &["true"]);
    assert!(code == 125 && err.contains("nobody"), "{code} {err}");
    // Bind mounts: read-write and read-only.
    let host = s.path("host");
    write(&host.join("in.txt"), b"from the host\n", 0o644);
    let rw = format!("{}:/data", host.display());
    let (code, out, _) = s.run_app(
        &["--mount", &rw],
        &[
            "sh",
            "-c",
            "cat /data/in.txt && echo written > /data/out.txt",
        ],
    );
    assert_eq!((code, out.as_str()), (0, "from the host\n"));
    assert_eq!(std::fs::read(host.join("out.txt")).unwrap(), b"written\n");
    let ro = format!("{}:/data:ro", host.display());
    let (code, _, _) = s.run_app(&["--mount", &ro], &["sh", "-c", "echo x > /data/no.txt"]);
    assert_ne!(code, 0);
    assert!(!host.join("no.txt").exists());
    // A mount onto `/etc/link -> ../nowhere`: runc makes /nowhere, in a copy of the root file
    // system for this run, never in the shared snapshot.
    let onto_link = format!("{}:/etc/link:ro", host.display());
    let (code, out, err) = s.run_app(&["--mount", &onto_link], &["cat", "/nowhere/in.txt"]);
    assert_eq!((code, out.as_str()), (0, "from the host\n"), "{err}");
    for snap in std::fs::read_dir(s.cache().join("snapshots")).unwrap() {
        let rootfs = snap.unwrap().path().join("rootfs");
        if rootfs.is_dir() {
            assert!(!rootfs.join("nowhere").exists(), "{}", rootfs.display());
            assert!(!rootfs.join("etc/nowhere").exists());
        }
    }
    let (code, _, err) = s.run_app(
        &["--mount", &format!("{}:/etc/../x", host.display())],
        &["true"],
    );
    assert!(code != 0 && err.contains("`..`"), "{err}");
    let missing = format!("{}:/data", s.path("no-such-dir").display());
    let (code, _, err) = s.run_app(&["--mount", &missing], &["true"]);
    assert!(
        code != 0 && err.contains("no-such-dir") && err.contains("source"),
        "{err}"
    );
    // No network by default: only a loopback device.
    let (_, out, _) = s.run_app(&[], &["ls", "/sys/class/net"]);
    assert_eq!(out, "lo\n");
    // The cache, the bundles and runc's state are only root's (they hold setuid files).
    for d in ["rootfs-cache", "bundles", "runc"] {
        let m = std::fs::metadata(s.path("data/ociup").join(d)).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o700, "{d}");
    }
    // Every bundle was removed; --keep keeps one.
    let bundles = s.path("data/ociup/bundles");
    assert_eq!(std::fs::read_dir(&bundles).unwrap().count(), 0);
    let (code, _, err) = s.run_app(&["--keep"], &["true"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(code, 0);
    let kept = std::fs::read_dir(&bundles)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert!(err.contains(&kept.display().to_string()), "{err}");
    let spec = json(&std::fs::read_to_string(kept.join("config.json")).unwrap());
    assert_eq!(spec["process"]["args"], serde_json::json!(["true"]));
    assert_eq!(spec["process"]["noNewPrivileges"], true);
}

#[test]
fn run_reuses_the_layer_cache_and_never_writes_into_it() {
    if !can_run() {
        return;
    }
    let s = Scene::new();
    let image = s.image("app");
    let dry = json(&s.ok(&["run", "--image", &image, "--dry-run"]));
    assert_eq!(dry["layers"], 1);
    assert_eq!(dry["unpacked"].as_array().unwrap().len(), 1);
    assert_eq!(dry["assembled"], true);
    assert_eq!(dry["read_only"], true);
    assert_eq!(
        dry["spec"]["process"]["args"],
        serde_json::json!(["echo", "default"])
    );
    assert_eq!(dry["reference"], image.as_str());
    let doc = std::fs::read_to_string(repo().join("docs/json.md")).unwrap();
    let section = doc.split("## `ociup run --dry-run`").nth(1).unwrap();
    let section = section.split("\n## ").next().unwrap();
    for key in dry.as_object().unwrap().keys() {
        assert!(
            section.contains(&format!("| `{key}` |")),
            "{key} not in docs/json.md"
        );
    }
    assert_eq!(dry["private_copy"], false);
    // A dry run that would need its own copy makes none: it names the snapshot.
    let host = s.path("host");
    std::fs::create_dir_all(&host).unwrap();
    let mount = format!("{}:/not-in-image", host.display());
    let wants_copy = json(&s.ok(&["run", "--image", &image, "--mount", &mount, "--dry-run"]));
    assert_eq!(wants_copy["private_copy"], true);
    assert_eq!(wants_copy["rootfs"], dry["rootfs"]);
    assert!(
        Path::new(dry["rootfs"].as_str().unwrap())
            .join("etc/motd")
            .is_file()
    );
    let bundles = s.path("data/ociup/bundles");
    assert!(!bundles.exists() || std::fs::read_dir(&bundles).unwrap().count() == 0);
    let layers = s.cached_layers();
    assert_eq!(layers.len(), 1);
    let layer_tree = s.cache().join("layers").join(&layers[0].0).join("tree");
    let motd = layer_tree.join("etc/motd");

    // The root file system is the cache's, read-only: writing fails and changes nothing.
    let (code, _, err) = s.run_app(&[], &["sh", "-c", "echo changed > /etc/motd"]);
    assert_ne!(code, 0, "{err}");
    let (code, _, _) = s.run_app(&[], &["touch", "/etc/new-file"]);
    assert_ne!(code, 0);
    // /tmp is writable.
    let (code, out, _) = s.run_app(&[], &["sh", "-c", "echo t > /tmp/t && cat /tmp/t"]);
    assert_eq!((code, out.as_str()), (0, "t\n"));
    // --writable: the container writes its own copy, never the cache's files.
    let (code, out, _) = s.run_app(
        &["--writable"],
        &[
            "sh",
            "-c",
            "echo changed > /etc/motd && touch /etc/new-file && cat /etc/motd",
        ],
    );
    assert_eq!((code, out.as_str()), (0, "changed\n"));
    assert_eq!(std::fs::read(&motd).unwrap(), b"from the image\n");
    assert!(!layer_tree.join("etc/new-file").exists());
    assert_eq!(s.run_app(&[], &["cat", "/etc/motd"]).1, "from the image\n");

    // Runs after the first unpack nothing and assemble nothing: the layer directory is the
    // same one (same inode).
    let again = json(&s.ok(&["run", "--image", &image, "--dry-run"]));
    assert_eq!(again["unpacked"], serde_json::json!([]));
    assert_eq!(again["assembled"], false);
    assert_eq!(s.cached_layers(), layers);

    // The next image on the same base: only its own layer is unpacked.
    let extra = s.path("extra.txt");
    write(&extra, b"extra\n", 0o644);
    s.ok(&[
        "append",
        "--base",
        &image,
        "--add",
        &format!("{}:/opt/extra.txt", extra.display()),
        "--to",
        &s.image("next"),
    ]);
    let next = s.image("next");
    let (code, out, _) = {
        let o = s.run(&[
            "run",
            "--image",
            &next,
            "--",
            "cat",
            "/opt/extra.txt",
            "/etc/motd",
        ]);
        (
            o.status.code().unwrap(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            (),
        )
    };
    assert_eq!((code, out.as_str()), (0, "extra\nfrom the image\n"));
    let now = s.cached_layers();
    assert_eq!(now.len(), 2);
    assert!(
        now.contains(&layers[0]),
        "the base layer was unpacked again"
    );

    // prune: a dry run lists, removes nothing; --all removes every entry.
    let listed = json(&s.ok(&["prune", "--all", "--dry-run", "--json"]));
    assert_eq!(listed["removed"].as_array().unwrap().len(), 4, "{listed}");
    assert_eq!(s.cached_layers().len(), 2);
    let kept = json(&s.ok(&["prune", "--json"]));
    assert_eq!(kept["removed"], serde_json::json!([]));
    assert_eq!(kept["kept"], 4);
    let pruned = json(&s.ok(&["prune", "--all", "--json"]));
    assert_eq!(pruned["removed"].as_array().unwrap().len(), 4);
    assert!(pruned["bytes"].as_u64().unwrap() > 1_000_000, "{pruned}");
    let section = doc.split("## `ociup prune --json`").nth(1).unwrap();
    let section = section.split("\n## ").next().unwrap();
    for key in pruned.as_object().unwrap().keys() {
        assert!(
            section.contains(&format!("| `{key}` |")),
            "{key} not in docs/json.md"
        );
    }
    assert!(s.cached_layers().is_empty());
    // And a run after that unpacks again.
    assert_eq!(s.run_app(&[], &["cat", "/etc/motd"]).1, "from the image\n");
}

#[test]
fn run_of_a_nick_upgrades_it_when_its_base_moved() {
    if !can_run() {
        return;
    }
    let s = Scene::new();
    let marker = s.path("marker");
    write(&marker, b"base v1\n", 0o644);
    let base = s.image("base");
    s.ok(&[
        "append",
        "--base",
        &s.image("app"),
        "--add",
        &format!("{}:/base-marker", marker.display()),
        "--to",
        &base,
    ]);
    let app = s.path("app.txt");
    write(&app, b"custom\n", 0o644);
    let target = format!("oci:{}", s.path("target").display());
    s.ok(&[
        "register",
        "tool",
        "--base",
        &base,
        "--to",
        &target,
        "--add",
        &format!("{}:/opt/app.txt", app.display()),
    ]);
    let out = s.ok(&["run", "tool", "--", "cat", "/base-marker", "/opt/app.txt"]);
    assert_eq!(out, "base v1\ncustom\n");
    // The base moves.
    write(&marker, b"base v2\n", 0o644);
    s.ok(&[
        "append",
        "--base",
        &s.image("app"),
        "--add",
        &format!("{}:/base-marker", marker.display()),
        "--to",
        &base,
    ]);
    // --offline runs the current version without asking the base.
    let out = s.ok(&["run", "tool", "--offline", "--", "cat", "/base-marker"]);
    assert_eq!(out, "base v1\n");
    // A dry run plans the upgrade and writes nothing: the run after it still upgrades.
    let dry = json(&s.ok(&["run", "tool", "--dry-run"]));
    assert_eq!(
        (&dry["upgrade_due"], &dry["version"]),
        (&serde_json::json!(true), &serde_json::json!(2)),
        "{dry}"
    );
    assert!(dry["reference"].as_str().unwrap().contains("@sha256:"));
    let doc = std::fs::read_to_string(repo().join("docs/json.md")).unwrap();
    let section = doc.split("## `ociup run --dry-run`").nth(1).unwrap();
    let section = section.split("\n## ").next().unwrap();
    for key in dry.as_object().unwrap().keys() {
        assert!(section.contains(&format!("| `{key}` |")), "{key}");
    }
    let o = s.run(&["run", "tool", "--", "cat", "/base-marker", "/opt/app.txt"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "base v2\ncustom\n");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("upgraded to version 2"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let dry = json(&s.ok(&["run", "tool", "--dry-run"]));
    assert!(
        dry["reference"].as_str().unwrap().contains("@sha256:"),
        "{dry}"
    );
}

#[test]
fn hostile_layers_write_nothing_outside_the_cache() {
    if !can_run() {
        return;
    }
    let s = Scene::new();
    let pid = std::process::id();
    let host_tmp = PathBuf::from(format!("/tmp/ociup-run-escape-{pid}"));
    let host_root = PathBuf::from(format!("/ociup-run-escape-{pid}"));
    let sentinel = s.path("sentinel");
    write(&sentinel, b"untouched\n", 0o644);
    // busybox as the first layer, then the hostile one.
    let bb = std::fs::read(busybox().unwrap()).unwrap();
    let base = || {
        tar_of(|b| {
            entry(b, tar::EntryType::Directory, "bin/", "", b"");
            let mut h = tar::Header::new_ustar();
            h.set_path("bin/busybox").unwrap();
            h.set_mode(0o755);
            h.set_size(bb.len() as u64);
            h.set_cksum();
            b.append(&h, &bb[..]).unwrap();
            entry(b, tar::EntryType::Symlink, "bin/cat", "busybox", b"");
        })
    };
    let name = |p: &Path| p.to_str().unwrap().trim_start_matches('/').to_owned();
    let hostile = |with_link: bool| {
        tar_of(|b| {
            let dotdot = format!("../../..{}", host_root.display());
            entry(b, tar::EntryType::Regular, &dotdot, "", b"dotdot\n");
            entry(b, tar::EntryType::Symlink, "evil", "/", b"");
            let through = format!("evil/{}", name(&host_tmp));
            entry(b, tar::EntryType::Regular, &through, "", b"through\n");
            entry(
                b,
                tar::EntryType::Symlink,
                "up",
                "../../../../../../..",
                b"",
            );
            let up = format!("up/{}", name(&sentinel));
            entry(b, tar::EntryType::Regular, &up, "", b"overwritten\n");
            if with_link {
                entry(b, tar::EntryType::Link, "passwd-link", "/etc/passwd", b"");
            }
        })
    };
    let lay = s.path("hostile");
    layout_with(&lay, &[base(), hostile(true)]);
    let image = format!("oci:{}:v1", lay.display());
    let root_file = format!("/{}", name(&host_root));
    let o = s.run(&["run", "--image", &image, "--", "/bin/cat", &root_file]);
    // A hardlink to a file the tree lacks is refused, before anything runs.
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("passwd-link"), "{err}");
    assert!(!host_root.exists() && !host_tmp.exists());
    assert_eq!(std::fs::read(&sentinel).unwrap(), b"untouched\n");

    // Without the link it runs, and what the layer wrote is inside the cached root.
    std::fs::remove_dir_all(&lay).unwrap();
    layout_with(&lay, &[base(), hostile(false)]);
    let o = s.run(&["run", "--image", &image, "--", "/bin/cat", &root_file]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "dotdot\n");
    let dry = json(&s.ok(&["run", "--image", &image, "--dry-run", "--", "/bin/cat"]));
    let rootfs = PathBuf::from(dry["rootfs"].as_str().unwrap());
    let read = |p: &Path| std::fs::read_to_string(rootfs.join(name(p))).unwrap();
    assert_eq!(read(&host_root), "dotdot\n");
    assert_eq!(read(&host_tmp), "through\n");
    assert_eq!(read(&sentinel), "overwritten\n");
    assert!(!host_root.exists() && !host_tmp.exists());
    assert_eq!(std::fs::read(&sentinel).unwrap(), b"untouched\n");
}

#[test]
fn signals_reach_the_container() {
    if !can_run() {
        return;
    }
    let s = Scene::new();
    let image = s.image("app");
    // Fill the cache first, so the container starts at once.
    s.ok(&["run", "--image", &image, "--", "true"]);
    // Each signal reaches the container (which traps it), and ociup exits with its status.
    for (sig, code) in [("TERM", 42), ("INT", 43), ("HUP", 44)] {
        let script = format!(
            "trap 'echo got {sig}; exit {code}' {sig}; echo ready; while true; do sleep 0.1; done"
        );
        let mut child = s
            .cmd(&["run", "--image", &image, "--", "sh", "-c", &script])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = child.stdout.take().unwrap();
        let mut first = [0u8; 6];
        std::io::Read::read_exact(&mut out, &mut first).unwrap();
        assert_eq!(&first, b"ready\n");
        let killed = Command::new("kill")
            .args([&format!("-{sig}"), &child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let status = child.wait().unwrap();
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
        assert_eq!(rest, format!("got {sig}\n"));
        assert_eq!(status.code(), Some(code), "{sig}");
    }
    assert_eq!(
        std::fs::read_dir(s.path("data/ociup/bundles"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn two_runs_at_once_share_one_unpack() {
    if !can_run() {
        return;
    }
    let s = Scene::new();
    let image = s.image("app");
    let spawn = || {
        s.cmd(&["run", "--image", &image, "--", "cat", "/etc/motd"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    for child in [a, b] {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.stdout, b"from the image\n");
    }
    // One layer entry, one snapshot, no unfinished directory left.
    assert_eq!(s.cached_layers().len(), 1);
    let snapshots: Vec<_> = std::fs::read_dir(s.cache().join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".lock"))
        .collect();
    assert_eq!(snapshots.len(), 1, "{snapshots:?}");
    assert!(!snapshots[0].starts_with(".tmp-"));
}

/// The default seccomp profile refuses what it does not allow (unshare without CAP_SYS_ADMIN,
/// which the capabilities alone would let a user namespace through), `--seccomp unconfined`
/// and `--security-opt seccomp=unconfined` lift it, a profile file replaces it; exit statuses:
/// the container's, 127 for a command not found, 126 for one that cannot be executed, 125 for
/// ociup's own failures.
#[test]
fn seccomp_profiles_and_exit_statuses() {
    if !can_run() {
        return;
    }
    let s = Scene::new();
    let unshare = ["unshare", "-U", "echo", "in a user namespace"];
    let (code, out, err) = s.run_app(&[], &unshare);
    assert_ne!(code, 0, "{out}");
    assert!(err.contains("Operation not permitted"), "{err}");
    for flags in [
        ["--seccomp", "unconfined"],
        ["--security-opt", "seccomp=unconfined"],
    ] {
        let (code, out, err) = s.run_app(&flags, &unshare);
        assert_eq!(
            (code, out.as_str()),
            (0, "in a user namespace\n"),
            "{flags:?}: {err}"
        );
    }
    // Ordinary programs run under the default profile (the other tests run under it too).
    let (code, out, _) = s.run_app(
        &["--seccomp", "default"],
        &["sh", "-c", "mkdir /tmp/d && ls /tmp && id -u"],
    );
    assert_eq!((code, out.as_str()), (0, "d\n0\n"));
    // A profile file: everything allowed but mkdir.
    let profile = s.path("no-mkdir.json");
    let text = r#"{"defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}]}"#;
    write(&profile, text.as_bytes(), 0o644);
    let p = profile.display().to_string();
    let (code, _, err) = s.run_app(&["--seccomp", &p], &["mkdir", "/tmp/d"]);
    assert_ne!(code, 0);
    assert!(err.contains("Operation not permitted"), "{err}");
    let (code, out, err) = s.run_app(&["--seccomp", &p], &unshare);
    assert_eq!((code, out.as_str()), (0, "in a user namespace\n"), "{err}");
    // The kept spec holds the default profile.
    let dry = json(&s.ok(&["run", "--image", &s.image("app"), "--dry-run"]));
    assert_eq!(
        dry["spec"]["linux"]["seccomp"]["defaultAction"],
        "SCMP_ACT_ERRNO"
    );
    let dry = json(&s.ok(&[
        "run",
        "--image",
        &s.image("app"),
        "--dry-run",
        "--seccomp",
        "unconfined",
    ]));
    assert!(dry["spec"]["linux"].get("seccomp").is_none(), "{dry}");

    // Exit statuses.
    assert_eq!(s.run_app(&[], &["sh", "-c", "exit 1"]).0, 1);
    assert_eq!(s.run_app(&[], &["sh", "-c", "exit 125"]).0, 125);
    let (code, _, err) = s.run_app(&[], &["/bin/no-such-program"]);
    assert_eq!(code, 127, "{err}");
    assert!(err.contains("no-such-program"), "{err}");
    let (code, _, err) = s.run_app(&[], &["no-such-program"]);
    assert_eq!(code, 127, "{err}");
    // /etc/motd is no executable.
    let (code, _, err) = s.run_app(&[], &["/etc/motd"]);
    assert_eq!(code, 126, "{err}");
    // ociup's own failures: 125, said on stderr.
    for (flags, said) in [
        (vec!["--seccomp", "/no/such/profile.json"], "profile.json"),
        (vec!["--security-opt", "apparmor=x"], "only seccomp="),
        (
            vec![
                "--seccomp",
                "unconfined",
                "--security-opt",
                "seccomp=default",
            ],
            "more than once",
        ),
        (vec!["--runtime", "/no/such/runc"], "/no/such/runc"),
    ] {
        let (code, _, err) = s.run_app(&flags, &["true"]);
        assert_eq!(code, 125, "{flags:?}: {err}");
        assert!(err.contains(said), "{flags:?}: {err}");
    }
    // A usage error is clap's: 2.
    assert_eq!(s.run(&["run", "--no-such-flag"]).status.code(), Some(2));
    // Every bundle was removed, the failed ones too.
    assert_eq!(
        std::fs::read_dir(s.path("data/ociup/bundles"))
            .unwrap()
            .count(),
        0
    );
}

/// `prune` removes the bundles of killed runs (process gone, container unknown to runc) older
/// than --older-than, and keeps a live run's, runc's still known and fresh ones.
#[test]
fn prune_removes_the_bundles_of_killed_runs() {
    let s = Scene::new();
    let bundles = s.path("data/ociup/bundles");
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3 * 3600);
    let make = |name: &str, age: Option<std::time::SystemTime>| {
        let b = bundles.join(name);
        std::fs::create_dir_all(b.join("rootfs/etc")).unwrap();
        write(&b.join("config.json"), b"{}", 0o644);
        if let Some(t) = age {
            std::fs::File::open(&b).unwrap().set_modified(t).unwrap();
        }
        b
    };
    // pid_max is at most 2^22: no process has this pid.
    let dead = make("ociup-999999999-1", Some(old));
    let fresh = make("ociup-999999999-2", None);
    let live = make(&format!("ociup-{}-3", std::process::id()), Some(old));
    let running = make("ociup-999999999-4", Some(old));
    std::fs::create_dir_all(s.path("data/ociup/runc/ociup-999999999-4")).unwrap();
    let other = make("not-ours", Some(old));
    let dry = json(&s.ok(&["prune", "--older-than", "1h", "--dry-run", "--json"]));
    assert_eq!(
        dry["bundles"],
        serde_json::json!([dead.display().to_string()])
    );
    assert!(dead.exists());
    let done = json(&s.ok(&["prune", "--older-than", "1h", "--json"]));
    assert_eq!(done["bundles"], dry["bundles"]);
    assert!(!dead.exists());
    for kept in [&fresh, &live, &running, &other] {
        assert!(kept.exists(), "{}", kept.display());
    }
    let doc = std::fs::read_to_string(repo().join("docs/json.md")).unwrap();
    assert!(doc.contains("| `bundles` |"));
    // --all: the fresh one too, never a live run's or one runc knows.
    let all = json(&s.ok(&["prune", "--all", "--json"]));
    assert_eq!(
        all["bundles"],
        serde_json::json!([fresh.display().to_string()])
    );
    assert!(live.exists() && running.exists());
}

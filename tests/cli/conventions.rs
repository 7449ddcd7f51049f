//! What holds across commands: one naming convention for `--json` output, colour only on a
//! terminal, completions and a man page from the same definitions, a `--version` that names the
//! commit, `--to` with a tag honoured or refused.

use serde_json::Value;

use crate::support::{copy_tree, fixtures, json, ociup_at, ociup_err, ociup_ok, ok_at};

/// Whether a key follows ociup's convention for its own JSON: snake_case.
fn snake_case(key: &str) -> bool {
    !key.is_empty()
        && key.split('_').all(|part| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        })
}

/// Every key of `value` that is not snake_case, as a path; the values of keys in `verbatim`
/// are documents or maps printed as they are (an OCI manifest, an image config, labels) and
/// keep their own names.
fn bad_keys(value: &Value, verbatim: &[&str], path: &str, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let here = format!("{path}.{k}");
                if !snake_case(k) {
                    out.push(here.clone());
                }
                if !verbatim.contains(&k.as_str()) {
                    bad_keys(v, verbatim, &here, out);
                }
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                bad_keys(v, verbatim, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// Every key of `value` outside the values of `verbatim` keys.
fn keys(value: &Value, verbatim: &[&str], out: &mut std::collections::BTreeSet<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                out.insert(k.clone());
                if !verbatim.contains(&k.as_str()) {
                    keys(v, verbatim, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| keys(v, verbatim, out)),
        _ => {}
    }
}

/// Whether `doc` has `word` as a whole word (not inside a longer name).
fn mentions(doc: &str, word: &str) -> bool {
    let name = |c: char| c.is_ascii_alphanumeric() || c == '_';
    doc.match_indices(word).any(|(i, _)| {
        !doc[..i].chars().next_back().is_some_and(name)
            && !doc[i + word.len()..].chars().next().is_some_and(name)
    })
}

/// Checks one command's output: snake_case keys, each documented in docs/json.md.
fn check(what: &str, output: &str, verbatim: &[&str], failures: &mut Vec<String>) {
    let value = json(output);
    let mut bad = Vec::new();
    bad_keys(&value, verbatim, "", &mut bad);
    if !bad.is_empty() {
        failures.push(format!("{what}: not snake_case: {}", bad.join(", ")));
    }
    let doc = std::fs::read_to_string(crate::support::repo().join("docs/json.md")).unwrap();
    let mut all = std::collections::BTreeSet::new();
    keys(&value, verbatim, &mut all);
    let undocumented: Vec<_> = all.into_iter().filter(|k| !mentions(&doc, k)).collect();
    if !undocumented.is_empty() {
        failures.push(format!(
            "{what}: not in docs/json.md: {}",
            undocumented.join(", ")
        ));
    }
}

#[test]
fn json_keys_are_snake_case_in_every_command() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    copy_tree(&fixtures().join("base"), &dir.join("base"));
    std::fs::write(dir.join("app.txt"), b"app\n").unwrap();
    let base = |tag: &str| format!("oci:{}:{tag}", dir.join("base").display());
    let out = |tag: &str| format!("oci:{}:{tag}", dir.join("out").display());
    let mut failures = Vec::new();

    let layer = ociup_ok(&[
        "layer",
        "create",
        dir.join("app.txt").to_str().unwrap(),
        "--to",
        "/opt",
        "-o",
        dir.join("layer.tgz").to_str().unwrap(),
        "--json",
    ]);
    check("layer create", &layer, &[], &mut failures);
    let appended = ociup_ok(&[
        "append",
        "--base",
        &base("v1"),
        "--add",
        &format!("{}:/opt/app.txt", dir.join("app.txt").display()),
        "--label",
        "org.example.team=infra",
        "--to",
        &out("app"),
        "--json",
    ]);
    check("append", &appended, &[], &mut failures);
    // The manifest, index and config inspect shows are OCI documents, printed with their own
    // (camelCase, PascalCase) names.
    let verbatim = ["manifest", "index", "config"];
    check(
        "inspect",
        &ociup_ok(&["inspect", &out("app"), "--json"]),
        &verbatim,
        &mut failures,
    );
    let multi = format!("oci:{}:v1", fixtures().join("multi").display());
    check(
        "inspect (index)",
        &ociup_ok(&["inspect", &multi, "--json"]),
        &verbatim,
        &mut failures,
    );
    check(
        "copy",
        &ociup_ok(&["copy", &multi, &out("multi"), "--json"]),
        &[],
        &mut failures,
    );
    check(
        "append (index)",
        &ociup_ok(&[
            "append",
            "--base",
            &out("multi"),
            "--add",
            &format!("{}:/opt/app.txt", dir.join("app.txt").display()),
            "--to",
            &out("multi-app"),
            "--json",
        ]),
        &[],
        &mut failures,
    );
    for (platform, tag) in [("linux/amd64", "one-amd64"), ("linux/arm64", "one-arm64")] {
        ociup_ok(&["copy", &multi, &out(tag), "--platform", platform]);
    }
    check(
        "index create",
        &ociup_ok(&[
            "index",
            "create",
            "--to",
            &out("assembled"),
            &out("one-amd64"),
            &out("one-arm64"),
            "--json",
        ]),
        &[],
        &mut failures,
    );
    check(
        "unpack",
        &ociup_ok(&[
            "unpack",
            &out("app"),
            dir.join("rootfs").to_str().unwrap(),
            "--json",
        ]),
        &[],
        &mut failures,
    );
    // A plan's config changes show the config's fields as they are.
    let (code, plan, err) = ociup_at(
        dir,
        &[
            "rebase",
            &out("app"),
            "--new-base",
            &base("v2"),
            "--dry-run",
            "--json",
        ],
    );
    assert_eq!(code, 0, "rebase --dry-run: {err}");
    check("rebase --dry-run", &plan, &["old", "new"], &mut failures);

    // The managed commands, on a catalog of this directory.
    ok_at(dir, &["keygen", "--out", "signer"]);
    let signer = dir.join("signer.key");
    let signer = signer.to_str().unwrap();
    let images = format!("oci:{}", dir.join("images").display());
    for (what, args) in [
        (
            "register",
            vec![
                "register",
                "trainer",
                "--base",
                &base("latest"),
                "--to",
                &images,
                "--add",
                "app.txt:/opt/app.txt",
                "--sign-key",
                signer,
                "--json",
            ],
        ),
        ("resolve", vec!["resolve", "trainer", "--json"]),
        ("status", vec!["status", "--json"]),
        ("history", vec!["history", "trainer", "--json"]),
        (
            "verify",
            vec![
                "verify",
                "trainer",
                "--key",
                dir.join("signer.pub").to_str().unwrap(),
                "--json",
            ],
        ),
        ("replay", vec!["replay", "trainer@1", "--json"]),
        ("upgrade", vec!["upgrade", "--all", "--json"]),
        ("gc", vec!["gc", "--keep", "3", "--json"]),
    ] {
        let (code, stdout, stderr) = ociup_at(dir, &args);
        assert_eq!(code, 0, "{what}: {stderr}");
        check(what, &stdout, &["annotations", "labels"], &mut failures);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_checker_finds_camel_case_and_words() {
    assert!(mentions("a `tags_written` b", "tags_written"));
    assert!(!mentions("a `tags_written` b", "tags"));
    assert!(!mentions("blobs_present", "present"));
    let mut bad = Vec::new();
    bad_keys(
        &serde_json::json!({"media_type": 1, "diffID": 2, "x": [{"mediaType": 3}],
            "manifest": {"schemaVersion": 2}}),
        &["manifest"],
        "",
        &mut bad,
    );
    assert_eq!(bad, [".diffID", ".x[0].mediaType"]);
}

/// A loopback server that answers every request with an empty 404 and an HTTPS handshake with
/// garbage, so a client first tries HTTPS, falls back to HTTP (logging that at debug level),
/// then fails. Its address.
fn not_found_server() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                use std::io::{Read, Write};
                let mut buf = [0u8; 4096];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let answer = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
                    if conn.write_all(answer).is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn verbose_output_has_no_escape_codes_off_a_terminal() {
    let addr = not_found_server();
    for no_color in [None, Some("1")] {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_ociup"));
        cmd.args(["-v", "inspect", &format!("{addr}/team/app:v1")]);
        cmd.env_remove("NO_COLOR");
        if let Some(v) = no_color {
            cmd.env("NO_COLOR", v);
        }
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{err}");
        assert!(err.contains("DEBUG"), "-v logs at debug level: {err}");
        assert!(
            !err.contains('\u{1b}'),
            "escape codes on a pipe (NO_COLOR={no_color:?}): {err:?}"
        );
    }
}

/// Runs `ociup ARGS` on a pseudo-terminal (through util-linux's `script`): what it showed.
fn on_a_terminal(args: &str, no_color: Option<&str>) -> String {
    let mut cmd = std::process::Command::new("script");
    cmd.args([
        "-qec",
        &format!("{} {args}", env!("CARGO_BIN_EXE_ociup")),
        "/dev/null",
    ]);
    cmd.env_remove("NO_COLOR");
    if let Some(v) = no_color {
        cmd.env("NO_COLOR", v);
    }
    let out = cmd.output().expect("script (util-linux) runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn verbose_output_is_coloured_on_a_terminal_unless_no_color() {
    let addr = not_found_server();
    let args = format!("-v inspect {addr}/team/app:v1");
    let shown = on_a_terminal(&args, None);
    assert!(
        shown.contains("DEBUG") && shown.contains('\u{1b}'),
        "coloured on a terminal: {shown:?}"
    );
    for set in ["1", "true"] {
        let shown = on_a_terminal(&args, Some(set));
        assert!(shown.contains("DEBUG"), "{shown:?}");
        assert!(!shown.contains('\u{1b}'), "NO_COLOR={set}: {shown:?}");
    }
    // NO_COLOR set to the empty string does not count (no-color.org).
    assert!(on_a_terminal(&args, Some("")).contains('\u{1b}'));
}

/// The commands `ociup --help` lists.
fn commands() -> Vec<String> {
    let help = ociup_ok(&["--help"]);
    let list = help
        .split("Commands:")
        .nth(1)
        .expect("a Commands: section")
        .split("\n\n")
        .next()
        .unwrap();
    let names: Vec<String> = list
        .lines()
        .filter_map(|l| {
            // A command's line starts with two spaces and its name; wrapped help is indented more.
            let name = l.strip_prefix("  ")?.split_whitespace().next()?;
            (!l.starts_with("   ") && name != "help").then(|| name.to_owned())
        })
        .collect();
    assert!(names.len() > 10, "{names:?} from {help}");
    names
}

#[test]
fn completions_name_every_command() {
    let commands = commands();
    for shell in ["bash", "zsh", "fish"] {
        let script = ociup_ok(&["completions", shell]);
        for c in &commands {
            assert!(script.contains(c.as_str()), "{shell} completions lack {c}");
        }
        // Flags of a subcommand, too.
        assert!(script.contains("source-date-epoch"), "{shell}");
    }
    // The bash script is valid bash.
    let t = tempfile::tempdir().unwrap();
    let path = t.path().join("ociup.bash");
    std::fs::write(&path, ociup_ok(&["completions", "bash"])).unwrap();
    crate::support::tool("bash", &["-n", path.to_str().unwrap()]);
    let err = ociup_err(&["completions", "tcsh"]);
    assert!(err.contains("tcsh") && err.contains("bash"), "{err}");
}

#[test]
fn man_pages_from_the_same_definitions() {
    let page = ociup_ok(&["man"]);
    assert!(
        page.starts_with(".ie") || page.contains(".TH ociup 1"),
        "{page}"
    );
    for c in commands() {
        assert!(page.contains(c.as_str()), "the man page lacks {c}");
    }
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("man1");
    let listed = ociup_ok(&["man", "--out", dir.to_str().unwrap()]);
    for name in [
        "ociup.1",
        "ociup-append.1",
        "ociup-layer-create.1",
        "ociup-resolve.1",
    ] {
        let page =
            std::fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(page.contains(".TH"), "{name}");
        assert!(listed.contains(name), "{listed}");
    }
    let append = std::fs::read_to_string(dir.join("ociup-append.1")).unwrap();
    assert!(append.contains("clear\\-dir"), "append's flags: {append}");
}

#[test]
fn version_names_the_commit() {
    let shown = ociup_ok(&["--version"]);
    let version = env!("CARGO_PKG_VERSION");
    assert!(shown.starts_with(&format!("ociup {version}")), "{shown}");
    let repo = crate::support::repo();
    let in_git = std::process::Command::new("git")
        .args(["-C", repo.to_str().unwrap(), "rev-parse", "HEAD"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !in_git {
        // Built from a tarball: the version alone.
        assert_eq!(shown.trim(), format!("ociup {version}"));
        return;
    }
    let commit = shown
        .trim()
        .strip_prefix(&format!("ociup {version} ("))
        .and_then(|s| s.strip_suffix(')'))
        .unwrap_or_else(|| panic!("no commit in {shown:?}"));
    assert!(
        commit.len() >= 7 && commit.chars().all(|c| c.is_ascii_hexdigit()),
        "{commit}"
    );
    // The commit built is HEAD or, when others committed since the build, an ancestor of it.
    crate::support::tool(
        "git",
        &[
            "-C",
            repo.to_str().unwrap(),
            "merge-base",
            "--is-ancestor",
            commit,
            "HEAD",
        ],
    );
    // Subcommands say the same.
    assert_eq!(
        ociup_ok(&["copy", "--version"]).trim(),
        format!("ociup-copy {version} ({commit})")
    );
}

#[test]
fn a_tag_in_to_is_written_or_refused() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    std::fs::write(dir.join("app.txt"), b"app\n").unwrap();
    let base = format!("oci:{}:v1", fixtures().join("base").display());

    // register: versions are tagged with the nick, so a tag or digest in --to would be ignored.
    // A registry reference reads as :latest without one, and a port is not a tag. The source
    // file is missing, so a --to that passes stops there, before anything is written.
    let digest = format!("sha256:{}", "0".repeat(64));
    for to in [
        "127.0.0.1:5000/team/app:v1".to_owned(),
        "docker://127.0.0.1:5000/team/app:v1".to_owned(),
        format!("127.0.0.1:5000/team/app@{digest}"),
        format!("oci:{}:v1", dir.join("images").display()),
    ] {
        let (code, _, err) = ociup_at(
            dir,
            &[
                "register",
                "app",
                "--base",
                &base,
                "--to",
                &to,
                "--add",
                "missing:/x",
            ],
        );
        assert_eq!(code, 1, "{to}: {err}");
        assert!(
            err.contains(&format!("--to {to}")) && err.contains("without a tag"),
            "{to}: {err}"
        );
        assert!(!dir.join("catalog").exists(), "{to}: nothing written");
    }
    for to in [
        "127.0.0.1:5000/team/app".to_owned(),
        format!("oci:{}", dir.join("images").display()),
    ] {
        let (code, _, err) = ociup_at(
            dir,
            &[
                "register",
                "app",
                "--base",
                &base,
                "--to",
                &to,
                "--add",
                "missing:/x",
            ],
        );
        assert_eq!(code, 1, "{to}: {err}");
        assert!(
            !err.contains("without a tag") && err.contains("missing"),
            "{to}: {err}"
        );
    }

    // layer create: --to is a directory inside the image, not an image.
    let err = ociup_err(&[
        "layer",
        "create",
        dir.join("app.txt").to_str().unwrap(),
        "--to",
        "oci:out:v1",
        "-o",
        dir.join("l.tgz").to_str().unwrap(),
    ]);
    assert!(
        err.contains("--to oci:out:v1") && err.contains("ociup append"),
        "{err}"
    );
    assert!(!dir.join("l.tgz").exists());

    // append: the tag is written, and said.
    let to = format!("oci:{}:v7", dir.join("out").display());
    let add = format!("{}:/opt/app.txt", dir.join("app.txt").display());
    let text = ociup_ok(&["append", "--base", &base, "--add", &add, "--to", &to]);
    assert!(text.contains("  tag     v7"), "{text}");
    let made = json(&ociup_ok(&[
        "append", "--base", &base, "--add", &add, "--to", &to, "--json",
    ]));
    assert_eq!(made["tag"], "v7");
    let seen = json(&ociup_ok(&["inspect", &to, "--json"]));
    assert_eq!(seen["digest"], made["digest"]);
}

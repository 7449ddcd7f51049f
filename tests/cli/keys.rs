//! Signing keys: `ociup keygen --algorithm`, build manifests signed with ed25519 and ECDSA P-256
//! keys (ours and openssl's), and `ociup verify` telling the algorithms apart.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use crate::support::{fixtures, json, ociup_at, ok_at, tool};

fn err_at(dir: &Path, args: &[&str]) -> String {
    let (code, out, err) = ociup_at(dir, args);
    assert!(code != 0, "ociup {args:?} should have failed: {out}");
    err
}

/// A directory with the fixture base, a file to add, and `nick` registered on it, signed with
/// `key`.
fn register_signed(d: &Path, nick: &str, key: &str) {
    if !d.join("base").exists() {
        crate::support::copy_tree(&fixtures().join("base"), &d.join("base"));
        std::fs::write(d.join("f.txt"), b"payload\n").unwrap();
    }
    let out = json(&ok_at(
        d,
        &[
            "register",
            nick,
            "--base",
            "oci:base:v1",
            "--to",
            &format!("oci:{nick}-img"),
            "--add",
            "f.txt:/f.txt",
            "--sign-key",
            key,
            "--json",
        ],
    ));
    // [envelope digest, size]: signed.
    let envelope = out["build_manifest"][0].as_str().unwrap_or_default();
    assert!(envelope.starts_with("sha256:"), "{out}");
}

#[test]
fn a_p256_key_signs_and_only_its_public_key_verifies() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let said = ok_at(d, &["keygen", "--out", "p", "--algorithm", "p256"]);
    assert!(said.contains("p256 key id "), "{said}");
    let said = ok_at(d, &["keygen", "--out", "e"]);
    assert!(said.contains("ed25519 key id "), "{said}");
    let private = std::fs::read_to_string(d.join("p.key")).unwrap();
    assert!(
        private.starts_with("-----BEGIN PRIVATE KEY-----"),
        "{private}"
    );
    let mode = std::fs::metadata(d.join("p.key")).unwrap().permissions();
    assert_eq!(mode.mode() & 0o777, 0o600);
    // openssl, which nobody here wrote, reads both halves as P-256.
    let text = tool(
        "openssl",
        &[
            "pkey",
            "-in",
            d.join("p.key").to_str().unwrap(),
            "-noout",
            "-text",
        ],
    );
    assert!(text.contains("prime256v1"), "{text}");
    let text = tool(
        "openssl",
        &[
            "pkey",
            "-pubin",
            "-in",
            d.join("p.pub").to_str().unwrap(),
            "-noout",
            "-text",
        ],
    );
    assert!(text.contains("prime256v1"), "{text}");

    register_signed(d, "v", "p.key");
    let out = ok_at(d, &["verify", "v", "--key", "p.pub"]);
    assert!(out.contains("signature good"), "{out}");

    let err = err_at(d, &["verify", "v", "--key", "e.pub"]);
    assert!(
        err.contains("does not verify with ed25519 key") && err.contains("P-256"),
        "{err}"
    );

    // And the other way round: an ed25519 signature does not pass a P-256 key.
    register_signed(d, "w", "e.key");
    ok_at(d, &["verify", "w", "--key", "e.pub"]);
    let err = err_at(d, &["verify", "w", "--key", "p.pub"]);
    assert!(
        err.contains("does not verify with ECDSA P-256 key") && err.contains("ed25519"),
        "{err}"
    );

    // Another P-256 key is not this one.
    ok_at(d, &["keygen", "--out", "q", "--algorithm", "p256"]);
    let err = err_at(d, &["verify", "v", "--key", "q.pub"]);
    assert!(err.contains("another key made it"), "{err}");
}

#[test]
fn an_openssl_p256_key_signs_build_manifests() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let sh = |script: &str| {
        let out = Command::new("sh")
            .args(["-c", script])
            .current_dir(d)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    sh("openssl ecparam -name prime256v1 -genkey | openssl pkcs8 -topk8 -nocrypt -out o.key");
    sh("openssl ec -in o.key -pubout -out o.pub 2>/dev/null");
    register_signed(d, "v", "o.key");
    let out = ok_at(d, &["verify", "v", "--key", "o.pub"]);
    assert!(out.contains("signature good"), "{out}");
}

#[test]
fn keygen_names_the_algorithms_it_knows() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let err = err_at(d, &["keygen", "--out", "k", "--algorithm", "rsa"]);
    assert!(err.contains("ed25519") && err.contains("p256"), "{err}");
    assert!(!d.join("k.key").exists());
    let help = ok_at(d, &["keygen", "--help"]);
    assert!(
        help.contains("--algorithm") && help.contains("P-256") && help.contains("ed25519"),
        "{help}"
    );
}

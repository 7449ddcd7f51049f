//! The catalog cannot be forged quietly, and a signed nick never silently becomes unsigned:
//! entries edited outside ociup (annotations, version records, recipes) are refused by resolve,
//! edit and verify; a signed nick is not regenerated without its key unless `--unsigned` says
//! so (recorded in the audit trail); `status` shows which nicks are signed. Also the managed
//! commands' exit statuses, hints and `status --json` against its help.

use std::path::Path;
use std::process::Command;

use ociup_core::digest::Digest;
use ociup_core::document::RawDocument;
use ociup_core::layout::OciLayout;
use ociup_core::store::{ManifestRef, Store};
use serde_json::{Value, json};

use crate::registry_support::{AuthMode, RegistryOptions, TestRegistry};
use crate::support::{fixtures, json, ociup_at, ok_at, snapshot};

fn err_at(dir: &Path, args: &[&str]) -> String {
    let (code, out, err) = ociup_at(dir, args);
    assert_eq!(code, 1, "ociup {args:?} should have failed: {out}{err}");
    err
}

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Runtime::new().unwrap().block_on(f)
}

/// The catalog layout of the test directory.
fn catalog(d: &Path) -> OciLayout {
    OciLayout::open(d.join("catalog")).unwrap()
}

/// The manifest of `nick`'s entry, as JSON.
fn entry_of(d: &Path, nick: &str) -> Value {
    let raw = block_on(catalog(d).get_manifest(&ManifestRef::Tag(format!("nick.{nick}")))).unwrap();
    serde_json::from_slice(raw.bytes()).unwrap()
}

/// Writes `manifest` as `nick`'s entry, as someone with write access to the catalog could.
fn forge_entry(d: &Path, nick: &str, manifest: &Value) {
    let raw = RawDocument::canonical(manifest, ociup_core::media_type::OCI_MANIFEST).unwrap();
    block_on(catalog(d).put_manifest(&raw, Some(&format!("nick.{nick}")))).unwrap();
}

/// A blob of the catalog, as JSON.
fn catalog_blob(d: &Path, digest: &str) -> Value {
    let path = d
        .join("catalog/blobs/sha256")
        .join(digest.trim_start_matches("sha256:"));
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// Puts `value` into the catalog as a blob (canonical JSON): its descriptor's digest and size.
fn put_catalog_blob(d: &Path, value: &Value) -> (String, u64) {
    let bytes = ociup_core::document::canonical_json(value).unwrap();
    let digest = Digest::sha256(&bytes);
    block_on(catalog(d).put_blob(&digest, bytes.len() as u64, &bytes[..])).unwrap();
    (digest.to_string(), bytes.len() as u64)
}

/// The layer of `entry` with `media_type` (recipe, version, audit).
fn layer_mut<'a>(entry: &'a mut Value, media_type: &str) -> &'a mut Value {
    entry["layers"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|l| l["mediaType"] == media_type)
        .unwrap()
}

const RECIPE: &str = "application/vnd.ociup.recipe.v1+json";
const VERSION: &str = "application/vnd.ociup.version.v1+json";
const AUDIT: &str = "application/vnd.ociup.audit.v1+json";

/// A directory with a copy of the fixture base (`latest` at v1), a file to add and a key pair
/// `k`.
fn setup() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    crate::support::copy_tree(&fixtures().join("base"), &d.join("base"));
    std::fs::write(d.join("f.txt"), b"payload\n").unwrap();
    ok_at(d, &["keygen", "--out", "k"]);
    t
}

/// Registers `nick` on `oci:base:latest` into `oci:img`, adding f.txt and setting `env`; signed
/// with k.key when `signed`. Its version record as JSON.
fn register(d: &Path, nick: &str, env: &str, signed: bool) -> Value {
    let mut args = vec![
        "register",
        nick,
        "--base",
        "oci:base:latest",
        "--to",
        "oci:img",
        "--add",
        "f.txt:/f.txt",
        "--env",
        env,
        "--json",
    ];
    if signed {
        args.extend(["--sign-key", "k.key"]);
    }
    json(&ok_at(d, &args))
}

fn move_base(d: &Path) {
    ok_at(d, &["copy", "oci:base:v2", "oci:base:latest"]);
}

/// Everything the stores hold: the catalog and the images.
fn stores(
    d: &Path,
) -> (
    impl PartialEq + std::fmt::Debug,
    impl PartialEq + std::fmt::Debug,
) {
    (snapshot(&d.join("catalog")), snapshot(&d.join("img")))
}

#[test]
fn an_entry_edited_to_answer_another_nicks_image_is_refused() {
    let t = setup();
    let d = t.path();
    let a = register(d, "a", "A=1", false);
    let b = register(d, "b", "B=1", false);
    assert_ne!(a["digest"], b["digest"]);
    let genuine = entry_of(d, "a");

    // The annotations say b's image: until now, resolve answered it.
    let mut forged = genuine.clone();
    for key in [
        "dev.ociup.image",
        "dev.ociup.digest",
        "dev.ociup.version",
        "dev.ociup.base-digest",
    ] {
        forged["annotations"][key] = entry_of(d, "b")["annotations"][key].clone();
    }
    forge_entry(d, "a", &forged);
    for extra in [&[][..], &["--offline"], &["--check"]] {
        let mut args = vec!["resolve", "a"];
        args.extend_from_slice(extra);
        let err = err_at(d, &args);
        assert!(
            err.contains("catalog entry of a")
                && err.contains(b["image"].as_str().unwrap())
                && err.contains("changed outside ociup"),
            "{args:?}: {err}"
        );
    }

    // The version layer pointed at b's record, the annotations to match.
    let mut forged = entry_of(d, "b");
    forged["annotations"]["dev.ociup.nick"] = "a".into();
    *layer_mut(&mut forged, RECIPE) = layer_mut(&mut genuine.clone(), RECIPE).clone();
    forge_entry(d, "a", &forged);
    let err = err_at(d, &["resolve", "a"]);
    assert!(err.contains("record is of \"b\""), "{err}");

    // A record of a's own, naming an image outside a's target.
    let mut record = catalog_blob(
        d,
        layer_mut(&mut genuine.clone(), VERSION)["digest"]
            .as_str()
            .unwrap(),
    );
    let elsewhere = format!(
        "oci:{}@{}",
        d.join("other").display(),
        record["digest"].as_str().unwrap()
    );
    record["image"] = elsewhere.clone().into();
    let (digest, size) = put_catalog_blob(d, &record);
    let mut forged = genuine.clone();
    *layer_mut(&mut forged, VERSION) =
        json!({"mediaType": VERSION, "digest": digest, "size": size});
    forged["annotations"]["dev.ociup.image"] = elsewhere.into();
    forge_entry(d, "a", &forged);
    let err = err_at(d, &["resolve", "a"]);
    assert!(
        err.contains("which is not") && err.contains("in its target"),
        "{err}"
    );

    // Put back as it was: answered again.
    forge_entry(d, "a", &genuine);
    let out = json(&ok_at(d, &["resolve", "a", "--json"]));
    assert_eq!(out["digest"], a["digest"]);
}

#[test]
fn a_recipe_edited_outside_ociup_is_refused_not_signed() {
    let t = setup();
    let d = t.path();
    let first = register(d, "s", "MODE=train", true);
    let genuine = entry_of(d, "s");
    // The recipe blob swapped for one that sets another value, the entry otherwise intact.
    let mut recipe = catalog_blob(
        d,
        layer_mut(&mut genuine.clone(), RECIPE)["digest"]
            .as_str()
            .unwrap(),
    );
    let text = recipe
        .to_string()
        .replace("MODE\",\"value\":\"train", "MODE\",\"value\":\"evil");
    assert_ne!(text, recipe.to_string(), "{recipe}");
    recipe = serde_json::from_str(&text).unwrap();
    let (digest, size) = put_catalog_blob(d, &recipe);
    let mut forged = genuine.clone();
    *layer_mut(&mut forged, RECIPE) = json!({"mediaType": RECIPE, "digest": digest, "size": size});
    forge_entry(d, "s", &forged);

    // The base moves: the regeneration would apply the recipe and sign the result.
    move_base(d);
    let before = stores(d);
    let err = err_at(d, &["resolve", "s", "--sign-key", "k.key"]);
    assert!(
        err.contains("signed with recipe") && err.contains("changed outside ociup"),
        "{err}"
    );
    let err = err_at(d, &["edit", "s", "--env", "X=1", "--sign-key", "k.key"]);
    assert!(err.contains("signed with recipe"), "{err}");
    assert_eq!(stores(d), before, "nothing written");

    // With the recipe it was signed with, the same resolve upgrades and signs.
    forge_entry(d, "s", &genuine);
    let up = json(&ok_at(
        d,
        &["resolve", "s", "--json", "--sign-key", "k.key"],
    ));
    assert_eq!(up["upgraded"], true, "{up}");
    assert_ne!(up["digest"], first["digest"]);
    let out = ok_at(d, &["verify", "s", "--key", "k.pub"]);
    assert!(out.contains("signature good"), "{out}");
    let seen = json(&ok_at(d, &["inspect", "oci:img:s", "--json"]));
    let env = seen["config"]["config"]["Env"].to_string();
    assert!(env.contains("MODE=train") && !env.contains("evil"), "{env}");
}

#[test]
fn verify_refuses_a_build_manifest_of_another_nick_or_version() {
    let t = setup();
    let d = t.path();
    register(d, "a", "A=1", true);
    let b = register(d, "b", "B=1", true);
    let genuine = entry_of(d, "a");
    ok_at(d, &["verify", "a", "--key", "k.pub"]);

    // A record made up for a, consistent in itself, naming b's signed image.
    let mut record = catalog_blob(
        d,
        layer_mut(&mut entry_of(d, "b"), VERSION)["digest"]
            .as_str()
            .unwrap(),
    );
    record["nick"] = "a".into();
    let (digest, size) = put_catalog_blob(d, &record);
    let mut forged = genuine.clone();
    *layer_mut(&mut forged, VERSION) =
        json!({"mediaType": VERSION, "digest": digest, "size": size});
    for (key, field) in [("dev.ociup.image", "image"), ("dev.ociup.digest", "digest")] {
        forged["annotations"][key] = record[field].clone();
    }
    forge_entry(d, "a", &forged);
    let err = err_at(d, &["verify", "a", "--key", "k.pub"]);
    assert!(err.contains("is of b version 1, not a version 1"), "{err}");
    // A resolve with the key at hand holds the answer against the build manifest too.
    let err = err_at(d, &["resolve", "a", "--sign-key", "k.key"]);
    assert!(err.contains("is of b version 1"), "{err}");
    assert_eq!(b["digest"], record["digest"]);

    // a's own image, but a version number it does not have.
    let mut record = catalog_blob(
        d,
        layer_mut(&mut genuine.clone(), VERSION)["digest"]
            .as_str()
            .unwrap(),
    );
    record["number"] = 7.into();
    let (digest, size) = put_catalog_blob(d, &record);
    let mut forged = genuine.clone();
    *layer_mut(&mut forged, VERSION) =
        json!({"mediaType": VERSION, "digest": digest, "size": size});
    forged["annotations"]["dev.ociup.version"] = "7".into();
    forge_entry(d, "a", &forged);
    let err = err_at(d, &["verify", "a", "--key", "k.pub"]);
    assert!(err.contains("is of a version 1, not a version 7"), "{err}");

    forge_entry(d, "a", &genuine);
    ok_at(d, &["verify", "a", "--key", "k.pub"]);
}

/// Signs `predicate` (for the image `subject` of `oci:img`) with k.key and attaches it the way
/// ociup does: the envelope blob, a referrer manifest, the `sha256-<hex>` tag index.
fn attach_forged(d: &Path, subject: &str, predicate_type: &str, predicate: &Value) {
    let key = ociup_core::managed::build_manifest::Key::load(&d.join("k.key")).unwrap();
    let subject: Digest = subject.parse().unwrap();
    let envelope = key
        .sign(&json!({
            "_type": "https://in-toto.io/Statement/v1",
            "subject": [{"name": "img", "digest": {"sha256": subject.hex()}}],
            "predicateType": predicate_type,
            "predicate": predicate,
        }))
        .unwrap();
    let img = OciLayout::open(d.join("img")).unwrap();
    let env_digest = Digest::sha256(&envelope);
    block_on(async {
        img.put_blob(&env_digest, envelope.len() as u64, &envelope[..])
            .await
            .unwrap();
        let raw = img
            .get_manifest(&ManifestRef::Digest(subject.clone()))
            .await
            .unwrap();
        let referrer = RawDocument::canonical(
            &json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "artifactType": "application/vnd.dsse.envelope.v1+json",
                "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": Digest::sha256(b"{}").to_string(), "size": 2},
                "layers": [{"mediaType": "application/vnd.dsse.envelope.v1+json", "digest": env_digest.to_string(), "size": envelope.len()}],
                "subject": {"mediaType": raw.media_type(), "digest": subject.to_string(), "size": raw.size()},
            }),
            "application/vnd.oci.image.manifest.v1+json",
        )
        .unwrap();
        img.put_blob(&Digest::sha256(b"{}"), 2, &b"{}"[..])
            .await
            .unwrap();
        img.put_manifest(&referrer, None).await.unwrap();
        // The forged referrer is the only one listed.
        let index = RawDocument::canonical(
            &json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": referrer.digest().to_string(), "size": referrer.size(),
                "artifactType": "application/vnd.dsse.envelope.v1+json"}]}),
            "application/vnd.oci.image.index.v1+json",
        )
        .unwrap();
        img.put_manifest(&index, Some(&format!("sha256-{}", subject.hex())))
            .await
            .unwrap();
    });
}

#[test]
fn verify_refuses_unknown_predicate_types_and_empty_layer_lists() {
    let t = setup();
    let d = t.path();
    let v = register(d, "a", "A=1", true);
    let image = format!("oci:img@{}", v["digest"].as_str().unwrap());
    let envelope = v["build_manifest"][0].as_str().unwrap();
    let genuine: Value = {
        let bytes = std::fs::read(
            d.join("img/blobs/sha256")
                .join(envelope.trim_start_matches("sha256:")),
        )
        .unwrap();
        let env: Value = serde_json::from_slice(&bytes).unwrap();
        use base64::Engine;
        let payload = base64::engine::general_purpose::STANDARD
            .decode(env["payload"].as_str().unwrap())
            .unwrap();
        serde_json::from_slice::<Value>(&payload).unwrap()["predicate"].clone()
    };
    assert_eq!(genuine["layers"].as_array().unwrap().len(), 1);

    // Signed by the right key, for the right image, but of a type ociup does not know.
    attach_forged(
        d,
        v["digest"].as_str().unwrap(),
        "https://example.com/other/v1",
        &genuine,
    );
    for target in ["a", image.as_str()] {
        let err = err_at(d, &["verify", target, "--key", "k.pub"]);
        assert!(
            err.contains("predicate type") && err.contains("example.com/other/v1"),
            "{target}: {err}"
        );
    }

    // Listing no own layers (and so no files): nothing of the image would be checked.
    let mut empty = genuine.clone();
    empty["layers"] = json!([]);
    empty["files"] = json!([]);
    attach_forged(
        d,
        v["digest"].as_str().unwrap(),
        "https://ociup.dev/build-manifest/v1",
        &empty,
    );
    let err = err_at(d, &["verify", "a", "--key", "k.pub"]);
    assert!(
        err.contains("lists no own layers") && err.contains("not verified"),
        "{err}"
    );
}

#[test]
fn a_signed_nick_is_not_regenerated_unsigned_without_saying_so() {
    let t = setup();
    let d = t.path();
    register(d, "s", "S=1", true);
    register(d, "u", "U=1", false);
    let key_id = ok_at(d, &["keygen", "--out", "k2"]); // another key, to tell them apart
    assert!(!key_id.is_empty());
    let status = json(&ok_at(d, &["status", "--json"]));
    let row = |status: &Value, nick: &str| {
        status
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["nick"] == nick)
            .unwrap()
            .clone()
    };
    let signer = row(&status, "s")["signer"].as_str().unwrap().to_owned();
    assert_eq!(row(&status, "s")["signed"], true);
    assert_eq!(row(&status, "u")["signed"], false);
    let text = ok_at(d, &["status"]);
    assert!(
        text.lines()
            .any(|l| l.starts_with("s ") && l.contains(" signed ")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("u ") && l.contains(" unsigned ")),
        "{text}"
    );

    // Another key (another team's, in a shared catalog) answers a nick with nothing due...
    ok_at(d, &["resolve", "s", "--sign-key", "k2.key"]);

    move_base(d);
    let before = stores(d);
    // ... but cannot vouch for its recipe in a new version.
    let err = err_at(d, &["resolve", "s", "--sign-key", "k2.key"]);
    assert!(
        err.contains(&signer) && err.contains("another key made it") && err.contains("--unsigned"),
        "{err}"
    );
    let err = err_at(d, &["resolve", "s"]);
    assert!(
        err.contains(&signer)
            && err.contains("--sign-key")
            && err.contains("OCIUP_SIGNING_KEY")
            && err.contains("--unsigned"),
        "{err}"
    );
    let err = err_at(d, &["edit", "s", "--env", "X=1"]);
    assert!(err.contains(&signer), "{err}");
    let err = err_at(
        d,
        &[
            "register",
            "s",
            "--base",
            "oci:base:latest",
            "--to",
            "oci:img",
            "--env",
            "S=2",
            "--replace-recipe",
        ],
    );
    assert!(err.contains(&signer), "{err}");
    assert_eq!(stores(d), before, "nothing written");
    // An unsigned nick is regenerated as before.
    let up = json(&ok_at(d, &["resolve", "u", "--json"]));
    assert_eq!(up["upgraded"], true);

    // Accepted explicitly: an unsigned version, and the audit trail says so.
    let up = json(&ok_at(d, &["resolve", "s", "--unsigned", "--json"]));
    assert_eq!(
        (up["upgraded"].clone(), up["version"].clone()),
        (json!(true), json!(2))
    );
    let history = json(&ok_at(d, &["history", "s", "--json"]));
    assert_eq!(history[0]["build_manifest"], Value::Null);
    assert!(history[1]["build_manifest"].is_array());
    let mut entry = entry_of(d, "s");
    let audit = catalog_blob(d, layer_mut(&mut entry, AUDIT)["digest"].as_str().unwrap());
    assert_eq!(audit["command"], "ociup resolve s --unsigned");
    assert_eq!(audit["actor"], "tester");
    let status = json(&ok_at(d, &["status", "--json"]));
    assert_eq!(row(&status, "s")["signed"], false);
    // Unsigned now: later versions need no flag.
    ok_at(d, &["copy", "oci:base:v1", "oci:base:latest"]);
    ok_at(d, &["resolve", "s"]);
}

/// `text` with every run of whitespace one space (help text is wrapped to the terminal).
fn words(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[test]
fn resolve_check_statuses_unknown_nicks_and_unreachable_bases() {
    let t = setup();
    let d = t.path();
    register(d, "a", "A=1", false);
    let (code, out, _) = ociup_at(d, &["resolve", "a", "--check"]);
    assert_eq!((code, out.trim()), (3, "current"));
    let (code, out, _) = ociup_at(d, &["resolve", "a", "--check", "--json"]);
    assert_eq!((code, json(&out)["upgrade_due"].clone()), (3, json!(false)));
    move_base(d);
    let (code, out, _) = ociup_at(d, &["resolve", "a", "--check"]);
    assert_eq!((code, out.trim()), (0, "upgrade due"));
    let help = words(&ok_at(d, &["resolve", "--help"]));
    assert!(
        help.contains("0 upgrade due") && help.contains("3 current"),
        "{help}"
    );

    // An unknown nick: which catalog was searched.
    let err = err_at(d, &["resolve", "nobody"]);
    let searched = d.join("catalog").display().to_string();
    assert!(err.contains("nobody") && err.contains(&searched), "{err}");
    let err = err_at(d, &["verify", "nobody", "--key", "k.pub"]);
    assert!(err.contains(&searched), "{err}");

    // A base that cannot be reached: the way to answer the last good version anyway.
    std::fs::remove_dir_all(d.join("base")).unwrap();
    let err = err_at(d, &["resolve", "a"]);
    assert!(
        err.contains("base:latest of a cannot be reached")
            && err.contains("--if-unreachable stale"),
        "{err}"
    );
    let out = ok_at(d, &["resolve", "a", "--if-unreachable", "stale"]);
    assert!(out.starts_with("oci:"), "{out}");
    // --check cannot tell, and says so.
    let err = err_at(d, &["resolve", "a", "--check", "--if-unreachable", "stale"]);
    assert!(err.contains("cannot tell"), "{err}");
}

#[test]
fn status_json_matches_its_help() {
    let t = setup();
    let d = t.path();
    register(d, "a", "A=1", true);
    let help = words(&ok_at(d, &["status", "--help"]));
    let status = json(&ok_at(d, &["status", "--json"]));
    let rows = status.as_array().expect("a JSON array");
    assert!(help.contains("array"), "{help}");
    for key in rows[0].as_object().unwrap().keys() {
        assert!(
            help.contains(key.as_str()),
            "{key} is not in the help: {help}"
        );
    }
    for state in ["current", "stale", "pending", "failed", "unknown"] {
        assert!(help.contains(state), "{state}: {help}");
    }
}

/// Runs ociup in `dir` with the catalog in the registry and the blob cache in `cache`.
fn ociup_cached(dir: &Path, catalog: &str, cache: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_ociup"))
        .args(args)
        .current_dir(dir)
        .env("OCIUP_CATALOG", catalog)
        .env("XDG_CACHE_HOME", cache)
        .env("OCIUP_ACTOR", "tester")
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .env_remove("OCIUP_SIGNING_KEY")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ociup {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The checks cost a nothing-due resolve no request once the records are cached: one read of
/// the entry and one HEAD of the base, as before; a cold cache reads the recipe and the version
/// record once (and, with the key at hand, the build manifest).
#[test]
fn checks_cost_a_nothing_due_resolve_no_request_once_cached() {
    let reg = TestRegistry::start(RegistryOptions {
        auth: AuthMode::None,
        tls: false,
    });
    let host = reg.host();
    let t = setup();
    let d = t.path();
    let base = format!("{host}/lib/base:latest");
    ok_at(
        d,
        &[
            "copy",
            &format!("oci:{}:v1", fixtures().join("base").display()),
            &base,
        ],
    );
    let catalog = format!("{host}/ociup/catalog");
    let warm = d.join("warm");
    let target = format!("{host}/team/app");
    let run = |cache: &Path, args: &[&str]| ociup_cached(d, &catalog, cache, args);
    run(
        &warm,
        &[
            "register",
            "app",
            "--base",
            &base,
            "--to",
            &target,
            "--add",
            "f.txt:/f.txt",
            "--sign-key",
            "k.key",
        ],
    );
    let all = |reg: &TestRegistry| -> usize {
        ["GET", "HEAD", "PUT", "POST", "PATCH", "DELETE"]
            .iter()
            .map(|m| reg.requests(m, "/v2/"))
            .sum()
    };
    let count = |cache: &Path, args: &[&str]| {
        let before = all(&reg);
        run(cache, args);
        all(&reg) - before
    };
    // The registering process cached what it wrote.
    assert_eq!(count(&warm, &["resolve", "app"]), 2, "{}", reg.log());
    assert_eq!(count(&warm, &["resolve", "app"]), 2);
    assert_eq!(count(&warm, &["resolve", "app", "--sign-key", "k.key"]), 2);
    // Another machine: the recipe and the record once, then cached.
    let cold = d.join("cold");
    assert_eq!(count(&cold, &["resolve", "app"]), 4, "{}", reg.log());
    assert_eq!(count(&cold, &["resolve", "app"]), 2);
    // With the key, the build manifest once.
    assert_eq!(count(&cold, &["resolve", "app", "--sign-key", "k.key"]), 3);
    assert_eq!(count(&cold, &["resolve", "app", "--sign-key", "k.key"]), 2);
}

/// Entries of older ociup carry no `dev.ociup.signed`/`signer` annotations and records no
/// `signer`: they are still answered, shown as signed, refused without the key (named from the
/// envelope) and regenerated with it.
#[test]
fn entries_of_older_ociup_are_read_and_kept_signed() {
    let t = setup();
    let d = t.path();
    let first = register(d, "s", "S=1", true);
    let signer = first["signer"].as_str().unwrap().to_owned();
    // The entry as older ociup wrote it.
    let mut old = entry_of(d, "s");
    let mut record = catalog_blob(d, layer_mut(&mut old, VERSION)["digest"].as_str().unwrap());
    record.as_object_mut().unwrap().remove("signer");
    let (digest, size) = put_catalog_blob(d, &record);
    *layer_mut(&mut old, VERSION) = json!({"mediaType": VERSION, "digest": digest, "size": size});
    let ann = old["annotations"].as_object_mut().unwrap();
    ann.remove("dev.ociup.signed");
    ann.remove("dev.ociup.signer");
    forge_entry(d, "s", &old);

    let out = json(&ok_at(d, &["resolve", "s", "--json"]));
    assert_eq!(out["digest"], first["digest"]);
    let status = json(&ok_at(d, &["status", "--json"]));
    assert_eq!(status[0]["signed"], true, "{status}");
    ok_at(d, &["verify", "s", "--key", "k.pub"]);

    move_base(d);
    let err = err_at(d, &["resolve", "s"]);
    assert!(
        err.contains(&signer),
        "the key named from the envelope: {err}"
    );
    let up = json(&ok_at(
        d,
        &["resolve", "s", "--json", "--sign-key", "k.key"],
    ));
    assert_eq!(up["upgraded"], true);
    ok_at(d, &["verify", "s", "--key", "k.pub"]);
    let status = json(&ok_at(d, &["status", "--json"]));
    assert_eq!(status[0]["signer"], signer.as_str());
}

//! Signed build manifests: DSSE envelopes as found attached to images, the in-toto statements
//! they carry, and ociup's predicate in them.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use ociup_core::Digest;
use ociup_core::managed::build_manifest::{
    Expected, Key, PublicKey, check_statement, envelope_key_ids,
};

static KEY: LazyLock<(Key, PublicKey)> = LazyLock::new(|| {
    let key = Key::generate().expect("a key");
    let public = key.public_key();
    (key, public)
});

fuzz_target!(|data: &[u8]| {
    let (key, public) = &*KEY;
    // The input as an envelope found on a registry.
    let _ = envelope_key_ids(data);
    if let Ok(statement) = public.verify(data) {
        let _ = check_statement(&statement, &Digest::sha256(data), None);
    }
    // The input as a statement, signed by ociup: it verifies and reads back the same, and the
    // statement checks run on it as on any verified one.
    let Ok(statement) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let Ok(envelope) = key.sign(&statement) else {
        return;
    };
    let verified = public
        .verify(&envelope)
        .unwrap_or_else(|e| panic!("an envelope ociup signed does not verify: {e}"));
    assert_eq!(verified, statement);
    let subject = statement
        .pointer("/subject/0/digest/sha256")
        .and_then(|v| v.as_str())
        .and_then(|hex| format!("sha256:{hex}").parse::<Digest>().ok())
        .unwrap_or_else(|| Digest::sha256(b""));
    let expected = Expected {
        nick: "trainer",
        version: 1,
        recipe: Some("sha256:0000000000000000000000000000000000000000000000000000000000000000"),
    };
    let _ = check_statement(&statement, &subject, None);
    let _ = check_statement(&statement, &subject, Some(&expected));
});

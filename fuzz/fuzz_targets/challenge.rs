//! `WWW-Authenticate` headers as registries and token servers send them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ociup_registry::auth::challenge;

fuzz_target!(|data: &[u8]| {
    // reqwest hands header values over as bytes; ociup reads the ones that are text.
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    for c in challenge::parse(s) {
        assert!(
            !c.scheme.is_empty(),
            "{s:?} gave a challenge without a scheme"
        );
    }
});

//! Digests as registries, layouts and documents name them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ociup_core::Digest;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(d) = s.parse::<Digest>() {
        // Display parses back to the same digest, and oci-spec accepts what ociup accepts.
        let shown = d.to_string();
        assert_eq!(shown.parse::<Digest>().ok(), Some(d.clone()), "{s:?}");
        let oci = d.to_oci();
        assert_eq!(Digest::try_from(&oci).ok(), Some(d.clone()), "{s:?}");
        let _ = d.verify(data, || "fuzz input".into());
        let _ = d.same_algorithm_of(data);
    }
});
